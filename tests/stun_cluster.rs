//! A cluster of `cwmp-connreq stun-server` instances sharing a Redis binding registry, with
//! real agents behind a real nftables NAT (network namespaces; root only): three instances on
//! three addresses of one name, three agents bound to different instances (each names the
//! cluster with a different address order); a connection request asked of any instance
//! reaches every agent; an instance killed, its agent fails over to the next address of the
//! name and is reachable through the others within a bounded time; Redis restarted, the
//! service recovers. Loopback tests of the same (bad input, floods): crates/cwmp-connreq's
//! tests/cluster.rs.

#![cfg(feature = "stun")]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::netns::Rig;
use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
/// With three addresses behind its STUN server name, an agent's keep-alive transaction gives
/// up after 7.5 s and takes the next address at once: the failover is bounded by this.
const FAILOVER_WAIT: Duration = Duration::from_secs(20);
const INSTANCES: [(&str, &str, u16); 3] = [
    ("s1", "10.77.2.2", 3501),
    ("s2", "10.77.2.3", 3502),
    ("s3", "10.77.2.4", 3503),
];

/// Runs `f` on a thread that entered namespace `ns` (so do the threads it starts).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap()
}

/// One API request to the instance whose API listens on 127.0.0.1:`port` in namespace `ns`.
fn api(ns: &str, port: u16, method: &str, target: &str) -> (u16, Value) {
    let req = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    in_ns(ns, move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return (0, Value::Null);
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    })
}

fn owner(ns: &str, port: u16, key: &str) -> Option<String> {
    let (st, v) = api(ns, port, "GET", &format!("/cpe?key={key}"));
    (st == 200).then(|| v["owner"].as_str().unwrap_or("").to_string())
}

fn cr(ns: &str, port: u16, key: &str) -> (u16, Value) {
    api(
        ns,
        port,
        "POST",
        &format!("/cr?to={key}&user=cr-user&password=cr%20pass&copies=3"),
    )
}

fn cr_count(sock: &Path) -> u64 {
    ctl(sock, &json!({"op": "status"}))
        .ok()
        .and_then(|v| v["connection_requests"].as_u64())
        .unwrap_or(0)
}

/// /etc/netns/NS/hosts (what `ip netns exec` shows the namespace as /etc/hosts), removed on
/// drop.
struct Hosts(PathBuf);

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Agent {
    dir: TempDir,
    proc_: Proc,
    key: String,
}

impl Agent {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("ctl.sock")
    }
}

fn redis(rig: &Rig, dir: &Path) -> Proc {
    let mut c = rig.command("acs", "redis-server");
    c.args([
        "--port",
        "6379",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let p = Proc::spawn(c, dir.join("redis.log"));
    let ns = rig.name("acs");
    assert!(
        wait_until(WAIT, || in_ns(&ns, || std::net::TcpStream::connect(
            "127.0.0.1:6379"
        )
        .is_ok())),
        "redis did not start: {}",
        p.text()
    );
    p
}

fn instance(rig: &Rig, dir: &Path, (id, ip, api_port): (&str, &str, u16)) -> Proc {
    let mut c = rig.command("acs", &connreq_path());
    c.args([
        "stun-server",
        "--listen",
        &format!("{ip}:3478"),
        "--api",
        &format!("127.0.0.1:{api_port}"),
        "--user",
        "*",
        "--password",
        "stun pw",
        "--redis",
        "redis://127.0.0.1:6379",
        "--instance-id",
        id,
        "--binding-ttl",
        "5",
        "--max-seconds",
        "600",
    ]);
    let p = Proc::spawn(c, dir.join(format!("{id}.log")));
    let ns = rig.name("acs");
    assert!(
        wait_until(WAIT, || api(&ns, api_port, "GET", "/bindings").0 == 200),
        "instance {id} did not start: {}",
        p.text()
    );
    p
}

fn agent(rig: &Rig, acs_url: &str, i: usize) -> Agent {
    let dir = TempDir::new(&format!("stun-cluster-agent{i}"));
    let key = format!("stb-{i}");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"10.77.1.2:{port}\"\nrate_burst = 100\nrate_per_minute = 600\n[parameters]\n\"Device.ManagementServer.URL\" = \"{acs_url}\"\n\"Device.ManagementServer.ConnectionRequestUsername\" = \"cr-user\"\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"cr pass\"\n\"Device.ManagementServer.STUNEnable\" = \"true\"\n\"Device.ManagementServer.STUNServerAddress\" = \"stun{i}.cluster.test\"\n\"Device.ManagementServer.STUNServerPort\" = \"3478\"\n\"Device.ManagementServer.STUNUsername\" = \"{key}\"\n\"Device.ManagementServer.STUNPassword\" = \"stun pw\"\n\"Device.ManagementServer.STUNMinimumKeepAlivePeriod\" = \"1\"\n\"Device.ManagementServer.STUNMaximumKeepAlivePeriod\" = \"1\"\n",
            port = 7547 + i
        ),
    );
    let mut c = rig.command("cpe", env!("CARGO_BIN_EXE_cwmpd"));
    c.args(["run", "-c"]).arg(&cfg);
    let proc_ = Proc::spawn(c, dir.path().join("agent.log"));
    let a = Agent { dir, proc_, key };
    assert!(
        wait_until(WAIT, || std::os::unix::net::UnixStream::connect(a.sock())
            .is_ok()),
        "agent {i} did not start: {}",
        a.proc_.text()
    );
    a
}

/// A CR asked of instance `via` reaches agent `a` (its CR counter moves).
fn reaches(ns: &str, via: (&str, &str, u16), a: &Agent) -> Result<(), String> {
    let n0 = cr_count(&a.sock());
    let (st, v) = cr(ns, via.2, &a.key);
    if st != 200 || v["result"] != "sent" {
        return Err(format!("via {}: {st} {v}", via.0));
    }
    if !wait_until(WAIT, || cr_count(&a.sock()) > n0) {
        return Err(format!("via {}: sent ({v}) but not received", via.0));
    }
    Ok(())
}

#[test]
fn netns_cluster_cr_via_any_instance_failover_and_redis_restart() {
    if let Some(why) = common::netns::unavailable()
        .or_else(|| common::netns::missing(&[("redis-server", "--version")]))
    {
        common::skip("(stun cluster in network namespaces)", &why);
        return;
    }
    let d = TempDir::new("stun-cluster");
    let t_start = Instant::now();
    let rig = Rig::new("cwsc", &["acs", "gw", "cpe"]);
    rig.link("cpe", "10.77.1.2/24", "gw", "10.77.1.1/24");
    rig.link("gw", "10.77.2.1/24", "acs", "10.77.2.2/24");
    rig.exec("acs", "ip addr add 10.77.2.3/24 dev v-gw");
    rig.exec("acs", "ip addr add 10.77.2.4/24 dev v-gw");
    rig.exec("cpe", "ip route add default via 10.77.1.1");
    rig.nat_gateway("gw", "v-acs", &[]);
    let acs_ns = rig.name("acs");
    // Agent i names the cluster with the addresses in an order starting at instance i.
    let hosts_dir = PathBuf::from(format!("/etc/netns/{}", rig.name("cpe")));
    std::fs::create_dir_all(&hosts_dir).unwrap();
    let _hosts = Hosts(hosts_dir.clone());
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for i in 0..3 {
        for k in 0..3 {
            hosts += &format!("{} stun{i}.cluster.test\n", INSTANCES[(i + k) % 3].1);
        }
    }
    std::fs::write(hosts_dir.join("hosts"), hosts).unwrap();

    println!("{:?}: rig up", t_start.elapsed());
    let mut redis_p = redis(&rig, d.path());
    let mut insts: Vec<Proc> = INSTANCES
        .iter()
        .map(|i| instance(&rig, d.path(), *i))
        .collect();
    let acs_addr: SocketAddr = "10.77.2.2:0".parse().unwrap();
    let acs = in_ns(&acs_ns, move || {
        cwmp_testacs::try_spawn_in_thread(acs_addr, cwmp_testacs::AcsOptions::default())
            .expect("test ACS")
    });
    println!("{:?}: redis, instances and ACS up", t_start.elapsed());
    let agents: Vec<Agent> = (0..3).map(|i| agent(&rig, &acs.url(), i)).collect();
    println!("{:?}: agents started", t_start.elapsed());

    // Each agent is bound to "its" instance, through the NAT.
    for (i, a) in agents.iter().enumerate() {
        assert!(
            wait_until(WAIT, || owner(&acs_ns, 3501, &a.key).as_deref()
                == Some(INSTANCES[i].0)),
            "{} not bound to {}: {:?} {}",
            a.key,
            INSTANCES[i].0,
            owner(&acs_ns, 3501, &a.key),
            a.proc_.text()
        );
    }
    let (_, v) = api(&acs_ns, 3501, "GET", &format!("/cpe?key={}", agents[0].key));
    assert!(
        v["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.77.2.1:")),
        "not seen through the NAT: {v}"
    );
    println!("{:?}: agents bound", t_start.elapsed());
    // A CR asked of each instance reaches every agent.
    for via in INSTANCES {
        for a in &agents {
            reaches(&acs_ns, via, a).unwrap_or_else(|e| panic!("{e}: {}", a.proc_.text()));
        }
    }

    println!(
        "{:?}: 9 CRs through 3 instances received",
        t_start.elapsed()
    );
    // Instance s2 killed: its agent fails over to the next address (s3) and is reachable
    // through the live instances; the others are not disturbed.
    insts[1].child.kill().unwrap();
    let _ = insts[1].child.wait();
    let t0 = Instant::now();
    assert!(
        wait_until(FAILOVER_WAIT, || owner(&acs_ns, 3501, &agents[1].key)
            .as_deref()
            == Some("s3")),
        "{} did not fail over to s3: {:?} {}",
        agents[1].key,
        owner(&acs_ns, 3501, &agents[1].key),
        agents[1].proc_.text()
    );
    println!(
        "failover: {} re-bound to s3 in {:?}",
        agents[1].key,
        t0.elapsed()
    );
    for via in [INSTANCES[0], INSTANCES[2]] {
        for a in &agents {
            reaches(&acs_ns, via, a).unwrap_or_else(|e| panic!("{e}: {}", a.proc_.text()));
        }
    }

    // Redis restarted (empty): the instances write their bindings again and connection
    // requests go through once more.
    redis_p.child.kill().unwrap();
    let _ = redis_p.child.wait();
    // Meanwhile the owner still sends its own box's CR; another instance cannot route it.
    let (st, v) = cr(&acs_ns, 3501, &agents[0].key);
    assert_eq!((st, v["via"].as_str()), (200, Some("local")), "{v}");
    let (st, v) = cr(&acs_ns, 3503, &agents[0].key);
    assert_eq!(st, 503, "{v}");
    redis_p = redis(&rig, d.path());
    let t0 = Instant::now();
    for a in &agents {
        assert!(
            wait_until(WAIT, || reaches(&acs_ns, INSTANCES[2], a).is_ok()),
            "no recovery after the Redis restart: {:?}",
            reaches(&acs_ns, INSTANCES[2], a)
        );
    }
    println!(
        "after the Redis restart: all reachable in {:?}",
        t0.elapsed()
    );
    drop(agents);
    insts.clear();
    drop(redis_p);
    acs.stop();
}
