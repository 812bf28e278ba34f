//! Reading the Linux system for the device's own TR-181 objects: links, addresses and routes
//! over rtnetlink, link facts from sysfs, DNS servers, the kernel clock's synchronisation,
//! thermal zones and processes. Everything here is local and immediate (a netlink dump of the
//! kernel's own tables, procfs and sysfs files), so it is called on the engine's thread; every
//! netlink receive has a 1 s timeout so a read can never hang. [`map::mirror`] turns a
//! [`Snapshot`] into the store's tables.
//!
//! Also: [`set_link_up`] / [`set_mtu`] for the ACS's writes, and [`Watcher`], the kernel's
//! change reports.

pub mod map;

use std::io::{self, Read};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use cwmp_proto::linux::procfs::{self, ProcStat};
use cwmp_proto::linux::rtnl::{self, Addr, Dump, Link, Route};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, recvfrom,
    sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Which parts of the system a [`read`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parts(u8);

impl Parts {
    /// Links with their sysfs facts and addresses: `Device.Ethernet.`, `Device.IP.Interface.`,
    /// `Device.IP.IPv4*` / `IPv6*`.
    pub const NET: Parts = Parts(1);
    /// The main routing table: `Device.Routing.`.
    pub const ROUTES: Parts = Parts(2);
    /// resolv.conf: `Device.DNS.Client.`.
    pub const DNS: Parts = Parts(4);
    /// `Device.Time.Status`.
    pub const TIME: Parts = Parts(8);
    /// `Device.DeviceInfo.TemperatureStatus.`.
    pub const THERMAL: Parts = Parts(16);
    /// `Device.DeviceInfo.ProcessStatus.Process.`.
    pub const PROCESSES: Parts = Parts(32);
    /// `Device.DeviceInfo.NetworkProperties.`.
    pub const NETPROPS: Parts = Parts(64);
    pub const ALL: Parts = Parts(127);

    pub const fn empty() -> Parts {
        Parts(0)
    }
    pub const fn union(self, other: Parts) -> Parts {
        Parts(self.0 | other.0)
    }
    pub const fn contains(self, other: Parts) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Parts {
    type Output = Parts;
    fn bitor(self, other: Parts) -> Parts {
        self.union(other)
    }
}

/// A link and what sysfs and procfs say about it (`None` / false: unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub link: Link,
    /// Mb/s, when the driver reports it (not while the link is down).
    pub speed: Option<u32>,
    /// `Some(true)` full duplex, `Some(false)` half.
    pub full_duplex: Option<bool>,
    /// A device behind it (`/sys/class/net/<if>/device`): hardware, not a virtual link.
    pub physical: bool,
    /// A Wi-Fi interface (`/sys/class/net/<if>/wireless`).
    pub wireless: bool,
    /// `/proc/sys/net/ipv6/conf/<if>/disable_ipv6` is 1.
    pub ipv6_disabled: bool,
}

impl LinkInfo {
    /// Facts for a link whose files were not read (tests, or a link gone meanwhile).
    pub fn new(link: Link) -> LinkInfo {
        LinkInfo {
            link,
            speed: None,
            full_duplex: None,
            physical: false,
            wireless: false,
            ipv6_disabled: false,
        }
    }
}

/// A thermal zone (`/sys/class/thermal/thermal_zone<zone>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thermal {
    pub zone: u32,
    /// Its `type` (`x86_pkg_temp`, `cpu-thermal`, …).
    pub kind: String,
    pub millicelsius: i64,
}

/// A process, with its times and sizes in units TR-181 uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub stat: ProcStat,
    /// User + system CPU time in milliseconds.
    pub cpu_ms: u64,
    /// Resident size in KiB.
    pub rss_kib: u64,
}

/// One reading of the system; only the fields of `parts` are filled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub parts: Parts,
    /// NET or ROUTES (ROUTES alone: without the sysfs facts). In ifindex order.
    pub links: Vec<LinkInfo>,
    /// NET.
    pub addrs: Vec<Addr>,
    /// NET: the kernel has IPv6 (`/proc/net/if_inet6`), and it is not disabled for all.
    pub ipv6_capable: bool,
    pub ipv6_enabled: bool,
    /// ROUTES: unicast routes of the main table.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: Vec<IpAddr>,
    /// TIME: the kernel clock is synchronised (adjtimex).
    pub time_synced: bool,
    /// THERMAL, by zone.
    pub thermal: Vec<Thermal>,
    /// PROCESSES, by PID, at most [`MAX_PROCESSES`].
    pub processes: Vec<Process>,
    /// NETPROPS: the largest TCP receive window (bytes) and the congestion control in use.
    pub max_tcp_window: Option<u64>,
    pub congestion_control: Option<String>,
}

pub const MAX_PROCESSES: usize = 1024;
const MAX_THERMAL_ZONES: usize = 64;
/// A netlink receive buffer: the kernel never sends a dump datagram larger than 32 KiB.
const RECV_BUF: usize = 32 * 1024;
/// Datagrams of one dump at most (8 MiB): a box with more gives an error, not a stall.
const MAX_RECVS: usize = 256;
const RECV_TIMEOUT: TimeVal = TimeVal::new(1, 0);

/// Reads `parts` of the system. DNS servers come from `resolv_conf`. A netlink failure is an
/// error; a file that cannot be read is an unknown fact (or an empty list), never an error.
pub fn read(parts: Parts, resolv_conf: &Path) -> io::Result<Snapshot> {
    let mut s = Snapshot {
        parts,
        ..Snapshot::default()
    };
    if parts.contains(Parts::NET) || parts.contains(Parts::ROUTES) {
        let nl = Netlink::open()?;
        let mut links = Vec::new();
        nl.dump(1, Dump::Links, |kind, p| {
            if kind == rtnl::RTM_NEWLINK {
                links.push(rtnl::parse_link(p)?);
            }
            Ok(())
        })?;
        links.sort_by_key(|l| l.index);
        if parts.contains(Parts::NET) {
            s.links = links.into_iter().map(link_facts).collect();
            nl.dump(2, Dump::Addrs, |kind, p| {
                if kind == rtnl::RTM_NEWADDR
                    && let Some(a) = rtnl::parse_addr(p)?
                {
                    s.addrs.push(a);
                }
                Ok(())
            })?;
            s.ipv6_capable = Path::new("/proc/net/if_inet6").exists();
            s.ipv6_enabled =
                s.ipv6_capable && int_file("/proc/sys/net/ipv6/conf/all/disable_ipv6") != Some(1);
        } else {
            s.links = links.into_iter().map(LinkInfo::new).collect();
        }
        if parts.contains(Parts::ROUTES) {
            nl.dump(3, Dump::Routes, |kind, p| {
                if kind == rtnl::RTM_NEWROUTE {
                    rtnl::parse_route(p, &mut s.routes)?;
                }
                Ok(())
            })?;
        }
    }
    if parts.contains(Parts::DNS) {
        s.dns = small_file(resolv_conf)
            .map(|t| procfs::resolv_conf_servers(&t))
            .unwrap_or_default();
    }
    if parts.contains(Parts::TIME) {
        s.time_synced = clock_synced();
    }
    if parts.contains(Parts::THERMAL) {
        s.thermal = thermal_zones();
    }
    if parts.contains(Parts::PROCESSES) {
        s.processes = processes();
    }
    if parts.contains(Parts::NETPROPS) {
        let rmem = |p| small_file(p).and_then(|t| procfs::last_int(&t));
        s.max_tcp_window = rmem("/proc/sys/net/ipv4/tcp_rmem")
            .or_else(|| rmem("/proc/sys/net/core/rmem_max"))
            .and_then(|v| u64::try_from(v).ok());
        s.congestion_control = small_file("/proc/sys/net/ipv4/tcp_congestion_control")
            .and_then(|t| procfs::parse_word(&t).map(str::to_string));
    }
    Ok(s)
}

/// Brings link `index` up or down (needs CAP_NET_ADMIN).
pub fn set_link_up(index: u32, up: bool) -> io::Result<()> {
    Netlink::open()?.request(&rtnl::set_link_request(1, index, Some(up), None))
}

/// Sets the MTU of link `index` (needs CAP_NET_ADMIN).
pub fn set_mtu(index: u32, mtu: u32) -> io::Result<()> {
    Netlink::open()?.request(&rtnl::set_link_request(1, index, None, Some(mtu)))
}

fn nl_err(e: rtnl::Error) -> io::Error {
    match e {
        rtnl::Error::Os(errno) => io::Error::from_raw_os_error(errno),
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

/// A NETLINK_ROUTE socket for one read or request.
struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> io::Result<Netlink> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &RECV_TIMEOUT)?;
        Ok(Netlink(fd))
    }

    /// Sends `req` and hands the messages of its reply to `f` until it is complete.
    fn exchange(
        &self,
        req: &[u8],
        seq: u32,
        mut f: impl FnMut(u16, &[u8]) -> Result<(), rtnl::Error>,
    ) -> io::Result<()> {
        let fd = self.0.as_raw_fd();
        sendto(fd, req, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        let mut buf = vec![0u8; RECV_BUF];
        for _ in 0..MAX_RECVS {
            let (n, from) = match recvfrom::<NetlinkAddr>(fd, &mut buf) {
                Ok(r) => r,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "netlink: no answer from the kernel",
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            // Only the kernel (port 0) answers; anything else is not ours.
            if from.map(|a| a.pid()) != Some(0) {
                continue;
            }
            if rtnl::walk(&buf[..n], seq, &mut f).map_err(nl_err)? {
                return Ok(());
            }
        }
        Err(io::Error::other("netlink: reply too long"))
    }

    fn dump(
        &self,
        seq: u32,
        what: Dump,
        f: impl FnMut(u16, &[u8]) -> Result<(), rtnl::Error>,
    ) -> io::Result<()> {
        self.exchange(&rtnl::dump_request(seq, what, rtnl::AF_UNSPEC), seq, f)
    }

    /// Sends a request that asks for an ack and waits for it (a refusal is its errno).
    fn request(&self, req: &[u8]) -> io::Result<()> {
        self.exchange(req, 1, |_, _| Ok(()))
    }
}

/// The text of a small file (the first 64 KiB: enough for any of those read here).
fn small_file(path: impl AsRef<Path>) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_string(&mut text))
        .ok()?;
    Some(text)
}

fn int_file(path: impl AsRef<Path>) -> Option<i64> {
    procfs::parse_int(&small_file(path)?)
}

/// The sysfs / procfs facts of a link; a file that cannot be read is an unknown fact.
fn link_facts(link: Link) -> LinkInfo {
    let name = &link.name;
    // Names come from the kernel, which forbids '/', but a path is built from them.
    if name.contains('/') || name.starts_with('.') {
        return LinkInfo::new(link);
    }
    let sys = Path::new("/sys/class/net").join(name);
    let duplex = small_file(sys.join("duplex"));
    LinkInfo {
        speed: int_file(sys.join("speed"))
            .filter(|&s| s > 0)
            .and_then(|s| u32::try_from(s).ok()),
        full_duplex: match duplex.as_deref().and_then(procfs::parse_word) {
            Some("full") => Some(true),
            Some("half") => Some(false),
            _ => None,
        },
        physical: sys.join("device").exists(),
        wireless: sys.join("wireless").exists(),
        ipv6_disabled: int_file(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6")) == Some(1),
        link,
    }
}

/// Whether the kernel clock is synchronised: adjtimex (read only) neither says TIME_ERROR nor
/// has STA_UNSYNC set. An NTP client that disciplines the clock (ntpd, chrony,
/// systemd-timesyncd, busybox ntpd) clears STA_UNSYNC.
fn clock_synced() -> bool {
    use nix::libc;
    // SAFETY: a zeroed timex is valid; modes 0 only reads the kernel's state into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    state >= 0 && state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

fn thermal_zones() -> Vec<Thermal> {
    let Ok(dir) = std::fs::read_dir("/sys/class/thermal") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten().take(4 * MAX_THERMAL_ZONES) {
        let name = e.file_name();
        let Some(zone) = name
            .to_str()
            .and_then(|n| n.strip_prefix("thermal_zone"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let p = e.path();
        // A disabled zone fails to read its temperature: it is left out.
        let (Some(kind), Some(t)) = (small_file(p.join("type")), int_file(p.join("temp"))) else {
            continue;
        };
        out.push(Thermal {
            zone,
            kind: procfs::parse_word(&kind).unwrap_or("").to_string(),
            millicelsius: t,
        });
        if out.len() == MAX_THERMAL_ZONES {
            break;
        }
    }
    out.sort_by_key(|t| t.zone);
    out
}

fn processes() -> Vec<Process> {
    use nix::unistd::{SysconfVar, sysconf};
    let sc = |v, d| match sysconf(v) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => d,
    };
    let (hz, page) = (
        sc(SysconfVar::CLK_TCK, 100),
        sc(SysconfVar::PAGE_SIZE, 4096),
    );
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        // A process that exited meanwhile is left out.
        let Some(stat) = small_file(e.path().join("stat")).and_then(|t| procfs::parse_stat(&t))
        else {
            continue;
        };
        out.push(Process {
            cpu_ms: (stat.utime + stat.stime).saturating_mul(1000) / hz,
            rss_kib: stat.rss.saturating_mul(page) / 1024,
            stat,
        });
        if out.len() == MAX_PROCESSES {
            break;
        }
    }
    out.sort_by_key(|p| p.stat.pid);
    out
}

/// The kernel's reports of link, address and route changes (IPv4 and IPv6).
pub struct Watcher {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
    /// Reports came: when [`Watcher::changed`] returns (kept here, so that a call dropped
    /// while it waits, as `select!` does, loses nothing: the next call returns then).
    due: Option<tokio::time::Instant>,
}

/// After a first report, how long more reports may come before [`Watcher::changed`] returns:
/// an address and its routes, a link and its addresses arrive as one burst and cost one read.
const SETTLE: Duration = Duration::from_millis(100);

impl Watcher {
    /// Needs a tokio runtime with IO enabled.
    pub fn new() -> io::Result<Watcher> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkRoute,
        )?;
        let groups = rtnl::RTMGRP_LINK
            | rtnl::RTMGRP_IPV4_IFADDR
            | rtnl::RTMGRP_IPV6_IFADDR
            | rtnl::RTMGRP_IPV4_ROUTE
            | rtnl::RTMGRP_IPV6_ROUTE;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and is never replaced while
        // it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Watcher {
            fd,
            buf: vec![0u8; 8192],
            due: None,
        })
    }

    /// Returns when the kernel reported a change (what changed is not looked at: the caller
    /// reads again), [`SETTLE`] after the first report. Reports lost to a full socket buffer
    /// (ENOBUFS) count as a change. Cancel-safe. If the socket fails, it never returns (the
    /// caller's polling goes on).
    pub async fn changed(&mut self) {
        let raw = self.fd.get_ref().as_raw_fd();
        while self.due.is_none() {
            let Ok(mut ready) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            match drain(raw, &mut self.buf) {
                Ok(got) => {
                    ready.clear_ready();
                    if got {
                        self.due = Some(tokio::time::Instant::now() + SETTLE);
                    }
                }
                Err(e) => {
                    tracing::warn!("netlink change reports failed ({e}); polling only");
                    return std::future::pending().await;
                }
            }
        }
        if let Some(due) = self.due {
            tokio::time::sleep_until(due).await;
        }
        // What came meanwhile is part of this change; readiness is cleared by the next call.
        let _ = drain(raw, &mut self.buf);
        self.due = None;
    }
}

/// Reads everything waiting on the non-blocking `fd`; whether there was anything. Stops at
/// EAGAIN (or after a bounded number of reports, so that a storm cannot hold the thread).
fn drain(fd: RawFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = false;
    for _ in 0..1024 {
        match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
            Ok(_) | Err(Errno::ENOBUFS) => got = true,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(got),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let p = Parts::NET | Parts::DNS;
        assert!(p.contains(Parts::NET) && !p.contains(Parts::ROUTES));
        assert!(Parts::empty().is_empty() && !p.is_empty());
        assert!(Parts::ALL.contains(Parts::NETPROPS.union(Parts::PROCESSES)));
    }

    /// Reads this machine (unprivileged): `lo` with 127.0.0.1/8 is always there.
    #[test]
    fn reads_the_real_system() {
        let s = read(Parts::ALL, Path::new("/etc/resolv.conf")).unwrap();
        let lo = s.links.iter().find(|l| l.link.name == "lo").expect("lo");
        assert_eq!(lo.link.hw, rtnl::Hw::Loopback);
        assert!(s.addrs.iter().any(|a| a.index == lo.link.index
            && a.addr == IpAddr::from([127, 0, 0, 1])
            && a.prefix_len == 8));
        assert!(s.processes.iter().any(|p| p.stat.pid == std::process::id()));
        let m = map::mirror(&s, cwmp_proto::util::time::now_unix());
        assert!(
            m.tables
                .iter()
                .any(|t| t.table == "Device.IP.Interface." && t.rows.iter().any(|r| r.key == "lo"))
        );
    }

    #[test]
    fn a_request_for_a_missing_link_is_refused() {
        // ENODEV (no such link), or EPERM without CAP_NET_ADMIN: the kernel's errno either way.
        let e = set_link_up(0x7fff_fff0, true).unwrap_err();
        assert!(e.raw_os_error().is_some(), "{e}");
    }
}
