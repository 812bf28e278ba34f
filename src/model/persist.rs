//! Persistence of the agent's state in `state_dir/state`: crash-safe and checksummed.
//!
//! File layout: one header line `cwmpd-state 1 <sha256-hex> <length>` and then `length` bytes of
//! JSON. A write goes to a temp file that is fsynced and renamed over the old one; the old file
//! is kept as `state.prev`. On load, a file whose header, length or checksum is wrong is
//! reported and the previous copy is used; nothing is ever half-applied.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::Snapshot;
use crate::util::fsutil::write_atomic;

const MAGIC: &str = "cwmpd-state 1";

/// Everything the agent keeps across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The data model's difference from factory.
    #[serde(default)]
    pub model: Snapshot,
    /// The agent's own state besides the data model.
    #[serde(default)]
    pub agent: AgentState,
}

/// The agent's persisted state besides the data model. Serialised as a JSON object whose keys
/// are the field names (the format of earlier versions, which kept a map); unknown keys of
/// older or newer versions are ignored, missing ones take their default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// Path of the HTTP connection-request URL (random, kept for the box's life).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cr_path: Option<String>,
    /// Digest nonce key of the HTTP CR listener (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cr_secret: Option<String>,
    /// Undelivered events that survive a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<crate::cwmp::events::EventQueue>,
    /// The ACS URL the last BOOTSTRAP was delivered to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrapped_url: Option<String>,
    /// The CWMP version the ACS at `url` chose in the last session's InformResponse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acs_version: Option<AcsVersion>,
    /// File transfers (the transfer module's own record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfers: Option<serde_json::Value>,
    /// Software-module jobs (the engine's du module's own record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub du_jobs: Option<serde_json::Value>,
    /// A Reboot or FactoryReset the ACS was told succeeded and not yet carried out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_action: Option<PendingAction>,
    /// ScheduleInform timers: (Unix deadline, CommandKey).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scheduled_informs: Vec<(i64, String)>,
    /// The kernel boot id at the last start (tells a reboot from an agent restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The DelayReboot deadline (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_reboot_at: Option<i64>,
    /// The armed ScheduleReboot time (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_reboot_at: Option<i64>,
}

/// The version an ACS chose, and where it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcsVersion {
    pub url: String,
    /// `1.0` … `1.4`.
    pub version: String,
}

/// A device action the ACS requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Reboot,
    FactoryReset,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Reboot => "reboot",
            ActionKind::FactoryReset => "factory_reset",
        }
    }
}

/// A Reboot or FactoryReset acknowledged to the ACS; `started` once its command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAction {
    pub what: ActionKind,
    pub started: bool,
}

/// Where a loaded state came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No state file: first start (or after a factory reset).
    Fresh,
    Current,
    /// The current file was bad (reason given); the previous copy was used.
    Previous(String),
    /// Both files were bad (reasons given); starting from the factory state.
    BothBad(String),
}

/// The state file could not be written (the change it carried is undone and faulted).
#[derive(Debug, thiserror::Error)]
#[error("state not saved to {}: {source}", path.display())]
pub struct PersistError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: io::Error,
}

pub struct StateFile {
    path: PathBuf,
    /// Checksum of what the file holds now (written or loaded by us): an identical state is
    /// not written again (no fsync, no flash wear).
    current: Option<String>,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> StateFile {
        StateFile {
            path: state_dir.join("state"),
            current: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn prev_path(&self) -> PathBuf {
        self.path.with_file_name("state.prev")
    }

    pub fn save(&mut self, state: &State) -> io::Result<()> {
        let body = serde_json::to_vec(state).map_err(io::Error::other)?;
        let sum = sha256_hex(&body);
        if self.current.as_deref() == Some(sum.as_str()) && self.path.exists() {
            return Ok(());
        }
        // Header and body written as two parts: no second copy of a large state in memory.
        let header = format!("{MAGIC} {sum} {}\n", body.len());
        write_atomic(&self.path, &[header.as_bytes(), &body], true)?;
        self.current = Some(sum);
        Ok(())
    }

    pub fn load(&self) -> (State, Loaded) {
        let cur = read_one(&self.path);
        match cur {
            Ok(Some(s)) => return (s, Loaded::Current),
            Ok(None) if !self.prev_path().exists() => return (State::default(), Loaded::Fresh),
            _ => {}
        }
        let why = match cur {
            Err(e) => e,
            _ => "missing".to_string(),
        };
        match read_one(&self.prev_path()) {
            Ok(Some(s)) => (s, Loaded::Previous(why)),
            Ok(None) => (
                State::default(),
                Loaded::BothBad(format!("{why}; no previous copy")),
            ),
            Err(e2) => (
                State::default(),
                Loaded::BothBad(format!("{why}; previous copy: {e2}")),
            ),
        }
    }

    /// Removes the state (factory reset).
    pub fn remove(&mut self) -> io::Result<()> {
        self.current = None;
        for p in [self.path.clone(), self.prev_path()] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

fn read_one(path: &Path) -> Result<Option<State>, String> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("{}: no header (truncated?)", path.display()))?;
    let header =
        std::str::from_utf8(&data[..nl]).map_err(|_| format!("{}: bad header", path.display()))?;
    let rest = header
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("{}: not a cwmpd state file", path.display()))?;
    let mut it = rest.split_whitespace();
    let (sum, len) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
    let len: usize = len
        .parse()
        .map_err(|_| format!("{}: bad length", path.display()))?;
    let body = &data[nl + 1..];
    if body.len() != len {
        return Err(format!(
            "{}: {} bytes of state where the header says {len} (truncated?)",
            path.display(),
            body.len()
        ));
    }
    if sha256_hex(body) != sum {
        return Err(format!("{}: checksum mismatch (corrupt)", path.display()));
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn sha256_hex(data: &[u8]) -> String {
    crate::util::codec::to_hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cwmpd-persist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn state(v: &str) -> State {
        let mut s = State::default();
        s.model.values.insert("Device.X".into(), v.into());
        s
    }

    #[test]
    fn save_load_and_fallback() {
        let d = tmpdir("a");
        let mut f = StateFile::new(&d);
        assert_eq!(f.load().1, Loaded::Fresh);
        f.save(&state("1")).unwrap();
        f.save(&state("2")).unwrap();
        assert_eq!(f.load(), (state("2"), Loaded::Current));
        let meta = std::fs::metadata(f.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Truncate the current file: the previous copy is used and the reason given.
        let data = std::fs::read(f.path()).unwrap();
        std::fs::write(f.path(), &data[..data.len() - 3]).unwrap();
        let (s, how) = f.load();
        assert_eq!(s, state("1"));
        assert!(
            matches!(how, Loaded::Previous(ref w) if w.contains("truncated")),
            "{how:?}"
        );
        // Flip a byte: checksum.
        let mut data2 = data.clone();
        let n = data2.len() - 2;
        data2[n] ^= 1;
        std::fs::write(f.path(), &data2).unwrap();
        assert!(matches!(f.load().1, Loaded::Previous(ref w) if w.contains("checksum")));
        f.remove().unwrap();
        assert_eq!(f.load().1, Loaded::Fresh);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The typed agent state reads what earlier versions wrote (a map of named JSON values,
    /// possibly with keys this version does not know) and writes the same shape.
    #[test]
    fn agent_state_reads_the_older_map_format() {
        let old = r#"{"agent":{"cr_path":"/abc","cr_secret":"00ff",
            "events":{"events":[{"code":"M Reboot","command_key":"k"}]},
            "bootstrapped_url":"http://acs/","transfers":{"next_id":1,"list":[]},
            "some_future_key":[1,2,3]}}"#;
        let st: State = serde_json::from_str(old).unwrap();
        assert_eq!(st.agent.cr_path.as_deref(), Some("/abc"));
        assert_eq!(st.agent.bootstrapped_url.as_deref(), Some("http://acs/"));
        let ev = st.agent.events.as_ref().unwrap();
        assert_eq!(ev.events[0].code, crate::cwmp::events::EventCode::MReboot);
        let back = serde_json::to_value(&st).unwrap();
        assert_eq!(back["agent"]["cr_path"], "/abc");
        assert_eq!(back["agent"]["events"]["events"][0]["code"], "M Reboot");
        assert!(back["agent"].get("pending_action").is_none());
    }
}
