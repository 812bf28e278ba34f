//! The SASL client mechanisms of the XMPP client, with no IO: SCRAM-SHA-1 and SCRAM-SHA-256
//! (RFC 5802, RFC 7677), their `-PLUS` variants with channel-binding data the caller supplies
//! (`tls-exporter`, RFC 9266), and PLAIN (RFC 4616). Hashes, HMAC and PBKDF2 from ring.
//!
//! SASLprep (RFC 4013) is limited to printable ASCII, which it leaves unchanged: a user name or
//! password with other characters is refused with [`SaslError::NotAscii`] rather than sent in a
//! form the server may normalise differently.

use std::fmt;
use std::num::NonZeroU32;

use crate::util::codec::ct_eq;

/// Most PBKDF2 iterations accepted from a server (the work is done on the box).
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Why authentication cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The user name or password is not printable ASCII.
    NotAscii,
    /// The server's message is malformed or breaks the protocol (why).
    Protocol(String),
    /// The server reported an error (`e=`).
    Server(String),
    /// The server's signature is wrong: it does not know the password.
    BadServerSignature,
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaslError::NotAscii => f.write_str(
                "user name or password is not printable ASCII (SASLprep of other text is not supported)",
            ),
            SaslError::Protocol(w) => write!(f, "protocol error: {w}"),
            SaslError::Server(e) => write!(f, "server error: {e}"),
            SaslError::BadServerSignature => f.write_str("server signature invalid"),
        }
    }
}

impl std::error::Error for SaslError {}

fn proto(w: &str) -> SaslError {
    SaslError::Protocol(w.to_string())
}

/// The SCRAM hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let alg = match self {
            ScramHash::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => ring::hmac::HMAC_SHA256,
        };
        ring::hmac::sign(&ring::hmac::Key::new(alg, key), data)
            .as_ref()
            .to_vec()
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            ScramHash::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => &ring::digest::SHA256,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }

    fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: NonZeroU32) -> Vec<u8> {
        let (alg, len) = match self {
            ScramHash::Sha1 => (ring::pbkdf2::PBKDF2_HMAC_SHA1, 20),
            ScramHash::Sha256 => (ring::pbkdf2::PBKDF2_HMAC_SHA256, 32),
        };
        let mut out = vec![0u8; len];
        ring::pbkdf2::derive(alg, iterations, salt, password, &mut out);
        out
    }
}

/// What the client says about channel binding (the GS2 header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelBinding {
    /// `n`: the client does not support channel binding (no TLS).
    None,
    /// `y`: the client could bind, but the server did not offer a `-PLUS` mechanism.
    NotOffered,
    /// `p=tls-exporter`: the exporter value of the TLS connection (32 bytes, RFC 9266).
    TlsExporter(Vec<u8>),
}

impl ChannelBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            ChannelBinding::None => "n,,",
            ChannelBinding::NotOffered => "y,,",
            ChannelBinding::TlsExporter(_) => "p=tls-exporter,,",
        }
    }
}

fn ascii(s: &str) -> Result<(), SaslError> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(SaslError::NotAscii)
    }
}

enum ScramState {
    Initial,
    /// After client-first: the bare client-first message.
    SentFirst,
    /// After client-final: the expected server signature.
    SentFinal(Vec<u8>),
    Done,
}

/// A SCRAM client exchange.
pub struct Scram {
    hash: ScramHash,
    user: String,
    password: String,
    nonce: String,
    binding: ChannelBinding,
    client_first_bare: String,
    state: ScramState,
}

impl Scram {
    /// A client for `user`/`password`; `nonce` is the client nonce (printable, no comma).
    pub fn new(
        hash: ScramHash,
        user: &str,
        password: &str,
        nonce: &str,
        binding: ChannelBinding,
    ) -> Result<Scram, SaslError> {
        ascii(user)?;
        ascii(password)?;
        if nonce.is_empty()
            || nonce.contains(',')
            || !nonce.bytes().all(|b| (0x21..0x7f).contains(&b))
        {
            return Err(proto("bad client nonce"));
        }
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Ok(Scram {
            hash,
            user: name,
            password: password.to_string(),
            nonce: nonce.to_string(),
            binding,
            client_first_bare: String::new(),
            state: ScramState::Initial,
        })
    }

    /// A client with a fresh random nonce.
    pub fn with_random_nonce(
        hash: ScramHash,
        user: &str,
        password: &str,
        binding: ChannelBinding,
    ) -> Result<Scram, SaslError> {
        let nonce = base64_encode(&crate::util::codec::random_bytes::<18>());
        Scram::new(hash, user, password, &nonce, binding)
    }

    /// The mechanism name (`SCRAM-SHA-256-PLUS`, …).
    pub fn mechanism(&self) -> &'static str {
        let plus = matches!(self.binding, ChannelBinding::TlsExporter(_));
        match (self.hash, plus) {
            (ScramHash::Sha1, false) => "SCRAM-SHA-1",
            (ScramHash::Sha1, true) => "SCRAM-SHA-1-PLUS",
            (ScramHash::Sha256, false) => "SCRAM-SHA-256",
            (ScramHash::Sha256, true) => "SCRAM-SHA-256-PLUS",
        }
    }

    /// The client-first message (the initial response).
    pub fn initial(&mut self) -> Vec<u8> {
        self.client_first_bare = format!("n={},r={}", self.user, self.nonce);
        self.state = ScramState::SentFirst;
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare).into_bytes()
    }

    /// Answers the server-first message (a challenge) with the client-final message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        if !matches!(self.state, ScramState::SentFirst) {
            return Err(proto("unexpected challenge"));
        }
        let sf = std::str::from_utf8(server_first).map_err(|_| proto("server-first not UTF-8"))?;
        let mut parts = sf.split(',');
        let (mut nonce, mut salt, mut iter) = (None, None, None);
        for (i, p) in parts.by_ref().enumerate() {
            match (i, p.split_at_checked(2)) {
                (0, Some(("m=", _))) => return Err(proto("mandatory extension")),
                (_, Some(("e=", e))) => return Err(SaslError::Server(e.to_string())),
                (0, Some(("r=", v))) => nonce = Some(v),
                (1, Some(("s=", v))) => salt = Some(v),
                (2, Some(("i=", v))) => iter = Some(v),
                (0..=2, _) => return Err(proto("malformed server-first")),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iter)) = (nonce, salt, iter) else {
            return Err(proto("incomplete server-first"));
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(proto("server nonce does not extend the client nonce"));
        }
        if !nonce.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(proto("bad server nonce"));
        }
        let salt = base64_decode(salt).ok_or_else(|| proto("salt not base64"))?;
        let iter: u32 = iter.parse().map_err(|_| proto("bad iteration count"))?;
        let iter = NonZeroU32::new(iter)
            .filter(|i| i.get() <= MAX_ITERATIONS)
            .ok_or_else(|| proto("iteration count out of range"))?;
        let mut cb = self.binding.gs2_header().as_bytes().to_vec();
        if let ChannelBinding::TlsExporter(data) = &self.binding {
            cb.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={nonce}", base64_encode(&cb));
        let auth_message = format!("{},{sf},{without_proof}", self.client_first_bare);
        let h = self.hash;
        let salted = h.pbkdf2(self.password.as_bytes(), &salt, iter);
        let client_key = h.hmac(&salted, b"Client Key");
        let stored_key = h.hash(&client_key);
        let signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = h.hmac(&salted, b"Server Key");
        self.state = ScramState::SentFinal(h.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", base64_encode(&proof)).into_bytes())
    }

    /// Checks the server-final message (the additional data of `<success/>`).
    pub fn finish(&mut self, server_final: &[u8]) -> Result<(), SaslError> {
        let ScramState::SentFinal(expected) = std::mem::replace(&mut self.state, ScramState::Done)
        else {
            return Err(proto("success before the exchange completed"));
        };
        let sf = std::str::from_utf8(server_final).map_err(|_| proto("server-final not UTF-8"))?;
        let first = sf.split(',').next().unwrap_or("");
        if let Some(e) = first.strip_prefix("e=") {
            return Err(SaslError::Server(e.to_string()));
        }
        let v = first
            .strip_prefix("v=")
            .and_then(base64_decode)
            .ok_or_else(|| proto("malformed server-final"))?;
        if ct_eq(&v, &expected) {
            Ok(())
        } else {
            Err(SaslError::BadServerSignature)
        }
    }
}

/// PLAIN's initial response (no authorization identity).
pub fn plain(user: &str, password: &str) -> Result<Vec<u8>, SaslError> {
    ascii(user)?;
    ascii(password)?;
    Ok(format!("\0{user}\0{password}").into_bytes())
}

// ------------------------------------------------------------------------------------------
// Base64 (RFC 4648, with padding)
// ------------------------------------------------------------------------------------------

/// Standard base64 with padding (the `base64` crate, as the rest of the project).
pub fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Standard base64 with padding (whitespace ignored); None when malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (raw, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(raw));
        }
        assert_eq!(base64_decode("Zg="), None);
        assert_eq!(base64_decode("Zg==Zg=="), None);
        assert_eq!(base64_decode("Z!=="), None);
    }

    #[test]
    fn scram_sha1_rfc5802_example() {
        let mut s = Scram::new(
            ScramHash::Sha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
            ChannelBinding::None,
        )
        .unwrap();
        assert_eq!(s.mechanism(), "SCRAM-SHA-1");
        assert_eq!(s.initial(), b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let fin = s
            .respond(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        s.finish(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=").unwrap();
    }

    #[test]
    fn scram_sha256_rfc7677_example_and_bad_signature() {
        let mk = || {
            Scram::new(
                ScramHash::Sha256,
                "user",
                "pencil",
                "rOprNGfwEbeRWgbNEkqO",
                ChannelBinding::None,
            )
            .unwrap()
        };
        let first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let mut s = mk();
        s.initial();
        let fin = s.respond(first).unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        s.finish(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        let mut s = mk();
        s.initial();
        s.respond(first).unwrap();
        assert_eq!(
            s.finish(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(SaslError::BadServerSignature)
        );
        // Success without the exchange, a nonce not extending ours, a server error, and
        // iteration counts out of range.
        let mut s = mk();
        assert!(s.finish(b"v=AAAA").is_err());
        let mut s = mk();
        s.initial();
        assert!(matches!(
            s.respond(b"r=other,s=QQ==,i=4096"),
            Err(SaslError::Protocol(_))
        ));
        let mut s = mk();
        s.initial();
        assert_eq!(
            s.respond(b"e=unknown-user"),
            Err(SaslError::Server("unknown-user".into()))
        );
        for i in ["0", "1000001", "x"] {
            let mut s = mk();
            s.initial();
            let m = format!("r=rOprNGfwEbeRWgbNEkqOxyz,s=QQ==,i={i}");
            assert!(s.respond(m.as_bytes()).is_err(), "{i}");
        }
    }

    #[test]
    fn channel_binding_and_names() {
        let mut s = Scram::new(
            ScramHash::Sha256,
            "a,b=c",
            "pw",
            "abc",
            ChannelBinding::TlsExporter(vec![1, 2, 3]),
        )
        .unwrap();
        assert_eq!(s.mechanism(), "SCRAM-SHA-256-PLUS");
        assert_eq!(s.initial(), b"p=tls-exporter,,n=a=2Cb=3Dc,r=abc");
        let fin = String::from_utf8(s.respond(b"r=abcdef,s=QQ==,i=1").unwrap()).unwrap();
        let c = base64_encode(b"p=tls-exporter,,\x01\x02\x03");
        assert!(fin.starts_with(&format!("c={c},r=abcdef,p=")), "{fin}");
        let mut s = Scram::new(ScramHash::Sha1, "u", "p", "n", ChannelBinding::NotOffered).unwrap();
        assert!(s.initial().starts_with(b"y,,"));
        assert!(matches!(
            Scram::new(ScramHash::Sha1, "u", "pässword", "n", ChannelBinding::None),
            Err(SaslError::NotAscii)
        ));
        assert_eq!(plain("u", "p").unwrap(), b"\0u\0p");
        assert_eq!(plain("ü", "p"), Err(SaslError::NotAscii));
    }
}
