//! File transfers for Download/Upload: an HTTP(S) GET streamed to disk with size checks, and an
//! HTTP(S) PUT of a file, both with Basic/Digest authentication and redirects.
//!
//! Reuses the URL parser, TLS configuration, connection set-up and response decoder
//! (`Content-Encoding`) of the ACS client ([`crate::net::acs`]); every request uses a fresh
//! connection (transfers are rare and long).
//! Failures come back as a [`Fail`] carrying the CWMP fault code for the TransferComplete
//! (SPEC-NOTES e.11): 9012 authentication, 9015 cannot contact the server, 9016 cannot access
//! the file, 9017 incomplete/oversized download, 9010/9011 anything else.
//!
//! The password is never logged.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::connreq::digest::{
    DigestChallenge, DigestClient, offers_basic, select_digest_challenge,
};
use crate::net::acs::{
    BodyDecoder, Coding, DecodeError, MAX_REDIRECTS, TlsSettings, Url, base64_encode,
    build_tls_config, handshake, make_cnonce,
};

/// A failed transfer: the CWMP fault code and a human-readable reason (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: u32,
    pub msg: String,
}

impl Fail {
    fn new(code: u32, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.msg, self.code)
    }
}

/// Where and how to transfer.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub username: String,
    pub password: String,
    pub tls: TlsSettings,
    /// Bound on connecting and on waiting for the response head / each body chunk.
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Whether the URL's scheme can be transferred (http or https).
pub fn supported_scheme(url: &str) -> bool {
    let l = url.trim().to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

enum Auth {
    None,
    Basic,
    Digest(DigestChallenge, u32),
}

async fn connect(
    url: &Url,
    tls: &mut Option<Arc<rustls::ClientConfig>>,
    settings: &TlsSettings,
    timeout: Duration,
    code: u32,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Fail> {
    let addr = (url.host.as_str(), url.port);
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(Fail::new(9015, format!("{}: {e}", url.authority()))),
        Err(_) => {
            return Err(Fail::new(
                9015,
                format!("{}: connect timeout", url.authority()),
            ));
        }
    };
    let _ = tcp.set_nodelay(true);
    let fail = |e: String| Fail::new(code, e);
    if url.https {
        if tls.is_none() {
            let cfg = build_tls_config(settings).map_err(|e| Fail::new(9015, e.to_string()))?;
            *tls = Some(Arc::new(cfg));
        }
        let cfg = tls.clone().expect("tls config");
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| fail(format!("bad TLS server name: {e}")))?;
        let s = tokio::time::timeout(
            timeout,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .map_err(|_| Fail::new(9015, "TLS handshake timeout"))?
        .map_err(|e| Fail::new(9015, format!("TLS: {e}")))?;
        handshake(s).await.map_err(|e| fail(e.to_string()))
    } else {
        handshake(tcp).await.map_err(|e| fail(e.to_string()))
    }
}

/// Sends `method` with `body`, following redirects and answering one authentication challenge.
/// Returns the final response (any status but 401 and the redirects).
async fn send(
    method: Method,
    t: &Target,
    body: Bytes,
    code: u32,
    extra: &[(header::HeaderName, String)],
) -> Result<hyper::Response<hyper::body::Incoming>, Fail> {
    let mut url = Url::parse(&t.url).map_err(|e| Fail::new(9013, e.to_string()))?;
    let mut tls = None;
    let mut auth = Auth::None;
    let mut redirects = 0usize;
    let mut counter = 0u64;
    loop {
        let authorization = match &mut auth {
            Auth::None => None,
            Auth::Basic => Some(format!(
                "Basic {}",
                base64_encode(format!("{}:{}", t.username, t.password).as_bytes())
            )),
            Auth::Digest(ch, nc) => {
                *nc += 1;
                counter += 1;
                DigestClient::respond_to(
                    ch,
                    method.as_str(),
                    &url.path,
                    &t.username,
                    &t.password,
                    &make_cnonce(counter),
                    *nc,
                )
                .ok()
            }
        };
        let sent_auth = authorization.is_some();
        let mut sender = connect(&url, &mut tls, &t.tls, t.idle_timeout, code).await?;
        let mut b = Request::builder()
            .method(method.clone())
            .uri(url.path.as_str())
            .header(header::HOST, url.authority())
            .header(
                header::USER_AGENT,
                concat!("cwmpd/", env!("CARGO_PKG_VERSION")),
            );
        if method == Method::PUT || method == Method::POST {
            b = b.header(header::CONTENT_LENGTH, body.len());
            if !extra.iter().any(|(n, _)| *n == header::CONTENT_TYPE) {
                b = b.header(header::CONTENT_TYPE, "application/octet-stream");
            }
        }
        for (n, v) in extra {
            b = b.header(n, v.as_str());
        }
        if let Some(a) = authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        let req = b
            .body(Full::new(body.clone()))
            .map_err(|e| Fail::new(code, e.to_string()))?;
        let resp = tokio::time::timeout(t.idle_timeout, sender.send_request(req))
            .await
            .map_err(|_| Fail::new(code, "no response from the file server"))?
            .map_err(|e| Fail::new(code, format!("HTTP: {e}")))?;
        let status = resp.status().as_u16();
        match status {
            301 | 302 | 303 | 307 | 308 => {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(Fail::new(code, "too many redirects"));
                }
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Fail::new(code, format!("redirect {status} without Location"))
                    })?;
                let new = url.join(loc).map_err(|e| Fail::new(9013, e.to_string()))?;
                tracing::info!(to = %new.to_url_string(), status, "file transfer redirect");
                if !new.same_origin(&url) {
                    auth = Auth::None;
                }
                url = new;
            }
            401 => {
                if sent_auth {
                    return Err(Fail::new(9012, "the file server refused the credentials"));
                }
                let www: Vec<&str> = resp
                    .headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let www = www.join(", ");
                if let Ok(ch) = select_digest_challenge(&www) {
                    auth = Auth::Digest(ch, 0);
                } else if offers_basic(&www) {
                    auth = Auth::Basic;
                } else {
                    return Err(Fail::new(9012, "401 without a usable challenge"));
                }
            }
            _ => return Ok(resp),
        }
    }
}

/// Downloads `t.url` into `dest` (created 0600, replaced). Refuses (fault 9017) a body longer
/// than `max` bytes, a Content-Length or body that differs from `file_size` when it is non-zero,
/// and a body shorter than its Content-Length (a truncated transfer). A body with a
/// `Content-Encoding` (gzip, x-gzip, deflate) is decoded as it arrives: the file is the decoded
/// content, `max` and `file_size` apply to it (checked while decoding), a corrupt or truncated
/// encoding is fault 9017 and an unknown one 9010. On failure `dest` is removed. Returns the
/// number of bytes written.
pub async fn download(t: &Target, dest: &Path, max: u64, file_size: u64) -> Result<u64, Fail> {
    let r = download_inner(t, dest, max, file_size).await;
    if r.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    r
}

async fn download_inner(t: &Target, dest: &Path, max: u64, file_size: u64) -> Result<u64, Fail> {
    let resp = send(Method::GET, t, Bytes::new(), 9010, &[]).await?;
    let status = resp.status().as_u16();
    match status {
        200 => {}
        403 | 404 | 410 => return Err(Fail::new(9016, format!("file server answered {status}"))),
        _ => return Err(Fail::new(9010, format!("file server answered {status}"))),
    }
    let content_length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // A Content-Encoding is undone: the file is the decoded content, and max_download and
    // FileSize apply to it (Content-Length then counts the encoded bytes).
    let coding = Coding::from_field(
        resp.headers()
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap_or("(not ASCII)")),
    )
    .map_err(|e| Fail::new(9010, format!("file server: {e}")))?;
    let encoded = coding != Coding::Identity;
    if let Some(cl) = content_length
        && !encoded
    {
        if cl > max {
            return Err(Fail::new(
                9017,
                format!("file of {cl} bytes exceeds max_download ({max})"),
            ));
        }
        if file_size != 0 && cl != file_size {
            return Err(Fail::new(
                9017,
                format!("Content-Length {cl} differs from FileSize {file_size}"),
            ));
        }
    }
    // An encoded body may be a little larger than its content (deflate's stored blocks),
    // never much: this bound also ends an endless stream that decodes to nothing.
    let max_received = if encoded {
        max.saturating_add(max / 4096).saturating_add(4096)
    } else {
        max
    };
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dest)
        .await
        .map_err(|e| Fail::new(9010, format!("cannot create {}: {e}", dest.display())))?;
    let too_large = || Fail::new(9017, format!("download exceeds max_download ({max} bytes)"));
    let decode_fail = |e: DecodeError| match e {
        DecodeError::TooLarge => too_large(),
        DecodeError::Corrupt(why) => Fail::new(9017, format!("{} content: {why}", coding.name())),
    };
    let write_fail =
        |e: std::io::Error| Fail::new(9010, format!("cannot write {}: {e}", dest.display()));
    let mut decoder = BodyDecoder::new(coding, max);
    let mut body = resp.into_body();
    let mut received = 0u64;
    let mut written = 0u64;
    loop {
        let frame = match tokio::time::timeout(t.idle_timeout, body.frame()).await {
            Err(_) => return Err(Fail::new(9017, format!("stalled after {received} bytes"))),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Fail::new(
                    9017,
                    format!("connection broke after {received} bytes: {e}"),
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > max_received {
            return Err(too_large());
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = decoder.write_some(rest).map_err(decode_fail)?;
            rest = &rest[n..];
            if file_size != 0 && decoder.total_out() > file_size {
                return Err(Fail::new(
                    9017,
                    format!("download longer than FileSize {file_size}"),
                ));
            }
            let out = decoder.pending();
            f.write_all(out).await.map_err(write_fail)?;
            written += out.len() as u64;
            out.clear();
        }
    }
    if let Some(cl) = content_length
        && cl != received
    {
        return Err(Fail::new(
            9017,
            format!("truncated: {received} of {cl} bytes received"),
        ));
    }
    // The end of the encoded stream (checks it is complete, flushes the last bytes).
    let tail = decoder.finish().map_err(decode_fail)?;
    f.write_all(&tail).await.map_err(write_fail)?;
    let total = written + tail.len() as u64;
    if file_size != 0 && total > file_size {
        return Err(Fail::new(
            9017,
            format!("download longer than FileSize {file_size}"),
        ));
    }
    if file_size != 0 && total != file_size {
        return Err(Fail::new(
            9017,
            format!("truncated: {total} bytes received, FileSize {file_size}"),
        ));
    }
    f.sync_all()
        .await
        .map_err(|e| Fail::new(9010, format!("cannot sync {}: {e}", dest.display())))?;
    Ok(total)
}

/// PUTs `data` to `t.url`; any 2xx answer is success.
pub async fn upload(t: &Target, data: Bytes) -> Result<(), Fail> {
    let resp = send(Method::PUT, t, data, 9011, &[]).await?;
    let status = resp.status().as_u16();
    // Drain the answer so the server sees a clean exchange.
    let _ = tokio::time::timeout(t.idle_timeout, resp.into_body().collect()).await;
    match status {
        200..=299 => Ok(()),
        _ => Err(Fail::new(9011, format!("file server answered {status}"))),
    }
}

/// Sends one bulk-data report (TR-069 Annex N): `method` (POST or PUT) with `body` and the
/// extra `headers`, following redirects and answering one Basic or Digest challenge. Returns
/// the final status code; at most `max_answer` bytes of the answer are read (the rest is
/// dropped with the connection). The caller bounds the whole attempt in time.
pub async fn send_report(
    t: &Target,
    method: Method,
    headers: &[(header::HeaderName, String)],
    body: Bytes,
    max_answer: usize,
) -> Result<u16, Fail> {
    let resp = send(method, t, body, 9010, headers).await?;
    let status = resp.status().as_u16();
    let mut b = resp.into_body();
    let mut read = 0usize;
    while read <= max_answer {
        match tokio::time::timeout(t.idle_timeout, b.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    read += d.len();
                }
            }
            _ => break,
        }
    }
    Ok(status)
}
