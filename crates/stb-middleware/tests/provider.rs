//! Runs the built `stb-middleware` as cwmpd would: requests on stdin, answers on stdout, its
//! state directory checked between runs; and, when the agent is built next to it, through
//! `cwmpd provider-check`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_stb-middleware");
const PREFIX: &str = "Device.Services.STBService.1.Components.FrontEnd.";
const CHANNEL: &str = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";
const SIGNAL: &str = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_SignalLevel";

/// A state directory of its own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "stb-middleware-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running provider; stdout lines arrive through a thread, so that a hang fails the test.
struct Mw {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Mw {
    fn start(dir: &Path) -> Mw {
        let mut child = Command::new(BIN)
            .arg("--state")
            .arg(dir)
            .args(["--tune-delay-ms", "30"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                if tx.send(l.unwrap()).is_err() {
                    break;
                }
            }
        });
        Mw {
            child,
            stdin,
            lines,
        }
    }

    fn send_raw(&mut self, line: &[u8]) {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(line).unwrap();
        w.write_all(b"\n").unwrap();
        w.flush().unwrap();
    }

    fn next(&mut self) -> Value {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(5))
            .expect("a line");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
    }

    fn ask(&mut self, req: Value) -> Value {
        self.send_raw(req.to_string().as_bytes());
        self.next()
    }

    fn get(&mut self, id: u64, path: &str) -> Value {
        let a = self.ask(json!({"id": id, "op": "get", "paths": [path]}));
        assert_eq!(a["id"], json!(id), "{a}");
        a["values"].clone()
    }

    /// Closes stdin; the program must exit by itself, successfully.
    fn finish(mut self) {
        drop(self.stdin.take());
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "{st}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "no exit on end of input"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            self.lines.recv_timeout(Duration::from_secs(1)).is_err(),
            "extra output"
        );
    }
}

#[test]
fn serves_tunes_persists_and_restarts_on_the_stored_channel() {
    let dir = TempDir::new("run");
    let mut mw = Mw::start(&dir.0);
    let all = mw.get(4_000_000_011, PREFIX);
    assert_eq!(all.as_object().unwrap().len(), 7, "{all}");
    assert_eq!(all[CHANNEL], "101");
    assert_eq!(all[&format!("{PREFIX}1.Name")], "DVB-T tuner");

    let a = mw.ask(json!({"id": 4_000_000_018u64, "op": "set", "values": {CHANNEL: "205"}}));
    assert_eq!(a, json!({"id": 4_000_000_018u64, "ok": true}));
    assert_eq!(mw.next(), json!({"notify": {SIGNAL: "-45"}}));
    assert_eq!(
        std::fs::read_to_string(dir.0.join("channel")).unwrap(),
        "205\n"
    );

    // Unanswerable lines get no answer (the next answer is the next request's), an oversized
    // one is skipped whole, an empty one ignored.
    mw.send_raw(b"this is not json");
    mw.send_raw(br#"{"op":"get","paths":[]}"#);
    mw.send_raw(br#"{"id":"30","op":"get","paths":[]}"#);
    mw.send_raw(&vec![b'x'; (1 << 20) + 100]);
    mw.send_raw(b"");
    assert_eq!(mw.get(31, CHANNEL), json!({CHANNEL: "205"}));

    // The same channel again: tuned and logged, no notify.
    assert_eq!(
        mw.ask(json!({"id": 32, "op": "set", "values": {CHANNEL: "205"}})),
        json!({"id": 32, "ok": true})
    );
    for (id, req) in [
        (33, json!({"op": "set", "values": {CHANNEL: "0"}})),
        (
            34,
            json!({"op": "set", "values": {CHANNEL: "300", format!("{PREFIX}1.Name"): "x"}}),
        ),
        (35, json!({"op": "set", "values": {"Device.Other.X": "1"}})),
        (36, json!({"op": "add", "object": PREFIX, "instance": 2})),
        (37, json!({"op": "delete", "object": format!("{PREFIX}1.")})),
        (38, json!({"op": "frobnicate"})),
    ] {
        let mut req = req;
        req["id"] = json!(id);
        let a = mw.ask(req);
        assert_eq!(a["id"], json!(id));
        assert!(a["error"].is_string(), "{a}");
    }
    assert_eq!(mw.get(39, CHANNEL), json!({CHANNEL: "205"}));
    mw.finish();

    let log = std::fs::read_to_string(dir.0.join("tune.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    for (l, previous) in lines.iter().zip(["101", "205"]) {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 4, "{l}");
        let (secs, millis) = f[0].split_once('.').unwrap();
        assert!(
            secs.parse::<u64>().unwrap() > 1_600_000_000 && millis.len() == 3,
            "{l}"
        );
        assert_eq!(
            f[1..3],
            ["channel=205".to_string(), format!("previous={previous}")]
        );
        let ms = f[3].strip_prefix("tune_ms=").unwrap();
        assert_eq!(ms.split_once('.').unwrap().1.len(), 3, "{l}");
        assert!(ms.parse::<f64>().unwrap() >= 30.0, "{l}");
    }

    // A restart (a reboot of the box) comes back on the stored channel.
    let mut mw = Mw::start(&dir.0);
    let all = mw.get(40, &format!("{PREFIX}1."));
    assert_eq!(
        (&all[CHANNEL], &all[SIGNAL]),
        (&json!("205"), &json!("-45"))
    );
    mw.finish();
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["--bogus"][..],
        &[],
        &["--state"],
        &["--state", "/tmp", "--tune-delay-ms", "soon"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: stb-middleware --state DIR"));
    }
}

/// `cwmpd provider-check` against this provider, when the agent is built next to it.
#[test]
fn passes_cwmpd_provider_check() {
    let cwmpd = Path::new(BIN).with_file_name("cwmpd");
    if !cwmpd.exists() {
        eprintln!(
            "skipped: {} is not built (cargo build -p cwmpd --bin cwmpd)",
            cwmpd.display()
        );
        return;
    }
    let dir = TempDir::new("check");
    let out = Command::new(&cwmpd)
        .args(["provider-check", "--prefix", PREFIX, "--set"])
        .arg(format!("{CHANNEL}=205"))
        .args(["--", BIN, "--state"])
        .arg(&dir.0)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("RESULT: PASS"),
        "{report}"
    );
    assert!(!report.lines().any(|l| l.starts_with("WARN")), "{report}");
    // The check sets the channel back to the old one.
    assert_eq!(
        std::fs::read_to_string(dir.0.join("channel")).unwrap(),
        "101\n"
    );
}
