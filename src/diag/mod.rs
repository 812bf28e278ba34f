//! TR-143 diagnostics, the IO half: the tests of `Device.IP.Diagnostics.` (TR-181 Device:2.15)
//! that the engine (`crate::engine::diag`) runs after the session in which the ACS set
//! `DiagnosticsState = Requested`.
//!
//! [`run`] is one future on the agent's current-thread runtime: non-blocking sockets only, names
//! resolved by `tokio::net::lookup_host` (getaddrinfo on the blocking pool). It spawns nothing,
//! so dropping it (a cancelled test) closes every socket it opened. The whole test is bounded by
//! [`Limits::max_time`]; a test cut short ends in the Error_* state of the phase it was in:
//! Error_CannotResolveHostName while resolving; for HTTP Error_InitConnectionFailed while
//! connecting, Error_NoResponse while waiting for the answer, Error_Timeout while transferring;
//! Error_Other otherwise.
//!
//! Decisions where TR-143 / TR-181 leave room:
//! * `IPAddressUsed` is the address the target resolved to (for ServerSelection: FastestHost's).
//! * Results are zero, empty or Unknown Time in every state but Complete, so stale results never
//!   survive; TraceRoute keeps the hops it found with Error_NoRouteToHost and
//!   Error_MaxHopCountExceeded (where the route ends is the result).
//! * Millisecond times are rounded to the nearest ms, and at least 1 for an answered probe (the
//!   rule TR-181 gives for RTTimes); microsecond times are at least 1.
//! * A ping without any reply where a probe met "no route" (ENETUNREACH / EHOSTUNREACH on send,
//!   or an ICMP Destination Unreachable: routers rate-limit those, so one is enough) is
//!   Error_NoRouteToHost; probes merely unanswered make a Complete test with FailureCount. UDP
//!   echo has no such state: an unreachable target is failed packets.
//! * ServerSelection: a host that does not resolve is skipped (all of them:
//!   Error_CannotResolveHostName); no answer from any host is Complete with an empty
//!   FastestHost and zero times. With `UDP Echo` an entry may carry a port (`host:port`,
//!   `[v6]:port`); the default is the echo port 7.
//! * HTTP decisions: see `http.rs`.
//!
//! Built with the `diagnostics` feature (a default). Without it the catalog (the objects, the
//! input checks) stays, the engine refuses `DiagnosticsState = Requested` with 9001, and the
//! runners below are left out of the binary.
#![cfg_attr(not(feature = "diagnostics"), allow(dead_code, unused_imports))]

#[cfg(feature = "diagnostics")]
mod http;
#[cfg(feature = "diagnostics")]
mod icmp;
#[cfg(feature = "diagnostics")]
mod udp;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::time::{UNKNOWN_TIME, format_datetime};

/// The most repetitions an ACS may ask for (IPPing, UDPEcho, ServerSelection): more is refused
/// by [`check_input`].
pub const MAX_REPETITIONS: u32 = 100;
/// The most hosts in ServerSelectionDiagnostics.HostList.
const MAX_HOSTS: usize = 10;

/// The tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    IPPing,
    TraceRoute,
    Download,
    Upload,
    UDPEcho,
    ServerSelection,
}

/// Every test, in the order of `Device.IP.Diagnostics.`.
pub const KINDS: [Kind; 6] = [
    Kind::IPPing,
    Kind::TraceRoute,
    Kind::Download,
    Kind::Upload,
    Kind::UDPEcho,
    Kind::ServerSelection,
];

impl Kind {
    /// The test's object, `Device.IP.Diagnostics.IPPing.` …
    pub fn object(self) -> &'static str {
        match self {
            Kind::IPPing => "Device.IP.Diagnostics.IPPing.",
            Kind::TraceRoute => "Device.IP.Diagnostics.TraceRoute.",
            Kind::Download => "Device.IP.Diagnostics.DownloadDiagnostics.",
            Kind::Upload => "Device.IP.Diagnostics.UploadDiagnostics.",
            Kind::UDPEcho => "Device.IP.Diagnostics.UDPEchoDiagnostics.",
            Kind::ServerSelection => "Device.IP.Diagnostics.ServerSelectionDiagnostics.",
        }
    }

    /// The test of an object path (with its final dot).
    pub fn from_object(path: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.object() == path)
    }

    /// The result parameters and the result table.
    fn results(self) -> (&'static [&'static str], Option<&'static str>) {
        const PING: &[&str] = &[
            "IPAddressUsed",
            "SuccessCount",
            "FailureCount",
            "AverageResponseTime",
            "MinimumResponseTime",
            "MaximumResponseTime",
            "AverageResponseTimeDetailed",
            "MinimumResponseTimeDetailed",
            "MaximumResponseTimeDetailed",
        ];
        const DOWN: &[&str] = &[
            "IPAddressUsed",
            "ROMTime",
            "BOMTime",
            "EOMTime",
            "TestBytesReceived",
            "TotalBytesReceived",
            "TotalBytesSent",
            "TestBytesReceivedUnderFullLoading",
            "TotalBytesReceivedUnderFullLoading",
            "TotalBytesSentUnderFullLoading",
            "PeriodOfFullLoading",
            "TCPOpenRequestTime",
            "TCPOpenResponseTime",
        ];
        const UP: &[&str] = &[
            "IPAddressUsed",
            "ROMTime",
            "BOMTime",
            "EOMTime",
            "TestBytesSent",
            "TotalBytesReceived",
            "TotalBytesSent",
            "TestBytesSentUnderFullLoading",
            "TotalBytesReceivedUnderFullLoading",
            "TotalBytesSentUnderFullLoading",
            "PeriodOfFullLoading",
            "TCPOpenRequestTime",
            "TCPOpenResponseTime",
        ];
        match self {
            Kind::IPPing => (PING, None),
            Kind::TraceRoute => (&["IPAddressUsed", "ResponseTime"], Some("RouteHops.")),
            Kind::Download => (DOWN, Some("PerConnectionResult.")),
            Kind::Upload => (UP, Some("PerConnectionResult.")),
            Kind::UDPEcho => (&PING[..6], Some("IndividualPacketResult.")),
            Kind::ServerSelection => (
                &[
                    "FastestHost",
                    "MinimumResponseTime",
                    "AverageResponseTime",
                    "MaximumResponseTime",
                    "IPAddressUsed",
                ],
                None,
            ),
        }
    }
}

/// Bounds on every test.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The whole test.
    pub max_time: Duration,
    /// Body bytes a download may read (beyond: Error_TransferFailed).
    pub max_download: u64,
    /// The largest TestFileLength an upload sends (beyond: Error_Other).
    pub max_upload: u64,
    pub max_repetitions: u32,
    pub max_hops: u32,
    /// Extra trusted CA certificates (PEM) for https, beside the web roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_time: Duration::from_secs(60),
            max_download: 64 << 20,
            max_upload: 16 << 20,
            max_repetitions: MAX_REPETITIONS,
            max_hops: 64,
            ca_file: None,
        }
    }
}

/// One row of a result table: values by parameter name.
pub type Row = Vec<(&'static str, String)>;

/// What a test found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Complete` or an Error_* value of the object's DiagnosticsState.
    pub state: &'static str,
    /// Every result parameter of the test, names relative to the object.
    pub values: Vec<(&'static str, String)>,
    /// The result table (`RouteHops.` …), present (maybe empty) for the tests that have one.
    pub rows: Vec<(&'static str, Vec<Row>)>,
}

impl Outcome {
    /// `state` with every result blank (0, empty, Unknown Time) and the table empty.
    pub(crate) fn new(kind: Kind, state: &'static str) -> Outcome {
        let (names, table) = kind.results();
        let blank = |n: &str| {
            if n.ends_with("OMTime") || n.starts_with("TCPOpen") {
                UNKNOWN_TIME
            } else if matches!(n, "IPAddressUsed" | "FastestHost") {
                ""
            } else {
                "0"
            }
        };
        Outcome {
            state,
            values: names.iter().map(|n| (*n, blank(n).to_string())).collect(),
            rows: table.map(|t| (t, Vec::new())).into_iter().collect(),
        }
    }

    fn set(&mut self, name: &'static str, v: impl ToString) {
        match self.values.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = v.to_string(),
            None => debug_assert!(false, "{name} is not a result"),
        }
    }

    fn table(&mut self, rows: Vec<Row>) {
        if let Some(t) = self.rows.first_mut() {
            t.1 = rows;
        }
    }

    /// A result value by name.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An error outcome, logged with its reason.
fn fail(kind: Kind, state: &'static str, why: impl std::fmt::Display) -> Outcome {
    tracing::info!("diagnostic {}: {state}: {why}", kind.object());
    Outcome::new(kind, state)
}

/// Checks one input parameter at SetParameterValues time; `Err(reason)` → fault 9007.
/// Names the test does not read (and `Interface`, the engine's) pass.
pub fn check_input(_kind: Kind, name: &str, value: &str) -> Result<(), String> {
    let range = |lo: u64, hi: u64| match value.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(format!("must be a number from {lo} to {hi}")),
    };
    let one_of = |set: &[&str]| {
        if set.contains(&value) {
            Ok(())
        } else {
            Err(format!("must be one of {set:?}"))
        }
    };
    match name {
        "Host" => host_ok(value),
        "HostList" => {
            let hosts: Vec<&str> = value.split(',').map(str::trim).collect();
            if value.is_empty() {
                Ok(())
            } else if hosts.len() > MAX_HOSTS {
                Err(format!("at most {MAX_HOSTS} hosts"))
            } else if hosts.iter().any(|h| h.is_empty()) {
                Err("empty host in the list".into())
            } else {
                hosts.iter().try_for_each(|h| host_ok(h))
            }
        }
        "ProtocolVersion" => one_of(&["Any", "IPv4", "IPv6"]),
        "Protocol" => one_of(&["ICMP", "UDP Echo"]),
        "NumberOfRepetitions" => range(1, MAX_REPETITIONS.into()),
        "Timeout" => range(1, u32::MAX.into()),
        "DataBlockSize" | "Port" | "InterTransmissionTime" => range(1, 65535),
        "DSCP" => range(0, 63),
        "EthernetPriority" => range(0, 7),
        "NumberOfTries" => range(1, 3),
        "MaxHopCount" => range(1, 64),
        "TestFileLength" => range(0, u32::MAX.into()),
        "NumberOfConnections" => range(1, 1).map_err(|_| "only 1 connection is supported".into()),
        "EnablePerConnectionResults" | "EnableIndividualPacketResults" => {
            one_of(&["true", "false", "1", "0"])
        }
        "DownloadURL" | "UploadURL" if !value.is_empty() => {
            if value.len() > 2048 {
                return Err("longer than 2048 characters".into());
            }
            crate::net::url::Url::parse(value)
                .map(drop)
                .map_err(|e| format!("{e} (only http and https are supported)"))
        }
        _ => Ok(()),
    }
}

/// A host name or address (empty: not set yet).
fn host_ok(h: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || ".-_:%[]".contains(c);
    if h.len() > 256 {
        Err("longer than 256 characters".into())
    } else if !h.chars().all(ok) {
        Err(format!("{h:?} is not a host name or address"))
    } else {
        Ok(())
    }
}

/// Runs a test. `inputs`: the object's writable parameters by relative name; `ifname`: the Linux
/// device of the `Interface` parameter (None: routing decides).
#[cfg(feature = "diagnostics")]
pub async fn run(
    kind: Kind,
    inputs: &BTreeMap<String, String>,
    ifname: Option<&str>,
    lim: &Limits,
) -> Outcome {
    let phase = Cell::new(match kind {
        Kind::Download | Kind::Upload => "Error_Timeout",
        _ => "Error_Other",
    });
    let cx = Ctx {
        inp: In(inputs),
        dev: ifname.filter(|d| !d.is_empty()),
        lim,
        phase: &phase,
        clock: Clock::now(),
    };
    let test = async {
        match kind {
            Kind::IPPing => icmp::ping_test(&cx).await,
            Kind::TraceRoute => icmp::trace_test(&cx).await,
            Kind::Download => http::transfer(&cx, false).await,
            Kind::Upload => http::transfer(&cx, true).await,
            Kind::UDPEcho => udp::echo_test(&cx).await,
            Kind::ServerSelection => server_selection(&cx).await,
        }
    };
    match tokio::time::timeout(lim.max_time, test).await {
        Ok(out) => out,
        Err(_) => fail(kind, phase.get(), format!("not done in {:?}", lim.max_time)),
    }
}

/// The inputs of a test.
struct In<'a>(&'a BTreeMap<String, String>);

impl<'a> In<'a> {
    fn str(&self, name: &str) -> &'a str {
        self.0.get(name).map_or("", |v| v.trim())
    }

    /// A number, `default` when absent or malformed, clamped to `lo..=hi`.
    fn num(&self, name: &str, default: u32, lo: u32, hi: u32) -> u32 {
        self.str(name)
            .parse()
            .unwrap_or(default)
            .clamp(lo, hi.max(lo))
    }

    fn ms(&self, name: &str, default: u32) -> Duration {
        Duration::from_millis(self.num(name, default, 1, u32::MAX).into())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.str(name), "true" | "1")
    }
}

/// What every runner gets.
struct Ctx<'a> {
    inp: In<'a>,
    dev: Option<&'a str>,
    lim: &'a Limits,
    /// The state if `max_time` ends the test now.
    phase: &'a Cell<&'static str>,
    clock: Clock,
}

impl Ctx<'_> {
    fn dscp(&self) -> u32 {
        self.inp.num("DSCP", 0, 0, 63)
    }

    fn repetitions(&self, default: u32) -> u32 {
        self.inp
            .num("NumberOfRepetitions", default, 1, self.lim.max_repetitions)
    }

    /// The first address of `host` of the family ProtocolVersion asks for.
    async fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let h = host.trim().trim_start_matches('[').trim_end_matches(']');
        if h.is_empty() {
            return None;
        }
        let family = self.inp.str("ProtocolVersion");
        let before = self.phase.replace("Error_CannotResolveHostName");
        let found = tokio::net::lookup_host((h, port)).await;
        self.phase.set(before);
        found.ok()?.find(|a| match family {
            "IPv4" => a.is_ipv4(),
            "IPv6" => a.is_ipv6(),
            _ => true,
        })
    }
}

/// Monotonic instants as wall-clock dateTimes: the clock is read once, so the test's times keep
/// their order even if the wall clock is stepped meanwhile.
#[derive(Clone, Copy)]
struct Clock {
    at: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn dt(&self, i: Instant) -> String {
        let t = match i.checked_duration_since(self.at) {
            Some(d) => self.wall + d,
            None => self.wall - (self.at - i),
        };
        datetime_us(t)
    }
}

/// A TR-181 dateTime with microseconds, `2026-12-05T19:30:01.123456Z`.
fn datetime_us(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = format_datetime(d.as_secs() as i64);
    format!("{}.{:06}Z", &s[..s.len() - 1], d.subsec_micros())
}

/// Minimum, average and maximum of the answered probes' times (zeros when none).
fn spread(us: &[u64]) -> (u64, u64, u64) {
    match (us.iter().min(), us.iter().max()) {
        (Some(&lo), Some(&hi)) => (lo, us.iter().sum::<u64>() / us.len() as u64, hi),
        _ => (0, 0, 0),
    }
}

/// Microseconds to milliseconds: nearest, at least 1 (0 stays 0: nothing answered).
fn ms(us: u64) -> u64 {
    if us == 0 {
        0
    } else {
        ((us + 500) / 1000).max(1)
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Options of a test socket: the device (SO_BINDTODEVICE), DSCP (IP_TOS / IPV6_TCLASS) and the
/// Ethernet priority (SO_PRIORITY, which the VLAN egress map turns into the PCP).
fn tune<F: AsFd>(fd: &F, v6: bool, dev: Option<&str>, dscp: u32, prio: u32) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Some(d) = dev {
        setsockopt(fd, sockopt::BindToDevice, &std::ffi::OsString::from(d))?;
    }
    let tos = (dscp as i32) << 2;
    if tos != 0 {
        if v6 {
            setsockopt(fd, sockopt::Ipv6TClass, &tos)?;
        } else {
            setsockopt(fd, sockopt::Ipv4Tos, &tos)?;
        }
    }
    if prio != 0 {
        setsockopt(fd, sockopt::Priority, &(prio as i32))?;
    }
    Ok(())
}

/// `host:port` / `[v6]:port` / `host`.
fn split_port(s: &str, default: u16) -> (&str, u16) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once("]:").map(|(h, p)| (h, p.parse())) {
            Some((h, Ok(p))) => (h, p),
            _ => (rest.trim_end_matches(']'), default),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => p.parse().map_or((s, default), |p| (h, p)),
        _ => (s, default),
    }
}

/// ServerSelectionDiagnostics: pings (ICMP or UDP echo) every host of HostList, in turn, and
/// reports the one with the smallest average.
#[cfg(feature = "diagnostics")]
async fn server_selection(cx: &Ctx<'_>) -> Outcome {
    let k = Kind::ServerSelection;
    let udp = cx.inp.str("Protocol") == "UDP Echo";
    let n = cx.repetitions(3);
    let timeout = cx.inp.ms("Timeout", 1000);
    let hosts = cx.inp.str("HostList").split(',').map(str::trim);
    let mut resolved = 0;
    let mut best: Option<(&str, SocketAddr, (u64, u64, u64))> = None;
    for entry in hosts.filter(|h| !h.is_empty()).take(MAX_HOSTS) {
        let (host, port) = if udp {
            split_port(entry, 7)
        } else {
            (entry, 0)
        };
        let Some(addr) = cx.resolve(host, port).await else {
            tracing::info!("diagnostic {}: {host} does not resolve", k.object());
            continue;
        };
        resolved += 1;
        let rtts = if udp {
            udp::echo(cx, addr, n, timeout, 24, Duration::ZERO)
                .await
                .map(|p| p.iter().filter_map(udp::Pkt::rtt).collect())
        } else {
            icmp::ping(cx, addr, n, timeout, 24, false)
                .await
                .map(|p| p.rtts)
        };
        let rtts: Vec<u64> = match rtts {
            Ok(r) => r,
            Err(e) => return fail(k, "Error_Internal", e),
        };
        let s = spread(&rtts);
        if !rtts.is_empty() && best.is_none_or(|b| s.1 < b.2.1) {
            best = Some((entry, addr, s));
        }
    }
    if resolved == 0 {
        return fail(
            k,
            "Error_CannotResolveHostName",
            "no host of HostList resolves",
        );
    }
    let mut o = Outcome::new(k, "Complete");
    if let Some((host, addr, (lo, avg, hi))) = best {
        o.set("FastestHost", host);
        o.set("IPAddressUsed", addr.ip());
        o.set("MinimumResponseTime", lo);
        o.set("AverageResponseTime", avg);
        o.set("MaximumResponseTime", hi);
    }
    o
}

#[cfg(all(test, feature = "diagnostics"))]
mod tests;
