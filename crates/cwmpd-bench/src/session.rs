//! `cwmpd-bench session`: a full CWMP session carrying a GetParameterValues of the whole tree
//! (a generated model of ~10,000 parameters) against the project's test ACS on loopback, with
//! the agent's peak RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwmp_testacs::{AcsOptions, spawn_in_thread};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage};

/// The `cwmpd` and `cwmp-connreq` binaries next to this one (what `cargo build --release -p cwmpd
/// -p cwmp-connreq` puts there). Built first when missing or older than their sources (with the
/// profile and target directory of this executable), as when run by `cargo run --release -p
/// cwmpd-bench`, which builds only the bench itself.
pub fn sibling_binaries() -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (agent, connreq) = cwmp_testacs::binaries::agent_and_connreq(&exe)?;
    // CWMPD_BENCH_AGENT: measure another agent binary (e.g. the packaged build in
    // target/dist/x86_64-unknown-linux-gnu/cwmpd) instead of the one next to the bench.
    let agent = std::env::var_os("CWMPD_BENCH_AGENT").map_or(agent, PathBuf::from);
    Ok((agent, connreq))
}

/// Kilobytes of a /proc/PID/status field (VmRSS, VmHWM).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A vendor data-model file with a 10-parameter table; `rows` instances come from the config.
pub(crate) fn write_bench_model(dir: &Path) -> std::io::Result<()> {
    let mut xml = String::from(
        "<dm:document xmlns:dm=\"urn:broadband-forum-org:cwmp:datamodel-1-14\" spec=\"urn:cwmpd:bench\"><model name=\"Device:2.19\">\
         <object base=\"Device.\"><parameter name=\"X_00D09E_RowNumberOfEntries\" access=\"readOnly\"><syntax><unsignedInt/></syntax></parameter></object>\
         <object name=\"Device.X_00D09E_Row.{i}.\" access=\"readWrite\" minEntries=\"0\" maxEntries=\"unbounded\" numEntriesParameter=\"X_00D09E_RowNumberOfEntries\">",
    );
    let types = ["string", "unsignedInt", "boolean", "int", "dateTime"];
    for c in 0..10 {
        xml.push_str(&format!(
            "<parameter name=\"Column{c}\" access=\"readWrite\"><syntax><{t}/></syntax></parameter>",
            t = types[c % types.len()]
        ));
    }
    xml.push_str("</object></model></dm:document>");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("90-bench.xml"), xml)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What [`measure`] found.
pub struct SessionFigures {
    /// Parameters in the GetParameterValuesResponse.
    pub params: usize,
    /// Session (Inform → end) p50 and max.
    pub p50: Duration,
    pub max: Duration,
    /// Agent VmRSS after the boot session, kB.
    pub idle_kb: u64,
    /// Agent VmHWM after the GPV sessions, kB.
    pub peak_kb: u64,
}

pub fn run(params: usize, runs: usize) -> Result<(), String> {
    let f = measure(params, runs)?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "cwmpd-bench session: GPV of the whole tree ({} parameters) in one session, {runs} runs, release agent",
        f.params
    );
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| session (Inform → end) p50 / max | {:.1} ms / {:.1} ms | < 100 ms |",
        ms(f.p50),
        ms(f.max)
    );
    println!(
        "| agent RSS idle | {:.1} MB | - |",
        f.idle_kb as f64 / 1024.0
    );
    println!(
        "| agent peak RSS (VmHWM) | {:.1} MB | < 8 MB |",
        f.peak_kb as f64 / 1024.0
    );
    Ok(())
}

/// Runs `runs` sessions each carrying a GPV of the whole tree (a model of about `params`
/// parameters) against the release agent; returns the figures.
pub fn measure(params: usize, runs: usize) -> Result<SessionFigures, String> {
    let (agent_bin, _) = sibling_binaries()?;
    let dir = std::env::temp_dir().join(format!("cwmpd-bench-session-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_bench_model(&dir.join("vendor")).map_err(|e| e.to_string())?;
    let acs = spawn_in_thread(AcsOptions::default());
    let rows = params.div_ceil(10);
    let mut cfg = format!(
        "[agent]\nstate_dir = \"{d}/state\"\ndatamodel = [\"{m}\", \"{d}/vendor\"]\ncontrol_socket = \"{d}/ctl.sock\"\nlog_level = \"warn\"\n[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"127.0.0.1:0\"\n[parameters]\n\"Device.ManagementServer.URL\" = \"{u}\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.SerialNumber\" = \"BENCH\"\n",
        d = dir.display(),
        m = cwmp_testacs::datamodel_dir().display(),
        u = acs.url()
    );
    for r in 1..=rows {
        cfg.push_str(&format!(
            "\"Device.X_00D09E_Row.{r}.Column0\" = \"value of row {r}\"\n"
        ));
    }
    std::fs::write(dir.join("cwmpd.toml"), cfg).map_err(|e| e.to_string())?;
    let child = Command::new(&agent_bin)
        .args(["run", "-c"])
        .arg(dir.join("cwmpd.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let _guard = Kill(child);
    acs.wait_sessions(1, Duration::from_secs(30));
    let idle_rss = status_kb(pid, "VmRSS").unwrap_or(0);
    let sock = dir.join("ctl.sock");
    let mut times = Vec::new();
    let mut count = 0;
    for i in 0..runs + 2 {
        acs.queue(vec![AcsRequest::GetParameterValues {
            names: vec!["Device.".into()],
        }]);
        let t0 = Instant::now();
        cwmpd::ctl::request(&sock, &serde_json::json!({"op": "inform"}))
            .map_err(|e| e.to_string())?;
        let s = acs.wait_sessions(i + 2, Duration::from_secs(30));
        let last = s.get(i + 1).ok_or("session missing")?;
        let (Some(a), Some(b)) = (last.inform_at, last.ended_at) else {
            return Err("session incomplete".into());
        };
        if let Some(CpeMessage::GetParameterValuesResponse { list }) = last.received.first() {
            count = list.len();
        }
        let _ = t0;
        if i >= 2 {
            times.push(b - a);
        }
    }
    let peak = status_kb(pid, "VmHWM").unwrap_or(0);
    times.sort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SessionFigures {
        params: count,
        p50: times[times.len() / 2],
        max: times[times.len() - 1],
        idle_kb: idle_rss,
        peak_kb: peak,
    })
}
