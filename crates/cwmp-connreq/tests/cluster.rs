//! `cwmp-connreq stun-server` in cluster mode on loopback: three instances of the tool and a
//! real `redis-server` (started here, stopped by PID), CPEs played by UDP sockets that send
//! TR-111 Binding Requests with USERNAME. Seen from outside: a connection request asked of any
//! instance comes from the owner's STUN socket; a killed instance's CPEs are reachable again
//! once they bind elsewhere; a restarted Redis is filled again; bad input and floods are
//! answered clearly. (Behind a real NAT with the agent: the root package's
//! tests/stun_cluster.rs.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cwmp_proto::connreq::{stun, udpcr};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cwmp-connreq");
const WAIT: Duration = Duration::from_secs(15);

/// A started process, killed (by PID) when dropped.
struct Kid(Child);

impl Kid {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

/// None when redis-server can run here; in CI its absence is a failure.
fn no_redis() -> Option<String> {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return None;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but redis-server is not installed"
    );
    eprintln!("SKIPPED: redis-server is not installed");
    Some("redis-server is missing".into())
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < t {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn redis(port: u16) -> Kid {
    let k = Kid(Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server"));
    assert!(
        wait_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "redis-server did not start"
    );
    k
}

struct Inst {
    kid: Kid,
    name: String,
    stun: SocketAddr,
    api: String,
}

fn instance(name: &str, redis_port: u16, ttl: u32) -> Inst {
    let stun: SocketAddr = format!("127.0.0.1:{}", free_udp()).parse().unwrap();
    let api = format!("127.0.0.1:{}", free_tcp());
    let kid = Kid(Command::new(BIN)
        .args([
            "stun-server",
            "--listen",
            &stun.to_string(),
            "--api",
            &api,
            "--redis",
            &format!("redis://127.0.0.1:{redis_port}"),
            "--instance-id",
            name,
            "--binding-ttl",
            &ttl.to_string(),
            "--quiet",
            "--max-seconds",
            "300",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cwmp-connreq"));
    assert!(
        wait_until(WAIT, || TcpStream::connect(&api).is_ok()),
        "instance {name} did not start"
    );
    Inst {
        kid,
        name: name.into(),
        stun,
        api,
    }
}

/// One HTTP request to an instance's API: (status, JSON body).
fn api(api: &str, method: &str, target: &str) -> (u16, Value) {
    raw_api(
        api,
        &format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
}

fn raw_api(api: &str, request: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}")),
    )
}

fn cr(inst: &Inst, key: &str) -> (u16, Value) {
    api(
        &inst.api,
        "POST",
        &format!("/cr?to={key}&user=cr-user&password=cr%20pass&copies=1"),
    )
}

/// A CPE's connection-request socket, bound to one instance by its keep-alives.
struct Cpe {
    sock: UdpSocket,
    user: String,
}

impl Cpe {
    fn new(user: &str) -> Cpe {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Cpe {
            sock,
            user: user.into(),
        }
    }

    /// One keep-alive to `server`, answered.
    fn keepalive(&self, server: SocketAddr) {
        let txid = stun::TxId::Rfc5389(rand_id());
        let req = stun::binding_request(txid, Some(&self.user), Some(""), false).unwrap();
        self.sock.send_to(&req, server).unwrap();
        let mut buf = [0u8; 1500];
        let t0 = Instant::now();
        while t0.elapsed() < WAIT {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf)
                && from == server
                && stun::parse_response(&buf[..n], &txid).is_ok()
            {
                return;
            }
        }
        panic!("no STUN answer from {server}");
    }

    /// The next UDP connection request, and where it came from.
    fn expect_cr(&self) -> SocketAddr {
        let mut buf = [0u8; 1500];
        let t0 = Instant::now();
        while t0.elapsed() < WAIT {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf)
                && let Ok(cr) = udpcr::parse(&buf[..n])
            {
                assert_eq!(
                    udpcr::Validator::new().check(&cr, "cr-user", "cr pass"),
                    Ok(())
                );
                assert_eq!(cr.authority, self.sock.local_addr().unwrap().to_string());
                return from;
            }
        }
        panic!("no UDP connection request for {}", self.user);
    }
}

fn rand_id() -> [u8; 12] {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8..].copy_from_slice(&std::process::id().to_be_bytes());
    id
}

fn owner(inst: &Inst, key: &str) -> Option<String> {
    let (st, v) = api(&inst.api, "GET", &format!("/cpe?key={key}"));
    (st == 200).then(|| v["owner"].as_str().unwrap_or("").to_string())
}

#[test]
fn cluster_cr_through_any_instance_is_sent_by_the_owner() {
    if no_redis().is_some() {
        return;
    }
    let rp = free_tcp();
    let _redis = redis(rp);
    let insts: Vec<Inst> = ["a", "b", "c"].iter().map(|n| instance(n, rp, 5)).collect();
    let cpes: Vec<Cpe> = (0..3).map(|i| Cpe::new(&format!("cpe-{i}"))).collect();
    for (c, i) in cpes.iter().zip(&insts) {
        c.keepalive(i.stun);
    }
    for (c, i) in cpes.iter().zip(&insts) {
        assert!(
            wait_until(WAIT, || owner(&insts[0], &c.user).as_deref()
                == Some(&i.name)),
            "{} not registered as owned by {}",
            c.user,
            i.name
        );
    }
    // Every CPE through every instance: sent by the owner, from the owner's STUN socket.
    for asked in &insts {
        for (c, own) in cpes.iter().zip(&insts) {
            let (st, v) = cr(asked, &c.user);
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["result"], "sent", "{v}");
            assert_eq!(v["owner"], own.name.as_str(), "{v}");
            let via = if asked.name == own.name {
                "local"
            } else {
                "redis"
            };
            assert_eq!(v["via"], via, "{v}");
            assert_eq!(c.expect_cr(), own.stun, "not from the owner's STUN socket");
        }
    }
    // Bad input, answered clearly.
    let (st, v) = cr(&insts[1], "nobody");
    assert_eq!(
        (st, v["result"].as_str()),
        (404, Some("unknown_cpe")),
        "{v}"
    );
    let (st, v) = api(&insts[1].api, "POST", "/cr?to=cpe-0&password=x");
    assert_eq!(
        (st, v["result"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (st, v) = api(
        &insts[1].api,
        "POST",
        "/cr?to=cpe-0&user=u&password=p&copies=99",
    );
    assert_eq!(
        (st, v["result"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let long = "x".repeat(600);
    let (st, v) = api(
        &insts[1].api,
        "POST",
        &format!("/cr?to={long}&user=u&password=p"),
    );
    assert_eq!(
        (st, v["result"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (st, _) = raw_api(&insts[2].api, "\x01\x02 garbage\r\n\r\n");
    assert_eq!(st, 404);
    let (st, v) = api(&insts[2].api, "GET", "/cpe");
    assert_eq!(st, 400, "{v}");
    // /bindings shows the instance's own bindings and the cluster counters.
    let (st, b) = api(&insts[0].api, "GET", "/bindings");
    assert_eq!(st, 200);
    assert_eq!(b["cluster"]["instance"], "a", "{b}");
    assert_eq!(b["cluster"]["routed_in"], 2, "{b}");
    assert_eq!(b["cluster"]["routed_out"], 2, "{b}");
}

#[test]
fn cluster_killed_instance_its_cpes_rebind_and_are_reachable() {
    if no_redis().is_some() {
        return;
    }
    let rp = free_tcp();
    let _redis = redis(rp);
    let mut insts: Vec<Inst> = ["a", "b", "c"].iter().map(|n| instance(n, rp, 3)).collect();
    let cpe = Cpe::new("moving-cpe");
    cpe.keepalive(insts[1].stun);
    assert!(wait_until(WAIT, || owner(&insts[0], "moving-cpe")
        .as_deref()
        == Some("b")));
    insts[1].kid.kill();
    // While the registry still names the dead owner: a clear "stale binding".
    let (st, v) = cr(&insts[0], "moving-cpe");
    assert!(
        (st == 410 && v["result"] == "stale_binding")
            || (st == 404 && v["result"] == "unknown_cpe"),
        "{st} {v}"
    );
    // The CPE binds to the next instance (what the agent does after keep-alive failures):
    // reachable through every live instance, sent by the new owner.
    cpe.keepalive(insts[2].stun);
    assert!(wait_until(WAIT, || owner(&insts[0], "moving-cpe")
        .as_deref()
        == Some("c")));
    for asked in [&insts[0], &insts[2]] {
        let (st, v) = cr(asked, "moving-cpe");
        assert_eq!((st, v["result"].as_str()), (200, Some("sent")), "{v}");
        assert_eq!(cpe.expect_cr(), insts[2].stun);
    }
    // Without keep-alives, the binding expires (TTL 3 s): unknown everywhere, bounded.
    assert!(
        wait_until(Duration::from_secs(10), || cr(&insts[0], "moving-cpe").0
            == 404),
        "the binding did not expire"
    );
}

#[test]
fn cluster_recovers_after_a_redis_restart_and_bounds_floods() {
    if no_redis().is_some() {
        return;
    }
    let rp = free_tcp();
    let mut redis_kid = redis(rp);
    let insts: Vec<Inst> = ["a", "b"].iter().map(|n| instance(n, rp, 60)).collect();
    let cpe = Cpe::new("steady-cpe");
    cpe.keepalive(insts[1].stun);
    assert!(wait_until(WAIT, || owner(&insts[0], "steady-cpe")
        .as_deref()
        == Some("b")));
    redis_kid.kill();
    let (st, v) = cr(&insts[0], "steady-cpe");
    assert_eq!(
        (st, v["result"].as_str()),
        (503, Some("registry_unavailable")),
        "{v}"
    );
    // Redis back, empty: the owner writes its bindings again, without a keep-alive.
    let _redis = redis(rp);
    assert!(
        wait_until(WAIT, || cr(&insts[0], "steady-cpe").0 == 200),
        "no recovery after the Redis restart: {}",
        cr(&insts[0], "steady-cpe").1
    );
    assert_eq!(cpe.expect_cr(), insts[1].stun);
    // A flood of idle API connections: the ones over the bound are told 503 at once.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&insts[0].api).unwrap())
        .collect();
    let (st, v) = api(&insts[0].api, "GET", "/bindings");
    assert_eq!((st, v["result"].as_str()), (503, Some("busy")), "{v}");
    drop(idle);
    assert!(
        wait_until(WAIT, || api(&insts[0].api, "GET", "/bindings").0 == 200),
        "the API did not come back after the flood"
    );
    // A burst of requests for unknown CPEs: each answered 404, the STUN side still answers.
    let t0 = Instant::now();
    for i in 0..200 {
        let (st, _) = cr(&insts[0], &format!("ghost-{i}"));
        assert_eq!(st, 404);
    }
    println!("200 unknown-CPE requests answered in {:?}", t0.elapsed());
    cpe.keepalive(insts[0].stun);
}

#[test]
fn cluster_owner_sends_its_own_cpes_crs_while_redis_is_down() {
    if no_redis().is_some() {
        return;
    }
    let rp = free_tcp();
    let mut redis_kid = redis(rp);
    let insts: Vec<Inst> = ["a", "b"].iter().map(|n| instance(n, rp, 60)).collect();
    let cpe = Cpe::new("owned-by-b");
    cpe.keepalive(insts[1].stun);
    assert!(wait_until(WAIT, || owner(&insts[0], "owned-by-b")
        .as_deref()
        == Some("b")));
    redis_kid.kill();
    // The owner sends it from its own binding, and says the registry is away.
    let (st, v) = cr(&insts[1], "owned-by-b");
    assert_eq!((st, v["result"].as_str()), (200, Some("sent")), "{v}");
    assert_eq!(v["via"], "local", "{v}");
    assert_eq!(v["registry"], "unavailable", "{v}");
    assert_eq!(v["owner"], "b", "{v}");
    assert_eq!(
        cpe.expect_cr(),
        insts[1].stun,
        "not from the owner's STUN socket"
    );
    // Another instance cannot know the owner: 503, nothing sent.
    let (st, v) = cr(&insts[0], "owned-by-b");
    assert_eq!(
        (st, v["result"].as_str()),
        (503, Some("registry_unavailable")),
        "{v}"
    );
    // Nor can the owner for a CPE it has no binding for.
    let (st, v) = cr(&insts[1], "not-here");
    assert_eq!(
        (st, v["result"].as_str()),
        (503, Some("registry_unavailable")),
        "{v}"
    );
    let mut buf = [0u8; 1500];
    assert!(
        cpe.sock.recv_from(&mut buf).is_err(),
        "a datagram came without a sent CR"
    );
    let (_, b) = api(&insts[1].api, "GET", "/bindings");
    assert_eq!(b["cluster"]["sent_locally_registry_down"], 1, "{b}");
    // Redis back (empty): the owner writes its bindings again; routed through Redis again.
    let _redis = redis(rp);
    assert!(
        wait_until(WAIT, || owner(&insts[0], "owned-by-b").as_deref()
            == Some("b")),
        "the owner did not write its binding again"
    );
    // (The owner's subscription comes back on its own backoff: until then, "stale_binding".)
    let mut last = (0, Value::Null);
    assert!(
        wait_until(WAIT, || {
            last = cr(&insts[0], "owned-by-b");
            last.0 == 200
        }),
        "not routed again after the Redis restart: {last:?}"
    );
    let v = last.1;
    assert_eq!(v["result"], "sent", "{v}");
    assert_eq!(v["via"], "redis", "{v}");
    assert!(v.get("registry").is_none(), "{v}");
    assert_eq!(cpe.expect_cr(), insts[1].stun);
}
