//! The control socket under hostile or broken local clients (issue #20), against the real agent
//! binary: idle and stalled connections, clients that do not read, amplification, garbage, and
//! the device side's read-only rule. Connection requests (`cwmp-connreq http`) must keep working
//! throughout. docs/CONTROL.md is the specification these tests check.
//!
//! The time bounds are shortened through the agent's `CWMPD_CTL_*_MS` variables so the tests
//! do not wait for the production values (30 s idle, 10 s line, 10 s write).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use cwmpd::ctl::{MAX_CLIENTS, MAX_NAMES};
use cwmpd::engine::rpc::MAX_RESPONSE_ENTRIES;
use serde_json::{Value, json};

const USER: &str = "acs-user";
const PASS: &str = "cr-pass";
const CR_URL: &str = "Device.ManagementServer.ConnectionRequestURL";
/// What the agent may use at most over a test (issue #20).
const RSS_LIMIT_KB: u64 = 64 * 1024;
/// The longest a `ctl` request may take while hostile clients are connected.
const CTL_BOUND: Duration = Duration::from_secs(1);

/// Starts an agent with an HTTP CR listener, CR credentials, an STB front end and an XMPP
/// connection instance; `env` sets the agent's environment (the control socket's bounds).
/// The host's interfaces and processes left out of the model: its size stays what `status`
/// reported while a test sizes an answer by it.
const FIXED_SIZE: &str = "[system]\nenable = false\n";

fn start(d: &TempDir, env: &[(&str, &str)], extra: &str) -> Agent {
    let cfg = format!(
        "{extra}[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nrate_burst = 1000\nrate_per_minute = 60000\n\
         [parameters]\n\
         \"Device.ManagementServer.ConnectionRequestUsername\" = \"{USER}\"\n\
         \"Device.ManagementServer.ConnectionRequestPassword\" = \"{PASS}\"\n\
         \"Device.Services.STBService.1.Components.FrontEnd.1.Enable\" = true\n\
         \"Device.XMPP.Connection.1.Enable\" = false\n"
    );
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    Agent::start_with_env(&write_config(d.path(), &cfg), &env)
}

fn pid(a: &Agent) -> u32 {
    a.child.id()
}

/// The agent's resident set, in kB.
fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples the agent's RSS every 5 ms in a thread (for at most 120 s); `stop` returns the
/// largest value seen.
struct RssWatch {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(rss_kb(pid)));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                m.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// The agent's ConnectionRequestURL once the listener has published it (bounded wait).
fn cr_url(a: &Agent) -> String {
    let t0 = Instant::now();
    loop {
        let url = a.get(CR_URL);
        if url.starts_with("http://127.0.0.1:") {
            return url;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no CR URL: {url:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP connection request with the project's ACS-side tool; must get 200. Returns how
/// long the tool took.
fn cr(url: &str) -> Duration {
    let t0 = Instant::now();
    let out = Command::new(connreq_bin())
        .args([
            "http",
            url,
            "--user",
            USER,
            "--password",
            PASS,
            "--timeout",
            "10",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "CR failed: {stdout}");
    assert!(stdout.starts_with("200 "), "{stdout}");
    t0.elapsed()
}

/// One request on a fresh connection, and how long the answer took.
fn timed(sock: &Path, req: Value) -> (Value, Duration) {
    let t0 = Instant::now();
    let v = ctl(sock, &req).expect("control request");
    (v, t0.elapsed())
}

fn status_within(sock: &Path, bound: Duration) -> Duration {
    let (v, dt) = timed(sock, json!({"op": "status"}));
    assert_eq!(v["ok"], true, "{v}");
    assert!(dt < bound, "status took {dt:?}");
    dt
}

/// A raw control connection.
struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn connect(sock: &Path) -> Raw {
        let w = UnixStream::connect(sock).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        w.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        Raw {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// The next answer line (panics on EOF or after the read timeout).
    fn answer(&mut self) -> Value {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).unwrap();
        assert!(n > 0, "EOF instead of an answer");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("answer {l:?}: {e}"))
    }

    fn call(&mut self, req: &Value) -> Value {
        let mut l = req.to_string();
        l.push('\n');
        self.send(l.as_bytes());
        self.answer()
    }

    /// Reads until EOF (at most `limit` in all, at most 64 MiB); returns what came and when
    /// the EOF came, or panics if it did not.
    fn until_eof(&mut self, limit: Duration) -> (Vec<u8>, Duration) {
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            assert!(t0.elapsed() < limit, "no EOF within {limit:?}");
            match self.r.read(&mut buf) {
                Ok(0) => return (got, t0.elapsed()),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    assert!(got.len() < 64 << 20, "no EOF after 64 MiB");
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (got, t0.elapsed());
                }
                Err(e) => panic!("no EOF: {e} after {:?}", t0.elapsed()),
            }
        }
    }
}

/// Waits (up to `limit`) until the peer has closed the connection, without reading from it;
/// returns how long that took, or None.
fn hangup_within(s: &UnixStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let mut p = nix::libc::pollfd {
            fd: s.as_raw_fd(),
            events: nix::libc::POLLRDHUP,
            revents: 0,
        };
        let left = limit.saturating_sub(t0.elapsed()).as_millis().max(1) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { nix::libc::poll(&mut p, 1, left) };
        if n > 0 && p.revents & (nix::libc::POLLRDHUP | nix::libc::POLLHUP) != 0 {
            return Some(t0.elapsed());
        }
    }
    None
}

/// Whether the agent has closed `s` (EOF, without waiting).
fn closed_now(s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    // A connection closed with part of a request unread reports a reset rather than EOF.
    let r = match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    s.set_nonblocking(false).unwrap();
    r
}

/// An answer, shortened for a failure message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

fn assert_fault(v: &Value, code: u64) {
    assert_eq!(v["fault"]["code"], code, "{}", short(v));
    assert_eq!(v["ok"], false, "{}", short(v));
    assert!(
        v["fault"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        short(v)
    );
}

#[test]
fn two_hundred_idle_clients_do_not_lock_out_a_request() {
    let d = TempDir::new("ctlidle");
    let a = start(&d, &[], "");
    let url = cr_url(&a);
    let mut idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&a.sock).unwrap())
        .collect();
    // A new request is admitted at once (the oldest idle connection makes room) ...
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        worst = worst.max(status_within(&a.sock, CTL_BOUND));
    }
    // ... also through the `cwmpd ctl` command the middleware scripts use.
    let t0 = Instant::now();
    let sock = a.sock.display().to_string();
    let (code, out, err) = cwmpd(&["ctl", "-s", &sock, "status"]);
    let cmd_time = t0.elapsed();
    assert_eq!(code, 0, "{out} {err}");
    assert!(cmd_time < CTL_BOUND, "cwmpd ctl status took {cmd_time:?}");
    let cr_time = cr(&url);
    // The oldest idle connections were the ones closed.
    let evicted = 200 - MAX_CLIENTS;
    let t0 = Instant::now();
    while !idle[..evicted].iter_mut().all(closed_now) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the oldest idle connections were not closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Clients stalled in the middle of a request line do not lock anyone out either.
    let mut stalled: Vec<UnixStream> = (0..200)
        .map(|_| {
            let mut s = UnixStream::connect(&a.sock).unwrap();
            s.write_all(br#"{"op":"status","#).unwrap();
            s
        })
        .collect();
    for _ in 0..10 {
        worst = worst.max(status_within(&a.sock, CTL_BOUND));
    }
    let cr_time = cr_time.max(cr(&url));
    let t0 = Instant::now();
    while !stalled[..200 - MAX_CLIENTS].iter_mut().all(closed_now) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the oldest stalled connections were not closed: {:?}",
            stalled
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| (!closed_now(s)).then_some(i))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "FIGURES 200 idle/stalled clients: worst ctl status {worst:?}, `cwmpd ctl status` {cmd_time:?}, worst CR {cr_time:?}"
    );
}

#[test]
fn stalled_line_and_idle_connections_are_closed_after_their_bounds() {
    let d = TempDir::new("ctlstall");
    let a = start(
        &d,
        &[("CWMPD_CTL_LINE_MS", "1000"), ("CWMPD_CTL_IDLE_MS", "1500")],
        "",
    );
    let url = cr_url(&a);
    // Half a request line, then nothing.
    let mut half = Raw::connect(&a.sock);
    half.send(br#"{"op":"status","pad":"#);
    let t_half = Instant::now();
    // A connection that says nothing at all, and one that goes quiet after a request.
    let mut silent = Raw::connect(&a.sock);
    let t_silent = Instant::now();
    let mut quiet = Raw::connect(&a.sock);
    assert_eq!(quiet.call(&json!({"op": "status"}))["ok"], true);
    let t_quiet = Instant::now();
    // Others are served meanwhile, connection requests too.
    for _ in 0..5 {
        status_within(&a.sock, CTL_BOUND);
    }
    cr(&url);
    // The half line gets an error answer, then EOF, once the line bound has passed.
    let ans = half.answer();
    assert_eq!(ans["ok"], false, "{ans}");
    assert!(
        ans["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{ans}"
    );
    let (rest, _) = half.until_eof(Duration::from_secs(10));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let dt = t_half.elapsed();
    assert!(
        dt >= Duration::from_millis(900) && dt < Duration::from_secs(5),
        "half line closed after {dt:?}"
    );
    // The silent and the quiet connections are closed without a word after the idle bound.
    for (c, t, what) in [
        (&mut silent, t_silent, "silent"),
        (&mut quiet, t_quiet, "quiet"),
    ] {
        let (got, _) = c.until_eof(Duration::from_secs(10));
        assert!(
            got.is_empty(),
            "{what}: {:?}",
            String::from_utf8_lossy(&got)
        );
        let dt = t.elapsed();
        assert!(
            dt >= Duration::from_millis(1400) && dt < Duration::from_secs(6),
            "{what} closed after {dt:?}"
        );
    }
    status_within(&a.sock, CTL_BOUND);
    cr(&url);
}

#[test]
fn clients_that_do_not_read_are_dropped_and_memory_stays_bounded() {
    let d = TempDir::new("ctlslow");
    let a = start(&d, &[("CWMPD_CTL_WRITE_MS", "1000")], FIXED_SIZE);
    let url = cr_url(&a);
    const SLOW: usize = 6;
    // A large answer, more than the socket buffers hold: Device. 24 times over (about 650 kB
    // with the 2026-12 model; 40 pipelined requests of 6 clients would be 150 MB unbounded).
    let big = json!({"op": "get", "names": vec!["Device."; 24]});
    let mut line = big.to_string();
    line.push('\n');
    let mut one = Raw::connect(&a.sock);
    let full = {
        let v = one.call(&big);
        assert_eq!(v["ok"], true, "{}", short(&v));
        v.to_string().len() + 1
    };
    drop(one);
    assert!(full > 256 << 10, "answer of {full} bytes is not large");
    let watch = RssWatch::start(pid(&a));
    let requests = 40;
    let started = Instant::now();
    let slow: Vec<UnixStream> = (0..SLOW)
        .map(|_| {
            let mut s = UnixStream::connect(&a.sock).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
            // Pipelined requests; the answers are never read (until the agent gives up).
            for _ in 0..requests {
                s.write_all(line.as_bytes()).unwrap();
            }
            s
        })
        .collect();
    // Everyone else is served meanwhile; a request waits its turn behind the large gets
    // already with the engine (first come, first served), hence the wider bound.
    let bound = 2 * CTL_BOUND;
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        worst = worst.max(status_within(&a.sock, bound));
    }
    let cr_time = cr(&url);
    // Each slow client is dropped once its first answer has waited for the write bound.
    for s in &slow {
        hangup_within(s, Duration::from_secs(20)).expect("slow client not dropped");
    }
    let dropped_after = started.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(900),
        "dropped after {dropped_after:?}, before the write bound"
    );
    // What reached each of them is less than the answers they asked for: the rest was never
    // built or was freed.
    for s in slow {
        let mut r = Raw {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        };
        let (got, _) = r.until_eof(Duration::from_secs(10));
        assert!(
            got.len() < 2 * full,
            "{} bytes of {} delivered",
            got.len(),
            requests * full
        );
    }
    for _ in 0..5 {
        worst = worst.max(status_within(&a.sock, CTL_BOUND));
    }
    cr(&url);
    let max = watch.stop();
    let after = rss_kb(pid(&a));
    println!(
        "FIGURES slow readers: answer {full} B, all {SLOW} dropped within {dropped_after:?}, worst ctl {worst:?}, CR {cr_time:?}, RSS max {max} kB, after {after} kB"
    );
    assert!(max < RSS_LIMIT_KB, "RSS reached {max} kB");
    assert!(after < RSS_LIMIT_KB, "RSS {after} kB afterwards");
}

#[test]
fn too_many_names_are_refused_by_the_control_socket() {
    let d = TempDir::new("ctlnames");
    let a = start(&d, &[], "");
    let url = cr_url(&a);
    let watch = RssWatch::start(pid(&a));
    let mut worst = Duration::ZERO;
    let values: serde_json::Map<String, Value> = (0..=MAX_NAMES)
        .map(|i| (format!("Device.DeviceInfo.X{i}"), Value::from("v")))
        .collect();
    let cases = [
        json!({"op": "get", "names": vec!["Device."; 10_000]}),
        json!({"op": "getattr", "names": vec!["Device."; 10_000]}),
        json!({"op": "get", "names": vec![""; MAX_NAMES + 1]}),
        json!({"op": "set", "values": values}),
    ];
    for req in &cases {
        for _ in 0..3 {
            let (v, dt) = timed(&a.sock, req.clone());
            assert_fault(&v, 9004);
            worst = worst.max(dt);
        }
    }
    // Several clients at once, while connection requests come in.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let sock = a.sock.clone();
            let req = cases[0].clone();
            std::thread::spawn(move || {
                let mut c = Raw::connect(&sock);
                (0..10)
                    .map(|_| {
                        let t0 = Instant::now();
                        assert_fault(&c.call(&req), 9004);
                        t0.elapsed()
                    })
                    .max()
                    .unwrap()
            })
        })
        .collect();
    let cr_time = cr(&url);
    for t in threads {
        worst = worst.max(t.join().unwrap());
    }
    status_within(&a.sock, CTL_BOUND);
    let max = watch.stop();
    println!("FIGURES names cap: worst 9004 {worst:?}, CR {cr_time:?}, RSS max {max} kB");
    assert!(worst < CTL_BOUND, "worst {worst:?}");
    assert!(max < RSS_LIMIT_KB, "RSS reached {max} kB");
}

#[test]
fn amplification_within_the_names_cap_is_refused_with_9004_before_anything_is_built() {
    let d = TempDir::new("ctlamp");
    let a = start(&d, &[], "");
    let url = cr_url(&a);
    let params = a.ctl(json!({"op": "status"}))["parameters"]
        .as_u64()
        .unwrap() as usize;
    // Few enough names, but an expansion over the SOAP side's entry limit.
    let n = MAX_RESPONSE_ENTRIES / params + 1;
    assert!(n <= MAX_NAMES, "the model is too large for this test");
    let watch = RssWatch::start(pid(&a));
    let mut worst = Duration::ZERO;
    let cases = [
        json!({"op": "get", "names": vec!["Device."; n]}),
        json!({"op": "get", "names": vec![""; n]}),
        json!({"op": "get", "names": vec!["Device."; MAX_NAMES]}),
        json!({"op": "getattr", "names": vec!["Device."; n]}),
        json!({"op": "getattr", "names": vec!["Device."; MAX_NAMES]}),
    ];
    for req in &cases {
        for _ in 0..3 {
            let (v, dt) = timed(&a.sock, req.clone());
            assert_fault(&v, 9004);
            worst = worst.max(dt);
        }
    }
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let sock = a.sock.clone();
            let req = cases[2].clone();
            std::thread::spawn(move || {
                let mut c = Raw::connect(&sock);
                (0..5)
                    .map(|_| {
                        let t0 = Instant::now();
                        assert_fault(&c.call(&req), 9004);
                        t0.elapsed()
                    })
                    .max()
                    .unwrap()
            })
        })
        .collect();
    let cr_time = cr(&url);
    for t in threads {
        worst = worst.max(t.join().unwrap());
    }
    status_within(&a.sock, CTL_BOUND);
    let max = watch.stop();
    println!(
        "FIGURES amplification: {params} parameters, get of {n} x Device.: worst 9004 {worst:?}, CR {cr_time:?}, RSS max {max} kB"
    );
    assert!(worst < CTL_BOUND, "worst {worst:?}");
    assert!(max < RSS_LIMIT_KB, "RSS reached {max} kB");
}

#[test]
fn an_answer_at_the_limit_is_served_and_its_memory_given_back() {
    let d = TempDir::new("ctllimit");
    let a = start(&d, &[], FIXED_SIZE);
    let params = a.ctl(json!({"op": "status"}))["parameters"]
        .as_u64()
        .unwrap() as usize;
    let n = MAX_RESPONSE_ENTRIES / params;
    let before = rss_kb(pid(&a));
    let (v, dt) = timed(&a.sock, json!({"op": "get", "names": vec!["Device."; n]}));
    assert_eq!(v["ok"], true, "{}", short(&v));
    assert_eq!(v["values"].as_array().unwrap().len(), n * params);
    drop(v);
    // The agent gives the memory back right after writing the answer.
    let t0 = Instant::now();
    let mut after = rss_kb(pid(&a));
    while after >= RSS_LIMIT_KB && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
        after = rss_kb(pid(&a));
    }
    println!(
        "FIGURES get of {} values: {dt:?}, RSS before {before} kB, after {after} kB",
        n * params
    );
    assert!(after < RSS_LIMIT_KB, "RSS {after} kB afterwards");
    assert_eq!(a.ctl(json!({"op": "status"}))["ok"], true);
}

#[test]
fn garbage_lines_get_a_clear_error_and_the_connection_keeps_working() {
    let d = TempDir::new("ctlgarbage");
    let a = start(&d, &[], "");
    let url = cr_url(&a);
    let mut c = Raw::connect(&a.sock);
    let garbage: &[&[u8]] = &[
        b"hello\n",
        b"\n",
        b"   \r\n",
        b"[1,2,3]\n",
        b"\"status\"\n",
        b"{\"op\":5}\n",
        b"{}\n",
        b"{\"op\":\"get\",\"names\":[\"Device.\"\n",
        b"{\"op\":\"\xff\xfe\"}\n",
        b"\x00\x01\x02\n",
        b"{\"op\":\"no-such-op\"}\n",
    ];
    // Nesting deeper than the parser recurses, and an event code that is not one.
    let deep = format!("{}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let event = format!("{{\"op\":\"inform\",\"event\":\"{}\"}}\n", "X".repeat(1000));
    let garbage: Vec<&[u8]> = garbage
        .iter()
        .copied()
        .chain([deep.as_bytes(), event.as_bytes()])
        .collect();
    for g in garbage {
        c.send(g);
        let v = c.answer();
        let what = String::from_utf8_lossy(&g[..g.len().min(60)]).into_owned();
        assert_eq!(v["ok"], false, "{what:?}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what:?}: {v}"
        );
    }
    // Pipelined: one answer per line, in order, on the same connection.
    c.send(b"{\"op\":\"status\"}\nnot json\n{\"op\":\"get\",\"names\":[\"Device.DeviceInfo.UpTime\"]}\n");
    assert_eq!(c.answer()["ok"], true);
    assert_eq!(c.answer()["ok"], false);
    let v = c.answer();
    assert_eq!(v["values"][0]["name"], "Device.DeviceInfo.UpTime", "{v}");
    cr(&url);
    // A line over 1 MiB: an error answer, then the connection is closed (the rest of the line
    // cannot be told from the next request).
    let mut long = Raw::connect(&a.sock);
    let mut l = br#"{"op":"status","pad":""#.to_vec();
    l.resize(cwmpd::ctl::MAX_REQUEST + 10, b'x');
    long.send(&l);
    let v = long.answer();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    long.until_eof(Duration::from_secs(5));
    // A last request without its newline, then the client's end closed: answered.
    let mut last = Raw::connect(&a.sock);
    last.send(br#"{"op":"status"}"#);
    last.w.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(last.answer()["ok"], true);
    last.until_eof(Duration::from_secs(5));
    assert_eq!(c.call(&json!({"op": "status"}))["ok"], true);
    cr(&url);
}

/// The device side's read-only rule (docs/CONTROL.md): refused with 9008 and a message.
fn assert_refused(a: &Agent, name: &str, value: &str) {
    let before = a.ctl(json!({"op": "get", "names": [name]}));
    let v = a.set(name, value);
    assert_eq!(v["ok"], false, "set {name}: {v}");
    // The fault names the parameter: as the answer's fault, or in the per-parameter list.
    let top = v["fault"]["code"] == 9008;
    let listed = v["faults"]
        .as_array()
        .is_some_and(|l| l.iter().any(|f| f["name"] == name && f["code"] == 9008));
    assert!(top || listed, "set {name}: {v}");
    let msg = if top {
        &v["fault"]["message"]
    } else {
        &v["faults"][0]["message"]
    };
    assert!(
        msg.as_str().is_some_and(|m| !m.is_empty()),
        "set {name}: {v}"
    );
    let after = a.ctl(json!({"op": "get", "names": [name]}));
    if before["ok"] == true && !name.ends_with("UpTime") && !name.contains("CurrentLocalTime") {
        assert_eq!(before["values"], after["values"], "{name} changed");
    }
}

#[test]
fn device_side_cannot_write_what_the_agent_computes_or_the_identity() {
    let d = TempDir::new("ctlro");
    let a = start(&d, &[], "");
    let url = cr_url(&a);
    for (name, value) in [
        // Identity.
        ("Device.DeviceInfo.SoftwareVersion", "6.6.6"),
        ("Device.DeviceInfo.HardwareVersion", "HW9"),
        ("Device.DeviceInfo.SerialNumber", "EVIL"),
        ("Device.DeviceInfo.ManufacturerOUI", "FFFFFF"),
        ("Device.DeviceInfo.ProductClass", "X"),
        ("Device.DeviceInfo.Manufacturer", "X"),
        // The agent's own values.
        (CR_URL, "http://203.0.113.9:1/evil"),
        ("Device.ManagementServer.ParameterKey", "k"),
        (
            "Device.ManagementServer.UDPConnectionRequestAddress",
            "203.0.113.9:1",
        ),
        ("Device.ManagementServer.NATDetected", "true"),
        ("Device.ManagementServer.ConnReqJabberID", "evil@x/y"),
        ("Device.XMPP.Connection.1.JabberID", "evil@x/y"),
        ("Device.XMPP.Connection.1.Status", "Enabled"),
        (
            "Device.XMPP.Connection.1.LastChangeDate",
            "2020-01-01T00:00:00Z",
        ),
        ("Device.XMPP.Connection.1.TLSEstablished", "true"),
        ("Device.XMPP.Connection.1.Stats.ReceivedMessages", "7"),
        // What the agent supports.
        ("Device.RootDataModelVersion", "2.1"),
        ("Device.ManagementServer.SupportedConnReqMethods", "HTTP"),
        ("Device.ManagementServer.HTTPCompressionSupported", "GZIP"),
        ("Device.ManagementServer.InstanceWildcardsSupported", "true"),
        ("Device.ManagementServer.AliasBasedAddressing", "true"),
        ("Device.ManagementServer.KickURL", "http://203.0.113.9/kick"),
        (
            "Device.ManagementServer.DownloadProgressURL",
            "http://203.0.113.9/p",
        ),
        ("Device.XMPP.SupportedServerConnectAlgorithms", "DNS"),
        ("Device.Services.STBServiceNumberOfEntries", "7"),
        (
            "Device.ManagementServer.InformParameterNumberOfEntries",
            "7",
        ),
        // Live values.
        ("Device.DeviceInfo.UpTime", "1"),
        ("Device.DeviceInfo.MemoryStatus.Free", "1"),
    ] {
        assert_refused(&a, name, value);
    }
    // One refused name refuses the whole set.
    let v = a.ctl(json!({"op": "set", "values": {
        "Device.DeviceInfo.ProvisioningCode": "P1",
        "Device.DeviceInfo.SoftwareVersion": "6.6.6"}}));
    assert_eq!(v["ok"], false, "{v}");
    assert_ne!(a.get("Device.DeviceInfo.ProvisioningCode"), "P1");
    // What the ACS may write, and the device's own stored state, the device side may write.
    assert_eq!(
        a.set("Device.DeviceInfo.ProvisioningCode", "P2")["ok"],
        true
    );
    assert_eq!(a.get("Device.DeviceInfo.ProvisioningCode"), "P2");
    let fe = "Device.Services.STBService.1.Components.FrontEnd.1.Status";
    assert_eq!(a.set(fe, "Enabled")["ok"], true);
    assert_eq!(a.get(fe), "Enabled");
    cr(&url);
}

#[test]
fn device_side_cannot_write_a_read_only_value_its_provider_owns() {
    if !Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        common::skip("ctl_hostile", "python3 not installed");
        return;
    }
    let d = TempDir::new("ctlprov");
    let values = d.path().join("device.json");
    let status = "Device.Services.STBService.1.Components.FrontEnd.1.Status";
    let chan = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";
    std::fs::write(&values, json!({status: "Enabled", chan: "101"}).to_string()).unwrap();
    let prov = manifest().join("tests/fixtures/file_provider.py");
    let a = start(
        &d,
        &[],
        &format!(
            "[[provider]]\nprefix = \"Device.Services.STBService.1.Components.FrontEnd.\"\ncommand = [\"python3\", \"{}\", \"{}\"]\n",
            prov.display(),
            values.display()
        ),
    );
    assert_eq!(a.get(status), "Enabled");
    assert_refused(&a, status, "Error");
    // A writable value under the provider is written through to it.
    assert_eq!(a.set(chan, "205")["ok"], true);
    assert_eq!(a.get(chan), "205");
}
