//! Software modules as the engine runs them (TR-069 A.4.1.10 ChangeDUState, TR-181
//! `Device.SoftwareModules.`); the deployment units themselves: `crate::swmod`.
//!
//! A ChangeDUState becomes a persisted job, answered at once. After the session the job runs
//! one operation at a time: the archive is downloaded with the transfer client, then the
//! directory backend installs, updates or uninstalls on the blocking pool; each result is
//! persisted as soon as it is known. A job a restart interrupted is settled at start from the
//! backend's state (its commit points leave the old or the new version), so every operation
//! gets exactly one result. A finished job queues `11 DU STATE CHANGE COMPLETE` and
//! `M ChangeDUState` and its DUStateChangeComplete goes in the next session; the ACS's
//! response removes the job. Problems of one operation (9022 bad UUID, 9023 unknown
//! ExecutionEnvRef, 9026/9028/9032 from the backend, download faults) are that operation's
//! result; the others still run.
//!
//! Two execution environments: `ExecEnv.1`, the directory backend (`crate::swmod::dir`,
//! the default), and with `[software] dpkg_root` `ExecEnv.2`, the dpkg backend
//! (`crate::swmod::dpkg`). An Install goes to the ExecEnv its ExecutionEnvRef names; without
//! one, a downloaded file that is a Debian package goes to dpkg (when configured) and
//! anything else to the directory backend. Update and Uninstall go to the ExecEnv that has the
//! DU's UUID (an Uninstall whose ExecutionEnvRef names another ExecEnv is 9025). A dpkg
//! operation a restart cut is settled from dpkg's database on the blocking pool before any
//! job is settled or started.
//!
//! Execution units (their processes): `du_units`; dpkg DUs have none.
//!
//! Autonomous changes: the control socket (`du-install`, `du-update`, `du-uninstall`: the box's
//! own application store, an installer on the device) makes a job marked `autonomous` with a
//! local file instead of a URL; it runs like any other. When it is done, the results that
//! `Device.ManagementServer.DUStateChangeComplPolicy.` lets through (Enable, the operation
//! types, Success/Failure/Both, the fault codes of failures) go in one
//! AutonomousDUStateChangeComplete with `12 AUTONOMOUS DU STATE CHANGE COMPLETE`; a job
//! with none is forgotten at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cwmp::events::EventCode;
use crate::cwmp::exchange::CpeCall;
use crate::cwmp::soap::{
    AutonDuOpResult, AutonomousDUStateChangeComplete, DUStateChangeComplete, DuOpResult,
    DuOperation, DuOperationType, DuState, TransferFault, is_du_uuid,
};
use crate::model::mirror::{MRow, MTable, MVal, Mirror};
use crate::net::files::{self, Target};
use crate::swmod::dir::DirBackend;
use crate::swmod::dpkg::DpkgBackend;
use crate::swmod::{DuError, DuInfo};
use crate::util::time::{format_datetime, now_unix};

use super::{Done, Engine};

/// Jobs kept at once (beyond: ChangeDUState is refused with 9004).
const MAX_JOBS: usize = 8;
/// Operations in one ChangeDUState.
const MAX_OPS: usize = 16;
/// CpeCall keys of DUStateChangeCompletes (transfers use small numbers).
pub(crate) const CALL_KEY_BASE: u64 = 1 << 48;
const DU_TABLE: &str = "Device.SoftwareModules.DeploymentUnit.";
const EU_TABLE: &str = "Device.SoftwareModules.ExecutionUnit.";
const EE_TABLE: &str = "Device.SoftwareModules.ExecEnv.";
/// The directory backend's row in ExecEnv.
const EE_KEY: &str = "dir";
/// The dpkg backend's row in ExecEnv.
const EE_DPKG: &str = "dpkg";
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// `DUStateChangeComplPolicy`: which autonomous results are reported.
struct Policy {
    enable: bool,
    operations: Vec<String>,
    /// Success, Failure or Both.
    results: String,
    /// Fault codes of failures that are reported.
    faults: Vec<u32>,
}

impl Policy {
    fn allows(&self, kind: &str, code: u32) -> bool {
        let result = match self.results.as_str() {
            "Success" => code == 0,
            "Failure" => code != 0,
            _ => true,
        };
        self.enable
            && self.operations.iter().any(|o| o == kind)
            && result
            && (code == 0 || self.faults.contains(&code))
    }
}

/// One operation and, once known, its result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Op {
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    env_ref: String,
    /// A local file (an autonomous install or update through the control socket) instead of
    /// a download; never set from a ChangeDUState.
    #[serde(default)]
    local: String,
    /// Set when the operation started (a restart finds it started without a result).
    #[serde(default)]
    start_time: String,
    /// The installed version before an update started (tells a finished update after a
    /// restart).
    #[serde(default)]
    before: String,
    #[serde(default)]
    result: Option<OpResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpResult {
    uuid: String,
    version: String,
    state: String,
    code: u32,
    text: String,
    complete_time: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: u64,
    command_key: String,
    ops: Vec<Op>,
    /// Not asked for by the ACS (the control socket): reported with
    /// AutonomousDUStateChangeComplete as `DUStateChangeComplPolicy` allows, or not at all.
    #[serde(default)]
    autonomous: bool,
}

impl Job {
    fn done(&self) -> bool {
        self.ops.iter().all(|o| o.result.is_some())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    next_id: u64,
    jobs: Vec<Job>,
}

/// The engine's software-module state.
#[derive(Default)]
pub(crate) struct SoftwareModules {
    pub(crate) backend: Option<Arc<DirBackend>>,
    /// The dpkg backend, with `[software] dpkg_root`.
    pub(crate) dpkg: Option<Arc<DpkgBackend>>,
    /// False while the dpkg backend settles an operation a restart cut: nothing is settled
    /// or started until it is done.
    recovering: bool,
    jobs: Vec<Job>,
    next_id: u64,
    /// (job id, operation index) running now.
    running: Option<(u64, usize)>,
    /// Execution units' processes.
    pub(crate) units: super::du_units::Units,
    /// The outcomes of the latest autonomous jobs (job id, result), for `ctl du-result`;
    /// at most `LOCAL_KEPT`, kept in memory only.
    local_done: std::collections::VecDeque<(u64, serde_json::Value)>,
}

/// Autonomous outcomes `ctl du-result` remembers.
const LOCAL_KEPT: usize = 16;

/// A DUStateChangeComplete fault code: the codes `cwmp-1-2.xsd` allows in a result.
fn result_code(c: u32) -> u32 {
    match c {
        0 | 9001 | 9003 | 9012 | 9013 | 9015..=9018 | 9022..=9032 => c,
        9010 | 9019 | 9020 => 9017,
        _ => 9001,
    }
}

fn op_of(o: &DuOperation) -> Op {
    let mut op = Op {
        kind: o.operation_type().as_str().to_string(),
        ..Op::default()
    };
    match o {
        DuOperation::Install {
            url,
            uuid,
            username,
            password,
            execution_env_ref,
        } => {
            op.url = url.clone();
            op.uuid = uuid.clone();
            op.username = username.clone();
            op.password = password.clone();
            op.env_ref = execution_env_ref.clone();
        }
        DuOperation::Update {
            uuid,
            version,
            url,
            username,
            password,
        } => {
            op.uuid = uuid.clone();
            op.version = version.clone();
            op.url = url.clone();
            op.username = username.clone();
            op.password = password.clone();
        }
        DuOperation::Uninstall {
            uuid,
            version,
            execution_env_ref,
        } => {
            op.uuid = uuid.clone();
            op.version = version.clone();
            op.env_ref = execution_env_ref.clone();
        }
    }
    op
}

fn ok(info: &DuInfo, state: DuState) -> OpResult {
    OpResult {
        uuid: info.uuid.clone(),
        version: info.version.clone(),
        state: state.as_str().to_string(),
        code: 0,
        text: String::new(),
        complete_time: format_datetime(now_unix()),
    }
}

fn failed(op: &Op, state: DuState, code: u32, text: impl Into<String>) -> OpResult {
    OpResult {
        uuid: op.uuid.clone(),
        version: op.version.clone(),
        state: state.as_str().to_string(),
        code: result_code(code),
        text: text.into(),
        complete_time: format_datetime(now_unix()),
    }
}

/// What a failed operation leaves: an install that failed created nothing (Failed); an
/// update or uninstall that failed leaves the unit as it was (Installed, or Uninstalled for a
/// unit the device does not have).
fn fail_state(kind: &str, exists: bool) -> DuState {
    if kind == "Install" {
        DuState::Failed
    } else if exists {
        DuState::Installed
    } else {
        DuState::Uninstalled
    }
}

/// The backends, as an operation running off the engine's thread sees them.
#[derive(Clone)]
struct Backends {
    dir: Arc<DirBackend>,
    dpkg: Option<Arc<DpkgBackend>>,
}

/// Which backend an operation goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Env {
    Dir,
    Dpkg,
}

impl Env {
    fn key(self) -> &'static str {
        match self {
            Env::Dir => EE_KEY,
            Env::Dpkg => EE_DPKG,
        }
    }
}

impl Backends {
    /// The DU with this UUID and its backend.
    fn get(&self, uuid: &str) -> Option<(Env, DuInfo)> {
        if uuid.is_empty() {
            return None;
        }
        if let Some(d) = self.dir.get(uuid) {
            return Some((Env::Dir, d));
        }
        self.dpkg
            .as_ref()
            .and_then(|b| b.get(uuid))
            .map(|d| (Env::Dpkg, d))
    }

    /// Every DU with its backend.
    fn list(&self) -> Vec<(Env, DuInfo)> {
        let mut out: Vec<(Env, DuInfo)> =
            self.dir.list().into_iter().map(|d| (Env::Dir, d)).collect();
        if let Some(b) = &self.dpkg {
            out.extend(b.list().into_iter().map(|d| (Env::Dpkg, d)));
        }
        out
    }
}

impl Engine {
    fn du_dir(&self) -> PathBuf {
        self.cfg
            .software
            .dir
            .clone()
            .unwrap_or_else(|| self.cfg.agent.state_dir.join("apps"))
    }

    fn save_du(&mut self) {
        let p = Persisted {
            next_id: self.du.next_id,
            jobs: self.du.jobs.clone(),
        };
        self.agent_state.du_jobs = Some(serde_json::to_value(p).unwrap_or_default());
        let _ = self.persist();
    }

    /// At start: opens the backend, restores the jobs and settles operations a restart cut.
    pub(crate) fn du_boot(&mut self) {
        if !self.cfg.software.enable {
            return;
        }
        let sw = &self.cfg.software;
        let keys = sw.keys();
        match DirBackend::open(&self.du_dir(), sw.max_bytes, sw.max_entries, keys) {
            Ok(b) => self.du.backend = Some(Arc::new(b)),
            Err(e) => {
                tracing::error!(
                    "software modules: {}: {e}; ChangeDUState refused",
                    self.du_dir().display()
                );
                return;
            }
        }
        if let Some(root) = self.cfg.software.dpkg_root.clone() {
            let store = self.cfg.agent.state_dir.join("dpkg");
            let timeout = Duration::from_secs(self.cfg.software.dpkg_timeout);
            match DpkgBackend::open(&root, &store, timeout) {
                Ok(b) => self.du.dpkg = Some(Arc::new(b)),
                Err(e) => tracing::error!(
                    "software modules: dpkg root {}: {e}; no dpkg execution environment",
                    root.display()
                ),
            }
        }
        if let Some(v) = self.agent_state.du_jobs.clone() {
            match serde_json::from_value::<Persisted>(v) {
                Ok(p) => {
                    self.du.jobs = p.jobs;
                    self.du.next_id = p.next_id;
                }
                Err(e) => tracing::error!("unreadable software-module jobs dropped: {e}"),
            }
        }
        if let Some(b) = self.du.dpkg.clone()
            && b.needs_recovery()
        {
            // dpkg runs: on the blocking pool; jobs are settled when it is done.
            self.du.recovering = true;
            self.tasks.push(Box::pin(async move {
                let _ = tokio::task::spawn_blocking(move || b.recover()).await;
                Done::DpkgRecovered
            }));
            self.du_sync();
            return;
        }
        self.du_settle();
    }

    /// The dpkg backend settled what a restart cut: the jobs can be settled and run.
    pub(crate) fn dpkg_recovered(&mut self) {
        self.du.recovering = false;
        self.du_settle();
        self.du_tick();
    }

    /// Settles the operations a restart cut, from what the backends hold.
    fn du_settle(&mut self) {
        let Some(backends) = self.backends() else {
            return;
        };
        let mut changed = false;
        for job in &mut self.du.jobs {
            for op in &mut job.ops {
                if op.result.is_some() || op.start_time.is_empty() {
                    continue;
                }
                // Started, no result: the backend tells which side of its commit point the
                // restart came.
                let now = backends.get(&op.uuid).map(|(_, d)| d).or_else(|| {
                    backends
                        .list()
                        .into_iter()
                        .map(|(_, d)| d)
                        .find(|d| !op.url.is_empty() && d.url == op.url)
                });
                let exists = backends.get(&op.uuid).is_some();
                op.result = Some(match (op.kind.as_str(), now) {
                    ("Install", Some(d)) => ok(&d, DuState::Installed),
                    ("Update", Some(d)) if d.version != op.before => ok(&d, DuState::Installed),
                    ("Uninstall", None) => failed(op, DuState::Uninstalled, 0, ""),
                    (kind, _) => failed(
                        op,
                        fail_state(kind, exists),
                        9017,
                        "interrupted by a restart before it took effect",
                    ),
                });
                tracing::info!(
                    "software modules: {} {} settled after a restart",
                    op.kind,
                    op.uuid
                );
                changed = true;
            }
        }
        if changed {
            self.save_du();
        }
        self.du_sync();
        for du in backends.dir.list() {
            self.eu_autostart(&du);
        }
        self.du_sync();
        self.du_events();
    }

    /// ChangeDUState: the job is kept; `Err` is the RPC's fault code.
    pub(crate) fn accept_change_du_state(
        &mut self,
        command_key: &str,
        ops: &[DuOperation],
    ) -> Result<(), u32> {
        if self.du.backend.is_none() {
            return Err(9001);
        }
        if ops.len() > MAX_OPS || self.du.jobs.len() >= MAX_JOBS {
            return Err(9004);
        }
        self.du.next_id += 1;
        let job = Job {
            id: self.du.next_id,
            command_key: command_key.to_string(),
            ops: ops.iter().map(op_of).collect(),
            autonomous: false,
        };
        tracing::info!(
            "ChangeDUState {} queued: {} operation(s), CommandKey {command_key:?}",
            job.id,
            job.ops.len()
        );
        self.du.jobs.push(job);
        self.save_du();
        Ok(())
    }

    /// The backends (None: software modules are off).
    fn backends(&self) -> Option<Backends> {
        Some(Backends {
            dir: self.du.backend.clone()?,
            dpkg: self.du.dpkg.clone(),
        })
    }

    /// The ExecEnv an ExecutionEnvRef names (None: no such ExecEnv).
    fn env_of_ref(&self, env_ref: &str) -> Option<Env> {
        let want = env_ref.trim_end_matches('.');
        let mut envs = vec![Env::Dir];
        if self.du.dpkg.is_some() {
            envs.push(Env::Dpkg);
        }
        envs.into_iter().find(|e| {
            self.store
                .mirror_row(EE_TABLE, e.key())
                .is_some_and(|p| p.trim_end_matches('.') == want)
        })
    }

    /// Starts the next operation when none runs (between sessions).
    pub(crate) fn du_tick(&mut self) {
        if self.du.running.is_some() || self.du.recovering {
            return;
        }
        let Some(backends) = self.backends() else {
            return;
        };
        let next = self.du.jobs.iter().find_map(|j| {
            j.ops
                .iter()
                .position(|o| o.result.is_none())
                .map(|i| (j.id, i))
        });
        let Some((job_id, i)) = next else {
            return;
        };
        let tls = self.tls_settings();
        let dl_dir = self.du_dir().join("downloads");
        let max_download = self.cfg.actions.max_download;
        let (kind, env_ref, mut uuid, url) = {
            let j = self
                .du
                .jobs
                .iter()
                .find(|j| j.id == job_id)
                .expect("found above");
            let op = &j.ops[i];
            (
                op.kind.clone(),
                op.env_ref.clone(),
                op.uuid.clone(),
                op.url.clone(),
            )
        };
        // Update names the unit by UUID or, without one, by the URL it came from.
        let mut early: Option<(u32, String)> = None;
        if kind == "Update" && uuid.is_empty() {
            match backends.list().into_iter().find(|(_, d)| d.url == url) {
                Some((_, d)) => uuid = d.uuid,
                None => early = Some((9028, format!("no deployment unit from {url:?}"))),
            }
        }
        // Checks that need no IO: the result is known at once.
        let named_env = if env_ref.is_empty() {
            None
        } else {
            self.env_of_ref(&env_ref)
        };
        let du_env = backends.get(&uuid).map(|(e, _)| e);
        if early.is_none() {
            early = if !uuid.is_empty() && !is_du_uuid(&uuid) {
                Some((9022, format!("{uuid:?} is not a UUID")))
            } else if !env_ref.is_empty() && named_env.is_none() {
                Some((9023, format!("no execution environment {env_ref}")))
            } else if kind == "Uninstall"
                && named_env.is_some()
                && du_env.is_some()
                && named_env != du_env
            {
                Some((9025, format!("deployment unit {uuid} is not in {env_ref}")))
            } else if kind == "Install" && !uuid.is_empty() && du_env.is_some() {
                Some((9026, format!("{uuid} is already installed")))
            } else {
                None
            };
        }
        let j = self
            .du
            .jobs
            .iter_mut()
            .find(|j| j.id == job_id)
            .expect("found above");
        let op = &mut j.ops[i];
        op.uuid = uuid.clone();
        if let Some((code, text)) = early {
            let exists = du_env.is_some();
            let state = if code == 9028 && kind == "Update" {
                DuState::Uninstalled
            } else {
                fail_state(&op.kind, exists)
            };
            op.result = Some(failed(op, state, code, text));
            self.save_du();
            self.du_events();
            return self.du_tick();
        }
        // An update or uninstall stops the unit's processes first (the run contract).
        if kind != "Install" {
            let running = self.eu_running_of(&uuid);
            if !running.is_empty() {
                for k in running {
                    self.eu_stop(&k);
                }
                self.du_sync();
                return;
            }
        }
        let j = self
            .du
            .jobs
            .iter_mut()
            .find(|j| j.id == job_id)
            .expect("found above");
        let op = &mut j.ops[i];
        op.start_time = format_datetime(now_unix());
        op.before = backends
            .get(&op.uuid)
            .map(|(_, d)| d.version)
            .unwrap_or_default();
        let op = op.clone();
        self.du.running = Some((job_id, i));
        self.save_du();
        tracing::info!(
            "software modules: {} {} {} starting",
            op.kind,
            op.uuid,
            op.url
        );
        // Install: the ExecEnv named, else chosen from the file once downloaded.
        let env = if kind == "Install" { named_env } else { du_env };
        self.tasks.push(Box::pin(async move {
            let result = run_op(&backends, env, &op, tls, &dl_dir, max_download, job_id, i).await;
            Done::DuOp {
                job: job_id,
                index: i,
                result: Box::new(result),
            }
        }));
    }

    /// An operation ended.
    pub(crate) fn du_done(
        &mut self,
        job: u64,
        index: usize,
        result: Result<DuInfo, (u32, String)>,
    ) {
        if self.du.running != Some((job, index)) {
            return;
        }
        self.du.running = None;
        let backend = self.du.backend.clone();
        let backends = self.backends();
        let Some(j) = self.du.jobs.iter_mut().find(|j| j.id == job) else {
            return;
        };
        let op = &mut j.ops[index];
        op.result = Some(match result {
            Ok(info) => {
                let st = if op.kind == "Uninstall" {
                    DuState::Uninstalled
                } else {
                    DuState::Installed
                };
                tracing::info!(
                    "software modules: {} {} {} done",
                    op.kind,
                    info.uuid,
                    info.version
                );
                ok(&info, st)
            }
            Err((code, text)) => {
                tracing::warn!(
                    "software modules: {} {} failed: {text} ({code})",
                    op.kind,
                    op.uuid
                );
                let exists = backends.as_ref().is_some_and(|b| b.get(&op.uuid).is_some());
                let state = fail_state(&op.kind, exists);
                failed(op, state, code, text)
            }
        });
        let started = match &j.ops[index].result {
            Some(r) if r.code == 0 && r.state == DuState::Installed.as_str() => {
                backend.as_ref().and_then(|b| b.get(&r.uuid))
            }
            _ => None,
        };
        self.save_du();
        self.du_sync();
        if let Some(du) = started {
            self.eu_autostart(&du);
            self.du_sync();
        }
        self.du_events();
        self.du_tick();
    }

    /// Queues the events of every finished job not yet delivered; forgets finished autonomous
    /// jobs the policy lets nothing of through.
    fn du_events(&mut self) {
        let policy = self.du_policy();
        for j in self.du.jobs.iter().filter(|j| j.autonomous && j.done()) {
            let Some(r) = j.ops.first().and_then(|o| o.result.as_ref()) else {
                continue;
            };
            if self.du.local_done.iter().any(|(id, _)| *id == j.id) {
                continue;
            }
            if self.du.local_done.len() >= LOCAL_KEPT {
                self.du.local_done.pop_front();
            }
            self.du.local_done.push_back((
                j.id,
                serde_json::json!({
                    "uuid": r.uuid, "version": r.version, "state": r.state,
                    "fault_code": r.code, "fault_string": r.text,
                }),
            ));
        }
        let before = self.du.jobs.len();
        self.du.jobs.retain(|j| {
            !(j.autonomous
                && j.done()
                && !j.ops.iter().any(|o| {
                    o.result
                        .as_ref()
                        .is_some_and(|r| policy.allows(&o.kind, r.code))
                }))
        });
        if self.du.jobs.len() != before {
            self.save_du();
        }
        let done: Vec<(bool, String)> = self
            .du
            .jobs
            .iter()
            .filter(|j| j.done())
            .map(|j| (j.autonomous, j.command_key.clone()))
            .collect();
        let now = Instant::now();
        for (autonomous, key) in &done {
            let (code, key) = if *autonomous {
                (EventCode::AutonomousDuStateChangeComplete, "")
            } else {
                (EventCode::MChangeDUState, key.as_str())
            };
            let queued = self
                .cwmp
                .sched
                .queue
                .events
                .iter()
                .any(|e| e.code == code && e.command_key == key);
            if !queued {
                self.event_now(code, key, now);
            }
        }
        if done.iter().any(|(a, _)| !a)
            && !self
                .cwmp
                .sched
                .queue
                .contains(&EventCode::DuStateChangeComplete)
        {
            self.event_now(EventCode::DuStateChangeComplete, "", now);
        }
    }

    /// Makes sure finished jobs' events are in the queue (before an Inform is built).
    pub(crate) fn ensure_du_events(&mut self) {
        self.du_events();
    }

    /// The DUStateChangeCompletes and AutonomousDUStateChangeCompletes to send in this
    /// session: (call key, message).
    pub(crate) fn pending_du_completes(&self) -> Vec<(u64, CpeCall)> {
        let policy = self.du_policy();
        self.du
            .jobs
            .iter()
            .filter(|j| j.done())
            .filter_map(|j| {
                let done = j
                    .ops
                    .iter()
                    .filter_map(|o| o.result.as_ref().map(|r| (o, r)));
                let call = if j.autonomous {
                    let results: Vec<AutonDuOpResult> = done
                        .filter(|(o, r)| policy.allows(&o.kind, r.code))
                        .map(|(o, r)| AutonDuOpResult {
                            result: self.du_result(o, r),
                            operation_performed: match o.kind.as_str() {
                                "Install" => DuOperationType::Install,
                                "Update" => DuOperationType::Update,
                                _ => DuOperationType::Uninstall,
                            },
                        })
                        .collect();
                    if results.is_empty() {
                        return None;
                    }
                    CpeCall::AutonomousDUStateChangeComplete(AutonomousDUStateChangeComplete {
                        results,
                    })
                } else {
                    CpeCall::DUStateChangeComplete(DUStateChangeComplete {
                        command_key: j.command_key.clone(),
                        results: done.map(|(o, r)| self.du_result(o, r)).collect(),
                    })
                };
                Some((CALL_KEY_BASE + j.id, call))
            })
            .collect()
    }

    /// `Device.ManagementServer.DUStateChangeComplPolicy.` as it is now.
    fn du_policy(&self) -> Policy {
        let v = |n: &str| {
            // Plain (not hidden) values: the stored text as the ACS reads it.
            self.store
                .secret(&format!(
                    "Device.ManagementServer.DUStateChangeComplPolicy.{n}"
                ))
                .unwrap_or_default()
                .to_string()
        };
        Policy {
            enable: v("Enable") == "true" || v("Enable") == "1",
            operations: v("OperationTypeFilter")
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
            results: v("ResultTypeFilter"),
            faults: v("FaultCodeFilter")
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect(),
        }
    }

    /// Queues a DU state change the ACS did not ask for (the control socket): `kind` Install
    /// (a local `file`, into the ExecEnv `env_ref` or the one the file fits), Update (`uuid`
    /// to the version in `file`) or Uninstall (`uuid`). Returns the job id.
    pub(crate) fn du_local(
        &mut self,
        kind: &str,
        file: &str,
        uuid: &str,
        env_ref: &str,
    ) -> Result<u64, String> {
        if self.du.backend.is_none() {
            return Err("software modules are disabled ([software] enable = false)".into());
        }
        if self.du.jobs.len() >= MAX_JOBS {
            return Err(format!("{MAX_JOBS} jobs are waiting already"));
        }
        match kind {
            "Install" | "Update" if !std::path::Path::new(file).is_absolute() => {
                return Err(format!("{kind} needs the absolute path of a local file"));
            }
            "Update" | "Uninstall" if uuid.is_empty() => {
                return Err(format!("{kind} needs the deployment unit's uuid"));
            }
            "Install" | "Update" | "Uninstall" => {}
            _ => return Err(format!("unknown operation {kind:?}")),
        }
        self.du.next_id += 1;
        let id = self.du.next_id;
        self.du.jobs.push(Job {
            id,
            command_key: String::new(),
            ops: vec![Op {
                kind: kind.to_string(),
                uuid: uuid.to_string(),
                env_ref: env_ref.to_string(),
                local: if kind == "Uninstall" {
                    String::new()
                } else {
                    file.to_string()
                },
                ..Op::default()
            }],
            autonomous: true,
        });
        tracing::info!(
            "autonomous {kind} {} queued as job {id}",
            if uuid.is_empty() { file } else { uuid }
        );
        self.save_du();
        // Between sessions it starts now; during one, when the session ends.
        if !self.cwmp.sched.in_session() {
            self.du_tick();
        }
        Ok(id)
    }

    /// The outcome of a job the control socket queued: None while it runs (or when unknown).
    pub(crate) fn du_local_result(&self, id: u64) -> Option<serde_json::Value> {
        self.du
            .local_done
            .iter()
            .find(|(j, _)| *j == id)
            .map(|(_, r)| r.clone())
    }

    fn du_result(&self, o: &Op, r: &OpResult) -> DuOpResult {
        let installed = r.state == DuState::Installed.as_str();
        let du_ref = if installed {
            self.store
                .mirror_row(DU_TABLE, &r.uuid)
                .map(|p| p.trim_end_matches('.').to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let eu_refs = if installed {
            self.du
                .backend
                .as_ref()
                .and_then(|b| b.get(&r.uuid))
                .map(|d| {
                    d.units
                        .iter()
                        .filter_map(|u| {
                            self.store
                                .mirror_row(EU_TABLE, &format!("{}/{}", d.uuid, u.name))
                        })
                        .map(|p| p.trim_end_matches('.').to_string())
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        DuOpResult {
            // The schema wants a UUID: a failed install the device could not name, or an
            // operation that named a malformed one, reports the nil UUID.
            uuid: if is_du_uuid(&r.uuid) {
                r.uuid.clone()
            } else {
                NIL_UUID.to_string()
            },
            deployment_unit_ref: du_ref,
            version: r.version.clone(),
            current_state: match r.state.as_str() {
                "Installed" => DuState::Installed,
                "Uninstalled" => DuState::Uninstalled,
                _ => DuState::Failed,
            },
            resolved: true,
            execution_unit_refs: eu_refs,
            start_time: if o.start_time.is_empty() {
                r.complete_time.clone()
            } else {
                o.start_time.clone()
            },
            complete_time: r.complete_time.clone(),
            fault: TransferFault {
                code: r.code,
                string: r.text.clone(),
            },
        }
    }

    /// The ACS acknowledged the DUStateChangeComplete with this call key.
    pub(crate) fn du_delivered(&mut self, key: u64) {
        let id = key - CALL_KEY_BASE;
        self.du.jobs.retain(|j| j.id != id);
        self.save_du();
    }

    /// `Device.SoftwareModules.` from the backend: the execution environment, one
    /// DeploymentUnit row per installed unit (by UUID), one ExecutionUnit row per unit's
    /// process (by UUID/name).
    pub(crate) fn du_sync(&mut self) {
        let Some(b) = self.backends() else {
            return;
        };
        let t = |s: &str| MVal::Text(s.to_string());
        let ee_row = |key: &str, name: &str, typ: &str| MRow {
            key: key.into(),
            values: vec![
                ("Enable", t("true")),
                ("Status", t("Up")),
                ("Name", t(name)),
                ("Type", t(typ)),
                ("Vendor", t("cwmpd")),
                ("Version", t(env!("CARGO_PKG_VERSION"))),
            ],
            children: Vec::new(),
        };
        let ee = ee_row(EE_KEY, "cwmpd-apps", "Linux process");
        let mut eus = Vec::new();
        let mut du_rows = Vec::new();
        let mut active = Vec::new();
        for (env, d) in &b.list() {
            let mut refs = Vec::new();
            for u in &d.units {
                let key = super::du_units::unit_key(&d.uuid, &u.name);
                refs.push((EU_TABLE, key.clone()));
                let (status, fault, msg) = self.du.units.status(&key);
                if status != "Idle" {
                    active.push((EU_TABLE, key.clone()));
                }
                eus.push(MRow {
                    key,
                    values: vec![
                        ("EUID", t(&format!("{}-{}", &d.uuid[..8], u.name))),
                        ("Name", t(&u.name)),
                        ("ExecEnvLabel", t(&u.name)),
                        ("Status", t(status)),
                        ("ExecutionFaultCode", t(fault)),
                        ("ExecutionFaultMessage", t(&msg)),
                        ("AutoStart", t(if u.autostart { "true" } else { "false" })),
                        ("Vendor", t(&d.vendor)),
                        ("Version", t(&d.version)),
                        ("Description", t(&d.description)),
                        (
                            "ExecutionEnvRef",
                            MVal::Ref {
                                table: EE_TABLE,
                                key: env.key().into(),
                            },
                        ),
                    ],
                    children: Vec::new(),
                });
            }
            // DUID: the directory backend's is the UUID, dpkg's the package name.
            let duid = match env {
                Env::Dir => &d.uuid,
                Env::Dpkg => &d.name,
            };
            du_rows.push(MRow {
                key: d.uuid.clone(),
                values: vec![
                    ("UUID", t(&d.uuid)),
                    ("DUID", t(duid)),
                    ("Name", t(&d.name)),
                    ("Status", t("Installed")),
                    ("Resolved", t("true")),
                    ("URL", t(&d.url)),
                    ("Description", t(&d.description)),
                    ("Vendor", t(&d.vendor)),
                    ("Version", t(&d.version)),
                    ("ExecutionUnitList", MVal::RefList(refs)),
                    (
                        "ExecutionEnvRef",
                        MVal::Ref {
                            table: EE_TABLE,
                            key: env.key().into(),
                        },
                    ),
                ],
                children: Vec::new(),
            });
        }
        let mut ee = ee;
        ee.values
            .push(("ActiveExecutionUnits", MVal::RefList(active)));
        let mut ees = vec![ee];
        if b.dpkg.is_some() {
            let mut row = ee_row(EE_DPKG, "dpkg", "Debian package");
            row.values
                .push(("ActiveExecutionUnits", MVal::RefList(Vec::new())));
            ees.push(row);
        }
        let m = Mirror {
            tables: vec![
                MTable {
                    table: EE_TABLE,
                    rows: ees,
                },
                MTable {
                    table: EU_TABLE,
                    rows: eus,
                },
                MTable {
                    table: DU_TABLE,
                    rows: du_rows,
                },
            ],
            values: Vec::new(),
        };
        let rep = self.store.sync_mirror(&m, false);
        if !rep.refused.is_empty() {
            tracing::warn!("software modules: {}", rep.refused.join("; "));
        }
        if self.store.is_dirty() {
            let _ = self.persist();
        }
    }
}

/// Downloads (install, update) and hands the archive to the backend: `env` names it (None: an
/// install whose file decides, see the module documentation).
#[allow(clippy::too_many_arguments)]
async fn run_op(
    backends: &Backends,
    env: Option<Env>,
    op: &Op,
    tls: crate::net::acs::TlsSettings,
    dl_dir: &std::path::Path,
    max_download: u64,
    job: u64,
    index: usize,
) -> Result<DuInfo, (u32, String)> {
    let de = |e: DuError| (e.code(), e.text().to_string());
    let archive = if op.kind == "Uninstall" {
        None
    } else if !op.local.is_empty() {
        // An autonomous operation's local file: copied, so the backend may consume it.
        let src = std::path::Path::new(&op.local);
        let len = tokio::fs::metadata(src)
            .await
            .map_err(|e| (9016, format!("{}: {e}", src.display())))?
            .len();
        if len > max_download {
            return Err((
                9027,
                format!("{} is over {max_download} bytes", src.display()),
            ));
        }
        tokio::fs::create_dir_all(dl_dir)
            .await
            .map_err(|e| (9001, format!("{}: {e}", dl_dir.display())))?;
        let file = dl_dir.join(format!("du-{job}-{index}"));
        if let Err(e) = tokio::fs::copy(src, &file).await {
            let _ = tokio::fs::remove_file(&file).await;
            return Err((9016, format!("{}: {e}", src.display())));
        }
        Some((file, format!("file://{}", op.local)))
    } else {
        let known = backends.get(&op.uuid).map(|(_, d)| d);
        if op.url.is_empty() && op.kind == "Update" && known.is_none() {
            // Update without a URL: the URL the unit came from.
            return Err((9028, format!("no deployment unit {}", op.uuid)));
        }
        let url = if op.url.is_empty() {
            known.map(|d| d.url).unwrap_or_default()
        } else {
            op.url.clone()
        };
        if !files::supported_scheme(&url) {
            return Err((9013, format!("unsupported URL {url:?}")));
        }
        tokio::fs::create_dir_all(dl_dir)
            .await
            .map_err(|e| (9001, format!("{}: {e}", dl_dir.display())))?;
        let file = dl_dir.join(format!("du-{job}-{index}"));
        let target = Target {
            url: url.clone(),
            username: op.username.clone(),
            password: op.password.clone(),
            tls,
            idle_timeout: IDLE_TIMEOUT,
        };
        if let Err(f) = files::download(&target, &file, max_download, 0).await {
            let _ = tokio::fs::remove_file(&file).await;
            return Err((f.code, f.msg));
        }
        Some((file, url))
    };
    let b = backends.clone();
    let op2 = op.clone();
    let arch = archive.clone();
    let r = tokio::task::spawn_blocking(move || {
        let env = match (env, &arch) {
            (Some(e), _) => e,
            (None, Some((file, _))) if b.dpkg.is_some() && DpkgBackend::looks_like_deb(file) => {
                Env::Dpkg
            }
            (None, _) => Env::Dir,
        };
        match (env, op2.kind.as_str(), arch, b.dpkg.as_ref()) {
            (Env::Dir, "Install", Some((file, url)), _) => b.dir.install(&file, &op2.uuid, &url),
            (Env::Dir, "Update", Some((file, url)), _) => b.dir.update(&op2.uuid, &file, &url),
            (Env::Dir, _, _, _) => b.dir.uninstall(&op2.uuid, &op2.version),
            (Env::Dpkg, "Install", Some((file, url)), Some(d)) => {
                let dir = b.dir.clone();
                d.install(&file, &op2.uuid, &url, &|u| dir.get(u).is_some())
            }
            (Env::Dpkg, "Update", Some((file, url)), Some(d)) => d.update(&op2.uuid, &file, &url),
            (Env::Dpkg, _, _, Some(d)) => d.uninstall(&op2.uuid, &op2.version),
            (Env::Dpkg, _, _, None) => Err(DuError::Internal("no dpkg backend".into())),
        }
    })
    .await
    .map_err(|e| (9001, format!("backend task: {e}")))?;
    if let Some((file, _)) = archive {
        let _ = tokio::fs::remove_file(&file).await;
    }
    r.map_err(de)
}
