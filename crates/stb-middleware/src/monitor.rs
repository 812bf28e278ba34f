//! TR-135 `ServiceMonitoring`: the receiver's cumulative counters, and the two views of them
//! the standard defines: `Total.` (since the last reset) and `Sample.` (one value per sample
//! interval, the last `ReportSamples` intervals kept, oldest first).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Cumulative counters of the main stream, over every service tuned since the start. The
/// `*_ms` fields are the time during which that kind of data was being received.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    pub rtp_ms: u64,
    pub rtp_received: u64,
    pub rtp_expected: u64,
    pub rtp_out_of_sequence: u64,
    pub rtp_loss_events: u64,
    pub ts_ms: u64,
    pub ts_packets: u64,
    pub ts_sync_byte_errors: u64,
    pub ts_sync_losses: u64,
    pub ts_discontinuities: u64,
    pub video_ms: u64,
    pub video_frames: u64,
    pub i_frames: u64,
    pub p_frames: u64,
    pub b_frames: u64,
    pub concealed: u64,
    pub i_concealed: u64,
    pub p_concealed: u64,
    pub b_concealed: u64,
}

macro_rules! sub_fields {
    ($a:expr, $b:expr, $($f:ident),*) => {
        Counters { $($f: $a.$f.saturating_sub($b.$f)),* }
    };
}

impl Counters {
    /// What was counted since `base`.
    pub fn since(&self, base: &Counters) -> Counters {
        sub_fields!(
            self,
            base,
            rtp_ms,
            rtp_received,
            rtp_expected,
            rtp_out_of_sequence,
            rtp_loss_events,
            ts_ms,
            ts_packets,
            ts_sync_byte_errors,
            ts_sync_losses,
            ts_discontinuities,
            video_ms,
            video_frames,
            i_frames,
            p_frames,
            b_frames,
            concealed,
            i_concealed,
            p_concealed,
            b_concealed
        )
    }
}

type Get = fn(&Counters) -> u64;

/// A statistics category of `Total.` and `Sample.`: its object name, its seconds, its
/// counters (parameter name, value from a counters delta).
pub struct Group {
    pub name: &'static str,
    pub millis: Get,
    pub stats: &'static [(&'static str, Get)],
}

/// The categories and counters served. Lost packets are expected − received (RFC 3550 A.3),
/// over the whole delta, so late packets of one interval are not counted lost twice.
pub const GROUPS: &[Group] = &[
    Group {
        name: "RTPStats",
        millis: |c| c.rtp_ms,
        stats: &[
            ("PacketsExpected", |c| c.rtp_expected),
            ("PacketsReceived", |c| c.rtp_received),
            ("PacketsLost", |c| {
                c.rtp_expected.saturating_sub(c.rtp_received)
            }),
            ("PacketsOutOfSequence", |c| c.rtp_out_of_sequence),
            ("LossEvents", |c| c.rtp_loss_events),
        ],
    },
    Group {
        name: "MPEG2TSStats",
        millis: |c| c.ts_ms,
        stats: &[
            ("TSPacketsReceived", |c| c.ts_packets),
            ("TSSyncByteErrorCount", |c| c.ts_sync_byte_errors),
            ("TSSyncLossCount", |c| c.ts_sync_losses),
            ("PacketDiscontinuityCounter", |c| c.ts_discontinuities),
        ],
    },
    Group {
        name: "VideoDecoderStats",
        millis: |c| c.video_ms,
        stats: &[
            ("DecodedFrames", |c| c.video_frames),
            ("IDecodedFrames", |c| c.i_frames),
            ("PDecodedFrames", |c| c.p_frames),
            ("BDecodedFrames", |c| c.b_frames),
            ("ConcealedFrames", |c| c.concealed),
            ("IConcealedFrames", |c| c.i_concealed),
            ("PConcealedFrames", |c| c.p_concealed),
            ("BConcealedFrames", |c| c.b_concealed),
        ],
    },
];

/// Milliseconds as whole seconds, rounded.
pub fn secs(ms: u64) -> u64 {
    (ms + 500) / 1000
}

/// Frames per second over a delta, rounded (0 without decoding time).
pub fn frame_rate(c: &Counters) -> u64 {
    match c.video_ms {
        0 => 0,
        ms => (c.video_frames * 1000 + ms / 2) / ms,
    }
}

/// The `ServiceMonitoring.` configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub enable: bool,
    /// Seconds, at least 1.
    pub interval: u32,
    /// Samples kept, at least 1.
    pub report_samples: u32,
    /// `TimeReference` in Unix seconds; `None`: the Unknown Time (no phase imposed).
    pub time_ref: Option<i64>,
}

/// One closed sample interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub start: SystemTime,
    pub end: SystemTime,
    pub delta: Counters,
}

/// Sample collection. Intervals follow each other without gaps; with a `TimeReference` they
/// end at that time plus a multiple of the interval (the first one may be shorter).
pub struct Sampler {
    cfg: Config,
    samples: VecDeque<Sample>,
    start: SystemTime,
    end: SystemTime,
    base: Counters,
}

/// The end of the interval that starts at `start`.
fn interval_end(start: SystemTime, interval: u32, time_ref: Option<i64>) -> SystemTime {
    let len = Duration::from_secs(u64::from(interval.max(1)));
    let Some(t) = time_ref else {
        return start + len;
    };
    let s = unix(start);
    let i = i64::from(interval.max(1));
    let end = t + ((s - t).div_euclid(i) + 1) * i;
    UNIX_EPOCH + Duration::from_secs(end.max(0) as u64)
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64) - 1,
    }
}

impl Sampler {
    pub fn new(cfg: Config, now: SystemTime, c: &Counters) -> Sampler {
        Sampler {
            cfg,
            samples: VecDeque::new(),
            start: now,
            end: interval_end(now, cfg.interval, cfg.time_ref),
            base: *c,
        }
    }

    pub fn config(&self) -> Config {
        self.cfg
    }

    /// Stored samples are discarded and the first interval begins now.
    fn restart(&mut self, now: SystemTime, c: &Counters) {
        self.samples.clear();
        self.start = now;
        self.end = interval_end(now, self.cfg.interval, self.cfg.time_ref);
        self.base = *c;
    }

    /// Applies a new configuration as TR-135 says: enabling, or changing the interval or the
    /// time reference while enabled, discards the samples and starts an interval now;
    /// changing ReportSamples only shortens or lengthens the stored list; disabling keeps the
    /// samples readable.
    pub fn configure(&mut self, new: Config, now: SystemTime, c: &Counters) {
        let old = self.cfg;
        self.cfg = new;
        let restart = new.enable
            && (!old.enable || new.interval != old.interval || new.time_ref != old.time_ref);
        if restart {
            self.restart(now, c);
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.samples.len() > self.cfg.report_samples as usize {
            self.samples.pop_front();
        }
    }

    /// When the current interval ends (None: not sampling).
    pub fn next_end(&self) -> Option<SystemTime> {
        self.cfg.enable.then_some(self.end)
    }

    /// Closes the intervals that ended by `now`, with the counters `c` read now. Returns
    /// whether one was closed. A clock jump of more than ten intervals restarts sampling.
    pub fn tick(&mut self, now: SystemTime, c: &Counters) -> bool {
        if !self.cfg.enable || now < self.end {
            return false;
        }
        let len = Duration::from_secs(u64::from(self.cfg.interval));
        if now.duration_since(self.end).unwrap_or_default() > len * 10 || now < self.start {
            self.restart(now, c);
            return false;
        }
        while now >= self.end {
            self.samples.push_back(Sample {
                start: self.start,
                end: self.end,
                delta: c.since(&self.base),
            });
            self.base = *c;
            self.start = self.end;
            self.end = interval_end(self.start, self.cfg.interval, self.cfg.time_ref);
        }
        self.trim();
        true
    }

    #[cfg(test)]
    pub fn samples(&self) -> &VecDeque<Sample> {
        &self.samples
    }

    /// A comma-separated list of one value per stored sample, oldest first.
    pub fn list(&self, f: impl Fn(&Sample) -> u64) -> String {
        let v: Vec<String> = self.samples.iter().map(|s| f(s).to_string()).collect();
        v.join(",")
    }

    /// `ReportStartTime` / `ReportEndTime`: the first sample's start, the last one's end.
    pub fn report_times(&self) -> (String, String) {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => (
                format_time(Some(unix(a.start))),
                format_time(Some(unix(b.end))),
            ),
            _ => (format_time(None), format_time(None)),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (March-based year arithmetic).
fn days_from_date(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn date_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The Unknown Time of TR-106.
pub const UNKNOWN_TIME: &str = "0001-01-01T00:00:00Z";

/// A TR-106 dateTime in UTC; `None` is the Unknown Time.
pub fn format_time(t: Option<i64>) -> String {
    let Some(t) = t else {
        return UNKNOWN_TIME.into();
    };
    let (days, s) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (y, m, d) = date_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parses a TR-106 dateTime (`YYYY-MM-DDThh:mm:ss`, optional fraction, `Z`, `±hh:mm` or no
/// zone = UTC) to Unix seconds; the Unknown Time (year 0001) gives `None`.
pub fn parse_time(s: &str) -> Result<Option<i64>, String> {
    let bad = || format!("{s:?} is not a dateTime");
    let b = s.as_bytes();
    if !s.is_ascii()
        || b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |t: &str| -> Result<i64, String> {
        match !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) {
            true => t.parse().map_err(|_| bad()),
            false => Err(bad()),
        }
    };
    let (y, mo, d) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
    let (h, mi, se) = (num(&s[11..13])?, num(&s[14..16])?, num(&s[17..19])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        rest = &r[n..];
    }
    let offset = match rest.as_bytes() {
        b"" | b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let o = num(&rest[1..3])? * 3600 + num(&rest[4..6])? * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return Err(bad()),
    };
    if y == 1 {
        return Ok(None);
    }
    let t = days_from_date(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se - offset;
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s as u64)
    }

    fn counters(packets: u64) -> Counters {
        Counters {
            ts_packets: packets,
            ts_ms: packets * 10,
            ..Counters::default()
        }
    }

    #[test]
    fn times() {
        assert_eq!(format_time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(Some(1_772_323_199)), "2026-02-28T23:59:59Z");
        assert_eq!(format_time(Some(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(None), UNKNOWN_TIME);
        assert_eq!(parse_time("2026-02-28T23:59:59Z"), Ok(Some(1_772_323_199)));
        assert_eq!(
            parse_time("2026-03-01T01:59:59+02:00"),
            Ok(Some(1_772_323_199))
        );
        assert_eq!(
            parse_time("2026-02-28T22:59:59.250-01:00"),
            Ok(Some(1_772_323_199))
        );
        assert_eq!(parse_time("2000-02-29T00:00:00"), Ok(Some(951_782_400)));
        assert_eq!(parse_time(UNKNOWN_TIME), Ok(None));
        for bad in [
            "",
            "2026-02-28",
            "2026-13-01T00:00:00Z",
            "2026-02-28T24:00:00Z",
            "2026-02-28T23:59:59X",
            "2026-02-28T23:59:59.Z",
            "x026-02-28T23:59:59Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        for t in [0, 86_399, 1_000_000_000, 4_102_444_800, -86_400] {
            assert_eq!(parse_time(&format_time(Some(t))), Ok(Some(t)));
        }
    }

    #[test]
    fn deltas_and_lost_packets() {
        let a = Counters {
            rtp_expected: 100,
            rtp_received: 95,
            ..Counters::default()
        };
        let b = Counters {
            rtp_expected: 150,
            rtp_received: 146,
            ..Counters::default()
        };
        let d = b.since(&a);
        let lost = GROUPS[0]
            .stats
            .iter()
            .find(|s| s.0 == "PacketsLost")
            .unwrap()
            .1;
        assert_eq!(
            (lost(&a), lost(&d), lost(&b)),
            (5, 0, 4),
            "a late packet of the first interval"
        );
        assert_eq!(
            frame_rate(&Counters {
                video_frames: 49,
                video_ms: 2000,
                ..Counters::default()
            }),
            25
        );
        assert_eq!(secs(1499), 1);
        assert_eq!(secs(1500), 2);
    }

    #[test]
    fn sampling_without_time_reference() {
        let cfg = Config {
            enable: true,
            interval: 10,
            report_samples: 3,
            time_ref: None,
        };
        let mut s = Sampler::new(cfg, at(1000), &counters(0));
        assert_eq!(s.next_end(), Some(at(1010)));
        assert!(!s.tick(at(1009), &counters(5)));
        for (i, t) in [1010, 1020, 1030, 1040].into_iter().enumerate() {
            assert!(s.tick(at(t), &counters(100 * (i as u64 + 1))));
        }
        assert_eq!(
            s.list(|x| x.delta.ts_packets),
            "100,100,100",
            "three kept, oldest first"
        );
        assert_eq!(
            s.report_times(),
            ("1970-01-01T00:16:50Z".into(), "1970-01-01T00:17:20Z".into())
        );
        // two intervals at once (a late tick): the second is empty
        assert!(s.tick(at(1061), &counters(450)));
        assert_eq!(s.list(|x| x.delta.ts_packets), "100,50,0");
        // ReportSamples: truncated, nothing else changes
        s.configure(
            Config {
                report_samples: 2,
                ..cfg
            },
            at(1062),
            &counters(460),
        );
        assert_eq!(s.list(|x| x.delta.ts_packets), "50,0");
        assert_eq!(s.next_end(), Some(at(1070)));
        // a new interval: samples discarded, the first interval begins now
        s.configure(Config { interval: 5, ..cfg }, at(1063), &counters(470));
        assert_eq!((s.samples().len(), s.next_end()), (0, Some(at(1068))));
        assert!(s.tick(at(1068), &counters(480)));
        assert_eq!(s.list(|x| x.delta.ts_packets), "10");
        // disabled: no more samples, the stored ones stay readable
        s.configure(
            Config {
                enable: false,
                interval: 5,
                ..cfg
            },
            at(1069),
            &counters(490),
        );
        assert_eq!(s.next_end(), None);
        assert!(!s.tick(at(2000), &counters(999)));
        assert_eq!(s.list(|x| x.delta.ts_packets), "10");
        // enabled again: discarded, started now
        s.configure(Config { interval: 5, ..cfg }, at(3000), &counters(1000));
        assert_eq!((s.samples().len(), s.next_end()), (0, Some(at(3005))));
        // a clock jump far ahead restarts instead of closing thousands of intervals
        assert!(!s.tick(at(9000), &counters(1100)));
        assert_eq!((s.samples().len(), s.next_end()), (0, Some(at(9005))));
    }

    #[test]
    fn sampling_with_time_reference() {
        let cfg = Config {
            enable: true,
            interval: 60,
            report_samples: 5,
            time_ref: Some(15),
        };
        let mut s = Sampler::new(cfg, at(1000), &counters(0));
        // intervals end at 15 + k·60: the first one is short (1000 → 1035)
        assert_eq!(s.next_end(), Some(at(1035)));
        assert!(s.tick(at(1035), &counters(35)));
        assert_eq!(s.next_end(), Some(at(1095)));
        let first = &s.samples()[0];
        assert_eq!(
            (first.start, first.end, secs(first.delta.ts_ms)),
            (at(1000), at(1035), 0)
        );
        // a reference far in the future sets the phase just as well
        let mut f = Sampler::new(
            Config {
                time_ref: Some(1_000_000_035),
                ..cfg
            },
            at(1000),
            &counters(0),
        );
        assert_eq!(f.next_end(), Some(at(1035)));
        assert!(!f.tick(at(1034), &counters(0)));
        assert_eq!(interval_end(at(1035), 60, Some(15)), at(1095));
    }
}
