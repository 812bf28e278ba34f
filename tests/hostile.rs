//! Hostile inputs against the real agent (issue #9, part 2): what a broken or malicious ACS can
//! send in a session, and what anyone can send to the HTTP connection-request listener. Each
//! gets a CWMP fault or an HTTP error (or, where TR-069 says a malformed message fails the
//! session, a failed session); the agent stays up, its memory stays bounded and the data model
//! is unchanged.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rawacs::{RawAcs, RawReq, RawResp, envelope, inform_response};
use common::*;
use cwmpd::connreq::digest::DigestClient;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const CR_USER: &str = "acs-user";
const CR_PASS: &str = "cr-secret";

/// A raw ACS answering the Inform, then the queued answers in order, then 204.
struct Scripted {
    acs: RawAcs,
    queue: Arc<Mutex<VecDeque<RawResp>>>,
    /// (connection, request number) of each request answered from the queue.
    served: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl Scripted {
    fn new() -> Scripted {
        let queue: Arc<Mutex<VecDeque<RawResp>>> = Arc::default();
        let served: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
        let (q, sv) = (queue.clone(), served.clone());
        let acs = RawAcs::start(move |r: &RawReq| {
            if r.is_inform() {
                return inform_response();
            }
            match q.lock().unwrap().pop_front() {
                Some(resp) => {
                    sv.lock().unwrap().push((r.conn, r.seq));
                    resp
                }
                None => RawResp::end(),
            }
        });
        Scripted { acs, queue, served }
    }
    fn push(&self, r: RawResp) {
        self.queue.lock().unwrap().push_back(r);
    }
}

fn start_agent(d: &TempDir, acs_url: &str) -> Agent {
    let cfg = write_config(
        d.path(),
        &format!(
            "[acs]\nresponse_timeout = 20\n[parameters]\n\"Device.ManagementServer.URL\" = \"{acs_url}\"\n\"Device.ManagementServer.CWMPRetryMinimumWaitInterval\" = \"1\"\n\"Device.ManagementServer.ConnectionRequestUsername\" = \"{CR_USER}\"\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"{CR_PASS}\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.SerialNumber\" = \"HOSTILE1\"\n"
        ),
    );
    Agent::start(&cfg)
}

/// The part of the data model an ACS can change, as text.
fn fingerprint(a: &Agent) -> String {
    let v = a.ctl(json!({"op": "get", "names": [
        "Device.ManagementServer.PeriodicInformInterval",
        "Device.ManagementServer.PeriodicInformEnable",
        "Device.ManagementServer.ParameterKey",
        "Device.ManagementServer.URL",
        "Device.DeviceInfo.ProvisioningCode",
        "Device.XMPP.",
    ]}));
    assert_eq!(v["ok"], true, "{v}");
    v["values"].to_string()
}

fn status(a: &Agent) -> serde_json::Value {
    a.ctl(json!({"op": "status"}))
}

fn vm_kib(a: &Agent, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", a.child.id())).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits for the first session to end, so a test starts from a settled agent.
fn settle(acs: &RawAcs, a: &Agent) {
    let t0 = Instant::now();
    while status(a)["sessions_ok"].as_u64().unwrap_or(0) < 1 {
        assert!(t0.elapsed() < WAIT, "no first session: {}", a.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = acs;
}

/// Runs one session in which the ACS's first request is `hostile`; returns the agent's answer
/// to it (None when the agent failed the session instead).
fn one_session(s: &Scripted, a: &Agent, hostile: RawResp) -> Option<RawReq> {
    // Start from a quiet agent: no retry of an earlier failed session pending.
    let t0 = Instant::now();
    while status(a)["retry_count"].as_u64().unwrap() > 0 {
        assert!(
            t0.elapsed() < WAIT,
            "agent did not recover: {}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let st0 = status(a);
    let (ok0, failed0) = (
        st0["sessions_ok"].as_u64().unwrap(),
        st0["sessions_failed"].as_u64().unwrap(),
    );
    let served0 = s.served.lock().unwrap().len();
    s.push(hostile);
    a.ctl(json!({"op": "inform"}));
    let t0 = Instant::now();
    loop {
        let st = status(a);
        let done = st["sessions_ok"].as_u64().unwrap() > ok0
            || st["sessions_failed"].as_u64().unwrap() > failed0;
        if done && s.served.lock().unwrap().len() > served0 {
            break;
        }
        assert!(t0.elapsed() < WAIT, "session did not end: {}", a.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The agent's answer is the next request on the connection that got the hostile message.
    let (conn, seq) = s.served.lock().unwrap()[served0];
    s.acs
        .requests()
        .into_iter()
        .find(|r| r.conn == conn && r.seq == seq + 1)
}

fn fault_code(r: &RawReq) -> Option<u32> {
    let t = r.text();
    let i = t.find("<FaultCode>")? + "<FaultCode>".len();
    t[i..].split('<').next()?.parse().ok()
}

fn assert_fault(r: &Option<RawReq>, code: u32, what: &str) {
    let r = r.as_ref().unwrap_or_else(|| panic!("{what}: no answer"));
    assert_eq!(
        fault_code(r),
        Some(code),
        "{what}: {}",
        &r.text()[..r.text().len().min(600)]
    );
}

fn gpv(id: &str, names: &[String]) -> String {
    let items: String = names
        .iter()
        .map(|n| format!("<string>{n}</string>"))
        .collect();
    envelope(
        id,
        &format!(
            "<cwmp:GetParameterValues><ParameterNames soap-enc:arrayType=\"xsd:string[{}]\">{items}</ParameterNames></cwmp:GetParameterValues>",
            names.len()
        ),
    )
}

fn spv(id: &str, list: &[(String, String)], key: &str) -> String {
    let items: String = list
        .iter()
        .map(|(n, v)| format!("<ParameterValueStruct><Name>{n}</Name><Value xsi:type=\"xsd:string\">{v}</Value></ParameterValueStruct>"))
        .collect();
    envelope(
        id,
        &format!(
            "<cwmp:SetParameterValues><ParameterList>{items}</ParameterList><ParameterKey>{key}</ParameterKey></cwmp:SetParameterValues>"
        ),
    )
}

fn add_object(id: &str, obj: &str) -> String {
    envelope(
        id,
        &format!(
            "<cwmp:AddObject><ObjectName>{obj}</ObjectName><ParameterKey>add</ParameterKey></cwmp:AddObject>"
        ),
    )
}

/// Every hostile ACS message of the issue, one session each, against one agent.
#[test]
fn hostile_acs_messages_get_faults_and_change_nothing() {
    let s = Scripted::new();
    let d = TempDir::new("hostile-acs");
    let a = start_agent(&d, &s.acs.url());
    settle(&s.acs, &a);
    let fp0 = fingerprint(&a);
    let mut tried = 0;
    let mut check = |what: &str, a: &Agent| {
        tried += 1;
        assert_eq!(fingerprint(a), fp0, "{what} changed the data model");
        assert!(
            matches!(a.ctl(json!({"op": "status"}))["ok"].as_bool(), Some(true)),
            "{what}: agent not answering"
        );
    };

    // XML entity expansion ("billion laughs") and external entities: refused (DOCTYPE), and a
    // malformed message fails the session (TR-069 §3.7.1.4): no fault, no change.
    let mut ents = String::from("<!ENTITY lol0 \"lol\">");
    for i in 1..10 {
        ents.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">",
            format!("&lol{};", i - 1).repeat(10)
        ));
    }
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [{ents}]>{}",
        gpv("laugh", &["&lol9;".into()])
    );
    let r = one_session(&s, &a, RawResp::ok_xml(laughs));
    assert!(
        r.is_none(),
        "entity expansion must fail the session: {:?}",
        r.map(|r| r.text())
    );
    check("entity expansion", &a);
    let xxe = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>{}",
        gpv("xxe", &["&e;".into()])
    );
    assert!(one_session(&s, &a, RawResp::ok_xml(xxe)).is_none());
    check("external entity", &a);

    // Deep nesting: 9004 Resources exceeded.
    let deep = envelope(
        "deep",
        &format!(
            "<cwmp:GetParameterValues><ParameterNames>{}{}</ParameterNames></cwmp:GetParameterValues>",
            "<a>".repeat(100_000),
            "</a>".repeat(100_000)
        ),
    );
    assert_fault(
        &one_session(&s, &a, RawResp::ok_xml(deep)),
        9004,
        "deep nesting",
    );
    check("deep nesting", &a);

    // 100 MB bodies, with a length and chunked: refused while reading (MAX_BODY, 4 MiB), the
    // session fails.
    for chunked in [false, true] {
        let r = one_session(
            &s,
            &a,
            RawResp::Huge {
                prefix: gpv("big", &[])
                    .split("</ParameterNames>")
                    .next()
                    .unwrap()
                    .as_bytes()
                    .to_vec(),
                chunk: b"<string>Device.</string>".to_vec(),
                total: 100 << 20,
                chunked,
            },
        );
        assert!(
            r.is_none(),
            "100 MB body (chunked: {chunked}) must fail the session"
        );
        check("100 MB body", &a);
    }

    // Invalid UTF-8: not well-formed, the session fails.
    let mut bad = gpv("utf8", &["Device.DeviceInfo.X".into()]).into_bytes();
    let at = bad.windows(2).position(|w| w == b".X").unwrap() + 1;
    bad[at] = 0xff;
    assert!(one_session(&s, &a, RawResp::ok_xml(bad)).is_none());
    check("invalid UTF-8", &a);

    // Thousands of attributes on one element: parsed in linear time, answered.
    let attrs: String = (0..20_000).map(|i| format!(" a{i}=\"{i}\"")).collect();
    let many = gpv("attrs", &["Device.DeviceInfo.SerialNumber".into()]).replace(
        "<cwmp:GetParameterValues>",
        &format!("<cwmp:GetParameterValues{attrs}>"),
    );
    let t0 = Instant::now();
    let r = one_session(&s, &a, RawResp::ok_xml(many)).expect("attributes: an answer");
    assert!(
        r.text().contains("GetParameterValuesResponse"),
        "{}",
        r.text()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "20,000 attributes took {:?}",
        t0.elapsed()
    );
    check("20,000 attributes", &a);

    // Duplicate attributes and duplicate cwmp:ID header elements.
    let dup_attr = gpv("dupattr", &["Device.DeviceInfo.SerialNumber".into()]).replace(
        "<cwmp:GetParameterValues>",
        "<cwmp:GetParameterValues a=\"1\" a=\"2\">",
    );
    assert!(one_session(&s, &a, RawResp::ok_xml(dup_attr)).is_none());
    check("duplicate attribute", &a);
    let dup_id = gpv("id1", &["Device.DeviceInfo.SerialNumber".into()]).replace(
        "</cwmp:ID>",
        "</cwmp:ID><cwmp:ID soap:mustUnderstand=\"1\">id2</cwmp:ID>",
    );
    let r = one_session(&s, &a, RawResp::ok_xml(dup_id));
    if let Some(r) = &r {
        // Answered (first ID echoed) or refused with a fault: either way one answer.
        assert!(r.text().contains("<cwmp:ID"), "{}", r.text());
    }
    check("duplicate cwmp:ID", &a);
    // The same cwmp:ID on two requests in one session: each is answered, with that ID.
    s.push(RawResp::ok_xml(gpv(
        "same",
        &["Device.DeviceInfo.SerialNumber".into()],
    )));
    let r = one_session(
        &s,
        &a,
        RawResp::ok_xml(gpv("same", &["Device.DeviceInfo.SerialNumber".into()])),
    )
    .expect("answer to the first of two equal IDs");
    assert!(r.text().contains(">same</cwmp:ID>"), "{}", r.text());
    let reqs = s.acs.requests();
    let last = reqs
        .iter()
        .rev()
        .find(|q| q.text().contains(">same</cwmp:ID>"))
        .unwrap();
    assert!(last.text().contains("GetParameterValuesResponse"));
    check("same cwmp:ID twice", &a);

    // 10,000-character names: 9003 (GPV, SPV, AddObject).
    let long = format!("Device.{}", "A".repeat(10_000));
    assert_fault(
        &one_session(
            &s,
            &a,
            RawResp::ok_xml(gpv("long1", std::slice::from_ref(&long))),
        ),
        9003,
        "long GPV name",
    );
    check("long GPV name", &a);
    assert_fault(
        &one_session(
            &s,
            &a,
            RawResp::ok_xml(spv("long2", &[(long.clone(), "x".into())], "k")),
        ),
        9003,
        "long SPV name",
    );
    check("long SPV name", &a);
    assert_fault(
        &one_session(
            &s,
            &a,
            RawResp::ok_xml(add_object("long3", &format!("{long}."))),
        ),
        9003,
        "long AddObject name",
    );
    check("long AddObject name", &a);
    // A 1 MB value: refused by the value limit (64 KiB).
    let huge_val = spv(
        "val",
        &[(
            "Device.DeviceInfo.ProvisioningCode".into(),
            "v".repeat(1 << 20),
        )],
        "k",
    );
    assert_fault(
        &one_session(&s, &a, RawResp::ok_xml(huge_val)),
        9004,
        "1 MB value",
    );
    check("1 MB value", &a);

    // SetParameterValues with 10,000 entries: unknown names, and one valid name 10,000 times.
    // All or nothing: 9003, nothing changes.
    let list: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("Device.DeviceInfo.X_Nope{i}"), "1".into()))
        .collect();
    assert_fault(
        &one_session(&s, &a, RawResp::ok_xml(spv("spv1", &list, "k1"))),
        9003,
        "10,000 unknown",
    );
    check("SPV 10,000 unknown names", &a);
    let list: Vec<(String, String)> = (0..10_000)
        .map(|i| ("Device.DeviceInfo.ProvisioningCode".into(), format!("p{i}")))
        .collect();
    assert_fault(
        &one_session(&s, &a, RawResp::ok_xml(spv("spv2", &list, "k2"))),
        9003,
        "10,000 same",
    );
    check("SPV one name 10,000 times", &a);

    // GetParameterValues of Device. 100,000 times (3 MB): 9004, not a multi-gigabyte answer.
    let names: Vec<String> = vec!["Device.".to_string(); 100_000];
    assert_fault(
        &one_session(&s, &a, RawResp::ok_xml(gpv("gpvall", &names))),
        9004,
        "GPV Device. x100000",
    );
    check("GPV Device. 100,000 times", &a);
    let gpa = gpv("gpaall", &names).replace("GetParameterValues", "GetParameterAttributes");
    assert_fault(
        &one_session(&s, &a, RawResp::ok_xml(gpa)),
        9004,
        "GPA Device. x100000",
    );
    check("GPA Device. 100,000 times", &a);

    // More array items than the parser allows: 9004.
    let names: Vec<String> = vec!["Device.DeviceInfo.SerialNumber".to_string(); 32_769];
    assert_fault(
        &one_session(&s, &a, RawResp::ok_xml(gpv("items", &names))),
        9004,
        "32,769 items",
    );
    check("32,769 array items", &a);

    // Garbage, an HTML error page, a truncated envelope, an unknown method.
    for (what, body) in [
        (
            "binary garbage",
            (0..4096u32)
                .map(|i| (i * 7919 % 251) as u8)
                .collect::<Vec<u8>>(),
        ),
        (
            "HTML page",
            b"<html><body>502 Bad Gateway</body></html>".to_vec(),
        ),
        (
            "truncated",
            gpv("trunc", &["Device.".into()]).as_bytes()[..200].to_vec(),
        ),
    ] {
        assert!(
            one_session(&s, &a, RawResp::ok_xml(body)).is_none(),
            "{what}"
        );
        check(what, &a);
    }
    assert_fault(
        &one_session(
            &s,
            &a,
            RawResp::ok_xml(envelope("unk", "<cwmp:X_Frobnicate/>")),
        ),
        9000,
        "unknown method",
    );
    check("unknown method", &a);

    let hwm = vm_kib(&a, "VmHWM:");
    eprintln!("hostile ACS messages tried: {tried}; agent peak RSS {hwm} kB");
    assert!(hwm < 160 * 1024, "peak RSS {hwm} kB");
    a.stop();
}

/// AddObject until the table is full: instances up to the limit, then 9004; nothing beyond.
#[test]
fn add_object_to_the_instance_limit() {
    let s = Scripted::new();
    let d = TempDir::new("hostile-add");
    let a = start_agent(&d, &s.acs.url());
    settle(&s.acs, &a);
    let limit = cwmpd::model::store::MAX_ENTRIES_UNBOUNDED as usize;
    for i in 1..limit {
        s.push(RawResp::ok_xml(add_object(
            &format!("add{i}"),
            "Device.ManagementServer.InformParameter.",
        )));
    }
    s.push(RawResp::ok_xml(add_object(
        "add-last",
        "Device.ManagementServer.InformParameter.",
    )));
    // The first request of the session is pushed last (queue order), then one more.
    let r = one_session(
        &s,
        &a,
        RawResp::ok_xml(add_object(
            "add-over",
            "Device.ManagementServer.InformParameter.",
        )),
    );
    assert!(r.is_some());
    let reqs = s.acs.requests();
    let answers: Vec<&RawReq> = reqs
        .iter()
        .filter(|q| q.text().contains("AddObjectResponse") || q.text().contains("<FaultCode>"))
        .collect();
    let ok = answers
        .iter()
        .filter(|q| q.text().contains("AddObjectResponse"))
        .count();
    let faults: Vec<u32> = answers.iter().filter_map(|q| fault_code(q)).collect();
    assert_eq!(ok, limit, "instances created");
    assert_eq!(faults, vec![9004], "one AddObject over the limit");
    let names = a.ctl(json!({"op": "names", "path": "Device.ManagementServer.InformParameter.", "next_level": true}));
    assert_eq!(
        names["names"].as_array().map(Vec::len),
        Some(limit),
        "{names}"
    );
    // The limit holds across a restart.
    a.stop();
    let a = start_agent(&d, &s.acs.url());
    let names = a.ctl(json!({"op": "names", "path": "Device.ManagementServer.InformParameter.", "next_level": true}));
    assert_eq!(names["names"].as_array().map(Vec::len), Some(limit));
}

fn cr_url(a: &Agent) -> String {
    let t0 = Instant::now();
    loop {
        let u = a.get("Device.ManagementServer.ConnectionRequestURL");
        if !u.is_empty() {
            return u;
        }
        assert!(t0.elapsed() < WAIT, "no ConnectionRequestURL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw bytes to the CR listener; returns the status of the answer (0: closed without one).
fn raw_request(hostport: &str, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&out);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let i = rest.find('/').unwrap();
    (rest[..i].to_string(), rest[i..].to_string())
}

fn digest_cr(hostport: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    let ch = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("WWW-Authenticate: ")
                .or_else(|| l.strip_prefix("www-authenticate: "))
        })
        .unwrap()
        .to_string();
    let auth = DigestClient::respond(&ch, "GET", path, CR_USER, CR_PASS, "0a4f113b", 1).unwrap();
    raw_request(
        hostport,
        format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
}

/// HTTP connection requests with absurd headers: each gets an HTTP error (or the connection is
/// closed), and a proper CR still works afterwards.
#[test]
fn http_cr_with_absurd_headers() {
    let s = Scripted::new();
    let d = TempDir::new("hostile-cr");
    let a = start_agent(&d, &s.acs.url());
    settle(&s.acs, &a);
    let (hp, path) = split(&cr_url(&a));
    let fp0 = fingerprint(&a);
    let req =
        |extra: &str| format!("GET {path} HTTP/1.1\r\nHost: {hp}\r\n{extra}\r\n").into_bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "100 KB header line",
            req(&format!("X-Junk: {}\r\n", "a".repeat(100_000))),
        ),
        (
            "10,000 headers",
            req(&(0..10_000)
                .map(|i| format!("X-{i}: v\r\n"))
                .collect::<String>()),
        ),
        (
            "64 KB request line",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(65_536)).into_bytes(),
        ),
        (
            "7 KB Authorization",
            req(&format!(
                "Authorization: Digest {}\r\n",
                "username=\"x\", ".repeat(500)
            )),
        ),
        (
            "Authorization garbage",
            req("Authorization: Digest ,,,,=\"\\\r\n"),
        ),
        ("binary header", {
            let mut v = req("");
            v.splice(20..20, [0u8, 0xff, 0xfe, b'\n']);
            v
        }),
        (
            "absurd Content-Length",
            req("Content-Length: 99999999999999999999999\r\n"),
        ),
        (
            "two Content-Lengths",
            req("Content-Length: 1\r\nContent-Length: 2\r\n"),
        ),
        (
            "chunked GET with a huge chunk",
            req("Transfer-Encoding: chunked\r\n"),
        ),
        ("HTTP/0.9", format!("GET {path}\r\n\r\n").into_bytes()),
        (
            "not HTTP",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        ),
    ];
    let mut tried = 0;
    for (what, bytes) in &cases {
        let code = raw_request(&hp, bytes);
        eprintln!(
            "CR {what}: {}",
            if code == 0 {
                "closed".to_string()
            } else {
                code.to_string()
            }
        );
        tried += 1;
        assert!(code == 0 || code >= 400, "{what}: answered {code}");
        assert_eq!(status(&a)["ok"], true, "{what}: agent down");
    }
    // More connections than the listener serves at once, all idle.
    let idle: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(&hp).unwrap()).collect();
    tried += 1;
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        digest_cr(&hp, &path),
        200,
        "a proper CR after the hostile ones"
    );
    assert_eq!(fingerprint(&a), fp0);
    eprintln!("hostile HTTP connection requests tried: {tried}");
    a.stop();
}
