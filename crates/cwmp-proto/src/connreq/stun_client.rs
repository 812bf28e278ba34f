//! The STUN client of the UDP connection-request socket (TR-111 / TR-069 Annex G; SPEC-NOTES §c)
//! as a pure state machine: no sockets, no clock, no runtime, no logging. The driver
//! (`udp.rs`) feeds it inputs and carries out what it asks for, in the manner of quinn-proto's
//! `Connection`:
//!
//! * inputs: [`StunClient::set_config`] (the settings), [`StunClient::handle_timeout`] (time has
//!   reached [`StunClient::poll_timeout`]), [`StunClient::handle_datagram`] (a datagram on one of
//!   the three sockets), and the answers to its requests ([`StunClient::handle_resolved`],
//!   [`StunClient::handle_secondary_opened`]); every input carries `now`;
//! * outputs, drained after each input: [`StunClient::poll_transmit`] (datagrams to send: which
//!   socket, to what address, the bytes), [`StunClient::poll_request`] (resolve a name, open or
//!   close the secondary sockets), [`StunClient::poll_event`] (status reports for the data model
//!   and what happened, for the log), and [`StunClient::poll_timeout`] (when to call
//!   `handle_timeout` next).
//!
//! Transaction ids come from the random source the driver gives ([`StunClient::new`]).
//!
//! What it does, when `STUNEnable` is true:
//! * Binding Requests in the classic RFC 3489 form (what Annex G was written for; RFC 5389
//!   servers answer them too) from the CR socket to `STUNServerAddress:STUNServerPort`, always
//!   with CONNECTION-REQUEST-BINDING, with BINDING-CHANGE when the mapped address changed (sent
//!   at once, outside the minimum keep-alive period). Responses in both forms are accepted
//!   (XOR-MAPPED-ADDRESS only when the magic cookie is there).
//! * Authentication: the first request has no credentials; a 401 makes it retry at once with
//!   USERNAME and MESSAGE-INTEGRITY (never when `STUNUsername` is empty), and later keep-alives
//!   carry them from the start. A 401 to an authenticated request (wrong password) backs off
//!   (5 s doubling, at most [`MAX_FAILURE_WAIT`]).
//! * Retransmission RFC 5389-style: RTO [`INITIAL_RTO`] doubling, [`MAX_SENDS`] sends, then a
//!   final wait of [`FINAL_WAIT_RTOS`] RTO; a transaction gives up after 39.5 s (the server name
//!   is resolved again for the next one) and the next one follows the same bounded backoff.
//! * Failover in a server cluster: when the name has more than one address, a transaction gives
//!   up sooner ([`FAILOVER_SENDS`] sends, final wait [`FAILOVER_FINAL_WAIT_RTOS`] RTO: 7.5 s) and
//!   the next address is tried at once, each address of the name once in a row; only when none
//!   answered does the failure backoff apply. RFC 5389 §7.2.1 leaves Rc and Rm configurable.
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
//!   off) and `NATDetected` (mapped ≠ the local source address/port; false when STUN is off),
//!   each time they differ from what was reported last.
//!
//! Only `std` and the crate's pure codec modules are used here.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::stun::{self, BindingRequest, Integrity, StunError, TxId};
use super::udpcr;

/// First retransmission timeout (RFC 5389 §7.2.1).
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Requests sent per transaction (RFC 5389 Rc).
pub const MAX_SENDS: u32 = 7;
/// Final wait after the last send, in RTOs (RFC 5389 Rm).
pub const FINAL_WAIT_RTOS: u32 = 16;
/// Requests sent per transaction when the server name has other addresses to fail over to.
pub const FAILOVER_SENDS: u32 = 4;
/// Final wait after the last send, in RTOs, when the server name has other addresses.
pub const FAILOVER_FINAL_WAIT_RTOS: u32 = 8;
/// First wait after a failed transaction (timeout, 401 with wrong credentials, other error).
pub const FIRST_FAILURE_WAIT: Duration = Duration::from_secs(5);
/// Longest wait after repeated failures.
pub const MAX_FAILURE_WAIT: Duration = Duration::from_secs(600);
/// Upper bound of binding-lifetime discovery when `STUNMaximumKeepAlivePeriod` is -1.
pub const DISCOVERY_CAP: Duration = Duration::from_secs(1800);
/// Sends of one discovery request (RTO [`INITIAL_RTO`] doubling, then a final wait of 2 RTO).
pub const PROBE_SENDS: u32 = 3;
/// Refreshes of the idle socket's binding left unanswered in a row before discovery gives up.
pub const MAX_REFRESH_FAILURES: u32 = 3;

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

/// The three sockets of the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Socket {
    /// The UDP connection-request socket (bound to `[connreq] udp_listen`), which holds the
    /// binding UDP connection requests come through.
    Cr,
    /// The secondary socket whose binding is left idle during discovery.
    Idle,
    /// The secondary socket that asks the server to answer at the idle socket's mapping.
    Prober,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The socket to send it from.
    pub socket: Socket,
    /// Its destination.
    pub to: SocketAddr,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Something the driver must do for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Resolve `host:port` to one address of the CR socket's family, find the local source IP
    /// toward it (the bound IP unless the CR socket is bound to the wildcard), and answer with
    /// [`StunClient::handle_resolved`] and this `token`. A newer request supersedes an older
    /// one (whose answer is ignored).
    Resolve {
        /// Echoed in the answer.
        token: u64,
        /// A host name or an IP literal.
        host: String,
        /// The port.
        port: u16,
        /// Which of the name's addresses (those of the CR socket's family, in the resolver's
        /// order) to take: the `pick`-th, modulo their number. It moves on by one after each
        /// transaction that got no answer, so a name with several addresses (a cluster of STUN
        /// servers) fails over to the next one; always 0 for the ACS host.
        pick: u32,
    },
    /// Open the two secondary sockets (idle and prober), both bound to `bind` (port 0), and
    /// answer with [`StunClient::handle_secondary_opened`].
    OpenSecondary {
        /// The address to bind them to.
        bind: SocketAddr,
    },
    /// Close the secondary sockets.
    CloseSecondary,
}

/// The answer to [`Request::Resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The address the name resolved to.
    pub addr: SocketAddr,
    /// The local source IP toward it, if known.
    pub source_ip: Option<IpAddr>,
    /// How many addresses (of the socket's family) the name has: more than one makes a
    /// silent server fail over to the next one quickly.
    pub of: u32,
}

/// Why a STUN transaction failed (the next one waits the backoff given with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Neither `STUNServerAddress` nor the ACS URL names a server.
    NoServer,
    /// The server name did not resolve (to an address of the CR socket's family).
    Unresolvable {
        /// The name.
        host: String,
    },
    /// The Binding Request could not be encoded.
    Encode(StunError),
    /// No answer after [`MAX_SENDS`] sends and the final wait.
    Timeout {
        /// The server asked.
        server: Option<SocketAddr>,
    },
    /// 401, but `STUNUsername` is empty (MESSAGE-INTEGRITY is never sent then).
    AuthNeedsUsername {
        /// The server.
        server: SocketAddr,
    },
    /// 401 to a request with USERNAME and MESSAGE-INTEGRITY: wrong credentials.
    AuthRejected {
        /// The server.
        server: SocketAddr,
    },
    /// Any other error response.
    ServerError {
        /// The server.
        server: SocketAddr,
        /// ERROR-CODE.
        code: u16,
        /// Its reason phrase (padding removed).
        reason: String,
    },
}

/// What binding-lifetime discovery reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// Started between `min_s` and `max_s`; keep-alives every `period` meanwhile.
    Started {
        /// Lower bound, seconds.
        min_s: u32,
        /// Upper bound, seconds.
        max_s: u32,
        /// Keep-alive period of the CR socket while it runs.
        period: Duration,
    },
    /// The driver could not open the secondary sockets: no discovery.
    NoSocket {
        /// Why.
        error: String,
    },
    /// The prober asks the server to answer at `to` after `idle_s` idle seconds.
    Probing {
        /// The idle socket's mapped address.
        to: SocketAddr,
        /// Seconds the idle binding was left alone.
        idle_s: u32,
    },
    /// The idle binding survived `idle_s` seconds.
    Alive {
        /// Seconds.
        idle_s: u32,
    },
    /// The idle binding was gone after `idle_s` seconds (confirmed by a refresh answered).
    Gone {
        /// Seconds.
        idle_s: u32,
    },
    /// No binding survived even the minimum: UDP connection requests may be lost.
    BelowMinimum {
        /// `STUNMinimumKeepAlivePeriod`.
        min_s: u32,
    },
    /// Finished: the longest interval survived, the shortest not survived, the period now in
    /// force.
    Done {
        /// Seconds.
        alive_s: Option<u32>,
        /// Seconds.
        dead_s: Option<u32>,
        /// The keep-alive period from now on.
        period: Duration,
    },
    /// The server did not answer the idle socket ([`MAX_REFRESH_FAILURES`] times): given up.
    NoAnswer {
        /// The keep-alive period kept, seconds.
        period_s: u32,
    },
    /// The server refused the secondary socket's request: given up.
    Refused {
        /// The server.
        server: SocketAddr,
        /// The error response, if it had one.
        error: Option<(u16, String)>,
        /// The keep-alive period kept, seconds.
        period_s: u32,
    },
    /// The probe's answer came back to the prober: the server ignores RESPONSE-ADDRESS.
    ResponseAddressIgnored {
        /// The server.
        server: SocketAddr,
        /// The keep-alive period kept, seconds.
        period_s: u32,
    },
}

/// What the client reports: status values for the data model, and what happened (the driver
/// logs these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `UDPConnectionRequestAddress` and `NATDetected` have these values now.
    Report {
        /// `host:port`, or empty when unknown.
        address: String,
        /// `NATDetected`.
        nat_detected: bool,
    },
    /// STUN was turned on.
    Enabled {
        /// Server name.
        host: String,
        /// Server port.
        port: u16,
        /// Keep-alive period, seconds.
        period_s: u32,
    },
    /// STUN was turned off.
    Disabled,
    /// A Binding Request went out from the CR socket (a new transaction).
    RequestSent {
        /// To.
        server: SocketAddr,
        /// With USERNAME and MESSAGE-INTEGRITY.
        authenticated: bool,
        /// With BINDING-CHANGE.
        binding_change: bool,
    },
    /// A Binding Request of the CR socket was sent again.
    Retransmitted {
        /// To.
        server: SocketAddr,
    },
    /// The server asked for credentials (401); the request is sent again with them.
    CredentialsRequested,
    /// A transaction failed; the next one starts after `retry_in`.
    Failed {
        /// Why.
        failure: Failure,
        /// Backoff.
        retry_in: Duration,
    },
    /// The server answers again after failures.
    ServerBack {
        /// The server.
        server: SocketAddr,
    },
    /// The mapped address changed: a request with BINDING-CHANGE follows at once.
    MappedChanged {
        /// The new mapped address.
        mapped: SocketAddr,
    },
    /// A Binding Response on the CR socket.
    Response {
        /// Mapped address.
        mapped: SocketAddr,
        /// Local source address of the CR socket, if known.
        local: Option<SocketAddr>,
        /// Whether they differ.
        nat: bool,
    },
    /// Binding-lifetime discovery.
    Discovery(DiscoveryEvent),
}

/// Why a datagram was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// No request is waiting for an answer on that socket.
    NoPendingRequest,
    /// Not from the STUN server.
    NotFromServer,
    /// Not a valid answer to the pending request.
    Invalid(StunError),
    /// MESSAGE-INTEGRITY does not verify with `STUNPassword`.
    BadIntegrity,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::NoPendingRequest => f.write_str("STUN message without a pending request"),
            Ignored::NotFromServer => f.write_str("STUN message not from the STUN server"),
            Ignored::Invalid(e) => write!(f, "{e}"),
            Ignored::BadIntegrity => f.write_str("STUN response with a bad MESSAGE-INTEGRITY"),
        }
    }
}

/// Random bytes for transaction ids (the driver: the system's CSPRNG; tests: a seeded source).
pub type RandomSource = Box<dyn FnMut() -> [u8; 16]>;

/// One outstanding Binding Request of the CR socket.
#[derive(Debug)]
struct Transaction {
    id: TxId,
    bytes: Vec<u8>,
    sends: u32,
    rto: Duration,
    deadline: Instant,
    authenticated: bool,
    binding_change: bool,
    /// Sends before giving up, and the final wait after the last one.
    max_sends: u32,
    final_wait: Duration,
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
    /// Waiting for the driver to open the secondary sockets.
    Opening,
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
}

/// What a pending name resolution is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// The STUN server (a transaction waits for it).
    Server,
    /// The ACS host: the local source IP toward it is the address reported while STUN is off.
    Acs,
}

/// The STUN client state machine (see the module documentation).
pub struct StunClient {
    /// The CR socket's bound address.
    local: SocketAddr,
    config: StunConfig,
    /// `set_config` has been called once.
    configured: bool,
    /// The host of `ManagementServer.URL`.
    acs_host: Option<String>,
    random: RandomSource,
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
    /// The driver holds the secondary sockets.
    secondary_open: bool,
    lookup: Option<(u64, Purpose)>,
    /// Which address of the server name to use next ([`Request::Resolve`]'s `pick`): one more
    /// after each transaction without an answer; 0 again when reconfigured.
    server_pick: u32,
    /// Addresses of the server name, from the last lookup.
    server_count: u32,
    /// Addresses tried one after the other without an answer since the last one answered.
    failovers: u32,
    next_token: u64,
    transmits: VecDeque<Transmit>,
    requests: VecDeque<Request>,
    events: VecDeque<Event>,
}

impl fmt::Debug for StunClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StunClient")
            .field("local", &self.local)
            .field("enabled", &self.config.enabled)
            .field("server", &self.server)
            .field("mapped", &self.mapped)
            .field("phase", &self.disc.phase)
            .finish_non_exhaustive()
    }
}

impl StunClient {
    /// A client for the CR socket bound to `local`, STUN off until [`StunClient::set_config`].
    /// `reported` is what the data model holds already (`UDPConnectionRequestAddress`,
    /// `NATDetected`): only changes from it are reported. `random` gives the bytes of
    /// transaction ids.
    pub fn new(local: SocketAddr, reported: Option<(String, bool)>, random: RandomSource) -> Self {
        StunClient {
            local,
            config: StunConfig::default(),
            configured: false,
            acs_host: None,
            random,
            server: None,
            source_ip: None,
            tx: None,
            send_credentials: false,
            mapped: None,
            pending_change: false,
            next_send: None,
            failures: 0,
            server_pick: 0,
            server_count: 1,
            failovers: 0,
            reported,
            disc: Discovery::default(),
            secondary_open: false,
            lookup: None,
            next_token: 0,
            transmits: VecDeque::new(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Outputs
    // -----------------------------------------------------------------------------------------

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing the driver must do.
    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// The next report or event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`StunClient::handle_timeout`] is due next (`None`: only an input can make
    /// something happen).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let main = match &self.tx {
            Some(tx) => Some(tx.deadline),
            None => self.next_send,
        };
        [main, self.disc.deadline()].into_iter().flatten().min()
    }

    /// The keep-alive period of the CR socket in force.
    pub fn period(&self) -> Duration {
        self.disc
            .period
            .unwrap_or(Duration::from_secs(u64::from(self.config.period_s)))
    }

    /// The mapped address of the CR socket last learned (`None` while STUN is off).
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    // -----------------------------------------------------------------------------------------
    // Inputs
    // -----------------------------------------------------------------------------------------

    /// The settings, at start and after every change: `config`, and the host of
    /// `ManagementServer.URL` (the local address reported while STUN is off is the source
    /// address toward it). A changed configuration starts over: a new first request (without
    /// credentials) at once, discovery afresh.
    pub fn set_config(&mut self, now: Instant, config: StunConfig, acs_host: Option<String>) {
        let acs_changed = acs_host != self.acs_host;
        self.acs_host = acs_host;
        // The ACS host matters only while STUN is off (the local address reported).
        let relevant_change = config != self.config || (acs_changed && !config.enabled);
        if self.configured && !relevant_change {
            return;
        }
        self.configured = true;
        self.reconfigure(now, config);
    }

    /// Time has reached (or passed) [`StunClient::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.disc.deadline().is_some_and(|d| now >= d) {
            self.on_discovery_timer(now);
        }
        if let Some(tx) = &mut self.tx {
            if now < tx.deadline {
                return;
            }
            if tx.sends >= tx.max_sends {
                let server = self.server.take(); // resolved again next time
                // ... and the next address of the name tried (failover in a server cluster):
                // at once while some address of the name has not been tried in this round.
                self.server_pick = self.server_pick.wrapping_add(1);
                let retry_in = if self.failovers + 1 < self.server_count {
                    self.failovers += 1;
                    self.tx = None;
                    self.next_send = Some(now);
                    Duration::ZERO
                } else {
                    self.failovers = 0;
                    self.fail(now)
                };
                self.event(Event::Failed {
                    failure: Failure::Timeout { server },
                    retry_in,
                });
                return;
            }
            tx.sends += 1;
            tx.rto *= 2;
            tx.deadline = now
                + if tx.sends >= tx.max_sends {
                    tx.final_wait
                } else {
                    tx.rto
                };
            let bytes = tx.bytes.clone();
            if let Some(server) = self.server {
                self.event(Event::Retransmitted { server });
                self.transmit(Socket::Cr, server, bytes);
            }
            return;
        }
        if self.config.enabled && self.next_send.is_some_and(|t| now >= t) {
            self.next_send = None;
            self.start_transaction(now);
        }
    }

    /// A datagram from `from` arrived on `socket`. On the CR socket only STUN messages belong
    /// here (the driver hands UDP connection requests to their validator). `Err` tells why it
    /// was not taken (worth a rate-limited debug line on the CR socket).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        socket: Socket,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), Ignored> {
        match socket {
            Socket::Cr => self.on_cr_socket(now, from, data),
            Socket::Idle => self.on_idle_socket(now, from, data),
            Socket::Prober => self.on_prober_socket(from, data),
        }
    }

    /// The answer to [`Request::Resolve`] `token`: `None` when the name did not resolve (to an
    /// address of the CR socket's family).
    pub fn handle_resolved(&mut self, now: Instant, token: u64, result: Option<Resolved>) {
        let Some((_, purpose)) = self.lookup.take_if(|(t, _)| *t == token) else {
            return; // superseded
        };
        match purpose {
            Purpose::Server => match result {
                Some(r) => {
                    self.server = Some(r.addr);
                    self.source_ip = r.source_ip;
                    self.server_count = r.of.max(1);
                    self.send_binding_request(now);
                }
                None => {
                    let retry_in = self.fail(now);
                    self.event(Event::Failed {
                        failure: Failure::Unresolvable {
                            host: self.config.server_host.clone(),
                        },
                        retry_in,
                    });
                }
            },
            Purpose::Acs => {
                let port = self.local.port();
                let address = result
                    .and_then(|r| r.source_ip)
                    .map(|ip| udpcr::authority(SocketAddr::new(ip, port)))
                    .unwrap_or_default();
                self.report(address, false);
            }
        }
    }

    /// The answer to [`Request::OpenSecondary`]: `Err` with the reason when the sockets could
    /// not be opened (discovery is then given up).
    pub fn handle_secondary_opened(&mut self, now: Instant, result: Result<(), String>) {
        if !matches!(self.disc.phase, Phase::Opening) {
            // Not wanted any more (reconfigured meanwhile).
            if result.is_ok() {
                self.requests.push_back(Request::CloseSecondary);
            }
            return;
        }
        match result {
            Ok(()) => {
                self.secondary_open = true;
                self.event(Event::Discovery(DiscoveryEvent::Started {
                    min_s: self.config.min_s,
                    max_s: self.discovery_cap(),
                    period: self.period(),
                }));
                self.refresh_idle(now);
            }
            Err(error) => {
                self.event(Event::Discovery(DiscoveryEvent::NoSocket { error }));
                self.stop_discovery(Phase::Unsupported);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // The CR socket
    // -----------------------------------------------------------------------------------------

    fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    fn transmit(&mut self, socket: Socket, to: SocketAddr, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit { socket, to, bytes });
    }

    fn classic_txid(&mut self) -> TxId {
        let mut b = (self.random)();
        if b[..4] == stun::MAGIC_COOKIE.to_be_bytes() {
            b[0] ^= 0xff;
        }
        TxId::Classic(b)
    }

    fn request_lookup(&mut self, purpose: Purpose, host: String, port: u16) {
        self.next_token += 1;
        let token = self.next_token;
        self.lookup = Some((token, purpose));
        let pick = match purpose {
            Purpose::Server => self.server_pick,
            Purpose::Acs => 0,
        };
        self.requests.push_back(Request::Resolve {
            token,
            host,
            port,
            pick,
        });
    }

    /// Whether requests are sent with USERNAME and MESSAGE-INTEGRITY.
    fn authenticated(&self) -> bool {
        self.send_credentials && !self.config.username.is_empty()
    }

    fn discovery_cap(&self) -> u32 {
        self.config
            .max_s
            .unwrap_or(DISCOVERY_CAP.as_secs() as u32)
            .max(self.config.min_s)
    }

    fn reconfigure(&mut self, now: Instant, config: StunConfig) {
        let was = self.config.enabled;
        self.config = config;
        self.tx = None;
        self.server = None;
        self.source_ip = None;
        self.send_credentials = false;
        self.failures = 0;
        self.server_pick = 0;
        self.failovers = 0;
        self.pending_change = false;
        self.lookup = None;
        self.stop_discovery(Phase::Off);
        self.disc = Discovery::default();
        if self.config.enabled {
            if !was {
                self.event(Event::Enabled {
                    host: self.config.server_host.clone(),
                    port: self.config.server_port,
                    period_s: self.config.period_s,
                });
            }
            self.next_send = Some(now);
        } else {
            if was {
                self.event(Event::Disabled);
            }
            self.mapped = None;
            self.next_send = None;
            // The local address a UDP connection request reaches when there is no NAT: the
            // bound address, or (bound to the wildcard) the source address toward the ACS.
            if !self.local.ip().is_unspecified() {
                self.report(udpcr::authority(self.local), false);
            } else if let Some(host) = self.acs_host.clone() {
                self.request_lookup(Purpose::Acs, host, 80);
            } else {
                self.report(String::new(), false);
            }
        }
    }

    fn report(&mut self, address: String, nat_detected: bool) {
        let new = (address, nat_detected);
        if self.reported.as_ref() == Some(&new) {
            return;
        }
        self.reported = Some(new.clone());
        self.event(Event::Report {
            address: new.0,
            nat_detected: new.1,
        });
    }

    fn failure_wait(&self) -> Duration {
        let period_s = self.config.period_s.max(1);
        let exp = self.failures.saturating_sub(1).min(16);
        let w = FIRST_FAILURE_WAIT.saturating_mul(1u32 << exp);
        w.clamp(
            Duration::from_secs(u64::from(period_s).min(MAX_FAILURE_WAIT.as_secs())),
            MAX_FAILURE_WAIT,
        )
    }

    /// Counts a failed transaction and schedules the next one; returns the wait.
    fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.tx = None;
        let w = self.failure_wait();
        self.next_send = Some(now + w);
        w
    }

    fn start_transaction(&mut self, now: Instant) {
        if self.server.is_some() {
            self.send_binding_request(now);
            return;
        }
        if self.config.server_host.is_empty() {
            let retry_in = self.fail(now);
            self.event(Event::Failed {
                failure: Failure::NoServer,
                retry_in,
            });
            return;
        }
        // The transaction starts when the name is resolved (`handle_resolved`).
        self.request_lookup(
            Purpose::Server,
            self.config.server_host.clone(),
            self.config.server_port,
        );
    }

    fn send_binding_request(&mut self, now: Instant) {
        let Some(server) = self.server else { return };
        let id = self.classic_txid();
        let authenticated = self.authenticated();
        let binding_change = self.pending_change;
        let req = BindingRequest {
            username: authenticated.then_some(self.config.username.as_str()),
            password: authenticated.then_some(self.config.password.as_str()),
            binding_change,
            ..BindingRequest::new(id)
        };
        let bytes = match req.encode() {
            Ok(b) => b,
            Err(e) => {
                let retry_in = self.fail(now);
                self.event(Event::Failed {
                    failure: Failure::Encode(e),
                    retry_in,
                });
                return;
            }
        };
        self.event(Event::RequestSent {
            server,
            authenticated,
            binding_change,
        });
        self.transmit(Socket::Cr, server, bytes.clone());
        self.tx = Some(Transaction {
            id,
            bytes,
            sends: 1,
            rto: INITIAL_RTO,
            deadline: now + INITIAL_RTO,
            authenticated,
            binding_change,
            max_sends: if self.server_count > 1 {
                FAILOVER_SENDS
            } else {
                MAX_SENDS
            },
            final_wait: INITIAL_RTO
                * if self.server_count > 1 {
                    FAILOVER_FINAL_WAIT_RTOS
                } else {
                    FINAL_WAIT_RTOS
                },
        });
    }

    fn on_cr_socket(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) -> Result<(), Ignored> {
        let Some(tx) = &self.tx else {
            return Err(Ignored::NoPendingRequest);
        };
        if Some(peer) != self.server {
            return Err(Ignored::NotFromServer);
        }
        let resp = stun::parse_response(data, &tx.id).map_err(Ignored::Invalid)?;
        if tx.authenticated
            && resp.has_integrity
            && stun::check_integrity(data, self.config.password.as_bytes()) == Integrity::Invalid
        {
            return Err(Ignored::BadIntegrity);
        }
        let (authenticated, binding_change) = (tx.authenticated, tx.binding_change);
        self.tx = None;
        if let Some((code, reason)) = resp.error.clone() {
            if resp.is_unauthorized() && !authenticated && !self.config.username.is_empty() {
                self.event(Event::CredentialsRequested);
                self.send_credentials = true;
                self.start_transaction(now);
                return Ok(());
            }
            let failure = if resp.is_unauthorized() && self.config.username.is_empty() {
                Failure::AuthNeedsUsername { server: peer }
            } else if resp.is_unauthorized() {
                Failure::AuthRejected { server: peer }
            } else {
                Failure::ServerError {
                    server: peer,
                    code,
                    reason: reason.trim_end_matches(['\0', ' ']).to_string(),
                }
            };
            let retry_in = self.fail(now);
            self.event(Event::Failed { failure, retry_in });
            return Ok(());
        }
        let Some(mapped) = resp.mapped else {
            return Ok(()); // a success response always has one (parse_response)
        };
        if self.failures > 0 {
            self.event(Event::ServerBack { server: peer });
        }
        self.failures = 0;
        let changed = self.mapped.is_some_and(|m| m != mapped);
        self.mapped = Some(mapped);
        if changed {
            self.event(Event::MappedChanged { mapped });
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
        self.event(Event::Response { mapped, local, nat });
        self.report(udpcr::authority(mapped), nat);
        Ok(())
    }

    /// After a successful keep-alive: schedules the next one (every minimum period until the
    /// binding lifetime is known) and starts binding-lifetime discovery if it has not run yet.
    fn after_keepalive(&mut self, now: Instant) {
        self.failovers = 0;
        self.next_send = Some(now + self.period());
        if !matches!(self.disc.phase, Phase::Off) {
            return;
        }
        if self.discovery_cap() <= self.config.min_s {
            self.disc.phase = Phase::NotNeeded;
            return;
        }
        let any: IpAddr = if self.local.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        // On the CR socket's source address.
        let bind = SocketAddr::new(self.source_ip.unwrap_or(any), 0);
        self.disc.server = self.server;
        self.disc.phase = Phase::Opening;
        self.requests.push_back(Request::OpenSecondary { bind });
    }

    // -----------------------------------------------------------------------------------------
    // Binding-lifetime discovery
    // -----------------------------------------------------------------------------------------

    /// Ends discovery in `phase`, asking the driver to close the secondary sockets (anything
    /// still queued for them is dropped).
    fn stop_discovery(&mut self, phase: Phase) {
        if self.secondary_open {
            self.secondary_open = false;
            self.requests.push_back(Request::CloseSecondary);
        }
        self.transmits.retain(|t| t.socket == Socket::Cr);
        self.disc.idle_mapped = None;
        self.disc.phase = phase;
    }

    /// A discovery request (no CONNECTION-REQUEST-BINDING: not the CR binding).
    fn discovery_request(
        &mut self,
        response_address: Option<SocketAddr>,
    ) -> Option<(TxId, Vec<u8>)> {
        let id = self.classic_txid();
        let authenticated = self.authenticated();
        let req = BindingRequest {
            username: authenticated.then_some(self.config.username.as_str()),
            password: authenticated.then_some(self.config.password.as_str()),
            connection_request_binding: false,
            response_address,
            ..BindingRequest::new(id)
        };
        req.encode().ok().map(|b| (id, b))
    }

    /// Sends a Binding Request from the idle socket: creates (or refreshes) its binding and
    /// learns its mapped address.
    fn refresh_idle(&mut self, now: Instant) {
        let (Some(server), Some((id, bytes))) = (self.disc.server, self.discovery_request(None))
        else {
            self.stop_discovery(Phase::Unsupported);
            return;
        };
        self.transmit(Socket::Idle, server, bytes.clone());
        self.disc.phase = Phase::Refresh(DiscoveryTx::new(id, bytes, now));
    }

    /// After `t` idle seconds: asks the server, from the prober socket, to answer at the idle
    /// socket's mapped address.
    fn send_probe(&mut self, now: Instant) {
        let (Some(server), Some(mapped)) = (self.disc.server, self.disc.idle_mapped) else {
            self.stop_discovery(Phase::Unsupported);
            return;
        };
        let Some((id, bytes)) = self.discovery_request(Some(mapped)) else {
            self.stop_discovery(Phase::Unsupported);
            return;
        };
        self.event(Event::Discovery(DiscoveryEvent::Probing {
            to: mapped,
            idle_s: self.disc.t,
        }));
        self.transmit(Socket::Prober, server, bytes.clone());
        self.disc.phase = Phase::Probe(DiscoveryTx::new(id, bytes, now));
    }

    /// The idle socket's binding is known to be fresh: count a pending "gone" verdict, then
    /// leave the binding idle for the next interval, or finish.
    fn idle_refreshed(&mut self, now: Instant) {
        self.disc.refresh_failures = 0;
        if std::mem::take(&mut self.disc.unconfirmed_dead) {
            let t = self.disc.t;
            self.event(Event::Discovery(DiscoveryEvent::Gone { idle_s: t }));
            self.disc.dead = Some(self.disc.dead.map_or(t, |d| d.min(t)));
        }
        match self
            .disc
            .next_interval(self.config.min_s, self.discovery_cap())
        {
            Some(t) => {
                self.disc.t = t;
                self.disc.phase = Phase::Wait(now + Duration::from_secs(u64::from(t)));
            }
            None => self.finish_discovery(),
        }
    }

    fn finish_discovery(&mut self) {
        let min = Duration::from_secs(u64::from(self.config.min_s));
        let max = Duration::from_secs(u64::from(self.discovery_cap()));
        let period = match self.disc.alive {
            Some(a) => (Duration::from_secs(u64::from(a)) * 9 / 10).clamp(min, max),
            None => min,
        };
        if self.disc.alive.is_none() {
            self.event(Event::Discovery(DiscoveryEvent::BelowMinimum {
                min_s: self.config.min_s,
            }));
        }
        self.event(Event::Discovery(DiscoveryEvent::Done {
            alive_s: self.disc.alive,
            dead_s: self.disc.dead,
            period,
        }));
        self.disc.period = Some(period);
        self.stop_discovery(Phase::Done);
    }

    fn on_discovery_timer(&mut self, now: Instant) {
        let server = self.disc.server;
        match &mut self.disc.phase {
            Phase::Wait(at) if now >= *at => self.send_probe(now),
            Phase::Pause(at) if now >= *at => self.refresh_idle(now),
            Phase::Refresh(tx) if now >= tx.deadline => match tx.retransmit(now) {
                Some(bytes) => {
                    if let Some(server) = server {
                        self.transmit(Socket::Idle, server, bytes);
                    }
                }
                None => {
                    // The server did not answer the idle socket: no verdict on the last probe.
                    self.disc.unconfirmed_dead = false;
                    self.disc.refresh_failures += 1;
                    if self.disc.refresh_failures >= MAX_REFRESH_FAILURES {
                        self.event(Event::Discovery(DiscoveryEvent::NoAnswer {
                            period_s: self.config.period_s,
                        }));
                        self.stop_discovery(Phase::Unsupported);
                    } else {
                        self.disc.phase = Phase::Pause(now + self.period());
                    }
                }
            },
            Phase::Probe(tx) if now >= tx.deadline => match tx.retransmit(now) {
                Some(bytes) => {
                    if let Some(server) = server {
                        self.transmit(Socket::Prober, server, bytes);
                    }
                }
                None => {
                    // No answer at the idle mapping: gone, unless the server is gone (the
                    // refresh tells).
                    self.disc.unconfirmed_dead = true;
                    self.refresh_idle(now);
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
    ) -> Result<stun::StunResponse, Ignored> {
        if Some(peer) != self.disc.server {
            return Err(Ignored::NotFromServer);
        }
        let resp = stun::parse_response(data, id).map_err(Ignored::Invalid)?;
        if self.authenticated()
            && resp.has_integrity
            && stun::check_integrity(data, self.config.password.as_bytes()) == Integrity::Invalid
        {
            return Err(Ignored::BadIntegrity);
        }
        Ok(resp)
    }

    /// A datagram on the idle socket: the answer to its refresh (its mapped address), or the
    /// answer to a probe (its binding survived the idle interval).
    fn on_idle_socket(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), Ignored> {
        match &self.disc.phase {
            Phase::Refresh(tx) => {
                let resp = self.discovery_answer(data, peer, &tx.id)?;
                match (resp.error, resp.mapped) {
                    (None, Some(mapped)) => {
                        self.disc.idle_mapped = Some(mapped);
                        self.idle_refreshed(now);
                    }
                    (error, _) => {
                        self.event(Event::Discovery(DiscoveryEvent::Refused {
                            server: peer,
                            error,
                            period_s: self.config.period_s,
                        }));
                        self.stop_discovery(Phase::Unsupported);
                    }
                }
            }
            Phase::Probe(tx) => {
                self.discovery_answer(data, peer, &tx.id)?;
                let t = self.disc.t;
                self.event(Event::Discovery(DiscoveryEvent::Alive { idle_s: t }));
                self.disc.alive = Some(self.disc.alive.map_or(t, |a| a.max(t)));
                if self
                    .disc
                    .next_interval(self.config.min_s, self.discovery_cap())
                    .is_none()
                {
                    self.finish_discovery();
                } else {
                    // A refresh re-learns the mapping before the next interval.
                    self.refresh_idle(now);
                }
            }
            _ => return Err(Ignored::NoPendingRequest),
        }
        Ok(())
    }

    /// A datagram on the prober socket: the answer to a probe came back to its source, so the
    /// server ignores RESPONSE-ADDRESS.
    fn on_prober_socket(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), Ignored> {
        let Phase::Probe(tx) = &self.disc.phase else {
            return Err(Ignored::NoPendingRequest);
        };
        self.discovery_answer(data, peer, &tx.id)?;
        self.event(Event::Discovery(DiscoveryEvent::ResponseAddressIgnored {
            server: peer,
            period_s: self.config.period_s,
        }));
        self.stop_discovery(Phase::Unsupported);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The state machine on virtual time: a simulated STUN server and NAT answer its datagrams
    //! at once; time only moves when a test says so. Assertions are on the outputs.

    use super::*;
    use crate::connreq::stun::{BindingRequestInfo, MiLayout};
    use std::collections::HashMap;

    const SERVER: &str = "192.0.2.1:3478";
    const PUBLIC_IP: &str = "203.0.113.7";
    const SOURCE_IP: &str = "10.0.0.2";
    /// First port the NAT hands out.
    const NAT_PORT: u16 = 50000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// A seeded source of transaction ids (xorshift64).
    fn seeded(seed: u64) -> RandomSource {
        let mut x = seed.max(1);
        Box::new(move || {
            let mut b = [0u8; 16];
            for c in b.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            b
        })
    }

    /// STUN on, `STUNMinimumKeepAlivePeriod` / `STUNMaximumKeepAlivePeriod` (`None`: -1), as
    /// `udp::read_settings` derives them.
    fn config(min_s: u32, max_s: Option<u32>) -> StunConfig {
        let min_s = max_s.map_or(min_s, |m| min_s.min(m));
        StunConfig {
            enabled: true,
            server_host: "stun.test".into(),
            server_port: 3478,
            username: String::new(),
            password: String::new(),
            period_s: min_s,
            min_s,
            max_s,
        }
    }

    /// A port-restricted NAT: one public port per socket, forgotten after `lifetime` without
    /// outbound traffic (`None`: never).
    struct Nat {
        lifetime: Option<Duration>,
        next_port: u16,
        map: HashMap<Socket, (u16, Instant)>,
    }

    fn alive(lifetime: Option<Duration>, last: Instant, now: Instant) -> bool {
        lifetime.is_none_or(|l| now.duration_since(last) < l)
    }

    impl Nat {
        fn new(lifetime: Option<Duration>) -> Nat {
            Nat {
                lifetime,
                next_port: NAT_PORT,
                map: HashMap::new(),
            }
        }

        fn outbound(&mut self, s: Socket, now: Instant) -> u16 {
            if let Some((p, last)) = self.map.get_mut(&s)
                && alive(self.lifetime, *last, now)
            {
                *last = now;
                return *p;
            }
            let p = self.next_port;
            self.next_port += 1;
            self.map.insert(s, (p, now));
            p
        }

        fn inbound(&self, port: u16, now: Instant) -> Option<Socket> {
            self.map
                .iter()
                .find(|(_, (p, last))| *p == port && alive(self.lifetime, *last, now))
                .map(|(s, _)| *s)
        }
    }

    /// The simulated STUN server.
    struct Server {
        up: bool,
        /// Answers at RESPONSE-ADDRESS (when it names the requester's IP); coturn does not.
        honours_response_address: bool,
        /// TR-111 short-term credentials it requires.
        creds: Option<(String, String)>,
    }

    /// One datagram the client sent.
    #[derive(Debug)]
    struct Sent {
        at: u64,
        socket: Socket,
        to: SocketAddr,
        /// The source address the server saw (after the NAT).
        from: SocketAddr,
        info: BindingRequestInfo,
        bytes: Vec<u8>,
    }

    struct Sim {
        c: StunClient,
        t0: Instant,
        now: Instant,
        /// The CR socket's bound address.
        bound: SocketAddr,
        server: SocketAddr,
        srv: Server,
        nat: Option<Nat>,
        /// Whether name resolution works.
        resolves: bool,
        /// How many addresses the server name has (the sim's one server stands for each).
        addresses: u32,
        /// The driver holds the secondary sockets.
        open: bool,
        sent: Vec<Sent>,
        events: Vec<(u64, Event)>,
        requests: Vec<(u64, Request)>,
        /// 401s the server sent.
        challenges: u32,
        inbox: VecDeque<(Socket, Vec<u8>)>,
    }

    impl Sim {
        fn new(config: StunConfig, nat: Option<Nat>) -> Sim {
            Sim::with(addr("10.0.0.2:7547"), None, config, nat)
        }

        fn with(
            bound: SocketAddr,
            reported: Option<(String, bool)>,
            config: StunConfig,
            nat: Option<Nat>,
        ) -> Sim {
            let t0 = Instant::now();
            let mut s = Sim {
                c: StunClient::new(bound, reported, seeded(7)),
                t0,
                now: t0,
                bound,
                server: addr(SERVER),
                srv: Server {
                    up: true,
                    honours_response_address: true,
                    creds: None,
                },
                nat,
                resolves: true,
                addresses: 1,
                open: false,
                sent: Vec::new(),
                events: Vec::new(),
                requests: Vec::new(),
                challenges: 0,
                inbox: VecDeque::new(),
            };
            s.c.set_config(t0, config, Some("acs.test".into()));
            s.drain();
            s
        }

        fn at(&self) -> u64 {
            ms(self.now - self.t0)
        }

        /// The local address of a socket (the secondary ones get fixed ports here).
        fn socket_addr(&self, s: Socket) -> SocketAddr {
            let ip: IpAddr = SOURCE_IP.parse().unwrap();
            match s {
                Socket::Cr => SocketAddr::new(ip, self.bound.port()),
                Socket::Idle => SocketAddr::new(ip, 40001),
                Socket::Prober => SocketAddr::new(ip, 40002),
            }
        }

        fn source_of(&mut self, s: Socket) -> SocketAddr {
            let now = self.now;
            match &mut self.nat {
                Some(n) => SocketAddr::new(PUBLIC_IP.parse().unwrap(), n.outbound(s, now)),
                None => self.socket_addr(s),
            }
        }

        fn deliver(&mut self, to: SocketAddr, bytes: Vec<u8>) {
            let socket = match &self.nat {
                Some(n) if to.ip() == PUBLIC_IP.parse::<IpAddr>().unwrap() => {
                    n.inbound(to.port(), self.now)
                }
                Some(_) => None,
                None => [Socket::Cr, Socket::Idle, Socket::Prober]
                    .into_iter()
                    .find(|s| self.socket_addr(*s) == to),
            };
            if let Some(s) = socket {
                self.inbox.push_back((s, bytes));
            }
        }

        /// The network and the server.
        fn on_transmit(&mut self, tr: Transmit) {
            assert!(
                tr.socket == Socket::Cr || self.open,
                "sent on a closed secondary socket: {tr:?}"
            );
            let from = self.source_of(tr.socket);
            let info = stun::parse_binding_request(&tr.bytes).expect("a Binding Request");
            self.sent.push(Sent {
                at: self.at(),
                socket: tr.socket,
                to: tr.to,
                from,
                info: info.clone(),
                bytes: tr.bytes.clone(),
            });
            if tr.to != self.server || !self.srv.up {
                return;
            }
            let mut integrity = None;
            if let Some((user, pass)) = &self.srv.creds {
                let ok = match stun::check_integrity(&tr.bytes, pass.as_bytes()) {
                    Integrity::Valid(l) if info.username.as_deref() == Some(user.as_str()) => {
                        Some(l)
                    }
                    _ => None,
                };
                match ok {
                    Some(l) => integrity = Some((pass.clone(), l)),
                    None => {
                        self.challenges += 1;
                        let reply = stun::unauthorized(&info.txid).unwrap();
                        self.deliver(from, reply);
                        return;
                    }
                }
            }
            let to = match info.response_address {
                Some(r) if self.srv.honours_response_address && r.ip() == from.ip() => r,
                _ => from,
            };
            let reply = stun::binding_success(
                &info.txid,
                from,
                integrity.as_ref().map(|(p, l)| (p.as_bytes(), *l)),
            )
            .unwrap();
            self.deliver(to, reply);
        }

        /// Plays the driver until the client has nothing more to say at this instant.
        fn drain(&mut self) {
            let now = self.now;
            loop {
                if let Some(r) = self.c.poll_request() {
                    self.requests.push((self.at(), r.clone()));
                    match r {
                        Request::Resolve { token, .. } => {
                            let res = self.resolves.then(|| Resolved {
                                addr: self.server,
                                source_ip: Some(SOURCE_IP.parse().unwrap()),
                                of: self.addresses,
                            });
                            self.c.handle_resolved(now, token, res);
                        }
                        Request::OpenSecondary { .. } => {
                            assert!(!self.open, "secondary sockets opened twice");
                            self.open = true;
                            self.c.handle_secondary_opened(now, Ok(()));
                        }
                        Request::CloseSecondary => self.open = false,
                    }
                } else if let Some(t) = self.c.poll_transmit() {
                    self.on_transmit(t);
                } else if let Some(e) = self.c.poll_event() {
                    self.events.push((self.at(), e));
                } else if let Some((s, d)) = self.inbox.pop_front() {
                    if s == Socket::Cr || self.open {
                        let _ = self.c.handle_datagram(now, s, self.server, &d);
                    }
                } else {
                    return;
                }
            }
        }

        /// Runs the timers up to `end_ms` after the start.
        fn run_until(&mut self, end_ms: u64) {
            let end = self.t0 + Duration::from_millis(end_ms);
            for _ in 0..1_000_000 {
                self.drain();
                match self.c.poll_timeout() {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        self.c.handle_timeout(self.now);
                    }
                    _ => {
                        self.now = self.now.max(end);
                        return;
                    }
                }
            }
            panic!("the client does not let time pass");
        }

        fn timeout_ms(&self) -> Option<u64> {
            self.c.poll_timeout().map(|t| ms(t - self.t0))
        }

        fn on(&self, s: Socket) -> Vec<&Sent> {
            self.sent.iter().filter(|x| x.socket == s).collect()
        }

        fn times(&self, s: Socket) -> Vec<u64> {
            self.on(s).iter().map(|x| x.at).collect()
        }

        fn reports(&self) -> Vec<(String, bool)> {
            self.events
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::Report {
                        address,
                        nat_detected,
                    } => Some((address.clone(), *nat_detected)),
                    _ => None,
                })
                .collect()
        }

        fn discovery(&self) -> Vec<DiscoveryEvent> {
            self.events
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::Discovery(d) => Some(d.clone()),
                    _ => None,
                })
                .collect()
        }

        fn failures(&self) -> Vec<(u64, Failure, u64)> {
            self.events
                .iter()
                .filter_map(|(at, e)| match e {
                    Event::Failed { failure, retry_in } => {
                        Some((*at, failure.clone(), ms(*retry_in)))
                    }
                    _ => None,
                })
                .collect()
        }

        /// The times of the requests for the secondary sockets.
        fn socket_requests(&self) -> Vec<(u64, Request)> {
            self.requests
                .iter()
                .filter(|(_, r)| !matches!(r, Request::Resolve { .. }))
                .cloned()
                .collect()
        }
    }

    fn gaps(times: &[u64]) -> Vec<u64> {
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn period_ms(s: &Sim) -> u64 {
        ms(s.c.period())
    }

    #[test]
    fn keepalive_every_period_when_the_bounds_are_equal() {
        let mut s = Sim::new(config(30, Some(30)), None);
        s.run_until(100_000);
        // The server name is resolved first; the request follows its answer at once.
        assert_eq!(
            s.requests.first().map(|(at, r)| (*at, r.clone())),
            Some((
                0,
                Request::Resolve {
                    token: 1,
                    host: "stun.test".into(),
                    port: 3478,
                    pick: 0
                }
            ))
        );
        assert_eq!(s.times(Socket::Cr), [0, 30_000, 60_000, 90_000]);
        for x in s.on(Socket::Cr) {
            assert_eq!(x.to, addr(SERVER));
            assert!(x.info.is_classic());
            assert!(x.info.connection_request_binding && x.info.crb_value_exact);
            assert!(!x.info.binding_change);
            assert_eq!(x.info.username, None);
            assert!(!x.info.has_integrity);
            assert_eq!(x.info.response_address, None);
        }
        assert_eq!(s.timeout_ms(), Some(120_000));
        // Nothing to discover: no secondary socket.
        assert!(s.socket_requests().is_empty(), "{:?}", s.requests);
        assert!(s.discovery().is_empty());
        // No NAT: the bound address, NATDetected false; reported once.
        assert_eq!(s.reports(), [("10.0.0.2:7547".to_string(), false)]);
        assert_eq!(
            s.events.first().map(|(_, e)| e.clone()),
            Some(Event::Enabled {
                host: "stun.test".into(),
                port: 3478,
                period_s: 30
            })
        );

        // A maximum below the minimum wins.
        let mut s = Sim::new(config(30, Some(10)), None);
        s.run_until(35_000);
        assert_eq!(s.times(Socket::Cr), [0, 10_000, 20_000, 30_000]);
    }

    #[test]
    fn retransmissions_then_bounded_backoff_then_recovery() {
        let mut s = Sim::new(config(2, Some(2)), None);
        s.srv.up = false;
        s.run_until(95_000);
        // One transaction: RTO 500 ms doubling, 7 sends, then a final wait of 16 RTO (8 s).
        let first: Vec<u64> = s
            .times(Socket::Cr)
            .into_iter()
            .filter(|t| *t < 40_000)
            .collect();
        assert_eq!(first, [0, 500, 1500, 3500, 7500, 15_500, 31_500]);
        let cr = s.on(Socket::Cr);
        assert!(
            cr[..7].iter().all(|x| x.bytes == cr[0].bytes),
            "same request"
        );
        // Given up at 39.5 s; the next transaction 5 s later (the name resolved again), then
        // 10 s after the second failure.
        let f = s.failures();
        assert_eq!(
            f,
            [
                (
                    39_500,
                    Failure::Timeout {
                        server: Some(addr(SERVER))
                    },
                    5_000
                ),
                (
                    84_000,
                    Failure::Timeout {
                        server: Some(addr(SERVER))
                    },
                    10_000
                ),
            ]
        );
        let resolves: Vec<u64> = s
            .requests
            .iter()
            .filter(|(_, r)| matches!(r, Request::Resolve { .. }))
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(resolves, [0, 44_500, 94_000]);
        assert_eq!(cr[7].at, 44_500);
        assert_ne!(cr[7].bytes, cr[0].bytes, "a new transaction id");
        assert!(s.reports().is_empty());
        // The server is back at 95 s: the retransmission at 95.5 s is answered, and the
        // keep-alives follow every period.
        s.srv.up = true;
        s.run_until(106_000);
        let after: Vec<u64> = s
            .times(Socket::Cr)
            .into_iter()
            .filter(|t| *t >= 94_000)
            .collect();
        assert_eq!(
            after,
            [
                94_000, 94_500, 95_500, 97_500, 99_500, 101_500, 103_500, 105_500
            ]
        );
        assert!(s.events.iter().any(|(at, e)| *at == 95_500
            && *e
                == Event::ServerBack {
                    server: addr(SERVER)
                }));
        assert_eq!(s.reports(), [("10.0.0.2:7547".to_string(), false)]);

        // A name that does not resolve: the same backoff, no datagram.
        let mut s = Sim::new(config(3, Some(3)), None);
        s.resolves = false;
        s.run_until(20_000);
        assert!(s.sent.is_empty());
        let f = s.failures();
        let want_host = Failure::Unresolvable {
            host: "stun.test".into(),
        };
        assert_eq!(
            f.iter()
                .map(|(at, f, w)| (*at, f.clone(), *w))
                .collect::<Vec<_>>(),
            [
                (0, want_host.clone(), 5_000),
                (5_000, want_host.clone(), 10_000),
                (15_000, want_host, 20_000)
            ]
        );
    }

    /// The lookups of the server name: (ms, which address).
    fn picks(s: &Sim) -> Vec<(u64, u32)> {
        s.requests
            .iter()
            .filter_map(|(at, r)| match r {
                Request::Resolve { pick, .. } => Some((*at, *pick)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_silent_server_fails_over_to_the_next_address_of_its_name() {
        let mut s = Sim::new(config(1, Some(1)), None);
        s.run_until(3_000);
        // Answered: the first address, resolved once.
        assert_eq!(picks(&s), [(0, 0)]);
        // The server goes silent: each transaction that gets no answer moves on by one address.
        s.srv.up = false;
        s.run_until(100_000);
        let p = picks(&s);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(p[1].1, 1);
        assert_eq!(p[2].1, 2);
        // The next address answers: kept (no lookup while it answers), and the pick does not
        // go back to the dead first address.
        s.srv.up = true;
        s.run_until(200_000);
        let q = picks(&s);
        assert_eq!(q.len(), 3, "{q:?}");
        s.srv.up = false;
        s.run_until(260_000);
        assert_eq!(picks(&s).get(3).map(|x| x.1), Some(3));
        // A new configuration starts from the first address again.
        s.srv.up = true;
        let mut other = config(1, Some(1));
        other.server_host = "stun2.test".into();
        s.c.set_config(s.now, other, None);
        s.run_until(262_000);
        assert_eq!(picks(&s).last().map(|x| x.1), Some(0));
    }

    #[test]
    fn with_several_addresses_a_silent_server_fails_over_within_seconds() {
        // A name with three addresses, keep-alives every 30 s (no discovery: min = max).
        let mut s = Sim::new(config(30, Some(30)), None);
        s.addresses = 3;
        s.run_until(1_000);
        assert_eq!(picks(&s), [(0, 0)]);
        // Silent from the keep-alive at 30 s: sends at 30, 30.5, 31.5 and 33.5 s, given up at
        // 37.5 s and the next address asked for at once; 7.5 s later the third one; given up at
        // 52.5 s, all three tried: the failure backoff (at least the period), then a new round.
        s.srv.up = false;
        s.run_until(83_200);
        assert_eq!(
            picks(&s),
            [(0, 0), (37_500, 1), (45_000, 2), (82_500, 3)],
            "{:?}",
            s.failures()
        );
        assert_eq!(
            s.failures().iter().map(|f| f.2).collect::<Vec<_>>(),
            [0, 0, 30_000]
        );
        // The retransmission at 84 s is answered: the round starts over, so the next silence
        // (keep-alive at 114 s) fails over after 7.5 s again.
        s.srv.up = true;
        s.run_until(113_000);
        assert_eq!(picks(&s).len(), 4);
        s.srv.up = false;
        s.run_until(130_000);
        assert_eq!(picks(&s)[4..], [(121_500, 4), (129_000, 5)]);
    }

    #[test]
    fn discovery_binding_survives_up_to_the_maximum() {
        // No NAT: the binding never expires, so the search doubles up to the maximum (1, 2,
        // 4 s) and settles on 90 % of it.
        let mut s = Sim::new(config(1, Some(4)), None);
        s.run_until(20_000);
        assert_eq!(
            s.discovery(),
            [
                DiscoveryEvent::Started {
                    min_s: 1,
                    max_s: 4,
                    period: Duration::from_secs(1)
                },
                DiscoveryEvent::Probing {
                    to: addr("10.0.0.2:40001"),
                    idle_s: 1
                },
                DiscoveryEvent::Alive { idle_s: 1 },
                DiscoveryEvent::Probing {
                    to: addr("10.0.0.2:40001"),
                    idle_s: 2
                },
                DiscoveryEvent::Alive { idle_s: 2 },
                DiscoveryEvent::Probing {
                    to: addr("10.0.0.2:40001"),
                    idle_s: 4
                },
                DiscoveryEvent::Alive { idle_s: 4 },
                DiscoveryEvent::Done {
                    alive_s: Some(4),
                    dead_s: None,
                    period: Duration::from_millis(3600)
                },
            ]
        );
        // The idle socket refreshes, then stays silent for 1, 2, 4 s before each probe.
        assert_eq!(s.times(Socket::Idle), [0, 1000, 3000]);
        assert_eq!(s.times(Socket::Prober), [1000, 3000, 7000]);
        for x in s.on(Socket::Prober) {
            assert_eq!(x.info.response_address, Some(addr("10.0.0.2:40001")));
        }
        // Secondary requests never carry CONNECTION-REQUEST-BINDING; the idle ones no
        // RESPONSE-ADDRESS.
        for x in s.on(Socket::Idle).iter().chain(s.on(Socket::Prober).iter()) {
            assert!(!x.info.connection_request_binding, "{x:?}");
        }
        assert!(
            s.on(Socket::Idle)
                .iter()
                .all(|x| x.info.response_address.is_none())
        );
        // Sockets on the CR socket's source address, closed when done.
        assert_eq!(
            s.socket_requests(),
            [
                (
                    0,
                    Request::OpenSecondary {
                        bind: addr("10.0.0.2:0")
                    }
                ),
                (7000, Request::CloseSecondary)
            ]
        );
        // Keep-alives every second while discovering, then every 3.6 s.
        assert_eq!(
            s.times(Socket::Cr),
            [
                0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 10_600, 14_200, 17_800
            ]
        );
        assert_eq!(period_ms(&s), 3600);
        assert_eq!(s.timeout_ms(), Some(21_400));
    }

    #[test]
    fn discovery_finds_a_binding_that_expires() {
        // NAT bindings live 3.5 s: alive after 1 and 2 s, gone after 4 (the probe is
        // retransmitted, then a refresh from the idle socket confirms the server is there), then
        // 3 s survives: period 2.7 s.
        let mut s = Sim::new(
            config(1, Some(20)),
            Some(Nat::new(Some(Duration::from_millis(3500)))),
        );
        s.run_until(30_000);
        let public = |p: u16| SocketAddr::new(PUBLIC_IP.parse().unwrap(), p);
        assert_eq!(
            s.discovery(),
            [
                DiscoveryEvent::Started {
                    min_s: 1,
                    max_s: 20,
                    period: Duration::from_secs(1)
                },
                DiscoveryEvent::Probing {
                    to: public(NAT_PORT + 1),
                    idle_s: 1
                },
                DiscoveryEvent::Alive { idle_s: 1 },
                DiscoveryEvent::Probing {
                    to: public(NAT_PORT + 1),
                    idle_s: 2
                },
                DiscoveryEvent::Alive { idle_s: 2 },
                DiscoveryEvent::Probing {
                    to: public(NAT_PORT + 1),
                    idle_s: 4
                },
                DiscoveryEvent::Gone { idle_s: 4 },
                // The idle socket's binding was recreated on a new port (after the prober's).
                DiscoveryEvent::Probing {
                    to: public(NAT_PORT + 4),
                    idle_s: 3
                },
                DiscoveryEvent::Alive { idle_s: 3 },
                DiscoveryEvent::Done {
                    alive_s: Some(3),
                    dead_s: Some(4),
                    period: Duration::from_millis(2700)
                },
            ]
        );
        // The 4 s probe: three sends (RTO 0.5 s doubling, final wait 2 RTO: 5.5 s), then the
        // refresh; the 3 s probe after it.
        assert_eq!(
            s.times(Socket::Prober),
            [1000, 3000, 7000, 7500, 8500, 15_500]
        );
        assert_eq!(s.times(Socket::Idle), [0, 1000, 3000, 12_500]);
        // The CR binding: kept alive every second, so it never moved and no BINDING-CHANGE.
        let cr = s.on(Socket::Cr);
        assert!(cr.iter().all(|x| x.from == public(NAT_PORT)), "{cr:?}");
        assert!(cr.iter().all(|x| !x.info.binding_change));
        assert_eq!(s.reports(), [(format!("{PUBLIC_IP}:{NAT_PORT}"), true)]);
        let after: Vec<u64> = s
            .times(Socket::Cr)
            .into_iter()
            .filter(|t| *t >= 15_000)
            .collect();
        // Done at 15.5 s: the keep-alive scheduled before (16 s) is the last at 1 s.
        assert_eq!(
            after,
            [15_000, 16_000, 18_700, 21_400, 24_100, 26_800, 29_500]
        );
    }

    #[test]
    fn discovery_stops_when_the_server_ignores_response_address() {
        let mut s = Sim::new(config(1, Some(30)), None);
        s.srv.honours_response_address = false;
        s.run_until(60_000);
        assert_eq!(
            s.discovery().last(),
            Some(&DiscoveryEvent::ResponseAddressIgnored {
                server: addr(SERVER),
                period_s: 1
            })
        );
        assert_eq!(s.times(Socket::Idle), [0]);
        assert_eq!(s.times(Socket::Prober), [1000]);
        assert_eq!(
            s.socket_requests().last(),
            Some(&(1000, Request::CloseSecondary))
        );
        // The minimum stays in force.
        assert_eq!(period_ms(&s), 1000);
        assert!(gaps(&s.times(Socket::Cr)).iter().all(|g| *g == 1000));
        assert_eq!(s.times(Socket::Cr).len(), 61);
    }

    #[test]
    fn discovery_never_leaves_the_cr_binding_idle() {
        // No maximum (discovery up to DISCOVERY_CAP), a NAT forgetting bindings after 3.5 s:
        // the CR socket keeps its keep-alives every minimum period from the first response to
        // the verdict, its mapping never moves, and no probe names it.
        let lifetime = Duration::from_millis(3500);
        let mut s = Sim::new(config(2, None), Some(Nat::new(Some(lifetime))));
        s.run_until(120_000);
        let done_at = s
            .events
            .iter()
            .find(|(_, e)| matches!(e, Event::Discovery(DiscoveryEvent::Done { .. })))
            .map(|(at, _)| *at)
            .expect("discovery finished");
        assert_eq!(
            s.discovery().last(),
            Some(&DiscoveryEvent::Done {
                alive_s: Some(3),
                dead_s: Some(4),
                period: Duration::from_millis(2700)
            })
        );
        let cr = s.times(Socket::Cr);
        let during: Vec<u64> = cr.iter().copied().filter(|t| *t <= done_at).collect();
        assert!(during.len() > 3);
        assert!(gaps(&during).iter().all(|g| *g <= 2000), "{during:?}");
        assert!(gaps(&cr).iter().all(|g| *g < ms(lifetime)), "{cr:?}");
        let primary = SocketAddr::new(PUBLIC_IP.parse().unwrap(), NAT_PORT);
        assert!(s.on(Socket::Cr).iter().all(|x| x.from == primary));
        assert!(
            s.sent
                .iter()
                .all(|x| x.info.response_address != Some(primary))
        );
        assert!(s.on(Socket::Prober).len() >= 2);
        assert!(
            !s.events
                .iter()
                .any(|(_, e)| matches!(e, Event::MappedChanged { .. }))
        );
    }

    #[test]
    fn discovery_gives_up_when_the_server_goes_silent_without_blaming_the_nat() {
        let mut s = Sim::new(config(1, Some(20)), None);
        s.run_until(2500);
        s.srv.up = false; // during the 2 s idle interval
        s.run_until(60_000);
        let d = s.discovery();
        assert!(
            !d.iter()
                .any(|e| matches!(e, DiscoveryEvent::Gone { .. } | DiscoveryEvent::Done { .. })),
            "{d:?}"
        );
        assert_eq!(d.last(), Some(&DiscoveryEvent::NoAnswer { period_s: 1 }));
        // The probe (3 sends, 5.5 s), then three refreshes of 3 sends (5.5 s) each, a period
        // apart.
        assert_eq!(s.times(Socket::Prober), [1000, 3000, 3500, 4500]);
        assert_eq!(
            s.times(Socket::Idle),
            [
                0, 1000, 8500, 9000, 10_000, 15_000, 15_500, 16_500, 21_500, 22_000, 23_000
            ]
        );
        assert_eq!(
            s.socket_requests().last(),
            Some(&(27_000, Request::CloseSecondary))
        );
        assert_eq!(period_ms(&s), 1000);
    }

    #[test]
    fn rebinding_sends_binding_change_at_once_and_reports_the_new_address() {
        let mut s = Sim::new(config(1, Some(1)), Some(Nat::new(None)));
        s.run_until(2500);
        assert_eq!(s.reports(), [(format!("{PUBLIC_IP}:{NAT_PORT}"), true)]);
        // The NAT forgets its bindings (conntrack flushed): the next keep-alive leaves from a
        // new public port.
        s.nat.as_mut().unwrap().map.clear();
        s.run_until(5500);
        let new = format!("{PUBLIC_IP}:{}", NAT_PORT + 1);
        assert!(
            s.events
                .iter()
                .any(|(at, e)| *at == 3000 && *e == Event::MappedChanged { mapped: addr(&new) })
        );
        assert_eq!(
            s.reports(),
            [
                (format!("{PUBLIC_IP}:{NAT_PORT}"), true),
                (new.clone(), true)
            ]
        );
        // BINDING-CHANGE at once (not a period later), with CONNECTION-REQUEST-BINDING, once.
        let cr: Vec<(u64, bool)> = s
            .on(Socket::Cr)
            .iter()
            .map(|x| (x.at, x.info.binding_change))
            .collect();
        assert_eq!(
            cr,
            [
                (0, false),
                (1000, false),
                (2000, false),
                (3000, false),
                (3000, true),
                (4000, false),
                (5000, false)
            ]
        );
        assert!(
            s.on(Socket::Cr)
                .iter()
                .all(|x| x.info.connection_request_binding)
        );
    }

    #[test]
    fn a_mapping_change_after_discovery_starts_it_again() {
        let mut s = Sim::new(config(1, Some(2)), Some(Nat::new(None)));
        s.run_until(5000);
        assert!(matches!(
            s.discovery().last(),
            Some(DiscoveryEvent::Done { .. })
        ));
        assert_eq!(period_ms(&s), 1800);
        s.nat.as_mut().unwrap().map.clear();
        s.run_until(8000);
        let opens: Vec<u64> = s
            .socket_requests()
            .iter()
            .filter(|(_, r)| matches!(r, Request::OpenSecondary { .. }))
            .map(|(at, _)| *at)
            .collect();
        // Closed when done, opened again after the BINDING-CHANGE exchange.
        assert_eq!(opens.len(), 2, "{:?}", s.requests);
        let bc = s
            .on(Socket::Cr)
            .iter()
            .find(|x| x.info.binding_change)
            .map(|x| x.at)
            .unwrap();
        assert_eq!(opens[1], bc);
        // Meanwhile the minimum period again.
        assert_eq!(period_ms(&s), 1000);
    }

    #[test]
    fn unauthorized_then_message_integrity() {
        let mut cfg = config(1, Some(1));
        cfg.username = "stun-u".into();
        cfg.password = "stun-p".into();
        let mut s = Sim::new(cfg, None);
        s.srv.creds = Some(("stun-u".into(), "stun-p".into()));
        s.run_until(2500);
        let cr = s.on(Socket::Cr);
        // The first request without credentials; the 401 makes the second follow at once with
        // USERNAME and MESSAGE-INTEGRITY (RFC 3489 layout); later ones carry them from the
        // start: one challenge in all.
        assert_eq!(
            cr.iter().map(|x| x.at).collect::<Vec<_>>(),
            [0, 0, 1000, 2000]
        );
        assert_eq!(cr[0].info.username, None);
        assert!(!cr[0].info.has_integrity);
        for x in &cr[1..] {
            assert_eq!(x.info.username.as_deref(), Some("stun-u"));
            assert_eq!(
                stun::check_integrity(&x.bytes, b"stun-p"),
                Integrity::Valid(MiLayout::Rfc3489Padded)
            );
            assert!(x.info.connection_request_binding);
        }
        assert_eq!(s.challenges, 1);
        assert!(
            s.events
                .iter()
                .any(|(at, e)| *at == 0 && *e == Event::CredentialsRequested)
        );
        assert!(s.failures().is_empty());
        assert_eq!(s.reports(), [("10.0.0.2:7547".to_string(), false)]);

        // A response whose MESSAGE-INTEGRITY does not verify is not taken; one from elsewhere
        // neither.
        s.srv.up = false;
        s.run_until(3000);
        let pending = s.on(Socket::Cr).last().unwrap().info.txid;
        let fake = addr("198.51.100.1:1");
        let forged =
            stun::binding_success(&pending, fake, Some((b"guess", MiLayout::Rfc3489Padded)))
                .unwrap();
        let now = s.now;
        assert_eq!(
            s.c.handle_datagram(now, Socket::Cr, addr(SERVER), &forged),
            Err(Ignored::BadIntegrity)
        );
        let signed =
            stun::binding_success(&pending, fake, Some((b"stun-p", MiLayout::Rfc3489Padded)))
                .unwrap();
        assert_eq!(
            s.c.handle_datagram(now, Socket::Cr, addr("192.0.2.99:3478"), &signed),
            Err(Ignored::NotFromServer)
        );
        assert_eq!(
            s.c.handle_datagram(now, Socket::Cr, addr(SERVER), &signed),
            Ok(())
        );
        assert_eq!(
            s.c.handle_datagram(now, Socket::Cr, addr(SERVER), &signed),
            Err(Ignored::NoPendingRequest)
        );
        s.drain();
        assert_eq!(
            s.reports().last(),
            Some(&("198.51.100.1:1".to_string(), true))
        );
    }

    #[test]
    fn wrong_password_backs_off_and_a_fixed_one_recovers() {
        let mut bad = config(1, Some(1));
        bad.username = "stun-u".into();
        bad.password = "wrong".into();
        let mut s = Sim::new(bad.clone(), None);
        s.srv.creds = Some(("stun-u".into(), "stun-p".into()));
        s.run_until(16_000);
        // 401 → with credentials at once → 401: backoff 5 s, then 10 s (credentials from the
        // start now).
        assert_eq!(s.times(Socket::Cr), [0, 0, 5000, 15_000]);
        assert_eq!(
            s.failures(),
            [
                (
                    0,
                    Failure::AuthRejected {
                        server: addr(SERVER)
                    },
                    5000
                ),
                (
                    5000,
                    Failure::AuthRejected {
                        server: addr(SERVER)
                    },
                    10_000
                ),
                (
                    15_000,
                    Failure::AuthRejected {
                        server: addr(SERVER)
                    },
                    20_000
                ),
            ]
        );
        assert!(s.reports().is_empty());
        // The right password: starts over at once.
        let mut good = bad;
        good.password = "stun-p".into();
        s.c.set_config(s.now, good, None);
        s.run_until(16_500);
        assert_eq!(s.times(Socket::Cr), [0, 0, 5000, 15_000, 16_000, 16_000]);
        assert_eq!(s.reports(), [("10.0.0.2:7547".to_string(), false)]);

        // 401 with no STUNUsername: never MESSAGE-INTEGRITY, backoff.
        let mut s = Sim::new(config(1, Some(1)), None);
        s.srv.creds = Some(("stun-u".into(), "stun-p".into()));
        s.run_until(6000);
        assert_eq!(s.times(Socket::Cr), [0, 5000]);
        assert!(
            s.sent
                .iter()
                .all(|x| !x.info.has_integrity && x.info.username.is_none())
        );
        assert_eq!(
            s.failures()[0],
            (
                0,
                Failure::AuthNeedsUsername {
                    server: addr(SERVER)
                },
                5000
            )
        );
    }

    #[test]
    fn nat_detected_and_the_address_reported_with_stun_off() {
        // Behind a NAT: the mapped address, NATDetected true.
        let mut s = Sim::new(config(1, Some(1)), Some(Nat::new(None)));
        s.run_until(500);
        assert_eq!(s.reports(), [(format!("{PUBLIC_IP}:{NAT_PORT}"), true)]);
        assert!(s.events.iter().any(|(_, e)| *e
            == Event::Response {
                mapped: addr(&format!("{PUBLIC_IP}:{NAT_PORT}")),
                local: Some(addr("10.0.0.2:7547")),
                nat: true
            }));
        // STUN turned off: the local address, NATDetected false, nothing sent any more.
        let n = s.sent.len();
        let mut off = config(1, Some(1));
        off.enabled = false;
        s.c.set_config(s.now, off.clone(), Some("acs.test".into()));
        s.run_until(10_000);
        assert_eq!(
            s.reports().last(),
            Some(&("10.0.0.2:7547".to_string(), false))
        );
        assert!(s.events.iter().any(|(_, e)| *e == Event::Disabled));
        assert_eq!(s.sent.len(), n);
        assert_eq!(s.c.poll_timeout(), None);
        assert_eq!(s.c.mapped(), None);

        // Bound to the wildcard, no NAT: the source address toward the server is the local
        // one, so NATDetected is false.
        let mut s = Sim::with(addr("0.0.0.0:7547"), None, config(1, Some(1)), None);
        s.run_until(500);
        assert_eq!(s.reports(), [("10.0.0.2:7547".to_string(), false)]);

        // Off and bound to the wildcard: the source address toward the ACS host.
        let mut s = Sim::with(addr("0.0.0.0:7547"), None, off.clone(), None);
        assert!(s.requests.iter().any(|(_, r)| *r
            == Request::Resolve {
                token: 1,
                host: "acs.test".into(),
                port: 80,
                pick: 0
            }));
        assert_eq!(s.reports(), [("10.0.0.2:7547".to_string(), false)]);
        assert!(s.sent.is_empty());
        // The ACS host changes while STUN is off: resolved again; no host: empty.
        s.c.set_config(s.now, off.clone(), None);
        s.drain();
        assert_eq!(s.reports().last(), Some(&(String::new(), false)));

        // What the data model holds already is not reported again.
        let s = Sim::with(
            addr("10.0.0.2:7547"),
            Some(("10.0.0.2:7547".into(), false)),
            off,
            None,
        );
        assert!(s.reports().is_empty());
    }

    #[test]
    fn a_new_configuration_supersedes_a_pending_lookup_and_closes_discovery() {
        let t0 = Instant::now();
        let mut c = StunClient::new(addr("10.0.0.2:7547"), None, seeded(3));
        c.set_config(t0, config(1, Some(10)), None);
        // The first request is due at once; it starts with a lookup.
        assert_eq!(c.poll_timeout(), Some(t0));
        c.handle_timeout(t0);
        let Some(Request::Resolve { token: old, .. }) = c.poll_request() else {
            panic!("no lookup")
        };
        let mut other = config(1, Some(10));
        other.server_host = "stun2.test".into();
        c.set_config(t0, other, None);
        c.handle_timeout(t0);
        let Some(Request::Resolve {
            token: new, host, ..
        }) = c.poll_request()
        else {
            panic!("no lookup")
        };
        assert_eq!(host, "stun2.test");
        let r = Resolved {
            addr: addr(SERVER),
            source_ip: None,
            of: 1,
        };
        c.handle_resolved(t0, old, Some(r));
        assert_eq!(c.poll_transmit(), None, "a stale answer is ignored");
        c.handle_resolved(t0, new, Some(r));
        let tr = c.poll_transmit().expect("the Binding Request");
        assert_eq!((tr.socket, tr.to), (Socket::Cr, addr(SERVER)));
        // The same settings again change nothing.
        c.set_config(
            t0,
            {
                let mut o = config(1, Some(10));
                o.server_host = "stun2.test".into();
                o
            },
            None,
        );
        assert_eq!(c.poll_request(), None);
        assert_eq!(c.poll_transmit(), None);

        // Discovery running: a new configuration closes the secondary sockets; the discovery
        // starts afresh after the first keep-alive.
        let mut s = Sim::new(config(1, Some(10)), None);
        s.run_until(1500);
        assert!(s.open);
        s.c.set_config(s.now, config(1, Some(20)), None);
        s.drain();
        assert!(!s.open);
        assert_eq!(
            s.socket_requests().last(),
            Some(&(1500, Request::CloseSecondary))
        );
        s.run_until(1600);
        assert!(s.open);
        assert_eq!(
            s.socket_requests().last(),
            Some(&(
                1500,
                Request::OpenSecondary {
                    bind: addr("10.0.0.2:0")
                }
            ))
        );
        // The old discovery's timers are gone: the idle socket is refreshed now, probed after 1 s.
        assert_eq!(s.times(Socket::Idle), [0, 1000, 1500]);
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
        let mut tx = DiscoveryTx::new(TxId::Classic([1; 16]), vec![1], t0);
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
}
