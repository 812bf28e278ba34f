//! Software modules (issue #17) through the real agent: ChangeDUState install → update →
//! uninstall of archives built here with GNU tar and served by the test ACS's file server,
//! the DUStateChangeComplete results with their faults, `Device.SoftwareModules.` read back,
//! and every CPE message schema-validated.

#![cfg(feature = "software-modules")]

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
    archive_with(
        dir,
        version,
        lie,
        &format!("#!/bin/sh\necho app {version}\n"),
        false,
    )
}

fn archive_with(dir: &Path, version: &str, lie: bool, prog: &str, autostart: bool) -> Vec<u8> {
    let src = dir.join(format!("src-{version}-{lie}"));
    std::fs::create_dir_all(src.join("bin")).unwrap();
    let prog = prog.to_string();
    std::fs::write(src.join("bin/app"), &prog).unwrap();
    let sum = if lie {
        sha256_hex(b"something else")
    } else {
        sha256_hex(prog.as_bytes())
    };
    std::fs::write(
        src.join("manifest.toml"),
        format!(
            "name = \"weather\"\nversion = \"{version}\"\nvendor = \"Example Co\"\ndescription = \"a test app\"\nuuid = \"{UUID}\"\n\n[[unit]]\nname = \"weather\"\nexec = [\"bin/app\"]\nautostart = {autostart}\n\n[sha256]\n\"bin/app\" = \"{sum}\"\n"
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
    /// The agent with the test ACS as its ACS (no periodic Informs); the config's path.
    fn start(dir: &Path, acs: TestAcsHandle) -> (Rig, std::path::PathBuf) {
        Rig::start_with(dir, acs, "")
    }

    /// [`Rig::start`] with `extra` config sections before `[parameters]`.
    fn start_with(dir: &Path, acs: TestAcsHandle, extra: &str) -> (Rig, std::path::PathBuf) {
        let cfg = write_config(
            dir,
            &format!(
                "{extra}[parameters]\n\"Device.ManagementServer.URL\" = \"{}\"\n\"Device.ManagementServer.PeriodicInformEnable\" = \"false\"\n",
                acs.url()
            ),
        );
        let agent = Agent::start(&cfg);
        (
            Rig {
                acs,
                agent,
                seen: 0,
            },
            cfg,
        )
    }

    fn next_session(&mut self) -> SessionRecord {
        common::next_session(&self.acs, &mut self.seen, &self.agent)
    }

    /// Runs `rpcs` in a session the test asks for. Sessions the agent opens by itself in
    /// between (an execution unit's Status is an active notification by default) may carry
    /// them instead: the first session that answered anything is the one.
    fn session(&mut self, rpcs: Vec<AcsRequest>) -> SessionRecord {
        let want = !rpcs.is_empty();
        self.acs.queue(rpcs);
        self.agent
            .ctl(serde_json::json!({"op": "inform", "event": "6 CONNECTION REQUEST"}));
        for _ in 0..10 {
            let s = self.next_session();
            if !want || !s.received.is_empty() {
                return s;
            }
        }
        panic!("no session served the requests: {}", self.agent.log_text());
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
        // The DUStateChangeComplete's session (after any value-change sessions).
        let mut done = self.next_session();
        for _ in 0..10 {
            if done
                .received
                .iter()
                .any(|m| matches!(m, CpeMessage::DUStateChangeComplete(_)))
            {
                break;
            }
            done = self.next_session();
        }
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
    // An archive whose members climb out of the unit's directory (GNU tar writes what it is
    // told with --transform), and one over the download bound of the config below.
    let src = d.path().join("src-1.0-false");
    let climbing = d.path().join("climbing.tgz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&climbing)
        .arg("-C")
        .arg(&src)
        .args(["--transform", "s,^bin,../../bin,", "manifest.toml", "bin"])
        .status()
        .unwrap();
    assert!(st.success());
    let climbing = serve(
        &acs,
        "/apps/climbing.tgz",
        std::fs::read(&climbing).unwrap(),
    );
    let big = serve(&acs, "/apps/big.tgz", vec![0x1f; 300_000]);
    let (mut r, cfg) = Rig::start_with(d.path(), acs, "[actions]\nmax_download = 200000\n");
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
            install("ftp://127.0.0.1/apps/weather-1.0.tgz", "", ""),
            install(&climbing, "", ""),
            install(&big, "", ""),
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
            (DuState::Failed, 9013),
            (DuState::Failed, 9018),
            (DuState::Failed, 9017),
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
    let (mut r, cfg) = Rig::start(d.path(), acs);
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

/// The pid a running unit wrote into its data directory, once it is alive.
fn unit_pid(data: &Path, version: &str) -> Option<i32> {
    let t = std::fs::read_to_string(data.join("pid")).ok()?;
    let (v, pid) = t.trim().split_once(' ')?;
    let pid: i32 = pid.parse().ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    (v == version && alive).then_some(pid)
}

/// Whether a process is gone: no longer there, or a zombie nobody reaped yet (an orphan's
/// new parent may not reap at once).
fn gone(pid: i32) -> bool {
    wait_until(WAIT, || {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(st) => st
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    })
}

/// Execution units run under the run contract: autostart after install, RequestedState stops
/// and starts them, an update stops the old program and starts the new one (the data
/// directory kept), an uninstall stops it for good.
#[test]
fn execution_units_start_stop_and_follow_updates() {
    let d = TempDir::new("swmod-eu");
    let acs = spawn_in_thread(AcsOptions::default());
    let prog = |v: &str| {
        format!(
            "#!/bin/sh\necho \"{v} $$\" > \"$CWMPD_DATA_DIR/pid\"\necho \"$CWMPD_EU_NAME $CWMPD_DU_UUID $(pwd)\" > \"$CWMPD_DATA_DIR/env\"\nexec sleep 600\n"
        )
    };
    let v1 = serve(
        &acs,
        "/apps/w1.tgz",
        archive_with(d.path(), "1.0", false, &prog("1.0"), true),
    );
    let v2 = serve(
        &acs,
        "/apps/w2.tgz",
        archive_with(d.path(), "2.0", false, &prog("2.0"), true),
    );
    let (mut r, cfg) = Rig::start(d.path(), acs);
    r.next_session();
    let res = r.change("i", vec![install(&v1, UUID, "")]);
    assert_eq!(res[0].fault.code, 0, "{res:?}");
    let data = d.path().join(format!("state/apps/du/{UUID}/data"));
    let mut pid = 0;
    assert!(
        wait_until(WAIT, || unit_pid(&data, "1.0").map(|p| pid = p).is_some()),
        "autostart: {}",
        r.agent.log_text()
    );
    let env = std::fs::read_to_string(data.join("env")).unwrap();
    assert!(env.starts_with(&format!("weather {UUID} ")), "{env}");
    assert!(env.trim_end().ends_with("/files"), "{env}");
    let eu = format!("{SM}ExecutionUnit.1.");
    let v = r.read(&[&eu, &format!("{SM}ExecEnv.1.ActiveExecutionUnits")]);
    assert_eq!(v[&format!("{eu}Status")], "Active");
    assert_eq!(v[&format!("{eu}ExecutionFaultCode")], "NoFault");
    assert_eq!(v[&format!("{eu}RequestedState")], "");
    assert_eq!(
        v[&format!("{SM}ExecEnv.1.ActiveExecutionUnits")],
        format!("{SM}ExecutionUnit.1")
    );

    // RequestedState = Idle stops it (reads back empty); Active starts it again.
    let set = |state: &str| AcsRequest::SetParameterValues {
        list: vec![cwmpd::cwmp::soap::ParamValue {
            name: format!("{eu}RequestedState"),
            value: state.into(),
            xsi_type: None,
        }],
        parameter_key: String::new(),
    };
    let s = r.session(vec![set("Idle")]);
    assert!(
        matches!(
            s.received.first(),
            Some(CpeMessage::SetParameterValuesResponse { .. })
        ),
        "{:?}",
        s.received
    );
    assert!(gone(pid), "stopped");
    // The agent reaps the process and then says Idle (read locally: no session needed).
    let status = format!("{eu}Status");
    assert!(
        wait_until(WAIT, || r.agent.get(&status) == "Idle"),
        "{}",
        r.agent.get(&status)
    );
    let v = r.read(&[&eu]);
    assert_eq!(v[&status], "Idle");
    assert_eq!(v[&format!("{eu}RequestedState")], "");
    let _ = std::fs::remove_file(data.join("pid"));
    r.session(vec![set("Active")]);
    assert!(wait_until(WAIT, || unit_pid(&data, "1.0")
        .map(|p| pid = p)
        .is_some()));
    // Another parameter of the row stays the device's.
    let s = r.session(vec![AcsRequest::SetParameterValues {
        list: vec![cwmpd::cwmp::soap::ParamValue {
            name: format!("{eu}AutoStart"),
            value: "false".into(),
            xsi_type: None,
        }],
        parameter_key: String::new(),
    }]);
    assert!(
        s.received
            .iter()
            .any(|m| matches!(m, CpeMessage::Fault(f) if f.set_parameter_values_faults.iter().any(|p| p.code == 9008))),
        "{:?}",
        s.received
    );

    // Update: the old program is stopped, the new one started, the data directory kept.
    let old = pid;
    let res = r.change(
        "u",
        vec![DuOperation::Update {
            uuid: UUID.into(),
            version: String::new(),
            url: v2,
            username: String::new(),
            password: String::new(),
        }],
    );
    assert_eq!((res[0].fault.code, res[0].version.as_str()), (0, "2.0"));
    assert!(gone(old), "the old version stopped");
    assert!(wait_until(WAIT, || unit_pid(&data, "2.0")
        .map(|p| pid = p)
        .is_some()));
    assert!(data.join("env").exists(), "data directory kept");

    // A power cut of the agent takes the unit with it; the restarted agent starts it again.
    r.agent.kill9();
    assert!(gone(pid), "the unit died with the agent");
    // Before the restart: the restarted agent may start the unit before start() returns.
    let _ = std::fs::remove_file(data.join("pid"));
    r.agent = Agent::start(&cfg);
    assert!(wait_until(WAIT, || unit_pid(&data, "2.0")
        .map(|p| pid = p)
        .is_some()));
    r.next_session();

    // Uninstall: stopped and removed.
    let res = r.change(
        "x",
        vec![DuOperation::Uninstall {
            uuid: UUID.into(),
            version: String::new(),
            execution_env_ref: String::new(),
        }],
    );
    assert_eq!(
        (res[0].current_state, res[0].fault.code),
        (DuState::Uninstalled, 0)
    );
    assert!(gone(pid));
    assert!(!data.exists());
    let v = r.read(&[&format!("{SM}ExecEnv.1.ActiveExecutionUnits")]);
    assert_eq!(v[&format!("{SM}ExecEnv.1.ActiveExecutionUnits")], "");
}

const DU_EVENT: &str = "11 DU STATE CHANGE COMPLETE";

fn dsccs(s: &SessionRecord) -> Vec<Vec<DuOpResult>> {
    s.received
        .iter()
        .filter_map(|m| match m {
            CpeMessage::DUStateChangeComplete(d) => Some(d.results.clone()),
            _ => None,
        })
        .collect()
}

/// Sends a ChangeDUState while the ACS refuses every session that would carry its
/// DUStateChangeComplete.
fn change_refusing_the_result(r: &mut Rig, key: &str, ops: Vec<DuOperation>) {
    r.acs
        .update_options(|o| o.refuse_event = Some(DU_EVENT.into()));
    let s = r.session(vec![change(key, ops)]);
    assert!(
        matches!(s.received.first(), Some(CpeMessage::ChangeDUStateResponse)),
        "{:?}",
        s.received
    );
}

/// After a kill -9 and a restart (the ACS accepting again): the DUStateChangeCompletes of the
/// sessions up to the first that carries one (the boot session for an operation settled at
/// start; a later one for an operation the kill came before, which runs after the restart),
/// and a check that the next session carries none.
fn collect_after_restart(r: &mut Rig) -> Vec<Vec<DuOpResult>> {
    r.seen = r.acs.session_count();
    let boot = r.next_session();
    assert!(events(&boot).contains(&"1 BOOT".to_string()));
    let mut got = dsccs(&boot);
    for _ in 0..10 {
        if !got.is_empty() {
            break;
        }
        got = dsccs(&r.next_session());
    }
    let again = r.session(vec![]);
    assert!(dsccs(&again).is_empty(), "{:?}", again.received);
    assert!(!events(&again).contains(&DU_EVENT.to_string()));
    got
}

/// kill -9 after the directory backend committed an install and the agent recorded its
/// result, before the DUStateChangeComplete reached the ACS (which refuses the session that
/// would carry it): after the restart exactly one DUStateChangeComplete reports it, and the
/// unit is there.
#[test]
fn kill9_after_the_commit_is_reported_once_with_the_result() {
    let d = TempDir::new("swmod-commit");
    let acs = spawn_in_thread(AcsOptions::default());
    let v1 = serve(&acs, "/apps/w1.tgz", archive(d.path(), "1.0", false));
    let (mut r, cfg) = Rig::start(d.path(), acs);
    r.next_session();
    change_refusing_the_result(&mut r, "c", vec![install(&v1, UUID, "")]);
    assert!(
        wait_until(WAIT, || r
            .acs
            .sessions()
            .iter()
            .any(|s| events(s).contains(&DU_EVENT.to_string()))),
        "{}",
        r.agent.log_text()
    );
    assert!(d.path().join(format!("state/apps/du/{UUID}")).exists());
    r.agent.kill9();
    r.acs.update_options(|o| o.refuse_event = None);
    r.agent = Agent::start(&cfg);
    let got = collect_after_restart(&mut r);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (
            got[0][0].current_state,
            got[0][0].fault.code,
            got[0][0].uuid.as_str()
        ),
        (DuState::Installed, 0, UUID)
    );
    let v = r.read(&[&format!("{SM}DeploymentUnit.1.UUID")]);
    assert_eq!(v[&format!("{SM}DeploymentUnit.1.UUID")], UUID);
}

/// kill -9 at random instants of an install (before it started, download, unpack, commit,
/// recording the result), in a bounded loop, the ACS refusing the result's session until the
/// restart: after each restart exactly one DUStateChangeComplete, and it says what the disk
/// holds (Installed with the unit there, or Failed with nothing).
#[test]
fn kill9_at_random_points_of_an_install_reports_what_the_disk_holds() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut x = seed;
    let mut rnd = move || {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut outcomes = BTreeMap::new();
    for round in 0..6 {
        let d = TempDir::new(&format!("swmod-rkill-{round}"));
        let acs = spawn_in_thread(AcsOptions::default());
        let v1 = serve(&acs, "/apps/w1.tgz", archive(d.path(), "1.0", false));
        let (mut r, cfg) = Rig::start(d.path(), acs);
        r.next_session();
        change_refusing_the_result(&mut r, "rk", vec![install(&v1, UUID, "")]);
        let delay = Duration::from_micros(rnd() % 150_000);
        std::thread::sleep(delay);
        r.agent.kill9();
        r.acs.update_options(|o| o.refuse_event = None);
        r.agent = Agent::start(&cfg);
        let got = collect_after_restart(&mut r);
        assert_eq!(got.len(), 1, "round {round} ({delay:?}): {got:#?}");
        let res = &got[0][0];
        let there = d.path().join(format!("state/apps/du/{UUID}")).exists();
        match (res.current_state, res.fault.code) {
            (DuState::Installed, 0) => assert!(there, "round {round} ({delay:?})"),
            (DuState::Failed, 9017) => assert!(!there, "round {round} ({delay:?})"),
            other => panic!("round {round} ({delay:?}): {other:?}"),
        }
        *outcomes.entry(res.current_state.as_str()).or_insert(0) += 1;
    }
    println!("outcomes {outcomes:?}");
}

impl Rig {
    /// Queues a local change through the control socket and waits for its outcome.
    fn local(&mut self, req: serde_json::Value) -> serde_json::Value {
        let a = self.agent.ctl(req.clone());
        assert_eq!(a["ok"], true, "{req} → {a}");
        let job = a["job"].as_u64().unwrap();
        let t = std::time::Instant::now();
        loop {
            let r = self
                .agent
                .ctl(serde_json::json!({"op": "du-result", "job": job}));
            if r["done"] == true {
                return r["result"].clone();
            }
            assert!(
                t.elapsed() < WAIT,
                "job {job} never ended: {}",
                self.agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pending_events(&self) -> Vec<String> {
        self.agent.ctl(serde_json::json!({"op": "status"}))["pending_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    }

    /// The next session that carries an AutonomousDUStateChangeComplete (value-change
    /// sessions may come first), checked for its event.
    fn autonomous(&mut self) -> Vec<cwmpd::cwmp::soap::AutonDuOpResult> {
        for _ in 0..10 {
            let s = self.next_session();
            let found: Vec<_> = s
                .received
                .iter()
                .filter_map(|m| match m {
                    CpeMessage::AutonomousDUStateChangeComplete(a) => Some(a.results.clone()),
                    _ => None,
                })
                .collect();
            if let [results] = &found[..] {
                assert!(
                    events(&s).contains(&"12 AUTONOMOUS DU STATE CHANGE COMPLETE".to_string()),
                    "{:?}",
                    events(&s)
                );
                return results.clone();
            }
            assert!(found.is_empty(), "{:?}", s.received);
        }
        panic!(
            "no AutonomousDUStateChangeComplete: {}",
            self.agent.log_text()
        );
    }
}

#[test]
fn autonomous_changes_are_reported_as_the_policy_allows() {
    use cwmpd::cwmp::soap::DuOperationType;
    if Command::new("tar").arg("--version").output().is_err() {
        common::skip("software_modules", "GNU tar is not installed");
        return;
    }
    const POLICY: &str = "Device.ManagementServer.DUStateChangeComplPolicy.";
    const AUTON: &str = "12 AUTONOMOUS DU STATE CHANGE COMPLETE";
    let d = TempDir::new("swmod-auton");
    let file = |name: &str, body: Vec<u8>| {
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let v1 = file("v1.tgz", archive(d.path(), "1.0", false));
    let v2 = file("v2.tgz", archive(d.path(), "2.0", false));
    let bad = file("bad.tgz", archive(d.path(), "3.0", true));
    let (mut rig, _) = Rig::start(d.path(), spawn_in_thread(AcsOptions::default()));
    rig.next_session();

    // The policy is off by default: the box installs, nothing is queued for the ACS.
    let r = rig.local(serde_json::json!({"op": "du-install", "file": v1}));
    assert_eq!(
        (r["state"].as_str(), r["fault_code"].as_u64()),
        (Some("Installed"), Some(0)),
        "{r}"
    );
    assert_eq!(r["uuid"], UUID);
    assert!(!rig.pending_events().contains(&AUTON.to_string()));
    let v = rig.read(&[&format!("{SM}DeploymentUnit.")]);
    assert!(v.values().any(|x| x == UUID), "{v:?}");

    // Enabled by the ACS: an update is reported, with the operation the CPE performed.
    let s = rig.session(vec![AcsRequest::SetParameterValues {
        list: vec![cwmpd::cwmp::soap::ParamValue {
            name: format!("{POLICY}Enable"),
            value: "true".into(),
            xsi_type: None,
        }],
        parameter_key: "policy-1".into(),
    }]);
    assert!(matches!(
        s.received.first(),
        Some(CpeMessage::SetParameterValuesResponse { status: 0 })
    ));
    let r = rig.local(serde_json::json!({"op": "du-update", "uuid": UUID, "file": v2}));
    assert_eq!(r["version"], "2.0", "{r}");
    let res = rig.autonomous();
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].operation_performed, DuOperationType::Update);
    assert_eq!(res[0].result.uuid, UUID);
    assert_eq!(res[0].result.version, "2.0");
    assert_eq!(res[0].result.current_state, DuState::Installed);
    assert_eq!(res[0].result.fault.code, 0);
    assert!(
        res[0]
            .result
            .deployment_unit_ref
            .starts_with("Device.SoftwareModules.DeploymentUnit.")
    );

    // A failure is reported only when its fault code is in FaultCodeFilter (empty: none).
    let r = rig.local(serde_json::json!({"op": "du-install", "file": bad}));
    assert_eq!(r["fault_code"], 9018, "{r}");
    assert!(!rig.pending_events().contains(&AUTON.to_string()));
    rig.agent
        .set(&format!("{POLICY}FaultCodeFilter"), "9018,9026");
    let r = rig.local(serde_json::json!({"op": "du-install", "file": bad}));
    assert_eq!(r["fault_code"], 9018, "{r}");
    let res = rig.autonomous();
    assert_eq!(res[0].operation_performed, DuOperationType::Install);
    assert_eq!(res[0].result.current_state, DuState::Failed);
    assert_eq!(res[0].result.fault.code, 9018);

    // Operation types outside OperationTypeFilter are not reported; the others are.
    rig.agent
        .set(&format!("{POLICY}OperationTypeFilter"), "Install");
    let r = rig.local(serde_json::json!({"op": "du-uninstall", "uuid": UUID}));
    assert_eq!(r["state"], "Uninstalled", "{r}");
    assert!(!rig.pending_events().contains(&AUTON.to_string()));
    let r = rig.local(serde_json::json!({"op": "du-install", "file": v1}));
    assert_eq!(r["state"], "Installed", "{r}");
    assert_eq!(rig.autonomous()[0].result.version, "1.0");

    // Bad requests get an error, and nothing is queued.
    for req in [
        serde_json::json!({"op": "du-install", "file": "relative.tgz"}),
        serde_json::json!({"op": "du-uninstall"}),
        serde_json::json!({"op": "du-result"}),
    ] {
        assert_eq!(rig.agent.ctl(req.clone())["ok"], false, "{req}");
    }

    let all = rig.acs.wait_sessions(rig.seen, WAIT);
    common::xsd::validate_sessions("autonomous_changes_are_reported_as_the_policy_allows", &all);
    rig.agent.stop();
}
