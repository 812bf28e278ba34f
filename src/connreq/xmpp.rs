//! XMPP connection requests (TR-069 Annex K; SPEC-NOTES §d): the IO side.
//!
//! Two layers:
//! * [`connect`]: one client session to an XMPP server — TCP, STARTTLS with cwmpd's own rustls
//!   configuration (so the CA is configurable per agent: `[xmpp] ca_file`), SASL (SCRAM-SHA-256/
//!   SCRAM-SHA-1, their `-PLUS` variants when the server offers them and TLS 1.3 gives a
//!   channel binding, PLAIN only inside TLS) and resource binding. Built on the low-level
//!   `tokio_xmpp::xmlstream` API, so reconnection, keep-alive and timeouts stay under cwmpd's
//!   control. The ACS tool `cwmp-connreq xmpp` uses it too.
//! * [`run`]: the agent's client for the connection named by
//!   `ManagementServer.ConnReqXMPPConnection`, a thin driver of the sans-IO
//!   [`XmppPolicy`](super::xmpp_policy::XmppPolicy): it feeds the policy the settings watch, the
//!   clock and what happens on the stream, and carries out what the policy asks (connect to a
//!   server, close the stream, send presence or a keep-alive ping, report `Status`,
//!   `LastChangeDate`, `JabberID`, `TLSEstablished`, `Stats.*` and `ConnReqJabberID` through
//!   [`Command::Status`]). It answers `connectionRequest` IQs as the policy judges them and hands
//!   accepted ones to the engine as a [`CrEvent`] with mechanism `"xmpp"`.
//!
//! Which server, when to reconnect, when to ping and when the stream is dead are all decided
//! in `xmpp_policy.rs`; its types are re-exported here.

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sasl::client::Mechanism;
use sasl::client::mechanisms::{Plain, Scram};
use sasl::common::scram::{Sha1, Sha256};
use sasl::common::{ChannelBinding, Credentials};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_xmpp::connect::{AsyncReadAndWrite, DnsConfig};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::bind::{BindQuery, BindResponse};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::parsers::ping::Ping;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::sasl::{Auth, Mechanism as SaslMechanism, Nonza, Response};
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::parsers::starttls;
use tokio_xmpp::xmlstream::{
    ReadError, StreamHeader, Timeouts, XmppStream, XmppStreamElement, initiate_stream,
};
use tokio_xmpp::{Stanza, parsers::ns};

use super::backoff::RateLimiter;
use super::xmpp_policy::{self as policy, Idle, IqRequest, Output, Phase, XmppPolicy};
use crate::command::CrEvent;
use crate::command::{Command, Settings};

pub use super::xmpp_policy::{
    CONNECT_TIMEOUT, ConnSettings, ConnectError, DEFAULT_KEEPALIVE, STATS_PERIOD, ServerRow,
    Status, Target, Verdict, XmppSettings, connection_path, targets,
};

/// Namespace of the connection-request IQ payload (BBF cwmp-xmppConnReq-1-0.xsd).
pub const NS_CONNREQ: &str = "urn:broadband-forum-org:cwmp:xmppConnReq-1-0";

type Io = Box<dyn AsyncReadAndWrite>;

// ------------------------------------------------------------------------------------------
// Connecting
// ------------------------------------------------------------------------------------------

/// Everything [`connect`] needs.
#[derive(Clone)]
pub struct ConnectParams {
    /// `Username@Domain`: SASL authentication id and the stream's `to`.
    pub jid: BareJid,
    /// SASL password.
    pub password: String,
    /// Requested resource (`None`: the server picks one).
    pub resource: Option<String>,
    /// TCP target.
    pub target: Target,
    /// Fail unless the stream gets TLS (`UseTLS`). TLS is always used when the server offers it.
    pub require_tls: bool,
    /// The TLS client configuration (roots from `[xmpp] ca_file`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Silence before a keep-alive is due ([`ReadError::SoftTimeout`]), and the time the peer
    /// then has to say anything before the stream counts as dead.
    pub keepalive: Duration,
}

fn proto(what: &str, e: impl std::fmt::Display) -> ConnectError {
    ConnectError::Protocol(format!("{what}: {e}"))
}

/// An established, authenticated and bound client stream.
pub struct Connection {
    stream: XmppStream<Io>,
    /// The full JID the server bound.
    pub jid: FullJid,
    /// The stream is TLS-protected.
    pub tls: bool,
    /// The SASL mechanism used.
    pub mechanism: String,
    /// The server's socket address.
    pub peer: SocketAddr,
}

/// What [`Connection::recv`] gives.
#[derive(Debug)]
pub enum Received {
    /// A stanza.
    Stanza(Box<Stanza>),
    /// A stanza that did not parse (counted, otherwise ignored).
    Invalid(String),
    /// The keep-alive interval passed in silence: send something that needs an answer.
    Idle,
    /// The stream is over (closed, timed out, stream error).
    Closed(String),
}

impl Connection {
    /// Sends one stanza.
    pub async fn send(&mut self, st: Stanza) -> io::Result<()> {
        self.stream.send(&XmppStreamElement::Stanza(st)).await
    }

    /// Waits for the next stanza or stream event. Cancel-safe.
    pub async fn recv(&mut self) -> Received {
        match self.stream.next().await {
            None => Received::Closed("connection closed".into()),
            Some(Ok(el)) => match el.into_read_error() {
                Ok(XmppStreamElement::Stanza(st)) => Received::Stanza(Box::new(st)),
                Ok(XmppStreamElement::StreamError(e)) => {
                    Received::Closed(format!("stream error from server: {e:?}"))
                }
                Ok(other) => Received::Invalid(format!("unexpected element {other:?}")),
                Err(ReadError::HardError(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    Received::Invalid(e.to_string())
                }
                Err(e) => Received::Closed(e.to_string()),
            },
            Some(Err(ReadError::SoftTimeout)) => Received::Idle,
            Some(Err(ReadError::ParseError(e))) => Received::Invalid(e.to_string()),
            Some(Err(ReadError::StreamFooterReceived)) => {
                Received::Closed("stream closed by the server".into())
            }
            Some(Err(ReadError::HardError(e))) if e.kind() == io::ErrorKind::TimedOut => {
                Received::Closed("no answer from the server (dead stream)".into())
            }
            Some(Err(ReadError::HardError(e))) => Received::Closed(e.to_string()),
        }
    }

    /// Closes the stream politely (best effort, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// Builds the TLS client configuration: roots from `ca_file` (PEM), or the Mozilla roots.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let what = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| what(&e))? {
                roots
                    .add(cert.map_err(|e| what(&e))?)
                    .map_err(|e| what(&e))?;
            }
            if roots.is_empty() {
                return Err(what(&"holds no certificate"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

async fn open_tcp(target: &Target) -> Result<TcpStream, ConnectError> {
    let unreachable =
        |e: &dyn std::fmt::Display| ConnectError::Unreachable(format!("{target}: {e}"));
    match target {
        Target::Host(h, p) => {
            if let Ok(ip) = h.parse::<std::net::IpAddr>() {
                TcpStream::connect(SocketAddr::new(ip, *p))
                    .await
                    .map_err(|e| unreachable(&e))
            } else {
                DnsConfig::no_srv(h, *p)
                    .resolve()
                    .await
                    .map_err(|e| unreachable(&e))
            }
        }
        Target::Srv(d) => DnsConfig::srv(d, "_xmpp-client._tcp", 5222)
            .resolve()
            .await
            .map_err(|e| unreachable(&e)),
    }
}

fn header(domain: &str) -> StreamHeader<'_> {
    StreamHeader {
        to: Some(Cow::Borrowed(domain)),
        from: None,
        id: None,
    }
}

/// Reads the next element during negotiation, skipping soft timeouts.
async fn next_element<S>(stream: &mut XmppStream<S>) -> Result<XmppStreamElement, ConnectError>
where
    S: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match stream.next().await {
            None | Some(Err(ReadError::StreamFooterReceived)) => {
                return Err(ConnectError::Protocol("server closed the stream".into()));
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(e)) => return Err(proto("stream", e)),
            Some(Ok(el)) => match el.into_read_error() {
                Ok(XmppStreamElement::StreamError(e)) => {
                    return Err(ConnectError::Protocol(format!("stream error: {e:?}")));
                }
                Ok(el) => return Ok(el),
                Err(e) => return Err(proto("stream", e)),
            },
        }
    }
}

/// Opens, secures, authenticates and binds one client stream (no overall timeout: wrap it).
pub async fn connect(p: &ConnectParams) -> Result<Connection, ConnectError> {
    let domain = p.jid.domain().as_str().to_string();
    let Some(node) = p.jid.node() else {
        return Err(ConnectError::Misconfigured("JID has no username".into()));
    };
    let username = node.as_str().to_string();
    let timeouts = Timeouts {
        read_timeout: p.keepalive,
        response_timeout: p.keepalive,
    };
    let tcp = open_tcp(&p.target).await?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp
        .peer_addr()
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    let plain = initiate_stream(
        BufStream::new(tcp),
        ns::JABBER_CLIENT,
        header(&domain),
        timeouts,
    )
    .await
    .map_err(|e| proto("stream header", e))?;
    let (features, mut plain) = plain
        .recv_features::<tokio_xmpp::xmlstream::FallibleStreamElement>()
        .await
        .map_err(|e| proto("stream features", e))?;
    let (io, binding, tls): (Io, ChannelBinding, bool) = if features.can_starttls() {
        plain
            .send(&XmppStreamElement::Starttls(starttls::Nonza::Request(
                starttls::Request,
            )))
            .await
            .map_err(|e| proto("starttls", e))?;
        loop {
            match next_element(&mut plain).await? {
                XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)) => break,
                XmppStreamElement::Starttls(_) => {
                    return Err(ConnectError::Tls("server refused STARTTLS".into()));
                }
                _ => {}
            }
        }
        let tcp = plain.into_inner().into_inner();
        let name = ServerName::try_from(domain.clone())
            .map_err(|e| ConnectError::Misconfigured(format!("domain {domain:?}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(p.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Tls(format!("handshake with {domain} ({peer}): {e}")))?;
        let (_, conn) = tls.get_ref();
        let binding = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => conn
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .map(ChannelBinding::TlsExporter)
                .unwrap_or(ChannelBinding::Unsupported),
            _ => ChannelBinding::Unsupported,
        };
        (Box::new(BufStream::new(tls)), binding, true)
    } else if p.require_tls {
        return Err(ConnectError::Misconfigured(format!(
            "UseTLS is true but {domain} ({peer}) does not offer STARTTLS"
        )));
    } else {
        tracing::warn!("XMPP server {domain} ({peer}) offers no STARTTLS: continuing without TLS");
        let tcp = plain.into_inner().into_inner();
        (Box::new(BufStream::new(tcp)), ChannelBinding::None, false)
    };
    let stream = initiate_stream(io, ns::JABBER_CLIENT, header(&domain), timeouts)
        .await
        .map_err(|e| proto("stream header", e))?;
    let (features, mut stream) = stream
        .recv_features::<tokio_xmpp::xmlstream::FallibleStreamElement>()
        .await
        .map_err(|e| proto("stream features", e))?;

    // SASL.
    let (mut mech, name) = choose_mechanism(
        &features.sasl_mechanisms,
        &username,
        &p.password,
        binding,
        tls,
    )?;
    let mech_name = SaslMechanism::from_str(&name).map_err(|e| proto("SASL", e))?;
    stream
        .send(&XmppStreamElement::Sasl(Nonza::Auth(Auth {
            mechanism: mech_name,
            data: mech.initial(),
        })))
        .await
        .map_err(|e| proto("SASL", e))?;
    loop {
        match next_element(&mut stream).await? {
            XmppStreamElement::Sasl(Nonza::Challenge(c)) => {
                let data = mech
                    .response(&c.data)
                    .map_err(|e| ConnectError::Auth(format!("{name}: {e:?}")))?;
                stream
                    .send(&XmppStreamElement::Sasl(Nonza::Response(Response { data })))
                    .await
                    .map_err(|e| proto("SASL", e))?;
            }
            XmppStreamElement::Sasl(Nonza::Success(s)) => {
                mech.success(&s.data).map_err(|e| {
                    ConnectError::Auth(format!("{name}: server signature invalid: {e:?}"))
                })?;
                break;
            }
            XmppStreamElement::Sasl(Nonza::Failure(f)) => {
                return Err(ConnectError::Auth(format!(
                    "{name} as {username}@{domain}: {:?}",
                    f.defined_condition
                )));
            }
            _ => {}
        }
    }
    let stream = stream
        .initiate_reset()
        .send_header(header(&domain))
        .await
        .map_err(|e| proto("stream restart", e))?;
    let (features, mut stream) = stream
        .recv_features::<tokio_xmpp::xmlstream::FallibleStreamElement>()
        .await
        .map_err(|e| proto("stream features", e))?;
    if !features.can_bind() {
        return Err(ConnectError::Protocol(
            "server offers no resource binding".into(),
        ));
    }
    let bind = Iq::from_set("bind-1", BindQuery::new(p.resource.clone()));
    stream
        .send(&XmppStreamElement::Stanza(bind.into()))
        .await
        .map_err(|e| proto("bind", e))?;
    let jid = loop {
        match next_element(&mut stream).await? {
            XmppStreamElement::Stanza(Stanza::Iq(Iq::Result {
                id,
                payload: Some(payload),
                ..
            })) if id == "bind-1" => {
                break BindResponse::try_from(payload)
                    .map_err(|e| proto("bind result", e))?
                    .jid;
            }
            XmppStreamElement::Stanza(Stanza::Iq(Iq::Error { id, error, .. }))
                if id == "bind-1" =>
            {
                return Err(ConnectError::Protocol(format!(
                    "bind refused: {:?}",
                    error.defined_condition
                )));
            }
            _ => {}
        }
    };
    Ok(Connection {
        stream,
        jid,
        tls,
        mechanism: name,
        peer,
    })
}

/// SCRAM-SHA-256(-PLUS), SCRAM-SHA-1(-PLUS), then PLAIN (inside TLS only).
fn choose_mechanism(
    offered: &std::collections::BTreeSet<String>,
    user: &str,
    password: &str,
    binding: ChannelBinding,
    tls: bool,
) -> Result<(Box<dyn Mechanism + Send>, String), ConnectError> {
    let creds = |cb: ChannelBinding| {
        Credentials::default()
            .with_username(user)
            .with_password(password)
            .with_channel_binding(cb)
    };
    let has_binding = !matches!(binding, ChannelBinding::None | ChannelBinding::Unsupported);
    let plus = |n: &str| has_binding && offered.contains(&format!("{n}-PLUS"));
    // Without a binding to offer, tell the server whether we could have used one ("y" vs "n").
    let no_plus = if tls {
        ChannelBinding::Unsupported
    } else {
        ChannelBinding::None
    };
    let mk = |e: sasl::client::MechanismError| ConnectError::Auth(format!("{e:?}"));
    if plus("SCRAM-SHA-256") {
        let m = Scram::<Sha256>::from_credentials(creds(binding)).map_err(mk)?;
        return Ok((Box::new(m), "SCRAM-SHA-256-PLUS".into()));
    }
    if plus("SCRAM-SHA-1") {
        let m = Scram::<Sha1>::from_credentials(creds(binding)).map_err(mk)?;
        return Ok((Box::new(m), "SCRAM-SHA-1-PLUS".into()));
    }
    if offered.contains("SCRAM-SHA-256") {
        let m = Scram::<Sha256>::from_credentials(creds(no_plus)).map_err(mk)?;
        return Ok((Box::new(m), "SCRAM-SHA-256".into()));
    }
    if offered.contains("SCRAM-SHA-1") {
        let m = Scram::<Sha1>::from_credentials(creds(no_plus)).map_err(mk)?;
        return Ok((Box::new(m), "SCRAM-SHA-1".into()));
    }
    if offered.contains("PLAIN") {
        if !tls {
            return Err(ConnectError::Auth(
                "only PLAIN offered on an unencrypted stream; refusing to send the password".into(),
            ));
        }
        let m = Plain::from_credentials(creds(ChannelBinding::None)).map_err(mk)?;
        return Ok((Box::new(m), "PLAIN".into()));
    }
    Err(ConnectError::Auth(format!(
        "no usable SASL mechanism among {offered:?}"
    )))
}

// ------------------------------------------------------------------------------------------
// Connection requests: the wire side (the rules are in xmpp_policy.rs)
// ------------------------------------------------------------------------------------------

/// The canonical form of a JID as written (None when it is no valid JID).
fn canonical_jid(s: &str) -> Option<String> {
    Jid::new(s).ok().map(|j| j.to_string())
}

/// `ConnReqAllowedJabberIDs` check (SPEC-NOTES §d.3) on a parsed sender: an empty list allows
/// everyone; a bare item matches any resource of that JID; a full item needs an exact match. A
/// missing `from` only passes an empty list. ([`policy::sender_allowed`] on canonical JIDs.)
pub fn sender_allowed(allowed: &[String], from: Option<&Jid>) -> bool {
    let from = from.map(|j| j.to_string());
    policy::sender_allowed(allowed, from.as_deref(), &canonical_jid)
}

/// The credentials of a `connectionRequest` element (None if it is not one).
pub fn parse_connection_request(el: &Element) -> Option<(String, String)> {
    if !el.is("connectionRequest", NS_CONNREQ) {
        return None;
    }
    let text = |n: &str| el.get_child(n, NS_CONNREQ).map(|c| c.text());
    Some((text("username")?, text("password")?))
}

/// Builds a `connectionRequest` element (for the ACS side).
pub fn connection_request_element(username: &str, password: &str) -> Element {
    Element::builder("connectionRequest", NS_CONNREQ)
        .append(
            Element::builder("username", NS_CONNREQ)
                .append(username)
                .build(),
        )
        .append(
            Element::builder("password", NS_CONNREQ)
                .append(password)
                .build(),
        )
        .build()
}

/// Decides on an incoming IQ get/set read off the wire ([`policy::judge`]; the rate limiter is
/// consulted last, only for otherwise valid requests).
pub fn judge(
    s: &XmppSettings,
    from: Option<&Jid>,
    payload: &Element,
    limiter: &RefCell<RateLimiter>,
    now: Instant,
) -> Verdict {
    let credentials = parse_connection_request(payload);
    let from = from.map(|j| j.to_string());
    let iq = IqRequest {
        from: from.as_deref(),
        credentials: credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
    };
    policy::judge(s, &iq, &canonical_jid, &mut limiter.borrow_mut(), now)
}

fn error_iq(to: Option<Jid>, id: String, cond: DefinedCondition, payload: Element) -> Iq {
    let mut error = StanzaError::new(ErrorType::Cancel, cond, "en", "");
    error.texts.clear();
    Iq::Error {
        from: None,
        to,
        id,
        error,
        payload: Some(payload),
    }
}

// ------------------------------------------------------------------------------------------
// The agent's client task: the driver of XmppPolicy
// ------------------------------------------------------------------------------------------

fn is_error(st: &Stanza) -> bool {
    match st {
        Stanza::Iq(Iq::Error { .. }) => true,
        Stanza::Message(m) => m.type_ == tokio_xmpp::parsers::message::MessageType::Error,
        Stanza::Presence(p) => p.type_ == tokio_xmpp::parsers::presence::Type::Error,
        _ => false,
    }
}

fn rand_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_le_bytes(b)
}

/// The stream's own read timeouts for a keep-alive interval. The policy pings after one
/// interval of silence and declares the stream dead after another; tokio-xmpp's timers are only
/// a backstop behind it (its soft timeout, after 1.5 intervals, is ignored; its hard timeout
/// comes after 3).
fn stream_timeout(keepalive: Duration) -> Duration {
    keepalive.saturating_add(keepalive / 2)
}

/// `Username@Domain`, the login JID.
fn login_jid(c: &ConnSettings) -> Result<BareJid, String> {
    BareJid::new(&format!("{}@{}", c.username, c.domain)).map_err(|e| format!("JID: {e}"))
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<Connection>, ConnectError>>>>;

/// The driver's side of the connection.
enum Link {
    None,
    Connecting(ConnectFuture),
    Online(Box<Connection>),
}

enum LinkEvent {
    Connected(Result<Box<Connection>, ConnectError>),
    Received(Received),
}

/// What ended one wait of the driver.
enum Wake {
    Link(LinkEvent),
    Timer,
    /// The settings watch changed (false: the engine went away).
    Settings(bool),
}

/// The next event of the link (never, without one). Cancel-safe: a connection attempt lives in
/// the link and continues at the next call.
async fn link_event(link: &mut Link) -> LinkEvent {
    match link {
        Link::None => std::future::pending().await,
        Link::Connecting(f) => LinkEvent::Connected(f.as_mut().await),
        Link::Online(c) => LinkEvent::Received(c.recv().await),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

struct Client {
    settings: watch::Receiver<Settings>,
    policy: XmppPolicy,
    limiter: Rc<RefCell<RateLimiter>>,
    out: mpsc::UnboundedSender<Command>,
    /// `[xmpp] ca_file`.
    ca_file: Option<std::path::PathBuf>,
    /// The TLS configuration, built when a connection first needs it.
    tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
    /// The CA file, for log lines.
    ca: String,
    link: Link,
    /// Keep-alive pings sent (their IQ ids).
    pings: u64,
    /// The phase last logged.
    logged: Phase,
}

impl Client {
    fn path(&self) -> String {
        self.policy
            .connection()
            .map_or_else(String::new, |c| c.path.clone())
    }

    fn tls(&mut self) -> Result<Arc<rustls::ClientConfig>, String> {
        let ca_file = self.ca_file.clone();
        self.tls
            .get_or_insert_with(|| {
                let r = tls_config(ca_file.as_deref());
                if let Err(e) = &r {
                    tracing::error!("XMPP: {e}");
                }
                r
            })
            .clone()
    }

    /// What only the driver can find wrong with the login the settings give: the JID's syntax
    /// and the TLS configuration.
    fn login_error(&mut self, s: &XmppSettings) -> Option<String> {
        let c = s
            .conn
            .as_ref()
            .filter(|c| c.enable && !c.username.is_empty() && !c.domain.is_empty())?;
        if let Err(e) = login_jid(c) {
            return Some(e);
        }
        self.tls().err()
    }

    /// Takes the settings snapshot to the policy.
    fn load_settings(&mut self) {
        let raw = self.settings.borrow_and_update().clone();
        let s = XmppSettings::from_raw(&raw);
        let login_error = self.login_error(&s);
        self.policy.update_settings(Instant::now(), s, login_error);
    }

    async fn main(mut self) {
        self.load_settings();
        loop {
            self.carry_out().await;
            self.log_phase();
            let deadline = self.policy.poll_timeout();
            let wake = tokio::select! {
                ev = link_event(&mut self.link) => Wake::Link(ev),
                () = sleep_until(deadline) => Wake::Timer,
                changed = self.settings.changed() => Wake::Settings(changed.is_ok()),
            };
            match wake {
                Wake::Link(ev) => self.on_link(ev).await,
                Wake::Timer => self.on_timeout(),
                Wake::Settings(false) => return,
                Wake::Settings(true) => {
                    let online = matches!(self.policy.phase(), Phase::Online { .. });
                    self.load_settings();
                    if online && !matches!(self.policy.phase(), Phase::Online { .. }) {
                        tracing::info!("XMPP {}: settings changed: reconnecting", self.path());
                    }
                }
            }
        }
    }

    /// Carries out what the policy asks, in order.
    async fn carry_out(&mut self) {
        while let Some(o) = self.policy.poll_output() {
            match o {
                Output::Connect(target) => self.start_connect(target),
                Output::Disconnect => {
                    if let Link::Online(c) = std::mem::replace(&mut self.link, Link::None) {
                        c.close().await;
                    }
                }
                Output::SendPresence => {
                    if let Link::Online(c) = &mut self.link
                        && c.send(Presence::available().into()).await.is_ok()
                    {
                        self.policy.stanza_sent(Instant::now(), false);
                    }
                }
                Output::SendPing => {
                    let Link::Online(c) = &self.link else {
                        continue;
                    };
                    let domain = Jid::from(c.jid.to_bare().domain().to_owned());
                    self.pings += 1;
                    let ping = Iq::from_get(format!("ping-{}", self.pings), Ping).with_to(domain);
                    tracing::trace!("XMPP keep-alive ping");
                    self.send(ping.into()).await;
                }
                Output::Status { path, status } => {
                    tracing::info!("XMPP {path}Status = {status}");
                    let _ = self.out.send(Command::Status(vec![
                        (format!("{path}Status"), status.to_string()),
                        (
                            format!("{path}LastChangeDate"),
                            crate::util::time::now_datetime(),
                        ),
                    ]));
                }
                Output::Report(values) => {
                    let _ = self.out.send(Command::Status(values));
                }
            }
        }
    }

    fn start_connect(&mut self, target: Target) {
        let Some(conn) = self.policy.connection().cloned() else {
            return;
        };
        let (jid, tls) = match (login_jid(&conn), self.tls()) {
            (Ok(jid), Ok(tls)) => (jid, tls),
            (Err(e), _) | (_, Err(e)) => {
                self.link = Link::None;
                self.policy
                    .connect_failed(Instant::now(), ConnectError::Misconfigured(e));
                return;
            }
        };
        tracing::debug!("XMPP {}: connecting to {target} as {jid}", conn.path);
        let params = ConnectParams {
            jid,
            password: conn.password.clone(),
            resource: (!conn.resource.is_empty()).then(|| conn.resource.clone()),
            target,
            require_tls: conn.use_tls,
            tls,
            keepalive: stream_timeout(conn.keepalive()),
        };
        self.link = Link::Connecting(Box::pin(
            async move { connect(&params).await.map(Box::new) },
        ));
    }

    async fn on_link(&mut self, ev: LinkEvent) {
        let now = Instant::now();
        match ev {
            LinkEvent::Connected(Ok(c)) => {
                tracing::info!(
                    "XMPP {}: online as {} via {} (TLS {}, SASL {})",
                    self.path(),
                    c.jid,
                    c.peer,
                    if c.tls { "yes" } else { "no" },
                    c.mechanism
                );
                let (jid, tls) = (c.jid.to_string(), c.tls);
                self.link = Link::Online(c);
                self.policy.connected(now, &jid, tls);
            }
            LinkEvent::Connected(Err(e)) => {
                self.link = Link::None;
                let path = self.path();
                tracing::warn!("XMPP {path}: {e}");
                if let ConnectError::Tls(_) = e {
                    tracing::error!(
                        "XMPP {path}: TLS to the server failed (certificate not trusted? [xmpp] ca_file = {}); will retry",
                        self.ca
                    );
                }
                self.policy.connect_failed(now, e);
            }
            LinkEvent::Received(Received::Closed(why)) => {
                tracing::warn!("XMPP {}: disconnected: {why}", self.path());
                self.policy.stream_error(now);
            }
            LinkEvent::Received(Received::Idle) => {
                // tokio-xmpp's soft timeout: the policy decides about keep-alives.
            }
            LinkEvent::Received(Received::Invalid(why)) => {
                self.policy.stanza_received(now, false);
                tracing::debug!("XMPP: unparsable stanza ignored: {why}");
            }
            LinkEvent::Received(Received::Stanza(st)) => {
                self.policy.stanza_received(now, is_error(&st));
                if let Some(reply) = self.handle(*st, now) {
                    self.send(reply.into()).await;
                }
            }
        }
    }

    fn on_timeout(&mut self) {
        let before = self.policy.phase().clone();
        self.policy.handle_timeout(Instant::now());
        let after = self.policy.phase();
        match before {
            Phase::Online { .. } if !matches!(after, Phase::Online { .. }) => tracing::warn!(
                "XMPP {}: no answer to the keep-alive ping: the stream is dead",
                self.path()
            ),
            Phase::Connecting { .. } if *after != before => {
                if let Some(e) = self.policy.last_error() {
                    tracing::warn!("XMPP {}: {e}", self.path());
                }
            }
            _ => {}
        }
    }

    async fn send(&mut self, st: Stanza) {
        let Link::Online(c) = &mut self.link else {
            return;
        };
        let err = is_error(&st);
        match c.send(st).await {
            Ok(()) => self.policy.stanza_sent(Instant::now(), err),
            Err(e) => {
                tracing::warn!("XMPP send failed: {e}");
                self.policy.stream_error(Instant::now());
            }
        }
    }

    /// Logs where the connection's life went.
    fn log_phase(&mut self) {
        let same = match (&self.logged, self.policy.phase()) {
            (Phase::Online { .. }, Phase::Online { .. }) => true,
            (a, b) => a == b,
        };
        if same {
            return;
        }
        let path = self.path();
        match self.policy.phase() {
            Phase::Idle(Idle::NoConnection) => {
                tracing::debug!("XMPP: no connection referenced by ConnReqXMPPConnection")
            }
            Phase::Idle(Idle::Disabled) => tracing::info!("XMPP {path}: disabled"),
            Phase::Idle(Idle::Misconfigured(why)) => {
                tracing::warn!("XMPP {path}: misconfigured: {why}")
            }
            Phase::Idle(Idle::NoReconnect) => tracing::warn!(
                "XMPP {path}: ServerConnectAttempts is 0: not reconnecting until the settings change"
            ),
            Phase::Waiting {
                until,
                target,
                attempt,
            } => {
                let secs = until.map_or(f64::INFINITY, |u| {
                    u.saturating_duration_since(Instant::now()).as_secs_f64()
                });
                tracing::info!(
                    "XMPP {path}: reconnecting to {target} in {secs:.1} s (attempt {attempt})"
                );
            }
            Phase::Idle(Idle::Start) | Phase::Connecting { .. } | Phase::Online { .. } => {}
        }
        self.logged = self.policy.phase().clone();
    }

    /// Handles one stanza; returns the reply to send, if any.
    fn handle(&mut self, st: Stanza, now: Instant) -> Option<Iq> {
        let (from, id, payload) = match st {
            Stanza::Iq(Iq::Get {
                from, id, payload, ..
            })
            | Stanza::Iq(Iq::Set {
                from, id, payload, ..
            }) => (from, id, payload),
            _ => return None,
        };
        let sender = from
            .as_ref()
            .map_or_else(|| "(no from)".to_string(), |j| j.to_string());
        let credentials = parse_connection_request(&payload);
        let from_canonical = from.as_ref().map(|j| j.to_string());
        let iq = IqRequest {
            from: from_canonical.as_deref(),
            credentials: credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        };
        let verdict = {
            let mut limiter = self.limiter.borrow_mut();
            self.policy.judge(now, &iq, &canonical_jid, &mut limiter)
        };
        match verdict {
            Verdict::Accept => {
                tracing::info!("XMPP connection request from {sender} accepted");
                let peer = SocketAddr::from(([0, 0, 0, 0], 0));
                let _ = self.out.send(Command::ConnectionRequest(CrEvent {
                    mechanism: crate::command::Mechanism::Xmpp,
                    received: now,
                    peer,
                }));
                Some(Iq::Result {
                    from: None,
                    to: from,
                    id,
                    payload: None,
                })
            }
            Verdict::NotAuthorized => {
                tracing::warn!("XMPP connection request from {sender}: wrong credentials");
                Some(error_iq(from, id, DefinedCondition::NotAuthorized, payload))
            }
            Verdict::Unavailable(why) => {
                if credentials.is_some() {
                    tracing::warn!("XMPP connection request from {sender} refused: {why}");
                } else {
                    tracing::debug!(
                        "XMPP: IQ {} from {sender}: service-unavailable",
                        payload.name()
                    );
                }
                Some(error_iq(
                    from,
                    id,
                    DefinedCondition::ServiceUnavailable,
                    payload,
                ))
            }
        }
    }
}

/// Runs the agent's XMPP connection-request client until the engine goes away (needs the
/// LocalSet). Status values and accepted requests go to the engine through `engine`.
pub async fn run(
    settings: watch::Receiver<Settings>,
    ca_file: Option<std::path::PathBuf>,
    limiter: Rc<RefCell<RateLimiter>>,
    engine: mpsc::Sender<Command>,
) {
    // Never block this task on the engine: an unbounded queue with a forwarder (counters are
    // limited to one report per second, so the queue stays short).
    let (out, mut rx) = mpsc::unbounded_channel::<Command>();
    tokio::task::spawn_local(async move {
        while let Some(c) = rx.recv().await {
            if engine.send(c).await.is_err() {
                break;
            }
        }
    });
    let ca = ca_file.as_ref().map_or_else(
        || "(Mozilla roots)".to_string(),
        |p| p.display().to_string(),
    );
    tracing::debug!("XMPP client started (CA {ca})");
    let client = Client {
        settings,
        policy: XmppPolicy::new(Box::new(rand_u32)),
        limiter,
        out,
        ca_file,
        tls: None,
        ca,
        link: Link::None,
        pings: 0,
        logged: Phase::Idle(Idle::Start),
    };
    client.main().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    #[test]
    fn allowed_list_rules() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let from = jid("acs@example.com/res1");
        assert!(sender_allowed(&[], Some(&from)));
        assert!(sender_allowed(&[], None));
        assert!(sender_allowed(&l(&["acs@example.com"]), Some(&from)));
        assert!(sender_allowed(&l(&["acs@example.com/res1"]), Some(&from)));
        assert!(!sender_allowed(&l(&["acs@example.com/res2"]), Some(&from)));
        assert!(!sender_allowed(&l(&["acs@example.co"]), Some(&from)));
        assert!(!sender_allowed(&l(&["ac"]), Some(&from)));
        assert!(!sender_allowed(&l(&["acs@example.com"]), None));
        assert!(sender_allowed(
            &l(&["x@y", "acs@example.com"]),
            Some(&jid("acs@example.com"))
        ));
        // A full item does not match the bare sender.
        assert!(!sender_allowed(
            &l(&["acs@example.com/r"]),
            Some(&jid("acs@example.com"))
        ));
        // The JID library's normalisation applies to both sides (case of local part and domain).
        assert!(sender_allowed(
            &l(&["ACS@Example.COM"]),
            Some(&jid("acs@example.com/x"))
        ));
        assert!(sender_allowed(
            &l(&["acs@example.com"]),
            Some(&jid("Acs@EXAMPLE.com/x"))
        ));
        // A resource may hold '/' and '@'.
        assert!(sender_allowed(
            &l(&["acs@example.com/a/b@c"]),
            Some(&jid("acs@example.com/a/b@c"))
        ));
        // An invalid item allows nobody, but the list is not empty.
        assert!(!sender_allowed(&l(&["@@"]), Some(&from)));
    }

    fn settings() -> XmppSettings {
        XmppSettings {
            cwmp_enabled: true,
            allowed: vec!["acs@d.test".into()],
            cr_username: "u".into(),
            cr_password: "p".into(),
            ..XmppSettings::default()
        }
    }

    #[test]
    fn judging_requests_off_the_wire() {
        let s = settings();
        let lim = RefCell::new(RateLimiter::new(1, 0.0));
        let now = Instant::now();
        let from = jid("acs@d.test/x");
        let good = connection_request_element("u", "p");
        let bad = connection_request_element("u", "q");
        assert_eq!(
            judge(&s, Some(&from), &bad, &lim, now),
            Verdict::NotAuthorized
        );
        assert!(matches!(
            judge(&s, Some(&jid("evil@d.test/x")), &good, &lim, now),
            Verdict::Unavailable(_)
        ));
        assert_eq!(judge(&s, Some(&from), &good, &lim, now), Verdict::Accept);
        // The bucket (1 token, no refill) is empty now.
        assert_eq!(
            judge(&s, Some(&from), &good, &lim, now),
            Verdict::Unavailable("rate limited")
        );
        let other = Element::builder("query", "jabber:iq:version").build();
        assert_eq!(
            judge(&s, Some(&from), &other, &lim, now),
            Verdict::Unavailable("not a connection request")
        );
        // Wrong namespace: not a connection request.
        let wrong_ns = Element::builder("connectionRequest", "urn:example")
            .append(Element::builder("username", "urn:example").append("u"))
            .append(Element::builder("password", "urn:example").append("p"))
            .build();
        assert_eq!(parse_connection_request(&wrong_ns), None);
        let p = parse_connection_request(&good).unwrap();
        assert_eq!(p, ("u".to_string(), "p".to_string()));
        // Escaping survives the element round trip.
        let odd = connection_request_element("a&b", "<p'\">");
        assert_eq!(
            parse_connection_request(&odd),
            Some(("a&b".to_string(), "<p'\">".to_string()))
        );
    }

    #[test]
    fn error_reply_shape() {
        let iq = error_iq(
            Some(jid("acs@d.test/x")),
            "id1".into(),
            DefinedCondition::NotAuthorized,
            connection_request_element("u", "p"),
        );
        let el: Element = iq.into();
        let s = String::from(&el);
        assert!(
            s.contains("type=\"error\"") || s.contains("type='error'"),
            "{s}"
        );
        assert!(s.contains("not-authorized"), "{s}");
        assert!(s.contains("cancel"), "{s}");
        assert!(s.contains(NS_CONNREQ), "{s}");
    }

    #[test]
    fn stream_timeouts_stay_behind_the_policy() {
        // The policy declares the stream dead after 2 intervals; tokio-xmpp's hard timeout
        // (read + response timeout) comes after 3.
        for ka in [1u64, 2, 60, 300] {
            let ka = Duration::from_secs(ka);
            assert!(stream_timeout(ka) * 2 > ka * 2);
        }
        // Keep-alive off (a year) and absurd intervals do not overflow.
        let huge = Duration::from_secs(i64::MAX as u64);
        assert!(stream_timeout(huge) >= huge);
        assert_eq!(
            stream_timeout(policy::NEVER),
            policy::NEVER + policy::NEVER / 2
        );
    }
}
