//! `cwmpd provider-check`: a conformance test of a provider program, for middleware authors.
//! It drives the program over the raw protocol (not through [`Provider`](super::Provider)) so that it can see
//! every line, every id and the time of every answer. The checks and what they require are
//! listed in docs/PROVIDERS.md.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use super::{LineEvent, LineReader, excerpt, scalar_text};

/// What to check.
#[derive(Clone, Debug)]
pub struct Options {
    /// The provider's command line.
    pub argv: Vec<String>,
    /// The subtree it serves (ends in '.').
    pub prefix: String,
    /// Parameters to read; empty: the whole prefix.
    pub gets: Vec<String>,
    /// Round trips to make: set, read back, restore.
    pub sets: Vec<(String, String)>,
    /// Per request; the agent's default is 5 s.
    pub timeout: Duration,
    /// Longest line accepted (the agent's limit).
    pub max_line: usize,
}

impl Options {
    pub fn new(argv: Vec<String>, prefix: String) -> Options {
        let d = super::Limits::default();
        Options {
            argv,
            prefix,
            gets: Vec::new(),
            sets: Vec::new(),
            timeout: d.timeout,
            max_line: d.max_line,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// The result of one check.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    pub check: String,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub passed: usize,
    pub warned: usize,
    pub failed: usize,
}

/// A name that no provider serves, under the prefix.
pub const NO_SUCH_PARAMETER: &str = "X_CWMPD_ProviderCheckNoSuchParameter";

struct Conn {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    reader: LineReader,
    chunk: Vec<u8>,
    eof: bool,
    next_id: u64,
    timeout: Duration,
    /// Ids sent and not yet answered.
    sent: HashSet<u64>,
    /// Answers received and not yet claimed.
    answers: HashMap<u64, Map<String, Value>>,
    lines: u64,
    bad: Vec<String>,
    bad_count: u64,
    notifies: u64,
    bad_notifies: Vec<String>,
    stray_ids: Vec<String>,
    /// Ids of ours that came back as JSON strings.
    string_ids: HashSet<u64>,
    timings: Vec<(String, Duration)>,
}

enum Parsed {
    Object(Map<String, Value>, Vec<u8>),
    Bad(String),
}

impl Conn {
    fn start(opts: &Options) -> std::io::Result<Conn> {
        let mut child = Command::new(&opts.argv[0])
            .args(&opts.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        Ok(Conn {
            child,
            stdin,
            stdout,
            reader: LineReader::new(opts.max_line),
            chunk: vec![0; 32 << 10],
            eof: false,
            // Large and not consecutive, as the agent's may be after a long uptime.
            next_id: 4_000_000_011,
            timeout: opts.timeout,
            sent: HashSet::new(),
            answers: HashMap::new(),
            lines: 0,
            bad: Vec::new(),
            bad_count: 0,
            notifies: 0,
            bad_notifies: Vec::new(),
            stray_ids: Vec::new(),
            string_ids: HashSet::new(),
            timings: Vec::new(),
        })
    }

    async fn send(&mut self, op: &str, mut body: Map<String, Value>) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 7;
        body.insert("id".into(), Value::from(id));
        body.insert("op".into(), Value::from(op));
        let mut line = Value::Object(body).to_string();
        line.push('\n');
        let stdin = self.stdin.as_mut().ok_or("input closed")?;
        match tokio::time::timeout(self.timeout, stdin.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {
                self.sent.insert(id);
                Ok(id)
            }
            Ok(Err(e)) => Err(format!("cannot write the request: {e}")),
            Err(_) => Err(format!(
                "the request could not be written within {} ms (input not read)",
                self.timeout.as_millis()
            )),
        }
    }

    /// Reads until every id in `ids` is answered, the deadline passes or output ends.
    async fn wait(&mut self, ids: &[u64], deadline: Instant) -> HashMap<u64, Map<String, Value>> {
        loop {
            if ids.iter().all(|i| self.answers.contains_key(i)) || self.eof {
                return ids
                    .iter()
                    .filter_map(|i| self.answers.remove(i).map(|a| (*i, a)))
                    .collect();
            }
            match tokio::time::timeout_at(deadline, self.stdout.read(&mut self.chunk)).await {
                Err(_) => {
                    return ids
                        .iter()
                        .filter_map(|i| self.answers.remove(i).map(|a| (*i, a)))
                        .collect();
                }
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.take(n),
            }
        }
    }

    fn take(&mut self, n: usize) {
        let mut parsed = Vec::new();
        let max = self.reader.max;
        self.reader.feed(&self.chunk[..n], |ev| match ev {
            LineEvent::Line(l) => parsed.push(parse(l)),
            LineEvent::TooLong => {
                parsed.push(Parsed::Bad(format!("a line longer than {max} bytes")))
            }
            LineEvent::Discarded(_) => {}
        });
        for p in parsed {
            self.lines += 1;
            match p {
                Parsed::Bad(why) => self.bad_line(why),
                Parsed::Object(obj, raw) => self.object(obj, &raw),
            }
        }
    }

    fn bad_line(&mut self, why: String) {
        self.bad_count += 1;
        if self.bad.len() < 5 {
            self.bad.push(why);
        }
    }

    fn object(&mut self, mut obj: Map<String, Value>, raw: &[u8]) {
        if let Some(id) = obj.get("id") {
            match id.as_u64() {
                Some(i) if self.sent.remove(&i) => {
                    self.answers.insert(i, obj);
                }
                Some(i) => {
                    if self.stray_ids.len() < 5 {
                        self.stray_ids.push(i.to_string());
                    }
                }
                None => {
                    if let Some(i) = id.as_str().and_then(|t| t.parse::<u64>().ok()) {
                        self.string_ids.insert(i);
                    }
                    self.bad_line(format!(
                        "\"id\" {id} is not the integer of the request: {}",
                        excerpt(raw)
                    ))
                }
            }
            return;
        }
        match obj.remove("notify") {
            Some(Value::Object(m)) => {
                self.notifies += 1;
                if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string())
                    && self.bad_notifies.len() < 5
                {
                    self.bad_notifies
                        .push(format!("value of {k} is not a string"));
                }
            }
            Some(_) => self.bad_line(format!("\"notify\" is not an object: {}", excerpt(raw))),
            None => self.bad_line(format!(
                "neither an answer (\"id\") nor a \"notify\": {}",
                excerpt(raw)
            )),
        }
    }

    /// One request and its answer (or why there is none), timed.
    async fn request(
        &mut self,
        label: &str,
        op: &str,
        body: Map<String, Value>,
    ) -> Result<(Map<String, Value>, Duration), String> {
        let t0 = Instant::now();
        let id = self.send(op, body).await?;
        let mut got = self.wait(&[id], t0 + self.timeout).await;
        let dt = t0.elapsed();
        match got.remove(&id) {
            Some(a) => {
                self.timings.push((label.to_string(), dt));
                Ok((a, dt))
            }
            None => Err(self.no_answer(id)),
        }
    }

    fn no_answer(&mut self, id: u64) -> String {
        self.sent.remove(&id);
        if self.string_ids.contains(&id) {
            format!(
                "the answer carried id \"{id}\" as a string: ids must be sent back as the JSON integer received"
            )
        } else if self.eof {
            "no answer: the provider closed its output (exited?)".into()
        } else {
            format!(
                "no answer with id {id} within {} ms (the agent would kill and restart the provider)",
                self.timeout.as_millis()
            )
        }
    }

    async fn get(
        &mut self,
        label: &str,
        paths: &[String],
    ) -> Result<(Map<String, Value>, Duration), String> {
        let mut body = Map::new();
        body.insert("paths".into(), Value::from(paths.to_vec()));
        self.request(label, "get", body).await
    }

    async fn set(
        &mut self,
        label: &str,
        path: &str,
        value: &str,
    ) -> Result<(Map<String, Value>, Duration), String> {
        let mut m = Map::new();
        m.insert(path.into(), Value::from(value));
        let mut body = Map::new();
        body.insert("values".into(), Value::Object(m));
        self.request(label, "set", body).await
    }
}

fn parse(l: &[u8]) -> Parsed {
    let l = l.strip_suffix(b"\r").unwrap_or(l);
    let text = match std::str::from_utf8(l) {
        Ok(t) => t,
        Err(e) => {
            return Parsed::Bad(format!(
                "invalid UTF-8 at byte {}: {}",
                e.valid_up_to(),
                excerpt(l)
            ));
        }
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Parsed::Object(m, l.to_vec()),
        Ok(_) => Parsed::Bad(format!("not a JSON object: {}", excerpt(l))),
        Err(e) => Parsed::Bad(format!("not JSON ({e}): {}", excerpt(l))),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The "error" text of an answer, if it is an error.
fn error_of(a: &Map<String, Value>) -> Option<String> {
    a.get("error").map(|e| match e {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The values of a get answer, or why they are unusable.
fn values_of(a: &Map<String, Value>) -> Result<&Map<String, Value>, String> {
    if let Some(e) = error_of(a) {
        return Err(format!("answered with an error: {e}"));
    }
    match a.get("values") {
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err("\"values\" is not an object".into()),
        None => Err("the answer has no \"values\"".into()),
    }
}

fn set_ok(a: &Map<String, Value>) -> Result<(), String> {
    if let Some(e) = error_of(a) {
        return Err(format!("refused: {e}"));
    }
    if a.get("ok") != Some(&Value::Bool(true)) {
        return Err("the answer has neither \"ok\": true nor \"error\"".into());
    }
    Ok(())
}

struct Report<'a> {
    out: &'a mut dyn FnMut(&Outcome),
    summary: Summary,
}

impl Report<'_> {
    fn add(&mut self, verdict: Verdict, check: impl Into<String>, detail: impl Into<String>) {
        match verdict {
            Verdict::Pass => self.summary.passed += 1,
            Verdict::Warn => self.summary.warned += 1,
            Verdict::Fail => self.summary.failed += 1,
        }
        (self.out)(&Outcome {
            verdict,
            check: check.into(),
            detail: detail.into(),
        });
    }
}

/// Runs every check, reporting each outcome through `out` as it is known.
pub async fn run(opts: &Options, out: &mut dyn FnMut(&Outcome)) -> Summary {
    let mut r = Report {
        out,
        summary: Summary::default(),
    };
    if opts.argv.is_empty() {
        r.add(Verdict::Fail, "start", "no command given");
        return r.summary;
    }
    if !opts.prefix.ends_with('.') {
        r.add(
            Verdict::Fail,
            "prefix",
            format!("{:?} is not an object path ending in '.'", opts.prefix),
        );
        return r.summary;
    }
    let mut c = match Conn::start(opts) {
        Ok(c) => c,
        Err(e) => {
            r.add(
                Verdict::Fail,
                "start",
                format!("cannot start {:?}: {e}", opts.argv[0]),
            );
            return r.summary;
        }
    };
    r.add(
        Verdict::Pass,
        "start",
        format!("pid {}", c.child.id().unwrap_or(0)),
    );
    checks(opts, &mut c, &mut r).await;
    finish(opts, &mut c, &mut r).await;
    r.summary
}

async fn checks(opts: &Options, c: &mut Conn, r: &mut Report<'_>) {
    let prefix = &opts.prefix;
    // Reads: the named parameters, or the whole subtree.
    let targets: Vec<String> = if opts.gets.is_empty() {
        vec![prefix.clone()]
    } else {
        opts.gets.clone()
    };
    for t in &targets {
        let label = format!("get {t}");
        match c.get(&label, std::slice::from_ref(t)).await {
            Err(e) => r.add(Verdict::Fail, label, e),
            Ok((a, dt)) => match values_of(&a) {
                Err(e) => r.add(Verdict::Fail, label, e),
                Ok(values) => {
                    let outside: Vec<&String> = values
                        .keys()
                        .filter(|k| !k.starts_with(prefix.as_str()))
                        .collect();
                    let not_strings: Vec<&String> = values
                        .iter()
                        .filter(|(_, v)| !v.is_string())
                        .map(|(k, _)| k)
                        .collect();
                    if !outside.is_empty() {
                        r.add(
                            Verdict::Fail,
                            label,
                            format!("answered {} outside the prefix {prefix}", outside[0]),
                        );
                    } else if t.ends_with('.') && values.is_empty() {
                        r.add(
                            Verdict::Fail,
                            label,
                            format!("no values: a path ending in '.' asks for every parameter under it ({})", ms(dt)),
                        );
                    } else if !t.ends_with('.') && !values.contains_key(t) {
                        r.add(
                            Verdict::Fail,
                            label,
                            format!("no value for {t} ({})", ms(dt)),
                        );
                    } else if let Some(k) = not_strings.first() {
                        r.add(
                            Verdict::Warn,
                            label,
                            format!("value of {k} is not a JSON string (the agent converts numbers and booleans, drops the rest)"),
                        );
                    } else {
                        r.add(
                            Verdict::Pass,
                            label,
                            format!("{} values in {}", values.len(), ms(dt)),
                        );
                    }
                }
            },
        }
    }
    // An unknown parameter: no value for it (an error is fine too), and an answer.
    let nosuch = format!("{prefix}{NO_SUCH_PARAMETER}");
    match c
        .get("get of an unknown parameter", std::slice::from_ref(&nosuch))
        .await
    {
        Err(e) => r.add(Verdict::Fail, "get of an unknown parameter", e),
        Ok((a, dt)) => {
            if let Some(e) = error_of(&a) {
                r.add(
                    Verdict::Pass,
                    "get of an unknown parameter",
                    format!("error {e:?} in {}", ms(dt)),
                );
            } else {
                match values_of(&a) {
                    Err(e) => r.add(Verdict::Fail, "get of an unknown parameter", e),
                    Ok(v) if v.contains_key(&nosuch) => r.add(
                        Verdict::Fail,
                        "get of an unknown parameter",
                        format!("answered a value for {nosuch}, which does not exist"),
                    ),
                    Ok(_) => r.add(
                        Verdict::Pass,
                        "get of an unknown parameter",
                        format!("left out of the values, in {}", ms(dt)),
                    ),
                }
            }
        }
    }
    // Two requests in flight at once: each answer must carry its own request's id.
    ids_check(c, r, &targets[0]).await;
    // Set round trips.
    for (path, value) in &opts.sets {
        set_round_trip(c, r, path, value).await;
    }
    // A set of an unknown parameter must be refused.
    let label = "set of an unknown parameter";
    match c.set(label, &nosuch, "1").await {
        Err(e) => r.add(Verdict::Fail, label, e),
        Ok((a, dt)) => match error_of(&a) {
            Some(e) => r.add(
                Verdict::Pass,
                label,
                format!("refused ({e:?}) in {}", ms(dt)),
            ),
            None => r.add(
                Verdict::Fail,
                label,
                "accepted: a set of a parameter that does not exist must answer \"error\"",
            ),
        },
    }
    // An operation from a later protocol version: an error answer, not silence.
    let label = "unknown operation";
    match c.request(label, "x_cwmpd_check", Map::new()).await {
        Err(e) => r.add(Verdict::Fail, label, e),
        Ok((a, dt)) => match error_of(&a) {
            Some(e) => r.add(Verdict::Pass, label, format!("error {e:?} in {}", ms(dt))),
            None => r.add(Verdict::Warn, label, "answered without \"error\""),
        },
    }
}

async fn ids_check(c: &mut Conn, r: &mut Report<'_>, path: &str) {
    let label = "two requests in flight";
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut body = Map::new();
        body.insert("paths".into(), Value::from(vec![path.to_string()]));
        match c.send("get", body).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                r.add(Verdict::Fail, label, e);
                return;
            }
        }
    }
    let got = c.wait(&ids, t0 + c.timeout).await;
    let missing: Vec<String> = ids
        .iter()
        .filter(|i| !got.contains_key(i))
        .map(|i| i.to_string())
        .collect();
    for i in &ids {
        c.sent.remove(i);
    }
    if let Some(i) = ids.iter().find(|i| c.string_ids.contains(i)) {
        r.add(
            Verdict::Fail,
            label,
            format!("the answer carried id \"{i}\" as a string"),
        );
    } else if missing.is_empty() {
        c.timings.push((label.to_string(), t0.elapsed()));
        r.add(
            Verdict::Pass,
            label,
            format!("both answered with their ids in {}", ms(t0.elapsed())),
        );
    } else {
        r.add(
            Verdict::Fail,
            label,
            format!(
                "no answer carrying id {} within {} ms",
                missing.join(", "),
                c.timeout.as_millis()
            ),
        );
    }
}

async fn set_round_trip(c: &mut Conn, r: &mut Report<'_>, path: &str, value: &str) {
    let label = format!("set {path}={value}");
    let read = |a: &Map<String, Value>| -> Result<Option<String>, String> {
        Ok(values_of(a)?.get(path).and_then(scalar_text))
    };
    let old = match c
        .get(&label, &[path.to_string()])
        .await
        .map_err(|e| format!("get before: {e}"))
        .and_then(|(a, _)| read(&a))
    {
        Ok(Some(v)) => v,
        Ok(None) => {
            r.add(
                Verdict::Fail,
                label,
                format!("get before the set: no value for {path}"),
            );
            return;
        }
        Err(e) => {
            r.add(Verdict::Fail, label, e);
            return;
        }
    };
    let set_dt = match c.set(&label, path, value).await {
        Err(e) => {
            r.add(Verdict::Fail, label, format!("set: {e}"));
            return;
        }
        Ok((a, dt)) => match set_ok(&a) {
            Ok(()) => dt,
            Err(e) => {
                r.add(Verdict::Fail, label, format!("set: {e}"));
                return;
            }
        },
    };
    match c
        .get(&label, &[path.to_string()])
        .await
        .map_err(|e| e.to_string())
        .and_then(|(a, _)| read(&a))
    {
        Ok(Some(v)) if v == value => {}
        Ok(v) => {
            r.add(
                Verdict::Fail,
                label,
                format!("read back {v:?} after setting {value:?}"),
            );
            return;
        }
        Err(e) => {
            r.add(Verdict::Fail, label, format!("get after the set: {e}"));
            return;
        }
    }
    let restored = match c.set(&label, path, &old).await {
        Ok((a, _)) => set_ok(&a),
        Err(e) => Err(e),
    };
    match restored {
        Ok(()) => r.add(
            Verdict::Pass,
            label,
            format!(
                "set in {}, read back, old value {old:?} restored",
                ms(set_dt)
            ),
        ),
        Err(e) => r.add(Verdict::Fail, label, format!("restoring {old:?}: {e}")),
    }
}

async fn finish(opts: &Options, c: &mut Conn, r: &mut Report<'_>) {
    // Anything still buffered (late or stray lines) is read briefly.
    let _ = c
        .wait(&[u64::MAX], Instant::now() + Duration::from_millis(100))
        .await;
    if c.bad_count == 0 {
        r.add(
            Verdict::Pass,
            "output lines",
            format!("{} lines, all JSON objects of the protocol", c.lines),
        );
    } else {
        r.add(
            Verdict::Fail,
            "output lines",
            format!(
                "{} of {} lines are not protocol lines (the agent logs and drops them; stdout is for the protocol only, log to stderr): {}",
                c.bad_count,
                c.lines,
                c.bad.join("; ")
            ),
        );
    }
    if !c.stray_ids.is_empty() {
        r.add(
            Verdict::Fail,
            "answer ids",
            format!(
                "answers with ids no request had: {}",
                c.stray_ids.join(", ")
            ),
        );
    }
    if c.notifies > 0 {
        if c.bad_notifies.is_empty() {
            r.add(
                Verdict::Pass,
                "notify",
                format!("{} notify lines, well formed", c.notifies),
            );
        } else {
            r.add(Verdict::Warn, "notify", c.bad_notifies.join("; "));
        }
    }
    if let Some((label, worst)) = c.timings.iter().max_by_key(|(_, d)| *d) {
        let limit = opts.timeout / 4;
        if *worst > limit {
            r.add(
                Verdict::Warn,
                "timing",
                format!(
                    "slowest: {label} took {} (over a quarter of the {} ms timeout)",
                    ms(*worst),
                    opts.timeout.as_millis()
                ),
            );
        } else {
            r.add(
                Verdict::Pass,
                "timing",
                format!(
                    "{} answers timed, slowest {} ({label})",
                    c.timings.len(),
                    ms(*worst)
                ),
            );
        }
    }
    // End of input: the provider should exit by itself.
    drop(c.stdin.take());
    match tokio::time::timeout(Duration::from_secs(2), c.child.wait()).await {
        Ok(Ok(st)) => r.add(Verdict::Pass, "exit on end of input", format!("{st}")),
        Ok(Err(e)) => r.add(Verdict::Warn, "exit on end of input", e.to_string()),
        Err(_) => {
            let _ = c.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), c.child.wait()).await;
            r.add(
                Verdict::Warn,
                "exit on end of input",
                "still running 2 s after its input closed; killed",
            );
        }
    }
}
