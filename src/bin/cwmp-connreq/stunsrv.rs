//! `cwmp-connreq stun-server`: a TR-111-aware STUN server with a binding table, that sends UDP
//! connection requests from its own STUN socket on request of a small loopback HTTP API.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cwmpd::connreq::stun::{self, Integrity};
use cwmpd::connreq::udpcr;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::take_opt;

struct Binding {
    addr: SocketAddr,
    username: Option<String>,
    first_seen: u64,
    last_seen: u64,
    requests: u64,
    binding_changes: u64,
    address_changes: u64,
    crb: bool,
    crb_exact: bool,
    classic: bool,
    authenticated: bool,
}

#[derive(Default)]
struct Counters {
    requests: u64,
    challenges: u64,
    auth_ok: u64,
    auth_failed: u64,
    crs_sent: u64,
}

struct Server {
    sock: Rc<UdpSocket>,
    creds: Option<(String, String)>,
    bindings: BTreeMap<String, Binding>,
    last: Option<String>,
    n: Counters,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn log(line: String) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

pub fn run(mut args: Vec<String>) -> Result<bool, String> {
    let listen: SocketAddr = take_opt(&mut args, "--listen")?
        .ok_or("--listen is required")?
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let api: Option<SocketAddr> = match take_opt(&mut args, "--api")? {
        Some(a) => Some(a.parse().map_err(|e| format!("--api: {e}"))?),
        None => None,
    };
    if api.is_some_and(|a| !a.ip().is_loopback()) {
        return Err("--api must be a loopback address".into());
    }
    let user = take_opt(&mut args, "--user")?;
    let pass = take_opt(&mut args, "--password")?;
    let creds = match (user, pass) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
        (None, None) => None,
        _ => return Err("--user and --password go together".into()),
    };
    let max_s: Option<f64> = match take_opt(&mut args, "--max-seconds")? {
        Some(v) => Some(v.parse().map_err(|_| format!("bad --max-seconds {v:?}"))?),
        None => None,
    };
    if let Some(a) = args.first() {
        return Err(format!("unexpected argument {a:?}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let sock = UdpSocket::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        let bound = sock.local_addr().map_err(|e| e.to_string())?;
        let sock = Rc::new(sock);
        let srv = Rc::new(RefCell::new(Server {
            sock: sock.clone(),
            creds,
            bindings: BTreeMap::new(),
            last: None,
            n: Counters::default(),
        }));
        if let Some(a) = api {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| format!("bind {a}: {e}"))?;
            log(format!(
                "api listening on {}",
                l.local_addr().map_err(|e| e.to_string())?
            ));
            tokio::task::spawn_local(api_loop(l, srv.clone()));
        }
        log(format!("stun listening on {bound}"));
        let deadline = max_s.map(|s| Instant::now() + Duration::from_secs_f64(s));
        let mut buf = vec![0u8; 2048];
        loop {
            let stop = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let r = tokio::select! {
                r = sock.recv_from(&mut buf) => r,
                _ = stop => break,
            };
            if let Ok((n, from)) = r {
                let reply = srv.borrow_mut().on_request(&buf[..n], from);
                if let Some((bytes, to)) = reply {
                    let _ = sock.send_to(&bytes, to).await;
                }
            }
        }
        Ok::<_, String>(true)
    })
}

impl Server {
    fn on_request(&mut self, data: &[u8], from: SocketAddr) -> Option<(Vec<u8>, SocketAddr)> {
        if stun::classify(data) != stun::DatagramKind::Stun {
            return None;
        }
        let req = stun::parse_binding_request(data).ok()?;
        self.n.requests += 1;
        if !req.unknown_required.is_empty() {
            log(format!(
                "420 to {from}: unknown attributes {:?}",
                req.unknown_required
            ));
            return stun::binding_error(&req.txid, 420, "Unknown Attribute")
                .ok()
                .map(|b| (b, from));
        }
        let mut integrity = None;
        let mut authenticated = false;
        if let Some((user, pass)) = &self.creds {
            if !req.has_integrity {
                self.n.challenges += 1;
                log(format!("401 challenge to {from}"));
                return stun::unauthorized(&req.txid).ok().map(|b| (b, from));
            }
            let layout = match stun::check_integrity(data, pass.as_bytes()) {
                Integrity::Valid(l) if req.username.as_deref() == Some(user.as_str()) => l,
                _ => {
                    self.n.auth_failed += 1;
                    log(format!(
                        "401 to {from}: bad credentials (username {:?})",
                        req.username
                    ));
                    return stun::unauthorized(&req.txid).ok().map(|b| (b, from));
                }
            };
            self.n.auth_ok += 1;
            authenticated = true;
            integrity = Some((pass.clone(), layout));
        }
        // RESPONSE-ADDRESS (binding-lifetime discovery) only toward the requester's own IP, so
        // that the server cannot be used to reflect traffic elsewhere.
        let to = match req.response_address {
            Some(r) if r.ip() == from.ip() => r,
            _ => from,
        };
        if !req.connection_request_binding {
            // Not from a CPE's connection-request socket (e.g. a binding-lifetime probe from a
            // secondary socket): answered, not recorded as the CPE's binding.
            log(format!(
                "request from {from} without CONNECTION-REQUEST-BINDING classic={} auth={authenticated}{}",
                req.is_classic(),
                if to != from {
                    format!(" response_to={to}")
                } else {
                    String::new()
                }
            ));
            let reply = stun::binding_success(
                &req.txid,
                from,
                integrity.as_ref().map(|(p, l)| (p.as_bytes(), *l)),
            )
            .ok()?;
            return Some((reply, to));
        }
        let key = req.username.clone().unwrap_or_else(|| from.to_string());
        let now = unix_now();
        let b = self.bindings.entry(key.clone()).or_insert(Binding {
            addr: from,
            username: req.username.clone(),
            first_seen: now,
            last_seen: now,
            requests: 0,
            binding_changes: 0,
            address_changes: 0,
            crb: false,
            crb_exact: false,
            classic: false,
            authenticated: false,
        });
        let moved = b.addr != from;
        if moved {
            b.address_changes += 1;
            b.addr = from;
        }
        b.last_seen = now;
        b.requests += 1;
        b.crb = req.connection_request_binding;
        b.crb_exact = req.crb_value_exact;
        b.classic = req.is_classic();
        b.authenticated = authenticated;
        if req.binding_change {
            b.binding_changes += 1;
        }
        self.last = Some(key.clone());
        log(format!(
            "binding key={key} addr={from} classic={} crb={} binding_change={} auth={} moved={}{}",
            req.is_classic(),
            req.connection_request_binding,
            req.binding_change,
            authenticated,
            moved,
            if to != from {
                format!(" response_to={to}")
            } else {
                String::new()
            }
        ));
        let reply = stun::binding_success(
            &req.txid,
            from,
            integrity.as_ref().map(|(p, l)| (p.as_bytes(), *l)),
        )
        .ok()?;
        Some((reply, to))
    }

    fn bindings_json(&self) -> Value {
        let list: Vec<Value> = self
            .bindings
            .iter()
            .map(|(k, b)| {
                json!({
                    "key": k,
                    "addr": b.addr.to_string(),
                    "username": b.username,
                    "first_seen": b.first_seen,
                    "last_seen": b.last_seen,
                    "requests": b.requests,
                    "binding_changes": b.binding_changes,
                    "address_changes": b.address_changes,
                    "connection_request_binding": b.crb,
                    "crb_value_exact": b.crb_exact,
                    "classic": b.classic,
                    "authenticated": b.authenticated,
                })
            })
            .collect();
        json!({
            "bindings": list,
            "last": self.last,
            "requests": self.n.requests,
            "challenges": self.n.challenges,
            "auth_ok": self.n.auth_ok,
            "auth_failed": self.n.auth_failed,
            "crs_sent": self.n.crs_sent,
        })
    }

    fn send_cr(&mut self, q: &BTreeMap<String, String>) -> Result<Value, String> {
        let to = q.get("to").ok_or("`to` is required")?;
        let user = q.get("user").ok_or("`user` is required")?;
        let pass = q.get("password").ok_or("`password` is required")?;
        let copies: u32 = match q.get("copies") {
            Some(c) => c.parse().map_err(|_| format!("bad copies {c:?}"))?,
            None => 3,
        };
        if !(1..=10).contains(&copies) {
            return Err("copies must be 1..10".into());
        }
        let addr: SocketAddr = if to == "last" {
            let k = self.last.as_ref().ok_or("no binding yet")?;
            self.bindings[k].addr
        } else if let Some(b) = self.bindings.get(to) {
            b.addr
        } else {
            to.parse()
                .map_err(|_| format!("`to`: {to:?} is neither IP:PORT nor a binding"))?
        };
        let ts = unix_now();
        let id = u64::from(u32::from_be_bytes(rand_bytes::<4>()));
        let cn: String = rand_bytes::<8>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dgram = udpcr::build_udp_cr(&udpcr::authority(addr), ts, id, user, &cn, pass);
        let t0 = Instant::now();
        for _ in 0..copies {
            self.sock
                .try_send_to(&dgram, addr)
                .map_err(|e| format!("send to {addr}: {e}"))?;
        }
        let us = t0.elapsed().as_micros() as u64;
        self.n.crs_sent += 1;
        log(format!(
            "udp cr to {addr} id={id} ts={ts} copies={copies} from {}",
            self.sock
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        ));
        Ok(
            json!({"ok": true, "to": addr.to_string(), "copies": copies, "id": id, "ts": ts,
                  "bytes": dgram.len(), "send_us": us}),
        )
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn api_loop(l: TcpListener, srv: Rc<RefCell<Server>>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let srv = srv.clone();
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), api_conn(s, srv)).await;
        });
    }
}

async fn api_conn(mut s: TcpStream, srv: Rc<RefCell<Server>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let q: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect();
    let (status, body) = match (method, path) {
        ("GET", "/bindings") => (200, srv.borrow().bindings_json()),
        ("POST", "/cr") => match srv.borrow_mut().send_cr(&q) {
            Ok(v) => (200, v),
            Err(e) => (400, json!({"ok": false, "error": e})),
        },
        _ => (404, json!({"ok": false, "error": "not found"})),
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}
