//! The texts of `/etc/resolv.conf`, `/proc/<pid>/stat` and the one-value files of procfs and
//! sysfs (`/proc/sys/net/…`, `/sys/class/net/<if>/speed`, thermal zones).

use std::net::IpAddr;

/// Name servers kept from resolv.conf at most (glibc uses the first 3).
pub const MAX_NAMESERVERS: usize = 8;

/// The `nameserver` addresses of a resolv.conf, in order, without repeats (a zone index such as
/// `%eth0` is dropped); lines that do not parse are skipped.
pub fn resolv_conf_servers(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(w) = words.next() else { continue };
        let w = w.split('%').next().unwrap_or(w);
        if let Ok(a) = w.parse::<IpAddr>()
            && !out.contains(&a)
        {
            out.push(a);
            if out.len() == MAX_NAMESERVERS {
                break;
            }
        }
    }
    out
}

/// The fields of `/proc/<pid>/stat` the agent reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// The command name (at most 15 bytes in the kernel; it may hold spaces and parentheses).
    pub comm: String,
    /// `R`, `S`, `D`, `T`, `t`, `Z`, `X`, `I`, …
    pub state: char,
    /// 20 + nice for normal processes (0..39), −2..−100 for real-time ones.
    pub priority: i64,
    pub nice: i64,
    /// CPU time in user and kernel mode, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Virtual memory size in bytes.
    pub vsize: u64,
    /// Resident set size in pages.
    pub rss: u64,
}

/// Parses `/proc/<pid>/stat`. The command name is between the first `(` and the **last** `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (pid, rest) = text.split_once(" (")?;
    let close = rest.rfind(')')?;
    let comm = &rest[..close];
    let f: Vec<&str> = rest[close + 1..].split_whitespace().take(22).collect();
    if f.len() < 22 {
        return None;
    }
    let mut state = f[0].chars();
    let (Some(s), None) = (state.next(), state.next()) else {
        return None;
    };
    Some(ProcStat {
        pid: pid.trim().parse().ok()?,
        comm: comm.to_string(),
        state: s,
        utime: f[11].parse().ok()?,
        stime: f[12].parse().ok()?,
        priority: f[15].parse().ok()?,
        nice: f[16].parse().ok()?,
        vsize: f[20].parse().ok()?,
        rss: f[21].parse::<i64>().ok()?.max(0) as u64,
    })
}

/// A file holding one decimal integer (`/sys/class/net/eth0/speed`, a thermal zone's `temp`,
/// `/proc/sys/net/core/rmem_max`).
pub fn parse_int(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

/// The last of whitespace-separated integers (`/proc/sys/net/ipv4/tcp_rmem`: min default max).
pub fn last_int(text: &str) -> Option<i64> {
    text.split_whitespace().last()?.parse().ok()
}

/// A file holding one word (`/proc/sys/net/ipv4/tcp_congestion_control`,
/// `/sys/class/net/eth0/duplex`, a thermal zone's `type`); `None` when empty.
pub fn parse_word(text: &str) -> Option<&str> {
    let w = text.trim();
    (!w.is_empty()).then_some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let text = "# generated\n; comment\nsearch lan\nnameserver 192.168.1.1\n\
                    nameserver  2001:db8::53 # v6\nnameserver fe80::1%eth0\nnameserver bogus\n\
                    nameserver\nnameserver 192.168.1.1\n  nameserver 9.9.9.9\noptions ndots:2\n";
        let s: Vec<String> = resolv_conf_servers(text)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(s, ["192.168.1.1", "2001:db8::53", "fe80::1", "9.9.9.9"]);
        let many: String = (1..=20)
            .map(|i| format!("nameserver 10.0.0.{i}\n"))
            .collect();
        assert_eq!(resolv_conf_servers(&many).len(), MAX_NAMESERVERS);
        assert!(resolv_conf_servers("").is_empty());
    }

    #[test]
    fn stat() {
        let line = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 300 0 0 0 150 50 0 0 20 0 \
                    1 0 12345 10485760 256 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 \
                    0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.comm, "my (odd) cmd");
        assert_eq!(s.state, 'S');
        assert_eq!((s.utime, s.stime), (150, 50));
        assert_eq!((s.priority, s.nice), (20, 0));
        assert_eq!((s.vsize, s.rss), (10485760, 256));

        let rt = "7 (migration/0) S 2 0 0 0 -1 69238848 0 0 0 0 0 3 0 0 -100 0 1 0 3 0 0 \
                  18446744073709551615";
        let s = parse_stat(rt).unwrap();
        assert_eq!(
            (s.comm.as_str(), s.priority, s.stime),
            ("migration/0", -100, 3)
        );

        let nice = "9 (a) R) Z 1 1 1 0 -1 0 0 0 0 0 1 2 0 0 39 19 1 0 3 0 0";
        assert_eq!(
            parse_stat(nice).map(|s| (s.comm, s.state, s.nice)),
            Some(("a) R".into(), 'Z', 19))
        );

        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x S 1 2"), None);
        assert_eq!(
            parse_stat("x (y) S 1 1 1 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 3 0 0"),
            None
        );
        assert_eq!(
            parse_stat("1 (y) SS 1 1 1 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 3 0 0"),
            None
        );
        assert_eq!(
            parse_stat("1 (y) S 1 1 1 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 3 0"),
            None
        );
    }

    #[test]
    fn one_value_files() {
        assert_eq!(parse_int("1000\n"), Some(1000));
        assert_eq!(parse_int("-1\n"), Some(-1));
        assert_eq!(parse_int("45500\n"), Some(45500));
        assert_eq!(parse_int(""), None);
        assert_eq!(last_int("4096\t131072\t6291456\n"), Some(6291456));
        assert_eq!(last_int("\n"), None);
        assert_eq!(parse_word("cubic\n"), Some("cubic"));
        assert_eq!(parse_word(" \n"), None);
    }
}
