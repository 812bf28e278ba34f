//! The local control socket: JSON lines over a Unix socket (mode 0600).
//!
//! docs/CONTROL.md specifies the protocol (every op with its request and answer, the faults),
//! the limits and timeouts below, the client-limit policy and the device side's read-only rule.
//!
//! One task per connection, on the agent's single thread, each serving one request at a time:
//! a connection holds at most one request line and one answer. Everything it holds is
//! bounded: a request line by [`MAX_REQUEST`], and what goes beyond [`FREE_PER_CONNECTION`]
//! (a long line, a large answer) by one budget shared by all connections, [`BUFFER_BUDGET`].
//! Every phase is bounded in time ([`Timeouts`]), and when all [`MAX_CLIENTS`] slots are taken
//! a new connection evicts the one that is cheapest to lose (the least recently active), so leaked or
//! hostile connections cannot lock the middleware out. The engine sees at most
//! [`MAX_IN_FLIGHT`] control requests at once, leaving its command queue to the connection
//! requests.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::ReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout, timeout_at};

use crate::command::Command;
use crate::util::LogLimit;

/// Longest request line accepted, newline included; a longer one is answered with an error
/// and the connection closed (the rest of the line cannot be told from the next request).
pub const MAX_REQUEST: usize = 1 << 20;
/// Most parameter names one request may carry (`names` of get/getattr, `values` of set,
/// `access_list` of setattr); more is refused with fault 9004 before the engine sees it.
pub const MAX_NAMES: usize = 4096;
/// Longest event code an `inform` request may queue (TR-069 EventCode is string(64)).
pub const MAX_EVENT_CODE: usize = 64;
/// Control connections open at once; at the limit a new one evicts another (see [`victim`]).
pub const MAX_CLIENTS: usize = 32;
/// Control requests handed to the engine at once; the others wait their turn.
pub const MAX_IN_FLIGHT: usize = 4;
/// Buffer space each connection may use without drawing on [`BUFFER_BUDGET`].
pub const FREE_PER_CONNECTION: usize = 64 << 10;
/// Buffer space shared by all connections for long request lines and large answers. A long
/// line takes `MAX_REQUEST - FREE_PER_CONNECTION` of it while it is read; an answer over
/// `FREE_PER_CONNECTION` takes its size while it is written. What does not fit is refused
/// (an error for a line, fault 9004 for an answer), never queued.
pub const BUFFER_BUDGET: usize = 32 << 20;
/// Size of the read buffer of a connection.
const READ_BUFFER: usize = 8 << 10;
/// After freeing an answer or a line this large, free memory goes back to the system.
const TRIM_ABOVE: usize = 256 << 10;

/// The time bounds of a connection (docs/CONTROL.md, "Limits and timeouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the connection (or the end of the previous answer) to the first byte of a request;
    /// then the connection is closed without a word.
    pub idle: Duration,
    /// From the first byte of a request to its newline; then the connection gets an error
    /// answer and is closed.
    pub line: Duration,
    /// From a complete request to the engine's answer (waiting for a turn included).
    pub engine: Duration,
    /// For writing a whole answer; a client that does not read it in time is dropped.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            idle: Duration::from_secs(30),
            line: Duration::from_secs(10),
            engine: Duration::from_secs(120),
            write: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// The defaults, each overridden (in milliseconds) by `CWMPD_CTL_IDLE_MS`,
    /// `CWMPD_CTL_LINE_MS`, `CWMPD_CTL_ENGINE_MS`, `CWMPD_CTL_WRITE_MS` when set to a positive
    /// number. Read once when the socket starts; meant for tests, which would otherwise wait
    /// for the production bounds.
    pub fn from_env() -> Timeouts {
        let mut t = Timeouts::default();
        for (var, slot) in [
            ("CWMPD_CTL_IDLE_MS", &mut t.idle),
            ("CWMPD_CTL_LINE_MS", &mut t.line),
            ("CWMPD_CTL_ENGINE_MS", &mut t.engine),
            ("CWMPD_CTL_WRITE_MS", &mut t.write),
        ] {
            let Ok(v) = std::env::var(var) else { continue };
            match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => *slot = Duration::from_millis(ms),
                _ => tracing::warn!("{var}={v:?} ignored: not a positive number of milliseconds"),
            }
        }
        t
    }
}

/// Binds the socket (replacing a stale one) with mode 0600. The socket is created under a
/// umask that leaves group and others no permission, so it is never connectable by another
/// user, not even between the bind and the chmod.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use nix::sys::stat::{Mode, umask};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// What a connection is doing (see [`victim`] for which may be closed to make room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request.
    Idle,
    /// Reading a request line that has started.
    Reading,
    /// Writing an answer (the client may not be reading).
    Writing,
    /// Its request is with the engine: never evicted (bounded by [`Timeouts::engine`]).
    Engine,
}

#[derive(Debug)]
struct Conn {
    phase: Phase,
    /// When the current phase began.
    since: Instant,
    abort: Option<tokio::task::AbortHandle>,
}

/// The connection to close to make room for a new one: of those waiting for their client
/// (idle between requests, or stalled in the middle of a request line), the one waiting the
/// longest, that is the least recently active; if none, the one that has been writing an
/// answer its client does not read the longest. A freshly accepted connection counts as
/// active from its accept. A connection whose request is with the engine is never chosen (its
/// request is being carried out). None when every connection is with the engine.
fn victim(conns: &HashMap<u64, Conn>) -> Option<u64> {
    conns
        .iter()
        .filter_map(|(id, c)| {
            let class = match c.phase {
                Phase::Idle | Phase::Reading => 0,
                Phase::Writing => 1,
                Phase::Engine => return None,
            };
            Some((class, c.since, *id))
        })
        .min()
        .map(|(_, _, id)| id)
}

struct Shared {
    engine: mpsc::Sender<Command>,
    timeouts: Timeouts,
    max_clients: usize,
    conns: RefCell<HashMap<u64, Conn>>,
    /// Signalled when a connection ends or enters an evictable phase.
    room: Notify,
    /// Bytes of [`BUFFER_BUDGET`] in use.
    budget_used: Cell<usize>,
    in_flight: Semaphore,
    log: RefCell<LogLimit>,
}

impl Shared {
    /// A warning, at most one per 10 s (a misbehaving client must not fill the log).
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        if let Some(n) = self.log.borrow_mut().check(std::time::Instant::now()) {
            if n > 0 {
                tracing::warn!("control socket: {what} ({n} similar messages suppressed)");
            } else {
                tracing::warn!("control socket: {what}");
            }
        }
    }

    fn set_phase(&self, id: u64, phase: Phase) {
        if let Some(c) = self.conns.borrow_mut().get_mut(&id) {
            c.phase = phase;
            c.since = Instant::now();
        }
        if phase != Phase::Engine {
            self.room.notify_one();
        }
    }

    /// Closes the [`victim`]; false when there is none.
    fn evict_one(&self) -> bool {
        // The borrow ends before the abort: the task's drop also takes it.
        let gone = {
            let mut conns = self.conns.borrow_mut();
            victim(&conns).and_then(|id| conns.remove(&id))
        };
        let Some(c) = gone else { return false };
        let for_ms = c.since.elapsed().as_millis();
        if let Some(a) = c.abort {
            a.abort();
        }
        match c.phase {
            Phase::Idle => tracing::debug!(
                "control socket: {} connections open; closed one idle for {for_ms} ms",
                self.max_clients
            ),
            Phase::Reading => self.warn(format_args!(
                "{} connections open; closed one stalled in a request line for {for_ms} ms",
                self.max_clients
            )),
            _ => self.warn(format_args!(
                "{} connections open; closed one not reading its answer for {for_ms} ms",
                self.max_clients
            )),
        }
        true
    }

    fn reserve(self: &Rc<Self>, bytes: usize) -> Option<Reserved> {
        let used = self.budget_used.get();
        if used + bytes > BUFFER_BUDGET {
            return None;
        }
        self.budget_used.set(used + bytes);
        Some(Reserved {
            shared: self.clone(),
            bytes,
        })
    }
}

/// A share of [`BUFFER_BUDGET`], given back on drop.
struct Reserved {
    shared: Rc<Shared>,
    bytes: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let s = &self.shared.budget_used;
        s.set(s.get() - self.bytes);
    }
}

/// A connection's entry in the table; removed when the connection's task ends or is aborted.
struct Slot {
    shared: Rc<Shared>,
    id: u64,
}

impl Slot {
    fn phase(&self, p: Phase) {
        self.shared.set_phase(self.id, p);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.conns.borrow_mut().remove(&self.id);
        self.shared.room.notify_one();
    }
}

/// Serves control connections, forwarding each request to the engine, with the limits of
/// this module and the [`Timeouts`] of the environment.
pub async fn serve(listener: UnixListener, engine: mpsc::Sender<Command>) {
    serve_with(listener, engine, Timeouts::from_env(), MAX_CLIENTS).await
}

/// [`serve`] with explicit timeouts and client limit.
pub async fn serve_with(
    listener: UnixListener,
    engine: mpsc::Sender<Command>,
    timeouts: Timeouts,
    max_clients: usize,
) {
    let shared = Rc::new(Shared {
        engine,
        timeouts,
        max_clients: max_clients.max(1),
        conns: RefCell::new(HashMap::new()),
        room: Notify::new(),
        budget_used: Cell::new(0),
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
        log: RefCell::new(LogLimit::new(Duration::from_secs(10))),
    });
    let mut next_id: u64 = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: do not spin.
                shared.warn(format_args!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Make room: evict, or (every connection is with the engine) wait until one ends or
        // becomes evictable, which the engine timeout bounds. Meanwhile further clients wait
        // in the listen backlog.
        loop {
            let full = shared.conns.borrow().len() >= shared.max_clients;
            if !full || shared.evict_one() {
                break;
            }
            shared.room.notified().await;
        }
        next_id += 1;
        let id = next_id;
        shared.conns.borrow_mut().insert(
            id,
            Conn {
                phase: Phase::Idle,
                since: Instant::now(),
                abort: None,
            },
        );
        let slot = Slot {
            shared: shared.clone(),
            id,
        };
        let task = tokio::task::spawn_local(client(stream, slot));
        if let Some(c) = shared.conns.borrow_mut().get_mut(&id) {
            c.abort = Some(task.abort_handle());
        }
    }
}

/// How reading a request line ended.
enum Read {
    /// A complete line.
    Line,
    /// The client closed its side after a last line without a newline: answer it, then close.
    LastLine,
    /// Answer this error, then close.
    Refused(String),
    /// The client went away (or the socket failed) between requests.
    Gone,
}

async fn client(mut stream: UnixStream, slot: Slot) {
    let shared = slot.shared.clone();
    let t = shared.timeouts;
    let (rd, mut wr) = stream.split();
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    let mut line: Vec<u8> = Vec::new();
    loop {
        slot.phase(Phase::Idle);
        match timeout(t.idle, rd.fill_buf()).await {
            Ok(Ok(b)) if !b.is_empty() => {}
            Err(_) => {
                tracing::debug!("control connection idle for {:?}; closed", t.idle);
                return;
            }
            Ok(_) => return,
        }
        slot.phase(Phase::Reading);
        let mut line_share = None;
        let read = read_line(
            &mut rd,
            &mut line,
            &shared,
            &mut line_share,
            Instant::now() + t.line,
        )
        .await;
        let (answer, last) = match read {
            Read::Line => (answer_for(&shared, &slot, &line).await, false),
            Read::LastLine => (answer_for(&shared, &slot, &line).await, true),
            Read::Refused(why) => {
                shared.warn(format_args!("{why}"));
                (json!({"ok": false, "error": why}), true)
            }
            Read::Gone => return,
        };
        // The request is freed before the answer is encoded.
        let long_line = line.capacity() > FREE_PER_CONNECTION;
        if long_line {
            line = Vec::new();
        } else {
            line.clear();
        }
        drop(line_share);
        let mut out = encode(&answer);
        drop(answer);
        let large = out.len() > TRIM_ABOVE || long_line;
        let mut out_share = None;
        if out.len() > FREE_PER_CONNECTION {
            match shared.reserve(out.len()) {
                Some(r) => out_share = Some(r),
                None => {
                    let n = out.len();
                    shared.warn(format_args!(
                        "an answer of {n} bytes refused: the buffers of other clients are full"
                    ));
                    out = encode(
                        &json!({"ok": false, "fault": {"code": 9004, "message": format!(
                        "answer of {n} bytes does not fit in the control socket's buffers now \
                         (other clients are not reading theirs); retry later")}}),
                    );
                }
            }
        }
        slot.phase(Phase::Writing);
        let written = timeout(t.write, wr.write_all(&out)).await;
        drop(out);
        drop(out_share);
        if large {
            crate::util::trim_heap();
        }
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!("control connection: write failed: {e}");
                return;
            }
            Err(_) => {
                shared.warn(format_args!(
                    "a client did not read its answer within {:?}; dropped",
                    t.write
                ));
                return;
            }
        }
        if last {
            let _ = timeout(t.write, wr.shutdown()).await;
            return;
        }
    }
}

/// Reads one request line into `line` (newline included) by `deadline`, within
/// [`MAX_REQUEST`] and, past [`FREE_PER_CONNECTION`], a share of the budget.
async fn read_line(
    rd: &mut BufReader<ReadHalf<'_>>,
    line: &mut Vec<u8>,
    shared: &Rc<Shared>,
    share: &mut Option<Reserved>,
    deadline: Instant,
) -> Read {
    loop {
        let buf = match timeout_at(deadline, rd.fill_buf()).await {
            Err(_) => {
                return Read::Refused(format!(
                    "request line not complete within {:?}; connection closed",
                    shared.timeouts.line
                ));
            }
            Ok(Err(_)) => return Read::Gone,
            Ok(Ok(b)) => b,
        };
        if buf.is_empty() {
            return if line.is_empty() {
                Read::Gone
            } else {
                Read::LastLine
            };
        }
        let (n, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let len = line.len() + n;
        if len > MAX_REQUEST {
            return Read::Refused(format!(
                "request line longer than {MAX_REQUEST} bytes; connection closed"
            ));
        }
        if len > FREE_PER_CONNECTION && share.is_none() {
            match shared.reserve(MAX_REQUEST - FREE_PER_CONNECTION) {
                Some(r) => *share = Some(r),
                None => {
                    return Read::Refused(
                        "agent busy: no buffer space for a request this long now (other clients \
                         hold it); connection closed, retry later"
                            .into(),
                    );
                }
            }
        }
        line.extend_from_slice(&buf[..n]);
        rd.consume(n);
        if done {
            return Read::Line;
        }
    }
}

/// The answer to one request line: checked here, then carried out by the engine.
async fn answer_for(shared: &Shared, slot: &Slot, line: &[u8]) -> Value {
    slot.phase(Phase::Engine);
    let t = shared.timeouts.engine;
    let deadline = Instant::now() + t;
    let late = || {
        json!({"ok": false, "error": format!(
            "the agent did not answer within {t:?}; the request may still be carried out")})
    };
    // The turn is taken before the line is parsed: at most MAX_IN_FLIGHT parsed requests exist.
    let _turn = match timeout_at(deadline, shared.in_flight.acquire()).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return json!({"ok": false, "error": "the agent is stopping"}),
        Err(_) => return late(),
    };
    let req = match parse_request(line) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let (tx, rx) = oneshot::channel();
    match timeout_at(deadline, shared.engine.send(Command::Ctl(req, tx))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return json!({"ok": false, "error": "the agent is stopping"}),
        Err(_) => return late(),
    }
    match timeout_at(deadline, rx).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => json!({"ok": false, "error": "the agent is stopping"}),
        Err(_) => late(),
    }
}

fn encode(answer: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(answer)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"answer could not be encoded"}"#.to_vec());
    out.push(b'\n');
    out
}

fn error(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}

/// Checks the form of one request line: one JSON object with an "op" string, at most
/// [`MAX_NAMES`] names, an "event" of at most [`MAX_EVENT_CODE`] bytes. `Err` holds the answer to send instead (an `error`, or fault 9004 for
/// too many names). What the op means is the engine's business.
pub fn parse_request(line: &[u8]) -> Result<Value, Value> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(error(
            "empty request line: a request is one JSON object on one line",
        ));
    }
    let req: Value = serde_json::from_slice(line)
        .map_err(|e| error(format!("request is not valid JSON: {e}")))?;
    let Value::Object(m) = &req else {
        return Err(error("a request must be a JSON object"));
    };
    match m.get("op") {
        Some(Value::String(_)) => {}
        None => return Err(error("request needs an \"op\"")),
        Some(_) => return Err(error("\"op\" must be a string")),
    }
    // An event code is a string(64) (TR-069 Table 7); it is queued and persisted as given.
    match m.get("event") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) if !e.is_empty() && e.len() <= MAX_EVENT_CODE => {}
        Some(_) => {
            return Err(error(format!(
                "\"event\" must be an event code: a string of 1 to {MAX_EVENT_CODE} bytes"
            )));
        }
    }
    for key in ["names", "values", "access_list"] {
        let n = match m.get(key) {
            Some(Value::Array(a)) => a.len(),
            Some(Value::Object(o)) => o.len(),
            _ => 0,
        };
        if n > MAX_NAMES {
            return Err(
                json!({"ok": false, "fault": {"code": 9004, "message": format!(
                "{n} entries in \"{key}\"; at most {MAX_NAMES} per request")}}),
            );
        }
    }
    Ok(req)
}

/// Client side: sends one request and returns the answer (blocking, for `cwmpd ctl`).
pub fn request(path: &Path, req: &Value) -> std::io::Result<Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(150)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut r = std::io::BufReader::new(s);
    let mut ans = String::new();
    r.read_line(&mut ans)?;
    if ans.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection without an answer",
        ));
    }
    serde_json::from_str(&ans).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(phase: Phase, age_ms: u64) -> Conn {
        Conn {
            phase,
            since: Instant::now() - Duration::from_millis(age_ms),
            abort: None,
        }
    }

    #[test]
    fn victim_is_the_least_recently_active_then_a_writer_never_engine() {
        let mut m = HashMap::new();
        m.insert(1, conn(Phase::Engine, 9000));
        assert_eq!(victim(&m), None, "a request with the engine is never cut");
        m.insert(2, conn(Phase::Writing, 5000));
        m.insert(3, conn(Phase::Writing, 6000));
        assert_eq!(victim(&m), Some(3), "the longest writer");
        m.insert(4, conn(Phase::Reading, 10));
        assert_eq!(victim(&m), Some(4), "a stalled line goes before a writer");
        m.insert(5, conn(Phase::Idle, 100));
        m.insert(6, conn(Phase::Idle, 200));
        m.insert(7, conn(Phase::Idle, 0));
        assert_eq!(victim(&m), Some(6), "the longest idle goes first");
        m.insert(8, conn(Phase::Reading, 300));
        assert_eq!(victim(&m), Some(8), "idle or stalled: the longest waiting");
    }

    #[test]
    fn request_lines_are_checked_before_the_engine() {
        let err = |l: &[u8]| parse_request(l).unwrap_err();
        for bad in [
            &b"\n"[..],
            b" \r\n",
            b"hello\n",
            b"[1,2]\n",
            b"\"op\"\n",
            b"{\"op\":5}\n",
            b"{}\n",
            b"{\"op\":\"get\"\n",
            b"{\"op\":\"\xff\"}\n",
            b"{\"op\":\"inform\",\"event\":5}\n",
            b"{\"op\":\"inform\",\"event\":\"\"}\n",
        ] {
            let a = err(bad);
            assert_eq!(a["ok"], false, "{a}");
            assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{a}");
        }
        let ok = parse_request(b"{\"op\":\"status\"}\r\n").unwrap();
        assert_eq!(ok["op"], "status");
        let long = "M X".to_string() + &"Y".repeat(MAX_EVENT_CODE);
        assert!(
            parse_request(
                json!({"op": "inform", "event": long})
                    .to_string()
                    .as_bytes()
            )
            .is_err()
        );
        assert!(parse_request(br#"{"op":"inform","event":"6 CONNECTION REQUEST"}"#).is_ok());
        let names = vec!["Device."; MAX_NAMES];
        assert!(parse_request(json!({"op": "get", "names": names}).to_string().as_bytes()).is_ok());
        let names = vec!["Device."; MAX_NAMES + 1];
        let a = err(json!({"op": "get", "names": names}).to_string().as_bytes());
        assert_eq!(a["fault"]["code"], 9004, "{a}");
        let values: serde_json::Map<String, Value> = (0..=MAX_NAMES)
            .map(|i| (format!("Device.X.{i}"), Value::from("1")))
            .collect();
        let a = err(json!({"op": "set", "values": values})
            .to_string()
            .as_bytes());
        assert_eq!(a["fault"]["code"], 9004, "{a}");
    }

    /// A socket path of its own for one test.
    fn sock_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("cwmpd-ctl-unit-{tag}-{}.sock", std::process::id()))
    }

    async fn send_line(s: &mut UnixStream, line: &str) {
        s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    }

    async fn read_answer(s: &mut UnixStream) -> Option<Value> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match timeout(Duration::from_secs(5), s.read(&mut b)).await {
                Ok(Ok(1)) if b[0] == b'\n' => return serde_json::from_slice(&buf).ok(),
                Ok(Ok(1)) => buf.push(b[0]),
                _ => return None,
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_table_evicts_the_oldest_idle_but_never_a_request_with_the_engine() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let path = sock_path("evict");
                let l = bind(&path).unwrap();
                let (tx, mut rx) = mpsc::channel::<Command>(8);
                tokio::task::spawn_local(serve_with(l, tx, Timeouts::default(), 2));
                // The fake engine keeps the requests it gets until told to answer.
                let held = Rc::new(RefCell::new(Vec::new()));
                let h = held.clone();
                tokio::task::spawn_local(async move {
                    while let Some(Command::Ctl(req, reply)) = rx.recv().await {
                        h.borrow_mut().push((req, reply, Instant::now()));
                    }
                });
                let wait_held = |n: usize| {
                    let held = held.clone();
                    async move {
                        for _ in 0..500 {
                            if held.borrow().len() >= n {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        panic!("the engine did not get {n} requests");
                    }
                };
                // Two idle connections fill the table; a third evicts the older one.
                let mut old = UnixStream::connect(&path).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _newer = UnixStream::connect(&path).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut a = UnixStream::connect(&path).await.unwrap();
                assert_eq!(
                    read_answer(&mut old).await,
                    None,
                    "the oldest idle is closed"
                );
                // With both connections' requests at the engine, a newcomer waits ...
                send_line(&mut a, r#"{"op":"status","n":1}"#).await;
                let mut b = UnixStream::connect(&path).await.unwrap();
                send_line(&mut b, r#"{"op":"status","n":2}"#).await;
                wait_held(2).await;
                let mut c = UnixStream::connect(&path).await.unwrap();
                send_line(&mut c, r#"{"op":"status","n":3}"#).await;
                // ... until one is answered (its connection is then idle and evictable).
                let (req, reply, _) = held.borrow_mut().remove(0);
                let answered = Instant::now();
                reply.send(json!({"ok": true, "n": req["n"]})).unwrap();
                assert_eq!(read_answer(&mut a).await.unwrap()["n"], 1);
                wait_held(2).await;
                let (req, reply, arrived) = held.borrow_mut().pop().unwrap();
                assert_eq!(req["n"], 3);
                assert!(
                    arrived > answered,
                    "admitted while both were with the engine"
                );
                reply.send(json!({"ok": true, "n": 3})).unwrap();
                assert_eq!(read_answer(&mut c).await.unwrap()["n"], 3);
                // The request with the engine all along was never cut.
                let (req, reply, _) = held.borrow_mut().pop().unwrap();
                reply.send(json!({"ok": true, "n": req["n"]})).unwrap();
                assert_eq!(read_answer(&mut b).await.unwrap()["n"], 2);
                let _ = std::fs::remove_file(&path);
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_socket_is_0600_from_the_start() {
        let path = sock_path("mode");
        let _l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn timeouts_default_to_the_documented_bounds() {
        let t = Timeouts::default();
        assert_eq!(t.idle, Duration::from_secs(30));
        assert_eq!(t.line, Duration::from_secs(10));
        assert_eq!(t.engine, Duration::from_secs(120));
        assert_eq!(t.write, Duration::from_secs(10));
    }
}
