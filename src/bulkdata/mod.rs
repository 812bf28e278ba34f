//! TR-181 bulk data reports over HTTP (TR-069 Annex N), without IO: the bounded collection
//! of a report's values, the JSON (ObjectHierarchy, NameValuePair) and CSV (ParameterPerRow,
//! ParameterPerColumn) encoders, the body that carries retained reports, the names reported
//! for partial and wildcard references, and the reporting-interval arithmetic.
//! The engine side (profiles, timers, HTTP, retries, retention): `crate::engine::bulkdata`.
//!
//! Choices where the standard leaves room (or where its texts disagree):
//!
//! * `Unix-Epoch` timestamps are milliseconds, as the TR-181 2.15 enumeration text says
//!   (the examples of TR-069 Annex N show seconds). While the wall clock is not set, the
//!   milliseconds since boot are used (TR-181's rule); ISO-8601 uses the dateTime Unknown
//!   Time rule (`0001-01-01T00:00:00Z` plus the time since boot).
//! * JSON values follow their TR-106 type: the integer types and `decimal` are JSON numbers,
//!   `boolean` is `true`/`false`, everything else (and a value that does not parse as its
//!   type) a string.
//! * A `Parameter.{i}.Name` replaces the part of the Reference before its first `*` (a
//!   wildcard reference), the whole object path (a partial path) or the whole path (a
//!   parameter); the rest of each resolved path follows it (`Name.1.Stats.BytesSent`).
//! * Two references that yield the same name report it once (the first); in an
//!   ObjectHierarchy report a name that is both a value and an object keeps the value.
//! * CSV: a field is enclosed in EscapeCharacter when it contains the field separator, the
//!   row separator, the escape character, CR or LF; an escape character inside is doubled
//!   (RFC 4180 with the profile's characters). A ParameterPerColumn report whose columns
//!   differ from the report before it in the same body gets its own header row.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How the report is encoded (`EncodingType` and the encoding's `ReportFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonObjectHierarchy,
    JsonNameValuePair,
    CsvParameterPerRow,
    CsvParameterPerColumn,
}

impl Format {
    /// The `BBF-Report-Format` header value (an RFC 2616 token).
    pub fn token(self) -> &'static str {
        match self {
            Format::JsonObjectHierarchy => "ObjectHierarchy",
            Format::JsonNameValuePair => "NameValuePair",
            Format::CsvParameterPerRow => "ParameterPerRow",
            Format::CsvParameterPerColumn => "ParameterPerColumn",
        }
    }

    pub fn is_json(self) -> bool {
        matches!(
            self,
            Format::JsonObjectHierarchy | Format::JsonNameValuePair
        )
    }

    /// The `Content-Type` of a report body.
    pub fn content_type(self) -> &'static str {
        if self.is_json() {
            "application/json; charset=UTF-8"
        } else {
            "text/csv; charset=UTF-8"
        }
    }
}

/// `ReportTimestamp` / `RowTimestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    UnixEpoch,
    Iso8601,
    None,
}

impl Stamp {
    pub fn parse(s: &str) -> Stamp {
        match s {
            "ISO-8601" => Stamp::Iso8601,
            "None" => Stamp::None,
            _ => Stamp::UnixEpoch,
        }
    }
}

/// Everything the encoder needs from a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    pub format: Format,
    pub stamp: Stamp,
    pub field_sep: String,
    pub row_sep: String,
    pub escape: String,
}

impl Encoding {
    /// A JSON encoding (the CSV characters are not used).
    pub fn json(format: Format, stamp: Stamp) -> Encoding {
        Encoding {
            format,
            stamp,
            field_sep: ",".into(),
            row_sep: "\r\n".into(),
            escape: "\"".into(),
        }
    }
}

/// When a report was collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionTime {
    /// Milliseconds since 1970 (wall clock), or since boot when the clock is not set.
    pub unix_ms: i64,
    /// The wall clock is set (see `cwmp_proto::util::time::clock_synchronised`).
    pub synchronised: bool,
    /// Milliseconds since boot (for the unknown-time forms).
    pub uptime_ms: i64,
}

impl CollectionTime {
    fn epoch_ms(&self) -> i64 {
        if self.synchronised {
            self.unix_ms
        } else {
            self.uptime_ms
        }
    }

    fn iso(&self) -> String {
        let secs = if self.synchronised {
            self.unix_ms.div_euclid(1000)
        } else {
            // TR-069 Table 12: Unknown Time plus the time since boot.
            -62_135_596_800 + self.uptime_ms.div_euclid(1000)
        };
        crate::util::time::format_datetime(secs)
    }
}

/// The JSON type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Num,
    Bool,
}

fn kind_of(xsi_type: &str, value: &str) -> Kind {
    match xsi_type {
        "xsd:int" | "xsd:long" => {
            if value.parse::<i64>().is_ok() {
                Kind::Num
            } else {
                Kind::Str
            }
        }
        "xsd:unsignedInt" | "xsd:unsignedLong" => {
            if value.parse::<u64>().is_ok() {
                Kind::Num
            } else {
                Kind::Str
            }
        }
        "xsd:decimal" => {
            let ok = !value.is_empty()
                && value.parse::<f64>().is_ok_and(f64::is_finite)
                && value
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
            if ok { Kind::Num } else { Kind::Str }
        }
        "xsd:boolean" => match value {
            "true" | "false" | "1" | "0" => Kind::Bool,
            _ => Kind::Str,
        },
        _ => Kind::Str,
    }
}

/// One collected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub value: String,
    /// The TR-106 type (`unsignedInt`, without the `xsd:` prefix).
    pub type_name: &'static str,
    kind: Kind,
}

/// The values of one report, bounded in count and bytes: what does not fit is counted, not
/// kept.
#[derive(Debug)]
pub struct Collector {
    entries: Vec<Entry>,
    seen: std::collections::HashSet<String>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    /// Values left out because a bound was reached.
    pub dropped: usize,
}

impl Collector {
    pub fn new(max_entries: usize, max_bytes: usize) -> Collector {
        Collector {
            entries: Vec::new(),
            seen: Default::default(),
            bytes: 0,
            max_entries,
            max_bytes,
            dropped: 0,
        }
    }

    /// Adds one value; `false` when it was left out (a bound, or a name already reported).
    pub fn push(&mut self, name: &str, value: &str, xsi_type: &'static str) -> bool {
        if self.seen.contains(name) {
            return false;
        }
        // An upper bound of the encoded size in any format: the escaped name and value, and
        // the punctuation, timestamp and type around them (a CSV row).
        let cost = escaped_len(name) + escaped_len(value) + 48;
        if self.entries.len() >= self.max_entries || self.bytes + cost > self.max_bytes {
            self.dropped += 1;
            return false;
        }
        self.bytes += cost;
        self.seen.insert(name.to_string());
        self.entries.push(Entry {
            name: name.to_string(),
            value: value.to_string(),
            type_name: xsi_type.strip_prefix("xsd:").unwrap_or(xsi_type),
            kind: kind_of(xsi_type, value),
        });
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// One encoded report, kept for retransmission: for JSON the report object (an element of
/// the `Report` array), for CSV its header row and its data rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoded {
    #[serde(default)]
    pub header: String,
    pub body: String,
}

impl Encoded {
    pub fn size(&self) -> usize {
        self.header.len() + self.body.len()
    }
}

/// The longest `s` gets when escaped for JSON or quoted for CSV (one-character escape).
fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            c if (c as u32) < 0x20 => 6,
            '"' | '\\' => 2,
            c => c.len_utf8(),
        })
        .sum::<usize>()
        + 2
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_value(out: &mut String, e: &Entry) {
    match e.kind {
        Kind::Num => out.push_str(&e.value),
        Kind::Bool => out.push_str(if e.value == "true" || e.value == "1" {
            "true"
        } else {
            "false"
        }),
        Kind::Str => json_str(out, &e.value),
    }
}

fn json_stamp(out: &mut String, t: &CollectionTime, stamp: Stamp) -> bool {
    match stamp {
        Stamp::None => false,
        Stamp::UnixEpoch => {
            let _ = write!(out, "\"CollectionTime\":{}", t.epoch_ms());
            true
        }
        Stamp::Iso8601 => {
            out.push_str("\"CollectionTime\":");
            json_str(out, &t.iso());
            true
        }
    }
}

/// An ObjectHierarchy tree: a value (index into the entries) or an object.
enum Node {
    Leaf(usize),
    Obj(BTreeMap<String, Node>),
}

fn insert(root: &mut BTreeMap<String, Node>, name: &str, idx: usize) {
    let segs: Vec<&str> = name.split('.').filter(|s| !s.is_empty()).collect();
    let Some((last, dirs)) = segs.split_last() else {
        return;
    };
    let mut cur = root;
    for d in dirs {
        let n = cur
            .entry((*d).to_string())
            .or_insert_with(|| Node::Obj(BTreeMap::new()));
        match n {
            Node::Obj(m) => cur = m,
            // A value already has this name: it is kept, this one is not reported.
            Node::Leaf(_) => return,
        }
    }
    cur.entry((*last).to_string()).or_insert(Node::Leaf(idx));
}

fn write_tree(out: &mut String, m: &BTreeMap<String, Node>, entries: &[Entry], first: bool) {
    let mut first = first;
    for (k, n) in m {
        if !first {
            out.push(',');
        }
        first = false;
        json_str(out, k);
        out.push(':');
        match n {
            Node::Leaf(i) => json_value(out, &entries[*i]),
            Node::Obj(sub) => {
                out.push('{');
                write_tree(out, sub, entries, true);
                out.push('}');
            }
        }
    }
}

fn csv_field(out: &mut String, s: &str, enc: &Encoding) {
    let needs = !enc.escape.is_empty()
        && (s.contains(enc.field_sep.as_str()) && !enc.field_sep.is_empty()
            || s.contains(enc.row_sep.as_str()) && !enc.row_sep.is_empty()
            || s.contains(enc.escape.as_str())
            || s.contains('\n')
            || s.contains('\r'));
    if needs {
        out.push_str(&enc.escape);
        out.push_str(&s.replace(&enc.escape, &enc.escape.repeat(2)));
        out.push_str(&enc.escape);
    } else {
        out.push_str(s);
    }
}

fn csv_row(out: &mut String, fields: &[&str], enc: &Encoding) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(&enc.field_sep);
        }
        csv_field(out, f, enc);
    }
    out.push_str(&enc.row_sep);
}

/// Encodes one report.
pub fn encode(enc: &Encoding, t: &CollectionTime, values: &Collector) -> Encoded {
    let entries = values.entries();
    let mut out = String::with_capacity(values.bytes + 64);
    match enc.format {
        Format::JsonNameValuePair => {
            out.push('{');
            let mut first = !json_stamp(&mut out, t, enc.stamp);
            for e in entries {
                if !first {
                    out.push(',');
                }
                first = false;
                json_str(&mut out, &e.name);
                out.push(':');
                json_value(&mut out, e);
            }
            out.push('}');
            Encoded {
                header: String::new(),
                body: out,
            }
        }
        Format::JsonObjectHierarchy => {
            let mut root = BTreeMap::new();
            for (i, e) in entries.iter().enumerate() {
                insert(&mut root, &e.name, i);
            }
            out.push('{');
            let first = !json_stamp(&mut out, t, enc.stamp);
            write_tree(&mut out, &root, entries, first);
            out.push('}');
            Encoded {
                header: String::new(),
                body: out,
            }
        }
        Format::CsvParameterPerRow => {
            let stamp = csv_stamp(t, enc.stamp);
            let mut header = String::new();
            let mut cols = Vec::new();
            if stamp.is_some() {
                cols.push("ReportTimestamp");
            }
            cols.extend(["ParameterName", "ParameterValue", "ParameterType"]);
            csv_row(&mut header, &cols, enc);
            for e in entries {
                let mut row: Vec<&str> = Vec::with_capacity(4);
                if let Some(s) = &stamp {
                    row.push(s);
                }
                row.extend([e.name.as_str(), e.value.as_str(), e.type_name]);
                csv_row(&mut out, &row, enc);
            }
            Encoded { header, body: out }
        }
        Format::CsvParameterPerColumn => {
            let stamp = csv_stamp(t, enc.stamp);
            let mut header = String::new();
            let mut names: Vec<&str> = Vec::with_capacity(entries.len() + 1);
            let mut vals: Vec<&str> = Vec::with_capacity(entries.len() + 1);
            if let Some(s) = &stamp {
                names.push("ReportTimestamp");
                vals.push(s);
            }
            for e in entries {
                names.push(&e.name);
                vals.push(&e.value);
            }
            csv_row(&mut header, &names, enc);
            csv_row(&mut out, &vals, enc);
            Encoded { header, body: out }
        }
    }
}

fn csv_stamp(t: &CollectionTime, stamp: Stamp) -> Option<String> {
    match stamp {
        Stamp::None => None,
        Stamp::UnixEpoch => Some(t.epoch_ms().to_string()),
        Stamp::Iso8601 => Some(t.iso()),
    }
}

/// The body of one HTTP request: the retained reports, oldest first, then the current one
/// (TR-069 Annex N: JSON reports are elements of the `Report` array; CSV reports are rows
/// after their header).
pub fn assemble<'a>(format: Format, reports: impl IntoIterator<Item = &'a Encoded>) -> String {
    let mut out = String::new();
    if format.is_json() {
        out.push_str("{\"Report\":[");
        for (i, r) in reports.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&r.body);
        }
        out.push_str("]}");
    } else {
        let mut last: Option<&str> = None;
        for r in reports {
            if last != Some(r.header.as_str()) {
                out.push_str(&r.header);
                last = Some(r.header.as_str());
            }
            out.push_str(&r.body);
        }
    }
    out
}

/// The name a resolved `path` is reported under, for a reference `reference` whose
/// `Parameter.{i}.Name` is `name` (empty: the path itself).
pub fn reported_name(name: &str, reference: &str, path: &str) -> String {
    if name.is_empty() {
        return path.to_string();
    }
    let prefix = match reference.find('*') {
        Some(star) => &reference[..star],
        None => reference,
    };
    match path.strip_prefix(prefix) {
        Some("") => name.to_string(),
        Some(rest) => {
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            format!("{name}.{rest}")
        }
        None => path.to_string(),
    }
}

/// Whether a `Parameter.{i}.Reference` is well formed: empty (not reported), or a path under
/// `Device.` whose segments are names, instance numbers or `*` in place of one.
pub fn reference_ok(r: &str) -> bool {
    if r.is_empty() {
        return true;
    }
    if !r.starts_with("Device.") || r.contains("..") {
        return false;
    }
    let body = r.strip_suffix('.').unwrap_or(r);
    body.split('.').enumerate().all(|(i, seg)| {
        !seg.is_empty()
            && (seg == "*" && i > 0
                || seg.bytes().all(|b| b.is_ascii_digit())
                || seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    })
}

/// Milliseconds from `now_unix_ms` to the end of the current reporting interval when
/// intervals end at `time_ref + k·interval` (k any integer): always in `(0, interval]`.
pub fn ms_to_aligned_end(now_unix_ms: i64, time_ref_unix: i64, interval_s: u32) -> u64 {
    let period = i64::from(interval_s.max(1)) * 1000;
    let phase = (now_unix_ms - time_ref_unix * 1000).rem_euclid(period);
    (period - phase) as u64
}

/// `%`-encodes a query component (RFC 3986 unreserved characters stay).
pub fn query_escape(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The URL with the `RequestURIParameter` pairs appended as its query.
pub fn url_with_query(url: &str, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return url.to_string();
    }
    let (base, frag) = match url.split_once('#') {
        Some((b, _)) => (b, true),
        None => (url, false),
    };
    let _ = frag;
    let mut out = base.to_string();
    out.push(if base.contains('?') { '&' } else { '?' });
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        query_escape(&mut out, k);
        out.push('=');
        query_escape(&mut out, v);
    }
    out
}

/// An HTTP `Date` header value (RFC 7231 IMF-fixdate) for Unix seconds.
pub fn http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    let (y, m, d) = crate::util::time::civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m as usize).saturating_sub(1) % 12],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// gzip of a report body.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::new(6),
    );
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests;
