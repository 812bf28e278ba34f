//! XMPP connection requests (TR-069 Annex K) against a real Prosody: the agent's client
//! (STARTTLS, SASL, bind, status parameters, keep-alive, reconnection, ServerConnectAttempts) and
//! the CR IQ, sent by `cwmp-connreq xmpp` and by an independent slixmpp client. The policy behind
//! the client is tested on virtual time in `src/connreq/xmpp_policy.rs`; these tests check it
//! drives the real thing. Assertions are on what the ACS, the server or the data model sees,
//! never on the agent's log.
//!
//! Every test starts its own Prosody on a free loopback port with a throw-away CA. Tests skip
//! (with a printed message) when `prosody`, `prosodyctl` or `openssl` is missing.

#![cfg(feature = "xmpp")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::prosody::{DOMAIN, Prosody};
use common::*;
use cwmp_testacs::{AcsOptions, SessionRecord, TestAcsHandle, spawn_in_thread};

const CR_USER: &str = "cr-user";
const CR_PASS: &str = "cr pass&<word>";
const CONN: &str = "Device.XMPP.Connection.1.";
const WAIT: Duration = Duration::from_secs(20);

fn agent_config(
    d: &TempDir,
    acs: &TestAcsHandle,
    p: &Prosody,
    ca: &Path,
    keepalive: i64,
) -> PathBuf {
    agent_config_with(d, acs, p, ca, keepalive, "")
}

/// [`agent_config`] with more `[parameters]` lines.
fn agent_config_with(
    d: &TempDir,
    acs: &TestAcsHandle,
    p: &Prosody,
    ca: &Path,
    keepalive: i64,
    extra: &str,
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
{extra}
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
    let out = Command::new(connreq_bin())
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
        common::skip(
            "(slixmpp part)",
            &format!("{py} cannot import slixmpp (set CWMPD_TEST_PYTHON)"),
        );
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
    // Why, as the server sees it: the agent aborts the handshake with the TLS alert for a
    // certificate from an unknown CA. The probe presents Prosody's own certificate, which the
    // agent accepts with the right CA (the other tests).
    let probe = p.tls_probe();
    let r = a.set(&format!("{CONN}Server.1.Port"), &probe.port.to_string());
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(probe.outcome(), "alert UnknownCA", "{}", a.log_text());
    let (st, _) = wait_status(&a, |s| s == "Error", WAIT);
    assert_eq!(st, "Error");
    assert_eq!(a.get(&format!("{CONN}TLSEstablished")), "false");
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

#[test]
fn agent_tries_each_server_server_connect_attempts_times() {
    let d = TempDir::new("xmpp-attempts");
    let Some(p) = Prosody::setup(&d) else { return };
    let acs = spawn_in_thread(AcsOptions::default());
    // The preferred server (priority 1) accepts TCP connections and closes them at once; Prosody
    // is the second choice.
    let broken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let broken_port = broken.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for c in broken.incoming() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(c);
        }
    });
    let extra = format!(
        r#""Device.XMPP.Connection.1.ServerConnectAttempts" = 3
"Device.XMPP.Connection.1.Server.1.Priority" = 10
"Device.XMPP.Connection.1.Server.2.Enable" = true
"Device.XMPP.Connection.1.Server.2.ServerAddress" = "127.0.0.1"
"Device.XMPP.Connection.1.Server.2.Port" = {broken_port}
"Device.XMPP.Connection.1.Server.2.Priority" = 1
"#
    );
    let a = Agent::start(&agent_config_with(&d, &acs, &p, &p.ca(), -1, &extra));
    // Three attempts to the preferred server (waits of at most 1 and 2 s between them), then
    // Prosody at once.
    let (st, took) = wait_status(&a, |s| s == "Enabled", WAIT);
    assert_eq!(st, "Enabled", "{}", a.log_text());
    println!("online via the second server after {took:?}");
    assert_eq!(
        a.get(&format!("{CONN}JabberID")),
        format!("cpe1@{DOMAIN}/cwmp")
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Online: the preferred server is left alone.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}
