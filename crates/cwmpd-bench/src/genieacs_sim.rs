//! genieacs-sim beside `cwmpd-fleet` in `cwmpd-bench fleet sim`: the same test ACS, the same
//! data model, the same measures where genieacs-sim can do the same work.
//!
//! genieacs-sim (Node.js, MIT) is not in the npm registry; point `CWMPD_BENCH_GENIEACS_SIM` at a
//! checkout (the directory holding its `genieacs-sim` script, with `npm install` done). It
//! forks one Node.js worker process per simulated device, each with its own HTTP listener for
//! connection requests (no authentication: any request is accepted). Its device comes from a
//! JSON file `{path: [writable, value, xsi-type]}`; this module writes one from cwmpd's own
//! data model (the factory store's values and writability), so both simulators carry the same
//! tree. Its first Inform carries `2 PERIODIC` (it has no boot event).
//!
//! Measured per run: workers up, RSS per worker (`VmRSS` of every worker, over the count) and
//! of the master, first Informs per second as the ACS saw them, and HTTP CR → Inform p50/p99
//! over a sample spread over the fleet, one at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cwmp_testacs::AcsOptions;
use cwmpd::model::{Schema, Store};

/// What one genieacs-sim run measured.
pub struct SimRun {
    pub count: usize,
    pub up: usize,
    pub rss_per_agent: f64,
    pub master_rss: f64,
    pub rss_total: f64,
    pub boots_per_s: f64,
    pub ramp_s: f64,
    /// CR → Inform times, ms, sorted.
    pub lat: Vec<f64>,
    pub notes: Vec<String>,
}

/// The checkout named by `CWMPD_BENCH_GENIEACS_SIM`, when it looks usable.
pub fn checkout() -> Result<PathBuf, String> {
    let dir = std::env::var_os("CWMPD_BENCH_GENIEACS_SIM")
        .map(PathBuf::from)
        .ok_or("CWMPD_BENCH_GENIEACS_SIM is not set")?;
    if !dir.join("genieacs-sim").is_file() || !dir.join("node_modules").is_dir() {
        return Err(format!(
            "{}: no genieacs-sim script or node_modules (run npm install there)",
            dir.display()
        ));
    }
    Ok(dir)
}

/// genieacs-sim's device JSON from cwmpd's data model and factory values.
fn device_json(acs_url: &str) -> Result<String, String> {
    let dm = cwmp_testacs::binaries::workspace_root().join("datamodel");
    let schema = Schema::load_dirs(&[dm]).map_err(|e| e.to_string())?;
    let factory: Vec<(String, String)> = [
        ("Device.ManagementServer.URL", acs_url),
        // Idle after boot, as the cwmpd agents are (genieacs-sim informs every
        // PeriodicInformInterval seconds whether or not periodic inform is enabled).
        ("Device.ManagementServer.PeriodicInformInterval", "86400"),
        ("Device.DeviceInfo.ManufacturerOUI", "00D09E"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut store = Store::new(schema, &factory, Box::new(crate::NoLive))?;
    let names = store
        .get_names("Device.", false)
        .map_err(|f| format!("GPN Device.: {f:?}"))?;
    let values = store
        .get_values(&["Device."])
        .map_err(|f| format!("GPV Device.: {f:?}"))?;
    let writable: std::collections::HashMap<String, bool> = names.into_iter().collect();
    let mut m = serde_json::Map::new();
    m.insert("Device.".into(), serde_json::json!([false]));
    for (name, w) in &writable {
        if name.ends_with('.') {
            m.insert(name.clone(), serde_json::json!([w]));
        }
    }
    for v in values {
        let w = writable.get(&v.name).copied().unwrap_or(false);
        m.insert(v.name, serde_json::json!([w, v.value, v.xsi_type]));
    }
    serde_json::to_string(&serde_json::Value::Object(m)).map_err(|e| e.to_string())
}

/// VmRSS in bytes of `pid` and of every process whose parent is `pid`.
fn rss_of_tree(pid: u32) -> (f64, f64, usize) {
    let master = crate::session::status_kb(pid, "VmRSS").unwrap_or(0) as f64 * 1024.0;
    let (mut workers, mut n) = (0.0, 0);
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = crate::session::status_kb(child, "PPid");
            if ppid == Some(u64::from(pid)) {
                workers += crate::session::status_kb(child, "VmRSS").unwrap_or(0) as f64 * 1024.0;
                n += 1;
            }
        }
    }
    (master, workers, n)
}

/// Stops the whole process group (the master restarts dead workers, so all go at once).
struct Group(std::process::Child);
impl Drop for Group {
    fn drop(&mut self) {
        let pg = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// One run of `count` genieacs-sim devices, spawned `wait_ms` apart.
pub fn run(
    sim: &Path,
    work: &Path,
    count: usize,
    crs: usize,
    wait_ms: u64,
) -> Result<SimRun, String> {
    use std::os::unix::process::CommandExt;
    let acs = cwmp_testacs::spawn_in_thread(AcsOptions::default());
    std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
    let model = work.join(format!("genieacs-device-{count}.json"));
    std::fs::write(&model, device_json(&acs.url())?).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(work.join(format!("genieacs-sim-{count}.log")))
        .map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    let child = Command::new("node")
        .arg(sim.join("genieacs-sim"))
        .args(["-u", &acs.url(), "-m", &model.to_string_lossy()])
        .args([
            "-p",
            &count.to_string(),
            "-w",
            &wait_ms.to_string(),
            "-s",
            "1",
        ])
        .current_dir(sim)
        .process_group(0)
        .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("node: {e}"))?;
    let group = Group(child);
    let deadline = Duration::from_secs(60 + count as u64 * (wait_ms + 200) / 1000);
    let ended = acs.wait_ended(count, deadline);
    if ended < count {
        notes.push(format!(
            "genieacs-sim {count}: {ended} first sessions ended within {} s",
            deadline.as_secs()
        ));
    }
    let sessions = acs.sessions();
    let (boots_per_s, ramp_s) = crate::fleet_sim::boot_rate(&sessions, ended);
    std::thread::sleep(Duration::from_secs(2));
    let (master_rss, workers_rss, nworkers) = rss_of_tree(group.0.id());
    let urls = crate::fleet_sim::cr_urls(&sessions);
    drop(sessions);
    let crs = crs.min(count);
    let lat = crate::fleet_sim::cr_latencies(
        &acs,
        &urls,
        (0..crs).map(|k| {
            (
                format!("{:06}", 1 + k * count / crs),
                String::new(),
                String::new(),
            )
        }),
        &mut notes,
    )?;
    drop(group);
    Ok(SimRun {
        count,
        up: nworkers.min(ended),
        rss_per_agent: workers_rss / nworkers.max(1) as f64,
        master_rss,
        rss_total: master_rss + workers_rss,
        boots_per_s,
        ramp_s,
        lat,
        notes,
    })
}
