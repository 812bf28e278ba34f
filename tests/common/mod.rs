//! Test harness: runs the real `cwmpd` binary on a private directory and talks to it through
//! its control socket.
#![allow(dead_code)]

pub mod netns;
pub mod prosody;
pub mod rawacs;
pub mod xsd;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Reports a test (or part of one) that cannot run here because a peer or privilege is
/// missing. In CI (`CI=true`, where .ci/run installs every peer and runs as root) a missing
/// peer is a failure, never a silent skip; elsewhere the reason is printed and the test returns.
pub fn skip(what: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} cannot run in CI: {why}"
    );
    println!("SKIPPED {what}: {why}");
}

pub fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("cwmpd-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a config into `dir` with the given extra TOML appended, and returns its path.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    // Without a [connreq] section of its own, a test gets an HTTP CR listener on a free loopback
    // port, so that agents running in parallel do not fight over 7547.
    let connreq = if extra.contains("[connreq]") {
        ""
    } else {
        "\n[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\n"
    };
    let cfg = format!(
        "[agent]\nstate_dir = \"{d}/state\"\ndatamodel = [\"{m}/datamodel\"]\ncontrol_socket = \"{d}/ctl.sock\"\nlog_level = \"debug\"\npoll_interval = 3600\n{extra}{connreq}",
        d = dir.display(),
        m = manifest().display()
    );
    let p = dir.join("cwmpd.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// The agent's command line: `CWMPD_AGENT_CMD` when set (whitespace-separated, e.g.
/// `qemu-arm -L /usr/arm-linux-gnueabihf /path/to/cwmpd` for a cross build, see
/// cross/qemu-test.sh), else the `cwmpd` binary of this build.
pub fn agent_argv() -> Vec<String> {
    external_argv("CWMPD_AGENT_CMD").unwrap_or_else(|| vec![env!("CARGO_BIN_EXE_cwmpd").into()])
}

/// The `cwmp-connreq` binary (package `crates/cwmp-connreq`) of this build: next to
/// `CARGO_BIN_EXE_cwmpd`, built there once per test process with `cargo build -p cwmpd -p
/// cwmp-connreq` (same profile and target directory) when it is missing or older than its own
/// crate's sources (a change of the agent's library alone does not rebuild it). `cargo
/// test`/`nextest` of the workspace build it anyway; `cargo test -p cwmpd` does not, since it is
/// another package's binary.
pub fn connreq_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        cwmp_testacs::binaries::sibling(
            Path::new(env!("CARGO_BIN_EXE_cwmpd")),
            "cwmp-connreq",
            &["cwmpd", "cwmp-connreq"],
            &["crates/cwmp-connreq/src", "crates/cwmp-connreq/Cargo.toml"],
        )
    })
    .clone()
    .unwrap_or_else(|e| panic!("the cwmp-connreq binary: {e}"))
}

/// [`connreq_bin`] as a string (for command lines).
pub fn connreq_path() -> String {
    connreq_bin().to_string_lossy().into_owned()
}

/// A command line from environment variable `var` (whitespace-separated), if set and not empty.
pub fn external_argv(var: &str) -> Option<Vec<String>> {
    let v = std::env::var(var).ok()?;
    let argv: Vec<String> = v.split_whitespace().map(String::from).collect();
    (!argv.is_empty()).then_some(argv)
}

/// A `Command` for [`agent_argv`].
pub fn agent_command() -> Command {
    let argv = agent_argv();
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

pub struct Agent {
    pub child: Child,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `cwmpd run -c CONFIG` (see [`agent_argv`]) and waits for its control socket.
    pub fn start(config: &Path) -> Agent {
        Agent::start_in(config, None)
    }

    /// Like [`start`](Self::start), inside network namespace `netns` (`ip netns exec`, which
    /// execs the agent, so the child PID is the agent's).
    pub fn start_in(config: &Path, netns: Option<&str>) -> Agent {
        Agent::start_full(config, netns, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables for the agent.
    pub fn start_with_env(config: &Path, env: &[(&str, String)]) -> Agent {
        Agent::start_full(config, None, env)
    }

    fn start_full(config: &Path, netns: Option<&str>, env: &[(&str, String)]) -> Agent {
        let dir = config.parent().unwrap();
        let sock = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&sock);
        let log = dir.join("agent.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c.args(agent_argv());
                c
            }
            None => agent_command(),
        };
        let child = cmd
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start cwmpd");
        let mut a = Agent { child, sock, log };
        let t0 = Instant::now();
        loop {
            if UnixStream::connect(&a.sock).is_ok() {
                break;
            }
            if let Ok(Some(st)) = a.child.try_wait() {
                panic!("cwmpd exited with {st}: {}", a.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "cwmpd did not start: {}",
                a.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        a
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn ctl(&self, req: Value) -> Value {
        ctl(&self.sock, &req).expect("control request")
    }

    pub fn get(&self, name: &str) -> String {
        let v = self.ctl(json!({"op": "get", "names": [name]}));
        assert_eq!(v["ok"], true, "get {name}: {v}");
        v["values"][0]["value"].as_str().unwrap().to_string()
    }

    pub fn set(&self, name: &str, value: &str) -> Value {
        self.ctl(json!({"op": "set", "values": {name: value}}))
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                std::mem::forget(self);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ctl(sock: &Path, req: &Value) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut ans = String::new();
    r.read_line(&mut ans)?;
    serde_json::from_str(&ans).map_err(std::io::Error::other)
}

/// Runs `cwmpd ARGS` (see [`agent_argv`]) to completion; returns (exit code, stdout, stderr).
pub fn cwmpd(args: &[&str]) -> (i32, String, String) {
    let out = agent_command().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (bounded) until the file at `path` contains `needle`; returns whether it did.
pub fn wait_file_contains(path: &Path, needle: &str, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// libfaketime of the Debian package (`/usr/lib/<multiarch>/faketime/`): moves only the
/// clock of the process it is preloaded into.
pub fn faketime_lib() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
}

/// The event codes of a session's Inform.
pub fn events(s: &cwmp_testacs::SessionRecord) -> Vec<String> {
    s.inform
        .as_ref()
        .map(|i| i.events.iter().map(|e| e.event_code.clone()).collect())
        .unwrap_or_default()
}

/// The value of a parameter in a session's Inform.
pub fn inform_param(s: &cwmp_testacs::SessionRecord, name: &str) -> Option<String> {
    s.inform
        .as_ref()?
        .params
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value.clone())
}

/// A free UDP port on loopback (bound then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A background process killed (by its own PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let f2 = f.try_clone().unwrap();
        let child = cmd
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        Proc { child, log }
    }
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it holds or `timeout` passed; the last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The session's Inform events with their CommandKeys.
pub fn events_with_keys(s: &cwmp_testacs::SessionRecord) -> Vec<(String, String)> {
    s.inform
        .as_ref()
        .map(|i| {
            i.events
                .iter()
                .map(|e| (e.event_code.clone(), e.command_key.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The TransferCompletes the CPE sent in a session.
pub fn tcs(s: &cwmp_testacs::SessionRecord) -> Vec<cwmpd::cwmp::soap::TransferComplete> {
    s.received
        .iter()
        .filter_map(|m| match m {
            cwmpd::cwmp::soap::CpeMessage::TransferComplete(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// Waits (at most 20 s) for the ACS's session number `*seen + 1` to end, counts it and returns
/// it; the agent's log goes in the failure message.
pub fn next_session(
    acs: &cwmp_testacs::TestAcsHandle,
    seen: &mut usize,
    agent: &Agent,
) -> cwmp_testacs::SessionRecord {
    *seen += 1;
    let all = acs.wait_sessions(*seen, Duration::from_secs(20));
    assert!(
        all.len() >= *seen && all[*seen - 1].ended,
        "session {} did not come: {}",
        *seen,
        agent.log_text()
    );
    all[*seen - 1].clone()
}

/// A GetParameterValues of `names`.
pub fn gpv(names: &[&str]) -> cwmpd::cwmp::soap::AcsRequest {
    cwmpd::cwmp::soap::AcsRequest::GetParameterValues {
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// A SetParameterValues of `list` (untyped values) with ParameterKey `key`.
pub fn spv<N: AsRef<str>, V: AsRef<str>>(
    list: &[(N, V)],
    key: &str,
) -> cwmpd::cwmp::soap::AcsRequest {
    cwmpd::cwmp::soap::AcsRequest::SetParameterValues {
        list: list
            .iter()
            .map(|(n, v)| cwmpd::cwmp::soap::ParamValue {
                name: n.as_ref().to_string(),
                value: v.as_ref().to_string(),
                xsi_type: None,
            })
            .collect(),
        parameter_key: key.into(),
    }
}

/// The values of a session's GetParameterValues answers, by name.
pub fn gpv_values(s: &cwmp_testacs::SessionRecord) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    for r in &s.received {
        if let cwmpd::cwmp::soap::CpeMessage::GetParameterValuesResponse { list } = r {
            for p in list {
                m.insert(p.name.clone(), p.value.clone());
            }
        }
    }
    m
}
