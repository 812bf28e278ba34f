//! UDP connection requests and the STUN client (TR-111 / TR-069 Annex G; SPEC-NOTES §c), on
//! one UDP socket.
//!
//! The socket bound to `[connreq] udp_listen` both sends the STUN Binding Requests (so that the
//! NAT binding the keep-alives hold open is the one UDP connection requests come back through)
//! and receives the UDP connection requests. Datagrams are demultiplexed by their first bytes
//! ([`stun::classify`]): STUN responses go to the client state machine, `GET …` datagrams to the
//! [`Validator`], everything else is dropped silently (a rate-limited debug line).
//!
//! STUN client, when `STUNEnable` is true:
//! * Binding Requests in the classic RFC 3489 form (what Annex G was written for; RFC 5389
//!   servers answer them too) to `STUNServerAddress:STUNServerPort` (empty address: the host of
//!   `ManagementServer.URL`), always with CONNECTION-REQUEST-BINDING, with BINDING-CHANGE when
//!   the mapped address changed (sent at once, outside the minimum keep-alive period).
//!   Responses in both forms are accepted (XOR-MAPPED-ADDRESS only when the magic cookie is there).
//! * Authentication: the first request has no credentials; a 401 makes it retry at once with
//!   USERNAME and MESSAGE-INTEGRITY (never when `STUNUsername` is empty), and later keep-alives
//!   carry them from the start. A 401 to an authenticated request (wrong password) backs off
//!   (5 s doubling, at most [`MAX_FAILURE_WAIT`]) with a warning in the log.
//! * Retransmission RFC 5389-style: RTO [`INITIAL_RTO`] doubling, [`MAX_SENDS`] sends, then a
//!   final wait of 16 RTO; a transaction gives up after 39.5 s and the next one follows the same
//!   bounded backoff.
//! * Keep-alive period: between `STUNMinimumKeepAlivePeriod` (at least 1 s) and
//!   `STUNMaximumKeepAlivePeriod` (-1: no maximum; a maximum below the minimum wins), found by
//!   binding-lifetime discovery (SPEC-NOTES §c.5 step 7, the Orange agent's method) unless the
//!   two are equal: after a keep-alive the primary socket stays idle for T seconds, then a
//!   Binding Request from a secondary socket asks (RESPONSE-ADDRESS) for the answer to be sent
//!   to the primary mapping. An answer on the primary socket means the binding survived T idle
//!   seconds; none means it had expired (a keep-alive at once re-creates it, with BINDING-CHANGE
//!   if the mapping moved); an answer on the secondary socket means the server ignores
//!   RESPONSE-ADDRESS (coturn does), and the minimum is used. T doubles from the minimum up to
//!   the maximum (at most [`DISCOVERY_CAP`] without one), then bisects between the longest
//!   interval survived and the shortest not survived; the period is 90 % of the longest
//!   interval survived, within the bounds. A mapping change after that restarts the discovery.
//! * Reports `UDPConnectionRequestAddress` (mapped `host:port`; the local address when STUN is
//!   off) and `NATDetected` (mapped ≠ the local source address/port; false when STUN is off).
//!
//! UDP connection requests: parsed and validated with [`Validator`] (username raw or decoded,
//! HMAC-SHA1 signature keyed with `ConnectionRequestPassword`, id/ts replay rules; the state
//! changes only after full validation, so the three copies an ACS sends start one session), then
//! the shared rate limiter; accepted requests go to the engine as a [`CrEvent`] with mechanism
//! `"udp"`. The time from the datagram's arrival to the trigger is logged (debug, `latency_us`).

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::backoff::RateLimiter;
use super::http::CrEvent;
use super::stun::{self, BindingRequest, DatagramKind, Integrity, TxId};
use super::udpcr::{self, Validator};

/// First retransmission timeout (RFC 5389 §7.2.1).
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Requests sent per transaction (RFC 5389 Rc).
pub const MAX_SENDS: u32 = 7;
/// Final wait after the last send, in RTOs (RFC 5389 Rm).
pub const FINAL_WAIT_RTOS: u32 = 16;
/// First wait after a failed transaction (timeout, 401 with wrong credentials, other error).
pub const FIRST_FAILURE_WAIT: Duration = Duration::from_secs(5);
/// Longest wait after repeated failures.
pub const MAX_FAILURE_WAIT: Duration = Duration::from_secs(600);
/// Upper bound of binding-lifetime discovery when `STUNMaximumKeepAlivePeriod` is -1.
pub const DISCOVERY_CAP: Duration = Duration::from_secs(1800);
/// Sends of one discovery probe (RTO [`INITIAL_RTO`] doubling, then a final wait of 4 RTO).
const PROBE_SENDS: u32 = 3;
/// Default `STUNServerPort`.
pub const DEFAULT_STUN_PORT: u16 = 3478;
/// Dropped datagrams logged per [`DROP_LOG_WINDOW`] (the rest are counted).
const DROP_LOG_BURST: u32 = 20;
const DROP_LOG_WINDOW: Duration = Duration::from_secs(10);

const MS: &str = "Device.ManagementServer.";
/// The status parameters this module reports.
pub const P_UDP_ADDRESS: &str = "Device.ManagementServer.UDPConnectionRequestAddress";
pub const P_NAT_DETECTED: &str = "Device.ManagementServer.NATDetected";

/// The STUN client's configuration, derived from `Device.ManagementServer.*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StunConfig {
    /// `STUNEnable`.
    pub enabled: bool,
    /// `STUNServerAddress`, or the host of `URL` when that is empty.
    pub server_host: String,
    /// `STUNServerPort` (0 or unparsable: 3478).
    pub server_port: u16,
    /// `STUNUsername`.
    pub username: String,
    /// `STUNPassword`.
    pub password: String,
    /// The keep-alive period in seconds without discovery (see the module documentation).
    pub period_s: u32,
    /// `STUNMinimumKeepAlivePeriod` (at least 1).
    pub min_s: u32,
    /// `STUNMaximumKeepAlivePeriod` (`None` for -1 or 0). `min_s` is lowered to it if larger.
    pub max_s: Option<u32>,
}

/// The UDP connection-request credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpCrCredentials {
    /// `ConnectionRequestUsername`; empty: every UDP connection request is dropped.
    pub username: String,
    /// `ConnectionRequestPassword`.
    pub password: String,
}

fn ms<'a>(s: &'a std::collections::BTreeMap<String, String>, name: &str) -> &'a str {
    s.get(&format!("{MS}{name}"))
        .map(String::as_str)
        .unwrap_or("")
}

fn truthy(v: &str) -> bool {
    v == "1" || v.eq_ignore_ascii_case("true")
}

/// The host part of an http(s) URL (`None` for anything else).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let auth = rest.split(['/', '?', '#']).next()?;
    let auth = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let host = if let Some(v6) = auth.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        auth.rsplit_once(':').map_or(auth, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The keep-alive period: the minimum (at least 1 s), unless a maximum (≠ -1) is smaller.
pub fn keepalive_period(min: &str, max: &str) -> u32 {
    let min = min.trim().parse::<u32>().unwrap_or(30).max(1);
    match max.trim().parse::<i64>() {
        Ok(m) if m >= 1 && m < i64::from(min) => m as u32,
        _ => min,
    }
}

/// Derives the STUN and UDP-CR configuration from the engine's settings snapshot.
pub fn read_settings(
    s: &std::collections::BTreeMap<String, String>,
) -> (StunConfig, UdpCrCredentials) {
    let addr = ms(s, "STUNServerAddress").trim();
    let server_host = if addr.is_empty() {
        url_host(ms(s, "URL")).unwrap_or_default()
    } else {
        addr.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    };
    let server_port = match ms(s, "STUNServerPort").trim().parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => DEFAULT_STUN_PORT,
    };
    let min_s = ms(s, "STUNMinimumKeepAlivePeriod")
        .trim()
        .parse::<u32>()
        .unwrap_or(30)
        .max(1);
    let max_s = match ms(s, "STUNMaximumKeepAlivePeriod").trim().parse::<i64>() {
        Ok(m) if m >= 1 => Some(u32::try_from(m).unwrap_or(u32::MAX)),
        _ => None,
    };
    // A maximum below the minimum wins (keep-alives at least every maximum).
    let min_s = max_s.map_or(min_s, |m| min_s.min(m));
    let stun = StunConfig {
        enabled: truthy(ms(s, "STUNEnable")),
        server_host,
        server_port,
        username: ms(s, "STUNUsername").to_string(),
        password: ms(s, "STUNPassword").to_string(),
        period_s: keepalive_period(
            ms(s, "STUNMinimumKeepAlivePeriod"),
            ms(s, "STUNMaximumKeepAlivePeriod"),
        ),
        min_s,
        max_s,
    };
    let cr = UdpCrCredentials {
        username: ms(s, "ConnectionRequestUsername").to_string(),
        password: ms(s, "ConnectionRequestPassword").to_string(),
    };
    (stun, cr)
}

fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No RNG: derive something unique from the clock (a transaction id need not be secret).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % t.len()] ^ (i as u8);
        }
    }
    b
}

fn classic_txid() -> TxId {
    let mut b: [u8; 16] = random();
    if b[..4] == stun::MAGIC_COOKIE.to_be_bytes() {
        b[0] ^= 0xff;
    }
    TxId::Classic(b)
}

/// One outstanding Binding Request.
struct Transaction {
    id: TxId,
    bytes: Vec<u8>,
    sends: u32,
    rto: Duration,
    deadline: Instant,
    authenticated: bool,
    binding_change: bool,
}

/// Where binding-lifetime discovery stands.
#[derive(Debug, Default)]
enum Phase {
    /// Not started (starts after the next successful keep-alive, if the bounds allow it).
    #[default]
    Off,
    /// Minimum == maximum: nothing to discover.
    NotNeeded,
    /// Idle until this instant, then probe.
    Wait(Instant),
    /// A probe is in flight.
    Probe {
        id: TxId,
        bytes: Vec<u8>,
        sends: u32,
        rto: Duration,
        deadline: Instant,
    },
    /// A probe result is in; the next keep-alive schedules the next probe.
    Next,
    /// Finished: the keep-alive period is known.
    Done,
    /// The server answers to the source, not to RESPONSE-ADDRESS: the minimum is used.
    Unsupported,
}

/// Binding-lifetime discovery state (see the module documentation).
#[derive(Debug, Default)]
struct Discovery {
    phase: Phase,
    /// The idle interval being tested, seconds.
    t: u32,
    /// Longest idle interval the binding survived.
    alive: Option<u32>,
    /// Shortest idle interval after which it was gone.
    dead: Option<u32>,
    /// The discovered keep-alive period.
    period: Option<Duration>,
    /// The secondary socket (only while discovering).
    sock: Option<UdpSocket>,
}

impl Discovery {
    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Wait(t) => Some(*t),
            Phase::Probe { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The next idle interval to test, or `None` when the search is over.
    fn next_interval(&self, min: u32, cap: u32) -> Option<u32> {
        match (self.alive, self.dead) {
            (None, None) => Some(min.min(cap)),
            (Some(a), None) => (a < cap).then(|| a.saturating_mul(2).min(cap)),
            (None, Some(_)) => None,
            (Some(a), Some(d)) => (d.saturating_sub(a) > (a / 8).max(1)).then(|| a + (d - a) / 2),
        }
    }
}

/// Logs dropped datagrams at debug level, at most [`DROP_LOG_BURST`] per window.
#[derive(Default)]
struct DropLog {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl DropLog {
    fn drop(&mut self, now: Instant, peer: SocketAddr, why: &dyn std::fmt::Display) {
        if self
            .window_start
            .is_none_or(|t| now.duration_since(t) >= DROP_LOG_WINDOW)
        {
            if self.suppressed > 0 {
                tracing::debug!(
                    "{} more UDP datagrams dropped in the last window",
                    self.suppressed
                );
            }
            self.window_start = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < DROP_LOG_BURST {
            self.logged += 1;
            tracing::debug!(%peer, "UDP datagram dropped: {why}");
        } else {
            self.suppressed += 1;
        }
    }
}

/// Outputs of the UDP task.
pub struct Outputs {
    /// Accepted connection requests (never blocks: a full channel means the engine coalesces).
    pub events: mpsc::Sender<CrEvent>,
    /// `(path, value)` status reports (UDPConnectionRequestAddress, NATDetected).
    pub status: mpsc::Sender<Vec<(String, String)>>,
}

struct Task {
    sock: UdpSocket,
    local: SocketAddr,
    stun: StunConfig,
    creds: UdpCrCredentials,
    acs_host: Option<String>,
    limiter: Rc<RefCell<RateLimiter>>,
    out: Outputs,
    validator: Validator,
    drops: DropLog,
    // STUN client state.
    server: Option<SocketAddr>,
    source_ip: Option<IpAddr>,
    tx: Option<Transaction>,
    send_credentials: bool,
    mapped: Option<SocketAddr>,
    pending_change: bool,
    next_send: Option<Instant>,
    failures: u32,
    reported: Option<(String, bool)>,
    disc: Discovery,
}

async fn recv_opt(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Serves the shared STUN / UDP connection-request socket until the process ends.
/// Must run on a tokio `LocalSet` (the rate limiter is shared through `Rc`).
pub async fn serve(
    sock: UdpSocket,
    mut settings: watch::Receiver<crate::engine::Settings>,
    limiter: Rc<RefCell<RateLimiter>>,
    out: Outputs,
) {
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("UDP connection-request socket: {e}");
            return;
        }
    };
    let snapshot = settings.borrow_and_update().clone();
    let (stun, creds) = read_settings(&snapshot);
    let mut t = Task {
        sock,
        local,
        stun: StunConfig::default(),
        creds,
        acs_host: url_host(ms(&snapshot, "URL")),
        limiter,
        out,
        validator: Validator::new(),
        drops: DropLog::default(),
        server: None,
        source_ip: None,
        tx: None,
        send_credentials: false,
        mapped: None,
        pending_change: false,
        next_send: None,
        failures: 0,
        // What the data model holds already: only real changes are reported (no write, and no
        // fsync, at every start).
        reported: Some((
            ms(&snapshot, "UDPConnectionRequestAddress").to_string(),
            truthy(ms(&snapshot, "NATDetected")),
        )),
        disc: Discovery::default(),
    };
    t.reconfigure(stun).await;
    let mut watching = true;
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    loop {
        let deadline = t.deadline();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = t.sock.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    let at = Instant::now();
                    t.on_datagram(&buf[..n], peer, at).await;
                }
                Err(e) => {
                    // ICMP port unreachable surfaces here on Linux; not fatal.
                    tracing::debug!("UDP receive: {e}");
                }
            },
            ch = settings.changed(), if watching => {
                if ch.is_err() {
                    watching = false;
                    continue;
                }
                let snap = settings.borrow_and_update().clone();
                let (stun, creds) = read_settings(&snap);
                t.creds = creds;
                let acs_host = url_host(ms(&snap, "URL"));
                let acs_changed = acs_host != t.acs_host;
                t.acs_host = acs_host;
                if stun != t.stun || (acs_changed && !t.stun.enabled) {
                    t.reconfigure(stun).await;
                }
            },
            r = recv_opt(t.disc.sock.as_ref(), &mut buf2) => {
                if let Ok((n, peer)) = r {
                    t.on_secondary(&buf2[..n], peer, Instant::now());
                }
            },
            _ = timer => t.on_timer(Instant::now()).await,
        }
    }
}

impl Task {
    fn deadline(&self) -> Option<Instant> {
        let main = match &self.tx {
            Some(tx) => Some(tx.deadline),
            None => self.next_send,
        };
        match (main, self.disc.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The keep-alive period in force.
    fn period(&self) -> Duration {
        self.disc
            .period
            .unwrap_or(Duration::from_secs(u64::from(self.stun.period_s)))
    }

    fn discovery_cap(&self) -> u32 {
        self.stun
            .max_s
            .unwrap_or(DISCOVERY_CAP.as_secs() as u32)
            .max(self.stun.min_s)
    }

    /// After a successful keep-alive: schedule the next keep-alive, or the next probe.
    fn after_keepalive(&mut self, now: Instant) {
        if matches!(self.disc.phase, Phase::Off) {
            if self.discovery_cap() <= self.stun.min_s {
                self.disc.phase = Phase::NotNeeded;
            } else {
                let any: IpAddr = if self.local.is_ipv4() {
                    Ipv4Addr::UNSPECIFIED.into()
                } else {
                    Ipv6Addr::UNSPECIFIED.into()
                };
                let ip = self.source_ip.unwrap_or(any);
                match std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
                    .and_then(|s| s.set_nonblocking(true).map(|_| s))
                    .and_then(UdpSocket::from_std)
                {
                    Ok(s) => {
                        tracing::info!(
                            "STUN binding-lifetime discovery between {} and {} s",
                            self.stun.min_s,
                            self.discovery_cap()
                        );
                        self.disc.sock = Some(s);
                        self.disc.phase = Phase::Next;
                    }
                    Err(e) => {
                        tracing::warn!("binding-lifetime discovery: no secondary socket: {e}");
                        self.disc.phase = Phase::Unsupported;
                    }
                }
            }
        }
        if matches!(self.disc.phase, Phase::Next) {
            match self
                .disc
                .next_interval(self.stun.min_s, self.discovery_cap())
            {
                Some(t) => {
                    self.disc.t = t;
                    self.disc.phase = Phase::Wait(now + Duration::from_secs(u64::from(t)));
                    self.next_send = None;
                    tracing::debug!("binding-lifetime discovery: probing after {t} s idle");
                    return;
                }
                None => self.finish_discovery(),
            }
        }
        self.next_send = Some(now + self.period());
    }

    fn finish_discovery(&mut self) {
        let min = Duration::from_secs(u64::from(self.stun.min_s));
        let max = Duration::from_secs(u64::from(self.discovery_cap()));
        let p = match self.disc.alive {
            Some(a) => (Duration::from_secs(u64::from(a)) * 9 / 10).clamp(min, max),
            None => min,
        };
        if self.disc.alive.is_none() {
            tracing::warn!(
                "NAT binding lifetime is below STUNMinimumKeepAlivePeriod ({} s): UDP connection requests may be lost",
                self.stun.min_s
            );
        }
        tracing::info!(
            "STUN binding-lifetime discovery done: binding alive after {:?} s idle, gone after {:?} s; keep-alive every {:.1} s",
            self.disc.alive,
            self.disc.dead,
            p.as_secs_f64()
        );
        self.disc.period = Some(p);
        self.disc.sock = None;
        self.disc.phase = Phase::Done;
    }

    /// A probe result: the binding survived `self.disc.t` idle seconds, or not.
    fn probe_result(&mut self, now: Instant, alive: bool) {
        let t = self.disc.t;
        tracing::debug!(
            "binding-lifetime discovery: binding {} after {t} s idle",
            if alive { "alive" } else { "gone" }
        );
        if alive {
            self.disc.alive = Some(self.disc.alive.map_or(t, |a| a.max(t)));
        } else {
            self.disc.dead = Some(self.disc.dead.map_or(t, |d| d.min(t)));
        }
        self.disc.phase = Phase::Next;
        // A keep-alive at once: refreshes (or re-creates) the binding before the next probe.
        self.next_send = Some(now);
    }

    async fn send_probe(&mut self, now: Instant) {
        let (Some(server), Some(mapped), Some(sock)) =
            (self.server, self.mapped, self.disc.sock.as_ref())
        else {
            self.disc.phase = Phase::Next;
            self.next_send = Some(now);
            return;
        };
        let id = classic_txid();
        let authenticated = self.send_credentials && !self.stun.username.is_empty();
        let req = BindingRequest {
            username: authenticated.then_some(self.stun.username.as_str()),
            password: authenticated.then_some(self.stun.password.as_str()),
            connection_request_binding: false,
            response_address: Some(mapped),
            ..BindingRequest::new(id)
        };
        let Ok(bytes) = req.encode() else {
            self.disc.phase = Phase::Unsupported;
            self.next_send = Some(now);
            return;
        };
        let _ = sock.send_to(&bytes, server).await;
        self.disc.phase = Phase::Probe {
            id,
            bytes,
            sends: 1,
            rto: INITIAL_RTO,
            deadline: now + INITIAL_RTO,
        };
    }

    async fn on_discovery_timer(&mut self, now: Instant) {
        match &mut self.disc.phase {
            Phase::Wait(at) if now >= *at => self.send_probe(now).await,
            Phase::Probe {
                bytes,
                sends,
                rto,
                deadline,
                ..
            } if now >= *deadline => {
                if *sends >= PROBE_SENDS {
                    self.probe_result(now, false);
                    return;
                }
                *sends += 1;
                *rto *= 2;
                *deadline = now
                    + if *sends >= PROBE_SENDS {
                        *rto * 2
                    } else {
                        *rto
                    };
                let bytes = bytes.clone();
                if let (Some(s), Some(server)) = (self.disc.sock.as_ref(), self.server) {
                    let _ = s.send_to(&bytes, server).await;
                }
            }
            _ => {}
        }
    }

    /// A datagram on the secondary socket: the answer to a probe came back to its source, so
    /// the server ignores RESPONSE-ADDRESS.
    fn on_secondary(&mut self, data: &[u8], peer: SocketAddr, now: Instant) {
        let Phase::Probe { id, .. } = &self.disc.phase else {
            return;
        };
        if Some(peer) != self.server || stun::parse_response(data, id).is_err() {
            return;
        }
        tracing::info!(
            "STUN server {peer} ignores RESPONSE-ADDRESS: no binding-lifetime discovery, keep-alive every {} s",
            self.stun.period_s
        );
        self.disc.sock = None;
        self.disc.phase = Phase::Unsupported;
        self.next_send = Some(now);
    }

    async fn reconfigure(&mut self, stun: StunConfig) {
        let was = self.stun.enabled;
        self.stun = stun;
        self.tx = None;
        self.server = None;
        self.source_ip = None;
        self.send_credentials = false;
        self.failures = 0;
        self.pending_change = false;
        self.disc = Discovery::default();
        if self.stun.enabled {
            if !was {
                tracing::info!(
                    "STUN enabled: server {}:{}, keep-alive every {} s",
                    self.stun.server_host,
                    self.stun.server_port,
                    self.stun.period_s
                );
            }
            self.next_send = Some(Instant::now());
        } else {
            if was {
                tracing::info!("STUN disabled");
            }
            self.mapped = None;
            self.next_send = None;
            let local = self.local_address().await;
            self.report(local.map(udpcr::authority).unwrap_or_default(), false)
                .await;
        }
    }

    /// The local address a UDP connection request reaches when there is no NAT: the bound
    /// address, or (when bound to the wildcard) the source address toward the ACS.
    async fn local_address(&self) -> Option<SocketAddr> {
        if !self.local.ip().is_unspecified() {
            return Some(self.local);
        }
        let host = self.acs_host.as_deref()?;
        let target = resolve(host, 80, self.local).await?;
        source_ip_toward(target, self.local).map(|ip| SocketAddr::new(ip, self.local.port()))
    }

    async fn report(&mut self, address: String, nat: bool) {
        let new = (address, nat);
        if self.reported.as_ref() == Some(&new) {
            return;
        }
        tracing::info!(
            "UDPConnectionRequestAddress = {:?}, NATDetected = {}",
            new.0,
            new.1
        );
        let values = vec![
            (P_UDP_ADDRESS.to_string(), new.0.clone()),
            (P_NAT_DETECTED.to_string(), new.1.to_string()),
        ];
        self.reported = Some(new);
        let _ = self.out.status.send(values).await;
    }

    fn failure_wait(&self) -> Duration {
        debug_assert!(self.stun.period_s >= 1);
        let exp = self.failures.saturating_sub(1).min(16);
        let w = FIRST_FAILURE_WAIT.saturating_mul(1u32 << exp);
        w.clamp(
            Duration::from_secs(u64::from(self.stun.period_s).min(MAX_FAILURE_WAIT.as_secs())),
            MAX_FAILURE_WAIT,
        )
    }

    fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.tx = None;
        let w = self.failure_wait();
        self.next_send = Some(now + w);
        w
    }

    async fn on_timer(&mut self, now: Instant) {
        if self.disc.deadline().is_some_and(|d| now >= d) {
            self.on_discovery_timer(now).await;
        }
        if let Some(tx) = &mut self.tx {
            if now < tx.deadline {
                return;
            }
            if tx.sends >= MAX_SENDS {
                let server = self.server;
                self.server = None; // re-resolve next time
                let w = self.fail(now);
                tracing::warn!(
                    "no STUN response from {} after {MAX_SENDS} attempts; next try in {} s",
                    server.map(|s| s.to_string()).unwrap_or_default(),
                    w.as_secs()
                );
                return;
            }
            tx.sends += 1;
            tx.rto *= 2;
            tx.deadline = now
                + if tx.sends >= MAX_SENDS {
                    INITIAL_RTO * FINAL_WAIT_RTOS
                } else {
                    tx.rto
                };
            let (bytes, server) = (tx.bytes.clone(), self.server);
            if let Some(s) = server {
                tracing::debug!(%s, "STUN retransmission");
                let _ = self.sock.send_to(&bytes, s).await;
            }
            return;
        }
        if self.stun.enabled && self.next_send.is_some_and(|t| now >= t) {
            self.next_send = None;
            self.start_transaction(now).await;
        }
    }

    async fn start_transaction(&mut self, now: Instant) {
        if self.server.is_none() {
            if self.stun.server_host.is_empty() {
                let w = self.fail(now);
                tracing::warn!(
                    "STUN enabled but neither STUNServerAddress nor the ACS URL names a server; next try in {} s",
                    w.as_secs()
                );
                return;
            }
            match resolve(&self.stun.server_host, self.stun.server_port, self.local).await {
                Some(a) => {
                    self.server = Some(a);
                    self.source_ip = if self.local.ip().is_unspecified() {
                        source_ip_toward(a, self.local)
                    } else {
                        Some(self.local.ip())
                    };
                }
                None => {
                    let w = self.fail(now);
                    tracing::warn!(
                        "cannot resolve STUN server {:?}; next try in {} s",
                        self.stun.server_host,
                        w.as_secs()
                    );
                    return;
                }
            }
        }
        let Some(server) = self.server else { return };
        let id = classic_txid();
        let authenticated = self.send_credentials && !self.stun.username.is_empty();
        let binding_change = self.pending_change;
        let req = BindingRequest {
            username: authenticated.then_some(self.stun.username.as_str()),
            password: authenticated.then_some(self.stun.password.as_str()),
            binding_change,
            ..BindingRequest::new(id)
        };
        let bytes = match req.encode() {
            Ok(b) => b,
            Err(e) => {
                let w = self.fail(now);
                tracing::warn!(
                    "cannot encode a STUN Binding Request ({e}); next try in {} s",
                    w.as_secs()
                );
                return;
            }
        };
        tracing::debug!(%server, authenticated, binding_change, "STUN Binding Request");
        if let Err(e) = self.sock.send_to(&bytes, server).await {
            tracing::debug!(%server, "STUN send: {e}");
        }
        self.tx = Some(Transaction {
            id,
            bytes,
            sends: 1,
            rto: INITIAL_RTO,
            deadline: now + INITIAL_RTO,
            authenticated,
            binding_change,
        });
    }

    async fn on_datagram(&mut self, data: &[u8], peer: SocketAddr, at: Instant) {
        match stun::classify(data) {
            DatagramKind::Stun => self.on_stun(data, peer, at).await,
            DatagramKind::UdpConnectionRequest => self.on_cr(data, peer, at),
            DatagramKind::Other => {
                self.drops
                    .drop(at, peer, &"neither STUN nor a connection request")
            }
        }
    }

    async fn on_stun(&mut self, data: &[u8], peer: SocketAddr, now: Instant) {
        if let Phase::Probe { id, .. } = &self.disc.phase
            && Some(peer) == self.server
            && stun::parse_response(data, id).is_ok()
        {
            // The answer to a probe reached the primary binding: it is alive.
            self.probe_result(now, true);
            return;
        }
        let Some(tx) = &self.tx else {
            self.drops
                .drop(now, peer, &"STUN message without a pending request");
            return;
        };
        if Some(peer) != self.server {
            self.drops
                .drop(now, peer, &"STUN message not from the STUN server");
            return;
        }
        let resp = match stun::parse_response(data, &tx.id) {
            Ok(r) => r,
            Err(e) => {
                self.drops.drop(now, peer, &e);
                return;
            }
        };
        if tx.authenticated
            && resp.has_integrity
            && stun::check_integrity(data, self.stun.password.as_bytes()) == Integrity::Invalid
        {
            self.drops
                .drop(now, peer, &"STUN response with a bad MESSAGE-INTEGRITY");
            return;
        }
        let (authenticated, binding_change) = (tx.authenticated, tx.binding_change);
        self.tx = None;
        if let Some((code, reason)) = &resp.error {
            if resp.is_unauthorized() && !authenticated && !self.stun.username.is_empty() {
                tracing::debug!("STUN server asks for credentials (401); retrying with them");
                self.send_credentials = true;
                self.start_transaction(now).await;
                return;
            }
            let w = self.fail(now);
            if resp.is_unauthorized() && self.stun.username.is_empty() {
                tracing::warn!(
                    "STUN server {peer} requires authentication (401) but STUNUsername is empty; next try in {} s",
                    w.as_secs()
                );
            } else if resp.is_unauthorized() {
                tracing::warn!(
                    "STUN authentication failed: server {peer} rejected STUNUsername/STUNPassword (401); backing off, next try in {} s",
                    w.as_secs()
                );
            } else {
                tracing::warn!(
                    "STUN server {peer} answered error {code} {:?}; next try in {} s",
                    reason.trim_end_matches(['\0', ' ']),
                    w.as_secs()
                );
            }
            return;
        }
        let Some(mapped) = resp.mapped else { return };
        if self.failures > 0 {
            tracing::info!("STUN server {peer} answers again");
        }
        self.failures = 0;
        let changed = self.mapped.is_some_and(|m| m != mapped);
        self.mapped = Some(mapped);
        if changed {
            tracing::info!("STUN mapped address changed to {mapped}: sending BINDING-CHANGE");
            self.pending_change = true;
            self.next_send = Some(now);
            if matches!(self.disc.phase, Phase::Done) {
                // The NAT may have changed (or the period is too long): discover again.
                self.disc = Discovery::default();
            }
        } else {
            if binding_change {
                self.pending_change = false;
            }
            self.after_keepalive(now);
        }
        let local = self
            .source_ip
            .map(|ip| SocketAddr::new(ip, self.local.port()));
        let nat = Some(mapped) != local;
        tracing::debug!(%mapped, ?local, nat, "STUN Binding Response");
        self.report(udpcr::authority(mapped), nat).await;
    }

    fn on_cr(&mut self, data: &[u8], peer: SocketAddr, at: Instant) {
        if self.creds.username.is_empty() {
            self.drops.drop(
                at,
                peer,
                &"UDP connection request: ConnectionRequestUsername is not set",
            );
            return;
        }
        let cr = match udpcr::parse(data) {
            Ok(cr) => cr,
            Err(e) => {
                self.drops
                    .drop(at, peer, &format_args!("UDP connection request: {e}"));
                return;
            }
        };
        if let Err(r) = self
            .validator
            .check(&cr, &self.creds.username, &self.creds.password)
        {
            self.drops
                .drop(at, peer, &format_args!("UDP connection request: {r}"));
            return;
        }
        self.validator.accept(&cr);
        if !self.limiter.borrow_mut().try_acquire(at) {
            tracing::warn!(%peer, "UDP connection request dropped: rate limit exceeded");
            return;
        }
        let ev = CrEvent {
            mechanism: "udp",
            received: at,
            peer,
        };
        match self.out.events.try_send(ev) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!(%peer, "UDP connection request accepted but the engine is gone")
            }
        }
        tracing::debug!(
            %peer,
            id = %cr.id,
            latency_us = at.elapsed().as_micros() as u64,
            "UDP connection request accepted"
        );
    }
}

/// Resolves `host:port` to an address of the socket's family.
async fn resolve(host: &str, port: u16, local: SocketAddr) -> Option<SocketAddr> {
    let want_v4 = local.is_ipv4();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return (ip.is_ipv4() == want_v4).then_some(SocketAddr::new(ip, port));
    }
    let addrs = tokio::net::lookup_host((host, port)).await.ok()?;
    addrs.into_iter().find(|a| a.is_ipv4() == want_v4)
}

/// The source IP the kernel would use toward `target` (a connected UDP socket sends nothing).
fn source_ip_toward(target: SocketAddr, local: SocketAddr) -> Option<IpAddr> {
    let any: IpAddr = if local.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    s.connect(target).ok()?;
    Some(s.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("http://acs.example:7547/acs").as_deref(),
            Some("acs.example")
        );
        assert_eq!(
            url_host("https://u:p@10.0.0.1/x").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            url_host("http://[2001:db8::1]:80/").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(url_host("http://h?x").as_deref(), Some("h"));
        assert_eq!(url_host(""), None);
        assert_eq!(url_host("http:///x"), None);
    }

    #[test]
    fn keepalive_periods() {
        assert_eq!(keepalive_period("30", "-1"), 30);
        assert_eq!(keepalive_period("0", "-1"), 1);
        assert_eq!(keepalive_period("30", "10"), 10);
        assert_eq!(keepalive_period("30", "0"), 30);
        assert_eq!(keepalive_period("x", ""), 30);
        assert_eq!(keepalive_period("5", "60"), 5);
    }

    #[test]
    fn settings_fallbacks() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(format!("{MS}URL"), "http://acs.test:7547/cwmp".to_string());
        m.insert(format!("{MS}STUNEnable"), "true".to_string());
        m.insert(format!("{MS}STUNServerPort"), "0".to_string());
        let (s, c) = read_settings(&m);
        assert!(s.enabled);
        assert_eq!(s.server_host, "acs.test");
        assert_eq!(s.server_port, 3478);
        assert_eq!(s.period_s, 30);
        assert!(c.username.is_empty());
        m.insert(format!("{MS}STUNServerAddress"), "stun.test".to_string());
        assert_eq!(read_settings(&m).0.server_host, "stun.test");
    }
}
