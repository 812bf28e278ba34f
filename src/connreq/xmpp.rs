//! XMPP connection requests (TR-069 Annex K; SPEC-NOTES §d): the IO side.
//!
//! Two layers:
//! * [`connect`]: one client session to an XMPP server — TCP, STARTTLS with cwmpd's own rustls
//!   configuration (so the CA is configurable per agent: `[xmpp] ca_file`), SASL (SCRAM-SHA-256/
//!   SCRAM-SHA-1, their `-PLUS` variants when the server offers them and TLS 1.3 gives a
//!   channel binding, PLAIN only inside TLS) and resource binding, on tokio and tokio-rustls
//!   with the sans-IO pieces of cwmp-proto (`xmpp_wire`: the bounded XML stream reader and the
//!   stanzas; `xmpp_sasl`; `dns_srv`: the SRV lookup of RFC 6120 §3.2.1, sent to the
//!   nameservers of /etc/resolv.conf). Reconnection, keep-alive and timeouts stay under cwmpd's
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

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cwmp_proto::connreq::dns_srv::{self, SrvAnswer};
use cwmp_proto::connreq::xmpp_sasl::{ChannelBinding, SaslError, Scram, ScramHash};
use cwmp_proto::connreq::xmpp_wire::{
    Event, NS_BIND, NS_CLIENT, NS_SASL, NS_STREAM, NS_TLS, StreamReader, XmlError,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::backoff::RateLimiter;
use super::xmpp_policy::{self as policy, Idle, IqRequest, Output, Phase, XmppPolicy};
use crate::command::CrEvent;
use crate::command::{Command, Settings};

pub use super::xmpp_policy::{
    CONNECT_TIMEOUT, ConnSettings, ConnectError, DEFAULT_KEEPALIVE, STATS_PERIOD, ServerRow,
    Status, Target, Verdict, XmppSettings, connection_path, targets,
};
pub use cwmp_proto::connreq::xmpp_wire as wire;
pub use cwmp_proto::connreq::xmpp_wire::{
    Element, Jid, NS_CONNREQ, connection_request_element, error_condition, parse_connection_request,
};

/// The byte stream under an XMPP stream (TCP, or TLS over it).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Time allowed for one write (a peer that stops reading must not stall the client).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// DNS: time per query attempt, and attempts per nameserver.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
const DNS_ATTEMPTS: usize = 2;
/// RFC 6120 §3.2.1: the port when there is no SRV record.
const XMPP_CLIENT_PORT: u16 = 5222;

// ------------------------------------------------------------------------------------------
// Connecting
// ------------------------------------------------------------------------------------------

/// Everything [`connect`] needs.
#[derive(Clone)]
pub struct ConnectParams {
    /// `Username@Domain` (bare): SASL authentication id and the stream's `to`.
    pub jid: Jid,
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
    /// The stream's own read timeout: after twice this in silence the stream counts as dead
    /// (a backstop behind the policy's keep-alive).
    pub keepalive: Duration,
}

fn proto(what: &str, e: impl std::fmt::Display) -> ConnectError {
    ConnectError::Protocol(format!("{what}: {e}"))
}

/// Why reading the stream stopped.
enum WireError {
    Io(io::Error),
    Eof,
    Xml(XmlError),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Eof => f.write_str("connection closed"),
            WireError::Xml(e) => write!(f, "{e}"),
        }
    }
}

/// One XMPP stream over a byte stream: the incremental reader and the writes.
struct Wire<S> {
    io: S,
    reader: StreamReader,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn new(io: S) -> Wire<S> {
        Wire {
            io,
            reader: StreamReader::new(),
        }
    }

    async fn write(&mut self, s: &str) -> io::Result<()> {
        tokio::time::timeout(WRITE_TIMEOUT, async {
            self.io.write_all(s.as_bytes()).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// The next stream event. Cancel-safe: bytes read are parsed before the next await.
    async fn next(&mut self) -> Result<Event, WireError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(ev) = self.reader.next_event() {
                return Ok(ev);
            }
            let n = self.io.read(&mut buf).await.map_err(WireError::Io)?;
            if n == 0 {
                return Err(WireError::Eof);
            }
            self.reader.feed(&buf[..n]).map_err(WireError::Xml)?;
        }
    }

    /// Restarts the stream (RFC 6120 §4.3.3): our header, the server's, its features.
    async fn open(&mut self, domain: &str) -> Result<Element, ConnectError> {
        self.reader = StreamReader::new();
        self.write(&wire::stream_header(domain))
            .await
            .map_err(|e| proto("stream header", e))?;
        match self.next().await {
            Ok(Event::StreamStart(_)) => {}
            Ok(_) => return Err(ConnectError::Protocol("no stream header".into())),
            Err(e) => return Err(proto("stream header", e)),
        }
        let features = self.element().await?;
        if !features.is("features", NS_STREAM) {
            return Err(ConnectError::Protocol(format!(
                "<{}> instead of stream features",
                features.name
            )));
        }
        Ok(features)
    }

    /// The next top-level element during negotiation (a stream error or end fails).
    async fn element(&mut self) -> Result<Element, ConnectError> {
        match self.next().await {
            Ok(Event::Element(el)) if el.is("error", NS_STREAM) => Err(ConnectError::Protocol(
                format!("stream error: {}", stream_error_condition(&el)),
            )),
            Ok(Event::Element(el)) => Ok(el),
            Ok(Event::StreamEnd) | Err(WireError::Eof) => {
                Err(ConnectError::Protocol("server closed the stream".into()))
            }
            Ok(Event::StreamStart(_)) => Err(ConnectError::Protocol("second stream header".into())),
            Err(e) => Err(proto("stream", e)),
        }
    }
}

fn stream_error_condition(el: &Element) -> String {
    el.children
        .iter()
        .find(|c| c.name != "text")
        .map_or_else(|| "(no condition)".to_string(), |c| c.name.clone())
}

/// An established, authenticated and bound client stream.
pub struct Connection {
    wire: Wire<Box<dyn Io>>,
    /// The full JID the server bound.
    pub jid: Jid,
    /// The stream is TLS-protected.
    pub tls: bool,
    /// The SASL mechanism used.
    pub mechanism: String,
    /// The server's socket address.
    pub peer: SocketAddr,
    /// Silence after which the stream counts as dead (the backstop).
    dead_after: Duration,
}

/// What [`Connection::recv`] gives.
#[derive(Debug)]
pub enum Received {
    /// A stanza (`iq`, `message` or `presence` in `jabber:client`).
    Stanza(Box<Element>),
    /// A top-level element that is no stanza (counted, otherwise ignored).
    Invalid(String),
    /// The stream is over (closed, timed out, stream error, malformed XML).
    Closed(String),
}

impl Connection {
    /// Sends one stanza.
    pub async fn send(&mut self, st: &Element) -> io::Result<()> {
        self.wire.write(&st.to_stanza()).await
    }

    /// Waits for the next stanza or stream event. Cancel-safe.
    pub async fn recv(&mut self) -> Received {
        match tokio::time::timeout(self.dead_after, self.wire.next()).await {
            Err(_) => Received::Closed("no answer from the server (dead stream)".into()),
            Ok(Ok(Event::Element(el))) if el.is("error", NS_STREAM) => Received::Closed(format!(
                "stream error from server: {}",
                stream_error_condition(&el)
            )),
            Ok(Ok(Event::Element(el)))
                if el.ns == NS_CLIENT
                    && matches!(el.name.as_str(), "iq" | "message" | "presence") =>
            {
                Received::Stanza(Box::new(el))
            }
            Ok(Ok(Event::Element(el))) => {
                Received::Invalid(format!("unexpected element <{}> in {}", el.name, el.ns))
            }
            Ok(Ok(Event::StreamStart(_))) => Received::Invalid("second stream header".into()),
            Ok(Ok(Event::StreamEnd)) => Received::Closed("stream closed by the server".into()),
            Ok(Err(e)) => Received::Closed(e.to_string()),
        }
    }

    /// Closes the stream politely (best effort, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.wire.io.write_all(wire::STREAM_END.as_bytes()).await;
            let _ = self.wire.io.shutdown().await;
        })
        .await;
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

/// TCP to a host name (every address in turn) or IP literal.
async fn connect_host(host: &str, port: u16) -> io::Result<TcpStream> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return TcpStream::connect(SocketAddr::new(ip, port)).await;
    }
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One SRV query to one nameserver (bounded wait; answers to other queries are ignored).
async fn srv_query(ns: SocketAddr, name: &str) -> Result<SrvAnswer, String> {
    let id = (rand_u32() & 0xffff) as u16;
    let query = dns_srv::build_query(id, name).map_err(|e| e.to_string())?;
    let local: SocketAddr = match ns {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    sock.connect(ns).await.map_err(|e| e.to_string())?;
    sock.send(&query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; dns_srv::MAX_RESPONSE];
    tokio::time::timeout(DNS_TIMEOUT, async {
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            match dns_srv::parse_response(id, name, &buf[..n]) {
                Err(dns_srv::DnsError::NotOurs) => continue,
                r => return r.map_err(|e| e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| format!("no answer from {ns}"))?
}

/// `_xmpp-client._tcp.<domain>` (RFC 6120 §3.2.1) through the nameservers of
/// /etc/resolv.conf. Ok(None): no SRV records.
async fn srv_lookup(domain: &str) -> Result<Option<Vec<SrvRecordTarget>>, String> {
    let conf = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .unwrap_or_default();
    let mut servers: Vec<SocketAddr> = dns_srv::nameservers(&conf)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        servers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
    }
    srv_lookup_via(&servers, domain).await
}

/// [`srv_lookup`] through the given nameservers, each tried [`DNS_ATTEMPTS`] times.
async fn srv_lookup_via(
    servers: &[SocketAddr],
    domain: &str,
) -> Result<Option<Vec<SrvRecordTarget>>, String> {
    let name = dns_srv::xmpp_client_name(domain);
    let mut last = String::from("no nameserver");
    for &ns in servers {
        for _ in 0..DNS_ATTEMPTS {
            match srv_query(ns, &name).await {
                Ok(SrvAnswer::NoRecords) => return Ok(None),
                Ok(SrvAnswer::Records(r)) => {
                    return dns_srv::order(r, rand_u32)
                        .map(Some)
                        .ok_or_else(|| format!("{name}: service not available (SRV \".\")"));
                }
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}

type SrvRecordTarget = (String, u16);

async fn open_tcp(target: &Target) -> Result<TcpStream, ConnectError> {
    let unreachable =
        |e: &dyn std::fmt::Display| ConnectError::Unreachable(format!("{target}: {e}"));
    match target {
        Target::Host(h, p) => connect_host(h, *p).await.map_err(|e| unreachable(&e)),
        Target::Srv(d) => {
            if d.parse::<IpAddr>().is_ok() {
                return connect_host(d, XMPP_CLIENT_PORT)
                    .await
                    .map_err(|e| unreachable(&e));
            }
            let hosts = match srv_lookup(d).await {
                Ok(Some(h)) => h,
                Ok(None) => vec![(d.clone(), XMPP_CLIENT_PORT)],
                Err(e) if e.contains("service not available") => return Err(unreachable(&e)),
                Err(e) => {
                    tracing::debug!("XMPP: SRV lookup for {d} failed ({e}): trying {d}:5222");
                    vec![(d.clone(), XMPP_CLIENT_PORT)]
                }
            };
            let mut last = String::new();
            for (h, p) in hosts {
                match connect_host(&h, p).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = format!("{h}:{p}: {e}"),
                }
            }
            Err(unreachable(&last))
        }
    }
}

/// The SASL mechanism chosen for a stream.
enum Mech {
    Scram(Box<Scram>),
    Plain,
}

/// SCRAM-SHA-256(-PLUS), SCRAM-SHA-1(-PLUS), then PLAIN (inside TLS only).
fn choose_mechanism(
    offered: &[String],
    user: &str,
    password: &str,
    binding: Option<Vec<u8>>,
    tls: bool,
) -> Result<(Mech, Vec<u8>, String), ConnectError> {
    let has = |n: &str| offered.iter().any(|o| o == n);
    let auth = |e: SaslError| ConnectError::Auth(e.to_string());
    let scram = |hash, cb| -> Result<(Mech, Vec<u8>, String), ConnectError> {
        let mut s = Scram::with_random_nonce(hash, user, password, cb).map_err(auth)?;
        let name = s.mechanism().to_string();
        let first = s.initial();
        Ok((Mech::Scram(Box::new(s)), first, name))
    };
    if let Some(b) = &binding {
        if has("SCRAM-SHA-256-PLUS") {
            return scram(ScramHash::Sha256, ChannelBinding::TlsExporter(b.clone()));
        }
        if has("SCRAM-SHA-1-PLUS") {
            return scram(ScramHash::Sha1, ChannelBinding::TlsExporter(b.clone()));
        }
    }
    // Without a binding to offer, tell the server whether we could have used one ("y" vs "n").
    let no_plus = || {
        if tls {
            ChannelBinding::NotOffered
        } else {
            ChannelBinding::None
        }
    };
    if has("SCRAM-SHA-256") {
        return scram(ScramHash::Sha256, no_plus());
    }
    if has("SCRAM-SHA-1") {
        return scram(ScramHash::Sha1, no_plus());
    }
    if has("PLAIN") {
        if !tls {
            return Err(ConnectError::Auth(
                "only PLAIN offered on an unencrypted stream; refusing to send the password".into(),
            ));
        }
        let first = cwmp_proto::connreq::xmpp_sasl::plain(user, password).map_err(auth)?;
        return Ok((Mech::Plain, first, "PLAIN".into()));
    }
    Err(ConnectError::Auth(format!(
        "no usable SASL mechanism among {offered:?}"
    )))
}

/// The data of a SASL challenge/success (base64, `=` for empty).
fn sasl_data(el: &Element) -> Result<Vec<u8>, ConnectError> {
    let t = el.text.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    cwmp_proto::connreq::xmpp_sasl::base64_decode(t)
        .ok_or_else(|| ConnectError::Protocol("SASL data not base64".into()))
}

/// Authenticates on an open stream whose features offered `mechanisms`.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut Wire<S>,
    features: &Element,
    user: &str,
    password: &str,
    binding: Option<Vec<u8>>,
    tls: bool,
) -> Result<String, ConnectError> {
    let offered: Vec<String> = features
        .get_child("mechanisms", NS_SASL)
        .map(|m| {
            m.children
                .iter()
                .filter(|c| c.is("mechanism", NS_SASL))
                .map(|c| c.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let (mut mech, first, name) = choose_mechanism(&offered, user, password, binding, tls)?;
    w.write(&wire::sasl_auth(&name, &first))
        .await
        .map_err(|e| proto("SASL", e))?;
    let mut verified = false;
    loop {
        let el = w.element().await?;
        if el.ns != NS_SASL {
            continue;
        }
        let sasl_err = |e: SaslError| match e {
            SaslError::BadServerSignature => {
                ConnectError::Auth(format!("{name}: server signature invalid"))
            }
            e => ConnectError::Auth(format!("{name}: {e}")),
        };
        match el.name.as_str() {
            "challenge" => {
                let data = sasl_data(&el)?;
                let reply = match &mut mech {
                    Mech::Scram(s) if !verified => match s.respond(&data) {
                        Ok(r) => r,
                        // Some servers send the server-final message as a last challenge.
                        Err(SaslError::Protocol(_)) if s.finish(&data).is_ok() => {
                            verified = true;
                            Vec::new()
                        }
                        Err(e) => return Err(sasl_err(e)),
                    },
                    _ => {
                        return Err(ConnectError::Auth(format!("{name}: unexpected challenge")));
                    }
                };
                w.write(&wire::sasl_response(&reply))
                    .await
                    .map_err(|e| proto("SASL", e))?;
            }
            "success" => {
                if let Mech::Scram(s) = &mut mech
                    && !verified
                {
                    s.finish(&sasl_data(&el)?).map_err(sasl_err)?;
                }
                return Ok(name);
            }
            "failure" => {
                let cond = el
                    .children
                    .iter()
                    .find(|c| c.name != "text")
                    .map_or("(no condition)", |c| c.name.as_str());
                return Err(ConnectError::Auth(format!("{name} as {user}: {cond}")));
            }
            _ => {}
        }
    }
}

/// Binds the resource on the restarted stream; the full JID the server gave.
async fn bind<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut Wire<S>,
    resource: Option<&str>,
) -> Result<Jid, ConnectError> {
    const ID: &str = "bind-1";
    w.write(&wire::bind(ID, resource).to_stanza())
        .await
        .map_err(|e| proto("bind", e))?;
    loop {
        let el = w.element().await?;
        if !el.is("iq", NS_CLIENT) || el.attr("id") != Some(ID) {
            continue;
        }
        match el.attr("type") {
            Some("result") => {
                let jid = el
                    .get_child("bind", NS_BIND)
                    .and_then(|b| b.get_child("jid", NS_BIND))
                    .ok_or_else(|| ConnectError::Protocol("bind result without JID".into()))?;
                return Jid::new(jid.text.trim()).map_err(|e| proto("bind result", e));
            }
            Some("error") => {
                return Err(ConnectError::Protocol(format!(
                    "bind refused: {}",
                    error_condition(&el).unwrap_or("(no condition)")
                )));
            }
            _ => {}
        }
    }
}

/// Opens, secures, authenticates and binds one client stream (no overall timeout: wrap it).
pub async fn connect(p: &ConnectParams) -> Result<Connection, ConnectError> {
    let domain = p.jid.domain().to_string();
    let Some(username) = p.jid.local().map(str::to_string) else {
        return Err(ConnectError::Misconfigured("JID has no username".into()));
    };
    let tcp = open_tcp(&p.target).await?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp
        .peer_addr()
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    let mut plain = Wire::new(tcp);
    let features = plain.open(&domain).await?;
    // TLS means a new stream (RFC 6120 §5.4.3.3); without it the first stream goes on.
    let (mut w, features, binding, tls) = if features.get_child("starttls", NS_TLS).is_some() {
        plain
            .write(&wire::starttls())
            .await
            .map_err(|e| proto("starttls", e))?;
        loop {
            let el = plain.element().await?;
            if el.is("proceed", NS_TLS) {
                break;
            }
            if el.ns == NS_TLS {
                return Err(ConnectError::Tls("server refused STARTTLS".into()));
            }
        }
        let name = ServerName::try_from(domain.clone())
            .map_err(|e| ConnectError::Misconfigured(format!("domain {domain:?}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(p.tls.clone())
            .connect(name, plain.io)
            .await
            .map_err(|e| ConnectError::Tls(format!("handshake with {domain} ({peer}): {e}")))?;
        let (_, conn) = tls.get_ref();
        let binding = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => conn
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .ok(),
            _ => None,
        };
        let mut w = Wire::new(Box::new(tls) as Box<dyn Io>);
        let features = w.open(&domain).await?;
        (w, features, binding, true)
    } else if p.require_tls {
        return Err(ConnectError::Misconfigured(format!(
            "UseTLS is true but {domain} ({peer}) does not offer STARTTLS"
        )));
    } else {
        tracing::warn!("XMPP server {domain} ({peer}) offers no STARTTLS: continuing without TLS");
        let w = Wire {
            io: Box::new(plain.io) as Box<dyn Io>,
            reader: plain.reader,
        };
        (w, features, None, false)
    };
    let mechanism = authenticate(&mut w, &features, &username, &p.password, binding, tls).await?;
    let features = w.open(&domain).await?;
    if features.get_child("bind", NS_BIND).is_none() {
        return Err(ConnectError::Protocol(
            "server offers no resource binding".into(),
        ));
    }
    let jid = bind(&mut w, p.resource.as_deref()).await?;
    Ok(Connection {
        wire: w,
        jid,
        tls,
        mechanism,
        peer,
        dead_after: p.keepalive.saturating_mul(2),
    })
}

// ------------------------------------------------------------------------------------------
// Connection requests: the wire side (the rules are in xmpp_policy.rs)
// ------------------------------------------------------------------------------------------

use cwmp_proto::connreq::xmpp_wire::canonical_jid;

/// `ConnReqAllowedJabberIDs` check (SPEC-NOTES §d.3) on a parsed sender: an empty list allows
/// everyone; a bare item matches any resource of that JID; a full item needs an exact match. A
/// missing `from` only passes an empty list. ([`policy::sender_allowed`] on canonical JIDs.)
pub fn sender_allowed(allowed: &[String], from: Option<&Jid>) -> bool {
    let from = from.map(|j| j.to_string());
    policy::sender_allowed(allowed, from.as_deref(), &canonical_jid)
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

/// An IQ request (get or set) read off the wire.
#[derive(Debug)]
pub struct IqIn<'a> {
    /// `id`.
    pub id: &'a str,
    /// `from` as written (None: absent).
    pub from_raw: Option<&'a str>,
    /// `from` parsed and normalised.
    pub from: Option<Jid>,
    /// The one payload element.
    pub payload: &'a Element,
}

/// Reads an IQ get/set (None for other stanzas and for IQs RFC 6120 §8.2.3 calls invalid: no
/// id, an invalid `from`, not exactly one payload).
pub fn iq_request(st: &Element) -> Option<IqIn<'_>> {
    if !st.is("iq", NS_CLIENT) || !matches!(st.attr("type"), Some("get" | "set")) {
        return None;
    }
    let id = st.attr("id")?;
    let from_raw = st.attr("from");
    let from = match from_raw {
        Some(f) => Some(Jid::new(f).ok()?),
        None => None,
    };
    let [payload] = st.children.as_slice() else {
        return None;
    };
    Some(IqIn {
        id,
        from_raw,
        from,
        payload,
    })
}

// ------------------------------------------------------------------------------------------
// The agent's client task: the driver of XmppPolicy
// ------------------------------------------------------------------------------------------

fn rand_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_le_bytes(b)
}

/// The stream's own read timeout for a keep-alive interval. The policy pings after one interval
/// of silence and declares the stream dead after another; the connection's own timer is only a
/// backstop behind it (twice this: 3 intervals).
fn stream_timeout(keepalive: Duration) -> Duration {
    keepalive.saturating_add(keepalive / 2)
}

/// `Username@Domain`, the login JID.
fn login_jid(c: &ConnSettings) -> Result<Jid, String> {
    let j = Jid::new(&format!("{}@{}", c.username, c.domain)).map_err(|e| format!("JID: {e}"))?;
    if j.resource().is_some() {
        return Err(format!("JID {j}: a bare JID is needed"));
    }
    Ok(j)
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
        // Boxed: the reading state exists only while a connection does.
        Link::Online(c) => LinkEvent::Received(Box::pin(c.recv()).await),
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
            // The awaits that do I/O are boxed: an idle client (most agents of a fleet) keeps
            // only this loop's own state, not the largest of theirs.
            Box::pin(self.carry_out()).await;
            self.log_phase();
            let deadline = self.policy.poll_timeout();
            let wake = tokio::select! {
                ev = link_event(&mut self.link) => Wake::Link(ev),
                () = sleep_until(deadline) => Wake::Timer,
                changed = self.settings.changed() => Wake::Settings(changed.is_ok()),
            };
            match wake {
                Wake::Link(ev) => Box::pin(self.on_link(ev)).await,
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
                        && c.send(&wire::presence()).await.is_ok()
                    {
                        self.policy.stanza_sent(Instant::now(), false);
                    }
                }
                Output::SendPing => {
                    let Link::Online(c) = &self.link else {
                        continue;
                    };
                    self.pings += 1;
                    let ping = wire::ping(&format!("ping-{}", self.pings), c.jid.domain());
                    tracing::trace!("XMPP keep-alive ping");
                    self.send(ping).await;
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
            LinkEvent::Received(Received::Invalid(why)) => {
                self.policy.stanza_received(now, false);
                tracing::debug!("XMPP: unparsable stanza ignored: {why}");
            }
            LinkEvent::Received(Received::Stanza(st)) => {
                self.policy.stanza_received(now, wire::is_error(&st));
                if let Some(reply) = self.handle(&st, now) {
                    self.send(reply).await;
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

    async fn send(&mut self, st: Element) {
        let Link::Online(c) = &mut self.link else {
            return;
        };
        let err = wire::is_error(&st);
        match c.send(&st).await {
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
    fn handle(&mut self, st: &Element, now: Instant) -> Option<Element> {
        let iq = iq_request(st)?;
        let sender = iq.from_raw.unwrap_or("(no from)").to_string();
        let credentials = parse_connection_request(iq.payload);
        let from_canonical = iq.from.as_ref().map(|j| j.to_string());
        let req = IqRequest {
            from: from_canonical.as_deref(),
            credentials: credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        };
        let verdict = {
            let mut limiter = self.limiter.borrow_mut();
            self.policy.judge(now, &req, &canonical_jid, &mut limiter)
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
                Some(wire::iq_result(iq.id, iq.from_raw))
            }
            Verdict::NotAuthorized => {
                tracing::warn!("XMPP connection request from {sender}: wrong credentials");
                Some(wire::iq_error(
                    iq.id,
                    iq.from_raw,
                    "not-authorized",
                    Some(iq.payload.clone()),
                ))
            }
            Verdict::Unavailable(why) => {
                if credentials.is_some() {
                    tracing::warn!("XMPP connection request from {sender} refused: {why}");
                } else {
                    tracing::debug!(
                        "XMPP: IQ {} from {sender}: service-unavailable",
                        iq.payload.name
                    );
                }
                Some(wire::iq_error(
                    iq.id,
                    iq.from_raw,
                    "service-unavailable",
                    Some(iq.payload.clone()),
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
        let other = Element::new("query", "jabber:iq:version");
        assert_eq!(
            judge(&s, Some(&from), &other, &lim, now),
            Verdict::Unavailable("not a connection request")
        );
        // Wrong namespace: not a connection request.
        let wrong_ns = Element::new("connectionRequest", "urn:example")
            .with_child(Element::new("username", "urn:example").with_text("u"))
            .with_child(Element::new("password", "urn:example").with_text("p"));
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
        let req = wire::iq_request(
            "get",
            "id1",
            Some("cpe@d.test/r"),
            connection_request_element("u", "p"),
        )
        .with_attr("from", "acs@d.test/x");
        let iq = iq_request(&req).unwrap();
        assert_eq!(iq.from, Some(jid("acs@d.test/x")));
        let el = wire::iq_error(
            iq.id,
            iq.from_raw,
            "not-authorized",
            Some(iq.payload.clone()),
        );
        let s = el.to_stanza();
        assert!(s.contains("type='error'"), "{s}");
        assert!(
            s.contains("to='acs@d.test/x'") && s.contains("id='id1'"),
            "{s}"
        );
        assert!(s.contains("not-authorized"), "{s}");
        assert!(s.contains("cancel"), "{s}");
        assert!(s.contains(NS_CONNREQ), "{s}");
        // Invalid IQs are not requests: no id, a bad from, no payload, two payloads, results.
        let mut no_id = req.clone();
        no_id.attrs.retain(|(n, _)| n != "id");
        assert!(iq_request(&no_id).is_none());
        assert!(iq_request(&req.clone().with_attr("from", "@@")).is_none());
        let mut empty = req.clone();
        empty.children.clear();
        assert!(iq_request(&empty).is_none());
        let two = req.clone().with_child(Element::new("x", "urn:x"));
        assert!(iq_request(&two).is_none());
        assert!(iq_request(&req.clone().with_attr("type", "result")).is_none());
    }

    #[test]
    fn sasl_mechanism_choice() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let name = |offered: &[&str], cb: Option<Vec<u8>>, tls: bool| {
            choose_mechanism(&l(offered), "u", "p", cb, tls).map(|(_, first, n)| (n, first))
        };
        let all = [
            "PLAIN",
            "SCRAM-SHA-1",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-256-PLUS",
        ];
        let (n, first) = name(&all, Some(vec![7; 32]), true).unwrap();
        assert_eq!(n, "SCRAM-SHA-256-PLUS");
        assert!(first.starts_with(b"p=tls-exporter,,n=u,r="));
        // No channel binding (TLS 1.2): plain SCRAM, telling the server we could have bound.
        let (n, first) = name(&all, None, true).unwrap();
        assert_eq!(n, "SCRAM-SHA-256");
        assert!(first.starts_with(b"y,,"));
        let (n, first) = name(&["SCRAM-SHA-1", "PLAIN"], None, false).unwrap();
        assert_eq!(n, "SCRAM-SHA-1");
        assert!(first.starts_with(b"n,,"));
        assert_eq!(
            name(&["SCRAM-SHA-1-PLUS", "PLAIN"], Some(vec![1; 32]), true)
                .unwrap()
                .0,
            "SCRAM-SHA-1-PLUS"
        );
        let (n, first) = name(&["PLAIN"], None, true).unwrap();
        assert_eq!((n.as_str(), first.as_slice()), ("PLAIN", &b"\0u\0p"[..]));
        // PLAIN never on a clear stream; nothing usable; non-ASCII credentials.
        assert!(matches!(
            name(&["PLAIN"], None, false),
            Err(ConnectError::Auth(_))
        ));
        assert!(matches!(
            name(&["DIGEST-MD5"], None, true),
            Err(ConnectError::Auth(_))
        ));
        assert!(matches!(
            choose_mechanism(&l(&["SCRAM-SHA-1"]), "u", "pä", None, true),
            Err(ConnectError::Auth(_))
        ));
    }

    /// A scripted XMPP server on loopback for one connection: for each step, waits until the
    /// client has sent `until`, then writes the reply. Gives everything the client sent.
    async fn scripted_server(
        steps: Vec<(&'static str, String)>,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = String::new();
            let mut seen = 0;
            let mut buf = [0u8; 1024];
            for (until, reply) in steps {
                while !got[seen..].contains(until) {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return got,
                        Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                    }
                }
                seen = got[seen..].find(until).unwrap() + seen + until.len();
                s.write_all(reply.as_bytes()).await.unwrap();
            }
            // Until the client closes.
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            got
        });
        (addr, h)
    }

    fn server_header(features: &str) -> String {
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='{NS_STREAM}' from='d.test' id='s1' version='1.0'>\
             <stream:features>{features}</stream:features>"
        )
    }

    fn mechanisms(m: &[&str]) -> String {
        let m: String = m
            .iter()
            .map(|m| format!("<mechanism>{m}</mechanism>"))
            .collect();
        format!("<mechanisms xmlns='{NS_SASL}'>{m}</mechanisms>")
    }

    async fn login(addr: SocketAddr, require_tls: bool) -> Result<Connection, ConnectError> {
        let p = ConnectParams {
            jid: Jid::new("cpe@d.test").unwrap(),
            password: "sekrit".into(),
            resource: None,
            target: Target::Host("127.0.0.1".into(), addr.port()),
            require_tls,
            tls: tls_config(None).unwrap(),
            keepalive: Duration::from_secs(300),
        };
        tokio::time::timeout(Duration::from_secs(10), connect(&p))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr} (require_tls {require_tls}) hangs"))
    }

    #[tokio::test]
    async fn login_failures_map_onto_status() {
        // SASL failure: Error_AuthenticationFailure; the password is never sent in the clear.
        let (addr, h) = scripted_server(vec![
            (
                "<stream:stream",
                server_header(&mechanisms(&["SCRAM-SHA-1"])),
            ),
            (
                "</auth>",
                format!("<failure xmlns='{NS_SASL}'><not-authorized/></failure>"),
            ),
        ])
        .await;
        let e = login(addr, false).await.err().unwrap();
        assert_eq!(e.status(), Status::ErrorAuthenticationFailure, "{e}");
        assert!(e.to_string().contains("not-authorized"), "{e}");
        let sent = h.await.unwrap();
        assert!(sent.contains("mechanism='SCRAM-SHA-1'") && sent.contains(" to='d.test'"));
        assert!(!sent.contains("sekrit"));

        // Only PLAIN on a clear stream: refused before anything is sent.
        let (addr, h) = scripted_server(vec![(
            "<stream:stream",
            server_header(&mechanisms(&["PLAIN"])),
        )])
        .await;
        let e = login(addr, false).await.err().unwrap();
        assert_eq!(e.status(), Status::ErrorAuthenticationFailure, "{e}");
        assert!(!h.await.unwrap().contains("<auth"));

        // UseTLS without STARTTLS offered: Error_Misconfigured.
        let (addr, _h) = scripted_server(vec![(
            "<stream:stream",
            server_header(&mechanisms(&["PLAIN"])),
        )])
        .await;
        let e = login(addr, true).await.err().unwrap();
        assert_eq!(e.status(), Status::ErrorMisconfigured, "{e}");

        // A stream error, and malformed XML, during negotiation: Error.
        let (addr, _h) = scripted_server(vec![(
            "<stream:stream",
            format!(
                "<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAM}'>\
                 <stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
                 </stream:error></stream:stream>"
            ),
        )])
        .await;
        let e = login(addr, false).await.err().unwrap();
        assert_eq!(e.status(), Status::Error, "{e}");
        assert!(e.to_string().contains("host-unknown"), "{e}");
        let (addr, _h) = scripted_server(vec![(
            "<stream:stream",
            format!("<stream:stream xmlns:stream='{NS_STREAM}'><a></b>"),
        )])
        .await;
        let e = login(addr, false).await.err().unwrap();
        assert!(matches!(e, ConnectError::Protocol(_)), "{e}");
        // Nobody listening: ServerNotPresent.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let e = login(addr, false).await.err().unwrap();
        assert_eq!(e.status(), Status::ServerNotPresent, "{e}");
    }

    /// A nameserver on loopback: first a stray answer with another id, then the SRV records
    /// (or NXDOMAIN for `none.test`).
    async fn fake_nameserver() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let mut p = buf[..n].to_vec();
                let nx = p.windows(4).any(|w| w == b"none");
                p[2] = 0x81;
                p[3] = if nx { 0x83 } else { 0x80 };
                let mut stray = p.clone();
                stray[0] ^= 0xff;
                let _ = sock.send_to(&stray, from).await;
                if !nx {
                    p[7] = 2;
                    for (prio, port, host) in [(20u16, 5269u16, "b"), (10, 5223, "a")] {
                        p.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
                        p.extend_from_slice(&[0, 6 + 5]);
                        p.extend_from_slice(&prio.to_be_bytes());
                        p.extend_from_slice(&[0, 1]);
                        p.extend_from_slice(&port.to_be_bytes());
                        p.extend_from_slice(&[1, host.as_bytes()[0], 1, b't', 0]);
                    }
                }
                let _ = sock.send_to(&p, from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn srv_lookup_over_udp() {
        let ns = fake_nameserver().await;
        // A dead nameserver first (nothing listens on the port): the next one answers.
        let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let r = srv_lookup_via(&[dead_addr, ns], "example.test").await;
        assert_eq!(
            r,
            Ok(Some(vec![
                ("a.t".to_string(), 5223),
                ("b.t".to_string(), 5269)
            ]))
        );
        assert_eq!(srv_lookup_via(&[ns], "none.test").await, Ok(None));
    }

    #[test]
    fn stream_timeouts_stay_behind_the_policy() {
        // The policy declares the stream dead after 2 intervals; the connection's own timeout
        // (twice the stream timeout) comes after 3.
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
