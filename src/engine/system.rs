//! The device's own objects read from Linux (`crate::system`), kept in step with the store:
//! read on start, before every ACS or control request that names them, on each poll and when
//! the kernel reports a change of links, addresses or routes. Writes the ACS may make to them
//! (interface Enable / MaxMTUSize, the time client) are carried out here, or refused with 9008
//! where the integrator did not allow them.

use std::time::Instant;

use crate::model::store::Source;
use crate::model::{Fault, Origin};
use crate::system::Parts;

use super::Engine;

/// Subtrees and the parts of the system that fill them.
const PARTS: &[(&str, Parts)] = &[
    ("Device.IP.Interface.", Parts::NET),
    ("Device.IP.IPv", Parts::NET),
    ("Device.Ethernet.", Parts::NET),
    ("Device.Routing.", Parts::ROUTES),
    ("Device.DNS.", Parts::DNS),
    ("Device.Time.", Parts::TIME),
    ("Device.DeviceInfo.TemperatureStatus.", Parts::THERMAL),
    ("Device.DeviceInfo.ProcessStatus.", Parts::PROCESSES),
    ("Device.DeviceInfo.NetworkProperties.", Parts::NETPROPS),
];

/// What a poll re-reads (processes only when asked for: they churn).
const POLLED: Parts = Parts::NET
    .union(Parts::ROUTES)
    .union(Parts::DNS)
    .union(Parts::TIME)
    .union(Parts::THERMAL)
    .union(Parts::NETPROPS);

/// Tables whose rows are not kept across restarts.
const VOLATILE: &[&str] = &[
    "Device.DeviceInfo.ProcessStatus.Process.",
    "Device.IP.Diagnostics.TraceRoute.RouteHops.",
    "Device.IP.Diagnostics.DownloadDiagnostics.PerConnectionResult.",
    "Device.IP.Diagnostics.UploadDiagnostics.PerConnectionResult.",
    "Device.IP.Diagnostics.UDPEchoDiagnostics.IndividualPacketResult.",
];

/// The parts a request naming `names` needs ("" and partial paths cover whole subtrees).
pub(crate) fn parts_for<'a>(names: impl IntoIterator<Item = &'a str>) -> Parts {
    let mut p = Parts::empty();
    for n in names {
        for (prefix, part) in PARTS {
            if n.starts_with(prefix) || prefix.starts_with(n) {
                p = p.union(*part);
            }
        }
    }
    p
}

const TIME_WRITABLE: &[&str] = &[
    "Device.Time.Enable",
    "Device.Time.NTPServer1",
    "Device.Time.NTPServer2",
    "Device.Time.NTPServer3",
    "Device.Time.NTPServer4",
    "Device.Time.NTPServer5",
];

impl Engine {
    /// At start: marks the volatile tables and reads the system once, quietly (the boot
    /// Inform reports the state, it is not a change).
    pub(crate) fn system_init(&mut self) {
        for v in VOLATILE {
            self.store.set_volatile(v);
        }
        if self.cfg.system.enable {
            self.system_sync(POLLED, true);
        }
        self.log_files_sync();
    }

    /// `Device.DeviceInfo.VendorLogFile.{i}` from `[system] log_files` (by name: a file keeps
    /// its instance while it stays in the list).
    fn log_files_sync(&mut self) {
        use crate::model::mirror::{MRow, MTable, MVal, Mirror};
        let rows = self
            .cfg
            .system
            .log_files
            .iter()
            .map(|f| MRow {
                key: f.name.clone(),
                values: vec![
                    ("Name", MVal::Text(f.name.clone())),
                    ("MaximumSize", MVal::Text(f.max_size.to_string())),
                    ("Persistent", MVal::Text(f.persistent.to_string())),
                ],
                children: Vec::new(),
            })
            .collect();
        let m = Mirror {
            tables: vec![MTable {
                table: "Device.DeviceInfo.VendorLogFile.",
                rows,
            }],
            values: Vec::new(),
        };
        let rep = self.store.sync_mirror(&m, true);
        if !rep.refused.is_empty() {
            tracing::warn!("log_files refused by the model: {}", rep.refused.join("; "));
        }
    }

    /// Reads `parts` of the system into the store. A change of a watched value is a
    /// notification like any other device-side change.
    pub(crate) fn system_sync(&mut self, parts: Parts, quiet: bool) {
        if !self.cfg.system.enable || parts.is_empty() {
            return;
        }
        let snap = match crate::system::read(parts, &self.cfg.system.resolv_conf) {
            Ok(s) => s,
            Err(e) => {
                if let Some(n) = self.sys_warn.check(Instant::now()) {
                    tracing::warn!("reading the system: {e} ({n} more suppressed)");
                }
                return;
            }
        };
        let mut m = crate::system::map::mirror(&snap, crate::util::time::now_unix());
        // The kernel says whether the clock is kept; the ACS may have turned the time client
        // off (through the integrator's time_apply), and then TR-181 says Disabled.
        if self.store.get("Device.Time.Enable").as_deref() == Some("false")
            && let Some(v) = m
                .values
                .iter_mut()
                .find(|(n, _)| *n == "Device.Time.Status")
        {
            v.1 = crate::model::mirror::MVal::Text("Disabled".into());
        }
        let rep = self.store.sync_mirror(&m, quiet);
        for a in &rep.added {
            tracing::debug!("system: {a} added");
        }
        for r in &rep.removed {
            tracing::debug!("system: {r} removed");
        }
        if !rep.refused.is_empty()
            && let Some(n) = self.sys_warn.check(Instant::now())
        {
            tracing::warn!(
                "system values the model refused: {} ({n} more warnings suppressed)",
                rep.refused.join("; ")
            );
        }
        if self.store.is_dirty() {
            let _ = self.persist();
        }
    }

    /// Before serving a request that names these paths.
    pub(crate) fn system_sync_for<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let parts = parts_for(names);
        self.system_sync(parts, false);
    }

    /// The kernel reported a change of links, addresses or routes.
    pub(crate) fn system_changed(&mut self) {
        self.system_sync(Parts::NET.union(Parts::ROUTES), false);
    }

    /// On each poll.
    pub(crate) fn system_poll(&mut self) {
        self.system_sync(POLLED, false);
    }

    /// Why the device refuses this write of the ACS, if it does (checked before anything is
    /// applied): writes to system values the integrator did not allow.
    pub(crate) fn system_write_refused(&self, name: &str, origin: Origin) -> Option<Fault> {
        if origin != Origin::Acs {
            return None;
        }
        if TIME_WRITABLE.contains(&name) && self.cfg.system.time_apply.is_empty() {
            return Some(Fault::new(
                9008,
                format!("{name}: the time client is not managed on this device"),
            ));
        }
        if self.store.source(name) == Some(Source::System) {
            let allowed = (self.cfg.system.interface_writes
                && name.starts_with("Device.IP.Interface.")
                && (name.ends_with(".Enable") || name.ends_with(".MaxMTUSize")))
                || Engine::du_writable(name);
            if !allowed {
                return Some(Fault::new(
                    9008,
                    format!("{name} is not writable on this device"),
                ));
            }
        }
        None
    }

    /// Carries out the system writes of a SetParameterValues (already checked), before the
    /// store takes the values: an interface brought up or down, its MTU. The first failure
    /// is the fault of the request (nothing after it is done).
    pub(crate) fn system_apply(
        &mut self,
        list: &[(String, String, Option<String>)],
        origin: Origin,
    ) -> Result<(), (String, Fault)> {
        if origin != Origin::Acs {
            return Ok(());
        }
        for (name, value, _) in list {
            if self.store.source(name) != Some(Source::System) {
                continue;
            }
            let Some((inst, param)) = name.rsplit_once('.') else {
                continue;
            };
            let Some(ifname) = self.store.mirror_key(&format!("{inst}.")) else {
                continue;
            };
            let fail =
                |e: std::io::Error| (name.clone(), Fault::new(9002, format!("{ifname}: {e}")));
            let index =
                nix::net::if_::if_nametoindex(ifname).map_err(|e| fail(std::io::Error::from(e)))?;
            match param {
                "Enable" => crate::system::set_link_up(index, value == "true" || value == "1")
                    .map_err(fail)?,
                "MaxMTUSize" => {
                    let mtu = value.parse().unwrap_or(1500);
                    crate::system::set_mtu(index, mtu).map_err(fail)?
                }
                _ => {}
            }
            tracing::info!("ACS set {name} = {value} ({ifname})");
        }
        Ok(())
    }

    /// After a SetParameterValues of the ACS was committed: the time client's hook.
    pub(crate) fn system_after_set(&mut self, list: &[(String, String, Option<String>)]) {
        if self.cfg.system.time_apply.is_empty()
            || !list
                .iter()
                .any(|(n, _, _)| TIME_WRITABLE.contains(&n.as_str()))
        {
            return;
        }
        // Status follows Enable at once.
        self.system_sync(Parts::TIME, false);
        let enable = self.store.get("Device.Time.Enable").unwrap_or_default();
        let servers: Vec<String> = (1..=5)
            .filter_map(|i| self.store.get(&format!("Device.Time.NTPServer{i}")))
            .filter(|s| !s.is_empty())
            .collect();
        let argv: Vec<String> = self
            .cfg
            .system
            .time_apply
            .iter()
            .map(|a| {
                a.replace("{enable}", &enable)
                    .replace("{servers}", &servers.join(","))
            })
            .collect();
        self.tasks.push(Box::pin(async move {
            let ok = super::session::run_action(&argv, None).await;
            super::Done::Hook {
                what: "time_apply",
                ok,
            }
        }));
    }
}
