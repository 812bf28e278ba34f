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
//! Execution units (their processes): `du_units`. Not yet: a dpkg/opkg backend,
//! AutonomousDUStateChangeComplete.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cwmp::events::EventCode;
use crate::cwmp::soap::{
    DUStateChangeComplete, DuOpResult, DuOperation, DuState, TransferFault, is_du_uuid,
};
use crate::model::mirror::{MRow, MTable, MVal, Mirror};
use crate::net::files::{self, Target};
use crate::swmod::dir::DirBackend;
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
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// One operation and, once known, its result.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    jobs: Vec<Job>,
    next_id: u64,
    /// (job id, operation index) running now.
    running: Option<(u64, usize)>,
    /// Execution units' processes.
    pub(crate) units: super::du_units::Units,
}

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
        url: String::new(),
        uuid: String::new(),
        version: String::new(),
        username: String::new(),
        password: String::new(),
        env_ref: String::new(),
        start_time: String::new(),
        before: String::new(),
        result: None,
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
fn fail_state(kind: &str, backend: Option<&DirBackend>, uuid: &str) -> DuState {
    if kind == "Install" {
        DuState::Failed
    } else if backend.is_some_and(|b| b.get(uuid).is_some()) {
        DuState::Installed
    } else {
        DuState::Uninstalled
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
        if let Some(v) = self.agent_state.du_jobs.clone() {
            match serde_json::from_value::<Persisted>(v) {
                Ok(p) => {
                    self.du.jobs = p.jobs;
                    self.du.next_id = p.next_id;
                }
                Err(e) => tracing::error!("unreadable software-module jobs dropped: {e}"),
            }
        }
        let backend = self.du.backend.clone().expect("opened above");
        let mut changed = false;
        for job in &mut self.du.jobs {
            for op in &mut job.ops {
                if op.result.is_some() || op.start_time.is_empty() {
                    continue;
                }
                // Started, no result: the backend tells which side of its commit point the
                // restart came.
                let now = backend.get(&op.uuid).or_else(|| {
                    backend
                        .list()
                        .into_iter()
                        .find(|d| !op.url.is_empty() && d.url == op.url)
                });
                op.result = Some(match (op.kind.as_str(), now) {
                    ("Install", Some(d)) => ok(&d, DuState::Installed),
                    ("Update", Some(d)) if d.version != op.before => ok(&d, DuState::Installed),
                    ("Uninstall", None) => failed(op, DuState::Uninstalled, 0, ""),
                    (kind, _) => failed(
                        op,
                        fail_state(kind, Some(&backend), &op.uuid),
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
        for du in backend.list() {
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

    /// Starts the next operation when none runs (between sessions).
    pub(crate) fn du_tick(&mut self) {
        if self.du.running.is_some() {
            return;
        }
        let Some(backend) = self.du.backend.clone() else {
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
        let ee_path = self
            .store
            .mirror_row(EE_TABLE, EE_KEY)
            .map(|p| p.trim_end_matches('.').to_string());
        let tls = self.tls_settings();
        let dl_dir = self.du_dir().join("downloads");
        let max_download = self.cfg.actions.max_download;
        let j = self
            .du
            .jobs
            .iter_mut()
            .find(|j| j.id == job_id)
            .expect("found above");
        let op = &mut j.ops[i];
        // Update names the unit by UUID or, without one, by the URL it came from.
        if op.kind == "Update" && op.uuid.is_empty() {
            if let Some(d) = backend.list().into_iter().find(|d| d.url == op.url) {
                op.uuid = d.uuid;
            } else {
                op.result = Some(failed(
                    op,
                    DuState::Uninstalled,
                    9028,
                    format!("no deployment unit from {:?}", op.url),
                ));
                self.save_du();
                self.du_events();
                return self.du_tick();
            }
        }
        // Checks that need no IO: the result is known at once.
        let uuid_ok = op.uuid.is_empty() || is_du_uuid(&op.uuid);
        let env_ok = op.env_ref.is_empty()
            || ee_path
                .as_deref()
                .is_some_and(|p| p == op.env_ref.trim_end_matches('.'));
        if !uuid_ok || !env_ok {
            let state = fail_state(&op.kind, Some(&backend), &op.uuid);
            op.result = Some(if uuid_ok {
                failed(
                    op,
                    state,
                    9023,
                    format!("no execution environment {}", op.env_ref),
                )
            } else {
                failed(op, state, 9022, format!("{:?} is not a UUID", op.uuid))
            });
            self.save_du();
            self.du_events();
            return self.du_tick();
        }
        // An update or uninstall stops the unit's processes first (the run contract).
        if op.kind != "Install" {
            let uuid = op.uuid.clone();
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
        op.before = backend.get(&op.uuid).map(|d| d.version).unwrap_or_default();
        let op = op.clone();
        self.du.running = Some((job_id, i));
        self.save_du();
        tracing::info!(
            "software modules: {} {} {} starting",
            op.kind,
            op.uuid,
            op.url
        );
        self.tasks.push(Box::pin(async move {
            let result = run_op(&backend, &op, tls, &dl_dir, max_download, job_id, i).await;
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
                let state = fail_state(&op.kind, backend.as_deref(), &op.uuid);
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

    /// Queues the events of every finished job not yet delivered.
    fn du_events(&mut self) {
        let done: Vec<String> = self
            .du
            .jobs
            .iter()
            .filter(|j| j.done())
            .map(|j| j.command_key.clone())
            .collect();
        if done.is_empty() {
            return;
        }
        let now = Instant::now();
        for key in &done {
            let queued = self
                .cwmp
                .sched
                .queue
                .events
                .iter()
                .any(|e| e.code == EventCode::MChangeDUState && &e.command_key == key);
            if !queued {
                self.event_now(EventCode::MChangeDUState, key, now);
            }
        }
        if !self
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

    /// The DUStateChangeCompletes to send in this session: (call key, message).
    pub(crate) fn pending_du_completes(&self) -> Vec<(u64, DUStateChangeComplete)> {
        self.du
            .jobs
            .iter()
            .filter(|j| j.done())
            .map(|j| {
                let results = j
                    .ops
                    .iter()
                    .filter_map(|o| o.result.as_ref().map(|r| (o, r)))
                    .map(|(o, r)| self.du_result(o, r))
                    .collect();
                (
                    CALL_KEY_BASE + j.id,
                    DUStateChangeComplete {
                        command_key: j.command_key.clone(),
                        results,
                    },
                )
            })
            .collect()
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
        let Some(b) = self.du.backend.clone() else {
            return;
        };
        let t = |s: &str| MVal::Text(s.to_string());
        let dus = b.list();
        let ee = MRow {
            key: EE_KEY.into(),
            values: vec![
                ("Enable", t("true")),
                ("Status", t("Up")),
                ("Name", t("cwmpd-apps")),
                ("Type", t("Linux process")),
                ("Vendor", t("cwmpd")),
                ("Version", t(env!("CARGO_PKG_VERSION"))),
            ],
            children: Vec::new(),
        };
        let mut eus = Vec::new();
        let mut du_rows = Vec::new();
        let mut active = Vec::new();
        for d in &dus {
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
                                key: EE_KEY.into(),
                            },
                        ),
                    ],
                    children: Vec::new(),
                });
            }
            du_rows.push(MRow {
                key: d.uuid.clone(),
                values: vec![
                    ("UUID", t(&d.uuid)),
                    ("DUID", t(&d.uuid)),
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
                            key: EE_KEY.into(),
                        },
                    ),
                ],
                children: Vec::new(),
            });
        }
        let mut ee = ee;
        ee.values
            .push(("ActiveExecutionUnits", MVal::RefList(active)));
        let m = Mirror {
            tables: vec![
                MTable {
                    table: EE_TABLE,
                    rows: vec![ee],
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

/// Downloads (install, update) and hands the archive to the backend.
async fn run_op(
    backend: &Arc<DirBackend>,
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
    } else {
        if op.url.is_empty() {
            // Update without a URL: the URL the unit came from.
            if backend.get(&op.uuid).is_none() {
                return Err((9028, format!("no deployment unit {}", op.uuid)));
            }
        }
        let url = if op.url.is_empty() {
            backend.get(&op.uuid).map(|d| d.url).unwrap_or_default()
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
    let b = backend.clone();
    let op2 = op.clone();
    let arch = archive.clone();
    let r = tokio::task::spawn_blocking(move || match (op2.kind.as_str(), arch) {
        ("Install", Some((file, url))) => b.install(&file, &op2.uuid, &url),
        ("Update", Some((file, url))) => b.update(&op2.uuid, &file, &url),
        _ => b.uninstall(&op2.uuid, &op2.version),
    })
    .await
    .map_err(|e| (9001, format!("backend task: {e}")))?;
    if let Some((file, _)) = archive {
        let _ = tokio::fs::remove_file(&file).await;
    }
    r.map_err(de)
}
