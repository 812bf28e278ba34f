//! The HTTP connection-request listener, seen from outside: the real agent binary, with curl,
//! python-requests, a raw client and `cwmp-connreq` as the ACS.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use cwmpd::connreq::digest::DigestClient;
use serde_json::json;

const CR_URL: &str = "Device.ManagementServer.ConnectionRequestURL";
const USER: &str = "acs-user";
const PASS: &str = "cr-pass word";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts an agent with an HTTP CR listener on loopback; returns it and its ConnectionRequestURL.
fn start(d: &TempDir, extra: &str) -> (Agent, String) {
    let port = free_port();
    let cfg = format!(
        "[connreq]\nhttp_listen = [\"127.0.0.1:{port}\"]\n{extra}\n[parameters]\n\"Device.ManagementServer.ConnectionRequestUsername\" = \"{USER}\"\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"{PASS}\"\n"
    );
    let a = Agent::start(&write_config(d.path(), &cfg));
    let url = a.get(CR_URL);
    let prefix = format!("http://127.0.0.1:{port}/");
    assert!(url.starts_with(&prefix), "{url}");
    assert_eq!(url.len(), prefix.len() + 32, "{url}");
    (a, url)
}

fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let i = rest.find('/').unwrap();
    (rest[..i].to_string(), rest[i..].to_string())
}

/// One request on a fresh connection; returns (status, raw head).
fn raw(url: &str, method: &str, auth: Option<&str>) -> std::io::Result<(u16, String)> {
    let (hostport, path) = split_url(url);
    let mut s = TcpStream::connect(&hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    Ok((status, text))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A full CR (401, then the Digest answer); returns the final status and head.
fn digest_cr(url: &str, pass: &str) -> (u16, String) {
    let (st, head) = raw(url, "GET", None).unwrap();
    assert_eq!(st, 401, "{head}");
    let ch = header(&head, "WWW-Authenticate").expect("challenge");
    let (_, path) = split_url(url);
    let auth = DigestClient::respond(ch, "GET", &path, USER, pass, "0a4f113b", 1).unwrap();
    raw(url, "GET", Some(&auth)).unwrap()
}

fn count(a: &Agent) -> u64 {
    let v = a.ctl(json!({"op": "status"}));
    v["connection_requests"]
        .as_u64()
        .expect("connection_requests in status")
}

fn wait_count(a: &Agent, want: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let n = count(a);
        if n == want || t0.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn curl_digest_wrong_password_and_post() {
    if !have("curl", "--version") {
        common::skip("http_cr", "curl not installed");
        return;
    }
    let d = TempDir::new("crcurl");
    let (a, url) = start(&d, "");
    let curl = |extra: &[&str], cred: &str| -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(extra)
            .args(["--digest", "-u", cred, &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        curl(&[], &format!("{USER}:{PASS}")),
        "200",
        "{}",
        a.log_text()
    );
    assert_eq!(curl(&[], &format!("{USER}:wrong")), "401");
    assert_eq!(curl(&["-X", "POST"], &format!("{USER}:{PASS}")), "405");
    assert_eq!(wait_count(&a, 1), 1);
    // Wrong path: 404; one WWW-Authenticate header in the challenge.
    let (base, _) = split_url(&url);
    let (st, _) = raw(&format!("http://{base}/nope"), "GET", None).unwrap();
    assert_eq!(st, 404);
    let (st, head) = raw(&url, "GET", None).unwrap();
    assert_eq!(st, 401);
    let n = head
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .count();
    assert_eq!(n, 1, "{head}");
    let ch = header(&head, "WWW-Authenticate").unwrap();
    assert!(
        ch.starts_with("Digest realm=\"cwmpd\", qop=\"auth\", nonce="),
        "{ch}"
    );
    assert!(ch.contains("algorithm=MD5"), "{ch}");
    assert!(!a.log_text().contains(PASS), "password in the log");
}

fn python() -> Option<String> {
    if let Ok(p) = std::env::var("CWMPD_TEST_PYTHON")
        && !p.is_empty()
    {
        return Some(p);
    }
    Command::new("python3")
        .args(["-c", "import requests"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3".to_string())
}

#[test]
fn python_requests_digest() {
    let Some(py) = python() else {
        common::skip(
            "http_cr",
            "no python with `requests` (set CWMPD_TEST_PYTHON, see .ci/run)",
        );
        return;
    };
    let d = TempDir::new("crpy");
    let (a, url) = start(&d, "");
    let script = manifest().join("tests/fixtures/digest_client.py");
    let run = |pass: &str| {
        let out = Command::new(&py)
            .arg(&script)
            .args([url.as_str(), USER, pass])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(PASS), "200", "{}", a.log_text());
    assert_eq!(run("wrong"), "401");
    assert_eq!(wait_count(&a, 1), 1);
}

#[test]
fn replayed_authorization_is_refused() {
    let d = TempDir::new("crreplay");
    let (a, url) = start(&d, "");
    let (st, head) = raw(&url, "GET", None).unwrap();
    assert_eq!(st, 401);
    let ch = header(&head, "WWW-Authenticate").unwrap();
    let (_, path) = split_url(&url);
    let auth = DigestClient::respond(ch, "GET", &path, USER, PASS, "abcdef12", 1).unwrap();
    assert_eq!(raw(&url, "GET", Some(&auth)).unwrap().0, 200);
    let (st, head) = raw(&url, "GET", Some(&auth)).unwrap();
    assert_eq!(st, 401, "{head}");
    assert!(header(&head, "WWW-Authenticate").is_some());
    // The next nc on the same nonce is fine.
    let auth2 = DigestClient::respond(ch, "GET", &path, USER, PASS, "abcdef12", 2).unwrap();
    assert_eq!(raw(&url, "GET", Some(&auth2)).unwrap().0, 200);
    assert_eq!(wait_count(&a, 2), 2);
}

#[test]
fn rate_limit_answers_503_without_retry_after() {
    let d = TempDir::new("crrate");
    let (a, url) = start(&d, "rate_burst = 5\nrate_per_minute = 6\n");
    let (mut ok, mut busy) = (0u64, 0u64);
    for _ in 0..50 {
        let (st, head) = digest_cr(&url, PASS);
        match st {
            200 => ok += 1,
            503 => {
                busy += 1;
                assert!(header(&head, "Retry-After").is_none(), "{head}");
            }
            other => panic!("unexpected {other}: {head}"),
        }
    }
    // 5 at once, plus at most one refill token (6/min) per 10 s of test time.
    assert!((5..=6).contains(&ok), "ok={ok} busy={busy}");
    assert_eq!(ok + busy, 50);
    assert_eq!(wait_count(&a, ok), ok);
}

/// TR-069 (rule H12): with HTTP connection requests disabled the port is closed.
fn assert_port_closed(url: &str) {
    let t0 = std::time::Instant::now();
    loop {
        match raw(url, "GET", None) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            other => {
                assert!(
                    t0.elapsed() < std::time::Duration::from_secs(2),
                    "port still open: {other:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn disabling_http_cr_closes_the_port_and_clears_the_url() {
    let d = TempDir::new("croff");
    let (a, url) = start(&d, "");
    assert_eq!(digest_cr(&url, PASS).0, 200);
    let v = a.set(
        "Device.ManagementServer.HTTPConnectionRequestEnable",
        "false",
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(a.get(CR_URL), "");
    assert_port_closed(&url);
    // Re-enabled: the same URL (the path is persisted) works again.
    assert_eq!(
        a.set(
            "Device.ManagementServer.HTTPConnectionRequestEnable",
            "true"
        )["ok"],
        true
    );
    assert_eq!(a.get(CR_URL), url);
    assert_eq!(digest_cr(&url, PASS).0, 200);
    // EnableCWMP=false also refuses.
    assert_eq!(
        a.set("Device.ManagementServer.EnableCWMP", "false")["ok"],
        true
    );
    assert_eq!(a.get(CR_URL), "");
    assert_port_closed(&url);
    // The path survives a restart.
    a.stop();
    let a = Agent::start(&d.path().join("cwmpd.toml"));
    assert_eq!(
        a.set("Device.ManagementServer.EnableCWMP", "true")["ok"],
        true
    );
    assert_eq!(a.get(CR_URL), url);
}

#[test]
fn cwmp_connreq_http_against_agent() {
    let d = TempDir::new("crtool");
    let (a, url) = start(&d, "");
    let out = Command::new(connreq_bin())
        .args([
            "http",
            &url,
            "--user",
            USER,
            "--password",
            PASS,
            "--count",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", a.log_text());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        assert!(l.starts_with("200 OK in ") && l.ends_with(" ms"), "{l}");
    }
    assert_eq!(wait_count(&a, 2), 2);
    let out = Command::new(connreq_bin())
        .args(["http", &url, "--user", USER, "--password", "wrong"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("401 "));
}
