//! A streaming reader of tar archives, as much of the format as a deployment unit needs.
//!
//! Read: POSIX ustar headers (the `prefix` field joined to the name), GNU long names (`L`;
//! `K`, the long link name, is read and dropped), PAX extended headers (`x`: `path=` and
//! `size=` apply to the next entry, other keys are ignored), PAX global headers (`g`: ignored),
//! sizes in octal or GNU base-256. Every header's checksum is verified (the unsigned sum, or
//! the signed one old tars wrote).
//!
//! The archive ends at the first all-zero block, or at end of input exactly where a header
//! would start (some writers leave out the two zero blocks). End of input anywhere else (inside
//! a header, an entry's data or its padding), a header with a bad checksum or bad numbers, or an
//! extended header with no entry after it is [`Error::Corrupt`]. [`Reader::finish`] then reads
//! what follows the zero block: only zero bytes (the padding of the last record), at most
//! 1 MiB of them, may follow, so that a damaged tail (and, under gzip, a bad CRC) is noticed.
//!
//! The reader only parses: what an entry may be and where it may go is the caller's policy
//! (see [`super::dir`]). Nothing is read ahead: an entry's data is read with
//! [`Reader::read_data`] straight from the underlying stream; what the caller leaves unread is
//! skipped by the next [`Reader::next_entry`].

use std::io::{self, Read};

/// The tar block size.
pub const BLOCK: usize = 512;
/// Largest `L`, `K`, `x` or `g` entry accepted (they are read into memory or skipped).
const MAX_META: u64 = 64 * 1024;
/// Most extension headers in a row before an entry.
const MAX_META_RUN: usize = 16;
/// Most zero bytes read after the end-of-archive block.
const MAX_TRAILER: u64 = 1 << 20;

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (`0`, NUL, or `7` contiguous file).
    File,
    /// A directory (`5`, or an old-style regular entry whose name ends with `/`).
    Dir,
    /// `2`
    Symlink,
    /// `1`
    HardLink,
    /// `3`
    CharDevice,
    /// `4`
    BlockDevice,
    /// `6`
    Fifo,
    /// Any other type flag (GNU sparse files, multi-volume parts, vendor types).
    Other(u8),
}

impl Kind {
    fn from_flag(flag: u8) -> Kind {
        match flag {
            b'0' | 0 | b'7' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink,
            b'1' => Kind::HardLink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        }
    }

    /// Words for an error message ("symbolic link").
    pub fn describe(&self) -> String {
        match self {
            Kind::File => "regular file".into(),
            Kind::Dir => "directory".into(),
            Kind::Symlink => "symbolic link".into(),
            Kind::HardLink => "hard link".into(),
            Kind::CharDevice => "character device".into(),
            Kind::BlockDevice => "block device".into(),
            Kind::Fifo => "FIFO".into(),
            Kind::Other(f) if f.is_ascii_graphic() => format!("entry of type '{}'", *f as char),
            Kind::Other(f) => format!("entry of type 0x{f:02x}"),
        }
    }
}

/// One entry's header, extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as stored (PAX `path`, else the GNU long name, else ustar prefix + name):
    /// bytes, not checked in any way.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// The permission bits (mode & 0o7777) as stored.
    pub mode: u32,
}

/// Why reading failed.
#[derive(Debug)]
pub enum Error {
    /// The underlying stream failed (for a gzip stream, this includes its format errors).
    Io(io::Error),
    /// The tar data itself is bad or cut short.
    Corrupt(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Corrupt(s) => f.write_str(s),
        }
    }
}

fn corrupt<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::Corrupt(msg.into()))
}

/// Reads entries one after the other; see the module documentation.
pub struct Reader<R> {
    inner: R,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding bytes after the current entry's data.
    pad: u64,
    /// The end of the archive was reached.
    done: bool,
    /// ... by a zero block (so [`Reader::finish`] has a trailer to check).
    zero_block: bool,
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            remaining: 0,
            pad: 0,
            done: false,
            zero_block: false,
        }
    }

    /// The next entry, or None at the end of the archive. The unread data of the previous
    /// entry is skipped first.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        let mut meta_run = 0;
        loop {
            let mut block = [0u8; BLOCK];
            let got = self.read_header_block(&mut block)?;
            if !got || block.iter().all(|&b| b == 0) {
                if meta_run > 0 {
                    return corrupt("tar: extended header without an entry after it");
                }
                self.done = true;
                self.zero_block = got;
                return Ok(None);
            }
            check_checksum(&block)?;
            let flag = block[156];
            let Some(size) = parse_number(&block[124..136]) else {
                return corrupt("tar: bad size field in header");
            };
            if matches!(flag, b'L' | b'K' | b'x' | b'g') {
                meta_run += 1;
                if meta_run > MAX_META_RUN {
                    return corrupt("tar: too many extended headers in a row");
                }
                if size > MAX_META {
                    return corrupt(format!(
                        "tar: extended header of {size} bytes (at most {MAX_META})"
                    ));
                }
                let data = self.read_meta(size)?;
                match flag {
                    b'L' => long_name = Some(trim_nul(&data).to_vec()),
                    b'x' => parse_pax(&data, &mut pax_path, &mut pax_size)?,
                    _ => {} // K: link name of a link we refuse anyway; g: ignored
                }
                continue;
            }
            let Some(mode) = parse_octal(&block[100..108]) else {
                return corrupt("tar: bad mode field in header");
            };
            let path = pax_path
                .or(long_name)
                .unwrap_or_else(|| header_name(&block));
            let mut kind = Kind::from_flag(flag);
            if kind == Kind::File && flag != b'7' && path.ends_with(b"/") {
                // Old tars wrote directories as regular entries with a trailing slash.
                kind = Kind::Dir;
            }
            let size = pax_size.unwrap_or(size);
            self.remaining = size;
            self.pad = padding(size);
            return Ok(Some(Entry {
                path,
                kind,
                size,
                mode: (mode & 0o7777) as u32,
            }));
        }
    }

    /// Reads the current entry's data; Ok(0) once all of it was read. End of input before
    /// that is [`Error::Corrupt`].
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = read_retry(&mut self.inner, &mut buf[..want])?;
        if n == 0 {
            return corrupt("tar: archive truncated inside an entry's data");
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// After [`Reader::next_entry`] returned None: checks that only zero bytes (at most
    /// 1 MiB) follow, and reads the underlying stream to its end.
    pub fn finish(mut self) -> Result<(), Error> {
        if !self.done {
            return corrupt("tar: finish before the end of the archive");
        }
        if !self.zero_block {
            return Ok(());
        }
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        loop {
            let n = read_retry(&mut self.inner, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return corrupt("tar: data after the end of the archive");
            }
            total += n as u64;
            if total > MAX_TRAILER {
                return corrupt("tar: more than 1 MiB of padding after the end of the archive");
            }
        }
    }

    /// Discards the rest of the current entry and its padding.
    fn skip_rest(&mut self) -> Result<(), Error> {
        let n = self.remaining + self.pad;
        if n > 0 {
            let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
            if skipped < n {
                return corrupt("tar: archive truncated inside an entry");
            }
            self.remaining = 0;
            self.pad = 0;
        }
        Ok(())
    }

    /// Reads a whole extension entry (with its padding) into memory.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, Error> {
        let mut data = vec![0u8; size as usize];
        self.read_exact_or_corrupt(&mut data)?;
        self.remaining = 0;
        self.pad = padding(size);
        self.skip_rest()?;
        Ok(data)
    }

    /// Ok(false) at end of input before the block's first byte; the whole block otherwise.
    fn read_header_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, Error> {
        let n = read_retry(&mut self.inner, block)?;
        if n == 0 {
            return Ok(false);
        }
        self.read_exact_or_corrupt(&mut block[n..])?;
        Ok(true)
    }

    fn read_exact_or_corrupt(&mut self, mut buf: &mut [u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = read_retry(&mut self.inner, buf)?;
            if n == 0 {
                return corrupt("tar: archive truncated inside a header");
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

fn read_retry(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// ustar: `prefix/name` when the POSIX magic is there and the prefix is set; plain name
/// otherwise (GNU tars use the prefix area for other things).
fn header_name(block: &[u8; BLOCK]) -> Vec<u8> {
    let name = trim_nul(&block[0..100]);
    let prefix = trim_nul(&block[345..500]);
    if &block[257..263] == b"ustar\0" && !prefix.is_empty() {
        let mut p = prefix.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    } else {
        name.to_vec()
    }
}

fn check_checksum(block: &[u8; BLOCK]) -> Result<(), Error> {
    let Some(stored) = parse_octal(&block[148..156]) else {
        return corrupt("tar: bad header checksum field (not a tar archive, or a damaged one)");
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
        Ok(())
    } else {
        corrupt("tar: header checksum mismatch (not a tar archive, or a damaged one)")
    }
}

/// An octal field: optional leading spaces, digits, then NULs or spaces to the end. Empty is 0.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < field.len() && field[i] == b' ' {
        i += 1;
    }
    let mut v: u64 = 0;
    while i < field.len() && (b'0'..=b'7').contains(&field[i]) {
        v = v.checked_mul(8)?.checked_add(u64::from(field[i] - b'0'))?;
        i += 1;
    }
    field[i..].iter().all(|&b| b == 0 || b == b' ').then_some(v)
}

/// A numeric field in octal or GNU base-256 (high bit of the first byte set; negative refused).
fn parse_number(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&f) if f & 0x80 != 0 => {
            if f & 0x40 != 0 {
                return None; // negative
            }
            let mut v = u64::from(f & 0x3f);
            for &b in &field[1..] {
                v = v.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            Some(v)
        }
        _ => parse_octal(field),
    }
}

/// PAX records `<len> <key>=<value>\n`; `path` and `size` are kept, the rest ignored.
fn parse_pax(
    mut data: &[u8],
    path: &mut Option<Vec<u8>>,
    size: &mut Option<u64>,
) -> Result<(), Error> {
    while !data.is_empty() {
        let Some(sp) = data.iter().position(|&b| b == b' ') else {
            return corrupt("tar: bad PAX record");
        };
        let len = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok());
        let Some(len) = len.filter(|&l| l > sp + 1 && l <= data.len()) else {
            return corrupt("tar: bad PAX record length");
        };
        let record = &data[sp + 1..len];
        let Some(record) = record.strip_suffix(b"\n") else {
            return corrupt("tar: PAX record without newline");
        };
        let Some(eq) = record.iter().position(|&b| b == b'=') else {
            return corrupt("tar: PAX record without '='");
        };
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => *path = Some(value.to_vec()),
            b"size" => {
                let v = std::str::from_utf8(value)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                match v {
                    Some(v) => *size = Some(v),
                    None => return corrupt("tar: bad PAX size"),
                }
            }
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

/// A minimal tar writer for tests (ours and [`super::dir`]'s): ustar headers, with GNU `L` or
/// PAX `x` headers for names that do not fit.
#[cfg(test)]
pub(crate) mod testwriter {
    use super::BLOCK;

    /// How to store a name longer than 100 bytes.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Long {
        Gnu,
        Pax,
    }

    pub struct Writer {
        pub out: Vec<u8>,
        pub long: Long,
    }

    impl Writer {
        pub fn new() -> Writer {
            Writer {
                out: Vec::new(),
                long: Long::Pax,
            }
        }

        /// A raw header with the given type flag (no extension headers).
        pub fn header(&mut self, name: &[u8], flag: u8, size: u64, mode: u32, link: &[u8]) {
            let mut h = [0u8; BLOCK];
            let n = name.len().min(100);
            h[..n].copy_from_slice(&name[..n]);
            put_octal(&mut h[100..108], u64::from(mode));
            put_octal(&mut h[108..116], 0);
            put_octal(&mut h[116..124], 0);
            put_octal(&mut h[124..136], size);
            put_octal(&mut h[136..148], 1_700_000_000);
            h[156] = flag;
            let l = link.len().min(100);
            h[157..157 + l].copy_from_slice(&link[..l]);
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
            put_octal(&mut h[148..155], sum);
            h[155] = b' ';
            self.out.extend_from_slice(&h);
        }

        /// Data of the entry whose header was just written, padded.
        pub fn data(&mut self, data: &[u8]) {
            self.out.extend_from_slice(data);
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            self.out.extend(std::iter::repeat_n(0u8, pad));
        }

        /// An entry (header, extension for a long name, data).
        pub fn entry(&mut self, name: &str, flag: u8, mode: u32, data: &[u8], link: &str) {
            if name.len() > 100 {
                match self.long {
                    Long::Gnu => {
                        self.header(b"././@LongLink", b'L', name.len() as u64 + 1, 0, b"");
                        let mut n = name.as_bytes().to_vec();
                        n.push(0);
                        self.data(&n);
                    }
                    Long::Pax => {
                        let rec = pax_record("path", name);
                        self.header(b"PaxHeaders/x", b'x', rec.len() as u64, 0o644, b"");
                        self.data(&rec);
                    }
                }
            }
            self.header(
                name.as_bytes(),
                flag,
                data.len() as u64,
                mode,
                link.as_bytes(),
            );
            self.data(data);
        }

        pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
            self.entry(name, b'0', mode, data, "");
        }

        pub fn dir(&mut self, name: &str) {
            self.entry(name, b'5', 0o755, b"", "");
        }

        /// The two zero blocks.
        pub fn finish(mut self) -> Vec<u8> {
            self.out.extend(std::iter::repeat_n(0u8, 2 * BLOCK));
            self.out
        }
    }

    pub fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    fn put_octal(field: &mut [u8], v: u64) {
        let s = format!("{:0width$o}", v, width = field.len() - 1);
        field[..s.len()].copy_from_slice(s.as_bytes());
        field[s.len()..].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::testwriter::{Long, Writer, pax_record};
    use super::*;

    fn read_all(data: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, Error> {
        let mut r = Reader::new(data);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut d = Vec::new();
            let mut buf = [0u8; 100];
            loop {
                let n = r.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                d.extend_from_slice(&buf[..n]);
            }
            out.push((e, d));
        }
        r.finish()?;
        Ok(out)
    }

    fn is_corrupt(r: Result<Vec<(Entry, Vec<u8>)>, Error>, what: &str) {
        match r {
            Err(Error::Corrupt(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("expected Corrupt({what}), got {other:?}"),
        }
    }

    #[test]
    fn reads_files_dirs_and_modes() {
        let mut w = Writer::new();
        w.dir("bin/");
        w.file("bin/app", 0o4755, b"#!/bin/sh\necho hi\n");
        w.file("empty", 0o644, b"");
        w.file("big", 0o600, &[7u8; 1500]);
        let got = read_all(&w.finish()).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0.kind, Kind::Dir);
        assert_eq!(got[0].0.path, b"bin/");
        assert_eq!(got[1].0.mode, 0o4755);
        assert_eq!(got[1].1, b"#!/bin/sh\necho hi\n");
        assert_eq!(got[2].0.size, 0);
        assert_eq!(got[3].1, vec![7u8; 1500]);
    }

    #[test]
    fn unread_data_is_skipped() {
        let mut w = Writer::new();
        w.file("a", 0o644, &[1u8; 700]);
        w.file("b", 0o644, b"bee");
        let data = w.finish();
        let mut r = Reader::new(&data[..]);
        assert_eq!(r.next_entry().unwrap().unwrap().path, b"a");
        let mut buf = [0u8; 10];
        assert_eq!(r.read_data(&mut buf).unwrap(), 10);
        let b = r.next_entry().unwrap().unwrap();
        assert_eq!(b.path, b"b");
        assert_eq!(r.read_data(&mut buf).unwrap(), 3);
        assert!(r.next_entry().unwrap().is_none());
        assert!(r.next_entry().unwrap().is_none());
        r.finish().unwrap();
    }

    #[test]
    fn long_names_gnu_pax_and_ustar_prefix() {
        let long = format!("{}/{}", "d".repeat(90), "f".repeat(90));
        for style in [Long::Gnu, Long::Pax] {
            let mut w = Writer::new();
            w.long = style;
            w.file(&long, 0o644, b"x");
            w.file("short", 0o644, b"y");
            let got = read_all(&w.finish()).unwrap();
            assert_eq!(got[0].0.path, long.as_bytes(), "{style:?}");
            assert_eq!(got[0].1, b"x");
            // The extension applies to one entry only.
            assert_eq!(got[1].0.path, b"short");
        }
        // ustar prefix field.
        let mut w = Writer::new();
        w.header(b"name", b'0', 1, 0o644, b"");
        let mut data = w.out.clone();
        data[345..351].copy_from_slice(b"prefix");
        fix_checksum(&mut data[..BLOCK]);
        data.extend_from_slice(&[b'z'; BLOCK]);
        data.extend_from_slice(&[0u8; 2 * BLOCK]);
        let got = read_all(&data).unwrap();
        assert_eq!(got[0].0.path, b"prefix/name");
    }

    #[test]
    fn pax_global_headers_are_ignored_and_size_applies() {
        let mut w = Writer::new();
        let g = pax_record("path", "ignored");
        w.header(b"global", b'g', g.len() as u64, 0o644, b"");
        w.data(&g);
        let mut x = pax_record("mtime", "1700000000.5");
        x.extend(pax_record("size", "4"));
        w.header(b"PaxHeaders/f", b'x', x.len() as u64, 0o644, b"");
        w.data(&x);
        // The header says 0 bytes, the PAX size says 4.
        w.header(b"f", b'0', 0, 0o644, b"");
        w.data(b"four");
        let got = read_all(&w.finish()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.path, b"f");
        assert_eq!(got[0].1, b"four");
    }

    #[test]
    fn base256_size() {
        let mut w = Writer::new();
        w.header(b"f", b'0', 0, 0o644, b"");
        let mut data = w.out;
        data[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        fix_checksum(&mut data[..BLOCK]);
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&[0u8; BLOCK - 3 + 2 * BLOCK]);
        let got = read_all(&data).unwrap();
        assert_eq!(got[0].1, b"abc");
    }

    #[test]
    fn kinds_are_reported() {
        let mut w = Writer::new();
        w.entry("l", b'2', 0o777, b"", "target");
        w.entry("h", b'1', 0o644, b"", "l");
        w.entry("c", b'3', 0o644, b"", "");
        w.entry("p", b'6', 0o644, b"", "");
        w.entry("s", b'S', 0o644, b"", "");
        w.entry("olddir/", 0, 0o755, b"", "");
        let kinds: Vec<Kind> = read_all(&w.finish())
            .unwrap()
            .into_iter()
            .map(|(e, _)| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                Kind::Symlink,
                Kind::HardLink,
                Kind::CharDevice,
                Kind::Fifo,
                Kind::Other(b'S'),
                Kind::Dir
            ]
        );
    }

    #[test]
    fn end_of_input_at_a_header_boundary_is_the_end() {
        let mut w = Writer::new();
        w.file("a", 0o644, b"abc");
        let got = read_all(&w.out).unwrap();
        assert_eq!(got.len(), 1);
        assert!(read_all(b"").unwrap().is_empty());
    }

    #[test]
    fn truncation_is_corrupt() {
        let mut w = Writer::new();
        w.file("a", 0o644, &[1u8; 1000]);
        let full = w.finish();
        // Inside the header, the data, the padding.
        is_corrupt(read_all(&full[..100]), "truncated inside a header");
        is_corrupt(read_all(&full[..BLOCK + 10]), "truncated inside an entry");
        is_corrupt(read_all(&full[..BLOCK + 1010]), "truncated inside an entry");
        // An extension header with nothing after it.
        let mut w = Writer::new();
        let x = pax_record("path", "p");
        w.header(b"x", b'x', x.len() as u64, 0o644, b"");
        w.data(&x);
        is_corrupt(read_all(&w.out), "without an entry");
        is_corrupt(read_all(&w.finish()), "without an entry");
    }

    #[test]
    fn bad_headers_are_corrupt() {
        let mut w = Writer::new();
        w.file("a", 0o644, b"abc");
        let mut data = w.finish();
        data[0] = b'b'; // checksum no longer matches
        is_corrupt(read_all(&data), "checksum mismatch");
        is_corrupt(read_all(&[b'x'; 2048]), "checksum");
        // Bad octal in the size field.
        let mut w = Writer::new();
        w.file("a", 0o644, b"abc");
        let mut data = w.finish();
        data[124] = b'9';
        fix_checksum(&mut data[..BLOCK]);
        is_corrupt(read_all(&data), "bad size");
        // Bad PAX record.
        let mut w = Writer::new();
        w.header(b"x", b'x', 5, 0o644, b"");
        w.data(b"99 a\n");
        w.file("a", 0o644, b"");
        is_corrupt(read_all(&w.finish()), "PAX");
        // Oversized extension header.
        let mut w = Writer::new();
        w.header(b"L", b'L', MAX_META + 1, 0o644, b"");
        is_corrupt(read_all(&w.out), "extended header of");
    }

    #[test]
    fn trailer_must_be_zeros() {
        let mut w = Writer::new();
        w.file("a", 0o644, b"abc");
        let mut data = w.finish();
        data.extend_from_slice(&[0u8; 8192]);
        assert_eq!(read_all(&data).unwrap().len(), 1);
        data.push(1);
        is_corrupt(read_all(&data), "after the end");
        // One zero block then a header: the archive ended at the zero block.
        let mut w = Writer::new();
        w.file("a", 0o644, b"abc");
        w.out.extend_from_slice(&[0u8; BLOCK]);
        w.file("b", 0o644, b"abc");
        is_corrupt(read_all(&w.finish()), "after the end");
    }

    fn fix_checksum(h: &mut [u8]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
    }
}
