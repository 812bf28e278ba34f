//! xsd:dateTime parsing and formatting without a calendar crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month, day) for days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses an xsd:dateTime (`YYYY-MM-DDTHH:MM:SS[.frac][Z|(+|-)HH:MM]`) into Unix seconds.
/// A value without a zone is taken as UTC.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo as u32) as i64 {
        return None;
    }
    if h > 24 || mi > 59 || se > 60 || (h == 24 && (mi != 0 || se != 0)) {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &r[n..];
    }
    let offset = match rest {
        "" | "Z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            let hh: i64 = z[1..3].parse().ok()?;
            let mm: i64 = z[4..6].parse().ok()?;
            if hh > 14 || mm > 59 {
                return None;
            }
            let o = hh * 3600 + mm * 60;
            if z.starts_with('-') { -o } else { o }
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo as u32, d as u32) * 86400 + h * 3600 + mi * 60 + se - offset)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_datetime(unix: i64) -> String {
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Current Unix time in seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The current time as an xsd:dateTime.
/// xsd:dateTime Unknown Time (TR-069 / TR-106): what the CPE reports for a time it does not know.
pub const UNKNOWN_TIME: &str = "0001-01-01T00:00:00Z";

/// 2020-01-01T00:00:00Z: a wall clock before this was never set (a box without RTC boots in
/// 1970) and is treated as not synchronised.
pub const PLAUSIBLE_SINCE: i64 = 1_577_836_800;

/// Whether the wall clock can be trusted as absolute time: it reads after [`PLAUSIBLE_SINCE`].
/// A heuristic (the kernel's NTP status would miss a clock set from an RTC): an STB without
/// RTC comes up in 1970 until NTP sets it.
pub fn clock_synchronised(unix: i64) -> bool {
    unix >= PLAUSIBLE_SINCE
}

/// The Inform `CurrentTime`: now, or Unknown Time while the clock is not synchronised.
pub fn current_time_or_unknown(unix: i64) -> String {
    if clock_synchronised(unix) {
        format_datetime(unix)
    } else {
        UNKNOWN_TIME.to_string()
    }
}

pub fn now_datetime() -> String {
    format_datetime(now_unix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for t in [0i64, 951782400, 1_800_000_000, -62135596800] {
            assert_eq!(parse_datetime(&format_datetime(t)), Some(t));
        }
        assert_eq!(format_datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_datetime(-62135596800), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn zones_and_fractions() {
        assert_eq!(parse_datetime("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_datetime("1970-01-01T00:00:00.123Z"), Some(0));
        assert!(parse_datetime("2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_datetime("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_datetime("1970-01-01T00:00:00."), None);
        assert_eq!(parse_datetime("1970-01-01 00:00:00"), None);
    }
}
