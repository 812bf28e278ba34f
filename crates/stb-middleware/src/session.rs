//! One tuned service: the UDP socket joined to the group, the receiver thread that counts what
//! arrives, and the player (ffmpeg decoding the received transport stream into nothing) fed
//! through a bounded queue. Dropped or stopped: the group is left and ffmpeg is killed.

use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::monitor::Counters;
use crate::ts::{Es, RtpTracker, TsAnalyzer, TsCounts, parse_rtp};

/// Datagrams queued between the receiver and the decoder (the dejittering buffer).
pub const QUEUE: usize = 512;
/// Largest datagram read.
pub const DATAGRAM: usize = 2048;
/// Gaps between packets longer than this do not count as receiving time.
const ACTIVE_GAP: Duration = Duration::from_secs(1);
/// Longest line read from ffmpeg.
const FF_LINE: usize = 16 << 10;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transport {
    Udp,
    Rtp,
}

/// A `ServiceConnect.URI` the front end can join (TR-135:
/// `<trsp>://<addr>:<port>?StrCtrl=<strctrl>?StrTrspCtrl=<trspctrl>?MuxType=<muxtype>`).
#[derive(Clone, Debug, PartialEq)]
pub struct Uri {
    pub text: String,
    pub transport: Transport,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// Parses a ServiceConnect URI: `udp` or `rtp` (any case), an IPv4 multicast group (or a
/// unicast source, received on the port from that address), a port (default 5004 for rtp,
/// 1234 for udp), and the options StrCtrl (IGMP, IGMPv2, IGMPv3), StrTrspCtrl (none
/// supported) and MuxType (MPEG2-TS), separated by `?` as in TR-135 (or `&`).
pub fn parse_uri(text: &str) -> Result<Uri, String> {
    let bad = |why: &str| format!("invalid ServiceConnect URI {text:?}: {why}");
    let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no <trsp>://"))?;
    let transport = match scheme.to_ascii_lowercase().as_str() {
        "udp" => Transport::Udp,
        "rtp" => Transport::Rtp,
        _ => return Err(bad("the transport must be udp or rtp")),
    };
    let (hostport, opts) = rest.split_at(rest.find(['?', '&']).unwrap_or(rest.len()));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => {
            let ok = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
            match p.parse::<u16>() {
                Ok(n) if ok && n > 0 => (h, n),
                _ => return Err(bad("the port must be 1..65535")),
            }
        }
        None if transport == Transport::Rtp => (hostport, 5004),
        None => (hostport, 1234),
    };
    let host = host.strip_prefix('@').unwrap_or(host);
    let addr: Ipv4Addr = host
        .parse()
        .map_err(|_| bad("the address must be an IPv4 address"))?;
    if addr.is_unspecified() || addr.is_broadcast() {
        return Err(bad("no source address or group"));
    }
    for opt in opts.split(['?', '&']).filter(|o| !o.is_empty()) {
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        let ok = match k {
            "StrCtrl" => matches!(v, "IGMP" | "IGMPv2" | "IGMPv3"),
            "StrTrspCtrl" => v.is_empty(),
            "MuxType" => v == "MPEG2-TS",
            _ => false,
        };
        if !ok {
            return Err(bad(&format!("option {opt:?} is not supported")));
        }
    }
    Ok(Uri {
        text: text.to_string(),
        transport,
        addr,
        port,
    })
}

/// State of the player.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Player {
    #[default]
    Off,
    Running,
    Failed(String),
}

/// What the current session knows, reset at every tune.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub generation: u64,
    pub last_packet: Option<Instant>,
    /// Datagrams received.
    pub datagrams: u64,
    pub source: Option<SocketAddr>,
    /// The first random access point of the video has arrived: the service plays.
    pub random_access: Option<Instant>,
    pub video: Option<Es>,
    pub audio: Option<Es>,
    pub player: Player,
    /// From ffmpeg's description of the input streams.
    pub video_codec: String,
    pub video_profile: String,
    pub width: u32,
    pub height: u32,
    pub audio_codec: String,
    pub audio_profile: String,
    pub last_decoded: Option<Instant>,
    /// Latest frame rate, frames per second over about a second.
    pub fps: u64,
    /// Datagrams dropped because the decoder queue was full.
    pub overruns: u64,
}

/// Counters (cumulative over sessions) and the current session's state.
#[derive(Debug, Default)]
pub struct Shared {
    pub counters: Counters,
    pub live: Live,
}

pub fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running service.
pub struct Session {
    pub uri: Uri,
    stop: Arc<AtomicBool>,
    child: Option<Child>,
    threads: Vec<JoinHandle<()>>,
}

impl Session {
    /// Joins the service and starts receiving and playing. `wake` is called once when the
    /// first random access point arrived.
    pub fn start(
        uri: &Uri,
        iface: Ipv4Addr,
        ffmpeg: Option<&Path>,
        shared: &Arc<Mutex<Shared>>,
        generation: u64,
        wake: Box<dyn Fn() + Send>,
    ) -> Result<Session, String> {
        let sock = open_socket(uri, iface)?;
        lock(shared).live = Live {
            generation,
            ..Live::default()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (tx, child) = match ffmpeg {
            Some(path) => match spawn_player(path) {
                Ok((mut child, stdin)) => {
                    lock(shared).live.player = Player::Running;
                    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
                    threads.push(std::thread::spawn(move || feed_player(rx, stdin)));
                    let out = child.stdout.take().expect("piped");
                    let err = child.stderr.take().expect("piped");
                    let sh = shared.clone();
                    threads.push(std::thread::spawn(move || read_progress(out, sh)));
                    let sh = shared.clone();
                    threads.push(std::thread::spawn(move || read_log(err, sh)));
                    (Some(tx), Some(child))
                }
                Err(e) => {
                    eprintln!("stb-middleware: cannot start {}: {e}", path.display());
                    lock(shared).live.player = Player::Failed(e);
                    (None, None)
                }
            },
            None => (None, None),
        };
        let rx_uri = uri.clone();
        let (sh, st) = (shared.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            receive(sock, rx_uri, sh, st, tx, wake);
        }));
        Ok(Session {
            uri: uri.clone(),
            stop,
            child,
            threads,
        })
    }

    /// Leaves the service: the receiver stops (its socket is closed, leaving the group),
    /// ffmpeg is killed by its PID and reaped, every thread is joined.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn open_socket(uri: &Uri, iface: Ipv4Addr) -> Result<UdpSocket, String> {
    let why = |what: &str, e: std::io::Error| format!("cannot {what} for {}: {e}", uri.text);
    let sock = if uri.addr.is_multicast() {
        // Bound to the group, the socket receives that group's datagrams only.
        let s = UdpSocket::bind((uri.addr, uri.port)).map_err(|e| why("bind", e))?;
        s.join_multicast_v4(&uri.addr, &iface)
            .map_err(|e| why("join the group", e))?;
        s
    } else {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, uri.port)).map_err(|e| why("bind", e))?
    };
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| why("set a timeout", e))?;
    Ok(sock)
}

/// The receiver thread: counts every datagram, queues its TS payload for the player.
fn receive(
    sock: UdpSocket,
    uri: Uri,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    tx: Option<SyncSender<Vec<u8>>>,
    wake: Box<dyn Fn() + Send>,
) {
    let mut buf = vec![0u8; DATAGRAM];
    let mut rtp = RtpTracker::default();
    let mut ts = TsAnalyzer::default();
    let mut tx = tx;
    while !stop.load(Ordering::SeqCst) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                eprintln!("stb-middleware: receiving {}: {e}", uri.text);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if !uri.addr.is_multicast() && from.ip() != IpAddr::V4(uri.addr) {
            continue;
        }
        let now = Instant::now();
        let data = &buf[..n];
        let (payload, step) = match uri.transport {
            Transport::Rtp => match parse_rtp(data) {
                Some((h, p)) => (p, Some(rtp.packet(&h))),
                None => continue,
            },
            Transport::Udp => (data, None),
        };
        let mut tc = TsCounts::default();
        let first_rap = ts.feed(payload, &mut tc);
        let mut sh = lock(&shared);
        let gap = sh
            .live
            .last_packet
            .map(|t| now - t)
            .filter(|g| *g < ACTIVE_GAP);
        let ms = gap.map_or(0, |g| g.as_millis() as u64);
        let c = &mut sh.counters;
        if let Some(s) = step {
            c.rtp_ms += ms;
            c.rtp_received += 1;
            c.rtp_expected += s.expected;
            c.rtp_out_of_sequence += u64::from(s.out_of_sequence);
            c.rtp_loss_events += u64::from(s.loss_event);
        }
        c.ts_ms += ms;
        c.ts_packets += tc.packets;
        c.ts_sync_byte_errors += tc.sync_byte_errors;
        c.ts_sync_losses += tc.sync_losses;
        c.ts_discontinuities += tc.discontinuities;
        let live = &mut sh.live;
        live.last_packet = Some(now);
        live.datagrams += 1;
        live.source = Some(from);
        live.video = ts.video;
        live.audio = ts.audio;
        if first_rap && live.random_access.is_none() {
            live.random_access = Some(now);
        }
        if let Some(t) = &tx {
            match t.try_send(payload.to_vec()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => live.overruns += 1,
                Err(TrySendError::Disconnected(_)) => tx = None,
            }
        }
        drop(sh);
        if first_rap {
            wake();
        }
    }
    // Leaving the group explicitly; closing the socket would do it too.
    if uri.addr.is_multicast() {
        let _ = sock.leave_multicast_v4(&uri.addr, &Ipv4Addr::UNSPECIFIED);
    }
}

fn spawn_player(path: &Path) -> Result<(Child, ChildStdin), String> {
    let mut child = Command::new(path)
        .args(["-hide_banner", "-nostdin", "-loglevel", "info"])
        .args(["-probesize", "262144", "-analyzeduration", "1000000"])
        .args(["-f", "mpegts", "-i", "pipe:0"])
        .args(["-map", "0:v:0?", "-map", "0:a:0?", "-vf", "showinfo"])
        .args(["-f", "null", "-", "-nostats", "-progress", "pipe:1"])
        .args(["-stats_period", "0.5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdin = child.stdin.take().expect("piped");
    Ok((child, stdin))
}

/// Writes the queued payloads into ffmpeg until the queue closes or ffmpeg is gone.
fn feed_player(rx: mpsc::Receiver<Vec<u8>>, mut stdin: ChildStdin) {
    for chunk in rx {
        if stdin.write_all(&chunk).is_err() {
            break;
        }
    }
}

/// ffmpeg's `-progress` output: `frame=N` … `progress=continue` blocks.
fn read_progress(out: std::process::ChildStdout, shared: Arc<Mutex<Shared>>) {
    let mut r = BufReader::new(out);
    let mut line = Vec::new();
    let (mut frame, mut last_frame, mut last_at) = (0u64, 0u64, Instant::now());
    let (mut window_frames, mut window_start) = (0u64, Instant::now());
    while let Ok(Some(ok)) = crate::read_line(&mut r, &mut line, FF_LINE) {
        if !ok {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(v) = text.strip_prefix("frame=") {
            frame = v.trim().parse().unwrap_or(frame);
        } else if text.starts_with("progress=") {
            let now = Instant::now();
            let new = frame.saturating_sub(last_frame);
            let mut sh = lock(&shared);
            if new > 0 {
                let gap = (now - last_at).min(Duration::from_secs(2));
                sh.counters.video_frames += new;
                sh.counters.video_ms += gap.as_millis() as u64;
                sh.live.last_decoded = Some(now);
            }
            window_frames += new;
            let span = now - window_start;
            if span >= Duration::from_millis(900) {
                let ms = span.as_millis() as u64;
                sh.live.fps = (window_frames * 1000 + ms / 2) / ms;
                (window_frames, window_start) = (0, now);
            }
            (last_frame, last_at) = (frame, now);
        }
    }
}

/// ffmpeg's log: the input stream descriptions, `showinfo` frame types, and the decoder's
/// "concealing … in X frame" error reports.
fn read_log(err: std::process::ChildStderr, shared: Arc<Mutex<Shared>>) {
    let mut r = BufReader::new(err);
    let mut line = Vec::new();
    while let Ok(Some(ok)) = crate::read_line(&mut r, &mut line, FF_LINE) {
        if !ok {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let mut sh = lock(&shared);
        apply_log_line(&text, &mut sh);
    }
}

/// Updates the counters and stream description from one line of ffmpeg's log.
pub fn apply_log_line(text: &str, sh: &mut Shared) {
    if text.contains("Parsed_showinfo") {
        if let Some(i) = text.find(" type:") {
            let c = &mut sh.counters;
            match text.as_bytes().get(i + 6) {
                Some(b'I') => c.i_frames += 1,
                Some(b'P') => c.p_frames += 1,
                Some(b'B') => c.b_frames += 1,
                _ => {}
            }
        }
    } else if let Some(i) = text.find("concealing ") {
        let rest = &text[i..];
        let kind = rest
            .find(" in ")
            .and_then(|j| rest[j + 4..].split_whitespace().next());
        let c = &mut sh.counters;
        c.concealed += 1;
        match kind {
            Some("I") => c.i_concealed += 1,
            Some("P") => c.p_concealed += 1,
            Some("B") => c.b_concealed += 1,
            _ => {}
        }
    } else if text.trim_start().starts_with("Stream #0:") && text.contains("[0x") {
        // an input stream: "Stream #0:0[0x100]: Video: mpeg2video (Main) (...), yuv420p(...),
        // 320x240 [SAR 1:1 DAR 4:3], 25 fps, ..."
        for (tag, video) in [(": Video: ", true), (": Audio: ", false)] {
            let Some(i) = text.find(tag) else { continue };
            let desc = &text[i + tag.len()..];
            let codec = desc.split([' ', ',']).next().unwrap_or("").to_string();
            let after = desc[codec.len()..].trim_start();
            let profile = match after.strip_prefix('(') {
                Some(p) if !p.starts_with('[') => p.split(')').next().unwrap_or("").to_string(),
                _ => String::new(),
            };
            let live = &mut sh.live;
            if video {
                let size = desc.split(", ").find_map(|part| {
                    let word = part.split_whitespace().next()?;
                    let (w, h) = word.split_once('x')?;
                    Some((w.parse().ok()?, h.parse().ok()?))
                });
                (live.video_codec, live.video_profile) = (codec, profile);
                (live.width, live.height) = size.unwrap_or((0, 0));
            } else {
                (live.audio_codec, live.audio_profile) = (codec, profile);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = parse_uri("rtp://239.1.2.3:5004?StrCtrl=IGMP?MuxType=MPEG2-TS").unwrap();
        assert_eq!(
            (u.transport, u.addr, u.port),
            (Transport::Rtp, Ipv4Addr::new(239, 1, 2, 3), 5004)
        );
        let u = parse_uri("UDP://239.0.0.9:1234").unwrap();
        assert_eq!((u.transport, u.port), (Transport::Udp, 1234));
        assert_eq!(parse_uri("rtp://239.1.1.1").unwrap().port, 5004);
        assert_eq!(
            parse_uri("udp://@239.1.1.1:5000&MuxType=MPEG2-TS")
                .unwrap()
                .port,
            5000
        );
        assert_eq!(
            parse_uri("udp://10.0.0.1:5000").unwrap().addr,
            Ipv4Addr::new(10, 0, 0, 1)
        );
        for bad in [
            "",
            "239.1.1.1:5000",
            "http://239.1.1.1:5000",
            "udp://239.1.1.1:0",
            "udp://239.1.1.1:70000",
            "udp://239.1.1.1:+50",
            "udp://239.1.1.1:",
            "udp://group:5000",
            "udp://[ff0e::1]:5000",
            "udp://0.0.0.0:5000",
            "udp://239.1.1.1:5000?StrCtrl=RTSP",
            "rtp://239.1.1.1:5000?StrTrspCtrl=RTCP",
            "rtp://239.1.1.1:5000?MuxType=MPEG2-PS",
            "rtp://239.1.1.1:5000?Foo=1",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ffmpeg_log_lines() {
        let mut sh = Shared::default();
        for l in [
            "  Stream #0:0[0x100]: Video: mpeg2video (Main) ([2][0][0][0] / 0x0002), yuv420p(tv, progressive), 320x240 [SAR 1:1 DAR 4:3], 25 fps, 25 tbr, 90k tbn",
            "  Stream #0:1[0x101]: Audio: mp2 ([3][0][0][0] / 0x0003), 48000 Hz, mono, fltp, 384 kb/s",
            "  Stream #0:0: Video: wrapped_avframe, yuv420p(tv, progressive), 640x480",
            "[Parsed_showinfo_0 @ 0x55] n:   0 pts:      0 pts_time:0 pos: 564 fmt:yuv420p sar:1/1 s:320x240 i:P iskey:1 type:I checksum:6FA0C102",
            "[Parsed_showinfo_0 @ 0x55] n:   1 pts:   3600 pts_time:0.04 pos: 9 fmt:yuv420p sar:1/1 s:320x240 i:P iskey:0 type:P checksum:1",
            "[Parsed_showinfo_0 @ 0x55] config in time_base: 1/90000, frame_rate: 25/1",
            "[mpeg2video @ 0x55] concealing 300 DC, 300 AC, 300 MV errors in P frame",
            "[mpeg2video @ 0x55] ac-tex damaged at 3 7",
        ] {
            apply_log_line(l, &mut sh);
        }
        let (l, c) = (&sh.live, &sh.counters);
        assert_eq!(
            (
                l.video_codec.as_str(),
                l.video_profile.as_str(),
                l.width,
                l.height
            ),
            ("mpeg2video", "Main", 320, 240)
        );
        assert_eq!(
            (l.audio_codec.as_str(), l.audio_profile.as_str()),
            ("mp2", "")
        );
        assert_eq!((c.i_frames, c.p_frames, c.b_frames), (1, 1, 0));
        assert_eq!((c.concealed, c.p_concealed, c.i_concealed), (1, 1, 0));
    }
}
