//! HTTP connection requests (TR-069 §3.2.2): GET the CPE's ConnectionRequestURL, answer the
//! Digest challenge (on the same connection, or a new one when the CPE closed it), GET again.

use std::time::{Duration, Instant};

use cwmp_proto::connreq::digest::DigestClient;
use cwmp_proto::util::codec::{random_bytes, to_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// Where a connection request goes: a parsed `http://` ConnectionRequestURL.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Value of the Host header.
    pub authority: String,
    /// Request-target (path + query).
    pub path: String,
}

/// Parses a ConnectionRequestURL (`http://host[:port][/path][?query]`, IPv6 literals in `[]`).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are connection-request URLs"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, after) = h.split_once(']').ok_or("bad IPv6 literal")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => 80,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("bad port {p:?}"))?,
            ),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(Target {
        host,
        port,
        authority: authority.to_string(),
        path,
    })
}

/// The CPE's final answer to a connection request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// 200 or 204: accepted (the CPE will open a session); 401: the credentials were refused.
    pub status: u16,
    pub reason: String,
    /// From the first byte sent to the final answer.
    pub took: Duration,
}

impl Answer {
    /// The CPE accepted the request (200 or 204).
    pub fn accepted(&self) -> bool {
        self.status == 200 || self.status == 204
    }
}

/// One connection request to `url` with the CPE's ConnectionRequestUsername / Password.
pub async fn connection_request(url: &str, user: &str, pass: &str) -> Result<Answer, String> {
    request(&parse_url(url)?, user, pass).await
}

/// One connection request to `t` (see [`connection_request`]).
pub async fn request(t: &Target, user: &str, pass: &str) -> Result<Answer, String> {
    let connect = || async {
        TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", t.host, t.port))
    };
    let mut s = connect().await?;
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let t0 = Instant::now();
    let first = exchange(&mut s, &mut buf, t, None).await?;
    if first.status != 401 {
        return Ok(Answer {
            status: first.status,
            reason: first.reason,
            took: t0.elapsed(),
        });
    }
    let ch = first
        .header("www-authenticate")
        .ok_or("401 without WWW-Authenticate")?
        .to_string();
    let cnonce = to_hex(&random_bytes::<8>());
    let auth = DigestClient::respond(&ch, "GET", &t.path, user, pass, &cnonce, 1)
        .map_err(|e| format!("cannot answer the challenge {ch:?}: {e}"))?;
    if first.close {
        // Like GenieACS: retry on a new connection when the CPE closed it after the 401.
        s = connect().await?;
        buf.clear();
    }
    let second = exchange(&mut s, &mut buf, t, Some(&auth)).await?;
    Ok(Answer {
        status: second.status,
        reason: second.reason,
        took: t0.elapsed(),
    })
}

struct Resp {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    close: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn exchange(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    t: &Target,
    auth: Option<&str>,
) -> Result<Resp, String> {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cwmp-connreq/{}\r\n",
        t.path,
        t.authority,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // Read the head.
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut r = Resp {
        status,
        reason,
        headers,
        close: false,
    };
    r.close = version == "HTTP/1.0"
        || r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    // Skip the body (connection-request answers have none; tolerate a small one).
    let len: usize = match r.header("content-length") {
        Some(v) => v.parse().map_err(|_| "bad Content-Length")?,
        None => {
            if r.header("transfer-encoding").is_some() {
                r.close = true; // not worth decoding chunks here: do not reuse
            }
            0
        }
    };
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..len.min(buf.len()));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn parses_connection_request_urls() {
        let t = parse_url("http://10.0.0.2:7547/cr?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("10.0.0.2", 7547, "/cr?x=1")
        );
        let t = parse_url("http://[::1]/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 80, "[::1]")
        );
        let t = parse_url("http://cpe?a").unwrap();
        assert_eq!(t.path, "/?a");
        assert!(parse_url("https://cpe/").is_err());
        assert!(parse_url("http://:80/").is_err());
    }
}
