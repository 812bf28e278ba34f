//! DNS SRV lookup for XMPP server discovery (RFC 6120 §3.2.1: `_xmpp-client._tcp.<domain>`),
//! with no IO: the query, the response (name compression included, bounded), the RFC 2782
//! order of the targets, and the nameservers of `/etc/resolv.conf`. The driver sends the query
//! over UDP.

use std::fmt;
use std::net::IpAddr;

/// Largest response read over UDP (EDNS is not used: 512 would do; some resolvers send more).
pub const MAX_RESPONSE: usize = 4096;
/// Most SRV records taken from one response.
pub const MAX_RECORDS: usize = 32;

const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Target host name, without the trailing dot ("." stays ".").
    pub target: String,
}

/// What a response says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SrvAnswer {
    /// SRV records (possibly a single "." target: the service is not available).
    Records(Vec<SrvRecord>),
    /// The name exists without SRV records, or does not exist (NXDOMAIN).
    NoRecords,
}

/// Why a response is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// Not the answer to our query (id, flags or question differ): ignore and wait on.
    NotOurs,
    /// The server failed (RCODE) or truncated the answer.
    Server(String),
    /// The packet is malformed.
    Malformed(&'static str),
    /// The name cannot be queried.
    BadName,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NotOurs => f.write_str("response to another query"),
            DnsError::Server(w) => write!(f, "DNS server: {w}"),
            DnsError::Malformed(w) => write!(f, "malformed DNS response: {w}"),
            DnsError::BadName => f.write_str("name cannot be queried"),
        }
    }
}

impl std::error::Error for DnsError {}

/// The SRV name for XMPP clients of `domain`.
pub fn xmpp_client_name(domain: &str) -> String {
    format!("_xmpp-client._tcp.{}", domain.trim_end_matches('.'))
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Err(DnsError::BadName);
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() {
            return Err(DnsError::BadName);
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// A recursive SRV query for `name` with transaction `id`.
pub fn build_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT 1
    encode_name(name, &mut q)?;
    q.extend_from_slice(&TYPE_SRV.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

struct Rd<'a> {
    p: &'a [u8],
    pos: usize,
}

impl Rd<'_> {
    fn u8(&mut self) -> Result<u8, DnsError> {
        let v = *self.p.get(self.pos).ok_or(DnsError::Malformed("short"))?;
        self.pos += 1;
        Ok(v)
    }
    fn u16(&mut self) -> Result<u16, DnsError> {
        Ok((u16::from(self.u8()?) << 8) | u16::from(self.u8()?))
    }
    fn skip(&mut self, n: usize) -> Result<(), DnsError> {
        if self.pos + n > self.p.len() {
            return Err(DnsError::Malformed("short"));
        }
        self.pos += n;
        Ok(())
    }
    /// A possibly compressed name, lower-cased, without the trailing dot ("" for the root).
    fn name(&mut self) -> Result<String, DnsError> {
        let mut out = String::new();
        let mut at = self.pos;
        let mut jumped = false;
        let mut hops = 0;
        loop {
            let len = *self.p.get(at).ok_or(DnsError::Malformed("short name"))?;
            match len & 0xc0 {
                0xc0 => {
                    let lo = *self
                        .p
                        .get(at + 1)
                        .ok_or(DnsError::Malformed("short name"))?;
                    if !jumped {
                        self.pos = at + 2;
                        jumped = true;
                    }
                    hops += 1;
                    if hops > 32 {
                        return Err(DnsError::Malformed("compression loop"));
                    }
                    at = (usize::from(len & 0x3f) << 8) | usize::from(lo);
                }
                0x00 => {
                    if len == 0 {
                        if !jumped {
                            self.pos = at + 1;
                        }
                        return Ok(out);
                    }
                    let l = usize::from(len);
                    let label = self
                        .p
                        .get(at + 1..at + 1 + l)
                        .ok_or(DnsError::Malformed("short label"))?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    for &b in label {
                        if b.is_ascii_graphic() && b != b'.' {
                            out.push(b.to_ascii_lowercase() as char);
                        } else {
                            return Err(DnsError::Malformed("odd character in name"));
                        }
                    }
                    if out.len() > 253 {
                        return Err(DnsError::Malformed("name too long"));
                    }
                    at += 1 + l;
                }
                _ => return Err(DnsError::Malformed("label type")),
            }
        }
    }
}

/// Reads the response to [`build_query`]`(id, name)`.
pub fn parse_response(id: u16, name: &str, packet: &[u8]) -> Result<SrvAnswer, DnsError> {
    if packet.len() > MAX_RESPONSE {
        return Err(DnsError::Malformed("too large"));
    }
    let mut r = Rd { p: packet, pos: 0 };
    if r.u16()? != id {
        return Err(DnsError::NotOurs);
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 || (flags >> 11) & 0xf != 0 {
        return Err(DnsError::NotOurs);
    }
    let (qd, an) = (r.u16()?, r.u16()?);
    r.skip(4)?;
    if qd != 1 {
        return Err(DnsError::NotOurs);
    }
    let qname = r.name()?;
    let (qtype, qclass) = (r.u16()?, r.u16()?);
    let want = name.trim_end_matches('.').to_ascii_lowercase();
    if qname != want || qtype != TYPE_SRV || qclass != CLASS_IN {
        return Err(DnsError::NotOurs);
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::Server("truncated answer".into()));
    }
    match flags & 0xf {
        0 => {}
        3 => return Ok(SrvAnswer::NoRecords),
        rc => return Err(DnsError::Server(format!("RCODE {rc}"))),
    }
    let mut records = Vec::new();
    for _ in 0..an {
        let _owner = r.name()?;
        let (ty, class) = (r.u16()?, r.u16()?);
        r.skip(4)?; // TTL
        let len = usize::from(r.u16()?);
        let end = r.pos + len;
        if end > packet.len() {
            return Err(DnsError::Malformed("short record"));
        }
        if ty == TYPE_SRV && class == CLASS_IN && records.len() < MAX_RECORDS {
            let (priority, weight, port) = (r.u16()?, r.u16()?, r.u16()?);
            let target = r.name()?;
            if r.pos != end {
                return Err(DnsError::Malformed("SRV length"));
            }
            records.push(SrvRecord {
                priority,
                weight,
                port,
                target: if target.is_empty() {
                    ".".into()
                } else {
                    target
                },
            });
        }
        // CNAMEs and the rest: skipped (the resolver follows CNAMEs for us).
        r.pos = end;
    }
    if records.is_empty() {
        Ok(SrvAnswer::NoRecords)
    } else {
        Ok(SrvAnswer::Records(records))
    }
}

/// The order to try the targets in (RFC 2782): by priority, equal priorities in weighted
/// random order (weight 0 rarely first). None when the service is decidedly not available (a
/// single "." target).
pub fn order(
    mut records: Vec<SrvRecord>,
    mut rand: impl FnMut() -> u32,
) -> Option<Vec<(String, u16)>> {
    if records.len() == 1 && records[0].target == "." {
        return None;
    }
    records.retain(|r| r.target != ".");
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut i = 0;
    while i < records.len() {
        let p = records[i].priority;
        let mut group: Vec<SrvRecord> = records[i..]
            .iter()
            .take_while(|r| r.priority == p)
            .cloned()
            .collect();
        i += group.len();
        // Zero weights first, as RFC 2782 asks, so they get a small chance.
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = if total == 0 {
                0
            } else {
                let x = rand() % (total + 1);
                let mut run = 0;
                group
                    .iter()
                    .position(|r| {
                        run += u32::from(r.weight);
                        run >= x
                    })
                    .unwrap_or(0)
            };
            let r = group.remove(pick);
            out.push((r.target, r.port));
        }
    }
    Some(out)
}

/// The nameservers of a `resolv.conf` (at most 3, as the C library takes).
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.split('%').next())
                .and_then(|a| a.parse().ok())
        })
        .take(3)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "_xmpp-client._tcp.example.net";

    /// A response as a resolver sends it: the question, then answers whose names point back
    /// into it (compression).
    fn response(id: u16, rcode: u8, answers: &[(u16, u16, u16, &str)]) -> Vec<u8> {
        let mut p = build_query(id, NAME).unwrap();
        p[2] = 0x81;
        p[3] = 0x80 | rcode;
        p[7] = answers.len() as u8;
        for (prio, w, port, target) in answers {
            p.extend_from_slice(&[0xc0, 12]); // owner: the question name
            p.extend_from_slice(&[0, 33, 0, 1, 0, 0, 0x0e, 0x10]);
            let mut rdata = Vec::new();
            rdata.extend_from_slice(&prio.to_be_bytes());
            rdata.extend_from_slice(&w.to_be_bytes());
            rdata.extend_from_slice(&port.to_be_bytes());
            if *target == "." {
                rdata.push(0);
            } else if let Some(host) = target.strip_suffix(".example.net") {
                // host + pointer to "example.net" inside the question (offset 12 + 13 + 5).
                rdata.push(host.len() as u8);
                rdata.extend_from_slice(host.as_bytes());
                rdata.extend_from_slice(&[0xc0, 12 + 13 + 5]);
            } else {
                encode_name(target, &mut rdata).unwrap();
            }
            p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            p.extend_from_slice(&rdata);
        }
        p
    }

    #[test]
    fn query_shape() {
        let q = build_query(0xbeef, "_xmpp-client._tcp.Example.NET.").unwrap();
        assert_eq!(&q[..12], &[0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(q[12], 12);
        assert_eq!(&q[13..25], b"_xmpp-client");
        assert_eq!(&q[q.len() - 4..], &[0, 33, 0, 1]);
        assert_eq!(build_query(1, ""), Err(DnsError::BadName));
        assert_eq!(build_query(1, "a..b"), Err(DnsError::BadName));
        assert_eq!(build_query(1, &"x".repeat(64)), Err(DnsError::BadName));
    }

    #[test]
    fn parses_compressed_answers() {
        let p = response(
            7,
            0,
            &[
                (10, 5, 5222, "xmpp1.example.net"),
                (20, 0, 5223, "other.org"),
            ],
        );
        let SrvAnswer::Records(r) = parse_response(7, NAME, &p).unwrap() else {
            panic!()
        };
        assert_eq!(
            r,
            vec![
                SrvRecord {
                    priority: 10,
                    weight: 5,
                    port: 5222,
                    target: "xmpp1.example.net".into()
                },
                SrvRecord {
                    priority: 20,
                    weight: 0,
                    port: 5223,
                    target: "other.org".into()
                },
            ]
        );
        assert_eq!(parse_response(8, NAME, &p), Err(DnsError::NotOurs));
        assert_eq!(
            parse_response(7, "_xmpp-client._tcp.other", &p),
            Err(DnsError::NotOurs)
        );
        assert_eq!(
            parse_response(7, NAME, &response(7, 3, &[])),
            Ok(SrvAnswer::NoRecords)
        );
        assert_eq!(
            parse_response(7, NAME, &response(7, 0, &[])),
            Ok(SrvAnswer::NoRecords)
        );
        assert!(matches!(
            parse_response(7, NAME, &response(7, 2, &[])),
            Err(DnsError::Server(_))
        ));
        // Every truncation is an error, never a panic.
        for n in 0..p.len() {
            assert!(parse_response(7, NAME, &p[..n]).is_err(), "{n}");
        }
        // A compression loop.
        let mut l = response(7, 0, &[(1, 1, 1, "x.example.net")]);
        let at = l.len() - 2;
        l[at] = 0xc0;
        l[at + 1] = at as u8;
        assert!(matches!(
            parse_response(7, NAME, &l),
            Err(DnsError::Malformed(_))
        ));
    }

    #[test]
    fn rfc2782_order() {
        let rec = |p, w, t: &str| SrvRecord {
            priority: p,
            weight: w,
            port: 5222,
            target: t.into(),
        };
        let rs = vec![rec(20, 0, "c"), rec(10, 1, "a"), rec(10, 1000, "b")];
        let mut seen_b_first = 0;
        let mut x = 0u32;
        for _ in 0..100 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let v = x;
            let o = order(rs.clone(), || v >> 8).unwrap();
            assert_eq!(o.len(), 3);
            assert_eq!(o[2].0, "c");
            if o[0].0 == "b" {
                seen_b_first += 1;
            }
        }
        assert!(seen_b_first > 90, "{seen_b_first}");
        assert_eq!(order(vec![rec(0, 0, ".")], || 0), None);
    }

    #[test]
    fn resolv_conf() {
        let c = "# x\nsearch lan\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver bad\n\
                 nameserver ::1\nnameserver 1.1.1.1\n";
        let n = nameservers(c);
        assert_eq!(n.len(), 3);
        assert_eq!(n[0].to_string(), "10.0.0.1");
        assert_eq!(n[1].to_string(), "fe80::1");
    }
}
