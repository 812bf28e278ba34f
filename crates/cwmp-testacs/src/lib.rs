//! A scriptable test ACS for integration tests, the demo and benchmarks.
//!
//! It plays the ACS side of CWMP sessions over HTTP/1.1 on `127.0.0.1`:
//!
//! 1. the CPE's Inform is answered with an InformResponse (MaxEnvelopes from
//!    [`AcsOptions::max_envelopes`], the Inform's `cwmp:ID` echoed, in the
//!    namespace the CPE used), or with [`AcsOptions::inform_status`] to make
//!    the session fail (503 gets `Retry-After: 60`);
//! 2. CPE requests (TransferComplete, AutonomousTransferComplete,
//!    GetRPCMethods) get their responses;
//! 3. the CPE's empty POST, and every POST carrying a response or a fault,
//!    is answered with the next queued RPC (fresh `cwmp:ID`), or with 204
//!    (200 and an empty body with [`AcsOptions::end_with_200_empty`]), which
//!    ends the session;
//! 4. malformed messages are recorded (raw bytes kept) and answered with 400,
//!    which ends the session.
//!
//! It is also a file server for Download/Upload tests: [`TestAcs::serve_file`] serves static
//! content on a path (GET, optional Basic/Digest authentication, optionally announcing a wrong
//! Content-Length to simulate a truncated transfer), and [`TestAcs::accept_uploads`] records the
//! bodies PUT to a path ([`TestAcs::uploads`]).
//!
//! A session is one TCP connection's worth of requests; with
//! [`AcsOptions::set_cookie`] the InformResponse sets a `session` cookie, a
//! request on a new connection carrying it continues the session, and
//! [`SessionRecord::cookie_ok`] tells whether every request after the Inform
//! carried it.
//!
//! RPCs given to [`TestAcs::queue`] are claimed, all at once, by the next
//! session whose Inform arrives, and sent in order.
//!
//! Runtime: [`TestAcs::start`] spawns its tasks with plain `tokio::spawn`
//! (all futures are `Send`), so it works on a `current_thread` runtime, with
//! or without a `LocalSet`, as long as the runtime keeps being driven (e.g.
//! while the test awaits). Tests that drive a separate agent process
//! synchronously use [`spawn_in_thread`], which runs the ACS on its own
//! thread and runtime.
//!
//! [`binaries`] finds (and builds) the workspace's other binaries next to a test's own.

pub mod binaries;
pub mod prosody;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, header};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use cwmp_proto::connreq::digest::{DigestError, DigestServer};
use cwmp_proto::cwmp::soap::{
    AcsMessage, AcsRequest, CpeMessage, CwmpNs, CwmpVersion, Envelope, Inform, emit_acs,
    is_empty_body, parse_cpe_message,
};

/// Largest request body accepted.
const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Realm of the test ACS's challenges.
pub const REALM: &str = "cwmpd-testacs";
/// Name of the session cookie.
pub const COOKIE_NAME: &str = "session";

/// How the test ACS authenticates the CPE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AcsAuth {
    #[default]
    None,
    Basic {
        user: String,
        pass: String,
    },
    Digest {
        user: String,
        pass: String,
    },
}

/// A file served by the test ACS on GET.
#[derive(Debug, Clone, Default)]
pub struct ServedFile {
    pub body: Vec<u8>,
    /// Authentication required to fetch it.
    pub auth: AcsAuth,
    /// Content-Length to announce instead of the body's length. A larger value truncates the
    /// transfer: the body ends early and the connection is closed.
    pub content_length: Option<u64>,
}

/// Behaviour of a [`TestAcs`]. Can be changed while it runs with
/// [`TestAcs::update_options`].
#[derive(Debug, Clone)]
pub struct AcsOptions {
    pub auth: AcsAuth,
    /// Set a `session` cookie on the InformResponse and check it afterwards.
    pub set_cookie: bool,
    /// End sessions with 200 and an empty body instead of 204.
    pub end_with_200_empty: bool,
    /// Send `Connection: close` with the end-of-session response.
    pub connection_close_on_end: bool,
    /// Answer the Inform with this HTTP status instead of an InformResponse
    /// (e.g. 503, sent with `Retry-After: 60`, or 400), which fails the session.
    pub inform_status: Option<u16>,
    /// Answer 503 (with `Retry-After: 60`) to every Inform that carries this EventCode (e.g.
    /// "11 DU STATE CHANGE COMPLETE"): the CPE keeps what it wanted to deliver.
    pub refuse_event: Option<String>,
    /// MaxEnvelopes of the InformResponse.
    pub max_envelopes: u32,
    /// Wait this long before answering each request (a slow ACS; makes sessions long).
    pub response_delay: Duration,
    /// The CWMP version this ACS speaks: the InformResponse and everything after it go in that
    /// version's namespace, with `UseCWMPVersion` from 1.4 on (a 1.0–1.3 ACS knows no such
    /// header). None: answer in the namespace the CPE's Inform used, without the header.
    pub cwmp_version: Option<CwmpVersion>,
    /// Send this text as `UseCWMPVersion` instead (a hostile or broken ACS).
    pub use_cwmp_version_text: Option<String>,
}

impl Default for AcsOptions {
    fn default() -> Self {
        AcsOptions {
            auth: AcsAuth::None,
            set_cookie: true,
            end_with_200_empty: false,
            connection_close_on_end: false,
            inform_status: None,
            refuse_event: None,
            max_envelopes: 1,
            response_delay: Duration::ZERO,
            cwmp_version: None,
            use_cwmp_version_text: None,
        }
    }
}

/// What the ACS saw of one session.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The Inform (None when the first message was not a valid Inform).
    pub inform: Option<Inform>,
    /// Every parsed CPE message after the Inform, in order (requests,
    /// responses and faults).
    pub received: Vec<CpeMessage>,
    /// TCP connections the session used.
    pub connections: usize,
    /// `set_cookie` was on and every request after the Inform carried the
    /// cookie.
    pub cookie_ok: bool,
    /// When the session's first request arrived.
    pub started: Instant,
    /// When the Inform arrived.
    pub inform_at: Option<Instant>,
    /// Raw bodies of the messages that failed to parse.
    pub raw: Vec<Vec<u8>>,
    /// Why each of `raw` failed (or another protocol error, e.g. an empty
    /// POST before the Inform).
    pub errors: Vec<String>,
    /// The RPCs sent to the CPE, in order.
    pub sent: Vec<AcsRequest>,
    /// The HTTP status of every answer (401s included), in order.
    pub statuses: Vec<u16>,
    /// Empty POSTs received.
    pub empty_posts: usize,
    /// The session has ended (final answer sent, or the connection closed).
    pub ended: bool,
    /// When it ended.
    pub ended_at: Option<Instant>,
    /// The connection closed before the ACS ended the session.
    pub aborted: bool,
    /// Authorization failures (401 after credentials were sent).
    pub auth_failures: u32,
    /// Every non-empty body the CPE posted, as received (for schema validation).
    pub bodies: Vec<Vec<u8>>,
    /// The namespace of the CPE's Inform.
    pub inform_ns: Option<CwmpNs>,
    /// The Inform's `SupportedCWMPVersions` header.
    pub supported_cwmp_versions: Option<String>,
    /// The CWMP version this ACS answered the Inform with (its option, or the Inform's).
    pub version: Option<CwmpVersion>,
}

impl SessionRecord {
    fn new(now: Instant) -> Self {
        SessionRecord {
            inform: None,
            received: Vec::new(),
            connections: 1,
            cookie_ok: false,
            started: now,
            inform_at: None,
            raw: Vec::new(),
            errors: Vec::new(),
            sent: Vec::new(),
            statuses: Vec::new(),
            empty_posts: 0,
            ended: false,
            ended_at: None,
            aborted: false,
            auth_failures: 0,
            bodies: Vec::new(),
            inform_ns: None,
            supported_cwmp_versions: None,
            version: None,
        }
    }

    /// The session ended normally: Inform accepted and the ACS closed it with
    /// 204/200 (not by a failure status, a 400 or a dropped connection).
    pub fn succeeded(&self) -> bool {
        self.ended
            && !self.aborted
            && self.inform.is_some()
            && self.errors.is_empty()
            && matches!(self.statuses.last(), Some(200 | 204))
    }
}

struct SessionState {
    rec: SessionRecord,
    queue: VecDeque<AcsRequest>,
    cookie: Option<String>,
    ns: CwmpNs,
    requests: usize,
}

struct State {
    opts: AcsOptions,
    sessions: Vec<SessionState>,
    pending: Vec<AcsRequest>,
    /// When set, `pending` waits for a session whose Inform carries this event code.
    pending_event: Option<String>,
    next_id: u64,
    auth_failures: u32,
    /// Requests that arrived gzip-compressed.
    gzip_requests: u32,
    digest: DigestServer,
    files: HashMap<String, ServedFile>,
    upload_paths: HashMap<String, AcsAuth>,
    uploads: Vec<(String, Vec<u8>)>,
    file_gets: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.notify.notify_waiters();
        self.cond.notify_all();
    }

    fn sessions(&self) -> Vec<SessionRecord> {
        self.lock().sessions.iter().map(|s| s.rec.clone()).collect()
    }

    fn ended(st: &State) -> usize {
        st.sessions.iter().filter(|s| s.rec.ended).count()
    }

    fn queue(&self, rpcs: Vec<AcsRequest>, event: Option<&str>) {
        let mut st = self.lock();
        st.pending.extend(rpcs);
        st.pending_event = event.map(str::to_string);
    }

    fn serve_file(&self, path: &str, f: ServedFile) {
        self.lock().files.insert(path.to_string(), f);
    }

    fn accept_uploads(&self, path: &str, auth: AcsAuth) {
        self.lock().upload_paths.insert(path.to_string(), auth);
    }

    fn uploads(&self) -> Vec<(String, Vec<u8>)> {
        self.lock().uploads.clone()
    }

    fn file_gets(&self) -> Vec<String> {
        self.lock().file_gets.clone()
    }

    async fn wait_sessions(&self, n: usize, timeout: Duration) -> Vec<SessionRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if Self::ended(&self.lock()) >= n {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.sessions()
    }

    fn wait_sessions_blocking(&self, n: usize, timeout: Duration) -> Vec<SessionRecord> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while Self::ended(&st) < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.sessions.iter().map(|s| s.rec.clone()).collect()
    }
}

fn new_shared(opts: AcsOptions) -> Arc<Shared> {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; 32];
    let _ = ring::rand::SystemRandom::new().fill(&mut secret);
    Arc::new(Shared {
        state: Mutex::new(State {
            opts,
            sessions: Vec::new(),
            pending: Vec::new(),
            pending_event: None,
            next_id: 1,
            gzip_requests: 0,
            auth_failures: 0,
            digest: DigestServer::new(secret, REALM, Duration::from_secs(300)),
            files: HashMap::new(),
            upload_paths: HashMap::new(),
            uploads: Vec::new(),
            file_gets: Vec::new(),
        }),
        notify: Notify::new(),
        cond: Condvar::new(),
    })
}

/// A running test ACS (see the module documentation). Stops when dropped.
pub struct TestAcs {
    view: AcsView,
    task: tokio::task::JoinHandle<()>,
}

/// What both faces of a running test ACS ([`TestAcs`] in the caller's runtime,
/// [`TestAcsHandle`] on its own thread) offer: its address, scripting and records.
pub struct AcsView {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl AcsView {
    /// `http://127.0.0.1:PORT/acs`.
    pub fn url(&self) -> String {
        format!("http://{}/acs", self.addr)
    }
    /// Queues RPCs for the next session.
    pub fn queue(&self, rpcs: Vec<AcsRequest>) {
        self.shared.queue(rpcs, None);
    }
    /// Queues RPCs for the next session whose Inform carries `event` (e.g. `6 CONNECTION
    /// REQUEST`), as an ACS answers a connection request it asked for; sessions the CPE opens
    /// for other reasons in between get none of them.
    pub fn queue_on_event(&self, event: &str, rpcs: Vec<AcsRequest>) {
        self.shared.queue(rpcs, Some(event));
    }
    /// Serves `file` on GET `path` (e.g. `/files/fw.bin`); replaces an earlier one.
    pub fn serve_file(&self, path: &str, file: ServedFile) {
        self.shared.serve_file(path, file);
    }
    /// Accepts HTTP PUTs to `path` (with the given authentication) and records their bodies.
    pub fn accept_uploads(&self, path: &str, auth: AcsAuth) {
        self.shared.accept_uploads(path, auth);
    }
    /// The uploads received so far: (path, body), oldest first.
    pub fn uploads(&self) -> Vec<(String, Vec<u8>)> {
        self.shared.uploads()
    }
    /// The paths of the authenticated file GETs answered so far, oldest first.
    pub fn file_gets(&self) -> Vec<String> {
        self.shared.file_gets()
    }
    /// `http://127.0.0.1:PORT{path}`.
    pub fn file_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    /// Completed and in-progress sessions, oldest first.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.shared.sessions()
    }
    /// Sessions seen so far (ended or not).
    pub fn session_count(&self) -> usize {
        self.shared.lock().sessions.len()
    }
    /// A copy of session `i` (0 = the first).
    pub fn session(&self, i: usize) -> Option<SessionRecord> {
        self.shared.lock().sessions.get(i).map(|s| s.rec.clone())
    }
    /// Changes the options for the requests still to come.
    pub fn update_options(&self, f: impl FnOnce(&mut AcsOptions)) {
        f(&mut self.shared.lock().opts);
    }
    /// 401 answers given to requests that carried wrong credentials.
    pub fn auth_failures(&self) -> u32 {
        self.shared.lock().auth_failures
    }
    /// Requests whose body arrived gzip-compressed.
    pub fn gzip_requests(&self) -> u32 {
        self.shared.lock().gzip_requests
    }
}

impl std::ops::Deref for TestAcs {
    type Target = AcsView;
    fn deref(&self) -> &AcsView {
        &self.view
    }
}

impl std::ops::Deref for TestAcsHandle {
    type Target = AcsView;
    fn deref(&self) -> &AcsView {
        &self.view
    }
}

impl TestAcs {
    /// Starts on `127.0.0.1:0` inside the current tokio runtime.
    pub async fn start(opts: AcsOptions) -> std::io::Result<TestAcs> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Starts on the given address inside the current tokio runtime.
    pub async fn start_on(addr: SocketAddr, opts: AcsOptions) -> std::io::Result<TestAcs> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = new_shared(opts);
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(TestAcs {
            view: AcsView { addr, shared },
            task,
        })
    }

    /// Waits until `n` sessions have ended (or the timeout passed) and
    /// returns all sessions.
    pub async fn wait_sessions(&self, n: usize, timeout: Duration) -> Vec<SessionRecord> {
        self.shared.wait_sessions(n, timeout).await
    }

    /// Stops accepting and closes every connection.
    pub fn stop(self) {}
}

impl Drop for TestAcs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A [`TestAcs`] running on its own thread (with its own `current_thread`
/// runtime), for synchronous tests. Stops when dropped.
pub struct TestAcsHandle {
    view: AcsView,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a [`TestAcs`] on `127.0.0.1:0` on its own thread. Panics if it
/// cannot bind (see [`try_spawn_in_thread`]).
pub fn spawn_in_thread(opts: AcsOptions) -> TestAcsHandle {
    try_spawn_in_thread(SocketAddr::from(([127, 0, 0, 1], 0)), opts).expect("start the test ACS")
}

/// Starts a [`TestAcs`] on `addr` on its own thread.
pub fn try_spawn_in_thread(addr: SocketAddr, opts: AcsOptions) -> std::io::Result<TestAcsHandle> {
    spawn_thread_in(None, addr, opts)
}

/// Starts a [`TestAcs`] on `addr` inside the network namespace `netns` (a name under
/// /var/run/netns, as made by `ip netns add`); only its thread enters the namespace.
pub fn try_spawn_in_netns(
    netns: &str,
    addr: SocketAddr,
    opts: AcsOptions,
) -> std::io::Result<TestAcsHandle> {
    spawn_thread_in(Some(format!("/var/run/netns/{netns}")), addr, opts)
}

fn spawn_thread_in(
    netns: Option<String>,
    addr: SocketAddr,
    opts: AcsOptions,
) -> std::io::Result<TestAcsHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("testacs".into())
        .spawn(move || {
            if let Some(ns) = netns {
                let entered = std::fs::File::open(&ns).and_then(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
                if let Err(e) = entered {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match TestAcs::start_on(addr, opts).await {
                    Ok(acs) => {
                        let _ = ready_tx.send(Ok((acs.addr, acs.shared.clone())));
                        let _ = stop_rx.await;
                        acs.stop();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })?;
    match ready_rx.recv() {
        Ok(Ok((addr, shared))) => Ok(TestAcsHandle {
            view: AcsView { addr, shared },
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(std::io::Error::other("test ACS thread died"))
        }
    }
}

impl TestAcsHandle {
    /// Blocks until `n` sessions have ended (or the timeout passed) and
    /// returns all sessions.
    pub fn wait_sessions(&self, n: usize, timeout: Duration) -> Vec<SessionRecord> {
        self.shared.wait_sessions_blocking(n, timeout)
    }

    /// Waits until `n` sessions have ended (or the timeout passed) without copying the
    /// records (for benchmarks with thousands of sessions); returns how many have ended.
    pub fn wait_ended(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while Shared::ended(&st) < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Shared::ended(&st)
    }

    /// Stops the ACS and joins its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestAcsHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    conns.spawn(serve_conn(s, shared.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "test ACS accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[derive(Default)]
struct ConnState {
    session: Option<usize>,
    authenticated: bool,
    /// Statuses answered on this connection before it belonged to a session (the 401 of the
    /// first request); they are put at the front of the session's record.
    pre_statuses: Vec<u16>,
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(Mutex::new(ConnState::default()));
    let svc = {
        let shared = shared.clone();
        let conn = conn.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(dispatch(&shared, &conn, req).await) }
        })
    };
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
    let idx = conn.lock().unwrap_or_else(|e| e.into_inner()).session;
    if let Some(i) = idx {
        let mut st = shared.lock();
        let s = &mut st.sessions[i].rec;
        if !s.ended {
            s.ended = true;
            s.aborted = true;
            s.ended_at = Some(Instant::now());
        }
        drop(st);
        shared.changed();
    }
}

fn reply(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    r
}

fn xml_reply(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = reply(200, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/xml; charset=\"utf-8\""),
    );
    r
}

fn set_header(r: &mut Response<Full<Bytes>>, name: header::HeaderName, value: &str) {
    if let Ok(v) = header::HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_cookie(req: &Request<hyper::body::Incoming>) -> Option<String> {
    let prefix = format!("{COOKIE_NAME}=");
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([';', ',']))
        .find_map(|p| p.trim().strip_prefix(prefix.as_str()).map(str::to_string))
}

/// Checks the request's credentials; `Some(response)` when it must be refused.
fn check_auth(
    st: &mut State,
    conn: &mut ConnState,
    req: &Request<hyper::body::Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match st.opts.auth.clone() {
        AcsAuth::None => None,
        AcsAuth::Basic { user, pass } => {
            let ok = authz.as_deref().is_some_and(|a| {
                a.split_once(' ').is_some_and(|(scheme, cred)| {
                    scheme.eq_ignore_ascii_case("Basic")
                        && base64_decode(cred)
                            .is_some_and(|d| d == format!("{user}:{pass}").as_bytes())
                })
            });
            if ok || (authz.is_none() && conn.authenticated) {
                conn.authenticated = true;
                return None;
            }
            if authz.is_some() {
                st.auth_failures += 1;
            }
            let mut r = reply(401, Vec::new());
            set_header(
                &mut r,
                header::WWW_AUTHENTICATE,
                &format!("Basic realm=\"{REALM}\""),
            );
            Some(r)
        }
        AcsAuth::Digest { user, pass } => {
            if authz.is_none() && conn.authenticated {
                return None;
            }
            let target = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let now = now_unix();
            let stale = match st
                .digest
                .verify("POST", &target, authz.as_deref(), &user, &pass, now)
            {
                Ok(()) => {
                    conn.authenticated = true;
                    return None;
                }
                Err(DigestError::StaleNonce) => true,
                Err(DigestError::Missing) if authz.is_none() => false,
                Err(e) => {
                    tracing::debug!(error = %e, "test ACS: Digest verification failed");
                    st.auth_failures += 1;
                    false
                }
            };
            let mut r = reply(401, Vec::new());
            set_header(
                &mut r,
                header::WWW_AUTHENTICATE,
                &st.digest.challenge(now, stale),
            );
            Some(r)
        }
    }
}

async fn handle(
    shared: &Shared,
    conn: &Mutex<ConnState>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return reply(405, Vec::new());
    }
    let cookie = request_cookie(&req);
    // Authentication first (before reading the body, as a real ACS may).
    {
        let mut st = shared.lock();
        let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = check_auth(&mut st, &mut c, &req) {
            if let Some(i) = c.session {
                st.sessions[i].rec.statuses.push(401);
                if req.headers().contains_key(header::AUTHORIZATION) {
                    st.sessions[i].rec.auth_failures += 1;
                }
            } else {
                c.pre_statuses.push(401);
            }
            return r;
        }
    }
    let delay = shared.lock().opts.response_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let gzipped = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(413, Vec::new()),
    };
    let body = if gzipped {
        use std::io::Read;
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(&body[..]).take(MAX_REQUEST as u64);
        if d.read_to_end(&mut out).is_err() {
            return reply(400, Vec::new());
        }
        shared.lock().gzip_requests += 1;
        Bytes::from(out)
    } else {
        body
    };
    let resp = {
        let mut st = shared.lock();
        let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
        let resp = process(&mut st, &mut c, cookie, &body);
        if let Some(i) = c.session {
            st.sessions[i].rec.statuses.push(resp.status().as_u16());
        }
        resp
    };
    shared.changed();
    resp
}

/// Checks the credentials of a file request (no per-connection memory).
fn check_file_auth(
    st: &mut State,
    auth: &AcsAuth,
    req: &Request<hyper::body::Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let now = now_unix();
    let challenge = match auth {
        AcsAuth::None => return None,
        AcsAuth::Basic { user, pass } => {
            let ok = authz.as_deref().is_some_and(|a| {
                a.split_once(' ').is_some_and(|(scheme, cred)| {
                    scheme.eq_ignore_ascii_case("Basic")
                        && base64_decode(cred)
                            .is_some_and(|d| d == format!("{user}:{pass}").as_bytes())
                })
            });
            if ok {
                return None;
            }
            format!("Basic realm=\"{REALM}\"")
        }
        AcsAuth::Digest { user, pass } => {
            let target = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let method = req.method().as_str().to_string();
            match st
                .digest
                .verify(&method, &target, authz.as_deref(), user, pass, now)
            {
                Ok(()) => return None,
                Err(DigestError::StaleNonce) => st.digest.challenge(now, true),
                Err(_) => st.digest.challenge(now, false),
            }
        }
    };
    if authz.is_some() {
        st.auth_failures += 1;
    }
    let mut r = reply(401, Vec::new());
    set_header(&mut r, header::WWW_AUTHENTICATE, &challenge);
    Some(r)
}

/// A response body: whole, or cut short (the announced Content-Length is never reached; after
/// the data is flushed the body fails, which makes hyper close the connection).
enum AnyBody {
    Full(Full<Bytes>),
    Truncated(Option<Bytes>, Pin<Box<tokio::time::Sleep>>),
}

impl hyper::body::Body for AnyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        match self.get_mut() {
            AnyBody::Full(f) => Pin::new(f)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(|e| match e {}))),
            AnyBody::Truncated(data, sleep) => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(d))));
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::other("truncated")))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

async fn dispatch(
    shared: &Shared,
    conn: &Mutex<ConnState>,
    req: Request<hyper::body::Incoming>,
) -> Response<AnyBody> {
    if req.method() == Method::GET || req.method() == Method::PUT {
        return handle_file(shared, req).await;
    }
    handle(shared, conn, req).await.map(AnyBody::Full)
}

/// GET of a served file, PUT of an upload.
async fn handle_file(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<AnyBody> {
    let path = req.uri().path().to_string();
    let is_get = req.method() == Method::GET;
    {
        let mut st = shared.lock();
        let auth = if is_get {
            st.files.get(&path).map(|f| f.auth.clone())
        } else {
            st.upload_paths.get(&path).cloned()
        };
        let Some(auth) = auth else {
            return reply(404, Vec::new()).map(AnyBody::Full);
        };
        if let Some(r) = check_file_auth(&mut st, &auth, &req) {
            return r.map(AnyBody::Full);
        }
        if is_get {
            st.file_gets.push(path.clone());
            let f = st.files[&path].clone();
            drop(st);
            shared.changed();
            let len = f.content_length.unwrap_or(f.body.len() as u64);
            let truncated = len > f.body.len() as u64;
            let mut r = reply(200, Vec::new());
            set_header(&mut r, header::CONTENT_LENGTH, &len.to_string());
            set_header(&mut r, header::CONTENT_TYPE, "application/octet-stream");
            let body = Bytes::from(f.body);
            return r.map(|_| {
                if truncated {
                    AnyBody::Truncated(
                        Some(body),
                        Box::pin(tokio::time::sleep(Duration::from_millis(200))),
                    )
                } else {
                    AnyBody::Full(Full::new(body))
                }
            });
        }
    }
    let body = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(413, Vec::new()).map(AnyBody::Full),
    };
    shared.lock().uploads.push((path, body.to_vec()));
    shared.changed();
    reply(201, Vec::new()).map(AnyBody::Full)
}

/// Finds or creates the session of a request.
fn session_for(st: &mut State, conn: &mut ConnState, cookie: Option<&str>) -> usize {
    if let Some(i) = conn.session
        && !st.sessions[i].rec.ended
    {
        return i;
    }
    if let Some(ck) = cookie
        && let Some(i) = st
            .sessions
            .iter()
            .position(|s| s.cookie.as_deref() == Some(ck))
        && (!st.sessions[i].rec.ended || st.sessions[i].rec.aborted)
        && conn.session != Some(i)
    {
        let s = &mut st.sessions[i].rec;
        s.connections += 1;
        s.ended = false;
        s.aborted = false;
        s.ended_at = None;
        conn.session = Some(i);
        return i;
    }
    let mut rec = SessionRecord::new(Instant::now());
    rec.statuses = std::mem::take(&mut conn.pre_statuses);
    st.sessions.push(SessionState {
        rec,
        queue: VecDeque::new(),
        cookie: None,
        ns: CwmpNs::default(),
        requests: 0,
    });
    let i = st.sessions.len() - 1;
    conn.session = Some(i);
    i
}

fn end_session(st: &mut State, i: usize) -> Response<Full<Bytes>> {
    let mut r = if st.opts.end_with_200_empty {
        reply(200, Vec::new())
    } else {
        reply(204, Vec::new())
    };
    if st.opts.connection_close_on_end {
        set_header(&mut r, header::CONNECTION, "close");
    }
    mark_ended(st, i);
    r
}

fn mark_ended(st: &mut State, i: usize) {
    let s = &mut st.sessions[i].rec;
    s.ended = true;
    s.ended_at = Some(Instant::now());
}

fn fail_session(st: &mut State, i: usize, raw: &[u8], why: String) -> Response<Full<Bytes>> {
    let s = &mut st.sessions[i].rec;
    s.raw.push(raw.to_vec());
    s.errors.push(why.clone());
    mark_ended(st, i);
    let mut r = reply(400, why.into_bytes());
    set_header(&mut r, header::CONNECTION, "close");
    r
}

fn send_acs(
    st: &mut State,
    i: usize,
    msg: AcsMessage,
    id: Option<String>,
) -> Response<Full<Bytes>> {
    send_acs_with(st, i, msg, id, None)
}

fn send_acs_with(
    st: &mut State,
    i: usize,
    msg: AcsMessage,
    id: Option<String>,
    use_cwmp_version: Option<String>,
) -> Response<Full<Bytes>> {
    let id = id.unwrap_or_else(|| {
        let n = st.next_id;
        st.next_id += 1;
        format!("acs-{n}")
    });
    let mut env = Envelope::new(msg).with_id(id).with_ns(st.sessions[i].ns);
    env.use_cwmp_version = use_cwmp_version;
    let mut out = Vec::with_capacity(512);
    emit_acs(&env, &mut out);
    xml_reply(out)
}

fn next_rpc_or_end(st: &mut State, i: usize) -> Response<Full<Bytes>> {
    match st.sessions[i].queue.pop_front() {
        Some(rpc) => {
            st.sessions[i].rec.sent.push(rpc.clone());
            send_acs(st, i, AcsMessage::Request(rpc), None)
        }
        None => end_session(st, i),
    }
}

fn process(
    st: &mut State,
    conn: &mut ConnState,
    cookie: Option<String>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let i = session_for(st, conn, cookie.as_deref());
    {
        let set_cookie = st.opts.set_cookie;
        let s = &mut st.sessions[i];
        s.requests += 1;
        if s.requests > 1 && set_cookie && (s.cookie.is_none() || s.cookie != cookie) {
            s.rec.cookie_ok = false;
        }
    }
    if is_empty_body(body) {
        st.sessions[i].rec.empty_posts += 1;
        if st.sessions[i].rec.inform.is_none() {
            return fail_session(st, i, body, "empty POST before the Inform".into());
        }
        return next_rpc_or_end(st, i);
    }
    st.sessions[i].rec.bodies.push(body.to_vec());
    let env = match parse_cpe_message(body) {
        Ok(env) => env,
        Err(e) => return fail_session(st, i, body, e.to_string()),
    };
    let has_inform = st.sessions[i].rec.inform.is_some();
    match env.body {
        CpeMessage::Inform(inform) => {
            if has_inform {
                return fail_session(st, i, body, "second Inform in the session".into());
            }
            let now = Instant::now();
            let wanted = st
                .pending_event
                .as_ref()
                .is_none_or(|want| inform.events.iter().any(|e| &e.event_code == want));
            let pending = if wanted {
                st.pending_event = None;
                std::mem::take(&mut st.pending)
            } else {
                Vec::new()
            };
            let set_cookie = st.opts.set_cookie;
            let refused = st
                .opts
                .refuse_event
                .as_ref()
                .is_some_and(|want| inform.events.iter().any(|e| &e.event_code == want));
            let s = &mut st.sessions[i];
            s.rec.inform = Some(inform);
            s.rec.inform_at = Some(now);
            s.ns = st.opts.cwmp_version.map_or(env.ns, CwmpVersion::ns);
            s.rec.inform_ns = Some(env.ns);
            s.rec.supported_cwmp_versions = env.supported_cwmp_versions.clone();
            s.rec.version = Some(
                st.opts
                    .cwmp_version
                    .unwrap_or_else(|| CwmpVersion::of_ns(env.ns)),
            );
            s.queue.extend(pending);
            let status = if refused {
                Some(503)
            } else {
                st.opts.inform_status
            };
            if let Some(status) = status {
                let mut r = reply(status, Vec::new());
                if status == 503 {
                    set_header(&mut r, header::RETRY_AFTER, "60");
                }
                set_header(&mut r, header::CONNECTION, "close");
                mark_ended(st, i);
                return r;
            }
            let use_version = st.opts.use_cwmp_version_text.clone().or_else(|| {
                st.opts
                    .cwmp_version
                    .filter(|v| *v >= CwmpVersion::V1_4)
                    .map(|v| v.as_str().to_string())
            });
            let mut r = send_acs_with(
                st,
                i,
                AcsMessage::InformResponse {
                    max_envelopes: st.opts.max_envelopes,
                },
                env.id,
                use_version,
            );
            if set_cookie {
                let n = st.next_id;
                st.next_id += 1;
                let value = format!("s{i}x{n}x{:x}", now_unix());
                let s = &mut st.sessions[i];
                s.cookie = Some(value.clone());
                s.rec.cookie_ok = true;
                set_header(
                    &mut r,
                    header::SET_COOKIE,
                    &format!("{COOKIE_NAME}={value}; Path=/; HttpOnly"),
                );
            }
            r
        }
        _ if !has_inform => {
            fail_session(st, i, body, "session does not start with an Inform".into())
        }
        msg => {
            let answer = match &msg {
                CpeMessage::TransferComplete(_) => Some(AcsMessage::TransferCompleteResponse),
                CpeMessage::AutonomousTransferComplete(_) => {
                    Some(AcsMessage::AutonomousTransferCompleteResponse)
                }
                CpeMessage::DUStateChangeComplete(_) => {
                    Some(AcsMessage::DUStateChangeCompleteResponse)
                }
                CpeMessage::AutonomousDUStateChangeComplete(_) => {
                    Some(AcsMessage::AutonomousDUStateChangeCompleteResponse)
                }
                CpeMessage::GetRPCMethods => Some(AcsMessage::GetRPCMethodsResponse {
                    methods: [
                        "Inform",
                        "GetRPCMethods",
                        "TransferComplete",
                        "AutonomousTransferComplete",
                        "DUStateChangeComplete",
                        "AutonomousDUStateChangeComplete",
                    ]
                    .map(String::from)
                    .to_vec(),
                }),
                _ => None,
            };
            st.sessions[i].rec.received.push(msg);
            match answer {
                Some(a) => send_acs(st, i, a, env.id),
                None => next_rpc_or_end(st, i),
            }
        }
    }
}

/// Standard base64 (Basic credentials).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// Where the data-model files are: `CWMPD_DATAMODEL`, `./datamodel`, the source tree, or the
/// installed location.
pub fn datamodel_dir() -> std::path::PathBuf {
    if let Ok(d) = std::env::var("CWMPD_DATAMODEL") {
        return std::path::PathBuf::from(d);
    }
    for c in [
        std::path::PathBuf::from("datamodel"),
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../datamodel")),
    ] {
        if c.join("00-device.xml").exists() {
            return c.canonicalize().unwrap_or(c);
        }
    }
    std::path::PathBuf::from("/usr/share/cwmpd/datamodel")
}
