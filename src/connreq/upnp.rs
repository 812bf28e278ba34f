//! UPnP IGD port forward for the HTTP connection-request listener: SSDP discovery of the
//! gateway, its WANIPConnection (or WANPPPConnection) control URL, GetExternalIPAddress and
//! AddPortMapping (renewed before the lease ends), DeletePortMapping at shutdown. Only used when
//! `[connreq] upnp = true`.
//!
//! HTTP goes through hyper (one connection per request, `Connection: close`, a time limit and
//! a bounded body), URLs are parsed and resolved with `http::Uri`, the description and the SOAP
//! answers are read with quick-xml (matching local names, whatever the namespace prefixes).
//!
//! The result is the public base URL `http://EXTERNAL-IP:PORT/` the engine publishes in
//! ConnectionRequestURL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use tokio::net::{TcpStream, UdpSocket};

const SSDP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// The WAN connection services, in order of preference.
const SERVICES: &[&str] = &[
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];
/// Lease asked for the mapping; renewed at half of it.
pub const LEASE: Duration = Duration::from_secs(3600);
/// Largest description or SOAP answer read from the gateway.
const MAX_DOC: usize = 64 * 1024;
/// Time for one HTTP exchange with the gateway (connect, request, whole answer).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of the XML read from the gateway (a real description has about a hundred elements
/// nested six deep).
const MAX_ELEMENTS: usize = 2048;
const MAX_DEPTH: usize = 32;

/// Why talking to the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum UpnpError {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the gateway at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the gateway failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the HTTP request: {0}")]
    Request(#[source] hyper::http::Error),
    #[error("the gateway answered HTTP {0}")]
    Status(StatusCode),
    #[error("no answer from the gateway at {addr} within {HTTP_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("the gateway's answer exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bad URL {url:?}: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("unsupported URL {url:?}: {reason}")]
    UnsupportedUrl { url: String, reason: &'static str },
    #[error("malformed XML from the gateway: {0}")]
    BadXml(#[from] quick_xml::Error),
    #[error("unexpected answer from the gateway: {0}")]
    BadAnswer(String),
    #[error("no UPnP gateway answered the SSDP search")]
    NoGateway,
    #[error("the gateway offers no WANIPConnection or WANPPPConnection service")]
    NoService,
    #[error("no IPv4 route to the gateway")]
    NoIpv4Route,
    #[error("{action} refused by the gateway: {}", fault_text(*.code, .description))]
    Fault {
        action: &'static str,
        /// The UPnP errorCode (718 ConflictInMappingEntry, 725 OnlyPermanentLeasesSupported, …);
        /// `None` when the fault carried none.
        code: Option<u32>,
        description: String,
    },
}

fn fault_text(code: Option<u32>, description: &str) -> String {
    match code {
        Some(c) => format!("UPnP error {c} {description}"),
        None => format!("SOAP fault {description}"),
    }
}

/// A gateway found by SSDP: where to send control requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// The absolute control URL of the service.
    pub control_url: Uri,
    /// The address `control_url` names.
    pub control: SocketAddr,
    pub service: String,
    /// Our address on the gateway's side (the InternalClient of mappings).
    pub local_ip: Ipv4Addr,
}

/// Finds the gateway by SSDP M-SEARCH (from any interface), then reads its description.
pub async fn discover(timeout: Duration) -> Result<Gateway, UpnpError> {
    let io = |context| move |source| UpnpError::Io { context, source };
    let sock = UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(io("SSDP socket"))?;
    let _ = sock.set_multicast_ttl_v4(2);
    let search = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    let mut sent = 0;
    loop {
        if sent < 3 {
            sock.send_to(search.as_bytes(), SSDP)
                .await
                .map_err(io("SSDP send"))?;
            sent += 1;
        }
        let wait = Duration::from_millis(700).min(deadline - tokio::time::Instant::now());
        match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _from))) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(loc) = header(&text, "location") {
                    return Gateway::from_location(&loc).await;
                }
            }
            Ok(Err(e)) => return Err(io("SSDP receive")(e)),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(UpnpError::NoGateway);
        }
    }
}

impl Gateway {
    /// The gateway whose device description is at `location` (the SSDP LOCATION).
    pub async fn from_location(location: &str) -> Result<Gateway, UpnpError> {
        let location = parse_url(location)?;
        let (status, desc) = exchange(&location, None).await?;
        if status != StatusCode::OK {
            return Err(UpnpError::Status(status));
        }
        let (service, control_url) = control_url(&location, utf8(&desc)?)?;
        let control = endpoint(&control_url)?;
        Ok(Gateway {
            control_url,
            control,
            service,
            local_ip: local_ipv4_towards(control)?,
        })
    }

    pub async fn external_ip(&self) -> Result<Ipv4Addr, UpnpError> {
        let out = self.call("GetExternalIPAddress", "").await?;
        let text = out
            .iter()
            .find(|(name, _)| name == "NewExternalIPAddress")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| bad_answer("GetExternalIPAddress gave no NewExternalIPAddress"))?;
        match text.parse::<Ipv4Addr>() {
            Ok(ip) if !ip.is_unspecified() => Ok(ip),
            Ok(_) => Err(bad_answer("the gateway has no external address")),
            Err(_) => Err(UpnpError::BadAnswer(format!(
                "external address {text:?} is not an IPv4 address"
            ))),
        }
    }

    /// Maps TCP `external` on the gateway to `internal` on this host.
    pub async fn add_port_mapping(&self, external: u16, internal: u16) -> Result<(), UpnpError> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort><NewProtocol>TCP</NewProtocol><NewInternalPort>{internal}</NewInternalPort><NewInternalClient>{}</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>cwmpd connection requests</NewPortMappingDescription><NewLeaseDuration>{}</NewLeaseDuration>",
            self.local_ip,
            LEASE.as_secs()
        );
        self.call("AddPortMapping", &args).await.map(|_| ())
    }

    /// Removes the mapping of `external` (graceful shutdown).
    pub async fn delete_port_mapping(&self, external: u16) -> Result<(), UpnpError> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort><NewProtocol>TCP</NewProtocol>"
        );
        self.call("DeletePortMapping", &args).await.map(|_| ())
    }

    /// One SOAP action; returns its out arguments (local name, text).
    async fn call(
        &self,
        action: &'static str,
        args: &str,
    ) -> Result<Vec<(String, String)>, UpnpError> {
        let body = format!(
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{svc}\">{args}</u:{action}></s:Body></s:Envelope>",
            svc = self.service
        );
        let soap_action = format!("\"{}#{action}\"", self.service);
        let (status, resp) = exchange(&self.control_url, Some((&soap_action, body))).await?;
        // A UPnP fault comes with HTTP 500; any other failure status is reported as such.
        let parsed = utf8(&resp).and_then(|doc| soap_response(action, doc));
        match (parsed, status) {
            (Err(fault @ UpnpError::Fault { .. }), _) => Err(fault),
            (r, StatusCode::OK) => r,
            (_, status) => Err(UpnpError::Status(status)),
        }
    }
}

fn bad_answer(what: &str) -> UpnpError {
    UpnpError::BadAnswer(what.to_string())
}

fn utf8(body: &[u8]) -> Result<&str, UpnpError> {
    std::str::from_utf8(body).map_err(|e| UpnpError::BadXml(e.into()))
}

/// Local IPv4 address used to reach `to` (a UDP connect sends nothing).
fn local_ipv4_towards(to: SocketAddr) -> Result<Ipv4Addr, UpnpError> {
    let io = |source| UpnpError::Io {
        context: "route to the gateway",
        source,
    };
    let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(io)?;
    s.connect(to).map_err(io)?;
    match s.local_addr().map_err(io)?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        _ => Err(UpnpError::NoIpv4Route),
    }
}

/// A header of an SSDP answer.
fn header(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// URLs
// ---------------------------------------------------------------------------------------------

fn parse_url(url: &str) -> Result<Uri, UpnpError> {
    url.parse::<Uri>().map_err(|e| UpnpError::BadUrl {
        url: url.to_string(),
        source: e.into(),
    })
}

/// The address an `http://IP[:port]/…` URL names. Gateways announce IP literals; a host name
/// is refused (resolving it would block the thread).
fn endpoint(url: &Uri) -> Result<SocketAddr, UpnpError> {
    let unsupported = |reason| UpnpError::UnsupportedUrl {
        url: url.to_string(),
        reason,
    };
    if !url
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("http"))
    {
        return Err(unsupported("not an http:// URL"));
    }
    let host = url.host().ok_or_else(|| unsupported("no host"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host
        .parse()
        .map_err(|_| unsupported("the host is not an IP address"))?;
    Ok(SocketAddr::new(ip, url.port_u16().unwrap_or(80)))
}

/// Resolves `reference` (a controlURL: absolute, network-path, absolute-path or relative)
/// against `base` (URLBase or the description's URL), as RFC 3986 §5.2 does.
fn resolve(base: &Uri, reference: &str) -> Result<Uri, UpnpError> {
    let bad = |source: hyper::http::Error| UpnpError::BadUrl {
        url: reference.to_string(),
        source,
    };
    let reference = reference.split('#').next().unwrap_or_default();
    let scheme = base.scheme_str().unwrap_or("http");
    if reference.starts_with("//") {
        return parse_url(&format!("{scheme}:{reference}"));
    }
    if !reference.starts_with('/') && !reference.starts_with('?') {
        // Absolute (has a scheme) or a relative path: `Uri` tells them apart.
        if let Ok(uri) = reference.parse::<Uri>()
            && uri.scheme().is_some()
        {
            return Ok(uri);
        }
    }
    let (path, query) = match reference.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (reference, None),
    };
    let base_path = match base.path() {
        "" => "/",
        p => p,
    };
    let merged = if path.starts_with('/') {
        path.to_string()
    } else if path.is_empty() {
        base_path.to_string()
    } else {
        // The base's directory, then the reference.
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{path}")
    };
    let mut target = remove_dot_segments(&merged);
    match (query, base.query()) {
        (Some(q), _) => target = format!("{target}?{q}"),
        (None, Some(q)) if path.is_empty() => target = format!("{target}?{q}"),
        _ => {}
    }
    let pq: PathAndQuery = target
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(e.into()))?;
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).map_err(|e| bad(e.into()))
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut r = String::with_capacity(path.len());
    for s in &out {
        r.push('/');
        r.push_str(s);
    }
    if r.is_empty() || path.ends_with("/.") || path.ends_with("/..") {
        r.push('/');
    }
    r
}

// ---------------------------------------------------------------------------------------------
// XML
// ---------------------------------------------------------------------------------------------

/// An element of a small document read into a flat tree (document order).
#[derive(Debug)]
struct Node {
    /// Local name (without the namespace prefix).
    name: String,
    parent: Option<usize>,
    /// The element's own character data, entities and CDATA resolved.
    text: String,
}

fn parse_tree(doc: &str) -> Result<Vec<Node>, UpnpError> {
    let mut reader = Reader::from_str(doc);
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    fn push_text(nodes: &mut [Node], stack: &[usize], text: &str) -> Result<(), UpnpError> {
        match stack.last() {
            Some(&i) => nodes[i].text.push_str(text),
            None if text.trim().is_empty() => {}
            None => return Err(bad_answer("text outside the root element")),
        }
        Ok(())
    }
    loop {
        let (start, empty) = match reader.read_event()? {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Text(t) => {
                push_text(&mut nodes, &stack, &t.xml10_content())?;
                continue;
            }
            Event::CData(c) => {
                push_text(&mut nodes, &stack, &c.xml10_content())?;
                continue;
            }
            Event::GeneralRef(r) => {
                let text = match r.resolve_char_ref()? {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&r)
                        .ok_or_else(|| {
                            let at = reader.buffer_position() as usize;
                            quick_xml::Error::Escape(
                                quick_xml::escape::EscapeError::UnrecognizedEntity(
                                    at..at,
                                    r.to_string(),
                                ),
                            )
                        })?
                        .to_string(),
                };
                push_text(&mut nodes, &stack, &text)?;
                continue;
            }
            Event::DocType(_) => return Err(bad_answer("DOCTYPE in the gateway's XML")),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => continue,
        };
        if stack.is_empty() && !nodes.is_empty() {
            return Err(bad_answer("more than one root element"));
        }
        if nodes.len() >= MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
            return Err(bad_answer("XML too large or nested too deeply"));
        }
        nodes.push(Node {
            name: start.local_name().as_ref().to_string(),
            parent: stack.last().copied(),
            text: String::new(),
        });
        if !empty {
            stack.push(nodes.len() - 1);
        }
    }
    if let Some(&open) = stack.last() {
        return Err(UpnpError::BadXml(
            quick_xml::errors::IllFormedError::MissingEndTag(nodes[open].name.clone()).into(),
        ));
    }
    if nodes.is_empty() {
        return Err(bad_answer("no XML element"));
    }
    Ok(nodes)
}

/// The text of the first child of `parent` named `name`.
fn child_text<'a>(nodes: &'a [Node], parent: usize, name: &str) -> Option<&'a str> {
    nodes
        .iter()
        .find(|n| n.parent == Some(parent) && n.name == name)
        .map(|n| n.text.trim())
}

/// The preferred WAN connection service of a device description and its control URL, resolved
/// against URLBase or, without one, `location` (where the description was read).
fn control_url(location: &Uri, desc: &str) -> Result<(String, Uri), UpnpError> {
    let nodes = parse_tree(desc)?;
    if nodes[0].name != "root" {
        return Err(bad_answer("not a UPnP device description"));
    }
    // (service element, serviceType, controlURL), in document order.
    let mut services: Vec<(usize, &str, &str)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.name == "service")
        .map(|(i, _)| (i, "", ""))
        .collect();
    for n in &nodes {
        let Some(p) = n.parent else { continue };
        if let Ok(k) = services.binary_search_by_key(&p, |s| s.0) {
            match n.name.as_str() {
                "serviceType" => services[k].1 = n.text.trim(),
                "controlURL" => services[k].2 = n.text.trim(),
                _ => {}
            }
        }
    }
    let (service, control) = SERVICES
        .iter()
        .find_map(|want| {
            services
                .iter()
                .find(|(_, ty, ctl)| ty == want && !ctl.is_empty())
                .map(|(_, ty, ctl)| (ty.to_string(), *ctl))
        })
        .ok_or(UpnpError::NoService)?;
    let base = match child_text(&nodes, 0, "URLBase") {
        Some(b) if !b.is_empty() => parse_url(b)?,
        _ => location.clone(),
    };
    Ok((service, resolve(&base, control)?))
}

/// The out arguments of a SOAP answer to `action` (local name, trimmed text), or its UPnP
/// fault as `UpnpError::Fault`.
fn soap_response(action: &'static str, doc: &str) -> Result<Vec<(String, String)>, UpnpError> {
    let nodes = parse_tree(doc)?;
    if nodes[0].name != "Envelope" {
        return Err(bad_answer("not a SOAP envelope"));
    }
    let body = nodes
        .iter()
        .position(|n| n.parent == Some(0) && n.name == "Body")
        .ok_or_else(|| bad_answer("no SOAP Body"))?;
    let answer = nodes
        .iter()
        .position(|n| n.parent == Some(body))
        .ok_or_else(|| bad_answer("empty SOAP Body"))?;
    if nodes[answer].name == "Fault" {
        // UPnPError sits in the fault's detail; faultstring is the fallback description.
        let inside = |i: usize| {
            let mut p = nodes[i].parent;
            while let Some(j) = p {
                if j == answer {
                    return true;
                }
                p = nodes[j].parent;
            }
            false
        };
        let find = |name: &str| {
            (answer + 1..nodes.len())
                .find(|&i| nodes[i].name == name && inside(i))
                .map(|i| nodes[i].text.trim())
        };
        let description = find("errorDescription")
            .or_else(|| find("faultstring"))
            .unwrap_or_default();
        return Err(UpnpError::Fault {
            action,
            code: find("errorCode").and_then(|c| c.parse().ok()),
            description: description.to_string(),
        });
    }
    Ok(nodes
        .iter()
        .filter(|n| n.parent == Some(answer))
        .map(|n| (n.name.clone(), n.text.trim().to_string()))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 exchange with `Connection: close`: a GET, or a SOAP POST when `soap` gives the
/// SOAPAction and the envelope. Returns the status and the body (at most `MAX_DOC` bytes).
async fn exchange(
    url: &Uri,
    soap: Option<(&str, String)>,
) -> Result<(StatusCode, Vec<u8>), UpnpError> {
    let addr = endpoint(url)?;
    let target = url.path_and_query().map_or("/", |p| p.as_str());
    let host = url.authority().map_or(String::new(), |a| a.to_string());
    let req = Request::builder()
        .uri(target)
        .header(header::HOST, host)
        .header(header::CONNECTION, "close");
    let req = match soap {
        Some((action, envelope)) => req
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "text/xml; charset=\"utf-8\"")
            .header("SOAPAction", action)
            .body(Full::new(Bytes::from(envelope))),
        None => req.method(Method::GET).body(Full::new(Bytes::new())),
    }
    .map_err(UpnpError::Request)?;
    let io = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| UpnpError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let answer = async move {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = read_capped(resp.into_body()).await?;
            Ok::<_, UpnpError>((status, body))
        };
        // The connection is driven here, not by a task of its own: a time-out drops it all.
        tokio::pin!(conn, answer);
        let mut open = true;
        loop {
            tokio::select! {
                r = &mut answer => return r,
                c = &mut conn, if open => {
                    open = false;
                    c?;
                }
            }
        }
    };
    tokio::time::timeout(HTTP_TIMEOUT, io)
        .await
        .map_err(|_| UpnpError::Timeout { addr })?
}

/// The whole body, refused beyond `MAX_DOC` bytes (at once when Content-Length says so).
async fn read_capped(mut body: hyper::body::Incoming) -> Result<Vec<u8>, UpnpError> {
    let too_large = UpnpError::TooLarge { limit: MAX_DOC };
    if body.size_hint().lower() > MAX_DOC as u64 {
        return Err(too_large);
    }
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > MAX_DOC {
                return Err(too_large);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Keeps a port mapping on the gateway for the HTTP CR listener's `internal` port, reporting
/// the public base URL to the engine; retries with back-off when no gateway answers. When
/// `shutdown` turns true, the mapping is removed from the gateway (bounded) and the task ends.
pub async fn keep_mapping(
    external: u16,
    internal: u16,
    engine: tokio::sync::mpsc::Sender<crate::command::Command>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(10);
    let mut published = String::new();
    let mut gateway: Option<Gateway> = None;
    loop {
        let attempt = async {
            let gw = discover(Duration::from_secs(3)).await?;
            let ip = gw.external_ip().await?;
            gw.add_port_mapping(external, internal).await?;
            Ok::<_, UpnpError>((format!("http://{ip}:{external}/"), gw))
        };
        let result = tokio::select! {
            r = attempt => Some(r),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let result = match result {
            Some(r) if !*shutdown.borrow() => r,
            r => {
                // A mapping made just as the shutdown came is removed too.
                if let Some(Ok((_, gw))) = r {
                    gateway = Some(gw);
                }
                if let Some(gw) = &gateway {
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        gw.delete_port_mapping(external),
                    )
                    .await
                    {
                        Ok(Ok(())) => tracing::info!("UPnP port mapping {external} removed"),
                        Ok(Err(e)) => tracing::warn!("UPnP port mapping not removed: {e}"),
                        Err(_) => tracing::warn!("UPnP port mapping not removed: no answer"),
                    }
                }
                return;
            }
        };
        match result {
            Ok((base, gw)) => {
                gateway = Some(gw);
                if base != published {
                    tracing::info!("UPnP port mapping in place: {base} -> local port {internal}");
                    published = base.clone();
                    if engine
                        .send(crate::command::Command::UpnpMapping(base))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                backoff = Duration::from_secs(10);
                tokio::select! {
                    _ = tokio::time::sleep(LEASE / 2) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
            Err(e) => {
                tracing::warn!("UPnP port mapping failed: {e}; next try in {backoff:?}");
                if !published.is_empty() {
                    published.clear();
                    let _ = engine
                        .send(crate::command::Command::UpnpMapping(String::new()))
                        .await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(600));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANIP1: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";
    const WANIP2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";
    const WANPPP1: &str = "urn:schemas-upnp-org:service:WANPPPConnection:1";

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    /// A description shaped like miniupnpd's: the WAN services two devices down.
    fn description(url_base: &str, services: &[(&str, &str)]) -> String {
        let services: String = services
            .iter()
            .map(|(ty, ctl)| {
                format!(
                    "<service>\n  <serviceType>{ty}</serviceType>\n  <serviceId>urn:upnp-org:serviceId:X</serviceId>\n  <controlURL>{ctl}</controlURL>\n  <eventSubURL>/evt</eventSubURL>\n  <SCPDURL>/scpd.xml</SCPDURL>\n</service>"
                )
            })
            .collect();
        format!(
            "<?xml version=\"1.0\"?>\n<root xmlns=\"urn:schemas-upnp-org:device-1-0\"><specVersion><major>1</major><minor>0</minor></specVersion>{url_base}<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/L3F</controlURL></service></serviceList><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType><serviceList>{services}</serviceList></device></deviceList></device></deviceList></device></root>"
        )
    }

    fn control(location: &str, desc: &str) -> Result<(String, String), UpnpError> {
        control_url(&uri(location), desc).map(|(s, u)| (s, u.to_string()))
    }

    #[test]
    fn absolute_path_control_url_resolves_against_the_location() {
        let desc = description("", &[(WANIP1, "/ctl/IPConn")]);
        assert_eq!(
            control("http://192.0.2.1:5000/rootDesc.xml", &desc).unwrap(),
            (WANIP1.into(), "http://192.0.2.1:5000/ctl/IPConn".into())
        );
    }

    #[test]
    fn relative_control_url_resolves_against_the_description_directory() {
        let desc = description("", &[(WANIP1, "ctl/IPConn")]);
        assert_eq!(
            control("http://192.0.2.1:5000/igd/desc.xml", &desc)
                .unwrap()
                .1,
            "http://192.0.2.1:5000/igd/ctl/IPConn"
        );
        let desc = description("", &[(WANIP1, "../ctl/./IPConn")]);
        assert_eq!(
            control("http://192.0.2.1:5000/igd/desc.xml", &desc)
                .unwrap()
                .1,
            "http://192.0.2.1:5000/ctl/IPConn"
        );
        // Without a port in the location, nor in the result.
        let desc = description("", &[(WANIP1, "ctl")]);
        assert_eq!(
            control("http://192.0.2.1/d.xml", &desc).unwrap().1,
            "http://192.0.2.1/ctl"
        );
    }

    #[test]
    fn url_base_takes_the_place_of_the_location() {
        let desc = description(
            "<URLBase>http://192.0.2.1:49152/</URLBase>",
            &[(WANIP1, "upnp/control/WANIPConn1")],
        );
        assert_eq!(
            control("http://192.0.2.1:5000/desc/root.xml", &desc)
                .unwrap()
                .1,
            "http://192.0.2.1:49152/upnp/control/WANIPConn1"
        );
        // A URLBase without a path, and one with surrounding whitespace.
        let desc = description(
            "<URLBase>\n http://192.0.2.2:80 \n</URLBase>",
            &[(WANIP1, "/ctl")],
        );
        assert_eq!(
            control("http://192.0.2.1:5000/root.xml", &desc).unwrap().1,
            "http://192.0.2.2:80/ctl"
        );
        // An empty URLBase is as none.
        let desc = description("<URLBase></URLBase>", &[(WANIP1, "ctl")]);
        assert_eq!(
            control("http://192.0.2.1:5000/root.xml", &desc).unwrap().1,
            "http://192.0.2.1:5000/ctl"
        );
        let desc = description("<URLBase>http://[bad</URLBase>", &[(WANIP1, "ctl")]);
        assert!(matches!(
            control("http://192.0.2.1:5000/root.xml", &desc),
            Err(UpnpError::BadUrl { .. })
        ));
    }

    #[test]
    fn absolute_control_url_is_kept() {
        let desc = description(
            "<URLBase>http://192.0.2.1:49152/</URLBase>",
            &[(WANIP1, "http://192.0.2.7:2869/upnp/control/WANIPConn1?x=1")],
        );
        assert_eq!(
            control("http://192.0.2.1:5000/root.xml", &desc).unwrap().1,
            "http://192.0.2.7:2869/upnp/control/WANIPConn1?x=1"
        );
    }

    #[test]
    fn the_preferred_wan_service_is_chosen() {
        let both = description("", &[(WANPPP1, "/ppp"), (WANIP1, "/ip1"), (WANIP2, "/ip2")]);
        assert_eq!(
            control("http://192.0.2.1/d.xml", &both).unwrap(),
            (WANIP2.into(), "http://192.0.2.1/ip2".into())
        );
        let ppp_first = description("", &[(WANPPP1, "/ppp"), (WANIP1, "/ip1")]);
        assert_eq!(
            control("http://192.0.2.1/d.xml", &ppp_first).unwrap(),
            (WANIP1.into(), "http://192.0.2.1/ip1".into())
        );
        let ppp = description("", &[(WANPPP1, "/ctl/PPPConn")]);
        assert_eq!(
            control("http://192.0.2.1/d.xml", &ppp).unwrap(),
            (WANPPP1.into(), "http://192.0.2.1/ctl/PPPConn".into())
        );
        // A service without a control URL does not count.
        let no_ctl = description("", &[(WANIP1, ""), (WANPPP1, "/ppp")]);
        assert_eq!(
            control("http://192.0.2.1/d.xml", &no_ctl).unwrap().0,
            WANPPP1
        );
        let none = description(
            "",
            &[(
                "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
                "/cmn",
            )],
        );
        assert!(matches!(
            control("http://192.0.2.1/d.xml", &none),
            Err(UpnpError::NoService)
        ));
    }

    #[test]
    fn namespace_prefixes_entities_and_cdata() {
        let desc = "<?xml version=\"1.0\" encoding=\"utf-8\"?><!-- a gateway --><d:root xmlns:d=\"urn:schemas-upnp-org:device-1-0\"><d:device><d:serviceList><d:service><d:serviceType><![CDATA[urn:schemas-upnp-org:service:WANIPConnection:1]]></d:serviceType><d:controlURL>/ctl?a=1&amp;b=&#50;</d:controlURL></d:service></d:serviceList></d:device></d:root>";
        assert_eq!(
            control("http://192.0.2.1:5000/rootDesc.xml", desc).unwrap(),
            (WANIP1.into(), "http://192.0.2.1:5000/ctl?a=1&b=2".into())
        );
    }

    #[test]
    fn garbage_descriptions_are_errors() {
        let loc = "http://192.0.2.1/d.xml";
        for (doc, what) in [
            ("", "empty"),
            ("not XML at all", "text"),
            ("HTTP/1.1 200 OK\r\n\r\n", "text"),
            ("<root><device><serviceList><service>", "unclosed"),
            ("<root><device></root>", "mismatched"),
            ("<root/><root/>", "two roots"),
            ("<root><a>&unknown;</a></root>", "entity"),
            ("<!DOCTYPE root [<!ENTITY x \"y\">]><root/>", "doctype"),
            ("<html><body>It works!</body></html>", "not a description"),
            ("<root><x a=\"1></root>", "attribute"),
            ("\u{0}\u{1}<<>>", "binary"),
        ] {
            let r = control(loc, doc);
            assert!(r.is_err(), "{what}: {r:?}");
        }
        assert!(matches!(
            control(loc, "<root><device></root>"),
            Err(UpnpError::BadXml(_))
        ));
        assert!(matches!(
            control(loc, "<root></root>"),
            Err(UpnpError::NoService)
        ));
        let deep = format!("<root>{}{}</root>", "<a>".repeat(40), "</a>".repeat(40));
        assert!(matches!(control(loc, &deep), Err(UpnpError::BadAnswer(_))));
        let wide = format!("<root>{}</root>", "<a/>".repeat(MAX_ELEMENTS));
        assert!(matches!(control(loc, &wide), Err(UpnpError::BadAnswer(_))));
    }

    #[test]
    fn soap_answers() {
        let resp = "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:GetExternalIPAddressResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewExternalIPAddress> 203.0.113.9 </NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>\r\n";
        assert_eq!(
            soap_response("GetExternalIPAddress", resp).unwrap(),
            vec![("NewExternalIPAddress".into(), "203.0.113.9".into())]
        );
        let empty = "<SOAP-ENV:Envelope xmlns:SOAP-ENV=\"http://schemas.xmlsoap.org/soap/envelope/\"><SOAP-ENV:Body><m:AddPortMappingResponse xmlns:m=\"urn:schemas-upnp-org:service:WANIPConnection:1\"/></SOAP-ENV:Body></SOAP-ENV:Envelope>";
        assert_eq!(soap_response("AddPortMapping", empty).unwrap(), vec![]);
        for bad in [
            "<Body/>",
            "<s:Envelope xmlns:s=\"x\"/>",
            "<s:Envelope xmlns:s=\"x\"><s:Body/></s:Envelope>",
            "<s:Envelope xmlns:s=\"x\"><s:Body><u:R>",
            "gateway error",
        ] {
            let r = soap_response("AddPortMapping", bad);
            assert!(
                matches!(r, Err(UpnpError::BadAnswer(_) | UpnpError::BadXml(_))),
                "{bad}: {r:?}"
            );
        }
    }

    #[test]
    fn soap_faults() {
        let fault = "<?xml version=\"1.0\"?>\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        let err = soap_response("AddPortMapping", fault).unwrap_err();
        assert!(
            matches!(&err, UpnpError::Fault { action: "AddPortMapping", code: Some(718), description } if description == "ConflictInMappingEntry"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "AddPortMapping refused by the gateway: UPnP error 718 ConflictInMappingEntry"
        );
        // Without the UPnPError detail: faultstring, no code.
        let bare = "<e:Envelope xmlns:e=\"http://schemas.xmlsoap.org/soap/envelope/\"><e:Body><e:Fault><faultcode>e:Server</faultcode><faultstring>Internal Error</faultstring></e:Fault></e:Body></e:Envelope>";
        let err = soap_response("DeletePortMapping", bare).unwrap_err();
        assert!(
            matches!(&err, UpnpError::Fault { code: None, description, .. } if description == "Internal Error"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "DeletePortMapping refused by the gateway: SOAP fault Internal Error"
        );
    }

    #[test]
    fn url_resolution() {
        let base = uri("http://192.0.2.1:5000/a/b/desc.xml?v=1");
        let r = |s: &str| resolve(&base, s).map(|u| u.to_string());
        assert_eq!(r("/ctl").unwrap(), "http://192.0.2.1:5000/ctl");
        assert_eq!(r("ctl").unwrap(), "http://192.0.2.1:5000/a/b/ctl");
        assert_eq!(r("./ctl").unwrap(), "http://192.0.2.1:5000/a/b/ctl");
        assert_eq!(r("../ctl").unwrap(), "http://192.0.2.1:5000/a/ctl");
        assert_eq!(r("../../../../ctl").unwrap(), "http://192.0.2.1:5000/ctl");
        assert_eq!(r("..").unwrap(), "http://192.0.2.1:5000/a/");
        assert_eq!(
            r("ctl?x=1#frag").unwrap(),
            "http://192.0.2.1:5000/a/b/ctl?x=1"
        );
        assert_eq!(r("?x=2").unwrap(), "http://192.0.2.1:5000/a/b/desc.xml?x=2");
        assert_eq!(r("").unwrap(), "http://192.0.2.1:5000/a/b/desc.xml?v=1");
        assert_eq!(r("//192.0.2.9:81/c").unwrap(), "http://192.0.2.9:81/c");
        assert_eq!(r("http://192.0.2.9/c").unwrap(), "http://192.0.2.9/c");
        assert!(matches!(r("/a b"), Err(UpnpError::BadUrl { .. })));
        assert!(matches!(r("ctl\u{7f}"), Err(UpnpError::BadUrl { .. })));

        assert_eq!(remove_dot_segments("/"), "/");
        assert_eq!(remove_dot_segments("/a/b/"), "/a/b/");
        assert_eq!(remove_dot_segments("/a/./b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/a/b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/.."), "/");
    }

    #[test]
    fn endpoints() {
        let e = |s: &str| endpoint(&uri(s));
        assert_eq!(
            e("http://192.0.2.1:5000/x").unwrap(),
            "192.0.2.1:5000".parse().unwrap()
        );
        assert_eq!(
            e("http://192.0.2.1/x").unwrap(),
            "192.0.2.1:80".parse().unwrap()
        );
        assert_eq!(
            e("HTTP://192.0.2.1/x").unwrap(),
            "192.0.2.1:80".parse().unwrap()
        );
        assert_eq!(
            e("http://[fe80::1]:5000/").unwrap(),
            "[fe80::1]:5000".parse().unwrap()
        );
        for bad in [
            "https://192.0.2.1/x",
            "http://gateway.lan:5000/x",
            "/x",
            "ftp://192.0.2.1/",
        ] {
            assert!(
                matches!(e(bad), Err(UpnpError::UnsupportedUrl { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_url("http://[::1"),
            Err(UpnpError::BadUrl { .. })
        ));
        assert!(matches!(parse_url(""), Err(UpnpError::BadUrl { .. })));
        assert!(
            parse_url("not a url")
                .and_then(|u| endpoint(&u))
                .unwrap_err()
                .to_string()
                .contains("not a url")
        );
    }

    #[test]
    fn ssdp_location_header() {
        assert_eq!(
            header(
                "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nLOCATION: http://192.0.2.1:5000/rootDesc.xml\r\n",
                "location"
            )
            .as_deref(),
            Some("http://192.0.2.1:5000/rootDesc.xml")
        );
        assert_eq!(header("HTTP/1.1 200 OK\r\n\r\n", "location"), None);
    }

    // -----------------------------------------------------------------------------------------
    // Against a gateway on loopback
    // -----------------------------------------------------------------------------------------

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A request as the test gateway received it.
    #[derive(Debug)]
    struct Seen {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    const GATEWAY_DESC: &str = "<?xml version=\"1.0\"?><root xmlns=\"urn:schemas-upnp-org:device-1-0\"><device><deviceList><device><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>ctl/IPConn</controlURL></service></serviceList></device></deviceList></device></root>";

    fn soap_ok(action: &str, args: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><u:{action}Response xmlns:u=\"{WANIP1}\">{args}</u:{action}Response></s:Body></s:Envelope>"
        )
    }

    /// Serves one request per connection, then closes (as miniupnpd does).
    async fn gateway(listener: TcpListener, seen: tokio::sync::mpsc::UnboundedSender<Seen>) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let head_end = loop {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "request cut short");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let mut request_line = lines.next().unwrap().split(' ');
            let method = request_line.next().unwrap().to_string();
            let target = request_line.next().unwrap().to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "body cut short");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8(buf[head_end..].to_vec()).unwrap();
            let seen_req = Seen {
                method,
                target,
                headers,
                body,
            };
            let action = seen_req
                .header("SOAPAction")
                .and_then(|a| a.trim_matches('"').split_once('#'))
                .map(|(_, a)| a.to_string());
            let (status, length, body) = match (seen_req.target.as_str(), action.as_deref()) {
                ("/igd/desc.xml", None) => ("200 OK", true, GATEWAY_DESC.to_string()),
                ("/igd/ctl/IPConn", Some("GetExternalIPAddress")) => (
                    "200 OK",
                    true,
                    soap_ok(
                        "GetExternalIPAddress",
                        "<NewExternalIPAddress>203.0.113.9</NewExternalIPAddress>",
                    ),
                ),
                ("/igd/ctl/IPConn", Some("AddPortMapping")) => {
                    ("200 OK", true, soap_ok("AddPortMapping", ""))
                }
                ("/igd/ctl/IPConn", Some("DeletePortMapping")) => (
                    "500 Internal Server Error",
                    true,
                    "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>714</errorCode><errorDescription>NoSuchEntryInArray</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>".to_string(),
                ),
                ("/big.xml", None) => ("200 OK", true, "x".repeat(MAX_DOC + 1)),
                // No Content-Length: the body ends when the connection closes.
                ("/stream.xml", None) => ("200 OK", false, "x".repeat(MAX_DOC + 1)),
                ("/exact.xml", None) => ("200 OK", false, "x".repeat(MAX_DOC)),
                _ => ("404 Not Found", true, String::new()),
            };
            seen.send(seen_req).unwrap();
            let mut resp =
                format!("HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nConnection: close\r\n");
            if length {
                resp.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            resp.push_str("\r\n");
            resp.push_str(&body);
            // The client may stop reading an oversized answer.
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    }

    #[tokio::test]
    async fn loopback_gateway() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(gateway(listener, tx));

        let gw = Gateway::from_location(&format!("http://127.0.0.1:{port}/igd/desc.xml"))
            .await
            .unwrap();
        assert_eq!(
            gw.control_url.to_string(),
            format!("http://127.0.0.1:{port}/igd/ctl/IPConn")
        );
        assert_eq!(gw.control, SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(gw.service, WANIP1);
        assert_eq!(gw.local_ip, Ipv4Addr::LOCALHOST);
        let get = seen.recv().await.unwrap();
        assert_eq!(
            (get.method.as_str(), get.target.as_str()),
            ("GET", "/igd/desc.xml")
        );
        assert_eq!(
            get.header("Host"),
            Some(format!("127.0.0.1:{port}").as_str())
        );
        assert_eq!(get.header("SOAPAction"), None);

        assert_eq!(
            gw.external_ip().await.unwrap(),
            Ipv4Addr::new(203, 0, 113, 9)
        );
        let ip = seen.recv().await.unwrap();
        assert_eq!(
            ip.header("SOAPAction"),
            Some(format!("\"{WANIP1}#GetExternalIPAddress\"").as_str())
        );

        gw.add_port_mapping(27547, 7547).await.unwrap();
        let add = seen.recv().await.unwrap();
        assert_eq!(
            (add.method.as_str(), add.target.as_str()),
            ("POST", "/igd/ctl/IPConn")
        );
        assert_eq!(
            add.header("SOAPAction"),
            Some(format!("\"{WANIP1}#AddPortMapping\"").as_str())
        );
        assert_eq!(
            add.header("Content-Type"),
            Some("text/xml; charset=\"utf-8\"")
        );
        assert_eq!(
            add.header("Host"),
            Some(format!("127.0.0.1:{port}").as_str())
        );
        assert_eq!(add.header("Connection"), Some("close"));
        let tree = parse_tree(&add.body).unwrap();
        assert_eq!(tree[0].name, "Envelope");
        let call = tree
            .iter()
            .position(|n| n.name == "AddPortMapping")
            .unwrap();
        let arg = |name| child_text(&tree, call, name);
        assert_eq!(arg("NewRemoteHost"), Some(""));
        assert_eq!(arg("NewExternalPort"), Some("27547"));
        assert_eq!(arg("NewProtocol"), Some("TCP"));
        assert_eq!(arg("NewInternalPort"), Some("7547"));
        assert_eq!(arg("NewInternalClient"), Some("127.0.0.1"));
        assert_eq!(arg("NewEnabled"), Some("1"));
        assert_eq!(arg("NewLeaseDuration"), Some("3600"));

        // The fault comes with HTTP 500.
        let err = gw.delete_port_mapping(27547).await.unwrap_err();
        assert!(
            matches!(
                err,
                UpnpError::Fault {
                    action: "DeletePortMapping",
                    code: Some(714),
                    ..
                }
            ),
            "{err:?}"
        );
        let del = seen.recv().await.unwrap();
        let tree = parse_tree(&del.body).unwrap();
        let call = tree
            .iter()
            .position(|n| n.name == "DeletePortMapping")
            .unwrap();
        assert_eq!(child_text(&tree, call, "NewExternalPort"), Some("27547"));

        // Bounded answers: refused by Content-Length, or while streaming; the limit itself is fine.
        let url = |path: &str| uri(&format!("http://127.0.0.1:{port}{path}"));
        for path in ["/big.xml", "/stream.xml"] {
            let r = exchange(&url(path), None).await;
            assert!(
                matches!(r, Err(UpnpError::TooLarge { limit: MAX_DOC })),
                "{path}: {r:?}"
            );
        }
        let (status, body) = exchange(&url("/exact.xml"), None).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::OK, MAX_DOC));
        let r = Gateway::from_location(&format!("http://127.0.0.1:{port}/nothing.xml")).await;
        assert!(
            matches!(r, Err(UpnpError::Status(StatusCode::NOT_FOUND))),
            "{r:?}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn unreachable_and_silent_gateways() {
        // Nobody listens: the connection is refused.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let r = Gateway::from_location(&format!("http://127.0.0.1:{port}/d.xml")).await;
        assert!(matches!(r, Err(UpnpError::Connect { .. })), "{r:?}");

        // It accepts but never answers: the exchange times out.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let start = std::time::Instant::now();
        let r = Gateway::from_location(&format!("http://127.0.0.1:{port}/d.xml")).await;
        assert!(matches!(r, Err(UpnpError::Timeout { .. })), "{r:?}");
        assert!(start.elapsed() >= HTTP_TIMEOUT);
        hold.abort();
    }
}
