//! `cwmp-connreq`: sends connection requests to a CPE as an ACS does (for tests and field checks).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cwmpd::connreq::digest::DigestClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str = "\
usage:
  cwmp-connreq http URL --user U --password P [--count N] [--timeout SECS]
        GET URL, answer the Digest challenge on the same connection, GET again;
        prints the final status and the time from the first byte sent to the answer.
        Exit 0 when every request got 200 or 204, 1 otherwise.
  cwmp-connreq udp ...             (not yet implemented)
  cwmp-connreq xmpp ...            (not yet implemented)
  cwmp-connreq stun-server ...     (not yet implemented)";

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let cmd = args.remove(0);
    let r = match cmd.as_str() {
        "http" => http_cmd(args),
        "udp" | "xmpp" | "stun-server" => {
            eprintln!("cwmp-connreq {cmd}: not yet implemented");
            return ExitCode::from(2);
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cwmp-connreq: {e}");
            ExitCode::from(2)
        }
    }
}

fn take_opt(args: &mut Vec<String>, long: &str) -> Result<Option<String>, String> {
    if let Some(i) = args.iter().position(|a| a == long) {
        if i + 1 >= args.len() {
            return Err(format!("{long} needs a value"));
        }
        let v = args.remove(i + 1);
        args.remove(i);
        return Ok(Some(v));
    }
    Ok(None)
}

struct Target {
    host: String,
    port: u16,
    /// Value of the Host header.
    authority: String,
    /// Request-target (path + query).
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
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

fn http_cmd(mut args: Vec<String>) -> Result<bool, String> {
    let user = take_opt(&mut args, "--user")?.ok_or("--user is required")?;
    let pass = take_opt(&mut args, "--password")?.ok_or("--password is required")?;
    let count: u32 = match take_opt(&mut args, "--count")? {
        Some(c) => c.parse().map_err(|_| format!("bad --count {c:?}"))?,
        None => 1,
    };
    let timeout = match take_opt(&mut args, "--timeout")? {
        Some(t) => Duration::from_secs_f64(t.parse().map_err(|_| format!("bad --timeout {t:?}"))?),
        None => Duration::from_secs(10),
    };
    if args.len() != 1 {
        return Err(format!("http takes one URL\n{USAGE}"));
    }
    let target = parse_url(&args[0])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let mut all_ok = true;
        for _ in 0..count {
            let t0 = Instant::now();
            match tokio::time::timeout(timeout, one_request(&target, &user, &pass)).await {
                Ok(Ok((status, reason, t))) => {
                    let ok = status == 200 || status == 204;
                    all_ok &= ok;
                    println!(
                        "{status} {reason} in {:.1} ms",
                        t.unwrap_or(t0.elapsed()).as_secs_f64() * 1000.0
                    );
                }
                Ok(Err(e)) => {
                    all_ok = false;
                    println!("error: {e}");
                }
                Err(_) => {
                    all_ok = false;
                    println!("error: no answer within {} s", timeout.as_secs_f64());
                }
            }
        }
        Ok(all_ok)
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

/// One CR: returns the final status, reason and the time from the first byte sent.
async fn one_request(
    t: &Target,
    user: &str,
    pass: &str,
) -> Result<(u16, String, Option<Duration>), String> {
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
        return Ok((first.status, first.reason, Some(t0.elapsed())));
    }
    let ch = first
        .header("www-authenticate")
        .ok_or("401 without WWW-Authenticate")?
        .to_string();
    let cnonce = cnonce();
    let auth = DigestClient::respond(&ch, "GET", &t.path, user, pass, &cnonce, 1)
        .map_err(|e| format!("cannot answer the challenge {ch:?}: {e}"))?;
    if first.close {
        // Like GenieACS: retry on a new connection when the CPE closed it after the 401.
        s = connect().await?;
        buf.clear();
    }
    let second = exchange(&mut s, &mut buf, t, Some(&auth)).await?;
    Ok((second.status, second.reason, Some(t0.elapsed())))
}

fn cnonce() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
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
