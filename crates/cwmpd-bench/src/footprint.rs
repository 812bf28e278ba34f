//! `cwmpd-bench footprint` (issue #14): the agent's size and memory, judged against the
//! footprint targets.
//!
//! 1. Stripped size of every `cwmpd` found: the release agent next to the bench,
//!    `<target>/dist/<triple>/cwmpd` (cross/build.sh) and `<target>/footprint/<set>/release/cwmpd`
//!    (the x86_64 feature sets, built by `--build-features`). Missing ones are "not built".
//! 2. Idle memory with the HTTP, UDP/STUN and XMPP mechanisms up (the environment of
//!    `cwmpd-bench cr`): RSS, PSS (smaps_rollup), RssAnon, RssFile after a settle time.
//! 3. Peak RSS (VmHWM) of the 10,000-parameter GPV session (`session::measure`).
//! 4. Peak RSS of a fresh agent per hostile/huge ACS message, with what the agent answered.
//!
//! Writes `DIR/footprint.md` and `DIR/footprint.csv` (default `results/`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cwmp_testacs::{AcsOptions, SessionRecord, try_spawn_in_thread};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, ParamValue};

use crate::rig::{self, Proc, ProsodySetup};

/// Rows of the bench's data model (10 parameters each): the 10,000-parameter model of
/// `cwmpd-bench session`.
const ROWS: usize = 1_000;
const COLUMNS: usize = 10;
/// How long one hostile session may take.
const CASE_WAIT: Duration = Duration::from_secs(180);
/// Bytes in a MB for binary sizes (the README's "5.51 MB" are millions of bytes).
const MB: f64 = 1_000_000.0;
/// kB (KiB, as /proc gives them) in a MB of memory (the README's RSS figures: MiB).
const KB_PER_MB: f64 = 1024.0;

pub(crate) struct Opts {
    pub(crate) out: PathBuf,
    pub(crate) build_features: bool,
    pub(crate) skip_hostile: bool,
    pub(crate) skip_idle: bool,
    pub(crate) settle_seconds: f64,
}

impl Opts {
    pub(crate) fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            out: PathBuf::from("results"),
            build_features: false,
            skip_hostile: false,
            skip_idle: false,
            settle_seconds: 10.0,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--out" => o.out = PathBuf::from(it.next().ok_or("--out needs a value")?),
                "--settle-seconds" => {
                    o.settle_seconds = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                        .ok_or("--settle-seconds needs a number of seconds")?
                }
                "--build-features" => o.build_features = true,
                "--skip-hostile" => o.skip_hostile = true,
                "--skip-idle" => o.skip_idle = true,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and judging (unit-tested)
// ---------------------------------------------------------------------------------------------

/// The kB value of `field` in a /proc file of `Name:   123 kB` lines (status, smaps_rollup).
pub(crate) fn kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// "met" when `value` ≤ `limit`, else "missed by X MB".
pub(crate) fn judge(value: f64, limit: f64) -> String {
    if value <= limit {
        "met".into()
    } else {
        format!("missed by {:.2} MB", value - limit)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Sizes
// ---------------------------------------------------------------------------------------------

/// The x86_64 feature sets: name and the cargo flags that build it.
pub(crate) const FEATURE_SETS: [(&str, &[&str]); 7] = [
    ("all", &[]),
    // What each part of issue #18 costs: everything but that one feature.
    (
        "no-bulkdata",
        &[
            "--no-default-features",
            "--features",
            "xmpp,upnp,stun,diagnostics,software-modules,cwmp14,lightweight-notif",
        ],
    ),
    (
        "no-cwmp14",
        &[
            "--no-default-features",
            "--features",
            "xmpp,upnp,stun,diagnostics,software-modules,bulkdata,lightweight-notif",
        ],
    ),
    (
        "no-lightweight-notif",
        &[
            "--no-default-features",
            "--features",
            "xmpp,upnp,stun,diagnostics,software-modules,bulkdata,cwmp14",
        ],
    ),
    (
        "http+stun+upnp",
        &["--no-default-features", "--features", "stun,upnp"],
    ),
    (
        "http+stun",
        &["--no-default-features", "--features", "stun"],
    ),
    ("http", &["--no-default-features"]),
];

/// The cross targets looked for under `dist/`, by the name used in the targets.
const CROSS: [(&str, &[&str]); 3] = [
    (
        "armhf",
        &[
            "armv7-unknown-linux-gnueabihf",
            "armv7-unknown-linux-musleabihf",
        ],
    ),
    (
        "arm64",
        &["aarch64-unknown-linux-gnu", "aarch64-unknown-linux-musl"],
    ),
    (
        "mipsel",
        &["mipsel-unknown-linux-gnu", "mipsel-unknown-linux-musl"],
    ),
];

struct SizeRow {
    target: String,
    set: String,
    path: PathBuf,
    /// Stripped bytes, or why there is none.
    size: Result<u64, String>,
}

/// The cargo target directory the bench runs from (`<dir>/release/cwmpd-bench`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe.parent();
    match profile_dir.and_then(Path::parent) {
        Some(d) if d.join("CACHEDIR.TAG").exists() || d.join("release").is_dir() => d.to_path_buf(),
        _ => cwmp_testacs::binaries::workspace_root().join("target"),
    }
}

fn size_of(path: &Path) -> Result<u64, String> {
    if !path.is_file() {
        return Err("not built".into());
    }
    crate::cr::stripped_size(path).map(|(s, _)| s)
}

/// `cargo build --release -p cwmpd --target-dir <td>/footprint/<set> FLAGS` for every set.
fn build_feature_sets(td: &Path, notes: &mut Vec<String>) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (set, flags) in FEATURE_SETS {
        let dir = td.join("footprint").join(set);
        eprintln!(
            "  building feature set {set}: cargo build --release -p cwmpd --target-dir {} {}",
            dir.display(),
            flags.join(" ")
        );
        let t0 = Instant::now();
        let st = Command::new(&cargo)
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "cwmpd",
                "--target-dir",
            ])
            .arg(&dir)
            .args(flags)
            .current_dir(cwmp_testacs::binaries::workspace_root())
            .status();
        match st {
            Ok(s) if s.success() => eprintln!("    built in {:.0} s", t0.elapsed().as_secs_f64()),
            Ok(s) => notes.push(format!("building feature set {set} failed ({s})")),
            Err(e) => notes.push(format!("building feature set {set}: {e}")),
        }
    }
}

fn sizes(agent_bin: &Path, td: &Path) -> Vec<SizeRow> {
    let mut rows = vec![SizeRow {
        target: format!("{} (next to the bench)", std::env::consts::ARCH),
        set: "all".into(),
        path: agent_bin.to_path_buf(),
        size: size_of(agent_bin),
    }];
    for (set, _) in FEATURE_SETS {
        let path = td.join("footprint").join(set).join("release/cwmpd");
        rows.push(SizeRow {
            target: std::env::consts::ARCH.into(),
            set: set.into(),
            size: size_of(&path),
            path,
        });
    }
    // cross/build.sh's output: every triple found, and the expected ones as "not built".
    let dist = td.join("dist");
    let mut triples: Vec<String> = std::fs::read_dir(&dist)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("cwmpd").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for (_, ts) in CROSS {
        if !ts.iter().any(|t| triples.iter().any(|x| x == t)) {
            triples.push(ts[0].to_string());
        }
    }
    triples.sort();
    for t in triples {
        let path = dist.join(&t).join("cwmpd");
        rows.push(SizeRow {
            target: t.clone(),
            set: "all".into(),
            size: size_of(&path),
            path,
        });
        // Feature-set cross builds, when someone made them: dist/<triple>/<set>/cwmpd.
        for (set, _) in &FEATURE_SETS[1..] {
            let path = dist.join(&t).join(set).join("cwmpd");
            if path.is_file() || (t.starts_with("armv7") && *set == "http+stun") {
                rows.push(SizeRow {
                    target: t.clone(),
                    set: set.to_string(),
                    size: size_of(&path),
                    path,
                });
            }
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// 2. Idle memory
// ---------------------------------------------------------------------------------------------

struct Idle {
    rss_kb: u64,
    pss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    threads: u64,
    /// Which mechanisms were up, and why XMPP was not.
    mechanisms: String,
}

fn idle(base: &Path, agent_bin: &Path, connreq_bin: &Path, settle: f64) -> Result<Idle, String> {
    let prosody = match rig::prosody_unavailable() {
        Some(why) => Err(why),
        None => ProsodySetup::create(&base.join("prosody")),
    };
    let lay = crate::cr::Layout {
        mode: "loopback",
        acs_ns: None,
        cpe_ns: None,
        acs_ip: "127.0.0.1",
        http_listen: "127.0.0.1:0".into(),
        udp_listen: format!("127.0.0.1:{}", rig::free_udp_port()),
        public_url: None,
    };
    let mut env = crate::cr::start_env(lay, &base.join("idle"), agent_bin, connreq_bin, &prosody)?;
    let pid = env.agent.pid();
    eprintln!(
        "  idle: agent {pid} up (boot session, STUN binding{}); settling {settle} s",
        if env.xmpp.is_ok() { ", XMPP login" } else { "" }
    );
    std::thread::sleep(Duration::from_secs_f64(settle));
    env.agent.alive()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("/proc/{pid}/smaps_rollup: {e}"))?;
    let get = |text: &str, f: &str, file: &str| {
        kb_field(text, f).ok_or_else(|| format!("no {f} in /proc/{pid}/{file}"))
    };
    let stun = crate::cr::stun_requests(env.stun_api);
    let mechanisms = match &env.xmpp {
        Ok(_) => format!(
            "HTTP CR listener, UDP CR + STUN binding ({stun} binding requests), XMPP (Prosody); UPnP off"
        ),
        Err(e) => format!(
            "HTTP CR listener, UDP CR + STUN binding ({stun} binding requests); XMPP NOT up: {e}; UPnP off"
        ),
    };
    Ok(Idle {
        rss_kb: get(&status, "VmRSS", "status")?,
        pss_kb: get(&rollup, "Pss", "smaps_rollup")?,
        anon_kb: get(&status, "RssAnon", "status")?,
        file_kb: get(&status, "RssFile", "status")?,
        threads: get(&status, "Threads", "status")?,
        mechanisms,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Hostile and huge ACS messages
// ---------------------------------------------------------------------------------------------

/// What the ACS sends in the session.
enum Message {
    /// Through the test ACS.
    Rpc(AcsRequest),
    /// A raw SOAP body (the test ACS escapes all text, so it cannot send nested elements).
    Raw(String),
}

struct Case {
    name: &'static str,
    message: Option<Message>,
}

struct CaseResult {
    /// Bytes of the ACS's message.
    bytes: usize,
    answer: String,
    /// VmHWM, kB.
    peak_kb: Result<u64, String>,
}

fn leaf(i: usize) -> String {
    let (r, c) = (i / COLUMNS % ROWS + 1, i % COLUMNS);
    format!("Device.X_00D09E_Row.{r}.Column{c}")
}

/// A valid value for column `c` (string, unsignedInt, boolean, int, dateTime).
fn column_value(i: usize) -> (String, &'static str) {
    match i % COLUMNS % 5 {
        0 => (format!("footprint {i}"), "xsd:string"),
        1 => ((i % 1000).to_string(), "xsd:unsignedInt"),
        2 => (
            (if i.is_multiple_of(2) { "true" } else { "false" }).into(),
            "xsd:boolean",
        ),
        3 => (format!("-{}", i % 1000), "xsd:int"),
        _ => ("2026-12-05T07:00:00Z".into(), "xsd:dateTime"),
    }
}

const SOAP_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:soap-enc=\"http://schemas.xmlsoap.org/soap/encoding/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:cwmp=\"urn:dslforum-org:cwmp-1-0\"><soap:Header><cwmp:ID soap:mustUnderstand=\"1\">";

fn envelope(id: &str, body: &str) -> String {
    format!("{SOAP_HEAD}{id}</cwmp:ID></soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>")
}

fn cases() -> Vec<Case> {
    const DEPTH: usize = 10_000;
    let gpv = |names: Vec<String>| Some(Message::Rpc(AcsRequest::GetParameterValues { names }));
    vec![
        Case {
            name: "baseline: boot session only",
            message: None,
        },
        Case {
            name: "GPV, 50,000 valid names (the 10,000 leaves ×5)",
            message: gpv((0..50_000).map(leaf).collect()),
        },
        Case {
            name: "GPV, 50,000 distinct non-existent names",
            message: gpv((0..50_000)
                .map(|i| format!("Device.X_00D09E_Nope{i}.Value"))
                .collect()),
        },
        Case {
            name: "SPV, 10,000 valid values",
            message: Some(Message::Rpc(AcsRequest::SetParameterValues {
                list: (0..ROWS * COLUMNS)
                    .map(|i| {
                        let (v, t) = column_value(i);
                        ParamValue::new(leaf(i), v, t)
                    })
                    .collect(),
                parameter_key: "footprint".into(),
            })),
        },
        Case {
            name: "GPN Device. NextLevel false (10k model)",
            message: Some(Message::Rpc(AcsRequest::GetParameterNames {
                path: "Device.".into(),
                next_level: false,
            })),
        },
        Case {
            name: "20 MB of whitespace in a GPV name (valid envelope)",
            message: gpv(vec![" ".repeat(20 << 20)]),
        },
        Case {
            name: "elements nested 10,000 deep in a GPV (raw ACS)",
            message: Some(Message::Raw(envelope(
                "deep",
                &format!(
                    "<cwmp:GetParameterValues><ParameterNames>{}{}</ParameterNames></cwmp:GetParameterValues>",
                    "<a>".repeat(DEPTH),
                    "</a>".repeat(DEPTH)
                ),
            ))),
        },
    ]
}

/// Writes the agent's configuration (10,000-parameter model) into `dir`; returns its path.
fn agent_config(dir: &Path, acs_url: &str) -> Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(dir);
    crate::session::write_bench_model(&dir.join("vendor")).map_err(|e| e.to_string())?;
    let mut cfg = format!(
        "[agent]\nstate_dir = \"{d}/state\"\ndatamodel = [\"{m}\", \"{d}/vendor\"]\ncontrol_socket = \"{d}/ctl.sock\"\nlog_level = \"warn\"\npoll_interval = 3600\n[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"127.0.0.1:0\"\n[parameters]\n\"Device.ManagementServer.URL\" = \"{acs_url}\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.SerialNumber\" = \"FOOTPRINT\"\n",
        d = dir.display(),
        m = cwmp_testacs::datamodel_dir().display(),
    );
    for r in 1..=ROWS {
        let _ = writeln!(
            cfg,
            "\"Device.X_00D09E_Row.{r}.Column0\" = \"value of row {r}\""
        );
    }
    let path = dir.join("cwmpd.toml");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    Ok(path)
}

fn start_agent(agent_bin: &Path, cfg: &Path, dir: &Path) -> Result<Proc, String> {
    let mut c = Command::new(agent_bin);
    c.args(["run", "-c"]).arg(cfg);
    Proc::spawn("cwmpd", c, dir.join("agent.log"))
}

/// VmHWM of the agent, or why it is gone.
fn peak(agent: &mut Proc) -> Result<u64, String> {
    agent.alive()?;
    crate::session::status_kb(agent.pid(), "VmHWM").ok_or_else(|| "no VmHWM".into())
}

/// The agent's last log line (why it failed a session), shortened.
fn last_log_line(agent: &Proc) -> String {
    let t = agent.text();
    let l = t.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    // Without the timestamp and level: `2026-12-05T06:42:54.920876Z  WARN session failed: …`.
    let l = match l.split_once(" WARN ").or_else(|| l.split_once(" ERROR ")) {
        Some((_, rest)) => rest.trim(),
        None => l.trim(),
    };
    let l: String = l.chars().take(160).collect();
    l.replace('|', "/")
}

fn describe(rec: &SessionRecord) -> String {
    match rec.received.first() {
        Some(CpeMessage::Fault(f)) => format!("Fault {} ({})", f.code, f.string),
        Some(CpeMessage::GetParameterValuesResponse { list }) => {
            format!("GetParameterValuesResponse, {} values", list.len())
        }
        Some(CpeMessage::GetParameterNamesResponse { list }) => {
            format!("GetParameterNamesResponse, {} names", list.len())
        }
        Some(CpeMessage::SetParameterValuesResponse { status }) => {
            format!("SetParameterValuesResponse, status {status}")
        }
        Some(m) => m.method_name().to_string(),
        None if rec.aborted => {
            "no answer: the agent dropped the session (connection closed)".into()
        }
        None if !rec.errors.is_empty() => format!("no answer: {}", rec.errors.join("; ")),
        None => "no answer".into(),
    }
}

fn run_case(k: usize, case: &Case, base: &Path, agent_bin: &Path) -> Result<CaseResult, String> {
    let dir = base.join(format!("hostile-{k}"));
    match &case.message {
        Some(Message::Raw(body)) => {
            let acs = RawAcs::start(body.clone())?;
            let cfg = agent_config(&dir, &acs.url())?;
            let mut agent = start_agent(agent_bin, &cfg, &dir)?;
            let t0 = Instant::now();
            let answer = loop {
                if let Some(a) = acs.outcome() {
                    break a;
                }
                agent.alive()?;
                if t0.elapsed() > CASE_WAIT {
                    break format!("no answer within {} s", CASE_WAIT.as_secs());
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            std::thread::sleep(Duration::from_millis(200));
            let peak_kb = peak(&mut agent);
            let answer = if answer.starts_with("no answer") {
                format!("{answer}; agent: {}", last_log_line(&agent))
            } else {
                answer
            };
            Ok(CaseResult {
                bytes: body.len(),
                answer,
                peak_kb,
            })
        }
        msg => {
            let acs = try_spawn_in_thread(
                "127.0.0.1:0".parse().map_err(|_| "addr")?,
                AcsOptions::default(),
            )
            .map_err(|e| format!("test ACS: {e}"))?;
            let bytes = match msg {
                Some(Message::Rpc(rpc)) => {
                    acs.queue(vec![rpc.clone()]);
                    rpc_bytes(rpc)
                }
                _ => 0,
            };
            // Claimed by the boot session (the first Inform).
            let cfg = agent_config(&dir, &acs.url())?;
            let mut agent = start_agent(agent_bin, &cfg, &dir)?;
            let t0 = Instant::now();
            while acs.wait_ended(1, Duration::from_millis(200)) < 1 {
                agent.alive()?;
                if t0.elapsed() > CASE_WAIT {
                    return Err(format!(
                        "no session end within {} s: {}",
                        CASE_WAIT.as_secs(),
                        agent.text()
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            let peak_kb = peak(&mut agent);
            let rec = acs.session(0).ok_or("no session record")?;
            let mut answer = match msg {
                None if rec.succeeded() => "boot session completed".into(),
                _ => describe(&rec),
            };
            if answer.starts_with("no answer") {
                let _ = write!(answer, "; agent: {}", last_log_line(&agent));
            }
            Ok(CaseResult {
                bytes,
                answer,
                peak_kb,
            })
        }
    }
}

/// Size of the envelope the test ACS sends for `rpc`.
fn rpc_bytes(rpc: &AcsRequest) -> usize {
    use cwmpd::cwmp::soap::{AcsMessage, Envelope, emit_acs};
    let env = Envelope::new(AcsMessage::Request(rpc.clone())).with_id("acs-1".to_string());
    let mut out = Vec::new();
    emit_acs(&env, &mut out);
    out.len()
}

/// A loopback ACS speaking raw HTTP/1.1: answers the Inform with an InformResponse, the CPE's
/// empty POST with `body`, and records the CPE's next message (then 204).
struct RawAcs {
    addr: SocketAddr,
    outcome: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawAcs {
    fn start(body: String) -> Result<RawAcs, String> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let outcome: Arc<Mutex<Option<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s) = (outcome.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut sent = false;
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => raw_conn(c, &body, &mut sent, &o, &s),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(RawAcs {
            addr,
            outcome,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://{}/acs", self.addr)
    }

    fn outcome(&self) -> Option<String> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for RawAcs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

/// Serves one connection of the raw ACS (requests with Content-Length, as the agent sends).
fn raw_conn(
    mut c: TcpStream,
    hostile: &str,
    sent: &mut bool,
    outcome: &Mutex<Option<String>>,
    stop: &AtomicBool,
) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let set = |s: String| {
        let mut o = outcome.lock().unwrap_or_else(|e| e.into_inner());
        if o.is_none() {
            *o = Some(s);
        }
    };
    let mut buf = Vec::new();
    loop {
        let mut tmp = [0u8; 65536];
        let (head_end, len) = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= i + 4 + len {
                    break (i + 4, len);
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match c.read(&mut tmp) {
                Ok(0) => {
                    if *sent {
                        set("no answer: the agent dropped the session (connection closed)".into());
                    }
                    return;
                }
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    if *sent {
                        set(format!("no answer: connection error {e}"));
                    }
                    return;
                }
            }
        };
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        buf.drain(..head_end + len);
        let reply: Vec<u8> = if body.contains("Inform>") && body.contains("<cwmp:Inform") {
            ok_xml(&envelope(
                "ir",
                "<cwmp:InformResponse><MaxEnvelopes>1</MaxEnvelopes></cwmp:InformResponse>",
            ))
        } else if body.trim().is_empty() && !*sent {
            *sent = true;
            ok_xml(hostile)
        } else {
            if *sent {
                set(answer_of(&body));
            }
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_vec()
        };
        if c.write_all(&reply).is_err() {
            return;
        }
    }
}

fn ok_xml(body: &str) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

/// "Fault 9004 (…)" or the method of a SOAP body the agent sent.
fn answer_of(body: &str) -> String {
    let tag = |t: &str| {
        let i = body.find(&format!("<{t}>"))? + t.len() + 2;
        Some(body[i..].split('<').next()?.to_string())
    };
    if let Some(code) = tag("FaultCode") {
        return format!("Fault {code} ({})", tag("FaultString").unwrap_or_default());
    }
    if body.trim().is_empty() {
        return "empty POST (no answer)".into();
    }
    let method = body
        .split("<soap:Body>")
        .nth(1)
        .or_else(|| body.split(":Body>").nth(1))
        .and_then(|b| b.trim_start().strip_prefix('<'))
        .and_then(|b| b.split([' ', '>', '/']).next())
        .unwrap_or("?");
    method.rsplit(':').next().unwrap_or(method).to_string()
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// A line of the summary: figure, value (in MB) or why missing, target (MB).
struct Summary {
    figure: String,
    value: Result<f64, String>,
    target: f64,
    note: String,
}

impl Summary {
    fn verdict(&self) -> String {
        match &self.value {
            Ok(v) => judge(*v, self.target),
            Err(_) => "not measured".into(),
        }
    }
}

fn mb_size(b: u64) -> String {
    format!("{:.2} MB ({b} B)", b as f64 / MB)
}

fn mb_kb(kb: u64) -> String {
    format!("{:.2} MB", kb as f64 / KB_PER_MB)
}

fn csv_q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(crate) fn run(o: &Opts) -> Result<(), String> {
    let (agent_bin, connreq_bin) = crate::session::sibling_binaries()?;
    let base = std::env::temp_dir().join(format!("cwmpd-bench-footprint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let r = run_in(o, &base, &agent_bin, &connreq_bin);
    let _ = std::fs::remove_dir_all(&base);
    r
}

fn run_in(o: &Opts, base: &Path, agent_bin: &Path, connreq_bin: &Path) -> Result<(), String> {
    let mut notes = Vec::new();
    let mut md = String::new();
    let mut csv = String::from("section,item,value,unit,target,verdict,note\n");
    let td = target_dir();
    eprintln!(
        "cwmpd-bench footprint: agent {}, target directory {}",
        agent_bin.display(),
        td.display()
    );
    let mut summary = Vec::new();

    // 1. Sizes.
    if o.build_features {
        build_feature_sets(&td, &mut notes);
    }
    let sizes = sizes(agent_bin, &td);
    md.push_str("| binary | target | feature set | stripped size |\n|---|---|---|---|\n");
    for r in &sizes {
        let shown = r
            .path
            .strip_prefix(&td)
            .map(|p| Path::new("target").join(p))
            .unwrap_or_else(|_| r.path.clone());
        let v = match &r.size {
            Ok(b) => mb_size(*b),
            Err(e) => e.clone(),
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {v} |",
            shown.display(),
            r.target,
            r.set
        );
        let _ = writeln!(
            csv,
            "size,{},{},B,,,{}",
            csv_q(&format!("{} {}", r.target, r.set)),
            r.size.as_ref().map(|b| b.to_string()).unwrap_or_default(),
            csv_q(&format!(
                "{}{}",
                shown.display(),
                r.size
                    .as_ref()
                    .err()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ))
        );
    }
    let size_of_set = |pred: &dyn Fn(&SizeRow) -> bool| -> (Result<f64, String>, String) {
        match sizes.iter().find(|r| pred(r) && r.size.is_ok()) {
            Some(r) => (
                Ok(*r.size.as_ref().unwrap_or(&0) as f64 / MB),
                r.path.display().to_string(),
            ),
            None => (Err("not built".into()), String::new()),
        }
    };
    let x86 = std::env::consts::ARCH;
    // The shipped build (cross/build.sh, std for size: what the amd64 package carries) when it
    // is there, else the release build next to the bench.
    let shipped = format!("{x86}-unknown-linux-gnu");
    let (v, note) = match size_of_set(&|r| r.set == "all" && r.target == shipped) {
        (Ok(v), note) => (Ok(v), note),
        _ => size_of_set(&|r| r.set == "all" && r.target.starts_with(x86)),
    };
    summary.push(Summary {
        figure: format!("stripped cwmpd, {x86}, all features"),
        value: v,
        target: 3.5,
        note,
    });
    for (arch, triples, set, target) in [
        ("armhf", CROSS[0].1, "all", 2.0),
        ("arm64", CROSS[1].1, "all", 2.8),
        ("mipsel", CROSS[2].1, "all", 3.5),
        ("armhf", CROSS[0].1, "http+stun", 1.3),
    ] {
        let (v, note) = size_of_set(&|r| r.set == set && triples.iter().any(|t| *t == r.target));
        summary.push(Summary {
            figure: format!(
                "stripped cwmpd, {arch}, {}",
                if set == "all" { "all features" } else { set }
            ),
            value: v,
            target,
            note,
        });
    }
    md.push('\n');

    // 2. Idle.
    if o.skip_idle {
        summary.push(Summary {
            figure: "agent PSS at idle, all mechanisms up".into(),
            value: Err("--skip-idle".into()),
            target: 3.5,
            note: String::new(),
        });
        summary.push(Summary {
            figure: "agent RssAnon at idle".into(),
            value: Err("--skip-idle".into()),
            target: 1.0,
            note: String::new(),
        });
    } else {
        eprintln!("idle:");
        match idle(base, agent_bin, connreq_bin, o.settle_seconds) {
            Ok(i) => {
                let _ = writeln!(
                    md,
                    "| idle agent, after {} s | RSS | PSS | RssAnon | RssFile | threads | mechanisms |\n|---|---|---|---|---|---|---|\n| {x86} | {} | {} | {} | {} | {} | {} |\n",
                    o.settle_seconds,
                    mb_kb(i.rss_kb),
                    mb_kb(i.pss_kb),
                    mb_kb(i.anon_kb),
                    mb_kb(i.file_kb),
                    i.threads,
                    i.mechanisms
                );
                for (k, v) in [
                    ("RSS", i.rss_kb),
                    ("PSS", i.pss_kb),
                    ("RssAnon", i.anon_kb),
                    ("RssFile", i.file_kb),
                ] {
                    let _ = writeln!(csv, "idle,{k},{v},kB,,,{}", csv_q(&i.mechanisms));
                }
                summary.push(Summary {
                    figure: "agent PSS at idle, all mechanisms up".into(),
                    value: Ok(i.pss_kb as f64 / KB_PER_MB),
                    target: 3.5,
                    note: i.mechanisms.clone(),
                });
                summary.push(Summary {
                    figure: "agent RssAnon at idle".into(),
                    value: Ok(i.anon_kb as f64 / KB_PER_MB),
                    target: 1.0,
                    note: format!("RssFile {}", mb_kb(i.file_kb)),
                });
            }
            Err(e) => {
                eprintln!("  idle environment failed: {e}");
                let _ = writeln!(md, "Idle: the environment did not start: {e}\n");
                let _ = writeln!(csv, "idle,,,,,,{}", csv_q(&e));
                for (f, t) in [
                    ("agent PSS at idle, all mechanisms up", 3.5),
                    ("agent RssAnon at idle", 1.0),
                ] {
                    summary.push(Summary {
                        figure: f.into(),
                        value: Err(e.clone()),
                        target: t,
                        note: String::new(),
                    });
                }
            }
        }
    }

    // 3. The 10k GPV session.
    eprintln!("10,000-parameter GPV session:");
    match crate::session::measure(10_000, 3) {
        Ok(s) => {
            let _ = writeln!(csv, "session,GPV peak VmHWM,{},kB,,,", s.peak_kb);
            summary.push(Summary {
                figure: format!("agent peak RSS, {}-parameter GPV session", s.params),
                value: Ok(s.peak_kb as f64 / KB_PER_MB),
                target: 6.0,
                note: format!("VmHWM; session p50 {:.1} ms", s.p50.as_secs_f64() * 1e3),
            });
        }
        Err(e) => summary.push(Summary {
            figure: "agent peak RSS, 10,000-parameter GPV session".into(),
            value: Err(e),
            target: 6.0,
            note: String::new(),
        }),
    }

    // 4. Hostile messages.
    if o.skip_hostile {
        summary.push(Summary {
            figure: "agent peak RSS, hostile/huge ACS messages (max)".into(),
            value: Err("--skip-hostile".into()),
            target: 16.0,
            note: String::new(),
        });
    } else {
        eprintln!("hostile and huge ACS messages (a fresh agent each):");
        md.push_str("| ACS message (one session, fresh agent) | size | agent's answer | agent VmHWM |\n|---|---|---|---|\n");
        let mut worst: Option<(f64, &'static str)> = None;
        let mut failures = Vec::new();
        for (k, case) in cases().into_iter().enumerate() {
            let r = run_case(k, &case, base, agent_bin);
            let (size, answer, peak) = match &r {
                Ok(c) => (
                    match c.bytes {
                        0 => "-".to_string(),
                        b if b < 100_000 => format!("{b} B"),
                        b => format!("{:.2} MB", b as f64 / MB),
                    },
                    c.answer.clone(),
                    c.peak_kb.clone(),
                ),
                Err(e) => ("-".into(), format!("case failed: {e}"), Err(e.clone())),
            };
            eprintln!(
                "  {}: {answer}; VmHWM {}",
                case.name,
                peak.as_ref()
                    .map(|k| mb_kb(*k))
                    .unwrap_or_else(|e| e.clone())
            );
            let _ = writeln!(
                md,
                "| {} | {size} | {} | {} |",
                case.name,
                answer.replace('|', "/"),
                peak.as_ref()
                    .map(|k| mb_kb(*k))
                    .unwrap_or_else(|e| format!("- ({e})"))
            );
            let _ = writeln!(
                csv,
                "hostile,{},{},kB,,,{}",
                csv_q(case.name),
                peak.as_ref().map(|k| k.to_string()).unwrap_or_default(),
                csv_q(&answer)
            );
            match (&peak, case.message.is_some()) {
                (Ok(k), true) => {
                    let mb = *k as f64 / KB_PER_MB;
                    if worst.is_none_or(|(w, _)| mb > w) {
                        worst = Some((mb, case.name));
                    }
                }
                (Err(e), true) => failures.push(format!("{}: {e}", case.name)),
                _ => {}
            }
        }
        md.push('\n');
        summary.push(Summary {
            figure: "agent peak RSS, hostile/huge ACS messages (max)".into(),
            value: match (worst, failures.is_empty()) {
                (Some((w, _)), true) => Ok(w),
                (_, false) => Err(failures.join("; ")),
                (None, true) => Err("no case ran".into()),
            },
            target: 16.0,
            note: worst.map(|(_, n)| n.to_string()).unwrap_or_default(),
        });
    }

    // The summary.
    md.push_str("| figure | value | target | |\n|---|---|---|---|\n");
    for s in &summary {
        let v = match &s.value {
            Ok(v) => format!("{v:.2} MB"),
            Err(e) => e.clone(),
        };
        let _ = writeln!(
            md,
            "| {} | {v} | ≤ {} MB | {} |",
            s.figure,
            s.target,
            s.verdict()
        );
        let _ = writeln!(
            csv,
            "summary,{},{},MB,{},{},{}",
            csv_q(&s.figure),
            s.value
                .as_ref()
                .map(|v| format!("{v:.4}"))
                .unwrap_or_default(),
            s.target,
            csv_q(&s.verdict()),
            csv_q(s.value.as_ref().err().unwrap_or(&s.note))
        );
    }
    notes.push(format!(
        "Sizes: MB = 10^6 bytes, of the binary after strip (the release profile strips already). \
         Memory: MB = 1024 kB as /proc reports them; VmHWM is per process, so each hostile case runs a fresh agent \
         (its boot, model load and the one session). Machine: {}.",
        crate::report::machine()
    ));
    if !notes.is_empty() {
        md.push('\n');
        for n in &notes {
            let _ = writeln!(md, "* {n}");
        }
    }
    println!("cwmpd-bench footprint\n\n{md}");
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    std::fs::write(o.out.join("footprint.md"), &md).map_err(|e| format!("footprint.md: {e}"))?;
    std::fs::write(o.out.join("footprint.csv"), &csv).map_err(|e| format!("footprint.csv: {e}"))?;
    println!(
        "wrote {d}/footprint.md, {d}/footprint.csv",
        d = o.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_and_status_fields() {
        let rollup = "55d0c0a00000-7ffc8a1fe000 ---p 00000000 00:00 0                          [rollup]\n\
                      Rss:                6012 kB\nPss:                3561 kB\nPss_Dirty:           812 kB\n\
                      Pss_Anon:            790 kB\nPss_File:           2771 kB\nShared_Clean:       2600 kB\n";
        assert_eq!(kb_field(rollup, "Pss"), Some(3561));
        assert_eq!(kb_field(rollup, "Pss_Anon"), Some(790));
        assert_eq!(kb_field(rollup, "Rss"), Some(6012));
        assert_eq!(kb_field(rollup, "Swap"), None);
        let status = "Name:\tcwmpd\nVmHWM:\t    9876 kB\nVmRSS:\t    6012 kB\nRssAnon:\t     812 kB\nRssFile:\t    5200 kB\nThreads:\t1\n";
        assert_eq!(kb_field(status, "RssAnon"), Some(812));
        assert_eq!(kb_field(status, "VmHWM"), Some(9876));
        assert_eq!(kb_field(status, "Threads"), Some(1));
        assert_eq!(kb_field(status, "Name"), None);
    }

    #[test]
    fn met_or_missed() {
        assert_eq!(judge(3.5, 3.5), "met");
        assert_eq!(judge(1.2, 1.3), "met");
        assert_eq!(judge(5.51, 3.5), "missed by 2.01 MB");
        let s = Summary {
            figure: "x".into(),
            value: Err("not built".into()),
            target: 2.0,
            note: String::new(),
        };
        assert_eq!(s.verdict(), "not measured");
    }

    #[test]
    fn raw_answers() {
        let fault = envelope(
            "1",
            "<soap:Fault><faultcode>Client</faultcode><detail><cwmp:Fault><FaultCode>9004</FaultCode><FaultString>Resources exceeded</FaultString></cwmp:Fault></detail></soap:Fault>",
        );
        assert_eq!(answer_of(&fault), "Fault 9004 (Resources exceeded)");
        let resp = envelope(
            "1",
            "<cwmp:GetParameterValuesResponse><ParameterList/></cwmp:GetParameterValuesResponse>",
        );
        assert_eq!(answer_of(&resp), "GetParameterValuesResponse");
    }

    #[test]
    fn hostile_messages_are_as_specified() {
        let c = cases();
        let n = |i: usize| match &c[i].message {
            Some(Message::Rpc(AcsRequest::GetParameterValues { names })) => names.clone(),
            _ => panic!("case {i} is not a GPV"),
        };
        let valid = n(1);
        assert_eq!(valid.len(), 50_000);
        assert_eq!(valid[0], "Device.X_00D09E_Row.1.Column0");
        assert_eq!(valid[9_999], "Device.X_00D09E_Row.1000.Column9");
        assert_eq!(valid[10_000], valid[0]);
        let bogus = n(2);
        let distinct: std::collections::HashSet<_> = bogus.iter().collect();
        assert_eq!(distinct.len(), 50_000);
        match &c[3].message {
            Some(Message::Rpc(AcsRequest::SetParameterValues { list, .. })) => {
                assert_eq!(list.len(), 10_000)
            }
            _ => panic!("case 3 is not an SPV"),
        }
        assert!(n(5)[0].len() >= 20 << 20);
        match &c[6].message {
            Some(Message::Raw(b)) => assert_eq!(b.matches("<a>").count(), 10_000),
            _ => panic!("case 6 is not raw"),
        }
    }
}
