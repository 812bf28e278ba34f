//! A scripted ACS speaking raw HTTP/1.1 over std sockets, for hostile-input and fault tests:
//! every answer is chosen by a closure, and can be any bytes, a huge or endless body, a
//! connection reset, a close, or an answer trickled one byte at a time.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the agent sent.
#[derive(Debug, Clone)]
pub struct RawReq {
    pub head: String,
    pub body: Vec<u8>,
    /// Connection number (0-based, in accept order) and request number on it.
    pub conn: usize,
    pub seq: usize,
    pub at: Instant,
}

impl RawReq {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn is_inform(&self) -> bool {
        self.text().contains("Inform>") && self.text().contains("DeviceId")
    }
    pub fn is_empty_post(&self) -> bool {
        self.body.iter().all(u8::is_ascii_whitespace)
    }
}

/// An answer.
pub enum RawResp {
    /// Status line, extra headers and a body (Content-Length set).
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A 200 whose body is `prefix` followed by `chunk` repeated up to `total` bytes, sent with
    /// Content-Length (`chunked: false`) or chunked without any length.
    Huge {
        prefix: Vec<u8>,
        chunk: Vec<u8>,
        total: usize,
        chunked: bool,
    },
    /// Reset the connection (RST) instead of answering.
    Reset,
    /// Close the connection (FIN) instead of answering.
    Close,
    /// The given answer, written one byte every `every`.
    Trickle(Box<RawResp>, Duration),
}

impl RawResp {
    pub fn ok_xml(body: impl Into<Vec<u8>>) -> RawResp {
        RawResp::Http {
            status: 200,
            headers: vec![("Content-Type".into(), "text/xml; charset=\"utf-8\"".into())],
            body: body.into(),
        }
    }
    pub fn status(status: u16) -> RawResp {
        RawResp::Http {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn end() -> RawResp {
        RawResp::status(204)
    }
}

pub const NS: &str = "urn:dslforum-org:cwmp-1-2";

/// A SOAP envelope with `cwmp:ID` `id` around `body` (a Body child).
pub fn envelope(id: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:soap-enc=\"http://schemas.xmlsoap.org/soap/encoding/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:cwmp=\"{NS}\"><soap:Header><cwmp:ID soap:mustUnderstand=\"1\">{id}</cwmp:ID></soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

pub fn inform_response() -> RawResp {
    RawResp::ok_xml(envelope(
        "ir",
        "<cwmp:InformResponse><MaxEnvelopes>1</MaxEnvelopes></cwmp:InformResponse>",
    ))
}

type Handler = dyn Fn(&RawReq) -> RawResp + Send + Sync;

pub struct RawAcs {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<RawReq>>>,
    stop: Arc<AtomicBool>,
    handler: Arc<Mutex<Arc<Handler>>>,
    active: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawAcs {
    /// Listens on a free loopback port and answers every request with `handler`.
    pub fn start(handler: impl Fn(&RawReq) -> RawResp + Send + Sync + 'static) -> RawAcs {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_on(l, handler)
    }

    pub fn start_on(
        l: TcpListener,
        handler: impl Fn(&RawReq) -> RawResp + Send + Sync + 'static,
    ) -> RawAcs {
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Mutex<Arc<Handler>>> = Arc::new(Mutex::new(Arc::new(handler)));
        let active = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (log, stop, handler, active) =
                (log.clone(), stop.clone(), handler.clone(), active.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let (log, stop, handler) = (log.clone(), stop.clone(), handler.clone());
                            let conn = n;
                            n += 1;
                            active.fetch_add(1, Ordering::SeqCst);
                            let active = active.clone();
                            std::thread::spawn(move || {
                                serve(s, conn, &log, &stop, &handler);
                                active.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        RawAcs {
            addr,
            log,
            stop,
            handler,
            active,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/acs", self.addr)
    }

    /// Replaces the handler (for requests that arrive from now on).
    pub fn set_handler(&self, handler: impl Fn(&RawReq) -> RawResp + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    /// Waits (up to `timeout`) until every connection accepted so far, and any still in the
    /// listen backlog, has been served to its end: after a client is killed, what it had sent
    /// is then handled.
    pub fn drain(&self, timeout: Duration) {
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        while self.active.load(Ordering::SeqCst) > 0 && t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn requests(&self) -> Vec<RawReq> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the requests so far.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[RawReq]) -> bool) -> Vec<RawReq> {
        let t0 = Instant::now();
        loop {
            let r = self.requests();
            if pred(&r) || t0.elapsed() > timeout {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RawAcs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

fn serve(
    mut s: TcpStream,
    conn: usize,
    log: &Mutex<Vec<RawReq>>,
    stop: &AtomicBool,
    handler: &Mutex<Arc<Handler>>,
) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut seq = 0;
    loop {
        // Head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let mut tmp = [0u8; 8192];
            match s.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut tmp = [0u8; 65536];
            match s.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let req = RawReq {
            head,
            body,
            conn,
            seq,
            at: Instant::now(),
        };
        seq += 1;
        let h = handler.lock().unwrap().clone();
        let resp = h(&req);
        log.lock().unwrap().push(req);
        if !answer(&mut s, resp) {
            return;
        }
    }
}

/// Writes an answer; false when the connection is finished.
fn answer(s: &mut TcpStream, resp: RawResp) -> bool {
    match resp {
        RawResp::Http {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&body);
            s.write_all(&bytes).is_ok()
        }
        RawResp::Huge {
            prefix,
            chunk,
            total,
            chunked,
        } => {
            let head = if chunked {
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_string()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {total}\r\n\r\n"
                )
            };
            if s.write_all(head.as_bytes()).is_err() {
                return false;
            }
            let mut sent = 0;
            let mut block = prefix;
            while sent < total {
                while block.len() < 256 * 1024 {
                    block.extend_from_slice(&chunk);
                }
                block.truncate(total - sent);
                let r = if chunked {
                    let mut b = format!("{:x}\r\n", block.len()).into_bytes();
                    b.extend_from_slice(&block);
                    b.extend_from_slice(b"\r\n");
                    s.write_all(&b)
                } else {
                    s.write_all(&block)
                };
                if r.is_err() {
                    return false; // the agent gave up: expected
                }
                sent += block.len();
                block.clear();
            }
            if chunked {
                let _ = s.write_all(b"0\r\n\r\n");
            }
            true
        }
        RawResp::Reset => {
            // The caller drops the stream on `false`: with SO_LINGER 0 that sends a RST.
            linger_zero(s);
            false
        }
        RawResp::Close => {
            let _ = s.shutdown(Shutdown::Both);
            false
        }
        RawResp::Trickle(inner, every) => {
            let mut v = Vec::new();
            {
                // Render the inner answer into memory first.
                let mut w = Vec::new();
                render(&mut w, *inner);
                v.extend(w);
            }
            for b in v {
                if s.write_all(&[b]).is_err() {
                    return false;
                }
                std::thread::sleep(every);
            }
            true
        }
    }
}

fn render(out: &mut Vec<u8>, resp: RawResp) {
    if let RawResp::Http {
        status,
        headers,
        body,
    } = resp
    {
        out.extend(format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len()).bytes());
        for (k, v) in headers {
            out.extend(format!("{k}: {v}\r\n").bytes());
        }
        out.extend(b"\r\n");
        out.extend(body);
    }
}

/// Sets SO_LINGER to zero so that closing sends a RST.
fn linger_zero(s: &TcpStream) {
    let l = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &l);
}
