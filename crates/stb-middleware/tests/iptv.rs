//! The IPTV mode against real streams: two network namespaces joined by a veth pair, a
//! "headend" where ffmpeg sends two channels to multicast groups (MPEG-2 video + MP2 audio in
//! MPEG-TS, one over RTP, one over plain UDP), and the "stb" where `stb-middleware --iptv`
//! runs and is driven over its stdin/stdout as cwmpd would.
//!
//! Needs root (namespaces), `ip`, `ffmpeg` and `nft` (packet loss: this kernel's `tc` has no
//! netem, so loss is made by an nftables rule dropping 1 in 20 datagrams as they enter the
//! stb namespace). Skipped when not root or a tool is missing, except with CI=true, where a
//! missing tool fails the test.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_stb-middleware");
const ROOT: &str = "Device.Services.STBService.1.";
const URI: &str = "Components.FrontEnd.1.IP.ServiceConnect.URI";
const MS: &str = "ServiceMonitoring.MainStream.1.";
const TUNE_TIMEOUT_MS: u64 = 2500;

fn p(rel: &str) -> String {
    format!("{ROOT}{rel}")
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg(if tool == "ffmpeg" { "-version" } else { "-V" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Whether the test can run; panics in CI when a tool is missing.
fn can_run() -> bool {
    let missing: Vec<&str> = ["ip", "ffmpeg", "nft"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {missing:?} missing: the IPTV test cannot run"
        );
        eprintln!("skipped: {missing:?} not installed");
        return false;
    }
    if !is_root() {
        eprintln!("skipped: network namespaces need root");
        return false;
    }
    true
}

fn run(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}: {st}");
}

/// A process killed by its PID and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The two namespaces and the veth pair; deleted when dropped (the veth goes with them).
struct Net {
    headend: String,
    stb: String,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let n = Net {
            headend: format!("iptvh{id}"),
            stb: format!("iptvs{id}"),
        };
        let (vh, vs) = (format!("vh{id}"), format!("vs{id}"));
        run(&["ip", "netns", "add", &n.headend]);
        run(&["ip", "netns", "add", &n.stb]);
        run(&[
            "ip", "link", "add", &vh, "type", "veth", "peer", "name", &vs,
        ]);
        run(&["ip", "link", "set", &vh, "netns", &n.headend]);
        run(&["ip", "link", "set", &vs, "netns", &n.stb]);
        for (ns, dev, addr) in [
            (&n.headend, &vh, "10.77.0.1/24"),
            (&n.stb, &vs, "10.77.0.2/24"),
        ] {
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev]);
        }
        n
    }

    /// An ffmpeg headend channel: test pattern and tone, MPEG-2 video (GOP 12) + MP2 audio.
    fn sender(&self, url: &str, muxer: &str, pattern: &str) -> Proc {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.headend,
                "ffmpeg",
                "-hide_banner",
                "-nostdin",
            ])
            .args(["-loglevel", "error", "-re", "-f", "lavfi", "-i"])
            .arg(format!("{pattern}=size=320x240:rate=25"))
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args([
                "-c:v",
                "mpeg2video",
                "-g",
                "12",
                "-b:v",
                "800k",
                "-c:a",
                "mp2",
            ])
            .args(["-f", muxer, url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn nft(&self, script: &str) {
        run(&["ip", "netns", "exec", &self.stb, "nft", script]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.headend, &self.stb] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!("stb-iptv-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The provider, in the stb namespace, driven like the agent drives it.
struct Mw {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    notified: Vec<Value>,
    next_id: u64,
}

impl Mw {
    fn start(net: &Net, dir: &Path) -> Mw {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.stb, BIN, "--iptv", "--state"])
            .arg(dir)
            .args(["--tune-timeout-ms", &TUNE_TIMEOUT_MS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                let v: Value =
                    serde_json::from_str(&l).expect("stdout carries protocol lines only");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Mw {
            proc: Proc(child),
            stdin,
            lines,
            notified: Vec::new(),
            next_id: 1_000,
        }
    }

    /// Sends a request and waits (bounded) for its answer; pushed lines are kept aside.
    fn call(&mut self, mut req: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        req["id"] = json!(id);
        let w = self.stdin.as_mut().unwrap();
        writeln!(w, "{req}").unwrap();
        w.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .expect("an answer within 10 s");
            if v.get("notify").is_some() {
                self.notified.push(v);
            } else {
                assert_eq!(v["id"], json!(id), "answers in order: {v}");
                return v;
            }
        }
    }

    fn get(&mut self, rel: &str) -> serde_json::Map<String, Value> {
        let a = self.call(json!({"op": "get", "paths": [p(rel)]}));
        a["values"]
            .as_object()
            .cloned()
            .unwrap_or_else(|| panic!("{a}"))
    }

    fn value(&mut self, rel: &str) -> String {
        let v = self.get(rel);
        v.get(&p(rel))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{rel} not served"))
            .to_string()
    }

    fn num(&mut self, rel: &str) -> u64 {
        self.value(rel).parse().unwrap()
    }

    /// Sets values; the answer and how long it took.
    fn set(&mut self, values: &[(&str, &str)]) -> (Value, Duration) {
        let map: serde_json::Map<String, Value> =
            values.iter().map(|(k, v)| (p(k), json!(v))).collect();
        let t0 = Instant::now();
        let a = self.call(json!({"op": "set", "values": map}));
        (a, t0.elapsed())
    }

    /// Polls `rel` until `ok` holds on its value (bounded).
    fn wait_for(&mut self, rel: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.value(rel);
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{rel} never became {what} (last {v:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) for a pushed value of `rel`.
    fn wait_notify(&mut self, rel: &str, want: &str) {
        let key = p(rel);
        let hit = |v: &Value| v["notify"].get(&key).and_then(Value::as_str) == Some(want);
        if self.notified.iter().any(hit) {
            self.notified.retain(|v| !hit(v));
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if hit(&v) => return,
                Ok(v) => self.notified.push(v),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no notify {rel}={want} within 10 s: {:?}", self.notified)
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Closes stdin and waits (bounded) for the exit.
    fn close(mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.proc.0.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "no exit within 5 s of the end of its input"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn list(s: &str) -> Vec<u64> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split(',').map(|x| x.parse().unwrap()).collect()
}

#[test]
fn tunes_counts_samples_and_recovers_on_real_multicast() {
    if !can_run() {
        return;
    }
    let net = Net::new();
    let ch1 = "rtp://239.77.0.1:5004?StrCtrl=IGMP?MuxType=MPEG2-TS";
    let ch2 = "udp://239.77.0.2:5006";
    let _s1 = net.sender("rtp://239.77.0.1:5004?ttl=4", "rtp_mpegts", "testsrc");
    let mut s2 = net.sender(
        "udp://239.77.0.2:5006?ttl=4&pkt_size=1316",
        "mpegts",
        "smptebars",
    );
    let dir = TempDir::new();
    let mut mw = Mw::start(&net, &dir.0);

    // Nothing tuned yet.
    assert_eq!(mw.value(URI), "");
    assert_eq!(mw.value("AVStreams.AVStream.1.Status"), "Disabled");
    let caps = mw.value("Capabilities.VideoDecoder.VideoStandards");
    assert!(caps.split(',').any(|s| s == "MPEG2-Part2"), "{caps}");

    // Tune to channel 1 (RTP): ok once it plays.
    let (a, took) = mw.set(&[(URI, ch1)]);
    assert_eq!(a["ok"], json!(true), "{a}");
    eprintln!("tune to {ch1}: answered in {took:?}");
    assert!(took < Duration::from_millis(TUNE_TIMEOUT_MS), "{took:?}");
    assert_eq!(mw.value(URI), ch1);
    assert_eq!(
        mw.value("Components.FrontEnd.1.X_00D09E_CurrentChannel"),
        ch1
    );
    assert_eq!(mw.value("AVStreams.AVStream.1.Status"), "Enabled");
    assert_eq!(
        mw.value("Components.FrontEnd.1.IP.Inbound.1.SourceAddress"),
        "10.77.0.1"
    );
    assert_eq!(
        mw.value("Components.FrontEnd.1.IP.Inbound.1.DestinationAddress"),
        "239.77.0.1"
    );
    assert_eq!(
        std::fs::read_to_string(dir.0.join("uri")).unwrap(),
        format!("{ch1}\n")
    );
    let log = std::fs::read_to_string(dir.0.join("tune.log")).unwrap();
    assert!(
        log.contains(&format!(" uri={ch1} previous=- tune_ms=")),
        "{log}"
    );

    // Real counters: the decoder runs, packets arrive, nothing is lost on the clean link.
    mw.wait_for("Components.VideoDecoder.1.Status", "Enabled", |v| {
        v == "Enabled"
    });
    assert_eq!(
        mw.value("Components.VideoDecoder.1.MPEG2Part2"),
        p("Capabilities.VideoDecoder.MPEG2Part2.ProfileLevel.1")
    );
    assert_eq!(
        mw.value("Components.AudioDecoder.1.AudioStandard"),
        "MPEG1-Part3-Layer2"
    );
    let t = format!("{MS}Total.");
    // past the decoder's start (it catches up on what arrived while it probed the stream)
    mw.wait_for(
        &format!("{t}VideoDecoderStats.DecodedFrames"),
        "over 60",
        |v| v.parse::<u64>().unwrap() > 60,
    );
    let r1 = mw.num(&format!("{t}RTPStats.PacketsReceived"));
    let f1 = mw.num(&format!("{t}VideoDecoderStats.DecodedFrames"));
    let t1 = Instant::now();
    mw.wait_for(
        &format!("{t}VideoDecoderStats.DecodedFrames"),
        "50 frames more",
        |v| v.parse::<u64>().unwrap() >= f1 + 50,
    );
    let total = mw.get(&t);
    let secs = t1.elapsed().as_secs_f64();
    let n = |k: &str| -> u64 {
        total[&p(&format!("{t}{k}"))]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (r2, f2) = (
        n("RTPStats.PacketsReceived"),
        n("VideoDecoderStats.DecodedFrames"),
    );
    assert!(r2 > r1, "{r1} → {r2}");
    assert_eq!(n("RTPStats.PacketsExpected"), r2);
    assert_eq!(n("RTPStats.PacketsLost"), 0);
    assert_eq!(n("RTPStats.LossEvents"), 0);
    assert_eq!(n("MPEG2TSStats.PacketDiscontinuityCounter"), 0);
    assert_eq!(n("MPEG2TSStats.TSSyncByteErrorCount"), 0);
    let ts = n("MPEG2TSStats.TSPacketsReceived");
    assert!(
        ts >= r2 && ts <= 7 * r2,
        "{ts} TS packets in {r2} RTP packets"
    );
    // the sender runs at 25 frames/s (-re): the decoder follows it
    let fps = (f2 - f1) as f64 / secs;
    assert!((15.0..40.0).contains(&fps), "{fps} frames/s");
    assert!(n("VideoDecoderStats.IDecodedFrames") >= 1);
    assert!(n("VideoDecoderStats.PDecodedFrames") >= n("VideoDecoderStats.IDecodedFrames"));
    assert!(
        (20..=30).contains(&n("VideoDecoderStats.FrameRate")),
        "{}",
        n("VideoDecoderStats.FrameRate")
    );

    // 5 % loss on the way in: losses, loss events and TS discontinuities are counted.
    net.nft("add table ip loss");
    net.nft("add chain ip loss pre { type filter hook prerouting priority 0; }");
    net.nft("add rule ip loss pre ip daddr 239.77.0.0/24 numgen random mod 20 0 drop");
    mw.wait_for(&format!("{t}RTPStats.PacketsLost"), "over 5", |v| {
        v.parse::<u64>().unwrap() > 5
    });
    net.nft("delete table ip loss");
    let total = mw.get(&t);
    let n = |k: &str| -> u64 {
        total[&p(&format!("{t}{k}"))]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let lost = n("RTPStats.PacketsLost");
    assert_eq!(
        n("RTPStats.PacketsExpected") - n("RTPStats.PacketsReceived"),
        lost
    );
    assert!(n("RTPStats.LossEvents") >= 1 && n("RTPStats.LossEvents") <= lost);
    assert!(n("MPEG2TSStats.PacketDiscontinuityCounter") >= 1);
    // about 5 % of what was sent since the rule came in; far below everything received
    assert!(lost * 4 < n("RTPStats.PacketsReceived"), "{lost}");

    // Sample statistics: 1 s intervals, 3 kept.
    let (a, _) = mw.set(&[
        ("ServiceMonitoring.SampleInterval", "1"),
        ("ServiceMonitoring.ReportSamples", "3"),
        ("ServiceMonitoring.SampleEnable", "true"),
    ]);
    assert_eq!(a["ok"], json!(true), "{a}");
    assert_eq!(mw.value("ServiceMonitoring.SampleState"), "Enabled");
    let s = format!("{MS}Sample.");
    mw.wait_for(&format!("{s}SampleSeconds"), "3 samples", |v| {
        list(v).len() == 3
    });
    // the fourth interval pushes out the first: never more than 3
    let first = mw.value("ServiceMonitoring.ReportStartTime");
    mw.wait_for("ServiceMonitoring.ReportStartTime", "later", |v| v != first);
    let sample = mw.get(&s);
    let l = |k: &str| list(sample[&p(&format!("{s}{k}"))].as_str().unwrap());
    for k in [
        "SampleSeconds",
        "RTPStats.SampleSeconds",
        "RTPStats.PacketsReceived",
        "RTPStats.PacketsLost",
        "MPEG2TSStats.TSPacketsReceived",
        "VideoDecoderStats.DecodedFrames",
    ] {
        assert_eq!(l(k).len(), 3, "{k}: {:?}", l(k));
    }
    assert!(
        l("SampleSeconds").iter().all(|&x| x <= 1),
        "{:?}",
        l("SampleSeconds")
    );
    assert!(
        l("RTPStats.PacketsReceived").iter().all(|&x| x > 10),
        "{:?}",
        l("RTPStats.PacketsReceived")
    );
    assert!(
        l("VideoDecoderStats.DecodedFrames")
            .iter()
            .all(|&x| (10..=45).contains(&x))
    );
    let start = mw.value("ServiceMonitoring.ReportStartTime");
    let end = mw.value("ServiceMonitoring.ReportEndTime");
    assert!(start.ends_with('Z') && start < end, "{start} {end}");
    // fewer samples: the lists are cut at once
    let (a, _) = mw.set(&[("ServiceMonitoring.ReportSamples", "2")]);
    assert_eq!(a["ok"], json!(true));
    assert!(list(&mw.value(&format!("{s}RTPStats.PacketsReceived"))).len() <= 2);

    // Reset of the totals.
    let before = mw.num(&format!("{t}RTPStats.PacketsReceived"));
    let (a, _) = mw.set(&[(&format!("{t}Reset"), "true")]);
    assert_eq!(a["ok"], json!(true));
    assert!(mw.num(&format!("{t}ResetTime")) <= 1);
    assert!(mw.num(&format!("{t}RTPStats.PacketsReceived")) < before);
    assert_eq!(mw.value(&format!("{t}Reset")), "false");

    // Channel 2 (plain UDP): TS counters go on, RTP counters stand still.
    let (a, took) = mw.set(&[(URI, ch2)]);
    assert_eq!(a["ok"], json!(true), "{a}");
    eprintln!("tune to {ch2}: answered in {took:?}");
    assert_eq!(
        mw.value("Components.FrontEnd.1.IP.Inbound.1.DestinationAddress"),
        "239.77.0.2"
    );
    let rtp = mw.num(&format!("{t}RTPStats.PacketsReceived"));
    let ts0 = mw.num(&format!("{t}MPEG2TSStats.TSPacketsReceived"));
    mw.wait_for(
        &format!("{t}MPEG2TSStats.TSPacketsReceived"),
        "growing",
        |v| v.parse::<u64>().unwrap() > ts0 + 200,
    );
    assert_eq!(mw.num(&format!("{t}RTPStats.PacketsReceived")), rtp);

    // A group nobody sends to: error after the timeout, channel 2 stays.
    let (a, took) = mw.set(&[(URI, "udp://239.77.0.9:5010")]);
    let why = a["error"].as_str().unwrap_or_else(|| panic!("{a}"));
    assert!(why.contains("no datagram"), "{why}");
    eprintln!("tune to a group without sender: error in {took:?}");
    assert!(
        took >= Duration::from_millis(TUNE_TIMEOUT_MS - 100),
        "{took:?}"
    );
    assert!(
        took < Duration::from_millis(TUNE_TIMEOUT_MS + 2000),
        "{took:?}"
    );
    assert_eq!(mw.value(URI), ch2);
    assert_eq!(
        std::fs::read_to_string(dir.0.join("uri")).unwrap(),
        format!("{ch2}\n")
    );
    mw.wait_for("AVStreams.AVStream.1.Status", "Enabled again", |v| {
        v == "Enabled"
    });
    assert_eq!(
        mw.value("Components.FrontEnd.1.IP.Inbound.1.DestinationAddress"),
        "239.77.0.2"
    );

    // Malformed URIs and a refused combination: errors at once, nothing changes.
    for bad in [
        "udp://not-an-address:5000",
        "http://239.77.0.1:5004",
        "rtp://239.77.0.1:5004?StrTrspCtrl=ARQ",
    ] {
        let (a, took) = mw.set(&[(URI, bad)]);
        assert!(a["error"].is_string(), "{bad}: {a}");
        assert!(took < Duration::from_secs(1), "{bad}: {took:?}");
    }
    let (a, _) = mw.set(&[(URI, ch1), ("ServiceMonitoring.SampleInterval", "0")]);
    assert!(a["error"].is_string(), "{a}");
    assert_eq!(mw.value(URI), ch2);
    assert_eq!(mw.value("ServiceMonitoring.SampleInterval"), "1");

    // The sender of channel 2 stops: the device pushes the loss, then the recovery.
    drop(s2);
    mw.wait_notify("AVStreams.AVStream.1.Status", "Error");
    s2 = net.sender(
        "udp://239.77.0.2:5006?ttl=4&pkt_size=1316",
        "mpegts",
        "smptebars",
    );
    mw.wait_notify("AVStreams.AVStream.1.Status", "Enabled");

    // A restart: answers at once, goes back to the stored service by itself.
    mw.close();
    let mut mw = Mw::start(&net, &dir.0);
    let t0 = Instant::now();
    assert_eq!(mw.value(URI), ch2);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(
        mw.value("ServiceMonitoring.SampleInterval"),
        "1",
        "settings stored"
    );
    assert_eq!(mw.value("ServiceMonitoring.ReportSamples"), "2");
    mw.wait_notify("AVStreams.AVStream.1.Status", "Enabled");
    mw.close();
    drop(s2);
}
