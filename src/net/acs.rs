//! The agent's HTTP client to the ACS: one [`AcsClient`] per CWMP session.
//!
//! * one keep-alive HTTP/1.1 connection for the whole session (plain TCP or
//!   TLS via tokio-rustls), re-opened transparently when the server closed it
//!   (SPEC-NOTES e.1: GenieACS keys its session and Digest nonce by socket);
//! * a per-session cookie jar (`name=value` pairs, `Path` honoured loosely), keyed by
//!   origin: a cookie goes back only to the scheme, host and port that set it;
//! * HTTP authentication: Digest (retried on the same connection, `nc`
//!   counting up for later requests on the same nonce, re-challenge on
//!   `stale=true`) or Basic when it is the only scheme offered — over `https`, or over
//!   plain `http` only with [`AcsClient::set_allow_basic_over_http`];
//! * redirects 301/302/303/307/308 (at most 5 per POST, the body is re-sent
//!   unchanged); the new URL holds for the rest of the session;
//! * compressed responses: `Content-Encoding` gzip, x-gzip and deflate (zlib or raw)
//!   are decoded as the body streams in, whether or not the request was compressed;
//!   `Accept-Encoding: gzip` is sent when requests are gzipped (see [`AcsClient::set_gzip`]);
//! * limits: response bodies ≤ [`MAX_BODY`] as received and again once decoded (checked
//!   while decoding, so a compression bomb stops at the limit), every [`AcsClient::post`]
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
pub const MAX_BODY: usize = 4 * 1024 * 1024;
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
    /// The response's `Content-Encoding` is unknown, or its compressed body is
    /// corrupt or truncated.
    Encoding(String),
    /// The response body decompresses to more than [`MAX_BODY`] bytes (a
    /// compression bomb); decoding stopped at the limit.
    DecodedTooLarge,
    /// The ACS asks for Basic authentication over plain `http://`, which would
    /// send the password in clear, and `[acs] allow_basic_over_http` is off.
    BasicOverHttp,
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
            AcsError::Encoding(e) => write!(f, "cannot decode the ACS response: {e}"),
            AcsError::DecodedTooLarge => write!(
                f,
                "ACS response body exceeds {MAX_BODY} bytes once decompressed: refused"
            ),
            AcsError::BasicOverHttp => f.write_str(
                "the ACS offers only Basic authentication over plain http, which would send \
                 the password in clear: refused (set allow_basic_over_http = true in the \
                 [acs] section of the configuration to allow it)",
            ),
        }
    }
}

impl std::error::Error for AcsError {}

impl From<super::url::UrlError> for AcsError {
    fn from(e: super::url::UrlError) -> Self {
        AcsError::BadUrl(e.0)
    }
}

pub(crate) use super::url::Url;

impl Url {
    fn origin(&self) -> Origin {
        Origin {
            https: self.https,
            host: self.host.to_ascii_lowercase(),
            port: self.port,
        }
    }

    /// The path without the query (for cookie matching).
    fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("/")
    }
}

/// The origin of a URL (RFC 6454): scheme, host (ASCII lower case) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

/// A cookie of the session's jar. It belongs to the origin that set it and is sent to that
/// origin only (never to another host, port or scheme, e.g. after a redirect).
#[derive(Debug, Clone)]
struct Cookie {
    origin: Origin,
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
    /// Answer a Basic-only challenge over plain `http://` (`[acs] allow_basic_over_http`).
    allow_basic_over_http: bool,
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
            allow_basic_over_http: false,
        };
        if c.url.https {
            c.ensure_tls_config()?;
        }
        Ok(c)
    }

    /// Sends request bodies gzip-compressed (`Content-Encoding: gzip`) from now on, and
    /// `Accept-Encoding: gzip` on every request so that the ACS may compress its answers.
    ///
    /// Without it no `Accept-Encoding` is sent: the field states the client's preference
    /// (RFC 9110 §12.5.3), and with ManagementServer.HTTPCompression `Disabled` the operator
    /// asked for no compression, so the agent does not invite it. A request without the
    /// field still allows the server any coding (§12.5.3), and some ACSs answer in the
    /// request's coding regardless, so responses are decoded in every case.
    pub fn set_gzip(&mut self, on: bool) {
        self.gzip = on;
    }

    /// Allows Basic authentication over plain `http://` (`[acs] allow_basic_over_http`).
    /// Off by default: the password would cross the network in clear, and an on-path
    /// attacker can force Basic by stripping the Digest challenge. Basic over `https://`
    /// and Digest are always allowed.
    pub fn set_allow_basic_over_http(&mut self, on: bool) {
        self.allow_basic_over_http = on;
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
                        if !self.basic_allowed() {
                            tracing::warn!(
                                url = %self.url_string,
                                "the ACS offers only Basic authentication over plain http: \
                                 refused, the password would go in clear \
                                 ([acs] allow_basic_over_http = false)"
                            );
                            return Err(AcsError::BasicOverHttp);
                        }
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

    /// Whether Basic credentials may be sent to the current URL.
    fn basic_allowed(&self) -> bool {
        self.url.https || self.allow_basic_over_http
    }

    /// The Authorization header for the next request, advancing `nc`.
    fn authorization_header(&mut self) -> Option<String> {
        match &mut self.auth {
            Auth::None => None,
            // Never in clear without the configuration's consent (the 401 that follows
            // fails the POST with BasicOverHttp).
            Auth::Basic if !(self.url.https || self.allow_basic_over_http) => None,
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

    /// The Cookie header for the current URL: the cookies its origin set, Path matching.
    fn cookie_header(&self) -> Option<String> {
        let origin = self.url.origin();
        let path = self.url.path_only();
        let list: Vec<String> = self
            .cookies
            .iter()
            .filter(|c| c.origin == origin)
            .filter(|c| c.path.as_deref().is_none_or(|p| path.starts_with(p)))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!list.is_empty()).then(|| list.join("; "))
    }

    /// Stores a `Set-Cookie` of a response from the current URL, under its origin.
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
        let origin = self.url.origin();
        self.cookies
            .retain(|c| !(c.origin == origin && c.name == name && c.path == path));
        if !delete {
            self.cookies.push(Cookie {
                origin,
                name,
                value,
                path,
            });
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
        if self.gzip {
            // Answers in gzip are welcome (and decoded whatever this says).
            b = b.header(header::ACCEPT_ENCODING, "gzip");
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
        let length = text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
        if length.is_some_and(|len| len > MAX_BODY as u64) {
            self.conn = None;
            return Err(AcsError::BodyTooLarge);
        }
        let status = parts.status.as_u16();
        // The body of a redirect or a 401 is never looked at: it is not decoded.
        let used = !matches!(status, 301 | 302 | 303 | 307 | 308 | 401);
        let coding = Coding::from_field(
            h.get_all(header::CONTENT_ENCODING)
                .iter()
                .map(|v| v.to_str().unwrap_or("(not ASCII)")),
        );
        let (mut decoder, coding_error) = match coding {
            Ok(Coding::Identity) => (None, None),
            Ok(c) if used => (Some((c, BodyDecoder::new(c, MAX_BODY as u64))), None),
            Ok(_) => (None, None),
            Err(e) => (None, used.then_some(e)),
        };
        // A body of known length is received into one buffer of that size (at most MAX_BODY):
        // no doubling copies of a large request.
        let mut buf = match (length, &decoder) {
            (Some(len), None) if used => BytesMut::with_capacity(len as usize),
            _ => BytesMut::new(),
        };
        let mut received = 0usize;
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| AcsError::Http(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            // The limit holds for the body as received and, below, once decoded.
            received += data.len();
            if received > MAX_BODY {
                self.conn = None;
                return Err(AcsError::BodyTooLarge);
            }
            if let Some(e) = &coding_error {
                self.conn = None;
                return Err(AcsError::Encoding(e.clone()));
            }
            match &mut decoder {
                Some((c, d)) => {
                    if let Err(e) = d.write(&data) {
                        self.conn = None;
                        return Err(decode_error(*c, e));
                    }
                }
                None => buf.extend_from_slice(&data),
            }
        }
        let body = match decoder {
            Some((c, d)) => d.finish().map(Bytes::from).map_err(|e| {
                self.conn = None;
                decode_error(c, e)
            })?,
            None => buf.freeze(),
        };
        if connection_close {
            self.conn = None;
        }
        Ok(RawResponse {
            status,
            body,
            retry_after,
            connection_close,
            location,
            www_authenticate,
        })
    }
}

fn decode_error(c: Coding, e: DecodeError) -> AcsError {
    match e {
        DecodeError::TooLarge => AcsError::DecodedTooLarge,
        DecodeError::Corrupt(why) => AcsError::Encoding(format!("{} body: {why}", c.name())),
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

/// Standard base64 (HTTP Basic credentials).
pub(crate) fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
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

// ---------------------------------------------------------------------------
// Response content codings
// ---------------------------------------------------------------------------

/// The content coding of a response body (RFC 9110 §8.4.1), as far as the clients decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Identity,
    /// `gzip` and its alias `x-gzip` (RFC 1952), several members allowed.
    Gzip,
    /// `deflate`: a zlib stream (RFC 1950) as RFC 9110 defines it, or the raw deflate
    /// (RFC 1951) that some servers send instead; told apart by the zlib header.
    Deflate,
}

impl Coding {
    /// The coding named by the `Content-Encoding` field lines of a response. `identity` and
    /// empty members are ignored; an unknown coding, or more than one coding stacked, is an
    /// error naming the field value.
    pub(crate) fn from_field<'a>(
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Coding, String> {
        let mut found = Vec::new();
        for token in lines.into_iter().flat_map(|l| l.split(',')) {
            let t = token.trim();
            if t.is_empty() || t.eq_ignore_ascii_case("identity") {
                continue;
            }
            found.push(t);
        }
        match found.as_slice() {
            [] => Ok(Coding::Identity),
            [one] if one.eq_ignore_ascii_case("gzip") || one.eq_ignore_ascii_case("x-gzip") => {
                Ok(Coding::Gzip)
            }
            [one] if one.eq_ignore_ascii_case("deflate") => Ok(Coding::Deflate),
            [one] => Err(format!(
                "unsupported Content-Encoding {one:?} (only gzip, x-gzip and deflate)"
            )),
            more => Err(format!(
                "unsupported Content-Encoding {:?} (more than one coding)",
                more.join(", ")
            )),
        }
    }

    /// The token for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The decoded body would exceed the limit; decoding stopped there.
    TooLarge,
    /// Not a valid (or a truncated) stream of the coding.
    Corrupt(String),
}

/// Receives decoded bytes and refuses any write that would take the total past `limit`.
/// The buffer grows geometrically but never past what the limit can still need, so a
/// compression bomb never makes it allocate more than `limit` bytes.
#[derive(Debug)]
struct CappedSink {
    buf: Vec<u8>,
    total: u64,
    limit: u64,
    over: bool,
}

impl std::io::Write for CappedSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let room = self.limit - self.total;
        if data.len() as u64 > room {
            self.over = true;
            return Err(std::io::Error::other("decoded body over the limit"));
        }
        let need = self.buf.len() + data.len();
        if need > self.buf.capacity() {
            // The most the buffer can ever hold: what it holds plus the room left.
            let most = self
                .buf
                .len()
                .saturating_add(usize::try_from(room).unwrap_or(usize::MAX));
            let want = need
                .max(self.buf.capacity().saturating_mul(2))
                .max(16 * 1024)
                .min(most);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        self.total += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum DecoderState {
    Identity(CappedSink),
    Gzip(Box<flate2::write::MultiGzDecoder<CappedSink>>),
    /// `deflate` before its first two bytes tell zlib from raw deflate.
    Sniff(Vec<u8>, CappedSink),
    Zlib(Box<flate2::write::ZlibDecoder<CappedSink>>),
    Raw(Box<flate2::write::DeflateDecoder<CappedSink>>),
    /// After a failure or `finish`.
    Gone,
}

/// Streaming decoder of a response body: compressed bytes go in as they arrive, decoded
/// bytes collect in [`pending`](Self::pending) (the caller may drain them as it goes), and
/// the decoded size is capped while decoding. The fixed overhead is the inflate state and a
/// 32 KiB staging buffer, whatever the body.
pub(crate) struct BodyDecoder {
    state: DecoderState,
    fed: bool,
    /// Stays empty: what [`pending`](Self::pending) shows after a failure.
    spare: Vec<u8>,
}

impl BodyDecoder {
    pub(crate) fn new(coding: Coding, limit: u64) -> BodyDecoder {
        let sink = CappedSink {
            buf: Vec::new(),
            total: 0,
            limit,
            over: false,
        };
        let state = match coding {
            Coding::Identity => DecoderState::Identity(sink),
            Coding::Gzip => DecoderState::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink))),
            Coding::Deflate => DecoderState::Sniff(Vec::with_capacity(2), sink),
        };
        BodyDecoder {
            state,
            fed: false,
            spare: Vec::new(),
        }
    }

    fn sink(&self) -> Option<&CappedSink> {
        match &self.state {
            DecoderState::Identity(s) | DecoderState::Sniff(_, s) => Some(s),
            DecoderState::Gzip(d) => Some(d.get_ref()),
            DecoderState::Zlib(d) => Some(d.get_ref()),
            DecoderState::Raw(d) => Some(d.get_ref()),
            DecoderState::Gone => None,
        }
    }

    /// Decoded bytes produced so far and not yet drained (the caller may clear it).
    pub(crate) fn pending(&mut self) -> &mut Vec<u8> {
        match &mut self.state {
            DecoderState::Identity(s) | DecoderState::Sniff(_, s) => &mut s.buf,
            DecoderState::Gzip(d) => &mut d.get_mut().buf,
            DecoderState::Zlib(d) => &mut d.get_mut().buf,
            DecoderState::Raw(d) => &mut d.get_mut().buf,
            DecoderState::Gone => &mut self.spare,
        }
    }

    /// Decoded bytes produced so far, drained or not.
    pub(crate) fn total_out(&self) -> u64 {
        self.sink().map_or(0, |s| s.total)
    }

    fn fail(&mut self, e: &std::io::Error) -> DecodeError {
        let over = self.sink().is_some_and(|s| s.over);
        self.state = DecoderState::Gone;
        if over {
            DecodeError::TooLarge
        } else {
            DecodeError::Corrupt(e.to_string())
        }
    }

    /// Feeds the next compressed bytes (all of them).
    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<(), DecodeError> {
        while !data.is_empty() {
            let n = self.write_some(data)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Feeds a part of `data` and returns how many bytes were consumed (at least one when
    /// `data` is not empty). One call adds at most a few tens of KiB to
    /// [`pending`](Self::pending), so a caller that drains it after each call holds little
    /// decoded data at a time, however compressible the input.
    pub(crate) fn write_some(&mut self, data: &[u8]) -> Result<usize, DecodeError> {
        use std::io::Write;
        if data.is_empty() {
            return Ok(0);
        }
        self.fed = true;
        if let DecoderState::Sniff(head, _) = &mut self.state {
            let take = (2 - head.len()).min(data.len());
            head.extend_from_slice(&data[..take]);
            if head.len() == 2 {
                self.resolve_deflate()?;
            }
            return Ok(take);
        }
        let r = match &mut self.state {
            DecoderState::Identity(s) => s.write(data),
            DecoderState::Gzip(d) => d.write(data),
            DecoderState::Zlib(d) => d.write(data),
            DecoderState::Raw(d) => d.write(data),
            DecoderState::Sniff(..) | DecoderState::Gone => {
                return Err(DecodeError::Corrupt("decoder already failed".into()));
            }
        };
        match r {
            Ok(0) => {
                self.state = DecoderState::Gone;
                Err(DecodeError::Corrupt(
                    "data after the end of the compressed stream".into(),
                ))
            }
            Ok(n) => Ok(n),
            Err(e) => Err(self.fail(&e)),
        }
    }

    /// Replaces the `Sniff` state by a zlib or a raw inflater and feeds it the bytes seen.
    fn resolve_deflate(&mut self) -> Result<(), DecodeError> {
        let DecoderState::Sniff(head, sink) =
            std::mem::replace(&mut self.state, DecoderState::Gone)
        else {
            return Ok(());
        };
        // RFC 1950 §2.2: CM = 8, CINFO ≤ 7 (window ≤ 32 KiB), and CMF·256 + FLG divisible
        // by 31. A raw deflate stream practically never starts like that: its first block
        // header would need non-zero padding bits.
        let zlib = head.len() == 2
            && head[0] & 0x0f == 8
            && head[0] >> 4 <= 7
            && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0;
        self.state = if zlib {
            DecoderState::Zlib(Box::new(flate2::write::ZlibDecoder::new(sink)))
        } else {
            DecoderState::Raw(Box::new(flate2::write::DeflateDecoder::new(sink)))
        };
        self.write(&head)
    }

    /// Ends the body: checks that the compressed stream is complete (gzip: CRC and length
    /// of every member) and returns the decoded bytes not yet drained. A body of no bytes at
    /// all is empty whatever its coding.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, DecodeError> {
        if !self.fed {
            return Ok(Vec::new());
        }
        if matches!(self.state, DecoderState::Sniff(..)) {
            self.resolve_deflate()?;
        }
        let r = match &mut self.state {
            DecoderState::Identity(_) => Ok(()),
            DecoderState::Gzip(d) => d.try_finish(),
            DecoderState::Zlib(d) => d.try_finish(),
            DecoderState::Raw(d) => d.try_finish(),
            DecoderState::Sniff(..) | DecoderState::Gone => {
                return Err(DecodeError::Corrupt("decoder already failed".into()));
            }
        };
        if let Err(e) = r {
            // try_finish flushes the last decoded bytes into the sink, which may overflow it.
            return Err(match self.fail(&e) {
                DecodeError::Corrupt(_) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    DecodeError::Corrupt("truncated compressed stream".into())
                }
                other => other,
            });
        }
        let sink = match std::mem::replace(&mut self.state, DecoderState::Gone) {
            DecoderState::Identity(s) => Ok(s),
            DecoderState::Gzip(d) => d.finish(),
            DecoderState::Zlib(d) => d.finish(),
            DecoderState::Raw(d) => d.finish(),
            DecoderState::Sniff(..) | DecoderState::Gone => unreachable!("checked above"),
        };
        sink.map(|s| s.buf)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn compress(coding: Coding, raw_deflate: bool, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let level = flate2::Compression::best();
        let mut out = match (coding, raw_deflate) {
            (Coding::Gzip, _) => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            (Coding::Deflate, false) => {
                let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            (Coding::Deflate, true) => {
                let mut e = flate2::write::DeflateEncoder::new(Vec::new(), level);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            (Coding::Identity, _) => data.to_vec(),
        };
        out.shrink_to_fit();
        out
    }

    fn decode_in(
        coding: Coding,
        limit: u64,
        input: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut d = BodyDecoder::new(coding, limit);
        for p in input.chunks(piece) {
            d.write(p)?;
        }
        d.finish()
    }

    #[test]
    fn content_encoding_field() {
        let c = |v: &[&str]| Coding::from_field(v.iter().copied());
        assert_eq!(c(&[]), Ok(Coding::Identity));
        assert_eq!(c(&["identity"]), Ok(Coding::Identity));
        assert_eq!(c(&[" GZIP "]), Ok(Coding::Gzip));
        assert_eq!(c(&["x-gzip"]), Ok(Coding::Gzip));
        assert_eq!(c(&["Deflate"]), Ok(Coding::Deflate));
        assert_eq!(c(&["identity, gzip", ""]), Ok(Coding::Gzip));
        assert!(c(&["br"]).unwrap_err().contains("\"br\""));
        assert!(c(&["compress"]).is_err());
        assert!(c(&["gzip", "deflate"]).is_err());
        assert!(c(&["gzip, gzip"]).is_err());
    }

    #[test]
    fn decodes_every_coding_in_any_pieces() {
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("<p{}>{i}</p>", i % 7).into_bytes())
            .collect();
        for (coding, raw) in [
            (Coding::Gzip, false),
            (Coding::Deflate, false),
            (Coding::Deflate, true),
            (Coding::Identity, false),
        ] {
            let enc = compress(coding, raw, &text);
            for piece in [1, 2, 3, 7, 4096, enc.len()] {
                let out = decode_in(coding, 1 << 30, &enc, piece)
                    .unwrap_or_else(|e| panic!("{coding:?} raw={raw} piece={piece}: {e:?}"));
                assert!(out == text, "{coding:?} raw={raw} piece={piece}");
            }
        }
        // Two gzip members are one body.
        let mut two = compress(Coding::Gzip, false, b"hello ");
        two.extend(compress(Coding::Gzip, false, b"world"));
        assert_eq!(
            decode_in(Coding::Gzip, 100, &two, 5).unwrap(),
            b"hello world"
        );
        // No bytes at all: an empty body, whatever the coding.
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Identity] {
            assert_eq!(BodyDecoder::new(coding, 10).finish().unwrap(), b"");
        }
    }

    #[test]
    fn decoder_limit_is_exact() {
        let data = vec![b'a'; 100_000];
        for (coding, raw) in [
            (Coding::Gzip, false),
            (Coding::Deflate, false),
            (Coding::Deflate, true),
            (Coding::Identity, false),
        ] {
            let enc = compress(coding, raw, &data);
            assert_eq!(
                decode_in(coding, 100_000, &enc, 1000).unwrap().len(),
                100_000
            );
            assert_eq!(
                decode_in(coding, 99_999, &enc, 1000),
                Err(DecodeError::TooLarge),
                "{coding:?} raw={raw}"
            );
            // Also when the last bytes only come out at the end of the stream.
            assert_eq!(
                decode_in(coding, 99_999, &enc, enc.len()),
                Err(DecodeError::TooLarge),
                "{coding:?} raw={raw}"
            );
        }
    }

    #[test]
    fn compression_bomb_stops_at_the_limit_without_allocating_past_it() {
        // 256 MiB of zeros in about 256 KiB of gzip, fed as it would arrive from the network.
        let bomb = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..256 {
                e.write_all(&zeros).unwrap();
            }
            e.finish().unwrap()
        };
        assert!(bomb.len() < 1 << 20);
        let limit = 1u64 << 20;
        let mut d = BodyDecoder::new(Coding::Gzip, limit);
        let mut err = None;
        for p in bomb.chunks(16 * 1024) {
            if let Err(e) = d.write(p) {
                err = Some(e);
                break;
            }
            assert!(d.pending().capacity() as u64 <= limit);
        }
        assert_eq!(err, Some(DecodeError::TooLarge));
        // Whatever it decoded before stopping stayed within the limit, and it stays failed.
        assert!(d.total_out() <= limit);
        assert!(d.pending().capacity() as u64 <= limit);
        assert!(d.write(b"more").is_err());
        assert!(d.finish().is_err());

        // Drained as it goes (downloads): the held output stays small per call.
        let mut d = BodyDecoder::new(Coding::Gzip, 1 << 30);
        let (mut most, mut drained) = (0, 0);
        for p in bomb.chunks(16 * 1024) {
            let mut rest = p;
            while !rest.is_empty() {
                let n = d.write_some(rest).unwrap();
                rest = &rest[n..];
                most = most.max(d.pending().len());
                drained += d.pending().len();
                d.pending().clear();
            }
        }
        let tail = d.finish().unwrap();
        assert!(most <= 128 * 1024, "held {most} bytes at once");
        assert!(tail.len() <= 128 * 1024, "{}", tail.len());
        assert_eq!(drained + tail.len(), 256 << 20);
    }

    #[test]
    fn broken_streams_are_refused() {
        let gz = compress(Coding::Gzip, false, b"<Envelope/> <Envelope/> <Envelope/>");
        // Truncated anywhere (header, data, trailer).
        for cut in [1, 5, 10, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
            assert!(
                matches!(
                    decode_in(Coding::Gzip, 1000, &gz[..cut], 3),
                    Err(DecodeError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
        // A wrong CRC.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 8] ^= 1;
        assert!(matches!(
            decode_in(Coding::Gzip, 1000, &bad, 4),
            Err(DecodeError::Corrupt(_))
        ));
        // Trailing junk, plain text labelled gzip or deflate.
        let mut junk = gz.clone();
        junk.extend_from_slice(b"xx");
        assert!(decode_in(Coding::Gzip, 1000, &junk, 100).is_err());
        assert!(decode_in(Coding::Gzip, 1000, b"<Envelope/>", 100).is_err());
        assert!(decode_in(Coding::Deflate, 1000, b"<Envelope/>", 100).is_err());
        let z = compress(Coding::Deflate, false, b"abc");
        assert!(decode_in(Coding::Deflate, 1000, &z[..z.len() - 2], 1).is_err());
        let mut zj = z.clone();
        zj.push(0);
        assert!(decode_in(Coding::Deflate, 1000, &zj, 1).is_err());
        // A single byte of deflate.
        assert!(decode_in(Coding::Deflate, 1000, &[0x78], 1).is_err());
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
        // Another scheme, host or port is another origin, with a jar of its own.
        for other in ["https://h/acs", "http://H2/acs", "http://h:8080/acs"] {
            c.url = Url::parse(other).unwrap();
            assert_eq!(c.cookie_header(), None, "{other}");
            c.store_cookie("session=elsewhere; Path=/acs");
        }
        // Host names compare case-insensitively; the other origins' cookies stay away.
        c.url = Url::parse("http://H/acs/x").unwrap();
        assert_eq!(c.cookie_header().unwrap(), "session=def");
        c.url = Url::parse("http://h:8080/acs").unwrap();
        assert_eq!(c.cookie_header().unwrap(), "session=elsewhere");
    }
}
