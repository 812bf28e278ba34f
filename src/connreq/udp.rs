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
//!   `STUNMaximumKeepAlivePeriod` (-1: no maximum; a maximum below the minimum wins). Until the
//!   binding lifetime is known, and whenever it cannot be found, the CR socket sends its
//!   keep-alives every minimum period.
//! * Binding-lifetime discovery (SPEC-NOTES §c.5 step 7; the method of RFC 5780 §4.6), unless
//!   the two bounds are equal. It never touches the CR socket's binding, which keeps its
//!   keep-alives every minimum period all along, so UDP connection requests keep arriving and
//!   the mapping does not move. Two secondary sockets are used instead. The *idle* socket
//!   sends a Binding Request (which creates or refreshes its own NAT binding and tells its
//!   mapped address), then stays silent for T seconds; then the *prober* socket sends a Binding
//!   Request with RESPONSE-ADDRESS = the idle socket's mapped address. An answer on the idle
//!   socket means its binding survived T idle seconds; none (after retransmissions) means it
//!   had expired, which is believed only once the idle socket hears from the server again (so a
//!   server that went away is not taken for a short binding lifetime); an answer on the prober
//!   socket means the server ignores RESPONSE-ADDRESS (coturn does), and the minimum is used.
//!   The secondary requests carry no CONNECTION-REQUEST-BINDING, so a TR-111 server does not
//!   take them for the CR binding. T doubles from the minimum up to the maximum (at most
//!   [`DISCOVERY_CAP`] without one), then bisects between the longest interval survived and the
//!   shortest not survived; the period is 90 % of the longest interval survived, within the
//!   bounds. A mapping change after that restarts the discovery.
//! * Reports `UDPConnectionRequestAddress` (mapped `host:port`; the local address when STUN is
//!   off) and `NATDetected` (mapped ≠ the local source address/port; false when STUN is off).
//!
//! UDP connection requests: parsed and validated with [`Validator`] (username raw or decoded,
//! HMAC-SHA1 signature keyed with `ConnectionRequestPassword`, id/ts replay rules; the state
//! changes only after full validation, so the three copies an ACS sends start one session), then
//! the shared rate limiter; accepted requests go to the engine as a [`CrEvent`] with mechanism
//! `"udp"`. The time from the datagram's arrival to the trigger is logged (debug, `latency_us`).
//! While the wall clock is taken as synchronised (after 2020), `ts` must also lie within
//! [`udpcr::CLOCK_WINDOW_S`] of it.
//!
//! The replay state (the latest accepted `ts` and every id accepted at it) is kept in
//! `state_dir/`[`REPLAY_FILE`] (0600, written atomically: temp file, fsync, rename, fsync of the
//! directory) and loaded at start, so a captured datagram is not accepted again after a
//! restart ([`serve`]). It is written [`REPLAY_SAVE_DELAY`] after an acceptance,
//! off the path from the datagram to the session (an fsync costs milliseconds on flash), and at
//! shutdown; several acceptances within that delay make one write. A power cut within that
//! delay can lose the last acceptance, which the clock window then still bounds.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
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
/// Sends of one discovery request (RTO [`INITIAL_RTO`] doubling, then a final wait of 2 RTO).
const PROBE_SENDS: u32 = 3;
/// Refreshes of the idle socket's binding left unanswered in a row before discovery gives up.
const MAX_REFRESH_FAILURES: u32 = 3;
/// The file in the state directory that keeps the UDP connection-request replay state.
pub const REPLAY_FILE: &str = "udpcr-replay";
/// How long after an accepted UDP connection request its replay state is written.
pub const REPLAY_SAVE_DELAY: Duration = Duration::from_millis(100);
/// At most one warning per this long about requests refused for the clock window.
const WINDOW_WARN_EVERY: Duration = Duration::from_secs(600);
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

/// A binding-lifetime discovery request in flight (from the idle or the prober socket).
#[derive(Debug)]
struct DiscoveryTx {
    id: TxId,
    bytes: Vec<u8>,
    sends: u32,
    rto: Duration,
    deadline: Instant,
}

impl DiscoveryTx {
    fn new(id: TxId, bytes: Vec<u8>, now: Instant) -> Self {
        DiscoveryTx {
            id,
            bytes,
            sends: 1,
            rto: INITIAL_RTO,
            deadline: now + INITIAL_RTO,
        }
    }

    /// Time for the next retransmission: `Some(bytes)` to send again, `None` when the request
    /// has had all its sends and final wait.
    fn retransmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.sends >= PROBE_SENDS {
            return None;
        }
        self.sends += 1;
        self.rto *= 2;
        self.deadline = now
            + if self.sends >= PROBE_SENDS {
                self.rto * 2
            } else {
                self.rto
            };
        Some(self.bytes.clone())
    }
}

/// Where binding-lifetime discovery stands.
#[derive(Debug, Default)]
enum Phase {
    /// Not started (starts after the next successful keep-alive, if the bounds allow it).
    #[default]
    Off,
    /// Minimum == maximum: nothing to discover.
    NotNeeded,
    /// A Binding Request from the idle socket: (re)creates its binding, learns its mapping.
    Refresh(DiscoveryTx),
    /// The idle socket's binding is left alone until this instant, then probed.
    Wait(Instant),
    /// A Binding Request from the prober socket asks for the answer at the idle mapping.
    Probe(DiscoveryTx),
    /// The idle socket got no answer: refresh again at this instant.
    Pause(Instant),
    /// Finished: the keep-alive period is known.
    Done,
    /// Not possible (the server ignores RESPONSE-ADDRESS, refuses the secondary requests, or
    /// does not answer them): the minimum is used.
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
    /// The STUN server the discovery talks to (the one that answered the CR socket when it
    /// started; the CR socket's re-resolutions after failures do not disturb it).
    server: Option<SocketAddr>,
    /// The socket whose binding is left idle and tested (only while discovering).
    idle: Option<UdpSocket>,
    /// The socket that asks the server to answer to the idle binding (only while discovering).
    prober: Option<UdpSocket>,
    /// The idle socket's mapped address, from its last refresh.
    idle_mapped: Option<SocketAddr>,
    /// The last probe went unanswered; counted as "gone after `t`" once the idle socket hears
    /// from the server again.
    unconfirmed_dead: bool,
    /// Refreshes of the idle binding left unanswered in a row.
    refresh_failures: u32,
}

impl Discovery {
    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Wait(t) | Phase::Pause(t) => Some(*t),
            Phase::Refresh(tx) | Phase::Probe(tx) => Some(tx.deadline),
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

    /// Drops the secondary sockets and ends in `phase`.
    fn stop(&mut self, phase: Phase) {
        self.idle = None;
        self.prober = None;
        self.idle_mapped = None;
        self.phase = phase;
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
    replay: ReplayStore,
    /// When a request refused for the clock window was last logged as a warning.
    window_warned: Option<Instant>,
}

impl Drop for Task {
    fn drop(&mut self) {
        // Shutdown (the runtime drops its tasks): a pending replay state is written now.
        if self.replay.save_at.is_some() {
            self.replay.save(&self.validator);
        }
    }
}

/// Where the UDP connection-request replay state is persisted (see the module documentation).
#[derive(Debug, Default)]
struct ReplayStore {
    /// `state_dir/REPLAY_FILE`; `None`: kept in memory only.
    path: Option<PathBuf>,
    /// A changed state waits to be written at this instant.
    save_at: Option<Instant>,
    /// The last write failed (logged once until a write succeeds).
    failing: bool,
}

impl ReplayStore {
    /// Loads the persisted state. A missing file is a fresh start; an unreadable or invalid one
    /// is logged and replaced at the next acceptance (the clock window still applies).
    fn load(&self, now_unix: u64) -> Validator {
        let Some(path) = &self.path else {
            return Validator::new();
        };
        let read = std::fs::File::open(path).and_then(|f| {
            use std::io::Read;
            let mut data = Vec::new();
            // Bounded: one byte more than the largest valid state tells it is too large.
            f.take(udpcr::MAX_STATE_BYTES as u64 + 1)
                .read_to_end(&mut data)?;
            Ok(data)
        });
        let v = match read {
            Ok(data) => match Validator::decode_state(&data) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(
                        "UDP connection-request replay state {}: {e}; starting without it",
                        path.display()
                    );
                    return Validator::new();
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Validator::new(),
            Err(e) => {
                tracing::warn!(
                    "UDP connection-request replay state {}: {e}; starting without it",
                    path.display()
                );
                return Validator::new();
            }
        };
        tracing::debug!(
            last_ts = v.last_ts,
            ids = v.last_ids.len(),
            "UDP connection-request replay state loaded"
        );
        if udpcr::clock_synchronised(now_unix)
            && v.last_ts > now_unix.saturating_add(udpcr::CLOCK_WINDOW_S)
        {
            tracing::warn!(
                "the last accepted UDP connection request is stamped {} s ahead of the clock: \
                 UDP connection requests stamped before it are refused",
                v.last_ts - now_unix
            );
        }
        v
    }

    /// Schedules a write of the state (after [`REPLAY_SAVE_DELAY`]; one write for a burst).
    fn changed(&mut self, now: Instant) {
        if self.path.is_some() && self.save_at.is_none() {
            self.save_at = Some(now + REPLAY_SAVE_DELAY);
        }
    }

    fn save(&mut self, v: &Validator) {
        self.save_at = None;
        let Some(path) = &self.path else { return };
        match crate::util::fsutil::write_atomic(path, &v.encode_state(), false) {
            Ok(()) => {
                if self.failing {
                    tracing::info!("UDP connection-request replay state written again");
                }
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(
                        "cannot write the UDP connection-request replay state {}: {e}; \
                         a captured request may be accepted again after a restart",
                        path.display()
                    );
                }
                self.failing = true;
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// Serves the shared STUN / UDP connection-request socket until the process ends, with the
/// replay state persisted in `state_dir` (file [`REPLAY_FILE`]; the directory must exist).
/// Must run on a tokio `LocalSet` (the rate limiter is shared through `Rc`).
pub async fn serve(
    sock: UdpSocket,
    settings: watch::Receiver<crate::engine::Settings>,
    limiter: Rc<RefCell<RateLimiter>>,
    out: Outputs,
    state_dir: PathBuf,
) {
    run(
        sock,
        settings,
        limiter,
        out,
        Some(state_dir.join(REPLAY_FILE)),
    )
    .await
}

async fn run(
    sock: UdpSocket,
    mut settings: watch::Receiver<crate::engine::Settings>,
    limiter: Rc<RefCell<RateLimiter>>,
    out: Outputs,
    replay_file: Option<PathBuf>,
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
    let replay = ReplayStore {
        path: replay_file,
        ..ReplayStore::default()
    };
    let validator = replay.load(unix_now());
    let mut t = Task {
        sock,
        local,
        stun: StunConfig::default(),
        creds,
        acs_host: url_host(ms(&snapshot, "URL")),
        limiter,
        out,
        validator,
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
        replay,
        window_warned: None,
    };
    t.reconfigure(stun).await;
    let mut watching = true;
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let mut buf3 = vec![0u8; 2048];
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
            r = recv_opt(t.disc.idle.as_ref(), &mut buf2) => {
                if let Ok((n, peer)) = r {
                    t.on_idle_socket(&buf2[..n], peer, Instant::now()).await;
                }
            },
            r = recv_opt(t.disc.prober.as_ref(), &mut buf3) => {
                if let Ok((n, peer)) = r {
                    t.on_prober_socket(&buf3[..n], peer, Instant::now());
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
        [main, self.disc.deadline(), self.replay.save_at]
            .into_iter()
            .flatten()
            .min()
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

    /// Whether requests are sent with USERNAME and MESSAGE-INTEGRITY.
    fn authenticated(&self) -> bool {
        self.send_credentials && !self.stun.username.is_empty()
    }

    /// A secondary socket for discovery, on the CR socket's source address.
    fn secondary_socket(&self) -> std::io::Result<UdpSocket> {
        let any: IpAddr = if self.local.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let ip = self.source_ip.unwrap_or(any);
        let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s)
    }

    /// After a successful keep-alive: schedules the next one (every minimum period until the
    /// binding lifetime is known) and starts binding-lifetime discovery if it has not run yet.
    async fn after_keepalive(&mut self, now: Instant) {
        self.next_send = Some(now + self.period());
        if !matches!(self.disc.phase, Phase::Off) {
            return;
        }
        if self.discovery_cap() <= self.stun.min_s {
            self.disc.phase = Phase::NotNeeded;
            return;
        }
        match self.secondary_socket().and_then(|idle| {
            let prober = self.secondary_socket()?;
            Ok((idle, prober))
        }) {
            Ok((idle, prober)) => {
                tracing::info!(
                    "STUN binding-lifetime discovery between {} and {} s (secondary bindings; \
                     keep-alives every {} s meanwhile)",
                    self.stun.min_s,
                    self.discovery_cap(),
                    self.period().as_secs_f64()
                );
                self.disc.server = self.server;
                self.disc.idle = Some(idle);
                self.disc.prober = Some(prober);
                self.refresh_idle(now).await;
            }
            Err(e) => {
                tracing::warn!("binding-lifetime discovery: no secondary socket: {e}");
                self.disc.stop(Phase::Unsupported);
            }
        }
    }

    /// A discovery request (no CONNECTION-REQUEST-BINDING: not the CR binding).
    fn discovery_request(&self, response_address: Option<SocketAddr>) -> Option<(TxId, Vec<u8>)> {
        let id = classic_txid();
        let authenticated = self.authenticated();
        let req = BindingRequest {
            username: authenticated.then_some(self.stun.username.as_str()),
            password: authenticated.then_some(self.stun.password.as_str()),
            connection_request_binding: false,
            response_address,
            ..BindingRequest::new(id)
        };
        req.encode().ok().map(|b| (id, b))
    }

    /// Sends a Binding Request from the idle socket: creates (or refreshes) its binding and
    /// learns its mapped address.
    async fn refresh_idle(&mut self, now: Instant) {
        let (Some(server), Some((id, bytes))) = (self.disc.server, self.discovery_request(None))
        else {
            self.disc.stop(Phase::Unsupported);
            return;
        };
        if let Some(s) = &self.disc.idle {
            let _ = s.send_to(&bytes, server).await;
        }
        self.disc.phase = Phase::Refresh(DiscoveryTx::new(id, bytes, now));
    }

    /// After `t` idle seconds: asks the server, from the prober socket, to answer at the idle
    /// socket's mapped address.
    async fn send_probe(&mut self, now: Instant) {
        let (Some(server), Some(mapped)) = (self.disc.server, self.disc.idle_mapped) else {
            self.disc.stop(Phase::Unsupported);
            return;
        };
        let Some((id, bytes)) = self.discovery_request(Some(mapped)) else {
            self.disc.stop(Phase::Unsupported);
            return;
        };
        tracing::debug!(
            "binding-lifetime discovery: probing {mapped} after {} s idle",
            self.disc.t
        );
        if let Some(s) = &self.disc.prober {
            let _ = s.send_to(&bytes, server).await;
        }
        self.disc.phase = Phase::Probe(DiscoveryTx::new(id, bytes, now));
    }

    /// The idle socket's binding is known to be fresh: count a pending "gone" verdict, then
    /// leave the binding idle for the next interval, or finish.
    fn idle_refreshed(&mut self, now: Instant) {
        self.disc.refresh_failures = 0;
        if std::mem::take(&mut self.disc.unconfirmed_dead) {
            let t = self.disc.t;
            tracing::debug!("binding-lifetime discovery: binding gone after {t} s idle");
            self.disc.dead = Some(self.disc.dead.map_or(t, |d| d.min(t)));
        }
        match self
            .disc
            .next_interval(self.stun.min_s, self.discovery_cap())
        {
            Some(t) => {
                self.disc.t = t;
                self.disc.phase = Phase::Wait(now + Duration::from_secs(u64::from(t)));
            }
            None => self.finish_discovery(),
        }
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
        self.disc.stop(Phase::Done);
    }

    async fn on_discovery_timer(&mut self, now: Instant) {
        let server = self.disc.server;
        match &mut self.disc.phase {
            Phase::Wait(at) if now >= *at => self.send_probe(now).await,
            Phase::Pause(at) if now >= *at => self.refresh_idle(now).await,
            Phase::Refresh(tx) if now >= tx.deadline => match tx.retransmit(now) {
                Some(bytes) => {
                    if let (Some(s), Some(server)) = (&self.disc.idle, server) {
                        let _ = s.send_to(&bytes, server).await;
                    }
                }
                None => {
                    // The server did not answer the idle socket: no verdict on the last probe.
                    self.disc.unconfirmed_dead = false;
                    self.disc.refresh_failures += 1;
                    if self.disc.refresh_failures >= MAX_REFRESH_FAILURES {
                        tracing::warn!(
                            "binding-lifetime discovery: no STUN answer on the secondary socket; \
                             keep-alive every {} s",
                            self.stun.period_s
                        );
                        self.disc.stop(Phase::Unsupported);
                    } else {
                        self.disc.phase = Phase::Pause(now + self.period());
                    }
                }
            },
            Phase::Probe(tx) if now >= tx.deadline => match tx.retransmit(now) {
                Some(bytes) => {
                    if let (Some(s), Some(server)) = (&self.disc.prober, server) {
                        let _ = s.send_to(&bytes, server).await;
                    }
                }
                None => {
                    // No answer at the idle mapping: gone, unless the server is gone (the
                    // refresh tells).
                    self.disc.unconfirmed_dead = true;
                    self.refresh_idle(now).await;
                }
            },
            _ => {}
        }
    }

    /// Parses a discovery answer from the STUN server to request `id`.
    fn discovery_answer(
        &self,
        data: &[u8],
        peer: SocketAddr,
        id: &TxId,
    ) -> Option<stun::StunResponse> {
        if Some(peer) != self.disc.server {
            return None;
        }
        let resp = stun::parse_response(data, id).ok()?;
        if self.authenticated()
            && resp.has_integrity
            && stun::check_integrity(data, self.stun.password.as_bytes()) == Integrity::Invalid
        {
            return None;
        }
        Some(resp)
    }

    /// A datagram on the idle socket: the answer to its refresh (its mapped address), or the
    /// answer to a probe (its binding survived the idle interval).
    async fn on_idle_socket(&mut self, data: &[u8], peer: SocketAddr, now: Instant) {
        match &self.disc.phase {
            Phase::Refresh(tx) => {
                let Some(resp) = self.discovery_answer(data, peer, &tx.id) else {
                    return;
                };
                match (resp.error, resp.mapped) {
                    (None, Some(mapped)) => {
                        self.disc.idle_mapped = Some(mapped);
                        self.idle_refreshed(now);
                    }
                    (e, _) => {
                        tracing::warn!(
                            "binding-lifetime discovery: STUN server {peer} refused the secondary \
                             socket's request ({e:?}); keep-alive every {} s",
                            self.stun.period_s
                        );
                        self.disc.stop(Phase::Unsupported);
                    }
                }
            }
            Phase::Probe(tx) => {
                if self.discovery_answer(data, peer, &tx.id).is_none() {
                    return;
                }
                let t = self.disc.t;
                tracing::debug!("binding-lifetime discovery: binding alive after {t} s idle");
                self.disc.alive = Some(self.disc.alive.map_or(t, |a| a.max(t)));
                if self
                    .disc
                    .next_interval(self.stun.min_s, self.discovery_cap())
                    .is_none()
                {
                    self.finish_discovery();
                } else {
                    // A refresh re-learns the mapping before the next interval.
                    self.refresh_idle(now).await;
                }
            }
            _ => {}
        }
    }

    /// A datagram on the prober socket: the answer to a probe came back to its source, so the
    /// server ignores RESPONSE-ADDRESS.
    fn on_prober_socket(&mut self, data: &[u8], peer: SocketAddr, _now: Instant) {
        let Phase::Probe(tx) = &self.disc.phase else {
            return;
        };
        if self.discovery_answer(data, peer, &tx.id).is_none() {
            return;
        }
        tracing::info!(
            "STUN server {peer} ignores RESPONSE-ADDRESS: no binding-lifetime discovery, keep-alive every {} s",
            self.stun.period_s
        );
        self.disc.stop(Phase::Unsupported);
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
        if self.replay.save_at.is_some_and(|t| now >= t) {
            self.replay.save(&self.validator);
        }
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
            self.after_keepalive(now).await;
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
        let now_unix = unix_now();
        if let Err(r) =
            self.validator
                .check_at(&cr, &self.creds.username, &self.creds.password, now_unix)
        {
            if r == udpcr::Reject::OutsideClockWindow
                && self
                    .window_warned
                    .is_none_or(|t| at.duration_since(t) >= WINDOW_WARN_EVERY)
            {
                // Correctly signed but stamped far from our clock: one of the two clocks is
                // wrong (or it is an old capture); worth a warning now and then.
                self.window_warned = Some(at);
                tracing::warn!(
                    %peer,
                    "UDP connection request refused: ts {} is {} s from the local clock \
                     (more than {} s; is either clock unsynchronised?)",
                    cr.ts,
                    cr.ts.abs_diff(now_unix),
                    udpcr::CLOCK_WINDOW_S
                );
            }
            self.drops
                .drop(at, peer, &format_args!("UDP connection request: {r}"));
            return;
        }
        self.validator.accept(&cr);
        self.replay.changed(at);
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
    fn replay_state_persisted_privately_and_bad_files_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cwmpd-udp-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(REPLAY_FILE);
        let mut store = ReplayStore {
            path: Some(path.clone()),
            ..ReplayStore::default()
        };
        let now = 1_700_000_000;
        assert_eq!(store.load(now), Validator::new(), "missing file: fresh");
        let v = Validator::restore(now, vec!["1".into(), "2".into()]);
        let t0 = Instant::now();
        store.changed(t0);
        store.changed(t0 + Duration::from_millis(50));
        assert_eq!(
            store.save_at,
            Some(t0 + REPLAY_SAVE_DELAY),
            "one write per burst"
        );
        store.save(&v);
        assert_eq!(store.save_at, None);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load(now), v);
        // Corrupt, truncated or oversized: ignored (logged), the agent starts without it.
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() / 2]).unwrap();
        assert_eq!(store.load(now), Validator::new());
        std::fs::write(&path, vec![b' '; udpcr::MAX_STATE_BYTES + 10]).unwrap();
        assert_eq!(store.load(now), Validator::new());
        // Without a path nothing is written.
        let mut mem = ReplayStore::default();
        mem.changed(t0);
        assert_eq!(mem.save_at, None);
        // An unwritable place: the failure is remembered (and logged once), nothing panics.
        let mut bad = ReplayStore {
            path: Some(dir.join("missing-dir").join(REPLAY_FILE)),
            ..ReplayStore::default()
        };
        bad.save(&v);
        assert!(bad.failing);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn discovery_intervals_and_retransmissions() {
        let mut d = Discovery::default();
        assert_eq!(d.next_interval(1, 1800), Some(1));
        d.alive = Some(1);
        assert_eq!(d.next_interval(1, 1800), Some(2));
        d.alive = Some(1024);
        assert_eq!(d.next_interval(1, 1800), Some(1800));
        d.alive = Some(1800);
        assert_eq!(d.next_interval(1, 1800), None);
        d.alive = Some(2);
        d.dead = Some(4);
        assert_eq!(d.next_interval(1, 1800), Some(3));
        d.alive = Some(3);
        assert_eq!(d.next_interval(1, 1800), None);
        d.alive = None;
        assert_eq!(d.next_interval(1, 1800), None);
        let t0 = Instant::now();
        let mut tx = DiscoveryTx::new(classic_txid(), vec![1], t0);
        assert_eq!(tx.deadline, t0 + INITIAL_RTO);
        let mut now = tx.deadline;
        let mut sends = 1;
        while tx.retransmit(now).is_some() {
            sends += 1;
            now = tx.deadline;
        }
        assert_eq!(sends, PROBE_SENDS);
        // 0.5 + 1 + 2 × 2 s from the first send to the verdict.
        assert_eq!(now - t0, Duration::from_millis(5500));
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
