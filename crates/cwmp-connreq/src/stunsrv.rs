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
//! Cluster mode ([`Options::cluster`]): several instances behind one name share a binding
//! registry on Redis. Each instance writes, per CPE key, `ADDR OWNER LAST_SEEN` under
//! `cwmp:cpe:KEY` with a TTL ([`Cluster::ttl`], a little above the keep-alive period), when a
//! binding is new or moved and again when a third of the TTL has passed; it forgets its own
//! bindings older than the TTL. `POST /cr` for a key at any instance reads the registry, signs
//! the datagram there (the password never goes to Redis) and has the owner send it: locally,
//! or published on the owner's channel `cwmp:inst:OWNER`, the owner answering on the
//! requester's. The answer's `result`: `sent` (200), `unknown_cpe` (404), `stale_binding` (410:
//! the owner is gone, silent, or has a newer address or an expired binding), `bad_request`
//! (400), `busy` / `registry_unavailable` (503). While Redis cannot be read, an instance still
//! sends a CR itself for a CPE it holds a fresh binding for (`sent`, `"via": "local"`,
//! `"registry": "unavailable"`); for any other CPE it answers `registry_unavailable`.
//! `GET /cpe?key=KEY` shows the registry record.
//! After Redis comes back, each instance writes all its bindings again.
//!
//! Run it with [`run`] (blocks; `cwmp-connreq stun-server`), [`spawn`] (on a thread of its own,
//! for a demo or a test), or [`serve`] inside a tokio `LocalSet`. [`bindings`] and
//! [`request_cr`] are the API's client side.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
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
use tokio::sync::oneshot;

use crate::mmsg;
use crate::resp::{self, Resp};
use crate::stunfast;

/// API connections served at once; more are answered 503 at once.
const MAX_API_CONNS: usize = 256;
/// Connection requests waiting for their owner's answer; more are answered 503.
const MAX_PENDING: usize = 4096;
/// Longest wait for the owner's answer to a routed connection request.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
/// The STUN socket's buffers each way (capped by the kernel's `rmem_max` / `wmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;
/// Registry commands waiting to be written; more (keep-alive refreshes) are dropped and
/// counted.
const REGISTRY_QUEUE: usize = 65_536;

/// Cluster mode: the shared binding registry (see the module docs).
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Redis, and its password if any (see [`resp::parse_url`]).
    pub redis: resp::Target,
    /// This instance's name, unique in the cluster: `[A-Za-z0-9._-]`, at most 64.
    pub instance: String,
    /// How long a binding lives without keep-alive (registry TTL; own bindings forgotten).
    pub ttl: Duration,
}

/// Whether `id` is a usable instance name.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

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
    /// USERNAME `*`: any (non-empty) USERNAME with that password, so that each CPE has a key
    /// of its own.
    pub credentials: Option<(String, String)>,
    pub log: Log,
    /// Cluster mode with a shared registry on Redis; `None`: one instance on its own.
    pub cluster: Option<Cluster>,
    /// No log line for a keep-alive that changes nothing (new, moved and BINDING-CHANGE
    /// bindings are still logged).
    pub quiet: bool,
}

impl Options {
    /// A server on `listen` without API or credentials, logging on stdout.
    pub fn new(listen: SocketAddr) -> Options {
        Options {
            listen,
            api: None,
            credentials: None,
            log: stdout_log(),
            cluster: None,
            quiet: false,
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
    /// When the last keep-alive came.
    seen: Instant,
    /// When it was last written to the registry (cluster mode).
    written: Option<Instant>,
}

#[derive(Default)]
struct ClusterCounters {
    registry_writes: u64,
    registry_dropped: u64,
    routed_out: u64,
    routed_in: u64,
    local: u64,
    /// Sent locally while the registry could not be read (counted in `local` too).
    registry_down_local: u64,
    forgotten: u64,
    resyncs: u64,
}

struct ClusterState {
    id: String,
    ttl: Duration,
    link: resp::Link,
    pending: HashMap<u64, oneshot::Sender<Value>>,
    next_id: u64,
    /// [`resp::Link::connections`] when the bindings were last written in full.
    synced: u64,
    n: ClusterCounters,
}

impl ClusterState {
    fn write(&mut self, key: &str, addr: SocketAddr, now: u64) {
        let ttl = self.ttl.as_secs().max(1).to_string();
        let v = format!("{addr} {} {now}", self.id);
        let args = vec![
            b"SET".to_vec(),
            format!("cwmp:cpe:{key}").into_bytes(),
            v.into_bytes(),
            b"EX".to_vec(),
            ttl.into_bytes(),
        ];
        if self.link.try_send(args) {
            self.n.registry_writes += 1;
        } else {
            self.n.registry_dropped += 1;
        }
    }
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
    /// The password's MESSAGE-INTEGRITY key, computed once.
    mi_key: Option<stunfast::MiKey>,
    /// Scratch for the key of a binding without USERNAME (its address).
    addr_key: String,
    bindings: HashMap<String, Binding>,
    last: Option<String>,
    n: Counters,
    log: Log,
    quiet: bool,
    cluster: Option<ClusterState>,
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
        cluster,
        quiet,
    } = opts;
    if let Some(c) = &cluster
        && !valid_instance_id(&c.instance)
    {
        return Err(format!(
            "instance id {:?}: want 1-64 of A-Z a-z 0-9 . _ -",
            c.instance
        ));
    }
    if api.is_some_and(|a| !a.ip().is_loopback()) {
        return Err("--api must be a loopback address".into());
    }
    let sock = UdpSocket::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let bound = sock.local_addr().map_err(|e| e.to_string())?;
    mmsg::set_buffers(&sock, SOCKET_BUFFER);
    let sock = Rc::new(sock);
    let srv = Rc::new(RefCell::new(Server {
        sock: sock.clone(),
        mi_key: credentials
            .as_ref()
            .map(|(_, p)| stunfast::MiKey::new(p.as_bytes())),
        creds: credentials,
        addr_key: String::new(),
        bindings: HashMap::new(),
        last: None,
        n: Counters::default(),
        log: log.clone(),
        quiet,
        cluster: None,
    }));
    if let Some(c) = cluster {
        let link = resp::Link::start(c.redis.clone(), REGISTRY_QUEUE);
        log(&format!(
            "cluster instance {} registry {} binding ttl {} s",
            c.instance,
            c.redis,
            c.ttl.as_secs()
        ));
        let chan = format!("cwmp:inst:{}", c.instance);
        srv.borrow_mut().cluster = Some(ClusterState {
            id: c.instance,
            ttl: c.ttl,
            link,
            pending: HashMap::new(),
            next_id: 1,
            synced: 0,
            n: ClusterCounters::default(),
        });
        let s2 = srv.clone();
        tokio::task::spawn_local(resp::subscribe(c.redis, chan, move |m| {
            on_cluster_message(&s2, m)
        }));
        tokio::task::spawn_local(maintenance(srv.clone()));
    }
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
    let mut stop = std::pin::pin!(stop);
    let mut rx = mmsg::RecvBatch::default();
    let mut tx = mmsg::SendQueue::default();
    loop {
        tokio::select! {
            r = sock.readable() => if r.is_err() { continue },
            _ = &mut stop => break,
        };
        // What is queued is read and answered in batches (recvmmsg / sendmmsg), a bounded
        // number at a time (the API and registry tasks get their turn in between).
        let mut served = 0;
        while served < 256 {
            let n = match sock.try_io(tokio::io::Interest::READABLE, || rx.recv(&sock)) {
                Ok(n) => n,
                Err(_) => break,
            };
            served += n.max(1);
            {
                let mut s = srv.borrow_mut();
                let (now, at) = (unix_now(), Instant::now());
                for i in 0..n {
                    let (data, from) = rx.get(i);
                    if let Some(to) = s.on_request(data, from, now, at, tx.slot()) {
                        tx.commit(to);
                    }
                }
            }
            while tx.pending() {
                match sock.try_io(tokio::io::Interest::WRITABLE, || tx.send(&sock)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let _ = sock.writable().await;
                    }
                    // One that cannot be sent (e.g. no route) is dropped.
                    Err(_) => tx.skip_one(),
                }
            }
        }
        if served >= 256 {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// A Binding Request as the server uses it: read in place by [`stunfast::parse`] (a
/// keep-alive), or by the general codec (anything else).
struct Req<'a> {
    header: [u8; 16],
    username: Option<&'a str>,
    crb: bool,
    crb_exact: bool,
    binding_change: bool,
    response_address: Option<SocketAddr>,
    has_integrity: bool,
    /// The in-place read, for the MESSAGE-INTEGRITY check without copying the message.
    fast: Option<stunfast::Request<'a>>,
}

impl Req<'_> {
    fn is_classic(&self) -> bool {
        self.header[..4] != stun::MAGIC_COOKIE.to_be_bytes()
    }
}

impl Server {
    /// Answers one datagram: the answer is written into `out` (empty) and its destination
    /// returned (`None`: no answer). `now` / `at`: the clocks, read once per batch.
    fn on_request(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        now: u64,
        at: Instant,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let slow;
        let req = match stunfast::parse(data) {
            Some(r) => Req {
                header: r.header,
                username: r.username,
                crb: r.crb.is_some(),
                crb_exact: r.crb == Some(&stun::CRB_VALUE[..]),
                binding_change: r.binding_change,
                response_address: None,
                has_integrity: r.mi_offset.is_some(),
                fast: Some(r),
            },
            None => {
                if stun::classify(data) != stun::DatagramKind::Stun {
                    return None;
                }
                slow = stun::parse_binding_request(data).ok()?;
                if !slow.unknown_required.is_empty() {
                    self.n.requests += 1;
                    (self.log)(&format!(
                        "420 to {from}: unknown attributes {:?}",
                        slow.unknown_required
                    ));
                    let b = stun::binding_error(&slow.txid, 420, "Unknown Attribute").ok()?;
                    out.extend_from_slice(&b);
                    return Some(from);
                }
                Req {
                    header: slow.txid.header_bytes(),
                    username: slow.username.as_deref(),
                    crb: slow.connection_request_binding,
                    crb_exact: slow.crb_value_exact,
                    binding_change: slow.binding_change,
                    response_address: slow.response_address,
                    has_integrity: slow.has_integrity,
                    fast: None,
                }
            }
        };
        self.n.requests += 1;
        let mut layout = None;
        if let Some((user, pass)) = &self.creds {
            let unauthorized = |out: &mut Vec<u8>| {
                let txid = stun::TxId::from_header_bytes(req.header);
                out.extend_from_slice(&stun::unauthorized(&txid).ok()?);
                Some(from)
            };
            if !req.has_integrity {
                self.n.challenges += 1;
                (self.log)(&format!("401 challenge to {from}"));
                return unauthorized(out);
            }
            // `*`: any USERNAME with the shared password (each CPE keyed by its own).
            let user_ok = req.username == Some(user.as_str())
                || (user == "*" && req.username.is_some_and(|u| !u.is_empty()));
            let valid = match (&req.fast, &self.mi_key) {
                _ if !user_ok => None,
                (Some(f), Some(k)) => k.check(data, f),
                _ => match stun::check_integrity(data, pass.as_bytes()) {
                    Integrity::Valid(l) => Some(l),
                    _ => None,
                },
            };
            let Some(l) = valid else {
                self.n.auth_failed += 1;
                (self.log)(&format!(
                    "401 to {from}: bad credentials (username {:?})",
                    req.username
                ));
                return unauthorized(out);
            };
            self.n.auth_ok += 1;
            layout = Some(l);
        }
        let authenticated = layout.is_some();
        let integrity = match (&self.mi_key, layout) {
            (Some(k), Some(l)) => Some((k, l)),
            _ => None,
        };
        // RESPONSE-ADDRESS (binding-lifetime discovery) only toward the requester's own IP, so
        // that the server cannot be used to reflect traffic elsewhere.
        let to = match req.response_address {
            Some(r) if r.ip() == from.ip() => r,
            _ => from,
        };
        stunfast::success_into(out, &req.header, from, integrity);
        if !req.crb {
            // Not from a CPE's connection-request socket (e.g. a binding-lifetime probe from a
            // secondary socket): answered, not recorded as the CPE's binding.
            (self.log)(&format!(
                "request from {from} without CONNECTION-REQUEST-BINDING classic={} auth={authenticated}{}",
                req.is_classic(),
                if to != from {
                    format!(" response_to={to}")
                } else {
                    String::new()
                }
            ));
            return Some(to);
        }
        let key: &str = match req.username {
            Some(u) => u,
            None => {
                self.addr_key.clear();
                let _ = write!(self.addr_key, "{from}");
                &self.addr_key
            }
        };
        let new = !self.bindings.contains_key(key);
        if new {
            self.bindings.insert(
                key.to_owned(),
                Binding {
                    addr: from,
                    username: req.username.map(str::to_owned),
                    first_seen: now,
                    last_seen: now,
                    requests: 0,
                    binding_changes: 0,
                    address_changes: 0,
                    crb: false,
                    crb_exact: false,
                    classic: false,
                    authenticated: false,
                    seen: at,
                    written: None,
                },
            );
        }
        let b = self.bindings.get_mut(key)?;
        let moved = b.addr != from;
        if moved {
            b.address_changes += 1;
            b.addr = from;
        }
        b.last_seen = now;
        b.seen = at;
        b.requests += 1;
        b.crb = req.crb;
        b.crb_exact = req.crb_exact;
        b.classic = req.is_classic();
        b.authenticated = authenticated;
        if req.binding_change {
            b.binding_changes += 1;
        }
        if let Some(c) = &mut self.cluster
            && (moved || b.written.is_none_or(|w| at.duration_since(w) >= c.ttl / 3))
        {
            b.written = Some(at);
            c.write(key, from, now);
        }
        let changed = new || moved || req.binding_change;
        match &mut self.last {
            Some(l) if l == key => {}
            Some(l) => {
                l.clear();
                l.push_str(key);
            }
            None => self.last = Some(key.to_owned()),
        }
        if self.quiet && !changed {
            return Some(to);
        }
        (self.log)(&format!(
            "binding key={key} addr={from} classic={} crb={} binding_change={} auth={} moved={}{}",
            req.is_classic(),
            req.crb,
            req.binding_change,
            authenticated,
            moved,
            if to != from {
                format!(" response_to={to}")
            } else {
                String::new()
            }
        ));
        Some(to)
    }

    fn bindings_json(&self) -> Value {
        let mut sorted: Vec<(&String, &Binding)> = self.bindings.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let list: Vec<Value> = sorted
            .into_iter()
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
            "cluster": self.cluster.as_ref().map(|c| json!({
                "instance": c.id,
                "ttl_s": c.ttl.as_secs(),
                "registry_up": c.link.up.get(),
                "registry_connections": c.link.connections.get(),
                "registry_writes": c.n.registry_writes,
                "registry_dropped": c.n.registry_dropped,
                "routed_out": c.n.routed_out,
                "routed_in": c.n.routed_in,
                "sent_locally": c.n.local,
                "sent_locally_registry_down": c.n.registry_down_local,
                "forgotten": c.n.forgotten,
                "resyncs": c.n.resyncs,
                "pending": c.pending.len(),
            })),
        })
    }

    /// Sends a signed connection request built by whoever was asked (cluster mode) to the
    /// binding `key`, if this instance still holds it at `addr` and it is not older than the
    /// TTL; the answer's `result` says what happened.
    fn deliver(&mut self, key: &str, addr: SocketAddr, dgram: &[u8], copies: u32) -> Value {
        let ttl = self
            .cluster
            .as_ref()
            .map(|c| c.ttl)
            .unwrap_or(Duration::MAX);
        let Some(b) = self.bindings.get(key) else {
            return json!({"ok": false, "result": "unknown_cpe",
                          "error": format!("no binding for {key:?} at its owner")});
        };
        if b.addr != addr {
            return json!({"ok": false, "result": "stale_binding",
                          "error": format!("the binding moved to {}", b.addr)});
        }
        if b.seen.elapsed() > ttl {
            return json!({"ok": false, "result": "stale_binding",
                          "error": format!("no keep-alive for {} s", b.seen.elapsed().as_secs())});
        }
        for _ in 0..copies {
            if let Err(e) = self.sock.try_send_to(dgram, addr) {
                return json!({"ok": false, "result": "stale_binding",
                              "error": format!("send to {addr}: {e}")});
            }
        }
        self.n.crs_sent += 1;
        (self.log)(&format!(
            "udp cr to {addr} key={key} copies={copies} from {}",
            self.sock
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        ));
        json!({"ok": true, "result": "sent", "to": addr.to_string(), "copies": copies})
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
    let active = Rc::new(Cell::new(0usize));
    let busy = Rc::new(Cell::new(0usize));
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if active.get() >= MAX_API_CONNS {
            // A flood: the request is read (bounded, briefly) and answered 503 at once; past
            // four times the bound, the connection is just closed.
            if busy.get() >= MAX_API_CONNS * 4 {
                continue;
            }
            busy.set(busy.get() + 1);
            let busy = busy.clone();
            tokio::task::spawn_local(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = json!({"ok": false, "result": "busy",
                                      "error": "too many API connections"})
                    .to_string();
                    let r = format!(
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(r.as_bytes()).await;
                    let _ = s.shutdown().await;
                })
                .await;
                busy.set(busy.get() - 1);
            });
            continue;
        }
        active.set(active.get() + 1);
        let (srv, active) = (srv.clone(), active.clone());
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), api_conn(s, srv)).await;
            active.set(active.get() - 1);
        });
    }
}

/// The HTTP status of a cluster answer's `result`.
fn status_of(v: &Value) -> u16 {
    match v["result"].as_str() {
        Some("sent") => 200,
        Some("unknown_cpe") => 404,
        Some("stale_binding") => 410,
        Some("busy" | "registry_unavailable") => 503,
        _ => 400,
    }
}

fn bad_request(e: impl Into<String>) -> (u16, Value) {
    (
        400,
        json!({"ok": false, "result": "bad_request", "error": e.into()}),
    )
}

/// `POST /cr` in cluster mode (every `to` but `last`): the registry says who owns the
/// binding; the datagram is signed here and sent by the owner.
async fn cluster_cr(srv: &Rc<RefCell<Server>>, q: &BTreeMap<String, String>) -> (u16, Value) {
    let t0 = Instant::now();
    let (Some(to), Some(user), Some(pass)) = (q.get("to"), q.get("user"), q.get("password")) else {
        return bad_request("`to`, `user` and `password` are required");
    };
    let copies: u32 = match q.get("copies").map(|c| c.parse()) {
        None => 3,
        Some(Ok(c)) if (1..=10).contains(&c) => c,
        Some(_) => return bad_request("copies must be 1..10"),
    };
    if to.is_empty() || to.len() > 512 {
        return bad_request("`to` must be 1-512 bytes");
    }
    let (link, me) = {
        let s = srv.borrow();
        let c = s.cluster.as_ref().expect("cluster mode");
        (c.link.clone(), c.id.clone())
    };
    let rec = match link
        .call(vec![b"GET".to_vec(), format!("cwmp:cpe:{to}").into_bytes()])
        .await
    {
        Ok(Resp::Bulk(Some(v))) => String::from_utf8_lossy(&v).into_owned(),
        Ok(Resp::Bulk(None)) => {
            // Not a CPE the cluster knows: an explicit address is sent from here, as without
            // a registry.
            if to.parse::<SocketAddr>().is_ok() {
                return match srv.borrow_mut().send_cr(q) {
                    Ok(v) => (200, v),
                    Err(e) => bad_request(e),
                };
            }
            return (
                404,
                json!({"ok": false, "result": "unknown_cpe",
                       "error": format!("no binding for {to:?} in the registry")}),
            );
        }
        Ok(other) => {
            let e = format!("unexpected registry answer {other:?}");
            return registry_down(srv, to, user, pass, copies, e, t0);
        }
        Err(e) => return registry_down(srv, to, user, pass, copies, e, t0),
    };
    let mut f = rec.split(' ');
    let (Some(Ok(addr)), Some(owner)) = (f.next().map(|a| a.parse::<SocketAddr>()), f.next())
    else {
        return (
            503,
            json!({"ok": false, "result": "registry_unavailable",
                   "error": format!("bad registry record {rec:?}")}),
        );
    };
    let owner = owner.to_string();
    let ts = unix_now();
    let id = u64::from(u32::from_be_bytes(random_bytes::<4>()));
    let cn = to_hex(&random_bytes::<8>());
    let dgram = udpcr::build_udp_cr(&udpcr::authority(addr), ts, id, user, &cn, pass);
    let mut v = if owner == me {
        let mut s = srv.borrow_mut();
        let v = s.deliver(to, addr, &dgram, copies);
        if let Some(c) = &mut s.cluster {
            c.n.local += 1;
        }
        v
    } else {
        let (tx, rx) = oneshot::channel();
        let rid = {
            let mut s = srv.borrow_mut();
            let c = s.cluster.as_mut().expect("cluster mode");
            if c.pending.len() >= MAX_PENDING {
                return (
                    503,
                    json!({"ok": false, "result": "busy",
                           "error": "too many connection requests in flight"}),
                );
            }
            let rid = c.next_id;
            c.next_id += 1;
            c.pending.insert(rid, tx);
            c.n.routed_out += 1;
            rid
        };
        let msg = json!({"t": "cr", "id": rid, "from": me, "key": to,
                         "addr": addr.to_string(), "dgram": to_hex(&dgram), "copies": copies});
        let published = link
            .call(vec![
                b"PUBLISH".to_vec(),
                format!("cwmp:inst:{owner}").into_bytes(),
                msg.to_string().into_bytes(),
            ])
            .await;
        let answer = match published {
            Ok(Resp::Int(n)) if n > 0 => match tokio::time::timeout(ROUTE_TIMEOUT, rx).await {
                Ok(Ok(v)) => v,
                _ => json!({"ok": false, "result": "stale_binding",
                            "error": format!("owner {owner} did not answer")}),
            },
            Ok(_) => json!({"ok": false, "result": "stale_binding",
                            "error": format!("owner {owner} is not running")}),
            Err(e) => json!({"ok": false, "result": "registry_unavailable", "error": e}),
        };
        if let Some(c) = &mut srv.borrow_mut().cluster {
            c.pending.remove(&rid);
        }
        answer
    };
    v["owner"] = json!(owner);
    v["via"] = json!(if owner == me { "local" } else { "redis" });
    v["id"] = json!(id);
    v["ts"] = json!(ts);
    v["route_us"] = json!(t0.elapsed().as_micros() as u64);
    (status_of(&v), v)
}

/// `POST /cr` while the registry cannot be read: a CPE this instance holds a binding for (no
/// older than the TTL) is sent its connection request from here (200 `sent`, `via` `local`,
/// `registry` `unavailable`); any other is answered 503 `registry_unavailable`, as the owner
/// cannot be known. (A CPE that moved to another instance within the TTL may get it at its
/// former address: best effort while the registry is away.)
fn registry_down(
    srv: &Rc<RefCell<Server>>,
    to: &str,
    user: &str,
    pass: &str,
    copies: u32,
    error: String,
    t0: Instant,
) -> (u16, Value) {
    let (me, addr) = {
        let s = srv.borrow();
        let c = s.cluster.as_ref().expect("cluster mode");
        let addr = s
            .bindings
            .get(to)
            .filter(|b| b.seen.elapsed() <= c.ttl)
            .map(|b| b.addr);
        (c.id.clone(), addr)
    };
    let Some(addr) = addr else {
        return (
            503,
            json!({"ok": false, "result": "registry_unavailable", "error": error}),
        );
    };
    let ts = unix_now();
    let id = u64::from(u32::from_be_bytes(random_bytes::<4>()));
    let cn = to_hex(&random_bytes::<8>());
    let dgram = udpcr::build_udp_cr(&udpcr::authority(addr), ts, id, user, &cn, pass);
    let mut v = {
        let mut s = srv.borrow_mut();
        let v = s.deliver(to, addr, &dgram, copies);
        if let Some(c) = &mut s.cluster {
            c.n.local += 1;
            c.n.registry_down_local += 1;
        }
        v
    };
    v["owner"] = json!(me);
    v["via"] = json!("local");
    v["registry"] = json!("unavailable");
    v["registry_error"] = json!(error);
    v["id"] = json!(id);
    v["ts"] = json!(ts);
    v["route_us"] = json!(t0.elapsed().as_micros() as u64);
    (status_of(&v), v)
}

/// A message on this instance's channel: a connection request to send for another instance,
/// or the answer to one this instance routed.
fn on_cluster_message(srv: &Rc<RefCell<Server>>, m: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(m) else {
        return;
    };
    match v["t"].as_str() {
        Some("cr") => {
            let (Some(key), Some(addr), Some(dgram), Some(from), Some(rid)) = (
                v["key"].as_str(),
                v["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok()),
                v["dgram"].as_str().and_then(from_hex),
                v["from"].as_str().filter(|f| valid_instance_id(f)),
                v["id"].as_u64(),
            ) else {
                return;
            };
            let copies = v["copies"].as_u64().unwrap_or(3).clamp(1, 10) as u32;
            let mut s = srv.borrow_mut();
            let mut answer = s.deliver(key, addr, &dgram, copies);
            answer["t"] = json!("re");
            answer["id"] = json!(rid);
            if let Some(c) = &mut s.cluster {
                c.n.routed_in += 1;
                // Lost if the queue is full: the requester then answers "did not answer".
                c.link.try_send(vec![
                    b"PUBLISH".to_vec(),
                    format!("cwmp:inst:{from}").into_bytes(),
                    answer.to_string().into_bytes(),
                ]);
            }
        }
        Some("re") => {
            let Some(rid) = v["id"].as_u64() else {
                return;
            };
            let tx = srv
                .borrow_mut()
                .cluster
                .as_mut()
                .and_then(|c| c.pending.remove(&rid));
            if let Some(tx) = tx {
                let mut v = v;
                if let Some(o) = v.as_object_mut() {
                    o.remove("t");
                    o.remove("id");
                }
                let _ = tx.send(v);
            }
        }
        _ => {}
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Cluster housekeeping: forgets own bindings older than the TTL, and writes every binding
/// again after each (re)connection to Redis (a restarted Redis has lost them).
async fn maintenance(srv: Rc<RefCell<Server>>) {
    let period = {
        let s = srv.borrow();
        let ttl = s
            .cluster
            .as_ref()
            .map(|c| c.ttl)
            .unwrap_or(Duration::from_secs(60));
        (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(15))
    };
    // The reconnection is looked for often; the table is scanned every `period`.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut pruned = Instant::now();
    loop {
        tick.tick().await;
        let mut guard = srv.borrow_mut();
        let s = &mut *guard;
        let Some(c) = s.cluster.as_mut() else {
            return;
        };
        let ttl = c.ttl;
        if pruned.elapsed() >= period {
            pruned = Instant::now();
            let before = s.bindings.len();
            s.bindings.retain(|_, b| b.seen.elapsed() <= ttl);
            c.n.forgotten += (before - s.bindings.len()) as u64;
            if s.last.as_ref().is_some_and(|k| !s.bindings.contains_key(k)) {
                s.last = None;
            }
        }
        let conns = c.link.connections.get();
        if conns != c.synced && c.link.up.get() {
            c.synced = conns;
            c.n.resyncs += 1;
            let now = Instant::now();
            for (k, b) in s.bindings.iter_mut() {
                b.written = Some(now);
                c.write(k, b.addr, b.last_seen);
            }
        }
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
    let cluster = srv.borrow().cluster.is_some();
    let (status, body) = match (method, path) {
        ("GET", "/bindings") => (200, srv.borrow().bindings_json()),
        ("POST", "/cr") if cluster && q.get("to").is_some_and(|t| t != "last") => {
            cluster_cr(&srv, &q).await
        }
        ("POST", "/cr") => match srv.borrow_mut().send_cr(&q) {
            Ok(v) => (200, v),
            Err(e) if cluster => bad_request(e),
            Err(e) => (400, json!({"ok": false, "error": e})),
        },
        ("GET", "/cpe") if cluster => cpe_record(&srv, &q).await,
        _ => (404, json!({"ok": false, "error": "not found"})),
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        410 => "Gone",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

/// `GET /cpe?key=KEY` (cluster mode): the registry's record of a CPE.
async fn cpe_record(srv: &Rc<RefCell<Server>>, q: &BTreeMap<String, String>) -> (u16, Value) {
    let Some(key) = q.get("key").filter(|k| !k.is_empty() && k.len() <= 512) else {
        return bad_request("`key` (1-512 bytes) is required");
    };
    let link = srv.borrow().cluster.as_ref().expect("cluster").link.clone();
    match link
        .call(vec![
            b"GET".to_vec(),
            format!("cwmp:cpe:{key}").into_bytes(),
        ])
        .await
    {
        Ok(Resp::Bulk(Some(v))) => {
            let rec = String::from_utf8_lossy(&v).into_owned();
            let f: Vec<&str> = rec.split(' ').collect();
            (
                200,
                json!({"ok": true, "key": key, "addr": f.first(), "owner": f.get(1),
                       "last_seen": f.get(2).and_then(|t| t.parse::<u64>().ok())}),
            )
        }
        Ok(Resp::Bulk(None)) => (
            404,
            json!({"ok": false, "result": "unknown_cpe",
                   "error": format!("no binding for {key:?} in the registry")}),
        ),
        Ok(other) => (
            503,
            json!({"ok": false, "result": "registry_unavailable",
                   "error": format!("unexpected registry answer {other:?}")}),
        ),
        Err(e) => (
            503,
            json!({"ok": false, "result": "registry_unavailable", "error": e}),
        ),
    }
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
