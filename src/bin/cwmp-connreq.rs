//! `cwmp-connreq`: sends connection requests to a CPE as an ACS does (for tests and field checks).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cwmpd::connreq::digest::DigestClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "cwmp-connreq/stunsrv.rs"]
mod stunsrv;

const USAGE: &str = "\
usage:
  cwmp-connreq http URL --user U --password P [--count N] [--timeout SECS]
        GET URL, answer the Digest challenge on the same connection, GET again;
        prints the final status and the time from the first byte sent to the answer.
        Exit 0 when every request got 200 or 204, 1 otherwise.
  cwmp-connreq udp HOST:PORT --user U --password P [--copies N] [--from ADDR] [--via API-ADDR]
        sends one TR-111 UDP connection request (N identical copies, default 3) to the CPE's
        UDPConnectionRequestAddress: from an ephemeral socket (or --from ADDR), or with --via
        through a `stun-server` API, which sends it from its STUN socket (needed behind a
        port-restricted NAT; HOST:PORT may then also be `last` or a binding key).
        Prints the time taken. Exit 0 when sent.
  cwmp-connreq stun-server --listen ADDR [--api ADDR] [--user U --password P] [--max-seconds S]
        a TR-111-aware STUN server (RFC 3489 and RFC 5389 Binding; with --user, short-term
        credentials: 401 first, then USERNAME + MESSAGE-INTEGRITY keyed with the password, either
        layout). Records each CPE's binding (by USERNAME, else by source address), logs
        CONNECTION-REQUEST-BINDING / BINDING-CHANGE on stdout, honours RESPONSE-ADDRESS only for
        the requester's own IP. The loopback HTTP API (--api) serves
          GET  /bindings                                   -> JSON
          POST /cr?to=IP:PORT|last|KEY&user=U&password=P[&copies=N]
               -> sends the UDP connection request from the STUN socket, JSON answer
  cwmp-connreq xmpp --jid ACS-JID --password P --server HOST:PORT --to CPE-JID
                    --user U --cr-password P2 [--ca FILE] [--count N] [--timeout SECS]
        logs in as ACS-JID (STARTTLS, certificate checked against --ca or the Mozilla roots,
        SASL), sends N connectionRequest IQs (TR-069 Annex K) to CPE-JID one after the other
        and prints each answer (result, or the error condition) with its round-trip time.
        Exit 0 when every request got a result, 1 otherwise.";

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
        "udp" => udp_cmd(args),
        "stun-server" => stunsrv::run(args),
        "xmpp" => xmpp_cmd(args),
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
    cwmpd::util::codec::to_hex(&cwmpd::util::codec::random_bytes::<8>())
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

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn udp_cmd(mut args: Vec<String>) -> Result<bool, String> {
    let user = take_opt(&mut args, "--user")?.ok_or("--user is required")?;
    let pass = take_opt(&mut args, "--password")?.ok_or("--password is required")?;
    let copies: u32 = match take_opt(&mut args, "--copies")? {
        Some(c) => c.parse().map_err(|_| format!("bad --copies {c:?}"))?,
        None => 3,
    };
    let via = take_opt(&mut args, "--via")?;
    let from = take_opt(&mut args, "--from")?;
    if args.len() != 1 {
        return Err(format!("udp takes one HOST:PORT\n{USAGE}"));
    }
    let to = args.remove(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let t0 = Instant::now();
        if let Some(api) = via {
            let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&api))
                .await
                .map_err(|_| format!("connect {api}: timeout"))?
                .map_err(|e| format!("connect {api}: {e}"))?;
            let req = format!(
                "POST /cr?to={}&user={}&password={}&copies={copies} HTTP/1.1\r\nHost: {api}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                pct(&to),
                pct(&user),
                pct(&pass)
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .map_err(|_| "no answer from the STUN server API".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            let text = String::from_utf8_lossy(&out);
            let ok = text.starts_with("HTTP/1.1 200");
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            println!(
                "{body} in {:.1} ms",
                t0.elapsed().as_secs_f64() * 1000.0
            );
            return Ok(ok);
        }
        let dest: std::net::SocketAddr = tokio::net::lookup_host(to.as_str())
            .await
            .map_err(|e| format!("{to}: {e}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("{to}: no IPv4 address"))?;
        let bind = from.unwrap_or_else(|| "0.0.0.0:0".into());
        let sock = tokio::net::UdpSocket::bind(&bind)
            .await
            .map_err(|e| format!("bind {bind}: {e}"))?;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let r: [u8; 12] = {
            use ring::rand::SecureRandom;
            let mut b = [0u8; 12];
            let _ = ring::rand::SystemRandom::new().fill(&mut b);
            b
        };
        let id = u64::from(u32::from_be_bytes([r[0], r[1], r[2], r[3]]));
        let cn: String = r[4..].iter().map(|b| format!("{b:02x}")).collect();
        let authority = if to.contains(':') {
            to.clone()
        } else {
            cwmpd::connreq::udpcr::authority(dest)
        };
        let d = cwmpd::connreq::udpcr::build_udp_cr(&authority, ts, id, &user, &cn, &pass);
        for _ in 0..copies {
            sock.send_to(&d, dest)
                .await
                .map_err(|e| format!("send to {dest}: {e}"))?;
        }
        println!(
            "sent {copies} copies (id={id}, {} bytes) to {dest} from {} in {:.1} ms",
            d.len(),
            sock.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            t0.elapsed().as_secs_f64() * 1000.0
        );
        Ok(true)
    })
}

fn xmpp_cmd(mut args: Vec<String>) -> Result<bool, String> {
    use cwmpd::connreq::xmpp::{self, ConnectParams, Target};
    use tokio_xmpp::Stanza;
    use tokio_xmpp::parsers::iq::Iq;
    use tokio_xmpp::parsers::jid::Jid;
    let need = |a: &mut Vec<String>, k: &str| -> Result<String, String> {
        take_opt(a, k)?.ok_or_else(|| format!("{k} is required"))
    };
    let jid = need(&mut args, "--jid")?;
    let password = need(&mut args, "--password")?;
    let server = need(&mut args, "--server")?;
    let to = need(&mut args, "--to")?;
    let user = need(&mut args, "--user")?;
    let cr_password = need(&mut args, "--cr-password")?;
    let ca = take_opt(&mut args, "--ca")?;
    let count: u32 = match take_opt(&mut args, "--count")? {
        Some(c) => c.parse().map_err(|_| format!("bad --count {c:?}"))?,
        None => 1,
    };
    let timeout = match take_opt(&mut args, "--timeout")? {
        Some(t) => Duration::from_secs_f64(t.parse().map_err(|_| format!("bad --timeout {t:?}"))?),
        None => Duration::from_secs(5),
    };
    if let Some(a) = args.first() {
        return Err(format!("unexpected argument {a:?}"));
    }
    let jid = Jid::new(&jid).map_err(|e| format!("--jid: {e}"))?;
    let to = Jid::new(&to).map_err(|e| format!("--to: {e}"))?;
    let (host, port) = server
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
        .ok_or_else(|| format!("--server {server:?}: HOST:PORT expected"))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = xmpp::tls_config(ca.as_deref().map(std::path::Path::new))?;
    let params = ConnectParams {
        jid: jid.to_bare(),
        password,
        resource: jid.resource().map(|r| r.to_string()),
        target: Target::Host(host, port),
        require_tls: true,
        tls,
        keepalive: Duration::from_secs(300),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let t0 = Instant::now();
        let mut c = tokio::time::timeout(xmpp::CONNECT_TIMEOUT, xmpp::connect(&params))
            .await
            .map_err(|_| "login timed out".to_string())?
            .map_err(|e| e.to_string())?;
        eprintln!(
            "logged in as {} (TLS {}, SASL {}) in {:.1} ms",
            c.jid,
            c.tls,
            c.mechanism,
            t0.elapsed().as_secs_f64() * 1000.0
        );
        let mut all_ok = true;
        let mut rtts = Vec::new();
        for i in 0..count {
            let id = format!("cr-{}-{i}", std::process::id());
            let iq = Iq::Get {
                from: None,
                to: Some(to.clone()),
                id: id.clone(),
                payload: xmpp::connection_request_element(&user, &cr_password),
            };
            let t = Instant::now();
            c.send(iq.into()).await.map_err(|e| format!("send: {e}"))?;
            let answer = tokio::time::timeout(timeout, async {
                loop {
                    match c.recv().await {
                        xmpp::Received::Stanza(st) => match *st {
                            Stanza::Iq(Iq::Result { id: rid, .. }) if rid == id => {
                                return Ok("result".to_string());
                            }
                            Stanza::Iq(Iq::Error { id: rid, error, .. }) if rid == id => {
                                let cond = format!("{:?}", error.defined_condition);
                                return Ok(format!("error {}", kebab(&cond)));
                            }
                            _ => {}
                        },
                        xmpp::Received::Closed(why) => return Err(why),
                        _ => {}
                    }
                }
            })
            .await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match answer {
                Ok(Ok(a)) => {
                    println!("{a} rtt={ms:.3}ms");
                    if a == "result" {
                        rtts.push(ms);
                    } else {
                        all_ok = false;
                    }
                }
                Ok(Err(why)) => {
                    println!("closed: {why}");
                    return Ok(false);
                }
                Err(_) => {
                    println!("timeout after {:.1} s", timeout.as_secs_f64());
                    all_ok = false;
                }
            }
        }
        if rtts.len() > 1 {
            rtts.sort_by(f64::total_cmp);
            println!(
                "results={} median={:.3}ms min={:.3}ms max={:.3}ms",
                rtts.len(),
                rtts[rtts.len() / 2],
                rtts[0],
                rtts[rtts.len() - 1]
            );
        }
        c.close().await;
        Ok(all_ok)
    })
}

/// `NotAuthorized` -> `not-authorized` (the wire name of a defined condition).
fn kebab(s: &str) -> String {
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}
