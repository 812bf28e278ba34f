//! The UDP Lightweight Notification of TR-069 Annex M (CWMP 1.4): the message (BBF
//! `cwmp-UDPLightweightNotification-1-0.xsd`, root `Notification` in namespace
//! `urn:broadband-forum-org:cwmp:lwnotif-1-0`), its framing in one UDP datagram, the signature
//! and the trigger-time arithmetic of `LightweightNotificationTriggerInterval` / `…TriggerTime`.
//! No IO: the driver reads the values and the clock and sends what [`build`] returns.
//!
//! The datagram is an HTTP/1.1 POST request in one UDP payload, the way Annex G carries the UDP
//! connection request as an HTTP GET:
//!
//! ```text
//! POST / HTTP/1.1\r\n
//! Host: <UDPLightweightNotificationHost>:<Port>\r\n
//! Content-Type: text/xml; charset=utf-8\r\n
//! Content-Length: <body bytes>\r\n
//! Signature: <40 upper-case hex digits>\r\n
//! \r\n
//! <?xml version="1.0" encoding="UTF-8"?><Notification xmlns="urn:…lwnotif-1-0">…</Notification>
//! ```
//!
//! `Signature` is HMAC-SHA1 over the body bytes, keyed with `ManagementServer.Password` — the
//! password paired with the `UN` element (`ManagementServer.Username`) the schema puts in the
//! message, so the ACS checks it with the credentials it already holds for the CPE. The schema
//! itself carries no signature element; the header, its name and the key follow the one
//! open-source agent that implements Annex M (icwmp) [the Annex M text was not available to
//! check]. `TS` (Unix seconds) and `CN` (a fresh random cnonce per datagram) let the ACS refuse
//! a replay.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// The message namespace (the schema's targetNamespace).
pub const NAMESPACE: &str = "urn:broadband-forum-org:cwmp:lwnotif-1-0";

/// The destination port when the CPE has no `UDPLightweightNotificationPort` (TR-181).
pub const DEFAULT_PORT: u16 = 7547;

/// Largest datagram, headers included: fits an Ethernet MTU with IPv6 and tunnel headers, so
/// a datagram is never fragmented (a lost fragment loses the whole message).
pub const MAX_DATAGRAM: usize = 1400;

/// Largest datagram for one parameter whose value does not fit [`MAX_DATAGRAM`]: sent alone
/// (IP fragments); a larger one is not sent (counted by the caller).
pub const MAX_SINGLE_DATAGRAM: usize = 16 * 1024;

/// The message header values (schema elements `TS` … `SerialNumber`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Unix seconds when the message is made (`TS`, xs:int).
    pub ts: i64,
    /// `ManagementServer.Username` (`UN`, at most 256 characters).
    pub username: &'a str,
    /// `DeviceInfo.ManufacturerOUI` (six upper-case hex digits).
    pub oui: &'a str,
    /// `DeviceInfo.ProductClass` (at most 64 characters).
    pub product_class: &'a str,
    /// `DeviceInfo.SerialNumber` (at most 64 characters).
    pub serial_number: &'a str,
    /// The HTTP `Host` header: destination host and port.
    pub host: &'a str,
}

/// What [`build`] made of the pending parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Built {
    /// The datagrams, each a complete signed message.
    pub datagrams: Vec<Vec<u8>>,
    /// How many of the parameters (from the front) were dealt with: sent or too large. The
    /// rest did not fit the byte budget and stay pending.
    pub consumed: usize,
    /// Parameters (indexes) too large even for [`MAX_SINGLE_DATAGRAM`]: not sent.
    pub too_large: Vec<usize>,
}

/// Builds the datagrams carrying `params` (name, value), packed in order, each at most
/// [`MAX_DATAGRAM`] bytes (one oversize parameter alone up to [`MAX_SINGLE_DATAGRAM`]), all
/// together at most `budget` bytes (at least one datagram is made). `cnonce` gives each
/// datagram's `CN`; `password` keys the signature.
pub fn build(
    h: &Header<'_>,
    params: &[(&str, &str)],
    password: &[u8],
    budget: usize,
    cnonce: &mut dyn FnMut() -> String,
) -> Built {
    let mut out = Built::default();
    let mut total = 0usize;
    // The framing without the body: the headers with a 5-digit Content-Length.
    let head_len = framing(h.host, 10_000, "").len() + 40;
    let mut frags: Vec<String> = Vec::new();
    let mut cur_len = 0usize;
    let mut cn = cnonce();
    let mut prefix = body_prefix(h, &cn);
    const SUFFIX: &str = "</Notification>";
    let flush = |frags: &mut Vec<String>, prefix: &str, out: &mut Built, total: &mut usize| {
        if frags.is_empty() {
            return;
        }
        let mut body = String::with_capacity(prefix.len() + SUFFIX.len() + 64);
        body.push_str(prefix);
        for f in frags.drain(..) {
            body.push_str(&f);
        }
        body.push_str(SUFFIX);
        let d = datagram(h.host, &body, password);
        *total += d.len();
        out.datagrams.push(d);
    };
    for (i, (name, value)) in params.iter().enumerate() {
        let mut f = String::with_capacity(name.len() + value.len() + 40);
        f.push_str("<Param><Name>");
        escape_into(&mut f, name);
        f.push_str("</Name><Value>");
        escape_into(&mut f, value);
        f.push_str("</Value></Param>");
        let alone = head_len + prefix.len() + f.len() + SUFFIX.len();
        if alone > MAX_SINGLE_DATAGRAM {
            out.too_large.push(i);
            out.consumed = i + 1;
            continue;
        }
        let with = head_len + prefix.len() + cur_len + f.len() + SUFFIX.len();
        if !frags.is_empty() && with > MAX_DATAGRAM {
            flush(&mut frags, &prefix, &mut out, &mut total);
            cur_len = 0;
            cn = cnonce();
            prefix = body_prefix(h, &cn);
        }
        // Over the budget: what is left waits (never before the first datagram).
        if (!out.datagrams.is_empty() || !frags.is_empty()) && total + with.min(alone) > budget {
            break;
        }
        cur_len += f.len();
        frags.push(f);
        out.consumed = i + 1;
    }
    flush(&mut frags, &prefix, &mut out, &mut total);
    out
}

/// HMAC-SHA1(key = `password`, `body`) in upper-case hex: the `Signature` header.
pub fn signature(password: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut m =
        <Hmac<Sha1> as KeyInit>::new_from_slice(password).unwrap_or_else(|_| unreachable!());
    m.update(body);
    crate::util::codec::to_hex(&m.finalize().into_bytes()).to_ascii_uppercase()
}

/// The next trigger of passive lightweight notifications strictly after `now` (Unix seconds):
/// `phase` plus or minus a whole number of `interval`s (TR-181 `LightweightNotificationTrigger
/// Time` sets only the phase and may lie in the past or the future). None when the interval
/// is 0 (passive ones then go out only with an active one).
pub fn next_trigger(now: i64, interval: u32, phase: i64) -> Option<i64> {
    if interval == 0 {
        return None;
    }
    let i = i64::from(interval);
    let since = (now - phase).rem_euclid(i);
    Some(now - since + i)
}

fn body_prefix(h: &Header<'_>, cn: &str) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Notification xmlns=\"");
    s.push_str(NAMESPACE);
    s.push_str("\"><TS>");
    // xs:int: a clock past 2038 (or before 1970) is clamped rather than made invalid.
    s.push_str(&h.ts.clamp(0, i64::from(i32::MAX)).to_string());
    s.push_str("</TS><UN>");
    escape_into(&mut s, truncate_chars(h.username, 256));
    s.push_str("</UN><CN>");
    escape_into(&mut s, cn);
    s.push_str("</CN><OUI>");
    escape_into(&mut s, &oui(h.oui));
    s.push_str("</OUI><ProductClass>");
    escape_into(&mut s, truncate_chars(h.product_class, 64));
    s.push_str("</ProductClass><SerialNumber>");
    escape_into(&mut s, truncate_chars(h.serial_number, 64));
    s.push_str("</SerialNumber>");
    s
}

/// The OUI as the schema wants it: six upper-case hex digits (`000000` when the device has
/// none that fits).
fn oui(s: &str) -> String {
    let u = s.trim().to_ascii_uppercase();
    if u.len() == 6 && u.bytes().all(|b| b.is_ascii_hexdigit()) {
        u
    } else {
        "000000".into()
    }
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn framing(host: &str, body_len: usize, sig: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {body_len}\r\nSignature: {sig}\r\n\r\n"
    )
}

fn datagram(host: &str, body: &str, password: &[u8]) -> Vec<u8> {
    let sig = signature(password, body.as_bytes());
    let mut d = framing(host, body.len(), &sig).into_bytes();
    d.extend_from_slice(body.as_bytes());
    d
}

/// Escapes element text; characters XML 1.0 cannot carry become U+FFFD.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            '\u{0}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}' => out.push('\u{FFFD}'),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> Header<'static> {
        Header {
            ts: 1_700_000_000,
            username: "cpe",
            oui: "00d09e",
            product_class: "STB",
            serial_number: "SN<1>",
            host: "192.0.2.1:7547",
        }
    }

    fn split(d: &[u8]) -> (String, String) {
        let s = String::from_utf8(d.to_vec()).unwrap();
        let (h, b) = s.split_once("\r\n\r\n").unwrap();
        (h.to_string(), b.to_string())
    }

    #[test]
    fn one_message_with_header_signature_and_escaped_values() {
        let mut n = 0;
        let b = build(
            &hdr(),
            &[("Device.A", "x&y"), ("Device.B", "<\u{1}>")],
            b"pw",
            usize::MAX,
            &mut || {
                n += 1;
                format!("cn{n}")
            },
        );
        assert_eq!((b.datagrams.len(), b.consumed), (1, 2));
        let (head, body) = split(&b.datagrams[0]);
        assert!(
            head.starts_with("POST / HTTP/1.1\r\nHost: 192.0.2.1:7547\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(head.ends_with(&format!("Signature: {}", signature(b"pw", body.as_bytes()))));
        assert!(body.contains("<TS>1700000000</TS><UN>cpe</UN><CN>cn1</CN><OUI>00D09E</OUI>"));
        assert!(body.contains("<SerialNumber>SN&lt;1&gt;</SerialNumber>"));
        assert!(body.contains("<Param><Name>Device.A</Name><Value>x&amp;y</Value></Param>"));
        assert!(body.contains("<Value>&lt;\u{FFFD}&gt;</Value>"));
        assert!(body.ends_with("</Notification>"));
    }

    /// RFC 2202 test case 2 (HMAC-SHA1, key "Jefe").
    #[test]
    fn signature_is_hmac_sha1_upper_hex() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "EFFCDF6AE5EB2FA2D27416D5F184DF9C259A7C79"
        );
    }

    #[test]
    fn large_batches_split_at_the_datagram_size_and_stop_at_the_budget() {
        let names: Vec<String> = (0..60).map(|i| format!("Device.X.{i}.Value")).collect();
        let vals = "v".repeat(100);
        let ps: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), vals.as_str())).collect();
        let b = build(&hdr(), &ps, b"k", usize::MAX, &mut || "c".into());
        assert_eq!(b.consumed, 60);
        assert!(b.datagrams.len() > 1);
        assert!(b.datagrams.iter().all(|d| d.len() <= MAX_DATAGRAM));
        let params: usize = b
            .datagrams
            .iter()
            .map(|d| split(d).1.matches("<Param>").count())
            .sum();
        assert_eq!(params, 60);
        // A budget of about two datagrams: the rest stays pending.
        let c = build(&hdr(), &ps, b"k", 2 * MAX_DATAGRAM, &mut || "c".into());
        assert!(c.consumed < 60 && c.consumed > 0, "{}", c.consumed);
        assert!(c.datagrams.iter().map(Vec::len).sum::<usize>() <= 2 * MAX_DATAGRAM);
    }

    #[test]
    fn oversize_values_go_alone_or_not_at_all() {
        let big = "b".repeat(4000);
        let huge = "h".repeat(MAX_SINGLE_DATAGRAM);
        let ps = [
            ("Device.A", "a"),
            ("Device.Big", big.as_str()),
            ("Device.Huge", huge.as_str()),
        ];
        let b = build(&hdr(), &ps, b"k", usize::MAX, &mut || "c".into());
        assert_eq!(b.consumed, 3);
        assert_eq!(b.too_large, [2]);
        assert_eq!(b.datagrams.len(), 2);
        assert!(b.datagrams[1].len() > MAX_DATAGRAM);
    }

    #[test]
    fn triggers_keep_the_phase_of_the_trigger_time() {
        assert_eq!(next_trigger(1000, 0, 0), None);
        assert_eq!(next_trigger(1000, 60, 0), Some(1020));
        assert_eq!(next_trigger(1020, 60, 0), Some(1080));
        // A phase in the future or the past gives the same grid.
        assert_eq!(next_trigger(1000, 60, 60_010), Some(1030));
        assert_eq!(next_trigger(1000, 60, -50), Some(1030));
        assert_eq!(next_trigger(1030, 60, -50), Some(1090));
    }
}
