//! `stb-middleware --iptv`: the reference IPTV middleware. A provider of the whole
//! `Device.Services.STBService.1.` subtree (docs/STB-SERVICES.md): an IP front end that joins
//! the multicast service set in `Components.FrontEnd.1.IP.ServiceConnect.URI`, a player
//! (ffmpeg) decoding what arrives, and TR-135 ServiceMonitoring counters measured on the
//! received packets.
//!
//! Files in DIR: `uri` (the current service, replaced atomically on every successful tune),
//! `settings.json` (the writable configuration: aliases, sampling, main stream), `tune.log`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::monitor::{self, Config, Counters, GROUPS, Sampler, UNKNOWN_TIME};
use crate::session::{self, Live, Player, Session, Shared, Uri, lock, parse_uri};
use crate::ts;

pub const ROOT: &str = "Device.Services.STBService.1.";
const URI_PARAM: &str = "Components.FrontEnd.1.IP.ServiceConnect.URI";
/// The vendor channel parameter: an alias of the URI in this mode.
const CHANNEL_ALIAS: &str = "Components.FrontEnd.1.X_00D09E_CurrentChannel";
const RESET: &str = "ServiceMonitoring.MainStream.1.Total.Reset";
const MS: &str = "ServiceMonitoring.MainStream.1.";
/// Enables of components that are always on: `true` is accepted, `false` refused.
const FIXED_ENABLES: [&str; 5] = [
    "Enable",
    "Components.FrontEnd.1.Enable",
    "Components.VideoDecoder.1.Enable",
    "Components.AudioDecoder.1.Enable",
    "AVPlayers.AVPlayer.1.Enable",
];
const ALIASES: [&str; 11] = [
    "Alias",
    "Capabilities.VideoDecoder.MPEG2Part2.ProfileLevel.1.Alias",
    "Capabilities.VideoDecoder.MPEG2Part2.ProfileLevel.2.Alias",
    "Capabilities.VideoDecoder.MPEG4Part10.ProfileLevel.1.Alias",
    "Components.FrontEnd.1.Alias",
    "Components.FrontEnd.1.IP.Inbound.1.Alias",
    "Components.VideoDecoder.1.Alias",
    "Components.AudioDecoder.1.Alias",
    "AVStreams.AVStream.1.Alias",
    "AVPlayers.AVPlayer.1.Alias",
    "ServiceMonitoring.MainStream.1.Alias",
];
const SAMPLE_ENABLE: &str = "ServiceMonitoring.SampleEnable";
const SAMPLE_INTERVAL: &str = "ServiceMonitoring.SampleInterval";
const REPORT_SAMPLES: &str = "ServiceMonitoring.ReportSamples";
const TIME_REFERENCE: &str = "ServiceMonitoring.TimeReference";
const MS_ENABLE: &str = "ServiceMonitoring.MainStream.1.Enable";
const MS_SERVICE_TYPE: &str = "ServiceMonitoring.MainStream.1.ServiceType";
const MIN_SAMPLE_INTERVAL: u32 = 1;
const MAX_REPORT_SAMPLES: u32 = 96;
/// No packet for this long: the stream is lost (Status Error, pushed).
const LOST_AFTER: Duration = Duration::from_millis(1500);
/// The video decoder is Enabled while it delivered a frame this recently.
const DECODING_RECENT: Duration = Duration::from_secs(2);
const USAGE: &str = "usage: stb-middleware --state DIR --iptv [--tune-timeout-ms N] [--ffmpeg PATH] [--iface NAME|ADDR]";

pub struct Options {
    pub dir: PathBuf,
    pub tune_timeout: Duration,
    pub ffmpeg: PathBuf,
    pub iface: Ipv4Addr,
}

/// `--iface` as an IPv4 address, or an interface name resolved with `ip -4 -o addr show`.
fn resolve_iface(s: &str) -> Result<Ipv4Addr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", s])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("--iface {s}: cannot run ip: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next()?.parse().ok())
        .ok_or_else(|| format!("--iface {s}: no IPv4 address on that interface"))
}

pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        dir: PathBuf::new(),
        tune_timeout: Duration::from_millis(3000),
        ffmpeg: PathBuf::from("ffmpeg"),
        iface: Ipv4Addr::UNSPECIFIED,
    };
    let mut dir = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iptv" => {}
            "--state" => dir = Some(PathBuf::from(args.next().ok_or("--state needs a DIR")?)),
            "--tune-timeout-ms" => {
                let ms: u64 = (args.next().and_then(|v| v.parse().ok()))
                    .filter(|ms| (1..=60_000).contains(ms))
                    .ok_or("--tune-timeout-ms needs a number of milliseconds, 1..60000")?;
                o.tune_timeout = Duration::from_millis(ms);
            }
            "--ffmpeg" => o.ffmpeg = PathBuf::from(args.next().ok_or("--ffmpeg needs a PATH")?),
            "--iface" => o.iface = resolve_iface(&args.next().ok_or("--iface needs a NAME")?)?,
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    o.dir = dir.ok_or("--state DIR is required")?;
    Ok(o)
}

/// What the installed ffmpeg can decode, as TR-135 standards (BBF enumeration order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caps {
    pub video: Vec<&'static str>,
    pub audio: Vec<&'static str>,
}

const VIDEO_DECODERS: [(&str, &str); 4] = [
    ("mpeg2video", "MPEG2-Part2"),
    ("mpeg4", "MPEG4-Part2"),
    ("h264", "MPEG4-Part10"),
    ("vc1", "SMPTE-VC-1"),
];
const AUDIO_DECODERS: [(&str, &str); 8] = [
    ("mp2", "MPEG1-Part3-Layer2"),
    ("mp3", "MPEG1-Part3-Layer3"),
    ("aac", "MPEG2-AAC-LC"),
    ("aac", "MPEG4-AAC-LC"),
    ("aac", "MPEG4-AAC-HE-v2"),
    ("ac3", "DOLBY-AC3"),
    ("eac3", "DOLBY-DD+"),
    ("dca", "DTS"),
];

/// Reads `ffmpeg -decoders` output.
pub fn caps_from_decoders(text: &str) -> Caps {
    let mut names = Vec::new();
    for l in text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("---"))
        .skip(1)
    {
        let mut w = l.split_whitespace();
        if let (Some(flags), Some(name)) = (w.next(), w.next()) {
            names.push((flags.as_bytes()[0], name.to_string()));
        }
    }
    let has = |kind: u8, n: &str| names.iter().any(|(k, m)| *k == kind && m == n);
    Caps {
        video: (VIDEO_DECODERS.iter())
            .filter(|(n, _)| has(b'V', n))
            .map(|p| p.1)
            .collect(),
        audio: (AUDIO_DECODERS.iter())
            .filter(|(n, _)| has(b'A', n))
            .map(|p| p.1)
            .collect(),
    }
}

fn probe_caps(ffmpeg: &Path) -> Caps {
    match Command::new(ffmpeg)
        .args(["-hide_banner", "-decoders"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) => caps_from_decoders(&String::from_utf8_lossy(&o.stdout)),
        Err(e) => {
            eprintln!("stb-middleware: {}: {e}; no decoders", ffmpeg.display());
            Caps::default()
        }
    }
}

fn default_settings() -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = ALIASES
        .iter()
        .map(|a| (a.to_string(), "cpe-1".to_string()))
        .collect();
    for (k, v) in [
        (SAMPLE_ENABLE, "false"),
        (SAMPLE_INTERVAL, "60"),
        (REPORT_SAMPLES, "24"),
        (TIME_REFERENCE, UNKNOWN_TIME),
        (MS_ENABLE, "true"),
        (MS_SERVICE_TYPE, "IPTV"),
    ] {
        m.insert(k.into(), v.into());
    }
    m
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Checks a value of a writable setting; returns it in canonical form.
fn validate(name: &str, v: &str) -> Result<String, String> {
    let range = |lo: u32, hi: u32| match v.parse::<u32>() {
        Ok(n) if (lo..=hi).contains(&n) && !v.starts_with('+') => Ok(n.to_string()),
        _ => Err(format!("{v:?}: a number {lo}..{hi} expected")),
    };
    match name {
        SAMPLE_ENABLE | MS_ENABLE => parse_bool(v)
            .map(|b| b.to_string())
            .ok_or_else(|| format!("{v:?} is not a boolean")),
        SAMPLE_INTERVAL => range(MIN_SAMPLE_INTERVAL, u32::MAX),
        REPORT_SAMPLES => range(1, MAX_REPORT_SAMPLES),
        TIME_REFERENCE => monitor::parse_time(v).map(monitor::format_time),
        MS_SERVICE_TYPE => match v {
            "IPTV" | "" => Ok(v.into()),
            _ => Err(format!("{v:?}: only IPTV is monitored on this box")),
        },
        _ if v.chars().count() <= 64 => Ok(v.into()),
        _ => Err("longer than 64 characters".into()),
    }
}

fn sample_config(s: &BTreeMap<String, String>) -> Config {
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("");
    Config {
        enable: get(SAMPLE_ENABLE) == "true",
        interval: get(SAMPLE_INTERVAL).parse().unwrap_or(60),
        report_samples: get(REPORT_SAMPLES).parse().unwrap_or(24),
        time_ref: monitor::parse_time(get(TIME_REFERENCE)).unwrap_or(None),
    }
}

/// Events of the main loop.
pub enum Event {
    Line(Vec<u8>),
    Oversized,
    End,
    /// A receiver saw its first random access point.
    Wake,
}

/// A set waiting for its tune.
struct Pending {
    id: Value,
    uri: Uri,
    changes: Vec<(String, String)>,
    reset: bool,
    started: Instant,
    deadline: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stream {
    Idle,
    Tuning,
    Playing,
    Lost,
}

struct Mw {
    opts: Options,
    caps: Caps,
    settings: BTreeMap<String, String>,
    /// The current service: what the last successful tune (or the stored URI) set.
    current: Option<Uri>,
    session: Option<Session>,
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    pending: Option<Pending>,
    sampler: Sampler,
    reset_base: Counters,
    reset_at: Instant,
    /// Counters frozen while the main stream's monitoring is disabled.
    frozen: Option<Counters>,
    watched: Vec<(String, String)>,
    wake: SyncSender<Event>,
}

fn error(id: &Value, why: impl Into<String>) -> Value {
    json!({"id": id, "error": why.into()})
}

impl Mw {
    fn counters(&self) -> Counters {
        self.frozen.unwrap_or_else(|| lock(&self.shared).counters)
    }

    /// Leaves the current service (if any) and joins `uri`, without waiting for it.
    fn start_session(&mut self, uri: &Uri) -> Result<(), String> {
        if let Some(s) = self.session.take() {
            s.stop();
        }
        self.generation += 1;
        let wake = self.wake.clone();
        let s = Session::start(
            uri,
            self.opts.iface,
            Some(&self.opts.ffmpeg),
            &self.shared,
            self.generation,
            Box::new(move || {
                let _ = wake.try_send(Event::Wake);
            }),
        )?;
        self.session = Some(s);
        Ok(())
    }

    /// Goes back to the current service after a failed tune.
    fn restore(&mut self) {
        match self.current.clone() {
            Some(u) => {
                if let Err(e) = self.start_session(&u) {
                    eprintln!("stb-middleware: cannot go back to {}: {e}", u.text);
                }
            }
            None => {
                if let Some(s) = self.session.take() {
                    s.stop();
                }
            }
        }
    }

    fn stream(&self, live: &Live, now: Instant) -> Stream {
        if self.session.is_none() {
            return Stream::Idle;
        }
        if live.generation != self.generation || live.random_access.is_none() {
            return Stream::Tuning;
        }
        match live.last_packet {
            Some(t) if now.duration_since(t) < LOST_AFTER => Stream::Playing,
            _ => Stream::Lost,
        }
    }

    /// Applies validated settings and a Total reset; stores the settings first.
    fn apply(&mut self, changes: Vec<(String, String)>, reset: bool) -> Result<(), String> {
        let now = Instant::now();
        if !changes.is_empty() {
            let mut next = self.settings.clone();
            next.extend(changes);
            let text = serde_json::to_string_pretty(&next).unwrap_or_default() + "\n";
            crate::write_atomic(&self.opts.dir, "settings.json", text.as_bytes())
                .map_err(|e| format!("cannot store the settings: {e}"))?;
            let was_enabled = self.settings[MS_ENABLE] == "true";
            self.settings = next;
            let enabled = self.settings[MS_ENABLE] == "true";
            if was_enabled && !enabled {
                self.frozen = Some(self.counters());
            } else if !was_enabled && enabled {
                self.frozen = None;
                self.reset_base = self.counters();
                self.reset_at = now;
            }
            let c = self.counters();
            let cfg = sample_config(&self.settings);
            self.sampler.configure(cfg, SystemTime::now(), &c);
        }
        if reset {
            self.reset_base = self.counters();
            self.reset_at = now;
        }
        Ok(())
    }

    fn handle(&mut self, req: &Value) -> Result<Option<Value>, String> {
        let id = match req.get("id") {
            Some(id) if id.is_u64() => id,
            _ => return Err("a request without an integer \"id\"".into()),
        };
        Ok(match req.get("op").and_then(Value::as_str) {
            Some("get") => Some(match req.get("paths").and_then(Value::as_array) {
                None => error(id, "get without a \"paths\" array"),
                Some(paths) => {
                    let all = self.values();
                    let mut out = Map::new();
                    for p in paths.iter().filter_map(Value::as_str) {
                        for (k, v) in &all {
                            if k == p || (p.ends_with('.') && k.starts_with(p)) {
                                out.insert(k.clone(), Value::from(v.as_str()));
                            }
                        }
                    }
                    json!({"id": id, "values": out})
                }
            }),
            Some("set") => match req.get("values").and_then(Value::as_object) {
                None => Some(error(id, "set without a \"values\" object")),
                Some(values) => self.set(id, values),
            },
            Some("add" | "delete") => Some(error(id, "the tables of this subtree are fixed")),
            _ => {
                let op = req.get("op").map_or("(none)".into(), Value::to_string);
                Some(error(id, format!("unknown op {op}")))
            }
        })
    }

    /// A set: answered now, or (a tune) once the new service plays or the tune failed.
    fn set(&mut self, id: &Value, values: &Map<String, Value>) -> Option<Value> {
        if self.pending.is_some() {
            return Some(error(id, "a tune is in progress, try again"));
        }
        let served: Vec<String> = self.values().into_iter().map(|p| p.0).collect();
        let (mut uri_text, mut changes, mut reset, mut errors) =
            (None, Vec::new(), false, Vec::new());
        for (k, v) in values {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    errors.push(format!("{k}: not a string"));
                    continue;
                }
            };
            let rel = k.strip_prefix(ROOT).unwrap_or("");
            if rel == URI_PARAM || rel == CHANNEL_ALIAS {
                if uri_text.as_ref().is_some_and(|u| *u != v) {
                    errors.push("ServiceConnect.URI and X_00D09E_CurrentChannel differ".into());
                }
                uri_text = Some(v);
            } else if rel == RESET || FIXED_ENABLES.contains(&rel) {
                match (parse_bool(&v), rel == RESET) {
                    (Some(b), true) => reset |= b,
                    (Some(true), false) => {}
                    (Some(false), false) => {
                        errors.push(format!("{k}: cannot be disabled on this box"))
                    }
                    (None, _) => errors.push(format!("{k}: {v:?} is not a boolean")),
                }
            } else if self.settings.contains_key(rel) {
                match validate(rel, &v) {
                    Ok(n) => changes.push((rel.to_string(), n)),
                    Err(e) => errors.push(format!("{k}: {e}")),
                }
            } else if served.contains(k) {
                errors.push(format!("{k} is read-only"));
            } else {
                errors.push(format!("{k} is not served here"));
            }
        }
        if !errors.is_empty() {
            return Some(error(id, errors.join("; ")));
        }
        let Some(text) = uri_text else {
            return Some(match self.apply(changes, reset) {
                Ok(()) => json!({"id": id, "ok": true}),
                Err(e) => error(id, e),
            });
        };
        let uri = match parse_uri(&text) {
            Ok(u) => u,
            Err(e) => return Some(error(id, e)),
        };
        let started = Instant::now();
        if let Err(e) = self.start_session(&uri) {
            self.restore();
            return Some(error(id, e));
        }
        self.pending = Some(Pending {
            id: id.clone(),
            uri,
            changes,
            reset,
            started,
            deadline: started + self.opts.tune_timeout,
        });
        None
    }

    /// The answer to the pending tune, when it is decided.
    fn poll_pending(&mut self, now: Instant) -> Option<Value> {
        let p = self.pending.as_ref()?;
        let (rap, datagrams) = {
            let sh = lock(&self.shared);
            let mine = sh.live.generation == self.generation;
            (
                sh.live.random_access.filter(|_| mine),
                if mine { sh.live.datagrams } else { 0 },
            )
        };
        if rap.is_none() && now < p.deadline {
            return None;
        }
        let p = self.pending.take()?;
        let Some(t) = rap else {
            self.restore();
            let why = match datagrams {
                0 => "no datagram".to_string(),
                n => format!("{n} datagrams but no MPEG-TS random access point on a video PID"),
            };
            let ms = self.opts.tune_timeout.as_millis();
            return Some(error(
                &p.id,
                format!(
                    "{}: {why} within {ms} ms; the previous service is kept",
                    p.uri.text
                ),
            ));
        };
        let stored = crate::write_atomic(
            &self.opts.dir,
            "uri",
            format!("{}\n", p.uri.text).as_bytes(),
        )
        .map_err(|e| format!("cannot store the URI: {e}"))
        .and_then(|_| self.apply(p.changes, p.reset));
        if let Err(e) = stored {
            self.restore();
            return Some(error(&p.id, e));
        }
        let ms = (t - p.started).as_secs_f64() * 1000.0;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let previous = self.current.as_ref().map_or("", |u| u.text.as_str());
        let line = format!(
            "{}.{:03} uri={} previous={} tune_ms={ms:.3}\n",
            now_unix.as_secs(),
            now_unix.subsec_millis(),
            p.uri.text,
            if previous.is_empty() { "-" } else { previous }
        );
        let log = crate::Tuner {
            dir: self.opts.dir.clone(),
            delay: Duration::ZERO,
        };
        if let Err(e) = log.log(&line) {
            eprintln!("stb-middleware: cannot write tune.log: {e}");
        }
        eprintln!("stb-middleware: tuned {} in {ms:.1} ms", p.uri.text);
        self.current = Some(p.uri);
        self.watched = self.watched_values();
        Some(json!({"id": p.id, "ok": true}))
    }

    fn tick_sampler(&mut self) {
        if self
            .sampler
            .next_end()
            .is_some_and(|e| SystemTime::now() >= e)
        {
            let c = self.counters();
            self.sampler.tick(SystemTime::now(), &c);
        }
    }

    fn watched_values(&self) -> Vec<(String, String)> {
        let keys = [
            "AVStreams.AVStream.1.Status",
            "AVPlayers.AVPlayer.1.Status",
            "Components.FrontEnd.1.IP.Inbound.1.Status",
            "Components.VideoDecoder.1.Status",
            "Components.AudioDecoder.1.Status",
        ];
        let all = self.values();
        keys.iter()
            .filter_map(|k| {
                all.iter()
                    .find(|(n, _)| n.strip_prefix(ROOT) == Some(k))
                    .cloned()
            })
            .collect()
    }

    /// A notify line for status changes the device made by itself (stream lost or back, the
    /// decoder started or failed); nothing while a set is being carried out.
    fn watch(&mut self) -> Option<Value> {
        if self.pending.is_some() {
            return None;
        }
        let now = self.watched_values();
        let changed: Map<String, Value> = now
            .iter()
            .filter(|kv| !self.watched.contains(kv))
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        self.watched = now;
        (!changed.is_empty()).then(|| json!({"notify": changed}))
    }

    /// Every parameter served: full name, value.
    fn values(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let (live, live_counters) = {
            let sh = lock(&self.shared);
            (sh.live.clone(), sh.counters)
        };
        let stream = self.stream(&live, now);
        let mut v: Vec<(String, String)> = Vec::with_capacity(200);
        let mut put = |k: &str, val: String| v.push((format!("{ROOT}{k}"), val));
        let b = |x: bool| x.to_string();
        let playing = stream == Stream::Playing;
        let on = |x: bool| if x { "Enabled" } else { "Disabled" }.to_string();
        let stream_status = match stream {
            Stream::Playing => "Enabled",
            Stream::Lost => "Error",
            _ => "Disabled",
        };
        let setting = |k: &str| self.settings.get(k).cloned().unwrap_or_default();
        let path = |k: &str| format!("{ROOT}{k}");
        let caps_audio = self.caps.audio.join(",");

        put("Enable", b(true));
        put("Alias", setting("Alias"));
        // Capabilities
        put("Capabilities.MaxActiveAVStreams", "1".into());
        put("Capabilities.MaxActiveAVPlayers", "1".into());
        let ip = "Capabilities.FrontEnd.IP.";
        for (k, val) in [
            ("MaxActiveIPStreams", "1".to_string()),
            ("MaxActiveInboundIPStreams", "1".into()),
            ("MaxActiveOutboundIPStreams", "0".into()),
            ("StreamingControlProtocols", "IGMP".into()),
            ("StreamingTransportProtocols", "UDP,RTP".into()),
            ("StreamingTransportControlProtocols", "".into()),
            ("DownloadTransportProtocols", "".into()),
            ("MultiplexTypes", "MPEG2-TS".into()),
            (
                "MaxDejitteringBufferSize",
                (session::QUEUE * session::DATAGRAM).to_string(),
            ),
        ] {
            put(&format!("{ip}{k}"), val);
        }
        put(
            "Capabilities.AudioDecoder.AudioStandards",
            caps_audio.clone(),
        );
        put(
            "Capabilities.VideoDecoder.VideoStandards",
            self.caps.video.join(","),
        );
        let vd = "Capabilities.VideoDecoder.";
        put(
            &format!("{vd}MPEG2Part2.AudioStandards"),
            caps_audio.clone(),
        );
        put(
            &format!("{vd}MPEG2Part2.ProfileLevelNumberOfEntries"),
            "2".into(),
        );
        // The level limits of ISO/IEC 13818-2 (Main profile: ML 15 Mbit/s, HL 80 Mbit/s).
        for (i, level, kbps) in [(1, "ML", 15_000), (2, "HL", 80_000)] {
            let pl = format!("{vd}MPEG2Part2.ProfileLevel.{i}.");
            put(&format!("{pl}Alias"), setting(&format!("{pl}Alias")));
            put(&format!("{pl}Profile"), "MP".into());
            put(&format!("{pl}Level"), level.into());
            put(&format!("{pl}MaximumDecodingCapability"), kbps.to_string());
        }
        put(
            &format!("{vd}MPEG4Part10.AudioStandards"),
            caps_audio.clone(),
        );
        put(
            &format!("{vd}MPEG4Part10.ProfileLevelNumberOfEntries"),
            "1".into(),
        );
        let pl = format!("{vd}MPEG4Part10.ProfileLevel.1.");
        put(&format!("{pl}Alias"), setting(&format!("{pl}Alias")));
        put(&format!("{pl}Profile"), "BASELINE,MAIN,HIGH".into());
        put(
            &format!("{pl}Level"),
            "1,1b,1.1,1.2,1.3,2,2.1,2.2,3,3.1,3.2,4,4.1".into(),
        );
        // H.264 High profile at level 4.1: 62.5 Mbit/s
        put(&format!("{pl}MaximumDecodingCapability"), "62500".into());
        let sm = "Capabilities.ServiceMonitoring.";
        put(&format!("{sm}ServiceTypes"), "IPTV".into());
        put(&format!("{sm}MaxActiveMainStreams"), "1".into());
        put(
            &format!("{sm}MinSampleInterval"),
            MIN_SAMPLE_INTERVAL.to_string(),
        );
        put(
            &format!("{sm}MaxReportSamples"),
            MAX_REPORT_SAMPLES.to_string(),
        );
        put(&format!("{sm}HighLevelMetricNames"), "".into());

        // Components
        put("Components.FrontEndNumberOfEntries", "1".into());
        put("Components.AudioDecoderNumberOfEntries", "1".into());
        put("Components.VideoDecoderNumberOfEntries", "1".into());
        let fe = "Components.FrontEnd.1.";
        let uri_text = self
            .current
            .as_ref()
            .map_or(String::new(), |u| u.text.clone());
        put(&format!("{fe}Enable"), b(true));
        put(&format!("{fe}Status"), "Enabled".into());
        put(&format!("{fe}Alias"), setting(&format!("{fe}Alias")));
        put(&format!("{fe}Name"), "IP front end".into());
        put(&format!("{fe}X_00D09E_CurrentChannel"), uri_text.clone());
        put(&format!("{fe}X_00D09E_CurrentInput"), "IP".into());
        put(&format!("{fe}IP.InboundNumberOfEntries"), "1".into());
        put(&format!("{fe}IP.OutboundNumberOfEntries"), "0".into());
        put(
            &format!("{fe}IP.ActiveInboundIPStreams"),
            u8::from(playing).to_string(),
        );
        put(&format!("{fe}IP.ActiveOutboundIPStreams"), "0".into());
        let ib = format!("{fe}IP.Inbound.1.");
        let tuned = self.session.as_ref().map(|s| &s.uri);
        let source = live.source.filter(|_| live.generation == self.generation);
        put(&format!("{ib}Status"), stream_status.into());
        put(&format!("{ib}Alias"), setting(&format!("{ib}Alias")));
        put(&format!("{ib}Name"), "IP stream 1".into());
        put(
            &format!("{ib}SourceAddress"),
            source.map_or(String::new(), |s| s.ip().to_string()),
        );
        put(
            &format!("{ib}SourcePort"),
            source.map_or(0, |s| s.port()).to_string(),
        );
        put(
            &format!("{ib}DestinationAddress"),
            tuned.map_or(String::new(), |u| u.addr.to_string()),
        );
        put(
            &format!("{ib}DestinationPort"),
            tuned.map_or(0, |u| u.port).to_string(),
        );
        put(
            &format!("{ib}URI"),
            tuned.map_or(String::new(), |u| u.text.clone()),
        );
        put(&format!("{fe}IP.ServiceConnect.URI"), uri_text);

        let decoding = live
            .last_decoded
            .is_some_and(|t| now.duration_since(t) < DECODING_RECENT);
        let failed = matches!(live.player, Player::Failed(_));
        let cur = live.generation == self.generation;
        let video_type = live.video.filter(|_| cur).map(|e| e.stream_type);
        let dec = "Components.VideoDecoder.1.";
        put(&format!("{dec}Enable"), b(true));
        put(
            &format!("{dec}Status"),
            if failed {
                "Error".into()
            } else {
                on(decoding && playing)
            },
        );
        put(&format!("{dec}Alias"), setting(&format!("{dec}Alias")));
        put(&format!("{dec}Name"), "ffmpeg video decoder".into());
        let mut mpeg2 = String::new();
        let mut avc = String::new();
        if playing {
            match video_type.map(ts::video_standard) {
                Some("MPEG2-Part2") => {
                    let hl = live.width > 720 || live.height > 576;
                    mpeg2 = path(&format!(
                        "{vd}MPEG2Part2.ProfileLevel.{}",
                        if hl { 2 } else { 1 }
                    ));
                }
                Some("MPEG4-Part10") => avc = path(&format!("{vd}MPEG4Part10.ProfileLevel.1")),
                _ => {}
            }
        }
        put(&format!("{dec}MPEG2Part2"), mpeg2);
        put(&format!("{dec}MPEG4Part10"), avc);
        let adec = "Components.AudioDecoder.1.";
        let audio = live.audio.filter(|_| cur && playing);
        let audio_standard = audio.map_or("", |a| audio_standard(&live, a.stream_type));
        put(&format!("{adec}Enable"), b(true));
        put(
            &format!("{adec}Status"),
            if failed {
                "Error".into()
            } else {
                on(audio.is_some() && live.player == Player::Running)
            },
        );
        put(&format!("{adec}Alias"), setting(&format!("{adec}Alias")));
        put(&format!("{adec}Name"), "ffmpeg audio decoder".into());
        put(&format!("{adec}AudioStandard"), audio_standard.into());

        // AVStreams, AVPlayers
        put("AVStreams.ActiveAVStreams", u8::from(playing).to_string());
        put("AVStreams.AVStreamNumberOfEntries", "1".into());
        let av = "AVStreams.AVStream.1.";
        put(&format!("{av}Status"), stream_status.into());
        put(&format!("{av}Alias"), setting(&format!("{av}Alias")));
        put(&format!("{av}Name"), "main".into());
        put(&format!("{av}PVRState"), "Disabled".into());
        put(&format!("{av}FrontEnd"), path("Components.FrontEnd.1"));
        put(
            &format!("{av}Inbound"),
            if tuned.is_some() {
                path(&format!("{fe}IP.Inbound.1"))
            } else {
                String::new()
            },
        );
        put(&format!("{av}Outbound"), String::new());
        put(
            &format!("{av}AudioDecoder"),
            if audio.is_some() {
                path("Components.AudioDecoder.1")
            } else {
                String::new()
            },
        );
        put(
            &format!("{av}VideoDecoder"),
            if video_type.is_some() && playing {
                path("Components.VideoDecoder.1")
            } else {
                String::new()
            },
        );
        put("AVPlayers.ActiveAVPlayers", u8::from(playing).to_string());
        put("AVPlayers.AVPlayerNumberOfEntries", "1".into());
        let pl = "AVPlayers.AVPlayer.1.";
        put(&format!("{pl}Enable"), b(true));
        put(&format!("{pl}Status"), on(playing));
        put(&format!("{pl}Alias"), setting(&format!("{pl}Alias")));
        put(&format!("{pl}Name"), "main player".into());
        put(
            &format!("{pl}MainStream"),
            if playing {
                path("AVStreams.AVStream.1")
            } else {
                String::new()
            },
        );

        // ServiceMonitoring
        let cfg = self.sampler.config();
        let (start, end) = self.sampler.report_times();
        for k in [
            SAMPLE_ENABLE,
            SAMPLE_INTERVAL,
            REPORT_SAMPLES,
            TIME_REFERENCE,
        ] {
            put(k, setting(k));
        }
        put("ServiceMonitoring.SampleState", on(cfg.enable));
        put("ServiceMonitoring.ReportStartTime", start);
        put("ServiceMonitoring.ReportEndTime", end);
        put("ServiceMonitoring.MainStreamNumberOfEntries", "1".into());
        let ms_on = setting(MS_ENABLE) == "true";
        put(MS_ENABLE, setting(MS_ENABLE));
        put(&format!("{MS}Status"), on(ms_on));
        put(&format!("{MS}Alias"), setting(&format!("{MS}Alias")));
        put(
            MS_SERVICE_TYPE,
            if ms_on {
                setting(MS_SERVICE_TYPE)
            } else {
                String::new()
            },
        );
        put(
            &format!("{MS}AVStream"),
            if ms_on && playing {
                path("AVStreams.AVStream.1")
            } else {
                String::new()
            },
        );
        let c = self.frozen.unwrap_or(live_counters);
        let total = c.since(&self.reset_base);
        put(
            &format!("{MS}Total.TotalSeconds"),
            monitor::secs(total.ts_ms).to_string(),
        );
        put(RESET, b(false));
        let reset_secs = match ms_on {
            true => monitor::secs(now.duration_since(self.reset_at).as_millis() as u64),
            false => 0,
        };
        put(&format!("{MS}Total.ResetTime"), reset_secs.to_string());
        let samples = &self.sampler;
        put(
            &format!("{MS}Sample.SampleSeconds"),
            samples.list(|s| monitor::secs(s.delta.ts_ms)),
        );
        for g in GROUPS {
            let t = format!("{MS}Total.{}.", g.name);
            let s = format!("{MS}Sample.{}.", g.name);
            put(
                &format!("{t}TotalSeconds"),
                monitor::secs((g.millis)(&total)).to_string(),
            );
            put(
                &format!("{s}SampleSeconds"),
                samples.list(|x| monitor::secs((g.millis)(&x.delta))),
            );
            for (name, f) in g.stats {
                put(&format!("{t}{name}"), f(&total).to_string());
                put(&format!("{s}{name}"), samples.list(|x| f(&x.delta)));
            }
            if g.name == "VideoDecoderStats" {
                let fps = if decoding && ms_on { live.fps } else { 0 };
                put(&format!("{t}FrameRate"), fps.to_string());
                put(
                    &format!("{s}FrameRate"),
                    samples.list(|x| monitor::frame_rate(&x.delta)),
                );
            }
        }
        v
    }
}

/// The TR-135 standard of the audio being decoded: ffmpeg's codec name (and AAC profile),
/// else the PMT stream_type.
fn audio_standard(live: &Live, stream_type: u8) -> &'static str {
    match (live.audio_codec.as_str(), live.audio_profile.as_str()) {
        ("mp2", _) => "MPEG1-Part3-Layer2",
        ("mp3", _) => "MPEG1-Part3-Layer3",
        ("aac", "LC") => "MPEG4-AAC-LC",
        ("aac", "HE-AACv2") => "MPEG4-AAC-HE-v2",
        ("ac3", _) => "DOLBY-AC3",
        ("eac3", _) => "DOLBY-DD+",
        ("dts", _) => "DTS",
        _ => ts::audio_standard(stream_type),
    }
}

fn load_settings(dir: &Path) -> BTreeMap<String, String> {
    let mut s = default_settings();
    let path = dir.join("settings.json");
    let stored: Option<Map<String, Value>> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    for (k, v) in stored.into_iter().flatten() {
        match (s.contains_key(&k), v.as_str().map(|v| validate(&k, v))) {
            (true, Some(Ok(v))) => {
                s.insert(k, v);
            }
            _ => eprintln!("stb-middleware: {}: {k} ignored", path.display()),
        }
    }
    s
}

fn load_uri(dir: &Path) -> Option<Uri> {
    let text = std::fs::read_to_string(dir.join("uri")).ok()?;
    match parse_uri(text.trim()) {
        Ok(u) => Some(u),
        Err(e) => {
            eprintln!("stb-middleware: {}: {e}", dir.join("uri").display());
            None
        }
    }
}

pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stb-middleware: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&opts.dir) {
        eprintln!("stb-middleware: cannot create {}: {e}", opts.dir.display());
    }
    let (tx, rx) = mpsc::sync_channel::<Event>(64);
    let stdin_tx = tx.clone();
    std::thread::spawn(move || {
        let mut input = io::stdin().lock();
        let mut line = Vec::new();
        loop {
            let ev = match crate::read_line(&mut input, &mut line, crate::MAX_LINE) {
                Ok(Some(true)) => Event::Line(std::mem::take(&mut line)),
                Ok(Some(false)) => Event::Oversized,
                Ok(None) | Err(_) => Event::End,
            };
            let end = matches!(ev, Event::End);
            if stdin_tx.send(ev).is_err() || end {
                return;
            }
        }
    });
    let caps = probe_caps(&opts.ffmpeg);
    let settings = load_settings(&opts.dir);
    let cfg = sample_config(&settings);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let stored = load_uri(&opts.dir);
    eprintln!(
        "stb-middleware: IPTV, serving {ROOT}, service {}, state in {}",
        stored.as_ref().map_or("(none)", |u| u.text.as_str()),
        opts.dir.display()
    );
    let mut mw = Mw {
        opts,
        caps,
        settings,
        current: None,
        session: None,
        shared,
        generation: 0,
        pending: None,
        sampler: Sampler::new(cfg, SystemTime::now(), &Counters::default()),
        reset_base: Counters::default(),
        reset_at: Instant::now(),
        frozen: None,
        watched: Vec::new(),
        wake: tx,
    };
    if mw.settings[MS_ENABLE] != "true" {
        mw.frozen = Some(Counters::default());
    }
    mw.watched = mw.watched_values();
    // Back to the stored service, without waiting for it: requests are answered meanwhile.
    if let Some(u) = stored {
        mw.current = Some(u.clone());
        if let Err(e) = mw.start_session(&u) {
            eprintln!("stb-middleware: {e}");
        }
    }
    let mut out = io::stdout().lock();
    let mut send = |v: Value| writeln!(out, "{v}").and_then(|_| out.flush()).is_ok();
    loop {
        let now = Instant::now();
        let mut wait = Duration::from_millis(200);
        if let Some(p) = &mw.pending {
            wait = wait.min(p.deadline.saturating_duration_since(now));
        }
        if let Some(end) = mw.sampler.next_end() {
            wait = wait.min(end.duration_since(SystemTime::now()).unwrap_or_default());
        }
        match rx.recv_timeout(wait) {
            Ok(Event::Line(l)) => {
                let text = l.strip_suffix(b"\r").unwrap_or(&l);
                if !text.iter().all(u8::is_ascii_whitespace) {
                    let reply = serde_json::from_slice(text)
                        .map_err(|e| format!("not JSON ({e})"))
                        .and_then(|req| mw.handle(&req));
                    match reply {
                        Ok(Some(answer)) => {
                            if !send(answer) {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let head = String::from_utf8_lossy(&text[..text.len().min(120)]);
                            eprintln!("stb-middleware: ignored a line, {e}: {head}");
                        }
                    }
                }
            }
            Ok(Event::Oversized) => eprintln!(
                "stb-middleware: a request line over {} bytes, skipped",
                crate::MAX_LINE
            ),
            Ok(Event::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Event::End) | Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(a) = mw.poll_pending(Instant::now())
            && !send(a)
        {
            break;
        }
        mw.tick_sampler();
        if let Some(n) = mw.watch()
            && !send(n)
        {
            break;
        }
    }
    if let Some(s) = mw.session.take() {
        s.stop();
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_to_standards() {
        let text = "Decoders:\n V..... = Video\n ------\n V....D mpeg2video           MPEG-2 video\n VFS..D h264                 H.264\n A....D mp2                  MP2 (MPEG audio layer 2)\n A....D aac                  AAC\n S..... dvbsub               DVB subtitles\n";
        let c = caps_from_decoders(text);
        assert_eq!(c.video, ["MPEG2-Part2", "MPEG4-Part10"]);
        assert_eq!(
            c.audio,
            [
                "MPEG1-Part3-Layer2",
                "MPEG2-AAC-LC",
                "MPEG4-AAC-LC",
                "MPEG4-AAC-HE-v2"
            ]
        );
        assert_eq!(caps_from_decoders(""), Caps::default());
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(validate(SAMPLE_ENABLE, "1"), Ok("true".into()));
        assert!(validate(SAMPLE_ENABLE, "yes").is_err());
        assert_eq!(validate(SAMPLE_INTERVAL, "1"), Ok("1".into()));
        assert!(validate(SAMPLE_INTERVAL, "0").is_err());
        assert!(validate(REPORT_SAMPLES, "97").is_err());
        assert!(validate(REPORT_SAMPLES, "+5").is_err());
        assert_eq!(
            validate(TIME_REFERENCE, "2026-01-01T00:00:00+01:00"),
            Ok("2025-12-31T23:00:00Z".into())
        );
        assert!(validate(MS_SERVICE_TYPE, "DTT").is_err());
        assert!(validate("Alias", &"x".repeat(65)).is_err());
        let cfg = sample_config(&default_settings());
        assert_eq!(
            cfg,
            Config {
                enable: false,
                interval: 60,
                report_samples: 24,
                time_ref: None
            }
        );
    }

    #[test]
    fn args() {
        let p = |v: &[&str]| parse_args(v.iter().map(|s| s.to_string()));
        let o = p(&[
            "--state",
            "/d",
            "--iptv",
            "--tune-timeout-ms",
            "500",
            "--ffmpeg",
            "/x/ff",
            "--iface",
            "10.1.2.3",
        ])
        .unwrap();
        assert_eq!(
            (o.dir, o.tune_timeout, o.ffmpeg, o.iface),
            (
                "/d".into(),
                Duration::from_millis(500),
                "/x/ff".into(),
                Ipv4Addr::new(10, 1, 2, 3)
            )
        );
        assert_eq!(
            p(&["--iptv", "--state", "/d"]).unwrap().tune_timeout,
            Duration::from_secs(3)
        );
        for bad in [
            &["--iptv"][..],
            &["--state", "/d", "--tune-timeout-ms", "0"],
            &["--state", "/d", "--x"],
            &["--state", "/d", "--iface", "no-such-if0"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
