//! Results of `cwmpd-bench cr`: percentiles, the terminal/markdown table, CSV and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// p50/p90/p99/max of a sample, in milliseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[Duration]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Stats {
            n: v.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
        })
    }
}

/// A latency row: a distribution or why it is missing.
#[derive(Debug, Clone)]
pub struct Row {
    /// `loopback` or `netns`.
    pub mode: &'static str,
    /// `HTTP CR direct`, `HTTP CR port forward`, `UDP CR via STUN`, `XMPP CR`, `floor: …`.
    pub mechanism: String,
    /// `auth`, `CR → Inform`, `channel change`, `CR → middleware`, `round trip`.
    pub measure: &'static str,
    pub result: Result<Stats, String>,
    /// The p50 of the physical floor on the same path.
    pub floor_p50: Option<f64>,
    /// The paper's figure for this mechanism and measure.
    pub paper: Option<&'static str>,
    /// The target (p50 bound, p99 bound), milliseconds.
    pub target: Option<(f64, f64)>,
}

impl Row {
    pub fn verdict(&self) -> &'static str {
        match (&self.result, self.target) {
            (Ok(s), Some((p50, p99))) => {
                if s.p50 < p50 && s.p99 < p99 {
                    "met"
                } else {
                    "MISSED"
                }
            }
            (Err(_), Some(_)) => "skipped",
            _ => "",
        }
    }
}

/// A footprint figure.
#[derive(Debug, Clone)]
pub struct Foot {
    pub measure: String,
    /// Value and unit, or why it is missing.
    pub value: Result<(f64, &'static str), String>,
    /// Upper bound in the same unit.
    pub target: Option<f64>,
    pub note: String,
}

impl Foot {
    pub fn verdict(&self) -> &'static str {
        match (&self.value, self.target) {
            (Ok((v, _)), Some(t)) => {
                if *v < t {
                    "met"
                } else {
                    "MISSED"
                }
            }
            (Err(_), Some(_)) => "skipped",
            _ => "",
        }
    }
}

pub struct Report {
    pub rows: Vec<Row>,
    pub foot: Vec<Foot>,
    pub machine: String,
    pub runs: usize,
    pub warmup: usize,
    pub idle_seconds: f64,
    pub notes: Vec<String>,
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "MB" => format!("{v:.2} MB"),
        "%" => format!("{v:.4} %"),
        "ms" => format!("{v:.1} ms"),
        "" => format!("{v:.0}"),
        u => format!("{v:.0} {u}"),
    }
}

impl Report {
    /// The latency table as markdown (also printed on the terminal).
    pub fn latency_markdown(&self) -> String {
        let mut o = String::new();
        o.push_str("| mode | mechanism | measure | p50 ms | p90 ms | p99 ms | max ms | floor p50 ms | paper | target | |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let (a, b, c, d) = match &r.result {
                Ok(s) => (ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max)),
                Err(why) => (
                    format!("skipped: {why}"),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
            };
            let target = match r.target {
                Some((p50, p99)) if p99.is_finite() => format!("p50 < {p50} ms, p99 < {p99} ms"),
                Some((p50, _)) => format!("p50 < {p50} ms"),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {a} | {b} | {c} | {d} | {} | {} | {target} | {} |",
                r.mode,
                r.mechanism,
                r.measure,
                r.floor_p50.map(ms).unwrap_or_default(),
                r.paper.unwrap_or(""),
                r.verdict()
            );
        }
        o
    }

    pub fn footprint_markdown(&self) -> String {
        let mut o = String::new();
        o.push_str("| footprint | value | target | | note |\n|---|---|---|---|---|\n");
        for f in &self.foot {
            let (v, unit) = match &f.value {
                Ok((v, u)) => (fmt_value(*v, u), *u),
                Err(why) => (format!("skipped: {why}"), ""),
            };
            let t = f
                .target
                .map(|t| format!("< {}", fmt_value(t, unit)))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "| {} | {v} | {t} | {} | {} |",
                f.measure,
                f.verdict(),
                f.note
            );
        }
        o
    }

    pub fn markdown(&self) -> String {
        let mut o = format!(
            "Machine: {}. {} runs per figure after {} warm-up runs; idle CPU over {} s.\n\n",
            self.machine, self.runs, self.warmup, self.idle_seconds
        );
        o.push_str(&self.latency_markdown());
        o.push('\n');
        o.push_str(&self.footprint_markdown());
        if !self.notes.is_empty() {
            o.push('\n');
            for n in &self.notes {
                let _ = writeln!(o, "* {n}");
            }
        }
        o
    }

    pub fn csv(&self) -> String {
        let mut o = String::from(
            "kind,mode,mechanism,measure,unit,n,p50,p90,p99,max,floor_p50,paper,target,verdict,note\n",
        );
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        for r in &self.rows {
            let target = r
                .target
                .map(|(a, b)| {
                    if b.is_finite() {
                        format!("p50<{a};p99<{b}")
                    } else {
                        format!("p50<{a}")
                    }
                })
                .unwrap_or_default();
            let (n, p50, p90, p99, max, note) = match &r.result {
                Ok(s) => (
                    s.n.to_string(),
                    format!("{:.4}", s.p50),
                    format!("{:.4}", s.p90),
                    format!("{:.4}", s.p99),
                    format!("{:.4}", s.max),
                    String::new(),
                ),
                Err(w) => (
                    "0".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("skipped: {w}"),
                ),
            };
            let _ = writeln!(
                o,
                "latency,{},{},{},ms,{n},{p50},{p90},{p99},{max},{},{},{},{},{}",
                r.mode,
                q(&r.mechanism),
                q(r.measure),
                r.floor_p50.map(|f| format!("{f:.4}")).unwrap_or_default(),
                q(r.paper.unwrap_or("")),
                q(&target),
                r.verdict(),
                q(&note)
            );
        }
        for f in &self.foot {
            let (v, unit, note) = match &f.value {
                Ok((v, u)) => (format!("{v:.4}"), *u, f.note.clone()),
                Err(w) => (String::new(), "", format!("skipped: {w}")),
            };
            let _ = writeln!(
                o,
                "footprint,,,{},{unit},1,{v},,,,,,{},{},{}",
                q(&f.measure),
                f.target.map(|t| format!("<{t}")).unwrap_or_default(),
                f.verdict(),
                q(&note)
            );
        }
        o
    }

    /// A horizontal bar chart on a log scale: p50 bar, p90–p99 whisker, the floor and the
    /// paper's figure as markers, for every latency row that has a result.
    pub fn svg(&self) -> String {
        let rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.result.is_ok() && !r.mechanism.starts_with("floor"))
            .collect();
        let (left, width, top, row_h) = (330.0, 560.0, 50.0, 22.0);
        let height = top + row_h * rows.len() as f64 + 60.0;
        let (lo, hi) = (-2.0f64, 4.0f64); // 10 µs .. 10 s
        let x = |v: f64| left + (v.max(1e-2).log10() - lo) / (hi - lo) * width;
        let mut o = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">cwmpd connection requests: p50 (bar), p90–p99 (line), floor (|), paper (◆)</text>\n\
             <text x=\"10\" y=\"36\" fill=\"#555\">{m}; {n} runs; log scale, milliseconds</text>\n",
            w = left + width + 30.0,
            m = xml(&self.machine),
            n = self.runs
        );
        for e in -2..=4 {
            let v = 10f64.powi(e);
            let xx = x(v);
            let label = if e < 0 {
                format!("{v}")
            } else {
                format!("{}", v as u64)
            };
            let _ = writeln!(
                o,
                "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{b:.1}\" stroke=\"#ddd\"/><text x=\"{xx:.1}\" y=\"{t:.1}\" text-anchor=\"middle\" fill=\"#555\">{label}</text>",
                b = top + row_h * rows.len() as f64,
                t = top + row_h * rows.len() as f64 + 14.0
            );
        }
        for (i, r) in rows.iter().enumerate() {
            let Ok(s) = &r.result else { continue };
            let y = top + row_h * i as f64;
            let color = match r.measure {
                "auth" => "#4e79a7",
                "CR → Inform" => "#f28e2b",
                "channel change" => "#59a14f",
                _ => "#9c755f",
            };
            let _ = writeln!(
                o,
                "<text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{} · {} · {}</text>\n\
                 <rect x=\"{x0:.1}\" y=\"{ry:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{color}\"/>\n\
                 <line x1=\"{x90:.1}\" y1=\"{my:.1}\" x2=\"{x99:.1}\" y2=\"{my:.1}\" stroke=\"#333\" stroke-width=\"1.5\"/>",
                r.mode,
                xml(&r.mechanism),
                xml(r.measure),
                tx = left - 6.0,
                ty = y + row_h * 0.65,
                x0 = x(0.01),
                ry = y + 4.0,
                bw = (x(s.p50) - x(0.01)).max(1.0),
                bh = row_h - 8.0,
                x90 = x(s.p90),
                x99 = x(s.p99),
                my = y + row_h / 2.0,
            );
            if let Some(f) = r.floor_p50 {
                let _ = writeln!(
                    o,
                    "<line x1=\"{fx:.1}\" y1=\"{a:.1}\" x2=\"{fx:.1}\" y2=\"{b:.1}\" stroke=\"black\" stroke-width=\"2\"/>",
                    fx = x(f),
                    a = y + 2.0,
                    b = y + row_h - 2.0
                );
            }
            if let Some(p) = r.paper.and_then(paper_ms) {
                let (px, py) = (x(p), y + row_h / 2.0);
                let _ = writeln!(
                    o,
                    "<path d=\"M{px:.1} {a:.1} L{b:.1} {py:.1} L{px:.1} {c:.1} L{d:.1} {py:.1} Z\" fill=\"#e15759\"/>",
                    a = py - 5.0,
                    b = px + 5.0,
                    c = py + 5.0,
                    d = px - 5.0
                );
            }
        }
        o.push_str("</svg>\n");
        o
    }

    /// Writes `README-table.md`, `cr.csv` and `cr.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let w = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
        };
        w("README-table.md", self.markdown())?;
        w("cr.csv", self.csv())?;
        w("cr.svg", self.svg())
    }
}

/// The first number of a paper figure (`~50 ms`, `~2.8 s`, `2–7 ms`), in milliseconds.
fn paper_ms(p: &str) -> Option<f64> {
    let t = p.trim_start_matches('~');
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let v: f64 = t[..end].parse().ok()?;
    let unit = if t.contains(" ms") { 1.0 } else { 1000.0 };
    (v > 0.0).then_some(v * unit)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `lscpu` model name and kernel release.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {} Linux {kernel}",
        std::env::consts::ARCH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        let s = Stats::of(&v[..5]).unwrap();
        assert_eq!((s.p50, s.p99), (3.0, 5.0));
    }

    #[test]
    fn paper_figures() {
        assert_eq!(paper_ms("~50 ms"), Some(50.0));
        assert_eq!(paper_ms("~2.8 s"), Some(2800.0));
        assert_eq!(paper_ms("2–7 ms"), Some(2.0));
        assert_eq!(paper_ms("0 s (at login)"), None);
    }
}
