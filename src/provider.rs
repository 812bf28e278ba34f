//! External providers: one long-lived program per subtree, speaking JSON lines on stdin/stdout.
//! The protocol, limits and the agent's reactions are specified in docs/PROVIDERS.md.
//!
//! Requests (agent → program), one JSON object per line, each with a numeric `id`:
//!   {"id":1,"op":"get","paths":["Device.Services.STBService.1.Enable", ...]}
//!   {"id":2,"op":"set","values":{"Device....X":"value", ...}}
//!   {"id":3,"op":"add","object":"Device.Services.STBService.","instance":2}
//!   {"id":4,"op":"delete","object":"Device.Services.STBService.2."}
//! Replies carry the same `id`: {"id":1,"values":{"path":"value",...}} or {"id":2,"ok":true}
//! or {"id":2,"error":"reason"}. The program may also write, at any time, a line without an
//! id to push changed values: {"notify":{"path":"value",...}}.
//!
//! No call can stall the agent: every request has a deadline ([`Limits::timeout`]) and is
//! answered by then; a full queue or a provider in back-off fails at once. Nothing the program
//! does blocks the provider task: writes to its stdin are non-blocking and bounded by the
//! request's deadline, lines are capped while they are read, pushed values are coalesced
//! instead of waiting for the engine, and warnings are rate-limited. A request without an
//! answer by its deadline means the program is hung: it is killed (SIGKILL to its PID) before
//! the caller hears of the failure, so a late answer can never apply a change the caller was
//! told failed, and it is restarted with exponential back-off.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// `cwmpd provider-check`: a conformance test of a provider program, for middleware authors.
pub mod check;

/// Bounds of one provider; [`Limits::default`] is what the agent uses.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a request may take, from the call to the answer (queueing and writing
    /// included). A request without an answer by then fails and the program is killed.
    pub timeout: Duration,
    /// Longest line accepted from the program (bytes, newline excluded); longer lines are
    /// discarded up to their newline without being buffered.
    pub max_line: usize,
    /// Requests waiting to be sent (beyond this a call fails with "provider busy"); as many
    /// may be sent and waiting for their answers.
    pub queue: usize,
    /// First restart delay; doubled after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run at least this long resets the restart delay to `backoff_initial`.
    pub healthy_after: Duration,
    /// Warnings logged per provider: a burst of this many, then this many per second; the
    /// rest are counted and reported as "N suppressed".
    pub warnings_per_second: u32,
    /// Bytes (paths + values) of pushed values held while the engine is busy; pushes beyond
    /// are dropped and counted. Later values of the same path replace earlier ones.
    pub max_pushed_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: Duration::from_secs(5),
            max_line: 1 << 20,
            queue: 32,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(30),
            warnings_per_second: 5,
            max_pushed_bytes: 256 << 10,
        }
    }
}

/// Longest stderr line logged (longer ones are discarded); excerpt shown in the log.
const STDERR_LINE: usize = 4096;
const EXCERPT: usize = 120;
/// Longest error text of a provider passed on to the caller (and to the ACS).
const MAX_ERROR_TEXT: usize = 256;
/// How long the caller waits beyond the deadline for the provider task's verdict; the task
/// answers by the deadline, this only guards against a task that is not being polled.
const GRACE: Duration = Duration::from_millis(250);
const READ_CHUNK: usize = 32 << 10;

/// Where a provider is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderState {
    /// Being started; requests are queued.
    #[default]
    Starting,
    /// Running; requests are sent.
    Running,
    /// Ended (exit, hang, failed start) and waiting to be restarted; requests fail at once.
    BackOff,
    /// Cannot run (no command) or the agent is shutting down; requests fail at once.
    Stopped,
}

/// Counters of one provider since the agent started (see docs/PROVIDERS.md).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProviderStats {
    pub state: ProviderState,
    /// PID of the running program.
    pub pid: Option<u32>,
    /// Programs started.
    pub starts: u64,
    /// Times the provider ended (exited, hung, failed to start) and a restart was scheduled.
    pub restarts: u64,
    /// Programs killed because a request got no answer by its deadline.
    pub hangs: u64,
    /// Requests failed for lack of an answer by their deadline.
    pub timeouts: u64,
    /// Requests refused because the queue was full.
    pub busy: u64,
    /// Requests refused during back-off.
    pub not_running: u64,
    /// Lines longer than the limit (discarded).
    pub oversized_lines: u64,
    /// Lines that are not a JSON object of the protocol: invalid UTF-8, not JSON, not an
    /// object, neither answer nor notify, malformed answer or notify.
    pub bad_lines: u64,
    /// Answers whose id no waiting request has.
    pub unknown_ids: u64,
    /// Answers that came after their request's deadline (the program was then killed).
    pub late_answers: u64,
    /// Pushed values (per path) dropped because too many were waiting for the engine.
    pub notify_dropped: u64,
    /// Lines the program wrote to its stderr (logged, rate-limited).
    pub stderr_lines: u64,
    /// Log lines suppressed by the rate limit.
    pub suppressed_warnings: u64,
    /// The current (or last) restart delay.
    pub backoff_ms: u64,
    /// Why the provider last ended or failed a request.
    pub last_problem: Option<String>,
}

struct Shared {
    stats: ProviderStats,
    /// When the next start is due (in back-off).
    retry_at: Option<Instant>,
}

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

type Reply = oneshot::Sender<Result<Value, ProviderError>>;

struct Request {
    op: &'static str,
    body: Map<String, Value>,
    deadline: Instant,
    reply: Reply,
}

/// Handle used by the engine to talk to one provider. Cheap to clone; every call ends within
/// [`Limits::timeout`] (plus a small margin) whatever the program does.
#[derive(Clone)]
pub struct Provider {
    pub index: usize,
    pub prefix: String,
    timeout: Duration,
    queue: usize,
    tx: mpsc::Sender<Request>,
    shared: Arc<Mutex<Shared>>,
}

impl Provider {
    /// Starts the provider task with the default [`Limits`]. Pushed values arrive on `notify`
    /// as (provider index, values). Needs a tokio `LocalSet`.
    pub fn spawn(
        index: usize,
        prefix: String,
        argv: Vec<String>,
        notify: mpsc::Sender<(usize, BTreeMap<String, String>)>,
    ) -> Provider {
        Provider::spawn_with(index, prefix, argv, notify, Limits::default())
    }

    /// Like [`spawn`](Self::spawn) with explicit limits (tests use short timeouts).
    pub fn spawn_with(
        index: usize,
        prefix: String,
        argv: Vec<String>,
        notify: mpsc::Sender<(usize, BTreeMap<String, String>)>,
        limits: Limits,
    ) -> Provider {
        let queue = limits.queue.max(1);
        let timeout = limits.timeout;
        let (tx, rx) = mpsc::channel(queue);
        let shared = Arc::new(Mutex::new(Shared {
            stats: ProviderStats::default(),
            retry_at: None,
        }));
        let task = Task {
            index,
            prefix: prefix.clone(),
            argv,
            timeout,
            warn_limit: RateLimit::new(limits.warnings_per_second, limits.warnings_per_second),
            // A traceback is worth a bigger burst.
            stderr_limit: RateLimit::new(
                4 * limits.warnings_per_second,
                limits.warnings_per_second,
            ),
            limits: Limits { queue, ..limits },
            shared: shared.clone(),
            notify,
            next_id: 1,
            pushed: BTreeMap::new(),
            pushed_bytes: 0,
        };
        tokio::task::spawn_local(task.run(rx));
        Provider {
            index,
            prefix,
            timeout,
            queue,
            tx,
            shared,
        }
    }

    /// A handle whose program never runs (its request channel is closed): for tests of the
    /// engine's pure halves, which never call it.
    #[cfg(test)]
    pub(crate) fn detached(index: usize, prefix: &str) -> Provider {
        let (tx, _) = mpsc::channel(1);
        Provider {
            index,
            prefix: prefix.to_string(),
            timeout: Duration::from_secs(1),
            queue: 1,
            tx,
            shared: Arc::new(Mutex::new(Shared {
                stats: ProviderStats::default(),
                retry_at: None,
            })),
        }
    }

    /// Counters and state (for `cwmpd ctl status`).
    pub fn stats(&self) -> ProviderStats {
        lock(&self.shared).stats.clone()
    }

    pub fn state(&self) -> ProviderState {
        lock(&self.shared).stats.state
    }

    async fn call(
        &self,
        op: &'static str,
        body: Map<String, Value>,
    ) -> Result<Value, ProviderError> {
        let now = Instant::now();
        {
            let mut sh = lock(&self.shared);
            match sh.stats.state {
                ProviderState::BackOff => {
                    sh.stats.not_running += 1;
                    return Err(ProviderError::NotRunning {
                        why: sh
                            .stats
                            .last_problem
                            .clone()
                            .unwrap_or_else(|| "ended".into()),
                        retry_in_ms: sh
                            .retry_at
                            .map(|t| t.saturating_duration_since(now).as_millis()),
                    });
                }
                ProviderState::Stopped => {
                    return Err(ProviderError::Stopped(
                        sh.stats
                            .last_problem
                            .clone()
                            .unwrap_or_else(|| "agent shutting down".into()),
                    ));
                }
                ProviderState::Starting | ProviderState::Running => {}
            }
        }
        let deadline = now + self.timeout;
        let (reply, answer) = oneshot::channel();
        let req = Request {
            op,
            body,
            deadline,
            reply,
        };
        if let Err(e) = self.tx.try_send(req) {
            return Err(match e {
                TrySendError::Full(_) => {
                    lock(&self.shared).stats.busy += 1;
                    ProviderError::Busy(self.queue)
                }
                TrySendError::Closed(_) => ProviderError::Stopped("its worker ended".into()),
            });
        }
        match tokio::time::timeout_at(deadline + GRACE, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProviderError::Stopped("its worker ended".into())),
            Err(_) => {
                lock(&self.shared).stats.timeouts += 1;
                Err(ProviderError::Timeout(self.timeout.as_millis()))
            }
        }
    }

    pub async fn get(&self, paths: &[String]) -> Result<BTreeMap<String, String>, ProviderError> {
        let mut body = Map::new();
        body.insert("paths".into(), Value::from(paths.to_vec()));
        let v = self.call("get", body).await?;
        Ok(string_map(&v))
    }

    pub async fn set(&self, values: &[(String, String)]) -> Result<(), ProviderError> {
        let m: Map<String, Value> = values
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut body = Map::new();
        body.insert("values".into(), Value::Object(m));
        self.call("set", body).await.map(|_| ())
    }

    pub async fn add(&self, table: &str, instance: u32) -> Result<(), ProviderError> {
        let mut body = Map::new();
        body.insert("object".into(), Value::from(table));
        body.insert("instance".into(), Value::from(instance));
        self.call("add", body).await.map(|_| ())
    }

    pub async fn delete(&self, object: &str) -> Result<(), ProviderError> {
        let mut body = Map::new();
        body.insert("object".into(), Value::from(object));
        self.call("delete", body).await.map(|_| ())
    }
}

/// Why a provider call gave no answer (the engine turns it into a CWMP fault naming the
/// provider; docs/PROVIDERS.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Backing off after a crash or hang; `retry_in_ms` until the next start.
    #[error("provider not running ({why}){}", retry_note(*.retry_in_ms))]
    NotRunning {
        why: String,
        retry_in_ms: Option<u128>,
    },
    /// Stopped for good (agent shutting down, or the worker is gone).
    #[error("provider stopped: {0}")]
    Stopped(String),
    /// Its request queue is full.
    #[error("provider busy: {0} requests already waiting")]
    Busy(usize),
    /// No answer within the configured timeout (milliseconds).
    #[error("provider did not answer within {0} ms")]
    Timeout(u128),
    /// It answered with an error, a malformed answer, or died while the request was open.
    #[error("{0}")]
    Failed(String),
}

fn retry_note(ms: Option<u128>) -> String {
    ms.map(|ms| format!("; next start in {ms} ms"))
        .unwrap_or_default()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Value::Object(m) = v {
        for (k, v) in m {
            if let Some(s) = scalar_text(v) {
                out.insert(k.clone(), s);
            }
        }
    }
    out
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// At most `max` characters of `s`, on a char boundary.
fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A printable excerpt of raw bytes from a program: quoted, non-ASCII and control bytes
/// escaped (`\xff`), clipped.
fn excerpt(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(EXCERPT)];
    let more = if bytes.len() > EXCERPT { "…" } else { "" };
    format!("\"{}\"{more}", head.escape_ascii())
}

/// Splits a byte stream into lines of at most `max` bytes without ever buffering more: a
/// longer line is reported once ([`LineEvent::TooLong`]) and its bytes dropped as they come,
/// up to its newline ([`LineEvent::Discarded`]).
pub(crate) struct LineReader {
    buf: Vec<u8>,
    max: usize,
    /// Bytes of an oversized line dropped so far, while dropping.
    discarding: Option<usize>,
}

pub(crate) enum LineEvent<'a> {
    Line(&'a [u8]),
    /// A line went over the limit; the rest of it will be dropped.
    TooLong,
    /// The end of an oversized line: its whole length.
    Discarded(usize),
}

impl LineReader {
    pub(crate) fn new(max: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            max,
            discarding: None,
        }
    }

    pub(crate) fn feed(&mut self, mut data: &[u8], mut f: impl FnMut(LineEvent<'_>)) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            if let Some(n) = self.discarding {
                match nl {
                    Some(i) => {
                        self.discarding = None;
                        f(LineEvent::Discarded(n + i));
                        data = &data[i + 1..];
                        continue;
                    }
                    None => {
                        self.discarding = Some(n + data.len());
                        return;
                    }
                }
            }
            let take = nl.unwrap_or(data.len());
            if self.buf.len() + take > self.max {
                let total = self.buf.len() + take;
                self.clear();
                f(LineEvent::TooLong);
                match nl {
                    Some(_) => {
                        f(LineEvent::Discarded(total));
                        data = &data[take + 1..];
                        continue;
                    }
                    None => {
                        self.discarding = Some(total);
                        return;
                    }
                }
            }
            match nl {
                Some(i) if self.buf.is_empty() => {
                    f(LineEvent::Line(&data[..i]));
                    data = &data[i + 1..];
                }
                Some(i) => {
                    self.append(&data[..i]);
                    f(LineEvent::Line(&self.buf));
                    self.clear();
                    data = &data[i + 1..];
                }
                None => {
                    self.append(data);
                    return;
                }
            }
        }
    }

    /// Appends without letting the capacity outgrow the line limit.
    fn append(&mut self, data: &[u8]) {
        let need = self.buf.len() + data.len();
        if need > self.buf.capacity() {
            let hi = self.max.max(need);
            let target = need.max(self.buf.capacity() * 2).max(4096).min(hi);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(data);
    }

    fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > 64 << 10 {
            self.buf = Vec::new();
        }
    }
}

/// Rate limit for log lines: the project's token bucket (a burst of `burst`, refilled at
/// `per_second`), plus what it suppressed, counted by kind and reported with the next line.
struct RateLimit {
    bucket: crate::connreq::backoff::RateLimiter,
    suppressed: Vec<(&'static str, u64)>,
}

impl RateLimit {
    fn new(burst: u32, per_second: u32) -> RateLimit {
        RateLimit {
            bucket: crate::connreq::backoff::RateLimiter::new(
                burst.max(1),
                f64::from(per_second.max(1)),
            ),
            suppressed: Vec::new(),
        }
    }

    fn token(&mut self, now: Instant) -> bool {
        self.bucket.try_acquire(now.into_std())
    }

    /// Whether a line of `kind` may be logged now; if not, it is counted as suppressed.
    fn take(&mut self, now: Instant, kind: &'static str) -> bool {
        let ok = self.token(now);
        if !ok {
            self.count(kind, 1);
        }
        ok
    }

    fn count(&mut self, kind: &'static str, n: u64) {
        match self.suppressed.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, c)) => *c += n,
            None => self.suppressed.push((kind, n)),
        }
    }

    /// "6 bad lines, 2 oversized lines": what was suppressed since the last report; resets.
    fn drain(&mut self) -> String {
        let parts: Vec<String> = self
            .suppressed
            .drain(..)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        parts.join(", ")
    }

    /// " (before it, suppressed: …)" for the line being logged, or "".
    fn note(&mut self) -> String {
        if self.suppressed.is_empty() {
            String::new()
        } else {
            format!(" (before it, suppressed: {})", self.drain())
        }
    }

    /// When a summary of suppressed lines is due.
    fn report_at(&self) -> Option<Instant> {
        if self.suppressed.is_empty() {
            return None;
        }
        Some(
            self.bucket
                .next_token_at()
                .map(Instant::from_std)
                .unwrap_or_else(Instant::now),
        )
    }
}

/// A run of the program that ended: why, the process (killed), the requests it left
/// unanswered, and its stderr if still open.
struct Ended {
    cause: String,
    child: Child,
    pending: HashMap<u64, Pending>,
    stderr: Option<(ChildStderr, LineReader)>,
}

struct Pending {
    op: &'static str,
    deadline: Instant,
    reply: Reply,
}

/// The task that owns one provider's process.
struct Task {
    index: usize,
    prefix: String,
    argv: Vec<String>,
    limits: Limits,
    timeout: Duration,
    shared: Arc<Mutex<Shared>>,
    notify: mpsc::Sender<(usize, BTreeMap<String, String>)>,
    next_id: u64,
    warn_limit: RateLimit,
    stderr_limit: RateLimit,
    /// Pushed values not yet handed to the engine (coalesced by path).
    pushed: BTreeMap<String, String>,
    pushed_bytes: usize,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        if self.argv.is_empty() {
            let mut sh = lock(&self.shared);
            sh.stats.state = ProviderState::Stopped;
            sh.stats.last_problem = Some("no command configured".into());
            return;
        }
        let mut backoff = self.limits.backoff_initial;
        loop {
            lock(&self.shared).stats.state = ProviderState::Starting;
            let started = Instant::now();
            let (mut cause, ended) = match self.start() {
                Ok(child) => match self.serve(child, &mut rx).await {
                    Some(e) => (e.cause.clone(), Some(e)),
                    None => {
                        let mut sh = lock(&self.shared);
                        sh.stats.state = ProviderState::Stopped;
                        sh.stats.pid = None;
                        return;
                    }
                },
                Err(e) => (format!("cannot start {:?}: {e}", self.argv[0]), None),
            };
            if started.elapsed() >= self.limits.healthy_after {
                backoff = self.limits.backoff_initial;
            }
            let delay = backoff;
            backoff = (backoff * 2).min(self.limits.backoff_max);
            let until = Instant::now() + delay;
            // From here on calls fail at once; then the callers still waiting are told (the
            // program was already killed).
            {
                let mut sh = lock(&self.shared);
                sh.stats.state = ProviderState::BackOff;
                sh.stats.restarts += 1;
                sh.stats.backoff_ms = delay.as_millis() as u64;
                sh.stats.last_problem = Some(cause.clone());
                sh.retry_at = Some(until);
            }
            if let Some(Ended {
                mut child,
                pending,
                stderr,
                ..
            }) = ended
            {
                for (_, p) in pending {
                    let _ = p.reply.send(Err(ProviderError::Failed(format!(
                        "provider {cause}; restarting"
                    ))));
                }
                if let Some((pipe, lines)) = stderr {
                    self.drain_stderr(pipe, lines).await;
                }
                // Reap it (briefly) for its exit status; tokio reaps it later otherwise.
                let pid = child.id().or(lock(&self.shared).stats.pid);
                let status =
                    match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
                        Ok(Ok(st)) => st.to_string(),
                        _ => "still exiting".into(),
                    };
                cause = format!(
                    "(pid {}) {cause}; {status}",
                    pid.map(|p| p.to_string()).unwrap_or_default()
                );
                let mut sh = lock(&self.shared);
                sh.stats.pid = None;
                sh.stats.last_problem = Some(cause.clone());
            }
            tracing::warn!(
                provider = %self.prefix,
                "provider {cause}; restarting in {} ms",
                delay.as_millis()
            );
            // Requests that were queued, or arrive now, fail at once.
            let sleep = tokio::time::sleep_until(until);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    r = rx.recv() => match r {
                        Some(req) => {
                            let msg = {
                                let mut sh = lock(&self.shared);
                                sh.stats.not_running += 1;
                                ProviderError::NotRunning {
                                    why: sh
                                        .stats
                                        .last_problem
                                        .clone()
                                        .unwrap_or_else(|| "ended".into()),
                                    retry_in_ms: sh.retry_at.map(|t| {
                                        t.saturating_duration_since(Instant::now()).as_millis()
                                    }),
                                }
                            };
                            let _ = req.reply.send(Err(msg));
                        }
                        None => {
                            lock(&self.shared).stats.state = ProviderState::Stopped;
                            return;
                        }
                    }
                }
            }
            lock(&self.shared).retry_at = None;
        }
    }

    fn start(&mut self) -> std::io::Result<Child> {
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut sh = lock(&self.shared);
        sh.stats.starts += 1;
        sh.stats.pid = child.id();
        sh.stats.state = ProviderState::Running;
        drop(sh);
        tracing::info!(
            provider = %self.prefix,
            pid = child.id(),
            "provider {:?} started",
            self.argv.join(" ")
        );
        Ok(child)
    }

    /// Serves one run of the program. When it ends (exit, hang, broken pipe), kills it and
    /// returns why, with the requests still waiting for an answer; None when every handle is
    /// gone (the program is then killed).
    async fn serve(&mut self, mut child: Child, rx: &mut mpsc::Receiver<Request>) -> Option<Ended> {
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.start_kill();
            return Some(Ended {
                cause: "started without its pipes".into(),
                child,
                pending: HashMap::new(),
                stderr: None,
            });
        };
        let notify = self.notify.clone();
        let mut out_lines = LineReader::new(self.limits.max_line);
        let mut err_lines = LineReader::new(STDERR_LINE);
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut err_chunk = vec![0u8; 4096];
        // The request line being written and how much of it went out.
        let mut outbuf: Vec<u8> = Vec::new();
        let mut written = 0usize;
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut stderr_open = true;
        let far = Duration::from_secs(3600);
        let cause = loop {
            let wake = self
                .next_wake(&pending)
                .unwrap_or_else(|| Instant::now() + far);
            tokio::select! {
                r = rx.recv(), if outbuf.is_empty() && pending.len() < self.limits.queue => {
                    let Some(req) = r else {
                        let _ = child.start_kill();
                        return None;
                    };
                    self.prepare(req, &mut pending, &mut outbuf);
                    written = 0;
                }
                w = stdin.write(&outbuf[written..]), if !outbuf.is_empty() => match w {
                    Ok(0) => break "closed its input".to_string(),
                    Err(e) => break format!("closed its input ({e})"),
                    Ok(n) => {
                        written += n;
                        if written == outbuf.len() {
                            outbuf.clear();
                            written = 0;
                            if outbuf.capacity() > 64 << 10 {
                                outbuf = Vec::new();
                            }
                        }
                    }
                },
                r = stdout.read(&mut chunk) => match r {
                    Ok(0) => break "closed its output".to_string(),
                    Ok(n) => {
                        if let Some(c) = self.feed(&mut out_lines, &chunk[..n], &mut pending) {
                            break c;
                        }
                        // A program writing at full speed must not hold the thread the
                        // engine runs on.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => break format!("output unreadable ({e})"),
                },
                r = stderr.read(&mut err_chunk), if stderr_open => match r {
                    Ok(0) | Err(_) => stderr_open = false,
                    Ok(n) => self.feed_stderr(&mut err_lines, &err_chunk[..n]),
                },
                permit = notify.reserve(), if !self.pushed.is_empty() => {
                    let values = std::mem::take(&mut self.pushed);
                    self.pushed_bytes = 0;
                    if let Ok(permit) = permit {
                        permit.send((self.index, values));
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if let Some(c) = self.expire(&pending) {
                        break c;
                    }
                    self.report_suppressed();
                }
            }
        };
        // Killed before any caller is told: a hung program cannot act on a request after its
        // caller was told it failed.
        let _ = child.start_kill();
        Some(Ended {
            cause,
            child,
            pending,
            stderr: stderr_open.then_some((stderr, err_lines)),
        })
    }

    /// Logs what is left in the stderr pipe of a program that ended (why it crashed, often),
    /// within a bounded time and size.
    async fn drain_stderr(&mut self, mut stderr: ChildStderr, mut lines: LineReader) {
        let mut buf = vec![0u8; 4096];
        let until = Instant::now() + Duration::from_millis(100);
        for _ in 0..16 {
            match tokio::time::timeout_at(until, stderr.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.feed_stderr(&mut lines, &buf[..n]),
                _ => break,
            }
        }
    }

    /// Serialises a request into `outbuf` unless its caller gave up or its deadline passed.
    fn prepare(&mut self, req: Request, pending: &mut HashMap<u64, Pending>, out: &mut Vec<u8>) {
        if req.reply.is_closed() {
            return;
        }
        if Instant::now() >= req.deadline {
            lock(&self.shared).stats.timeouts += 1;
            let _ = req
                .reply
                .send(Err(ProviderError::Timeout(self.timeout.as_millis())));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut body = req.body;
        body.insert("id".into(), Value::from(id));
        body.insert("op".into(), Value::from(req.op));
        out.clear();
        if serde_json::to_writer(&mut *out, &Value::Object(body)).is_err() {
            out.clear();
            let _ = req.reply.send(Err(ProviderError::Failed(
                "request not serialisable".into(),
            )));
            return;
        }
        out.push(b'\n');
        pending.insert(
            id,
            Pending {
                op: req.op,
                deadline: req.deadline,
                reply: req.reply,
            },
        );
    }

    fn next_wake(&self, pending: &HashMap<u64, Pending>) -> Option<Instant> {
        let d = pending.values().map(|p| p.deadline).min();
        let w = [self.warn_limit.report_at(), self.stderr_limit.report_at()]
            .into_iter()
            .flatten()
            .min();
        match (d, w) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A request past its deadline (sent or still being written) means the program is hung.
    fn expire(&mut self, pending: &HashMap<u64, Pending>) -> Option<String> {
        let now = Instant::now();
        let late: Vec<(&u64, &Pending)> =
            pending.iter().filter(|(_, p)| p.deadline <= now).collect();
        let (id, p) = late.iter().min_by_key(|(id, _)| **id)?;
        let n = late.len() as u64;
        let cause = format!(
            "did not answer request {id} ({}) within {} ms",
            p.op,
            self.timeout.as_millis()
        );
        let mut sh = lock(&self.shared);
        sh.stats.timeouts += n;
        sh.stats.hangs += 1;
        Some(cause)
    }

    fn feed(
        &mut self,
        lines: &mut LineReader,
        data: &[u8],
        pending: &mut HashMap<u64, Pending>,
    ) -> Option<String> {
        let mut hung = None;
        lines.feed(data, |ev| {
            if hung.is_some() {
                return;
            }
            match ev {
                LineEvent::Line(l) => hung = self.line(l, pending),
                LineEvent::TooLong => {
                    lock(&self.shared).stats.oversized_lines += 1;
                    let max = self.limits.max_line;
                    self.warn("oversized lines", || {
                        format!("line longer than {max} bytes; discarding it up to its newline")
                    });
                }
                LineEvent::Discarded(n) => {
                    tracing::debug!(provider = %self.prefix, "discarded a line of {n} bytes");
                }
            }
        });
        hung
    }

    /// One line from the program's stdout. Returns a cause when the program must be restarted.
    fn line(&mut self, line: &[u8], pending: &mut HashMap<u64, Pending>) -> Option<String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let text = match std::str::from_utf8(line) {
            Ok(t) => t,
            Err(e) => {
                self.bad(&format!("invalid UTF-8 at byte {}", e.valid_up_to()), line);
                return None;
            }
        };
        let mut obj = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                self.bad("not a JSON object", line);
                return None;
            }
            Err(e) => {
                self.bad(&format!("not JSON: {e}"), line);
                return None;
            }
        };
        if let Some(id) = obj.get("id") {
            let Some(id) = id.as_u64() else {
                self.bad("\"id\" is not a non-negative integer", line);
                return None;
            };
            let Some(p) = pending.remove(&id) else {
                lock(&self.shared).stats.unknown_ids += 1;
                self.warn("answers with unknown ids", || {
                    format!(
                        "answer with id {id} ignored: no request with that id is waiting: {}",
                        excerpt(line)
                    )
                });
                return None;
            };
            if Instant::now() >= p.deadline {
                // Its caller is being told it failed: the answer must not count.
                let op = p.op;
                pending.insert(id, p);
                let mut sh = lock(&self.shared);
                sh.stats.late_answers += 1;
                sh.stats.timeouts += 1;
                sh.stats.hangs += 1;
                return Some(format!(
                    "answered request {id} ({op}) after its deadline of {} ms",
                    self.timeout.as_millis()
                ));
            }
            let result = match answer_result(p.op, &mut obj) {
                Ok(v) => Ok(v),
                Err(AnswerError::Refused(why)) => Err(ProviderError::Failed(why)),
                Err(AnswerError::Malformed(why)) => {
                    self.bad(why, line);
                    Err(ProviderError::Failed(format!(
                        "provider gave a malformed answer: {why}"
                    )))
                }
            };
            let _ = p.reply.send(result);
            return None;
        }
        match obj.remove("notify") {
            Some(Value::Object(values)) => self.push(values),
            Some(_) => self.bad("\"notify\" is not an object", line),
            None => self.bad("neither an answer (\"id\") nor a \"notify\"", line),
        }
        None
    }

    fn bad(&mut self, why: &str, line: &[u8]) {
        lock(&self.shared).stats.bad_lines += 1;
        self.warn("bad lines", || {
            format!("bad line ({why}): {}", excerpt(line))
        });
    }

    /// Coalesces pushed values until the engine takes them.
    fn push(&mut self, values: Map<String, Value>) {
        let mut dropped = 0u64;
        for (k, v) in values {
            let Some(s) = scalar_text(&v) else {
                dropped += 1;
                continue;
            };
            match self.pushed.get_mut(&k) {
                Some(old) => {
                    self.pushed_bytes = self.pushed_bytes - old.len() + s.len();
                    *old = s;
                }
                None if self.pushed_bytes + k.len() + s.len() > self.limits.max_pushed_bytes => {
                    dropped += 1;
                }
                None => {
                    self.pushed_bytes += k.len() + s.len();
                    self.pushed.insert(k, s);
                }
            }
        }
        if dropped > 0 {
            lock(&self.shared).stats.notify_dropped += dropped;
            let max = self.limits.max_pushed_bytes;
            self.warn("dropped pushes", || {
                format!(
                    "{dropped} pushed values dropped (not scalars, or over {max} bytes waiting)"
                )
            });
        }
    }

    fn feed_stderr(&mut self, lines: &mut LineReader, data: &[u8]) {
        let mut got: Vec<String> = Vec::new();
        let mut n = 0u64;
        lines.feed(data, |ev| match ev {
            LineEvent::Line(l) => {
                n += 1;
                // Keep only what could be logged in this burst; the rest is counted.
                if got.len() < 64 {
                    got.push(String::from_utf8_lossy(&l[..l.len().min(EXCERPT * 2)]).into_owned());
                }
            }
            LineEvent::TooLong => {
                n += 1;
                if got.len() < 64 {
                    got.push(format!("(line over {STDERR_LINE} bytes)"));
                }
            }
            LineEvent::Discarded(_) => {}
        });
        lock(&self.shared).stats.stderr_lines += n;
        let extra = n - got.len() as u64;
        let now = Instant::now();
        for l in got {
            if self.stderr_limit.take(now, "stderr lines") {
                let note = self.stderr_limit.note();
                tracing::info!(
                    provider = %self.prefix,
                    "stderr: {}{note}",
                    clip(l.trim_end(), EXCERPT * 2)
                );
            } else {
                lock(&self.shared).stats.suppressed_warnings += 1;
            }
        }
        if extra > 0 {
            self.stderr_limit.count("stderr lines", extra);
            lock(&self.shared).stats.suppressed_warnings += extra;
        }
    }

    /// Logs a warning of `kind` unless the rate limit says otherwise (then it is counted).
    fn warn(&mut self, kind: &'static str, msg: impl FnOnce() -> String) {
        if self.warn_limit.take(Instant::now(), kind) {
            let note = self.warn_limit.note();
            tracing::warn!(provider = %self.prefix, "{}{note}", msg());
        } else {
            lock(&self.shared).stats.suppressed_warnings += 1;
        }
    }

    /// Reports what was suppressed once the rate limit allows a line again.
    fn report_suppressed(&mut self) {
        let now = Instant::now();
        for limit in [&mut self.warn_limit, &mut self.stderr_limit] {
            if limit.report_at().is_some_and(|t| t <= now) && limit.token(now) {
                let what = limit.drain();
                tracing::warn!(provider = %self.prefix, "suppressed by the log rate limit: {what}");
            }
        }
    }
}

enum AnswerError {
    /// The provider answered with an error (its text).
    Refused(String),
    /// The answer does not follow the protocol.
    Malformed(&'static str),
}

/// The result an answer gives its caller: `error` → its text; `get` → the `values` object;
/// other ops → Null.
fn answer_result(op: &str, obj: &mut Map<String, Value>) -> Result<Value, AnswerError> {
    if let Some(e) = obj.get("error") {
        let text = match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Err(AnswerError::Refused(
            clip(&text, MAX_ERROR_TEXT).to_string(),
        ));
    }
    if obj.get("ok") == Some(&Value::Bool(false)) {
        return Err(AnswerError::Refused(
            "provider answered \"ok\": false".into(),
        ));
    }
    if op == "get" {
        return match obj.remove("values") {
            Some(v @ Value::Object(_)) => Ok(v),
            _ => Err(AnswerError::Malformed(
                "answer to get without a \"values\" object",
            )),
        };
    }
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &mut LineReader, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, |ev| {
                out.push(match ev {
                    LineEvent::Line(l) => String::from_utf8_lossy(l).into_owned(),
                    LineEvent::TooLong => "<too long>".into(),
                    LineEvent::Discarded(n) => format!("<discarded {n}>"),
                })
            });
        }
        out
    }

    #[test]
    fn lines_split_across_reads_and_capped_while_read() {
        let mut r = LineReader::new(8);
        assert_eq!(
            lines(&mut r, &[b"ab", b"c\nde", b"f\n\n"]),
            ["abc", "def", ""]
        );
        // Exactly the limit is accepted; one more byte is not, with or without its newline
        // in the same read.
        assert_eq!(lines(&mut r, &[b"12345678\n"]), ["12345678"]);
        assert_eq!(
            lines(&mut r, &[b"123456789\nok\n"]),
            ["<too long>", "<discarded 9>", "ok"]
        );
        assert_eq!(
            lines(&mut r, &[b"12345", b"6789", b"xxxxxxxx", b"xx\nnext\n"]),
            ["<too long>", "<discarded 19>", "next"]
        );
        // An endless line holds nothing.
        let mut r = LineReader::new(1000);
        let chunk = [b'x'; 300];
        for _ in 0..10_000 {
            r.feed(&chunk, |_| {});
            assert!(r.buf.capacity() <= 4096);
        }
        assert_eq!(r.discarding, Some(3_000_000));
    }

    #[test]
    fn line_buffer_never_outgrows_the_limit() {
        let mut r = LineReader::new(100_000);
        for _ in 0..99 {
            r.feed(&[b'y'; 1000], |_| panic!("no line yet"));
            assert!(r.buf.capacity() <= 100_000, "{}", r.buf.capacity());
        }
        let mut n = 0;
        r.feed(b"\n", |ev| {
            assert!(matches!(ev, LineEvent::Line(l) if l.len() == 99_000));
            n += 1;
        });
        assert_eq!(n, 1);
        assert_eq!(r.buf.capacity(), 0, "a big buffer is given back");
    }

    #[test]
    fn rate_limit_allows_a_burst_then_counts_by_kind() {
        let mut l = RateLimit::new(5, 5);
        let t0 = Instant::now();
        let allowed = (0..20)
            .filter(|i| {
                l.take(
                    t0,
                    if i % 2 == 0 {
                        "bad lines"
                    } else {
                        "unknown ids"
                    },
                )
            })
            .count();
        assert_eq!(allowed, 5);
        assert!(l.report_at().is_some());
        assert_eq!(
            l.note(),
            " (before it, suppressed: 8 unknown ids, 7 bad lines)"
        );
        assert_eq!(l.note(), "");
        // One second later a full burst again.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| l.take(t1, "bad lines")).count(), 5);
    }

    #[test]
    fn answers_are_interpreted() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let mut a = obj(serde_json::json!({"id": 1, "error": "no such channel"}));
        assert!(
            matches!(answer_result("set", &mut a), Err(AnswerError::Refused(e)) if e == "no such channel")
        );
        let mut a = obj(serde_json::json!({"id": 1, "ok": false}));
        assert!(matches!(
            answer_result("set", &mut a),
            Err(AnswerError::Refused(_))
        ));
        let mut a = obj(serde_json::json!({"id": 1, "ok": true}));
        assert!(matches!(
            answer_result("get", &mut a),
            Err(AnswerError::Malformed(_))
        ));
        let mut a =
            obj(serde_json::json!({"id": 1, "values": {"A": "1", "B": 2, "C": true, "D": null}}));
        let v = answer_result("get", &mut a).ok().unwrap();
        let m = string_map(&v);
        assert_eq!(m.len(), 3);
        assert_eq!(m["B"], "2");
        assert_eq!(m["C"], "true");
        assert_eq!(excerpt(b"\xff\xfe{\"a\"}"), "\"\\xff\\xfe{\\\"a\\\"}\"");
    }
}
