//! The STUN server's hot path: a keep-alive read and answered without allocating.
//!
//! [`parse`] reads the usual TR-111 keep-alive (Binding Request with at most
//! CONNECTION-REQUEST-BINDING, USERNAME, BINDING-CHANGE and a final MESSAGE-INTEGRITY) from the
//! datagram in place; anything else (other attributes, a USERNAME that is not UTF-8 or too long,
//! MESSAGE-INTEGRITY not last, ...) is left to the general codec
//! (`cwmp_proto::connreq::stun`), whose results this module reproduces exactly (see the tests).
//! [`MiKey`] holds the HMAC-SHA1 state after the key (the short-term password), computed once,
//! so that a MESSAGE-INTEGRITY costs the message's blocks only; [`success_into`] writes the
//! Binding Success response into a reused buffer.

use std::net::{IpAddr, SocketAddr};

use cwmp_proto::connreq::stun::{MAGIC_COOKIE, MiLayout};
use cwmp_proto::util::codec::ct_eq;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

const T_MAPPED_ADDRESS: u16 = 0x0001;
const T_USERNAME: u16 = 0x0006;
const T_MESSAGE_INTEGRITY: u16 = 0x0008;
const T_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const T_CRB: u16 = 0xC001;
const T_BINDING_CHANGE: u16 = 0xC002;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
/// Longest USERNAME the general codec takes in RFC 5389 form (`stun_codec`).
const MAX_USERNAME: usize = 512;

/// A keep-alive as [`parse`] read it; borrows the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The 16 header bytes after type and length (magic cookie and transaction id, or the
    /// classic 128-bit transaction id).
    pub header: [u8; 16],
    /// USERNAME, as the general codec gives it (classic form: trailing spaces and NULs, the
    /// padding some CPEs use, removed).
    pub username: Option<&'a str>,
    /// CONNECTION-REQUEST-BINDING's value, if present.
    pub crb: Option<&'a [u8]>,
    pub binding_change: bool,
    /// Offset of MESSAGE-INTEGRITY (always the last attribute here), if present.
    pub mi_offset: Option<usize>,
}

impl Request<'_> {
    /// Whether the request has the RFC 5389 magic cookie.
    pub fn cookie(&self) -> bool {
        has_cookie(&self.header)
    }
}

fn has_cookie(header: &[u8; 16]) -> bool {
    header[..4] == MAGIC_COOKIE.to_be_bytes()
}

/// Reads a keep-alive in place; `None` when the datagram is anything else (which the general
/// codec then handles, or refuses).
pub fn parse(msg: &[u8]) -> Option<Request<'_>> {
    if msg.len() < 20 || msg[0] & 0xC0 != 0 {
        return None;
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != BINDING_REQUEST {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
    if !len.is_multiple_of(4) || len + 20 != msg.len() {
        return None;
    }
    let mut header = [0u8; 16];
    header.copy_from_slice(&msg[4..20]);
    let cookie = has_cookie(&header);
    let mut r = Request {
        header,
        username: None,
        crb: None,
        binding_change: false,
        mi_offset: None,
    };
    let mut i = 20;
    while i < msg.len() {
        if r.mi_offset.is_some() || i + 4 > msg.len() {
            return None;
        }
        let typ = u16::from_be_bytes([msg[i], msg[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([msg[i + 2], msg[i + 3]]));
        let end = i + 4 + alen;
        if end > msg.len() {
            return None;
        }
        let v = &msg[i + 4..end];
        match typ {
            T_CRB if r.crb.is_none() => r.crb = Some(v),
            T_USERNAME if r.username.is_none() && alen <= MAX_USERNAME => {
                let u = std::str::from_utf8(v).ok()?;
                r.username = Some(if cookie {
                    u
                } else {
                    u.trim_end_matches(['\0', ' '])
                });
            }
            T_BINDING_CHANGE if !r.binding_change && alen == 0 => r.binding_change = true,
            T_MESSAGE_INTEGRITY if alen == 20 => r.mi_offset = Some(i),
            _ => return None,
        }
        i = end.div_ceil(4) * 4;
    }
    Some(r)
}

/// A short-term credential's MESSAGE-INTEGRITY key (the password), with the HMAC-SHA1 inner
/// and outer states computed once.
#[derive(Clone)]
pub struct MiKey(Hmac<Sha1>);

impl MiKey {
    pub fn new(password: &[u8]) -> MiKey {
        // HMAC takes keys of any length.
        MiKey(<Hmac<Sha1> as KeyInit>::new_from_slice(password).unwrap_or_else(|_| unreachable!()))
    }

    /// The MESSAGE-INTEGRITY of the message `upto_mi` (everything before the attribute; its
    /// header length is taken as counting the attribute), in `layout`.
    fn mac(&self, upto_mi: &[u8], layout: MiLayout) -> [u8; 20] {
        let mut m = self.0.clone();
        let l = (upto_mi.len() - 20 + 24) as u16;
        m.update(&upto_mi[..2]);
        m.update(&l.to_be_bytes());
        m.update(&upto_mi[4..]);
        if layout == MiLayout::Rfc3489Padded {
            let pad = upto_mi.len().div_ceil(64) * 64 - upto_mi.len();
            m.update(&[0u8; 64][..pad]);
        }
        let mut out = [0u8; 20];
        out.copy_from_slice(&m.finalize().into_bytes());
        out
    }

    /// Checks a request's MESSAGE-INTEGRITY, either layout (the request's form's first); the
    /// layout it was valid in, or `None`.
    pub fn check(&self, msg: &[u8], req: &Request<'_>) -> Option<MiLayout> {
        let off = req.mi_offset?;
        let got = msg.get(off + 4..off + 24)?;
        let layouts = if req.cookie() {
            [MiLayout::Rfc5389, MiLayout::Rfc3489Padded]
        } else {
            [MiLayout::Rfc3489Padded, MiLayout::Rfc5389]
        };
        layouts
            .into_iter()
            .find(|&l| ct_eq(&self.mac(&msg[..off], l), got))
    }
}

fn push_addr(buf: &mut Vec<u8>, typ: u16, addr: SocketAddr, xor_with: Option<&[u8; 16]>) {
    let (fam, n) = match addr.ip() {
        IpAddr::V4(_) => (1u8, 4usize),
        IpAddr::V6(_) => (2, 16),
    };
    buf.extend_from_slice(&typ.to_be_bytes());
    buf.extend_from_slice(&(4 + n as u16).to_be_bytes());
    let mut port = addr.port();
    let mut ip = [0u8; 16];
    match addr.ip() {
        IpAddr::V4(a) => ip[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => ip.copy_from_slice(&a.octets()),
    }
    if let Some(h) = xor_with {
        port ^= u16::from_be_bytes([h[0], h[1]]);
        for (b, k) in ip.iter_mut().zip(h) {
            *b ^= k;
        }
    }
    buf.extend_from_slice(&[0, fam]);
    buf.extend_from_slice(&port.to_be_bytes());
    buf.extend_from_slice(&ip[..n]);
}

/// Writes into `buf` (cleared first) the Binding Success response to a request with these
/// header bytes from `source`, in the request's form: RFC 5389 → XOR-MAPPED-ADDRESS and
/// MAPPED-ADDRESS; classic → MAPPED-ADDRESS; with `integrity`, MESSAGE-INTEGRITY last. The same
/// bytes as `stun::binding_success`.
pub fn success_into(
    buf: &mut Vec<u8>,
    header: &[u8; 16],
    source: SocketAddr,
    integrity: Option<(&MiKey, MiLayout)>,
) {
    buf.clear();
    buf.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(header);
    if has_cookie(header) {
        push_addr(buf, T_XOR_MAPPED_ADDRESS, source, Some(header));
    }
    push_addr(buf, T_MAPPED_ADDRESS, source, None);
    if let Some((key, layout)) = integrity {
        let mac = key.mac(buf, layout);
        buf.extend_from_slice(&T_MESSAGE_INTEGRITY.to_be_bytes());
        buf.extend_from_slice(&20u16.to_be_bytes());
        buf.extend_from_slice(&mac);
    }
    let l = (buf.len() - 20) as u16;
    buf[2..4].copy_from_slice(&l.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use cwmp_proto::connreq::stun::{self, Integrity, TxId};

    /// What the general codec makes of a request, in this module's terms.
    fn reference(msg: &[u8]) -> Option<(Option<String>, bool, bool, bool)> {
        let r = stun::parse_binding_request(msg).ok()?;
        Some((
            r.username,
            r.connection_request_binding,
            r.binding_change,
            r.has_integrity,
        ))
    }

    fn requests() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let users = [
            None,
            Some("stb-00000001"),
            Some("abc"),
            Some("ab "),
            Some("naïve-cpe"),
        ];
        let mut n = 0u8;
        for classic in [true, false] {
            for user in users {
                for pw in [Some("stun pw"), Some(""), None] {
                    for bc in [false, true] {
                        for layout in [MiLayout::Rfc3489Padded, MiLayout::Rfc5389] {
                            n = n.wrapping_add(1);
                            let txid = if classic {
                                TxId::Classic([n; 16])
                            } else {
                                TxId::Rfc5389([n; 12])
                            };
                            let req = stun::BindingRequest {
                                username: user,
                                password: pw,
                                binding_change: bc,
                                mi_layout: layout,
                                ..stun::BindingRequest::new(txid)
                            };
                            out.push(req.encode().unwrap());
                            let ra = stun::BindingRequest {
                                response_address: Some("127.0.0.1:9".parse().unwrap()),
                                ..req
                            };
                            out.push(ra.encode().unwrap());
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn parse_agrees_with_the_general_codec_or_leaves_it_to_it() {
        let mut fast = 0;
        let mut variants = requests();
        // Hand-made ones: a classic USERNAME padded with NULs, a non-UTF-8 USERNAME, an
        // attribute after MESSAGE-INTEGRITY, an unknown required attribute, a short MI.
        let attr = |t: u16, v: &[u8]| {
            let mut a = t.to_be_bytes().to_vec();
            a.extend_from_slice(&(v.len() as u16).to_be_bytes());
            a.extend_from_slice(v);
            while !a.len().is_multiple_of(4) {
                a.push(0);
            }
            a
        };
        for (cookie, attrs) in [
            (false, vec![attr(T_USERNAME, b"cpe\0\0\0\0\0")]),
            (true, vec![attr(T_USERNAME, b"cpe \0")]),
            (false, vec![attr(T_USERNAME, &[0xff, 0xfe])]),
            (true, vec![attr(T_USERNAME, &[0xff, 0xfe])]),
            (true, vec![attr(T_USERNAME, &[b'x'; 600])]),
            (
                false,
                vec![attr(T_MESSAGE_INTEGRITY, &[0; 20]), attr(T_CRB, b"x")],
            ),
            (true, vec![attr(0x0003, &[0; 4])]),
            (false, vec![attr(T_MESSAGE_INTEGRITY, &[0; 16])]),
            (true, vec![attr(T_CRB, b"a"), attr(T_CRB, b"b")]),
            (false, vec![attr(T_BINDING_CHANGE, b"1234")]),
        ] {
            let mut m = vec![0, 1, 0, 0];
            m.extend_from_slice(&if cookie {
                TxId::Rfc5389([7; 12]).header_bytes()
            } else {
                [7; 16]
            });
            for a in attrs {
                m.extend_from_slice(&a);
            }
            let l = (m.len() - 20) as u16;
            m[2..4].copy_from_slice(&l.to_be_bytes());
            variants.push(m);
        }
        let key = MiKey::new(b"stun pw");
        for m in &variants {
            let Some(r) = parse(m) else { continue };
            fast += 1;
            let want = reference(m).expect("the general codec reads it too");
            let got = (
                r.username.map(str::to_owned),
                r.crb.is_some(),
                r.binding_change,
                r.mi_offset.is_some(),
            );
            assert_eq!(got, want, "{m:02x?}");
            let want_mi = match stun::check_integrity(m, b"stun pw") {
                Integrity::Valid(l) => Some(l),
                _ => None,
            };
            assert_eq!(key.check(m, &r), want_mi, "{m:02x?}");
        }
        assert!(fast >= requests().len() / 2, "{fast}");
        // Left to the general codec: not a request, a response, truncated.
        let ok = &requests()[10];
        assert!(parse(&ok[..ok.len() - 4]).is_none());
        assert!(parse(b"GET /x HTTP/1.1\r\n\r\n").is_none());
        let mut resp = ok.clone();
        resp[1] = 0x01;
        resp[0] = 0x01;
        assert!(parse(&resp).is_none());
    }

    #[test]
    fn a_wrong_password_or_a_flipped_bit_fails_the_check() {
        let m =
            stun::binding_request(TxId::Classic([3; 16]), Some("u"), Some("pw"), false).unwrap();
        let r = parse(&m).unwrap();
        assert_eq!(
            MiKey::new(b"pw").check(&m, &r),
            Some(MiLayout::Rfc3489Padded)
        );
        assert_eq!(MiKey::new(b"pW").check(&m, &r), None);
        let mut bad = m.clone();
        bad[25] ^= 1;
        let r = parse(&bad).unwrap();
        assert_eq!(MiKey::new(b"pw").check(&bad, &r), None);
    }

    #[test]
    fn success_is_byte_for_byte_the_general_codec_s() {
        let key = MiKey::new(b"stun pw");
        let mut buf = Vec::new();
        for txid in [TxId::Classic([0x5a; 16]), TxId::Rfc5389([0xa5; 12])] {
            for src in ["192.0.2.7:40000", "[2001:db8::1:2]:7547"] {
                let src: SocketAddr = src.parse().unwrap();
                for integ in [None, Some(MiLayout::Rfc3489Padded), Some(MiLayout::Rfc5389)] {
                    let want =
                        stun::binding_success(&txid, src, integ.map(|l| (&b"stun pw"[..], l)))
                            .unwrap();
                    success_into(
                        &mut buf,
                        &txid.header_bytes(),
                        src,
                        integ.map(|l| (&key, l)),
                    );
                    assert_eq!(buf, want, "{txid:?} {src} {integ:?}");
                }
            }
        }
    }
}
