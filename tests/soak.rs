//! Soak (issue #9, part 4): a compressed day of periodic informs (every second), HTTP, UDP and
//! XMPP connection requests, STUN keep-alives with the STUN server switched (a new mapped
//! binding) and the XMPP server restarted (reconnects), against the real agent. After warm-up
//! the agent's RSS must stay flat (under 0.5 MB drift) and its descriptor count must not grow.
//!
//! Length: `CWMPD_SOAK_SECS` (default 45 s, what CI runs; e.g. `CWMPD_SOAK_SECS=3600` for an
//! hour). The XMPP part is skipped (with a message) when Prosody is not installed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::prosody::{DOMAIN, Prosody};
use common::rawacs::{RawAcs, RawReq, RawResp, inform_response};
use common::*;
use cwmpd::connreq::digest::DigestClient;
use cwmpd::connreq::udpcr::build_udp_cr;
use serde_json::json;

const USER: &str = "cr-user";
const PASS: &str = "cr-pass";

fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

struct StunSrv(Child);

impl Drop for StunSrv {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stun_server(port: u16) -> StunSrv {
    let api = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = Command::new(connreq_bin())
        .args([
            "stun-server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api",
            &api.to_string(),
            "--max-seconds",
            "86400",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    StunSrv(c)
}

fn http_cr(hostport: &str, path: &str, nc: u32) -> u16 {
    let get = |auth: Option<&str>| -> String {
        let Ok(mut s) = TcpStream::connect(hostport) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let a = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n{a}\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let first = get(None);
    let Some(ch) = first.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("www-authenticate")
            .then(|| v.trim().to_string())
    }) else {
        return 0;
    };
    let auth =
        DigestClient::respond(&ch, "GET", path, USER, PASS, &format!("{nc:08x}cafe"), 1).unwrap();
    get(Some(&auth))
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn xmpp_cr(p: &Prosody) -> bool {
    Command::new(connreq_bin())
        .args([
            "xmpp",
            "--jid",
            &format!("acs@{DOMAIN}/acs"),
            "--password",
            "acs-pw",
            "--server",
            &format!("127.0.0.1:{}", p.port),
            "--to",
            &format!("cpe1@{DOMAIN}/cwmp"),
            "--user",
            USER,
            "--cr-password",
            PASS,
        ])
        .arg("--ca")
        .arg(p.dir.join("certs/ca.crt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn soak_compressed_day() {
    let secs: u64 = std::env::var("CWMPD_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let warmup = Duration::from_secs((secs / 3).max(10));
    let total = Duration::from_secs(secs).max(warmup + Duration::from_secs(10));
    let acs = RawAcs::start(|r: &RawReq| {
        if r.is_inform() {
            inform_response()
        } else {
            RawResp::end()
        }
    });
    let d = TempDir::new("soak");
    let prosody = Prosody::setup(&d);
    if prosody.is_none() {
        println!("soak: XMPP part skipped (no Prosody)");
    }
    let xmpp_params = match &prosody {
        Some(p) => format!(
            "\"Device.ManagementServer.ConnReqXMPPConnection\" = \"Device.XMPP.Connection.1\"\n\"Device.ManagementServer.ConnReqAllowedJabberIDs\" = \"acs@{DOMAIN}\"\n\"Device.XMPP.Connection.1.Enable\" = true\n\"Device.XMPP.Connection.1.Username\" = \"cpe1\"\n\"Device.XMPP.Connection.1.Password\" = \"cpe1-pw\"\n\"Device.XMPP.Connection.1.Domain\" = \"{DOMAIN}\"\n\"Device.XMPP.Connection.1.Resource\" = \"cwmp\"\n\"Device.XMPP.Connection.1.UseTLS\" = true\n\"Device.XMPP.Connection.1.ServerConnectAlgorithm\" = \"ServerTable\"\n\"Device.XMPP.Connection.1.KeepAliveInterval\" = 5\n\"Device.XMPP.Connection.1.ServerRetryInitialInterval\" = 1\n\"Device.XMPP.Connection.1.ServerRetryIntervalMultiplier\" = 2000\n\"Device.XMPP.Connection.1.ServerRetryMaxInterval\" = 2\n\"Device.XMPP.Connection.1.Server.1.Enable\" = true\n\"Device.XMPP.Connection.1.Server.1.ServerAddress\" = \"127.0.0.1\"\n\"Device.XMPP.Connection.1.Server.1.Port\" = {}\n",
            p.port
        ),
        None => String::new(),
    };
    let xmpp_section = match &prosody {
        Some(p) => format!(
            "[xmpp]\nca_file = \"{}\"\n",
            p.dir.join("certs/ca.crt").display()
        ),
        None => String::new(),
    };
    let (s1, s2) = (free_udp_port(), free_udp_port());
    let _stun = (stun_server(s1), stun_server(s2));
    let uport = free_udp_port();
    let cfg = write_config(
        d.path(),
        &format!(
            "[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"127.0.0.1:{uport}\"\nrate_burst = 1000\nrate_per_minute = 60000\n{xmpp_section}[parameters]\n\"Device.ManagementServer.URL\" = \"{}\"\n\"Device.ManagementServer.ConnectionRequestUsername\" = \"{USER}\"\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"{PASS}\"\n\"Device.ManagementServer.PeriodicInformEnable\" = true\n\"Device.ManagementServer.PeriodicInformInterval\" = 1\n\"Device.ManagementServer.STUNEnable\" = true\n\"Device.ManagementServer.STUNServerAddress\" = \"127.0.0.1\"\n\"Device.ManagementServer.STUNServerPort\" = {s1}\n\"Device.ManagementServer.STUNMinimumKeepAlivePeriod\" = 1\n\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = 1\n{xmpp_params}",
            acs.url()
        ),
    );
    let a = Agent::start(&cfg);
    let pid = a.child.id();
    let cr_url = {
        let t0 = Instant::now();
        loop {
            let u = a.get("Device.ManagementServer.ConnectionRequestURL");
            if !u.is_empty() {
                break u;
            }
            assert!(t0.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let rest = cr_url.strip_prefix("http://").unwrap();
    let (hp, path) = rest.split_at(rest.find('/').unwrap());
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to: SocketAddr = format!("127.0.0.1:{uport}").parse().unwrap();
    let mut prosody = prosody;

    let (mut http_ok, mut udp_sent, mut xmpp_ok, mut switches, mut restarts) =
        (0u32, 0u32, 0u32, 0u32, 0u32);
    let mut id = 0u64;
    let xmpp_on = prosody.is_some();
    // Traffic paused, XMPP connected again: the agent's resting RSS and descriptors.
    let quiet_sample = |a: &Agent| {
        std::thread::sleep(Duration::from_millis(2500));
        let t0 = Instant::now();
        while xmpp_on
            && a.get("Device.XMPP.Connection.1.Status") != "Enabled"
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        (proc_kib(pid, "VmRSS:"), fd_count(pid))
    };
    let t0 = Instant::now();
    let mut warm: Option<(u64, usize)> = None;
    let mut samples = Vec::new();
    let mut tick = 0u64;
    while t0.elapsed() < total {
        if warm.is_none() && t0.elapsed() >= warmup {
            warm = Some(quiet_sample(&a));
        }
        tick += 1;
        if http_cr(hp, path, tick as u32) == 200 {
            http_ok += 1;
        }
        id += 1;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let dg = build_udp_cr(&to.to_string(), ts, id, USER, &format!("cn{id}"), PASS);
        for _ in 0..3 {
            let _ = udp.send_to(&dg, to);
        }
        udp_sent += 1;
        if tick.is_multiple_of(10) {
            let port = if switches % 2 == 0 { s2 } else { s1 };
            a.set("Device.ManagementServer.STUNServerPort", &port.to_string());
            switches += 1;
        }
        if let Some(p) = prosody.as_mut() {
            if tick.is_multiple_of(7) && xmpp_cr(p) {
                xmpp_ok += 1;
            }
            if tick % 40 == 20 {
                p.kill();
                std::thread::sleep(Duration::from_millis(300));
                p.start();
                restarts += 1;
            }
        }
        samples.push((
            t0.elapsed().as_secs_f64(),
            proc_kib(pid, "VmRSS:"),
            fd_count(pid),
        ));
        std::thread::sleep(Duration::from_millis(250));
    }
    let end = quiet_sample(&a);
    let warm = warm.unwrap_or(end);
    let informs = acs.requests().iter().filter(|r| r.is_inform()).count();
    let periodic = acs
        .requests()
        .iter()
        .filter(|r| r.is_inform() && r.text().contains("2 PERIODIC"))
        .count();
    let st = a.ctl(json!({"op": "status"}));
    let drift = end.0 as i64 - warm.0 as i64;
    let max_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let max_fd = samples.iter().map(|s| s.2).max().unwrap_or(0);
    println!(
        "soak: {:.0} s (warm-up {} s): {informs} informs ({periodic} periodic), {} connection requests handled (HTTP 200s {http_ok}, UDP CRs sent {udp_sent}, XMPP CRs {xmpp_ok}), {switches} STUN server switches, {restarts} XMPP server restarts; RSS {} kB after warm-up, {} kB at the end (drift {drift} kB, peak {max_rss} kB); fds {} → {} (peak {max_fd})",
        t0.elapsed().as_secs_f64(),
        warmup.as_secs(),
        st["connection_requests"],
        warm.0,
        end.0,
        warm.1,
        end.1,
    );
    assert!(
        periodic as u64 >= secs / 3,
        "periodic informs kept coming: {periodic}"
    );
    assert!(http_ok > 0 && st["connection_requests"].as_u64().unwrap() > 0);
    assert!(
        drift < 512,
        "RSS drift {drift} kB after warm-up (limit 512 kB)"
    );
    assert!(end.1 <= warm.1, "descriptors grew: {} → {}", warm.1, end.1);
    a.stop();
}
