//! Software modules (issue #17) through the real agent: ChangeDUState install → update →
//! uninstall of archives built here with GNU tar and served by the test ACS's file server,
//! the DUStateChangeComplete results with their faults, `Device.SoftwareModules.` read back,
//! and every CPE message schema-validated.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use cwmp_testacs::{
    AcsAuth, AcsOptions, ServedFile, SessionRecord, TestAcsHandle, spawn_in_thread,
};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, DuOpResult, DuOperation, DuState};

const WAIT: Duration = Duration::from_secs(30);
const UUID: &str = "2a7c6e0e-3f4b-4c3e-9d61-6f1f0a9b7c01";
const SM: &str = "Device.SoftwareModules.";

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A unit's archive (tar.gz made by GNU tar): one program, `bin/app`, and its manifest.
/// `lie` puts a wrong checksum in the manifest.
fn archive(dir: &Path, version: &str, lie: bool) -> Vec<u8> {
    let src = dir.join(format!("src-{version}-{lie}"));
    std::fs::create_dir_all(src.join("bin")).unwrap();
    let prog = format!("#!/bin/sh\necho app {version}\n");
    std::fs::write(src.join("bin/app"), &prog).unwrap();
    let sum = if lie {
        sha256_hex(b"something else")
    } else {
        sha256_hex(prog.as_bytes())
    };
    std::fs::write(
        src.join("manifest.toml"),
        format!(
            "name = \"weather\"\nversion = \"{version}\"\nvendor = \"Example Co\"\ndescription = \"a test app\"\nuuid = \"{UUID}\"\n\n[[unit]]\nname = \"weather\"\nexec = [\"bin/app\"]\n\n[sha256]\n\"bin/app\" = \"{sum}\"\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!("app-{version}-{lie}.tgz"));
    let st = Command::new("chmod")
        .arg("755")
        .arg(src.join("bin/app"))
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .args(["manifest.toml", "bin"])
        .status()
        .expect("GNU tar");
    assert!(st.success());
    std::fs::read(out).unwrap()
}

fn serve(acs: &TestAcsHandle, path: &str, body: Vec<u8>) -> String {
    acs.serve_file(
        path,
        ServedFile {
            body,
            auth: AcsAuth::None,
            content_length: None,
        },
    );
    acs.file_url(path)
}

fn install(url: &str, uuid: &str, env: &str) -> DuOperation {
    DuOperation::Install {
        url: url.into(),
        uuid: uuid.into(),
        username: String::new(),
        password: String::new(),
        execution_env_ref: env.into(),
    }
}

fn change(key: &str, ops: Vec<DuOperation>) -> AcsRequest {
    AcsRequest::ChangeDUState {
        command_key: key.into(),
        operations: ops,
    }
}

struct Rig {
    acs: TestAcsHandle,
    agent: Agent,
    seen: usize,
}

impl Rig {
    fn next_session(&mut self) -> SessionRecord {
        self.seen += 1;
        let all = self.acs.wait_sessions(self.seen, WAIT);
        assert!(
            all.len() >= self.seen && all[self.seen - 1].ended,
            "session {} did not come: {}",
            self.seen,
            self.agent.log_text()
        );
        all[self.seen - 1].clone()
    }

    fn session(&mut self, rpcs: Vec<AcsRequest>) -> SessionRecord {
        self.acs.queue(rpcs);
        self.agent
            .ctl(serde_json::json!({"op": "inform", "event": "6 CONNECTION REQUEST"}));
        self.next_session()
    }

    /// Sends a ChangeDUState and returns the results of the DUStateChangeComplete that
    /// follows (in a session of its own, with its events).
    fn change(&mut self, key: &str, ops: Vec<DuOperation>) -> Vec<DuOpResult> {
        let s = self.session(vec![change(key, ops)]);
        assert!(
            matches!(s.received.first(), Some(CpeMessage::ChangeDUStateResponse)),
            "{:?}",
            s.received
        );
        let done = self.next_session();
        let ev = events_with_keys(&done);
        assert!(
            ev.contains(&("11 DU STATE CHANGE COMPLETE".into(), String::new())),
            "{ev:?}"
        );
        assert!(
            ev.contains(&("M ChangeDUState".into(), key.into())),
            "{ev:?}"
        );
        let dscc: Vec<_> = done
            .received
            .iter()
            .filter_map(|m| match m {
                CpeMessage::DUStateChangeComplete(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(dscc.len(), 1, "{:?}", done.received);
        assert_eq!(dscc[0].command_key, key);
        dscc[0].results.clone()
    }

    fn read(&mut self, names: &[&str]) -> BTreeMap<String, String> {
        let s = self.session(vec![AcsRequest::GetParameterValues {
            names: names.iter().map(|n| n.to_string()).collect(),
        }]);
        s.received
            .iter()
            .find_map(|m| match m {
                CpeMessage::GetParameterValuesResponse { list } => Some(
                    list.iter()
                        .map(|p| (p.name.clone(), p.value.clone()))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no GPV response: {:?}", s.received))
    }
}

#[test]
fn install_update_uninstall_with_faults_per_operation() {
    if Command::new("tar").arg("--version").output().is_err() {
        common::skip("software_modules", "GNU tar is not installed");
        return;
    }
    let d = TempDir::new("swmod");
    let acs = spawn_in_thread(AcsOptions::default());
    let v1 = serve(
        &acs,
        "/apps/weather-1.0.tgz",
        archive(d.path(), "1.0", false),
    );
    let v2 = serve(
        &acs,
        "/apps/weather-2.0.tgz",
        archive(d.path(), "2.0", false),
    );
    let bad = serve(
        &acs,
        "/apps/weather-bad.tgz",
        archive(d.path(), "3.0", true),
    );
    let cut = archive(d.path(), "4.0", false);
    let cut = serve(&acs, "/apps/weather-cut.tgz", cut[..cut.len() / 2].to_vec());
    let cfg = write_config(
        d.path(),
        &format!(
            "[parameters]\n\"Device.ManagementServer.URL\" = \"{}\"\n\"Device.ManagementServer.PeriodicInformEnable\" = \"false\"\n",
            acs.url()
        ),
    );
    let agent = Agent::start(&cfg);
    let mut r = Rig {
        acs,
        agent,
        seen: 0,
    };
    let boot = r.next_session();
    assert!(events(&boot).contains(&"1 BOOT".to_string()));

    // One good install among bad operations: each gets its own result, the good one lands.
    let res = r.change(
        "first",
        vec![
            install(&bad, "", ""),
            install(&v1, UUID, ""),
            install(&cut, "", ""),
            install(&r.acs.file_url("/apps/none.tgz"), "", ""),
            install(&v1, "", "Device.SoftwareModules.ExecEnv.9"),
            install(&v1, "not-a-uuid", ""),
            install(&v1, UUID, ""),
            DuOperation::Uninstall {
                uuid: "0f6e1f5a-6c1e-4f39-9d1a-3b0f3b2d9c55".into(),
                version: String::new(),
                execution_env_ref: String::new(),
            },
        ],
    );
    let got: Vec<(DuState, u32)> = res
        .iter()
        .map(|x| (x.current_state, x.fault.code))
        .collect();
    assert_eq!(
        got,
        [
            (DuState::Failed, 9018),
            (DuState::Installed, 0),
            (DuState::Failed, 9018),
            (DuState::Failed, 9016),
            (DuState::Failed, 9023),
            (DuState::Failed, 9022),
            (DuState::Failed, 9026),
            (DuState::Uninstalled, 9028),
        ],
        "{res:#?}"
    );
    let ok = &res[1];
    assert_eq!((ok.uuid.as_str(), ok.version.as_str()), (UUID, "1.0"));
    assert_eq!(ok.deployment_unit_ref, format!("{SM}DeploymentUnit.1"));
    assert_eq!(ok.execution_unit_refs, [format!("{SM}ExecutionUnit.1")]);
    assert!(ok.start_time <= ok.complete_time);

    let v = r.read(&[SM]);
    assert_eq!(v[&format!("{SM}DeploymentUnitNumberOfEntries")], "1");
    let du = format!("{SM}DeploymentUnit.1.");
    assert_eq!(v[&format!("{du}UUID")], UUID);
    assert_eq!(v[&format!("{du}Name")], "weather");
    assert_eq!(v[&format!("{du}Version")], "1.0");
    assert_eq!(v[&format!("{du}Vendor")], "Example Co");
    assert_eq!(v[&format!("{du}URL")], v1);
    assert_eq!(v[&format!("{du}Status")], "Installed");
    assert_eq!(
        v[&format!("{du}ExecutionUnitList")],
        format!("{SM}ExecutionUnit.1")
    );
    assert_eq!(v[&format!("{du}ExecutionEnvRef")], format!("{SM}ExecEnv.1"));
    assert_eq!(v[&format!("{SM}ExecutionUnit.1.Name")], "weather");
    assert_eq!(v[&format!("{SM}ExecEnv.1.Status")], "Up");

    // Update to 2.0 (same instance), then to 2.0 again (9032).
    let res = r.change(
        "second",
        vec![
            DuOperation::Update {
                uuid: UUID.into(),
                version: String::new(),
                url: v2.clone(),
                username: String::new(),
                password: String::new(),
            },
            DuOperation::Update {
                uuid: UUID.into(),
                version: String::new(),
                url: v2.clone(),
                username: String::new(),
                password: String::new(),
            },
        ],
    );
    assert_eq!(
        (
            res[0].current_state,
            res[0].fault.code,
            res[0].version.as_str()
        ),
        (DuState::Installed, 0, "2.0")
    );
    assert_eq!(res[0].deployment_unit_ref, format!("{SM}DeploymentUnit.1"));
    assert_eq!(
        (res[1].current_state, res[1].fault.code),
        (DuState::Installed, 9032)
    );
    let v = r.read(&[&format!("{SM}DeploymentUnit.1.Version")]);
    assert_eq!(v[&format!("{SM}DeploymentUnit.1.Version")], "2.0");

    // The agent restarts: the unit and its instance number stay.
    let cfg_path = cfg.clone();
    r.agent.stop();
    r.agent = Agent::start(&cfg_path);
    let _boot = r.next_session();
    let v = r.read(&[&format!("{SM}DeploymentUnit.1.UUID")]);
    assert_eq!(v[&format!("{SM}DeploymentUnit.1.UUID")], UUID);

    // Uninstall: gone from the model and from the disk.
    let res = r.change(
        "third",
        vec![DuOperation::Uninstall {
            uuid: UUID.into(),
            version: "2.0".into(),
            execution_env_ref: String::new(),
        }],
    );
    assert_eq!(
        (res[0].current_state, res[0].fault.code),
        (DuState::Uninstalled, 0)
    );
    assert_eq!(res[0].deployment_unit_ref, "");
    let v = r.read(&[SM]);
    assert_eq!(v[&format!("{SM}DeploymentUnitNumberOfEntries")], "0");
    assert_eq!(v[&format!("{SM}ExecutionUnitNumberOfEntries")], "0");
    let apps = d.path().join("state/apps/du");
    let left: Vec<_> = std::fs::read_dir(&apps)
        .map(|it| it.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    let all = r.acs.wait_sessions(r.seen, WAIT);
    let n =
        common::xsd::validate_sessions("install_update_uninstall_with_faults_per_operation", &all);
    assert!(n.is_none_or(|n| n > 0));
}

/// A power cut (kill -9) while an install is in progress: after the restart the operation is
/// settled from what the disk holds (nothing: Failed) and reported exactly once.
#[test]
fn kill9_during_an_install_is_reported_once_after_the_restart() {
    let d = TempDir::new("swmod-kill");
    let acs = spawn_in_thread(AcsOptions::default());
    // A file server that accepts the download and never answers: the install stays running.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/apps/slow.tgz", hang.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept() {
            held.push(s);
            let _ = tx.send(());
        }
    });
    let cfg = write_config(
        d.path(),
        &format!(
            "[parameters]\n\"Device.ManagementServer.URL\" = \"{}\"\n\"Device.ManagementServer.PeriodicInformEnable\" = \"false\"\n",
            acs.url()
        ),
    );
    let agent = Agent::start(&cfg);
    let mut r = Rig {
        acs,
        agent,
        seen: 0,
    };
    r.next_session();
    let s = r.session(vec![change("slow", vec![install(&url, UUID, "")])]);
    assert!(matches!(
        s.received.first(),
        Some(CpeMessage::ChangeDUStateResponse)
    ));
    rx.recv_timeout(WAIT).expect("the download started");
    r.agent.kill9();
    r.agent = Agent::start(&cfg);
    // The boot session carries the settled result.
    let boot = r.next_session();
    let ev = events_with_keys(&boot);
    assert!(ev.contains(&("1 BOOT".into(), String::new())), "{ev:?}");
    assert!(
        ev.contains(&("M ChangeDUState".into(), "slow".into())),
        "{ev:?}"
    );
    let results: Vec<_> = boot
        .received
        .iter()
        .filter_map(|m| match m {
            CpeMessage::DUStateChangeComplete(x) => Some(x.results.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "{:?}", boot.received);
    assert_eq!(
        (results[0][0].current_state, results[0][0].fault.code),
        (DuState::Failed, 9017)
    );
    // Delivered: never again.
    let again = r.session(vec![]);
    assert!(
        !again
            .received
            .iter()
            .any(|m| matches!(m, CpeMessage::DUStateChangeComplete(_))),
        "{:?}",
        again.received
    );
    assert!(!events(&again).contains(&"11 DU STATE CHANGE COMPLETE".to_string()));
}
