//! A [`Snapshot`] of the system as TR-181 (Device:2.15) tables and values.

use std::collections::HashSet;
use std::net::IpAddr;

use cwmp_proto::linux::rtnl::{self, Addr, Hw, Link, LinkStats, OperState, Route};
use cwmp_proto::model::mirror::{MRow, MTable, MVal, Mirror};
use cwmp_proto::util::time::format_datetime;

use super::{LinkInfo, Parts, Snapshot};

const ETH_IF: &str = "Device.Ethernet.Interface.";
const ETH_LINK: &str = "Device.Ethernet.Link.";
const IP_IF: &str = "Device.IP.Interface.";
/// TR-181's infinite time.
const FOREVER: &str = "9999-12-31T23:59:59Z";

type Values = Vec<(&'static str, MVal)>;

fn t(s: impl ToString) -> MVal {
    MVal::Text(s.to_string())
}

fn b(v: bool) -> MVal {
    t(if v { "true" } else { "false" })
}

/// The tables and values of `s`; `now` (Unix seconds) turns lifetimes into times.
///
/// Only what `s.parts` covers is listed: the store removes the rows of a listed table that the
/// mirror does not have, so a table that was not read must not appear.
/// * NET: `Device.Ethernet.Interface.`, `Device.Ethernet.Link.`, `Device.IP.Interface.` (with
///   `IPv4Address.` / `IPv6Address.`), `Device.IP.IPv4*` / `IPv6*`;
/// * ROUTES: `Device.Routing.Router.` (one row, `main`);
/// * DNS: `Device.DNS.Client.Server.`, `Device.DNS.Client.Enable` / `Status`;
/// * TIME: `Device.Time.Status`;
/// * THERMAL: `Device.DeviceInfo.TemperatureStatus.TemperatureSensor.`;
/// * PROCESSES: `Device.DeviceInfo.ProcessStatus.Process.`;
/// * NETPROPS: `Device.DeviceInfo.NetworkProperties.MaxTCPWindowSize` / `TCPImplementation`.
pub fn mirror(s: &Snapshot, now: i64) -> Mirror {
    let mut m = Mirror::default();
    if s.parts.contains(Parts::NET) {
        net(s, now, &mut m);
    }
    if s.parts.contains(Parts::ROUTES) {
        m.tables.push(routes(s, now));
    }
    if s.parts.contains(Parts::DNS) {
        let rows = s.dns.iter().map(|a| MRow {
            key: a.to_string(),
            values: vec![
                ("Enable", b(true)),
                ("Status", t("Enabled")),
                ("DNSServer", t(a)),
                ("Interface", t("")),
                ("Type", t("Static")),
            ],
            children: Vec::new(),
        });
        m.tables.push(MTable {
            table: "Device.DNS.Client.Server.",
            rows: rows.collect(),
        });
        m.values.push(("Device.DNS.Client.Enable", b(true)));
        m.values.push(("Device.DNS.Client.Status", t("Enabled")));
    }
    if s.parts.contains(Parts::TIME) {
        let st = if s.time_synced {
            "Synchronized"
        } else {
            "Unsynchronized"
        };
        m.values.push(("Device.Time.Status", t(st)));
    }
    if s.parts.contains(Parts::THERMAL) {
        let rows = s.thermal.iter().map(|z| MRow {
            key: format!("{}.{}", z.kind, z.zone),
            values: vec![
                ("Enable", b(true)),
                ("Status", t("Enabled")),
                ("Name", t(&z.kind)),
                // Rounded to the nearest degree.
                (
                    "Value",
                    t((z.millicelsius + 500).div_euclid(1000).max(-274)),
                ),
                ("LastUpdate", t(format_datetime(now))),
            ],
            children: Vec::new(),
        });
        m.tables.push(MTable {
            table: "Device.DeviceInfo.TemperatureStatus.TemperatureSensor.",
            rows: rows.collect(),
        });
    }
    if s.parts.contains(Parts::PROCESSES) {
        let rows = s.processes.iter().map(|p| {
            let st = &p.stat;
            let state = match st.state {
                'R' => "Running",
                'D' => "Uninterruptible",
                'T' | 't' => "Stopped",
                'Z' | 'X' => "Zombie",
                'I' => "Idle",
                _ => "Sleeping",
            };
            MRow {
                key: st.pid.to_string(),
                values: vec![
                    ("PID", t(st.pid)),
                    ("Command", t(st.comm.chars().take(256).collect::<String>())),
                    ("Size", t(u32_sat(p.rss_kib))),
                    // 20 + nice (0 highest); real-time processes come before all: 0.
                    ("Priority", t(st.priority.clamp(0, 99))),
                    ("CPUTime", t(u32_sat(p.cpu_ms))),
                    ("State", t(state)),
                ],
                children: Vec::new(),
            }
        });
        m.tables.push(MTable {
            table: "Device.DeviceInfo.ProcessStatus.Process.",
            rows: rows.collect(),
        });
    }
    if s.parts.contains(Parts::NETPROPS) {
        if let Some(w) = s.max_tcp_window {
            let name = "Device.DeviceInfo.NetworkProperties.MaxTCPWindowSize";
            m.values.push((name, t(u32_sat(w))));
        }
        // Linux recovers from loss as NewReno (RFC 6582) whatever the congestion-control
        // module; TR-181 lists nothing closer for cubic or bbr.
        if let Some(cc) = &s.congestion_control {
            let imp = if cc == "vegas" { "Vegas" } else { "New Reno" };
            let name = "Device.DeviceInfo.NetworkProperties.TCPImplementation";
            m.values.push((name, t(imp)));
        }
    }
    m
}

fn u32_sat(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// TR-181 interface Status.
fn status(l: &Link) -> &'static str {
    if l.flags & rtnl::IFF_UP == 0 {
        return "Down";
    }
    match l.operstate {
        OperState::Up => "Up",
        OperState::Down => "Down",
        OperState::LowerLayerDown => "LowerLayerDown",
        OperState::Dormant => "Dormant",
        OperState::NotPresent => "NotPresent",
        // Drivers that report no state (lo, tun) are up when running.
        OperState::Unknown if l.flags & rtnl::IFF_RUNNING != 0 => "Up",
        OperState::Unknown | OperState::Testing => "Unknown",
    }
}

fn mac(l: &Link) -> MVal {
    match l.mac {
        Some(m) => t(format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )),
        None => t(""),
    }
}

/// `Stats.*` of an interface. Linux counts no unicast / broadcast split: unicast is all
/// packets less multicast; counters TR-181 has as unsignedInt wrap at 2^32 as counters do.
fn stats(v: &mut Values, s: &LinkStats) {
    let wrap = |x: u64| t(x as u32);
    v.extend([
        ("Stats.BytesSent", t(s.tx_bytes)),
        ("Stats.BytesReceived", t(s.rx_bytes)),
        ("Stats.PacketsSent", t(s.tx_packets)),
        ("Stats.PacketsReceived", t(s.rx_packets)),
        ("Stats.ErrorsSent", wrap(s.tx_errors)),
        ("Stats.ErrorsReceived", wrap(s.rx_errors)),
        ("Stats.UnicastPacketsSent", t(s.tx_packets)),
        (
            "Stats.UnicastPacketsReceived",
            t(s.rx_packets.saturating_sub(s.multicast)),
        ),
        ("Stats.DiscardPacketsSent", wrap(s.tx_dropped)),
        ("Stats.DiscardPacketsReceived", wrap(s.rx_dropped)),
        ("Stats.MulticastPacketsSent", t(0)),
        ("Stats.MulticastPacketsReceived", t(s.multicast)),
        ("Stats.BroadcastPacketsSent", t(0)),
        ("Stats.BroadcastPacketsReceived", t(0)),
        ("Stats.UnknownProtoPacketsReceived", wrap(s.rx_nohandler)),
    ]);
}

/// A physical Ethernet port (or a veth, so that network-namespace tests see theirs).
fn is_eth_interface(l: &LinkInfo) -> bool {
    l.link.hw == Hw::Ether
        && !l.wireless
        && (l.physical || matches!(l.link.kind.as_deref(), None | Some("veth")))
}

/// A link layer over other links (bridge, VLAN, MAC-VLAN).
fn is_upper(l: &Link) -> bool {
    matches!(l.kind.as_deref(), Some("bridge" | "vlan" | "macvlan"))
}

/// Has an `Ethernet.Link` row: Ethernet ports, bridges / VLANs, and Wi-Fi interfaces (their
/// lower layer, a `WiFi.SSID`, is not modelled here).
fn is_eth_link(l: &LinkInfo) -> bool {
    is_eth_interface(l) || is_upper(&l.link) || (l.link.hw == Hw::Ether && l.wireless)
}

fn net(s: &Snapshot, now: i64, m: &mut Mirror) {
    let by_index = |index: u32| s.links.iter().find(|l| l.link.index == index);
    let mut eth_if = Vec::new();
    let mut eth_link = Vec::new();
    let mut ip_if = Vec::new();
    for li in &s.links {
        let l = &li.link;
        let name = l.name.as_str();
        let common = |v: &mut Values| {
            v.push(("Enable", b(l.flags & rtnl::IFF_UP != 0)));
            v.push(("Status", t(status(l))));
            v.push(("Name", t(name)));
        };
        if is_eth_interface(li) {
            let up = status(l) == "Up";
            let mut v = Values::new();
            common(&mut v);
            v.extend([
                ("LowerLayers", t("")),
                ("Upstream", b(false)),
                ("MACAddress", mac(l)),
                ("MaxBitRate", t(li.speed.map_or(-1, i64::from))),
                (
                    "CurrentBitRate",
                    t(if up { li.speed.unwrap_or(0) } else { 0 }),
                ),
                (
                    "DuplexMode",
                    t(match li.full_duplex {
                        Some(true) => "Full",
                        Some(false) => "Half",
                        None => "Auto",
                    }),
                ),
            ]);
            stats(&mut v, &l.stats);
            eth_if.push(row(name, v, Vec::new()));
        }
        if is_eth_link(li) {
            let lower = if is_eth_interface(li) {
                MVal::Ref {
                    table: ETH_IF,
                    key: name.to_string(),
                }
            } else if l.kind.as_deref() == Some("bridge") {
                let ports = s.links.iter().filter(|p| {
                    p.link.master == Some(l.index) && is_eth_link(p) && p.link.index != l.index
                });
                MVal::RefList(ports.map(|p| (ETH_LINK, p.link.name.clone())).collect())
            } else {
                match l.link.and_then(by_index) {
                    Some(p) if is_eth_link(p) => MVal::Ref {
                        table: ETH_LINK,
                        key: p.link.name.clone(),
                    },
                    _ => t(""),
                }
            };
            let mut v = Values::new();
            common(&mut v);
            v.extend([("LowerLayers", lower), ("MACAddress", mac(l))]);
            stats(&mut v, &l.stats);
            eth_link.push(row(name, v, Vec::new()));
        }
        let addrs: Vec<&Addr> = s.addrs.iter().filter(|a| a.index == l.index).collect();
        if addrs.is_empty() && l.flags & rtnl::IFF_UP == 0 {
            continue;
        }
        let lo = l.hw == Hw::Loopback;
        let (v4, v6) = addresses(&addrs, lo, now);
        let mut v = Values::new();
        common(&mut v);
        let lower = if is_eth_link(li) {
            MVal::Ref {
                table: ETH_LINK,
                key: name.to_string(),
            }
        } else {
            t("")
        };
        let kind = match l.hw {
            Hw::Loopback => "Loopback",
            Hw::Tunnel => "Tunneled",
            _ => "Normal",
        };
        v.extend([
            ("LowerLayers", lower),
            ("Type", t(kind)),
            ("Loopback", b(lo)),
            ("MaxMTUSize", t(l.mtu.clamp(64, 65535))),
            ("IPv4Enable", b(!v4.is_empty())),
            ("IPv6Enable", b(!v6.is_empty() && !li.ipv6_disabled)),
        ]);
        stats(&mut v, &l.stats);
        let children = vec![
            MTable {
                table: "IPv4Address.",
                rows: v4,
            },
            MTable {
                table: "IPv6Address.",
                rows: v6,
            },
        ];
        ip_if.push(row(name, v, children));
    }
    for (table, rows) in [(ETH_IF, eth_if), (ETH_LINK, eth_link), (IP_IF, ip_if)] {
        m.tables.push(MTable { table, rows });
    }
    m.values.extend([
        ("Device.IP.IPv4Capable", b(true)),
        ("Device.IP.IPv4Enable", b(true)),
        ("Device.IP.IPv4Status", t("Enabled")),
        ("Device.IP.IPv6Capable", b(s.ipv6_capable)),
        ("Device.IP.IPv6Enable", b(s.ipv6_enabled)),
        (
            "Device.IP.IPv6Status",
            t(if s.ipv6_enabled {
                "Enabled"
            } else {
                "Disabled"
            }),
        ),
    ]);
}

fn row(key: &str, values: Values, children: Vec<MTable>) -> MRow {
    MRow {
        key: key.to_string(),
        values,
        children,
    }
}

fn lifetime(now: i64, lft: u32) -> MVal {
    if lft == rtnl::FOREVER {
        t(FOREVER)
    } else {
        t(format_datetime(now.saturating_add(i64::from(lft))))
    }
}

fn netmask(prefix_len: u8) -> std::net::Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    bits.into()
}

/// The `IPv4Address.` and `IPv6Address.` rows of an interface (an address listed twice, with
/// two prefix lengths, is shown once).
///
/// Rows are keyed by position, not by address: the first IPv4 address is `4#1`, the first
/// link-local IPv6 address `ll#1`, the first other IPv6 address `6#1`. A renumbered interface
/// (a DHCP lease with a new address, an operator's `ip addr` change) then keeps its instance and
/// changes `IPAddress` in place, which is what raises `4 VALUE CHANGE` for an ACS that watches
/// the address; keyed by address, the ACS would only see one row vanish and another appear.
fn addresses(addrs: &[&Addr], lo: bool, now: i64) -> (Vec<MRow>, Vec<MRow>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    let (mut link_local, mut global) = (0, 0);
    for a in addrs {
        let addr = a.addr.to_string();
        if !seen.insert(addr.clone()) {
            continue;
        }
        let key = match a.addr {
            IpAddr::V4(_) => format!("4#{}", v4.len() + 1),
            IpAddr::V6(ip) if ip.segments()[0] & 0xffc0 == 0xfe80 => {
                link_local += 1;
                format!("ll#{link_local}")
            }
            IpAddr::V6(_) => {
                global += 1;
                format!("6#{global}")
            }
        };
        let permanent = a.flags & rtnl::IFA_F_PERMANENT != 0;
        match a.addr {
            IpAddr::V4(_) => {
                let static_ = lo || permanent;
                let values = vec![
                    ("Enable", b(true)),
                    ("Status", t("Enabled")),
                    ("IPAddress", t(&addr)),
                    ("SubnetMask", t(netmask(a.prefix_len))),
                    ("AddressingType", t(if static_ { "Static" } else { "DHCP" })),
                ];
                v4.push(row(&key, values, Vec::new()));
            }
            IpAddr::V6(ip) => {
                let f = a.flags;
                let status = if f & rtnl::IFA_F_DADFAILED != 0 {
                    "Duplicate"
                } else if f & rtnl::IFA_F_OPTIMISTIC != 0 {
                    "Optimistic"
                } else if f & rtnl::IFA_F_TENTATIVE != 0 {
                    "Tentative"
                } else if f & rtnl::IFA_F_DEPRECATED != 0 || a.preferred_lft == 0 {
                    "Deprecated"
                } else {
                    "Preferred"
                };
                // Userspace DHCPv6 clients add their addresses as /128; SLAAC (kernel, or
                // privacy addresses) uses the advertised prefix, normally /64.
                let origin = if ip.is_loopback() || ip.segments()[0] & 0xffc0 == 0xfe80 {
                    "WellKnown"
                } else if permanent {
                    "Static"
                } else if f & (rtnl::IFA_F_MANAGETEMPADDR | rtnl::IFA_F_TEMPORARY) != 0
                    || a.prefix_len != 128
                {
                    "AutoConfigured"
                } else {
                    "DHCPv6"
                };
                let values = vec![
                    ("Enable", b(true)),
                    ("Status", t("Enabled")),
                    ("IPAddressStatus", t(status)),
                    ("IPAddress", t(&addr)),
                    ("Origin", t(origin)),
                    ("Prefix", t("")),
                    ("PreferredLifetime", lifetime(now, a.preferred_lft)),
                    ("ValidLifetime", lifetime(now, a.valid_lft)),
                    ("Anycast", b(false)),
                ];
                v6.push(row(&key, values, Vec::new()));
            }
        }
    }
    (v4, v6)
}

/// `Device.Routing.Router.`: one router, the main table.
fn routes(s: &Snapshot, now: i64) -> MTable {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for r in s.routes.iter().filter(|r| !skipped(r)) {
        let ifname = r
            .oif
            .and_then(|i| s.links.iter().find(|l| l.link.index == i))
            .map(|l| l.link.name.as_str());
        let key = route_key(r, ifname);
        if !seen.insert(key.clone()) {
            continue;
        }
        let interface = match ifname {
            Some(n) => MVal::Ref {
                table: IP_IF,
                key: n.to_string(),
            },
            None => t(""),
        };
        let metric = r.priority.map_or(-1, |p| i64::from(p.min(i32::MAX as u32)));
        let gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
        let mut v = vec![("Enable", b(true)), ("Status", t("Enabled"))];
        if r.dst.is_ipv4() {
            let default = r.dst_len == 0;
            let origin = match r.protocol {
                rtnl::RTPROT_DHCP => "DHCPv4",
                rtnl::RTPROT_OSPF => "OSPF",
                rtnl::RTPROT_RIP => "RIP",
                _ => "Static",
            };
            let static_ = matches!(r.protocol, rtnl::RTPROT_STATIC | rtnl::RTPROT_BOOT);
            v.extend([
                ("StaticRoute", b(static_)),
                (
                    "DestIPAddress",
                    t(if default {
                        String::new()
                    } else {
                        r.dst.to_string()
                    }),
                ),
                (
                    "DestSubnetMask",
                    t(if default {
                        String::new()
                    } else {
                        netmask(r.dst_len).to_string()
                    }),
                ),
                ("ForwardingPolicy", t(-1)),
                ("GatewayIPAddress", t(gateway)),
                ("Interface", interface),
                ("Origin", t(origin)),
                ("ForwardingMetric", t(metric)),
            ]);
            v4.push(row(&key, v, Vec::new()));
        } else {
            let origin = match r.protocol {
                rtnl::RTPROT_RA => "RA",
                rtnl::RTPROT_DHCP => "DHCPv6",
                rtnl::RTPROT_OSPF => "OSPF",
                rtnl::RTPROT_RIP => "RIPng",
                _ => "Static",
            };
            let prefix = if r.dst_len == 0 {
                String::new()
            } else {
                format!("{}/{}", r.dst, r.dst_len)
            };
            let expires = match r.expires {
                Some(e) => lifetime(now, e),
                None => t(FOREVER),
            };
            v.extend([
                ("DestIPPrefix", t(prefix)),
                ("ForwardingPolicy", t(-1)),
                ("NextHop", t(gateway)),
                ("Interface", interface),
                ("Origin", t(origin)),
                ("ForwardingMetric", t(metric)),
                ("ExpirationTime", expires),
            ]);
            v6.push(row(&key, v, Vec::new()));
        }
    }
    let children = vec![
        MTable {
            table: "IPv4Forwarding.",
            rows: v4,
        },
        MTable {
            table: "IPv6Forwarding.",
            rows: v6,
        },
    ];
    let values = vec![("Enable", b(true)), ("Status", t("Enabled"))];
    MTable {
        table: "Device.Routing.Router.",
        rows: vec![row("main", values, children)],
    }
}

/// Multicast destinations, the link-local fe80::/64 every IPv6 interface has, and ICMP
/// redirects (not forwarding rules anyone configured).
fn skipped(r: &Route) -> bool {
    r.protocol == rtnl::RTPROT_REDIRECT
        || match r.dst {
            IpAddr::V4(a) => a.is_multicast(),
            IpAddr::V6(a) => {
                a.is_multicast() || (r.dst_len == 64 && a.segments()[..4] == [0xfe80, 0, 0, 0])
            }
        }
}

/// `10.0.0.0/8 via 192.168.1.1 dev eth0 metric 0`, `default via … dev …`.
fn route_key(r: &Route, ifname: Option<&str>) -> String {
    let mut k = if r.dst_len == 0 {
        "default".to_string()
    } else {
        format!("{}/{}", r.dst, r.dst_len)
    };
    if let Some(g) = r.gateway {
        k += &format!(" via {g}");
    }
    match (ifname, r.oif) {
        (Some(n), _) => k += &format!(" dev {n}"),
        (None, Some(i)) => k += &format!(" dev #{i}"),
        (None, None) => {}
    }
    k + &format!(" metric {}", r.priority.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::{Process, Thermal};
    use cwmp_proto::linux::procfs::ProcStat;

    fn link(index: u32, name: &str, hw: Hw, kind: Option<&str>, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            hw,
            kind: kind.map(str::to_string),
            flags: if up {
                rtnl::IFF_UP | rtnl::IFF_RUNNING
            } else {
                0
            },
            operstate: if up { OperState::Up } else { OperState::Down },
            mtu: 1500,
            mac: Some([0x02, 0, 0, 0, 0, index as u8]),
            link: None,
            master: None,
            stats: LinkStats {
                rx_packets: 100,
                tx_packets: 50,
                rx_bytes: 10_000,
                tx_bytes: 5_000,
                multicast: 10,
                tx_errors: (1 << 32) + 3,
                ..LinkStats::default()
            },
        }
    }

    fn addr(index: u32, a: &str, prefix_len: u8, flags: u32, pref: u32, valid: u32) -> Addr {
        Addr {
            index,
            addr: a.parse().unwrap(),
            prefix_len,
            flags,
            scope: 0,
            valid_lft: valid,
            preferred_lft: pref,
        }
    }

    fn route(
        dst: &str,
        len: u8,
        gw: Option<&str>,
        oif: u32,
        proto: u8,
        prio: Option<u32>,
    ) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            dst_len: len,
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            priority: prio,
            protocol: proto,
            expires: None,
        }
    }

    const NOW: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    fn snapshot() -> Snapshot {
        let mut lo = link(1, "lo", Hw::Loopback, None, true);
        lo.operstate = OperState::Unknown;
        lo.mac = None;
        lo.mtu = 65536;
        let eth0 = LinkInfo {
            speed: Some(1000),
            full_duplex: Some(true),
            physical: true,
            ..LinkInfo::new(link(2, "eth0", Hw::Ether, None, true))
        };
        let mut eth1 = LinkInfo {
            physical: true,
            ..LinkInfo::new(link(3, "eth1", Hw::Ether, None, false))
        };
        eth1.link.master = Some(5);
        let mut veth = LinkInfo::new(link(4, "veth0", Hw::Ether, Some("veth"), true));
        veth.link.master = Some(5);
        veth.link.link = Some(99);
        let br = LinkInfo::new(link(5, "br0", Hw::Ether, Some("bridge"), true));
        let mut vlan = LinkInfo::new(link(6, "eth0.100", Hw::Ether, Some("vlan"), true));
        vlan.link.link = Some(2);
        let mut wg = LinkInfo::new(link(7, "wg0", Hw::Tunnel, Some("wireguard"), true));
        wg.link.mac = None;
        let dummy = LinkInfo::new(link(8, "dummy0", Hw::Ether, Some("dummy"), false));
        let wlan = LinkInfo {
            physical: true,
            wireless: true,
            ipv6_disabled: true,
            ..LinkInfo::new(link(9, "wlan0", Hw::Ether, None, true))
        };
        let f = rtnl::FOREVER;
        Snapshot {
            parts: Parts::ALL,
            links: vec![
                LinkInfo::new(lo),
                eth0,
                eth1,
                veth,
                br,
                vlan,
                wg,
                dummy,
                wlan,
            ],
            addrs: vec![
                addr(1, "127.0.0.1", 8, rtnl::IFA_F_PERMANENT, f, f),
                addr(1, "::1", 128, rtnl::IFA_F_PERMANENT, f, f),
                addr(2, "192.168.1.10", 24, 0, 3000, 3600),
                addr(2, "192.168.1.10", 16, 0, 3000, 3600),
                addr(
                    2,
                    "2001:db8::10",
                    64,
                    rtnl::IFA_F_MANAGETEMPADDR,
                    1800,
                    3600,
                ),
                addr(2, "2001:db8::99", 128, 0, 1800, 3600),
                addr(
                    2,
                    "2001:db8::1",
                    64,
                    rtnl::IFA_F_PERMANENT | rtnl::IFA_F_TENTATIVE,
                    f,
                    f,
                ),
                addr(
                    2,
                    "2001:db8::2",
                    64,
                    rtnl::IFA_F_DADFAILED | rtnl::IFA_F_TENTATIVE,
                    f,
                    f,
                ),
                addr(2, "2001:db8::3", 64, rtnl::IFA_F_DEPRECATED, 0, 60),
                addr(2, "fe80::1", 64, rtnl::IFA_F_PERMANENT, f, f),
                addr(5, "10.0.0.1", 8, rtnl::IFA_F_PERMANENT, f, f),
                addr(8, "10.9.9.9", 32, rtnl::IFA_F_PERMANENT, f, f),
                addr(9, "fe80::9", 64, rtnl::IFA_F_PERMANENT, f, f),
                addr(9, "192.168.9.9", 24, rtnl::IFA_F_PERMANENT, f, f),
            ],
            ipv6_capable: true,
            ipv6_enabled: true,
            routes: vec![
                route(
                    "0.0.0.0",
                    0,
                    Some("192.168.1.1"),
                    2,
                    rtnl::RTPROT_DHCP,
                    Some(100),
                ),
                route("192.168.1.0", 24, None, 2, rtnl::RTPROT_KERNEL, None),
                route(
                    "10.1.0.0",
                    16,
                    Some("10.0.0.2"),
                    5,
                    rtnl::RTPROT_STATIC,
                    None,
                ),
                route("224.0.0.0", 4, None, 2, rtnl::RTPROT_BOOT, None),
                Route {
                    expires: Some(1800),
                    ..route("::", 0, Some("fe80::1"), 2, rtnl::RTPROT_RA, Some(1024))
                },
                route("2001:db8::", 64, None, 2, rtnl::RTPROT_KERNEL, Some(256)),
                route("fe80::", 64, None, 2, rtnl::RTPROT_KERNEL, Some(256)),
                route("ff00::", 8, None, 2, rtnl::RTPROT_KERNEL, Some(256)),
            ],
            dns: vec![
                "192.168.1.1".parse().unwrap(),
                "2001:db8::53".parse().unwrap(),
            ],
            time_synced: true,
            thermal: vec![Thermal {
                zone: 0,
                kind: "cpu-thermal".into(),
                millicelsius: 45_500,
            }],
            processes: vec![Process {
                stat: ProcStat {
                    pid: 42,
                    comm: "cwm pd)".into(),
                    state: 'D',
                    priority: 25,
                    nice: 5,
                    utime: 10,
                    stime: 5,
                    vsize: 0,
                    rss: 10,
                },
                cpu_ms: 150,
                rss_kib: 40,
            }],
            max_tcp_window: Some(6_291_456),
            congestion_control: Some("cubic".into()),
        }
    }

    fn table<'a>(m: &'a [MTable], name: &str) -> &'a MTable {
        m.iter()
            .find(|t| t.table == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn keys(t: &MTable) -> Vec<&str> {
        t.rows.iter().map(|r| r.key.as_str()).collect()
    }

    fn val<'a>(r: &'a MRow, name: &str) -> &'a MVal {
        &r.values
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    }

    fn text<'a>(r: &'a MRow, name: &str) -> &'a str {
        match val(r, name) {
            MVal::Text(s) => s,
            v => panic!("{name}: {v:?}"),
        }
    }

    fn by_addr<'a>(t: &'a MTable, addr: &str) -> &'a MRow {
        t.rows
            .iter()
            .find(|r| text(r, "IPAddress") == addr)
            .unwrap_or_else(|| panic!("no row for {addr}"))
    }

    fn get<'a>(t: &'a MTable, key: &str) -> &'a MRow {
        t.rows
            .iter()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("no row {key}"))
    }

    fn eref(table: &'static str, key: &str) -> MVal {
        MVal::Ref {
            table,
            key: key.into(),
        }
    }

    #[test]
    fn ethernet() {
        let m = mirror(&snapshot(), NOW);
        let ifs = table(&m.tables, ETH_IF);
        assert_eq!(keys(ifs), ["eth0", "eth1", "veth0"]);
        let eth0 = get(ifs, "eth0");
        assert_eq!(text(eth0, "Enable"), "true");
        assert_eq!(text(eth0, "Status"), "Up");
        assert_eq!(text(eth0, "MACAddress"), "02:00:00:00:00:02");
        assert_eq!(text(eth0, "MaxBitRate"), "1000");
        assert_eq!(text(eth0, "CurrentBitRate"), "1000");
        assert_eq!(text(eth0, "DuplexMode"), "Full");
        assert_eq!(text(eth0, "Upstream"), "false");
        assert_eq!(text(eth0, "LowerLayers"), "");
        assert_eq!(text(eth0, "Stats.BytesSent"), "5000");
        assert_eq!(text(eth0, "Stats.UnicastPacketsReceived"), "90");
        assert_eq!(text(eth0, "Stats.MulticastPacketsReceived"), "10");
        assert_eq!(
            text(eth0, "Stats.ErrorsSent"),
            "3",
            "unsignedInt counters wrap"
        );
        assert_eq!(
            eth0.values
                .iter()
                .filter(|(n, _)| n.starts_with("Stats."))
                .count(),
            15
        );
        let eth1 = get(ifs, "eth1");
        assert_eq!(text(eth1, "Enable"), "false");
        assert_eq!(text(eth1, "Status"), "Down");
        assert_eq!(text(eth1, "MaxBitRate"), "-1");
        assert_eq!(text(eth1, "CurrentBitRate"), "0");
        assert_eq!(text(eth1, "DuplexMode"), "Auto");

        let links = table(&m.tables, ETH_LINK);
        assert_eq!(
            keys(links),
            ["eth0", "eth1", "veth0", "br0", "eth0.100", "wlan0"]
        );
        assert_eq!(
            val(get(links, "eth0"), "LowerLayers"),
            &eref(ETH_IF, "eth0")
        );
        assert_eq!(
            val(get(links, "br0"), "LowerLayers"),
            &MVal::RefList(vec![(ETH_LINK, "eth1".into()), (ETH_LINK, "veth0".into())])
        );
        assert_eq!(
            val(get(links, "eth0.100"), "LowerLayers"),
            &eref(ETH_LINK, "eth0")
        );
        assert_eq!(
            val(get(links, "veth0"), "LowerLayers"),
            &eref(ETH_IF, "veth0")
        );
        assert_eq!(text(get(links, "wlan0"), "LowerLayers"), "");
        assert_eq!(text(get(links, "br0"), "MACAddress"), "02:00:00:00:00:05");
    }

    #[test]
    fn ip_interfaces_and_addresses() {
        let m = mirror(&snapshot(), NOW);
        let ip = table(&m.tables, IP_IF);
        // Up or addressed: not eth1 (down, no address); dummy0 (down, but addressed) is.
        assert_eq!(
            keys(ip),
            [
                "lo", "eth0", "veth0", "br0", "eth0.100", "wg0", "dummy0", "wlan0"
            ]
        );
        let lo = get(ip, "lo");
        assert_eq!(text(lo, "Type"), "Loopback");
        assert_eq!(text(lo, "Loopback"), "true");
        assert_eq!(text(lo, "Status"), "Up");
        assert_eq!(text(lo, "LowerLayers"), "");
        assert_eq!(text(lo, "MaxMTUSize"), "65535");
        let lo4 = &lo.children[0];
        assert_eq!((lo4.table, keys(lo4)), ("IPv4Address.", vec!["4#1"]));
        assert_eq!(text(&lo4.rows[0], "IPAddress"), "127.0.0.1");
        assert_eq!(text(&lo4.rows[0], "SubnetMask"), "255.0.0.0");
        assert_eq!(text(&lo4.rows[0], "AddressingType"), "Static");
        assert_eq!(text(&lo.children[1].rows[0], "Origin"), "WellKnown");

        let eth0 = get(ip, "eth0");
        assert_eq!(val(eth0, "LowerLayers"), &eref(ETH_LINK, "eth0"));
        assert_eq!(text(eth0, "Type"), "Normal");
        assert_eq!(text(eth0, "Loopback"), "false");
        assert_eq!(text(eth0, "MaxMTUSize"), "1500");
        assert_eq!(text(eth0, "IPv4Enable"), "true");
        assert_eq!(text(eth0, "IPv6Enable"), "true");
        assert_eq!(text(eth0, "Stats.PacketsReceived"), "100");
        let v4 = &eth0.children[0];
        assert_eq!(keys(v4), ["4#1"], "one row per address");
        let a = &v4.rows[0];
        assert_eq!(text(a, "IPAddress"), "192.168.1.10");
        assert_eq!(text(a, "SubnetMask"), "255.255.255.0");
        assert_eq!(text(a, "AddressingType"), "DHCP");
        assert_eq!((text(a, "Enable"), text(a, "Status")), ("true", "Enabled"));

        let v6 = &eth0.children[1];
        assert_eq!(v6.table, "IPv6Address.");
        assert_eq!(keys(v6), ["6#1", "6#2", "6#3", "6#4", "6#5", "ll#1"]);
        let addrs: Vec<&str> = v6.rows.iter().map(|r| text(r, "IPAddress")).collect();
        assert_eq!(
            addrs,
            [
                "2001:db8::10",
                "2001:db8::99",
                "2001:db8::1",
                "2001:db8::2",
                "2001:db8::3",
                "fe80::1"
            ]
        );
        let slaac = by_addr(v6, "2001:db8::10");
        assert_eq!(text(slaac, "IPAddressStatus"), "Preferred");
        assert_eq!(text(slaac, "Origin"), "AutoConfigured");
        assert_eq!(text(slaac, "PreferredLifetime"), "2023-11-14T22:43:20Z");
        assert_eq!(text(slaac, "ValidLifetime"), "2023-11-14T23:13:20Z");
        assert_eq!(text(slaac, "Prefix"), "");
        assert_eq!(text(slaac, "Anycast"), "false");
        assert_eq!(text(by_addr(v6, "2001:db8::99"), "Origin"), "DHCPv6");
        let st = by_addr(v6, "2001:db8::1");
        assert_eq!(
            (text(st, "IPAddressStatus"), text(st, "Origin")),
            ("Tentative", "Static")
        );
        assert_eq!(text(st, "ValidLifetime"), FOREVER);
        assert_eq!(
            text(by_addr(v6, "2001:db8::2"), "IPAddressStatus"),
            "Duplicate"
        );
        assert_eq!(
            text(by_addr(v6, "2001:db8::3"), "IPAddressStatus"),
            "Deprecated"
        );
        assert_eq!(text(by_addr(v6, "fe80::1"), "Origin"), "WellKnown");

        let wg = get(ip, "wg0");
        assert_eq!(
            (text(wg, "Type"), text(wg, "LowerLayers")),
            ("Tunneled", "")
        );
        assert_eq!(text(wg, "IPv4Enable"), "false");
        assert_eq!(text(get(ip, "dummy0"), "LowerLayers"), "");
        let wlan = get(ip, "wlan0");
        assert_eq!(val(wlan, "LowerLayers"), &eref(ETH_LINK, "wlan0"));
        assert_eq!(text(wlan, "IPv6Enable"), "false", "disable_ipv6");
        assert_eq!(
            val(get(ip, "eth0.100"), "LowerLayers"),
            &eref(ETH_LINK, "eth0.100")
        );

        let v = |n: &str| &m.values.iter().find(|(p, _)| *p == n).unwrap().1;
        assert_eq!(v("Device.IP.IPv6Capable"), &t("true"));
        assert_eq!(v("Device.IP.IPv4Status"), &t("Enabled"));
    }

    #[test]
    fn routing() {
        let m = mirror(&snapshot(), NOW);
        let router = table(&m.tables, "Device.Routing.Router.");
        assert_eq!(keys(router), ["main"]);
        let main = &router.rows[0];
        assert_eq!(text(main, "Status"), "Enabled");
        let v4 = &main.children[0];
        assert_eq!(v4.table, "IPv4Forwarding.");
        assert_eq!(
            keys(v4),
            [
                "default via 192.168.1.1 dev eth0 metric 100",
                "192.168.1.0/24 dev eth0 metric 0",
                "10.1.0.0/16 via 10.0.0.2 dev br0 metric 0",
            ]
        );
        let d = &v4.rows[0];
        assert_eq!(text(d, "DestIPAddress"), "");
        assert_eq!(text(d, "DestSubnetMask"), "");
        assert_eq!(text(d, "GatewayIPAddress"), "192.168.1.1");
        assert_eq!(val(d, "Interface"), &eref(IP_IF, "eth0"));
        assert_eq!(text(d, "Origin"), "DHCPv4");
        assert_eq!(text(d, "StaticRoute"), "false");
        assert_eq!(text(d, "ForwardingMetric"), "100");
        assert_eq!(text(d, "ForwardingPolicy"), "-1");
        let net = &v4.rows[1];
        assert_eq!(text(net, "DestIPAddress"), "192.168.1.0");
        assert_eq!(text(net, "DestSubnetMask"), "255.255.255.0");
        assert_eq!(text(net, "GatewayIPAddress"), "");
        assert_eq!(text(net, "ForwardingMetric"), "-1");
        assert_eq!(text(net, "Origin"), "Static");
        assert_eq!(text(&v4.rows[2], "StaticRoute"), "true");

        let v6 = &main.children[1];
        assert_eq!(v6.table, "IPv6Forwarding.");
        assert_eq!(
            keys(v6),
            [
                "default via fe80::1 dev eth0 metric 1024",
                "2001:db8::/64 dev eth0 metric 256"
            ]
        );
        let d = &v6.rows[0];
        assert_eq!(text(d, "DestIPPrefix"), "");
        assert_eq!(text(d, "NextHop"), "fe80::1");
        assert_eq!(text(d, "Origin"), "RA");
        assert_eq!(text(d, "ExpirationTime"), "2023-11-14T22:43:20Z");
        assert_eq!(val(d, "Interface"), &eref(IP_IF, "eth0"));
        let p = &v6.rows[1];
        assert_eq!(text(p, "DestIPPrefix"), "2001:db8::/64");
        assert_eq!(text(p, "NextHop"), "");
        assert_eq!(text(p, "ExpirationTime"), FOREVER);
        assert_eq!(text(p, "ForwardingMetric"), "256");
    }

    #[test]
    fn dns_time_sensors_processes_netprops() {
        let m = mirror(&snapshot(), NOW);
        let dns = table(&m.tables, "Device.DNS.Client.Server.");
        assert_eq!(keys(dns), ["192.168.1.1", "2001:db8::53"]);
        assert_eq!(text(&dns.rows[1], "DNSServer"), "2001:db8::53");
        assert_eq!(text(&dns.rows[1], "Type"), "Static");
        let v = |n: &str| {
            m.values
                .iter()
                .find(|(p, _)| *p == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(v("Device.DNS.Client.Status"), Some(t("Enabled")));
        assert_eq!(v("Device.Time.Status"), Some(t("Synchronized")));
        let np = "Device.DeviceInfo.NetworkProperties.";
        assert_eq!(v(&format!("{np}MaxTCPWindowSize")), Some(t("6291456")));
        assert_eq!(v(&format!("{np}TCPImplementation")), Some(t("New Reno")));

        let ts = table(
            &m.tables,
            "Device.DeviceInfo.TemperatureStatus.TemperatureSensor.",
        );
        assert_eq!(keys(ts), ["cpu-thermal.0"]);
        assert_eq!(text(&ts.rows[0], "Name"), "cpu-thermal");
        assert_eq!(text(&ts.rows[0], "Value"), "46");
        assert_eq!(text(&ts.rows[0], "LastUpdate"), "2023-11-14T22:13:20Z");

        let ps = table(&m.tables, "Device.DeviceInfo.ProcessStatus.Process.");
        let p = get(ps, "42");
        assert_eq!(text(p, "PID"), "42");
        assert_eq!(text(p, "Command"), "cwm pd)");
        assert_eq!(text(p, "Size"), "40");
        assert_eq!(text(p, "Priority"), "25");
        assert_eq!(text(p, "CPUTime"), "150");
        assert_eq!(text(p, "State"), "Uninterruptible");
    }

    #[test]
    fn only_the_parts_read_are_listed() {
        let mut s = snapshot();
        s.parts = Parts::ROUTES;
        let m = mirror(&s, NOW);
        assert_eq!(m.tables.len(), 1);
        assert_eq!(m.tables[0].table, "Device.Routing.Router.");
        assert!(m.values.is_empty());
        s.parts = Parts::TIME | Parts::DNS;
        s.time_synced = false;
        let m = mirror(&s, NOW);
        let names: Vec<_> = m.tables.iter().map(|t| t.table).collect();
        assert_eq!(names, ["Device.DNS.Client.Server."]);
        assert!(
            m.values
                .contains(&("Device.Time.Status", t("Unsynchronized")))
        );
        assert!(mirror(&Snapshot::default(), NOW).tables.is_empty());
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0).to_string(), "0.0.0.0");
        assert_eq!(netmask(1).to_string(), "128.0.0.0");
        assert_eq!(netmask(23).to_string(), "255.255.254.0");
        assert_eq!(netmask(32).to_string(), "255.255.255.255");
    }
}
