//! TR-111 / TR-069 Annex G UDP connection request messages: building the
//! datagram (ACS side, for `cwmp-connreq`) and parsing plus validating it on
//! the CPE (signature, username, replay state). Pure code: no I/O, no clocks.
//!
//! Wire format (one datagram, no body):
//!
//! ```text
//! GET http://host:port?ts=<unix s>&id=<n>&un=<user>&cn=<cnonce>&sig=<40 hex> HTTP/1.1\r\n
//! Host: host:port\r\n
//! \r\n
//! ```
//!
//! `sig` = hex(HMAC-SHA1(key = ConnectionRequestPassword, ts ‖ id ‖ un ‖ cn)).
//!
//! Replay protection (SPEC-NOTES §c.3, with its correction): a request is accepted only if its
//! `ts` is not older than the latest accepted `ts` and its `id` was not accepted at that `ts`
//! (every id accepted at the latest `ts` is remembered, not only the last one, so an older id
//! cannot be replayed within the same second). The state is small ([`Validator::encode_state`])
//! and meant to be persisted, so that a captured datagram is not accepted again after a restart.
//! When the local clock is synchronised ([`clock_synchronised`]), `ts` must also lie within
//! [`CLOCK_WINDOW_S`] of it ([`Validator::check_at`]).

use crate::util::codec::{ct_eq, hex_val, to_hex};
use std::fmt;
use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// Largest datagram accepted as a UDP connection request.
pub const MAX_DATAGRAM: usize = 1024;
/// How many distinct ids accepted within the same second are remembered.
pub const MAX_IDS_PER_SECOND: usize = 16;
/// Largest `|ts - now|`, in seconds, accepted while the local clock is synchronised.
///
/// Five minutes: an ACS stamps `ts` when it sends the request (GenieACS sends it three times at
/// once), so with both clocks on NTP the difference is the network delay plus the clock error,
/// well below a second. The window is a second line of defence behind the persisted replay
/// state: after that state is lost (a new device, a corrupt file) a captured datagram is useless
/// five minutes after it was made, and a genuine request stamped in the future (an ACS clock
/// ahead) can block later requests for at most that long. Clocks kept only by an RTC drift by
/// seconds a day, so months pass before five minutes are reached.
pub const CLOCK_WINDOW_S: u64 = 300;
/// The clock rule shared with the Inform's CurrentTime (`util::time::PLAUSIBLE_SINCE`): a wall
/// clock at or after 2020-01-01 is taken as synchronised. A heuristic: a box without a
/// battery-backed clock boots in 1970 and only gets a plausible date from NTP, but one whose
/// clock starts at a firmware build date (systemd does this) looks synchronised before it is.
pub const CLOCK_SYNCED_AFTER: u64 = crate::util::time::PLAUSIBLE_SINCE as u64;

/// Whether a wall clock reading `now_unix` is taken as synchronised.
pub fn clock_synchronised(now_unix: u64) -> bool {
    crate::util::time::clock_synchronised(now_unix.min(i64::MAX as u64) as i64)
}

/// Version of the persisted replay state ([`Validator::encode_state`]).
const STATE_VERSION: u32 = 1;
/// Largest persisted replay state accepted: [`MAX_IDS_PER_SECOND`] ids of at most a datagram each,
/// JSON-escaped (up to 6 bytes a byte), and some room.
pub const MAX_STATE_BYTES: usize = MAX_IDS_PER_SECOND * (MAX_DATAGRAM * 6 + 8) + 256;

/// Why a datagram is not a well-formed UDP connection request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UdpCrError {
    /// Larger than [`MAX_DATAGRAM`].
    TooLarge,
    /// Not text, or the request line is not `GET <uri> HTTP/1.1`.
    BadRequestLine,
    /// The request-URI is not an absolute `http://` URI with an authority.
    NotAbsoluteUri,
    /// A required query field is absent.
    MissingField(&'static str),
    /// A required query field appears more than once.
    DuplicateField(&'static str),
    /// A field has an invalid value (non-numeric `ts`, `sig` not 40 hex digits, empty value).
    BadField(&'static str),
}

impl fmt::Display for UdpCrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpCrError::TooLarge => write!(f, "datagram larger than {MAX_DATAGRAM} bytes"),
            UdpCrError::BadRequestLine => f.write_str("not a `GET <uri> HTTP/1.1` request"),
            UdpCrError::NotAbsoluteUri => f.write_str("request-URI is not an absolute http URI"),
            UdpCrError::MissingField(n) => write!(f, "missing field `{n}`"),
            UdpCrError::DuplicateField(n) => write!(f, "duplicate field `{n}`"),
            UdpCrError::BadField(n) => write!(f, "invalid value for `{n}`"),
        }
    }
}

impl std::error::Error for UdpCrError {}

/// Why a well-formed UDP connection request was rejected (for a debug log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// `un` matches the configured username neither raw nor form-decoded.
    UsernameMismatch,
    /// `sig` is not the HMAC-SHA1 of the message under the configured password.
    BadSignature,
    /// Same `id` as an already accepted request (a retransmission or replay).
    DuplicateId,
    /// `ts` is older than the last accepted request's.
    StaleTimestamp,
    /// `ts` is too far from the local clock (only with [`Validator::check_with_clock`] or
    /// [`Validator::check_at`] on a synchronised clock).
    OutsideClockWindow,
    /// More than [`MAX_IDS_PER_SECOND`] requests accepted within one second.
    TooManyInOneSecond,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Reject::UsernameMismatch => "username mismatch",
            Reject::BadSignature => "bad signature",
            Reject::DuplicateId => "duplicate id (retransmission or replay)",
            Reject::StaleTimestamp => "timestamp older than the last accepted request",
            Reject::OutsideClockWindow => "timestamp outside the clock window",
            Reject::TooManyInOneSecond => "too many requests within one second",
        };
        f.write_str(s)
    }
}

impl std::error::Error for Reject {}

/// A parsed UDP connection request.
///
/// `id`, `un` and `cn` hold the form-decoded values (or the raw text when it
/// does not decode); `un_raw`/`cn_raw`/`id_raw` hold the text as it appeared
/// in the datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpCr {
    /// `ts`: Unix time in seconds when the ACS created the message.
    pub ts: u64,
    /// `id`: message id, identical in retransmissions.
    pub id: String,
    /// `un`: username, decoded.
    pub un: String,
    /// `cn`: cnonce, decoded.
    pub cn: String,
    /// `sig`: the 20-byte HMAC-SHA1.
    pub sig: Vec<u8>,
    /// The authority of the request-URI (`host:port`).
    pub authority: String,
    /// `id` as sent.
    pub id_raw: String,
    /// `un` as sent (GenieACS sends it without percent-encoding).
    pub un_raw: String,
    /// `cn` as sent.
    pub cn_raw: String,
    ts_raw: String,
}

/// `application/x-www-form-urlencoded` decoding; `None` on a bad escape or non-UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex_val(*b.get(i + 1)?)?;
                let lo = hex_val(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Characters sent unescaped in a query value. `%` is included so that a
/// GenieACS-style username such as `…SR552NA084%2D0003269` goes out raw, as
/// GenieACS itself sends it.
fn raw_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$'()*,;:@/?%".contains(&b)
}

/// Encodes a query value: raw when every byte is [`raw_safe`], otherwise
/// fully percent-encoded (so that a form-decoding receiver gets it back).
fn encode_value(v: &str) -> String {
    if v.bytes().all(raw_safe) {
        return v.to_owned();
    }
    let mut s = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// HMAC-SHA1(key = `password`, `ts ‖ id ‖ un ‖ cn`).
pub fn sign(ts: &str, id: &str, un: &str, cn: &str, password: &str) -> [u8; 20] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(password.as_bytes())
        .unwrap_or_else(|_| unreachable!());
    for p in [ts, id, un, cn] {
        m.update(p.as_bytes());
    }
    let mut out = [0u8; 20];
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

/// Formats a socket address as a URI authority (`1.2.3.4:5`, `[::1]:5`).
pub fn authority(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Builds the UDP connection request datagram (ACS side), in exactly the
/// shape GenieACS sends. `host_port` is the CPE's `UDPConnectionRequestAddress`
/// (port included unless it is 80); `sig` is lower-case hex.
pub fn build_udp_cr(
    host_port: &str,
    ts: u64,
    id: u64,
    un: &str,
    cn: &str,
    password: &str,
) -> Vec<u8> {
    let ts_s = ts.to_string();
    let id_s = id.to_string();
    let sig = to_hex(&sign(&ts_s, &id_s, un, cn, password));
    format!(
        "GET http://{host_port}?ts={ts_s}&id={id_s}&un={}&cn={}&sig={sig} HTTP/1.1\r\nHost: {host_port}\r\n\r\n",
        encode_value(un),
        encode_value(cn)
    )
    .into_bytes()
}

/// Parses a UDP connection request (CPE side). Checks syntax only; use a
/// [`Validator`] for the signature, username and replay checks.
///
/// Accepts extra query parameters and any parameter order, percent-decodes
/// values, and ignores the header fields after the request line.
pub fn parse(datagram: &[u8]) -> Result<UdpCr, UdpCrError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(UdpCrError::TooLarge);
    }
    let line_end = datagram
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(datagram.len());
    let mut line = &datagram[..line_end];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let line = std::str::from_utf8(line).map_err(|_| UdpCrError::BadRequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(UdpCrError::BadRequestLine);
    };
    if method != "GET" || version != "HTTP/1.1" {
        return Err(UdpCrError::BadRequestLine);
    }

    // Absolute URI: http://authority[path][?query][#fragment]
    if uri.len() < 7 || !uri.as_bytes()[..7].eq_ignore_ascii_case(b"http://") {
        return Err(UdpCrError::NotAbsoluteUri);
    }
    let rest = &uri[7..];
    let rest = rest.split('#').next().unwrap_or("");
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    if authority.is_empty() || authority.bytes().any(|b| b.is_ascii_control()) {
        return Err(UdpCrError::NotAbsoluteUri);
    }
    let query = rest[auth_end..]
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("");

    const NAMES: [&str; 5] = ["ts", "id", "un", "cn", "sig"];
    let mut vals: [Option<&str>; 5] = [None; 5];
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(k) = NAMES.iter().position(|n| *n == name) {
            if vals[k].is_some() {
                return Err(UdpCrError::DuplicateField(NAMES[k]));
            }
            vals[k] = Some(value);
        }
    }
    let mut get = |k: usize| -> Result<&str, UdpCrError> {
        let v = vals[k].take().ok_or(UdpCrError::MissingField(NAMES[k]))?;
        if v.is_empty() {
            return Err(UdpCrError::BadField(NAMES[k]));
        }
        Ok(v)
    };
    let (ts_raw, id_raw, un_raw, cn_raw, sig_raw) = (get(0)?, get(1)?, get(2)?, get(3)?, get(4)?);

    let ts_txt = form_decode(ts_raw).ok_or(UdpCrError::BadField("ts"))?;
    if ts_txt.is_empty() || !ts_txt.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UdpCrError::BadField("ts"));
    }
    let ts: u64 = ts_txt.parse().map_err(|_| UdpCrError::BadField("ts"))?;

    let sig_txt = form_decode(sig_raw).ok_or(UdpCrError::BadField("sig"))?;
    let sb = sig_txt.as_bytes();
    if sb.len() != 40 {
        return Err(UdpCrError::BadField("sig"));
    }
    let sig = sb
        .chunks(2)
        .map(|p| Some(hex_val(p[0])? << 4 | hex_val(p[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or(UdpCrError::BadField("sig"))?;

    let decoded = |raw: &str| form_decode(raw).unwrap_or_else(|| raw.to_owned());
    Ok(UdpCr {
        ts,
        id: decoded(id_raw),
        un: decoded(un_raw),
        cn: decoded(cn_raw),
        sig,
        authority: authority.to_owned(),
        id_raw: id_raw.to_owned(),
        un_raw: un_raw.to_owned(),
        cn_raw: cn_raw.to_owned(),
        ts_raw: ts_txt,
    })
}

/// Replay state and validation for UDP connection requests on the CPE.
///
/// A request is accepted when `un` names the configured user, `sig` verifies
/// under the configured password (computed over the *configured* username),
/// `id` differs from every id accepted at the latest timestamp and from the
/// last accepted id, and `ts` is not older than the latest accepted `ts`
/// (`>=`, so a new request in the same second passes).
///
/// [`check`](Self::check) never changes the state; only
/// [`accept`](Self::accept) (or [`check_and_accept`](Self::check_and_accept)
/// after a successful check) does, so a forged datagram cannot block a
/// genuine one. Persist `last_ts` and `last_ids` ([`encode_state`](Self::encode_state),
/// [`decode_state`](Self::decode_state)) to survive restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validator {
    /// `ts` of the most recently accepted request (0: none yet).
    pub last_ts: u64,
    /// Ids accepted with `ts == last_ts`, oldest first; the last one is the
    /// most recently accepted id.
    pub last_ids: Vec<String>,
}

impl Validator {
    /// A validator that has accepted nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores persisted state (e.g. `last_ts` and `last_id` from disk).
    pub fn from_state(last_ts: u64, last_id: Option<String>) -> Self {
        Validator {
            last_ts,
            last_ids: last_id.into_iter().collect(),
        }
    }

    /// Restores persisted state: the latest accepted `ts` and every id accepted at it (oldest
    /// first; only the last [`MAX_IDS_PER_SECOND`] are kept).
    pub fn restore(last_ts: u64, mut ids: Vec<String>) -> Self {
        if ids.len() > MAX_IDS_PER_SECOND {
            ids.drain(..ids.len() - MAX_IDS_PER_SECOND);
        }
        Validator {
            last_ts,
            last_ids: ids,
        }
    }

    /// The replay state as a small JSON document, for persisting.
    pub fn encode_state(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "version": STATE_VERSION,
            "last_ts": self.last_ts,
            "ids": self.last_ids,
        });
        let mut out = v.to_string().into_bytes();
        out.push(b'\n');
        out
    }

    /// Parses what [`encode_state`](Self::encode_state) wrote. Refuses anything larger than
    /// [`MAX_STATE_BYTES`], another version, more than [`MAX_IDS_PER_SECOND`] ids or an id
    /// longer than a datagram.
    pub fn decode_state(data: &[u8]) -> Result<Validator, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Persisted {
            version: u32,
            last_ts: u64,
            ids: Vec<String>,
        }
        if data.len() > MAX_STATE_BYTES {
            return Err(format!("larger than {MAX_STATE_BYTES} bytes"));
        }
        let p: Persisted = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if p.version != STATE_VERSION {
            return Err(format!("unknown version {}", p.version));
        }
        if p.ids.len() > MAX_IDS_PER_SECOND {
            return Err(format!(
                "{} ids (at most {MAX_IDS_PER_SECOND})",
                p.ids.len()
            ));
        }
        if p.ids
            .iter()
            .any(|id| id.is_empty() || id.len() > MAX_DATAGRAM)
        {
            return Err("an empty or oversized id".into());
        }
        if p.last_ts == 0 && !p.ids.is_empty() {
            return Err("ids without a timestamp".into());
        }
        Ok(Validator::restore(p.last_ts, p.ids))
    }

    /// The most recently accepted id.
    pub fn last_id(&self) -> Option<&str> {
        self.last_ids.last().map(String::as_str)
    }

    /// Validates `cr` against the configured credentials and the replay state.
    pub fn check(&self, cr: &UdpCr, expected_user: &str, password: &str) -> Result<(), Reject> {
        if cr.un_raw != expected_user && cr.un != expected_user {
            return Err(Reject::UsernameMismatch);
        }
        let mut ok = false;
        let ids = [cr.id_raw.as_str(), cr.id.as_str()];
        let cns = [cr.cn_raw.as_str(), cr.cn.as_str()];
        for (i, id) in ids.iter().enumerate() {
            if i == 1 && ids[1] == ids[0] {
                continue;
            }
            for (j, cn) in cns.iter().enumerate() {
                if j == 1 && cns[1] == cns[0] {
                    continue;
                }
                let mac = sign(&cr.ts_raw, id, expected_user, cn, password);
                ok |= ct_eq(&mac, &cr.sig);
            }
        }
        if !ok {
            return Err(Reject::BadSignature);
        }
        if self.last_id() == Some(cr.id.as_str()) {
            return Err(Reject::DuplicateId);
        }
        if cr.ts < self.last_ts {
            return Err(Reject::StaleTimestamp);
        }
        if cr.ts == self.last_ts {
            if self.last_ids.contains(&cr.id) {
                return Err(Reject::DuplicateId);
            }
            if self.last_ids.len() >= MAX_IDS_PER_SECOND {
                return Err(Reject::TooManyInOneSecond);
            }
        }
        Ok(())
    }

    /// Like [`check`](Self::check), and also requires `|ts - now_unix| <= max_skew_s`.
    /// Use it only while the local clock is known to be synchronised.
    pub fn check_with_clock(
        &self,
        cr: &UdpCr,
        expected_user: &str,
        password: &str,
        now_unix: u64,
        max_skew_s: u64,
    ) -> Result<(), Reject> {
        self.check(cr, expected_user, password)?;
        if cr.ts.abs_diff(now_unix) > max_skew_s {
            return Err(Reject::OutsideClockWindow);
        }
        Ok(())
    }

    /// [`check`](Self::check) against the wall clock `now_unix`: when the clock is synchronised
    /// ([`clock_synchronised`]) `ts` must also lie within [`CLOCK_WINDOW_S`] of it; otherwise
    /// only the replay state guards against replays.
    pub fn check_at(
        &self,
        cr: &UdpCr,
        expected_user: &str,
        password: &str,
        now_unix: u64,
    ) -> Result<(), Reject> {
        if clock_synchronised(now_unix) {
            self.check_with_clock(cr, expected_user, password, now_unix, CLOCK_WINDOW_S)
        } else {
            self.check(cr, expected_user, password)
        }
    }

    /// Records `cr` as accepted. Call only after a successful check.
    pub fn accept(&mut self, cr: &UdpCr) {
        if cr.ts < self.last_ts {
            return;
        }
        if cr.ts > self.last_ts {
            self.last_ts = cr.ts;
            self.last_ids.clear();
        }
        self.last_ids.push(cr.id.clone());
        if self.last_ids.len() > MAX_IDS_PER_SECOND {
            self.last_ids.remove(0);
        }
    }

    /// [`check`](Self::check), then [`accept`](Self::accept) on success.
    pub fn check_and_accept(
        &mut self,
        cr: &UdpCr,
        expected_user: &str,
        password: &str,
    ) -> Result<(), Reject> {
        self.check(cr, expected_user, password)?;
        self.accept(cr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "GET http://203.0.113.9:49152?ts=1700000000&id=12345&un=user&cn=abcdef0123456789&sig=9b8c2959b14919dc1a9443c410c386cfc62275a8 HTTP/1.1\r\nHost: 203.0.113.9:49152\r\n\r\n";
    const GENIE_USER: &str = "00236a-SR552n-SR552NA084%2D0003269";

    #[test]
    fn vector1_sig() {
        let sig = sign("1700000000", "12345", "user", "abcdef0123456789", "pass");
        assert_eq!(to_hex(&sig), "9b8c2959b14919dc1a9443c410c386cfc62275a8");
    }

    #[test]
    fn vector2_sig_raw_username() {
        let sig = sign(
            "1700000001",
            "4294967295",
            GENIE_USER,
            "0123456789abcdef",
            "s3cret",
        );
        assert_eq!(to_hex(&sig), "24cf2ed6f91d500e8bad8ed43684ce6bdc9e9c90");
    }

    #[test]
    fn g2_datagram_byte_exact() {
        let d = build_udp_cr(
            "203.0.113.9:49152",
            1_700_000_000,
            12345,
            "user",
            "abcdef0123456789",
            "pass",
        );
        assert_eq!(d, V1.as_bytes());
        let cr = parse(&d).unwrap();
        assert_eq!(cr.ts, 1_700_000_000);
        assert_eq!(cr.id, "12345");
        assert_eq!(cr.un, "user");
        assert_eq!(cr.cn, "abcdef0123456789");
        assert_eq!(cr.authority, "203.0.113.9:49152");
        assert_eq!(to_hex(&cr.sig), "9b8c2959b14919dc1a9443c410c386cfc62275a8");
        assert_eq!(Validator::new().check(&cr, "user", "pass"), Ok(()));
    }

    #[test]
    fn vector2_genieacs_raw_un() {
        let d = build_udp_cr(
            "[2001:db8::1]:7547",
            1_700_000_001,
            4_294_967_295,
            GENIE_USER,
            "0123456789abcdef",
            "s3cret",
        );
        let text = String::from_utf8(d.clone()).unwrap();
        assert!(
            text.contains("&un=00236a-SR552n-SR552NA084%2D0003269&"),
            "{text}"
        );
        assert!(text.contains("&sig=24cf2ed6f91d500e8bad8ed43684ce6bdc9e9c90 "));
        let cr = parse(&d).unwrap();
        assert_eq!(cr.un_raw, GENIE_USER);
        assert_eq!(cr.un, "00236a-SR552n-SR552NA084-0003269");
        assert_eq!(cr.id, "4294967295");
        // Configured username is GenieACS's DeviceID.ID with the %2D escape.
        assert_eq!(Validator::new().check(&cr, GENIE_USER, "s3cret"), Ok(()));
        // A decoded-username configuration also matches `un`, but the ACS signed
        // the raw text, so the signature over the configured name fails.
        assert_eq!(
            Validator::new().check(&cr, "00236a-SR552n-SR552NA084-0003269", "s3cret"),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn percent_encoded_un_from_another_acs() {
        // An ACS that form-encodes `un` but signs the plain value.
        let user = "a b&c";
        let sig = to_hex(&sign("5", "6", user, "cn", "pw"));
        let d = format!("GET http://h:1?ts=5&id=6&un=a+b%26c&cn=cn&sig={sig} HTTP/1.1\r\n\r\n");
        let cr = parse(d.as_bytes()).unwrap();
        assert_eq!(cr.un, user);
        assert_eq!(Validator::new().check(&cr, user, "pw"), Ok(()));
        // And our own builder encodes such a name fully.
        let b = build_udp_cr("h:1", 5, 6, user, "cn", "pw");
        let cr2 = parse(&b).unwrap();
        assert_eq!(cr2.un_raw, "a%20b%26c");
        assert_eq!(Validator::new().check(&cr2, user, "pw"), Ok(()));
    }

    #[test]
    fn three_identical_copies() {
        let mut v = Validator::new();
        let cr = parse(V1.as_bytes()).unwrap();
        assert_eq!(v.check_and_accept(&cr, "user", "pass"), Ok(()));
        assert_eq!(
            v.check_and_accept(&cr, "user", "pass"),
            Err(Reject::DuplicateId)
        );
        assert_eq!(
            v.check_and_accept(&cr, "user", "pass"),
            Err(Reject::DuplicateId)
        );
        assert_eq!(v.last_ts, 1_700_000_000);
        assert_eq!(v.last_id(), Some("12345"));
    }

    #[test]
    fn new_id_same_second_passes_old_ts_fails() {
        let mut v = Validator::new();
        let a = parse(&build_udp_cr("h:1", 100, 1, "u", "c1", "p")).unwrap();
        let b = parse(&build_udp_cr("h:1", 100, 2, "u", "c2", "p")).unwrap();
        let old = parse(&build_udp_cr("h:1", 99, 3, "u", "c3", "p")).unwrap();
        let newer = parse(&build_udp_cr("h:1", 101, 1, "u", "c4", "p")).unwrap();
        assert_eq!(v.check_and_accept(&a, "u", "p"), Ok(()));
        assert_eq!(v.check_and_accept(&b, "u", "p"), Ok(()));
        // Replaying `a` in the same second: its id is not the *last* id, but it
        // was accepted at this timestamp.
        assert_eq!(v.check(&a, "u", "p"), Err(Reject::DuplicateId));
        assert_eq!(v.check(&old, "u", "p"), Err(Reject::StaleTimestamp));
        // A later message may reuse an id that is not the last one.
        assert_eq!(v.check_and_accept(&newer, "u", "p"), Ok(()));
        assert_eq!(v.last_ids, vec!["1".to_owned()]);
        assert_eq!(v.check(&b, "u", "p"), Err(Reject::StaleTimestamp));
    }

    #[test]
    fn state_is_updated_only_after_full_validation() {
        let mut v = Validator::new();
        let good = parse(&build_udp_cr("h:1", 100, 7, "u", "c", "p")).unwrap();
        // Same id/ts, but forged (wrong key): rejected and does not block `good`.
        let forged = parse(&build_udp_cr("h:1", 100, 7, "u", "c", "wrong")).unwrap();
        assert_eq!(
            v.check_and_accept(&forged, "u", "p"),
            Err(Reject::BadSignature)
        );
        let future = parse(&build_udp_cr("h:1", 9_999_999_999, 8, "u", "c", "wrong")).unwrap();
        assert_eq!(
            v.check_and_accept(&future, "u", "p"),
            Err(Reject::BadSignature)
        );
        assert_eq!(v, Validator::new());
        assert_eq!(v.check_and_accept(&good, "u", "p"), Ok(()));
    }

    #[test]
    fn stale_ts_and_clock_window() {
        let v = Validator::from_state(1_700_000_000, Some("1".into()));
        let cr = parse(&build_udp_cr("h:1", 1_699_999_999, 2, "u", "c", "p")).unwrap();
        assert_eq!(v.check(&cr, "u", "p"), Err(Reject::StaleTimestamp));
        let cr = parse(&build_udp_cr("h:1", 1_700_000_500, 2, "u", "c", "p")).unwrap();
        assert_eq!(v.check(&cr, "u", "p"), Ok(()));
        assert_eq!(
            v.check_with_clock(&cr, "u", "p", 1_700_000_000, 300),
            Err(Reject::OutsideClockWindow)
        );
        assert_eq!(
            v.check_with_clock(&cr, "u", "p", 1_700_000_400, 300),
            Ok(())
        );
        // Persisted last id blocks its own retransmission after a restart.
        let same = parse(&build_udp_cr("h:1", 1_700_000_000, 1, "u", "c", "p")).unwrap();
        assert_eq!(v.check(&same, "u", "p"), Err(Reject::DuplicateId));
    }

    #[test]
    fn persisted_state_round_trip_blocks_every_id_at_the_latest_ts() {
        let mut v = Validator::new();
        let a = parse(&build_udp_cr("h:1", 1_700_000_000, 1, "u", "c1", "p")).unwrap();
        let b = parse(&build_udp_cr("h:1", 1_700_000_000, 2, "u", "c2", "p")).unwrap();
        assert_eq!(v.check_and_accept(&a, "u", "p"), Ok(()));
        assert_eq!(v.check_and_accept(&b, "u", "p"), Ok(()));
        let data = v.encode_state();
        let r = Validator::decode_state(&data).unwrap();
        assert_eq!(r, v);
        // After a "restart": both ids are refused (not only the last one), a new one passes.
        assert_eq!(r.check(&a, "u", "p"), Err(Reject::DuplicateId));
        assert_eq!(r.check(&b, "u", "p"), Err(Reject::DuplicateId));
        let c = parse(&build_udp_cr("h:1", 1_700_000_000, 3, "u", "c3", "p")).unwrap();
        assert_eq!(r.check(&c, "u", "p"), Ok(()));
        // Ids needing JSON escapes survive.
        let odd = Validator::restore(5, vec!["a\"b\\\n\u{7f}é".into()]);
        assert_eq!(Validator::decode_state(&odd.encode_state()).unwrap(), odd);
        assert_eq!(
            Validator::decode_state(&Validator::new().encode_state()).unwrap(),
            Validator::new()
        );
    }

    #[test]
    fn persisted_state_refuses_bad_input() {
        let bad: &[&[u8]] = &[
            b"",
            b"{}",
            b"not json",
            br#"{"version":2,"last_ts":1,"ids":[]}"#,
            br#"{"version":1,"last_ts":-1,"ids":[]}"#,
            br#"{"version":1,"last_ts":0,"ids":["1"]}"#,
            br#"{"version":1,"last_ts":1,"ids":[""]}"#,
            br#"{"version":1,"last_ts":1,"ids":[1]}"#,
            br#"{"version":1,"last_ts":1,"ids":[],"x":1}"#,
        ];
        for d in bad {
            assert!(
                Validator::decode_state(d).is_err(),
                "{:?}",
                String::from_utf8_lossy(d)
            );
        }
        let many: Vec<String> = (0..=MAX_IDS_PER_SECOND).map(|i| i.to_string()).collect();
        let d = serde_json::json!({"version": 1, "last_ts": 1, "ids": many}).to_string();
        assert!(Validator::decode_state(d.as_bytes()).is_err());
        let long = "x".repeat(MAX_DATAGRAM + 1);
        let d = serde_json::json!({"version": 1, "last_ts": 1, "ids": [long]}).to_string();
        assert!(Validator::decode_state(d.as_bytes()).is_err());
        let huge = vec![b' '; MAX_STATE_BYTES + 1];
        assert!(Validator::decode_state(&huge).is_err());
        // The largest legitimate state fits.
        let ids: Vec<String> = (0..MAX_IDS_PER_SECOND)
            .map(|_| "\u{1}".repeat(MAX_DATAGRAM))
            .collect();
        let v = Validator::restore(u64::MAX, ids);
        let data = v.encode_state();
        assert!(data.len() <= MAX_STATE_BYTES, "{}", data.len());
        assert_eq!(Validator::decode_state(&data).unwrap(), v);
        // restore keeps the newest ids only.
        let ids: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let v = Validator::restore(7, ids);
        assert_eq!(v.last_ids.len(), MAX_IDS_PER_SECOND);
        assert_eq!(v.last_id(), Some("39"));
    }

    #[test]
    fn clock_window_only_on_a_synchronised_clock() {
        let v = Validator::new();
        let now = 1_700_000_000;
        let at = |ts: u64| parse(&build_udp_cr("h:1", ts, 9, "u", "c", "p")).unwrap();
        assert!(clock_synchronised(now));
        assert!(clock_synchronised(CLOCK_SYNCED_AFTER));
        assert!(!clock_synchronised(CLOCK_SYNCED_AFTER - 1));
        for ts in [now, now - CLOCK_WINDOW_S, now + CLOCK_WINDOW_S] {
            assert_eq!(v.check_at(&at(ts), "u", "p", now), Ok(()), "{ts}");
        }
        for ts in [
            now - CLOCK_WINDOW_S - 1,
            now + CLOCK_WINDOW_S + 1,
            1,
            u64::MAX,
        ] {
            assert_eq!(
                v.check_at(&at(ts), "u", "p", now),
                Err(Reject::OutsideClockWindow),
                "{ts}"
            );
        }
        // A clock in 1970 (not synchronised): no window, the replay state alone decides.
        assert_eq!(v.check_at(&at(now - 86_400), "u", "p", 1000), Ok(()));
        // The signature is checked first: a forged request is not reported as a window problem.
        let forged = parse(&build_udp_cr("h:1", 1, 9, "u", "c", "wrong")).unwrap();
        assert_eq!(
            v.check_at(&forged, "u", "p", now),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn wrong_sig_user_and_uppercase_sig() {
        let v = Validator::new();
        let cr = parse(V1.as_bytes()).unwrap();
        assert_eq!(v.check(&cr, "user", "Pass"), Err(Reject::BadSignature));
        assert_eq!(v.check(&cr, "other", "pass"), Err(Reject::UsernameMismatch));
        let upper = V1.replace(
            "9b8c2959b14919dc1a9443c410c386cfc62275a8",
            "9B8C2959B14919DC1A9443C410C386CFC62275A8",
        );
        let cr = parse(upper.as_bytes()).unwrap();
        assert_eq!(v.check(&cr, "user", "pass"), Ok(()));
        let flipped = V1.replace("sig=9b8c", "sig=9b8d");
        let cr = parse(flipped.as_bytes()).unwrap();
        assert_eq!(v.check(&cr, "user", "pass"), Err(Reject::BadSignature));
        // The signed fields are bound: changing cn breaks the signature.
        let cn = V1.replace("cn=abcdef0123456789", "cn=abcdef0123456788");
        assert_eq!(
            v.check(&parse(cn.as_bytes()).unwrap(), "user", "pass"),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn tolerant_parsing() {
        // Other order, extra params, `HTTP` upper-case scheme, path `/`, LF only, no headers.
        let d = "GET HTTP://h:1/?x=1&sig=9b8c2959b14919dc1a9443c410c386cfc62275a8&cn=abcdef0123456789&un=user&id=12345&ts=1700000000&y HTTP/1.1\n";
        let cr = parse(d.as_bytes()).unwrap();
        assert_eq!(Validator::new().check(&cr, "user", "pass"), Ok(()));
        assert_eq!(cr.authority, "h:1");
        let d = "GET http://h:1?ts=1700000000&id=12345&un=user&cn=abcdef0123456789&sig=9b8c2959b14919dc1a9443c410c386cfc62275a8 HTTP/1.1";
        assert!(parse(d.as_bytes()).is_ok());
    }

    #[test]
    fn missing_and_bad_fields() {
        let full = "ts=1&id=2&un=u&cn=c&sig=9b8c2959b14919dc1a9443c410c386cfc62275a8";
        for (i, name) in ["ts", "id", "un", "cn", "sig"].iter().enumerate() {
            let q: Vec<&str> = full
                .split('&')
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p)
                .collect();
            let d = format!("GET http://h:1?{} HTTP/1.1\r\n\r\n", q.join("&"));
            assert_eq!(
                parse(d.as_bytes()),
                Err(UdpCrError::MissingField(name)),
                "{name}"
            );
        }
        let cases: &[(&str, UdpCrError)] = &[
            (
                "GET http://h:1 HTTP/1.1\r\n",
                UdpCrError::MissingField("ts"),
            ),
            ("POST http://h:1?x HTTP/1.1\r\n", UdpCrError::BadRequestLine),
            ("GET http://h:1?x HTTP/1.0\r\n", UdpCrError::BadRequestLine),
            ("GET  http://h:1?x HTTP/1.1\r\n", UdpCrError::BadRequestLine),
            ("GET /?ts=1 HTTP/1.1\r\n", UdpCrError::NotAbsoluteUri),
            (
                "GET https://h?ts=1 HTTP/1.1\r\n",
                UdpCrError::NotAbsoluteUri,
            ),
            ("GET http://?ts=1 HTTP/1.1\r\n", UdpCrError::NotAbsoluteUri),
            ("", UdpCrError::BadRequestLine),
            ("\x00\x01\x00\x00", UdpCrError::BadRequestLine),
        ];
        for (d, e) in cases {
            assert_eq!(parse(d.as_bytes()), Err(*e), "{d:?}");
        }
        let with = |q: &str| format!("GET http://h:1?{q} HTTP/1.1\r\n\r\n");
        assert_eq!(
            parse(with(&format!("{full}&ts=2")).as_bytes()),
            Err(UdpCrError::DuplicateField("ts"))
        );
        assert_eq!(
            parse(with(&full.replace("ts=1", "ts=x1")).as_bytes()),
            Err(UdpCrError::BadField("ts"))
        );
        assert_eq!(
            parse(with(&full.replace("ts=1", "ts=99999999999999999999999")).as_bytes()),
            Err(UdpCrError::BadField("ts"))
        );
        assert_eq!(
            parse(with(&full.replace("ts=1", "ts=")).as_bytes()),
            Err(UdpCrError::BadField("ts"))
        );
        assert_eq!(
            parse(with(&full.replace("sig=9b8c", "sig=9b8")).as_bytes()),
            Err(UdpCrError::BadField("sig"))
        );
        assert_eq!(
            parse(with(&full.replace("sig=9b8c", "sig=zb8c")).as_bytes()),
            Err(UdpCrError::BadField("sig"))
        );
        assert_eq!(
            parse(with(&full.replace("un=u", "un")).as_bytes()),
            Err(UdpCrError::BadField("un"))
        );
        let big = with(&format!("{full}&pad={}", "x".repeat(MAX_DATAGRAM)));
        assert_eq!(parse(big.as_bytes()), Err(UdpCrError::TooLarge));
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut v = Validator::new();
        let base = V1.as_bytes();
        for i in 0..10_000 {
            let mut d: Vec<u8> = if i % 2 == 0 {
                let len = (xorshift(&mut x) % 1100) as usize;
                (0..len).map(|_| xorshift(&mut x) as u8).collect()
            } else {
                // Mutations of a valid datagram reach deeper code paths.
                let mut d = base.to_vec();
                for _ in 0..(xorshift(&mut x) % 4 + 1) {
                    let pos = (xorshift(&mut x) as usize) % d.len();
                    let alphabet = b"%&=?+ /:#\r\n0aZ\xff";
                    d[pos] = alphabet[(xorshift(&mut x) as usize) % alphabet.len()];
                }
                if xorshift(&mut x).is_multiple_of(3) {
                    let cut = (xorshift(&mut x) as usize) % d.len();
                    d.truncate(cut);
                }
                d
            };
            if i % 7 == 0 {
                d.insert(0, b'G');
            }
            if let Ok(cr) = parse(&d) {
                let _ = v.check_and_accept(&cr, "user", "pass");
            }
        }
    }
}
