//! The agent's one URL type: an `http`/`https` URL parsed by `http::Uri` (the parser hyper
//! uses), with the default port filled in and IPv6 literals bare — for the ACS, file
//! transfers, the connection-request URL's host and the STUN client's ACS host.

use hyper::Uri;

/// A URL the agent cannot use, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

/// A parsed `http`/`https` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// Host without brackets (IPv6 literals bare).
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses an absolute `http`/`https` URL (a fragment is dropped: it is never sent).
    pub fn parse(s: &str) -> Result<Url, UrlError> {
        let bad = |why: &str| UrlError(format!("{why}: {s}"));
        let trimmed = s.trim();
        let no_fragment = trimmed.split('#').next().unwrap_or("");
        let uri: Uri = no_fragment.parse().map_err(|e| bad(&format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some(x) if x.eq_ignore_ascii_case("http") => false,
            Some(x) if x.eq_ignore_ascii_case("https") => true,
            Some(_) => return Err(bad("scheme must be http or https")),
            None => return Err(bad("no scheme")),
        };
        let auth = uri.authority().ok_or_else(|| bad("no host"))?;
        let raw_host = auth.host();
        let host = match raw_host.strip_prefix('[') {
            Some(v6) => {
                let h = v6.strip_suffix(']').ok_or_else(|| bad("unclosed ["))?;
                h.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| bad("bad IPv6 literal"))?;
                h
            }
            None if raw_host.is_empty() || raw_host.contains(':') => {
                return Err(bad("bad host"));
            }
            None => raw_host,
        };
        // `Authority::port_u16` is `None` both for "no port" and for one that does not fit in
        // a u16: tell them apart from the text after the host.
        let host_port = auth.as_str().rsplit('@').next().unwrap_or("");
        let port_text = host_port.strip_prefix(raw_host).unwrap_or("");
        let port = match port_text.strip_prefix(':') {
            None | Some("") => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('?') => format!("/{p}"),
            Some(p) => p.to_string(),
        };
        Ok(Url {
            https,
            host: host.to_string(),
            port,
            path,
        })
    }

    /// Host and port of an http(s) URL (`None` when it does not parse).
    pub fn host_port(s: &str) -> Option<(String, u16)> {
        Url::parse(s).ok().map(|u| (u.host, u.port))
    }

    fn default_port(&self) -> u16 {
        if self.https { 443 } else { 80 }
    }

    /// `host[:port]` for the Host header and for display.
    pub fn authority(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }

    pub fn to_url_string(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority(),
            self.path
        )
    }

    pub fn same_origin(&self, o: &Url) -> bool {
        self.https == o.https && self.host.eq_ignore_ascii_case(&o.host) && self.port == o.port
    }

    /// Resolves a `Location` value against this URL.
    pub fn join(&self, location: &str) -> Result<Url, UrlError> {
        let loc = location.trim();
        if loc.contains("://") {
            return Url::parse(loc);
        }
        let mut u = self.clone();
        if let Some(rest) = loc.strip_prefix("//") {
            let scheme = if self.https { "https" } else { "http" };
            return Url::parse(&format!("{scheme}://{rest}"));
        }
        let loc = loc.split('#').next().unwrap_or("");
        u.path = if loc.starts_with('/') {
            loc.to_string()
        } else if loc.starts_with('?') {
            let base = self.path.split('?').next().unwrap_or("/");
            format!("{base}{loc}")
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{loc}")
        };
        if u.path.is_empty() {
            u.path = "/".into();
        }
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let u = Url::parse("http://acs.example.com/acs?x=1").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "acs.example.com", 80, "/acs?x=1")
        );
        let u = Url::parse("HTTPS://[::1]:8443").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "::1", 8443, "/")
        );
        assert_eq!(u.authority(), "[::1]:8443");
        assert_eq!(u.to_url_string(), "https://[::1]:8443/");
        let u = Url::parse("https://user:pw@10.0.0.1/a/b").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 443));
        assert_eq!(u.authority(), "10.0.0.1");
        let u = Url::parse(" http://h?x#frag ").unwrap();
        assert_eq!((u.host.as_str(), u.path.as_str()), ("h", "/?x"));
        assert_eq!(
            Url::host_port("http://[2001:db8::1]:80/"),
            Some(("2001:db8::1".into(), 80))
        );
        for bad in [
            "ftp://x/",
            "http://",
            "http:///x",
            "http://host:0/",
            "http://host:99999/",
            "http://host:8x/",
            "http://[zz]/",
            "http://[::1/",
            "acs.example.com/acs",
            "/acs",
            "http://a b/",
            "http://h/a b",
            "",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn join() {
        let u = Url::parse("http://h:81/a/b?q").unwrap();
        assert_eq!(u.join("/x").unwrap().to_url_string(), "http://h:81/x");
        assert_eq!(u.join("c?d").unwrap().to_url_string(), "http://h:81/a/c?d");
        assert_eq!(u.join("?z").unwrap().to_url_string(), "http://h:81/a/b?z");
        assert_eq!(u.join("//o:5/p").unwrap().to_url_string(), "http://o:5/p");
        assert_eq!(
            u.join("https://[::1]/y").unwrap().to_url_string(),
            "https://[::1]/y"
        );
    }
}
