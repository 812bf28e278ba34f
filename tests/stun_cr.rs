//! UDP connection requests via STUN (TR-111 / TR-069 Annex G), seen from outside: the real
//! agent binary against `cwmp-connreq stun-server` and the test ACS, on loopback; and (as root)
//! behind a real Linux NAT built in network namespaces, with coturn and the project's server.

#![cfg(feature = "stun")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use cwmp_testacs::{AcsOptions, spawn_in_thread};
use cwmpd::connreq::stun::TxId;
use cwmpd::connreq::udpcr::build_udp_cr;
use serde_json::{Value, json};

const USER: &str = "cr-user";
const PASS: &str = "cr pass";
const ADDR: &str = "Device.ManagementServer.UDPConnectionRequestAddress";
const NAT: &str = "Device.ManagementServer.NATDetected";
const WAIT: Duration = Duration::from_secs(20);

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stun_server(dir: &Path, listen: &str, api: &str, extra: &[&str]) -> Proc {
    let mut c = Command::new(connreq_bin());
    c.args([
        "stun-server",
        "--listen",
        listen,
        "--api",
        api,
        "--max-seconds",
        "300",
    ])
    .args(extra);
    let p = Proc::spawn(c, dir.join("stun-server.log"));
    // Its API accepts connections once both of its sockets are bound.
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(api).is_ok()),
        "stun server did not start: {}",
        p.text()
    );
    p
}

fn api(api: &str, method: &str, target: &str) -> Value {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {api}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn wait_value(a: &Agent, name: &str, want: &str, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let v = a.get(name);
        if v == want || t0.elapsed() > timeout {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cr_count(a: &Agent) -> u64 {
    a.ctl(json!({"op": "status"}))["connection_requests"]
        .as_u64()
        .unwrap()
}

/// Agent config: UDP socket `udp`, STUN server `stun` (None: STUN off), ACS URL, extra params.
fn agent_config(dir: &Path, udp: &str, acs_url: &str, stun: Option<&str>, extra: &str) -> PathBuf {
    let stun_params = match stun {
        Some(s) => {
            let (h, p) = s.rsplit_once(':').unwrap();
            format!(
                "\"Device.ManagementServer.STUNEnable\" = \"true\"\n\"Device.ManagementServer.STUNServerAddress\" = \"{h}\"\n\"Device.ManagementServer.STUNServerPort\" = \"{p}\"\n\"Device.ManagementServer.STUNMinimumKeepAlivePeriod\" = \"1\"\n{}",
                // Keep-alives every second, no binding-lifetime discovery, unless asked for.
                if extra.contains("STUNMaximumKeepAlivePeriod") {
                    ""
                } else {
                    "\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = \"1\"\n"
                }
            )
        }
        None => String::new(),
    };
    write_config(
        dir,
        &format!(
            "[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"{udp}\"\n[parameters]\n\"Device.ManagementServer.URL\" = \"{acs_url}\"\n\"Device.ManagementServer.ConnectionRequestUsername\" = \"{USER}\"\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"{PASS}\"\n{stun_params}{extra}"
        ),
    )
}

fn connreq_tool(args: &[&str]) -> (bool, String) {
    let out = Command::new(connreq_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn loopback_stun_binding_and_udp_cr_via_stun_server() {
    let d = TempDir::new("stun-lo");
    let acs = spawn_in_thread(AcsOptions::default());
    let sport = free_udp_port();
    let api_addr = format!("127.0.0.1:{}", free_tcp_port());
    let srv = stun_server(d.path(), &format!("127.0.0.1:{sport}"), &api_addr, &[]);
    let uport = free_udp_port();
    let a = Agent::start(&agent_config(
        d.path(),
        &format!("127.0.0.1:{uport}"),
        &acs.url(),
        Some(&format!("127.0.0.1:{sport}")),
        "",
    ));
    let want = format!("127.0.0.1:{uport}");
    assert_eq!(wait_value(&a, ADDR, &want, WAIT), want, "{}", a.log_text());
    assert_eq!(a.get(NAT), "false");
    let s = acs.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    // The server saw the TR-111 attribute, exactly, in classic form.
    let b = api(&api_addr, "GET", "/bindings");
    let b0 = &b["bindings"][0];
    assert_eq!(b0["addr"], want.as_str(), "{b}");
    assert_eq!(b0["connection_request_binding"], true);
    assert_eq!(b0["crb_value_exact"], true);
    assert_eq!(b0["classic"], true);
    // Keep-alives every second (STUNMinimumKeepAlivePeriod = 1).
    std::thread::sleep(Duration::from_millis(2500));
    let b = api(&api_addr, "GET", "/bindings");
    let reqs = b["bindings"][0]["requests"].as_u64().unwrap();
    assert!((2..=6).contains(&reqs), "{b}");
    // A UDP CR sent from the STUN socket through the API: one session, 6 CONNECTION REQUEST.
    let (ok, out) = connreq_tool(&[
        "udp",
        "last",
        "--user",
        USER,
        "--password",
        PASS,
        "--via",
        &api_addr,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("\"copies\":3"), "{out}");
    println!("cwmp-connreq udp --via: {out}");
    let s = acs.wait_sessions(2, WAIT);
    assert_eq!(s.len(), 2);
    assert!(
        events(&s[1]).contains(&"6 CONNECTION REQUEST".to_string()),
        "{:?}",
        events(&s[1])
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cr_count(&a), 1, "three copies, one CR");
    // The engine saw it as a UDP connection request, with the time from the datagram's arrival.
    let st = a.ctl(json!({"op": "status"}));
    assert_eq!(st["last_cr_mechanism"], "udp", "{st}");
    let latency = st["last_cr_latency_us"].as_u64();
    assert!(latency.is_some(), "{st}");
    println!("agent: UDP CR accepted, latency {latency:?} us");
    // A direct CR (ephemeral source port) also works on loopback (no NAT).
    let (ok, out) = connreq_tool(&["udp", &want, "--user", USER, "--password", PASS]);
    assert!(ok, "{out}");
    println!("cwmp-connreq udp: {out}");
    let t0 = Instant::now();
    while cr_count(&a) < 2 && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cr_count(&a), 2);
    // STUN off: the local address, NATDetected false.
    assert_eq!(
        a.set("Device.ManagementServer.STUNEnable", "false")["ok"],
        true
    );
    assert_eq!(wait_value(&a, ADDR, &want, WAIT), want);
    assert_eq!(a.get(NAT), "false");
    drop(srv);
}

#[test]
fn loopback_stun_401_then_authenticated_and_wrong_password_backs_off() {
    let d = TempDir::new("stun-auth");
    let sport = free_udp_port();
    let api_addr = format!("127.0.0.1:{}", free_tcp_port());
    let _srv = stun_server(
        d.path(),
        &format!("127.0.0.1:{sport}"),
        &api_addr,
        &["--user", "stun-u", "--password", "stun-p"],
    );
    // Right credentials: 401, then the authenticated retry is answered.
    let d1 = TempDir::new("stun-auth-ok");
    let uport = free_udp_port();
    let ok_params = "\"Device.ManagementServer.STUNUsername\" = \"stun-u\"\n\"Device.ManagementServer.STUNPassword\" = \"stun-p\"\n";
    let a = Agent::start(&agent_config(
        d1.path(),
        &format!("127.0.0.1:{uport}"),
        "",
        Some(&format!("127.0.0.1:{sport}")),
        ok_params,
    ));
    let want = format!("127.0.0.1:{uport}");
    assert_eq!(wait_value(&a, ADDR, &want, WAIT), want, "{}", a.log_text());
    let b = api(&api_addr, "GET", "/bindings");
    assert_eq!(b["challenges"], 1, "{b}");
    assert_eq!(b["bindings"][0]["key"], "stun-u", "{b}");
    assert_eq!(b["bindings"][0]["authenticated"], true, "{b}");
    // Later keep-alives carry the credentials from the start: still exactly one challenge.
    std::thread::sleep(Duration::from_millis(2200));
    let b = api(&api_addr, "GET", "/bindings");
    assert_eq!(b["challenges"], 1, "{b}");
    assert!(b["auth_ok"].as_u64().unwrap() >= 2, "{b}");
    assert_eq!(b["auth_failed"], 0, "{b}");
    a.stop();

    // Wrong password: a bounded backoff (5 s first), not a tight loop. The server counts the
    // rejected attempts: one at once, the next one 5 s later.
    let d2 = TempDir::new("stun-auth-bad");
    let uport = free_udp_port();
    const WRONG: &str = "Wr0ng-stun-Pa55";
    let bad = format!(
        "\"Device.ManagementServer.STUNUsername\" = \"stun-u\"\n\"Device.ManagementServer.STUNPassword\" = \"{WRONG}\"\n"
    );
    let failed = || {
        api(&api_addr, "GET", "/bindings")["auth_failed"]
            .as_u64()
            .unwrap()
    };
    let a = Agent::start(&agent_config(
        d2.path(),
        &format!("127.0.0.1:{uport}"),
        "",
        Some(&format!("127.0.0.1:{sport}")),
        &bad,
    ));
    assert!(
        wait_until(WAIT, || failed() >= 1),
        "no authenticated attempt: {}",
        a.log_text()
    );
    let first = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(failed(), 1, "backoff");
    assert_ne!(a.get(ADDR), format!("127.0.0.1:{uport}"));
    assert!(wait_until(WAIT, || failed() >= 2), "no second attempt");
    let backoff = first.elapsed();
    assert!(
        (4.4..=6.5).contains(&backoff.as_secs_f64()),
        "second attempt after {backoff:?}, want 5 s"
    );
    assert!(!a.log_text().contains(WRONG), "password in the log");
    // Fixing the password recovers at the next try.
    assert_eq!(
        a.set("Device.ManagementServer.STUNPassword", "stun-p")["ok"],
        true
    );
    let want = format!("127.0.0.1:{uport}");
    assert_eq!(wait_value(&a, ADDR, &want, WAIT), want, "{}", a.log_text());
}

#[test]
fn loopback_binding_lifetime_discovery() {
    // No NAT on loopback: the binding never expires, so the search doubles up to the maximum
    // (1, 2, 4 s) and settles on 90 % of it. Seen from the project's STUN server: the CR
    // socket's keep-alives go from every second to every 3.6 s, and the secondary sockets sent
    // a refresh and a probe per interval, then nothing more.
    let d = TempDir::new("stun-disc");
    let sport = free_udp_port();
    let api_addr = format!("127.0.0.1:{}", free_tcp_port());
    let _srv = stun_server(d.path(), &format!("127.0.0.1:{sport}"), &api_addr, &[]);
    let uport = free_udp_port();
    let a = Agent::start(&agent_config(
        d.path(),
        &format!("127.0.0.1:{uport}"),
        "",
        Some(&format!("127.0.0.1:{sport}")),
        "\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = \"4\"\n",
    ));
    // (all requests, the CR binding's requests) as the server counts them.
    let counts = || {
        let b = api(&api_addr, "GET", "/bindings");
        let cr = b["bindings"][0]["requests"].as_u64().unwrap_or(0);
        (b["requests"].as_u64().unwrap(), cr)
    };
    // When the CR binding's request count went up.
    let t0 = Instant::now();
    let mut seen: Vec<Instant> = Vec::new();
    let mut last = 0;
    let long = |seen: &[Instant]| {
        seen.windows(2)
            .filter(|w| w[1] - w[0] > Duration::from_millis(2500))
            .count()
    };
    while long(&seen) < 2 && t0.elapsed() < Duration::from_secs(40) {
        let (_, cr) = counts();
        if cr > last {
            last = cr;
            seen.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!("CR keep-alive gaps: {gaps:?} (after {:?})", t0.elapsed());
    let first_long = gaps
        .iter()
        .position(|g| *g > 2.5)
        .unwrap_or_else(|| panic!("the period never grew: {gaps:?}\n{}", a.log_text()));
    // Every second while discovering (1 + 2 + 4 s idle), then every 3.6 s.
    assert!(first_long >= 6, "{gaps:?}");
    assert!(gaps[..first_long].iter().all(|g| *g < 1.6), "{gaps:?}");
    for g in &gaps[first_long..] {
        assert!(
            (3.2..=4.1).contains(g),
            "keep-alive gap {g} s, want 3.6: {gaps:?}"
        );
    }
    // Three refreshes and three probes from the secondary sockets, and no more since.
    let (all, cr) = counts();
    assert_eq!(all - cr, 6, "secondary requests");
    // The discovery requests carried no CONNECTION-REQUEST-BINDING: the server's binding
    // table holds the CR socket only.
    let b = api(&api_addr, "GET", "/bindings");
    assert_eq!(b["bindings"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(
        b["bindings"][0]["addr"],
        format!("127.0.0.1:{uport}"),
        "{b}"
    );
}

#[test]
fn loopback_udp_cr_bad_input_is_dropped() {
    let d = TempDir::new("udpcr-bad");
    let uport = free_udp_port();
    let a = Agent::start(&agent_config(
        d.path(),
        &format!("127.0.0.1:{uport}"),
        "",
        None,
        "",
    ));
    let to: SocketAddr = format!("127.0.0.1:{uport}").parse().unwrap();
    // STUN off: the local address.
    assert_eq!(wait_value(&a, ADDR, &to.to_string(), WAIT), to.to_string());
    assert_eq!(a.get(NAT), "false");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let host = to.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let settle = |want: u64| {
        // Datagrams are handled in order: a probe CR can't overtake them, so a short wait is
        // enough; then check the count did not move.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(cr_count(&a), want, "{}", a.log_text());
    };
    // A valid CR, three copies: one accepted.
    let good = build_udp_cr(&host, now, 1000, USER, "c0ffee", PASS);
    for _ in 0..3 {
        s.send_to(&good, to).unwrap();
    }
    settle(1);
    // Replays of it, later.
    for _ in 0..5 {
        s.send_to(&good, to).unwrap();
    }
    // Wrong signature (wrong password), wrong user, stale ts, missing fields, not GET, body.
    let bad: Vec<Vec<u8>> = vec![
        build_udp_cr(&host, now + 1, 1001, USER, "aa", "wrong"),
        build_udp_cr(&host, now + 1, 1002, "someone", "aa", PASS),
        build_udp_cr(&host, now - 100, 1003, USER, "aa", PASS),
        format!("GET http://{host}?ts={now}&id=5&un={USER}&cn=x HTTP/1.1\r\n\r\n").into_bytes(),
        format!(
            "GET http://{host}?id=5&un=u&cn=x&sig={} HTTP/1.1\r\n\r\n",
            "0".repeat(40)
        )
        .into_bytes(),
        String::from_utf8(build_udp_cr(&host, now + 1, 1004, USER, "aa", PASS))
            .unwrap()
            .replacen("GET", "PUT", 1)
            .into_bytes(),
        String::from_utf8(build_udp_cr(&host, now + 1, 1005, USER, "aa", PASS))
            .unwrap()
            .replace("HTTP/1.1", "HTTP/1.0")
            .into_bytes(),
        {
            // A tampered copy of a valid message: signature no longer matches.
            let t = String::from_utf8(build_udp_cr(&host, now + 1, 1006, USER, "aa", PASS))
                .unwrap()
                .replace("id=1006", "id=1007");
            t.into_bytes()
        },
        vec![b'G'; 5000],
        Vec::new(),
    ];
    for b in &bad {
        s.send_to(b, to).unwrap();
    }
    settle(1);
    // 100,000 random datagrams (some shaped like STUN or like a CR), bounded in time.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let rss = |a: &Agent| -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{}/status", a.child.id())).unwrap();
        st.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let rss_before = rss(&a);
    let t0 = Instant::now();
    let mut buf = [0u8; 600];
    let mut sent = 0u32;
    let mut mid_flood_ms = None;
    for i in 0..100_000u32 {
        if i == 50_000 {
            // A valid CR in the middle of the flood is accepted promptly. Like an ACS, send it
            // three times (5 ms apart): the kernel drops datagrams while the socket buffer is
            // full of flood, which is what the copies are for.
            let good_mid = build_udp_cr(&host, now + 1, 1500, USER, "feed", PASS);
            let t = Instant::now();
            for k in 0..3 {
                if k > 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                s.send_to(&good_mid, to).unwrap();
            }
            while cr_count(&a) < 2 && t.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(cr_count(&a), 2, "valid CR during the flood");
            mid_flood_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
        }
        let len = (rnd() % 600) as usize;
        for b in buf[..len].iter_mut() {
            *b = rnd() as u8;
        }
        match i % 4 {
            0 if len >= 20 => {
                buf[0] = 1;
                buf[1] = 1;
                let l = (len - 20) as u16 & !3;
                buf[2..4].copy_from_slice(&l.to_be_bytes());
            }
            1 if len >= 4 => buf[..4].copy_from_slice(b"GET "),
            _ => {}
        }
        let _ = s.send_to(&buf[..len], to);
        sent += 1;
        if i % 2000 == 0 {
            // Let the agent keep up (the kernel drops what overflows its buffer, which is fine).
            std::thread::sleep(Duration::from_millis(2));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    println!("sent {sent} random datagrams in {:?}", t0.elapsed());
    settle(2);
    let mid = mid_flood_ms.unwrap();
    println!("valid CR during the flood accepted after {mid:.1} ms");
    assert!(mid < 100.0, "accepted after {mid:.1} ms");
    let grown = rss(&a).saturating_sub(rss_before);
    println!("agent RSS grew by {grown} kB over the flood");
    assert!(grown < 1024, "RSS grew by {grown} kB");
    // The agent is alive and a valid CR after the flood still works.
    let good2 = build_udp_cr(&host, now + 2, 2000, USER, "beef", PASS);
    s.send_to(&good2, to).unwrap();
    settle(3);
    assert!(!a.log_text().contains(PASS), "password in the log");
}

// ---------------------------------------------------------------------------------------------
// Network namespaces (root only)
// ---------------------------------------------------------------------------------------------

fn have_tool(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nsx(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// The namespaces of one test run; deleted (with everything still running in them) on drop.
struct Rig {
    names: Vec<String>,
    procs: Vec<Proc>,
}

impl Rig {
    fn ns(&self, role: &str) -> String {
        self.names
            .iter()
            .find(|n| n.ends_with(role))
            .cloned()
            .unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Processes first (by PID), then the namespaces (which removes the veths and rules).
        self.procs.clear();
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// acs (10.77.2.2) — gw (10.77.2.1 / 10.77.1.1) — cpe (10.77.1.2). `nat`: masquerade on gw,
/// forward only established/related back in; otherwise routed.
fn build_rig(tag: &str, nat: bool) -> Result<Rig, String> {
    let pid = std::process::id();
    let mut rig = Rig {
        names: Vec::new(),
        procs: Vec::new(),
    };
    for role in ["acs", "gw", "cpe"] {
        let n = format!("cw{tag}{pid}{role}");
        sh(&["ip", "netns", "add", &n])?;
        rig.names.push(n);
    }
    let (acs, gw, cpe) = (rig.ns("acs"), rig.ns("gw"), rig.ns("cpe"));
    let short = format!("{}", pid % 100000);
    let (l1, l2, w1, w2) = (
        format!("l{short}{tag}a"),
        format!("l{short}{tag}b"),
        format!("w{short}{tag}a"),
        format!("w{short}{tag}b"),
    );
    sh(&[
        "ip", "link", "add", &l1, "netns", &cpe, "type", "veth", "peer", "name", &l2, "netns", &gw,
    ])?;
    sh(&[
        "ip", "link", "add", &w1, "netns", &gw, "type", "veth", "peer", "name", &w2, "netns", &acs,
    ])?;
    for (ns, dev, addr) in [
        (&cpe, &l1, "10.77.1.2/24"),
        (&gw, &l2, "10.77.1.1/24"),
        (&gw, &w1, "10.77.2.1/24"),
        (&acs, &w2, "10.77.2.2/24"),
    ] {
        nsx(ns, &["ip", "addr", "add", addr, "dev", dev])?;
        nsx(ns, &["ip", "link", "set", dev, "up"])?;
        nsx(ns, &["ip", "link", "set", "lo", "up"])?;
    }
    nsx(&cpe, &["ip", "route", "add", "default", "via", "10.77.1.1"])?;
    nsx(&gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    if nat {
        let rules = format!(
            "table ip cwtest {{\n chain forward {{ type filter hook forward priority 0; policy drop;\n  ct state established,related accept\n  iifname \"{l2}\" oifname \"{w1}\" accept\n }}\n chain postrouting {{ type nat hook postrouting priority 100;\n  oifname \"{w1}\" ip saddr 10.77.1.0/24 masquerade random\n }}\n}}\n"
        );
        let f = std::env::temp_dir().join(format!("cwtest-{tag}-{pid}.nft"));
        std::fs::write(&f, rules).map_err(|e| e.to_string())?;
        let r = nsx(&gw, &["nft", "-f", f.to_str().unwrap()]);
        let _ = std::fs::remove_file(&f);
        r?;
    } else {
        nsx(
            &acs,
            &["ip", "route", "add", "10.77.1.0/24", "via", "10.77.2.1"],
        )?;
    }
    Ok(rig)
}

fn netns_prereqs() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        // In CI the rig must run: a skipped root test there is a failure.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but not root: the network-namespace tests cannot run"
        );
        return Some("not root".into());
    }
    for (t, a) in [
        ("ip", "-V"),
        ("nft", "--version"),
        ("conntrack", "--version"),
    ] {
        if !have_tool(t, a) {
            return Some(format!("{t} is missing"));
        }
    }
    None
}

fn in_ns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

/// An agent started inside a namespace (control socket on the shared filesystem).
fn agent_in_ns(ns: &str, config: &Path) -> Proc {
    let dir = config.parent().unwrap();
    let mut c = in_ns(ns, env!("CARGO_BIN_EXE_cwmpd"));
    c.args(["run", "-c"]).arg(config);
    let p = Proc::spawn(c, dir.join("agent.log"));
    let sock = dir.join("ctl.sock");
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t0.elapsed() < WAIT, "agent did not start: {}", p.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    p
}

fn ctl_get(sock: &Path, name: &str) -> String {
    let v = ctl(sock, &json!({"op": "get", "names": [name]})).unwrap();
    v["values"][0]["value"].as_str().unwrap_or("").to_string()
}

fn ctl_wait(sock: &Path, name: &str, pred: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let v = ctl_get(sock, name);
        if pred(&v) || t0.elapsed() > WAIT {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn turnserver(rig: &Rig, dir: &Path) -> Proc {
    let conf = dir.join("turnserver.conf");
    std::fs::write(&conf, "").unwrap();
    let mut c = in_ns(&rig.ns("acs"), "turnserver");
    c.args(["-c"])
        .arg(&conf)
        .args([
            "--no-cli",
            "--listening-ip",
            "10.77.2.2",
            "--listening-port",
            "3478",
            "--realm",
            "cwmpd.test",
            "--no-tls",
            "--no-dtls",
            "--stun-only",
            "--log-file",
            "stdout",
            "--simple-log",
            "--pidfile",
        ])
        .arg(dir.join("turnserver.pid"));
    let p = Proc::spawn(c, dir.join("turnserver.log"));
    let t0 = Instant::now();
    // Ready when something answers on 10.77.2.2:3478 (checked from the acs namespace).
    while t0.elapsed() < Duration::from_secs(10) {
        if nsx(
            &rig.ns("acs"),
            &["sh", "-c", "cat /proc/net/udp | grep -qi ':0D96 '"],
        )
        .is_ok()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

#[test]
fn netns_coturn_nat_detection_and_routed() {
    if let Some(why) = netns_prereqs() {
        common::skip("(network namespaces)", &why);
        return;
    }
    if !have_tool("turnserver", "--help") && !Path::new("/usr/bin/turnserver").exists() {
        common::skip("(coturn)", "turnserver is missing");
        return;
    }
    for nat in [true, false] {
        let mut rig = build_rig(if nat { "n" } else { "r" }, nat).expect("rig");
        let d = TempDir::new(if nat {
            "ns-coturn-nat"
        } else {
            "ns-coturn-routed"
        });
        let t = turnserver(&rig, d.path());
        rig.procs.push(t);
        let acs = spawn_in_thread(AcsOptions::default());
        // With a maximum above the minimum the agent tries binding-lifetime discovery, which
        // coturn cannot support (it ignores RESPONSE-ADDRESS).
        let cfg = agent_config(
            d.path(),
            "10.77.1.2:7547",
            "",
            Some("10.77.2.2:3478"),
            "\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = \"30\"\n",
        );
        let ag = agent_in_ns(&rig.ns("cpe"), &cfg);
        // The agent's UDP sockets (the only ones in its namespace), sampled from its start: the
        // discovery's two secondary sockets appear, and go again about a second later, when
        // the first probe's answer comes back to the prober (coturn ignores RESPONSE-ADDRESS)
        // instead of after the probe's retransmissions (5.5 s) or at the first refresh.
        let udp_sockets = || -> usize {
            nsx(&rig.ns("cpe"), &["cat", "/proc/net/udp"])
                .map(|t| t.lines().skip(1).count())
                .unwrap_or(0)
        };
        let t0 = Instant::now();
        let mut opened = None;
        let mut closed = None;
        while closed.is_none() && t0.elapsed() < WAIT {
            let n = udp_sockets();
            match (opened, n) {
                (None, 3) => opened = Some(Instant::now()),
                (Some(_), 1) => closed = Some(Instant::now()),
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (Some(opened), Some(closed)) = (opened, closed) else {
            panic!(
                "secondary sockets opened {opened:?}, closed {closed:?}: {}",
                ag.text()
            )
        };
        let open_for = closed - opened;
        assert!(
            (Duration::from_millis(700)..Duration::from_millis(4000)).contains(&open_for),
            "secondary sockets open for {open_for:?}: {}",
            ag.text()
        );
        // Given up for good: no new secondary socket.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(udp_sockets(), 1, "{}", ag.text());
        let sock = d.path().join("ctl.sock");
        let addr = ctl_wait(&sock, ADDR, |v| v.starts_with("10.77."));
        let natd = ctl_get(&sock, NAT);
        if nat {
            assert!(
                addr.starts_with("10.77.2.1:"),
                "{addr} {}\n{}",
                ag.text(),
                rig.procs[0].text()
            );
            assert_eq!(natd, "true");
        } else {
            assert_eq!(addr, "10.77.1.2:7547", "{}", ag.text());
            assert_eq!(natd, "false");
        }
        println!(
            "coturn nat={nat}: UDPConnectionRequestAddress={addr} NATDetected={natd}; \
             discovery sockets open for {open_for:?}"
        );
        rig.procs.push(ag);
        drop(acs);
    }
}

/// Whether a socket of `proto` ("udp", "tcp") is bound to local `port` in namespace `ns`.
fn listening_in_ns(ns: &str, proto: &str, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    nsx(ns, &["cat", &format!("/proc/net/{proto}")]).is_ok_and(|t| {
        t.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|local| local.ends_with(&suffix))
    })
}

/// [`api`] of a STUN server whose API listens inside namespace `ns`.
fn api_in_ns(ns: &str, addr: &str, method: &str, target: &str) -> Value {
    let (ns, addr, method, target) = (
        ns.to_string(),
        addr.to_string(),
        method.to_string(),
        target.to_string(),
    );
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        api(&addr, &method, &target)
    })
    .join()
    .unwrap()
}

/// Starts the test ACS inside namespace `ns` (its threads inherit the namespace).
fn acs_in_ns(ns: &str, addr: &str) -> cwmp_testacs::TestAcsHandle {
    let ns = ns.to_string();
    let addr: SocketAddr = addr.parse().unwrap();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        cwmp_testacs::try_spawn_in_thread(addr, AcsOptions::default()).expect("test ACS")
    })
    .join()
    .unwrap()
}

fn ctl_count(sock: &Path) -> u64 {
    ctl(sock, &json!({"op": "status"})).unwrap()["connection_requests"]
        .as_u64()
        .unwrap()
}

#[test]
fn netns_nat_end_to_end_udp_cr_and_rebinding() {
    if let Some(why) = netns_prereqs() {
        common::skip("(network namespaces)", &why);
        return;
    }
    let mut rig = build_rig("e", true).expect("rig");
    let (acs_ns, gw_ns, cpe_ns) = (rig.ns("acs"), rig.ns("gw"), rig.ns("cpe"));
    let d = TempDir::new("ns-e2e");
    let mut c = in_ns(&acs_ns, &connreq_path());
    c.args([
        "stun-server",
        "--listen",
        "10.77.2.2:3481",
        "--api",
        "127.0.0.1:3499",
        "--max-seconds",
        "300",
    ]);
    let srv = Proc::spawn(c, d.path().join("stun-server.log"));
    assert!(
        wait_until(WAIT, || listening_in_ns(&acs_ns, "tcp", 3499)),
        "{}",
        srv.text()
    );
    rig.procs.push(srv);
    let acs = acs_in_ns(&acs_ns, "10.77.2.2:0");
    let cfg = agent_config(
        d.path(),
        "10.77.1.2:7547",
        &acs.url(),
        Some("10.77.2.2:3481"),
        "",
    );
    let ag = agent_in_ns(&cpe_ns, &cfg);
    rig.procs.push(ag);
    let sock = d.path().join("ctl.sock");
    // The ACS wants value changes of the UDP CR address (active notification).
    let v = ctl(
        &sock,
        &json!({"op": "setattr", "name": ADDR, "notification": 2}),
    )
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let addr = ctl_wait(&sock, ADDR, |v| v.starts_with("10.77.2.1:"));
    assert!(
        addr.starts_with("10.77.2.1:"),
        "{addr}: {}",
        rig.procs[1].text()
    );
    assert_eq!(ctl_get(&sock, NAT), "true");
    println!("behind NAT: UDPConnectionRequestAddress={addr} NATDetected=true");
    assert!(
        wait_until(WAIT, || acs.sessions().iter().any(|s| s.ended)),
        "no boot session: {}",
        rig.procs[1].text()
    );
    let n0 = acs.sessions().len();
    let api_cr = |to: &str| {
        nsx(
            &acs_ns,
            &[
                &connreq_path(),
                "udp",
                to,
                "--user",
                USER,
                "--password",
                PASS,
                "--via",
                "127.0.0.1:3499",
            ],
        )
    };
    // 1. A UDP CR from the STUN socket crosses the NAT: 6 CONNECTION REQUEST at the ACS.
    let out = api_cr("last").expect("api cr");
    println!("via STUN socket: {}", out.trim());
    let s = acs.wait_sessions(n0 + 1, WAIT);
    assert!(
        s.iter()
            .skip(n0)
            .any(|s| events(s).contains(&"6 CONNECTION REQUEST".to_string())),
        "{:?} {}",
        s.iter().map(events).collect::<Vec<_>>(),
        rig.procs[1].text()
    );
    assert!(wait_until(WAIT, || ctl_count(&sock) == 1));
    // 2. The same CR from another source port does not pass the port-restricted NAT.
    let out = nsx(
        &acs_ns,
        &[
            &connreq_path(),
            "udp",
            &addr,
            "--user",
            USER,
            "--password",
            PASS,
            "--from",
            "10.77.2.2:0",
        ],
    )
    .expect("direct cr");
    println!("from another port: {}", out.trim());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        ctl_count(&sock),
        1,
        "a CR from another port went through the NAT"
    );
    // 3. NAT rebinding: flush conntrack on gw; the next keep-alive gets a new (random) port,
    // the agent sends BINDING-CHANGE and notifies the new address (4 VALUE CHANGE).
    let n1 = acs.sessions().len();
    nsx(&gw_ns, &["conntrack", "-F"]).expect("conntrack -F");
    let new_addr = ctl_wait(&sock, ADDR, |v| v != addr && v.starts_with("10.77.2.1:"));
    assert_ne!(new_addr, addr, "no rebinding seen: {}", rig.procs[1].text());
    println!("after conntrack -F: UDPConnectionRequestAddress={new_addr}");
    // The STUN server got a request with BINDING-CHANGE from the new binding.
    let bindings = || api_in_ns(&acs_ns, "127.0.0.1:3499", "GET", "/bindings");
    assert!(
        wait_until(WAIT, || bindings()["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |b| b["addr"] == new_addr.as_str() && b["binding_changes"].as_u64() >= Some(1)
            )),
        "no BINDING-CHANGE at the STUN server: {}",
        bindings()
    );
    let s = acs.wait_sessions(n1 + 1, WAIT);
    let vc = s
        .iter()
        .skip(n1)
        .find(|s| events(s).contains(&"4 VALUE CHANGE".to_string()));
    let vc = vc.unwrap_or_else(|| {
        panic!(
            "no 4 VALUE CHANGE: {:?} {}",
            s.iter().map(events).collect::<Vec<_>>(),
            rig.procs[1].text()
        )
    });
    assert_eq!(inform_param(vc, ADDR).as_deref(), Some(new_addr.as_str()));
    // 4. A UDP CR to the new binding still works.
    let out = api_cr("last").expect("api cr");
    println!("after rebinding: {}", out.trim());
    assert!(
        wait_until(WAIT, || ctl_count(&sock) == 2),
        "{}",
        rig.procs[1].text()
    );
    let st = ctl(&sock, &json!({"op": "status"})).unwrap();
    assert_eq!(st["last_cr_mechanism"], "udp", "{st}");
    println!("agent: last UDP CR latency {} us", st["last_cr_latency_us"]);
    acs.stop();
}

#[test]
fn netns_binding_lifetime_discovery_behind_nat() {
    // Behind a NAT whose UDP bindings live 3 s: the secondary binding survives 1 and 2 idle
    // seconds, not 4 (the probe is sent three times), then 3 s is tried; the keep-alive period
    // becomes 90 % of the longest interval survived: 2.7 s (3 s survived) or 1.8 s (3 s
    // did not, at the edge). All seen from the STUN server.
    if let Some(why) = netns_prereqs() {
        common::skip("(network namespaces)", &why);
        return;
    }
    let rig = build_rig("d", true).expect("rig");
    let (acs_ns, gw_ns, cpe_ns) = (rig.ns("acs"), rig.ns("gw"), rig.ns("cpe"));
    // A NAT binding lifetime of 3 s (conntrack UDP timeouts of the gw namespace).
    for k in [
        "nf_conntrack_udp_timeout",
        "nf_conntrack_udp_timeout_stream",
    ] {
        nsx(&gw_ns, &["sysctl", "-qw", &format!("net.netfilter.{k}=3")]).expect("sysctl");
    }
    let d = TempDir::new("ns-disc");
    let srv = TestStun::start("10.77.2.2:3481", Some(&acs_ns));
    let cfg = agent_config(
        d.path(),
        "10.77.1.2:7547",
        "",
        Some("10.77.2.2:3481"),
        "\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = \"20\"\n",
    );
    let ag = agent_in_ns(&cpe_ns, &cfg);
    let t0 = Instant::now();
    // Settled: two keep-alive gaps of the CR socket longer than the minimum period (1 s).
    let crb_gaps = |reqs: &[SeenRequest]| -> Vec<(Instant, Duration)> {
        let crb: Vec<&SeenRequest> = reqs.iter().filter(|r| r.crb).collect();
        crb.windows(2)
            .map(|w| (w[1].at, w[1].at.duration_since(w[0].at)))
            .collect()
    };
    let long = Duration::from_millis(1500);
    let settled = wait_until(Duration::from_secs(60), || {
        crb_gaps(&srv.requests())
            .iter()
            .filter(|(_, g)| *g > long)
            .count()
            >= 2
    });
    let reqs = srv.requests();
    assert!(settled, "not settled: {reqs:?}\n{}", ag.text());
    println!("settled after {:?}", t0.elapsed());
    // The probes, one per transaction id: the idle time tested and how often it was sent.
    let mut probes: Vec<(TxId, f64, usize)> = Vec::new();
    for (r, idle) in reqs
        .iter()
        .filter(|r| r.response_to.is_some())
        .zip(probe_idle_times(&reqs))
    {
        match probes.iter_mut().find(|p| p.0 == r.txid) {
            Some(p) => p.2 += 1,
            None => probes.push((r.txid, idle.as_secs_f64(), 1)),
        }
    }
    let tested: Vec<(f64, usize)> = probes.iter().map(|p| (p.1, p.2)).collect();
    println!("probes (idle s, sends): {tested:?}");
    assert_eq!(tested.len(), 4, "{tested:?}");
    for ((idle, _), want) in tested.iter().zip([1.0, 2.0, 4.0, 3.0]) {
        assert!((idle - want).abs() < 0.5, "{tested:?}");
    }
    // Answered at once after 1 and 2 s; after 4 s the answer was lost in the NAT, so the probe
    // was sent three times.
    assert_eq!(tested[0].1, 1, "{tested:?}");
    assert_eq!(tested[1].1, 1, "{tested:?}");
    assert_eq!(tested[2].1, 3, "{tested:?}");
    let period = if tested[3].1 == 1 { 2.7 } else { 1.8 };
    let gaps = crb_gaps(&reqs);
    let first_long = gaps.iter().position(|(_, g)| *g > long).unwrap();
    for (_, g) in &gaps[first_long..] {
        let g = g.as_secs_f64();
        assert!(
            (g - period).abs() < 0.4,
            "keep-alive gap {g} s, want {period}: {gaps:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A STUN server run by the test itself, for observing what the agent sends
// ---------------------------------------------------------------------------------------------

/// One Binding Request as the test's STUN server saw it.
#[derive(Clone, Debug)]
struct SeenRequest {
    at: Instant,
    txid: TxId,
    from: SocketAddr,
    /// CONNECTION-REQUEST-BINDING present: the request came from the UDP CR socket.
    crb: bool,
    /// RESPONSE-ADDRESS, if any.
    response_to: Option<SocketAddr>,
}

/// A UDP CR the server sends, once, from its own socket to the last CONNECTION-REQUEST-BINDING
/// source, as soon as a request carrying RESPONSE-ADDRESS names an address that has sent
/// nothing for `idle` (i.e. while a binding-lifetime probe after `idle` seconds is going on).
struct CrOnIdleProbe {
    idle: Duration,
    user: String,
    password: String,
    /// When and where it was sent.
    sent: Option<(Instant, SocketAddr)>,
}

#[derive(Default)]
struct StunSeen {
    requests: Vec<SeenRequest>,
    trigger: Option<CrOnIdleProbe>,
}

/// A minimal STUN server on a thread (optionally inside a network namespace): answers every
/// Binding Request (at RESPONSE-ADDRESS when it names the requester's own IP, as the project's
/// server does) and records them all.
struct TestStun {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<StunSeen>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestStun {
    fn start(bind: &str, netns: Option<&str>) -> TestStun {
        use std::sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering};
        let seen = Arc::new(Mutex::new(StunSeen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (bind, netns) = (bind.to_string(), netns.map(str::to_string));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            let sock = UdpSocket::bind(&bind).expect("bind the test STUN server");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ready_tx.send(sock.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = cwmpd::connreq::stun::parse_binding_request(&buf[..n]) else {
                    continue;
                };
                let at = Instant::now();
                let mut guard = seen2.lock().unwrap();
                let s = &mut *guard;
                // Fire the armed CR before answering (the probe's answer must not refresh
                // anything first).
                if let (Some(r), Some(tr)) = (req.response_address, s.trigger.as_mut())
                    && tr.sent.is_none()
                {
                    let last_from_target =
                        s.requests.iter().rev().find(|q| q.from == r).map(|q| q.at);
                    let primary = s.requests.iter().rev().find(|q| q.crb).map(|q| q.from);
                    if let (Some(last), Some(primary)) = (last_from_target, primary)
                        && at.duration_since(last) >= tr.idle
                    {
                        let ts = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs();
                        let host = primary.to_string();
                        let d =
                            build_udp_cr(&host, ts, 777_001, &tr.user, "idleprobe", &tr.password);
                        for _ in 0..3 {
                            let _ = sock.send_to(&d, primary);
                        }
                        tr.sent = Some((at, primary));
                    }
                }
                s.requests.push(SeenRequest {
                    at,
                    txid: req.txid,
                    from,
                    crb: req.connection_request_binding,
                    response_to: req.response_address,
                });
                drop(guard);
                let to = match req.response_address {
                    Some(r) if r.ip() == from.ip() => r,
                    _ => from,
                };
                if let Ok(reply) = cwmpd::connreq::stun::binding_success(&req.txid, from, None) {
                    let _ = sock.send_to(&reply, to);
                }
            }
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("test STUN server did not start");
        TestStun {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn arm_cr_on_idle_probe(&self, idle: Duration) {
        self.seen.lock().unwrap().trigger = Some(CrOnIdleProbe {
            idle,
            user: USER.into(),
            password: PASS.into(),
            sent: None,
        });
    }

    fn cr_sent(&self) -> Option<(Instant, SocketAddr)> {
        self.seen.lock().unwrap().trigger.as_ref()?.sent
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().requests.clone()
    }
}

impl Drop for TestStun {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Checks what the server saw up to `until`: every request from the CR socket (CONNECTION-
/// REQUEST-BINDING) came from one address, `primary`, with gaps of at most `max_gap`; no probe
/// asked for its answer at `primary` (the binding put to the test is a secondary one); and at
/// least `min_probes` probes were sent. Returns a description for failure messages.
fn check_primary_kept_alive(
    reqs: &[SeenRequest],
    until: Instant,
    primary: SocketAddr,
    max_gap: Duration,
    min_probes: usize,
) -> Result<String, String> {
    let t0 = reqs.first().map(|r| r.at).unwrap_or(until);
    let desc: Vec<String> = reqs
        .iter()
        .filter(|r| r.at <= until)
        .map(|r| {
            format!(
                "{:.2}s {} crb={} response_to={:?}",
                r.at.duration_since(t0).as_secs_f64(),
                r.from,
                r.crb,
                r.response_to
            )
        })
        .collect();
    let desc = desc.join("\n");
    let crb: Vec<&SeenRequest> = reqs.iter().filter(|r| r.crb && r.at <= until).collect();
    if let Some(r) = crb.iter().find(|r| r.from != primary) {
        return Err(format!(
            "the CR binding moved ({} instead of {primary}):\n{desc}",
            r.from
        ));
    }
    let gaps: Vec<Duration> = crb
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .chain(crb.last().map(|r| until.duration_since(r.at)))
        .collect();
    if let Some(g) = gaps.iter().max().filter(|g| **g > max_gap) {
        return Err(format!(
            "the CR socket was silent for {g:?} (keep-alive period exceeded):\n{desc}"
        ));
    }
    let probes: Vec<&SeenRequest> = reqs
        .iter()
        .filter(|r| r.response_to.is_some() && r.at <= until)
        .collect();
    if probes.iter().any(|r| r.response_to == Some(primary)) {
        return Err(format!(
            "a probe asked for its answer on the CR binding:\n{desc}"
        ));
    }
    if probes.len() < min_probes {
        return Err(format!("only {} probes:\n{desc}", probes.len()));
    }
    Ok(desc)
}

#[test]
fn loopback_discovery_keeps_the_cr_binding_alive() {
    // STUNMaximumKeepAlivePeriod = -1 (the factory value): discovery tests 1, 2, 4 … s. While it
    // runs, the CR socket keeps its keep-alives every STUNMinimumKeepAlivePeriod (1 s) and a UDP
    // CR sent to it in the middle of a 4 s probe is accepted.
    let d = TempDir::new("stun-disc-ka");
    let acs = spawn_in_thread(AcsOptions::default());
    let srv = TestStun::start("127.0.0.1:0", None);
    srv.arm_cr_on_idle_probe(Duration::from_millis(3500));
    let uport = free_udp_port();
    let primary: SocketAddr = format!("127.0.0.1:{uport}").parse().unwrap();
    let a = Agent::start(&agent_config(
        d.path(),
        &primary.to_string(),
        &acs.url(),
        Some(&srv.addr.to_string()),
        "\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = \"-1\"\n",
    ));
    assert!(
        acs.wait_sessions(1, WAIT)
            .first()
            .is_some_and(|s| s.succeeded()),
        "no boot session: {}",
        a.log_text()
    );
    let sent = {
        let t0 = Instant::now();
        while srv.cr_sent().is_none() && t0.elapsed() < Duration::from_secs(40) {
            std::thread::sleep(Duration::from_millis(20));
        }
        srv.cr_sent()
    };
    let (at, to) = sent.unwrap_or_else(|| {
        panic!(
            "no probe after 3.5 s idle: {:?}\n{}",
            srv.requests(),
            a.log_text()
        )
    });
    assert_eq!(to, primary);
    // The CR sent during the probe: accepted, a session with 6 CONNECTION REQUEST.
    assert!(
        wait_until(WAIT, || cr_count(&a) == 1),
        "UDP CR during discovery not accepted: {}",
        a.log_text()
    );
    wait_session_with(&acs, 1, "6 CONNECTION REQUEST");
    let seen =
        check_primary_kept_alive(&srv.requests(), at, primary, Duration::from_millis(2500), 2)
            .unwrap_or_else(|e| panic!("{e}"));
    println!("{seen}");
}

#[test]
fn netns_discovery_keeps_the_cr_binding_alive_behind_nat() {
    // Behind a NAT whose UDP bindings live 3 s, with STUNMaximumKeepAlivePeriod = -1: the probe
    // after 4 idle seconds finds its binding gone, but the CR binding is never left idle, so it
    // neither expires nor moves, and a UDP CR sent to it during that probe gets through.
    if let Some(why) = netns_prereqs() {
        common::skip("(network namespaces)", &why);
        return;
    }
    let mut rig = build_rig("k", true).expect("rig");
    let (acs_ns, gw_ns, cpe_ns) = (rig.ns("acs"), rig.ns("gw"), rig.ns("cpe"));
    for k in [
        "nf_conntrack_udp_timeout",
        "nf_conntrack_udp_timeout_stream",
    ] {
        nsx(&gw_ns, &["sysctl", "-qw", &format!("net.netfilter.{k}=3")]).expect("sysctl");
    }
    let d = TempDir::new("ns-disc-ka");
    let srv = TestStun::start("10.77.2.2:3482", Some(&acs_ns));
    srv.arm_cr_on_idle_probe(Duration::from_millis(3500));
    let acs = acs_in_ns(&acs_ns, "10.77.2.2:0");
    let cfg = agent_config(
        d.path(),
        "10.77.1.2:7547",
        &acs.url(),
        Some("10.77.2.2:3482"),
        "\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = \"-1\"\n",
    );
    let ag = agent_in_ns(&cpe_ns, &cfg);
    rig.procs.push(ag);
    let sock = d.path().join("ctl.sock");
    assert!(
        wait_until(WAIT, || acs.sessions().iter().any(|s| s.ended)),
        "no boot session: {}",
        rig.procs[0].text()
    );
    assert!(
        wait_until(Duration::from_secs(40), || srv.cr_sent().is_some()),
        "no probe after 3.5 s idle: {:?}\n{}",
        srv.requests(),
        rig.procs[0].text()
    );
    let (at, to) = srv.cr_sent().unwrap();
    let primary = srv
        .requests()
        .iter()
        .find(|r| r.crb)
        .map(|r| r.from)
        .unwrap();
    assert!(to.to_string().starts_with("10.77.2.1:"), "{to}");
    assert!(
        wait_until(WAIT, || ctl_count(&sock) == 1),
        "UDP CR to {to} during discovery not accepted: {:?}\n{}",
        srv.requests(),
        rig.procs[0].text()
    );
    assert!(
        wait_until(WAIT, || acs.sessions().iter().any(
            |s| s.ended && events(s).contains(&"6 CONNECTION REQUEST".to_string())
        )),
        "{:?}",
        acs.sessions().iter().map(events).collect::<Vec<_>>()
    );
    let seen =
        check_primary_kept_alive(&srv.requests(), at, primary, Duration::from_millis(2500), 2)
            .unwrap_or_else(|e| panic!("{e}"));
    println!("{seen}");
    acs.stop();
}

// ---------------------------------------------------------------------------------------------
// UDP CR replay protection across restarts, and the clock window
// ---------------------------------------------------------------------------------------------

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until a session after the first `from` has ended with `event` in its Inform.
fn wait_session_with(acs: &cwmp_testacs::TestAcsHandle, from: usize, event: &str) {
    let found = wait_until(WAIT, || {
        acs.sessions()
            .iter()
            .skip(from)
            .any(|s| s.ended && events(s).iter().any(|e| e == event))
    });
    assert!(
        found,
        "no session with {event} after session {from}: {:?}",
        acs.sessions().iter().map(events).collect::<Vec<_>>()
    );
}

/// Sends `datagrams` (three copies each, in order) from one socket, then waits until a session
/// with 6 CONNECTION REQUEST has ended. The last datagram is a valid one, and the agent handles
/// datagrams in order, back to back: by the time such a session has ended it has handled them
/// all, so the connection-request counter tells how many were accepted.
fn deliver_and_wait_session(
    acs: &cwmp_testacs::TestAcsHandle,
    to: SocketAddr,
    datagrams: &[&[u8]],
) {
    let n0 = acs.sessions().len();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in datagrams {
        for _ in 0..3 {
            s.send_to(d, to).unwrap();
        }
    }
    wait_session_with(acs, n0, "6 CONNECTION REQUEST");
}

fn udp_cr_agent(d: &Path, acs: &cwmp_testacs::TestAcsHandle, uport: u16) -> (PathBuf, Agent) {
    let cfg = agent_config(d, &format!("127.0.0.1:{uport}"), &acs.url(), None, "");
    let a = Agent::start(&cfg);
    (cfg, a)
}

#[test]
fn loopback_udp_cr_replay_refused_after_restart() {
    let d = TempDir::new("udpcr-replay");
    let acs = spawn_in_thread(AcsOptions::default());
    let uport = free_udp_port();
    let to: SocketAddr = format!("127.0.0.1:{uport}").parse().unwrap();
    let host = to.to_string();
    let (cfg, a) = udp_cr_agent(d.path(), &acs, uport);
    wait_session_with(&acs, 0, "1 BOOT");
    // A valid datagram, captured: accepted once.
    let captured = build_udp_cr(&host, unix_now(), 90_001, USER, "cafe01", PASS);
    deliver_and_wait_session(&acs, to, &[&captured]);
    assert_eq!(cr_count(&a), 1);
    a.stop();

    // Restarted on the same state: the captured datagram is refused, a fresh one accepted.
    let n0 = acs.sessions().len();
    let a = Agent::start(&cfg);
    wait_session_with(&acs, n0, "1 BOOT");
    let fresh = build_udp_cr(&host, unix_now(), 90_002, USER, "cafe02", PASS);
    deliver_and_wait_session(&acs, to, &[&captured, &fresh]);
    assert_eq!(cr_count(&a), 1, "the replayed datagram was accepted again");

    // And after a power cut (kill -9), once the replay state has been written (it is, within
    // REPLAY_SAVE_DELAY of the acceptance).
    std::thread::sleep(Duration::from_millis(1000));
    a.kill9();
    let n0 = acs.sessions().len();
    let a = Agent::start(&cfg);
    wait_session_with(&acs, n0, "1 BOOT");
    let fresh2 = build_udp_cr(&host, unix_now(), 90_003, USER, "cafe03", PASS);
    deliver_and_wait_session(&acs, to, &[&captured, &fresh, &fresh2]);
    assert_eq!(cr_count(&a), 1, "a replayed datagram was accepted again");

    // The state directory holds only private files (0600).
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(d.path().join("state")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", e.path().display());
        }
    }
}

#[test]
fn loopback_udp_cr_outside_the_clock_window_refused() {
    // The clock of this machine is synchronised (after 2020): a signed CR whose ts is an hour
    // away from it is refused, in the past (a late replay on a fresh state) or in the future
    // (which would otherwise block every CR until then).
    let d = TempDir::new("udpcr-window");
    let acs = spawn_in_thread(AcsOptions::default());
    let uport = free_udp_port();
    let to: SocketAddr = format!("127.0.0.1:{uport}").parse().unwrap();
    let host = to.to_string();
    let (_cfg, a) = udp_cr_agent(d.path(), &acs, uport);
    wait_session_with(&acs, 0, "1 BOOT");
    let now = unix_now();
    let past = build_udp_cr(&host, now - 3600, 1, USER, "old", PASS);
    let good = build_udp_cr(&host, now, 2, USER, "good", PASS);
    deliver_and_wait_session(&acs, to, &[&past, &good]);
    assert_eq!(cr_count(&a), 1, "a CR an hour old was accepted");
    let future = build_udp_cr(&host, now + 3600, 3, USER, "future", PASS);
    let good2 = build_udp_cr(&host, unix_now(), 4, USER, "good2", PASS);
    deliver_and_wait_session(&acs, to, &[&future, &good2]);
    assert_eq!(
        cr_count(&a),
        2,
        "a CR an hour ahead was accepted (and a CR of now refused)"
    );
}

/// For each probe (a request with RESPONSE-ADDRESS) seen: how long the address it names had
/// been silent.
fn probe_idle_times(reqs: &[SeenRequest]) -> Vec<Duration> {
    reqs.iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let r = p.response_to?;
            let last = reqs[..i].iter().rev().find(|q| q.from == r)?;
            Some(p.at.duration_since(last.at))
        })
        .collect()
}

#[test]
fn loopback_discovery_idles_a_secondary_binding_and_settles() {
    // No NAT on loopback: the binding never expires, so with a maximum of 4 s the search tests
    // 1, 2 and 4 idle seconds on a secondary binding and the keep-alive period becomes 90 % of
    // 4 s. Until then the CR socket sends a keep-alive every minimum period (1 s).
    let d = TempDir::new("stun-disc-2");
    let srv = TestStun::start("127.0.0.1:0", None);
    let uport = free_udp_port();
    let primary: SocketAddr = format!("127.0.0.1:{uport}").parse().unwrap();
    let a = Agent::start(&agent_config(
        d.path(),
        &primary.to_string(),
        "",
        Some(&srv.addr.to_string()),
        "\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = \"4\"\n",
    ));
    let crb_gaps = |reqs: &[SeenRequest]| -> Vec<(Instant, Duration)> {
        let crb: Vec<&SeenRequest> = reqs.iter().filter(|r| r.crb).collect();
        crb.windows(2)
            .map(|w| (w[1].at, w[1].at.duration_since(w[0].at)))
            .collect()
    };
    let long = Duration::from_millis(2500);
    assert!(
        wait_until(Duration::from_secs(40), || {
            crb_gaps(&srv.requests())
                .iter()
                .filter(|(_, g)| *g > long)
                .count()
                >= 2
        }),
        "the keep-alive period did not grow: {:?}\n{}",
        srv.requests(),
        a.log_text()
    );
    let reqs = srv.requests();
    let gaps = crb_gaps(&reqs);
    let first_long = gaps.iter().position(|(_, g)| *g > long).unwrap();
    let settled_at = gaps[first_long].0 - gaps[first_long].1;
    // While discovering: keep-alives every second from the CR socket, which no probe names.
    let every_second = Duration::from_millis(1800);
    let seen = check_primary_kept_alive(&reqs, settled_at, primary, every_second, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{seen}");
    // The secondary binding was probed after 1, 2 and 4 idle seconds, and then no more.
    let idle: Vec<f64> = probe_idle_times(&reqs)
        .iter()
        .map(|d| d.as_secs_f64())
        .collect();
    assert_eq!(idle.len(), 3, "{idle:?}");
    for (got, want) in idle.iter().zip([1.0, 2.0, 4.0]) {
        assert!(
            (got - want).abs() < 0.5,
            "probe after {got} s idle, want {want}: {idle:?}"
        );
    }
    // Then keep-alives every 3.6 s.
    for (_, g) in &gaps[first_long..first_long + 2] {
        let g = g.as_secs_f64();
        assert!(
            (3.2..=4.3).contains(&g),
            "keep-alive gap {g} s, want 3.6: {gaps:?}"
        );
    }
}
