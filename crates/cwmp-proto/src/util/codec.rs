//! Byte helpers shared by the wire formats: hex, constant-time comparison, randomness.

/// Lower-case hex.
pub fn to_hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// The value of one hex digit, either case.
pub fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Hex (either case) to bytes; None for odd length or a non-hex digit.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|p| Some((hex_val(p[0])? << 4) | hex_val(p[1])?))
        .collect()
}

/// Constant-time equality of two secrets. Both sides are hashed first, so the time depends
/// neither on where they differ nor on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest as _;
    let (x, y) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    let mut d = 0u8;
    for (p, q) in x.iter().zip(y.iter()) {
        d |= p ^ q;
    }
    std::hint::black_box(d) == 0
}

/// N bytes from the system's secure random generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No usable RNG (does not happen on Linux): time and pid through SHA-256.
        use sha2::Digest as _;
        let seed = format!(
            "{:?}{}{:?}",
            std::time::SystemTime::now(),
            std::process::id(),
            std::time::Instant::now()
        );
        let h = sha2::Sha256::digest(seed.as_bytes());
        for (i, x) in b.iter_mut().enumerate() {
            *x = h[i % h.len()];
        }
    }
    b
}

/// A uniformly random u32.
pub fn random_u32() -> u32 {
    u32::from_le_bytes(random_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_compare() {
        assert_eq!(to_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret1"));
        assert_ne!(random_bytes::<16>(), [0u8; 16]);
    }
}
