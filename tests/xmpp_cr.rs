//! XMPP connection requests (TR-069 Annex K) against a real Prosody: the agent's client
//! (STARTTLS, SASL, bind, status parameters, keep-alive, reconnection) and the CR IQ, sent by
//! `cwmp-connreq xmpp` and by an independent slixmpp client.
//!
//! Every test starts its own Prosody on a free loopback port with a throw-away CA. Tests skip
//! (with a printed message) when `prosody`, `prosodyctl` or `openssl` is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use cwmpd::testacs::{AcsOptions, SessionRecord, TestAcsHandle, spawn_in_thread};

const DOMAIN: &str = "cpe.test";
const CR_USER: &str = "cr-user";
const CR_PASS: &str = "cr pass&<word>";
const CONN: &str = "Device.XMPP.Connection.1.";
const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.crt`/`NAME.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.crt"),
        "-days",
        "2",
        "-subj",
        &format!("/CN=cwmpd test {name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
}

/// A Prosody instance owned by the test; killed (and continued first, if stopped) on drop.
struct Prosody {
    dir: PathBuf,
    cfg: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Prosody {
    /// None (after printing why) when Prosody or openssl is not installed.
    fn setup(d: &TempDir) -> Option<Prosody> {
        for t in ["prosody", "prosodyctl", "openssl"] {
            if !have(t) {
                println!(
                    "SKIPPED: {t} not installed (apt-get install prosody lua-unbound openssl)"
                );
                return None;
            }
        }
        let dir = d.path().join("prosody");
        let certs = dir.join("certs");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(&certs).unwrap();
        make_ca(&certs, "ca");
        make_ca(&certs, "other-ca");
        std::fs::write(
            certs.join("ext.cnf"),
            format!(
                "subjectAltName=DNS:{DOMAIN}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
            ),
        )
        .unwrap();
        run(Command::new("openssl").current_dir(&certs).args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{DOMAIN}.key"),
            "-out",
            "server.csr",
            "-subj",
            &format!("/CN={DOMAIN}"),
        ]));
        run(Command::new("openssl").current_dir(&certs).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{DOMAIN}.crt"),
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]));
        let port = free_port();
        let root = nix::unistd::Uid::effective().is_root();
        let cfg = dir.join("prosody.cfg.lua");
        std::fs::write(
            &cfg,
            format!(
                r#"pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
{run_as_root}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "posix" }}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
log = {{ info = "{d}/prosody.log" }}
certificates = "{d}/certs"
VirtualHost "{DOMAIN}"
  ssl = {{ certificate = "{d}/certs/{DOMAIN}.crt"; key = "{d}/certs/{DOMAIN}.key"; }}
"#,
                d = dir.display(),
                run_as_root = if root { "run_as_root = true" } else { "" },
            ),
        )
        .unwrap();
        let mut p = Prosody {
            dir,
            cfg,
            port,
            child: None,
        };
        for (u, pw) in [("cpe1", "cpe1-pw"), ("acs", "acs-pw"), ("evil", "evil-pw")] {
            p.register(u, pw);
        }
        p.start();
        Some(p)
    }

    fn register(&self, user: &str, pw: &str) {
        run(Command::new("prosodyctl")
            .arg("--config")
            .arg(&self.cfg)
            .args(["register", user, DOMAIN, pw]));
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("certs/ca.crt")
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))
            .unwrap();
        let child = Command::new("prosody")
            .arg("--config")
            .arg(&self.cfg)
            .arg("-F")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start prosody");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("prosody exited with {st}: {}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "prosody did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        let a = std::fs::read_to_string(self.dir.join("prosody.log")).unwrap_or_default();
        let b = std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        format!("{a}\n{b}")
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent_config(
    d: &TempDir,
    acs: &TestAcsHandle,
    p: &Prosody,
    ca: &Path,
    keepalive: i64,
) -> PathBuf {
    write_config(
        d.path(),
        &format!(
            r#"[connreq]
http_listen = ["127.0.0.1:0"]
rate_burst = 100
rate_per_minute = 600
[xmpp]
ca_file = "{ca}"
[parameters]
"Device.ManagementServer.URL" = "{url}"
"Device.DeviceInfo.Manufacturer" = "Test Co"
"Device.DeviceInfo.ManufacturerOUI" = "00D09E"
"Device.DeviceInfo.ProductClass" = "STB"
"Device.DeviceInfo.SerialNumber" = "SN0001"
"Device.ManagementServer.ConnectionRequestUsername" = "{CR_USER}"
"Device.ManagementServer.ConnectionRequestPassword" = "{CR_PASS}"
"Device.ManagementServer.ConnReqXMPPConnection" = "Device.XMPP.Connection.1"
"Device.ManagementServer.ConnReqAllowedJabberIDs" = "acs@{DOMAIN}"
"Device.XMPP.Connection.1.Enable" = true
"Device.XMPP.Connection.1.Username" = "cpe1"
"Device.XMPP.Connection.1.Password" = "cpe1-pw"
"Device.XMPP.Connection.1.Domain" = "{DOMAIN}"
"Device.XMPP.Connection.1.Resource" = "cwmp"
"Device.XMPP.Connection.1.UseTLS" = true
"Device.XMPP.Connection.1.ServerConnectAlgorithm" = "ServerTable"
"Device.XMPP.Connection.1.KeepAliveInterval" = {keepalive}
"Device.XMPP.Connection.1.ServerRetryInitialInterval" = 1
"Device.XMPP.Connection.1.ServerRetryIntervalMultiplier" = 2000
"Device.XMPP.Connection.1.ServerRetryMaxInterval" = 2
"Device.XMPP.Connection.1.Server.1.Enable" = true
"Device.XMPP.Connection.1.Server.1.ServerAddress" = "127.0.0.1"
"Device.XMPP.Connection.1.Server.1.Port" = {port}
"#,
            ca = ca.display(),
            url = acs.url(),
            port = p.port,
        ),
    )
}

fn wait_status(a: &Agent, want: impl Fn(&str) -> bool, timeout: Duration) -> (String, Duration) {
    let t0 = Instant::now();
    loop {
        let s = a.get(&format!("{CONN}Status"));
        if want(&s) || t0.elapsed() > timeout {
            return (s, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events(s: &SessionRecord) -> Vec<String> {
    s.inform
        .as_ref()
        .map(|i| i.events.iter().map(|e| e.event_code.clone()).collect())
        .unwrap_or_default()
}

fn inform_param(s: &SessionRecord, name: &str) -> Option<String> {
    s.inform
        .as_ref()?
        .params
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value.clone())
}

/// Waits until some session satisfies `f`; returns the number of sessions seen then.
fn wait_session(acs: &TestAcsHandle, f: impl Fn(&SessionRecord) -> bool) -> Option<usize> {
    let t0 = Instant::now();
    while t0.elapsed() < WAIT {
        let s = acs.sessions();
        if s.iter().any(&f) {
            return Some(s.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn wait_idle(acs: &TestAcsHandle) {
    let t0 = Instant::now();
    while t0.elapsed() < WAIT && acs.sessions().iter().any(|s| !s.ended) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cwmp-connreq xmpp` as ACS JID `from`; returns (exit code, stdout, stderr).
fn connreq(p: &Prosody, from: &str, pw: &str, cr_pass: &str, count: u32) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cwmp-connreq"))
        .args([
            "xmpp",
            "--jid",
            from,
            "--password",
            pw,
            "--server",
            &format!("127.0.0.1:{}", p.port),
            "--to",
            &format!("cpe1@{DOMAIN}/cwmp"),
            "--user",
            CR_USER,
            "--cr-password",
            cr_pass,
            "--count",
            &count.to_string(),
        ])
        .arg("--ca")
        .arg(p.ca())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cr_sessions(acs: &TestAcsHandle) -> usize {
    acs.sessions()
        .iter()
        .filter(|s| events(s).contains(&"6 CONNECTION REQUEST".to_string()))
        .count()
}

#[test]
fn agent_connects_and_serves_connection_requests() {
    let d = TempDir::new("xmpp-cr");
    let Some(p) = Prosody::setup(&d) else { return };
    let acs = spawn_in_thread(AcsOptions::default());
    let a = Agent::start(&agent_config(&d, &acs, &p, &p.ca(), -1));
    let (st, took) = wait_status(&a, |s| s == "Enabled", WAIT);
    assert_eq!(st, "Enabled", "{}\n{}", a.log_text(), p.log());
    println!("connected in {took:?}");
    let jid = format!("cpe1@{DOMAIN}/cwmp");
    assert_eq!(a.get(&format!("{CONN}TLSEstablished")), "true");
    assert_eq!(a.get(&format!("{CONN}JabberID")), jid);
    assert_eq!(a.get("Device.ManagementServer.ConnReqJabberID"), jid);
    assert!(!a.get(&format!("{CONN}LastChangeDate")).is_empty());
    // The ACS learns the JID from an Inform (boot Inform or the value change that follows).
    assert!(
        wait_session(&acs, |s| inform_param(
            s,
            "Device.ManagementServer.ConnReqJabberID"
        )
        .is_some_and(|v| v == jid))
        .is_some(),
        "no Inform with ConnReqJabberID: {:?}",
        acs.sessions().iter().map(events).collect::<Vec<_>>()
    );
    wait_idle(&acs);

    // An allowed ACS JID (any resource of acs@cpe.test).
    let (code, out, err) = connreq(&p, &format!("acs@{DOMAIN}/acs"), "acs-pw", CR_PASS, 1);
    assert_eq!(code, 0, "{out}{err}\n{}", a.log_text());
    assert!(out.starts_with("result rtt="), "{out}");
    println!("cwmp-connreq: {err}{out}");
    assert!(
        wait_session(&acs, |s| events(s).contains(&"6 CONNECTION REQUEST".into())).is_some(),
        "no CR session"
    );
    wait_idle(&acs);
    let n = acs.sessions().len();

    // A JID that is not allowed: service-unavailable, no session.
    let (code, out, _) = connreq(&p, &format!("evil@{DOMAIN}/x"), "evil-pw", CR_PASS, 1);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("error service-unavailable"), "{out}");
    // Wrong credentials: not-authorized, no session.
    let (code, out, _) = connreq(&p, &format!("acs@{DOMAIN}/acs"), "acs-pw", "wrong", 1);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("error not-authorized"), "{out}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(acs.sessions().len(), n, "no session after refused requests");

    // RTT figures: 20 requests in a row (coalesced into few sessions).
    let (code, out, _) = connreq(&p, &format!("acs@{DOMAIN}/rtt"), "acs-pw", CR_PASS, 20);
    assert_eq!(code, 0, "{out}");
    println!("RTT: {}", out.lines().last().unwrap_or(""));
    wait_session(&acs, |_| true);
    wait_idle(&acs);

    // An independent client: slixmpp.
    let py = std::env::var("CWMPD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_slix = Command::new(&py)
        .args(["-c", "import slixmpp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_slix {
        println!("SKIPPED (slixmpp part): {py} cannot import slixmpp (set CWMPD_TEST_PYTHON)");
    } else {
        let before = cr_sessions(&acs);
        let out = Command::new(&py)
            .arg(manifest().join("tests/fixtures/xmpp_cr_client.py"))
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &p.port.to_string(),
                "--jid",
                &format!("acs@{DOMAIN}/slixmpp"),
                "--password",
                "acs-pw",
                "--to",
                &jid,
                "--user",
                CR_USER,
                "--cr-password",
                CR_PASS,
                "--ca",
            ])
            .arg(p.ca())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim() == "result",
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t0 = Instant::now();
        while cr_sessions(&acs) == before && t0.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(cr_sessions(&acs) > before, "no CR session after slixmpp");
    }
    // Counters went up.
    let rx: u32 = a
        .get(&format!("{CONN}Stats.ReceivedMessages"))
        .parse()
        .unwrap();
    let tx_err: u32 = a
        .get(&format!("{CONN}Stats.TransmittedErrorMessages"))
        .parse()
        .unwrap();
    assert!(rx >= 3 && tx_err >= 2, "rx {rx} tx_err {tx_err}");
    // Disabling the connection: Status Disabled, ConnReqJabberID empty.
    a.set(&format!("{CONN}Enable"), "false");
    let (st, _) = wait_status(&a, |s| s == "Disabled", WAIT);
    assert_eq!(st, "Disabled");
    let t0 = Instant::now();
    while !a.get("Device.ManagementServer.ConnReqJabberID").is_empty() && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.get("Device.ManagementServer.ConnReqJabberID"), "");
}

#[test]
fn agent_reconnects_after_server_restart() {
    let d = TempDir::new("xmpp-restart");
    let Some(mut p) = Prosody::setup(&d) else {
        return;
    };
    let acs = spawn_in_thread(AcsOptions::default());
    let a = Agent::start(&agent_config(&d, &acs, &p, &p.ca(), 60));
    let (st, _) = wait_status(&a, |s| s == "Enabled", WAIT);
    assert_eq!(st, "Enabled", "{}", a.log_text());
    wait_session(&acs, |s| {
        inform_param(s, "Device.ManagementServer.ConnReqJabberID").is_some_and(|v| !v.is_empty())
    });
    wait_idle(&acs);
    let sessions = acs.sessions().len();
    p.kill();
    let (st, _) = wait_status(&a, |s| s != "Enabled", Duration::from_secs(10));
    assert_ne!(st, "Enabled", "disconnect noticed");
    // Down for a moment (a couple of failed attempts), then back.
    std::thread::sleep(Duration::from_secs(2));
    p.start();
    // Waits are at most ServerRetryMaxInterval (2 s) each, plus the login.
    let (st, took) = wait_status(&a, |s| s == "Enabled", Duration::from_secs(10));
    assert_eq!(st, "Enabled", "{}", a.log_text());
    println!("reconnected {took:?} after the restart");
    let (code, out, err) = connreq(&p, &format!("acs@{DOMAIN}/acs"), "acs-pw", CR_PASS, 1);
    assert_eq!(code, 0, "{out}{err}\n{}", a.log_text());
    assert!(wait_session(&acs, |s| events(s).contains(&"6 CONNECTION REQUEST".into())).is_some());
    // Same JID again: no VALUE CHANGE for ConnReqJabberID.
    wait_idle(&acs);
    let s = acs.sessions();
    assert!(
        s[sessions..]
            .iter()
            .all(|s| !events(s).contains(&"4 VALUE CHANGE".to_string())),
        "{:?}",
        s.iter().map(events).collect::<Vec<_>>()
    );
}

#[test]
fn untrusted_server_certificate_is_refused() {
    let d = TempDir::new("xmpp-untrusted");
    let Some(p) = Prosody::setup(&d) else { return };
    let acs = spawn_in_thread(AcsOptions::default());
    let other = p.dir.join("certs/other-ca.crt");
    let a = Agent::start(&agent_config(&d, &acs, &p, &other, -1));
    let (st, _) = wait_status(&a, |s| s.starts_with("Error"), WAIT);
    assert_eq!(st, "Error", "{}", a.log_text());
    assert_eq!(a.get(&format!("{CONN}TLSEstablished")), "false");
    assert_eq!(a.get("Device.ManagementServer.ConnReqJabberID"), "");
    let log = a.log_text();
    assert!(
        log.contains("TLS") && log.contains("certificate"),
        "clear log line expected: {log}"
    );
}

#[test]
fn frozen_server_is_detected_by_keepalive() {
    let d = TempDir::new("xmpp-frozen");
    let Some(p) = Prosody::setup(&d) else { return };
    let acs = spawn_in_thread(AcsOptions::default());
    let ka = 2;
    let a = Agent::start(&agent_config(&d, &acs, &p, &p.ca(), ka));
    let (st, _) = wait_status(&a, |s| s == "Enabled", WAIT);
    assert_eq!(st, "Enabled", "{}", a.log_text());
    // Keep-alive pings while all is well: the stream stays up over several intervals.
    std::thread::sleep(Duration::from_secs(ka as u64 * 3));
    assert_eq!(
        a.get(&format!("{CONN}Status")),
        "Enabled",
        "{}",
        a.log_text()
    );
    p.signal(nix::sys::signal::Signal::SIGSTOP);
    let (st, took) = wait_status(&a, |s| s != "Enabled", Duration::from_secs(ka as u64 * 5));
    p.signal(nix::sys::signal::Signal::SIGCONT);
    assert_ne!(
        st,
        "Enabled",
        "frozen server not detected: {}",
        a.log_text()
    );
    println!("frozen server detected after {took:?} (KeepAliveInterval {ka} s)");
    assert!(
        took <= Duration::from_secs(ka as u64 * 2 + 2),
        "detection took {took:?}"
    );
    // Back to normal once the server runs again.
    let (st, _) = wait_status(&a, |s| s == "Enabled", Duration::from_secs(45));
    assert_eq!(st, "Enabled", "{}", a.log_text());
}
