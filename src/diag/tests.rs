use std::path::Path;
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::udp::EchoPlus;
use super::*;

fn inputs(p: &[(&str, &str)]) -> BTreeMap<String, String> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn lim() -> Limits {
    Limits {
        max_time: Duration::from_secs(20),
        ..Limits::default()
    }
}

fn val<'a>(o: &'a Outcome, name: &str) -> &'a str {
    o.value(name)
        .unwrap_or_else(|| panic!("{name} missing: {o:?}"))
}

fn num(o: &Outcome, name: &str) -> u64 {
    val(o, name).parse().unwrap()
}

fn rows(o: &Outcome) -> &[Row] {
    &o.rows[0].1
}

fn cell<'a>(row: &'a Row, name: &str) -> &'a str {
    &row.iter().find(|(n, _)| *n == name).unwrap().1
}

/// Times of the outcome are in this order (same-format dateTimes sort as text).
fn ordered(o: &Outcome, names: &[&str]) {
    for w in names.windows(2) {
        assert!(val(o, w[0]) <= val(o, w[1]), "{} > {}: {o:?}", w[0], w[1]);
    }
}

#[test]
fn objects_and_blank_outcomes() {
    for k in KINDS {
        assert_eq!(Kind::from_object(k.object()), Some(k));
        let o = Outcome::new(k, "Error_Other");
        assert!(o.value("IPAddressUsed").is_some_and(str::is_empty));
        assert_eq!(o.rows.len(), usize::from(k.results().1.is_some()));
        for (n, v) in &o.values {
            assert_eq!(o.values.iter().filter(|(m, _)| m == n).count(), 1);
            assert!(["0", "", crate::util::time::UNKNOWN_TIME].contains(&v.as_str()));
        }
    }
    assert_eq!(Kind::from_object("Device.IP.Diagnostics."), None);
    let o = Outcome::new(Kind::Download, "Error_Timeout");
    assert_eq!(val(&o, "ROMTime"), "0001-01-01T00:00:00Z");
    assert_eq!(val(&o, "TestBytesReceived"), "0");
}

#[test]
fn inputs_are_checked() {
    use Kind::*;
    let ok = |k, n, v: &str| check_input(k, n, v).is_ok();
    assert!(ok(Download, "DownloadURL", "http://10.0.0.1:8080/f"));
    assert!(ok(Upload, "UploadURL", "https://[::1]/up"));
    assert!(ok(Download, "DownloadURL", ""));
    assert!(!ok(Download, "DownloadURL", "ftp://10.0.0.1/f"));
    assert!(!ok(Upload, "UploadURL", "not a url"));
    assert!(ok(Download, "NumberOfConnections", "1"));
    assert!(!ok(Download, "NumberOfConnections", "2"));
    assert!(!ok(Upload, "NumberOfConnections", "0"));
    assert!(ok(IPPing, "NumberOfRepetitions", "100"));
    for bad in ["0", "101", "4294967295", "99999999999", "-1", "", "3x"] {
        assert!(!ok(IPPing, "NumberOfRepetitions", bad), "{bad}");
    }
    assert!(ok(IPPing, "Host", "acs.example.com"));
    assert!(ok(IPPing, "Host", "fe80::1%eth0"));
    assert!(ok(IPPing, "Host", ""));
    for bad in ["bad host", " x", "a;b", "a\tb", "h/x"] {
        assert!(!ok(IPPing, "Host", bad), "{bad:?}");
    }
    assert!(!ok(IPPing, "Host", &"a".repeat(257)));
    assert!(!ok(IPPing, "DSCP", "64"));
    assert!(!ok(IPPing, "Timeout", "0"));
    assert!(!ok(IPPing, "DataBlockSize", "65536"));
    assert!(!ok(IPPing, "ProtocolVersion", "IPv5"));
    assert!(!ok(TraceRoute, "NumberOfTries", "4"));
    assert!(!ok(TraceRoute, "MaxHopCount", "65"));
    assert!(!ok(UDPEcho, "Port", "0"));
    assert!(!ok(UDPEcho, "EnableIndividualPacketResults", "yes"));
    assert!(!ok(Upload, "EthernetPriority", "8"));
    assert!(ok(Upload, "TestFileLength", "0"));
    assert!(ok(
        ServerSelection,
        "HostList",
        "a.example, 10.0.0.1:7,[::1]:7"
    ));
    assert!(!ok(ServerSelection, "HostList", "a,,b"));
    assert!(!ok(ServerSelection, "HostList", "a b,c"));
    assert!(!ok(ServerSelection, "HostList", &["h"; 11].join(",")));
    assert!(ok(ServerSelection, "Protocol", "UDP Echo"));
    assert!(!ok(ServerSelection, "Protocol", "TCP"));
    assert!(ok(IPPing, "Interface", "the engine checks this one"));
}

#[test]
fn times_and_helpers() {
    let t = UNIX_EPOCH + Duration::new(1_796_499_001, 123_456_789);
    assert_eq!(datetime_us(t), "2026-12-05T19:30:01.123456Z");
    assert_eq!(datetime_us(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    let c = Clock::now();
    assert!(c.dt(c.at) < c.dt(c.at + Duration::from_micros(1)));
    assert_eq!((ms(0), ms(1), ms(1499), ms(1500)), (0, 1, 1, 2));
    assert_eq!(spread(&[]), (0, 0, 0));
    assert_eq!(spread(&[3, 1, 8]), (1, 4, 8));
    assert_eq!(split_port("h.example:9", 7), ("h.example", 9));
    assert_eq!(split_port("10.0.0.1", 7), ("10.0.0.1", 7));
    assert_eq!(split_port("[::1]:8", 7), ("::1", 8));
    assert_eq!(split_port("::1", 7), ("::1", 7));
    assert_eq!(split_port("[::1]", 7), ("::1", 7));
}

#[test]
fn echo_plus_packets() {
    let p = EchoPlus::request(7, 24);
    assert_eq!(p.len(), 24);
    assert_eq!(p[..4], [0, 0, 0, 7]);
    assert!(p[4..].iter().all(|&b| b == 0));
    assert_eq!(EchoPlus::request(1, 5).len(), udp::HEADER);
    let mut r = p.clone();
    r[4..20].copy_from_slice(&[0, 0, 0, 9, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 2]);
    let want = EchoPlus {
        gen_sn: 7,
        resp_sn: 9,
        recv_ts: 256,
        reply_ts: 257,
        failures: 2,
    };
    assert_eq!(EchoPlus::parse(&r), Some(want));
    assert_eq!(EchoPlus::parse(&r[..20]), Some(want));
    assert_eq!(EchoPlus::parse(&r[..19]), None);
}

#[tokio::test(flavor = "current_thread")]
async fn ping_and_trace_loopback() {
    if let Err(e) = icmp::Icmp::open(false, false, None, 0) {
        println!("skipped: {e}");
        return;
    }
    let o = run(
        Kind::IPPing,
        &inputs(&[
            ("Host", "127.0.0.1"),
            ("NumberOfRepetitions", "3"),
            ("Timeout", "2000"),
            ("DataBlockSize", "100"),
            ("DSCP", "10"),
        ]),
        None,
        &lim(),
    )
    .await;
    assert_eq!(o.state, "Complete", "{o:?}");
    assert_eq!((num(&o, "SuccessCount"), num(&o, "FailureCount")), (3, 0));
    assert_eq!(val(&o, "IPAddressUsed"), "127.0.0.1");
    let detailed =
        ["Minimum", "Average", "Maximum"].map(|m| num(&o, &format!("{m}ResponseTimeDetailed")));
    assert!(0 < detailed[0] && detailed[0] <= detailed[1] && detailed[1] <= detailed[2]);
    assert!(num(&o, "MinimumResponseTime") >= 1);

    // By name, IPv4 only, bound to lo.
    let inp = inputs(&[
        ("Host", "localhost"),
        ("ProtocolVersion", "IPv4"),
        ("NumberOfRepetitions", "1"),
    ]);
    let o = run(Kind::IPPing, &inp, Some("lo"), &lim()).await;
    assert_eq!(
        (o.state, val(&o, "IPAddressUsed")),
        ("Complete", "127.0.0.1")
    );

    let inp = inputs(&[
        ("Host", "127.0.0.1"),
        ("NumberOfTries", "2"),
        ("Timeout", "2000"),
    ]);
    let o = run(Kind::TraceRoute, &inp, None, &lim()).await;
    assert_eq!(o.state, "Complete", "{o:?}");
    assert_eq!(rows(&o).len(), 1);
    let hop = &rows(&o)[0];
    assert_eq!(cell(hop, "HostAddress"), "127.0.0.1");
    assert_eq!(cell(hop, "ErrorCode"), "0");
    assert_eq!(cell(hop, "RTTimes").split(',').count(), 2);
    assert!(num(&o, "ResponseTime") >= 1);

    let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok()
        && icmp::Icmp::open(true, false, None, 0).is_ok();
    if v6 {
        let inp = inputs(&[
            ("Host", "::1"),
            ("NumberOfRepetitions", "2"),
            ("Timeout", "2000"),
        ]);
        let o = run(Kind::IPPing, &inp, None, &lim()).await;
        assert_eq!((o.state, num(&o, "SuccessCount")), ("Complete", 2), "{o:?}");
        let inp = inputs(&[("Host", "::1"), ("NumberOfTries", "1")]);
        let o = run(Kind::TraceRoute, &inp, None, &lim()).await;
        assert_eq!(cell(&rows(&o)[0], "HostAddress"), "::1", "{o:?}");
    } else {
        println!("IPv6 part skipped: no ::1 or no ICMPv6 socket");
    }
}

/// The ping-socket path (the error queue, the kernel's identifier), and Error_NoRouteToHost,
/// in a network namespace of the test's own with only `lo` up and no route, where the ping
/// group range admits root (the default admits nobody: root then uses raw sockets).
#[test]
fn ping_socket_and_no_route_in_own_namespace() {
    let r = std::thread::spawn(|| -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare: {e}"))?;
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0")
            .map_err(|e| format!("ping_group_range: {e}"))?;
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        if !up.is_ok_and(|s| s.success()) {
            return Err("cannot bring lo up with ip(8)".into());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = icmp::Icmp::open_as(false, false, None, 0);
            assert!(!s.map_err(|e| format!("ping socket: {e}"))?.raw);
            let (m, l, phase) = (
                inputs(&[("Host", "127.0.0.1"), ("NumberOfTries", "1")]),
                lim(),
                Cell::new("Error_Other"),
            );
            let cx = Ctx {
                inp: In(&m),
                dev: None,
                lim: &l,
                phase: &phase,
                clock: Clock::now(),
            };
            let p = icmp::ping(
                &cx,
                "127.0.0.1:0".parse().unwrap(),
                2,
                Duration::from_secs(2),
                56,
                false,
            )
            .await
            .unwrap();
            assert_eq!((p.rtts.len(), p.unreachable), (2, 0));
            let o = icmp::trace(&cx, false).await;
            assert_eq!(o.state, "Complete", "{o:?}");
            assert_eq!(cell(&rows(&o)[0], "HostAddress"), "127.0.0.1");

            let nowhere = "10.1.2.3";
            let inp = inputs(&[("Host", nowhere), ("NumberOfRepetitions", "2")]);
            let o = run(Kind::IPPing, &inp, None, &lim()).await;
            assert_eq!(
                (o.state, val(&o, "SuccessCount")),
                ("Error_NoRouteToHost", "0")
            );
            let o = run(Kind::TraceRoute, &inp, None, &lim()).await;
            assert_eq!((o.state, rows(&o).len()), ("Error_NoRouteToHost", 0));
            let url = format!("http://{nowhere}:8080/x");
            let o = run(
                Kind::Download,
                &inputs(&[("DownloadURL", &url)]),
                None,
                &lim(),
            )
            .await;
            assert_eq!(o.state, "Error_NoRouteToHost");
            let inp = inputs(&[
                ("Host", nowhere),
                ("NumberOfRepetitions", "2"),
                ("InterTransmissionTime", "1"),
            ]);
            let o = run(Kind::UDPEcho, &inp, None, &lim()).await;
            assert_eq!((o.state, num(&o, "FailureCount")), ("Complete", 2));
            let hl = format!("{nowhere},127.0.0.1");
            let inp = inputs(&[
                ("HostList", &hl),
                ("Protocol", "ICMP"),
                ("NumberOfRepetitions", "1"),
            ]);
            let o = run(Kind::ServerSelection, &inp, None, &lim()).await;
            assert_eq!(
                (o.state, val(&o, "FastestHost")),
                ("Complete", "127.0.0.1"),
                "{o:?}"
            );
            Ok(())
        })
    })
    .join()
    .unwrap();
    if let Err(why) = r {
        println!("skipped: {why}");
    }
}

/// An echo server on loopback; `plus` fills TestRespSN (1, 2, …) as an Echo Plus server does.
async fn echo_server(plus: bool) -> (u16, JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = s.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut b = [0u8; 2048];
        for sn in 1u32.. {
            let (n, from) = s.recv_from(&mut b).await.unwrap();
            if plus && n >= 20 {
                b[4..8].copy_from_slice(&sn.to_be_bytes());
            }
            s.send_to(&b[..n], from).await.unwrap();
        }
    });
    (port, task)
}

#[tokio::test(flavor = "current_thread")]
async fn udp_echo_loopback() {
    let (port, plus) = echo_server(true).await;
    let p = port.to_string();
    let inp = inputs(&[
        ("Host", "127.0.0.1"),
        ("Port", &p),
        ("NumberOfRepetitions", "3"),
        ("Timeout", "2000"),
        ("DataBlockSize", "30"),
        ("InterTransmissionTime", "1"),
        ("EnableIndividualPacketResults", "true"),
    ]);
    let o = run(Kind::UDPEcho, &inp, None, &lim()).await;
    assert_eq!(o.state, "Complete", "{o:?}");
    assert_eq!((num(&o, "SuccessCount"), num(&o, "FailureCount")), (3, 0));
    assert_eq!(val(&o, "IPAddressUsed"), "127.0.0.1");
    assert!(num(&o, "MinimumResponseTime") >= 1);
    assert!(num(&o, "MinimumResponseTime") <= num(&o, "MaximumResponseTime"));
    assert_eq!(rows(&o).len(), 3);
    for (i, r) in rows(&o).iter().enumerate() {
        let sn = (i + 1).to_string();
        assert_eq!(
            (cell(r, "PacketSuccess"), cell(r, "TestGenSN")),
            ("true", sn.as_str())
        );
        assert_eq!(cell(r, "TestRespSN"), sn);
        assert!(cell(r, "PacketSendTime") <= cell(r, "PacketReceiveTime"));
    }
    plus.abort();

    // A plain echo server, and a port where nothing listens (ICMP port unreachable).
    let (port, plain) = echo_server(false).await;
    let closed = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut inp = inputs(&[
        ("Host", "127.0.0.1"),
        ("Port", &port.to_string()),
        ("EnableIndividualPacketResults", "true"),
    ]);
    let o = run(Kind::UDPEcho, &inp, None, &lim()).await;
    assert_eq!((o.state, num(&o, "SuccessCount")), ("Complete", 1));
    assert_eq!(cell(&rows(&o)[0], "TestRespSN"), "0");
    inp.insert("Port".into(), closed.to_string());
    inp.insert("NumberOfRepetitions".into(), "2".into());
    inp.insert("InterTransmissionTime".into(), "1".into());
    let o = run(Kind::UDPEcho, &inp, None, &lim()).await;
    assert_eq!((o.state, num(&o, "FailureCount")), ("Complete", 2), "{o:?}");
    assert_eq!(cell(&rows(&o)[1], "PacketSuccess"), "false");
    assert_eq!(
        cell(&rows(&o)[1], "PacketReceiveTime"),
        crate::util::time::UNKNOWN_TIME
    );

    // Server selection over UDP echo: the host that answers, as written in the list.
    let fastest = format!("127.0.0.1:{port}");
    let hl = format!("nonexistent.invalid,127.0.0.1:{closed},{fastest}");
    let inp = inputs(&[
        ("HostList", &hl),
        ("Protocol", "UDP Echo"),
        ("NumberOfRepetitions", "2"),
        ("Timeout", "1000"),
    ]);
    let o = run(Kind::ServerSelection, &inp, None, &lim()).await;
    assert_eq!(
        (o.state, val(&o, "FastestHost")),
        ("Complete", fastest.as_str()),
        "{o:?}"
    );
    assert_eq!(val(&o, "IPAddressUsed"), "127.0.0.1");
    assert!(num(&o, "MinimumResponseTime") >= 1);
    plain.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn unresolvable_hosts() {
    let l = Limits {
        max_time: Duration::from_secs(10),
        ..Limits::default()
    };
    let bad = "nonexistent.invalid";
    let url = format!("http://{bad}/x");
    for (k, inp) in [
        (Kind::IPPing, inputs(&[("Host", bad)])),
        (Kind::TraceRoute, inputs(&[("Host", bad)])),
        (Kind::UDPEcho, inputs(&[("Host", bad)])),
        (Kind::Download, inputs(&[("DownloadURL", &url)])),
        (Kind::Upload, inputs(&[("UploadURL", &url)])),
        (Kind::ServerSelection, inputs(&[("HostList", bad)])),
        (Kind::IPPing, inputs(&[("Host", "")])),
        (
            Kind::IPPing,
            inputs(&[("Host", "127.0.0.1"), ("ProtocolVersion", "IPv6")]),
        ),
    ] {
        let o = run(k, &inp, None, &l).await;
        assert_eq!(o.state, "Error_CannotResolveHostName", "{k:?} {inp:?}");
        assert_eq!(o, Outcome::new(k, o.state));
    }
}

/// Reads a request head (up to the blank line, or what came before EOF).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Serves one connection on 127.0.0.1: reads the request (its body by Content-Length), writes
/// `reply`, then waits for the client to close (or closes at once with `close`). The task's
/// result: the request head's length and the body bytes read.
async fn serve_one(reply: Vec<u8>, close: bool) -> (u16, JoinHandle<(usize, u64)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_head(&mut s).await;
        let len: u64 = head
            .lines()
            .find_map(|l| {
                Some(
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")?
                        .trim()
                        .parse()
                        .unwrap(),
                )
            })
            .unwrap_or(0);
        let mut buf = vec![0u8; 65536];
        let mut left = len;
        while left > 0 {
            let n = s.read(&mut buf[..left.min(65536) as usize]).await.unwrap();
            assert!(n > 0, "the body ended early");
            left -= n as u64;
        }
        let _ = s.write_all(&reply).await;
        if !close {
            let _ = s.read(&mut buf).await;
        }
        (head.len(), len)
    });
    (port, task)
}

fn ok_reply(body: usize, extra: &str) -> (usize, Vec<u8>) {
    let head = format!("HTTP/1.1 200 OK\r\n{extra}Content-Type: application/octet-stream\r\n\r\n");
    let mut r = head.into_bytes();
    let n = r.len();
    r.resize(n + body, 0x5a);
    (n, r)
}

const TIMES: [&str; 5] = [
    "TCPOpenRequestTime",
    "TCPOpenResponseTime",
    "ROMTime",
    "BOMTime",
    "EOMTime",
];

#[tokio::test(flavor = "current_thread")]
async fn download_loopback() {
    let body = 300_000;
    let (head, reply) = ok_reply(body, &format!("Content-Length: {body}\r\n"));
    let (port, srv) = serve_one(reply, false).await;
    let url = format!("http://127.0.0.1:{port}/blob");
    let inp = inputs(&[
        ("DownloadURL", &url),
        ("EnablePerConnectionResults", "true"),
        ("DSCP", "8"),
        ("EthernetPriority", "2"),
    ]);
    let o = run(Kind::Download, &inp, None, &lim()).await;
    assert_eq!(o.state, "Complete", "{o:?}");
    srv.await.unwrap();
    // TR-143: the bytes of the HTTP transaction, headers included.
    let test = (head + body) as u64;
    assert_eq!(num(&o, "TestBytesReceived"), test);
    assert_eq!(num(&o, "TestBytesReceivedUnderFullLoading"), test);
    assert_eq!(val(&o, "IPAddressUsed"), "127.0.0.1");
    ordered(&o, &TIMES);
    if http::counters("lo").is_some() {
        assert!(num(&o, "TotalBytesReceived") >= test, "{o:?}");
        assert!(num(&o, "TotalBytesSent") > 0);
    }
    let row = &rows(&o)[0];
    for (n, v) in row {
        assert_eq!(val(&o, n), v, "{n}");
    }
    assert_eq!(row.len(), 8);

    // Without per-connection results; close-delimited body.
    let (head, reply) = ok_reply(5000, "Connection: close\r\n");
    let (port, _srv) = serve_one(reply, true).await;
    let url = format!("http://localhost:{port}/");
    let inp = inputs(&[("DownloadURL", &url), ("ProtocolVersion", "IPv4")]);
    let o = run(Kind::Download, &inp, None, &lim()).await;
    assert_eq!(
        (o.state, num(&o, "TestBytesReceived")),
        ("Complete", (head + 5000) as u64)
    );
    assert!(rows(&o).is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn download_failures() {
    async fn dl(reply: Vec<u8>, close: bool, l: &Limits) -> Outcome {
        let (port, _srv) = serve_one(reply, close).await;
        let url = format!("http://127.0.0.1:{port}/f");
        run(Kind::Download, &inputs(&[("DownloadURL", &url)]), None, l).await
    }
    let l = lim();
    let o = dl(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        false,
        &l,
    )
    .await;
    assert_eq!(o, Outcome::new(Kind::Download, "Error_TransferFailed"));
    let mut truncated = ok_reply(500, "Content-Length: 1000\r\n").1;
    let o = dl(truncated.clone(), true, &l).await;
    assert_eq!(o.state, "Error_IncorrectSize");
    truncated.truncate(10);
    let o = dl(truncated, true, &l).await;
    assert_eq!(o.state, "Error_NoResponse");

    let small = Limits {
        max_download: 1000,
        ..lim()
    };
    let o = dl(ok_reply(5000, "Content-Length: 5000\r\n").1, false, &small).await;
    assert_eq!(o.state, "Error_TransferFailed");
    let o = dl(ok_reply(5000, "Connection: close\r\n").1, true, &small).await;
    assert_eq!(o.state, "Error_TransferFailed");

    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let o = run(Kind::Download, &inputs(&[("DownloadURL", &url)]), None, &l).await;
    assert_eq!(o.state, "Error_InitConnectionFailed");
    let o = run(
        Kind::Download,
        &inputs(&[("DownloadURL", "ftp://127.0.0.1/")]),
        None,
        &l,
    )
    .await;
    assert_eq!(o.state, "Error_Other");

    // A server that never answers: max_time ends the test in the phase's state.
    let (port, _srv) = serve_one(Vec::new(), false).await;
    let url = format!("http://127.0.0.1:{port}/");
    let short = Limits {
        max_time: Duration::from_millis(300),
        ..lim()
    };
    let o = run(
        Kind::Download,
        &inputs(&[("DownloadURL", &url)]),
        None,
        &short,
    )
    .await;
    assert_eq!(o, Outcome::new(Kind::Download, "Error_NoResponse"));
}

#[tokio::test(flavor = "current_thread")]
async fn upload_loopback() {
    let created = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".to_vec();
    let (port, srv) = serve_one(created.clone(), false).await;
    let url = format!("http://127.0.0.1:{port}/up");
    let len = 200_000u64;
    let inp = inputs(&[
        ("UploadURL", &url),
        ("TestFileLength", &len.to_string()),
        ("EnablePerConnectionResults", "true"),
    ]);
    let o = run(Kind::Upload, &inp, None, &lim()).await;
    assert_eq!(o.state, "Complete", "{o:?}");
    let (head, body) = srv.await.unwrap();
    assert_eq!(body, len);
    // Every byte written: the request head and the file.
    assert_eq!(num(&o, "TestBytesSent"), head as u64 + len);
    assert_eq!(num(&o, "TestBytesSentUnderFullLoading"), head as u64 + len);
    ordered(&o, &TIMES);
    assert_eq!(
        cell(&rows(&o)[0], "TestBytesSent"),
        val(&o, "TestBytesSent")
    );

    let (port, _srv) = serve_one(
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_vec(),
        false,
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/up");
    let inp = inputs(&[("UploadURL", &url), ("TestFileLength", "10")]);
    assert_eq!(
        run(Kind::Upload, &inp, None, &lim()).await.state,
        "Error_NoResponse"
    );
    let small = Limits {
        max_upload: 5,
        ..lim()
    };
    assert_eq!(
        run(Kind::Upload, &inp, None, &small).await.state,
        "Error_Other"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_a_test_closes_its_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let srv = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = read_head(&mut s).await;
        s.read(&mut [0u8; 16]).await.unwrap_or(0)
    });
    let url = format!("http://127.0.0.1:{port}/");
    let inp = inputs(&[("DownloadURL", &url)]);
    let limits = lim();
    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        run(Kind::Download, &inp, None, &limits),
    );
    assert!(cut.await.is_err(), "the server never answers");
    let closed = tokio::time::timeout(Duration::from_secs(10), srv).await;
    assert_eq!(closed.expect("the connection was closed").unwrap(), 0);

    // A ping and a UDP echo cut short while they wait.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = silent.local_addr().unwrap().port().to_string();
    let inp = inputs(&[
        ("Host", "127.0.0.1"),
        ("Port", &p),
        ("Timeout", "5000"),
        ("NumberOfRepetitions", "5"),
    ]);
    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        run(Kind::UDPEcho, &inp, None, &limits),
    );
    assert!(cut.await.is_err());
    let cut = tokio::time::timeout(
        Duration::from_millis(1),
        run(Kind::IPPing, &inp, None, &limits),
    );
    let _ = cut.await;
}

/// A CA and a certificate for 127.0.0.1 made by openssl(1) in `dir`.
fn make_pki(dir: &Path) -> bool {
    let ossl = |args: &str| {
        Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    ossl(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=diag-CA -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
    )) && ossl(&format!(
        "req {ec} -keyout srv.key -out srv.csr -subj /CN=127.0.0.1"
    )) && ossl(
        "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf",
    )
}

#[tokio::test(flavor = "current_thread")]
async fn download_https_with_extra_ca() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::env::temp_dir().join(format!("cwmpd-diag-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if !make_pki(&dir) {
        println!("skipped: openssl cannot make the test certificates");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("srv.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (head, reply) = ok_reply(20_000, "Content-Length: 20000\r\n");
    let srv = tokio::spawn(async move {
        for _ in 0..2 {
            let (s, _) = l.accept().await.unwrap();
            let Ok(mut s) = acceptor.accept(s).await else {
                continue;
            };
            let mut req = Vec::new();
            let mut b = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(&reply).await.unwrap();
            let _ = s.read(&mut b).await;
        }
    });
    let url = format!("https://127.0.0.1:{port}/secure");
    let inp = inputs(&[("DownloadURL", &url)]);
    // The web roots alone do not know the test CA.
    let o = run(Kind::Download, &inp, None, &lim()).await;
    assert_eq!(o.state, "Error_InitConnectionFailed");
    let with_ca = Limits {
        ca_file: Some(dir.join("ca.pem")),
        ..lim()
    };
    let o = run(Kind::Download, &inp, None, &with_ca).await;
    assert_eq!(o.state, "Complete", "{o:?}");
    // The HTTP bytes inside TLS.
    assert_eq!(num(&o, "TestBytesReceived"), (head + 20_000) as u64);
    ordered(&o, &TIMES);
    srv.await.unwrap();
    let bad_ca = Limits {
        ca_file: Some(dir.join("missing.pem")),
        ..lim()
    };
    assert_eq!(
        run(Kind::Download, &inp, None, &bad_ca).await.state,
        "Error_Internal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
