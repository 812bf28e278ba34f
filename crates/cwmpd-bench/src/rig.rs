//! What `cwmpd-bench cr` starts: child processes (killed by PID on drop), the network-namespace
//! topology (root only), a Prosody with a throw-away CA, and the helpers to run code inside a
//! namespace.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A background process, killed (by its own PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        let f = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .map_err(|e| format!("start {name}: {e}"))?;
        Ok(Proc {
            child,
            log,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; an early exit is an error.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            if self.text().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("{} exited with {st}: {}", self.name, self.text()));
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "{} did not say {needle:?}: {}",
                    self.name,
                    self.text()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An error when the process has exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Err(format!("{} exited with {st}: {}", self.name, self.text())),
            _ => Ok(()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // SIGCONT first in case it was stopped, then SIGKILL.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` run inside namespace `ns` (`ip netns exec` execs it, so the PID is the program's).
pub fn command_in(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `f` on a thread that first enters network namespace `ns` (None: this one).
pub fn in_ns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                enter_ns(ns)?;
            }
            Ok(f())
        })
        .join()
        .map_err(|_| "measurement thread panicked".to_string())?
    })
}

/// Moves the calling thread into network namespace `ns` (a name under /run/netns).
pub fn enter_ns(ns: &str) -> Result<(), String> {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn sh(args: &[&str]) -> Result<String, String> {
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

/// Why the namespace topology cannot be built here, or None.
pub fn netns_unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (network namespaces need root)".into());
    }
    for t in ["ip", "nft"] {
        if !have(t) {
            return Some(format!("{t} is not installed"));
        }
    }
    None
}

/// Why Prosody cannot be used here, or None.
pub fn prosody_unavailable() -> Option<String> {
    for t in ["prosody", "prosodyctl", "openssl"] {
        if !have(t) {
            return Some(format!(
                "{t} not installed (apt-get install prosody openssl)"
            ));
        }
    }
    None
}

pub const ACS_IP: &str = "10.77.2.2";
pub const GW_WAN_IP: &str = "10.77.2.1";
pub const CPE_IP: &str = "10.77.1.2";
/// The gateway's forwarded ports: 17547 → CPE:7547 (the CR listener), 17548 → CPE:7548 (the
/// floor's echo server).
pub const FWD_CR_PORT: u16 = 17547;
pub const FWD_FLOOR_PORT: u16 = 17548;

/// acs (10.77.2.2) — gw (10.77.2.1 | 10.77.1.1) — cpe (10.77.1.2). The gateway masquerades
/// what the CPE sends out (a port-restricted NAT: only established/related comes back in), and
/// lets the ACS side in to the CPE's TCP ports 7547/7548 (the CPE's routable address: "direct")
/// and through the port forwards 17547/17548 (DNAT). Removed on drop.
pub struct Topology {
    pub names: Vec<String>,
}

impl Topology {
    pub fn build() -> Result<Topology, String> {
        let pid = std::process::id();
        let mut t = Topology { names: Vec::new() };
        for role in ["acs", "gw", "cpe"] {
            let n = format!("cwb{pid}{role}");
            let _ = sh(&["ip", "netns", "del", &n]);
            sh(&["ip", "netns", "add", &n])?;
            t.names.push(n);
        }
        let (acs, gw, cpe) = (t.ns("acs"), t.ns("gw"), t.ns("cpe"));
        let short = pid % 100_000;
        let (l1, l2, w1, w2) = (
            format!("bl{short}a"),
            format!("bl{short}b"),
            format!("bw{short}a"),
            format!("bw{short}b"),
        );
        sh(&[
            "ip", "link", "add", &l1, "netns", &cpe, "type", "veth", "peer", "name", &l2, "netns",
            &gw,
        ])?;
        sh(&[
            "ip", "link", "add", &w1, "netns", &gw, "type", "veth", "peer", "name", &w2, "netns",
            &acs,
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
        nsx(
            &acs,
            &["ip", "route", "add", "10.77.1.0/24", "via", "10.77.2.1"],
        )?;
        nsx(&gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let rules = format!(
            "table ip cwbench {{\n\
             chain prerouting {{ type nat hook prerouting priority -100;\n\
              iifname \"{w1}\" tcp dport {FWD_CR_PORT} dnat to {CPE_IP}:7547\n\
              iifname \"{w1}\" tcp dport {FWD_FLOOR_PORT} dnat to {CPE_IP}:7548\n }}\n\
             chain postrouting {{ type nat hook postrouting priority 100;\n\
              oifname \"{w1}\" ip saddr 10.77.1.0/24 masquerade random\n }}\n\
             chain forward {{ type filter hook forward priority 0; policy drop;\n\
              ct state established,related accept\n\
              iifname \"{l2}\" oifname \"{w1}\" accept\n\
              ct status dnat accept\n\
              iifname \"{w1}\" ip daddr {CPE_IP} tcp dport {{ 7547, 7548 }} accept\n }}\n}}\n"
        );
        let f = std::env::temp_dir().join(format!("cwbench-{pid}.nft"));
        std::fs::write(&f, rules).map_err(|e| e.to_string())?;
        let r = nsx(&gw, &["nft", "-f", &f.to_string_lossy()]);
        let _ = std::fs::remove_file(&f);
        r?;
        Ok(t)
    }

    pub fn ns(&self, role: &str) -> String {
        self.names
            .iter()
            .find(|n| n.ends_with(role))
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn nsx(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Waits until a TCP connection to `addr` succeeds (from namespace `ns`).
pub fn wait_tcp(ns: Option<&str>, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    in_ns(ns, || {
        let t0 = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if t0.elapsed() > timeout {
                return Err(format!("nothing listens on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })?
}

pub const XMPP_DOMAIN: &str = "cpe.test";

/// Certificates and accounts of the bench's Prosody, shared by the loopback and namespace runs.
pub struct ProsodySetup {
    pub dir: PathBuf,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The accounts: the agent, the ACS, and two plain clients for the server's own IQ round trip.
pub const ACCOUNTS: [(&str, &str); 4] = [
    ("cpe1", "cpe1-pw"),
    ("acs", "acs-pw"),
    ("plain-a", "plain-a-pw"),
    ("plain-b", "plain-b-pw"),
];

impl ProsodySetup {
    /// A CA, a server certificate for [`XMPP_DOMAIN`], a data directory with [`ACCOUNTS`].
    pub fn create(dir: &Path) -> Result<ProsodySetup, String> {
        let certs = dir.join("certs");
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&certs).map_err(|e| e.to_string())?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        run(Command::new("openssl")
            .current_dir(&certs)
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=cwmpd bench ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]))?;
        std::fs::write(
            certs.join("ext.cnf"),
            format!(
                "subjectAltName=DNS:{XMPP_DOMAIN}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        run(Command::new("openssl")
            .current_dir(&certs)
            .arg("req")
            .args(ec)
            .args([
                "-keyout",
                &format!("{XMPP_DOMAIN}.key"),
                "-out",
                "server.csr",
                "-subj",
                &format!("/CN={XMPP_DOMAIN}"),
            ]))?;
        run(Command::new("openssl").current_dir(&certs).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{XMPP_DOMAIN}.crt"),
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]))?;
        let s = ProsodySetup {
            dir: dir.to_path_buf(),
        };
        let cfg = s.config("127.0.0.1", 0, "register")?;
        for (u, pw) in ACCOUNTS {
            run(Command::new("prosodyctl").arg("--config").arg(&cfg).args([
                "register",
                u,
                XMPP_DOMAIN,
                pw,
            ]))?;
        }
        Ok(s)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("certs/ca.crt")
    }

    /// Writes a configuration listening on `ip:port`; returns its path.
    fn config(&self, ip: &str, port: u16, tag: &str) -> Result<PathBuf, String> {
        let cfg = self.dir.join(format!("prosody-{tag}.cfg.lua"));
        std::fs::write(
            &cfg,
            cwmp_testacs::prosody::ProsodyConfig {
                dir: &self.dir,
                tag,
                ip,
                port,
                domain: XMPP_DOMAIN,
                log_level: "warn",
            }
            .text(),
        )
        .map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    /// Starts Prosody on `ip:port` (inside namespace `ns`) and waits until it listens.
    pub fn start(&self, ns: Option<&str>, ip: &str, port: u16, tag: &str) -> Result<Proc, String> {
        let cfg = self.config(ip, port, tag)?;
        let mut c = command_in(ns, Path::new("prosody"));
        c.arg("--config").arg(&cfg).arg("-F");
        let mut p = Proc::spawn("prosody", c, self.dir.join(format!("stdout-{tag}.log")))?;
        let addr: SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?;
        if let Err(e) = wait_tcp(ns, addr, Duration::from_secs(20)) {
            p.alive()?;
            return Err(e);
        }
        Ok(p)
    }
}

/// A free TCP (and, usually, UDP) port on `127.0.0.1` of the current namespace.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
