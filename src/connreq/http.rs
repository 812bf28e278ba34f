//! The HTTP connection-request listener (TR-069 §3.2.2; SPEC-NOTES rules H1..H13).
//!
//! A small hyper HTTP/1.1 server on the agent's LocalSet. An ACS sends `GET <path>`; the
//! listener answers 401 with one Digest challenge, verifies the authenticated retry against the
//! current `ConnectionRequestUsername`/`ConnectionRequestPassword`, checks the shared rate
//! limiter and answers `200 OK` (empty body) *before* the engine starts the session, to which it
//! reports a [`CrEvent`].

use crate::util::codec::random_bytes;
use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HeaderValue, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use super::backoff::RateLimiter;
use super::digest::{DigestError, DigestServer};

/// Digest realm of the CR listener.
pub const REALM: &str = "cwmpd";
/// Lifetime of a Digest nonce.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Largest request head accepted (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Requests served on one connection before it is closed.
pub const MAX_REQUESTS_PER_CONN: u32 = 4;
/// Time allowed to receive a complete request head (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for the life of one connection, whatever it does.
pub const CONN_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 32;

pub use crate::command::{CrEvent, CrSettings, Mechanism};

/// A random URL path: `/` and 32 hex digits (16 bytes from the system RNG).
pub fn random_path() -> String {
    format!("/{}", crate::util::codec::to_hex(&random_bytes::<16>()))
}

/// 32 random bytes for the Digest nonce MAC key.
pub fn random_secret() -> [u8; 32] {
    random_bytes()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type Body = Empty<Bytes>;

/// The request logic, free of sockets (unit-tested with an injected clock).
struct Handler {
    digest: RefCell<DigestServer>,
    settings: watch::Receiver<CrSettings>,
    limiter: Rc<RefCell<RateLimiter>>,
    events: mpsc::Sender<CrEvent>,
    now_unix: Box<dyn Fn() -> u64>,
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

impl Handler {
    fn handle(
        &self,
        method: &Method,
        target: &str,
        path: &str,
        authorization: Option<&str>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let s = self.settings.borrow().clone();
        if !s.enabled {
            tracing::debug!(%peer, "connection request refused (503): HTTP connection requests disabled");
            return empty(StatusCode::SERVICE_UNAVAILABLE);
        }
        if s.username.is_empty() {
            tracing::info!(%peer, "connection request refused (503): ConnectionRequestUsername is not set");
            return empty(StatusCode::SERVICE_UNAVAILABLE);
        }
        if path != s.path {
            tracing::info!(%peer, "connection request refused (404): unknown path");
            return empty(StatusCode::NOT_FOUND);
        }
        if method != Method::GET {
            tracing::info!(%peer, %method, "connection request refused (405): method not allowed");
            let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        let now = (self.now_unix)();
        let verdict = self.digest.borrow_mut().verify(
            method.as_str(),
            target,
            authorization,
            &s.username,
            &s.password,
            now,
        );
        if let Err(e) = verdict {
            match e {
                DigestError::Missing => {
                    tracing::debug!(%peer, "connection request challenged (401): {e}")
                }
                _ => tracing::info!(%peer, "connection request refused (401): {e}"),
            }
            let stale = e == DigestError::StaleNonce;
            let ch = self.digest.borrow().challenge(now, stale);
            let mut r = empty(StatusCode::UNAUTHORIZED);
            if let Ok(v) = HeaderValue::from_str(&ch) {
                r.headers_mut().insert(WWW_AUTHENTICATE, v);
            }
            return r;
        }
        let received = Instant::now();
        if !self.limiter.borrow_mut().try_acquire(received) {
            tracing::warn!(%peer, "connection request refused (503): rate limit exceeded");
            return empty(StatusCode::SERVICE_UNAVAILABLE);
        }
        let ev = CrEvent {
            mechanism: Mechanism::Http,
            received,
            peer,
        };
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(%peer, "connection request accepted; engine queue full (coalesced)")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!(%peer, "connection request accepted but the engine is gone")
            }
        }
        tracing::debug!(%peer, "connection request accepted (200)");
        empty(StatusCode::OK)
    }
}

/// Serves HTTP connection requests on `listeners` until the process ends.
///
/// `settings` carries the current enable flag, credentials and path; `limiter` is shared with
/// the other CR mechanisms; accepted requests go to `events` (never blocking: when the channel
/// is full the ACS still gets 200, the engine coalesces). `secret` keys the Digest nonces.
/// Must run on a tokio `LocalSet`.
/// How the agent stops the listener (graceful shutdown): when `stop` turns true every port is
/// closed, connections in flight finish the request they are on (hyper's graceful shutdown)
/// and each drops its clone of `done`, which the agent waits on (bounded).
#[derive(Clone)]
pub struct Drain {
    pub stop: watch::Receiver<bool>,
    pub done: mpsc::Sender<()>,
}

pub async fn serve(
    listeners: Vec<TcpListener>,
    settings: watch::Receiver<CrSettings>,
    limiter: Rc<RefCell<RateLimiter>>,
    events: mpsc::Sender<CrEvent>,
    secret: [u8; 32],
    drain: Drain,
) {
    let handler = Rc::new(Handler {
        digest: RefCell::new(DigestServer::new(secret, REALM, NONCE_LIFETIME)),
        settings,
        limiter,
        events,
        now_unix: Box::new(unix_now),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = Vec::new();
    for l in listeners {
        tasks.push(tokio::task::spawn_local(accept_loop(
            l,
            handler.clone(),
            slots.clone(),
            drain.clone(),
        )));
    }
    drop(drain);
    for t in tasks {
        let _ = t.await;
    }
}

/// Serves one listening address. While HTTP connection requests are disabled
/// (HTTPConnectionRequestEnable or EnableCWMP false) the port is closed (TR-069 rule H12) and
/// re-opened on the same address when they are enabled again.
async fn accept_loop(
    listener: TcpListener,
    handler: Rc<Handler>,
    slots: Arc<Semaphore>,
    mut drain: Drain,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let mut listener = Some(listener);
    let mut settings = handler.settings.clone();
    loop {
        if *drain.stop.borrow_and_update() {
            tracing::debug!(%local, "connection-request port closed for shutdown");
            return;
        }
        let enabled = settings.borrow_and_update().enabled;
        if !enabled && listener.is_some() {
            listener = None;
            tracing::info!(%local, "HTTP connection requests disabled: port closed");
        } else if enabled && listener.is_none() {
            match bind_reuse(local) {
                Ok(l) => {
                    tracing::info!(%local, "HTTP connection requests enabled: port open");
                    listener = Some(l);
                }
                Err(e) => {
                    tracing::warn!(%local, "cannot reopen the connection-request port: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let Some(l) = listener.as_ref() else {
            tokio::select! {
                r = settings.changed() => if r.is_err() {
                    return;
                },
                // A stop, or the agent gone: either way the loop ends.
                r = drain.stop.changed() => if r.is_err() {
                    return;
                },
            }
            continue;
        };
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%local, "connection request accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            r = settings.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
            r = drain.stop.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection request refused: too many connections ({MAX_CONNECTIONS})");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        let d = drain.clone();
        tokio::task::spawn_local(async move {
            let _permit = permit;
            serve_conn(stream, peer, h, d).await;
        });
    }
}

fn bind_reuse(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(64)
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    handler: Rc<Handler>,
    drain: Drain,
) {
    let Drain { mut stop, done } = drain;
    let count = Rc::new(Cell::new(0u32));
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let n = count.get() + 1;
        count.set(n);
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| req.uri().to_string());
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let mut resp = handler.handle(req.method(), &target, req.uri().path(), auth, peer);
        if n >= MAX_REQUESTS_PER_CONN {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = b.serve_connection(TokioIo::new(stream), svc);
    // At shutdown: the request being read or answered completes, then the connection closes.
    let drained = async {
        let mut conn = std::pin::pin!(conn);
        let mut stopping = *stop.borrow_and_update();
        loop {
            if stopping {
                conn.as_mut().graceful_shutdown();
                return conn.await;
            }
            tokio::select! {
                r = conn.as_mut() => return r,
                r = stop.changed() => stopping = r.is_err() || *stop.borrow(),
            }
        }
    };
    let r = tokio::time::timeout(CONN_LIFETIME, drained).await;
    drop(done);
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, "connection request connection ended: {e}"),
        Err(_) => tracing::info!(%peer, "connection request connection closed: lifetime exceeded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connreq::digest::DigestClient;

    struct Fixture {
        h: Handler,
        clock: Rc<Cell<u64>>,
        rx: mpsc::Receiver<CrEvent>,
        tx: watch::Sender<CrSettings>,
    }

    const PATH: &str = "/0123456789abcdef0123456789abcdef";

    fn fixture(burst: u32) -> Fixture {
        let clock = Rc::new(Cell::new(1_700_000_000u64));
        let c2 = clock.clone();
        let (tx, srx) = watch::channel(CrSettings {
            enabled: true,
            username: "acs".into(),
            password: "s3cret".into(),
            path: PATH.into(),
        });
        let (etx, rx) = mpsc::channel(2);
        let h = Handler {
            digest: RefCell::new(DigestServer::new([7; 32], REALM, NONCE_LIFETIME)),
            settings: srx,
            limiter: Rc::new(RefCell::new(RateLimiter::per_period(
                burst,
                Duration::from_secs(3600),
            ))),
            events: etx,
            now_unix: Box::new(move || c2.get()),
        };
        Fixture { h, clock, rx, tx }
    }

    fn peer() -> SocketAddr {
        "192.0.2.1:40000".parse().unwrap()
    }

    fn get(f: &Fixture, auth: Option<&str>) -> Response<Body> {
        f.h.handle(&Method::GET, PATH, PATH, auth, peer())
    }

    fn challenge(r: &Response<Body>) -> String {
        r.headers()
            .get(WWW_AUTHENTICATE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }

    fn answer(ch: &str, pass: &str, nc: u32) -> String {
        DigestClient::respond(ch, "GET", PATH, "acs", pass, "0a4f113b", nc).unwrap()
    }

    #[test]
    fn challenge_then_success() {
        let mut f = fixture(10);
        let r = get(&f, None);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers().get_all(WWW_AUTHENTICATE).iter().count(), 1);
        let ch = challenge(&r);
        assert!(
            ch.starts_with("Digest realm=\"cwmpd\", qop=\"auth\", nonce=\""),
            "{ch}"
        );
        assert!(
            ch.contains("opaque=") && ch.ends_with("algorithm=MD5"),
            "{ch}"
        );
        let r = get(&f, Some(&answer(&ch, "s3cret", 1)));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_LENGTH], "0");
        let ev = f.rx.try_recv().unwrap();
        assert_eq!(ev.mechanism, Mechanism::Http);
        assert_eq!(ev.peer, peer());
        // Wrong password, and the same nc again: 401 without stale.
        let r = get(&f, Some(&answer(&ch, "wrong", 2)));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = get(&f, Some(&answer(&ch, "s3cret", 1)));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(!challenge(&r).contains("stale"));
        // A higher nc on the same nonce is fine.
        assert_eq!(
            get(&f, Some(&answer(&ch, "s3cret", 2))).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn no_qop_client_accepted() {
        let f = fixture(10);
        let ch = challenge(&get(&f, None));
        let nonce = ch
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let resp = crate::connreq::digest::compute_response(
            crate::connreq::digest::Algorithm::Md5,
            "acs",
            REALM,
            "s3cret",
            "GET",
            PATH,
            nonce,
            None,
        );
        let auth = format!(
            "Digest username=\"acs\", realm=\"cwmpd\", nonce=\"{nonce}\", uri=\"{PATH}\", response=\"{resp}\""
        );
        assert_eq!(get(&f, Some(&auth)).status(), StatusCode::OK);
    }

    #[test]
    fn expired_nonce_gets_stale_challenge() {
        let f = fixture(10);
        let ch = challenge(&get(&f, None));
        f.clock.set(f.clock.get() + NONCE_LIFETIME.as_secs() + 1);
        let r = get(&f, Some(&answer(&ch, "s3cret", 1)));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let ch2 = challenge(&r);
        assert!(ch2.ends_with(", stale=true"), "{ch2}");
        // The fresh nonce works.
        assert_eq!(
            get(&f, Some(&answer(&ch2, "s3cret", 1))).status(),
            StatusCode::OK
        );
        // Within the lifetime it is not stale.
        f.clock.set(f.clock.get() + NONCE_LIFETIME.as_secs() - 1);
        assert_eq!(
            get(&f, Some(&answer(&ch2, "s3cret", 2))).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn path_method_enable_and_user() {
        let f = fixture(10);
        let r = f.h.handle(&Method::GET, "/other", "/other", None, peer());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = f.h.handle(&Method::POST, PATH, PATH, None, peer());
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET");
        // Extra query parameters are ignored (H3) as long as the Digest uri names them.
        let target = format!("{PATH}?x=1");
        let ch = challenge(&f.h.handle(&Method::GET, &target, PATH, None, peer()));
        let auth = DigestClient::respond(&ch, "GET", &target, "acs", "s3cret", "c", 1).unwrap();
        let r = f.h.handle(&Method::GET, &target, PATH, Some(&auth), peer());
        assert_eq!(r.status(), StatusCode::OK);
        // Wrong username.
        let ch = challenge(&get(&f, None));
        let auth = DigestClient::respond(&ch, "GET", PATH, "ACS", "s3cret", "c", 1).unwrap();
        assert_eq!(get(&f, Some(&auth)).status(), StatusCode::UNAUTHORIZED);
        // Disabled: 503 before anything else.
        f.tx.send_modify(|s| s.enabled = false);
        assert_eq!(get(&f, None).status(), StatusCode::SERVICE_UNAVAILABLE);
        // No username configured: 503.
        f.tx.send_modify(|s| {
            s.enabled = true;
            s.username.clear();
        });
        assert_eq!(get(&f, None).status(), StatusCode::SERVICE_UNAVAILABLE);
        // New credentials take effect at once.
        f.tx.send_modify(|s| {
            s.username = "acs".into();
            s.password = "new".into();
        });
        let ch = challenge(&get(&f, None));
        assert_eq!(
            get(&f, Some(&answer(&ch, "s3cret", 1))).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&f, Some(&answer(&ch, "new", 2))).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn rate_limit_503_without_retry_after_and_full_queue_still_200() {
        let mut f = fixture(3);
        let ch = challenge(&get(&f, None));
        for nc in 1..=3 {
            let r = get(&f, Some(&answer(&ch, "s3cret", nc)));
            assert_eq!(r.status(), StatusCode::OK, "nc={nc}");
        }
        let r = get(&f, Some(&answer(&ch, "s3cret", 4)));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get("retry-after").is_none());
        // Channel capacity 2: the third accepted request was answered 200 and dropped.
        assert!(f.rx.try_recv().is_ok() && f.rx.try_recv().is_ok());
        assert!(f.rx.try_recv().is_err());
    }

    #[test]
    fn random_values() {
        let p = random_path();
        assert_eq!(p.len(), 33);
        assert!(p.starts_with('/') && p[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(p, random_path());
        assert_ne!(random_secret(), random_secret());
    }

    /// The listener on a loopback port (call inside a LocalSet): its address, the settings
    /// sender and the accepted connection requests.
    async fn listening(
        drain: Drain,
    ) -> (
        SocketAddr,
        watch::Sender<CrSettings>,
        mpsc::Receiver<CrEvent>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stx, srx) = watch::channel(CrSettings {
            enabled: true,
            username: "acs".into(),
            password: "pw".into(),
            path: PATH.into(),
        });
        let (etx, erx) = mpsc::channel(8);
        let lim = Rc::new(RefCell::new(RateLimiter::per_period(
            10,
            Duration::from_secs(60),
        )));
        tokio::task::spawn_local(serve(vec![l], srx, lim, etx, [1; 32], drain));
        (addr, stx, erx)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn over_the_wire_keepalive_and_connection_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (_stop, stop) = watch::channel(false);
                let (done, _all_done) = mpsc::channel(1);
                let (addr, _settings, mut erx) = listening(Drain { stop, done }).await;
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut statuses = Vec::new();
                let mut closed = false;
                for i in 0..MAX_REQUESTS_PER_CONN {
                    let req = format!("GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n");
                    s.write_all(req.as_bytes()).await.unwrap();
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap();
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    statuses.push(text[9..12].to_string());
                    if i + 1 == MAX_REQUESTS_PER_CONN {
                        closed = text.to_ascii_lowercase().contains("connection: close");
                    }
                }
                assert_eq!(statuses, vec!["401"; MAX_REQUESTS_PER_CONN as usize]);
                assert!(closed);
                let mut rest = Vec::new();
                let n = s.read_to_end(&mut rest).await.unwrap();
                assert_eq!(n, 0, "server closes after the last request");
                assert!(erx.try_recv().is_err());
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_closes_the_port_and_lets_the_request_in_flight_finish() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (stop_tx, stop) = watch::channel(false);
                let (done, mut all_done) = mpsc::channel::<()>(1);
                let (addr, _settings, _erx) = listening(Drain { stop, done }).await;
                // A request half sent when the agent is told to stop.
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(format!("GET {PATH} HTTP/1.1\r\nHost: x\r\n").as_bytes())
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
                stop_tx.send(true).unwrap();
                // The port closes: new connections are refused (bounded wait for it).
                let mut refused = false;
                for _ in 0..1000 {
                    tokio::task::yield_now().await;
                    if tokio::net::TcpStream::connect(addr).await.is_err() {
                        refused = true;
                        break;
                    }
                }
                assert!(refused, "the port is still open after the stop");
                // The request in flight is answered, then the connection closes.
                s.write_all(b"\r\n").await.unwrap();
                let mut text = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut text))
                    .await
                    .expect("the connection is closed after the answer")
                    .unwrap();
                let text = String::from_utf8_lossy(&text);
                assert!(text.starts_with("HTTP/1.1 401"), "{text}");
                // Every task that held `done` has finished.
                let left = tokio::time::timeout(Duration::from_secs(5), all_done.recv()).await;
                assert_eq!(left, Ok(None), "the listener's tasks all ended");
            })
            .await;
    }
}
