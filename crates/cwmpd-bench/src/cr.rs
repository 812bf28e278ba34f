//! `cwmpd-bench cr`: connection-request latency for every mechanism, against the release agent,
//! the project's test ACS (in this process), `cwmp-connreq stun-server` and Prosody; on
//! loopback, and (as root) through a namespace topology with a NAT gateway. The CRs are sent
//! from this process (no process spawn in the measured path).
//!
//! Per mechanism: authentication time, CR → Inform ("6 CONNECTION REQUEST" at the ACS), and a
//! channel-change analogue (CR → session → SetParameterValues of the STBService channel → the
//! middleware, a provider program, sees the value → session end). References measured on the
//! same paths: bare TCP connect + request/response, bare UDP round trip, and Prosody's IQ round
//! trip between two plain clients. Then the footprint.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cwmp_testacs::{AcsOptions, TestAcsHandle, try_spawn_in_netns, try_spawn_in_thread};
use cwmpd::connreq::digest::DigestClient;
use cwmpd::cwmp::soap::{AcsRequest, ParamValue};
use serde_json::{Value, json};

use crate::report::{Foot, Report, Row, Stats};
use crate::rig::{self, Proc, ProsodySetup, Topology};

const USER: &str = "bench-acs";
const PASS: &str = "bench cr pass";
const CHANNEL: &str = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";
const XMPP_STATUS: &str = "Device.XMPP.Connection.1.Status";
const UDP_ADDR: &str = "Device.ManagementServer.UDPConnectionRequestAddress";
const CR_URL: &str = "Device.ManagementServer.ConnectionRequestURL";
const WAIT: Duration = Duration::from_secs(20);
/// STUN keep-alive period and XMPP keep-alive interval of the benchmarked agent, seconds.
const STUN_KEEPALIVE: u32 = 20;
const XMPP_KEEPALIVE: u32 = 30;

pub struct Opts {
    pub runs: usize,
    pub idle_seconds: f64,
    pub out: PathBuf,
    /// Skip the namespace topology even as root.
    pub no_netns: bool,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            runs: 200,
            idle_seconds: 60.0,
            out: PathBuf::from("results"),
            no_netns: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--runs" => {
                    o.runs = val("--runs")?
                        .parse()
                        .map_err(|_| "bad --runs".to_string())?
                }
                "--idle-seconds" => {
                    o.idle_seconds = val("--idle-seconds")?
                        .parse()
                        .map_err(|_| "bad --idle-seconds".to_string())?
                }
                "--out" => o.out = PathBuf::from(val("--out")?),
                "--no-netns" => o.no_netns = true,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if o.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        Ok(o)
    }

    fn warmup(&self) -> usize {
        (self.runs / 10).clamp(2, 20)
    }
}

// ---------------------------------------------------------------------------------------------
// The middleware side: a provider program (this binary) that reports every set over a socket
// ---------------------------------------------------------------------------------------------

/// `cwmpd-bench provider-relay SOCKET`: a provider (JSON lines on stdin/stdout) that keeps the
/// values it is given and sends `path=value` to the Unix datagram socket for every set.
pub fn provider_relay(sock: &str) -> Result<(), String> {
    let out = UnixDatagram::unbound().map_err(|e| e.to_string())?;
    let mut values = serde_json::Map::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Ok(req) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let resp = match req.get("op").and_then(Value::as_str) {
            Some("get") => {
                let mut v = serde_json::Map::new();
                for p in req["paths"].as_array().into_iter().flatten() {
                    if let Some(val) = p.as_str().and_then(|p| values.get(p)) {
                        v.insert(p.as_str().unwrap_or("").to_string(), val.clone());
                    }
                }
                json!({"id": id, "values": v})
            }
            Some("set") => {
                if let Some(m) = req["values"].as_object() {
                    for (k, v) in m {
                        let _ = out
                            .send_to(format!("{k}={}", v.as_str().unwrap_or("")).as_bytes(), sock);
                        values.insert(k.clone(), v.clone());
                    }
                }
                json!({"id": id, "ok": true})
            }
            _ => json!({"id": id, "ok": true}),
        };
        if writeln!(stdout, "{resp}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// Receives the relay's reports: (value, when it arrived).
fn relay_listener(path: &Path) -> Result<mpsc::Receiver<(String, Instant)>, String> {
    let _ = std::fs::remove_file(path);
    let s = UnixDatagram::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.recv(&mut buf) {
            let at = Instant::now();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let value = text.split_once('=').map(|(_, v)| v.to_string());
            if tx.send((value.unwrap_or_default(), at)).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

// ---------------------------------------------------------------------------------------------
// One environment (loopback or the namespace topology) with the agent running
// ---------------------------------------------------------------------------------------------

pub(crate) struct XmppTarget {
    host: String,
    port: u16,
    ca: PathBuf,
}

pub(crate) struct Env {
    mode: &'static str,
    acs_ns: Option<String>,
    cpe_ns: Option<String>,
    acs: TestAcsHandle,
    pub(crate) agent: Proc,
    sock: PathBuf,
    http_url: String,
    fwd_url: Option<String>,
    pub(crate) stun_api: SocketAddr,
    pub(crate) xmpp: Result<XmppTarget, String>,
    relay: mpsc::Receiver<(String, Instant)>,
    floor_tcp: SocketAddr,
    floor_tcp_fwd: Option<SocketAddr>,
    floor_udp: SocketAddr,
    sessions_ok: u64,
    _procs: Vec<Proc>,
}

fn ctl(sock: &Path, req: Value) -> Result<Value, String> {
    cwmpd::ctl::request(sock, &req).map_err(|e| format!("control socket: {e}"))
}

fn ctl_get(sock: &Path, name: &str) -> Result<String, String> {
    let v = ctl(sock, json!({"op": "get", "names": [name]}))?;
    Ok(v["values"][0]["value"].as_str().unwrap_or("").to_string())
}

fn wait_value(
    env_agent: &mut Proc,
    sock: &Path,
    name: &str,
    pred: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let t0 = Instant::now();
    loop {
        let v = ctl_get(sock, name)?;
        if pred(&v) {
            return Ok(v);
        }
        env_agent.alive()?;
        if t0.elapsed() > WAIT {
            return Err(format!(
                "{name} stayed {v:?}; agent log: {}",
                env_agent.text()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The environment's addresses.
pub(crate) struct Layout {
    pub(crate) mode: &'static str,
    pub(crate) acs_ns: Option<String>,
    pub(crate) cpe_ns: Option<String>,
    /// Where the ACS-side services listen.
    pub(crate) acs_ip: &'static str,
    /// The agent's HTTP and UDP listen addresses.
    pub(crate) http_listen: String,
    pub(crate) udp_listen: String,
    pub(crate) public_url: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn start_env(
    lay: Layout,
    dir: &Path,
    agent_bin: &Path,
    connreq_bin: &Path,
    prosody: &Result<ProsodySetup, String>,
) -> Result<Env, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let acs_ns = lay.acs_ns.as_deref();
    let mut procs = Vec::new();
    // The test ACS.
    let acs_addr: SocketAddr = format!("{}:0", lay.acs_ip).parse().map_err(|_| "addr")?;
    let acs = match acs_ns {
        Some(ns) => try_spawn_in_netns(ns, acs_addr, AcsOptions::default()),
        None => try_spawn_in_thread(acs_addr, AcsOptions::default()),
    }
    .map_err(|e| format!("test ACS: {e}"))?;
    // The STUN server with its loopback API (in the ACS namespace).
    let (stun_port, api_port) = if acs_ns.is_some() {
        (3478, 3479)
    } else {
        (rig::free_udp_port(), rig::free_port())
    };
    let stun_api: SocketAddr = format!("127.0.0.1:{api_port}")
        .parse()
        .map_err(|_| "addr")?;
    let mut c = rig::command_in(acs_ns, connreq_bin);
    c.args([
        "stun-server",
        "--listen",
        &format!("{}:{stun_port}", lay.acs_ip),
        "--api",
        &stun_api.to_string(),
    ]);
    let mut stun = Proc::spawn("stun-server", c, dir.join("stun-server.log"))?;
    stun.wait_for("stun listening", WAIT)?;
    procs.push(stun);
    // Prosody.
    let xmpp = match prosody {
        Ok(p) => {
            let port = if acs_ns.is_some() {
                5222
            } else {
                rig::free_port()
            };
            match p.start(acs_ns, lay.acs_ip, port, lay.mode) {
                Ok(proc_) => {
                    procs.push(proc_);
                    Ok(XmppTarget {
                        host: lay.acs_ip.to_string(),
                        port,
                        ca: p.ca(),
                    })
                }
                Err(e) => Err(format!("prosody did not start: {e}")),
            }
        }
        Err(e) => Err(e.clone()),
    };
    // The middleware side.
    let relay_sock = dir.join("relay.sock");
    let relay = relay_listener(&relay_sock)?;
    let bench = std::env::current_exe().map_err(|e| e.to_string())?;
    // The agent's configuration: all four mechanisms.
    let mut cfg = format!(
        r#"[agent]
state_dir = "{d}/state"
datamodel = ["{m}"]
control_socket = "{d}/ctl.sock"
log_level = "warn"
poll_interval = 3600
[connreq]
http_listen = ["{http}"]
udp_listen = "{udp}"
rate_per_minute = 1000000
rate_burst = 100000
{public}
"#,
        d = dir.display(),
        m = cwmp_testacs::datamodel_dir().display(),
        http = lay.http_listen,
        udp = lay.udp_listen,
        public = lay
            .public_url
            .as_ref()
            .map(|u| format!("public_url = \"{u}\""))
            .unwrap_or_default(),
    );
    if let Ok(x) = &xmpp {
        cfg.push_str(&format!("[xmpp]\nca_file = \"{}\"\n", x.ca.display()));
    }
    cfg.push_str(&format!(
        r#"[[provider]]
prefix = "Device.Services.STBService.1.Components.FrontEnd."
command = ["{bench}", "provider-relay", "{relay}"]
[parameters]
"Device.ManagementServer.URL" = "{acs}"
"Device.ManagementServer.ConnectionRequestUsername" = "{USER}"
"Device.ManagementServer.ConnectionRequestPassword" = "{PASS}"
"Device.DeviceInfo.ManufacturerOUI" = "00D09E"
"Device.DeviceInfo.ProductClass" = "STB"
"Device.DeviceInfo.SerialNumber" = "BENCH0001"
"Device.ManagementServer.STUNEnable" = "true"
"Device.ManagementServer.STUNServerAddress" = "{acs_ip}"
"Device.ManagementServer.STUNServerPort" = "{stun_port}"
"Device.ManagementServer.STUNMinimumKeepAlivePeriod" = "{STUN_KEEPALIVE}"
"Device.ManagementServer.STUNMaximumKeepAlivePeriod" = "{STUN_KEEPALIVE}"
"{CHANNEL}" = ""
"#,
        bench = bench.display(),
        relay = relay_sock.display(),
        acs = acs.url(),
        acs_ip = lay.acs_ip,
    ));
    if let Ok(x) = &xmpp {
        cfg.push_str(&format!(
            r#""Device.ManagementServer.ConnReqXMPPConnection" = "Device.XMPP.Connection.1"
"Device.ManagementServer.ConnReqAllowedJabberIDs" = "acs@{dom}"
"Device.XMPP.Connection.1.Enable" = true
"Device.XMPP.Connection.1.Username" = "cpe1"
"Device.XMPP.Connection.1.Password" = "cpe1-pw"
"Device.XMPP.Connection.1.Domain" = "{dom}"
"Device.XMPP.Connection.1.Resource" = "cwmp"
"Device.XMPP.Connection.1.UseTLS" = true
"Device.XMPP.Connection.1.ServerConnectAlgorithm" = "ServerTable"
"Device.XMPP.Connection.1.KeepAliveInterval" = {XMPP_KEEPALIVE}
"Device.XMPP.Connection.1.Server.1.Enable" = true
"Device.XMPP.Connection.1.Server.1.ServerAddress" = "{host}"
"Device.XMPP.Connection.1.Server.1.Port" = {port}
"#,
            dom = rig::XMPP_DOMAIN,
            host = x.host,
            port = x.port,
        ));
    }
    let cfg_path = dir.join("cwmpd.toml");
    std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
    let sock = dir.join("ctl.sock");
    let _ = std::fs::remove_file(&sock);
    let mut c = rig::command_in(lay.cpe_ns.as_deref(), agent_bin);
    c.args(["run", "-c"]).arg(&cfg_path);
    let mut agent = Proc::spawn("cwmpd", c, dir.join("agent.log"))?;
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        agent.alive()?;
        if t0.elapsed() > WAIT {
            return Err(format!("the agent did not start: {}", agent.text()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Up: the boot session done, a CR URL, the STUN binding, the XMPP connection.
    if acs.wait_ended(1, WAIT) < 1 {
        return Err(format!("no boot session: {}", agent.text()));
    }
    let url = wait_value(&mut agent, &sock, CR_URL, |v| v.starts_with("http://"))?;
    let (http_url, fwd_url) = match &lay.public_url {
        Some(p) => {
            let path = url.strip_prefix(p.trim_end_matches('/')).unwrap_or("/");
            (
                format!("http://{}:7547{path}", rig::CPE_IP),
                Some(url.clone()),
            )
        }
        None => (url, None),
    };
    let nat = lay.cpe_ns.is_some();
    let udp_want = lay.udp_listen.clone();
    wait_value(&mut agent, &sock, UDP_ADDR, |v| {
        if nat {
            v.starts_with(&format!("{}:", rig::GW_WAN_IP))
        } else {
            v == udp_want
        }
    })?;
    if xmpp.is_ok() {
        wait_value(&mut agent, &sock, XMPP_STATUS, |v| v == "Enabled")?;
    }
    // The floor's servers: TCP request/response next to the agent, UDP echo on the ACS side.
    let (floor_tcp, floor_tcp_fwd) = match lay.cpe_ns.as_deref() {
        Some(ns) => {
            let a: SocketAddr = format!("{}:7548", rig::CPE_IP).parse().map_err(|_| "a")?;
            tcp_echo(Some(ns), a)?;
            let f: SocketAddr = format!("{}:{}", rig::GW_WAN_IP, rig::FWD_FLOOR_PORT)
                .parse()
                .map_err(|_| "a")?;
            (a, Some(f))
        }
        None => (
            tcp_echo(None, "127.0.0.1:0".parse().map_err(|_| "a")?)?,
            None,
        ),
    };
    let floor_udp = udp_echo(
        acs_ns,
        format!("{}:0", lay.acs_ip).parse().map_err(|_| "a")?,
    )?;
    let st = ctl(&sock, json!({"op": "status"}))?;
    Ok(Env {
        mode: lay.mode,
        acs_ns: lay.acs_ns,
        cpe_ns: lay.cpe_ns,
        acs,
        agent,
        sock,
        http_url,
        fwd_url,
        stun_api,
        xmpp,
        relay,
        floor_tcp,
        floor_tcp_fwd,
        floor_udp,
        sessions_ok: st["sessions_ok"].as_u64().unwrap_or(0),
        _procs: procs,
    })
}

/// A TCP server answering one line with one line, per connection (in namespace `ns`).
fn tcp_echo(ns: Option<&str>, addr: SocketAddr) -> Result<SocketAddr, String> {
    let ns = ns.map(str::to_string);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Some(ns) = &ns
            && let Err(e) = rig::enter_ns(ns)
        {
            let _ = tx.send(Err(e));
            return;
        }
        let l = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(format!("bind {addr}: {e}")));
                return;
            }
        };
        let _ = tx.send(l.local_addr().map_err(|e| e.to_string()));
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let _ = s.set_nodelay(true);
            let mut r = BufReader::new(&s);
            let mut line = String::new();
            if r.read_line(&mut line).is_ok() {
                let _ = (&s).write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            }
        }
    });
    rx.recv().map_err(|_| "floor server died".to_string())?
}

/// A UDP echo server (in namespace `ns`).
fn udp_echo(ns: Option<&str>, addr: SocketAddr) -> Result<SocketAddr, String> {
    let ns = ns.map(str::to_string);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Some(ns) = &ns
            && let Err(e) = rig::enter_ns(ns)
        {
            let _ = tx.send(Err(e));
            return;
        }
        let s = match UdpSocket::bind(addr) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(format!("bind {addr}: {e}")));
                return;
            }
        };
        let _ = tx.send(s.local_addr().map_err(|e| e.to_string()));
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    rx.recv().map_err(|_| "floor server died".to_string())?
}

// ---------------------------------------------------------------------------------------------
// Senders (the ACS side, in this process)
// ---------------------------------------------------------------------------------------------

/// One HTTP connection request with Digest on one connection: returns the time from the
/// connect (the first byte the ACS sends, its SYN) to the 200/204.
fn http_cr(url: &str) -> Result<(Instant, Duration), String> {
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority.parse().map_err(|_| format!("bad URL {url}"))?;
    let t0 = Instant::now();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(&s);
    let get = |auth: Option<&str>| {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        (&s).write_all(req.as_bytes())
            .map_err(|e| format!("send: {e}"))
    };
    get(None)?;
    let (status, challenge) = read_response(&mut r)?;
    if status != 401 {
        return Err(format!("first GET got {status}, expected 401"));
    }
    let ch = challenge.ok_or("401 without WWW-Authenticate")?;
    let auth = DigestClient::respond(&ch, "GET", path, USER, PASS, "0a4f113b", 1)
        .map_err(|e| format!("challenge {ch:?}: {e}"))?;
    get(Some(&auth))?;
    let (mut status, ch2) = read_response(&mut r)?;
    // A stale nonce (the agent's replay table evicted one of this second): answer the fresh
    // challenge, as an ACS does.
    if let Some(ch2) =
        ch2.filter(|c| status == 401 && c.to_ascii_lowercase().contains("stale=true"))
    {
        let auth = DigestClient::respond(&ch2, "GET", path, USER, PASS, "0a4f113c", 1)
            .map_err(|e| format!("challenge {ch2:?}: {e}"))?;
        get(Some(&auth))?;
        status = read_response(&mut r)?.0;
    }
    let t = t0.elapsed();
    if status != 200 && status != 204 {
        return Err(format!("authenticated GET got {status}"));
    }
    Ok((t0, t))
}

/// Reads a response head and skips its body; returns the status and WWW-Authenticate.
fn read_response(r: &mut impl BufRead) -> Result<(u16, Option<String>), String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut len, mut challenge) = (0usize, None);
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            } else if n.eq_ignore_ascii_case("www-authenticate") {
                challenge = Some(v.trim().to_string());
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
    Ok((status, challenge))
}

/// Paces UDP CRs: the agent accepts at most 16 per timestamp second (TR-111 replay rule).
struct UdpPacer {
    second: u64,
    count: u32,
}

impl UdpPacer {
    fn wait(&mut self) {
        let now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
        };
        let mut t = now();
        if t.as_secs() == self.second && self.count >= 12 {
            let next = Duration::from_secs(t.as_secs() + 1);
            std::thread::sleep(next - t + Duration::from_millis(5));
            t = now();
        }
        if t.as_secs() != self.second {
            self.second = t.as_secs();
            self.count = 0;
        }
        self.count += 1;
    }
}

/// Asks the STUN server (its loopback API) to send a UDP CR from its STUN socket to the last
/// binding; returns when the request to the API started.
fn udp_cr_via_api(api: SocketAddr) -> Result<Instant, String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(api).map_err(|e| format!("connect {api}: {e}"))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let q = |v: &str| {
        v.replace('%', "%25")
            .replace(' ', "%20")
            .replace('&', "%26")
    };
    write!(
        s,
        "POST /cr?to=last&user={}&password={}&copies=3 HTTP/1.1\r\nHost: {api}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        q(USER),
        q(PASS)
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(format!("STUN server API: {out}"));
    }
    Ok(t0)
}

/// The XMPP side of the ACS: a logged-in client on its own current-thread runtime.
struct XmppAcs {
    rt: tokio::runtime::Runtime,
    conn: Option<cwmpd::connreq::xmpp::Connection>,
    n: u64,
}

fn xmpp_login(t: &XmppTarget, user: &str, pw: &str, resource: &str) -> Result<XmppAcs, String> {
    use cwmpd::connreq::xmpp::{self, ConnectParams, Jid, Target};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = xmpp::tls_config(Some(&t.ca))?;
    let params = ConnectParams {
        jid: Jid::new(&format!("{user}@{}", rig::XMPP_DOMAIN)).map_err(|e| e.to_string())?,
        password: pw.to_string(),
        resource: Some(resource.to_string()),
        target: Target::Host(t.host.clone(), t.port),
        require_tls: true,
        tls,
        keepalive: Duration::from_secs(300),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let conn = rt.block_on(async {
        tokio::time::timeout(WAIT, xmpp::connect(&params))
            .await
            .map_err(|_| "XMPP login timed out".to_string())?
            .map_err(|e| format!("XMPP login as {user}: {e}"))
    })?;
    Ok(XmppAcs {
        rt,
        conn: Some(conn),
        n: 0,
    })
}

impl XmppAcs {
    /// Sends an IQ get with `payload` to `to` and waits for its result: (sent at, round trip).
    fn iq(
        &mut self,
        to: &str,
        payload: cwmpd::connreq::xmpp::Element,
    ) -> Result<(Instant, Duration), String> {
        use cwmpd::connreq::xmpp::{Jid, Received, wire};
        self.n += 1;
        let id = format!("bench-{}", self.n);
        let to = Jid::new(to).map_err(|e| e.to_string())?.to_string();
        let conn = self.conn.as_mut().ok_or("no XMPP connection")?;
        self.rt.block_on(async {
            let iq = wire::iq_request("get", &id, Some(&to), payload);
            let t0 = Instant::now();
            conn.send(&iq).await.map_err(|e| format!("send: {e}"))?;
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match conn.recv().await {
                        Received::Stanza(st)
                            if st.is("iq", wire::NS_CLIENT)
                                && st.attr("id") == Some(id.as_str()) =>
                        {
                            match st.attr("type") {
                                Some("result") => return Ok(t0.elapsed()),
                                Some("error") => {
                                    return Err(format!(
                                        "IQ error {}",
                                        wire::error_condition(&st).unwrap_or("(no condition)")
                                    ));
                                }
                                _ => {}
                            }
                        }
                        Received::Closed(why) => return Err(format!("XMPP closed: {why}")),
                        _ => {}
                    }
                }
            })
            .await
            .map_err(|_| "no IQ answer within 10 s".to_string())??;
            Ok((t0, r))
        })
    }

    fn close(mut self) {
        if let Some(c) = self.conn.take() {
            self.rt.block_on(c.close());
        }
    }
}

/// A plain client answering every IQ get with an empty result, until `stop` is dropped.
fn xmpp_responder(
    ns: Option<String>,
    t: &XmppTarget,
) -> Result<
    (
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ),
    String,
> {
    let target = XmppTarget {
        host: t.host.clone(),
        port: t.port,
        ca: t.ca.clone(),
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let h = std::thread::spawn(move || {
        use cwmpd::connreq::xmpp::{Received, wire};
        if let Some(ns) = &ns
            && let Err(e) = rig::enter_ns(ns)
        {
            let _ = ready_tx.send(Err(e));
            return;
        }
        let mut c = match xmpp_login(&target, "plain-b", "plain-b-pw", "b") {
            Ok(c) => c,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let Some(mut conn) = c.conn.take() else {
            return;
        };
        c.rt.block_on(async {
            loop {
                let r = tokio::select! {
                    r = conn.recv() => r,
                    _ = &mut stop_rx => break,
                };
                match r {
                    Received::Stanza(st) => {
                        if st.is("iq", wire::NS_CLIENT)
                            && st.attr("type") == Some("get")
                            && let Some(id) = st.attr("id")
                        {
                            let res = wire::iq_result(id, st.attr("from"));
                            if conn.send(&res).await.is_err() {
                                break;
                            }
                        }
                    }
                    Received::Closed(_) => break,
                    _ => {}
                }
            }
            conn.close().await;
        });
    });
    ready_rx
        .recv()
        .map_err(|_| "XMPP responder died".to_string())??;
    Ok((h, stop_tx))
}

// ---------------------------------------------------------------------------------------------
// Measurement loops
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Samples {
    auth: Vec<Duration>,
    cr_inform: Vec<Duration>,
    chan_mw: Vec<Duration>,
    chan_end: Vec<Duration>,
}

/// What one CR gave: when its first byte left, and the authentication time when the sender
/// knows it.
type Sent = (Instant, Option<Duration>);

impl Env {
    /// Waits until the agent has counted the end of the session (ready for the next CR);
    /// returns its status.
    fn settle(&mut self) -> Result<Value, String> {
        self.sessions_ok += 1;
        let t0 = Instant::now();
        loop {
            let st = ctl(&self.sock, json!({"op": "status"}))?;
            if st["sessions_ok"].as_u64().unwrap_or(0) >= self.sessions_ok {
                return Ok(st);
            }
            if t0.elapsed() > WAIT {
                return Err(format!("the agent did not finish its session: {st}"));
            }
            std::thread::sleep(Duration::from_micros(300));
        }
    }

    /// `runs` measured CRs after `warmup`; with `channel`, each session carries the SPV.
    fn measure(
        &mut self,
        runs: usize,
        warmup: usize,
        channel: bool,
        mech: &str,
        send: &mut dyn FnMut() -> Result<Sent, String>,
    ) -> Result<Samples, String> {
        let mut out = Samples::default();
        for k in 0..warmup + runs {
            let value = format!("{mech}-{}-{k}", if channel { "chan" } else { "cr" });
            if channel {
                while self.relay.try_recv().is_ok() {}
                self.acs.queue(vec![AcsRequest::SetParameterValues {
                    list: vec![ParamValue {
                        name: CHANNEL.into(),
                        value: value.clone(),
                        xsi_type: Some("xsd:string".into()),
                    }],
                    parameter_key: value.clone(),
                }]);
            }
            let n0 = self.acs.session_count();
            let (t0, auth) = send()?;
            if self.acs.wait_ended(n0 + 1, WAIT) < n0 + 1 {
                self.agent.alive()?;
                return Err(format!(
                    "{mech}: no session after the CR (run {k}); agent log: {}",
                    self.agent.text()
                ));
            }
            let s = self.acs.session(n0).ok_or("session missing")?;
            let is_cr = s.inform.as_ref().is_some_and(|i| {
                i.events
                    .iter()
                    .any(|e| e.event_code == "6 CONNECTION REQUEST")
            });
            if !is_cr || !s.succeeded() {
                return Err(format!(
                    "{mech}: session {n0} is not a successful CR session: {:?}",
                    s.errors
                ));
            }
            let (Some(inform_at), Some(end)) = (s.inform_at, s.ended_at) else {
                return Err("session without Inform time".into());
            };
            let st = self.settle()?;
            let auth = match auth {
                Some(a) => Some(a),
                None => {
                    if st["last_cr_mechanism"] != "udp" {
                        return Err(format!("{mech}: the agent's last CR was not UDP: {st}"));
                    }
                    st["last_cr_latency_us"].as_u64().map(Duration::from_micros)
                }
            };
            let mw = if channel {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.relay.recv_timeout(left) {
                        Ok((v, at)) if v == value => break Some(at),
                        Ok(_) => {}
                        Err(_) => {
                            return Err(format!("{mech}: the middleware never saw {value:?}"));
                        }
                    }
                }
            } else {
                None
            };
            if k < warmup {
                continue;
            }
            if channel {
                out.chan_end.push(end - t0);
                if let Some(at) = mw {
                    out.chan_mw.push(at - t0);
                }
            } else {
                out.cr_inform.push(inform_at - t0);
                if let Some(a) = auth {
                    out.auth.push(a);
                }
            }
        }
        Ok(out)
    }
}

fn floor_tcp(addr: SocketAddr, n: usize) -> Result<Vec<Duration>, String> {
    let mut v = Vec::new();
    for k in 0..n + 5 {
        let t0 = Instant::now();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        (&s).write_all(b"GET / HTTP/1.1\r\n")
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(&s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if k >= 5 {
            v.push(t0.elapsed());
        }
    }
    Ok(v)
}

fn floor_udp(to: SocketAddr, n: usize) -> Result<Vec<Duration>, String> {
    let bind = if to.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    };
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut v = Vec::new();
    let mut buf = [0u8; 512];
    let msg = [b'x'; 200];
    for k in 0..n + 5 {
        let t0 = Instant::now();
        s.send_to(&msg, to).map_err(|e| e.to_string())?;
        s.recv(&mut buf).map_err(|e| format!("UDP echo: {e}"))?;
        if k >= 5 {
            v.push(t0.elapsed());
        }
    }
    Ok(v)
}

struct ModeResult {
    rows: Vec<Row>,
    /// Agent figures at idle (loopback only): RSS kB, threads, CPU %, notes.
    idle: Option<IdleFigures>,
}

struct IdleFigures {
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    threads: u64,
    cpu_percent: f64,
    stun_requests: u64,
}

const HTTP_D: &str = "HTTP CR direct";
const HTTP_F: &str = "HTTP CR port forward";
const UDP: &str = "UDP CR via STUN";
const XMPP: &str = "XMPP CR";

fn paper(mech: &str, measure: &str) -> Option<&'static str> {
    match (mech, measure) {
        (HTTP_D | HTTP_F, "auth") => Some("~50 ms"),
        (HTTP_D | HTTP_F, "channel change") => Some("~2.8 s"),
        (UDP, "auth") => Some("~18 ms"),
        (UDP, "channel change") => Some("~2.1 s"),
        (XMPP, "auth") => Some("0 s (at login)"),
        (XMPP, "channel change") => Some("~2 s"),
        (m, _) if m.starts_with("floor: XMPP") => Some("2–7 ms (message transfer)"),
        _ => None,
    }
}

fn target(mech: &str, measure: &str) -> Option<(f64, f64)> {
    match (mech, measure) {
        (XMPP, "CR → Inform") => Some((2.0, 5.0)),
        (_, "CR → Inform") => Some((1.0, 5.0)),
        (_, "channel change") => Some((5.0, f64::INFINITY)),
        _ => None,
    }
}

/// Picks one series out of the samples.
type SampleField = fn(&Samples) -> &Vec<Duration>;

fn rows_for(
    mode: &'static str,
    mech: &str,
    r: Result<Samples, String>,
    floor: Option<f64>,
) -> Vec<Row> {
    let measures: [(&'static str, SampleField); 4] = [
        ("auth", |s| &s.auth),
        ("CR → Inform", |s| &s.cr_inform),
        ("CR → middleware", |s| &s.chan_mw),
        ("channel change", |s| &s.chan_end),
    ];
    measures
        .iter()
        .map(|(m, f)| Row {
            mode,
            mechanism: mech.to_string(),
            measure: m,
            result: match &r {
                Ok(s) => Stats::of(f(s)).ok_or_else(|| "no samples".to_string()),
                Err(e) => Err(e.clone()),
            },
            floor_p50: floor,
            paper: paper(mech, m),
            target: target(mech, m),
        })
        .collect()
}

fn floor_row(mode: &'static str, name: &str, r: Result<Vec<Duration>, String>) -> Row {
    Row {
        mode,
        mechanism: format!("floor: {name}"),
        measure: "round trip",
        result: r.and_then(|v| Stats::of(&v).ok_or_else(|| "no samples".into())),
        floor_p50: None,
        paper: paper(&format!("floor: {name}"), ""),
        target: None,
    }
}

fn p50(r: &Row) -> Option<f64> {
    r.result.as_ref().ok().map(|s| s.p50)
}

/// CPU time of all the process's threads (schedstat), nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    d.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub(crate) fn stun_requests(api: SocketAddr) -> u64 {
    (|| -> Option<u64> {
        let mut s = TcpStream::connect(api).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /bindings HTTP/1.1\r\nHost: {api}\r\nContent-Length: 0\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let v: Value = serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()?;
        v["requests"].as_u64()
    })()
    .unwrap_or(0)
}

/// Runs every mechanism in one environment.
fn run_mode(env: &mut Env, o: &Opts, idle: bool) -> Result<ModeResult, String> {
    let (runs, warm) = (o.runs, o.warmup());
    let mode = env.mode;
    let pid = env.agent.pid();
    let mut idle_fig = None;
    if idle {
        std::thread::sleep(Duration::from_millis(500));
        let rss_kb = crate::session::status_kb(pid, "VmRSS").unwrap_or(0);
        let anon_kb = crate::session::status_kb(pid, "RssAnon").unwrap_or(0);
        let file_kb = crate::session::status_kb(pid, "RssFile").unwrap_or(0);
        let threads = crate::session::status_kb(pid, "Threads").unwrap_or(0);
        let stun0 = stun_requests(env.stun_api);
        eprintln!(
            "  idle: agent RSS {:.2} MB, {threads} threads; measuring CPU for {} s",
            rss_kb as f64 / 1024.0,
            o.idle_seconds
        );
        let c0 = cpu_ns(pid);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(o.idle_seconds));
        let cpu = (cpu_ns(pid) - c0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
        idle_fig = Some(IdleFigures {
            rss_kb,
            anon_kb,
            file_kb,
            threads,
            cpu_percent: cpu,
            stun_requests: stun_requests(env.stun_api).saturating_sub(stun0),
        });
    }
    let acs_ns = env.acs_ns.clone();
    let cpe_ns = env.cpe_ns.clone();
    let mut rows = Vec::new();
    // Floors.
    let tcp = rig::in_ns(acs_ns.as_deref(), || floor_tcp(env.floor_tcp, runs))?;
    let tcp_row = floor_row(mode, "TCP connect + request/response (direct)", tcp);
    let fwd_row = match env.floor_tcp_fwd {
        Some(a) => floor_row(
            mode,
            "TCP connect + request/response (port forward)",
            rig::in_ns(acs_ns.as_deref(), || floor_tcp(a, runs))?,
        ),
        None => floor_row(
            mode,
            "TCP connect + request/response (port forward)",
            Err("no port forward on loopback (namespace topology only)".into()),
        ),
    };
    let udp_to = env.floor_udp;
    let udp_row = floor_row(
        mode,
        if cpe_ns.is_some() {
            "UDP round trip (through the NAT)"
        } else {
            "UDP round trip"
        },
        rig::in_ns(cpe_ns.as_deref(), || floor_udp(udp_to, runs))?,
    );
    let xmpp_row = floor_row(
        mode,
        "XMPP IQ round trip, two plain clients",
        match &env.xmpp {
            Ok(t) => xmpp_floor(t, acs_ns.clone(), cpe_ns.clone(), runs),
            Err(e) => Err(e.clone()),
        },
    );
    eprintln!("  floors done");
    // HTTP direct.
    let url = env.http_url.clone();
    let ns = acs_ns.clone();
    let http = |env: &mut Env, url: &str, mech: &str| -> Result<Samples, String> {
        let url = url.to_string();
        // At most 40 CRs a second: the agent remembers the last 64 Digest nonces, and a nonce
        // evicted within the current second makes the next one stale (a retry).
        let mut last = Instant::now();
        let mut send = || {
            let gap = Duration::from_millis(25).saturating_sub(last.elapsed());
            std::thread::sleep(gap);
            last = Instant::now();
            http_cr(&url).map(|(t0, a)| (t0, Some(a)))
        };
        rig::in_ns(ns.as_deref(), || {
            let mut a = env.measure(runs, warm, false, mech, &mut send)?;
            let b = env.measure(runs, warm, true, mech, &mut send)?;
            a.chan_mw = b.chan_mw;
            a.chan_end = b.chan_end;
            Ok::<_, String>(a)
        })?
    };
    let r = http(env, &url, HTTP_D);
    eprintln!("  {HTTP_D}: {}", summary(&r));
    rows.extend(rows_for(mode, HTTP_D, r, p50(&tcp_row)));
    let r = match env.fwd_url.clone() {
        Some(u) => http(env, &u, HTTP_F),
        None => Err("no port forward on loopback (namespace topology only)".into()),
    };
    eprintln!("  {HTTP_F}: {}", summary(&r));
    rows.extend(rows_for(mode, HTTP_F, r, p50(&fwd_row)));
    // UDP via the STUN server's socket.
    let api = env.stun_api;
    let r = rig::in_ns(acs_ns.as_deref(), || {
        let mut pacer = UdpPacer {
            second: 0,
            count: 0,
        };
        let mut send = || {
            pacer.wait();
            udp_cr_via_api(api).map(|t0| (t0, None))
        };
        let mut a = env.measure(runs, warm, false, UDP, &mut send)?;
        let b = env.measure(runs, warm, true, UDP, &mut send)?;
        a.chan_mw = b.chan_mw;
        a.chan_end = b.chan_end;
        Ok::<_, String>(a)
    })?;
    eprintln!("  {UDP}: {}", summary(&r));
    rows.extend(rows_for(mode, UDP, r, p50(&udp_row)));
    // XMPP.
    let r = match &env.xmpp {
        Ok(t) => {
            let t = XmppTarget {
                host: t.host.clone(),
                port: t.port,
                ca: t.ca.clone(),
            };
            rig::in_ns(acs_ns.as_deref(), || {
                let mut c = xmpp_login(&t, "acs", "acs-pw", "acs")?;
                let to = format!("cpe1@{}/cwmp", rig::XMPP_DOMAIN);
                let mut send = || {
                    let el = cwmpd::connreq::xmpp::connection_request_element(USER, PASS);
                    c.iq(&to, el).map(|(t0, rtt)| (t0, Some(rtt)))
                };
                let mut a = env.measure(runs, warm, false, XMPP, &mut send)?;
                let b = env.measure(runs, warm, true, XMPP, &mut send)?;
                a.chan_mw = b.chan_mw;
                a.chan_end = b.chan_end;
                c.close();
                Ok::<_, String>(a)
            })?
        }
        Err(e) => Err(e.clone()),
    };
    eprintln!("  {XMPP}: {}", summary(&r));
    rows.extend(rows_for(mode, XMPP, r, p50(&xmpp_row)));
    rows.extend([tcp_row, fwd_row, udp_row, xmpp_row]);
    Ok(ModeResult {
        rows,
        idle: idle_fig,
    })
}

fn summary(r: &Result<Samples, String>) -> String {
    match r {
        Ok(s) => match Stats::of(&s.cr_inform) {
            Some(st) => format!("CR → Inform p50 {:.3} ms, p99 {:.3} ms", st.p50, st.p99),
            None => "no samples".into(),
        },
        Err(e) => format!("failed: {e}"),
    }
}

fn xmpp_floor(
    t: &XmppTarget,
    acs_ns: Option<String>,
    cpe_ns: Option<String>,
    n: usize,
) -> Result<Vec<Duration>, String> {
    let (h, stop) = xmpp_responder(cpe_ns, t)?;
    let r = rig::in_ns(acs_ns.as_deref(), || {
        let mut a = xmpp_login(t, "plain-a", "plain-a-pw", "a")?;
        let to = format!("plain-b@{}/b", rig::XMPP_DOMAIN);
        let mut v = Vec::new();
        for k in 0..n + 5 {
            let ping =
                cwmpd::connreq::xmpp::Element::new("ping", cwmpd::connreq::xmpp::wire::NS_PING);
            let (_, rtt) = a.iq(&to, ping)?;
            if k >= 5 {
                v.push(rtt);
            }
        }
        a.close();
        Ok::<_, String>(v)
    });
    drop(stop);
    let _ = h.join();
    r?
}

// ---------------------------------------------------------------------------------------------
// Footprint
// ---------------------------------------------------------------------------------------------

/// Size of a stripped copy of `bin` (the release profile strips already; this makes sure).
pub(crate) fn stripped_size(bin: &Path) -> Result<(u64, String), String> {
    let size = std::fs::metadata(bin)
        .map_err(|e| format!("{}: {e}", bin.display()))?
        .len();
    let tmp = std::env::temp_dir().join(format!("cwmpd-bench-strip-{}", std::process::id()));
    for tool in ["strip", "llvm-strip"] {
        let ok = std::process::Command::new(tool)
            .arg("-o")
            .arg(&tmp)
            .arg(bin)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let s = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(size);
            let _ = std::fs::remove_file(&tmp);
            return Ok((s.min(size), format!("{} ({tool})", bin.display())));
        }
    }
    Ok((size, format!("{} (as built)", bin.display())))
}

fn footprint(
    agent_bin: &Path,
    idle: Option<&IdleFigures>,
    o: &Opts,
    notes: &mut Vec<String>,
) -> Vec<Foot> {
    let mut f = Vec::new();
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    match stripped_size(agent_bin) {
        Ok((s, note)) => f.push(Foot {
            measure: format!("stripped binary, {} (cwmpd)", std::env::consts::ARCH),
            value: Ok((mb(s), "MB")),
            target: Some(3.0),
            note,
        }),
        Err(e) => f.push(Foot {
            measure: "stripped binary (cwmpd)".into(),
            value: Err(e),
            target: Some(3.0),
            note: String::new(),
        }),
    }
    // Cross builds: target-cross/<triple>/release*/cwmpd next to the sources.
    let cross = Path::new(env!("CARGO_MANIFEST_DIR")).join("target-cross");
    let mut found = false;
    if let Ok(d) = std::fs::read_dir(&cross) {
        let mut triples: Vec<_> = d.flatten().collect();
        triples.sort_by_key(|e| e.file_name());
        for t in triples {
            let Ok(sub) = std::fs::read_dir(t.path()) else {
                continue;
            };
            let mut subs: Vec<_> = sub.flatten().collect();
            subs.sort_by_key(|e| e.file_name());
            for r in subs {
                let name = r.file_name().to_string_lossy().into_owned();
                let bin = r.path().join("cwmpd");
                if name.starts_with("release") && bin.is_file() {
                    found = true;
                    if let Ok((s, note)) = stripped_size(&bin) {
                        f.push(Foot {
                            measure: format!(
                                "stripped binary, {} ({name})",
                                t.file_name().to_string_lossy()
                            ),
                            value: Ok((mb(s), "MB")),
                            target: Some(3.0),
                            note,
                        });
                    }
                }
            }
        }
    }
    if !found {
        notes.push(format!(
            "No cross build found under {} (issue 8 builds them); only the native binary is measured.",
            cross.display()
        ));
    }
    match idle {
        Some(i) => {
            f.push(Foot {
                measure: "agent RSS at idle, all four mechanisms enabled".into(),
                value: Ok((i.rss_kb as f64 / 1024.0, "MB")),
                target: Some(4.0),
                note: format!(
                    "VmRSS after the boot session, STUN binding and XMPP login: {:.2} MB anonymous (heap, stacks) + {:.2} MB file-backed (binary pages)",
                    i.anon_kb as f64 / 1024.0,
                    i.file_kb as f64 / 1024.0
                ),
            });
            f.push(Foot {
                measure: format!("agent CPU over {} s idle", o.idle_seconds),
                value: Ok((i.cpu_percent, "%")),
                target: Some(0.1),
                note: format!(
                    "of one core; STUN keep-alive every {STUN_KEEPALIVE} s ({} binding requests seen), XMPP keep-alive {XMPP_KEEPALIVE} s",
                    i.stun_requests
                ),
            });
            f.push(Foot {
                measure: "agent threads".into(),
                value: Ok((i.threads as f64, "")),
                target: None,
                note: "one current-thread runtime (plus any blocking-pool threads alive)".into(),
            });
        }
        None => f.push(Foot {
            measure: "agent RSS / CPU at idle".into(),
            value: Err("the loopback environment did not start".into()),
            target: Some(4.0),
            note: String::new(),
        }),
    }
    match crate::session::measure(10_000, 3) {
        Ok(s) => f.push(Foot {
            measure: format!("agent peak RSS during a {}-parameter GPV", s.params),
            value: Ok((s.peak_kb as f64 / 1024.0, "MB")),
            target: None,
            note: format!(
                "VmHWM; session (Inform → end) p50 {:.1} ms",
                s.p50.as_secs_f64() * 1e3
            ),
        }),
        Err(e) => f.push(Foot {
            measure: "agent peak RSS during a 10,000-parameter GPV".into(),
            value: Err(e),
            target: None,
            note: String::new(),
        }),
    }
    f
}

// ---------------------------------------------------------------------------------------------

pub fn run(o: &Opts) -> Result<Report, String> {
    let (agent_bin, connreq_bin) = crate::session::sibling_binaries()?;
    let base = std::env::temp_dir().join(format!("cwmpd-bench-cr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let r = run_in(o, &base, &agent_bin, &connreq_bin);
    let _ = std::fs::remove_dir_all(&base);
    r
}

fn skipped_rows(mode: &'static str, why: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for m in [HTTP_D, HTTP_F, UDP, XMPP] {
        rows.extend(rows_for(mode, m, Err(why.to_string()), None));
    }
    rows
}

fn run_in(o: &Opts, base: &Path, agent_bin: &Path, connreq_bin: &Path) -> Result<Report, String> {
    let mut notes = Vec::new();
    eprintln!(
        "cwmpd-bench cr: {} runs after {} warm-up runs per figure; agent {}",
        o.runs,
        o.warmup(),
        agent_bin.display()
    );
    let prosody = match rig::prosody_unavailable() {
        Some(why) => Err(why),
        None => ProsodySetup::create(&base.join("prosody")),
    };
    if let Err(e) = &prosody {
        notes.push(format!("XMPP skipped: {e}"));
    }
    let mut rows = Vec::new();
    // Loopback.
    eprintln!("loopback:");
    let udp_port = rig::free_udp_port();
    let lay = Layout {
        mode: "loopback",
        acs_ns: None,
        cpe_ns: None,
        acs_ip: "127.0.0.1",
        http_listen: "127.0.0.1:0".into(),
        udp_listen: format!("127.0.0.1:{udp_port}"),
        public_url: None,
    };
    let mut idle = None;
    match start_env(
        lay,
        &base.join("loopback"),
        agent_bin,
        connreq_bin,
        &prosody,
    ) {
        Ok(mut env) => {
            let m = run_mode(&mut env, o, true)?;
            rows.extend(m.rows);
            idle = m.idle;
        }
        Err(e) => {
            eprintln!("  loopback environment failed: {e}");
            rows.extend(skipped_rows("loopback", &e));
        }
    }
    // Namespaces.
    let why = if o.no_netns {
        Some("--no-netns".to_string())
    } else {
        rig::netns_unavailable()
    };
    match why {
        Some(why) => {
            eprintln!("network namespaces: skipped: {why}");
            rows.extend(skipped_rows("netns", &why));
        }
        None => {
            eprintln!("network namespaces (acs — NAT gateway — cpe):");
            let topo = Topology::build()?;
            let lay = Layout {
                mode: "netns",
                acs_ns: Some(topo.ns("acs")),
                cpe_ns: Some(topo.ns("cpe")),
                acs_ip: rig::ACS_IP,
                http_listen: "0.0.0.0:7547".into(),
                udp_listen: format!("{}:7547", rig::CPE_IP),
                public_url: Some(format!("http://{}:{}/", rig::GW_WAN_IP, rig::FWD_CR_PORT)),
            };
            match start_env(lay, &base.join("netns"), agent_bin, connreq_bin, &prosody) {
                Ok(mut env) => {
                    let m = run_mode(&mut env, o, false)?;
                    rows.extend(m.rows);
                }
                Err(e) => {
                    eprintln!("  namespace environment failed: {e}");
                    rows.extend(skipped_rows("netns", &e));
                }
            }
            drop(topo);
        }
    }
    eprintln!("footprint:");
    let foot = footprint(agent_bin, idle.as_ref(), o, &mut notes);
    notes.push(
        "HTTP: times start at the ACS's connect() (the SYN is the CR's first byte); auth = connect → 401 → Digest GET → 200 on one connection. \
         UDP: CR → Inform starts when the ACS asks its STUN server (loopback HTTP API) to send the CR from the STUN socket; auth is measured in the agent (datagram received → trigger taken by the engine, `status` last_cr_latency_us). \
         XMPP: auth = the connectionRequest IQ round trip (ACS → Prosody → agent → result). \
         Channel change = CR → session end with a SetParameterValues of X_00D09E_CurrentChannel delivered to a provider program; CR → middleware = until that program reported the value."
            .into(),
    );
    Ok(Report {
        rows,
        foot,
        machine: crate::report::machine(),
        runs: o.runs,
        warmup: o.warmup(),
        idle_seconds: o.idle_seconds,
        notes,
    })
}
