//! Execution units: the processes of installed deployment units, started and stopped by the
//! engine under the run contract of `crate::swmod::dir` (working directory the unit directory,
//! `exec` as argv without a shell, `CWMPD_DU_UUID`, `CWMPD_EU_NAME` and `CWMPD_DATA_DIR` in
//! the environment, stdin and stdout closed, stderr the agent's; SIGTERM when the agent dies).
//!
//! A unit starts when its unit is installed or updated with `autostart`, at the agent's start
//! with `autostart`, or when the ACS sets `ExecutionUnit.{i}.RequestedState = Active`; it stops
//! on `RequestedState = Idle` and before an update or uninstall of its unit (SIGTERM, then
//! SIGKILL after [`STOP_GRACE`]). A unit that exits on its own is `Idle` with
//! `ExecutionFaultCode = FailureWhileActive`; one that cannot be started `FailureOnStart`
//! (`FailureOnAutoStart` when the agent started it). RequestedState is a command: it reads back
//! empty.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::swmod::DuInfo;

use super::{Done, Engine};

/// How long a unit has between SIGTERM and SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);
const EU_TABLE: &str = "Device.SoftwareModules.ExecutionUnit.";

/// A running unit.
pub(crate) struct Running {
    pub pid: u32,
    stop: Option<oneshot::Sender<()>>,
}

/// Units running and the last fault of each (by `uuid/name`).
#[derive(Default)]
pub(crate) struct Units {
    pub running: BTreeMap<String, Running>,
    pub faults: BTreeMap<String, (&'static str, String)>,
}

impl Units {
    /// Status, ExecutionFaultCode, ExecutionFaultMessage of a unit.
    pub(crate) fn status(&self, key: &str) -> (&'static str, &'static str, String) {
        let status = match self.running.get(key) {
            Some(r) if r.stop.is_none() => "Stopping",
            Some(_) => "Active",
            None => "Idle",
        };
        match self.faults.get(key) {
            Some((code, msg)) => (status, code, msg.clone()),
            None => (status, "NoFault", String::new()),
        }
    }
}

pub(crate) fn unit_key(uuid: &str, name: &str) -> String {
    format!("{uuid}/{name}")
}

impl Engine {
    /// Starts a unit of `du` (nothing when it runs).
    pub(crate) fn eu_start(&mut self, du: &DuInfo, name: &str, auto: bool) {
        let key = unit_key(&du.uuid, name);
        if self.du.units.running.contains_key(&key) {
            return;
        }
        let Some(backend) = self.du.backend.clone() else {
            return;
        };
        let Some(eu) = du.units.iter().find(|u| u.name == name) else {
            return;
        };
        let dir = backend.unit_dir(&du.uuid);
        let mut cmd = tokio::process::Command::new(dir.join(&eu.exec[0]));
        cmd.args(&eu.exec[1..])
            .current_dir(&dir)
            .env("CWMPD_DU_UUID", &du.uuid)
            .env("CWMPD_EU_NAME", name)
            .env("CWMPD_DATA_DIR", backend.data_dir(&du.uuid))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call (prctl).
        unsafe {
            cmd.pre_exec(|| {
                // The unit dies with the agent, a kill -9 included: no orphan keeps running
                // beside the copy the restarted agent starts.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("execution unit {key}: cannot start: {e}");
                let code = if auto {
                    "FailureOnAutoStart"
                } else {
                    "FailureOnStart"
                };
                self.du.units.faults.insert(key, (code, e.to_string()));
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!("execution unit {key} started (pid {pid})");
        let (tx, rx) = oneshot::channel();
        self.du.units.faults.remove(&key);
        self.du.units.running.insert(
            key.clone(),
            Running {
                pid,
                stop: Some(tx),
            },
        );
        self.tasks.push(Box::pin(async move {
            let requested;
            tokio::select! {
                _ = child.wait() => requested = false,
                _ = rx => {
                    requested = true;
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                }
            }
            Done::EuExit { key, requested }
        }));
    }

    /// Asks a running unit to stop; its end comes as [`Done::EuExit`].
    pub(crate) fn eu_stop(&mut self, key: &str) {
        if let Some(r) = self.du.units.running.get_mut(key)
            && let Some(tx) = r.stop.take()
        {
            tracing::info!("execution unit {key} stopping (pid {})", r.pid);
            let _ = tx.send(());
        }
    }

    /// A unit's process ended.
    pub(crate) fn eu_exit(&mut self, key: String, requested: bool) {
        self.du.units.running.remove(&key);
        if requested {
            tracing::info!("execution unit {key} stopped");
        } else {
            tracing::warn!("execution unit {key} exited on its own");
            self.du.units.faults.insert(
                key,
                ("FailureWhileActive", "the process exited".to_string()),
            );
        }
        self.du_sync();
        // An update or uninstall may have been waiting for it.
        self.du_tick();
    }

    /// Units of `uuid` still running (an update or uninstall waits for them).
    pub(crate) fn eu_running_of(&self, uuid: &str) -> Vec<String> {
        let prefix = format!("{uuid}/");
        self.du
            .units
            .running
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Starts the `autostart` units of `du`.
    pub(crate) fn eu_autostart(&mut self, du: &DuInfo) {
        let names: Vec<String> = du
            .units
            .iter()
            .filter(|u| u.autostart)
            .map(|u| u.name.clone())
            .collect();
        for n in names {
            self.eu_start(du, &n, true);
        }
    }

    /// Whether the ACS may write this parameter of a software-module row.
    pub(crate) fn du_writable(name: &str) -> bool {
        name.starts_with(EU_TABLE) && name.ends_with(".RequestedState")
    }

    /// After a SetParameterValues of the ACS: RequestedState starts or stops units, then reads
    /// back empty (a command).
    pub(crate) fn du_after_set(&mut self, list: &[(String, String, Option<String>)]) {
        let mut changed = false;
        for (name, value, _) in list {
            if !Self::du_writable(name) {
                continue;
            }
            let row = name.trim_end_matches("RequestedState");
            let Some(key) = self.store.mirror_key(row).map(str::to_string) else {
                continue;
            };
            self.store.clear_command(name);
            let Some((uuid, unit)) = key.split_once('/') else {
                continue;
            };
            match value.as_str() {
                "Active" => {
                    if let Some(du) = self.du.backend.as_ref().and_then(|b| b.get(uuid)) {
                        self.eu_start(&du, unit, false);
                    }
                }
                _ => self.eu_stop(&key),
            }
            changed = true;
        }
        if changed {
            self.du_sync();
        }
    }
}
