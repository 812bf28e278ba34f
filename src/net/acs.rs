//! The agent's HTTP client to the ACS: one [`AcsClient`] per CWMP session.
//!
//! * one keep-alive HTTP/1.1 connection for the whole session (plain TCP or
//!   TLS via tokio-rustls), re-opened transparently when the server closed it
//!   (SPEC-NOTES e.1: GenieACS keys its session and Digest nonce by socket);
//! * a per-session cookie jar (`name=value` pairs, `Path` honoured loosely);
//! * HTTP authentication: Digest (retried on the same connection, `nc`
//!   counting up for later requests on the same nonce, re-challenge on
//!   `stale=true`) or Basic when it is the only scheme offered;
//! * redirects 301/302/303/307/308 (at most 5 per POST, the body is re-sent
//!   unchanged); the new URL holds for the rest of the session;
//! * limits: response bodies ≤ [`MAX_BODY`], every [`AcsClient::post`]
//!   bounded by the configured timeout.
//!
//! The connection driver is started with `tokio::spawn`; its future is
//! `Send`, so this works on a `current_thread` runtime with or without a
//! `LocalSet`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::connreq::digest::{
    DigestChallenge, DigestClient, offers_basic, select_digest_challenge,
};

/// Largest response body accepted, in bytes.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most redirects followed by one [`AcsClient::post`].
pub const MAX_REDIRECTS: usize = 5;
/// Most authentication rounds (challenge, stale re-challenge) in one POST.
const MAX_AUTH_ROUNDS: usize = 3;

/// TLS settings for `https` ACS URLs.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PEM file with the trusted CA certificates; `None` = webpki-roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (needs `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate (testing only; logs a loud warning).
    pub insecure_skip_verify: bool,
}

/// The ACS's answer to one POST (after redirects and authentication).
#[derive(Debug, Clone)]
pub struct AcsResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body (empty for 204 / an empty 200).
    pub body: Bytes,
    /// `Retry-After` in seconds (delta-seconds form only).
    pub retry_after: Option<u64>,
    /// The server sent `Connection: close`.
    pub connection_close: bool,
}

/// Why a POST failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcsError {
    /// TCP connect (or DNS resolution) failed.
    Connect(String),
    /// TLS configuration or handshake failed (e.g. untrusted certificate).
    Tls(String),
    /// The request did not complete within the timeout.
    Timeout,
    /// HTTP protocol error, or the connection broke mid-request.
    Http(String),
    /// The ACS refused the credentials (or offered no usable scheme).
    AuthFailed,
    /// More than [`MAX_REDIRECTS`] redirects.
    TooManyRedirects,
    /// The response body exceeds [`MAX_BODY`].
    BodyTooLarge,
    /// The URL (or a redirect `Location`) cannot be used.
    BadUrl(String),
}

impl fmt::Display for AcsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcsError::Connect(e) => write!(f, "cannot connect to the ACS: {e}"),
            AcsError::Tls(e) => write!(f, "TLS error: {e}"),
            AcsError::Timeout => f.write_str("ACS request timed out"),
            AcsError::Http(e) => write!(f, "HTTP error: {e}"),
            AcsError::AuthFailed => f.write_str("ACS authentication failed"),
            AcsError::TooManyRedirects => f.write_str("too many redirects"),
            AcsError::BodyTooLarge => f.write_str("ACS response body too large"),
            AcsError::BadUrl(e) => write!(f, "bad ACS URL: {e}"),
        }
    }
}

impl std::error::Error for AcsError {}

/// A parsed `http`/`https` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub(crate) https: bool,
    /// Host without brackets (IPv6 literals bare).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, always starting with `/`.
    pub(crate) path: String,
}

impl Url {
    pub(crate) fn parse(s: &str) -> Result<Url, AcsError> {
        let bad = |why: &str| AcsError::BadUrl(format!("{why}: {s}"));
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let https = if scheme.eq_ignore_ascii_case("http") {
            false
        } else if scheme.eq_ignore_ascii_case("https") {
            true
        } else {
            return Err(bad("scheme must be http or https"));
        };
        let rest = rest.split('#').next().unwrap_or("");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let authority = authority.rsplit('@').next().unwrap_or("");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("bad IPv6 literal"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let bad_byte =
            |b: u8| b.is_ascii_whitespace() || b.is_ascii_control() || b"/?#@[]".contains(&b);
        let is_v6 = authority.starts_with('[');
        if host.is_empty() || (!is_v6 && (host.contains(':') || host.bytes().any(bad_byte))) {
            return Err(bad("bad host"));
        }
        let port = match port {
            None | Some("") => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("bad path"));
        }
        Ok(Url {
            https,
            host,
            port,
            path,
        })
    }

    fn default_port(&self) -> u16 {
        if self.https { 443 } else { 80 }
    }

    /// `host[:port]` for the Host header and for display.
    pub(crate) fn authority(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }

    pub(crate) fn to_url_string(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority(),
            self.path
        )
    }

    pub(crate) fn same_origin(&self, o: &Url) -> bool {
        self.https == o.https && self.host.eq_ignore_ascii_case(&o.host) && self.port == o.port
    }

    /// Resolves a `Location` value against this URL.
    pub(crate) fn join(&self, location: &str) -> Result<Url, AcsError> {
        let loc = location.trim();
        if loc.contains("://") {
            return Url::parse(loc);
        }
        let mut u = self.clone();
        if let Some(rest) = loc.strip_prefix("//") {
            let scheme = if self.https { "https" } else { "http" };
            return Url::parse(&format!("{scheme}://{rest}"));
        }
        let loc = loc.split('#').next().unwrap_or("");
        u.path = if loc.starts_with('/') {
            loc.to_string()
        } else if loc.starts_with('?') {
            let base = self.path.split('?').next().unwrap_or("/");
            format!("{base}{loc}")
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{loc}")
        };
        if u.path.is_empty() {
            u.path = "/".into();
        }
        Ok(u)
    }

    /// The path without the query (for cookie matching).
    fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("/")
    }
}

#[derive(Debug, Clone)]
struct Cookie {
    name: String,
    value: String,
    path: Option<String>,
}

/// The authentication the session has settled on.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic,
    Digest { ch: DigestChallenge, nc: u32 },
}

/// HTTP client for one CWMP session with the ACS.
pub struct AcsClient {
    url: Url,
    url_string: String,
    username: String,
    password: String,
    tls: TlsSettings,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    warned_insecure: bool,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
    connections: usize,
    cookies: Vec<Cookie>,
    auth: Auth,
    cnonce_counter: u64,
    /// Compress non-empty request bodies with gzip (ManagementServer.HTTPCompression=GZIP).
    gzip: bool,
}

impl fmt::Debug for AcsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password is deliberately left out.
        f.debug_struct("AcsClient")
            .field("url", &self.url_string)
            .field("username", &self.username)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl AcsClient {
    /// Creates the client for one session. Nothing is connected yet; for an
    /// `https` URL the TLS configuration (CA file, client certificate) is
    /// loaded now so that errors surface early.
    pub fn new(
        url: &str,
        username: &str,
        password: &str,
        tls: &TlsSettings,
        timeout: Duration,
    ) -> Result<AcsClient, AcsError> {
        let url = Url::parse(url)?;
        let mut c = AcsClient {
            url_string: url.to_url_string(),
            url,
            username: username.to_string(),
            password: password.to_string(),
            tls: tls.clone(),
            tls_config: None,
            warned_insecure: false,
            timeout,
            conn: None,
            connections: 0,
            cookies: Vec::new(),
            auth: Auth::None,
            cnonce_counter: 0,
            gzip: false,
        };
        if c.url.https {
            c.ensure_tls_config()?;
        }
        Ok(c)
    }

    /// Sends request bodies gzip-compressed (`Content-Encoding: gzip`) from now on.
    pub fn set_gzip(&mut self, on: bool) {
        self.gzip = on;
    }

    /// The current URL (after redirects).
    pub fn url(&self) -> &str {
        &self.url_string
    }

    /// How many TCP connections this session has opened so far.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// POSTs `body` (empty = the CPE's empty POST) and returns the ACS's
    /// answer, following redirects and answering authentication challenges.
    /// Statuses other than 401 and the redirects are returned as they are.
    pub async fn post(&mut self, body: Vec<u8>) -> Result<AcsResponse, AcsError> {
        let body = if self.gzip && !body.is_empty() {
            Bytes::from(gzip(&body))
        } else {
            Bytes::from(body)
        };
        match tokio::time::timeout(self.timeout, self.post_inner(body)).await {
            Ok(r) => {
                if r.is_err() {
                    self.conn = None;
                }
                r
            }
            Err(_) => {
                self.conn = None;
                Err(AcsError::Timeout)
            }
        }
    }

    async fn post_inner(&mut self, body: Bytes) -> Result<AcsResponse, AcsError> {
        let mut redirects = 0usize;
        let mut auth_rounds = 0usize;
        // Whether the credentials of the last request came from a challenge
        // received during this POST (as opposed to pre-emptive ones).
        let mut fresh_credentials = false;
        loop {
            let authorization = self.authorization_header();
            let sent_auth = authorization.is_some();
            let resp = self.exchange(&body, authorization).await?;
            let status = resp.status;
            match status {
                301 | 302 | 303 | 307 | 308 => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(AcsError::TooManyRedirects);
                    }
                    let loc = resp.location.ok_or_else(|| {
                        AcsError::Http(format!("redirect {status} without Location"))
                    })?;
                    let new = self.url.join(&loc)?;
                    tracing::info!(from = %self.url_string, to = %new.to_url_string(), status, "ACS redirect");
                    if !new.same_origin(&self.url) {
                        self.conn = None;
                        self.auth = Auth::None;
                    }
                    if new.https {
                        self.url = new;
                        self.ensure_tls_config()?;
                    } else {
                        self.url = new;
                    }
                    self.url_string = self.url.to_url_string();
                    fresh_credentials = false;
                }
                401 => {
                    let www = resp.www_authenticate.unwrap_or_default();
                    let digest = select_digest_challenge(&www).ok();
                    let stale = digest.as_ref().is_some_and(|d| d.stale);
                    if sent_auth && fresh_credentials && !stale {
                        return Err(AcsError::AuthFailed);
                    }
                    auth_rounds += 1;
                    if auth_rounds > MAX_AUTH_ROUNDS {
                        return Err(AcsError::AuthFailed);
                    }
                    if let Some(ch) = digest {
                        self.auth = Auth::Digest { ch, nc: 0 };
                    } else if offers_basic(&www) {
                        if sent_auth && matches!(self.auth, Auth::Basic) {
                            return Err(AcsError::AuthFailed);
                        }
                        self.auth = Auth::Basic;
                    } else {
                        tracing::warn!("ACS answered 401 without a usable challenge");
                        return Err(AcsError::AuthFailed);
                    }
                    fresh_credentials = true;
                }
                _ => {
                    return Ok(AcsResponse {
                        status,
                        body: resp.body,
                        retry_after: resp.retry_after,
                        connection_close: resp.connection_close,
                    });
                }
            }
        }
    }

    /// The Authorization header for the next request, advancing `nc`.
    fn authorization_header(&mut self) -> Option<String> {
        match &mut self.auth {
            Auth::None => None,
            Auth::Basic => Some(format!(
                "Basic {}",
                base64_encode(format!("{}:{}", self.username, self.password).as_bytes())
            )),
            Auth::Digest { ch, nc } => {
                *nc += 1;
                self.cnonce_counter += 1;
                let cnonce = make_cnonce(self.cnonce_counter);
                match DigestClient::respond_to(
                    ch,
                    "POST",
                    &self.url.path,
                    &self.username,
                    &self.password,
                    &cnonce,
                    *nc,
                ) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot answer the ACS's Digest challenge");
                        None
                    }
                }
            }
        }
    }

    fn cookie_header(&self) -> Option<String> {
        let path = self.url.path_only();
        let list: Vec<String> = self
            .cookies
            .iter()
            .filter(|c| c.path.as_deref().is_none_or(|p| path.starts_with(p)))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!list.is_empty()).then(|| list.join("; "))
    }

    fn store_cookie(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let name = name.trim().to_string();
        let value = value.trim().trim_matches('"').to_string();
        if name.is_empty() {
            return;
        }
        let mut path = None;
        let mut delete = false;
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            let k = k.trim();
            if k.eq_ignore_ascii_case("path") {
                let v = v.trim();
                if v.starts_with('/') {
                    path = Some(v.to_string());
                }
            } else if k.eq_ignore_ascii_case("max-age") {
                delete = v.trim().parse::<i64>().is_ok_and(|n| n <= 0);
            }
        }
        self.cookies.retain(|c| !(c.name == name && c.path == path));
        if !delete {
            self.cookies.push(Cookie { name, value, path });
        }
    }

    fn ensure_tls_config(&mut self) -> Result<(), AcsError> {
        if self.tls_config.is_none() {
            self.tls_config = Some(Arc::new(build_tls_config(&self.tls)?));
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, AcsError> {
        let addr = (self.url.host.as_str(), self.url.port);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| AcsError::Connect(format!("{}: {e}", self.url.authority())))?;
        let _ = tcp.set_nodelay(true);
        self.connections += 1;
        if self.url.https {
            self.ensure_tls_config()?;
            if self.tls.insecure_skip_verify && !self.warned_insecure {
                self.warned_insecure = true;
                tracing::warn!(
                    url = %self.url_string,
                    "TLS CERTIFICATE VERIFICATION IS DISABLED (insecure_skip_verify): \
                     the ACS is NOT authenticated"
                );
            }
            let cfg = self.tls_config.clone().expect("tls config");
            let name = ServerName::try_from(self.url.host.clone())
                .map_err(|e| AcsError::BadUrl(format!("bad TLS server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| AcsError::Tls(e.to_string()))?;
            handshake(tls).await
        } else {
            handshake(tcp).await
        }
    }

    /// One HTTP exchange on the session's connection (opened if needed).
    async fn exchange(
        &mut self,
        body: &Bytes,
        authorization: Option<String>,
    ) -> Result<RawResponse, AcsError> {
        let mut retried = false;
        loop {
            let fresh = match &self.conn {
                Some(c) if !c.is_closed() => false,
                _ => {
                    self.conn = Some(self.connect().await?);
                    true
                }
            };
            let req = self.build_request(body, authorization.as_deref())?;
            let sender = self.conn.as_mut().expect("connection");
            if sender.ready().await.is_err() {
                // Closed while idle: reconnect.
                self.conn = None;
                if fresh || retried {
                    return Err(AcsError::Http("connection closed".into()));
                }
                retried = true;
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return self.read_response(resp).await,
                Err(e) => {
                    self.conn = None;
                    // Retry on a new connection only when the request was
                    // never written, or when a reused connection broke before
                    // any response (the server closed an idle connection).
                    let unsent = e.message().is_some();
                    let closed_idle =
                        !fresh && (e.error().is_incomplete_message() || e.error().is_canceled());
                    if (unsent || closed_idle) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(AcsError::Http(e.error().to_string()));
                }
            }
        }
    }

    fn build_request(
        &self,
        body: &Bytes,
        authorization: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, AcsError> {
        let mut b = Request::post(self.url.path.as_str())
            .header(header::HOST, self.url.authority())
            .header(
                header::USER_AGENT,
                concat!("cwmpd/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::CONTENT_LENGTH, body.len());
        if !body.is_empty() {
            b = b
                .header(header::CONTENT_TYPE, "text/xml; charset=\"utf-8\"")
                .header("SOAPAction", "");
            if self.gzip {
                b = b.header(header::CONTENT_ENCODING, "gzip");
            }
        }
        if let Some(c) = self.cookie_header() {
            b = b.header(header::COOKIE, c);
        }
        if let Some(a) = authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Full::new(body.clone()))
            .map_err(|e| AcsError::BadUrl(e.to_string()))
    }

    async fn read_response(
        &mut self,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<RawResponse, AcsError> {
        let (parts, mut incoming) = resp.into_parts();
        let h = &parts.headers;
        for v in h.get_all(header::SET_COOKIE) {
            if let Ok(s) = v.to_str() {
                self.store_cookie(s);
            }
        }
        let connection_close = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"));
        let text =
            |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let www_authenticate = {
            let all: Vec<&str> = h
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!all.is_empty()).then(|| all.join(", "))
        };
        let location = text(header::LOCATION);
        let retry_after = text(header::RETRY_AFTER).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(len) = text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok())
            && len > MAX_BODY as u64
        {
            self.conn = None;
            return Err(AcsError::BodyTooLarge);
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| AcsError::Http(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_BODY {
                    self.conn = None;
                    return Err(AcsError::BodyTooLarge);
                }
                buf.extend_from_slice(&data);
            }
        }
        if connection_close {
            self.conn = None;
        }
        Ok(RawResponse {
            status: parts.status.as_u16(),
            body: buf.freeze(),
            retry_after,
            connection_close,
            location,
            www_authenticate,
        })
    }
}

struct RawResponse {
    status: u16,
    body: Bytes,
    retry_after: Option<u64>,
    connection_close: bool,
    location: Option<String>,
    www_authenticate: Option<String>,
}

pub(crate) async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, AcsError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| AcsError::Http(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "ACS connection ended with an error");
        }
    });
    Ok(sender)
}

pub(crate) fn make_cnonce(counter: u64) -> String {
    let r: [u8; 8] = crate::util::codec::random_bytes();
    // The counter keeps cnonces distinct even if the generator repeated itself.
    crate::util::codec::to_hex(&(u64::from_be_bytes(r) ^ counter).to_be_bytes())
}

/// Standard base64 with padding.
pub(crate) fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Standard base64 decoding (padding optional); `None` on bad input.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn build_tls_config(s: &TlsSettings) -> Result<rustls::ClientConfig, AcsError> {
    let tls_err = |what: &str, e: &dyn fmt::Display| AcsError::Tls(format!("{what}: {e}"));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", &e))?;
    let builder = if s.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &s.ca_file {
            Some(path) => {
                let iter = CertificateDer::pem_file_iter(path)
                    .map_err(|e| tls_err(&format!("CA file {}", path.display()), &e))?;
                for cert in iter {
                    let cert =
                        cert.map_err(|e| tls_err(&format!("CA file {}", path.display()), &e))?;
                    roots
                        .add(cert)
                        .map_err(|e| tls_err(&format!("CA file {}", path.display()), &e))?;
                }
                if roots.is_empty() {
                    return Err(AcsError::Tls(format!(
                        "CA file {} holds no certificate",
                        path.display()
                    )));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    };
    match (&s.client_cert, &s.client_key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| tls_err(&format!("client certificate {}", cert.display()), &e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_err(&format!("client key {}", key.display()), &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err("client certificate", &e))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(AcsError::Tls(
            "client_cert and client_key must be given together".into(),
        )),
    }
}

/// Accepts any server certificate (still checks handshake signatures).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// gzip of a request body (level 6: SOAP text shrinks about tenfold).
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::new(6),
    );
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let u = Url::parse("http://acs.example.com/acs?x=1").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "acs.example.com", 80, "/acs?x=1")
        );
        let u = Url::parse("HTTPS://[::1]:8443").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "::1", 8443, "/")
        );
        assert_eq!(u.authority(), "[::1]:8443");
        assert_eq!(u.to_url_string(), "https://[::1]:8443/");
        let u = Url::parse("https://user:pw@10.0.0.1/a/b").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 443));
        assert_eq!(u.authority(), "10.0.0.1");
        for bad in [
            "ftp://x/",
            "http://",
            "http://host:0/",
            "http://host:99999/",
            "http://[zz]/",
            "acs.example.com/acs",
            "http://a b/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_join() {
        let u = Url::parse("http://h:81/a/b?q").unwrap();
        assert_eq!(u.join("/x").unwrap().to_url_string(), "http://h:81/x");
        assert_eq!(u.join("c?d").unwrap().to_url_string(), "http://h:81/a/c?d");
        assert_eq!(u.join("?z").unwrap().to_url_string(), "http://h:81/a/b?z");
        assert_eq!(u.join("//o:5/p").unwrap().to_url_string(), "http://o:5/p");
        assert_eq!(
            u.join("https://[::1]/y").unwrap().to_url_string(),
            "https://[::1]/y"
        );
    }

    #[test]
    fn base64_round_trip() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), raw.as_bytes());
        }
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn cookie_jar() {
        let mut c = AcsClient::new(
            "http://h/acs/x",
            "u",
            "p",
            &TlsSettings::default(),
            Duration::from_secs(1),
        )
        .unwrap();
        c.store_cookie("session=abc; Path=/acs; HttpOnly");
        c.store_cookie("other=\"q\"");
        c.store_cookie("nope=1; Path=/elsewhere");
        assert_eq!(c.cookie_header().unwrap(), "session=abc; other=q");
        c.store_cookie("session=def; Path=/acs");
        assert_eq!(c.cookie_header().unwrap(), "other=q; session=def");
        c.store_cookie("other=; Max-Age=0");
        assert_eq!(c.cookie_header().unwrap(), "session=def");
    }
}
