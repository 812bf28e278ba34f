//! `stb-middleware`: the middleware stand-in of the emulated set-top box image
//! (`cross/stb-image.sh`). It is a cwmpd *provider* (docs/PROVIDERS.md) of the tuner's subtree
//! `Device.Services.STBService.1.Components.FrontEnd.`, with the semantics of the reference
//! provider `tests/fixtures/provider_good.py`, plus a tuner whose channel survives a reboot.
//!
//! `stb-middleware --state DIR [--tune-delay-ms N]` reads JSON-line requests on stdin and
//! answers on stdout (protocol lines only, flushed each); diagnostics go to stderr; it exits
//! when stdin ends. It serves every parameter the data model defines directly under
//! `FrontEnd.1.` (a DVB-T front end, so no `IP.` object) plus `X_00D09E_SignalLevel`. Only
//! `X_00D09E_CurrentChannel` is writable: a set of it "tunes" (sleeps N ms, the tuner
//! hardware) and, when the channel changed, pushes the new signal level with a `notify` line.
//!
//! With `--iptv` it is instead the reference IPTV middleware, a provider of the whole
//! `Device.Services.STBService.1.` subtree (module `iptv`, docs/STB-SERVICES.md).
//!
//! Files in DIR (the box's flash):
//! * `channel`: the current channel, a decimal number and a newline; read at start (101 when
//!   absent or unreadable), replaced atomically on every tune (`channel.tmp`, fsync, rename,
//!   fsync of DIR).
//! * `tune.log`: one line per tune, `<unix seconds>.<millis> channel=<n> previous=<m>
//!   tune_ms=<ms, 3 decimals>`, fsynced; over 64 KiB only its newer half is kept (rewritten via
//!   `tune.log.tmp` and rename).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

mod iptv;
mod monitor;
mod session;
mod ts;

const PREFIX: &str = "Device.Services.STBService.1.Components.FrontEnd.";
const CHANNEL: &str = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";
const SIGNAL: &str = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_SignalLevel";
const DEFAULT_CHANNEL: u32 = 101;
/// Longest request line kept; longer ones are skipped up to their newline.
const MAX_LINE: usize = 1 << 20;
/// tune.log is halved when it grows over this.
const LOG_MAX: u64 = 64 << 10;
const USAGE: &str = "usage: stb-middleware --state DIR [--tune-delay-ms N]";

/// The front end as the middleware knows it.
#[derive(Clone, Debug, PartialEq)]
struct State {
    channel: u32,
}

impl State {
    fn signal_level(&self) -> String {
        (-40 - (self.channel % 10) as i32).to_string()
    }

    /// Every parameter served: full name, value.
    fn values(&self) -> Vec<(String, String)> {
        [
            ("Enable", "true".to_string()),
            ("Status", "Enabled".into()),
            ("Alias", "cpe-1".into()),
            ("Name", "DVB-T tuner".into()),
            ("X_00D09E_CurrentChannel", self.channel.to_string()),
            ("X_00D09E_CurrentInput", "DVB-T".into()),
            ("X_00D09E_SignalLevel", self.signal_level()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{PREFIX}1.{k}"), v))
        .collect()
    }
}

/// A channel number 1..=9999, decimal digits without sign or leading zero.
fn parse_channel(s: &str) -> Result<u32, String> {
    let digits = (1..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse() {
        Ok(n) if digits && !s.starts_with('0') => Ok(n),
        _ => Err(format!(
            "invalid channel {:?}: a decimal number 1..9999 expected",
            s.chars().take(24).collect::<String>()
        )),
    }
}

/// An answer and the notify line to send after it.
type Reply = (Value, Option<Value>);

fn error(id: &Value, why: impl Into<String>) -> Reply {
    (json!({"id": id, "error": why.into()}), None)
}

/// Handles one request. `tune(new, previous)` does the device side of a channel change; the
/// state changes only when it succeeds. `Err`: the request has no integer id, so it cannot be
/// answered (the reason is for stderr).
fn handle(
    req: &Value,
    st: &mut State,
    tune: &mut dyn FnMut(u32, u32) -> Result<(), String>,
) -> Result<Reply, String> {
    let id = match req.get("id") {
        Some(id) if id.is_u64() => id,
        _ => return Err("a request without an integer \"id\"".into()),
    };
    match req.get("op").and_then(Value::as_str) {
        Some("get") => {
            let Some(paths) = req.get("paths").and_then(Value::as_array) else {
                return Ok(error(id, "get without a \"paths\" array"));
            };
            let all = st.values();
            let mut out = Map::new();
            for p in paths.iter().filter_map(Value::as_str) {
                for (k, v) in &all {
                    if k == p || (p.ends_with('.') && k.starts_with(p)) {
                        out.insert(k.clone(), Value::from(v.as_str()));
                    }
                }
            }
            Ok((json!({"id": id, "values": out}), None))
        }
        Some("set") => {
            let Some(values) = req.get("values").and_then(Value::as_object) else {
                return Ok(error(id, "set without a \"values\" object"));
            };
            let served = st.values();
            let refused: Vec<String> = (values.keys())
                .filter(|k| *k != CHANNEL)
                .map(|k| match served.iter().any(|(n, _)| n == k) {
                    true => format!("{k} is read-only"),
                    false => format!("{k} is not served here"),
                })
                .collect();
            if !refused.is_empty() {
                return Ok(error(id, refused.join(", ")));
            }
            let Some(v) = values.get(CHANNEL) else {
                return Ok((json!({"id": id, "ok": true}), None));
            };
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Ok(error(id, "the channel is not a string")),
            };
            let channel = match parse_channel(&text).and_then(|c| tune(c, st.channel).map(|_| c)) {
                Ok(c) => c,
                Err(e) => return Ok(error(id, e)),
            };
            let changed = channel != st.channel;
            st.channel = channel;
            let notify = changed.then(|| json!({"notify": {SIGNAL: st.signal_level()}}));
            Ok((json!({"id": id, "ok": true}), notify))
        }
        Some("add" | "delete") => Ok(error(id, "this subtree has no writable tables")),
        _ => {
            let op = req.get("op").map_or("(none)".into(), Value::to_string);
            Ok(error(id, format!("unknown op {op}")))
        }
    }
}

/// The tuner hardware, and its files in the state directory.
struct Tuner {
    dir: PathBuf,
    delay: Duration,
}

impl Tuner {
    fn tune(&self, channel: u32, previous: u32) -> Result<(), String> {
        let t0 = Instant::now();
        std::thread::sleep(self.delay);
        write_atomic(&self.dir, "channel", format!("{channel}\n").as_bytes())
            .map_err(|e| format!("cannot store the channel in {}: {e}", self.dir.display()))?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:03} channel={channel} previous={previous} tune_ms={ms:.3}\n",
            now.as_secs(),
            now.subsec_millis()
        );
        // The tune is done and stored; a log that cannot be written does not undo it.
        if let Err(e) = self.log(&line) {
            eprintln!("stb-middleware: cannot write tune.log: {e}");
        }
        Ok(())
    }

    fn log(&self, line: &str) -> io::Result<()> {
        let path = self.dir.join("tune.log");
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
        if f.metadata()?.len() > LOG_MAX {
            let all = fs::read(&path)?;
            // The newer half, from the start of a line.
            let cut = all.len() / 2;
            let start = (all[cut.saturating_sub(1)..]
                .iter()
                .position(|&b| b == b'\n'))
            .map_or(all.len(), |p| cut + p);
            write_atomic(&self.dir, "tune.log", &all[start..])?;
        }
        Ok(())
    }
}

/// Replaces `dir/name` with `data`: a temporary file, fsync, rename, fsync of the directory.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// The stored channel, or the default (saying why on stderr).
fn load_channel(dir: &Path) -> u32 {
    let path = dir.join("channel");
    let mut text = String::new();
    let read = File::open(&path).and_then(|f| f.take(64).read_to_string(&mut text));
    match read
        .map_err(|e| e.to_string())
        .and_then(|_| parse_channel(text.trim()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "stb-middleware: {}: {e}; channel {DEFAULT_CHANNEL}",
                path.display()
            );
            DEFAULT_CHANNEL
        }
    }
}

/// Reads a line into `buf` without its newline. `None` at end of input; `Some(false)`: the line
/// was longer than `max` bytes and has been skipped up to its newline, never held in memory.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<bool>> {
    buf.clear();
    if r.by_ref().take(max as u64 + 1).read_until(b'\n', buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') || buf.len() <= max {
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        return Ok(Some(true));
    }
    buf.clear();
    loop {
        let chunk = r.fill_buf()?;
        let (n, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(p) => (p + 1, true),
            None => (chunk.len(), chunk.is_empty()),
        };
        r.consume(n);
        if end {
            return Ok(Some(false));
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(PathBuf, Duration), String> {
    let (mut dir, mut delay) = (None, 0);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state" => dir = Some(PathBuf::from(args.next().ok_or("--state needs a DIR")?)),
            "--tune-delay-ms" => {
                delay = (args.next().and_then(|v| v.parse().ok()))
                    .ok_or("--tune-delay-ms needs a number of milliseconds")?
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok((
        dir.ok_or("--state DIR is required")?,
        Duration::from_millis(delay),
    ))
}

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "--iptv") {
        return iptv::main(std::env::args().skip(1));
    }
    let (dir, delay) = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stb-middleware: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("stb-middleware: cannot create {}: {e}", dir.display());
    }
    let mut st = State {
        channel: load_channel(&dir),
    };
    eprintln!(
        "stb-middleware: serving {PREFIX}, channel {}, state in {}",
        st.channel,
        dir.display()
    );
    let tuner = Tuner { dir, delay };
    let (mut input, mut out) = (io::stdin().lock(), io::stdout().lock());
    let mut line = Vec::new();
    loop {
        match read_line(&mut input, &mut line, MAX_LINE) {
            Ok(Some(true)) => {}
            Ok(Some(false)) => {
                eprintln!("stb-middleware: a request line over {MAX_LINE} bytes, skipped");
                continue;
            }
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stb-middleware: stdin: {e}");
                return ExitCode::FAILURE;
            }
        }
        let text = line.strip_suffix(b"\r").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = serde_json::from_slice(text)
            .map_err(|e| format!("not JSON ({e})"))
            .and_then(|req| handle(&req, &mut st, &mut |c, p| tuner.tune(c, p)));
        match reply {
            Ok((answer, notify)) => {
                for v in std::iter::once(answer).chain(notify) {
                    if writeln!(out, "{v}").and_then(|_| out.flush()).is_err() {
                        eprintln!("stb-middleware: stdout closed");
                        return ExitCode::FAILURE;
                    }
                }
            }
            Err(e) => {
                let head = String::from_utf8_lossy(&text[..text.len().min(120)]);
                eprintln!("stb-middleware: ignored a line, {e}: {head}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Handles `req` with a tuner that records its calls and fails when `fail` is set.
    fn run(req: Value, st: &mut State, calls: &mut Vec<(u32, u32)>, fail: bool) -> Reply {
        let mut tune = |c, p| {
            calls.push((c, p));
            if fail {
                Err("tuner broken".to_string())
            } else {
                Ok(())
            }
        };
        handle(&req, st, &mut tune).expect("answered")
    }

    fn full(name: &str) -> String {
        format!("{PREFIX}1.{name}")
    }

    #[test]
    fn get_full_names_and_partial_paths() {
        let mut st = State { channel: 101 };
        let mut calls = Vec::new();
        let (a, n) = run(
            json!({"id": 4_000_000_011u64, "op": "get",
                   "paths": [full("Name"), full("X_00D09E_CurrentChannel"), full("Nope"),
                             "Device.Other.X", full("Name.")]}),
            &mut st,
            &mut calls,
            false,
        );
        assert_eq!(n, None);
        assert_eq!(a["id"], json!(4_000_000_011u64));
        let want = json!({full("Name"): "DVB-T tuner", full("X_00D09E_CurrentChannel"): "101"});
        assert_eq!(a["values"], want);
        for p in [PREFIX.to_string(), full(""), "Device.".into()] {
            let (a, _) = run(
                json!({"id": 1, "op": "get", "paths": [p]}),
                &mut st,
                &mut calls,
                false,
            );
            let v = a["values"].as_object().unwrap();
            assert_eq!(v.len(), 7, "{a}");
            assert_eq!(v[SIGNAL], "-41");
            assert_eq!(v[&full("Status")], "Enabled");
        }
        let (a, _) = run(
            json!({"id": 2, "op": "get", "paths": ["Device.Services.STBService.1.Components.FrontEnd"]}),
            &mut st,
            &mut calls,
            false,
        );
        assert_eq!(a, json!({"id": 2, "values": {}}));
        let (a, _) = run(json!({"id": 3, "op": "get"}), &mut st, &mut calls, false);
        assert!(a["error"].is_string());
        assert!(calls.is_empty());
    }

    #[test]
    fn set_channel_tunes_and_notifies_only_a_change() {
        let mut st = State { channel: 101 };
        let mut calls = Vec::new();
        let (a, n) = run(
            json!({"id": 9_007_199_254_740_992u64, "op": "set", "values": {CHANNEL: "205"}}),
            &mut st,
            &mut calls,
            false,
        );
        assert_eq!(a, json!({"id": 9_007_199_254_740_992u64, "ok": true}));
        assert_eq!(n, Some(json!({"notify": {SIGNAL: "-45"}})));
        assert_eq!((st.channel, &calls[..]), (205, &[(205, 101)][..]));
        let (a, n) = run(
            json!({"id": 6, "op": "set", "values": {CHANNEL: "205"}}),
            &mut st,
            &mut calls,
            false,
        );
        assert_eq!((a, n), (json!({"id": 6, "ok": true}), None));
        assert_eq!(calls.len(), 2, "the same channel is tuned again");
        let (a, n) = run(
            json!({"id": 7, "op": "set", "values": {CHANNEL: 9999}}),
            &mut st,
            &mut calls,
            false,
        );
        assert_eq!(
            (a["ok"].clone(), st.channel, n.is_some()),
            (json!(true), 9999, true)
        );
    }

    #[test]
    fn refused_sets_apply_nothing() {
        let mut st = State { channel: 101 };
        let mut calls = Vec::new();
        for bad in [
            "0", "10000", "abc", "", "+5", "0205", " 5", "5 ", "-1", "1.5",
        ] {
            let (a, n) = run(
                json!({"id": 1, "op": "set", "values": {CHANNEL: bad}}),
                &mut st,
                &mut calls,
                false,
            );
            assert!(
                a["error"].as_str().unwrap().contains("invalid channel"),
                "{bad:?}: {a}"
            );
            assert_eq!(n, None);
        }
        let reqs = [
            json!({CHANNEL: "205", full("Name"): "x"}),
            json!({full("Nope"): "1"}),
            json!({"Device.Other.X": "1"}),
            json!({CHANNEL: true}),
        ];
        for values in reqs {
            let (a, _) = run(
                json!({"id": 2, "op": "set", "values": values}),
                &mut st,
                &mut calls,
                false,
            );
            assert!(a["error"].is_string(), "{a}");
        }
        let (a, n) = run(
            json!({"id": 3, "op": "set", "values": {CHANNEL: "300"}}),
            &mut st,
            &mut calls,
            true,
        );
        assert_eq!((a, n), (json!({"id": 3, "error": "tuner broken"}), None));
        assert_eq!(calls, [(300, 101)]);
        assert_eq!(st.channel, 101);
    }

    #[test]
    fn other_ops_and_unanswerable_lines() {
        let mut st = State { channel: 101 };
        let mut calls = Vec::new();
        for op in [json!("add"), json!("delete"), json!("reboot"), json!(5)] {
            let (a, _) = run(
                json!({"id": 8, "op": op, "object": PREFIX}),
                &mut st,
                &mut calls,
                false,
            );
            assert_eq!(a["id"], 8);
            assert!(a["error"].is_string());
        }
        let (a, _) = run(json!({"id": 8}), &mut st, &mut calls, false);
        assert_eq!(a["error"], "unknown op (none)");
        for req in [
            json!({"op": "get", "paths": []}),
            json!({"id": "7", "op": "get"}),
            json!({"id": 7.5}),
            json!({"id": -1}),
            json!([1]),
        ] {
            assert!(handle(&req, &mut st, &mut |_, _| Ok(())).is_err(), "{req}");
        }
    }

    #[test]
    fn lines_are_bounded() {
        let mut r = Cursor::new(b"abc\r\n0123456789\n\nxyz\n0123456789\nlast".to_vec());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(ok) = read_line(&mut r, &mut buf, 5).unwrap() {
            got.push((ok, String::from_utf8(buf.clone()).unwrap()));
        }
        let want = [
            (true, "abc\r"),
            (false, ""),
            (true, ""),
            (true, "xyz"),
            (false, ""),
            (true, "last"),
        ];
        assert_eq!(got, want.map(|(o, s)| (o, s.to_string())));
        let mut r = Cursor::new(b"12345\n123456".to_vec());
        assert_eq!(read_line(&mut r, &mut buf, 5).unwrap(), Some(true));
        assert_eq!(read_line(&mut r, &mut buf, 5).unwrap(), Some(false));
        assert_eq!(read_line(&mut r, &mut buf, 5).unwrap(), None);
    }

    #[test]
    fn args_and_channel_file() {
        let args = |v: &[&str]| parse_args(v.iter().map(|s| s.to_string()));
        assert_eq!(
            args(&["--state", "/d", "--tune-delay-ms", "7"]),
            Ok(("/d".into(), Duration::from_millis(7)))
        );
        for bad in [
            &[][..],
            &["--state"],
            &["--state", "/d", "-x"],
            &["--state", "/d", "--tune-delay-ms", "x"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
        let dir = std::env::temp_dir().join(format!("stb-middleware-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(load_channel(&dir), DEFAULT_CHANNEL);
        fs::write(dir.join("channel"), "junk").unwrap();
        assert_eq!(load_channel(&dir), DEFAULT_CHANNEL);
        let tuner = Tuner {
            dir: dir.clone(),
            delay: Duration::ZERO,
        };
        tuner.tune(42, 101).unwrap();
        assert_eq!(load_channel(&dir), 42);
        // tune.log is halved, from a line start, once over 64 KiB.
        fs::write(
            dir.join("tune.log"),
            "0.000 channel=1 previous=1 tune_ms=0.000\n".repeat(1700),
        )
        .unwrap();
        tuner.tune(43, 42).unwrap();
        let log = fs::read_to_string(dir.join("tune.log")).unwrap();
        assert!(
            log.len() < 40 << 10 && log.len() > 30 << 10,
            "{}",
            log.len()
        );
        assert!(log.starts_with("0.000 channel=1 "));
        assert!(
            log.lines()
                .last()
                .unwrap()
                .contains(" channel=43 previous=42 tune_ms=")
        );
        assert!(!dir.join("tune.log.tmp").exists() && !dir.join("channel.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
