//! The XMPP connection-request client's policy (TR-069 Annex K, TR-181 `Device.XMPP.`), with no
//! IO: no sockets, no clock, no runtime. [`XmppPolicy`] is the state machine of one connection's
//! life; `xmpp.rs` is its driver (TCP, TLS, SASL, the stream, the clock).
//!
//! The driver feeds events with the time passed in ([`XmppPolicy::update_settings`],
//! [`connected`](XmppPolicy::connected), [`connect_failed`](XmppPolicy::connect_failed),
//! [`stream_error`](XmppPolicy::stream_error), [`stanza_received`](XmppPolicy::stanza_received),
//! [`stanza_sent`](XmppPolicy::stanza_sent), [`handle_timeout`](XmppPolicy::handle_timeout)),
//! then drains [`poll_output`](XmppPolicy::poll_output) (connect to a server, drop the stream,
//! send presence or a ping, report parameter values) and sleeps until
//! [`poll_timeout`](XmppPolicy::poll_timeout). Randomness comes from a function given to
//! [`XmppPolicy::new`].
//!
//! What it decides:
//! * **Which server next** ([`targets`]): `ServerTable` rows by Priority, equal priorities in
//!   weighted random order (RFC 2782); `DNS-SRV` and `DNS` give one target, the Domain.
//!   `ServerConnectAttempts` (N) attempts go to one server before the next one is tried, at once;
//!   after the last server the list starts over, redrawn. N = 0: one pass over the servers, then
//!   no connection attempts (nor reconnection after a lost stream) until the settings change.
//! * **The reconnect wait** before each further attempt to a server: the n-th wait for that
//!   server is random in `[0, ServerRetryInitialInterval · (ServerRetryIntervalMultiplier/1000)^(n-1)]`,
//!   `ServerRetryMaxInterval` when that exceeds it ([`xmpp_reconnect_wait`]). With the defaults and
//!   one server the bounds are TR-181's 1, 2, 4, …, 512, 512, … minutes. After an established
//!   stream ends, the first reconnection already waits (the first wait of a new series); a
//!   settings change reconnects at once. A login that has not completed after
//!   [`CONNECT_TIMEOUT`] counts as a failed attempt (server not present).
//! * **Keep-alive** (`KeepAliveInterval`, RFC 6120 §4.6.1): after an interval in which nothing
//!   was received, a ping (XEP-0199); when nothing arrives within another interval after it, the
//!   stream is dead. `-1` means [`DEFAULT_KEEPALIVE`], `0` no keep-alive.
//! * **What to report**: `Status` (with `LastChangeDate`), `JabberID`, `TLSEstablished`,
//!   `Stats.*` (at most once per [`STATS_PERIOD`]) and `ManagementServer.ConnReqJabberID`, each
//!   only when it changes.
//! * **The verdict on an incoming IQ** ([`judge`]): a `connectionRequest` from an allowed JID
//!   with the right credentials, within the rate limit.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::backoff::{RateLimiter, xmpp_reconnect_wait};
use crate::util::codec::ct_eq;

/// Time allowed for TCP, STARTTLS, SASL and bind together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval used for `KeepAliveInterval = -1` (RFC 6120 §4.6.1 advises ≥ 300 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(300);
/// Counters are reported at most this often.
pub const STATS_PERIOD: Duration = Duration::from_secs(1);
/// Interval used as "never" when keep-alives are off.
pub const NEVER: Duration = Duration::from_secs(365 * 86400);

const MS: &str = "Device.ManagementServer.";
/// The parameter naming the agent's XMPP address for connection requests.
pub const CONNREQ_JID: &str = "Device.ManagementServer.ConnReqJabberID";

// ------------------------------------------------------------------------------------------
// Targets, failures, status values
// ------------------------------------------------------------------------------------------

/// Where to open the TCP connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// RFC 6120 §3.2.1: SRV `_xmpp-client._tcp.<domain>`, falling back to `<domain>:5222`.
    /// An IP literal is used as it is.
    Srv(String),
    /// A host name (A/AAAA lookup) or IP literal, and a port.
    Host(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Srv(d) => write!(f, "SRV {d}"),
            Target::Host(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            Target::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// `XMPP.Connection.{i}.Status` values the agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Enabled,
    Disabled,
    Connecting,
    ServerNotPresent,
    ErrorMisconfigured,
    ErrorAuthenticationFailure,
    Error,
}

impl Status {
    /// The TR-181 enumeration value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "Enabled",
            Status::Disabled => "Disabled",
            Status::Connecting => "Connecting",
            Status::ServerNotPresent => "ServerNotPresent",
            Status::ErrorMisconfigured => "Error_Misconfigured",
            Status::ErrorAuthenticationFailure => "Error_AuthenticationFailure",
            Status::Error => "Error",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection attempt failed; maps onto `XMPP.Connection.{i}.Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// No TCP connection (DNS, refused, unreachable, timeout): `ServerNotPresent`.
    Unreachable(String),
    /// SASL failure: `Error_AuthenticationFailure`.
    Auth(String),
    /// Missing or impossible configuration: `Error_Misconfigured`.
    Misconfigured(String),
    /// TLS handshake or certificate verification failed: `Error`.
    Tls(String),
    /// Anything else (stream errors, protocol violations): `Error`.
    Protocol(String),
}

impl ConnectError {
    /// The `Status` this failure gives.
    pub fn status(&self) -> Status {
        match self {
            ConnectError::Unreachable(_) => Status::ServerNotPresent,
            ConnectError::Auth(_) => Status::ErrorAuthenticationFailure,
            ConnectError::Misconfigured(_) => Status::ErrorMisconfigured,
            ConnectError::Tls(_) | ConnectError::Protocol(_) => Status::Error,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Unreachable(m) => write!(f, "server not reachable: {m}"),
            ConnectError::Auth(m) => write!(f, "authentication failed: {m}"),
            ConnectError::Misconfigured(m) => write!(f, "misconfigured: {m}"),
            ConnectError::Tls(m) => write!(f, "TLS failed: {m}"),
            ConnectError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Configuration from the data model
// ------------------------------------------------------------------------------------------

/// One `Server.{i}` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRow {
    pub priority: u32,
    pub weight: i64,
    pub address: String,
    pub port: u16,
}

/// The settings of the referenced connection that a (re)connection depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnSettings {
    /// `Device.XMPP.Connection.N.`
    pub path: String,
    pub enable: bool,
    pub username: String,
    pub password: String,
    pub domain: String,
    pub resource: String,
    pub algorithm: String,
    pub keepalive: i64,
    pub connect_attempts: u32,
    pub retry_initial: u32,
    pub retry_multiplier: u32,
    pub retry_max: u32,
    pub use_tls: bool,
    /// Enabled `Server.{i}` rows, in instance order.
    pub servers: Vec<ServerRow>,
}

impl ConnSettings {
    /// The keep-alive interval (`-1` → 300 s; `0` → off, i.e. [`NEVER`]).
    pub fn keepalive(&self) -> Duration {
        match self.keepalive {
            n if n < 0 => DEFAULT_KEEPALIVE,
            0 => NEVER,
            n => Duration::from_secs(n as u64),
        }
    }
}

/// Everything the client derives from the settings watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XmppSettings {
    /// `EnableCWMP`.
    pub cwmp_enabled: bool,
    /// The referenced connection (None: empty or dangling `ConnReqXMPPConnection`).
    pub conn: Option<ConnSettings>,
    /// `ConnReqAllowedJabberIDs`, split.
    pub allowed: Vec<String>,
    /// `ConnectionRequestUsername` / `ConnectionRequestPassword`.
    pub cr_username: String,
    pub cr_password: String,
    /// Current `ConnReqJabberID`.
    pub connreq_jid: String,
}

fn truthy(v: Option<&String>, default: bool) -> bool {
    match v.map(|s| s.trim()) {
        Some("1") | Some("true") => true,
        Some("0") | Some("false") => false,
        _ => default,
    }
}

/// Normalises a `ConnReqXMPPConnection` value to `Device.XMPP.Connection.N.` (None if invalid).
pub fn connection_path(reference: &str) -> Option<String> {
    let r = reference.trim();
    let r = r.strip_suffix('.').unwrap_or(r);
    let n = r.strip_prefix("Device.XMPP.Connection.")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| format!("{r}."))
}

impl XmppSettings {
    /// Derives the client settings from a raw settings snapshot (parameter path → value).
    pub fn from_raw(s: &BTreeMap<String, String>) -> XmppSettings {
        let ms = |k: &str| s.get(&format!("{MS}{k}")).cloned().unwrap_or_default();
        let allowed = ms("ConnReqAllowedJabberIDs")
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        let conn = connection_path(&ms("ConnReqXMPPConnection")).and_then(|path| {
            let g = |k: &str| s.get(&format!("{path}{k}"));
            // A dangling reference (no such row) gives None.
            g("Enable")?;
            let num = |k: &str, d: i64| g(k).and_then(|v| v.trim().parse().ok()).unwrap_or(d);
            let mut rows: Vec<(u32, ServerRow)> = Vec::new();
            let prefix = format!("{path}Server.");
            for (k, v) in s.range(prefix.clone()..) {
                if !k.starts_with(&prefix) {
                    break;
                }
                let rest = &k[prefix.len()..];
                let Some((i, "Enable")) = rest.split_once('.') else {
                    continue;
                };
                let Ok(i) = i.parse::<u32>() else { continue };
                if !truthy(Some(v), false) {
                    continue;
                }
                let sg = |f: &str| {
                    s.get(&format!("{prefix}{i}.{f}"))
                        .cloned()
                        .unwrap_or_default()
                };
                rows.push((
                    i,
                    ServerRow {
                        priority: sg("Priority").trim().parse().unwrap_or(0),
                        weight: sg("Weight").trim().parse().unwrap_or(-1),
                        address: sg("ServerAddress").trim().to_string(),
                        port: sg("Port").trim().parse().unwrap_or(5222),
                    },
                ));
            }
            rows.sort_by_key(|(i, _)| *i);
            Some(ConnSettings {
                enable: truthy(g("Enable"), false),
                username: g("Username").cloned().unwrap_or_default(),
                password: g("Password").cloned().unwrap_or_default(),
                domain: g("Domain").cloned().unwrap_or_default().trim().to_string(),
                resource: g("Resource").cloned().unwrap_or_default(),
                algorithm: g("ServerConnectAlgorithm")
                    .cloned()
                    .unwrap_or_else(|| "DNS-SRV".into()),
                keepalive: num("KeepAliveInterval", -1),
                connect_attempts: num("ServerConnectAttempts", 16).clamp(0, u32::MAX as i64) as u32,
                retry_initial: num("ServerRetryInitialInterval", 60).clamp(1, 65535) as u32,
                retry_multiplier: num("ServerRetryIntervalMultiplier", 2000).clamp(1000, 65535)
                    as u32,
                retry_max: num("ServerRetryMaxInterval", 30720).clamp(1, u32::MAX as i64) as u32,
                use_tls: truthy(g("UseTLS"), false),
                servers: rows.into_iter().map(|(_, r)| r).collect(),
                path,
            })
        });
        XmppSettings {
            cwmp_enabled: truthy(s.get("Device.ManagementServer.EnableCWMP"), true),
            conn,
            allowed,
            cr_username: ms("ConnectionRequestUsername"),
            cr_password: ms("ConnectionRequestPassword"),
            connreq_jid: ms("ConnReqJabberID"),
        }
    }
}

/// The TCP targets of a connection in the order to try them, or why there are none.
/// `rand` picks among equal priorities by weight (RFC 2782).
pub fn targets(c: &ConnSettings, mut rand: impl FnMut() -> u32) -> Result<Vec<Target>, String> {
    match c.algorithm.as_str() {
        "DNS-SRV" | "" => Ok(vec![Target::Srv(c.domain.clone())]),
        "DNS" => Ok(vec![Target::Host(c.domain.clone(), 5222)]),
        "ServerTable" => {
            let mut rows: Vec<ServerRow> = c
                .servers
                .iter()
                .filter(|r| !r.address.is_empty())
                .cloned()
                .collect();
            if rows.is_empty() {
                return Err("ServerTable without an enabled Server with an address".into());
            }
            rows.sort_by_key(|r| r.priority);
            let mut out = Vec::new();
            let mut i = 0;
            while i < rows.len() {
                let j = rows[i..]
                    .iter()
                    .position(|r| r.priority != rows[i].priority)
                    .map_or(rows.len(), |k| i + k);
                // Weighted random order within one priority (weight -1 counts as 1).
                let mut group: Vec<ServerRow> = rows[i..j].to_vec();
                while !group.is_empty() {
                    let w = |r: &ServerRow| if r.weight < 0 { 1 } else { r.weight as u64 + 1 };
                    let total: u64 = group.iter().map(w).sum();
                    let mut pick = u64::from(rand()) % total;
                    let mut k = 0;
                    while pick >= w(&group[k]) {
                        pick -= w(&group[k]);
                        k += 1;
                    }
                    let r = group.remove(k);
                    out.push(Target::Host(r.address, r.port));
                }
                i = j;
            }
            Ok(out)
        }
        other => Err(format!("ServerConnectAlgorithm {other:?} is not supported")),
    }
}

// ------------------------------------------------------------------------------------------
// Connection requests
// ------------------------------------------------------------------------------------------

/// `ConnReqAllowedJabberIDs` check (SPEC-NOTES §d.3) on canonical JIDs: an empty list allows
/// everyone; a bare item matches any resource of that JID; a full item needs an exact match. A
/// missing `from` only passes an empty list.
///
/// `from` is the sender's canonical JID; `canonical` gives the canonical form of one list item
/// (the JID library's normalisation; None for an invalid item, which matches nobody but still
/// makes the list non-empty).
pub fn sender_allowed(
    allowed: &[String],
    from: Option<&str>,
    canonical: &dyn Fn(&str) -> Option<String>,
) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(from) = from else { return false };
    // The resource starts at the first '/': neither local part nor domain may hold one.
    let from_bare = from.split_once('/').map_or(from, |(bare, _)| bare);
    allowed
        .iter()
        .filter_map(|item| canonical(item))
        .any(|item| {
            if item.contains('/') {
                item == from
            } else {
                item == from_bare
            }
        })
}

/// An incoming IQ get/set as the driver read it off the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IqRequest<'a> {
    /// The sender's canonical JID (None: the stanza had no `from`).
    pub from: Option<&'a str>,
    /// `username` and `password` of a `connectionRequest` payload; None when the payload is
    /// anything else.
    pub credentials: Option<(&'a str, &'a str)>,
}

/// The verdict on one IQ get/set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer `result` and start a session.
    Accept,
    /// `not-authorized` (wrong credentials).
    NotAuthorized,
    /// `service-unavailable` (sender not allowed, rate limited, CWMP disabled, not a CR).
    Unavailable(&'static str),
}

/// Decides on an incoming IQ get/set (the rate limiter is consulted last, only for otherwise
/// valid requests). `canonical` as for [`sender_allowed`].
pub fn judge(
    s: &XmppSettings,
    iq: &IqRequest<'_>,
    canonical: &dyn Fn(&str) -> Option<String>,
    limiter: &mut RateLimiter,
    now: Instant,
) -> Verdict {
    let Some((user, pass)) = iq.credentials else {
        return Verdict::Unavailable("not a connection request");
    };
    if !s.cwmp_enabled {
        return Verdict::Unavailable("CWMP disabled");
    }
    if !sender_allowed(&s.allowed, iq.from, canonical) {
        return Verdict::Unavailable("sender not in ConnReqAllowedJabberIDs");
    }
    let ok_user = ct_eq(user.as_bytes(), s.cr_username.as_bytes());
    let ok_pass = ct_eq(pass.as_bytes(), s.cr_password.as_bytes());
    if !(ok_user & ok_pass) {
        return Verdict::NotAuthorized;
    }
    if !limiter.try_acquire(now) {
        return Verdict::Unavailable("rate limited");
    }
    Verdict::Accept
}

// ------------------------------------------------------------------------------------------
// The state machine
// ------------------------------------------------------------------------------------------

/// What the driver does next, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open, secure, authenticate and bind a stream to this server with the current
    /// connection's settings; report [`XmppPolicy::connected`] or
    /// [`XmppPolicy::connect_failed`].
    Connect(Target),
    /// Abandon the connection attempt, or close the stream.
    Disconnect,
    /// Send the initial presence.
    SendPresence,
    /// Send a keep-alive ping (XEP-0199) to the server.
    SendPing,
    /// `{path}Status` changed: report it with `{path}LastChangeDate` = the wall clock now.
    Status { path: String, status: Status },
    /// Report these parameter values (path, value): one engine update.
    Report(Vec<(String, String)>),
}

/// Why the policy waits for nothing but a settings change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Idle {
    /// No settings seen yet.
    Start,
    /// `ConnReqXMPPConnection` is empty or names no connection.
    NoConnection,
    /// The connection's `Enable` is false.
    Disabled,
    /// The settings cannot give a connection (why).
    Misconfigured(String),
    /// `ServerConnectAttempts` is 0 and the one pass over the servers is over.
    NoReconnect,
}

/// Where the connection's life stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing to do until the settings change.
    Idle(Idle),
    /// The reconnect wait: the next attempt, the `attempt`-th to `target`, is due at `until`
    /// (None: never, the wait is beyond the clock's range).
    Waiting {
        until: Option<Instant>,
        target: Target,
        attempt: u32,
    },
    /// The driver is connecting to `target` (attempt `attempt` to it); given up at `deadline`.
    Connecting {
        target: Target,
        attempt: u32,
        deadline: Option<Instant>,
    },
    /// The stream is up: the last stanza arrived at `last_rx`; a ping went out at `ping_sent`
    /// and nothing has arrived since.
    Online {
        last_rx: Instant,
        ping_sent: Option<Instant>,
    },
}

/// Stanza counters (`Stats.*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx: u32,
    pub tx: u32,
    pub rx_err: u32,
    pub tx_err: u32,
}

/// One pass after another over the servers, until a stream is up.
#[derive(Debug)]
struct Series {
    /// This pass's order of the servers.
    order: Vec<Target>,
    /// The server being tried.
    idx: usize,
    /// Attempts made to it in this pass.
    tries: u32,
    /// Reconnect waits used per server in this series (the n of the n-th wait).
    waits: BTreeMap<Target, u32>,
}

/// The XMPP connection-request client's policy. See the module documentation.
pub struct XmppPolicy {
    settings: XmppSettings,
    /// What the driver found wrong with the login it would build (see `update_settings`).
    login_error: Option<String>,
    phase: Phase,
    series: Option<Series>,
    last_error: Option<ConnectError>,
    rng: Box<dyn FnMut() -> u32>,
    out: VecDeque<Output>,
    /// Values reported (path → value), to report only changes.
    reported: BTreeMap<String, String>,
    stats: Stats,
    stats_sent: Stats,
    stats_path: Option<String>,
    last_stats: Option<Instant>,
}

impl std::fmt::Debug for XmppPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmppPolicy")
            .field("phase", &self.phase)
            .field("series", &self.series)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl XmppPolicy {
    /// A policy that has seen no settings yet. `rng` gives uniformly random `u32`s (reconnect
    /// waits, the weighted order of servers).
    pub fn new(rng: Box<dyn FnMut() -> u32>) -> XmppPolicy {
        XmppPolicy {
            settings: XmppSettings::default(),
            login_error: None,
            phase: Phase::Idle(Idle::Start),
            series: None,
            last_error: None,
            rng,
            out: VecDeque::new(),
            reported: BTreeMap::new(),
            stats: Stats::default(),
            stats_sent: Stats::default(),
            stats_path: None,
            last_stats: None,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &XmppSettings {
        &self.settings
    }

    /// The referenced connection's settings, if any.
    pub fn connection(&self) -> Option<&ConnSettings> {
        self.settings.conn.as_ref()
    }

    /// Where the connection's life stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The last failed connection attempt (cleared when a stream is up).
    pub fn last_error(&self) -> Option<&ConnectError> {
        self.last_error.as_ref()
    }

    /// The stanza counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The next output to carry out, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next (None: only events move it on).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Idle(_) => None,
            Phase::Waiting { until, .. } => *until,
            Phase::Connecting { deadline, .. } => *deadline,
            Phase::Online { last_rx, ping_sent } => {
                let ka = self.keepalive();
                ping_sent.unwrap_or(*last_rx).checked_add(ka)
            }
        };
        let stats = if self.stats_due() {
            self.last_stats.and_then(|t| t.checked_add(STATS_PERIOD))
        } else {
            None
        };
        match (phase, stats) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A new settings snapshot. `login_error` is what the driver found wrong with the login it
    /// would build from them, which only it can check (the JID's syntax, the TLS
    /// configuration); it makes the connection `Error_Misconfigured`. A change of the
    /// connection's settings ends the stream or attempt under way and starts over at once;
    /// other changes (allowed JIDs, credentials, `ConnReqJabberID`) only take effect.
    pub fn update_settings(
        &mut self,
        now: Instant,
        settings: XmppSettings,
        login_error: Option<String>,
    ) {
        let relevant = self.phase == Phase::Idle(Idle::Start)
            || settings.conn != self.settings.conn
            || login_error != self.login_error;
        if !relevant {
            self.settings = settings;
            return;
        }
        if matches!(self.phase, Phase::Connecting { .. } | Phase::Online { .. }) {
            self.out.push_back(Output::Disconnect);
            self.link_ended(now);
        }
        self.settings = settings;
        self.login_error = login_error;
        self.begin(now, false);
    }

    /// The stream to the server of the last [`Output::Connect`] is up, bound to `jid`.
    pub fn connected(&mut self, now: Instant, jid: &str, tls: bool) {
        let (Phase::Connecting { .. }, Some(path)) = (&self.phase, self.path()) else {
            // Not asked for (any more): drop it.
            self.out.push_back(Output::Disconnect);
            return;
        };
        self.series = None;
        self.last_error = None;
        self.report(vec![
            (format!("{path}JabberID"), jid.to_string()),
            (format!("{path}TLSEstablished"), tls.to_string()),
        ]);
        self.set_status(&path, Status::Enabled);
        self.set_connreq_jid(jid);
        // Initial presence (as icwmp does), so that the server treats the resource as available.
        self.out.push_back(Output::SendPresence);
        self.phase = Phase::Online {
            last_rx: now,
            ping_sent: None,
        };
    }

    /// The connection attempt of the last [`Output::Connect`] failed.
    pub fn connect_failed(&mut self, now: Instant, error: ConnectError) {
        if matches!(self.phase, Phase::Connecting { .. }) {
            self.attempt_failed(now, error);
        }
    }

    /// The stream ended (closed by the peer, a stream error, a failed write).
    pub fn stream_error(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Online { .. }) {
            self.stream_lost(now);
        }
    }

    /// A stanza arrived (`error`: of type error; one that did not parse counts, as not error).
    pub fn stanza_received(&mut self, now: Instant, error: bool) {
        self.stats.rx = self.stats.rx.wrapping_add(1);
        if error {
            self.stats.rx_err = self.stats.rx_err.wrapping_add(1);
        }
        if let Phase::Online { last_rx, ping_sent } = &mut self.phase {
            *last_rx = now;
            *ping_sent = None;
        }
        self.flush_stats(now, false);
    }

    /// A stanza was sent (`error`: of type error).
    pub fn stanza_sent(&mut self, now: Instant, error: bool) {
        self.stats.tx = self.stats.tx.wrapping_add(1);
        if error {
            self.stats.tx_err = self.stats.tx_err.wrapping_add(1);
        }
        self.flush_stats(now, false);
    }

    /// Time has reached [`poll_timeout`](Self::poll_timeout) (earlier calls do nothing).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Waiting {
                until: Some(until), ..
            } if now >= *until => self.attempt(now),
            Phase::Connecting {
                target,
                deadline: Some(deadline),
                ..
            } if now >= *deadline => {
                let e = ConnectError::Unreachable(format!(
                    "{target}: no complete login within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ));
                self.out.push_back(Output::Disconnect);
                self.attempt_failed(now, e);
            }
            Phase::Online { last_rx, ping_sent } => {
                let ka = self.keepalive();
                match ping_sent {
                    Some(sent) if sent.checked_add(ka).is_some_and(|t| now >= t) => {
                        // No answer to the ping, nor anything else: the stream is dead.
                        self.stream_lost(now);
                    }
                    None if last_rx.checked_add(ka).is_some_and(|t| now >= t) => {
                        self.out.push_back(Output::SendPing);
                        self.phase = Phase::Online {
                            last_rx: *last_rx,
                            ping_sent: Some(now),
                        };
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        self.flush_stats(now, false);
    }

    /// The verdict on an incoming IQ get/set under the settings in force (see [`judge`]).
    pub fn judge(
        &self,
        now: Instant,
        iq: &IqRequest<'_>,
        canonical: &dyn Fn(&str) -> Option<String>,
        limiter: &mut RateLimiter,
    ) -> Verdict {
        judge(&self.settings, iq, canonical, limiter, now)
    }

    // --------------------------------------------------------------------------------------

    fn path(&self) -> Option<String> {
        self.settings.conn.as_ref().map(|c| c.path.clone())
    }

    fn keepalive(&self) -> Duration {
        self.settings
            .conn
            .as_ref()
            .map_or(DEFAULT_KEEPALIVE, ConnSettings::keepalive)
    }

    /// Starts a connection series for the settings in force: at once, or (`after_drop`, an
    /// established stream just ended) after the first reconnect wait.
    fn begin(&mut self, now: Instant, after_drop: bool) {
        self.series = None;
        let Some(conn) = self.settings.conn.clone() else {
            self.set_connreq_jid("");
            self.phase = Phase::Idle(Idle::NoConnection);
            return;
        };
        let path = conn.path.clone();
        self.stats_path = Some(path.clone());
        if !conn.enable {
            self.set_status(&path, Status::Disabled);
            self.report(vec![(format!("{path}TLSEstablished"), "false".into())]);
            self.set_connreq_jid("");
            self.phase = Phase::Idle(Idle::Disabled);
            return;
        }
        let order = if conn.username.is_empty() || conn.domain.is_empty() {
            Err("Username and Domain must be set".to_string())
        } else if let Some(e) = &self.login_error {
            Err(e.clone())
        } else {
            targets(&conn, &mut self.rng)
        };
        let order = match order {
            Ok(order) if !order.is_empty() => order,
            Ok(_) => {
                self.misconfigured(now, "no server to connect to".into());
                return;
            }
            Err(why) => {
                self.misconfigured(now, why);
                return;
            }
        };
        self.series = Some(Series {
            order,
            idx: 0,
            tries: 0,
            waits: BTreeMap::new(),
        });
        if after_drop {
            self.wait(now);
        } else {
            self.attempt(now);
        }
    }

    /// Nothing can be tried before the settings change.
    fn misconfigured(&mut self, now: Instant, why: String) {
        let e = ConnectError::Misconfigured(why.clone());
        if let Some(path) = self.path() {
            self.set_status(&path, e.status());
        }
        self.last_error = Some(e);
        self.link_ended(now);
        self.series = None;
        self.phase = Phase::Idle(Idle::Misconfigured(why));
    }

    /// Starts the next attempt to the current server of the series.
    fn attempt(&mut self, now: Instant) {
        let Some(path) = self.path() else { return };
        let Some(s) = self.series.as_mut() else {
            return;
        };
        let Some(target) = s.order.get(s.idx).cloned() else {
            return;
        };
        s.tries = s.tries.saturating_add(1);
        let attempt = s.tries;
        self.set_status(&path, Status::Connecting);
        self.out.push_back(Output::Connect(target.clone()));
        self.phase = Phase::Connecting {
            target,
            attempt,
            deadline: now.checked_add(CONNECT_TIMEOUT),
        };
    }

    /// The reconnect wait before the next attempt to the current server of the series.
    fn wait(&mut self, now: Instant) {
        let Some(conn) = self.settings.conn.as_ref() else {
            return;
        };
        let (initial, multiplier, max) =
            (conn.retry_initial, conn.retry_multiplier, conn.retry_max);
        let Some(s) = self.series.as_mut() else {
            return;
        };
        let Some(target) = s.order.get(s.idx).cloned() else {
            return;
        };
        let n = s.waits.entry(target.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let wait = xmpp_reconnect_wait(*n, initial, multiplier, max, (self.rng)());
        self.phase = Phase::Waiting {
            until: now.checked_add(wait),
            target,
            attempt: s.tries.saturating_add(1),
        };
    }

    /// The attempt under way failed: the same server again after a wait, the next server at
    /// once, or the first server of a new pass after a wait.
    fn attempt_failed(&mut self, now: Instant, error: ConnectError) {
        let Some(conn) = self.settings.conn.clone() else {
            return;
        };
        let Some(s) = self.series.as_mut() else {
            return;
        };
        let status = error.status();
        self.last_error = Some(error);
        let limit = conn.connect_attempts;
        if limit > 0 && s.tries < limit {
            // Another attempt to the same server.
        } else if s.idx + 1 < s.order.len() {
            // On to the next server, at once.
            s.idx += 1;
            s.tries = 0;
            self.attempt(now);
            return;
        } else if limit == 0 {
            self.set_status(&conn.path, status);
            self.link_ended(now);
            self.series = None;
            self.phase = Phase::Idle(Idle::NoReconnect);
            return;
        } else {
            // A new pass, in a newly drawn order.
            match targets(&conn, &mut self.rng) {
                Ok(order) if !order.is_empty() => {
                    if let Some(s) = self.series.as_mut() {
                        s.order = order;
                        s.idx = 0;
                        s.tries = 0;
                    }
                }
                Ok(_) => return self.misconfigured(now, "no server to connect to".into()),
                Err(why) => return self.misconfigured(now, why),
            }
        }
        self.set_status(&conn.path, status);
        self.link_ended(now);
        self.wait(now);
    }

    /// The established stream is gone: reconnect after the first wait of a new series.
    fn stream_lost(&mut self, now: Instant) {
        self.out.push_back(Output::Disconnect);
        let Some(conn) = self.settings.conn.clone() else {
            return;
        };
        self.set_status(&conn.path, Status::Connecting);
        self.link_ended(now);
        if conn.connect_attempts == 0 {
            self.series = None;
            self.phase = Phase::Idle(Idle::NoReconnect);
            return;
        }
        self.begin(now, true);
    }

    /// After a stream or an attempt: no TLS, counters reported.
    fn link_ended(&mut self, now: Instant) {
        if let Some(path) = self.path() {
            self.report(vec![(format!("{path}TLSEstablished"), "false".into())]);
        }
        self.flush_stats(now, true);
    }

    fn report(&mut self, values: Vec<(String, String)>) {
        let changed: Vec<(String, String)> = values
            .into_iter()
            .filter(|(k, v)| self.reported.get(k) != Some(v))
            .collect();
        if changed.is_empty() {
            return;
        }
        for (k, v) in &changed {
            self.reported.insert(k.clone(), v.clone());
        }
        self.out.push_back(Output::Report(changed));
    }

    fn set_status(&mut self, path: &str, status: Status) {
        let key = format!("{path}Status");
        if self.reported.get(&key).map(String::as_str) == Some(status.as_str()) {
            return;
        }
        self.reported.insert(key, status.as_str().to_string());
        self.out.push_back(Output::Status {
            path: path.to_string(),
            status,
        });
    }

    /// `ConnReqJabberID`: the first report only when the data model holds something else.
    fn set_connreq_jid(&mut self, jid: &str) {
        if self.settings.connreq_jid != jid || self.reported.contains_key(CONNREQ_JID) {
            self.report(vec![(CONNREQ_JID.to_string(), jid.to_string())]);
        }
    }

    fn stats_due(&self) -> bool {
        self.stats_path.is_some() && self.stats != self.stats_sent
    }

    fn flush_stats(&mut self, now: Instant, force: bool) {
        if !self.stats_due() {
            return;
        }
        let Some(path) = self.stats_path.clone() else {
            return;
        };
        if !force
            && self
                .last_stats
                .is_some_and(|t| now.saturating_duration_since(t) < STATS_PERIOD)
        {
            return;
        }
        self.last_stats = Some(now);
        self.stats_sent = self.stats;
        let s = self.stats;
        self.report(vec![
            (format!("{path}Stats.ReceivedMessages"), s.rx.to_string()),
            (format!("{path}Stats.TransmittedMessages"), s.tx.to_string()),
            (
                format!("{path}Stats.ReceivedErrorMessages"),
                s.rx_err.to_string(),
            ),
            (
                format!("{path}Stats.TransmittedErrorMessages"),
                s.tx_err.to_string(),
            ),
        ]);
    }
}

#[cfg(test)]
mod tests {
    //! The policy on virtual time: `t0` is taken once, every other instant is `t0` plus
    //! milliseconds; nothing sleeps and nothing touches a socket.

    use super::*;

    const C: &str = "Device.XMPP.Connection.1.";

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    fn secs(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    fn host(a: &str, port: u16) -> Target {
        Target::Host(a.into(), port)
    }

    /// Raw settings: connection 1 with a ServerTable of two enabled servers (10.0.0.2:5223 at
    /// priority 1, 10.0.0.1:5222 at priority 5) and a disabled third; `extra` overrides.
    fn raw(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for (k, v) in [
            (
                "Device.ManagementServer.ConnReqXMPPConnection",
                "Device.XMPP.Connection.1",
            ),
            ("Device.ManagementServer.ConnectionRequestUsername", "u"),
            ("Device.ManagementServer.ConnectionRequestPassword", "p"),
            ("Device.XMPP.Connection.1.Enable", "true"),
            ("Device.XMPP.Connection.1.Username", "cpe"),
            ("Device.XMPP.Connection.1.Domain", "d.test"),
            (
                "Device.XMPP.Connection.1.ServerConnectAlgorithm",
                "ServerTable",
            ),
            ("Device.XMPP.Connection.1.Server.1.Enable", "true"),
            (
                "Device.XMPP.Connection.1.Server.1.ServerAddress",
                "10.0.0.1",
            ),
            ("Device.XMPP.Connection.1.Server.1.Priority", "5"),
            ("Device.XMPP.Connection.1.Server.1.Port", "5222"),
            ("Device.XMPP.Connection.1.Server.2.Enable", "true"),
            (
                "Device.XMPP.Connection.1.Server.2.ServerAddress",
                "10.0.0.2",
            ),
            ("Device.XMPP.Connection.1.Server.2.Priority", "1"),
            ("Device.XMPP.Connection.1.Server.2.Port", "5223"),
            ("Device.XMPP.Connection.1.Server.3.Enable", "false"),
            (
                "Device.XMPP.Connection.1.Server.3.ServerAddress",
                "10.0.0.3",
            ),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    fn settings(extra: &[(&str, &str)]) -> XmppSettings {
        XmppSettings::from_raw(&raw(extra))
    }

    /// One server, `d.test:5222` (algorithm DNS), plus `extra`.
    fn one_server(extra: &[(&str, &str)]) -> XmppSettings {
        let mut v = vec![("Device.XMPP.Connection.1.ServerConnectAlgorithm", "DNS")];
        v.extend_from_slice(extra);
        settings(&v)
    }

    fn fixed(v: u32) -> Box<dyn FnMut() -> u32> {
        Box::new(move || v)
    }

    fn xorshift(mut x: u32) -> Box<dyn FnMut() -> u32> {
        Box::new(move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
    }

    fn unreachable() -> ConnectError {
        ConnectError::Unreachable("refused".into())
    }

    /// A policy driven on virtual time.
    struct Sim {
        p: XmppPolicy,
        t0: Instant,
        now: Instant,
    }

    impl Sim {
        fn start(rng: Box<dyn FnMut() -> u32>, s: XmppSettings) -> Sim {
            let t0 = Instant::now();
            let mut p = XmppPolicy::new(rng);
            p.update_settings(t0, s, None);
            Sim { p, t0, now: t0 }
        }

        fn drain(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.p.poll_output()).collect()
        }

        /// Moves the clock to `t0 + at` and handles the timeout there.
        fn at(&mut self, at: Duration) -> Vec<Output> {
            self.now = self.t0 + at;
            self.p.handle_timeout(self.now);
            self.drain()
        }

        /// Jumps to the policy's next deadline and handles it; returns how far it jumped.
        fn next(&mut self) -> Duration {
            let t = self.p.poll_timeout().expect("a deadline");
            let d = t - self.now;
            self.now = t;
            self.p.handle_timeout(t);
            d
        }

        /// Fails `n` connection attempts with `e`; each attempt's server and the wait before it.
        fn fail(&mut self, n: usize, e: ConnectError) -> Vec<(Target, Duration)> {
            let mut seq = Vec::new();
            for _ in 0..n {
                let waited = match self.p.phase() {
                    Phase::Waiting { .. } => self.next(),
                    _ => Duration::ZERO,
                };
                let target = self
                    .drain()
                    .into_iter()
                    .find_map(|o| match o {
                        Output::Connect(t) => Some(t),
                        _ => None,
                    })
                    .expect("a connection attempt");
                seq.push((target, waited));
                self.p.connect_failed(self.now, e.clone());
            }
            seq
        }

        /// Connects on the pending attempt (bound JID `cpe@d.test/cwmp`, TLS).
        fn connect(&mut self) -> Vec<Output> {
            let outs = self.drain();
            assert!(
                outs.iter().any(|o| matches!(o, Output::Connect(_))),
                "{outs:?}"
            );
            self.p.connected(self.now, "cpe@d.test/cwmp", true);
            self.drain()
        }
    }

    fn status(st: Status) -> Output {
        Output::Status {
            path: C.into(),
            status: st,
        }
    }

    fn report(values: &[(&str, &str)]) -> Output {
        Output::Report(
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn statuses(outs: &[Output]) -> Vec<Status> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Status { status, .. } => Some(*status),
                _ => None,
            })
            .collect()
    }

    fn without_stats(outs: Vec<Output>) -> Vec<Output> {
        outs.into_iter()
            .filter(
                |o| !matches!(o, Output::Report(v) if v.iter().any(|(k, _)| k.contains(".Stats."))),
            )
            .collect()
    }

    // --- settings and server order ---------------------------------------------------------

    #[test]
    fn settings_and_server_table_order() {
        let s = settings(&[]);
        let c = s.conn.clone().unwrap();
        assert_eq!(c.path, C);
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.keepalive(), DEFAULT_KEEPALIVE);
        assert_eq!(c.connect_attempts, 16);
        assert_eq!(
            (c.retry_initial, c.retry_multiplier, c.retry_max),
            (60, 2000, 30720)
        );
        assert_eq!(
            targets(&c, || 0).unwrap(),
            vec![host("10.0.0.2", 5223), host("10.0.0.1", 5222)]
        );
        // Trailing dot accepted; dangling reference gives no connection.
        let dot = [(
            "Device.ManagementServer.ConnReqXMPPConnection",
            "Device.XMPP.Connection.1.",
        )];
        assert!(settings(&dot).conn.is_some());
        let dangling = [(
            "Device.ManagementServer.ConnReqXMPPConnection",
            "Device.XMPP.Connection.7",
        )];
        assert!(settings(&dangling).conn.is_none());
        assert_eq!(connection_path("Device.XMPP.Connection.x"), None);
        let mut c2 = c.clone();
        c2.algorithm = "DNS".into();
        assert_eq!(targets(&c2, || 0).unwrap(), vec![host("d.test", 5222)]);
        c2.algorithm = "DNS-SRV".into();
        assert_eq!(
            targets(&c2, || 0).unwrap(),
            vec![Target::Srv("d.test".into())]
        );
        c2.algorithm = "WebSocket".into();
        assert!(targets(&c2, || 0).is_err());
        c2.keepalive = 0;
        assert_eq!(c2.keepalive(), NEVER);
        c2.keepalive = 7;
        assert_eq!(c2.keepalive(), secs(7));
        // Out-of-range values are clamped to TR-181's ranges.
        let odd = settings(&[
            ("Device.XMPP.Connection.1.ServerConnectAttempts", "-3"),
            ("Device.XMPP.Connection.1.ServerRetryInitialInterval", "0"),
            (
                "Device.XMPP.Connection.1.ServerRetryIntervalMultiplier",
                "5",
            ),
            ("Device.XMPP.Connection.1.ServerRetryMaxInterval", "0"),
        ])
        .conn
        .unwrap();
        assert_eq!(
            (
                odd.connect_attempts,
                odd.retry_initial,
                odd.retry_multiplier,
                odd.retry_max
            ),
            (0, 1, 1000, 1)
        );
    }

    #[test]
    fn equal_priorities_in_weighted_random_order() {
        let s = settings(&[
            ("Device.XMPP.Connection.1.Server.1.Priority", "1"),
            ("Device.XMPP.Connection.1.Server.1.Weight", "0"),
            ("Device.XMPP.Connection.1.Server.2.Weight", "9"),
        ]);
        let c = s.conn.unwrap();
        // Weights count as weight + 1: 1 for server 1, 10 for server 2.
        let a = host("10.0.0.1", 5222);
        let b = host("10.0.0.2", 5223);
        assert_eq!(targets(&c, || 0).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(targets(&c, || 1).unwrap(), vec![b.clone(), a.clone()]);
        let mut rng = xorshift(7);
        let b_first = (0..1100)
            .filter(|_| targets(&c, &mut rng).unwrap()[0] == b)
            .count();
        assert!((900..=1090).contains(&b_first), "{b_first} of 1100");
    }

    // --- reconnect waits -------------------------------------------------------------------

    #[test]
    fn waits_reach_tr181_bounds_with_the_defaults() {
        // The largest draw gives the bound itself: TR-181's list for ServerConnectAttempts,
        // "{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 512, 512, 512, 512, 512}" minutes.
        let mut sim = Sim::start(fixed(u32::MAX), one_server(&[]));
        let seq = sim.fail(16, unreachable());
        let minutes: Vec<u64> = seq.iter().skip(1).map(|(_, w)| w.as_secs() / 60).collect();
        assert_eq!(
            minutes,
            [
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 512, 512, 512, 512, 512
            ]
        );
        assert!(seq.iter().all(|(t, _)| *t == host("d.test", 5222)));
        assert_eq!(seq[0].1, Duration::ZERO, "the first attempt is at once");
        // After the 16th attempt the only server starts over, at the capped wait.
        assert_eq!(sim.p.poll_timeout(), Some(sim.now + secs(30_720)));
        // The smallest draw: no wait at all.
        let mut sim = Sim::start(fixed(0), one_server(&[]));
        let seq = sim.fail(5, unreachable());
        assert!(seq.iter().all(|(_, w)| w.is_zero()), "{seq:?}");
    }

    #[test]
    fn waits_are_random_within_their_bounds() {
        let extra = [
            ("Device.XMPP.Connection.1.ServerRetryInitialInterval", "10"),
            (
                "Device.XMPP.Connection.1.ServerRetryIntervalMultiplier",
                "1500",
            ),
            ("Device.XMPP.Connection.1.ServerRetryMaxInterval", "40"),
        ];
        // Bounds: 10 · 1.5^(n-1) s, capped at 40 s: 10, 15, 22.5, 33.75, 40, 40, …
        let bound = |n: usize| {
            ms([10_000, 15_000, 22_500, 33_750][..]
                .get(n - 1)
                .copied()
                .unwrap_or(40_000))
        };
        let mut by_n: Vec<Vec<Duration>> = vec![Vec::new(); 9];
        for seed in 1..=500 {
            let mut sim = Sim::start(xorshift(seed * 7919), one_server(&extra));
            for (n, (_, w)) in sim.fail(9, unreachable()).into_iter().enumerate().skip(1) {
                assert!(w <= bound(n), "wait {n}: {w:?} > {:?}", bound(n));
                by_n[n].push(w);
            }
        }
        for (n, waits) in by_n.iter().enumerate().skip(1) {
            let b = bound(n);
            let low = waits.iter().filter(|w| **w < b / 4).count();
            let high = waits.iter().filter(|w| **w > b * 3 / 4).count();
            // Spread over the range, not one value (above the cap, every draw gives the cap, so
            // low values get rarer as the uncapped bound grows).
            assert!(low >= 10 && high >= 50, "wait {n}: {low} low, {high} high");
        }
    }

    #[test]
    fn lost_stream_waits_before_the_first_reconnection() {
        let extra = [("Device.XMPP.Connection.1.ServerRetryInitialInterval", "5")];
        let mut sim = Sim::start(fixed(u32::MAX), one_server(&extra));
        sim.connect();
        sim.now += secs(100);
        sim.p.stream_error(sim.now);
        let outs = without_stats(sim.drain());
        assert_eq!(
            outs,
            vec![
                Output::Disconnect,
                status(Status::Connecting),
                report(&[("Device.XMPP.Connection.1.TLSEstablished", "false")]),
            ]
        );
        // The first reconnection already waits, the first wait of a new series: in
        // [0, ServerRetryInitialInterval], here its bound; the next ones follow the series.
        assert!(matches!(sim.p.phase(), Phase::Waiting { attempt: 1, .. }));
        let seq = sim.fail(3, unreachable());
        assert_eq!(
            seq.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            vec![secs(5), secs(10), secs(20)]
        );
    }

    // --- server order and ServerConnectAttempts --------------------------------------------

    fn three_servers(attempts: &str) -> XmppSettings {
        settings(&[
            ("Device.XMPP.Connection.1.ServerConnectAttempts", attempts),
            ("Device.XMPP.Connection.1.ServerRetryInitialInterval", "10"),
            ("Device.XMPP.Connection.1.ServerRetryMaxInterval", "1000"),
            ("Device.XMPP.Connection.1.Server.1.Priority", "1"),
            ("Device.XMPP.Connection.1.Server.2.Priority", "5"),
            ("Device.XMPP.Connection.1.Server.3.Enable", "true"),
            ("Device.XMPP.Connection.1.Server.3.Priority", "9"),
            ("Device.XMPP.Connection.1.Server.3.Port", "5224"),
        ])
    }

    #[test]
    fn connect_attempts_per_server_then_the_next_at_once() {
        let (a, b, c) = (
            host("10.0.0.1", 5222),
            host("10.0.0.2", 5223),
            host("10.0.0.3", 5224),
        );
        let mut sim = Sim::start(fixed(u32::MAX), three_servers("3"));
        let seq = sim.fail(13, unreachable());
        let w = secs;
        assert_eq!(
            seq,
            vec![
                // Three attempts to the best server, with its own waits…
                (a.clone(), w(0)),
                (a.clone(), w(10)),
                (a.clone(), w(20)),
                // …then the next server at once, with a series of its own…
                (b.clone(), w(0)),
                (b.clone(), w(10)),
                (b.clone(), w(20)),
                (c.clone(), w(0)),
                (c.clone(), w(10)),
                (c.clone(), w(20)),
                // …and after the last one the list again, each server's series continuing.
                (a.clone(), w(40)),
                (a.clone(), w(80)),
                (a.clone(), w(160)),
                (b.clone(), w(0)),
            ]
        );
    }

    #[test]
    fn one_attempt_per_server_is_a_round_of_all_servers() {
        let (a, b, c) = (
            host("10.0.0.1", 5222),
            host("10.0.0.2", 5223),
            host("10.0.0.3", 5224),
        );
        let mut sim = Sim::start(fixed(u32::MAX), three_servers("1"));
        let seq = sim.fail(9, unreachable());
        let w = secs;
        assert_eq!(
            seq,
            vec![
                (a.clone(), w(0)),
                (b.clone(), w(0)),
                (c.clone(), w(0)),
                (a.clone(), w(10)),
                (b.clone(), w(0)),
                (c.clone(), w(0)),
                (a.clone(), w(20)),
                (b.clone(), w(0)),
                (c.clone(), w(0)),
            ]
        );
    }

    #[test]
    fn moving_on_keeps_connecting_and_a_wait_shows_the_failure() {
        let mut sim = Sim::start(fixed(u32::MAX), three_servers("2"));
        assert_eq!(
            sim.drain(),
            vec![
                status(Status::Connecting),
                Output::Connect(host("10.0.0.1", 5222))
            ]
        );
        // Failure with another attempt to come after a wait: the failure is the Status.
        sim.p
            .connect_failed(sim.now, ConnectError::Auth("bad".into()));
        assert_eq!(
            sim.drain(),
            vec![
                status(Status::ErrorAuthenticationFailure),
                report(&[("Device.XMPP.Connection.1.TLSEstablished", "false")]),
            ]
        );
        assert_eq!(sim.next(), secs(10));
        assert_eq!(
            sim.drain(),
            vec![
                status(Status::Connecting),
                Output::Connect(host("10.0.0.1", 5222))
            ]
        );
        // Second failure, on to the next server at once: still Connecting, no wait.
        sim.p
            .connect_failed(sim.now, ConnectError::Tls("unknown CA".into()));
        assert_eq!(sim.drain(), vec![Output::Connect(host("10.0.0.2", 5223))]);
        assert!(matches!(
            sim.p.phase(),
            Phase::Connecting { attempt: 1, .. }
        ));
        sim.p
            .connect_failed(sim.now, ConnectError::Tls("unknown CA".into()));
        assert_eq!(sim.drain(), vec![status(Status::Error)]);
        assert_eq!(
            sim.p.last_error(),
            Some(&ConnectError::Tls("unknown CA".into()))
        );
    }

    #[test]
    fn zero_connect_attempts_is_one_pass_and_no_reconnection() {
        let mut sim = Sim::start(fixed(u32::MAX), three_servers("0"));
        let seq = sim.fail(3, unreachable());
        assert_eq!(
            seq.iter().map(|(t, w)| (t.clone(), *w)).collect::<Vec<_>>(),
            vec![
                (host("10.0.0.1", 5222), Duration::ZERO),
                (host("10.0.0.2", 5223), Duration::ZERO),
                (host("10.0.0.3", 5224), Duration::ZERO),
            ]
        );
        assert_eq!(sim.p.phase(), &Phase::Idle(Idle::NoReconnect));
        assert_eq!(statuses(&sim.drain()), vec![Status::ServerNotPresent]);
        assert_eq!(sim.p.poll_timeout(), None);
        assert!(sim.at(secs(86_400)).is_empty());
        // A settings change starts again, at once.
        let mut s = three_servers("0");
        s.conn.as_mut().unwrap().retry_initial = 11;
        sim.p.update_settings(sim.now, s, None);
        assert_eq!(
            sim.drain(),
            vec![
                status(Status::Connecting),
                Output::Connect(host("10.0.0.1", 5222))
            ]
        );
        // Connected, then the stream is lost: no reconnection.
        sim.p.connected(sim.now, "cpe@d.test/x", false);
        sim.drain();
        sim.p.stream_error(sim.now);
        assert_eq!(
            without_stats(sim.drain()),
            vec![Output::Disconnect, status(Status::Connecting)]
        );
        assert_eq!(sim.p.phase(), &Phase::Idle(Idle::NoReconnect));
        assert_eq!(sim.p.poll_timeout(), None);
    }

    #[test]
    fn each_pass_draws_the_order_again() {
        // Two servers of equal priority and weight: the order follows the random draws.
        let s = settings(&[
            ("Device.XMPP.Connection.1.ServerConnectAttempts", "1"),
            ("Device.XMPP.Connection.1.Server.1.Priority", "1"),
        ]);
        let draws = [0u32, 0, 1, 0, 0, 0];
        let mut i = 0;
        let rng = Box::new(move || {
            let v = draws[i % draws.len()];
            i += 1;
            v
        });
        // Draws: pass 1 order (0 → server 1 first, then the last one left: 0), the wait (0),
        // pass 2 order (1 → server 2 first, 0)…
        let mut sim = Sim::start(rng, s);
        let seq: Vec<Target> = sim
            .fail(4, unreachable())
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            seq,
            vec![
                host("10.0.0.1", 5222),
                host("10.0.0.2", 5223),
                host("10.0.0.2", 5223),
                host("10.0.0.1", 5222),
            ]
        );
    }

    #[test]
    fn a_login_that_does_not_complete_is_a_failed_attempt() {
        let mut sim = Sim::start(fixed(u32::MAX), three_servers("1"));
        sim.drain();
        assert_eq!(sim.p.poll_timeout(), Some(sim.t0 + CONNECT_TIMEOUT));
        assert!(sim.at(CONNECT_TIMEOUT - ms(1)).is_empty());
        assert_eq!(
            sim.at(CONNECT_TIMEOUT),
            vec![Output::Disconnect, Output::Connect(host("10.0.0.2", 5223))]
        );
        assert!(matches!(
            sim.p.last_error(),
            Some(ConnectError::Unreachable(_))
        ));
        // The next server's attempt has its own deadline.
        assert_eq!(sim.p.poll_timeout(), Some(sim.t0 + CONNECT_TIMEOUT * 2));
    }

    // --- keep-alive ------------------------------------------------------------------------

    fn pings(outs: &[Output]) -> usize {
        outs.iter().filter(|o| **o == Output::SendPing).count()
    }

    #[test]
    fn keepalive_pings_after_silence_and_detects_a_dead_stream() {
        let extra = [("Device.XMPP.Connection.1.KeepAliveInterval", "60")];
        let mut sim = Sim::start(fixed(u32::MAX), one_server(&extra));
        sim.connect();
        // Silence for one interval: a ping.
        assert_eq!(sim.p.poll_timeout(), Some(sim.t0 + secs(60)));
        assert_eq!(pings(&sim.at(ms(59_999))), 0);
        // Something received resets the interval; something sent does not.
        sim.p.stanza_received(sim.t0 + secs(30), false);
        sim.p.stanza_sent(sim.t0 + secs(80), false);
        assert_eq!(sim.p.poll_timeout(), Some(sim.t0 + secs(90)));
        assert_eq!(pings(&sim.at(ms(89_999))), 0);
        assert_eq!(pings(&sim.at(secs(90))), 1);
        // The answer arrives: no more ping until another silent interval.
        sim.p.stanza_received(sim.t0 + secs(91), false);
        assert_eq!(pings(&sim.at(secs(150))), 0);
        assert_eq!(pings(&sim.at(secs(151))), 1);
        assert_eq!(sim.p.poll_timeout(), Some(sim.t0 + secs(211)));
        // No answer within another interval: the stream is dead.
        let outs = sim.at(ms(210_999));
        assert!(outs.is_empty(), "{outs:?}");
        let outs = without_stats(sim.at(secs(211)));
        assert_eq!(
            outs,
            vec![
                Output::Disconnect,
                status(Status::Connecting),
                report(&[("Device.XMPP.Connection.1.TLSEstablished", "false")]),
            ]
        );
        assert!(matches!(sim.p.phase(), Phase::Waiting { .. }));
    }

    #[test]
    fn keepalive_values_off_default_and_huge() {
        // 0: no keep-alive.
        let off = [("Device.XMPP.Connection.1.KeepAliveInterval", "0")];
        let mut sim = Sim::start(fixed(0), one_server(&off));
        sim.connect();
        assert!(sim.p.poll_timeout().unwrap() >= sim.t0 + secs(364 * 86_400));
        assert_eq!(pings(&sim.at(secs(100 * 86_400))), 0);
        // -1: DEFAULT_KEEPALIVE.
        let mut sim = Sim::start(fixed(0), one_server(&[]));
        sim.connect();
        assert_eq!(sim.p.poll_timeout(), Some(sim.t0 + DEFAULT_KEEPALIVE));
        // Beyond the clock's range: never, and no panic.
        let huge = [(
            "Device.XMPP.Connection.1.KeepAliveInterval",
            "9223372036854775807",
        )];
        let mut sim = Sim::start(fixed(0), one_server(&huge));
        sim.connect();
        let _ = sim.p.poll_timeout();
        assert_eq!(pings(&sim.at(secs(1000 * 86_400))), 0);
        assert!(matches!(sim.p.phase(), Phase::Online { .. }));
    }

    // --- status values ---------------------------------------------------------------------

    #[test]
    fn status_values_on_each_transition() {
        let mut sim = Sim::start(fixed(u32::MAX), one_server(&[]));
        assert_eq!(
            sim.drain(),
            vec![
                status(Status::Connecting),
                Output::Connect(host("d.test", 5222))
            ]
        );
        // Up: JabberID and TLS, Enabled, ConnReqJabberID, presence.
        sim.p.connected(sim.now, "cpe@d.test/cwmp", true);
        assert_eq!(
            sim.drain(),
            vec![
                report(&[
                    ("Device.XMPP.Connection.1.JabberID", "cpe@d.test/cwmp"),
                    ("Device.XMPP.Connection.1.TLSEstablished", "true"),
                ]),
                status(Status::Enabled),
                report(&[(CONNREQ_JID, "cpe@d.test/cwmp")]),
                Output::SendPresence,
            ]
        );
        assert!(matches!(sim.p.phase(), Phase::Online { .. }));
        // Lost: Connecting, no TLS; the counters go out.
        sim.p.stanza_sent(sim.now, false);
        sim.p.stanza_received(sim.now + ms(10), true);
        let outs = sim.drain();
        assert_eq!(
            outs,
            vec![report(&[
                ("Device.XMPP.Connection.1.Stats.ReceivedMessages", "0"),
                ("Device.XMPP.Connection.1.Stats.TransmittedMessages", "1"),
                ("Device.XMPP.Connection.1.Stats.ReceivedErrorMessages", "0"),
                (
                    "Device.XMPP.Connection.1.Stats.TransmittedErrorMessages",
                    "0"
                ),
            ])]
        );
        sim.now += ms(20);
        sim.p.stream_error(sim.now);
        assert_eq!(
            sim.drain(),
            vec![
                Output::Disconnect,
                status(Status::Connecting),
                report(&[("Device.XMPP.Connection.1.TLSEstablished", "false")]),
                // Forced at the end of the stream, within the second.
                report(&[
                    ("Device.XMPP.Connection.1.Stats.ReceivedMessages", "1"),
                    ("Device.XMPP.Connection.1.Stats.ReceivedErrorMessages", "1"),
                ]),
            ]
        );
        // Each failure gives its Status while the policy waits.
        for (i, (e, st)) in [
            (unreachable(), Status::ServerNotPresent),
            (
                ConnectError::Auth("x".into()),
                Status::ErrorAuthenticationFailure,
            ),
            (ConnectError::Tls("x".into()), Status::Error),
            (ConnectError::Protocol("x".into()), Status::Error),
            (
                ConnectError::Misconfigured("x".into()),
                Status::ErrorMisconfigured,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            sim.next();
            // Connecting again (during the first wait after the drop it still was).
            let again = if i == 0 {
                vec![]
            } else {
                vec![Status::Connecting]
            };
            assert_eq!(statuses(&sim.drain()), again);
            sim.p.connect_failed(sim.now, e);
            assert_eq!(statuses(&sim.drain()), vec![st]);
        }
        // Disabled: Disabled, ConnReqJabberID emptied, nothing scheduled.
        let off = one_server(&[("Device.XMPP.Connection.1.Enable", "false")]);
        sim.p.update_settings(sim.now, off, None);
        assert_eq!(
            sim.drain(),
            vec![status(Status::Disabled), report(&[(CONNREQ_JID, "")])]
        );
        assert_eq!(sim.p.phase(), &Phase::Idle(Idle::Disabled));
        assert_eq!(sim.p.poll_timeout(), None);
        // Enabled again: at once.
        sim.p.update_settings(sim.now, one_server(&[]), None);
        assert_eq!(
            sim.drain(),
            vec![
                status(Status::Connecting),
                Output::Connect(host("d.test", 5222))
            ]
        );
        // The reference cleared: the stream ends, ConnReqJabberID is empty (already).
        sim.p.connected(sim.now, "cpe@d.test/cwmp", true);
        sim.drain();
        let none = settings(&[("Device.ManagementServer.ConnReqXMPPConnection", "")]);
        sim.p.update_settings(sim.now, none, None);
        assert_eq!(
            sim.drain(),
            vec![
                Output::Disconnect,
                report(&[("Device.XMPP.Connection.1.TLSEstablished", "false")]),
                report(&[(CONNREQ_JID, "")]),
            ]
        );
        assert_eq!(sim.p.phase(), &Phase::Idle(Idle::NoConnection));
    }

    #[test]
    fn misconfiguration_waits_for_the_settings() {
        for (s, login_error) in [
            (
                one_server(&[("Device.XMPP.Connection.1.Username", "")]),
                None,
            ),
            (one_server(&[("Device.XMPP.Connection.1.Domain", "")]), None),
            (
                settings(&[(
                    "Device.XMPP.Connection.1.ServerConnectAlgorithm",
                    "WebSocket",
                )]),
                None,
            ),
            (
                settings(&[
                    ("Device.XMPP.Connection.1.Server.1.Enable", "false"),
                    ("Device.XMPP.Connection.1.Server.2.ServerAddress", ""),
                ]),
                None,
            ),
            (
                one_server(&[]),
                Some("TLS: CA file holds no certificate".to_string()),
            ),
        ] {
            let t0 = Instant::now();
            let mut p = XmppPolicy::new(fixed(0));
            p.update_settings(t0, s, login_error);
            let outs: Vec<Output> = std::iter::from_fn(|| p.poll_output()).collect();
            assert_eq!(
                outs,
                vec![
                    status(Status::ErrorMisconfigured),
                    report(&[("Device.XMPP.Connection.1.TLSEstablished", "false")]),
                ]
            );
            assert!(matches!(p.phase(), Phase::Idle(Idle::Misconfigured(_))));
            assert_eq!(p.poll_timeout(), None);
            // Fixed settings: connecting at once.
            p.update_settings(t0 + secs(5), one_server(&[]), None);
            let outs: Vec<Output> = std::iter::from_fn(|| p.poll_output()).collect();
            assert_eq!(
                outs,
                vec![
                    status(Status::Connecting),
                    Output::Connect(host("d.test", 5222))
                ]
            );
        }
    }

    #[test]
    fn connreq_jid_reported_only_when_the_model_differs() {
        // The model already holds the JID (a restart): not reported again, so no VALUE CHANGE.
        let same = one_server(&[(CONNREQ_JID, "cpe@d.test/cwmp")]);
        let mut sim = Sim::start(fixed(0), same.clone());
        let outs = sim.connect();
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Output::Report(v) if v.iter().any(|(k, _)| k == CONNREQ_JID))),
            "{outs:?}"
        );
        // A different bound JID is.
        sim.p.stream_error(sim.now);
        sim.next();
        sim.drain();
        sim.p.connected(sim.now, "cpe@d.test/other", true);
        assert!(
            sim.drain()
                .contains(&report(&[(CONNREQ_JID, "cpe@d.test/other")]))
        );
        // No connection referenced from the start: "" only when the model holds something.
        let none = settings(&[("Device.ManagementServer.ConnReqXMPPConnection", "")]);
        let mut sim = Sim::start(fixed(0), none.clone());
        assert!(sim.drain().is_empty());
        let mut stale = none;
        stale.connreq_jid = "old@d.test/x".into();
        let mut sim = Sim::start(fixed(0), stale);
        assert_eq!(sim.drain(), vec![report(&[(CONNREQ_JID, "")])]);
    }

    #[test]
    fn stats_at_most_once_per_period() {
        let mut sim = Sim::start(fixed(0), one_server(&[]));
        sim.connect();
        let rx = "Device.XMPP.Connection.1.Stats.ReceivedMessages";
        sim.p.stanza_received(sim.t0, false);
        assert_eq!(
            sim.drain(),
            vec![report(&[
                (rx, "1"),
                ("Device.XMPP.Connection.1.Stats.TransmittedMessages", "0"),
                ("Device.XMPP.Connection.1.Stats.ReceivedErrorMessages", "0"),
                (
                    "Device.XMPP.Connection.1.Stats.TransmittedErrorMessages",
                    "0"
                ),
            ])]
        );
        sim.p.stanza_received(sim.t0 + ms(100), false);
        sim.p.stanza_received(sim.t0 + ms(200), false);
        assert!(sim.drain().is_empty());
        assert_eq!(sim.p.poll_timeout(), Some(sim.t0 + STATS_PERIOD));
        assert!(sim.at(ms(999)).is_empty());
        assert_eq!(sim.at(ms(1000)), vec![report(&[(rx, "3")])]);
        // Nothing new: nothing reported, only the keep-alive is due.
        assert!(sim.at(ms(5000)).is_empty());
        assert_eq!(
            sim.p.poll_timeout(),
            Some(sim.t0 + ms(200) + DEFAULT_KEEPALIVE)
        );
    }

    #[test]
    fn settings_changes_while_connected_waiting_or_connecting() {
        let mut sim = Sim::start(fixed(u32::MAX), one_server(&[]));
        sim.connect();
        // Not about the connection (allowed JIDs, CR credentials): nothing happens.
        let mut s = one_server(&[(
            "Device.ManagementServer.ConnReqAllowedJabberIDs",
            "acs@d.test",
        )]);
        s.cr_password = "new".into();
        sim.p.update_settings(sim.now, s.clone(), None);
        assert!(sim.drain().is_empty());
        assert_eq!(sim.p.settings().cr_password, "new");
        assert!(matches!(sim.p.phase(), Phase::Online { .. }));
        // About the connection: the stream ends and a new one starts at once.
        let mut s2 = s.clone();
        s2.conn.as_mut().unwrap().password = "pw2".into();
        sim.p.update_settings(sim.now, s2.clone(), None);
        assert_eq!(
            sim.drain(),
            vec![
                Output::Disconnect,
                report(&[("Device.XMPP.Connection.1.TLSEstablished", "false")]),
                status(Status::Connecting),
                Output::Connect(host("d.test", 5222)),
            ]
        );
        // During a connection attempt: abandoned, a new one at once.
        let mut s3 = s2.clone();
        s3.conn.as_mut().unwrap().resource = "r".into();
        sim.p.update_settings(sim.now, s3.clone(), None);
        assert_eq!(
            sim.drain(),
            vec![Output::Disconnect, Output::Connect(host("d.test", 5222))]
        );
        // During a reconnect wait: no more waiting, and a fresh series.
        sim.p.connect_failed(sim.now, unreachable());
        sim.drain();
        assert!(matches!(sim.p.phase(), Phase::Waiting { .. }));
        let mut s4 = s3;
        s4.conn.as_mut().unwrap().retry_initial = 3;
        sim.p.update_settings(sim.now, s4, None);
        assert_eq!(
            sim.drain(),
            vec![
                status(Status::Connecting),
                Output::Connect(host("d.test", 5222))
            ]
        );
        sim.p.connect_failed(sim.now, unreachable());
        assert_eq!(sim.next(), secs(3), "the first wait of a new series");
    }

    #[test]
    fn results_nobody_asked_for_are_dropped() {
        let mut sim = Sim::start(
            fixed(0),
            one_server(&[("Device.XMPP.Connection.1.Enable", "false")]),
        );
        sim.drain();
        sim.p.connect_failed(sim.now, unreachable());
        sim.p.stream_error(sim.now);
        assert!(sim.drain().is_empty());
        // A stream that was not asked for is closed.
        sim.p.connected(sim.now, "cpe@d.test/x", true);
        assert_eq!(sim.drain(), vec![Output::Disconnect]);
        assert_eq!(sim.p.phase(), &Phase::Idle(Idle::Disabled));
        // Time going backwards or early calls do nothing.
        let mut sim = Sim::start(fixed(u32::MAX), one_server(&[]));
        sim.drain();
        sim.p.connect_failed(sim.now, unreachable());
        sim.drain();
        sim.p.handle_timeout(sim.t0);
        sim.p.handle_timeout(sim.t0 - ms(1));
        assert!(sim.drain().is_empty());
        assert!(matches!(sim.p.phase(), Phase::Waiting { .. }));
    }

    // --- connection requests ---------------------------------------------------------------

    fn canonical(s: &str) -> Option<String> {
        // Stand-in for the JID library: lower-case, and "@@" is invalid.
        (s != "@@").then(|| s.to_ascii_lowercase())
    }

    #[test]
    fn allowed_jids() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = |list: &[&str], from: Option<&str>| sender_allowed(&l(list), from, &canonical);
        assert!(ok(&[], Some("acs@x/r")));
        assert!(ok(&[], None));
        assert!(ok(&["acs@x"], Some("acs@x/r")));
        assert!(ok(&["acs@x"], Some("acs@x")));
        assert!(ok(&["ACS@X"], Some("acs@x/r")));
        assert!(ok(&["acs@x/r"], Some("acs@x/r")));
        assert!(!ok(&["acs@x/r"], Some("acs@x/r2")));
        assert!(!ok(&["acs@x/r"], Some("acs@x")));
        assert!(!ok(&["acs@x"], Some("acs@xy/r")));
        assert!(!ok(&["acs@x"], Some("acs@x.y/r")));
        assert!(!ok(&["acs@x"], None));
        assert!(ok(&["a@b", "acs@x"], Some("acs@x/r/s@t")));
        assert!(ok(&["acs@x/r/s"], Some("acs@x/r/s")));
        // Only an invalid item: nobody.
        assert!(!ok(&["@@"], Some("acs@x/r")));
    }

    #[test]
    fn judging_connection_requests() {
        let s = settings(&[(
            "Device.ManagementServer.ConnReqAllowedJabberIDs",
            "acs@d.test, ops@d.test/console",
        )]);
        assert_eq!(s.allowed, vec!["acs@d.test", "ops@d.test/console"]);
        let t0 = Instant::now();
        let mut lim = RateLimiter::new(2, 1.0);
        let cr = |from: Option<&'static str>, u: &'static str, p: &'static str| IqRequest {
            from,
            credentials: Some((u, p)),
        };
        let mut j = |s: &XmppSettings, iq: IqRequest<'_>, at: u64| {
            judge(s, &iq, &canonical, &mut lim, t0 + ms(at))
        };
        // Wrong credentials: not-authorized, whichever is wrong; no token taken.
        assert_eq!(
            j(&s, cr(Some("acs@d.test/a"), "u", "x"), 0),
            Verdict::NotAuthorized
        );
        assert_eq!(
            j(&s, cr(Some("acs@d.test/a"), "x", "p"), 0),
            Verdict::NotAuthorized
        );
        assert_eq!(
            j(&s, cr(Some("acs@d.test/a"), "", ""), 0),
            Verdict::NotAuthorized
        );
        // Not allowed: service-unavailable before the credentials are looked at.
        assert_eq!(
            j(&s, cr(Some("evil@d.test/a"), "u", "x"), 0),
            Verdict::Unavailable("sender not in ConnReqAllowedJabberIDs")
        );
        assert_eq!(
            j(&s, cr(Some("ops@d.test/other"), "u", "p"), 0),
            Verdict::Unavailable("sender not in ConnReqAllowedJabberIDs")
        );
        assert_eq!(
            j(&s, cr(None, "u", "p"), 0),
            Verdict::Unavailable("sender not in ConnReqAllowedJabberIDs")
        );
        // Not a connection request.
        assert_eq!(
            j(
                &s,
                IqRequest {
                    from: Some("acs@d.test/a"),
                    credentials: None
                },
                0
            ),
            Verdict::Unavailable("not a connection request")
        );
        // Good ones, until the bucket (2, refilled at 1 per second) is empty.
        assert_eq!(
            j(&s, cr(Some("acs@d.test/a"), "u", "p"), 0),
            Verdict::Accept
        );
        assert_eq!(
            j(&s, cr(Some("ops@d.test/console"), "u", "p"), 0),
            Verdict::Accept
        );
        assert_eq!(
            j(&s, cr(Some("acs@d.test/a"), "u", "p"), 500),
            Verdict::Unavailable("rate limited")
        );
        assert_eq!(
            j(&s, cr(Some("acs@d.test/a"), "u", "p"), 1000),
            Verdict::Accept
        );
        // CWMP disabled: service-unavailable even with good credentials.
        let mut off = s.clone();
        off.cwmp_enabled = false;
        assert_eq!(
            j(&off, cr(Some("acs@d.test/a"), "u", "p"), 9000),
            Verdict::Unavailable("CWMP disabled")
        );
        // An empty list allows a request without `from`.
        let open = settings(&[]);
        assert_eq!(j(&open, cr(None, "u", "p"), 9000), Verdict::Accept);
        // The policy judges under the settings in force.
        let mut p = XmppPolicy::new(fixed(0));
        p.update_settings(t0, open, None);
        let mut lim = RateLimiter::new(1, 0.0);
        assert_eq!(
            p.judge(t0, &cr(Some("any@where/x"), "u", "p"), &canonical, &mut lim),
            Verdict::Accept
        );
        assert_eq!(
            p.judge(t0, &cr(Some("any@where/x"), "u", "p"), &canonical, &mut lim),
            Verdict::Unavailable("rate limited")
        );
    }
}
