//! A TR-111-aware STUN server (RFC 3489 and RFC 5389 Binding) with a binding table, that sends
//! UDP connection requests from its own STUN socket on request of a small loopback HTTP API:
//!
//! * `GET /bindings` → JSON: every CPE binding (by USERNAME, else by source address), `last`,
//!   counters;
//! * `POST /cr?to=IP:PORT|last|KEY&user=U&password=P[&copies=N]` → sends a signed UDP
//!   connection request from the STUN socket, so that it passes the CPE's NAT binding.
//!
//! With credentials it uses short-term credentials (401 first, then USERNAME +
//! MESSAGE-INTEGRITY keyed with the password, either layout). It logs
//! CONNECTION-REQUEST-BINDING / BINDING-CHANGE and what it sends through [`Options::log`], and
//! honours RESPONSE-ADDRESS only for the requester's own IP.
//!
//! Run it with [`run`] (blocks; `cwmp-connreq stun-server`), [`spawn`] (on a thread of its own,
//! for a demo or a test), or [`serve`] inside a tokio `LocalSet`. [`bindings`] and
//! [`request_cr`] are the API's client side.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cwmp_proto::connreq::stun::{self, Integrity};
use cwmp_proto::connreq::udpcr;
use cwmp_proto::util::codec::{random_bytes, to_hex};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Where the server's log lines go (one line per call, no newline).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// Log lines on stdout, flushed at once (what `cwmp-connreq stun-server` does; tests read them).
pub fn stdout_log() -> Log {
    Arc::new(|line| {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    })
}

/// How to run the server.
#[derive(Clone)]
pub struct Options {
    /// The STUN socket (port 0: any free port, see [`Addrs`]).
    pub listen: SocketAddr,
    /// The HTTP API; must be a loopback address.
    pub api: Option<SocketAddr>,
    /// Short-term credentials (USERNAME, password) the CPEs must use; `None`: no authentication.
    pub credentials: Option<(String, String)>,
    pub log: Log,
}

impl Options {
    /// A server on `listen` without API or credentials, logging on stdout.
    pub fn new(listen: SocketAddr) -> Options {
        Options {
            listen,
            api: None,
            credentials: None,
            log: stdout_log(),
        }
    }
}

/// The addresses a running server is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub stun: SocketAddr,
    pub api: Option<SocketAddr>,
}

struct Binding {
    addr: SocketAddr,
    username: Option<String>,
    first_seen: u64,
    last_seen: u64,
    requests: u64,
    binding_changes: u64,
    address_changes: u64,
    crb: bool,
    crb_exact: bool,
    classic: bool,
    authenticated: bool,
}

#[derive(Default)]
struct Counters {
    requests: u64,
    challenges: u64,
    auth_ok: u64,
    auth_failed: u64,
    crs_sent: u64,
}

struct Server {
    sock: Rc<UdpSocket>,
    creds: Option<(String, String)>,
    bindings: BTreeMap<String, Binding>,
    last: Option<String>,
    n: Counters,
    log: Log,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the server on a current-thread runtime of its own until `stop` completes.
pub fn run(opts: Options, stop: impl Future<Output = ()>) -> Result<(), String> {
    run_with(opts, |_| {}, stop)
}

fn run_with(
    opts: Options,
    ready: impl FnOnce(Addrs),
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(opts, ready, stop))
}

/// A server running on a thread of its own (see [`spawn`]); stopped when dropped.
pub struct StunServer {
    addrs: Addrs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl StunServer {
    /// The STUN socket's address (what the CPE's STUNServerAddress / STUNServerPort name).
    pub fn stun_addr(&self) -> SocketAddr {
        self.addrs.stun
    }

    /// The API's address, if it has one.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.addrs.api
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the STUN server thread panicked".into()),
            None => Ok(()),
        }
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Starts the server on a thread of its own; returns once its sockets are bound.
pub fn spawn(opts: Options) -> Result<StunServer, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Addrs, String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let failed_tx = ready_tx.clone();
    let thread = std::thread::Builder::new()
        .name("stun-server".into())
        .spawn(move || {
            let r = run_with(
                opts,
                move |a| {
                    let _ = ready_tx.send(Ok(a));
                },
                async move {
                    let _ = stop_rx.await;
                },
            );
            if let Err(e) = &r {
                let _ = failed_tx.send(Err(e.clone()));
            }
            r
        })
        .map_err(|e| format!("thread: {e}"))?;
    let mut srv = StunServer {
        addrs: Addrs {
            stun: SocketAddr::from(([0, 0, 0, 0], 0)),
            api: None,
        },
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(a)) => {
            srv.addrs = a;
            Ok(srv)
        }
        Ok(Err(e)) => {
            let _ = srv.shutdown();
            Err(e)
        }
        Err(_) => Err(srv
            .shutdown()
            .err()
            .unwrap_or_else(|| "the STUN server stopped".into())),
    }
}

/// Binds the sockets, calls `ready` with their addresses, and serves until `stop` completes.
/// Runs inside a tokio `LocalSet` (the API's connections are local tasks).
pub async fn serve(
    opts: Options,
    ready: impl FnOnce(Addrs),
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    let Options {
        listen,
        api,
        credentials,
        log,
    } = opts;
    if api.is_some_and(|a| !a.ip().is_loopback()) {
        return Err("--api must be a loopback address".into());
    }
    let sock = UdpSocket::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let bound = sock.local_addr().map_err(|e| e.to_string())?;
    let sock = Rc::new(sock);
    let srv = Rc::new(RefCell::new(Server {
        sock: sock.clone(),
        creds: credentials,
        bindings: BTreeMap::new(),
        last: None,
        n: Counters::default(),
        log: log.clone(),
    }));
    let mut api_bound = None;
    if let Some(a) = api {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| format!("bind {a}: {e}"))?;
        let la = l.local_addr().map_err(|e| e.to_string())?;
        log(&format!("api listening on {la}"));
        api_bound = Some(la);
        tokio::task::spawn_local(api_loop(l, srv.clone()));
    }
    log(&format!("stun listening on {bound}"));
    ready(Addrs {
        stun: bound,
        api: api_bound,
    });
    let mut buf = vec![0u8; 2048];
    let mut stop = std::pin::pin!(stop);
    loop {
        let r = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = &mut stop => break,
        };
        if let Ok((n, from)) = r {
            let reply = srv.borrow_mut().on_request(&buf[..n], from);
            if let Some((bytes, to)) = reply {
                let _ = sock.send_to(&bytes, to).await;
            }
        }
    }
    Ok(())
}

impl Server {
    fn on_request(&mut self, data: &[u8], from: SocketAddr) -> Option<(Vec<u8>, SocketAddr)> {
        let log = self.log.clone();
        if stun::classify(data) != stun::DatagramKind::Stun {
            return None;
        }
        let req = stun::parse_binding_request(data).ok()?;
        self.n.requests += 1;
        if !req.unknown_required.is_empty() {
            log(&format!(
                "420 to {from}: unknown attributes {:?}",
                req.unknown_required
            ));
            return stun::binding_error(&req.txid, 420, "Unknown Attribute")
                .ok()
                .map(|b| (b, from));
        }
        let mut integrity = None;
        let mut authenticated = false;
        if let Some((user, pass)) = &self.creds {
            if !req.has_integrity {
                self.n.challenges += 1;
                log(&format!("401 challenge to {from}"));
                return stun::unauthorized(&req.txid).ok().map(|b| (b, from));
            }
            let layout = match stun::check_integrity(data, pass.as_bytes()) {
                Integrity::Valid(l) if req.username.as_deref() == Some(user.as_str()) => l,
                _ => {
                    self.n.auth_failed += 1;
                    log(&format!(
                        "401 to {from}: bad credentials (username {:?})",
                        req.username
                    ));
                    return stun::unauthorized(&req.txid).ok().map(|b| (b, from));
                }
            };
            self.n.auth_ok += 1;
            authenticated = true;
            integrity = Some((pass.clone(), layout));
        }
        // RESPONSE-ADDRESS (binding-lifetime discovery) only toward the requester's own IP, so
        // that the server cannot be used to reflect traffic elsewhere.
        let to = match req.response_address {
            Some(r) if r.ip() == from.ip() => r,
            _ => from,
        };
        if !req.connection_request_binding {
            // Not from a CPE's connection-request socket (e.g. a binding-lifetime probe from a
            // secondary socket): answered, not recorded as the CPE's binding.
            log(&format!(
                "request from {from} without CONNECTION-REQUEST-BINDING classic={} auth={authenticated}{}",
                req.is_classic(),
                if to != from {
                    format!(" response_to={to}")
                } else {
                    String::new()
                }
            ));
            let reply = stun::binding_success(
                &req.txid,
                from,
                integrity.as_ref().map(|(p, l)| (p.as_bytes(), *l)),
            )
            .ok()?;
            return Some((reply, to));
        }
        let key = req.username.clone().unwrap_or_else(|| from.to_string());
        let now = unix_now();
        let b = self.bindings.entry(key.clone()).or_insert(Binding {
            addr: from,
            username: req.username.clone(),
            first_seen: now,
            last_seen: now,
            requests: 0,
            binding_changes: 0,
            address_changes: 0,
            crb: false,
            crb_exact: false,
            classic: false,
            authenticated: false,
        });
        let moved = b.addr != from;
        if moved {
            b.address_changes += 1;
            b.addr = from;
        }
        b.last_seen = now;
        b.requests += 1;
        b.crb = req.connection_request_binding;
        b.crb_exact = req.crb_value_exact;
        b.classic = req.is_classic();
        b.authenticated = authenticated;
        if req.binding_change {
            b.binding_changes += 1;
        }
        self.last = Some(key.clone());
        log(&format!(
            "binding key={key} addr={from} classic={} crb={} binding_change={} auth={} moved={}{}",
            req.is_classic(),
            req.connection_request_binding,
            req.binding_change,
            authenticated,
            moved,
            if to != from {
                format!(" response_to={to}")
            } else {
                String::new()
            }
        ));
        let reply = stun::binding_success(
            &req.txid,
            from,
            integrity.as_ref().map(|(p, l)| (p.as_bytes(), *l)),
        )
        .ok()?;
        Some((reply, to))
    }

    fn bindings_json(&self) -> Value {
        let list: Vec<Value> = self
            .bindings
            .iter()
            .map(|(k, b)| {
                json!({
                    "key": k,
                    "addr": b.addr.to_string(),
                    "username": b.username,
                    "first_seen": b.first_seen,
                    "last_seen": b.last_seen,
                    "requests": b.requests,
                    "binding_changes": b.binding_changes,
                    "address_changes": b.address_changes,
                    "connection_request_binding": b.crb,
                    "crb_value_exact": b.crb_exact,
                    "classic": b.classic,
                    "authenticated": b.authenticated,
                })
            })
            .collect();
        json!({
            "bindings": list,
            "last": self.last,
            "requests": self.n.requests,
            "challenges": self.n.challenges,
            "auth_ok": self.n.auth_ok,
            "auth_failed": self.n.auth_failed,
            "crs_sent": self.n.crs_sent,
        })
    }

    fn send_cr(&mut self, q: &BTreeMap<String, String>) -> Result<Value, String> {
        let to = q.get("to").ok_or("`to` is required")?;
        let user = q.get("user").ok_or("`user` is required")?;
        let pass = q.get("password").ok_or("`password` is required")?;
        let copies: u32 = match q.get("copies") {
            Some(c) => c.parse().map_err(|_| format!("bad copies {c:?}"))?,
            None => 3,
        };
        if !(1..=10).contains(&copies) {
            return Err("copies must be 1..10".into());
        }
        let addr: SocketAddr = if to == "last" {
            let k = self.last.as_ref().ok_or("no binding yet")?;
            self.bindings[k].addr
        } else if let Some(b) = self.bindings.get(to) {
            b.addr
        } else {
            to.parse()
                .map_err(|_| format!("`to`: {to:?} is neither IP:PORT nor a binding"))?
        };
        let ts = unix_now();
        let id = u64::from(u32::from_be_bytes(random_bytes::<4>()));
        let cn = to_hex(&random_bytes::<8>());
        let dgram = udpcr::build_udp_cr(&udpcr::authority(addr), ts, id, user, &cn, pass);
        let t0 = Instant::now();
        for _ in 0..copies {
            self.sock
                .try_send_to(&dgram, addr)
                .map_err(|e| format!("send to {addr}: {e}"))?;
        }
        let us = t0.elapsed().as_micros() as u64;
        self.n.crs_sent += 1;
        (self.log)(&format!(
            "udp cr to {addr} id={id} ts={ts} copies={copies} from {}",
            self.sock
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        ));
        Ok(
            json!({"ok": true, "to": addr.to_string(), "copies": copies, "id": id, "ts": ts,
                  "bytes": dgram.len(), "send_us": us}),
        )
    }
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn api_loop(l: TcpListener, srv: Rc<RefCell<Server>>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let srv = srv.clone();
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), api_conn(s, srv)).await;
        });
    }
}

async fn api_conn(mut s: TcpStream, srv: Rc<RefCell<Server>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let q: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect();
    let (status, body) = match (method, path) {
        ("GET", "/bindings") => (200, srv.borrow().bindings_json()),
        ("POST", "/cr") => match srv.borrow_mut().send_cr(&q) {
            Ok(v) => (200, v),
            Err(e) => (400, json!({"ok": false, "error": e})),
        },
        _ => (404, json!({"ok": false, "error": "not found"})),
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// The API's client side.

/// The API's answer: `ok` when the status was 200, and the JSON body as text.
#[derive(Debug, Clone)]
pub struct ApiAnswer {
    pub ok: bool,
    pub body: String,
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn api_call(api: &str, method: &str, target: &str) -> Result<ApiAnswer, String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(api))
        .await
        .map_err(|_| format!("connect {api}: timeout"))?
        .map_err(|e| format!("connect {api}: {e}"))?;
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {api}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer from the STUN server API".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    Ok(ApiAnswer {
        ok: text.starts_with("HTTP/1.1 200"),
        body: text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("")
            .to_string(),
    })
}

/// `POST /cr` on the server's API at `api`: the server sends `copies` UDP connection requests
/// from its STUN socket to `to` (`IP:PORT`, `last` for the last CPE seen, or a binding's key),
/// signed with the CPE's ConnectionRequestUsername / Password.
pub async fn request_cr(
    api: &str,
    to: &str,
    user: &str,
    pass: &str,
    copies: u32,
) -> Result<ApiAnswer, String> {
    let target = format!(
        "/cr?to={}&user={}&password={}&copies={copies}",
        pct(to),
        pct(user),
        pct(pass)
    );
    api_call(api, "POST", &target).await
}

/// `GET /bindings` on the server's API at `api`: the bindings it knows (see the module docs).
pub async fn bindings(api: &str) -> Result<Value, String> {
    let a = api_call(api, "GET", "/bindings").await?;
    if !a.ok {
        return Err(format!("GET /bindings: {}", a.body));
    }
    serde_json::from_str(&a.body).map_err(|e| format!("GET /bindings: {e}: {}", a.body))
}
