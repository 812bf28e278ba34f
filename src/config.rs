//! Configuration: one TOML file with local settings and factory defaults by TR-181 path.
//!
//! Every mistake (unknown key, unknown path, wrong type) is an error naming the file, the line
//! and the key; the agent refuses to start rather than guess.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::schema::{Schema, generic_path};

pub mod kcmdline;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.msg)
        } else {
            write!(f, "{}: {}", self.file.display(), self.msg)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Local settings of the agent process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Directory for the persisted state (created 0700).
    pub state_dir: PathBuf,
    /// Directories of data-model XML files, loaded in order.
    pub datamodel: Vec<PathBuf>,
    /// error, warn, info, debug, trace.
    pub log_level: String,
    /// Unix socket of the local control interface (mode 0600); empty disables it. Its
    /// protocol, limits, timeouts and client policy: docs/CONTROL.md.
    pub control_socket: PathBuf,
    /// Seconds between polls of live and provider-backed parameters for notifications.
    pub poll_interval: u64,
    /// A kernel command line to take `cwmpd.*` settings from (normally `/proc/cmdline`);
    /// empty: none. They override the file's values. See [`kcmdline`].
    pub kernel_cmdline: PathBuf,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            state_dir: PathBuf::from("/var/lib/cwmpd"),
            datamodel: vec![PathBuf::from("/usr/share/cwmpd/datamodel")],
            log_level: "info".into(),
            control_socket: PathBuf::from("/run/cwmpd/ctl.sock"),
            poll_interval: 30,
            kernel_cmdline: PathBuf::new(),
        }
    }
}

/// How the agent talks to the ACS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcsSection {
    /// PEM file of CA certificates for HTTPS to the ACS; empty = the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Skip server certificate verification. For lab use only; logged loudly.
    pub insecure_skip_verify: bool,
    /// Seconds to wait for each ACS response.
    pub response_timeout: u64,
    /// Answer an ACS that offers only Basic authentication over plain `http://`, which sends
    /// ManagementServer.Password in clear (and which an on-path attacker can force by
    /// stripping the Digest challenge). Default `false`: such a session fails, naming this
    /// key. Basic over `https://` and Digest over either are always allowed.
    pub allow_basic_over_http: bool,
}

impl Default for AcsSection {
    fn default() -> Self {
        AcsSection {
            ca_file: None,
            client_cert: None,
            client_key: None,
            insecure_skip_verify: false,
            response_timeout: 30,
            allow_basic_over_http: false,
        }
    }
}

/// Connection-request listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnReqSection {
    /// TCP addresses of the HTTP connection-request listener.
    pub http_listen: Vec<SocketAddr>,
    /// UDP address shared by STUN and UDP connection requests.
    pub udp_listen: SocketAddr,
    /// A fixed public URL to publish (port forward set up by the operator).
    pub public_url: String,
    /// External port of a gateway port forward; the public address comes from STUN.
    pub external_port: u16,
    /// Use UPnP IGD to open a port forward on the gateway.
    pub upnp: bool,
    /// Connection requests accepted per minute (all mechanisms together).
    pub rate_per_minute: u32,
    /// Burst of connection requests accepted at once.
    pub rate_burst: u32,
}

impl Default for ConnReqSection {
    fn default() -> Self {
        ConnReqSection {
            http_listen: vec!["0.0.0.0:7547".parse().expect("addr")],
            udp_listen: "0.0.0.0:7547".parse().expect("addr"),
            public_url: String::new(),
            external_port: 0,
            upnp: false,
            rate_per_minute: 30,
            rate_burst: 5,
        }
    }
}

/// XMPP client settings that are not in the data model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XmppSection {
    /// PEM file of CA certificates for the XMPP server; empty = system roots.
    pub ca_file: Option<PathBuf>,
}

/// Commands run for device actions. Each is an argv list; `{file}` is replaced by a path.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsSection {
    pub reboot: Vec<String>,
    pub factory_reset: Vec<String>,
    /// Seconds to wait for the box to go down after the reboot or factory-reset command was
    /// started; no session is opened meanwhile. Still running after it: logged, and the agent
    /// goes on (the pending `M Reboot` then goes out without `1 BOOT`). Default 300.
    pub reboot_grace: Option<u64>,
    /// Installs a firmware image: `["/usr/sbin/sysupgrade", "{file}"]`. Exit status 0 (or the
    /// box going down) is success; otherwise the first line of stdout may name the fault as
    /// for `install_result` (`9018 checksum mismatch`), else 9010.
    pub firmware_install: Vec<String>,
    /// Applies a vendor configuration file.
    pub config_install: Vec<String>,
    /// Writes the vendor configuration file to upload to `{file}`.
    pub config_export: Vec<String>,
    /// Writes the log file to upload to `{file}`.
    pub log_export: Vec<String>,
    /// Decides, at the first start after a firmware install that restarted the agent, whether
    /// the install took effect: exit status 0 = success; otherwise failure, the first line of
    /// stdout giving the fault (`9018 why`, or just `why` for 9010). Without it the agent
    /// compares `Device.DeviceInfo.SoftwareVersion` before and after. See src/cwmp/transfer.rs.
    pub install_result: Vec<String>,
    /// Directory where downloads are staged.
    pub download_dir: Option<PathBuf>,
    /// Largest download accepted, in bytes.
    pub max_download: u64,
}

/// The device's own network, time and health objects, read from Linux (netlink, procfs,
/// sysfs): `Device.IP.`, `Device.Ethernet.`, `Device.DNS.Client.`, `Device.Routing.`,
/// `Device.Time.Status`, `Device.DeviceInfo.TemperatureStatus.` / `ProcessStatus.Process.`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemSection {
    /// Fill those objects from the system (false: they stay empty).
    pub enable: bool,
    /// Where the DNS servers are read from.
    pub resolv_conf: PathBuf,
    /// Let the ACS bring interfaces up or down and set their MTU (`IP.Interface.{i}.Enable`,
    /// `MaxMTUSize`; needs CAP_NET_ADMIN). Off: such a write is refused with 9008.
    pub interface_writes: bool,
    /// Run when the ACS changes `Device.Time.Enable` or `NTPServer1..5`: argv, with
    /// `{enable}` and `{servers}` (comma-separated) replaced. Empty: such a write is refused
    /// with 9008.
    pub time_apply: Vec<String>,
    /// The device's log files, listed in `Device.DeviceInfo.VendorLogFile.{i}` (the one the
    /// ACS uploads with "2 Vendor Log File" is what `[actions] log_export` writes).
    pub log_files: Vec<LogFile>,
}

/// One `Device.DeviceInfo.VendorLogFile.{i}` row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// Its name (TR-181 Name, at most 64 characters), e.g. `/var/log/messages`.
    pub name: String,
    /// The most it grows to, in bytes (rotation), 0 when not bounded.
    #[serde(default)]
    pub max_size: u32,
    /// Kept across a reboot.
    #[serde(default)]
    pub persistent: bool,
}

impl Default for SystemSection {
    fn default() -> Self {
        SystemSection {
            enable: true,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            interface_writes: false,
            time_apply: Vec::new(),
            log_files: Vec::new(),
        }
    }
}

/// Software modules (`Device.SoftwareModules.`, ChangeDUState): the directory backend
/// (always `ExecEnv.1`, the default) and, with `dpkg_root`, a dpkg backend (`ExecEnv.2`).
///
/// ```toml
/// [software]
/// dpkg_root = "/"         # install .deb packages with `dpkg --root=/` (absent: no dpkg ExecEnv)
/// dpkg_timeout = 600      # seconds one dpkg run may take before it is killed
/// ```
///
/// See `crate::swmod::dpkg` for what the dpkg backend does (admin directory created when
/// missing, packages it installed remembered in `<state_dir>/dpkg/`, rollback of failures).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftwareSection {
    /// Serve ChangeDUState (false: it is refused with 9001 and the tables stay empty).
    pub enable: bool,
    /// Where deployment units are unpacked (default: `<state_dir>/apps`).
    pub dir: Option<PathBuf>,
    /// Most bytes one unit may unpack to, and most archive entries.
    pub max_bytes: u64,
    pub max_entries: usize,
    /// Ed25519 public keys (64 hex digits each) whose signature (`manifest.sig`) an archive
    /// must carry; empty: archives need only their checksums.
    pub trusted_keys: Vec<String>,
    /// Root directory for the dpkg backend (`dpkg --root`); absent: no dpkg ExecEnv.
    pub dpkg_root: Option<PathBuf>,
    /// Longest one dpkg (or dpkg-deb, dpkg-query) run may take, in seconds.
    pub dpkg_timeout: u64,
}

impl Default for SoftwareSection {
    fn default() -> Self {
        SoftwareSection {
            enable: true,
            dir: None,
            max_bytes: 256 << 20,
            max_entries: 10_000,
            trusted_keys: Vec::new(),
            dpkg_root: None,
            dpkg_timeout: 600,
        }
    }
}

impl SoftwareSection {
    /// The trusted keys as bytes (checked when the configuration is read).
    pub fn keys(&self) -> Vec<[u8; 32]> {
        self.trusted_keys.iter().filter_map(|k| hex32(k)).collect()
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.trim().as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// TR-143 diagnostics (`Device.IP.Diagnostics.`): their bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsSection {
    /// Run diagnostics the ACS requests (false: DiagnosticsState = Requested is refused, 9001).
    pub enable: bool,
    /// Longest a diagnostic may run, in seconds; it then ends in an Error_* state.
    pub max_time: u64,
    /// Most bytes a download diagnostic reads, and an upload diagnostic sends.
    pub max_download: u64,
    pub max_upload: u64,
    /// Extra CA certificates (PEM) trusted by https download diagnostics, beside the web roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for DiagnosticsSection {
    fn default() -> Self {
        DiagnosticsSection {
            enable: true,
            max_time: 60,
            max_download: 64 << 20,
            max_upload: 16 << 20,
            ca_file: None,
        }
    }
}

/// TR-181 bulk data collection (`Device.BulkData.`, feature `bulkdata`): the device's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkDataSection {
    /// Send reports (false: `Device.BulkData.Enable = true` is refused with 9001).
    pub enable: bool,
    /// Shortest ReportingInterval accepted, in seconds (`MinReportingInterval`); a shorter one
    /// is refused with 9007.
    pub min_reporting_interval: u32,
    /// Most `Profile.{i}` rows (`MaxNumberOfProfiles`); another AddObject gets 9004.
    pub max_profiles: u32,
    /// Most parameters one report carries after the expansion of partial paths and wildcards
    /// (`MaxNumberOfParameterReferences`); the rest are left out of the report (logged).
    pub max_parameter_references: u32,
    /// Most bytes of one report's encoded body (before compression); the parameters that do
    /// not fit are left out (logged).
    pub max_report_bytes: usize,
    /// Most bytes of failed reports kept for a later attempt, all profiles together; the
    /// oldest are dropped first.
    pub max_retained_bytes: usize,
    /// Longest one attempt to deliver a report may take (connect, send, answer), in seconds.
    pub timeout: u64,
}

impl Default for BulkDataSection {
    fn default() -> Self {
        BulkDataSection {
            enable: true,
            min_reporting_interval: 60,
            max_profiles: 8,
            max_parameter_references: 4096,
            max_report_bytes: 256 * 1024,
            max_retained_bytes: 1024 * 1024,
            timeout: 30,
        }
    }
}

/// An external provider: one long-lived program serving a subtree (see docs/PROVIDERS.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// Subtree served, as a generic or concrete object path ending in '.'.
    pub prefix: String,
    /// argv of the program.
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayout {
    #[serde(default)]
    agent: AgentSection,
    #[serde(default)]
    acs: AcsSection,
    #[serde(default)]
    connreq: ConnReqSection,
    #[serde(default)]
    xmpp: XmppSection,
    #[serde(default)]
    actions: ActionsSection,
    #[serde(default)]
    system: SystemSection,
    #[serde(default)]
    diagnostics: DiagnosticsSection,
    #[serde(default)]
    software: SoftwareSection,
    #[serde(default)]
    bulkdata: BulkDataSection,
    #[serde(default)]
    provider: Vec<ProviderSection>,
    #[serde(default)]
    parameters: BTreeMap<String, toml::Value>,
}

/// A loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub agent: AgentSection,
    pub acs: AcsSection,
    pub connreq: ConnReqSection,
    pub xmpp: XmppSection,
    pub actions: ActionsSection,
    pub system: SystemSection,
    pub diagnostics: DiagnosticsSection,
    pub software: SoftwareSection,
    pub bulkdata: BulkDataSection,
    pub providers: Vec<ProviderSection>,
    /// Factory values by concrete path, in file order.
    pub parameters: Vec<(String, String)>,
    /// Where each parameter was given (file and line; line 0 for the kernel command line),
    /// for later error messages.
    param_src: BTreeMap<String, (PathBuf, usize)>,
}

impl Config {
    /// Reads and parses the file; relative paths are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            msg: format!("cannot read: {e}"),
        })?;
        let mut cfg = Config::parse(&text, path)?;
        if !cfg.agent.kernel_cmdline.as_os_str().is_empty() {
            let file = cfg.agent.kernel_cmdline.clone();
            let err = |msg: String| ConfigError {
                file: file.clone(),
                line: 0,
                msg,
            };
            let text =
                read_bounded(&file, 64 * 1024).map_err(|e| err(format!("cannot read: {e}")))?;
            let settings = kcmdline::parse(&text).map_err(err)?;
            cfg.apply_cmdline(&file, settings)?;
        }
        Ok(cfg)
    }

    /// Applies the settings of a kernel command line read from `file` over the file's.
    pub fn apply_cmdline(
        &mut self,
        file: &Path,
        settings: Vec<kcmdline::Setting>,
    ) -> Result<(), ConfigError> {
        use kcmdline::Setting;
        for s in settings {
            match s {
                Setting::Param(k, v) => {
                    match self.parameters.iter_mut().find(|(p, _)| *p == k) {
                        Some(e) => e.1 = v,
                        None => self.parameters.push((k.clone(), v)),
                    }
                    self.param_src.insert(k, (file.to_path_buf(), 0));
                }
                Setting::PublicUrl(u) => self.connreq.public_url = u,
                Setting::ExternalPort(p) => self.connreq.external_port = p,
                Setting::LogLevel(l) => {
                    check_log_level(&l).map_err(|msg| ConfigError {
                        file: file.to_path_buf(),
                        line: 0,
                        msg: format!("cwmpd.log_level: {msg}"),
                    })?;
                    self.agent.log_level = l;
                }
            }
        }
        Ok(())
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |line: usize, msg: String| ConfigError {
            file: path.to_path_buf(),
            line,
            msg,
        };
        let raw: FileLayout = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_at(text, s.start)).unwrap_or(0);
            err(line, e.message().trim().to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &PathBuf| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.clone()
            }
        };
        let mut agent = raw.agent;
        agent.state_dir = resolve(&agent.state_dir);
        agent.datamodel = agent.datamodel.iter().map(resolve).collect();
        if !agent.control_socket.as_os_str().is_empty() {
            agent.control_socket = resolve(&agent.control_socket);
        }
        if !agent.kernel_cmdline.as_os_str().is_empty() {
            agent.kernel_cmdline = resolve(&agent.kernel_cmdline);
        }
        check_log_level(&agent.log_level).map_err(|m| err(key_line(text, "log_level"), m))?;
        let mut actions = raw.actions;
        actions.download_dir = actions.download_dir.as_ref().map(resolve);
        let mut system = raw.system;
        system.resolv_conf = resolve(&system.resolv_conf);
        let mut seen = std::collections::BTreeSet::new();
        for f in &system.log_files {
            if f.name.is_empty() || f.name.chars().count() > 64 || !seen.insert(f.name.as_str()) {
                return Err(err(
                    key_line(text, "log_files"),
                    format!(
                        "log_files: {:?} must be a unique name of 1 to 64 characters",
                        f.name
                    ),
                ));
            }
        }
        let mut software = raw.software;
        software.dir = software.dir.as_ref().map(resolve);
        software.dpkg_root = software.dpkg_root.as_ref().map(resolve);
        if software.dpkg_timeout == 0 {
            return Err(err(
                key_line(text, "dpkg_timeout"),
                "dpkg_timeout: must be at least 1 second".to_string(),
            ));
        }
        if let Some(bad) = software.trusted_keys.iter().find(|k| hex32(k).is_none()) {
            return Err(err(
                key_line(text, "trusted_keys"),
                format!("trusted_keys: {bad:?} is not an Ed25519 public key in 64 hex digits"),
            ));
        }
        let mut diagnostics = raw.diagnostics;
        diagnostics.ca_file = diagnostics.ca_file.as_ref().map(resolve);
        if actions.max_download == 0 {
            actions.max_download = 256 * 1024 * 1024;
        }
        let mut parameters = Vec::new();
        let mut param_src = BTreeMap::new();
        for (k, v) in &raw.parameters {
            let line = key_line(text, k);
            let s = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => {
                    return Err(err(
                        line,
                        format!("parameter {k}: a value must be a string, number or boolean"),
                    ));
                }
            };
            if !k.starts_with("Device.") || k.ends_with('.') {
                return Err(err(
                    line,
                    format!("{k:?} is not a parameter path under Device."),
                ));
            }
            param_src.insert(k.clone(), (path.to_path_buf(), line));
            parameters.push((k.clone(), s));
        }
        for p in &raw.provider {
            if !p.prefix.starts_with("Device.") || !p.prefix.ends_with('.') {
                return Err(err(
                    key_line(text, &p.prefix),
                    format!(
                        "provider prefix {:?} must be an object path ending in '.'",
                        p.prefix
                    ),
                ));
            }
            if p.command.is_empty() {
                return Err(err(
                    key_line(text, &p.prefix),
                    "provider command is empty".into(),
                ));
            }
        }
        Ok(Config {
            file: path.to_path_buf(),
            agent,
            acs: raw.acs,
            connreq: raw.connreq,
            xmpp: raw.xmpp,
            actions,
            system,
            diagnostics,
            software,
            bulkdata: raw.bulkdata,
            providers: raw.provider,
            parameters,
            param_src,
        })
    }

    /// Checks the `[parameters]` table against the data model (path exists, value valid)
    /// and each provider prefix names an object.
    pub fn check_against(&self, schema: &Schema) -> Result<(), ConfigError> {
        for (k, v) in &self.parameters {
            let (file, line) = self
                .param_src
                .get(k)
                .cloned()
                .unwrap_or_else(|| (self.file.clone(), 0));
            let g = generic_path(k);
            let Some(pid) = schema.param(&g) else {
                return Err(ConfigError {
                    file,
                    line,
                    msg: format!("{k} is not a parameter of the data model"),
                });
            };
            if let Err(f) = schema.params[pid].syntax.validate(v) {
                return Err(ConfigError {
                    file,
                    line,
                    msg: format!(
                        "{k} = {v:?}: {} (type {})",
                        f.reason,
                        schema.params[pid].syntax.describe()
                    ),
                });
            }
        }
        for p in &self.providers {
            let g = generic_path(&p.prefix);
            if schema.object(&g).is_none() && schema.object(&format!("{g}{{i}}.")).is_none() {
                return Err(ConfigError {
                    file: self.file.clone(),
                    line: key_line_raw(&self.file, &p.prefix),
                    msg: format!(
                        "provider prefix {} is not an object of the data model",
                        p.prefix
                    ),
                });
            }
        }
        Ok(())
    }

    /// Builds the error for a factory value the store refused (e.g. an instance beyond
    /// maxEntries), with the line of that key.
    pub fn error_for(&self, msg: String) -> ConfigError {
        let (file, line) = self
            .param_src
            .iter()
            .find(|(k, _)| msg.starts_with(k.as_str()))
            .map(|(_, src)| src.clone())
            .unwrap_or_else(|| (self.file.clone(), 0));
        ConfigError { file, line, msg }
    }
}

fn check_log_level(l: &str) -> Result<(), String> {
    if matches!(l, "error" | "warn" | "info" | "debug" | "trace") {
        Ok(())
    } else {
        Err(format!(
            "log_level {l:?} is not one of error, warn, info, debug, trace"
        ))
    }
}

/// Reads at most `max` bytes of a text file (a command line is a few KB at most).
fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)?
        .take(max)
        .read_to_string(&mut s)?;
    Ok(s)
}

fn line_at(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    text.as_bytes()[..pos]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line of the first line that mentions `key` as a key or a quoted value.
fn key_line(text: &str, key: &str) -> usize {
    let quoted = format!("\"{key}\"");
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if t.starts_with(&quoted)
            || t.starts_with(&format!("{key} "))
            || t.starts_with(&format!("{key}="))
            || l.contains(&quoted)
        {
            return i + 1;
        }
    }
    0
}

fn key_line_raw(file: &Path, key: &str) -> usize {
    std::fs::read_to_string(file)
        .map(|t| key_line(&t, key))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/cwmpd/test.toml"))
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse("[agent]\nstate_dir = \"state\"\n").unwrap();
        assert_eq!(c.agent.state_dir, PathBuf::from("/etc/cwmpd/state"));
        assert_eq!(c.connreq.http_listen[0].port(), 7547);
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let e = parse("[agent]\nstate_dir = \"/x\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse("[agnt]\n").unwrap_err();
        assert!(e.to_string().contains("agnt"), "{e}");
    }

    #[test]
    fn parameter_values_become_strings() {
        let c = parse(
            "[parameters]\n\"Device.ManagementServer.PeriodicInformEnable\" = true\n\"Device.XMPP.Connection.1.Server.1.Port\" = 5222\n",
        )
        .unwrap();
        assert_eq!(c.parameters.len(), 2);
        assert!(c.parameters.contains(&(
            "Device.XMPP.Connection.1.Server.1.Port".into(),
            "5222".into()
        )));
        let e = parse("\n[parameters]\n\"Device.X\" = [1]\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("[parameters]\n\"Foo.X\" = 1\n").unwrap_err();
        assert!(e.msg.contains("not a parameter path"));
    }
}
