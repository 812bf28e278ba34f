//! HTTP Digest authentication (RFC 2617 / RFC 7616) for both sides of a
//! connection request: the CPE's CR listener verifies `Authorization`
//! headers against stateless, MAC-protected nonces ([`DigestServer`]), and
//! the agent (towards the ACS) or the ACS-side CR sender answers a
//! `WWW-Authenticate` challenge ([`DigestClient`]). Pure code: no I/O, no
//! clocks (time is passed in); randomness only for fresh nonces.

use crate::util::codec::{ct_eq, from_hex, hex_val, to_hex};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// Longest header value the parser accepts, in bytes.
pub const MAX_HEADER_LEN: usize = 4096;
/// Most auth-params the parser accepts in one header value.
pub const MAX_PARAMS: usize = 32;
/// Number of nonces whose highest `nc` is remembered for replay protection.
pub const REPLAY_TABLE_SIZE: usize = 64;

/// Why a Digest exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestError {
    /// No `Authorization` header, or one that does not carry Digest
    /// credentials (e.g. `Basic`); for the client: no Digest challenge.
    Missing,
    /// Syntax error, a required parameter is missing or duplicated, or the
    /// header exceeds the size limits.
    Malformed,
    /// The username is not the configured one.
    WrongUser,
    /// The `response` value does not match (wrong password, wrong realm, ...).
    BadResponse,
    /// The `uri` parameter does not name the request target.
    UriMismatch,
    /// A nonce this server issued has expired; challenge again with `stale=true`.
    StaleNonce,
    /// The nonce was not issued by this server (forged or corrupted).
    BadNonce,
    /// The nonce/`nc` combination was already used.
    Replay,
    /// A well-formed request for an algorithm or qop this code does not do
    /// (e.g. `qop=auth-int`, `userhash=true`, an unknown algorithm).
    Unsupported,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DigestError::Missing => "no Digest credentials",
            DigestError::Malformed => "malformed Digest header",
            DigestError::WrongUser => "unknown username",
            DigestError::BadResponse => "wrong Digest response",
            DigestError::UriMismatch => "Digest uri does not match the request target",
            DigestError::StaleNonce => "stale nonce",
            DigestError::BadNonce => "nonce not issued by this server",
            DigestError::Replay => "replayed nonce count",
            DigestError::Unsupported => "unsupported Digest algorithm or qop",
        };
        f.write_str(s)
    }
}

impl std::error::Error for DigestError {}

/// Digest hash algorithm (RFC 7616 §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (the default when no `algorithm` is given).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// Parses an `algorithm` token (case-insensitive).
    pub fn parse(s: &str) -> Option<Algorithm> {
        let a = match s.to_ascii_uppercase().as_str() {
            "MD5" => Algorithm::Md5,
            "MD5-SESS" => Algorithm::Md5Sess,
            "SHA-256" => Algorithm::Sha256,
            "SHA-256-SESS" => Algorithm::Sha256Sess,
            _ => return None,
        };
        Some(a)
    }

    /// The canonical token.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Whether this is a `-sess` variant.
    pub fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Lower-case hex digest of `data`.
    pub fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => to_hex(&Md5::digest(data)),
            Algorithm::Sha256 | Algorithm::Sha256Sess => to_hex(&Sha256::digest(data)),
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => 16,
            Algorithm::Sha256 | Algorithm::Sha256Sess => 32,
        }
    }
}

/// `qop=auth` inputs: the nonce count (8 hex digits) and the client nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QopAuth<'a> {
    /// The `nc` value as sent, e.g. `00000001`.
    pub nc: &'a str,
    /// The `cnonce` value.
    pub cnonce: &'a str,
}

/// HA1 = H(user ":" realm ":" pass); for `-sess`: H(HA1 ":" nonce ":" cnonce).
pub fn ha1(
    alg: Algorithm,
    user: &str,
    realm: &str,
    pass: &str,
    nonce: &str,
    cnonce: &str,
) -> String {
    let base = alg.hash_hex(format!("{user}:{realm}:{pass}").as_bytes());
    if alg.is_sess() {
        alg.hash_hex(format!("{base}:{nonce}:{cnonce}").as_bytes())
    } else {
        base
    }
}

/// HA2 = H(method ":" uri) (qop `auth` or none).
pub fn ha2(alg: Algorithm, method: &str, uri: &str) -> String {
    alg.hash_hex(format!("{method}:{uri}").as_bytes())
}

/// The `response` value (lower-case hex).
///
/// With `qop` it is H(HA1:nonce:nc:cnonce:auth:HA2), without it the RFC 2069
/// form H(HA1:nonce:HA2). `-sess` algorithms need `qop` (for the cnonce); without
/// one the cnonce is taken as empty.
#[allow(clippy::too_many_arguments)]
pub fn compute_response(
    alg: Algorithm,
    user: &str,
    realm: &str,
    pass: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<QopAuth<'_>>,
) -> String {
    let cnonce = qop.map(|q| q.cnonce).unwrap_or("");
    let h1 = ha1(alg, user, realm, pass, nonce, cnonce);
    let h2 = ha2(alg, method, uri);
    let kd = match qop {
        Some(q) => format!("{h1}:{nonce}:{}:{}:auth:{h2}", q.nc, q.cnonce),
        None => format!("{h1}:{nonce}:{h2}"),
    };
    alg.hash_hex(kd.as_bytes())
}

// ---------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------

/// One challenge (or one set of credentials): an auth scheme and its params.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    /// The auth scheme as sent (compare case-insensitively).
    pub scheme: String,
    /// Parameters in order; names are lower-cased, values unquoted and unescaped.
    pub params: Vec<(String, String)>,
    /// A token68 value (e.g. `Basic dXNlcjpwYXNz`), if the scheme used one.
    pub token68: Option<String>,
}

impl Challenge {
    /// The first value of the parameter `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the scheme is `scheme` (case-insensitive).
    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    fn has_duplicate_params(&self) -> bool {
        self.params
            .iter()
            .enumerate()
            .any(|(i, (n, _))| self.params[..i].iter().any(|(m, _)| m == n))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn skip_ows(&mut self) {
        while self.peek().is_some_and(is_ows) {
            self.i += 1;
        }
    }

    fn skip_ows_and_commas(&mut self) {
        while self.peek().is_some_and(|b| is_ows(b) || b == b',') {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        if self.i == start {
            None
        } else {
            std::str::from_utf8(&self.s[start..self.i]).ok()
        }
    }

    /// Reads a quoted-string; the cursor is on the opening quote.
    fn quoted(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let b = self.peek()?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    if e != b'\t' && (e < 0x20 || e == 0x7f) {
                        return None;
                    }
                    out.push(e);
                    self.i += 1;
                }
                b'\t' => out.push(b),
                b if b < 0x20 || b == 0x7f => return None,
                b => out.push(b),
            }
        }
    }

    /// Reads a lenient unquoted value: anything up to OWS or a comma.
    fn bare_value(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b == b',' || is_ows(b) || b == b'"' || b < 0x20 || b == 0x7f {
                break;
            }
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()
            .map(str::to_owned)
    }
}

/// Parses a header value holding one or more challenges
/// (`WWW-Authenticate`) or one set of credentials (`Authorization`).
///
/// Handles quoted strings with escapes, bare tokens, any parameter order,
/// case-insensitive parameter names, optional whitespace, empty list
/// elements and token68 values. Rejects values over [`MAX_HEADER_LEN`] bytes
/// or with more than [`MAX_PARAMS`] parameters.
pub fn parse_challenges(value: &str) -> Result<Vec<Challenge>, DigestError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(DigestError::Malformed);
    }
    let mut c = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    let mut nparams = 0usize;
    let mut expect_param = false;
    loop {
        c.skip_ows_and_commas();
        if c.at_end() {
            break;
        }
        let tok = c.token().ok_or(DigestError::Malformed)?;
        let after_tok = c.i;
        c.skip_ows();
        let is_param = !out.is_empty() && c.peek() == Some(b'=') && {
            // `name=value`, not a bare `name=` / `name==`.
            let mut j = c.i + 1;
            while c.s.get(j).copied().is_some_and(is_ows) {
                j += 1;
            }
            !matches!(c.s.get(j), None | Some(b',') | Some(b'='))
        };
        if is_param {
            c.i += 1;
            c.skip_ows();
            let v = if c.peek() == Some(b'"') {
                c.quoted().ok_or(DigestError::Malformed)?
            } else {
                c.bare_value().ok_or(DigestError::Malformed)?
            };
            nparams += 1;
            if nparams > MAX_PARAMS {
                return Err(DigestError::Malformed);
            }
            let cur = out.last_mut().ok_or(DigestError::Malformed)?;
            if cur.token68.is_some() {
                return Err(DigestError::Malformed);
            }
            cur.params.push((tok.to_ascii_lowercase(), v));
            expect_param = false;
            c.skip_ows();
            if !(c.at_end() || c.peek() == Some(b',')) {
                return Err(DigestError::Malformed);
            }
            continue;
        }
        // Otherwise `tok` starts a new challenge.
        if expect_param || c.peek() == Some(b'=') {
            return Err(DigestError::Malformed);
        }
        out.push(Challenge {
            scheme: tok.to_owned(),
            ..Challenge::default()
        });
        if out.len() > MAX_PARAMS {
            return Err(DigestError::Malformed);
        }
        if c.at_end() || c.peek() == Some(b',') {
            continue;
        }
        if c.i == after_tok {
            // No whitespace between the scheme and what follows.
            return Err(DigestError::Malformed);
        }
        // token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
        let start = c.i;
        let mut j = start;
        while c
            .s
            .get(j)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
        {
            j += 1;
        }
        let body_end = j;
        while c.s.get(j) == Some(&b'=') {
            j += 1;
        }
        let end = j;
        while c.s.get(j).copied().is_some_and(is_ows) {
            j += 1;
        }
        if body_end > start && matches!(c.s.get(j), None | Some(b',')) {
            let t = std::str::from_utf8(&c.s[start..end]).map_err(|_| DigestError::Malformed)?;
            if let Some(last) = out.last_mut() {
                last.token68 = Some(t.to_owned());
            }
            c.i = j;
        } else {
            expect_param = true;
        }
    }
    if out.is_empty() || expect_param {
        return Err(DigestError::Malformed);
    }
    Ok(out)
}

/// Parses an `Authorization` header value holding Digest credentials.
///
/// Returns [`DigestError::Missing`] for other schemes and
/// [`DigestError::Malformed`] for syntax errors or duplicated parameters.
pub fn parse_authorization(value: &str) -> Result<Challenge, DigestError> {
    let mut list = parse_challenges(value)?;
    if list.len() != 1 {
        return Err(DigestError::Malformed);
    }
    let ch = list.pop().ok_or(DigestError::Malformed)?;
    if !ch.is("Digest") {
        return Err(DigestError::Missing);
    }
    if ch.token68.is_some() || ch.has_duplicate_params() {
        return Err(DigestError::Malformed);
    }
    Ok(ch)
}

/// Decodes an RFC 8187 ext-value (`UTF-8''%E2%82%AC`), as used by `username*`.
fn decode_ext_value(v: &str) -> Option<String> {
    let mut parts = v.splitn(3, '\'');
    let charset = parts.next()?;
    let _lang = parts.next()?;
    let enc = parts.next()?;
    if !charset.eq_ignore_ascii_case("UTF-8") {
        return None;
    }
    let b = enc.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex_val(*b.get(i + 1)?)?;
            let lo = hex_val(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn encode_ext_value(v: &str) -> String {
    let mut s = String::from("UTF-8''");
    for &b in v.as_bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            q.push('\\');
        }
        q.push(ch);
    }
    q.push('"');
    q
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

/// Strips `scheme://authority` from an absolute URI, leaving path+query
/// (`/` when the path is empty). Returns the input unchanged otherwise.
fn origin_form(uri: &str) -> &str {
    let lower_starts = |p: &str| {
        uri.len() >= p.len() && uri.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    let rest = if lower_starts("http://") {
        &uri[7..]
    } else if lower_starts("https://") {
        &uri[8..]
    } else {
        return uri;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        Some(i) => &rest[i..],
        None => "/",
    }
}

fn uri_matches(uri: &str, target: &str) -> bool {
    if uri == target {
        return true;
    }
    let (u, t) = (origin_form(uri), origin_form(target));
    if u == t {
        return true;
    }
    // `http://host?q` has an empty path; it names the same resource as `/?q`.
    let norm = |s: &str| -> String {
        if s.starts_with('?') {
            format!("/{s}")
        } else {
            s.to_owned()
        }
    };
    norm(u) == norm(t)
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

const NONCE_RAW_LEN: usize = 8 + 8 + 16;

#[derive(Clone, Copy, Debug)]
struct ReplayEntry {
    id: [u8; 16],
    ts: u64,
    /// Highest `nc` accepted; `u32::MAX` once used without qop.
    highest_nc: u32,
}

/// Verifier for Digest credentials on the CPE's connection-request listener.
///
/// Nonces are `hex(ts ‖ rand ‖ HMAC-SHA256(secret, ts ‖ rand ‖ realm)[..16])`:
/// unpredictable, verifiable without storage, and an expired one can be told
/// apart from a forged one. A bounded table of recently used nonces enforces
/// strictly increasing `nc` values; when an entry has to be evicted, every
/// nonce issued at or before the evicted one's timestamp is treated as stale,
/// so bounded memory never reopens a replay window.
pub struct DigestServer {
    secret: [u8; 32],
    realm: String,
    lifetime: Duration,
    opaque: String,
    // usize, not u64: 32-bit MIPS has no 64-bit atomics.
    counter: AtomicUsize,
    used: Vec<ReplayEntry>,
    evicted_upto: Option<u64>,
}

impl fmt::Debug for DigestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is deliberately left out.
        f.debug_struct("DigestServer")
            .field("realm", &self.realm)
            .field("lifetime", &self.lifetime)
            .field("used_nonces", &self.used.len())
            .field("evicted_upto", &self.evicted_upto)
            .finish_non_exhaustive()
    }
}

impl DigestServer {
    /// Creates a verifier. `secret` should be 32 random bytes generated at
    /// start-up; `nonce_lifetime` is typically 300 s.
    pub fn new(secret: [u8; 32], realm: impl Into<String>, nonce_lifetime: Duration) -> Self {
        let realm = realm.into();
        let opaque = to_hex(&hmac_sha256(&secret, &[b"cwmpd-digest-opaque"])[..8]);
        DigestServer {
            secret,
            realm,
            lifetime: nonce_lifetime,
            opaque,
            counter: AtomicUsize::new(0),
            // Grows with use (up to REPLAY_TABLE_SIZE): an agent that never gets a
            // connection request keeps none of it.
            used: Vec::new(),
            evicted_upto: None,
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The (constant) opaque value sent in challenges.
    pub fn opaque(&self) -> &str {
        &self.opaque
    }

    /// A `WWW-Authenticate` value with a fresh nonce:
    /// `Digest realm="…", qop="auth", nonce="…", opaque="…", algorithm=MD5[, stale=true]`.
    pub fn challenge(&self, now_unix: u64, stale: bool) -> String {
        use ring::rand::SecureRandom;
        let mut sys = [0u8; 16];
        // If the system RNG fails, the HMAC over the secret and a counter below
        // still yields unique, unpredictable nonces.
        let _ = ring::rand::SystemRandom::new().fill(&mut sys);
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as u64;
        let mix = hmac_sha256(
            &self.secret,
            &[
                b"cwmpd-digest-rand",
                &now_unix.to_be_bytes(),
                &n.to_be_bytes(),
                &sys,
            ],
        );
        let mut rand = [0u8; 8];
        rand.copy_from_slice(&mix[..8]);
        self.challenge_with_random(now_unix, stale, rand)
    }

    /// [`challenge`](Self::challenge) with caller-supplied randomness (tests).
    pub fn challenge_with_random(&self, now_unix: u64, stale: bool, rand: [u8; 8]) -> String {
        let nonce = self.make_nonce(now_unix, rand);
        let mut s = format!(
            "Digest realm={}, qop=\"auth\", nonce=\"{}\", opaque=\"{}\", algorithm=MD5",
            quote(&self.realm),
            nonce,
            self.opaque
        );
        if stale {
            s.push_str(", stale=true");
        }
        s
    }

    fn nonce_mac(&self, ts: u64, rand: &[u8]) -> [u8; 32] {
        hmac_sha256(
            &self.secret,
            &[
                b"cwmpd-digest-nonce",
                &ts.to_be_bytes(),
                rand,
                self.realm.as_bytes(),
            ],
        )
    }

    fn make_nonce(&self, ts: u64, rand: [u8; 8]) -> String {
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..8].copy_from_slice(&ts.to_be_bytes());
        raw[8..16].copy_from_slice(&rand);
        raw[16..].copy_from_slice(&self.nonce_mac(ts, &rand)[..16]);
        to_hex(&raw)
    }

    /// Checks a nonce's MAC; returns (id, timestamp).
    fn open_nonce(&self, nonce: &str) -> Result<([u8; 16], u64), DigestError> {
        if nonce.len() != NONCE_RAW_LEN * 2 {
            return Err(DigestError::BadNonce);
        }
        let raw = from_hex(nonce).ok_or(DigestError::BadNonce)?;
        let mut ts_b = [0u8; 8];
        ts_b.copy_from_slice(&raw[..8]);
        let ts = u64::from_be_bytes(ts_b);
        let mac = self.nonce_mac(ts, &raw[8..16]);
        if !ct_eq(&mac[..16], &raw[16..]) {
            return Err(DigestError::BadNonce);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&raw[..16]);
        Ok((id, ts))
    }

    /// Verifies an `Authorization` header value for a request.
    ///
    /// * `method`: the request method, e.g. `GET`;
    /// * `request_target`: the request-target as received (origin or absolute form);
    /// * `authorization`: the header value, `None` if absent;
    /// * `now_unix`: current time in seconds.
    ///
    /// On success the nonce/`nc` pair is recorded so that it cannot be used again.
    /// On [`DigestError::StaleNonce`] (only reported when the response itself
    /// was right, as RFC 2617 requires) answer 401 with `challenge(now, true)`;
    /// on every other error answer the same plain 401 challenge, so that the
    /// error kind (e.g. [`DigestError::WrongUser`]) only reaches the log.
    /// `opaque` and `realm` are not compared: the response covers the realm.
    pub fn verify(
        &mut self,
        method: &str,
        request_target: &str,
        authorization: Option<&str>,
        username: &str,
        password: &str,
        now_unix: u64,
    ) -> Result<(), DigestError> {
        let value = authorization.ok_or(DigestError::Missing)?;
        let cred = parse_authorization(value)?;

        let user = match (cred.param("username"), cred.param("username*")) {
            (Some(u), None) => u.to_owned(),
            (None, Some(x)) => decode_ext_value(x).ok_or(DigestError::Malformed)?,
            _ => return Err(DigestError::Malformed),
        };
        let _realm = cred.param("realm").ok_or(DigestError::Malformed)?;
        let nonce = cred.param("nonce").ok_or(DigestError::Malformed)?;
        let uri = cred.param("uri").ok_or(DigestError::Malformed)?;
        let response = cred.param("response").ok_or(DigestError::Malformed)?;
        let alg = match cred.param("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or(DigestError::Unsupported)?,
        };
        if cred
            .param("userhash")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Err(DigestError::Unsupported);
        }
        let qop = match cred.param("qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc = cred.param("nc").ok_or(DigestError::Malformed)?;
                let cnonce = cred.param("cnonce").ok_or(DigestError::Malformed)?;
                if nc.len() != 8 || cnonce.is_empty() {
                    return Err(DigestError::Malformed);
                }
                let ncv = u32::from_str_radix(nc, 16).map_err(|_| DigestError::Malformed)?;
                if ncv == 0 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(DigestError::Malformed);
                }
                Some((ncv, QopAuth { nc, cnonce }))
            }
            Some(q) if q.eq_ignore_ascii_case("auth-int") => return Err(DigestError::Unsupported),
            Some(_) => return Err(DigestError::Malformed),
        };
        if alg.is_sess() && qop.is_none() {
            return Err(DigestError::Malformed);
        }

        if user != username {
            return Err(DigestError::WrongUser);
        }
        if !uri_matches(uri, request_target) {
            return Err(DigestError::UriMismatch);
        }
        let (id, ts) = self.open_nonce(nonce)?;

        let expected = compute_response(
            alg,
            username,
            &self.realm,
            password,
            method,
            uri,
            nonce,
            qop.map(|(_, q)| q),
        );
        let expected = from_hex(&expected).ok_or(DigestError::BadResponse)?;
        let given = if response.len() == alg.digest_len() * 2 {
            from_hex(response).ok_or(DigestError::BadResponse)?
        } else {
            return Err(DigestError::BadResponse);
        };
        if !ct_eq(&expected, &given) {
            return Err(DigestError::BadResponse);
        }

        if now_unix.abs_diff(ts) > self.lifetime.as_secs() {
            return Err(DigestError::StaleNonce);
        }
        let nc = qop.map(|(n, _)| n);
        self.record_use(id, ts, nc)
    }

    fn record_use(&mut self, id: [u8; 16], ts: u64, nc: Option<u32>) -> Result<(), DigestError> {
        if let Some(e) = self.used.iter_mut().find(|e| e.id == id) {
            match nc {
                Some(n) if n > e.highest_nc => {
                    e.highest_nc = n;
                    return Ok(());
                }
                _ => return Err(DigestError::Replay),
            }
        }
        if self.evicted_upto.is_some_and(|floor| ts <= floor) {
            // Its use history may have been forgotten: make the client re-challenge.
            return Err(DigestError::StaleNonce);
        }
        if self.used.len() >= REPLAY_TABLE_SIZE {
            let oldest = self
                .used
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.ts)
                .map(|(i, _)| i)
                .unwrap_or(0);
            let gone = self.used.swap_remove(oldest);
            self.evicted_upto = Some(self.evicted_upto.map_or(gone.ts, |f| f.max(gone.ts)));
            if ts <= gone.ts {
                return Err(DigestError::StaleNonce);
            }
        }
        self.used.push(ReplayEntry {
            id,
            ts,
            highest_nc: nc.unwrap_or(u32::MAX),
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// A parsed Digest challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestChallenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `opaque`, echoed back unchanged.
    pub opaque: Option<String>,
    /// The algorithm (MD5 when absent).
    pub algorithm: Algorithm,
    /// The `algorithm` token exactly as sent, echoed back when present.
    pub algorithm_token: Option<String>,
    /// The offered qop values (lower-cased); empty for an RFC 2069 challenge.
    pub qop: Vec<String>,
    /// `stale=true`.
    pub stale: bool,
    /// `userhash=true` (RFC 7616).
    pub userhash: bool,
}

impl DigestChallenge {
    /// Interprets a generic [`Challenge`] as a Digest challenge.
    pub fn from_challenge(ch: &Challenge) -> Result<Self, DigestError> {
        if !ch.is("Digest") {
            return Err(DigestError::Missing);
        }
        let realm = ch.param("realm").ok_or(DigestError::Malformed)?.to_owned();
        let nonce = ch.param("nonce").ok_or(DigestError::Malformed)?.to_owned();
        let algorithm_token = ch.param("algorithm").map(str::to_owned);
        let algorithm = match &algorithm_token {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or(DigestError::Unsupported)?,
        };
        let qop = ch
            .param("qop")
            .map(|q| {
                q.split(',')
                    .map(|x| x.trim().to_ascii_lowercase())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let flag = |n: &str| ch.param(n).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(DigestChallenge {
            realm,
            nonce,
            opaque: ch.param("opaque").map(str::to_owned),
            algorithm,
            algorithm_token,
            qop,
            stale: flag("stale"),
            userhash: flag("userhash"),
        })
    }

    /// Whether this challenge can be answered by [`DigestClient`].
    pub fn is_answerable(&self) -> bool {
        let qop_ok = self.qop.is_empty() || self.qop.iter().any(|q| q == "auth");
        qop_ok && !(self.algorithm.is_sess() && self.qop.is_empty())
    }
}

/// Whether a `WWW-Authenticate` value offers the `Basic` scheme.
pub fn offers_basic(www_authenticate: &str) -> bool {
    parse_challenges(www_authenticate).is_ok_and(|l| l.iter().any(|c| c.is("Basic")))
}

/// Picks the first answerable Digest challenge from a `WWW-Authenticate` value
/// (servers list their preferred challenge first, RFC 7616 §3.7).
pub fn select_digest_challenge(www_authenticate: &str) -> Result<DigestChallenge, DigestError> {
    let list = parse_challenges(www_authenticate)?;
    let mut saw_digest = false;
    for ch in list.iter().filter(|c| c.is("Digest")) {
        saw_digest = true;
        if let Ok(d) = DigestChallenge::from_challenge(ch)
            && d.is_answerable()
        {
            return Ok(d);
        }
    }
    Err(if saw_digest {
        DigestError::Unsupported
    } else {
        DigestError::Missing
    })
}

/// Builds `Authorization` values in answer to Digest challenges.
#[derive(Clone, Copy, Debug, Default)]
pub struct DigestClient;

impl DigestClient {
    /// Answers the first usable Digest challenge in `www_authenticate`
    /// (which may also offer Basic or other schemes) and returns the
    /// `Authorization` header value.
    ///
    /// `uri` is the request-target (path + query); `cnonce` should be random
    /// (e.g. 16 hex digits); `nc` counts the requests made with this nonce,
    /// starting at 1. Uses `qop=auth` when offered, the RFC 2069 form when
    /// the challenge has no qop; MD5, MD5-sess, SHA-256 and SHA-256-sess.
    pub fn respond(
        www_authenticate: &str,
        method: &str,
        uri: &str,
        user: &str,
        pass: &str,
        cnonce: &str,
        nc: u32,
    ) -> Result<String, DigestError> {
        let ch = select_digest_challenge(www_authenticate)?;
        Self::respond_to(&ch, method, uri, user, pass, cnonce, nc)
    }

    /// Like [`respond`](Self::respond) for an already selected challenge.
    pub fn respond_to(
        ch: &DigestChallenge,
        method: &str,
        uri: &str,
        user: &str,
        pass: &str,
        cnonce: &str,
        nc: u32,
    ) -> Result<String, DigestError> {
        if !ch.is_answerable() {
            return Err(DigestError::Unsupported);
        }
        let nc_s = format!("{nc:08x}");
        let use_qop = !ch.qop.is_empty();
        let qop = use_qop.then_some(QopAuth { nc: &nc_s, cnonce });
        let response = compute_response(
            ch.algorithm,
            user,
            &ch.realm,
            pass,
            method,
            uri,
            &ch.nonce,
            qop,
        );
        let mut s = String::from("Digest ");
        if ch.userhash {
            let uh = ch
                .algorithm
                .hash_hex(format!("{user}:{}", ch.realm).as_bytes());
            s.push_str(&format!("username=\"{uh}\""));
        } else if user.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            s.push_str(&format!("username={}", quote(user)));
        } else {
            s.push_str(&format!("username*={}", encode_ext_value(user)));
        }
        s.push_str(&format!(", realm={}", quote(&ch.realm)));
        s.push_str(&format!(", nonce={}", quote(&ch.nonce)));
        s.push_str(&format!(", uri={}", quote(uri)));
        if let Some(a) = &ch.algorithm_token {
            s.push_str(&format!(", algorithm={a}"));
        }
        if use_qop {
            s.push_str(&format!(", qop=auth, nc={nc_s}, cnonce={}", quote(cnonce)));
        }
        s.push_str(&format!(", response=\"{response}\""));
        if let Some(o) = &ch.opaque {
            s.push_str(&format!(", opaque={}", quote(o)));
        }
        if ch.userhash {
            s.push_str(", userhash=true");
        }
        Ok(s)
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;
    const LIFE: Duration = Duration::from_secs(300);

    fn server() -> DigestServer {
        DigestServer::new([7u8; 32], "cpe@example", LIFE)
    }

    fn nonce_of(challenge: &str) -> String {
        let ch = select_digest_challenge(challenge).unwrap();
        ch.nonce
    }

    #[test]
    fn rfc2617_example() {
        let (u, r, p) = ("Mufasa", "testrealm@host.com", "Circle Of Life");
        let nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093";
        assert_eq!(
            ha1(Algorithm::Md5, u, r, p, nonce, ""),
            "939e7578ed9e3c518a452acee763bce9"
        );
        assert_eq!(
            ha2(Algorithm::Md5, "GET", "/dir/index.html"),
            "39aff3a2bab6126f332b942af96d3366"
        );
        let q = QopAuth {
            nc: "00000001",
            cnonce: "0a4f113b",
        };
        assert_eq!(
            compute_response(
                Algorithm::Md5,
                u,
                r,
                p,
                "GET",
                "/dir/index.html",
                nonce,
                Some(q)
            ),
            "6629fae49393a05397450978507c4ef1"
        );
        // Through the client, from the RFC's challenge.
        let www = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
                   nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
                   opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let a = DigestClient::respond(www, "GET", "/dir/index.html", u, p, "0a4f113b", 1).unwrap();
        let c = parse_authorization(&a).unwrap();
        assert_eq!(
            c.param("response"),
            Some("6629fae49393a05397450978507c4ef1")
        );
        assert_eq!(c.param("opaque"), Some("5ccc069c403ebaf9f0171e9517f40e41"));
        assert_eq!(c.param("qop"), Some("auth"));
        assert_eq!(c.param("nc"), Some("00000001"));
    }

    #[test]
    fn rfc7616_examples() {
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let q = QopAuth {
            nc: "00000001",
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        };
        let args = (
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
            "GET",
            "/dir/index.html",
        );
        assert_eq!(
            compute_response(
                Algorithm::Md5,
                args.0,
                args.1,
                args.2,
                args.3,
                args.4,
                nonce,
                Some(q)
            ),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        assert_eq!(
            compute_response(
                Algorithm::Sha256,
                args.0,
                args.1,
                args.2,
                args.3,
                args.4,
                nonce,
                Some(q)
            ),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        // RFC 7616 §3.9.1 sends SHA-256 first, then MD5: the client takes the first.
        let www = "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
            algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
            opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\", \
            Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
            algorithm=MD5, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
            opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let list = parse_challenges(www).unwrap();
        assert_eq!(list.len(), 2);
        let a = DigestClient::respond(www, "GET", "/dir/index.html", args.0, args.2, q.cnonce, 1)
            .unwrap();
        let c = parse_authorization(&a).unwrap();
        assert_eq!(
            c.param("response"),
            Some("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")
        );
        assert_eq!(c.param("algorithm"), Some("SHA-256"));
    }

    #[test]
    fn spec_notes_genieacs_vector() {
        let (u, r, p, n, uri) = (
            "00D09E-GW1-SN0001",
            "cpe@example",
            "s3cret",
            "5f1c0a9e7d3b2c1a0f9e8d7c6b5a4938",
            "/cr-7f3a9c",
        );
        assert_eq!(
            ha1(Algorithm::Md5, u, r, p, n, ""),
            "977018ea9014391a546584988615547f"
        );
        assert_eq!(
            ha2(Algorithm::Md5, "GET", uri),
            "e89453d83f1e39428b3c315a5aa7c5e8"
        );
        let q = QopAuth {
            nc: "00000001",
            cnonce: "3c9d0e1f2a3b4c5d",
        };
        assert_eq!(
            compute_response(Algorithm::Md5, u, r, p, "GET", uri, n, Some(q)),
            "8423251b28544db2c6a1caa6137d7fcf"
        );
        assert_eq!(
            compute_response(Algorithm::Md5, u, r, p, "GET", uri, n, None),
            "2e7c8cea4812138a55ade16656a7f47c"
        );
        // The §g.1 wire headers: GenieACS's comma-without-space shape.
        let www = "Digest realm=\"cpe@example\",qop=\"auth\",nonce=\"5f1c0a9e7d3b2c1a0f9e8d7c6b5a4938\",opaque=\"a1b2c3d4\"";
        let auth = "Digest username=\"00D09E-GW1-SN0001\",realm=\"cpe@example\",nonce=\"5f1c0a9e7d3b2c1a0f9e8d7c6b5a4938\",uri=\"/cr-7f3a9c\",qop=auth,nc=00000001,cnonce=\"3c9d0e1f2a3b4c5d\",response=\"8423251b28544db2c6a1caa6137d7fcf\",opaque=\"a1b2c3d4\"";
        let c = parse_authorization(auth).unwrap();
        assert_eq!(c.param("uri"), Some("/cr-7f3a9c"));
        let mine = DigestClient::respond(www, "GET", uri, u, p, "3c9d0e1f2a3b4c5d", 1).unwrap();
        let m = parse_authorization(&mine).unwrap();
        assert_eq!(m.param("response"), c.param("response"));
        assert_eq!(m.param("algorithm"), None);
    }

    #[test]
    fn md5_sess_client_matches_formula() {
        let www = "Digest realm=\"r\", nonce=\"n\", qop=\"auth\", algorithm=MD5-sess";
        let a = DigestClient::respond(www, "POST", "/acs", "u", "p", "cn", 3).unwrap();
        let c = parse_authorization(&a).unwrap();
        let h1 = Algorithm::Md5
            .hash_hex(format!("{}:n:cn", Algorithm::Md5.hash_hex(b"u:r:p")).as_bytes());
        let h2 = Algorithm::Md5.hash_hex(b"POST:/acs");
        let want = Algorithm::Md5.hash_hex(format!("{h1}:n:00000003:cn:auth:{h2}").as_bytes());
        assert_eq!(c.param("response"), Some(want.as_str()));
        assert_eq!(c.param("algorithm"), Some("MD5-sess"));
        assert_eq!(c.param("nc"), Some("00000003"));
    }

    #[test]
    fn challenge_shape() {
        let s = server();
        let c = s.challenge_with_random(T0, false, [1; 8]);
        assert!(c.starts_with("Digest realm=\"cpe@example\", qop=\"auth\", nonce=\""));
        assert!(c.ends_with("algorithm=MD5"));
        let st = s.challenge(T0, true);
        assert!(st.ends_with(", stale=true"));
        let d = select_digest_challenge(&st).unwrap();
        assert!(d.stale);
        assert_eq!(d.opaque.as_deref(), Some(s.opaque()));
        assert_eq!(d.nonce.len(), 64);
        // Fresh nonces differ even within the same second.
        assert_ne!(
            nonce_of(&s.challenge(T0, false)),
            nonce_of(&s.challenge(T0, false))
        );
    }

    fn answer(s: &DigestServer, now: u64, user: &str, pass: &str, uri: &str, nc: u32) -> String {
        let www = s.challenge(now, false);
        DigestClient::respond(&www, "GET", uri, user, pass, "0123456789abcdef", nc).unwrap()
    }

    #[test]
    fn round_trip_and_failures() {
        let mut s = server();
        let a = answer(&s, T0, "user", "pw", "/cr-1", 1);
        assert_eq!(
            s.verify("GET", "/cr-1", Some(&a), "user", "pw", T0 + 1),
            Ok(())
        );

        let a = answer(&s, T0, "user", "wrong", "/cr-1", 1);
        assert_eq!(
            s.verify("GET", "/cr-1", Some(&a), "user", "pw", T0),
            Err(DigestError::BadResponse)
        );
        let a = answer(&s, T0, "User", "pw", "/cr-1", 1);
        assert_eq!(
            s.verify("GET", "/cr-1", Some(&a), "user", "pw", T0),
            Err(DigestError::WrongUser)
        );
        let a = answer(&s, T0, "user", "pw", "/cr-2", 1);
        assert_eq!(
            s.verify("GET", "/cr-1", Some(&a), "user", "pw", T0),
            Err(DigestError::UriMismatch)
        );
        assert_eq!(
            s.verify("GET", "/cr-1", None, "user", "pw", T0),
            Err(DigestError::Missing)
        );
        assert_eq!(
            s.verify("GET", "/cr-1", Some("Basic dXNlcjpwdw=="), "user", "pw", T0),
            Err(DigestError::Missing)
        );
        // Method is covered by the response.
        let a = answer(&s, T0, "user", "pw", "/cr-1", 1);
        assert_eq!(
            s.verify("POST", "/cr-1", Some(&a), "user", "pw", T0),
            Err(DigestError::BadResponse)
        );
    }

    #[test]
    fn stale_nonce() {
        let mut s = server();
        let a = answer(&s, T0, "user", "pw", "/cr", 1);
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "user", "pw", T0 + 301),
            Err(DigestError::StaleNonce)
        );
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "user", "pw", T0 + 300),
            Ok(())
        );
        // A stale nonce with a wrong password is a bad response, not stale.
        let a = answer(&s, T0, "user", "nope", "/cr", 1);
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "user", "pw", T0 + 1000),
            Err(DigestError::BadResponse)
        );
        // Clock stepped backwards by more than the lifetime: stale too.
        let a = answer(&s, T0, "user", "pw", "/cr", 1);
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "user", "pw", T0 - 301),
            Err(DigestError::StaleNonce)
        );
    }

    #[test]
    fn forged_nonce() {
        let mut s = server();
        let other = DigestServer::new([8u8; 32], "cpe@example", LIFE);
        let a = answer(&other, T0, "user", "pw", "/cr", 1);
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "user", "pw", T0),
            Err(DigestError::BadNonce)
        );
        // A nonce whose timestamp was edited to look fresh.
        let www = s.challenge(T0 - 10_000, false);
        let n = nonce_of(&www);
        let mut raw = from_hex(&n).unwrap();
        raw[..8].copy_from_slice(&T0.to_be_bytes());
        let forged = www.replace(&n, &to_hex(&raw));
        let a = DigestClient::respond(&forged, "GET", "/cr", "user", "pw", "c", 1).unwrap();
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "user", "pw", T0),
            Err(DigestError::BadNonce)
        );
        // Someone else's (GenieACS vector) nonce.
        let www =
            "Digest realm=\"cpe@example\",qop=\"auth\",nonce=\"5f1c0a9e7d3b2c1a0f9e8d7c6b5a4938\"";
        let a = DigestClient::respond(www, "GET", "/cr", "user", "pw", "c", 1).unwrap();
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "user", "pw", T0),
            Err(DigestError::BadNonce)
        );
    }

    #[test]
    fn replay_same_nc_refused_higher_nc_passes() {
        let mut s = server();
        let www = s.challenge(T0, false);
        let a1 = DigestClient::respond(&www, "GET", "/cr", "user", "pw", "c", 1).unwrap();
        assert_eq!(s.verify("GET", "/cr", Some(&a1), "user", "pw", T0), Ok(()));
        assert_eq!(
            s.verify("GET", "/cr", Some(&a1), "user", "pw", T0),
            Err(DigestError::Replay)
        );
        let a2 = DigestClient::respond(&www, "GET", "/cr", "user", "pw", "c", 2).unwrap();
        assert_eq!(s.verify("GET", "/cr", Some(&a2), "user", "pw", T0), Ok(()));
        assert_eq!(
            s.verify("GET", "/cr", Some(&a1), "user", "pw", T0),
            Err(DigestError::Replay)
        );
        // A failed attempt does not consume a count.
        let a3bad = DigestClient::respond(&www, "GET", "/cr", "user", "x", "c", 3).unwrap();
        assert_eq!(
            s.verify("GET", "/cr", Some(&a3bad), "user", "pw", T0),
            Err(DigestError::BadResponse)
        );
        let a3 = DigestClient::respond(&www, "GET", "/cr", "user", "pw", "c", 3).unwrap();
        assert_eq!(s.verify("GET", "/cr", Some(&a3), "user", "pw", T0), Ok(()));
    }

    #[test]
    fn replay_table_is_bounded_and_eviction_never_reopens() {
        let mut s = server();
        let first_www = s.challenge(T0, false);
        let first = DigestClient::respond(&first_www, "GET", "/cr", "u", "p", "c", 1).unwrap();
        assert_eq!(s.verify("GET", "/cr", Some(&first), "u", "p", T0), Ok(()));
        for i in 1..200u64 {
            let a = answer(&s, T0 + i, "u", "p", "/cr", 1);
            assert_eq!(s.verify("GET", "/cr", Some(&a), "u", "p", T0 + i), Ok(()));
            assert!(s.used.len() <= REPLAY_TABLE_SIZE);
        }
        // The first nonce was evicted long ago; replaying it must still fail.
        assert_eq!(
            s.verify("GET", "/cr", Some(&first), "u", "p", T0 + 200),
            Err(DigestError::StaleNonce)
        );
        // A fresh challenge still works.
        let a = answer(&s, T0 + 201, "u", "p", "/cr", 1);
        assert_eq!(s.verify("GET", "/cr", Some(&a), "u", "p", T0 + 201), Ok(()));
    }

    #[test]
    fn no_qop_client() {
        let mut s = server();
        let www = s.challenge(T0, false);
        let n = nonce_of(&www);
        let resp = compute_response(
            Algorithm::Md5,
            "user",
            "cpe@example",
            "pw",
            "GET",
            "/cr",
            &n,
            None,
        );
        let a = format!(
            "Digest username=\"user\", realm=\"cpe@example\", nonce=\"{n}\", uri=\"/cr\", response=\"{resp}\""
        );
        assert_eq!(s.verify("GET", "/cr", Some(&a), "user", "pw", T0), Ok(()));
        // Without nc such a nonce is single-use.
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "user", "pw", T0),
            Err(DigestError::Replay)
        );
        // The client side produces the same thing for a qop-less challenge.
        let www2 = "Digest realm=\"cpe@example\", nonce=\"abc\"";
        let c = DigestClient::respond(www2, "GET", "/cr", "user", "pw", "zz", 1).unwrap();
        let p = parse_authorization(&c).unwrap();
        assert_eq!(p.param("qop"), None);
        assert_eq!(p.param("nc"), None);
        let want = compute_response(
            Algorithm::Md5,
            "user",
            "cpe@example",
            "pw",
            "GET",
            "/cr",
            "abc",
            None,
        );
        assert_eq!(p.param("response"), Some(want.as_str()));
    }

    #[test]
    fn uppercase_hex_and_curl_style_accepted() {
        let mut s = server();
        let www = s.challenge(T0, false);
        let n = nonce_of(&www);
        let q = QopAuth {
            nc: "0000000A",
            cnonce: "NjM0",
        };
        let resp = compute_response(
            Algorithm::Md5,
            "user",
            "cpe@example",
            "pw",
            "GET",
            "/cr?x=1",
            &n,
            Some(q),
        )
        .to_ascii_uppercase();
        // icwmp-style upper case, unquoted qop/nc/algorithm, odd spacing and order.
        let a = format!(
            "digest  response=\"{resp}\" ,URI=\"/cr?x=1\",nc=0000000A , Qop=auth,cnonce=\"NjM0\",\
             algorithm=md5, nonce=\"{n}\", realm=\"cpe@example\", username=\"user\""
        );
        assert_eq!(
            s.verify("GET", "/cr?x=1", Some(&a), "user", "pw", T0),
            Ok(())
        );
    }

    #[test]
    fn absolute_uri_form_tolerated() {
        let mut s = server();
        let www = s.challenge(T0, false);
        let uri = "http://198.51.100.7:7547/cr-7f3a9c?a=b";
        let a = DigestClient::respond(&www, "GET", uri, "u", "p", "c", 1).unwrap();
        assert_eq!(
            s.verify("GET", "/cr-7f3a9c?a=b", Some(&a), "u", "p", T0),
            Ok(())
        );
        let a = DigestClient::respond(&www, "GET", "/cr-7f3a9c", "u", "p", "c", 2).unwrap();
        assert_eq!(
            s.verify("GET", "http://x:1/cr-7f3a9c", Some(&a), "u", "p", T0),
            Ok(())
        );
        let a = DigestClient::respond(&www, "GET", "http://h:1/other", "u", "p", "c", 3).unwrap();
        assert_eq!(
            s.verify("GET", "/cr-7f3a9c", Some(&a), "u", "p", T0),
            Err(DigestError::UriMismatch)
        );
        assert_eq!(origin_form("HTTP://h"), "/");
        assert_eq!(origin_form("http://h?q=1"), "?q=1");
        assert!(uri_matches("http://h?q=1", "/?q=1"));
    }

    #[test]
    fn username_star_and_escapes() {
        let mut s = server();
        let www = s.challenge(T0, false);
        let user = "J\u{e4}s\u{f8}n \"Doe\"";
        let a = DigestClient::respond(&www, "GET", "/cr", user, "pw", "c", 1).unwrap();
        assert!(a.contains("username*=UTF-8''"));
        assert_eq!(s.verify("GET", "/cr", Some(&a), user, "pw", T0), Ok(()));
        let a = DigestClient::respond(&www, "GET", "/cr", "a\"b\\c", "pw", "c", 2).unwrap();
        assert!(a.contains(r#"username="a\"b\\c""#));
        assert_eq!(
            s.verify("GET", "/cr", Some(&a), "a\"b\\c", "pw", T0),
            Ok(())
        );
    }

    #[test]
    fn unsupported_requests() {
        let mut s = server();
        let www = s.challenge(T0, false);
        let n = nonce_of(&www);
        let base = format!(
            "Digest username=\"u\", realm=\"cpe@example\", nonce=\"{n}\", uri=\"/cr\", \
             response=\"00000000000000000000000000000000\", nc=00000001, cnonce=\"c\""
        );
        for extra in [
            ", qop=auth-int",
            ", qop=auth, algorithm=SHA-512",
            ", qop=auth, userhash=true",
        ] {
            let a = format!("{base}{extra}");
            assert_eq!(
                s.verify("GET", "/cr", Some(&a), "u", "p", T0),
                Err(DigestError::Unsupported),
                "{extra}"
            );
        }
        // Only Basic offered / only auth-int offered.
        assert_eq!(
            DigestClient::respond("Basic realm=\"x\"", "GET", "/", "u", "p", "c", 1),
            Err(DigestError::Missing)
        );
        assert_eq!(
            DigestClient::respond(
                "Digest realm=\"x\", nonce=\"n\", qop=\"auth-int\"",
                "GET",
                "/",
                "u",
                "p",
                "c",
                1
            ),
            Err(DigestError::Unsupported)
        );
    }

    #[test]
    fn www_authenticate_with_basic() {
        let www = "Basic realm=\"acs\", Digest realm=\"acs\", nonce=\"abc\", qop=\"auth,auth-int\"";
        assert!(offers_basic(www));
        let list = parse_challenges(www).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].param("realm"), Some("acs"));
        assert_eq!(list[1].param("qop"), Some("auth,auth-int"));
        let a = DigestClient::respond(www, "POST", "/", "u", "p", "c", 1).unwrap();
        assert!(a.starts_with("Digest username=\"u\", realm=\"acs\", nonce=\"abc\""));
        assert!(a.contains("qop=auth, nc=00000001"));
        // Token68 and bare schemes.
        let list =
            parse_challenges("Negotiate, Basic realm=x, NTLM abc+/==, Digest nonce=n, realm=r")
                .unwrap();
        let schemes: Vec<_> = list.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Negotiate", "Basic", "NTLM", "Digest"]);
        assert_eq!(list[2].token68.as_deref(), Some("abc+/=="));
        assert_eq!(list[3].param("realm"), Some("r"));
        assert!(!offers_basic("Digest realm=\"a\", nonce=\"b\""));
    }

    #[test]
    fn malformed_header_table() {
        let long = format!("Digest username=\"{}\"", "a".repeat(MAX_HEADER_LEN));
        let many = format!(
            "Digest {}",
            (0..=MAX_PARAMS)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let cases: &[(&str, DigestError)] = &[
            ("", DigestError::Malformed),
            ("   ", DigestError::Malformed),
            ("Digest", DigestError::Malformed),
            ("Digest username=\"u", DigestError::Malformed),
            ("Digest username=\"u\\", DigestError::Malformed),
            ("Digest username=", DigestError::Malformed),
            ("Digest =\"u\"", DigestError::Malformed),
            ("Digest username=\"u\" realm=\"r\"", DigestError::Malformed),
            (
                "Digest username=\"u\", username=\"v\"",
                DigestError::Malformed,
            ),
            ("Digest username=\"u\"\"", DigestError::Malformed),
            ("Digest username=\"a\u{1}b\"", DigestError::Malformed),
            ("Digest, Digest", DigestError::Malformed),
            ("Basic abc", DigestError::Missing),
            ("Bearer xyz==", DigestError::Missing),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\"",
                DigestError::Malformed,
            ),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\", qop=auth",
                DigestError::Malformed,
            ),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\", qop=auth, nc=1, cnonce=\"c\"",
                DigestError::Malformed,
            ),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\", qop=auth, nc=00000000, cnonce=\"c\"",
                DigestError::Malformed,
            ),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\", qop=auth, nc=+0000001, cnonce=\"c\"",
                DigestError::Malformed,
            ),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\", qop=bogus",
                DigestError::Malformed,
            ),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\", algorithm=MD5-sess",
                DigestError::Malformed,
            ),
            (
                "Digest username*=\"latin1''x\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\"",
                DigestError::Malformed,
            ),
            (long.as_str(), DigestError::Malformed),
            (many.as_str(), DigestError::Malformed),
        ];
        let mut s = server();
        for (h, want) in cases {
            assert_eq!(
                s.verify("GET", "/", Some(h), "u", "p", T0),
                Err(*want),
                "header {h:?}"
            );
        }
        // A valid but foreign-nonce header with a non-hex / wrong-length response.
        let www = s.challenge(T0, false);
        let n = nonce_of(&www);
        for r in ["zz", "0123", "g123456789abcdef0123456789abcdef"] {
            let h = format!(
                "Digest username=\"u\", realm=\"cpe@example\", nonce=\"{n}\", uri=\"/\", response=\"{r}\""
            );
            assert_eq!(
                s.verify("GET", "/", Some(&h), "u", "p", T0),
                Err(DigestError::BadResponse)
            );
        }
    }

    #[test]
    fn debug_hides_secret() {
        let s = DigestServer::new([0xAB; 32], "r", LIFE);
        let d = format!("{s:?}");
        assert!(
            !d.contains("171") && !d.to_lowercase().contains("abab"),
            "{d}"
        );
    }

    #[test]
    fn challenge_survives_genieacs_naive_parser() {
        // GenieACS lib/auth.ts: split off the scheme at the first space, split
        // the rest on ',', take `name=value`, JSON-parse quoted values.
        let s = server();
        let c = s.challenge(T0, true);
        let (scheme, rest) = c.split_once(' ').unwrap();
        assert_eq!(scheme, "Digest");
        let mut seen = Vec::new();
        for part in rest.split(',') {
            let (name, value) = part.split_once('=').unwrap();
            let value = value.trim();
            if value.starts_with('"') {
                assert!(value.ends_with('"') && value.len() >= 2);
                assert!(!value[1..value.len() - 1].contains(['"', '\\']));
            }
            seen.push(name.trim().to_owned());
        }
        assert_eq!(
            seen,
            ["realm", "qop", "nonce", "opaque", "algorithm", "stale"]
        );
    }

    #[test]
    fn quoted_string_escapes() {
        let c = parse_authorization(r#"Digest realm="a\"b\\c, d", nonce="x""#).unwrap();
        assert_eq!(c.param("realm"), Some("a\"b\\c, d"));
        assert_eq!(c.param("nonce"), Some("x"));
        let c = parse_authorization("Digest a=\"\", b = tok ,, c=\"x y\",").unwrap();
        assert_eq!(c.param("a"), Some(""));
        assert_eq!(c.param("b"), Some("tok"));
        assert_eq!(c.param("c"), Some("x y"));
    }

    #[test]
    fn parser_never_panics_on_garbage() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"Digest =,\"\\ \tabcAZ09=/+-*\x01\x7f";
        let mut s = server();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 96) as usize;
            let mut v = String::new();
            let mut y = x;
            for _ in 0..len {
                y ^= y << 13;
                y ^= y >> 7;
                y ^= y << 17;
                v.push(alphabet[(y % alphabet.len() as u64) as usize] as char);
            }
            let _ = parse_challenges(&v);
            let _ = select_digest_challenge(&v);
            let _ = s.verify("GET", "/", Some(&v), "u", "p", T0);
            let _ = DigestClient::respond(&v, "GET", "/", "u", "p", "c", 1);
        }
    }
}
