//! Fuzz targets: one function per untrusted input, shared by the cargo-fuzz targets and the
//! stable mutation driver in `fuzz/` and by the regression replay test (`tests/fuzz_regressions.rs`).
//!
//! Each target takes arbitrary bytes and must never panic, hang or allocate without bound;
//! where a round trip is defined (a parsed SOAP message re-emitted and parsed again) it asserts
//! it. [`seeds`] gives each target a starting corpus built from the same messages the project's
//! tests use.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::connreq::backoff::RateLimiter;
use crate::connreq::digest::{self, DigestClient, DigestServer};
use crate::connreq::stun::{self, TxId};
use crate::connreq::udpcr;
use crate::connreq::xmpp::{self, XmppSettings};
use crate::cwmp::soap::{
    AcsMessage, AcsRequest, CpeMessage, Download, Envelope, ParamValue, SetAttr, emit_acs,
    emit_cpe, parse_acs_message, parse_cpe_message,
};
use crate::model::schema::Schema;

/// A fuzz target: the name used on the command line and as the corpus directory, and the function.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens the mutator splices in.
    pub dict: &'static [&'static [u8]],
}

/// Every target, in the order the driver runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "soap",
        run: fuzz_soap,
        seeds: soap_seeds,
        dict: XML_DICT,
    },
    Target {
        name: "udp_cr",
        run: fuzz_udp_cr,
        seeds: udp_cr_seeds,
        dict: UDP_DICT,
    },
    Target {
        name: "stun",
        run: fuzz_stun,
        seeds: stun_seeds,
        dict: STUN_DICT,
    },
    Target {
        name: "digest",
        run: fuzz_digest,
        seeds: digest_seeds,
        dict: DIGEST_DICT,
    },
    Target {
        name: "xmpp",
        run: fuzz_xmpp,
        seeds: xmpp_seeds,
        dict: XML_DICT,
    },
    Target {
        name: "config",
        run: fuzz_config,
        seeds: config_seeds,
        dict: TOML_DICT,
    },
    Target {
        name: "datamodel",
        run: fuzz_datamodel,
        seeds: datamodel_seeds,
        dict: XML_DICT,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

const XML_DICT: &[&[u8]] = &[
    b"<",
    b"</",
    b"/>",
    b">",
    b"<!DOCTYPE x [<!ENTITY a \"aaaa\">]>",
    b"&a;",
    b"&amp;",
    b"&#0;",
    b"&#x10FFFF;",
    b"&#xD800;",
    b"<![CDATA[",
    b"]]>",
    b"<?xml version=\"1.0\"?>",
    b" xmlns=\"\"",
    b" xmlns:cwmp=\"urn:dslforum-org:cwmp-1-0\"",
    b" xsi:type=\"xsd:int\"",
    b" soap-enc:arrayType=\"cwmp:ParameterValueStruct[99999999]\"",
    b"cwmp:",
    b"soap:",
    b"\xff\xfe",
    b"\xc3\x28",
    b"4294967296",
    b"-1",
    b"18446744073709551616",
    b"Device.",
    b"Device.ManagementServer.",
    b"{i}",
    b"..",
    b" mustUnderstand=\"1\"",
];

const UDP_DICT: &[&[u8]] = &[
    b"GET ",
    b" HTTP/1.1\r\n",
    b"http://",
    b"?ts=",
    b"&id=",
    b"&un=",
    b"&cn=",
    b"&sig=",
    b"%",
    b"%zz",
    b"%00",
    b"\r\n",
    b"18446744073709551616",
    b"[::1]:",
];

const STUN_DICT: &[&[u8]] = &[
    b"\x21\x12\xa4\x42",
    b"\x00\x01",
    b"\x01\x01",
    b"\x01\x11",
    b"\x00\x06\x00\x04",
    b"\x00\x08\x00\x14",
    b"\xc0\x01\x00\x14",
    b"\xc0\x02\x00\x00",
    b"\x00\x20\x00\x08\x00\x01",
    b"\x00\x01\x00\x08\x00\x01",
    b"\x00\x09\x00\x04",
    b"\xff\xff",
    b"\x00\x00",
];

const DIGEST_DICT: &[&[u8]] = &[
    b"Digest ",
    b"Basic ",
    b"username=",
    b"username*=UTF-8''",
    b"realm=",
    b"nonce=",
    b"uri=",
    b"response=",
    b"qop=auth",
    b"nc=00000001",
    b"cnonce=",
    b"algorithm=SHA-256-sess",
    b"opaque=",
    b"\"",
    b"\\",
    b", ",
    b"%E2%82",
    b"=",
];

const TOML_DICT: &[&[u8]] = &[
    b"[agent]\n",
    b"[acs]\n",
    b"[connreq]\n",
    b"[xmpp]\n",
    b"[actions]\n",
    b"[provider]\n",
    b"[parameters]\n",
    b" = ",
    b"\"",
    b"'''",
    b"[[",
    b"]]",
    b"{ }",
    b"9223372036854775808",
    b"1e400",
    b"nan",
    b"\"Device.ManagementServer.URL\"",
    b"http_listen = [\"127.0.0.1:0\"]\n",
];

/// The emitter writes `xsd:string` for a value that came without `xsi:type`.
fn default_types(list: &mut [ParamValue]) {
    for p in list {
        p.xsi_type.get_or_insert_with(|| "xsd:string".to_string());
    }
}

/// Messages from the ACS (the agent's side), and the same bytes as CPE messages (the test
/// ACS's side). Whatever parses must survive emit → parse unchanged (up to the default
/// `xsi:type`).
pub fn fuzz_soap(data: &[u8]) {
    match parse_acs_message(data) {
        Ok(mut env) => {
            let mut out = Vec::new();
            emit_acs(&env, &mut out);
            if let AcsMessage::Request(AcsRequest::SetParameterValues { list, .. }) = &mut env.body
            {
                default_types(list);
            }
            match parse_acs_message(&out) {
                Ok(again) => assert_eq!(again, env, "ACS message: emit/parse round trip differs"),
                Err(e) => panic!(
                    "re-emitted ACS message does not parse: {e}\n{}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        Err(e) => {
            // Choosing the fault must not panic either.
            let _ = (e.cpe_fault(), e.id(), e.to_string());
        }
    }
    match parse_cpe_message(data) {
        Ok(mut env) => {
            let mut out = Vec::new();
            emit_cpe(&env, &mut out);
            let ns = env.ns;
            match &mut env.body {
                CpeMessage::Inform(i) => default_types(&mut i.params),
                CpeMessage::GetParameterValuesResponse { list } => default_types(list),
                // Fault codes are emitted in the form the message's CWMP version allows.
                CpeMessage::Fault(f) => *f = ns.rpc_fault(f),
                CpeMessage::TransferComplete(t) => t.fault = ns.transfer_fault(&t.fault),
                CpeMessage::AutonomousTransferComplete(t) => t.fault = ns.transfer_fault(&t.fault),
                _ => {}
            }
            match parse_cpe_message(&out) {
                Ok(again) => assert_eq!(again, env, "CPE message: emit/parse round trip differs"),
                Err(e) => panic!(
                    "re-emitted CPE message does not parse: {e}\n{}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        Err(e) => {
            let _ = (e.acs_fault(), e.to_string());
        }
    }
}

/// A UDP connection request datagram (TR-069 Annex G), through the parser and the validator.
pub fn fuzz_udp_cr(data: &[u8]) {
    let _ = stun::classify(data);
    if let Ok(cr) = udpcr::parse(data) {
        let mut v = udpcr::Validator::new();
        if v.check(&cr, "cpe", "secret").is_ok() {
            v.accept(&cr);
        }
        let _ = v.check(&cr, "cpe", "secret");
    }
}

/// A STUN message arriving on the CR socket: as a response, as a request (server side), and
/// its MESSAGE-INTEGRITY.
pub fn fuzz_stun(data: &[u8]) {
    let _ = stun::classify(data);
    let mut h = [0u8; 16];
    if data.len() >= 20 {
        h.copy_from_slice(&data[4..20]);
    }
    let _ = stun::parse_response(data, &TxId::from_header_bytes(h));
    let _ = stun::parse_response(data, &TxId::Rfc5389([7; 12]));
    let _ = stun::parse_binding_request(data);
    let _ = stun::check_integrity(data, b"stun-pass");
}

/// An `Authorization` header on the HTTP CR listener (server side), and the same bytes as a
/// `WWW-Authenticate` challenge from the ACS (client side).
pub fn fuzz_digest(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut srv = DigestServer::new([1; 32], "cwmpd", Duration::from_secs(300));
    let _ = srv.verify("GET", "/cr", Some(s), "cpe", "secret", 1_700_000_000);
    let _ = digest::parse_challenges(s);
    let _ = digest::offers_basic(s);
    let _ = DigestClient::respond(s, "POST", "/acs", "cpe", "pw", "0a1b2c3d4e5f6789", 1);
}

fn xmpp_settings() -> XmppSettings {
    XmppSettings {
        cwmp_enabled: true,
        conn: None,
        allowed: vec!["acs@example.net".into(), "admin@example.net/ops".into()],
        cr_username: "cpe".into(),
        cr_password: "secret".into(),
        connreq_jid: "cpe@example.net/cwmp".into(),
    }
}

/// XMPP stanzas as the agent's client receives them: read by the stream reader (after a stream
/// header, in two pieces split where the input says), read as IQ requests, and judged as
/// connection requests; every element is written back and read again.
pub fn fuzz_xmpp(data: &[u8]) {
    use cwmp_proto::connreq::xmpp_wire::{Event, StreamReader, XmlError, stream_header};
    let mut r = StreamReader::new();
    if r.feed(stream_header("example.net").as_bytes()).is_err() {
        return;
    }
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut events = Vec::new();
    for part in [&data[..cut], &data[cut..]] {
        let ok = r.feed(part).is_ok();
        events.extend(std::iter::from_fn(|| r.next_event()));
        if !ok {
            break;
        }
    }
    for ev in events {
        let Event::Element(el) = ev else {
            continue;
        };
        for c in &el.children {
            let _ = xmpp::parse_connection_request(c);
        }
        if let Some(iq) = xmpp::iq_request(&el) {
            let lim = RefCell::new(RateLimiter::new(5, 1.0));
            let _ = xmpp::judge(
                &xmpp_settings(),
                iq.from.as_ref(),
                iq.payload,
                &lim,
                Instant::now(),
            );
        }
        // The writer's output reads back as the same element (escaping and namespace
        // declarations may take it over the bounds, nothing else may fail).
        let mut back = StreamReader::new();
        back.feed(stream_header("x").as_bytes()).expect("header");
        match back.feed(el.to_stanza().as_bytes()) {
            Ok(()) => {
                assert!(matches!(back.next_event(), Some(Event::StreamStart(_))));
                assert_eq!(back.next_event(), Some(Event::Element(el)));
            }
            Err(e) => assert!(
                matches!(e, XmlError::TooLarge | XmlError::TooManyAttrs),
                "own output: {e}"
            ),
        }
    }
}

fn base_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datamodel");
        Schema::load_dirs(&[dir]).expect("the project's data model loads")
    })
}

/// The TOML configuration file, parsed and checked against the shipped data model.
pub fn fuzz_config(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse(s, Path::new("fuzz.toml")) {
        let _ = cfg.check_against(base_schema());
    }
}

/// A data-model XML document, alone and merged onto the shipped model, then validated.
pub fn fuzz_datamodel(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut alone = Schema::default();
    if alone.load_str(s, Path::new("fuzz.xml")).is_ok() {
        let _ = alone.validate();
    }
    let mut merged = base_schema().clone();
    if merged.load_str(s, Path::new("fuzz.xml")).is_ok() {
        let _ = merged.validate();
    }
}

fn emit(body: AcsMessage, id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    emit_acs(&Envelope::new(body).with_id(id), &mut out);
    out
}

/// ACS messages: every request the tests queue, the responses and a fault, plus raw documents
/// with the shapes other ACSs send (prefixes, 1-0 namespace, arrayType, header elements).
pub fn soap_seeds() -> Vec<Vec<u8>> {
    let rq = |r: AcsRequest| AcsMessage::Request(r);
    let mut v = vec![
        emit(rq(AcsRequest::GetRPCMethods), "1"),
        emit(
            rq(AcsRequest::GetParameterNames {
                path: "Device.".into(),
                next_level: true,
            }),
            "2",
        ),
        emit(
            rq(AcsRequest::GetParameterValues {
                names: vec![
                    "Device.DeviceInfo.".into(),
                    "Device.ManagementServer.URL".into(),
                ],
            }),
            "3",
        ),
        emit(
            rq(AcsRequest::SetParameterValues {
                list: vec![
                    ParamValue::new(
                        "Device.ManagementServer.PeriodicInformInterval",
                        "60",
                        "xsd:unsignedInt",
                    ),
                    ParamValue::new(
                        "Device.DeviceInfo.ProvisioningCode",
                        "a&b<c>\"'",
                        "xsd:string",
                    ),
                ],
                parameter_key: "k1".into(),
            }),
            "4",
        ),
        emit(
            rq(AcsRequest::SetParameterAttributes {
                list: vec![SetAttr {
                    name: "Device.DeviceInfo.SoftwareVersion".into(),
                    notification_change: true,
                    notification: Some(2),
                    access_list_change: true,
                    access_list: vec!["Subscriber".into()],
                }],
            }),
            "5",
        ),
        emit(
            rq(AcsRequest::GetParameterAttributes {
                names: vec!["Device.".into()],
            }),
            "6",
        ),
        emit(
            rq(AcsRequest::AddObject {
                object_name: "Device.XMPP.Connection.".into(),
                parameter_key: "add".into(),
            }),
            "7",
        ),
        emit(
            rq(AcsRequest::DeleteObject {
                object_name: "Device.XMPP.Connection.1.".into(),
                parameter_key: "del".into(),
            }),
            "8",
        ),
        emit(
            rq(AcsRequest::Reboot {
                command_key: "rb".into(),
            }),
            "9",
        ),
        emit(rq(AcsRequest::FactoryReset), "10"),
        emit(
            rq(AcsRequest::Download(Download {
                command_key: "dl".into(),
                file_type: "1 Firmware Upgrade Image".into(),
                url: "http://acs.example/fw.bin".into(),
                file_size: 1234,
                delay_seconds: 5,
                ..Download::default()
            })),
            "11",
        ),
        emit(
            rq(AcsRequest::ScheduleInform {
                delay_seconds: 30,
                command_key: "si".into(),
            }),
            "12",
        ),
        emit(rq(AcsRequest::GetQueuedTransfers), "13"),
        emit(rq(AcsRequest::GetAllQueuedTransfers), "14"),
        emit(AcsMessage::InformResponse { max_envelopes: 1 }, "15"),
        emit(AcsMessage::TransferCompleteResponse, "16"),
        emit(
            AcsMessage::GetRPCMethodsResponse {
                methods: vec!["Inform".into(), "TransferComplete".into()],
            },
            "17",
        ),
    ];
    v.push(
        br#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/" xmlns:SOAP-ENC="http://schemas.xmlsoap.org/soap/encoding/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:cwmp="urn:dslforum-org:cwmp-1-0">
<SOAP-ENV:Header><cwmp:ID SOAP-ENV:mustUnderstand="1">abc</cwmp:ID><cwmp:HoldRequests SOAP-ENV:mustUnderstand="1">0</cwmp:HoldRequests></SOAP-ENV:Header>
<SOAP-ENV:Body><cwmp:SetParameterValues><ParameterList SOAP-ENC:arrayType="cwmp:ParameterValueStruct[1]"><ParameterValueStruct><Name>Device.ManagementServer.PeriodicInformEnable</Name><Value xsi:type="xsd:boolean">1</Value></ParameterValueStruct></ParameterList><ParameterKey></ParameterKey></cwmp:SetParameterValues></SOAP-ENV:Body></SOAP-ENV:Envelope>"#
            .to_vec(),
    );
    v.push(
        br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cwmp="urn:dslforum-org:cwmp-1-2"><soapenv:Header><cwmp:ID soapenv:mustUnderstand="1">f1</cwmp:ID></soapenv:Header><soapenv:Body><soapenv:Fault><faultcode>Client</faultcode><faultstring>CWMP fault</faultstring><detail><cwmp:Fault><FaultCode>8005</FaultCode><FaultString>Retry request</FaultString></cwmp:Fault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#
            .to_vec(),
    );
    v.push(
        br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cwmp="urn:dslforum-org:cwmp-1-2" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:soap-enc="http://schemas.xmlsoap.org/soap/encoding/"><soap:Header><cwmp:ID soap:mustUnderstand="1">i</cwmp:ID></soap:Header><soap:Body><cwmp:Inform><DeviceId><Manufacturer>M</Manufacturer><OUI>00D09E</OUI><ProductClass>STB</ProductClass><SerialNumber>S</SerialNumber></DeviceId><Event soap-enc:arrayType="cwmp:EventStruct[1]"><EventStruct><EventCode>1 BOOT</EventCode><CommandKey></CommandKey></EventStruct></Event><MaxEnvelopes>1</MaxEnvelopes><CurrentTime>2026-01-01T00:00:00Z</CurrentTime><RetryCount>0</RetryCount><ParameterList soap-enc:arrayType="cwmp:ParameterValueStruct[1]"><ParameterValueStruct><Name>Device.RootDataModelVersion</Name><Value xsi:type="xsd:string">2.19</Value></ParameterValueStruct></ParameterList></cwmp:Inform></soap:Body></soap:Envelope>"#
            .to_vec(),
    );
    v
}

pub fn udp_cr_seeds() -> Vec<Vec<u8>> {
    vec![
        udpcr::build_udp_cr("192.0.2.1:7547", 1_700_000_000, 1, "cpe", "cn0123", "secret"),
        udpcr::build_udp_cr("[2001:db8::1]:80", 1, 42, "us er", "c%n", "secret"),
        b"GET http://10.0.0.1?ts=1&id=2&un=cpe&cn=x&sig=0000000000000000000000000000000000000000 HTTP/1.1\r\n\r\n".to_vec(),
    ]
}

pub fn stun_seeds() -> Vec<Vec<u8>> {
    let src: SocketAddr = "198.51.100.7:40000".parse().expect("literal address");
    let src6: SocketAddr = "[2001:db8::7]:40000".parse().expect("literal address");
    let classic = TxId::Classic([3; 16]);
    let modern = TxId::Rfc5389([4; 12]);
    let mut v = Vec::new();
    for t in [classic, modern] {
        v.extend(stun::binding_request(t, None, None, false));
        v.extend(stun::binding_request(
            t,
            Some("user"),
            Some("stun-pass"),
            true,
        ));
        v.extend(stun::binding_success(&t, src, None));
        v.extend(stun::binding_success(&t, src6, None));
        v.extend(stun::binding_success(
            &t,
            src,
            Some((b"stun-pass", stun::MiLayout::Rfc5389)),
        ));
        v.extend(stun::binding_error(&t, 401, "Unauthorized"));
    }
    v
}

pub fn digest_seeds() -> Vec<Vec<u8>> {
    let mut srv = DigestServer::new([1; 32], "cwmpd", Duration::from_secs(300));
    let ch = srv.challenge(1_700_000_000, false);
    let mut v = vec![ch.clone().into_bytes()];
    if let Ok(a) = DigestClient::respond(&ch, "GET", "/cr", "cpe", "secret", "0a1b2c3d", 1) {
        v.push(a.into_bytes());
    }
    v.push(
        b"Digest username*=UTF-8''%E2%82%AC, realm=\"cwmpd\", nonce=\"n\", uri=\"/cr\", response=\"00\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"c\", opaque=\"o\""
            .to_vec(),
    );
    v.push(b"Basic realm=\"acs\", Digest realm=\"acs\", qop=\"auth,auth-int\", nonce=\"abc\", algorithm=MD5-sess, stale=true".to_vec());
    let _ = srv.verify("GET", "/cr", None, "cpe", "secret", 1_700_000_000);
    v
}

pub fn xmpp_seeds() -> Vec<Vec<u8>> {
    let cr = xmpp::connection_request_element("cpe", "secret");
    let iq = format!(
        "<iq xmlns=\"jabber:client\" type=\"get\" id=\"cr1\" from=\"acs@example.net/x\" to=\"cpe@example.net/cwmp\">{cr}</iq>"
    );
    vec![
        iq.into_bytes(),
        b"<iq xmlns='jabber:client' type='set' id='2' from='admin@example.net/ops'><connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'><username>cpe</username><password>wrong</password></connectionRequest></iq>".to_vec(),
        b"<iq xmlns='jabber:client' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>".to_vec(),
    ]
}

pub fn config_seeds() -> Vec<Vec<u8>> {
    let mut v = vec![
        br#"[agent]
state_dir = "/tmp/cwmpd-fuzz/state"
datamodel = ["datamodel"]
control_socket = "/tmp/cwmpd-fuzz/ctl.sock"
log_level = "debug"
poll_interval = 3600
[connreq]
http_listen = ["127.0.0.1:0"]
[actions]
reboot = ["sh", "-c", "echo reboot"]
[parameters]
"Device.ManagementServer.URL" = "http://127.0.0.1:7547/acs"
"Device.ManagementServer.Username" = "cpe"
"Device.DeviceInfo.SerialNumber" = "SN0001"
"#
        .to_vec(),
    ];
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    collect_files(&ex, "toml", &mut v);
    v
}

pub fn datamodel_seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datamodel");
    collect_files(&dir, "xml", &mut v);
    v
}

fn collect_files(dir: &Path, ext: &str, out: &mut Vec<Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            collect_files(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext)
            && let Ok(b) = std::fs::read(&p)
        {
            out.push(b);
        }
    }
}
