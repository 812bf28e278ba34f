//! `cwmpd-bench fleet sim`: the fleet simulator (`cwmpd-fleet`, next to this binary) against
//! the project's test ACS (in this process, on its own thread) on loopback.
//!
//! Per agent count: agents up in one process, heap per idle agent (the simulator's counting
//! allocator) and RSS per agent (the process's VmRSS / RssAnon over the count), boot Informs
//! per second as the ACS saw them (first boot Inform to last boot session end), and
//! HTTP CR (Digest) → Inform p50/p99 over a sample of agents spread over the fleet, one at a
//! time with the fleet otherwise idle. The fleet's own summary is checked against the ACS.
//!
//! Options: `--counts N,N` (default 1000,10000), `--crs N` (CR samples, 200), `--concurrency K`
//! (boot sessions in flight, 64), `--out DIR`, `--agents-dir DIR` (default /dev/shm).
//!
//! genieacs-sim, the simulator the issue compares against, runs beside it when
//! `CWMPD_BENCH_GENIEACS_SIM` names a checkout (`genieacs_sim.rs`): `--sim-counts N,N` devices
//! (default 50,200: one Node.js process each), forked `--sim-wait MS` apart (default 0: all at once, as the agents ramp).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use cwmp_testacs::{AcsOptions, SessionRecord, TestAcsHandle};

pub struct Opts {
    pub counts: Vec<usize>,
    pub crs: usize,
    pub concurrency: usize,
    pub out: PathBuf,
    /// Where the agents' state directories go (default /dev/shm: a simulated device's flash
    /// need not be the bench machine's disk, whose fsyncs would pace the ramp).
    pub agents_dir: PathBuf,
    /// genieacs-sim device counts, and the wait between its worker forks.
    pub sim_counts: Vec<usize>,
    pub sim_wait_ms: u64,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            counts: vec![1000, 10_000],
            crs: 200,
            concurrency: 64,
            out: PathBuf::from("results"),
            agents_dir: if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            },
            sim_counts: vec![50, 200],
            sim_wait_ms: 0,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                "--counts" => {
                    o.counts = val()?
                        .split(',')
                        .map(|c| c.trim().parse().map_err(|_| format!("--counts: {c:?}")))
                        .collect::<Result<_, _>>()?
                }
                "--crs" => o.crs = val()?.parse().map_err(|_| "--crs N".to_string())?,
                "--concurrency" => {
                    o.concurrency = val()?.parse().map_err(|_| "--concurrency K".to_string())?
                }
                "--sim-counts" => {
                    o.sim_counts = val()?
                        .split(',')
                        .map(|c| c.trim().parse().map_err(|_| format!("--sim-counts: {c:?}")))
                        .collect::<Result<_, _>>()?
                }
                "--sim-wait" => {
                    o.sim_wait_ms = val()?.parse().map_err(|_| "--sim-wait MS".to_string())?
                }
                "--out" => o.out = PathBuf::from(val()?),
                "--agents-dir" => o.agents_dir = PathBuf::from(val()?),
                other => return Err(format!("fleet sim: unknown argument {other:?}")),
            }
        }
        if o.counts.is_empty() || o.counts.contains(&0) {
            return Err("--counts needs positive numbers".into());
        }
        Ok(o)
    }
}

/// What one run measured.
struct Run {
    count: usize,
    procs: usize,
    up: usize,
    heap_per_agent: f64,
    rss_per_agent: f64,
    anon_per_agent: f64,
    rss_total: f64,
    boots_per_s: f64,
    ramp_s: f64,
    /// CR → Inform times, ms, sorted.
    lat: Vec<f64>,
    summary_matches: bool,
    notes: Vec<String>,
}

fn fleet_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    cwmp_testacs::binaries::sibling(
        &exe,
        "cwmpd-fleet",
        &["cwmpd-fleet"],
        &[
            "crates/cwmpd-fleet/src",
            "crates/cwmpd-fleet/Cargo.toml",
            "src",
        ],
    )
}

fn template(acs_url: &str) -> String {
    let model = cwmp_testacs::binaries::workspace_root().join("datamodel");
    format!(
        "[agent]\nstate_dir = \"{{dir}}/state\"\ndatamodel = [\"{m}\"]\ncontrol_socket = \"\"\npoll_interval = 3600\n\
         [connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"127.0.0.1:0\"\n\
         [system]\nenable = false\n\
         [parameters]\n\"Device.ManagementServer.URL\" = \"{acs_url}\"\n\
         \"Device.ManagementServer.ConnectionRequestUsername\" = \"cr{{n}}\"\n\
         \"Device.ManagementServer.ConnectionRequestPassword\" = \"pw-{{n}}\"\n\
         \"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\
         \"Device.DeviceInfo.SerialNumber\" = \"SIM{{n}}\"\n",
        m = model.display()
    )
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The table's "boot Informs/s (ramp) | CR → Inform p50 / p99 (n)" cells.
fn rate_cells(boots_per_s: f64, ramp_s: f64, lat: &[f64]) -> String {
    format!(
        "{boots_per_s:.0} ({ramp_s:.1} s) | {:.2} / {:.2} ms ({})",
        pct(lat, 50.0),
        pct(lat, 99.0),
        lat.len()
    )
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// One `cwmpd-fleet` process of a run.
struct Proc {
    child: std::process::Child,
    json: PathBuf,
    count: usize,
}

impl Proc {
    /// SIGTERM, then a bounded wait for the summary; killed when it does not come.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(60 + self.count as u64 / 50);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }
    fn phase(&self, phase: &str) -> Option<serde_json::Value> {
        read_json(&self.json).filter(|v| v["phase"] == phase)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Agents one process can hold under the open-file limit (a TCP listener and a UDP socket
/// each, plus the session's ACS connection while booting and some slack).
fn per_process_limit() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if hard != nix::sys::resource::RLIM_INFINITY => {
            (hard.saturating_sub(1024) / 2).max(1) as usize
        }
        _ => usize::MAX,
    }
}

/// First Informs per second as the ACS saw them (`ended` sessions from the first Inform to
/// the last session end), and that span in seconds.
pub(crate) fn boot_rate(sessions: &[SessionRecord], ended: usize) -> (f64, f64) {
    let first_inform = sessions.iter().filter_map(|s| s.inform_at).min();
    let last = sessions.iter().filter_map(|s| s.ended_at).max();
    match (first_inform, last) {
        (Some(a), Some(b)) if b > a => {
            let span = (b - a).as_secs_f64();
            (ended as f64 / span, span)
        }
        _ => (f64::NAN, f64::NAN),
    }
}

/// Each device's ConnectionRequestURL from its Inform, by serial number.
pub(crate) fn cr_urls(sessions: &[SessionRecord]) -> HashMap<String, String> {
    sessions
        .iter()
        .filter_map(|s| {
            let i = s.inform.as_ref()?;
            let url = i
                .params
                .iter()
                .find(|p| p.name == "Device.ManagementServer.ConnectionRequestURL")?;
            Some((i.device_id.serial_number.clone(), url.value.clone()))
        })
        .collect()
}

/// HTTP connection requests to `targets` (serial, user, password), one at a time, each
/// waiting for the session it starts: the CR → Inform times in ms, sorted. What went wrong is
/// added to `notes`.
pub(crate) fn cr_latencies(
    acs: &TestAcsHandle,
    urls: &HashMap<String, String>,
    targets: impl Iterator<Item = (String, String, String)>,
    notes: &mut Vec<String>,
) -> Result<Vec<f64>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut lat = Vec::new();
    let mut total = acs.session_count();
    for (serial, user, pass) in targets {
        let Some(url) = urls.get(&serial) else {
            notes.push(format!("{serial}: no ConnectionRequestURL seen"));
            continue;
        };
        let t0 = Instant::now();
        match rt.block_on(cwmp_connreq::http::connection_request(url, &user, &pass)) {
            Ok(a) if a.accepted() => {}
            other => {
                notes.push(format!("CR to {serial}: {other:?}"));
                continue;
            }
        }
        total += 1;
        if acs.wait_ended(total, Duration::from_secs(30)) < total {
            notes.push(format!("CR to {serial}: no session within 30 s"));
            total = acs.session_count();
            continue;
        }
        if let Some(at) = acs.session(total - 1).and_then(|s| s.inform_at) {
            lat.push((at - t0).as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

fn one(bin: &Path, base: &Path, count: usize, o: &Opts) -> Result<Run, String> {
    let acs = cwmp_testacs::spawn_in_thread(AcsOptions::default());
    let dir = base.join(format!("n{count}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tpl = dir.join("template.toml");
    std::fs::write(&tpl, template(&acs.url())).map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    let nprocs = count.div_ceil(per_process_limit().min(count));
    if nprocs > 1 {
        notes.push(format!(
            "{count} agents: {nprocs} processes of about {} (the open-file limit here allows {} agents with a TCP listener and a UDP socket each per process; raising it needs CAP_SYS_RESOURCE)",
            count.div_ceil(nprocs),
            per_process_limit()
        ));
    }
    let mut procs = Vec::new();
    let mut first = 1;
    for p in 0..nprocs {
        let n = count / nprocs + usize::from(p < count % nprocs);
        let json = dir.join(format!("fleet{p}.json"));
        let log =
            std::fs::File::create(dir.join(format!("fleet{p}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["-t", &tpl.to_string_lossy(), "-n", &n.to_string()])
            .args(["--first", &first.to_string()])
            .args(["-d", &dir.join("agents").to_string_lossy()])
            .args(["--concurrency", &o.concurrency.div_ceil(nprocs).to_string()])
            .args(["--json", &json.to_string_lossy(), "--log", "error"])
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        procs.push(Proc {
            child,
            json,
            count: n,
        });
        first += n;
    }
    // Up when every process has written its ramp figures (each does once all its agents'
    // boot sessions have ended or failed), bounded.
    let deadline = Instant::now() + Duration::from_secs(120 + count as u64 / 20);
    let ups = loop {
        let ups: Vec<_> = procs.iter().filter_map(|p| p.phase("up")).collect();
        if ups.len() == procs.len() {
            break ups;
        }
        let dead = procs
            .iter_mut()
            .any(|p| matches!(p.child.try_wait(), Ok(Some(_))));
        if Instant::now() > deadline || dead {
            for p in &mut procs {
                p.stop();
            }
            return Err(format!(
                "{count} agents: the fleet did not come up ({} boot sessions ended); see {}",
                acs.wait_ended(count, Duration::ZERO),
                dir.display()
            ));
        }
        acs.wait_ended(count, Duration::from_millis(200));
    };
    let sum = |k: &str| {
        ups.iter()
            .map(|v| v[k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    let booted = sum("booted") as usize;
    let started = sum("started").max(1.0);
    let ramp_s = ups
        .iter()
        .map(|v| v["ramp_seconds"].as_f64().unwrap_or(f64::NAN))
        .fold(0.0, f64::max);
    let ended = acs.wait_ended(booted, Duration::from_secs(10));
    if booted < count || sum("start_failures") + sum("boot_failures") > 0.0 {
        notes.push(format!(
            "{count} agents: {booted} booted, {} start and {} boot failures (see the fleet logs)",
            sum("start_failures"),
            sum("boot_failures")
        ));
    }
    let sessions = acs.sessions();
    let (boots_per_s, _) = boot_rate(&sessions, ended);
    // Idle memory: let the last sessions' buffers go.
    std::thread::sleep(Duration::from_secs(2));
    let kb = |f: &str| {
        procs
            .iter()
            .map(|p| crate::session::status_kb(p.child.id(), f).unwrap_or(0) as f64)
            .sum::<f64>()
    };
    let (rss_kb, anon_kb) = (kb("VmRSS"), kb("RssAnon"));
    // Connection requests, one at a time, to agents spread over the fleet.
    let urls = cr_urls(&sessions);
    drop(sessions);
    let crs = o.crs.min(count);
    let lat = cr_latencies(
        &acs,
        &urls,
        (0..crs).map(|k| {
            let n = 1 + k * count / crs;
            (format!("SIM{n}"), format!("cr{n}"), format!("pw-{n}"))
        }),
        &mut notes,
    )?;
    // The ACS counts a session when it sends its last answer; give the agent that read it a
    // moment to count it too before the summary is asked for.
    std::thread::sleep(Duration::from_millis(500));
    let mut ends = Vec::new();
    for p in &mut procs {
        let st = p.stop();
        match p.phase("stopped") {
            Some(v) => ends.push(v),
            None => notes.push(format!(
                "{count} agents: a process left no summary ({st:?})"
            )),
        }
    }
    let acs_total = acs.session_count() as u64;
    let esum = |k: &str| ends.iter().map(|v| v[k].as_u64().unwrap_or(0)).sum::<u64>();
    let summary_matches = ends.len() == procs.len()
        && esum("sessions_ok") == acs_total
        && esum("connection_requests") == lat.len() as u64
        && esum("sessions_failed") == 0;
    if !summary_matches {
        notes.push(format!(
            "{count} agents: fleet summary sessions ok {} failed {} CRs {} vs ACS {acs_total} sessions, {} CRs",
            esum("sessions_ok"),
            esum("sessions_failed"),
            esum("connection_requests"),
            lat.len()
        ));
    }
    let n = count as f64;
    let _ = std::fs::remove_dir_all(dir.join("agents"));
    Ok(Run {
        count,
        procs: nprocs,
        up: booted,
        heap_per_agent: sum("heap_bytes") / started,
        rss_per_agent: rss_kb * 1024.0 / n,
        anon_per_agent: anon_kb * 1024.0 / n,
        rss_total: rss_kb * 1024.0,
        boots_per_s,
        ramp_s,
        lat,
        summary_matches,
        notes,
    })
}

pub fn run(o: &Opts) -> Result<(), String> {
    raise_nofile();
    let bin = fleet_bin()?;
    let base = o
        .agents_dir
        .join(format!("cwmpd-bench-fleet-{}", std::process::id()));
    let mut runs = Vec::new();
    for &count in &o.counts {
        eprintln!("fleet sim: {count} agents …");
        match one(&bin, &base, count, o) {
            Ok(r) => runs.push(r),
            Err(e) => eprintln!("fleet sim: {e}"),
        }
    }
    let mut md = String::from(
        "| simulator | agents up / asked (processes) | heap per idle agent | RSS per agent (anon) | RSS, all processes | boot Informs/s (ramp) | CR → Inform p50 / p99 (n) | summary = ACS |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in &runs {
        md.push_str(&format!(
            "| cwmpd-fleet | {} / {} ({}) | {:.1} KB | {:.1} KB ({:.1} KB) | {:.0} MB | {} | {} |\n",
            r.up,
            r.count,
            r.procs,
            r.heap_per_agent / 1024.0,
            r.rss_per_agent / 1024.0,
            r.anon_per_agent / 1024.0,
            r.rss_total / 1e6,
            rate_cells(r.boots_per_s, r.ramp_s, &r.lat),
            if r.summary_matches { "yes" } else { "NO" }
        ));
    }
    let mut notes: Vec<String> = runs.iter().flat_map(|r| r.notes.clone()).collect();
    match crate::genieacs_sim::checkout() {
        Ok(sim) => {
            for &count in &o.sim_counts {
                eprintln!("fleet sim: genieacs-sim, {count} devices …");
                match crate::genieacs_sim::run(&sim, &base, count, o.crs, o.sim_wait_ms) {
                    Ok(r) => {
                        md.push_str(&format!(
                            "| genieacs-sim | {} / {} ({} workers + master {:.0} MB) | – (V8 heap per process) | {:.1} MB per worker | {:.0} MB | {} | – |\n",
                            r.up,
                            r.count,
                            r.up,
                            r.master_rss / 1e6,
                            r.rss_per_agent / 1e6,
                            r.rss_total / 1e6,
                            rate_cells(r.boots_per_s, r.ramp_s, &r.lat),
                        ));
                        notes.extend(r.notes);
                    }
                    Err(e) => notes.push(format!("genieacs-sim {count}: {e}")),
                }
            }
            notes.push(format!(
                "genieacs-sim: one Node.js worker per device, forked {} ms apart; its CR listener takes any request (no authentication); its first Inform is `2 PERIODIC`; same data model as the agents, written as its device JSON",
                o.sim_wait_ms
            ));
        }
        Err(e) => {
            md.push_str("| genieacs-sim | – | – | – | – | – | – | – |\n");
            notes.push(format!(
                "genieacs-sim: not measured ({e}); it is not in the npm registry, set CWMPD_BENCH_GENIEACS_SIM to a checkout"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    let target = runs.iter().find(|r| r.count >= 10_000).map(|r| {
        format!(
            "target: 10,000 simulated agents on this machine with ≤ 100 KB heap per idle agent: {} ({} up in {} process(es), {:.1} KB)",
            if r.up >= 10_000 && r.heap_per_agent <= 100.0 * 1024.0 {
                "met"
            } else {
                "missed"
            },
            r.up,
            r.procs,
            r.heap_per_agent / 1024.0
        )
    });
    notes.extend(target);
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mut out = format!(
        "cwmpd-bench fleet sim: {machine}, {} cores; test ACS in the bench process, loopback; agents' state in {}\n\n{md}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.agents_dir.display()
    );
    for n in &notes {
        out.push_str(&format!("* {n}\n"));
    }
    print!("{out}");
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let file = o.out.join("fleet-sim.md");
    std::fs::write(&file, &out).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("\nwrote {}", file.display());
    if runs.len() < o.counts.len() {
        return Err("some counts did not run".into());
    }
    Ok(())
}
