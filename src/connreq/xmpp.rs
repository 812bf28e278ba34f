//! XMPP connection requests (TR-069 Annex K; SPEC-NOTES §d).
//!
//! Two layers:
//! * [`connect`]: one client session to an XMPP server — TCP, STARTTLS with cwmpd's own rustls
//!   configuration (so the CA is configurable per agent: `[xmpp] ca_file`), SASL (SCRAM-SHA-256/
//!   SCRAM-SHA-1, their `-PLUS` variants when the server offers them and TLS 1.3 gives a
//!   channel binding, PLAIN only inside TLS) and resource binding. Built on the low-level
//!   `tokio_xmpp::xmlstream` API, so reconnection, keep-alive and timeouts stay under cwmpd's
//!   control. The ACS tool `cwmp-connreq xmpp` uses it too.
//! * [`run`]: the agent's client for the connection named by
//!   `ManagementServer.ConnReqXMPPConnection`. It follows the settings watch, reports `Status`,
//!   `LastChangeDate`, `JabberID`, `TLSEstablished`, `Stats.*` and `ConnReqJabberID` through
//!   [`Command::Status`], answers `connectionRequest` IQs and hands accepted ones to the engine
//!   as a [`CrEvent`] with mechanism `"xmpp"`. Keep-alive is XEP-0199 ping at
//!   `KeepAliveInterval`; a stream that stays silent for another interval after a ping is
//!   considered dead. Reconnection waits follow `ServerRetry*` ([`xmpp_reconnect_wait`]).

use crate::util::codec::ct_eq;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
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

use super::backoff::{RateLimiter, xmpp_reconnect_wait};
use super::http::CrEvent;
use crate::engine::{Command, Settings};

/// Namespace of the connection-request IQ payload (BBF cwmp-xmppConnReq-1-0.xsd).
pub const NS_CONNREQ: &str = "urn:broadband-forum-org:cwmp:xmppConnReq-1-0";
/// Time allowed for TCP, STARTTLS, SASL and bind together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval used for `KeepAliveInterval = -1` (RFC 6120 §4.6.1 advises ≥ 300 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(300);
/// Counters are reported at most this often.
pub const STATS_PERIOD: Duration = Duration::from_secs(1);
/// Interval used as "never" when keep-alives are off.
const NEVER: Duration = Duration::from_secs(365 * 86400);

const MS: &str = "Device.ManagementServer.";
const CONNREQ_JID: &str = "Device.ManagementServer.ConnReqJabberID";

type Io = Box<dyn AsyncReadAndWrite>;

// ------------------------------------------------------------------------------------------
// Connecting
// ------------------------------------------------------------------------------------------

/// Where to open the TCP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The `Status` value this failure gives.
    pub fn status(&self) -> &'static str {
        match self {
            ConnectError::Unreachable(_) => "ServerNotPresent",
            ConnectError::Auth(_) => "Error_AuthenticationFailure",
            ConnectError::Misconfigured(_) => "Error_Misconfigured",
            ConnectError::Tls(_) | ConnectError::Protocol(_) => "Error",
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
    /// The keep-alive interval (`-1` → 300 s; `0` → off, i.e. a year).
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
    /// Derives the client settings from a raw settings snapshot.
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

/// `ConnReqAllowedJabberIDs` check (SPEC-NOTES §d.3): an empty list allows everyone; a bare
/// item matches any resource of that JID; a full item needs an exact match. A missing `from`
/// only passes an empty list.
pub fn sender_allowed(allowed: &[String], from: Option<&Jid>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(from) = from else { return false };
    allowed
        .iter()
        .any(|item| match Jid::new(item).map(Jid::try_into_full) {
            Ok(Ok(full)) => from.try_as_full().is_ok_and(|f| *f == full),
            Ok(Err(bare)) => from.to_bare() == bare,
            Err(_) => false,
        })
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
/// valid requests).
pub fn judge(
    s: &XmppSettings,
    from: Option<&Jid>,
    payload: &Element,
    limiter: &RefCell<RateLimiter>,
    now: Instant,
) -> Verdict {
    let Some((user, pass)) = parse_connection_request(payload) else {
        return Verdict::Unavailable("not a connection request");
    };
    if !s.cwmp_enabled {
        return Verdict::Unavailable("CWMP disabled");
    }
    if !sender_allowed(&s.allowed, from) {
        return Verdict::Unavailable("sender not in ConnReqAllowedJabberIDs");
    }
    let ok_user = ct_eq(user.as_bytes(), s.cr_username.as_bytes());
    let ok_pass = ct_eq(pass.as_bytes(), s.cr_password.as_bytes());
    if !(ok_user & ok_pass) {
        return Verdict::NotAuthorized;
    }
    if !limiter.borrow_mut().try_acquire(now) {
        return Verdict::Unavailable("rate limited");
    }
    Verdict::Accept
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
// The agent's client task
// ------------------------------------------------------------------------------------------

/// Stanza counters (`Stats.*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stats {
    rx: u32,
    tx: u32,
    rx_err: u32,
    tx_err: u32,
}

fn is_error(st: &Stanza) -> bool {
    match st {
        Stanza::Iq(Iq::Error { .. }) => true,
        Stanza::Message(m) => m.type_ == tokio_xmpp::parsers::message::MessageType::Error,
        Stanza::Presence(p) => p.type_ == tokio_xmpp::parsers::presence::Type::Error,
        _ => false,
    }
}

struct Client {
    settings: watch::Receiver<Settings>,
    cur: XmppSettings,
    limiter: Rc<RefCell<RateLimiter>>,
    out: mpsc::UnboundedSender<Command>,
    /// `[xmpp] ca_file`.
    ca_file: Option<std::path::PathBuf>,
    /// The TLS configuration, built at the first connection attempt.
    tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
    /// Values reported (path → value), to send only changes.
    reported: BTreeMap<String, String>,
    stats: Stats,
    stats_sent: Stats,
    stats_path: Option<String>,
    last_stats: Option<Instant>,
    /// The CA file, for log lines.
    ca: String,
}

/// What ended a wait or a session.
enum Stop {
    /// The relevant settings changed: reconnect now.
    Settings,
    /// The engine went away.
    Gone,
}

fn rand_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_le_bytes(b)
}

impl Client {
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
        let _ = self.out.send(Command::Status(changed));
    }

    fn set_status(&mut self, path: &str, status: &str) {
        let key = format!("{path}Status");
        if self.reported.get(&key).map(String::as_str) == Some(status) {
            return;
        }
        tracing::info!("XMPP {path}Status = {status}");
        self.report(vec![
            (key, status.to_string()),
            (
                format!("{path}LastChangeDate"),
                crate::util::time::now_datetime(),
            ),
        ]);
    }

    fn set_connreq_jid(&mut self, jid: &str) {
        if self.cur.connreq_jid != jid || self.reported.contains_key(CONNREQ_JID) {
            self.report(vec![(CONNREQ_JID.to_string(), jid.to_string())]);
        }
    }

    fn flush_stats(&mut self, force: bool) {
        let Some(path) = self.stats_path.clone() else {
            return;
        };
        if self.stats == self.stats_sent {
            return;
        }
        if !force && self.last_stats.is_some_and(|t| t.elapsed() < STATS_PERIOD) {
            return;
        }
        self.last_stats = Some(Instant::now());
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

    /// Takes a new settings snapshot; true when the connection-relevant part changed.
    fn reload(&mut self) -> bool {
        let raw = self.settings.borrow_and_update().clone();
        let new = XmppSettings::from_raw(&raw);
        let relevant = new.conn != self.cur.conn;
        self.cur = new;
        relevant
    }

    /// Waits for a relevant settings change.
    async fn wait_settings(&mut self) -> Stop {
        loop {
            if self.settings.changed().await.is_err() {
                return Stop::Gone;
            }
            if self.reload() {
                return Stop::Settings;
            }
        }
    }

    async fn main(mut self) {
        self.reload();
        let mut attempt: u32 = 0;
        loop {
            let Some(conn) = self.cur.conn.clone() else {
                self.set_connreq_jid("");
                if let Stop::Gone = self.wait_settings().await {
                    return;
                }
                attempt = 0;
                continue;
            };
            self.stats_path = Some(conn.path.clone());
            if !conn.enable {
                self.set_status(&conn.path, "Disabled");
                self.report(vec![(
                    format!("{}TLSEstablished", conn.path),
                    "false".into(),
                )]);
                self.set_connreq_jid("");
                if let Stop::Gone = self.wait_settings().await {
                    return;
                }
                attempt = 0;
                continue;
            }
            let stop = match self.attempt(&conn).await {
                Ok(stop) => {
                    // Was connected: start a fresh back-off series; the first retry waits.
                    attempt = 1;
                    stop
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    tracing::warn!("XMPP {}: {e}", conn.path);
                    if let ConnectError::Tls(_) = e {
                        tracing::error!(
                            "XMPP {}: TLS to the server failed (certificate not trusted? [xmpp] ca_file = {}); will retry",
                            conn.path,
                            self.ca
                        );
                    }
                    self.set_status(&conn.path, e.status());
                    None
                }
            };
            self.report(vec![(
                format!("{}TLSEstablished", conn.path),
                "false".into(),
            )]);
            self.flush_stats(true);
            match stop {
                Some(Stop::Gone) => return,
                Some(Stop::Settings) => {
                    attempt = 0;
                    continue;
                }
                None => {}
            }
            if conn.connect_attempts == 0 {
                tracing::warn!(
                    "XMPP {}: ServerConnectAttempts is 0: not reconnecting until the settings change",
                    conn.path
                );
                if let Stop::Gone = self.wait_settings().await {
                    return;
                }
                attempt = 0;
                continue;
            }
            let wait = xmpp_reconnect_wait(
                attempt.max(1),
                conn.retry_initial,
                conn.retry_multiplier,
                conn.retry_max,
                rand_u32(),
            );
            tracing::info!(
                "XMPP {}: reconnecting in {:.1} s (attempt {attempt})",
                conn.path,
                wait.as_secs_f64()
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                s = self.wait_settings() => match s {
                    Stop::Gone => return,
                    Stop::Settings => attempt = 0,
                },
            }
        }
    }

    /// One connection: connect (trying the targets in order), serve until the stream ends.
    /// `Ok(None)`: the stream ended; `Ok(Some(stop))`: settings changed / shutdown.
    async fn attempt(&mut self, conn: &ConnSettings) -> Result<Option<Stop>, ConnectError> {
        let path = conn.path.clone();
        if conn.username.is_empty() || conn.domain.is_empty() {
            return Err(ConnectError::Misconfigured(
                "Username and Domain must be set".into(),
            ));
        }
        let jid = BareJid::new(&format!("{}@{}", conn.username, conn.domain))
            .map_err(|e| ConnectError::Misconfigured(format!("JID: {e}")))?;
        let ca_file = self.ca_file.clone();
        let tls = self
            .tls
            .get_or_insert_with(|| {
                let r = tls_config(ca_file.as_deref());
                if let Err(e) = &r {
                    tracing::error!("XMPP: {e}");
                }
                r
            })
            .clone()
            .map_err(ConnectError::Misconfigured)?;
        let targets = targets(conn, rand_u32).map_err(ConnectError::Misconfigured)?;
        self.set_status(&path, "Connecting");
        let mut last_err = ConnectError::Unreachable("no target".into());
        let mut connection = None;
        for t in targets {
            let params = ConnectParams {
                jid: jid.clone(),
                password: conn.password.clone(),
                resource: (!conn.resource.is_empty()).then(|| conn.resource.clone()),
                target: t.clone(),
                require_tls: conn.use_tls,
                tls: tls.clone(),
                keepalive: conn.keepalive(),
            };
            tracing::debug!("XMPP {path}: connecting to {t} as {jid}");
            let r = tokio::select! {
                r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&params)) => r,
                s = self.wait_settings() => return Ok(Some(s)),
            };
            match r {
                Ok(Ok(c)) => {
                    connection = Some(c);
                    break;
                }
                Ok(Err(e)) => {
                    let next = matches!(e, ConnectError::Unreachable(_));
                    last_err = e;
                    if !next {
                        break;
                    }
                }
                Err(_) => {
                    last_err = ConnectError::Unreachable(format!(
                        "{t}: no complete login within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        let Some(mut c) = connection else {
            return Err(last_err);
        };
        tracing::info!(
            "XMPP {path}: online as {} via {} (TLS {}, SASL {})",
            c.jid,
            c.peer,
            if c.tls { "yes" } else { "no" },
            c.mechanism
        );
        let bound = c.jid.to_string();
        self.report(vec![
            (format!("{path}JabberID"), bound.clone()),
            (format!("{path}TLSEstablished"), c.tls.to_string()),
        ]);
        self.set_status(&path, "Enabled");
        self.set_connreq_jid(&bound);
        // Initial presence (as icwmp does), so that the server treats the resource as available.
        if c.send(Presence::available().into()).await.is_ok() {
            self.stats.tx += 1;
        }
        let stop = self.serve(&mut c, conn).await;
        c.close().await;
        Ok(stop)
    }

    async fn send_counted(&mut self, c: &mut Connection, st: Stanza) -> bool {
        let err = is_error(&st);
        match c.send(st).await {
            Ok(()) => {
                self.stats.tx += 1;
                if err {
                    self.stats.tx_err += 1;
                }
                true
            }
            Err(e) => {
                tracing::warn!("XMPP send failed: {e}");
                false
            }
        }
    }

    async fn serve(&mut self, c: &mut Connection, conn: &ConnSettings) -> Option<Stop> {
        let mut tick = tokio::time::interval(STATS_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let domain = Jid::from(c.jid.to_bare().domain().to_owned());
        let mut ping_n: u64 = 0;
        loop {
            let ev = tokio::select! {
                ev = c.recv() => ev,
                _ = tick.tick() => { self.flush_stats(false); continue; }
                changed = self.settings.changed() => {
                    if changed.is_err() { return Some(Stop::Gone); }
                    if self.reload() {
                        tracing::info!("XMPP {}: settings changed: reconnecting", conn.path);
                        return Some(Stop::Settings);
                    }
                    continue;
                }
            };
            match ev {
                Received::Closed(why) => {
                    tracing::warn!("XMPP {}: disconnected: {why}", conn.path);
                    self.set_status(&conn.path, "Connecting");
                    return None;
                }
                Received::Idle => {
                    ping_n += 1;
                    let ping = Iq::from_get(format!("ping-{ping_n}"), Ping).with_to(domain.clone());
                    tracing::trace!("XMPP keep-alive ping");
                    if !self.send_counted(c, ping.into()).await {
                        self.set_status(&conn.path, "Connecting");
                        return None;
                    }
                }
                Received::Invalid(why) => {
                    self.stats.rx += 1;
                    tracing::debug!("XMPP: unparsable stanza ignored: {why}");
                }
                Received::Stanza(st) => {
                    self.stats.rx += 1;
                    if is_error(&st) {
                        self.stats.rx_err += 1;
                    }
                    if let Some(reply) = self.handle(*st)
                        && !self.send_counted(c, reply.into()).await
                    {
                        self.set_status(&conn.path, "Connecting");
                        return None;
                    }
                }
            }
            self.flush_stats(false);
        }
    }

    /// Handles one stanza; returns the reply to send, if any.
    fn handle(&mut self, st: Stanza) -> Option<Iq> {
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
        let verdict = judge(
            &self.cur,
            from.as_ref(),
            &payload,
            &self.limiter,
            Instant::now(),
        );
        match verdict {
            Verdict::Accept => {
                tracing::info!("XMPP connection request from {sender} accepted");
                let peer = SocketAddr::from(([0, 0, 0, 0], 0));
                let _ = self.out.send(Command::ConnectionRequest(CrEvent {
                    mechanism: "xmpp",
                    received: Instant::now(),
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
                if parse_connection_request(&payload).is_some() {
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
    let client = Client {
        settings,
        cur: XmppSettings::default(),
        limiter,
        out,
        ca_file,
        tls: None,
        reported: BTreeMap::new(),
        stats: Stats::default(),
        stats_sent: Stats::default(),
        stats_path: None,
        last_stats: None,
        ca: ca.clone(),
    };
    tracing::debug!("XMPP client started (CA {ca})");
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
    }

    fn settings(extra: &[(&str, &str)]) -> XmppSettings {
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
        XmppSettings::from_raw(&m)
    }

    #[test]
    fn settings_and_server_table_order() {
        let s = settings(&[]);
        let c = s.conn.clone().unwrap();
        assert_eq!(c.path, "Device.XMPP.Connection.1.");
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.keepalive(), DEFAULT_KEEPALIVE);
        let t = targets(&c, || 0).unwrap();
        assert_eq!(
            t,
            vec![
                Target::Host("10.0.0.2".into(), 5223),
                Target::Host("10.0.0.1".into(), 5222)
            ]
        );
        // Trailing dot accepted; dangling reference gives no connection.
        assert!(
            settings(&[(
                "Device.ManagementServer.ConnReqXMPPConnection",
                "Device.XMPP.Connection.1."
            )])
            .conn
            .is_some()
        );
        assert!(
            settings(&[(
                "Device.ManagementServer.ConnReqXMPPConnection",
                "Device.XMPP.Connection.7"
            )])
            .conn
            .is_none()
        );
        assert_eq!(connection_path("Device.XMPP.Connection.x"), None);
        let mut c2 = c.clone();
        c2.algorithm = "DNS".into();
        assert_eq!(
            targets(&c2, || 0).unwrap(),
            vec![Target::Host("d.test".into(), 5222)]
        );
        c2.algorithm = "WebSocket".into();
        assert!(targets(&c2, || 0).is_err());
        c2.keepalive = 0;
        assert_eq!(c2.keepalive(), NEVER);
    }

    #[test]
    fn judging_requests() {
        let s = settings(&[(
            "Device.ManagementServer.ConnReqAllowedJabberIDs",
            "acs@d.test",
        )]);
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
        assert!(matches!(
            judge(&s, Some(&from), &other, &lim, now),
            Verdict::Unavailable(_)
        ));
        let p = parse_connection_request(&good).unwrap();
        assert_eq!(p, ("u".to_string(), "p".to_string()));
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
}
