//! Settings from the kernel command line (`[agent] kernel_cmdline`, normally `/proc/cmdline`),
//! so that one firmware image serves every rig and every operator: the boot loader appends
//! `cwmpd.*` words and the agent takes them as factory values and local settings.
//!
//! | word | effect |
//! |---|---|
//! | `cwmpd.acs=URL` | factory value of `Device.ManagementServer.URL` |
//! | `cwmpd.param.<path>=<value>` | factory value of any parameter, e.g. `cwmpd.param.Device.ManagementServer.ConnectionRequestUsername=stb1` |
//! | `cwmpd.public_url=URL` | `[connreq] public_url` (a fixed port forward in front of the box) |
//! | `cwmpd.external_port=N` | `[connreq] external_port` (port forward; public address from STUN) |
//! | `cwmpd.log_level=L` | `[agent] log_level` |
//!
//! Words are split as the kernel splits them: at spaces, except inside double quotes, which
//! are removed (`cwmpd.param.Device.DeviceInfo.X_Label="living room"`). Words that do not
//! start with `cwmpd.` belong to others and are ignored. A `cwmpd.` word that is unknown, has
//! no `=`, names no parameter path, or repeats a setting is an error: the agent (and
//! `cwmpd check-config`) stops with a message naming the word, never falls back to a default.
//! The parameter paths and values are then checked against the data model like those of the
//! configuration file's `[parameters]` table.

/// One setting taken from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// A factory value by TR-181 path.
    Param(String, String),
    PublicUrl(String),
    ExternalPort(u16),
    LogLevel(String),
}

/// The keys understood, for error messages.
const KNOWN: &str =
    "cwmpd.acs, cwmpd.param.<TR-181 path>, cwmpd.public_url, cwmpd.external_port, cwmpd.log_level";

/// Splits a command line into words the way the kernel does (double quotes group and are
/// removed; an unterminated quote runs to the end).
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The `cwmpd.` settings of a command line, in order, or why one of them is unusable.
pub fn parse(text: &str) -> Result<Vec<Setting>, String> {
    let mut out: Vec<Setting> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for w in words(text) {
        let Some(rest) = w.strip_prefix("cwmpd.") else {
            continue;
        };
        let Some((key, value)) = rest.split_once('=') else {
            return Err(format!(
                "{w:?}: no value (expected cwmpd.KEY=VALUE; known keys: {KNOWN})"
            ));
        };
        let s = if let Some(path) = key.strip_prefix("param.") {
            if !path.starts_with("Device.") || path.ends_with('.') || path.contains("..") {
                return Err(format!(
                    "{w:?}: {path:?} is not a parameter path under Device."
                ));
            }
            Setting::Param(path.to_string(), value.to_string())
        } else {
            match key {
                "acs" => {
                    if value.is_empty() {
                        return Err(format!("{w:?}: the ACS URL is empty"));
                    }
                    Setting::Param("Device.ManagementServer.URL".into(), value.into())
                }
                "public_url" => Setting::PublicUrl(value.into()),
                "external_port" => match value.parse::<u16>() {
                    Ok(p) if p > 0 => Setting::ExternalPort(p),
                    _ => return Err(format!("{w:?}: not a port number 1..65535")),
                },
                "log_level" => Setting::LogLevel(value.into()),
                _ => {
                    return Err(format!(
                        "{w:?}: unknown key cwmpd.{key} (known keys: {KNOWN})"
                    ));
                }
            }
        };
        let id = match &s {
            Setting::Param(p, _) => p.clone(),
            other => format!("{other:?}")
                .split('(')
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        if seen.contains(&id) {
            return Err(format!("{w:?}: {id} is given twice"));
        }
        seen.push(id);
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_the_kernel() {
        assert_eq!(
            words("console=ttyAMA0  a=\"b c\" \"d e\"=f x=\"unterminated y"),
            ["console=ttyAMA0", "a=b c", "d e=f", "x=unterminated y"]
        );
        assert!(words("  \n").is_empty());
        assert_eq!(words("k=\"\""), ["k="]);
    }

    #[test]
    fn cwmpd_words_become_settings_and_others_are_ignored() {
        let s = parse(
            "console=ttyAMA0 rdinit=/init cwmpd.acs=http://10.0.2.2:7557/acs \
             cwmpd.param.Device.ManagementServer.ConnectionRequestUsername=stb1 \
             cwmpd.param.Device.DeviceInfo.X_Label=\"living room\" cwmpd.param.Device.X.Empty= \
             cwmpd.public_url=http://127.0.0.1:17547/ cwmpd.external_port=17547 cwmpd.log_level=debug \
             cwmpdx.foo=1 quiet\n",
        )
        .unwrap();
        assert_eq!(
            s,
            [
                Setting::Param(
                    "Device.ManagementServer.URL".into(),
                    "http://10.0.2.2:7557/acs".into()
                ),
                Setting::Param(
                    "Device.ManagementServer.ConnectionRequestUsername".into(),
                    "stb1".into()
                ),
                Setting::Param("Device.DeviceInfo.X_Label".into(), "living room".into()),
                Setting::Param("Device.X.Empty".into(), String::new()),
                Setting::PublicUrl("http://127.0.0.1:17547/".into()),
                Setting::ExternalPort(17547),
                Setting::LogLevel("debug".into()),
            ]
        );
        assert_eq!(parse("console=ttyS0 quiet").unwrap(), []);
    }

    #[test]
    fn unusable_words_are_errors_naming_the_word() {
        for (line, want) in [
            ("cwmpd.acss=http://x/", "unknown key cwmpd.acss"),
            ("cwmpd.acs", "no value"),
            ("cwmpd.acs=", "empty"),
            ("cwmpd.param.=1", "not a parameter path"),
            ("cwmpd.param.Foo.Bar=1", "not a parameter path"),
            ("cwmpd.param.Device.X.=1", "not a parameter path"),
            ("cwmpd.param.Device..X=1", "not a parameter path"),
            ("cwmpd.external_port=0", "not a port number"),
            ("cwmpd.external_port=70000", "not a port number"),
            (
                "cwmpd.acs=http://a/ cwmpd.param.Device.ManagementServer.URL=http://b/",
                "twice",
            ),
            ("cwmpd.log_level=info cwmpd.log_level=debug", "twice"),
            ("cwmpd.=1", "unknown key"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
            let first = words(line).into_iter().last().unwrap();
            assert!(e.contains(&format!("{first:?}")), "{line}: {e}");
        }
    }
}
