//! `cwmpd-bench diag [--runs N] [--size-mb M] [--rate-mbit R] [--out DIR]`: the TR-143
//! diagnostics against the standard tools on the same path.
//!
//! Two namespaces joined by a veth pair (cpe 10.78.0.1, srv 10.78.0.2; the server's egress
//! shaped with tbf to R Mbit/s, 0 = unshaped), an HTTP server in srv written here (std sockets,
//! `GET /blob/N` answers N bytes). Measured from the cpe namespace:
//!
//! * IPPing: the agent's runner (`cwmpd::diag::run`, in this process, one echo at a time) and
//!   `ping -A` (one echo at a time as well): round-trip times and the wall time of a whole test
//!   (ping's includes starting the process, which is what an agent that spawns ping pays);
//! * Download: the runner and `curl -o /dev/null` on the same URL: TCP open → last byte, the
//!   transfer's rate, and the wall time;
//! * end to end through the release agent (in cpe, with the test ACS): the ACS's session that
//!   sets `DiagnosticsState = Requested` ends → the `8 DIAGNOSTICS COMPLETE` Inform arrives,
//!   for a one-echo IPPing and for the download.
//!
//! Needs root (namespaces), `ip`, `tc`, `ping` (iputils-ping) and `curl`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cwmp_testacs::AcsOptions;
use cwmpd::cwmp::soap::{AcsRequest, ParamValue};
use cwmpd::diag::{Kind, Limits, Outcome};

use crate::rig::{in_ns, sh};
use crate::session::sibling_binaries;

const CPE_IP: &str = "10.78.0.1";
const SRV_IP: &str = "10.78.0.2";
const HTTP_PORT: u16 = 8080;

pub struct Opts {
    pub runs: usize,
    pub size: u64,
    pub rate_mbit: u32,
    pub out: Option<PathBuf>,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            runs: 10,
            size: 16 << 20,
            rate_mbit: 100,
            out: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--runs" => o.runs = val()?.parse().map_err(|_| "--runs: a number")?,
                "--size-mb" => {
                    let mb: u64 = val()?.parse().map_err(|_| "--size-mb: a number")?;
                    o.size = mb << 20;
                }
                "--rate-mbit" => {
                    o.rate_mbit = val()?.parse().map_err(|_| "--rate-mbit: a number")?
                }
                "--out" => o.out = Some(PathBuf::from(val()?)),
                other => return Err(format!("unknown option {other}")),
            }
        }
        if o.runs == 0 || o.size == 0 || o.size > 60 << 20 {
            return Err("--runs ≥ 1 and 1 ≤ --size-mb ≤ 60 (the agent's download limit)".into());
        }
        Ok(o)
    }
}

/// The two namespaces; removed on drop.
struct Pair {
    cpe: String,
    srv: String,
}

impl Pair {
    fn build(rate_mbit: u32) -> Result<Pair, String> {
        let pid = std::process::id();
        let p = Pair {
            cpe: format!("cwd{pid}cpe"),
            srv: format!("cwd{pid}srv"),
        };
        for n in [&p.cpe, &p.srv] {
            let _ = sh(&["ip", "netns", "del", n]);
            sh(&["ip", "netns", "add", n])?;
        }
        let (a, b) = (
            format!("dg{}a", pid % 100_000),
            format!("dg{}b", pid % 100_000),
        );
        sh(&[
            "ip", "link", "add", &a, "netns", &p.cpe, "type", "veth", "peer", "name", &b, "netns",
            &p.srv,
        ])?;
        for (ns, dev, addr) in [(&p.cpe, &a, CPE_IP), (&p.srv, &b, SRV_IP)] {
            let cidr = format!("{addr}/24");
            ns_run(ns, &["ip", "addr", "add", &cidr, "dev", dev])?;
            ns_run(ns, &["ip", "link", "set", dev, "up"])?;
            ns_run(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        if rate_mbit > 0 {
            let rate = format!("{rate_mbit}mbit");
            ns_run(
                &p.srv,
                &[
                    "tc", "qdisc", "add", "dev", &b, "root", "tbf", "rate", &rate, "burst", "64kb",
                    "latency", "50ms",
                ],
            )?;
        }
        Ok(p)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in [&self.cpe, &self.srv] {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

fn ns_run(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Serves `GET /blob/N` (N bytes of 0x5a) on the listener, a thread per connection. The
/// threads end with the process.
fn serve(l: TcpListener) {
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = answer(c);
            });
        }
    });
}

fn answer(mut c: TcpStream) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut b)?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&b[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let n: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.strip_prefix("/blob/"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
    )?;
    let chunk = [0x5au8; 65536];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        c.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// Runs a diagnostic with the agent's runner on a current-thread runtime in namespace `ns`;
/// returns its outcome and wall time.
fn runner(ns: &str, kind: Kind, inputs: &[(&str, String)]) -> Result<(Outcome, Duration), String> {
    let inputs: BTreeMap<String, String> = inputs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    in_ns(Some(ns), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let o = rt.block_on(cwmpd::diag::run(kind, &inputs, None, &Limits::default()));
        Ok((o, t0.elapsed()))
    })?
}

/// Runs `cmd` from a thread in `ns` (the child inherits the namespace, no `ip netns exec` in
/// between); returns stdout and the wall time from spawn to exit.
fn tool(ns: &str, cmd: &[&str]) -> Result<(String, Duration), String> {
    in_ns(Some(ns), || {
        let t0 = Instant::now();
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("{}: {e}", cmd[0]))?;
        let took = t0.elapsed();
        if !out.status.success() {
            return Err(format!(
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok((String::from_utf8_lossy(&out.stdout).into_owned(), took))
    })?
}

/// Seconds since the epoch of a TR-181 dateTime with a fraction (`…T22:01:02.123456Z`).
fn when(s: &str) -> Option<f64> {
    let whole = cwmpd::util::time::parse_datetime(&format!("{}Z", s.get(..19)?))?;
    let frac = s
        .get(19..)
        .and_then(|f| f.strip_prefix('.'))
        .map(|f| f.trim_end_matches('Z'))
        .and_then(|f| format!("0.{f}").parse::<f64>().ok())
        .unwrap_or(0.0);
    Some(whole as f64 + frac)
}

fn value<'a>(o: &'a Outcome, n: &str) -> Result<&'a str, String> {
    o.value(n).ok_or(format!("{n} missing"))
}

fn num(o: &Outcome, n: &str) -> Result<f64, String> {
    value(o, n)?
        .parse()
        .map_err(|_| format!("{n} is not a number"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// p50 of each column over runs.
#[derive(Default)]
struct Cols(Vec<Vec<f64>>);

impl Cols {
    fn push(&mut self, row: &[f64]) {
        if self.0.is_empty() {
            self.0 = vec![Vec::new(); row.len()];
        }
        for (c, v) in self.0.iter_mut().zip(row) {
            c.push(*v);
        }
    }
    fn p50(&mut self, i: usize) -> f64 {
        median(&mut self.0[i])
    }
}

pub fn run(o: &Opts) -> Result<(), String> {
    if let Some(why) = crate::rig::netns_unavailable() {
        return Err(format!("needs network namespaces: {why}"));
    }
    for t in ["tc", "ping", "curl"] {
        if !have(t) {
            return Err(format!(
                "{t} is not installed (apt-get install iproute2 iputils-ping curl)"
            ));
        }
    }
    let pair = Pair::build(o.rate_mbit)?;
    let addr: SocketAddr = format!("{SRV_IP}:{HTTP_PORT}").parse().unwrap();
    let l = in_ns(Some(&pair.srv), || TcpListener::bind(addr))?.map_err(|e| e.to_string())?;
    serve(l);
    let mut out = String::new();
    let rate = if o.rate_mbit > 0 {
        format!("shaped to {} Mbit/s (tbf)", o.rate_mbit)
    } else {
        "unshaped".into()
    };
    out.push_str(&format!(
        "cwmpd-bench diag: veth between two namespaces, server egress {rate}; {} runs per figure, p50\n\n",
        o.runs
    ));

    // IPPing: 10 echoes per test, one at a time.
    let echoes = 10;
    let mut agent = Cols::default();
    let mut ping = Cols::default();
    for _ in 0..o.runs {
        let (r, wall) = runner(
            &pair.cpe,
            Kind::IPPing,
            &[
                ("Host", SRV_IP.into()),
                ("NumberOfRepetitions", echoes.to_string()),
                ("Timeout", "1000".into()),
                ("DataBlockSize", "56".into()),
            ],
        )?;
        if r.state != "Complete" || num(&r, "SuccessCount")? != f64::from(echoes) {
            return Err(format!("IPPing: {} {:?}", r.state, r.values));
        }
        agent.push(&[
            num(&r, "MinimumResponseTimeDetailed")?,
            num(&r, "AverageResponseTimeDetailed")?,
            num(&r, "MaximumResponseTimeDetailed")?,
            wall.as_secs_f64() * 1e3,
        ]);
        let n = echoes.to_string();
        let (text, wall) = tool(
            &pair.cpe,
            &[
                "ping", "-n", "-q", "-A", "-c", &n, "-s", "56", "-W", "1", SRV_IP,
            ],
        )?;
        // rtt min/avg/max/mdev = 0.031/0.046/0.071/0.012 ms
        let stats = text
            .lines()
            .find_map(|l| {
                l.split_once(" = ")
                    .filter(|(k, _)| k.contains("min/avg/max"))
            })
            .map(|(_, v)| v.trim_end_matches(" ms").to_string())
            .ok_or(format!("ping printed no summary: {text}"))?;
        let f: Vec<f64> = stats
            .split('/')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        if f.len() < 3 {
            return Err(format!("ping summary {stats:?}"));
        }
        ping.push(&[f[0] * 1e3, f[1] * 1e3, f[2] * 1e3, wall.as_secs_f64() * 1e3]);
    }
    out.push_str(&format!(
        "IPPing, {echoes} echoes of 56 bytes per test:\n\n| | min RTT µs | avg RTT µs | max RTT µs | whole test ms |\n|---|---|---|---|---|\n"
    ));
    for (name, c) in [
        ("cwmpd IPPing (in-process runner)", &mut agent),
        ("`ping -A` (process start included)", &mut ping),
    ] {
        out.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} |\n",
            c.p50(0),
            c.p50(1),
            c.p50(2),
            c.p50(3)
        ));
    }

    // Download: TCP open → last byte, rate, wall.
    let url = format!("http://{SRV_IP}:{HTTP_PORT}/blob/{}", o.size);
    let mut agent = Cols::default();
    let mut curl = Cols::default();
    for _ in 0..o.runs {
        let (r, wall) = runner(&pair.cpe, Kind::Download, &[("DownloadURL", url.clone())])?;
        if r.state != "Complete" {
            return Err(format!("Download: {} {:?}", r.state, r.values));
        }
        let t = |n: &str| when(value(&r, n)?).ok_or(format!("{n}: not a time"));
        let (open, bom, eom) = (t("TCPOpenRequestTime")?, t("BOMTime")?, t("EOMTime")?);
        let bytes = num(&r, "TestBytesReceived")?;
        agent.push(&[
            (eom - open) * 1e3,
            bytes * 8.0 / (eom - bom) / 1e6,
            wall.as_secs_f64() * 1e3,
            bytes,
        ]);
        let (text, wall) = tool(
            &pair.cpe,
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total} %{size_download} %{size_header} %{speed_download}",
                &url,
            ],
        )?;
        let f: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() != 4 || f[1] as u64 != o.size {
            return Err(format!("curl: {text}"));
        }
        curl.push(&[
            f[0] * 1e3,
            f[3] * 8.0 / 1e6,
            wall.as_secs_f64() * 1e3,
            f[1] + f[2],
        ]);
    }
    out.push_str(&format!(
        "\nDownload of {} MiB over http:\n\n| | TCP open → last byte ms | rate Mbit/s | whole test ms | bytes counted |\n|---|---|---|---|---|\n",
        o.size >> 20
    ));
    for (name, c) in [
        (
            "cwmpd DownloadDiagnostics (in-process; rate = TestBytesReceived / (EOMTime − BOMTime))",
            &mut agent,
        ),
        (
            "`curl -o /dev/null` (time_total, speed_download; bytes = body + headers)",
            &mut curl,
        ),
    ] {
        out.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
            c.p50(0),
            c.p50(1),
            c.p50(2),
            c.p50(3)
        ));
    }

    // End to end through the release agent.
    let (ping_e2e, dl_e2e) = end_to_end(&pair, o.runs, &url)?;
    out.push_str(&format!(
        "\nThrough the release agent (its session that sets DiagnosticsState = Requested ends → the `8 DIAGNOSTICS COMPLETE` Inform arrives), p50:\n\n\
         | diagnostic | Requested → 8 DIAGNOSTICS COMPLETE ms |\n|---|---|\n\
         | IPPing, 1 echo | {ping_e2e:.2} |\n| Download {} MiB | {dl_e2e:.1} |\n",
        o.size >> 20
    ));
    drop(pair);
    print!("{out}");
    if let Some(dir) = &o.out {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("diag.md"), &out).map_err(|e| e.to_string())?;
        println!("\nwrote {}/diag.md", dir.display());
    }
    Ok(())
}

/// p50 of (session end → 8 DIAGNOSTICS COMPLETE Inform) in ms for a one-echo IPPing and for
/// the download, the release agent and the test ACS both in the cpe namespace.
fn end_to_end(pair: &Pair, runs: usize, url: &str) -> Result<(f64, f64), String> {
    let (agent_bin, _) = sibling_binaries()?;
    let dir = std::env::temp_dir().join(format!("cwmpd-bench-diag-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let acs = cwmp_testacs::try_spawn_in_netns(
        &pair.cpe,
        "127.0.0.1:0".parse().unwrap(),
        AcsOptions::default(),
    )
    .map_err(|e| format!("test ACS: {e}"))?;
    let sock = dir.join("ctl.sock");
    let cfg = format!(
        "[agent]\nstate_dir = \"{d}/state\"\ndatamodel = [\"{m}\"]\ncontrol_socket = \"{s}\"\nlog_level = \"warn\"\n\
         [connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"127.0.0.1:0\"\n\
         [parameters]\n\"Device.ManagementServer.URL\" = \"{u}\"\n\"Device.ManagementServer.PeriodicInformEnable\" = \"false\"\n",
        d = dir.display(),
        m = cwmp_testacs::datamodel_dir().display(),
        s = sock.display(),
        u = acs.url()
    );
    let cfg_path = dir.join("cwmpd.toml");
    std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
    let child = in_ns(Some(&pair.cpe), || {
        Command::new(&agent_bin)
            .args(["run", "-c"])
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
    })?
    .map_err(|e| format!("{}: {e}", agent_bin.display()))?;
    let _guard = Kill(child);
    let wait = Duration::from_secs(60);
    let mut seen = 1;
    if acs.wait_sessions(seen, wait).len() < seen {
        return Err("the agent's boot session did not come".into());
    }
    let object = |k: Kind| k.object();
    let mut measure = |params: Vec<(String, String)>| -> Result<f64, String> {
        acs.queue(vec![AcsRequest::SetParameterValues {
            list: params
                .into_iter()
                .map(|(name, value)| ParamValue {
                    name,
                    value,
                    xsi_type: None,
                })
                .collect(),
            parameter_key: String::new(),
        }]);
        cwmpd::ctl::request(&sock, &serde_json::json!({"op": "inform"}))
            .map_err(|e| format!("control socket: {e}"))?;
        seen += 2;
        let s = acs.wait_sessions(seen, wait);
        let (Some(set), Some(done)) = (s.get(seen - 2), s.get(seen - 1)) else {
            return Err("the diagnostic's sessions did not come".into());
        };
        let dc = done.inform.as_ref().is_some_and(|i| {
            i.events
                .iter()
                .any(|e| e.event_code == "8 DIAGNOSTICS COMPLETE")
        });
        match (set.ended_at, done.inform_at) {
            (Some(a), Some(b)) if dc => Ok(b.duration_since(a).as_secs_f64() * 1e3),
            _ => Err("no 8 DIAGNOSTICS COMPLETE session after the set".into()),
        }
    };
    let ping_obj = object(Kind::IPPing);
    let dl_obj = object(Kind::Download);
    let mut p = Vec::new();
    let mut d = Vec::new();
    for _ in 0..runs {
        p.push(measure(vec![
            (format!("{ping_obj}Host"), SRV_IP.into()),
            (format!("{ping_obj}NumberOfRepetitions"), "1".into()),
            (format!("{ping_obj}DiagnosticsState"), "Requested".into()),
        ])?);
        d.push(measure(vec![
            (format!("{dl_obj}DownloadURL"), url.into()),
            (format!("{dl_obj}DiagnosticsState"), "Requested".into()),
        ])?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((median(&mut p), median(&mut d)))
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
