//! The `cwmp-connreq` tool and its library's STUN server, on loopback: the usage, a UDP
//! connection request sent directly and one sent by the STUN server from its own socket to the
//! CPE binding it recorded, the API's answers, and `--max-seconds`. The tool against the real
//! agent is tested by the agent's tests (tests/http_cr.rs, stun_cr.rs, xmpp_cr.rs, …).

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use cwmp_connreq::stunsrv;
use cwmp_proto::connreq::{stun, udpcr};

const BIN: &str = env!("CARGO_BIN_EXE_cwmp-connreq");

fn tool(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run cwmp-connreq");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A UDP socket standing for the CPE's connection-request socket.
fn cpe_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn usage() {
    let (code, out) = tool(&["--help"]);
    assert_eq!(code, 0, "{out}");
    for cmd in [
        "http URL",
        "udp HOST:PORT",
        "stun-server --listen",
        "xmpp --jid",
    ] {
        assert!(out.contains(&format!("cwmp-connreq {cmd}")), "{out}");
    }
    let (code, _) = tool(&[]);
    assert_eq!(code, 2);
    let (code, out) = tool(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(out.contains("unknown command \"frobnicate\""), "{out}");
}

#[test]
fn udp_connection_request_sent_directly() {
    let cpe = cpe_socket();
    let to = cpe.local_addr().unwrap().to_string();
    let (code, out) = tool(&[
        "udp",
        &to,
        "--user",
        "u",
        "--password",
        "p",
        "--copies",
        "2",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("sent 2 copies (id="), "{out}");
    let mut buf = [0u8; 1500];
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (n, _) = cpe.recv_from(&mut buf).unwrap();
        let cr = udpcr::parse(&buf[..n]).expect("a UDP connection request");
        assert_eq!((cr.un.as_str(), cr.authority.as_str()), ("u", to.as_str()));
        assert_eq!(udpcr::Validator::new().check(&cr, "u", "p"), Ok(()));
        ids.push(cr.id);
    }
    assert_eq!(ids[0], ids[1], "copies are identical");
}

#[test]
fn stun_server_sends_udp_cr_from_its_socket_to_the_binding() {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = lines.clone();
    let srv = stunsrv::spawn(stunsrv::Options {
        api: Some("127.0.0.1:0".parse().unwrap()),
        log: std::sync::Arc::new(move |l: &str| log.lock().unwrap().push(l.to_string())),
        ..stunsrv::Options::new("127.0.0.1:0".parse().unwrap())
    })
    .expect("stun server");
    let api = srv.api_addr().unwrap().to_string();
    // No binding yet: the API refuses, the tool exits 1 with the server's answer.
    let (code, out) = tool(&[
        "udp",
        "last",
        "--user",
        "u",
        "--password",
        "p",
        "--via",
        &api,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no binding yet"), "{out}");
    // The CPE's Binding Request with CONNECTION-REQUEST-BINDING, from its CR socket.
    let cpe = cpe_socket();
    let txid = stun::TxId::Classic([7; 16]);
    let req = stun::binding_request(txid, None, None, false).unwrap();
    cpe.send_to(&req, srv.stun_addr()).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = cpe.recv_from(&mut buf).unwrap();
    assert_eq!(from, srv.stun_addr());
    let resp = stun::parse_response(&buf[..n], &txid).unwrap();
    assert_eq!(resp.mapped, Some(cpe.local_addr().unwrap()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = rt.block_on(stunsrv::bindings(&api)).unwrap();
    assert_eq!(
        b["bindings"][0]["addr"],
        cpe.local_addr().unwrap().to_string(),
        "{b}"
    );
    assert_eq!(b["bindings"][0]["connection_request_binding"], true, "{b}");
    // The tool asks the server; the request comes from the STUN socket.
    let (code, out) = tool(&[
        "udp",
        "last",
        "--user",
        "u",
        "--password",
        "p w",
        "--copies",
        "1",
        "--via",
        &api,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"ok\":true"), "{out}");
    let (n, from) = cpe.recv_from(&mut buf).unwrap();
    assert_eq!(from, srv.stun_addr(), "sent from the STUN socket");
    let cr = udpcr::parse(&buf[..n]).unwrap();
    assert_eq!(udpcr::Validator::new().check(&cr, "u", "p w"), Ok(()));
    let b = rt.block_on(stunsrv::bindings(&api)).unwrap();
    assert_eq!(b["crs_sent"], 1, "{b}");
    srv.stop().unwrap();
    let lines = lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("stun listening on 127.0.0.1:")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("udp cr to ")),
        "{lines:?}"
    );
}

#[test]
fn stun_server_command_stops_after_max_seconds() {
    let t0 = std::time::Instant::now();
    let (code, out) = tool(&[
        "stun-server",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--max-seconds",
        "0.3",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("api listening on 127.0.0.1:"), "{out}");
    assert!(out.contains("\nstun listening on 127.0.0.1:"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let (code, out) = tool(&[
        "stun-server",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "10.0.0.1:1",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--api must be a loopback address"), "{out}");
}

#[test]
fn stun_server_shared_password_answers_401_or_a_signed_success() {
    let srv = stunsrv::spawn(stunsrv::Options {
        api: Some("127.0.0.1:0".parse().unwrap()),
        credentials: Some(("*".into(), "stun pw".into())),
        log: std::sync::Arc::new(|_: &str| {}),
        quiet: true,
        ..stunsrv::Options::new("127.0.0.1:0".parse().unwrap())
    })
    .expect("stun server");
    let cpe = cpe_socket();
    let mut buf = [0u8; 1500];
    let mut ask = |req: &stun::BindingRequest<'_>| {
        cpe.send_to(&req.encode().unwrap(), srv.stun_addr())
            .unwrap();
        let (n, _) = cpe.recv_from(&mut buf).unwrap();
        let r = stun::parse_response(&buf[..n], &req.txid).unwrap();
        (r, buf[..n].to_vec())
    };
    let me = cpe.local_addr().unwrap();
    let mut n = 0u8;
    for classic in [true, false] {
        for layout in [stun::MiLayout::Rfc3489Padded, stun::MiLayout::Rfc5389] {
            for (user, pw, ok) in [
                (Some("stb-1"), Some("stun pw"), true),
                (Some("stb-1"), Some("stun pX"), false),
                (None, None, false),
                (Some("stb-2"), Some(""), false),
            ] {
                n += 1;
                let txid = if classic {
                    stun::TxId::Classic([n; 16])
                } else {
                    stun::TxId::Rfc5389([n; 12])
                };
                let req = stun::BindingRequest {
                    username: user,
                    password: pw,
                    mi_layout: layout,
                    ..stun::BindingRequest::new(txid)
                };
                let (r, raw) = ask(&req);
                if ok {
                    assert_eq!((r.error, r.mapped), (None, Some(me)), "{req:?}");
                    assert_eq!(
                        stun::check_integrity(&raw, b"stun pw"),
                        stun::Integrity::Valid(layout),
                        "{req:?}"
                    );
                } else {
                    assert!(r.is_unauthorized(), "{req:?}: {r:?}");
                }
            }
        }
    }
    // RESPONSE-ADDRESS (read by the general codec) toward the requester's own IP is honoured.
    let other = cpe_socket();
    let req = stun::BindingRequest {
        username: Some("stb-1"),
        password: Some("stun pw"),
        response_address: Some(other.local_addr().unwrap()),
        ..stun::BindingRequest::new(stun::TxId::Classic([0xee; 16]))
    };
    cpe.send_to(&req.encode().unwrap(), srv.stun_addr())
        .unwrap();
    let (n, _) = other.recv_from(&mut buf).unwrap();
    let r = stun::parse_response(&buf[..n], &req.txid).unwrap();
    assert_eq!(r.mapped, Some(me));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = rt
        .block_on(stunsrv::bindings(&srv.api_addr().unwrap().to_string()))
        .unwrap();
    // 4 accepted (+1 with RESPONSE-ADDRESS), 4 without credentials, 8 with bad ones.
    assert_eq!(
        (&b["auth_ok"], &b["challenges"], &b["auth_failed"]),
        (&5.into(), &4.into(), &8.into()),
        "{b}"
    );
    assert_eq!(b["bindings"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["bindings"][0]["key"], "stb-1", "{b}");
    srv.stop().unwrap();
}
