//! `manifest.toml` of a deployment-unit archive: parsing, the limits on every field, the
//! relative-path rule shared with the unpacker, and the UUIDs (RFC 4122 text form; the v5
//! UUID given to a DU whose manifest has none). The format is documented in [`super::dir`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::EuInfo;

/// The namespace of the v5 UUIDs cwmpd derives for DUs whose manifest has no `uuid`:
/// UUIDv5(this namespace, vendor + "\n" + name).
pub const UUID_NAMESPACE: &str = "70338d78-dbc5-42dc-b79f-5ce896533069";

/// Longest path of an archive entry, in bytes.
pub const MAX_PATH: usize = 255;
/// Most execution units in one DU.
pub const MAX_UNITS: usize = 16;
/// Most arguments in one `exec` (program included), and their total size in bytes.
pub const MAX_ARGS: usize = 64;
pub const MAX_ARGS_BYTES: usize = 4096;

/// The name of the manifest, and of its signature, at the top of an archive.
pub const MANIFEST: &str = "manifest.toml";
pub const SIGNATURE: &str = "manifest.sig";

/// A manifest that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub vendor: String,
    pub description: String,
    /// Normalised to lower case.
    pub uuid: Option<String>,
    pub units: Vec<EuInfo>,
    /// Path of every regular file of the archive (but the manifest and its signature) to its
    /// SHA-256.
    pub sha256: BTreeMap<String, [u8; 32]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    description: String,
    uuid: Option<String>,
    #[serde(default)]
    unit: Vec<RawUnit>,
    #[serde(default)]
    sha256: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    name: String,
    exec: Vec<String>,
    #[serde(default)]
    autostart: bool,
}

/// Parses and checks `manifest.toml`; the error is a message for the fault string.
pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{MANIFEST}: not UTF-8"))?;
    let raw: RawManifest = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(l) => format!("{MANIFEST} line {l}: {}", e.message().trim()),
            None => format!("{MANIFEST}: {}", e.message().trim()),
        }
    })?;
    check_text("name", &raw.name, 1, 64)?;
    check_text("version", &raw.version, 1, 32)?;
    check_text("vendor", &raw.vendor, 0, 128)?;
    check_text("description", &raw.description, 0, 256)?;
    let uuid = match raw.uuid {
        Some(u) => Some(
            normalize_uuid(&u).ok_or_else(|| format!("{MANIFEST}: uuid {u:?} is not a UUID"))?,
        ),
        None => None,
    };

    let mut sha256 = BTreeMap::new();
    for (path, hex) in raw.sha256 {
        check_rel_path(&path).map_err(|e| format!("{MANIFEST}: [sha256] {e}"))?;
        if path == MANIFEST || path == SIGNATURE {
            return Err(format!("{MANIFEST}: [sha256] must not list {path}"));
        }
        let digest = parse_hex32(&hex)
            .ok_or_else(|| format!("{MANIFEST}: [sha256] {path:?}: not 64 hexadecimal digits"))?;
        sha256.insert(path, digest);
    }

    if raw.unit.len() > MAX_UNITS {
        return Err(format!(
            "{MANIFEST}: {} units (at most {MAX_UNITS})",
            raw.unit.len()
        ));
    }
    let mut names = BTreeSet::new();
    let mut units = Vec::with_capacity(raw.unit.len());
    for u in raw.unit {
        check_unit_name(&u.name)?;
        if !names.insert(u.name.clone()) {
            return Err(format!("{MANIFEST}: two units named {:?}", u.name));
        }
        let Some(program) = u.exec.first() else {
            return Err(format!("{MANIFEST}: unit {:?}: exec is empty", u.name));
        };
        check_rel_path(program)
            .map_err(|e| format!("{MANIFEST}: unit {:?}: exec[0]: {e}", u.name))?;
        if !sha256.contains_key(program) {
            return Err(format!(
                "{MANIFEST}: unit {:?}: exec[0] {program:?} is not a file of the archive",
                u.name
            ));
        }
        let bytes: usize = u.exec.iter().map(|a| a.len() + 1).sum();
        if u.exec.len() > MAX_ARGS || bytes > MAX_ARGS_BYTES {
            return Err(format!(
                "{MANIFEST}: unit {:?}: exec too long (at most {MAX_ARGS} arguments, \
                 {MAX_ARGS_BYTES} bytes)",
                u.name
            ));
        }
        if u.exec.iter().any(|a| a.contains('\0')) {
            return Err(format!(
                "{MANIFEST}: unit {:?}: NUL character in exec",
                u.name
            ));
        }
        units.push(EuInfo {
            name: u.name,
            exec: u.exec,
            autostart: u.autostart,
        });
    }

    Ok(Manifest {
        name: raw.name,
        version: raw.version,
        vendor: raw.vendor,
        description: raw.description,
        uuid,
        units,
        sha256,
    })
}

/// `min..=max` characters, no control characters.
fn check_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(if min > 0 {
            format!("{MANIFEST}: {field} must have {min} to {max} characters (has {n})")
        } else {
            format!("{MANIFEST}: {field} must have at most {max} characters (has {n})")
        });
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{MANIFEST}: control character in {field}"));
    }
    Ok(())
}

fn check_unit_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{MANIFEST}: unit name {name:?} must be 1 to 32 of A-Z a-z 0-9 . _ - (not . or ..)"
        ))
    }
}

/// The canonical relative path of an archive entry: not empty, not absolute, at most
/// [`MAX_PATH`] bytes, no NUL, no empty, `.` or `..` component.
pub fn check_rel_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.len() > MAX_PATH {
        return Err(format!(
            "path of {} bytes (at most {MAX_PATH}): {:?}…",
            path.len(),
            path.chars().take(40).collect::<String>()
        ));
    }
    if path.starts_with('/') {
        return Err(format!("absolute path {path:?}"));
    }
    if path.contains('\0') {
        return Err(format!("NUL character in path {path:?}"));
    }
    for c in path.split('/') {
        match c {
            "" => return Err(format!("empty component in path {path:?}")),
            "." | ".." => return Err(format!("{c:?} component in path {path:?}")),
            _ => {}
        }
    }
    Ok(())
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The RFC 4122 text form (8-4-4-4-12 hexadecimal digits, either case), lower-cased; None
/// for anything else and for the nil UUID (the data model's "no UUID").
pub fn normalize_uuid(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let s = s.to_ascii_lowercase();
    (ok && s != "00000000-0000-0000-0000-000000000000").then_some(s)
}

fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let digits: String = normalize_uuid(s)?.chars().filter(|&c| c != '-').collect();
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// RFC 4122 name-based UUID, version 5 (SHA-1).
pub fn uuid_v5(namespace: &str, name: &[u8]) -> String {
    let ns = uuid_bytes(namespace).expect("namespace is a UUID");
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&ns);
    ctx.update(name);
    let d = ctx.finish();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d.as_ref()[..16]);
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    let h = hex(&u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The UUID of a DU whose manifest has none: UUIDv5([`UUID_NAMESPACE`], vendor LF name).
/// Neither may contain a control character, so the pair maps to one name.
pub fn derived_uuid(vendor: &str, name: &str) -> String {
    uuid_v5(UUID_NAMESPACE, format!("{vendor}\n{name}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(body: &str) -> Result<Manifest, String> {
        parse(body.as_bytes())
    }

    #[test]
    fn full_manifest() {
        let m = manifest(&format!(
            r#"
name = "weather"
version = "1.2.0"
vendor = "Example Co"
description = "Weather widget"
uuid = "6F1C2A9E-0000-4000-8000-00000000000A"
[[unit]]
name = "weather"
exec = ["bin/weather", "--port", "8080"]
autostart = true
[[unit]]
name = "helper_2.x"
exec = ["bin/helper"]
[sha256]
"bin/weather" = "{H}"
"bin/helper" = "{}"
"#,
            H.to_uppercase()
        ))
        .unwrap();
        assert_eq!(m.name, "weather");
        assert_eq!(m.version, "1.2.0");
        assert_eq!(m.vendor, "Example Co");
        assert_eq!(
            m.uuid.as_deref(),
            Some("6f1c2a9e-0000-4000-8000-00000000000a")
        );
        assert_eq!(
            m.units,
            vec![
                EuInfo {
                    name: "weather".into(),
                    exec: vec!["bin/weather".into(), "--port".into(), "8080".into()],
                    autostart: true
                },
                EuInfo {
                    name: "helper_2.x".into(),
                    exec: vec!["bin/helper".into()],
                    autostart: false
                }
            ]
        );
        assert_eq!(m.sha256.len(), 2);
        assert_eq!(hex(&m.sha256["bin/helper"]), H);
    }

    #[test]
    fn minimal_manifest() {
        let m = manifest("name = \"x\"\nversion = \"1\"\n").unwrap();
        assert_eq!(m.vendor, "");
        assert!(m.uuid.is_none() && m.units.is_empty() && m.sha256.is_empty());
    }

    #[test]
    fn bad_manifests() {
        let cases: &[(&str, &str)] = &[
            ("version = \"1\"", "missing field `name`"),
            ("name = \"x\"", "missing field `version`"),
            ("name = \"\"\nversion = \"1\"", "name must have 1 to 64"),
            (
                &format!("name = \"{}\"\nversion = \"1\"", "n".repeat(65)),
                "name must have 1 to 64",
            ),
            (
                &format!("name = \"x\"\nversion = \"{}\"", "1".repeat(33)),
                "version must have 1 to 32",
            ),
            (
                &format!(
                    "name = \"x\"\nversion = \"1\"\nvendor = \"{}\"",
                    "v".repeat(129)
                ),
                "vendor must have at most 128",
            ),
            (
                "name = \"a\\nb\"\nversion = \"1\"",
                "control character in name",
            ),
            (
                "name = \"x\"\nversion = \"1\"\nextra = 1",
                "unknown field `extra`",
            ),
            ("name = \"x\"\nversion = 1", "line 2"),
            (
                "name = \"x\"\nversion = \"1\"\nuuid = \"nope\"",
                "is not a UUID",
            ),
            (
                "name = \"x\"\nversion = \"1\"\nuuid = \"00000000-0000-0000-0000-000000000000\"",
                "is not a UUID",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[sha256]\n\"a\" = \"abc\"",
                "not 64 hexadecimal",
            ),
            (
                &format!("name = \"x\"\nversion = \"1\"\n[sha256]\n\"../a\" = \"{H}\""),
                "\"..\" component",
            ),
            (
                &format!("name = \"x\"\nversion = \"1\"\n[sha256]\n\"manifest.toml\" = \"{H}\""),
                "must not list",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[[unit]]\nname = \"a b\"\nexec = [\"p\"]",
                "unit name \"a b\"",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[[unit]]\nname = \"..\"\nexec = [\"p\"]",
                "unit name \"..\"",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[[unit]]\nname = \"a\"\nexec = []",
                "exec is empty",
            ),
            (
                "name = \"x\"\nversion = \"1\"\n[[unit]]\nname = \"a\"\nexec = [\"bin/a\"]",
                "not a file of the archive",
            ),
            (
                &format!(
                    "name = \"x\"\nversion = \"1\"\n[[unit]]\nname = \"a\"\nexec = [\"/bin/a\"]\n\
                     [sha256]\n\"bin/a\" = \"{H}\""
                ),
                "absolute path",
            ),
            (
                &format!(
                    "name = \"x\"\nversion = \"1\"\n[[unit]]\nname = \"a\"\nexec = [\"bin/a\"]\n\
                     [[unit]]\nname = \"a\"\nexec = [\"bin/a\"]\n[sha256]\n\"bin/a\" = \"{H}\""
                ),
                "two units named",
            ),
            (
                &format!(
                    "name = \"x\"\nversion = \"1\"\n[[unit]]\nname = \"a\"\n\
                     exec = [\"bin/a\", \"x\\u0000\"]\n[sha256]\n\"bin/a\" = \"{H}\""
                ),
                "NUL character in exec",
            ),
            (
                &format!(
                    "name = \"x\"\nversion = \"1\"\n{}[sha256]\n\"a\" = \"{H}\"",
                    (0..17)
                        .map(|i| format!("[[unit]]\nname = \"u{i}\"\nexec = [\"a\"]\n"))
                        .collect::<String>()
                ),
                "17 units",
            ),
        ];
        for (body, want) in cases {
            match manifest(body) {
                Err(e) => assert!(e.contains(want), "{body:?}: {e}"),
                Ok(m) => panic!("{body:?} accepted: {m:?}"),
            }
        }
        assert!(parse(b"name = \"\xff\"").unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn relative_paths() {
        for ok in [
            "a",
            "bin/app",
            "a/b/c.d",
            ".hidden",
            "a..b",
            &"x".repeat(255),
        ] {
            check_rel_path(ok).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../x",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            &"x".repeat(256),
        ] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uuids() {
        assert_eq!(
            normalize_uuid("ABCDEF01-2345-6789-ABCD-EF0123456789").as_deref(),
            Some("abcdef01-2345-6789-abcd-ef0123456789")
        );
        for bad in [
            "",
            "abcdef01-2345-6789-abcd-ef012345678",
            "abcdef01-2345-6789-abcd-ef01234567890",
            "abcdef01+2345-6789-abcd-ef0123456789",
            "gbcdef01-2345-6789-abcd-ef0123456789",
            "00000000-0000-0000-0000-000000000000",
        ] {
            assert!(normalize_uuid(bad).is_none(), "{bad}");
        }
        // RFC 4122 / Python: uuid5(NAMESPACE_DNS, "python.org").
        assert_eq!(
            uuid_v5("6ba7b810-9dad-11d1-80b4-00c04fd430c8", b"python.org"),
            "886313e1-3b8a-5372-9b90-0c9aee199e5d"
        );
        let a = derived_uuid("Example Co", "weather");
        assert_eq!(normalize_uuid(&a).as_deref(), Some(a.as_str()));
        assert_eq!(&a[14..15], "5");
        assert_eq!(a, derived_uuid("Example Co", "weather"));
        assert_ne!(a, derived_uuid("Example C", "oweather"));
        assert_ne!(a, derived_uuid("", "weather"));
    }
}
