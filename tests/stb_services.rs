//! TR-135 STB services end to end (issue #17): the agent with the reference middleware
//! (`stb-middleware --iptv`) as the provider of `Device.Services.STBService.1.`, a real
//! multicast head end (ffmpeg sending two RTP/MPEG-TS channels) and the test ACS. Root only
//! (network namespaces); `CI=true` makes a missing peer a failure.
//!
//! ```text
//!  head (ffmpeg: 239.82.0.1:5004, 239.82.0.2:5004) ── stb (agent + middleware + test ACS)
//!  10.82.1.1                                           10.82.1.2
//! ```
//!
//! The channel change is the paper's use case through the standard parameter: a connection
//! request, SetParameterValues of `…FrontEnd.1.IP.ServiceConnect.URI`, answered only once the
//! middleware plays the new channel, then the ServiceMonitoring counters read back. Every
//! message the agent sent is validated against the CWMP schema.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::netns::{Rig, missing, unavailable};
use common::*;
use cwmp_testacs::{AcsOptions, SessionRecord, TestAcsHandle};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage};

const WAIT: Duration = Duration::from_secs(30);
const STB: &str = "Device.Services.STBService.1.";
const URI: &str = "Device.Services.STBService.1.Components.FrontEnd.1.IP.ServiceConnect.URI";
const MON: &str = "Device.Services.STBService.1.ServiceMonitoring.";
const MAIN: &str = "Device.Services.STBService.1.ServiceMonitoring.MainStream.1.";
const CH1: &str = "rtp://239.82.0.1:5004";
const CH2: &str = "rtp://239.82.0.2:5004";
/// A group nobody sends to.
const DARK: &str = "rtp://239.82.0.9:5004";
const CR_USER: &str = "cr-user";
const CR_PASS: &str = "cr-secret-17";

fn prereqs() -> Option<String> {
    unavailable().or_else(|| missing(&[("ffmpeg", "-version")]))
}

/// The reference middleware next to the agent, built first when missing or stale.
fn middleware_bin() -> PathBuf {
    cwmp_testacs::binaries::sibling(
        Path::new(env!("CARGO_BIN_EXE_cwmpd")),
        "stb-middleware",
        &["stb-middleware"],
        &[
            "crates/stb-middleware/src",
            "crates/stb-middleware/Cargo.toml",
        ],
    )
    .unwrap_or_else(|e| panic!("the stb-middleware binary: {e}"))
}

struct Net {
    rig: Rig,
    /// The agent's config and state, and the middleware's state (`mw/`).
    _dir: TempDir,
    cfg: PathBuf,
    acs: TestAcsHandle,
    agent: Option<Agent>,
    seen: usize,
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            a.stop();
        }
    }
}

/// ffmpeg sending a test pattern and a tone as RTP/MPEG-TS (MPEG-2 video, GOP of 12 frames at
/// 25 fps: a random access point every 0.48 s, as IPTV head ends send) to `group:5004`.
fn head_end(rig: &mut Rig, group: &str, tone: u32) {
    let mut c = rig.command("head", "ffmpeg");
    c.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency={tone}:sample_rate=48000"),
        ])
        .args(["-c:v", "mpeg2video", "-g", "12", "-b:v", "800k"])
        .args(["-c:a", "mp2", "-b:a", "128k"])
        .args(["-f", "rtp_mpegts"])
        .arg(format!("rtp://{group}:5004?ttl=4&pkt_size=1328"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    rig.own(c.spawn().expect("ffmpeg"));
}

impl Net {
    fn new(tag: &str) -> Net {
        let mut rig = Rig::new(tag, &["head", "stb"]);
        rig.link("head", "10.82.1.1/24", "stb", "10.82.1.2/24");
        // Multicast leaves and arrives by the veth on both sides.
        rig.exec("head", "ip route add 224.0.0.0/4 dev v-stb");
        rig.exec("stb", "ip route add 224.0.0.0/4 dev v-head");
        head_end(&mut rig, "239.82.0.1", 440);
        head_end(&mut rig, "239.82.0.2", 880);
        let stb = rig.name("stb");
        let dir = TempDir::new(&format!("stbsvc-{tag}"));
        let mw_state = dir.path().join("mw");
        std::fs::create_dir_all(&mw_state).unwrap();
        let acs = cwmp_testacs::try_spawn_in_netns(
            &stb,
            "127.0.0.1:0".parse().unwrap(),
            AcsOptions::default(),
        )
        .expect("test ACS");
        let cfg = write_config(
            dir.path(),
            &format!(
                "[[provider]]\nprefix = \"{STB}\"\ncommand = [\"{}\", \"--state\", \"{}\", \"--iptv\"]\n\
                 [parameters]\n\
                 \"Device.ManagementServer.URL\" = \"{}\"\n\
                 \"Device.ManagementServer.PeriodicInformEnable\" = \"false\"\n\
                 \"Device.ManagementServer.ConnectionRequestUsername\" = \"{CR_USER}\"\n\
                 \"Device.ManagementServer.ConnectionRequestPassword\" = \"{CR_PASS}\"\n\
                 {}",
                middleware_bin().display(),
                mw_state.display(),
                acs.url(),
                instances()
            ),
        );
        let agent = Agent::start_in(&cfg, Some(&stb));
        let mut net = Net {
            rig,
            _dir: dir,
            cfg,
            acs,
            agent: Some(agent),
            seen: 0,
        };
        let boot = net.next_session();
        assert!(events(&boot).contains(&"1 BOOT".to_string()));
        net
    }

    /// Stops the agent (and with it the middleware) and starts it again on the same state.
    fn restart(&mut self) -> SessionRecord {
        self.agent.take().unwrap().stop();
        let stb = self.rig.name("stb");
        self.agent = Some(Agent::start_in(&self.cfg, Some(&stb)));
        self.next_session()
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    fn next_session(&mut self) -> SessionRecord {
        common::next_session(&self.acs, &mut self.seen, self.agent.as_ref().unwrap())
    }

    /// Queues `rpcs` for the session of a real HTTP connection request (Digest), sends it with
    /// `cwmp-connreq` inside the box's namespace, and returns the session and when the CR left.
    fn managed(&mut self, rpcs: Vec<AcsRequest>) -> (SessionRecord, Instant) {
        let url = self
            .agent()
            .get("Device.ManagementServer.ConnectionRequestURL");
        self.acs.queue_on_event("6 CONNECTION REQUEST", rpcs);
        let t0 = Instant::now();
        let out = self
            .rig
            .command("stb", &connreq_path())
            .args(["http", &url, "--user", CR_USER, "--password", CR_PASS])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "HTTP CR to {url}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let s = self.next_session();
        assert!(
            events(&s).contains(&"6 CONNECTION REQUEST".to_string()),
            "{:?}",
            events(&s)
        );
        (s, t0)
    }

    /// Reads subtrees through the ACS (a session the test asks for).
    fn read(&mut self, names: &[&str]) -> BTreeMap<String, String> {
        self.acs.queue(vec![gpv(names)]);
        self.agent()
            .ctl(serde_json::json!({"op": "inform", "event": "6 CONNECTION REQUEST"}));
        gpv_values(&self.next_session())
    }

    fn validate(&self, test: &str) {
        let all = self.acs.wait_sessions(self.seen, WAIT);
        let n = common::xsd::validate_sessions(test, &all);
        assert!(n.is_none_or(|n| n > 0));
    }
}

/// The `[parameters]` lines that create the service's instances (the middleware serves the
/// values; the agent's data model holds the tables).
fn instances() -> String {
    [
        "Alias",
        "Components.FrontEnd.1.IP.Inbound.1.Alias",
        "Components.VideoDecoder.1.Alias",
        "Components.AudioDecoder.1.Alias",
        "AVStreams.AVStream.1.Alias",
        "AVPlayers.AVPlayer.1.Alias",
        "ServiceMonitoring.MainStream.1.Alias",
        "Capabilities.VideoDecoder.MPEG2Part2.ProfileLevel.1.Alias",
        "Capabilities.VideoDecoder.MPEG2Part2.ProfileLevel.2.Alias",
        "Capabilities.VideoDecoder.MPEG4Part10.ProfileLevel.1.Alias",
    ]
    .iter()
    .enumerate()
    .map(|(i, p)| format!("\"{STB}{p}\" = \"cpe-{}\"\n", if i == 8 { 2 } else { 1 }))
    .collect()
}

fn num(v: &BTreeMap<String, String>, k: &str) -> u64 {
    v.get(k)
        .unwrap_or_else(|| panic!("{k} missing from {v:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} = {:?}", v[k]))
}

fn spv_status(s: &SessionRecord) -> Result<u32, (u32, String)> {
    s.received
        .iter()
        .find_map(|r| match r {
            CpeMessage::SetParameterValuesResponse { status } => Some(Ok(*status)),
            CpeMessage::Fault(f) => Some(Err((f.code, f.string.clone()))),
            _ => None,
        })
        .expect("an answer to SetParameterValues")
}

#[test]
fn channel_change_through_service_connect_and_service_monitoring() {
    if let Some(why) = prereqs() {
        common::skip("(STB services, network namespaces)", &why);
        return;
    }
    let mut net = Net::new("stbs");

    // 1. The paper's channel change, by the standard parameter: CR → SPV(URI) answered once
    // the middleware plays the channel → the URI and the stream's status read back.
    let mut figures = Vec::new();
    for (i, ch) in [CH1, CH2, CH1].iter().enumerate() {
        let (s, t0) = net.managed(vec![
            spv(&[(URI, ch)], &format!("tune-{i}")),
            gpv(&[URI, &format!("{STB}AVStreams.AVStream.1.Status")]),
        ]);
        assert_eq!(spv_status(&s), Ok(0), "{:?}", s.received);
        let v = gpv_values(&s);
        assert_eq!(v[URI], *ch);
        assert_eq!(v[&format!("{STB}AVStreams.AVStream.1.Status")], "Enabled");
        figures.push(s.ended_at.unwrap() - t0);
    }
    for (i, d) in figures.iter().enumerate() {
        println!(
            "FIGURE channel change {} (CR → tuned → end of session): {:.1} ms (paper: ~2,000–2,800 ms)",
            i + 1,
            d.as_secs_f64() * 1e3
        );
    }

    // 2. The counters are real: they grow while the channel plays, with no loss on a clean
    // link, and MPEG-TS packets are RTP payload (7 per 1328-byte packet).
    let totals = [
        format!("{MAIN}Total.RTPStats.PacketsReceived"),
        format!("{MAIN}Total.RTPStats.PacketsLost"),
        format!("{MAIN}Total.MPEG2TSStats.TSPacketsReceived"),
        format!("{MAIN}Total.MPEG2TSStats.TSSyncByteErrorCount"),
        format!("{MAIN}Total.VideoDecoderStats.DecodedFrames"),
    ];
    let names: Vec<&str> = totals.iter().map(String::as_str).collect();
    let a = net.read(&names);
    let t = Instant::now();
    let mut b = a.clone();
    while num(&b, &totals[0]) <= num(&a, &totals[0]) + 50 {
        assert!(t.elapsed() < WAIT, "counters do not grow: {a:?} → {b:?}");
        std::thread::sleep(Duration::from_millis(200));
        b = net.read(&names);
    }
    assert_eq!(num(&b, &totals[1]), 0, "no loss on the veth: {b:?}");
    assert!(num(&b, &totals[2]) >= 7 * num(&b, &totals[0]) / 2, "{b:?}");
    assert_eq!(num(&b, &totals[3]), 0, "{b:?}");
    let t = Instant::now();
    while num(&b, &totals[4]) == 0 {
        assert!(t.elapsed() < WAIT, "the player decodes nothing: {b:?}");
        std::thread::sleep(Duration::from_millis(200));
        b = net.read(&names);
    }

    // 3. A channel nobody sends: the middleware refuses after its timeout, the SPV is a fault
    // and the service stays on the channel that plays.
    let (s, _) = net.managed(vec![spv(&[(URI, DARK)], "tune-dark"), gpv(&[URI])]);
    let Err((code, _)) = spv_status(&s) else {
        panic!("a dark channel was accepted: {:?}", s.received)
    };
    assert_eq!(code, 9002, "{:?}", s.received);
    assert_eq!(gpv_values(&s)[URI], CH1);
    assert_eq!(net.agent().get(URI), CH1);

    // 4. Sample statistics (TR-135): one-second samples, the last three kept.
    let (s, _) = net.managed(vec![spv(
        &[
            (&format!("{MON}SampleInterval"), "1"),
            (&format!("{MON}ReportSamples"), "3"),
            (&format!("{MON}SampleEnable"), "true"),
        ],
        "sample-1",
    )]);
    assert_eq!(spv_status(&s), Ok(0), "{:?}", s.received);
    let recv = format!("{MAIN}Sample.RTPStats.PacketsReceived");
    let secs = format!("{MAIN}Sample.SampleSeconds");
    let t = Instant::now();
    let v = loop {
        let v = net.read(&[&format!("{MAIN}Sample.")]);
        if v.get(&recv).is_some_and(|l| l.split(',').count() == 3) {
            break v;
        }
        assert!(t.elapsed() < WAIT, "no three samples: {v:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let per: Vec<u64> = v[&recv].split(',').map(|x| x.parse().unwrap()).collect();
    let sec: Vec<u64> = v[&secs].split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(sec.len(), 3, "{v:?}");
    for (p, s) in per.iter().zip(&sec) {
        // ~900 kbit/s in 1328-byte packets: roughly 85 packets a second.
        assert!(*s >= 1 && *p >= 20 * s && *p <= 400 * s, "{v:?}");
    }

    // 5. A restart of the box's software: the middleware tunes to the stored service again.
    let boot = net.restart();
    assert!(events(&boot).contains(&"1 BOOT".to_string()));
    let status = format!("{STB}AVStreams.AVStream.1.Status");
    let t = Instant::now();
    loop {
        let v = net.read(&[URI, &status]);
        assert_eq!(v[URI], CH1, "{v:?}");
        if v[&status] == "Enabled" {
            break;
        }
        assert!(t.elapsed() < WAIT, "not playing after the restart: {v:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    net.validate("channel_change_through_service_connect_and_service_monitoring");
    drop(net);
}
