//! UDP connection requests and the STUN client (TR-111 / TR-069 Annex G; SPEC-NOTES §c), on
//! one UDP socket: the driver. It owns the sockets, the clock, name resolution, the settings
//! watch, UDP connection-request validation and the reports to the engine; every STUN decision
//! (what to send when, retransmissions, keep-alive period, binding-lifetime discovery,
//! authentication, BINDING-CHANGE, what to report) is taken by the pure state machine
//! [`StunClient`] (`stun_client.rs`, documented there), which this module feeds with
//! datagrams, settings and time and whose outputs it carries out.
//!
//! The socket bound to `[connreq] udp_listen` both sends the STUN Binding Requests (so that the
//! NAT binding the keep-alives hold open is the one UDP connection requests come back through)
//! and receives the UDP connection requests. Datagrams are demultiplexed by their first bytes
//! ([`stun::classify`]): STUN messages go to the state machine, `GET …` datagrams to the
//! [`Validator`], everything else is dropped silently (a rate-limited debug line). During
//! binding-lifetime discovery the state machine asks for two secondary sockets on the CR
//! socket's source address; what they receive goes to the state machine too. Server names are
//! resolved with `tokio::net::lookup_host`, at most [`RESOLVE_TIMEOUT`], while the sockets keep
//! being served. What the state machine reports is logged (the events) and sent to the engine
//! (`UDPConnectionRequestAddress`, `NATDetected`).
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
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::backoff::RateLimiter;
use super::stun::{self, DatagramKind};
use super::stun_client::{
    DiscoveryEvent, Event, Failure, MAX_SENDS, Request, Resolved, Socket, StunClient, Transmit,
};
use super::udpcr::{self, Validator};
use crate::command::CrEvent;

pub use super::stun_client::StunConfig;

/// The file in the state directory that keeps the UDP connection-request replay state.
pub const REPLAY_FILE: &str = "udpcr-replay";
/// How long after an accepted UDP connection request its replay state is written.
pub const REPLAY_SAVE_DELAY: Duration = Duration::from_millis(100);
/// At most one warning per this long about requests refused for the clock window.
const WINDOW_WARN_EVERY: Duration = Duration::from_secs(600);
/// Default `STUNServerPort`.
pub const DEFAULT_STUN_PORT: u16 = 3478;
/// Longest wait for a name resolution (the STUN server; the ACS host while STUN is off); a
/// resolution that takes longer counts as failed.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Dropped datagrams logged per [`DROP_LOG_WINDOW`] (the rest are counted).
const DROP_LOG_BURST: u32 = 20;
const DROP_LOG_WINDOW: Duration = Duration::from_secs(10);

const MS: &str = "Device.ManagementServer.";
/// The status parameters this module reports.
pub const P_UDP_ADDRESS: &str = "Device.ManagementServer.UDPConnectionRequestAddress";
pub const P_NAT_DETECTED: &str = "Device.ManagementServer.NATDetected";

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
    crate::net::url::Url::parse(url).ok().map(|u| u.host)
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
        match crate::util::fsutil::write_atomic(path, &[&v.encode_state()], false) {
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
    settings: watch::Receiver<crate::command::Settings>,
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

/// A pending name resolution: the state machine's token and the lookup.
type Lookup = (u64, Pin<Box<dyn Future<Output = Option<Resolved>>>>);

async fn lookup_opt(lookup: Option<&mut Lookup>) -> Option<Resolved> {
    match lookup {
        Some((_, f)) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn run(
    sock: UdpSocket,
    mut settings: watch::Receiver<crate::command::Settings>,
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
    // What the data model holds already: only real changes are reported (no write, and no
    // fsync, at every start).
    let reported = (
        ms(&snapshot, "UDPConnectionRequestAddress").to_string(),
        truthy(ms(&snapshot, "NATDetected")),
    );
    let client = StunClient::new(
        local,
        Some(reported),
        Box::new(crate::util::codec::random_bytes::<16>),
    );
    let mut t = Driver {
        sock,
        local,
        client,
        idle: None,
        prober: None,
        lookup: None,
        creds,
        limiter,
        out,
        validator,
        drops: DropLog::default(),
        replay,
        window_warned: None,
    };
    let now = Instant::now();
    t.client
        .set_config(now, stun, url_host(ms(&snapshot, "URL")));
    // Not kept: the engine publishes a new snapshot at every change, and holding this one
    // would keep a second copy of the settings alive for as long as the agent runs.
    drop(snapshot);
    t.drive(now).await;
    let mut watching = true;
    let mut buf = vec![0u8; 2048];
    // The discovery sockets' buffers exist while those sockets do (rarely: most agents never
    // run binding-lifetime discovery).
    let mut buf2 = Vec::new();
    let mut buf3 = Vec::new();
    loop {
        size_buffer(&mut buf2, t.idle.is_some());
        size_buffer(&mut buf3, t.prober.is_some());
        let deadline = [t.client.poll_timeout(), t.replay.save_at]
            .into_iter()
            .flatten()
            .min();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let now = tokio::select! {
            r = t.sock.recv_from(&mut buf) => {
                let at = Instant::now();
                match r {
                    Ok((n, peer)) => t.on_datagram(&buf[..n], peer, at),
                    // ICMP port unreachable surfaces here on Linux; not fatal.
                    Err(e) => tracing::debug!("UDP receive: {e}"),
                }
                at
            },
            ch = settings.changed(), if watching => {
                let now = Instant::now();
                if ch.is_err() {
                    watching = false;
                } else {
                    let snap = settings.borrow_and_update().clone();
                    let (stun, creds) = read_settings(&snap);
                    t.creds = creds;
                    t.client.set_config(now, stun, url_host(ms(&snap, "URL")));
                }
                now
            },
            r = recv_opt(t.idle.as_ref(), &mut buf2) => {
                let now = Instant::now();
                if let Ok((n, peer)) = r {
                    // Answers the discovery does not expect are dropped without a word.
                    let _ = t.client.handle_datagram(now, Socket::Idle, peer, &buf2[..n]);
                }
                now
            },
            r = recv_opt(t.prober.as_ref(), &mut buf3) => {
                let now = Instant::now();
                if let Ok((n, peer)) = r {
                    let _ = t.client.handle_datagram(now, Socket::Prober, peer, &buf3[..n]);
                }
                now
            },
            r = lookup_opt(t.lookup.as_mut()) => {
                let now = Instant::now();
                if let Some((token, _)) = t.lookup.take() {
                    t.client.handle_resolved(now, token, r);
                }
                now
            },
            _ = timer => {
                let now = Instant::now();
                if t.replay.save_at.is_some_and(|s| now >= s) {
                    t.replay.save(&t.validator);
                }
                t.client.handle_timeout(now);
                now
            },
        };
        t.drive(now).await;
    }
}

/// A receive buffer of 2048 bytes while `wanted`, none otherwise.
fn size_buffer(buf: &mut Vec<u8>, wanted: bool) {
    if !wanted {
        *buf = Vec::new();
    } else if buf.is_empty() {
        buf.resize(2048, 0);
    }
}

/// The driver's state: the sockets and everything around the STUN state machine.
struct Driver {
    /// The STUN / UDP connection-request socket.
    sock: UdpSocket,
    local: SocketAddr,
    client: StunClient,
    /// The secondary sockets of binding-lifetime discovery (while the state machine wants them).
    idle: Option<UdpSocket>,
    prober: Option<UdpSocket>,
    /// The name resolution the state machine waits for.
    lookup: Option<Lookup>,
    creds: UdpCrCredentials,
    limiter: Rc<RefCell<RateLimiter>>,
    out: Outputs,
    validator: Validator,
    drops: DropLog,
    replay: ReplayStore,
    /// When a request refused for the clock window was last logged as a warning.
    window_warned: Option<Instant>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Shutdown (the runtime drops its tasks): a pending replay state is written now.
        if self.replay.save_at.is_some() {
            self.replay.save(&self.validator);
        }
    }
}

/// A secondary socket for discovery.
fn secondary_socket(bind: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(bind)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

impl Driver {
    /// Carries out what the state machine asked for (requests, datagrams, reports) until it
    /// has nothing more; `now` is the time of the input that caused it.
    async fn drive(&mut self, now: Instant) {
        loop {
            if let Some(r) = self.client.poll_request() {
                self.on_request(r, now);
            } else if let Some(tr) = self.client.poll_transmit() {
                self.send(tr).await;
            } else if let Some(e) = self.client.poll_event() {
                self.on_event(e).await;
            } else {
                return;
            }
        }
    }

    fn on_request(&mut self, r: Request, now: Instant) {
        match r {
            Request::Resolve {
                token,
                host,
                port,
                pick,
            } => {
                let local = self.local;
                // A newer request supersedes (drops) an older lookup.
                self.lookup = Some((token, Box::pin(lookup(host, port, pick, local))));
            }
            Request::OpenSecondary { bind } => {
                match secondary_socket(bind).and_then(|i| Ok((i, secondary_socket(bind)?))) {
                    Ok((idle, prober)) => {
                        self.idle = Some(idle);
                        self.prober = Some(prober);
                        self.client.handle_secondary_opened(now, Ok(()));
                    }
                    Err(e) => self.client.handle_secondary_opened(now, Err(e.to_string())),
                }
            }
            Request::CloseSecondary => {
                self.idle = None;
                self.prober = None;
            }
        }
    }

    async fn send(&mut self, tr: Transmit) {
        match tr.socket {
            Socket::Cr => {
                if let Err(e) = self.sock.send_to(&tr.bytes, tr.to).await {
                    tracing::debug!(server = %tr.to, "STUN send: {e}");
                }
            }
            Socket::Idle | Socket::Prober => {
                let s = if tr.socket == Socket::Idle {
                    &self.idle
                } else {
                    &self.prober
                };
                if let Some(s) = s {
                    let _ = s.send_to(&tr.bytes, tr.to).await;
                }
            }
        }
    }

    /// Logs what the state machine tells, and sends its reports to the engine.
    async fn on_event(&mut self, e: Event) {
        match e {
            Event::Report {
                address,
                nat_detected,
            } => {
                tracing::info!(
                    "UDPConnectionRequestAddress = {address:?}, NATDetected = {nat_detected}"
                );
                let values = vec![
                    (P_UDP_ADDRESS.to_string(), address),
                    (P_NAT_DETECTED.to_string(), nat_detected.to_string()),
                ];
                let _ = self.out.status.send(values).await;
            }
            Event::Enabled {
                host,
                port,
                period_s,
            } => {
                tracing::info!("STUN enabled: server {host}:{port}, keep-alive every {period_s} s")
            }
            Event::Disabled => tracing::info!("STUN disabled"),
            Event::RequestSent {
                server,
                authenticated,
                binding_change,
            } => tracing::debug!(%server, authenticated, binding_change, "STUN Binding Request"),
            Event::Retransmitted { server } => {
                tracing::debug!(s = %server, "STUN retransmission")
            }
            Event::CredentialsRequested => {
                tracing::debug!("STUN server asks for credentials (401); retrying with them")
            }
            Event::Failed { failure, retry_in } => log_failure(&failure, retry_in.as_secs()),
            Event::ServerBack { server } => tracing::info!("STUN server {server} answers again"),
            Event::MappedChanged { mapped } => {
                tracing::info!("STUN mapped address changed to {mapped}: sending BINDING-CHANGE")
            }
            Event::Response { mapped, local, nat } => {
                tracing::debug!(%mapped, ?local, nat, "STUN Binding Response")
            }
            Event::Discovery(d) => log_discovery(&d),
        }
    }

    fn on_datagram(&mut self, data: &[u8], peer: SocketAddr, at: Instant) {
        match stun::classify(data) {
            DatagramKind::Stun => {
                if let Err(why) = self.client.handle_datagram(at, Socket::Cr, peer, data) {
                    self.drops.drop(at, peer, &why);
                }
            }
            DatagramKind::UdpConnectionRequest => self.on_cr(data, peer, at),
            DatagramKind::Other => {
                self.drops
                    .drop(at, peer, &"neither STUN nor a connection request")
            }
        }
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
            mechanism: crate::command::Mechanism::Udp,
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

fn log_failure(f: &Failure, w: u64) {
    match f {
        Failure::NoServer => tracing::warn!(
            "STUN enabled but neither STUNServerAddress nor the ACS URL names a server; next try in {w} s"
        ),
        Failure::Unresolvable { host } => {
            tracing::warn!("cannot resolve STUN server {host:?}; next try in {w} s")
        }
        Failure::Encode(e) => {
            tracing::warn!("cannot encode a STUN Binding Request ({e}); next try in {w} s")
        }
        Failure::Timeout { server } => tracing::warn!(
            "no STUN response from {} after {MAX_SENDS} attempts; next try in {w} s",
            server.map(|s| s.to_string()).unwrap_or_default()
        ),
        Failure::AuthNeedsUsername { server } => tracing::warn!(
            "STUN server {server} requires authentication (401) but STUNUsername is empty; next try in {w} s"
        ),
        Failure::AuthRejected { server } => tracing::warn!(
            "STUN authentication failed: server {server} rejected STUNUsername/STUNPassword (401); backing off, next try in {w} s"
        ),
        Failure::ServerError {
            server,
            code,
            reason,
        } => tracing::warn!(
            "STUN server {server} answered error {code} {reason:?}; next try in {w} s"
        ),
    }
}

fn log_discovery(d: &DiscoveryEvent) {
    match d {
        DiscoveryEvent::Started {
            min_s,
            max_s,
            period,
        } => tracing::info!(
            "STUN binding-lifetime discovery between {min_s} and {max_s} s (secondary bindings; \
             keep-alives every {} s meanwhile)",
            period.as_secs_f64()
        ),
        DiscoveryEvent::NoSocket { error } => {
            tracing::warn!("binding-lifetime discovery: no secondary socket: {error}")
        }
        DiscoveryEvent::Probing { to, idle_s } => {
            tracing::debug!("binding-lifetime discovery: probing {to} after {idle_s} s idle")
        }
        DiscoveryEvent::Alive { idle_s } => {
            tracing::debug!("binding-lifetime discovery: binding alive after {idle_s} s idle")
        }
        DiscoveryEvent::Gone { idle_s } => {
            tracing::debug!("binding-lifetime discovery: binding gone after {idle_s} s idle")
        }
        DiscoveryEvent::BelowMinimum { min_s } => tracing::warn!(
            "NAT binding lifetime is below STUNMinimumKeepAlivePeriod ({min_s} s): UDP connection requests may be lost"
        ),
        DiscoveryEvent::Done {
            alive_s,
            dead_s,
            period,
        } => tracing::info!(
            "STUN binding-lifetime discovery done: binding alive after {alive_s:?} s idle, gone after {dead_s:?} s; keep-alive every {:.1} s",
            period.as_secs_f64()
        ),
        DiscoveryEvent::NoAnswer { period_s } => tracing::warn!(
            "binding-lifetime discovery: no STUN answer on the secondary socket; \
             keep-alive every {period_s} s"
        ),
        DiscoveryEvent::Refused {
            server,
            error,
            period_s,
        } => tracing::warn!(
            "binding-lifetime discovery: STUN server {server} refused the secondary \
             socket's request ({error:?}); keep-alive every {period_s} s"
        ),
        DiscoveryEvent::ResponseAddressIgnored { server, period_s } => tracing::info!(
            "STUN server {server} ignores RESPONSE-ADDRESS: no binding-lifetime discovery, keep-alive every {period_s} s"
        ),
    }
}

/// Resolves `host:port` (at most [`RESOLVE_TIMEOUT`]), takes its `pick`-th address (see
/// [`Request::Resolve`]) and finds the local source IP toward it.
async fn lookup(host: String, port: u16, pick: u32, local: SocketAddr) -> Option<Resolved> {
    let (addr, of) = tokio::time::timeout(RESOLVE_TIMEOUT, resolve(&host, port, pick, local))
        .await
        .ok()
        .flatten()?;
    let source_ip = if local.ip().is_unspecified() {
        source_ip_toward(addr, local)
    } else {
        Some(local.ip())
    };
    Some(Resolved {
        addr,
        source_ip,
        of,
    })
}

/// Resolves `host:port` to the `pick`-th (modulo their number) of its addresses of the socket's
/// family, and their number.
async fn resolve(host: &str, port: u16, pick: u32, local: SocketAddr) -> Option<(SocketAddr, u32)> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return pick_addr([SocketAddr::new(ip, port)], pick, local);
    }
    let addrs = tokio::net::lookup_host((host, port)).await.ok()?;
    pick_addr(addrs, pick, local)
}

/// The `pick`-th (modulo their number) of `addrs` of `local`'s family, duplicates left out, and
/// their number.
fn pick_addr(
    addrs: impl IntoIterator<Item = SocketAddr>,
    pick: u32,
    local: SocketAddr,
) -> Option<(SocketAddr, u32)> {
    let mut same: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if a.is_ipv4() == local.is_ipv4() && !same.contains(&a) && same.len() < 64 {
            same.push(a);
        }
    }
    if same.is_empty() {
        return None;
    }
    let n = same.len();
    Some((same[pick as usize % n], n as u32))
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
    fn picks_the_nth_address_of_the_family_round_robin() {
        let a: Vec<SocketAddr> = ["[2001:db8::1]:3478", "10.0.0.1:3478", "10.0.0.2:3478"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let v4: SocketAddr = "0.0.0.0:7547".parse().unwrap();
        let v6: SocketAddr = "[::]:7547".parse().unwrap();
        let got: Vec<_> = (0..4).map(|p| pick_addr(a.clone(), p, v4)).collect();
        assert_eq!(
            got,
            [
                Some((a[1], 2)),
                Some((a[2], 2)),
                Some((a[1], 2)),
                Some((a[2], 2))
            ]
        );
        assert_eq!(pick_addr(a.clone(), 5, v6), Some((a[0], 1)));
        assert_eq!(pick_addr(vec![a[0]], 0, v4), None);
        assert_eq!(pick_addr(vec![a[1], a[1], a[2]], 1, v4), Some((a[2], 2)));
    }

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
