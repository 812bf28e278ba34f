//! Software modules with the dpkg backend (issue #17, `[software] dpkg_root`) through the real
//! agent: real .deb packages built here with `dpkg-deb --build`, served by the test ACS's file
//! server, installed into a scratch root with `dpkg --root`; every bad input gets its fault in
//! the schema-valid DUStateChangeComplete and leaves the root as it was; kill -9 after an
//! install committed, and while a maintainer script runs, are reported exactly once.
//!
//! Needs root and dpkg, dpkg-deb, dpkg-query, ldd: skipped without them, failing in CI.

#![cfg(feature = "software-modules")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use cwmp_testacs::{
    AcsAuth, AcsOptions, ServedFile, SessionRecord, TestAcsHandle, spawn_in_thread,
};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, DuOpResult, DuOperation, DuState};

const WAIT: Duration = Duration::from_secs(60);
const SM: &str = "Device.SoftwareModules.";
const EE_DIR: &str = "Device.SoftwareModules.ExecEnv.1";
const EE_DPKG: &str = "Device.SoftwareModules.ExecEnv.2";
const DU_EVENT: &str = "11 DU STATE CHANGE COMPLETE";
const MAINTAINER: &str = "Example Co <du@example.com>";
const OTHER_UUID: &str = "0f6e1f5a-6c1e-4f39-9d1a-3b0f3b2d9c55";

/// Why the test cannot run here (None: it can).
fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    common::netns::missing(&[
        ("dpkg", "--version"),
        ("dpkg-deb", "--version"),
        ("dpkg-query", "--version"),
        ("ldd", "--version"),
    ])
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A .deb built with `dpkg-deb --build`: `/opt/<name>/version` holding `version`, and
/// optionally a `postinst` script.
fn deb(dir: &Path, name: &str, version: &str, arch: &str, postinst: Option<&str>) -> Vec<u8> {
    let src = dir.join(format!("pkg-{name}-{version}"));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(src.join("opt").join(name)).unwrap();
    std::fs::write(src.join("opt").join(name).join("version"), version).unwrap();
    std::fs::write(
        src.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\nDescription: {name} for tests\n a longer description\n"
        ),
    )
    .unwrap();
    if let Some(script) = postinst {
        let p = src.join("DEBIAN/postinst");
        std::fs::write(&p, script).unwrap();
        assert!(run(Command::new("chmod").arg("755").arg(&p)).0);
    }
    let out = dir.join(format!("{name}_{version}_{arch}.deb"));
    let (ok, text) = run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&src)
        .arg(&out));
    assert!(ok, "{text}");
    std::fs::read(out).unwrap()
}

/// A scratch dpkg root with a shell (and `sleep`) so that maintainer scripts run chrooted, and
/// one package of its "base system" installed directly.
fn make_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["status", "available"] {
        std::fs::write(root.join("var/lib/dpkg").join(f), "").unwrap();
    }
    for (prog, name) in [("/bin/sh", "sh"), ("/bin/sleep", "sleep")] {
        let real = std::fs::canonicalize(prog).unwrap();
        std::fs::copy(&real, root.join("bin").join(name)).unwrap();
        let (ok, libs) = run(Command::new("ldd").arg(&real));
        assert!(ok, "{libs}");
        for lib in libs.split_whitespace().filter(|w| w.starts_with('/')) {
            let dest = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
    }
    let base = dir.join("base.deb");
    std::fs::write(&base, deb(dir, "base-du", "1.0", "all", None)).unwrap();
    let (ok, text) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--install")
        .arg(&base));
    assert!(ok, "{text}");
    root
}

/// The `dpkg -l` package lines (state, name, version).
fn dpkg_list(root: &Path) -> BTreeSet<String> {
    let (_, text) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("-l"));
    text.lines()
        .filter(|l| l.len() > 3 && l.as_bytes()[2] == b' ' && !l.starts_with("||/"))
        .filter(|l| !l.starts_with("+++") && !l.starts_with("Desired"))
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect()
}

/// `dpkg -s <pkg>`'s Status and Version, None when dpkg does not know it.
fn dpkg_status(root: &Path, pkg: &str) -> Option<(String, String)> {
    let (ok, text) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", pkg]));
    if !ok {
        return None;
    }
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    Some((field("Status:"), field("Version:")))
}

/// Every path under the root except dpkg's own database.
fn files(root: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, p: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel.starts_with("var/lib/dpkg") {
                continue;
            }
            out.insert(rel);
            if e.file_type().unwrap().is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
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

fn update(uuid: &str, url: &str) -> DuOperation {
    DuOperation::Update {
        uuid: uuid.into(),
        version: String::new(),
        url: url.into(),
        username: String::new(),
        password: String::new(),
    }
}

fn uninstall(uuid: &str, env: &str) -> DuOperation {
    DuOperation::Uninstall {
        uuid: uuid.into(),
        version: String::new(),
        execution_env_ref: env.into(),
    }
}

fn dsccs(s: &SessionRecord) -> Vec<Vec<DuOpResult>> {
    s.received
        .iter()
        .filter_map(|m| match m {
            CpeMessage::DUStateChangeComplete(d) => Some(d.results.clone()),
            _ => None,
        })
        .collect()
}

struct Rig {
    acs: TestAcsHandle,
    agent: Agent,
    cfg: PathBuf,
    seen: usize,
}

impl Rig {
    fn start(dir: &Path, root: &Path, acs: TestAcsHandle) -> Rig {
        let cfg = write_config(
            dir,
            &format!(
                "[parameters]\n\"Device.ManagementServer.URL\" = \"{}\"\n\"Device.ManagementServer.PeriodicInformEnable\" = \"false\"\n\n[software]\ndpkg_root = \"{}\"\ndpkg_timeout = 60\n",
                acs.url(),
                root.display()
            ),
        );
        let agent = Agent::start(&cfg);
        Rig {
            acs,
            agent,
            cfg,
            seen: 0,
        }
    }

    fn next_session(&mut self) -> SessionRecord {
        common::next_session(&self.acs, &mut self.seen, &self.agent)
    }

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

    /// A ChangeDUState answered in this session.
    fn send(&mut self, key: &str, ops: Vec<DuOperation>) {
        let s = self.session(vec![AcsRequest::ChangeDUState {
            command_key: key.into(),
            operations: ops,
        }]);
        assert!(
            matches!(s.received.first(), Some(CpeMessage::ChangeDUStateResponse)),
            "{:?}",
            s.received
        );
    }

    /// Sends a ChangeDUState and returns the results of its DUStateChangeComplete.
    fn change(&mut self, key: &str, ops: Vec<DuOperation>) -> Vec<DuOpResult> {
        self.send(key, ops);
        for _ in 0..10 {
            let s = self.next_session();
            let d = dsccs(&s);
            if d.is_empty() {
                continue;
            }
            assert_eq!(d.len(), 1, "{:?}", s.received);
            assert!(
                events_with_keys(&s).contains(&("M ChangeDUState".into(), key.into())),
                "{:?}",
                events_with_keys(&s)
            );
            return d[0].clone();
        }
        panic!("no DUStateChangeComplete: {}", self.agent.log_text());
    }

    fn read(&mut self, names: &[&str]) -> std::collections::BTreeMap<String, String> {
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

    /// After a kill -9 and a restart: the DUStateChangeCompletes of the boot session, and a
    /// check that a later session carries none.
    fn collect_after_restart(&mut self) -> Vec<Vec<DuOpResult>> {
        // The boot session, and the session of the settled result if the settling (dpkg on
        // the blocking pool) ended after the boot Inform.
        let mut got = Vec::new();
        for _ in 0..5 {
            let s = self.next_session();
            got.extend(dsccs(&s));
            if !got.is_empty() {
                break;
            }
        }
        let again = self.session(vec![]);
        assert!(dsccs(&again).is_empty(), "{:?}", again.received);
        assert!(!events(&again).contains(&DU_EVENT.to_string()));
        got
    }
}

fn skip_reason() -> Option<String> {
    let why = unavailable()?;
    common::skip("software_modules_dpkg", &why);
    Some(why)
}

#[test]
fn dpkg_install_update_uninstall_with_faults_that_leave_the_root_as_it_was() {
    if skip_reason().is_some() {
        return;
    }
    let d = TempDir::new("swmod-dpkg");
    let root = make_root(d.path());
    let acs = spawn_in_thread(AcsOptions::default());
    let dir = d.path();
    let v1 = serve(
        &acs,
        "/debs/hello-1.0.deb",
        deb(dir, "hello-du", "1.0", "all", None),
    );
    let v2 = serve(
        &acs,
        "/debs/hello-2.0.deb",
        deb(dir, "hello-du", "2.0", "all", None),
    );
    let failing = "#!/bin/sh\necho postinst failing >&2\nexit 1\n";
    let v3 = serve(
        &acs,
        "/debs/hello-3.0.deb",
        deb(dir, "hello-du", "3.0", "all", Some(failing)),
    );
    let bad = serve(
        &acs,
        "/debs/bad.deb",
        deb(dir, "bad-du", "1.0", "all", Some(failing)),
    );
    let full = deb(dir, "cut-du", "1.0", "all", None);
    let cut = serve(&acs, "/debs/cut.deb", full[..full.len() - 100].to_vec());
    let junk = serve(&acs, "/debs/junk.deb", b"this is not a package\n".to_vec());
    let native = run(Command::new("dpkg").arg("--print-architecture")).1;
    let alien_arch = if native.trim() == "s390x" {
        "armhf"
    } else {
        "s390x"
    };
    let alien = serve(
        &acs,
        "/debs/alien.deb",
        deb(dir, "alien-du", "1.0", alien_arch, None),
    );
    let base = serve(
        &acs,
        "/debs/base.deb",
        deb(dir, "base-du", "1.0", "all", None),
    );
    let mut r = Rig::start(dir, &root, acs);
    r.next_session();

    let v = r.read(&[SM]);
    assert_eq!(v[&format!("{SM}ExecEnvNumberOfEntries")], "2");
    assert_eq!(v[&format!("{EE_DPKG}.Name")], "dpkg");
    assert_eq!(v[&format!("{EE_DPKG}.Status")], "Up");
    assert_eq!(v[&format!("{EE_DIR}.Name")], "cwmpd-apps");
    // The root's own packages are not deployment units.
    assert_eq!(v[&format!("{SM}DeploymentUnitNumberOfEntries")], "0");

    let list0 = dpkg_list(&root);
    let files0 = files(&root);
    let res = r.change(
        "first",
        vec![
            install(&v1, "", ""),
            install(&v1, "", EE_DPKG),
            install(&bad, "", EE_DPKG),
            install(&cut, "", ""),
            install(&junk, "", EE_DPKG),
            install(&alien, "", ""),
            install(&base, "", EE_DPKG),
            install(&v1, "", "Device.SoftwareModules.ExecEnv.3"),
        ],
    );
    let got: Vec<(DuState, u32)> = res
        .iter()
        .map(|x| (x.current_state, x.fault.code))
        .collect();
    assert_eq!(
        got,
        [
            (DuState::Installed, 0),
            (DuState::Failed, 9026),
            (DuState::Failed, 9001),
            (DuState::Failed, 9018),
            (DuState::Failed, 9018),
            (DuState::Failed, 9025),
            (DuState::Failed, 9026),
            (DuState::Failed, 9023),
        ],
        "{res:#?}"
    );
    assert!(res[1..].iter().all(|x| !x.fault.string.is_empty()));
    let ok = &res[0];
    let uuid = ok.uuid.clone();
    assert_eq!(&uuid[14..15], "5", "a version-5 UUID: {uuid}");
    assert_eq!(ok.version, "1.0");
    assert_eq!(ok.deployment_unit_ref, format!("{SM}DeploymentUnit.1"));
    assert!(ok.execution_unit_refs.is_empty());
    // Only hello-du 1.0 came: the failures left nothing, not even a half-installed bad-du.
    let mut want = list0.clone();
    want.insert("ii hello-du 1.0".into());
    assert_eq!(dpkg_list(&root), want);
    assert_eq!(
        dpkg_status(&root, "hello-du"),
        Some(("install ok installed".into(), "1.0".into()))
    );
    assert_eq!(dpkg_status(&root, "bad-du"), None);
    let mut want = files0.clone();
    want.extend([
        "opt/hello-du".to_string(),
        "opt/hello-du/version".to_string(),
    ]);
    assert_eq!(files(&root), want);
    assert_eq!(
        std::fs::read_to_string(root.join("opt/hello-du/version")).unwrap(),
        "1.0"
    );

    let v = r.read(&[SM]);
    assert_eq!(v[&format!("{SM}DeploymentUnitNumberOfEntries")], "1");
    let du = format!("{SM}DeploymentUnit.1.");
    assert_eq!(v[&format!("{du}UUID")], uuid);
    assert_eq!(v[&format!("{du}DUID")], "hello-du");
    assert_eq!(v[&format!("{du}Name")], "hello-du");
    assert_eq!(v[&format!("{du}Version")], "1.0");
    assert_eq!(v[&format!("{du}Vendor")], MAINTAINER);
    assert_eq!(v[&format!("{du}Description")], "hello-du for tests");
    assert_eq!(v[&format!("{du}URL")], v1);
    assert_eq!(v[&format!("{du}ExecutionUnitList")], "");
    assert_eq!(v[&format!("{du}ExecutionEnvRef")], EE_DPKG);
    assert_eq!(v[&format!("{SM}ExecutionUnitNumberOfEntries")], "0");

    // Update to 2.0; again to 2.0 (9032); to 3.0 whose postinst fails (rolled back to 2.0);
    // an unknown UUID (9028).
    let list1 = dpkg_list(&root);
    let res = r.change(
        "second",
        vec![
            update(&uuid, &v2),
            update(&uuid, &v2),
            update(&uuid, &v3),
            update(OTHER_UUID, &v2),
        ],
    );
    let got: Vec<(DuState, u32, &str)> = res
        .iter()
        .map(|x| (x.current_state, x.fault.code, x.version.as_str()))
        .collect();
    assert_eq!(got[0], (DuState::Installed, 0, "2.0"), "{res:#?}");
    assert_eq!(
        got[1..].iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
        [
            (DuState::Installed, 9032),
            (DuState::Installed, 9001),
            (DuState::Uninstalled, 9028),
        ],
        "{res:#?}"
    );
    assert_eq!(res[0].deployment_unit_ref, format!("{SM}DeploymentUnit.1"));
    assert_eq!(
        dpkg_status(&root, "hello-du"),
        Some(("install ok installed".into(), "2.0".into()))
    );
    let mut want: BTreeSet<String> = list1
        .into_iter()
        .filter(|l| !l.contains("hello-du"))
        .collect();
    want.insert("ii hello-du 2.0".into());
    assert_eq!(dpkg_list(&root), want);
    assert_eq!(
        std::fs::read_to_string(root.join("opt/hello-du/version")).unwrap(),
        "2.0"
    );
    let v = r.read(&[&format!("{SM}DeploymentUnit.1.Version")]);
    assert_eq!(v[&format!("{SM}DeploymentUnit.1.Version")], "2.0");

    // A restart keeps the unit (remembered by the agent, not read from the whole root).
    r.agent.stop();
    r.agent = Agent::start(&r.cfg);
    r.next_session();
    let v = r.read(&[SM]);
    assert_eq!(v[&format!("{SM}DeploymentUnitNumberOfEntries")], "1");
    assert_eq!(v[&format!("{SM}DeploymentUnit.1.UUID")], uuid);

    // Uninstall from the wrong ExecEnv (9025), then for real, then again (9028).
    let res = r.change(
        "third",
        vec![
            uninstall(&uuid, EE_DIR),
            uninstall(&uuid, ""),
            uninstall(&uuid, EE_DPKG),
        ],
    );
    let got: Vec<(DuState, u32)> = res
        .iter()
        .map(|x| (x.current_state, x.fault.code))
        .collect();
    assert_eq!(
        got,
        [
            (DuState::Installed, 9025),
            (DuState::Uninstalled, 0),
            (DuState::Uninstalled, 9028),
        ],
        "{res:#?}"
    );
    assert_eq!(dpkg_status(&root, "hello-du"), None);
    assert_eq!(dpkg_list(&root), list0);
    assert_eq!(files(&root), files0);
    let v = r.read(&[SM]);
    assert_eq!(v[&format!("{SM}DeploymentUnitNumberOfEntries")], "0");

    let all = r.acs.wait_sessions(r.seen, WAIT);
    let n = common::xsd::validate_sessions(
        "dpkg_install_update_uninstall_with_faults_that_leave_the_root_as_it_was",
        &all,
    );
    assert!(n.is_none_or(|n| n > 0));
}

/// kill -9 after dpkg installed the package and the agent recorded the result, before the
/// DUStateChangeComplete reached the ACS (which refuses the session that would carry it):
/// after the restart exactly one DUStateChangeComplete reports the install, and the unit is
/// there.
#[test]
fn dpkg_kill9_after_the_install_committed_is_reported_once() {
    if skip_reason().is_some() {
        return;
    }
    let d = TempDir::new("swmod-dpkg-kill");
    let root = make_root(d.path());
    let acs = spawn_in_thread(AcsOptions::default());
    let v1 = serve(
        &acs,
        "/debs/hello-1.0.deb",
        deb(d.path(), "hello-du", "1.0", "all", None),
    );
    let mut r = Rig::start(d.path(), &root, acs);
    r.next_session();
    r.acs
        .update_options(|o| o.refuse_event = Some(DU_EVENT.into()));
    r.send("k", vec![install(&v1, "", "")]);
    // The refused session that would have carried the result.
    assert!(
        wait_until(WAIT, || r
            .acs
            .sessions()
            .iter()
            .any(|s| events(s).contains(&DU_EVENT.to_string()))),
        "{}",
        r.agent.log_text()
    );
    r.seen = r.acs.session_count();
    assert_eq!(
        dpkg_status(&root, "hello-du"),
        Some(("install ok installed".into(), "1.0".into()))
    );
    r.agent.kill9();
    r.acs.update_options(|o| o.refuse_event = None);
    r.agent = Agent::start(&r.cfg);
    let got = r.collect_after_restart();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (
            got[0][0].current_state,
            got[0][0].fault.code,
            got[0][0].version.as_str()
        ),
        (DuState::Installed, 0, "1.0")
    );
    let v = r.read(&[SM]);
    assert_eq!(v[&format!("{SM}DeploymentUnitNumberOfEntries")], "1");
    assert_eq!(v[&format!("{SM}DeploymentUnit.1.UUID")], got[0][0].uuid);
}

/// kill -9 while dpkg runs a package's postinst (dpkg dies with the agent, the package is
/// left half-configured): the restarted agent purges it from dpkg's database and reports the
/// install once, failed.
#[test]
fn dpkg_kill9_during_a_maintainer_script_is_rolled_back_and_reported_once() {
    if skip_reason().is_some() {
        return;
    }
    let d = TempDir::new("swmod-dpkg-cut");
    let root = make_root(d.path());
    let acs = spawn_in_thread(AcsOptions::default());
    let slow = "#!/bin/sh\necho started > /postinst-started\nexec /bin/sleep 60\n";
    let url = serve(
        &acs,
        "/debs/slow.deb",
        deb(d.path(), "slow-du", "1.0", "all", Some(slow)),
    );
    let mut r = Rig::start(d.path(), &root, acs);
    r.next_session();
    let list0 = dpkg_list(&root);
    r.send("cut", vec![install(&url, "", EE_DPKG)]);
    let marker = root.join("postinst-started");
    assert!(
        wait_until(WAIT, || marker.exists()),
        "{}",
        r.agent.log_text()
    );
    r.agent.kill9();
    std::fs::remove_file(&marker).unwrap();
    r.agent = Agent::start(&r.cfg);
    let got = r.collect_after_restart();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (got[0][0].current_state, got[0][0].fault.code),
        (DuState::Failed, 9017),
        "{got:#?}"
    );
    assert_eq!(dpkg_status(&root, "slow-du"), None);
    assert_eq!(dpkg_list(&root), list0);
    assert!(!root.join("opt/slow-du").exists());
    let v = r.read(&[SM]);
    assert_eq!(v[&format!("{SM}DeploymentUnitNumberOfEntries")], "0");
}
