//! ICMP echo: IPPing, TraceRoute, and ServerSelection over ICMP.
//!
//! A socket is either an unprivileged ping socket (`SOCK_DGRAM` + IPPROTO_ICMP/ICMPV6, allowed
//! when the process's group is in `net.ipv4.ping_group_range`: the kernel sets the identifier,
//! fills the checksum and hands us only our replies) or a raw socket (root or CAP_NET_RAW: we
//! set the identifier, skip the IPv4 header and filter). ICMP errors about our probes (Time
//! Exceeded, Destination Unreachable) reach a raw socket as packets quoting the probe, and a
//! ping socket through its error queue (IP_RECVERR: a `sock_extended_err` with the offender's
//! address, the probe as data). Pings try the ping socket first, traces the raw one.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    self as so, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrLike, SockaddrStorage, sockopt,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};

use super::{Ctx, Kind, Outcome, Row, fail, micros, ms, spread};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum What {
    Reply,
    Exceeded,
    Unreach,
}

/// An ICMP message about one of our probes.
struct Answer {
    seq: u16,
    from: IpAddr,
    what: What,
    code: u8,
}

/// The fate of one probe.
pub(super) enum Probe {
    Answered {
        from: IpAddr,
        what: What,
        code: u8,
        us: u64,
    },
    /// The kernel had no route (ENETUNREACH / EHOSTUNREACH on send).
    NoRoute,
    Lost,
}

pub(super) struct Icmp {
    fd: AsyncFd<OwnedFd>,
    v6: bool,
    pub(super) raw: bool,
    id: u16,
    seq: u16,
}

impl Icmp {
    /// A ping socket or a raw one, in the order asked.
    pub(super) fn open(
        v6: bool,
        raw_first: bool,
        dev: Option<&str>,
        dscp: u32,
    ) -> io::Result<Icmp> {
        Self::open_as(v6, raw_first, dev, dscp)
            .or_else(|_| Self::open_as(v6, !raw_first, dev, dscp))
            .map_err(|e| io::Error::new(e.kind(), format!("no ping or raw ICMP socket: {e}")))
    }

    pub(super) fn open_as(v6: bool, raw: bool, dev: Option<&str>, dscp: u32) -> io::Result<Icmp> {
        let (family, proto) = if v6 {
            (AddressFamily::Inet6, SockProtocol::IcmpV6)
        } else {
            (AddressFamily::Inet, SockProtocol::Icmp)
        };
        let ty = if raw {
            SockType::Raw
        } else {
            SockType::Datagram
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = so::socket(family, ty, flags, proto)?;
        super::tune(&fd, v6, dev, dscp, 0)?;
        if !raw && v6 {
            so::setsockopt(&fd, sockopt::Ipv6RecvErr, &true)?;
        } else if !raw {
            so::setsockopt(&fd, sockopt::Ipv4RecvErr, &true)?;
        }
        // SAFETY: the OwnedFd is open and stays so, unchanged, for as long as the AsyncFd owns it.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::ERROR) }?;
        Ok(Icmp {
            fd,
            v6,
            raw,
            id: u16::from_be_bytes(crate::util::codec::random_bytes()),
            seq: 0,
        })
    }

    /// (echo request, echo reply, time exceeded, destination unreachable)
    fn types(&self) -> (u8, u8, u8, u8) {
        if self.v6 {
            (128, 129, 3, 1)
        } else {
            (8, 0, 11, 3)
        }
    }

    fn what(&self, ty: u8) -> Option<What> {
        let (_, reply, exceeded, unreach) = self.types();
        match ty {
            t if t == reply => Some(What::Reply),
            t if t == exceeded => Some(What::Exceeded),
            t if t == unreach => Some(What::Unreach),
            _ => None,
        }
    }

    fn send(&self, dst: SocketAddr, seq: u16, ttl: Option<u32>, size: usize) -> nix::Result<()> {
        let fd = self.fd.get_ref();
        if let Some(t) = ttl {
            let t = t as i32;
            if self.v6 {
                so::setsockopt(fd, sockopt::Ipv6Ttl, &t)?;
            } else {
                so::setsockopt(fd, sockopt::Ipv4Ttl, &t)?;
            }
        }
        let mut p = vec![0u8; 8 + size];
        p[0] = self.types().0;
        p[4..6].copy_from_slice(&self.id.to_be_bytes());
        p[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in p[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        if !self.v6 {
            let c = checksum(&p);
            p[2..4].copy_from_slice(&c.to_be_bytes());
        }
        let to = SockaddrStorage::from(dst);
        so::sendto(fd.as_raw_fd(), &p, &to, MsgFlags::empty()).map(drop)
    }

    /// The next ICMP message about one of our probes.
    async fn recv(&self) -> io::Result<Answer> {
        loop {
            let mut g = self.fd.ready(Interest::READABLE | Interest::ERROR).await?;
            match self.try_recv() {
                Ok(Some(a)) => return Ok(a),
                Ok(None) | Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => g.clear_ready_matching(Ready::READABLE | Ready::ERROR),
                // A ping socket reports an ICMP error once more as the socket's pending error;
                // its error-queue entry is what counts.
                Err(_) if !self.raw => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One message, `Ok(None)` for one that is not about our probes, EAGAIN when none is there.
    fn try_recv(&self) -> nix::Result<Option<Answer>> {
        let fd = self.fd.as_raw_fd();
        let mut buf = [0u8; 1024];
        if !self.raw {
            match self.try_recv_err(fd, &mut buf) {
                Err(Errno::EAGAIN) => {}
                r => return r,
            }
        }
        let (n, from) = so::recvfrom::<SockaddrStorage>(fd, &mut buf)?;
        Ok(from
            .as_ref()
            .and_then(ip_of)
            .and_then(|f| self.parse(&buf[..n], f)))
    }

    /// A ping socket's error queue: an ICMP error quoting our probe.
    fn try_recv_err(&self, fd: RawFd, buf: &mut [u8]) -> nix::Result<Option<Answer>> {
        let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
        let (n, err) = {
            let mut iov = [IoSliceMut::new(buf)];
            let m = so::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_ERRQUEUE)?;
            let mut err = None;
            for c in m.cmsgs()? {
                match c {
                    ControlMessageOwned::Ipv4RecvErr(e, Some(a)) => {
                        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                        err = Some((e, IpAddr::V4(ip)));
                    }
                    ControlMessageOwned::Ipv6RecvErr(e, Some(a)) => {
                        err = Some((e, IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))));
                    }
                    _ => {}
                }
            }
            (m.bytes, err)
        };
        let Some((e, from)) = err else {
            return Ok(None);
        };
        let p = &buf[..n.min(buf.len())];
        let icmp_origin = [libc::SO_EE_ORIGIN_ICMP, libc::SO_EE_ORIGIN_ICMP6];
        match self.what(e.ee_type) {
            Some(what) if icmp_origin.contains(&e.ee_origin) && p.len() >= 8 => Ok(Some(Answer {
                seq: u16::from_be_bytes([p[6], p[7]]),
                from,
                what,
                code: e.ee_code,
            })),
            _ => Ok(None),
        }
    }

    /// A packet from the normal queue (a raw IPv4 socket's starts with the IP header).
    fn parse(&self, p: &[u8], from: IpAddr) -> Option<Answer> {
        let icmp = if self.raw && !self.v6 {
            p.get(usize::from(p.first()? & 15) * 4..)?
        } else {
            p
        };
        let what = self.what(*icmp.first()?)?;
        let echo = if what == What::Reply {
            icmp
        } else {
            // An ICMP error quotes the probe's IP header and the start of its ICMP header.
            let inner = icmp.get(8..)?;
            let hl = if self.v6 {
                40
            } else {
                usize::from(inner.first()? & 15) * 4
            };
            inner
                .get(hl..)
                .filter(|e| e.first() == Some(&self.types().0))?
        };
        if echo.len() < 8 || (self.raw && echo[4..6] != self.id.to_be_bytes()) {
            return None;
        }
        Some(Answer {
            seq: u16::from_be_bytes([echo[6], echo[7]]),
            from,
            what,
            code: icmp[1],
        })
    }

    /// Sends one echo request and waits up to `timeout` for what comes back about it.
    pub(super) async fn probe(
        &mut self,
        dst: SocketAddr,
        ttl: Option<u32>,
        size: usize,
        timeout: Duration,
    ) -> io::Result<Probe> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let start = Instant::now();
        match self.send(dst, seq, ttl, size) {
            Ok(()) => {}
            Err(Errno::ENETUNREACH | Errno::EHOSTUNREACH) => return Ok(Probe::NoRoute),
            Err(e) => {
                tracing::debug!("ICMP echo to {dst}: {e}");
                return Ok(Probe::Lost);
            }
        }
        let answer = async {
            loop {
                let a = self.recv().await?;
                if a.seq == seq {
                    return io::Result::Ok(a);
                }
            }
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(a)) => Ok(Probe::Answered {
                from: a.from,
                what: a.what,
                code: a.code,
                us: micros(start.elapsed()),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Probe::Lost),
        }
    }
}

fn ip_of(s: &SockaddrStorage) -> Option<IpAddr> {
    match s.family()? {
        AddressFamily::Inet => s.as_sockaddr_in().map(|a| IpAddr::V4(a.ip())),
        AddressFamily::Inet6 => s.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())),
        _ => None,
    }
}

/// The Internet checksum (RFC 1071) of an ICMPv4 message.
fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The probes of a ping: answered round trips (µs), and how many met "no route".
pub(super) struct Pings {
    pub rtts: Vec<u64>,
    pub unreachable: u32,
}

/// `n` echo requests, one at a time, each waiting up to `timeout`.
pub(super) async fn ping(
    cx: &Ctx<'_>,
    dst: SocketAddr,
    n: u32,
    timeout: Duration,
    size: usize,
    raw_first: bool,
) -> io::Result<Pings> {
    let mut s = Icmp::open(dst.is_ipv6(), raw_first, cx.dev, cx.dscp())?;
    let mut r = Pings {
        rtts: Vec::new(),
        unreachable: 0,
    };
    for _ in 0..n {
        match s.probe(dst, None, size, timeout).await? {
            Probe::Answered {
                what: What::Reply,
                us,
                ..
            } => r.rtts.push(us),
            Probe::Answered {
                what: What::Unreach,
                ..
            }
            | Probe::NoRoute => r.unreachable += 1,
            Probe::Answered { .. } | Probe::Lost => {}
        }
    }
    Ok(r)
}

pub(super) async fn ping_test(cx: &Ctx<'_>) -> Outcome {
    let k = Kind::IPPing;
    let host = cx.inp.str("Host");
    let Some(dst) = cx.resolve(host, 0).await else {
        return fail(k, "Error_CannotResolveHostName", format!("{host:?}"));
    };
    let n = cx.repetitions(3);
    let size = cx.inp.num("DataBlockSize", 56, 1, 65535) as usize;
    let p = match ping(cx, dst, n, cx.inp.ms("Timeout", 1000), size, false).await {
        Ok(p) => p,
        Err(e) => return fail(k, "Error_Internal", e),
    };
    // Routers rate-limit their ICMP errors: one Destination Unreachable and no reply suffices.
    if p.rtts.is_empty() && p.unreachable > 0 {
        return fail(k, "Error_NoRouteToHost", dst.ip());
    }
    let (lo, avg, hi) = spread(&p.rtts);
    let mut o = Outcome::new(k, "Complete");
    o.set("IPAddressUsed", dst.ip());
    o.set("SuccessCount", p.rtts.len());
    o.set("FailureCount", n as usize - p.rtts.len());
    o.set("AverageResponseTime", ms(avg));
    o.set("MinimumResponseTime", ms(lo));
    o.set("MaximumResponseTime", ms(hi));
    o.set("AverageResponseTimeDetailed", avg);
    o.set("MinimumResponseTimeDetailed", lo);
    o.set("MaximumResponseTimeDetailed", hi);
    o
}

pub(super) async fn trace_test(cx: &Ctx<'_>) -> Outcome {
    trace(cx, true).await
}

/// TraceRoute: echo requests with TTL 1, 2, … (NumberOfTries each) until the target answers.
pub(super) async fn trace(cx: &Ctx<'_>, raw_first: bool) -> Outcome {
    let k = Kind::TraceRoute;
    let host = cx.inp.str("Host");
    let Some(dst) = cx.resolve(host, 0).await else {
        return fail(k, "Error_CannotResolveHostName", format!("{host:?}"));
    };
    let tries = cx.inp.num("NumberOfTries", 3, 1, 3);
    let timeout = cx.inp.ms("Timeout", 5000);
    let size = cx.inp.num("DataBlockSize", 38, 1, 65535) as usize;
    let max = cx.inp.num("MaxHopCount", 30, 1, cx.lim.max_hops.min(255));
    let mut s = match Icmp::open(dst.is_ipv6(), raw_first, cx.dev, cx.dscp()) {
        Ok(s) => s,
        Err(e) => return fail(k, "Error_Internal", e),
    };
    let mut hops: Vec<Row> = Vec::new();
    let mut state = "Error_MaxHopCountExceeded";
    let mut response = 0;
    'hops: for ttl in 1..=max {
        let (mut addr, mut code, mut rtts) = (None, 0u8, Vec::new());
        let (mut reached, mut unreach) = (false, false);
        for _ in 0..tries {
            match s.probe(dst, Some(ttl), size, timeout).await {
                Err(e) => return fail(k, "Error_Internal", e),
                Ok(Probe::NoRoute) => {
                    state = "Error_NoRouteToHost";
                    break 'hops;
                }
                Ok(Probe::Lost) => rtts.push(0),
                Ok(Probe::Answered {
                    from,
                    what,
                    code: c,
                    us,
                }) => {
                    (addr, code) = (Some(from), c);
                    // RTTimes is a list of at most 16 characters.
                    rtts.push(ms(us).min(9999));
                    reached |= what == What::Reply;
                    unreach |= what == What::Unreach;
                }
            }
        }
        let a = addr.map(|a| a.to_string()).unwrap_or_default();
        let list: Vec<String> = rtts.iter().map(u64::to_string).collect();
        hops.push(vec![
            ("Host", a.clone()),
            ("HostAddress", a),
            ("ErrorCode", code.to_string()),
            ("RTTimes", list.join(",")),
        ]);
        if reached {
            let answered: Vec<u64> = rtts.into_iter().filter(|&t| t > 0).collect();
            (state, response) = ("Complete", spread(&answered).1);
            break;
        }
        if unreach {
            state = "Error_NoRouteToHost";
            break;
        }
    }
    let mut o = if state == "Complete" {
        Outcome::new(k, state)
    } else {
        fail(k, state, format!("{} after {} hops", dst.ip(), hops.len()))
    };
    if state == "Complete" {
        o.set("IPAddressUsed", dst.ip());
        o.set("ResponseTime", response);
    }
    o.table(hops);
    o
}
