//! rtnetlink (NETLINK_ROUTE) without IO: the requests for link / address / route dumps and for
//! setting a link up, down or its MTU, and the parsers of what the kernel answers.
//!
//! Netlink is in host byte order. A reply arrives in one or more buffers, each holding one or
//! more messages; [`walk`] goes through one buffer and says when the reply is complete
//! (`NLMSG_DONE`, or the ack of a request). Every length is checked: malformed input is an
//! [`Error`], never a panic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

pub const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

/// Multicast groups of change reports (bind with their union to watch).
pub const RTMGRP_LINK: u32 = 0x1;
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;
pub const RTMGRP_IPV4_ROUTE: u32 = 0x40;
pub const RTMGRP_IPV6_IFADDR: u32 = 0x100;
pub const RTMGRP_IPV6_ROUTE: u32 = 0x400;

// Link flags (`ifi_flags`).
pub const IFF_UP: u32 = 0x1;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_RUNNING: u32 = 0x40;
pub const IFF_LOWER_UP: u32 = 0x1_0000;
pub const IFF_DORMANT: u32 = 0x2_0000;

// Address flags (`IFA_FLAGS`, or the 8 bits of `ifa_flags`).
pub const IFA_F_TEMPORARY: u32 = 0x01;
pub const IFA_F_OPTIMISTIC: u32 = 0x04;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_DEPRECATED: u32 = 0x20;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_PERMANENT: u32 = 0x80;
pub const IFA_F_MANAGETEMPADDR: u32 = 0x100;

// Route protocols (`rtm_protocol`).
pub const RTPROT_REDIRECT: u8 = 1;
pub const RTPROT_KERNEL: u8 = 2;
pub const RTPROT_BOOT: u8 = 3;
pub const RTPROT_STATIC: u8 = 4;
pub const RTPROT_RA: u8 = 9;
pub const RTPROT_DHCP: u8 = 16;
pub const RTPROT_OSPF: u8 = 188;
pub const RTPROT_RIP: u8 = 189;

const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
const RTM_F_CLONED: u32 = 0x200;

/// A lifetime that never ends (`IFA_CACHEINFO`).
pub const FOREVER: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A length runs past the end of its buffer.
    Truncated,
    /// A field is out of range or has the wrong size.
    Malformed(&'static str),
    /// The kernel refused the request (`NLMSG_ERROR` with this errno).
    Os(i32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("netlink: truncated message"),
            Error::Malformed(what) => write!(f, "netlink: malformed {what}"),
            Error::Os(e) => write!(f, "netlink: error {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// What a dump request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    Links,
    Addrs,
    Routes,
}

/// The hardware type of a link (`ifi_type`, ARPHRD_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hw {
    Ether,
    Loopback,
    /// IP tunnels (ipip, sit, gre, ip6tnl, ip6gre) and L3 devices without a link layer (tun,
    /// wireguard).
    Tunnel,
    Other(u16),
}

impl Hw {
    fn from_arphrd(t: u16) -> Hw {
        match t {
            1 => Hw::Ether,
            772 => Hw::Loopback,
            768 | 769 | 776 | 778 | 823 | 0xFFFE => Hw::Tunnel,
            t => Hw::Other(t),
        }
    }
}

/// RFC 2863 operational state (`IFLA_OPERSTATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OperState {
    #[default]
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
}

/// Counters of a link (`IFLA_STATS64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    /// Received multicast packets.
    pub multicast: u64,
    /// Packets dropped for an unknown protocol (kernels ≥ 4.6; 0 before).
    pub rx_nohandler: u64,
}

/// A network interface (`RTM_NEWLINK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub hw: Hw,
    /// The driver kind of a virtual link (`IFLA_INFO_KIND`: "veth", "bridge", "vlan", …).
    pub kind: Option<String>,
    /// `IFF_*` flags.
    pub flags: u32,
    pub operstate: OperState,
    pub mtu: u32,
    /// The hardware address when it is a 6-byte MAC.
    pub mac: Option<[u8; 6]>,
    /// The lower device (`IFLA_LINK`: a vlan's parent, a veth's peer).
    pub link: Option<u32>,
    /// The bridge or bond this link is a port of (`IFLA_MASTER`).
    pub master: Option<u32>,
    pub stats: LinkStats,
}

/// An interface address (`RTM_NEWADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// `IFA_F_*` flags.
    pub flags: u32,
    /// `RT_SCOPE_*`: 0 universe, 253 link, 254 host.
    pub scope: u8,
    /// Seconds left, [`FOREVER`] for no limit.
    pub valid_lft: u32,
    pub preferred_lft: u32,
}

/// A unicast route of the main table (`RTM_NEWROUTE`); a multipath route gives one per
/// next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination (`0.0.0.0` / `::` with `dst_len` 0 for a default route).
    pub dst: IpAddr,
    pub dst_len: u8,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// The metric (`RTA_PRIORITY`), when set.
    pub priority: Option<u32>,
    /// `RTPROT_*`: who installed it.
    pub protocol: u8,
    /// Seconds until it expires (routes learned from router advertisements).
    pub expires: Option<u32>,
}

fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// A dump request of links, addresses or routes of `family` (`AF_UNSPEC`: all).
pub fn dump_request(seq: u32, what: Dump, family: u8) -> Vec<u8> {
    let (kind, body_len) = match what {
        Dump::Links => (RTM_GETLINK, 16),   // struct ifinfomsg
        Dump::Addrs => (RTM_GETADDR, 8),    // struct ifaddrmsg
        Dump::Routes => (RTM_GETROUTE, 12), // struct rtmsg
    };
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + body_len);
    header(&mut b, kind, NLM_F_REQUEST | NLM_F_DUMP, seq);
    b.push(family);
    b.resize(NLMSG_HDRLEN + body_len, 0);
    finish(b)
}

/// An `RTM_NEWLINK` asking for an ack that sets link `index` up or down and/or its MTU.
pub fn set_link_request(seq: u32, index: u32, up: Option<bool>, mtu: Option<u32>) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + 24);
    header(&mut b, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    b.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]); // family, pad, type
    b.extend_from_slice(&index.to_ne_bytes());
    let flags = if up == Some(true) { IFF_UP } else { 0 };
    let change = if up.is_some() { IFF_UP } else { 0 };
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    if let Some(mtu) = mtu {
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&IFLA_MTU.to_ne_bytes());
        b.extend_from_slice(&mtu.to_ne_bytes());
    }
    finish(b)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, Error> {
    let s = b.get(at..at + 2).ok_or(Error::Truncated)?;
    Ok(u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, Error> {
    let s = b.get(at..at + 4).ok_or(Error::Truncated)?;
    Ok(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, Error> {
    let s = b.get(at..at + 8).ok_or(Error::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_ne_bytes(a))
}

/// A u32 attribute: exactly 4 bytes.
fn attr_u32(v: &[u8], what: &'static str) -> Result<u32, Error> {
    if v.len() != 4 {
        return Err(Error::Malformed(what));
    }
    u32_at(v, 0)
}

/// Goes through the messages of one received buffer: `f(type, payload)` for each message of
/// sequence `seq` that is not a control message (others are skipped). `Ok(true)` when the reply
/// is complete: `NLMSG_DONE` of a dump, or the ack (`NLMSG_ERROR` 0) of a request. A refusal
/// of the kernel is [`Error::Os`].
pub fn walk(
    buf: &[u8],
    seq: u32,
    mut f: impl FnMut(u16, &[u8]) -> Result<(), Error>,
) -> Result<bool, Error> {
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(Error::Truncated);
        }
        let len = u32_at(rest, 0)? as usize;
        if len < NLMSG_HDRLEN {
            return Err(Error::Malformed("message length"));
        }
        if len > rest.len() {
            return Err(Error::Truncated);
        }
        let kind = u16_at(rest, 4)?;
        let msg_seq = u32_at(rest, 8)?;
        let payload = &rest[NLMSG_HDRLEN..len];
        rest = &rest[align4(len).min(rest.len())..];
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let e = u32_at(payload, 0)? as i32;
                return match e {
                    0 => Ok(true),
                    e if e < 0 => Err(Error::Os(e.saturating_neg())),
                    _ => Err(Error::Malformed("error code")),
                };
            }
            NLMSG_DONE => {
                // A dump that failed part way carries its errno here.
                if payload.len() >= 4 {
                    let e = u32_at(payload, 0)? as i32;
                    if e < 0 {
                        return Err(Error::Os(e.saturating_neg()));
                    }
                }
                return Ok(true);
            }
            NLMSG_OVERRUN => return Err(Error::Malformed("overrun")),
            _ => f(kind, payload)?,
        }
    }
    Ok(false)
}

/// The attributes (type without the nested / byte-order bits, value) of `b`.
fn attrs(b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Error>> {
    let mut rest = b;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let r = (|| {
            let len = u16_at(rest, 0)? as usize;
            let kind = u16_at(rest, 2)? & 0x3FFF;
            if len < 4 {
                return Err(Error::Malformed("attribute length"));
            }
            let value = rest.get(4..len).ok_or(Error::Truncated)?;
            Ok((kind, value, align4(len).min(rest.len())))
        })();
        match r {
            Ok((kind, value, next)) => {
                rest = &rest[next..];
                Some(Ok((kind, value)))
            }
            Err(e) => {
                rest = &[];
                Some(Err(e))
            }
        }
    })
}

fn text(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn ip(family: u8, v: &[u8]) -> Result<IpAddr, Error> {
    match (family, v.len()) {
        (AF_INET, 4) => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        (AF_INET6, 16) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(v);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => Err(Error::Malformed("address length")),
    }
}

fn unspecified(family: u8) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

fn max_prefix(family: u8) -> u8 {
    if family == AF_INET { 32 } else { 128 }
}

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_STATS64: u16 = 23;
const IFLA_INFO_KIND: u16 = 1;

/// The payload of an `RTM_NEWLINK` message.
pub fn parse_link(p: &[u8]) -> Result<Link, Error> {
    if p.len() < 16 {
        return Err(Error::Truncated);
    }
    let mut l = Link {
        index: u32_at(p, 4)?,
        name: String::new(),
        hw: Hw::from_arphrd(u16_at(p, 2)?),
        kind: None,
        flags: u32_at(p, 8)?,
        operstate: OperState::Unknown,
        mtu: 0,
        mac: None,
        link: None,
        master: None,
        stats: LinkStats::default(),
    };
    for a in attrs(&p[16..]) {
        let (kind, v) = a?;
        match kind {
            IFLA_IFNAME => l.name = text(v),
            IFLA_MTU => l.mtu = attr_u32(v, "IFLA_MTU")?,
            IFLA_ADDRESS => l.mac = <[u8; 6]>::try_from(v).ok(),
            IFLA_LINK => l.link = Some(attr_u32(v, "IFLA_LINK")?),
            IFLA_MASTER => l.master = Some(attr_u32(v, "IFLA_MASTER")?),
            IFLA_OPERSTATE => {
                l.operstate = match v.first().ok_or(Error::Malformed("IFLA_OPERSTATE"))? {
                    1 => OperState::NotPresent,
                    2 => OperState::Down,
                    3 => OperState::LowerLayerDown,
                    4 => OperState::Testing,
                    5 => OperState::Dormant,
                    6 => OperState::Up,
                    _ => OperState::Unknown,
                }
            }
            IFLA_LINKINFO => {
                for a in attrs(v) {
                    let (kind, v) = a?;
                    if kind == IFLA_INFO_KIND {
                        l.kind = Some(text(v));
                    }
                }
            }
            IFLA_STATS64 => {
                if v.len() < 9 * 8 {
                    return Err(Error::Malformed("IFLA_STATS64"));
                }
                let n = |i: usize| u64_at(v, i * 8);
                l.stats = LinkStats {
                    rx_packets: n(0)?,
                    tx_packets: n(1)?,
                    rx_bytes: n(2)?,
                    tx_bytes: n(3)?,
                    rx_errors: n(4)?,
                    tx_errors: n(5)?,
                    rx_dropped: n(6)?,
                    tx_dropped: n(7)?,
                    multicast: n(8)?,
                    rx_nohandler: n(23).unwrap_or(0),
                };
            }
            _ => {}
        }
    }
    if l.name.is_empty() {
        return Err(Error::Malformed("link without a name"));
    }
    Ok(l)
}

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;

/// The payload of an `RTM_NEWADDR` message; `None` for families other than IPv4 and IPv6.
pub fn parse_addr(p: &[u8]) -> Result<Option<Addr>, Error> {
    if p.len() < 8 {
        return Err(Error::Truncated);
    }
    let family = p[0];
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    if p[1] > max_prefix(family) {
        return Err(Error::Malformed("prefix length"));
    }
    let (mut address, mut local) = (None, None);
    let mut a = Addr {
        index: u32_at(p, 4)?,
        addr: unspecified(family),
        prefix_len: p[1],
        flags: p[2] as u32,
        scope: p[3],
        valid_lft: FOREVER,
        preferred_lft: FOREVER,
    };
    for at in attrs(&p[8..]) {
        let (kind, v) = at?;
        match kind {
            IFA_ADDRESS => address = Some(ip(family, v)?),
            IFA_LOCAL => local = Some(ip(family, v)?),
            IFA_FLAGS => a.flags = attr_u32(v, "IFA_FLAGS")?,
            IFA_CACHEINFO => {
                if v.len() < 8 {
                    return Err(Error::Malformed("IFA_CACHEINFO"));
                }
                a.preferred_lft = u32_at(v, 0)?;
                a.valid_lft = u32_at(v, 4)?;
            }
            _ => {}
        }
    }
    // IFA_LOCAL is the local address; IFA_ADDRESS is the peer's on point-to-point links.
    a.addr = local
        .or(address)
        .ok_or(Error::Malformed("address without IFA_ADDRESS"))?;
    Ok(Some(a))
}

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_MULTIPATH: u16 = 9;
const RTA_CACHEINFO: u16 = 12;
const RTA_TABLE: u16 = 15;

/// The payload of an `RTM_NEWROUTE` message: appends it to `out` when it is an IPv4 or IPv6
/// unicast route of the main table (one per next hop of a multipath route).
pub fn parse_route(p: &[u8], out: &mut Vec<Route>) -> Result<(), Error> {
    if p.len() < 12 {
        return Err(Error::Truncated);
    }
    let (family, dst_len, mut table, protocol, rtype) = (p[0], p[1], p[4] as u32, p[5], p[7]);
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    if dst_len > max_prefix(family) {
        return Err(Error::Malformed("prefix length"));
    }
    let mut r = Route {
        dst: unspecified(family),
        dst_len,
        gateway: None,
        oif: None,
        priority: None,
        protocol,
        expires: None,
    };
    let mut dst = false;
    let mut multipath = None;
    for a in attrs(&p[12..]) {
        let (kind, v) = a?;
        match kind {
            RTA_DST => {
                r.dst = ip(family, v)?;
                dst = true;
            }
            RTA_GATEWAY => r.gateway = Some(ip(family, v)?),
            RTA_OIF => r.oif = Some(attr_u32(v, "RTA_OIF")?),
            RTA_PRIORITY => r.priority = Some(attr_u32(v, "RTA_PRIORITY")?),
            RTA_TABLE => table = attr_u32(v, "RTA_TABLE")?,
            RTA_MULTIPATH => multipath = Some(v),
            RTA_CACHEINFO => {
                // struct rta_cacheinfo: clntref, lastuse, expires (clock_t, USER_HZ = 100).
                if v.len() < 12 {
                    return Err(Error::Malformed("RTA_CACHEINFO"));
                }
                let e = u32_at(v, 8)? as i32;
                if e > 0 {
                    r.expires = Some((e as u32).div_ceil(100));
                }
            }
            _ => {}
        }
    }
    if dst_len > 0 && !dst {
        return Err(Error::Malformed("route without RTA_DST"));
    }
    if table != RT_TABLE_MAIN || rtype != RTN_UNICAST || u32_at(p, 8)? & RTM_F_CLONED != 0 {
        return Ok(());
    }
    let Some(mut nh) = multipath else {
        out.push(r);
        return Ok(());
    };
    // struct rtnexthop { len: u16, flags: u8, hops: u8, ifindex: i32 } and its attributes.
    while !nh.is_empty() {
        let len = u16_at(nh, 0)? as usize;
        if len < 8 {
            return Err(Error::Malformed("rtnexthop length"));
        }
        let hop = nh.get(..len).ok_or(Error::Truncated)?;
        let mut each = r.clone();
        each.oif = Some(u32_at(hop, 4)?);
        for a in attrs(&hop[8..]) {
            let (kind, v) = a?;
            if kind == RTA_GATEWAY {
                each.gateway = Some(ip(family, v)?);
            }
        }
        out.push(each);
        nh = &nh[align4(len).min(nh.len())..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(v);
        b.resize(align4(b.len()), 0);
        b
    }

    fn msg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        header(&mut b, kind, 2, seq);
        b.extend_from_slice(payload);
        let mut b = finish(b);
        b.resize(align4(b.len()), 0);
        b
    }

    fn link_payload(index: u32, arphrd: u16, flags: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![AF_UNSPEC, 0];
        p.extend_from_slice(&arphrd.to_ne_bytes());
        p.extend_from_slice(&index.to_ne_bytes());
        p.extend_from_slice(&flags.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        attrs.iter().for_each(|a| p.extend_from_slice(a));
        p
    }

    fn eth0() -> Vec<u8> {
        let mut stats = Vec::new();
        for i in 0..24u64 {
            stats.extend_from_slice(&(i * 10).to_ne_bytes());
        }
        link_payload(
            2,
            1,
            IFF_UP | IFF_RUNNING | IFF_LOWER_UP,
            &[
                attr(IFLA_IFNAME, b"eth0\0"),
                attr(IFLA_MTU, &1500u32.to_ne_bytes()),
                attr(IFLA_ADDRESS, &[0x02, 0, 0, 0xaa, 0xbb, 0xcc]),
                attr(IFLA_OPERSTATE, &[6]),
                attr(IFLA_MASTER, &5u32.to_ne_bytes()),
                attr(IFLA_STATS64, &stats),
                attr(IFLA_LINKINFO | 0x8000, &attr(IFLA_INFO_KIND, b"veth")),
            ],
        )
    }

    #[test]
    fn requests() {
        let r = dump_request(7, Dump::Routes, AF_INET6);
        assert_eq!(r.len(), 28);
        assert_eq!(u32_at(&r, 0).unwrap(), 28);
        assert_eq!(u16_at(&r, 4).unwrap(), RTM_GETROUTE);
        assert_eq!(u16_at(&r, 6).unwrap(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_at(&r, 8).unwrap(), 7);
        assert_eq!(r[16], AF_INET6);
        assert_eq!(dump_request(1, Dump::Links, AF_UNSPEC).len(), 32);
        assert_eq!(dump_request(1, Dump::Addrs, AF_INET).len(), 24);

        let r = set_link_request(3, 9, Some(true), Some(1400));
        assert_eq!(r.len(), 40);
        assert_eq!(u16_at(&r, 4).unwrap(), RTM_NEWLINK);
        assert_eq!(u16_at(&r, 6).unwrap(), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&r, 20).unwrap(), 9);
        assert_eq!(u32_at(&r, 24).unwrap(), IFF_UP);
        assert_eq!(u32_at(&r, 28).unwrap(), IFF_UP);
        assert_eq!(
            (u16_at(&r, 32).unwrap(), u16_at(&r, 34).unwrap()),
            (8, IFLA_MTU)
        );
        assert_eq!(u32_at(&r, 36).unwrap(), 1400);
        let r = set_link_request(3, 9, Some(false), None);
        assert_eq!(r.len(), 32);
        assert_eq!(u32_at(&r, 24).unwrap(), 0);
        assert_eq!(u32_at(&r, 28).unwrap(), IFF_UP);
    }

    #[test]
    fn links() {
        let l = parse_link(&eth0()).unwrap();
        assert_eq!(l.index, 2);
        assert_eq!(l.name, "eth0");
        assert_eq!(l.hw, Hw::Ether);
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert_eq!(l.operstate, OperState::Up);
        assert_eq!(l.mtu, 1500);
        assert_eq!(l.mac, Some([2, 0, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!((l.link, l.master), (None, Some(5)));
        assert_eq!(l.stats.tx_bytes, 30);
        assert_eq!(l.stats.multicast, 80);
        assert_eq!(l.stats.rx_nohandler, 230);

        let lo = link_payload(1, 772, IFF_UP | IFF_LOOPBACK, &[attr(IFLA_IFNAME, b"lo\0")]);
        let lo = parse_link(&lo).unwrap();
        assert_eq!(
            (lo.hw, lo.mac, lo.operstate),
            (Hw::Loopback, None, OperState::Unknown)
        );
        assert_eq!(lo.stats, LinkStats::default());
    }

    #[test]
    fn a_dump_across_buffers() {
        let mut b1 = msg(RTM_NEWLINK, 5, &eth0());
        b1.extend(msg(RTM_NEWLINK, 4, &eth0())); // another request's: skipped
        b1.extend(msg(NLMSG_NOOP, 5, &[]));
        let mut links = Vec::new();
        let mut f = |kind, p: &[u8]| -> Result<(), Error> {
            assert_eq!(kind, RTM_NEWLINK);
            links.push(parse_link(p)?);
            Ok(())
        };
        assert_eq!(walk(&b1, 5, &mut f), Ok(false));
        let mut b2 = msg(RTM_NEWLINK, 5, &eth0());
        b2.extend(msg(NLMSG_DONE, 5, &0u32.to_ne_bytes()));
        assert_eq!(walk(&b2, 5, &mut f), Ok(true));
        assert_eq!(links.len(), 2);
    }

    #[test]
    fn errors_and_acks() {
        let nop = |_, _: &[u8]| Ok(());
        let mut e = (-1i32).to_ne_bytes().to_vec();
        e.extend_from_slice(&[0; 16]);
        assert_eq!(walk(&msg(NLMSG_ERROR, 1, &e), 1, nop), Err(Error::Os(1)));
        assert_eq!(walk(&msg(NLMSG_ERROR, 1, &[0; 20]), 1, nop), Ok(true));
        let done = msg(NLMSG_DONE, 1, &(-16i32).to_ne_bytes());
        assert_eq!(walk(&done, 1, nop), Err(Error::Os(16)));
        assert_eq!(walk(&msg(NLMSG_DONE, 1, &[]), 1, nop), Ok(true));
        assert_eq!(
            walk(&msg(NLMSG_ERROR, 1, &[0; 2]), 1, nop),
            Err(Error::Truncated)
        );
        assert_eq!(walk(&[], 1, nop), Ok(false));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = msg(RTM_NEWLINK, 1, &eth0());
        let parse = |b: &[u8]| {
            walk(b, 1, |_, p| {
                parse_link(p)?;
                let _ = parse_addr(p);
                parse_route(p, &mut Vec::new())
            })
        };
        assert!(parse(&good).is_ok());
        // Every truncation and every single-byte corruption.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[n] = v;
                let _ = parse(&bad);
            }
        }
        assert_eq!(parse(&good[..good.len() - 8]), Err(Error::Truncated));
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse(&bad), Err(Error::Malformed("message length")));
        // An attribute longer than its message.
        let mut p = eth0();
        p[16..18].copy_from_slice(&2000u16.to_ne_bytes());
        assert_eq!(parse_link(&p), Err(Error::Truncated));
        assert_eq!(parse_link(&[0; 15]), Err(Error::Truncated));
        assert!(parse_link(&link_payload(1, 1, 0, &[])).is_err(), "no name");
        let short = link_payload(1, 1, 0, &[attr(IFLA_IFNAME, b"x"), attr(IFLA_MTU, &[1])]);
        assert_eq!(parse_link(&short), Err(Error::Malformed("IFLA_MTU")));
    }

    fn addr_payload(family: u8, plen: u8, flags: u8, scope: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![family, plen, flags, scope];
        p.extend_from_slice(&3u32.to_ne_bytes());
        attrs.iter().for_each(|a| p.extend_from_slice(a));
        p
    }

    #[test]
    fn addresses() {
        let v4 = addr_payload(
            AF_INET,
            24,
            IFA_F_PERMANENT as u8,
            0,
            &[
                attr(IFA_ADDRESS, &[192, 168, 1, 10]),
                attr(IFA_LOCAL, &[192, 168, 1, 10]),
            ],
        );
        let a = parse_addr(&v4).unwrap().unwrap();
        assert_eq!(a.addr, "192.168.1.10".parse::<IpAddr>().unwrap());
        assert_eq!((a.index, a.prefix_len, a.flags), (3, 24, IFA_F_PERMANENT));
        assert_eq!((a.valid_lft, a.preferred_lft), (FOREVER, FOREVER));

        // Point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer.
        let ptp = addr_payload(
            AF_INET,
            32,
            0,
            0,
            &[
                attr(IFA_ADDRESS, &[10, 0, 0, 2]),
                attr(IFA_LOCAL, &[10, 0, 0, 1]),
            ],
        );
        assert_eq!(
            parse_addr(&ptp).unwrap().unwrap().addr.to_string(),
            "10.0.0.1"
        );

        let mut ci = Vec::new();
        for x in [1800u32, 3600, 100, 200] {
            ci.extend_from_slice(&x.to_ne_bytes());
        }
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let p = addr_payload(
            AF_INET6,
            64,
            0,
            0,
            &[
                attr(IFA_ADDRESS, &v6.octets()),
                attr(IFA_CACHEINFO, &ci),
                attr(
                    IFA_FLAGS,
                    &(IFA_F_MANAGETEMPADDR | IFA_F_TENTATIVE).to_ne_bytes(),
                ),
            ],
        );
        let a = parse_addr(&p).unwrap().unwrap();
        assert_eq!(a.addr, IpAddr::V6(v6));
        assert_eq!(a.flags, IFA_F_MANAGETEMPADDR | IFA_F_TENTATIVE);
        assert_eq!((a.preferred_lft, a.valid_lft), (1800, 3600));

        assert_eq!(parse_addr(&addr_payload(17, 0, 0, 0, &[])), Ok(None));
        let bad = addr_payload(AF_INET, 33, 0, 0, &[attr(IFA_ADDRESS, &[1, 2, 3, 4])]);
        assert!(parse_addr(&bad).is_err());
        let bad = addr_payload(AF_INET, 8, 0, 0, &[attr(IFA_ADDRESS, &v6.octets())]);
        assert!(parse_addr(&bad).is_err());
        assert!(parse_addr(&addr_payload(AF_INET, 8, 0, 0, &[])).is_err());
    }

    fn route_payload(
        family: u8,
        dst_len: u8,
        table: u8,
        proto: u8,
        rtype: u8,
        attrs: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut p = vec![family, dst_len, 0, 0, table, proto, 0, rtype];
        p.extend_from_slice(&0u32.to_ne_bytes());
        attrs.iter().for_each(|a| p.extend_from_slice(a));
        p
    }

    #[test]
    fn routes() {
        let mut out = Vec::new();
        let default = route_payload(
            AF_INET,
            0,
            254,
            RTPROT_DHCP,
            1,
            &[
                attr(RTA_GATEWAY, &[192, 168, 1, 1]),
                attr(RTA_OIF, &2u32.to_ne_bytes()),
                attr(RTA_PRIORITY, &100u32.to_ne_bytes()),
            ],
        );
        parse_route(&default, &mut out).unwrap();
        let net = route_payload(
            AF_INET,
            24,
            254,
            RTPROT_KERNEL,
            1,
            &[
                attr(RTA_DST, &[192, 168, 1, 0]),
                attr(RTA_OIF, &2u32.to_ne_bytes()),
            ],
        );
        parse_route(&net, &mut out).unwrap();
        // Local table, broadcast type, another table given by RTA_TABLE: left out.
        parse_route(&route_payload(AF_INET, 0, 255, 2, 1, &[]), &mut out).unwrap();
        parse_route(&route_payload(AF_INET, 0, 254, 2, 3, &[]), &mut out).unwrap();
        let t = attr(RTA_TABLE, &1000u32.to_ne_bytes());
        parse_route(&route_payload(AF_INET, 0, 252, 2, 1, &[t]), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].dst.to_string(), "0.0.0.0");
        assert_eq!(out[0].gateway.unwrap().to_string(), "192.168.1.1");
        assert_eq!((out[0].oif, out[0].priority), (Some(2), Some(100)));
        assert_eq!(out[0].protocol, RTPROT_DHCP);
        assert_eq!(
            (out[1].dst.to_string(), out[1].dst_len),
            ("192.168.1.0".into(), 24)
        );
        assert_eq!((out[1].gateway, out[1].priority), (None, None));

        // IPv6 RA default route with expiry; table given by RTA_TABLE.
        let gw: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut ci = vec![0u8; 32];
        ci[8..12].copy_from_slice(&150_001i32.to_ne_bytes());
        let ra = route_payload(
            AF_INET6,
            0,
            252,
            RTPROT_RA,
            1,
            &[
                attr(RTA_TABLE, &254u32.to_ne_bytes()),
                attr(RTA_GATEWAY, &gw.octets()),
                attr(RTA_CACHEINFO, &ci),
            ],
        );
        out.clear();
        parse_route(&ra, &mut out).unwrap();
        assert_eq!(out[0].dst, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(out[0].expires, Some(1501));

        // Multipath: one route per next hop.
        let mut mp = Vec::new();
        for (oif, gw) in [(2u32, [10, 0, 0, 1]), (3, [10, 0, 1, 1])] {
            let g = attr(RTA_GATEWAY, &gw);
            mp.extend_from_slice(&((8 + g.len()) as u16).to_ne_bytes());
            mp.extend_from_slice(&[0, 0]);
            mp.extend_from_slice(&oif.to_ne_bytes());
            mp.extend_from_slice(&g);
        }
        let p = route_payload(AF_INET, 0, 254, 4, 1, &[attr(RTA_MULTIPATH, &mp)]);
        out.clear();
        parse_route(&p, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[1].oif, out[1].gateway.unwrap().to_string()),
            (Some(3), "10.0.1.1".into())
        );

        let bad = route_payload(AF_INET, 8, 254, 4, 1, &[]);
        assert!(parse_route(&bad, &mut out).is_err(), "no RTA_DST");
        let bad = route_payload(AF_INET, 0, 254, 4, 1, &[attr(RTA_GATEWAY, &[1, 2])]);
        assert!(parse_route(&bad, &mut out).is_err());
        let bad = route_payload(AF_INET, 0, 254, 4, 1, &[attr(RTA_MULTIPATH, &[4, 0, 0, 0])]);
        assert!(parse_route(&bad, &mut out).is_err());
        assert!(parse_route(&[0; 11], &mut out).is_err());
    }
}
