//! HTTP connection requests end to end: the ACS's CR reaches the agent, and the ACS then gets
//! the Inform with "6 CONNECTION REQUEST" — on loopback, routed between network namespaces, and
//! through a NAT gateway's port forward (nftables DNAT). The namespace tests need root.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{Rig, sh, unavailable};
use common::*;
use cwmp_testacs::{AcsOptions, SessionRecord, TestAcsHandle, spawn_in_thread, try_spawn_in_netns};
use cwmpd::cwmp::soap::AcsRequest;

const USER: &str = "acs-user";
const PASS: &str = "cr-secret";
const WAIT: Duration = Duration::from_secs(20);
const CR_URL: &str = "Device.ManagementServer.ConnectionRequestURL";

fn config(dir: &std::path::Path, acs_url: &str, connreq: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[connreq]\n{connreq}\n[parameters]\n\"Device.ManagementServer.URL\" = \"{acs_url}\"\n\"Device.ManagementServer.ConnectionRequestUsername\" = \"{USER}\"\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"{PASS}\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.SerialNumber\" = \"CR0001\"\n"
        ),
    )
}

fn has_cr(s: &SessionRecord) -> bool {
    events(s).iter().any(|e| e == "6 CONNECTION REQUEST")
}

/// Sends a CR with the project's ACS-side tool, optionally from inside a namespace.
fn send_cr(rig: Option<(&Rig, &str)>, url: &str) -> (bool, String) {
    let bin = connreq_path();
    let mut cmd = match rig {
        Some((r, ns)) => r.command(ns, &bin),
        None => Command::new(&bin),
    };
    let out = cmd
        .args(["http", url, "--user", USER, "--password", PASS])
        .output()
        .expect("run cwmp-connreq");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn wait_value(a: &Agent, name: &str, pred: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let v = a.get(name);
        if pred(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < WAIT,
            "{name} stayed {v:?}; agent log:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn loopback_cr_starts_a_session_and_crs_during_a_session_give_one_follow_up() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("crs-lo");
    let a = Agent::start(&config(
        d.path(),
        &acs.url(),
        "http_listen = [\"127.0.0.1:0\"]\nrate_burst = 100\nrate_per_minute = 6000",
    ));
    acs.wait_sessions(1, WAIT);
    let url = wait_value(&a, CR_URL, |v| !v.is_empty());
    let (ok, out) = send_cr(None, &url);
    assert!(ok, "{out}");
    let s = acs.wait_sessions(2, WAIT);
    assert!(has_cr(&s[1]), "{:?}", events(&s[1]));

    // A long session (a slow ACS); 50 CRs while it runs → exactly one follow-up session.
    acs.update_options(|o| o.response_delay = Duration::from_millis(100));
    acs.queue(
        (0..10)
            .map(|_| AcsRequest::GetParameterValues {
                names: vec!["Device.DeviceInfo.".into()],
            })
            .collect(),
    );
    let (ok, _) = send_cr(None, &url);
    assert!(ok);
    let t0 = Instant::now();
    while acs.sessions().len() < 3 && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Five waves of ten concurrent requests (the listener caps concurrent connections at 32).
    let mut accepted = 0;
    for _ in 0..5 {
        let senders: Vec<_> = (0..10)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || send_cr(None, &url).0)
            })
            .collect();
        accepted += senders
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
    }
    assert_eq!(accepted, 50, "all 50 answered 200");
    let during = acs.sessions();
    assert_eq!(during.len(), 3, "the long session is still running");
    assert!(!during[2].ended, "the CRs arrived during the third session");
    acs.update_options(|o| o.response_delay = Duration::ZERO);
    let s = acs.wait_sessions(4, WAIT);
    std::thread::sleep(Duration::from_millis(800));
    let all = acs.sessions();
    assert_eq!(
        all.len(),
        4,
        "one follow-up: {:?}",
        all.iter().map(events).collect::<Vec<_>>()
    );
    assert!(has_cr(&s[3]));
}

fn acs_in(rig: &Rig, ns: &str, ip: &str) -> TestAcsHandle {
    try_spawn_in_netns(
        &rig.name(ns),
        format!("{ip}:7557").parse().unwrap(),
        AcsOptions::default(),
    )
    .expect("test ACS in its namespace")
}

#[test]
fn routed_namespaces_cr_and_address_change_reported() {
    if let Some(why) = unavailable() {
        common::skip("routed_namespaces_cr_and_address_change_reported", &why);
        return;
    }
    let rig = Rig::new("cwr", &["acs", "cpe"]);
    rig.link("acs", "198.18.7.1/24", "cpe", "198.18.7.2/24");
    let acs = acs_in(&rig, "acs", "198.18.7.1");
    let d = TempDir::new("crs-routed");
    let cfg = config(d.path(), &acs.url(), "http_listen = [\"0.0.0.0:7547\"]");
    // Short poll so an address change is noticed quickly.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("poll_interval = 3600", "poll_interval = 1");
    std::fs::write(&cfg, text).unwrap();
    let a = Agent::start_in(&cfg, Some(&rig.name("cpe")));
    acs.wait_sessions(1, WAIT);
    // The URL names the address on the route to the ACS.
    let url = wait_value(&a, CR_URL, |v| v.starts_with("http://198.18.7.2:7547/"));
    let (ok, out) = send_cr(Some((&rig, "acs")), &url);
    assert!(ok, "{out}");
    let s = acs.wait_sessions(2, WAIT);
    assert!(has_cr(&s[1]), "{:?}", events(&s[1]));

    // Renumber the CPE: the URL follows and is reported with 4 VALUE CHANGE.
    rig.exec("cpe", "ip addr del 198.18.7.2/24 dev v-acs");
    rig.exec("cpe", "ip addr add 198.18.7.3/24 dev v-acs");
    let url2 = wait_value(&a, CR_URL, |v| v.starts_with("http://198.18.7.3:7547/"));
    let t0 = Instant::now();
    let vc = loop {
        let all = acs.sessions();
        if let Some(s) = all
            .iter()
            .skip(2)
            .find(|s| events(s).contains(&"4 VALUE CHANGE".into()))
        {
            break s.clone();
        }
        assert!(
            t0.elapsed() < WAIT,
            "no VALUE CHANGE session: {:?}",
            all.iter().map(events).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let reported = inform_param(&vc, CR_URL);
    assert_eq!(reported.as_deref(), Some(url2.as_str()));
    let (ok, out) = send_cr(Some((&rig, "acs")), &url2);
    assert!(ok, "{out}");
    a.stop();
}

#[test]
fn port_forward_through_nat_gateway() {
    if let Some(why) = unavailable() {
        common::skip("port_forward_through_nat_gateway", &why);
        return;
    }
    let rig = Rig::new("cwp", &["acs", "gw", "cpe"]);
    rig.link("acs", "198.18.8.1/24", "gw", "198.18.8.254/24");
    rig.link("gw", "198.19.9.1/24", "cpe", "198.19.9.2/24");
    rig.exec("cpe", "ip route add default via 198.19.9.1");
    rig.nat_gateway(
        "gw",
        "v-acs",
        &["iifname \"v-acs\" tcp dport 17547 dnat to 198.19.9.2:7547".to_string()],
    );
    let acs = acs_in(&rig, "acs", "198.18.8.1");
    let d = TempDir::new("crs-pf");
    let cfg = config(
        d.path(),
        &acs.url(),
        "http_listen = [\"0.0.0.0:7547\"]\npublic_url = \"http://198.18.8.254:17547/\"",
    );
    let a = Agent::start_in(&cfg, Some(&rig.name("cpe")));
    let s = acs.wait_sessions(1, WAIT);
    // The published URL names the gateway's public address and the forwarded port.
    let url = a.get(CR_URL);
    assert!(url.starts_with("http://198.18.8.254:17547/"), "{url}");
    let reported = inform_param(&s[0], CR_URL);
    assert_eq!(reported.as_deref(), Some(url.as_str()));
    let (ok, out) = send_cr(Some((&rig, "acs")), &url);
    assert!(ok, "{out}");
    let s = acs.wait_sessions(2, WAIT);
    assert!(has_cr(&s[1]), "{:?}", events(&s[1]));
    // The CPE's private address is not reachable from the ACS side (the test is real).
    let private = url.replace("198.18.8.254:17547", "198.19.9.2:7547");
    let (ok, _) = send_cr(Some((&rig, "acs")), &private);
    assert!(
        !ok,
        "the private address must not be reachable from the ACS"
    );
    a.stop();
}

#[test]
fn port_forward_with_the_public_address_learned_by_stun() {
    if let Some(why) = unavailable() {
        common::skip("port_forward_with_the_public_address_learned_by_stun", &why);
        return;
    }
    let mut rig = Rig::new("cws", &["acs", "gw", "cpe"]);
    rig.link("acs", "198.18.10.1/24", "gw", "198.18.10.254/24");
    rig.link("gw", "198.19.11.1/24", "cpe", "198.19.11.2/24");
    rig.exec("cpe", "ip route add default via 198.19.11.1");
    rig.nat_gateway(
        "gw",
        "v-acs",
        &["iifname \"v-acs\" tcp dport 17547 dnat to 198.19.11.2:7547".to_string()],
    );
    // The project's STUN server on the ACS side.
    let stun = rig
        .command("acs", &connreq_path())
        .args([
            "stun-server",
            "--listen",
            "198.18.10.1:3478",
            "--max-seconds",
            "120",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("stun server");
    rig.own(stun);
    let acs = acs_in(&rig, "acs", "198.18.10.1");
    let d = TempDir::new("crs-pfstun");
    let cfg = config(
        d.path(),
        &acs.url(),
        "http_listen = [\"0.0.0.0:7547\"]\nudp_listen = \"0.0.0.0:7547\"\nexternal_port = 17547",
    );
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "\"Device.ManagementServer.STUNEnable\" = true\n\"Device.ManagementServer.STUNServerAddress\" = \"198.18.10.1\"\n\"Device.ManagementServer.STUNServerPort\" = 3478\n";
    std::fs::write(&cfg, text).unwrap();
    let a = Agent::start_in(&cfg, Some(&rig.name("cpe")));
    // STUN finds the gateway's public address; the URL names it with the forwarded port.
    let url = wait_value(&a, CR_URL, |v| v.starts_with("http://198.18.10.254:17547/"));
    assert_eq!(a.get("Device.ManagementServer.NATDetected"), "true");
    let (ok, out) = send_cr(Some((&rig, "acs")), &url);
    assert!(ok, "{out}");
    let t0 = Instant::now();
    while !acs.sessions().iter().any(has_cr) {
        assert!(t0.elapsed() < WAIT, "no CR session");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.stop();
}

#[test]
fn port_forward_opened_by_upnp_igd() {
    if let Some(why) = unavailable() {
        common::skip("port_forward_opened_by_upnp_igd", &why);
        return;
    }
    if !std::path::Path::new("/usr/sbin/miniupnpd").exists() {
        common::skip(
            "port_forward_opened_by_upnp_igd",
            "miniupnpd is not installed",
        );
        return;
    }
    // miniupnpd refuses reserved WAN addresses (documentation and benchmark ranges), so the
    // gateway's WAN side uses 5.0.77.0/24 — an address of this test's own namespaces only.
    let mut rig = Rig::new("cwu", &["acs", "gw", "cpe"]);
    rig.link("acs", "5.0.77.1/24", "gw", "5.0.77.254/24");
    rig.link("gw", "192.168.77.1/24", "cpe", "192.168.77.2/24");
    rig.exec("cpe", "ip route add default via 192.168.77.1");
    let gw = rig.name("gw");
    sh(&format!(
        "ip netns exec {gw} sysctl -qw net.ipv4.ip_forward=1"
    ));
    let d = TempDir::new("crs-upnp");
    // The chains miniupnpd fills in (its default names), and masquerade for the LAN.
    let nft = "table inet filter {\n chain forward { type filter hook forward priority 0; policy drop; ct state established,related accept; iifname \"v-cpe\" accept; jump miniupnpd; }\n chain miniupnpd { }\n chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n chain prerouting_miniupnpd { }\n chain postrouting { type nat hook postrouting priority 100; policy accept; oifname \"v-acs\" masquerade; jump postrouting_miniupnpd; }\n chain postrouting_miniupnpd { }\n}\n";
    std::fs::write(d.path().join("gw.nft"), nft).unwrap();
    sh(&format!(
        "ip netns exec {gw} nft -f {}",
        d.path().join("gw.nft").display()
    ));
    std::fs::write(
        d.path().join("miniupnpd.conf"),
        "ext_ifname=v-acs\nlistening_ip=v-cpe\nport=5000\nenable_natpmp=no\nenable_upnp=yes\nsecure_mode=yes\nsystem_uptime=yes\nuuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b\nallow 1024-65535 192.168.77.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
    )
    .unwrap();
    let igd = rig
        .command("gw", "/usr/sbin/miniupnpd")
        .arg("-f")
        .arg(d.path().join("miniupnpd.conf"))
        .arg("-d")
        .arg("-P")
        .arg(d.path().join("miniupnpd.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("miniupnpd");
    rig.own(igd);
    let acs = acs_in(&rig, "acs", "5.0.77.1");
    let cfg = config(
        d.path(),
        &acs.url(),
        "http_listen = [\"0.0.0.0:7547\"]\nupnp = true\nexternal_port = 27547",
    );
    let a = Agent::start_in(&cfg, Some(&rig.name("cpe")));
    // The gateway maps 27547 to the listener and the URL names its public address.
    let url = wait_value(&a, CR_URL, |v| v.starts_with("http://5.0.77.254:27547/"));
    let (ok, out) = send_cr(Some((&rig, "acs")), &url);
    assert!(ok, "{out}");
    let t0 = Instant::now();
    while !acs.sessions().iter().any(has_cr) {
        assert!(t0.elapsed() < WAIT, "no CR session");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Graceful shutdown (issue #13): the agent removes its port mapping from the gateway.
    let forwards = || {
        let out = rig
            .command("gw", "nft")
            .args(["list", "chain", "inet", "filter", "prerouting_miniupnpd"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        forwards().contains("27547"),
        "mapping in place: {}",
        forwards()
    );
    a.stop();
    assert!(
        !forwards().contains("27547"),
        "mapping left behind after SIGTERM: {}",
        forwards()
    );
}

/// Issue #12, defect 6: the ACS host name is resolved off the agent's thread. With a resolver
/// that never answers (its nameserver drops every query), the agent
/// starts at once, its control socket keeps answering within milliseconds through the poll
/// ticks, and it never publishes a loopback ConnectionRequestURL for the remote ACS.
#[test]
fn hanging_resolver_never_stalls_the_agent_nor_publishes_a_loopback_url() {
    if let Some(why) = unavailable() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI: {why}");
        common::skip("hanging_resolver_never_stalls_the_agent", &why);
        return;
    }
    let rig = Rig::new("cwdns", &["cpe", "dns"]);
    let ns = rig.name("cpe");
    rig.link("cpe", "198.18.9.2/24", "dns", "198.18.9.53/24");
    // The nameserver's host drops every DNS query: lookups hang until the resolver gives up.
    rig.exec(
        "dns",
        "nft 'add table inet bh; add chain inet bh in { type filter hook input priority 0; }; add rule inet bh in udp dport 53 drop; add rule inet bh in tcp dport 53 drop'",
    );
    // `ip netns exec` puts /etc/netns/NS/resolv.conf in place of /etc/resolv.conf.
    let etc = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
    std::fs::create_dir_all(&etc).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(etc.clone());
    std::fs::write(
        etc.join("resolv.conf"),
        "nameserver 198.18.9.53\noptions timeout:3 attempts:2\n",
    )
    .unwrap();
    let d = TempDir::new("crs-dns");
    let cfg = config(
        d.path(),
        "http://acs.cwmpd-dns-test.example:7547/acs",
        "http_listen = [\"0.0.0.0:0\"]",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("poll_interval = 3600", "poll_interval = 1");
    std::fs::write(&cfg, text).unwrap();
    let t0 = Instant::now();
    let a = Agent::start_in(&cfg, Some(&ns));
    let started = t0.elapsed();
    assert!(
        started < Duration::from_secs(3),
        "start took {started:?} (blocked on the resolver)"
    );
    // Over several poll ticks, while the lookups hang, every control request answers fast and
    // the URL is never a guess.
    let mut worst = Duration::ZERO;
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(8) {
        let q = Instant::now();
        let url = a.get(CR_URL);
        worst = worst.max(q.elapsed());
        assert!(!url.contains("127.0.0.1"), "loopback URL published: {url}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        worst < Duration::from_millis(500),
        "a control request waited {worst:?}"
    );
}
