//! The fleet simulator seen from outside: 200 agents in one `cwmpd-fleet` process boot against
//! the test ACS on loopback, each with its own serial number; HTTP connection requests (Digest)
//! to a sample of them open a `6 CONNECTION REQUEST` session for exactly that agent; after
//! SIGTERM the summary matches what the ACS saw.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwmp_testacs::{AcsOptions, SessionRecord};

const AGENTS: usize = 200;
const SAMPLE: [usize; 5] = [1, 2, 77, 150, 200];

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops the fleet by its PID if the test ends early.
struct Fleet(Child);
impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn template(acs_url: &str) -> String {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datamodel");
    format!(
        "[agent]\nstate_dir = \"{{dir}}/state\"\ndatamodel = [\"{m}\"]\ncontrol_socket = \"\"\npoll_interval = 3600\n\
         [connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"127.0.0.1:0\"\n\
         [system]\nenable = false\n\
         [parameters]\n\"Device.ManagementServer.URL\" = \"{acs_url}\"\n\
         \"Device.ManagementServer.ConnectionRequestUsername\" = \"cr{{n}}\"\n\
         \"Device.ManagementServer.ConnectionRequestPassword\" = \"pw-{{n}}\"\n\
         \"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\
         \"Device.DeviceInfo.SerialNumber\" = \"SIM{{n}}\"\n",
        m = model.canonicalize().unwrap().display()
    )
}

fn events(s: &SessionRecord) -> Vec<String> {
    s.inform
        .as_ref()
        .map(|i| i.events.iter().map(|e| e.event_code.clone()).collect())
        .unwrap_or_default()
}

fn serial(s: &SessionRecord) -> String {
    s.inform
        .as_ref()
        .map(|i| i.device_id.serial_number.clone())
        .unwrap_or_default()
}

fn param(s: &SessionRecord, name: &str) -> Option<String> {
    let i = s.inform.as_ref()?;
    i.params
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value.clone())
}

#[test]
fn two_hundred_agents_boot_and_answer_connection_requests() {
    let dir = Dir(std::env::temp_dir().join(format!("cwmpd-fleet-test-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let acs = cwmp_testacs::spawn_in_thread(AcsOptions::default());
    let tpl = dir.0.join("template.toml");
    std::fs::write(&tpl, template(&acs.url())).unwrap();
    let json = dir.0.join("fleet.json");
    let child = Command::new(env!("CARGO_BIN_EXE_cwmpd-fleet"))
        .args(["-t", tpl.to_str().unwrap(), "-n", &AGENTS.to_string()])
        .args(["-d", dir.0.join("agents").to_str().unwrap()])
        .args(["--concurrency", "16", "--json", json.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start cwmpd-fleet");
    let mut fleet = Fleet(child);

    // Every agent boots once, with its own serial number and a fresh-state BOOTSTRAP.
    let ended = acs.wait_ended(AGENTS, Duration::from_secs(120));
    assert_eq!(ended, AGENTS, "boot sessions ended");
    let boots = acs.sessions();
    assert_eq!(boots.len(), AGENTS);
    let mut urls = BTreeMap::new();
    for s in &boots {
        assert!(s.succeeded(), "{:?}", s.errors);
        let ev = events(s);
        assert!(ev.iter().any(|e| e == "0 BOOTSTRAP"), "{ev:?}");
        assert!(ev.iter().any(|e| e == "1 BOOT"), "{ev:?}");
        let url = param(s, "Device.ManagementServer.ConnectionRequestURL").expect("CR URL");
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        urls.insert(serial(s), url);
    }
    let want: BTreeSet<String> = (1..=AGENTS).map(|n| format!("SIM{n}")).collect();
    assert_eq!(
        urls.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "one boot per serial"
    );
    let distinct: BTreeSet<&String> = urls.values().collect();
    assert_eq!(distinct.len(), AGENTS, "each agent has its own CR listener");

    // The fleet's ramp figures (written once it has seen every agent's boot session end).
    let deadline = Instant::now() + Duration::from_secs(60);
    let up = loop {
        let v: Option<serde_json::Value> = std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(v) = v.filter(|v| v["phase"] == "up") {
            break v;
        }
        assert!(Instant::now() < deadline, "no ramp figures from the fleet");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(up["booted"], AGENTS, "{up}");
    assert_eq!(up["boot_failures"], 0, "{up}");

    // A connection request to each sampled agent: exactly that agent opens a CR session.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (k, &n) in SAMPLE.iter().enumerate() {
        let url = &urls[&format!("SIM{n}")];
        let wrong = rt.block_on(cwmp_connreq::http::connection_request(
            url,
            &format!("cr{n}"),
            "not-the-password",
        ));
        assert_eq!(wrong.expect("CR answered").status, 401, "wrong password");
        let ans = rt
            .block_on(cwmp_connreq::http::connection_request(
                url,
                &format!("cr{n}"),
                &format!("pw-{n}"),
            ))
            .expect("CR answered");
        assert!(ans.accepted(), "CR to SIM{n}: {}", ans.status);
        let total = AGENTS + k + 1;
        assert_eq!(
            acs.wait_ended(total, Duration::from_secs(30)),
            total,
            "CR session of SIM{n}"
        );
        let s = acs.session(total - 1).unwrap();
        assert_eq!(serial(&s), format!("SIM{n}"));
        assert_eq!(events(&s), vec!["6 CONNECTION REQUEST".to_string()]);
        assert!(s.succeeded(), "{:?}", s.errors);
    }
    assert_eq!(
        acs.session_count(),
        AGENTS + SAMPLE.len(),
        "no other sessions"
    );

    // SIGTERM: the fleet stops every agent and its summary matches what the ACS saw.
    let pid = nix::unistd::Pid::from_raw(fleet.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = fleet.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "cwmpd-fleet did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["phase"], "stopped");
    assert_eq!(v["started"], AGENTS);
    assert_eq!(v["booted"], AGENTS);
    assert_eq!(v["with_session"], AGENTS);
    assert_eq!(v["boot_failures"], 0);
    assert_eq!(v["sessions_ok"], AGENTS + SAMPLE.len());
    assert_eq!(v["sessions_failed"], 0);
    assert_eq!(v["connection_requests"], SAMPLE.len());
    assert_eq!(acs.session_count(), AGENTS + SAMPLE.len());
    // Each agent kept its own state directory.
    for n in SAMPLE {
        assert!(
            dir.0.join(format!("agents/{n}/state")).is_dir(),
            "state of {n}"
        );
    }
}
