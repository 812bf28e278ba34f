//! TR-143 diagnostics as the engine runs them (the tests themselves: `crate::diag`).
//!
//! TR-181 `Device.IP.Diagnostics.*.DiagnosticsState`: the ACS writes `Requested` (with or after
//! the test's parameters); the test starts after the session and runs alone (others wait in
//! order); its results and final state are written when it ends and `8 DIAGNOSTICS COMPLETE`
//! opens a session. Writing a test's other parameters sets its state to `None` and, while it
//! runs or waits, cancels it; writing `Requested` again restarts it. Results are not kept
//! across a restart: every state reads `None` after one.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use futures::future::AbortHandle;

use crate::cwmp::events::EventCode;
use crate::diag::{KINDS, Kind, Limits, Outcome};
use crate::model::mirror::{MRow, MTable, Mirror};
use crate::model::{Fault, Origin};

use super::{Done, Engine};

const ROOT: &str = "Device.IP.Diagnostics.";

/// Result tables of each test, full generic paths.
fn result_tables(k: Kind) -> &'static [(&'static str, &'static str)] {
    match k {
        Kind::TraceRoute => &[("RouteHops.", "Device.IP.Diagnostics.TraceRoute.RouteHops.")],
        Kind::Download => &[(
            "PerConnectionResult.",
            "Device.IP.Diagnostics.DownloadDiagnostics.PerConnectionResult.",
        )],
        Kind::Upload => &[(
            "PerConnectionResult.",
            "Device.IP.Diagnostics.UploadDiagnostics.PerConnectionResult.",
        )],
        Kind::UDPEcho => &[(
            "IndividualPacketResult.",
            "Device.IP.Diagnostics.UDPEchoDiagnostics.IndividualPacketResult.",
        )],
        _ => &[],
    }
}

/// Tests waiting, and the one running.
#[derive(Default)]
pub(crate) struct Diagnostics {
    pending: VecDeque<Kind>,
    running: Option<(Kind, u64, AbortHandle)>,
    /// Tells a cancelled test's late end from the current one's.
    generation: u64,
}

/// The test and the parameter name (`Host`) of a path under `Device.IP.Diagnostics.`.
fn split(name: &str) -> Option<(Kind, &str)> {
    let rest = name.strip_prefix(ROOT)?;
    let (obj, param) = rest.split_once('.')?;
    let kind = Kind::from_object(&format!("{ROOT}{obj}."))?;
    Some((kind, param))
}

impl Engine {
    /// At start: no test is running, whatever the state file says.
    pub(crate) fn diag_init(&mut self) {
        for k in KINDS {
            let p = format!("{}DiagnosticsState", k.object());
            if self.store.get(&p).is_some_and(|v| v != "None") {
                let _ = self.store.set_unchecked(&p, "None", Origin::Acs);
            }
        }
    }

    /// Why a write of the ACS to a diagnostic's parameter is refused, if it is (9007 for a
    /// value the test cannot use, checked before anything is applied).
    pub(crate) fn diag_write_refused(&self, name: &str, value: &str) -> Option<Fault> {
        let (kind, param) = split(name)?;
        if param == "DiagnosticsState" {
            if value != "Requested" {
                return Some(Fault::new(
                    9007,
                    format!("{name}: only Requested may be written"),
                ));
            }
            if !self.cfg.diagnostics.enable {
                return Some(Fault::new(9001, "diagnostics are disabled on this device"));
            }
            if !cfg!(feature = "diagnostics") {
                return Some(Fault::new(9001, "this build has no diagnostics"));
            }
            return None;
        }
        if param == "Interface" && !value.is_empty() {
            let known = self.store.mirror_key(&format!("{value}.")).is_some()
                && value.starts_with("Device.IP.Interface.");
            if !known {
                return Some(Fault::new(
                    9007,
                    format!("{name}: {value:?} is not an IP interface of this device"),
                ));
            }
            return None;
        }
        crate::diag::check_input(kind, param, value)
            .err()
            .map(|why| Fault::new(9007, format!("{name}: {why}")))
    }

    /// After a SetParameterValues of the ACS was committed: requests, restarts, cancels.
    pub(crate) fn diag_after_set(&mut self, list: &[(String, String, Option<String>)]) {
        for k in KINDS {
            let mine: Vec<&str> = list
                .iter()
                .filter_map(|(n, _, _)| split(n).filter(|(kk, _)| *kk == k).map(|(_, p)| p))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let requested = mine.contains(&"DiagnosticsState");
            self.diag_cancel(k);
            if requested {
                tracing::info!("diagnostic {} requested", k.object());
                self.diag.pending.push_back(k);
            } else {
                let p = format!("{}DiagnosticsState", k.object());
                let _ = self.store.set_unchecked(&p, "None", Origin::Acs);
            }
        }
    }

    /// Stops a test of this kind, running or waiting.
    fn diag_cancel(&mut self, k: Kind) {
        self.diag.pending.retain(|p| *p != k);
        if let Some((rk, _, h)) = &self.diag.running
            && *rk == k
        {
            h.abort();
            tracing::info!("diagnostic {} cancelled", k.object());
            self.diag.running = None;
        }
    }

    /// Starts the next waiting test when none runs (called between sessions).
    pub(crate) fn diag_tick(&mut self) {
        if self.diag.running.is_some() {
            return;
        }
        let Some(k) = self.diag.pending.pop_front() else {
            return;
        };
        let obj = k.object();
        let mut inputs = BTreeMap::new();
        let names = self.store.get_names(obj, true).unwrap_or_default();
        for (n, writable) in names {
            if writable && !n.ends_with('.') {
                let v = self.store.get(&n).unwrap_or_default();
                inputs.insert(n[obj.len()..].to_string(), v);
            }
        }
        let ifname = inputs
            .get("Interface")
            .filter(|v| !v.is_empty())
            .and_then(|v| self.store.mirror_key(&format!("{v}.")))
            .map(str::to_string);
        let d = &self.cfg.diagnostics;
        let lim = Limits {
            max_time: Duration::from_secs(d.max_time.max(1)),
            max_download: d.max_download,
            max_upload: d.max_upload,
            ca_file: d.ca_file.clone(),
            ..Limits::default()
        };
        self.diag.generation += 1;
        let generation = self.diag.generation;
        #[cfg(feature = "diagnostics")]
        let test = async move { crate::diag::run(k, &inputs, ifname.as_deref(), &lim).await };
        // Never reached: DiagnosticsState = Requested is refused (9001) in such a build.
        #[cfg(not(feature = "diagnostics"))]
        let test = {
            let _ = (inputs, ifname, lim);
            async move { crate::diag::Outcome::new(k, "Error_Internal") }
        };
        let (fut, handle) = futures::future::abortable(test);
        tracing::info!("diagnostic {obj} started");
        self.diag.running = Some((k, generation, handle));
        self.tasks.push(Box::pin(async move {
            Done::Diag {
                kind: k,
                generation,
                outcome: fut.await.ok(),
            }
        }));
    }

    /// A test ended (or was aborted: `None`).
    pub(crate) fn diag_done(&mut self, kind: Kind, generation: u64, outcome: Option<Outcome>) {
        let current = matches!(&self.diag.running, Some((_, g, _)) if *g == generation);
        let Some(out) = outcome.filter(|_| current) else {
            return;
        };
        self.diag.running = None;
        let obj = kind.object();
        for (name, v) in &out.values {
            let p = format!("{obj}{name}");
            if let Err(f) = self.store.set_internal(&p, v) {
                tracing::warn!("diagnostic result {p} = {v:?} refused: {}", f.reason);
            }
        }
        let tables = result_tables(kind)
            .iter()
            .map(|(rel, full)| {
                let rows = out
                    .rows
                    .iter()
                    .find(|(r, _)| r == rel)
                    .map(|(_, rows)| rows.as_slice())
                    .unwrap_or_default();
                MTable {
                    table: full,
                    rows: rows
                        .iter()
                        .enumerate()
                        .map(|(i, vals)| MRow {
                            key: (i + 1).to_string(),
                            values: vals.iter().map(|(n, v)| (*n, v.as_str().into())).collect(),
                            children: Vec::new(),
                        })
                        .collect(),
                }
            })
            .collect();
        let rep = self.store.sync_mirror(
            &Mirror {
                tables,
                values: Vec::new(),
            },
            true,
        );
        if !rep.refused.is_empty() {
            tracing::warn!("diagnostic results refused: {}", rep.refused.join("; "));
        }
        let _ = self.store.set_unchecked(
            &format!("{obj}DiagnosticsState"),
            out.state,
            Origin::Internal,
        );
        tracing::info!("diagnostic {obj} ended: {}", out.state);
        self.event_now(EventCode::DiagnosticsComplete, "", Instant::now());
        self.diag_tick();
    }
}
