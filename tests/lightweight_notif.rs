//! UDP Lightweight Notifications (TR-069 Annex M, CWMP 1.4) of the real agent: Notification
//! 3–6 set by the test ACS, value changes made on the device side, and the datagrams caught by
//! a UDP collector on loopback that reads them the way the schema
//! (cwmp-UDPLightweightNotification-1-0.xsd) and the framing define: HTTP POST head with a
//! `Signature` (HMAC-SHA1 of the body keyed with ManagementServer.Password, checked here with
//! ring, not with the agent's code), then the `Notification` document.
#![cfg(feature = "lightweight-notif")]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use cwmp_testacs::{AcsOptions, TestAcsHandle, spawn_in_thread};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, SetAttr};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const FE: &str = "Device.Services.STBService.1.Components.FrontEnd.1.";
const PASSWORD: &str = "cpe-pass";

fn p3() -> String {
    format!("{FE}X_00D09E_CurrentInput")
}
fn p4() -> String {
    format!("{FE}Alias")
}
fn p5() -> String {
    format!("{FE}X_00D09E_CurrentChannel")
}
fn p6() -> String {
    "Device.Services.STBService.1.Alias".to_string()
}

fn config_for(dir: &std::path::Path, acs: &TestAcsHandle, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[parameters]\n\"Device.ManagementServer.URL\" = \"{url}\"\n\"Device.ManagementServer.Username\" = \"cpe\"\n\"Device.ManagementServer.Password\" = \"{PASSWORD}\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.ProductClass\" = \"STB\"\n\"Device.DeviceInfo.SerialNumber\" = \"SN0001\"\n\"{ch}\" = \"1\"\n{extra}",
            url = acs.url(),
            ch = p5(),
        ),
    )
}

fn attr(name: &str, n: u8) -> AcsRequest {
    AcsRequest::SetParameterAttributes {
        list: vec![SetAttr {
            name: name.into(),
            notification_change: true,
            notification: Some(n),
            access_list_change: false,
            access_list: vec![],
        }],
    }
}

/// One datagram as the collector read it.
#[derive(Debug, Clone)]
struct Msg {
    at: Instant,
    head: BTreeMap<String, String>,
    request_line: String,
    body: String,
    params: Vec<(String, String)>,
}

impl Msg {
    fn value(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn element(&self, tag: &str) -> String {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let s = self.body.find(&open).expect(tag) + open.len();
        let e = s + self.body[s..].find(&close).expect(tag);
        unescape(&self.body[s..e])
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#13;", "\r")
        .replace("&amp;", "&")
}

fn parse(d: &[u8], at: Instant) -> Msg {
    let text = std::str::from_utf8(d).expect("UTF-8 datagram");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_string();
    let head: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    // <Param><Name>…</Name><Value>…</Value></Param>, in document order.
    let mut params = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("<Param><Name>") {
        rest = &rest[i + "<Param><Name>".len()..];
        let ne = rest.find("</Name>").unwrap();
        let name = unescape(&rest[..ne]);
        rest = &rest[ne..];
        let vs = rest.find("<Value>").unwrap() + "<Value>".len();
        let ve = rest.find("</Value>").unwrap();
        params.push((name, unescape(&rest[vs..ve])));
        rest = &rest[ve..];
    }
    Msg {
        at,
        head,
        request_line,
        body: body.to_string(),
        params,
    }
}

struct Collector {
    sock: UdpSocket,
    got: Vec<Msg>,
}

impl Collector {
    fn new() -> Collector {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Collector {
            sock,
            got: Vec::new(),
        }
    }

    fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }

    /// Reads datagrams until one satisfies `f` (returns its index) or `timeout` passes.
    fn until(&mut self, timeout: Duration, f: impl Fn(&Msg) -> bool) -> Option<usize> {
        let t0 = Instant::now();
        if let Some(i) = self.got.iter().position(&f) {
            return Some(i);
        }
        let mut buf = vec![0u8; 65536];
        while t0.elapsed() < timeout {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let m = parse(&buf[..n], Instant::now());
                let hit = f(&m);
                self.got.push(m);
                if hit {
                    return Some(self.got.len() - 1);
                }
            }
        }
        None
    }
}

fn from_hex(s: &str) -> Vec<u8> {
    assert_eq!(s.len() % 2, 0, "{s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Every datagram: the framing, the signature (ring's HMAC-SHA1, constant-time verify), the
/// header elements, one fresh cnonce each, and the schema.
fn check_all(test: &str, msgs: &[Msg], host: &str) {
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        PASSWORD.as_bytes(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut cnonces = HashSet::new();
    for m in msgs {
        assert_eq!(m.request_line, "POST / HTTP/1.1");
        assert_eq!(m.head["host"], host);
        assert!(m.head["content-type"].starts_with("text/xml"), "{m:?}");
        assert_eq!(m.head["content-length"], m.body.len().to_string());
        let sig = from_hex(&m.head["signature"]);
        assert_eq!(sig.len(), 20);
        assert!(
            ring::hmac::verify(&key, m.body.as_bytes(), &sig).is_ok(),
            "bad signature: {m:?}"
        );
        let wrong = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"nope");
        assert!(ring::hmac::verify(&wrong, m.body.as_bytes(), &sig).is_err());
        let ts: i64 = m.element("TS").parse().unwrap();
        assert!((ts - now).abs() < 120, "TS {ts} vs now {now}");
        assert_eq!(m.element("UN"), "cpe");
        assert_eq!(m.element("OUI"), "00D09E");
        assert_eq!(m.element("ProductClass"), "STB");
        assert_eq!(m.element("SerialNumber"), "SN0001");
        let cn = m.element("CN");
        assert!(cn.len() >= 16, "{cn}");
        assert!(cnonces.insert(cn.clone()), "cnonce {cn} repeated");
        assert!(!m.params.is_empty());
        assert!(
            m.body
                .contains("xmlns=\"urn:broadband-forum-org:cwmp:lwnotif-1-0\"")
        );
    }
    let bodies: Vec<Vec<u8>> = msgs.iter().map(|m| m.body.clone().into_bytes()).collect();
    common::xsd::validate_lwn(test, &bodies);
}

fn lwn_status(a: &Agent) -> Value {
    a.ctl(json!({"op": "status"}))["lightweight_notifications"].clone()
}

/// Notification 3–6 through SetParameterAttributes (7 refused with 9003), then: passive
/// lightweight changes wait for an active one while the trigger interval is 0; with an interval
/// they go out at the next trigger, batched in one datagram; a flapping active value gives a
/// bounded number of datagrams and ends on its last value; the passive (Inform) part of 4 and 6
/// rides the next session, and no lightweight change opens a session itself.
#[test]
fn lightweight_notifications_batch_sign_and_validate() {
    let acs = spawn_in_thread(AcsOptions {
        // Notification 3-6 exist from CWMP 1.4: an ACS that says so (UseCWMPVersion).
        cwmp_version: Some(cwmpd::cwmp::soap::CwmpVersion::V1_4),
        ..AcsOptions::default()
    });
    let d = TempDir::new("lwn-main");
    let mut col = Collector::new();
    let port = col.port();
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!(
            "\"Device.ManagementServer.LightweightNotificationProtocolsUsed\" = \"UDP\"\n\"Device.ManagementServer.UDPLightweightNotificationHost\" = \"127.0.0.1\"\n\"Device.ManagementServer.UDPLightweightNotificationPort\" = \"{port}\"\n"
        ),
    ));
    acs.wait_sessions(1, WAIT);
    acs.queue(vec![
        attr(&p3(), 3),
        attr(&p4(), 4),
        attr(&p5(), 5),
        attr(&p6(), 6),
        attr(&p3(), 7),
        AcsRequest::GetParameterAttributes {
            names: vec![p3(), p4(), p5(), p6()],
        },
    ]);
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(2, WAIT);
    let r = &s[1].received;
    for m in &r[..4] {
        assert!(
            matches!(m, CpeMessage::SetParameterAttributesResponse),
            "{m:?}"
        );
    }
    match &r[4] {
        CpeMessage::Fault(f) => assert_eq!(f.code, 9003, "Notification 7"),
        m => panic!("Notification 7 accepted: {m:?}"),
    }
    match &r[5] {
        CpeMessage::GetParameterAttributesResponse { list } => {
            let n: Vec<u8> = list.iter().map(|p| p.notification).collect();
            assert_eq!(n, [3, 4, 5, 6]);
        }
        m => panic!("{m:?}"),
    }
    // The control socket reads the same attribute.
    let attrs = a.ctl(json!({"op": "getattr", "names": [p5()]}));
    assert_eq!(attrs["attributes"][0]["notification"], 5, "{attrs}");

    // Interval 0: passive lightweight changes (3, 4) wait for the active one (5), and all
    // three go in one datagram.
    assert_eq!(
        a.ctl(json!({"op": "set", "values": {p3(): "HDMI1", p4(): "fe-a"}}))["ok"],
        true
    );
    a.set(&p5(), "ch-7");
    let i = col
        .until(WAIT, |m| m.value(&p5()) == Some("ch-7"))
        .expect("the active lightweight change was not sent");
    assert_eq!(i, 0, "passive changes went out on their own: {:?}", col.got);
    assert_eq!(col.got[0].value(&p3()), Some("HDMI1"));
    assert_eq!(col.got[0].value(&p4()), Some("fe-a"));
    assert_eq!(col.got[0].params.len(), 3, "{:?}", col.got[0].params);

    // Interval 2 s: two passive changes made together go out at the next trigger, in one
    // datagram, within the interval (plus scheduling slack).
    a.set(
        "Device.ManagementServer.LightweightNotificationTriggerInterval",
        "2",
    );
    let t0 = Instant::now();
    a.ctl(json!({"op": "set", "values": {p3(): "DVB-T", p4(): "fe-b"}}));
    let i = col
        .until(WAIT, |m| m.value(&p3()) == Some("DVB-T"))
        .expect("the passive changes were not sent at the trigger");
    let m = col.got[i].clone();
    assert!(
        m.at - t0 < Duration::from_millis(3500),
        "sent {:?} after the change, interval 2 s",
        m.at - t0
    );
    assert_eq!(m.value(&p4()), Some("fe-b"), "{:?}", m.params);
    assert_eq!(m.params.len(), 2, "{:?}", m.params);

    // A flapping active value (6): at most one datagram per second, the last value arrives.
    let before = col.got.len();
    let t1 = Instant::now();
    for k in 0..20 {
        a.set(&p6(), &format!("s{k}"));
    }
    col.until(WAIT, |m| m.value(&p6()) == Some("s19"))
        .expect("the last value of the flapping parameter was not sent");
    let n = col.got[before..]
        .iter()
        .filter(|m| m.value(&p6()).is_some())
        .count();
    let secs = t1.elapsed().as_secs_f64();
    assert!(
        n >= 1 && (n as f64) <= secs + 2.0,
        "{n} datagrams in {secs:.1} s"
    );
    println!("flapping: 20 changes → {n} datagrams in {secs:.1} s");

    // No lightweight change opened a session; the passive part of 4 and 6 rides the next one.
    assert_eq!(
        acs.sessions().len(),
        2,
        "a lightweight change opened a session"
    );
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(3, WAIT);
    assert_eq!(inform_param(&s[2], &p4()).as_deref(), Some("fe-b"));
    assert_eq!(inform_param(&s[2], &p6()).as_deref(), Some("s19"));
    assert_eq!(inform_param(&s[2], &p3()), None, "3 is lightweight only");
    assert_eq!(inform_param(&s[2], &p5()), None, "5 is lightweight only");

    let st = lwn_status(&a);
    assert_eq!(st["datagrams"].as_u64(), Some(col.got.len() as u64), "{st}");
    check_all(
        "lightweight_notifications_batch_sign_and_validate",
        &col.got,
        &format!("127.0.0.1:{port}"),
    );
    common::xsd::validate_sessions(
        "lightweight_notifications_batch_sign_and_validate",
        &acs.sessions(),
    );
}

/// LightweightNotificationProtocolsUsed empty: changes are dropped, nothing is sent (the
/// counter says so). With UDP and an empty UDPLightweightNotificationHost the datagram goes to
/// the host of ManagementServer.URL (TR-181). Port 0: no destination, counted.
#[test]
fn disabled_or_without_destination_and_the_acs_host_default() {
    let acs = spawn_in_thread(AcsOptions {
        // Notification 3-6 exist from CWMP 1.4: an ACS that says so (UseCWMPVersion).
        cwmp_version: Some(cwmpd::cwmp::soap::CwmpVersion::V1_4),
        ..AcsOptions::default()
    });
    let d = TempDir::new("lwn-off");
    let mut col = Collector::new();
    let port = col.port();
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!("\"Device.ManagementServer.UDPLightweightNotificationPort\" = \"{port}\"\n"),
    ));
    acs.wait_sessions(1, WAIT);
    assert_eq!(
        a.get("Device.ManagementServer.LightweightNotificationProtocolsSupported"),
        "UDP"
    );
    acs.queue(vec![attr(&p5(), 5)]);
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(2, WAIT);
    assert!(matches!(
        s[1].received[0],
        CpeMessage::SetParameterAttributesResponse
    ));

    // Disabled (ProtocolsUsed empty): dropped and counted, not sent.
    a.set(&p5(), "x1");
    assert!(
        wait_until(WAIT, || lwn_status(&a)["discarded"].as_u64() >= Some(1)),
        "{}",
        lwn_status(&a)
    );
    let st = lwn_status(&a);
    assert_eq!(st["datagrams"], 0, "{st}");
    assert_eq!(st["messages"], 0, "{st}");

    // UDP with an empty host: the ACS URL's host (127.0.0.1).
    a.set(
        "Device.ManagementServer.LightweightNotificationProtocolsUsed",
        "UDP",
    );
    a.set(&p5(), "x2");
    let i = col
        .until(WAIT, |m| m.value(&p5()) == Some("x2"))
        .expect("nothing reached the ACS host");
    assert_eq!(i, 0, "the disabled change was sent: {:?}", col.got);
    assert_eq!(col.got.len(), 1);

    // Port 0: no destination.
    a.set(
        "Device.ManagementServer.UDPLightweightNotificationPort",
        "0",
    );
    a.set(&p5(), "x3");
    assert!(
        wait_until(WAIT, || lwn_status(&a)["no_destination"].as_u64()
            >= Some(1)),
        "{}",
        lwn_status(&a)
    );
    assert_eq!(lwn_status(&a)["datagrams"], 1);
    check_all(
        "disabled_or_without_destination_and_the_acs_host_default",
        &col.got,
        &format!("127.0.0.1:{port}"),
    );
}
