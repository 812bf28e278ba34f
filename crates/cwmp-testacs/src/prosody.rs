//! The Prosody configuration the project's tests, demo and benchmark run a throw-away XMPP
//! server with: one virtual host on one client port, TLS required (certificates under
//! `<dir>/certs/<domain>.crt|.key`), internal hashed accounts, no s2s/HTTP, files under `dir`.

use std::path::Path;

/// Where and how one Prosody instance runs.
pub struct ProsodyConfig<'a> {
    /// The directory holding `certs/`, `data/`, the pid file and the log.
    pub dir: &'a Path,
    /// Distinguishes the pid and log files of instances sharing `dir` ("" for none).
    pub tag: &'a str,
    pub ip: &'a str,
    pub port: u16,
    pub domain: &'a str,
    /// Prosody log level for the log file ("info", "warn").
    pub log_level: &'a str,
}

impl ProsodyConfig<'_> {
    /// The text of `prosody.cfg.lua`. Prosody refuses to run as root unless told to.
    pub fn text(&self) -> String {
        let d = self.dir.display();
        let tag = if self.tag.is_empty() {
            String::new()
        } else {
            format!("-{}", self.tag)
        };
        let root = if running_as_root() {
            "run_as_root = true"
        } else {
            ""
        };
        let (ip, port, domain, level) = (self.ip, self.port, self.domain, self.log_level);
        format!(
            r#"pidfile = "{d}/prosody{tag}.pid"
data_path = "{d}/data"
{root}
interfaces = {{ "{ip}" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "posix" }}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
log = {{ {level} = "{d}/prosody{tag}.log" }}
certificates = "{d}/certs"
VirtualHost "{domain}"
  ssl = {{ certificate = "{d}/certs/{domain}.crt"; key = "{d}/certs/{domain}.key"; }}
"#
        )
    }
}

fn running_as_root() -> bool {
    // The effective uid, from /proc (no libc call needed here).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_host_port_and_files() {
        let t = ProsodyConfig {
            dir: Path::new("/tmp/x"),
            tag: "lo",
            ip: "10.0.0.1",
            port: 5299,
            domain: "xmpp.test",
            log_level: "warn",
        }
        .text();
        assert!(t.contains("pidfile = \"/tmp/x/prosody-lo.pid\""), "{t}");
        assert!(t.contains("interfaces = { \"10.0.0.1\" }"), "{t}");
        assert!(t.contains("c2s_ports = { 5299 }"), "{t}");
        assert!(
            t.contains("log = { warn = \"/tmp/x/prosody-lo.log\" }"),
            "{t}"
        );
        assert!(
            t.contains("certificate = \"/tmp/x/certs/xmpp.test.crt\""),
            "{t}"
        );
    }
}
