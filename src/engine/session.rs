//! The CWMP session driver: when to open a session (boot, periodic, scheduled, value change,
//! connection request, retry), the Inform, serving the ACS's requests until it ends the session,
//! and what to do afterwards (retry wait, reboot, factory reset).
//!
//! The session runs inside the engine task, which owns the store: while a session runs, other
//! requests to the engine wait in its channel, so connection requests that arrive meanwhile
//! are handled after it and produce exactly one follow-up session.

use std::time::{Duration, Instant};

use super::rpc::Effect;
use super::{Done, Engine};
use crate::cwmp::events::{Event, EventCode, EventQueue};
use crate::cwmp::exchange::{CpeCall, Exchange, ExchangeError, Step};
use crate::cwmp::schedule::{Outcome, Scheduler, SessionParams};
use crate::cwmp::soap::{
    CpeMessage, CwmpVersion, DeviceId, Envelope, EventStruct, Inform, ParamValue,
};
use crate::model::persist::{AcsVersion, ActionKind, AgentState, PendingAction};
use crate::net::acs::{AcsClient, AcsError, TlsSettings};
use crate::util::time::{current_time_or_unknown, now_unix, parse_datetime};

const MS: &str = "Device.ManagementServer.";
/// Default of `[actions] reboot_grace`: how long no session is opened after a reboot or
/// factory-reset command was started.
const DEFAULT_REBOOT_GRACE: Duration = Duration::from_secs(300);

/// Session bookkeeping kept by the engine.
#[derive(Debug, Default)]
pub struct CwmpState {
    /// When to open sessions, and the event queue (sans-IO: [`crate::cwmp::schedule`]).
    pub(crate) sched: Scheduler,
    id_counter: u64,
    /// This session sent a large message (worth trimming the heap afterwards).
    big_session: bool,
    /// ACS-requested file transfers (see [`super::transfer`]).
    pub(crate) xfer: super::transfer::Transfers,
    /// What the requests served in the running session asked for, carried out after it
    /// whether it ended cleanly or not (the ACS was told they succeeded).
    effects: Vec<Effect>,
    /// When ManagementServer.DelayReboot asks for a reboot.
    delay_reboot: Option<Instant>,
    /// The running (or last) session's CWMP version, as the ACS chose it.
    pub(crate) version: CwmpVersion,
    /// The Alias an AddObject of `Table.[alias].` gives its new instance.
    pub(crate) pending_alias: Option<String>,
}

/// Why a session failed.
#[derive(Debug)]
pub enum SessionError {
    NoUrl,
    Disabled,
    Transport(AcsError),
    Status(u16),
    Protocol(String),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::NoUrl => f.write_str("no ACS URL configured"),
            SessionError::Disabled => f.write_str("CWMP is disabled (EnableCWMP=false)"),
            SessionError::Transport(e) => write!(f, "{e}"),
            SessionError::Status(s) => write!(f, "ACS answered HTTP {s}"),
            SessionError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl Engine {
    fn ms(&mut self, name: &str) -> String {
        self.store.get(&format!("{MS}{name}")).unwrap_or_default()
    }

    fn ms_u32(&mut self, name: &str, default: u32) -> u32 {
        self.ms(name).parse().unwrap_or(default)
    }

    fn cwmp_enabled(&mut self) -> bool {
        self.ms("EnableCWMP") != "false"
    }

    /// Called once at start: restores undelivered events, adds BOOT (and BOOTSTRAP on first
    /// contact or when the ACS URL changed), and asks for a session.
    pub fn cwmp_boot(&mut self, now: Instant) {
        let restored = self.agent_state.events.clone();
        let boot_id = read_boot_id();
        let rebooted = self
            .agent_state
            .boot_id
            .as_deref()
            .is_none_or(|old| boot_id.as_deref() != Some(old));
        if boot_id.is_some() {
            self.agent_state.boot_id = boot_id;
        }
        self.restore_scheduled_informs(now);
        self.restore_delay_reboot(now, rebooted);
        if self
            .agent_state
            .schedule_reboot_at
            .is_some_and(|at| at <= now_unix())
        {
            self.agent_state.schedule_reboot_at = None;
        }
        let bootstrap = self.needs_bootstrap();
        self.cwmp.sched.boot(now, restored, bootstrap);
        self.transfers_boot();
        self.du_boot();
        self.save_events();
        self.update_periodic(now);
        self.resume_pending_action(rebooted, now);
    }

    /// The schedule's settings, read from ManagementServer.
    fn session_params(&mut self) -> SessionParams {
        SessionParams {
            enabled: self.cwmp_enabled(),
            has_url: !self.ms("URL").is_empty(),
            periodic_enable: self.ms("PeriodicInformEnable") == "true",
            periodic_interval: self.ms_u32("PeriodicInformInterval", 86400).max(1),
            periodic_time: parse_datetime(&self.ms("PeriodicInformTime")),
            retry_minimum: self.ms_u32("CWMPRetryMinimumWaitInterval", 5),
            retry_multiplier: self.ms_u32("CWMPRetryIntervalMultiplier", 2000),
            notification_throttle: self.ms_u32("DefaultActiveNotificationThrottle", 0),
        }
    }

    /// A Reboot or FactoryReset acknowledged before the last stop: done if its command was
    /// started (or, for a reboot, if the box rebooted anyway); otherwise carried out now.
    fn resume_pending_action(&mut self, rebooted: bool, now: Instant) {
        let Some(p) = self.agent_state.pending_action else {
            return;
        };
        match p.what {
            ActionKind::Reboot if !p.started && !rebooted => {
                tracing::warn!("a Reboot the ACS requested was not carried out: rebooting now");
                self.start_action(ActionKind::Reboot, now);
            }
            ActionKind::FactoryReset if !p.started => {
                tracing::warn!("a FactoryReset the ACS requested was not carried out: now");
                self.factory_reset(now);
            }
            _ => {
                self.agent_state.pending_action = None;
                let _ = self.persist();
            }
        }
    }

    /// ScheduleInform timers survive a restart (they are wall-clock deadlines).
    fn restore_scheduled_informs(&mut self, now: Instant) {
        let list = self.agent_state.scheduled_informs.clone();
        let unix = now_unix();
        for (at, key) in list {
            let delay = Duration::from_secs(at.saturating_sub(unix).max(0) as u64);
            self.cwmp.sched.schedule_inform(now + delay, &key);
        }
    }

    fn save_scheduled_informs(&mut self, now: Instant) {
        let unix = now_unix();
        let list: Vec<(i64, String)> = self
            .cwmp
            .sched
            .scheduled()
            .iter()
            .map(|(w, k)| {
                (
                    unix + w.saturating_duration_since(now).as_secs() as i64,
                    k.clone(),
                )
            })
            .collect();
        self.agent_state.scheduled_informs = list;
    }

    /// A ScheduleInform the ACS requested: the timer runs from the call (A.3.2.9) and is
    /// persisted before the response goes out.
    pub(crate) fn schedule_inform(&mut self, delay_seconds: u32, command_key: &str, now: Instant) {
        self.cwmp
            .sched
            .schedule_inform(now + Duration::from_secs(delay_seconds as u64), command_key);
        self.save_scheduled_informs(now);
        let _ = self.persist();
    }

    /// DelayReboot is reset to -1 whenever the CPE reboots (TR-181); after an agent restart
    /// without reboot its deadline still holds.
    fn restore_delay_reboot(&mut self, now: Instant, rebooted: bool) {
        let at = self.agent_state.delay_reboot_at;
        if rebooted {
            if self.ms("DelayReboot") != "-1" {
                let _ = self.store.set_internal(&format!("{MS}DelayReboot"), "-1");
            }
            self.agent_state.delay_reboot_at = None;
        } else if let Some(at) = at {
            let d = at.saturating_sub(now_unix()).max(0) as u64;
            self.cwmp.delay_reboot = Some(now + Duration::from_secs(d));
        }
    }

    /// Records a Reboot or FactoryReset the ACS is about to be told succeeded, so that it
    /// survives a power cut before it is carried out.
    pub(crate) fn record_effect(&mut self, e: Effect) {
        let what = match &e {
            Effect::Reboot { command_key } => {
                self.cwmp.sched.queue.push(EventCode::MReboot, command_key);
                ActionKind::Reboot
            }
            Effect::FactoryReset => ActionKind::FactoryReset,
        };
        self.agent_state.pending_action = Some(PendingAction {
            what,
            started: false,
        });
        self.cwmp.effects.push(e);
        self.save_events();
    }

    fn reboot_grace(&self) -> Duration {
        self.cfg
            .actions
            .reboot_grace
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_REBOOT_GRACE)
    }

    /// Starts the reboot or factory-reset command without waiting for it; no session is
    /// opened until it fails or the grace period ends.
    pub(crate) fn start_action(&mut self, what: ActionKind, now: Instant) {
        let argv = match what {
            ActionKind::Reboot => self.cfg.actions.reboot.clone(),
            ActionKind::FactoryReset => self.cfg.actions.factory_reset.clone(),
        };
        if argv.is_empty() {
            if what == ActionKind::Reboot {
                tracing::warn!("Reboot requested but [actions] reboot is not configured");
            }
            self.agent_state.pending_action = None;
            let _ = self.persist();
            self.cwmp.sched.request_session(now);
            return;
        }
        if let Some(p) = &mut self.agent_state.pending_action {
            p.started = true;
        }
        let _ = self.persist();
        tracing::info!("{}: {}", what.as_str(), argv.join(" "));
        self.cwmp.sched.hold(Some(now + self.reboot_grace()));
        self.tasks.push(Box::pin(async move {
            let ok = run_action(&argv, None).await;
            Done::Action { what, ok }
        }));
    }

    /// A reboot or factory-reset command ended. Success: keep waiting for the box to go down.
    /// Failure: report in the next session (the pending `M Reboot` goes out).
    pub(crate) fn action_done(&mut self, what: ActionKind, ok: bool, now: Instant) {
        let what = what.as_str();
        if ok {
            tracing::debug!("{what} command returned; waiting for the box to go down");
            return;
        }
        tracing::error!("{what} command failed: the box did not go down; resuming sessions");
        self.cwmp.sched.hold(None);
        self.agent_state.pending_action = None;
        let _ = self.persist();
        self.cwmp.sched.request_session(now);
    }

    /// Whether the ACS URL differs from the one last bootstrapped with (a new ACS).
    pub fn needs_bootstrap(&mut self) -> bool {
        let url = self.ms("URL");
        self.agent_state.bootstrapped_url.as_deref() != Some(url.as_str()) && !url.is_empty()
    }

    /// The CWMP version the Inform to `url` is written in (docs/CWMP-VERSIONS.md):
    /// an ACS at this URL that chose 1.0 or 1.1 keeps getting that version's Inform, otherwise
    /// the highest version is offered with SupportedCWMPVersions. A new URL starts over.
    /// An Inform carrying an event the remembered version's schema lacks (e.g. `M
    /// ChangeDUState` for 1.0) offers the highest version instead.
    pub(crate) fn version_offer(&self, url: &str, events: &[Event]) -> CwmpVersion {
        match &self.agent_state.acs_version {
            Some(r) if r.url == url => match CwmpVersion::parse(&r.version) {
                Some(v)
                    if v < CwmpVersion::V1_2
                        && events.iter().all(|e| v.allows_event(e.code.as_str())) =>
                {
                    v
                }
                _ => CwmpVersion::HIGHEST,
            },
            _ => CwmpVersion::HIGHEST,
        }
    }

    /// Remembers the ACS's choice (persisted); `None` forgets it.
    fn remember_version(&mut self, url: &str, v: Option<CwmpVersion>) {
        let new = v.map(|v| AcsVersion {
            url: url.to_string(),
            version: v.as_str().to_string(),
        });
        if self.agent_state.acs_version != new {
            self.agent_state.acs_version = new;
            // Rare (a new ACS or a changed choice): written at once.
            let _ = self.persist();
        }
    }

    /// Pushes 0 BOOTSTRAP when the ACS is new. Returns true when it did.
    pub fn check_bootstrap(&mut self) -> bool {
        if self.needs_bootstrap() && !self.cwmp.sched.queue.contains(&EventCode::Bootstrap) {
            self.cwmp.sched.queue.push(EventCode::Bootstrap, "");
            return true;
        }
        false
    }

    /// After anything changed the store (a control request, a session): react to a new ACS
    /// URL, active notifications and periodic-inform settings.
    pub fn after_change(&mut self, now: Instant) {
        if self.check_bootstrap() {
            self.save_events();
            self.cwmp.sched.request_session(now);
        }
        self.check_active_changes(now);
        self.update_periodic(now);
        self.arm_schedule_reboot();
        self.refresh_cr();
        self.publish_settings();
        self.bulk_after_change(now);
        self.lwn_after_change(now);
    }

    /// Persists the events that survive a restart. Nothing is written when they did not change
    /// (a connection-request session has none worth keeping: no fsync on its path) unless the
    /// store itself has unsaved changes.
    pub(crate) fn save_events(&mut self) {
        let q = self.cwmp.sched.queue.to_persist();
        if self.agent_state.events.as_ref() == Some(&q) && !self.store.is_dirty() {
            return;
        }
        self.agent_state.events = Some(q);
        let _ = self.persist();
    }

    /// Adds an event and asks for a session now.
    pub fn event_now(&mut self, code: EventCode, command_key: &str, now: Instant) {
        let in_session = self.cwmp.sched.in_session();
        self.cwmp.sched.event(code, command_key, now);
        if !in_session {
            self.save_events();
        }
    }

    /// A connection request was accepted by one of the listeners.
    pub fn connection_request(&mut self, mechanism: &str, now: Instant) {
        tracing::info!("connection request via {mechanism}");
        if !self.cwmp_enabled() {
            return;
        }
        self.cwmp.sched.connection_request(now);
    }

    /// After store changes: an active notification opens a session (throttled).
    pub fn check_active_changes(&mut self, now: Instant) {
        let generation = self.store.active_generation();
        let pending = self.store.has_active_change();
        if !pending {
            return;
        }
        let p = self.session_params();
        if self.cwmp.sched.active_change(generation, pending, &p, now) {
            tracing::debug!("active notification deferred by the agent's rate floor");
        }
    }

    /// Recomputes the periodic-inform timer when its parameters changed.
    pub fn update_periodic(&mut self, now: Instant) {
        let p = self.session_params();
        self.cwmp.sched.set_params(&p, now, now_unix());
    }

    /// The earliest time the engine must wake for the CWMP side.
    pub fn cwmp_next_wakeup(&self) -> Option<Instant> {
        [
            self.cwmp.sched.poll_timeout(),
            self.cwmp.delay_reboot,
            self.schedule_reboot_at(),
            self.transfer_wakeup(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires due timers and runs a session when one is due.
    pub async fn cwmp_tick(&mut self, now: Instant) {
        let p = self.session_params();
        if self.cwmp.sched.handle_timeout(now, &p, now_unix()) {
            self.save_scheduled_informs(now);
            self.save_events();
        }
        self.reboot_timers(now);
        if self.cwmp.sched.hold_expired(now) {
            tracing::warn!(
                "still running {} s after the reboot / factory-reset command: resuming sessions",
                self.reboot_grace().as_secs()
            );
            self.agent_state.pending_action = None;
            let _ = self.persist();
        }
        if self.cwmp.sched.held() {
            // The box is going down: no session, no transfer.
            return;
        }
        if self.cwmp.sched.session_due(now) {
            self.session_cycle().await;
        }
        // Transfers start only outside sessions (after the one that requested them).
        self.transfer_tick(Instant::now());
    }

    /// One session attempt (the scheduler marked it started) with its aftermath.
    pub async fn session_cycle(&mut self) {
        let started = Instant::now();
        let result = self.run_session().await;
        let effects = std::mem::take(&mut self.cwmp.effects);
        let end = Instant::now();
        if std::mem::take(&mut self.cwmp.big_session) {
            // Give a large answer's memory back (glibc keeps it otherwise); small sessions skip
            // the heap walk.
            crate::util::trim_heap();
        }
        let p = self.session_params();
        let outcome = match &result {
            Ok(()) => Outcome::Ok,
            Err(SessionError::NoUrl) | Err(SessionError::Disabled) => Outcome::Skipped,
            Err(_) => Outcome::Failed,
        };
        let wait =
            self.cwmp
                .sched
                .session_ended(outcome, &p, end, crate::util::codec::random_u32());
        match result {
            Ok(()) => tracing::info!(
                "session ended after {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            ),
            Err(SessionError::NoUrl) | Err(SessionError::Disabled) => {
                tracing::debug!("no session: {}", self.last_skip_reason());
            }
            Err(e) => {
                tracing::warn!(
                    "session failed: {e}; retry {} in {:.1} s",
                    self.cwmp.sched.retry_count,
                    wait.unwrap_or_default().as_secs_f64()
                );
                self.save_events();
            }
        }
        // The ACS was told these succeeded: carried out whatever the session's end.
        for e in effects {
            self.apply_effect(e, end);
        }
        self.arm_delay_reboot(end);
        self.after_change(end);
        // Diagnostics the ACS requested start after the session that requested them; so do
        // software-module operations.
        self.diag_tick();
        self.du_tick();
    }

    /// DelayReboot ≥ 0 set in the session that just ended: reboot that many seconds after it.
    fn arm_delay_reboot(&mut self, end: Instant) {
        let Ok(d) = self.ms("DelayReboot").parse::<i64>() else {
            return;
        };
        if d < 0 || self.cwmp.delay_reboot.is_some() {
            return;
        }
        self.cwmp.delay_reboot = Some(end + Duration::from_secs(d as u64));
        self.agent_state.delay_reboot_at = Some(now_unix() + d);
        let _ = self.persist();
    }

    /// The armed ScheduleReboot time as an instant.
    fn schedule_reboot_at(&self) -> Option<Instant> {
        let at = self.agent_state.schedule_reboot_at?;
        let d = at.saturating_sub(now_unix()).max(0) as u64;
        Some(Instant::now() + Duration::from_secs(d))
    }

    /// Arms (persisted) a ScheduleReboot value that lies in the future; a past value, Unknown
    /// Time or a time that passed while the box was off reboots nothing (TR-181).
    fn arm_schedule_reboot(&mut self) {
        let at = self
            .store
            .secret(&format!("{MS}ScheduleReboot"))
            .and_then(parse_datetime);
        let armed = self.agent_state.schedule_reboot_at;
        let now = now_unix();
        let want = at.filter(|t| *t > now && crate::util::time::clock_synchronised(*t));
        let keep = armed.filter(|a| Some(*a) == at && *a >= now);
        let new = want.or(keep);
        if new != armed {
            self.agent_state.schedule_reboot_at = new;
            let _ = self.persist();
        }
    }

    /// Starts a reboot asked for by ScheduleReboot or DelayReboot once due (never during a
    /// session: timers fire between sessions).
    fn reboot_timers(&mut self, now: Instant) {
        let mut due = false;
        if let Some(t) = self.cwmp.delay_reboot
            && t <= now
        {
            self.cwmp.delay_reboot = None;
            self.agent_state.delay_reboot_at = None;
            let _ = self.store.set_internal(&format!("{MS}DelayReboot"), "-1");
            tracing::info!("DelayReboot expired: rebooting");
            due = true;
        }
        if let Some(at) = self.agent_state.schedule_reboot_at
            && at <= now_unix()
        {
            self.agent_state.schedule_reboot_at = None;
            tracing::info!("ScheduleReboot time reached: rebooting");
            due = true;
        }
        if due {
            self.agent_state.pending_action = Some(PendingAction {
                what: ActionKind::Reboot,
                started: false,
            });
            self.start_action(ActionKind::Reboot, now);
        }
    }

    fn last_skip_reason(&mut self) -> &'static str {
        if !self.cwmp_enabled() {
            "EnableCWMP is false"
        } else {
            "ManagementServer.URL is empty"
        }
    }

    /// Values the ACS asked for in every Inform whose events match (InformParameter table).
    fn inform_parameter_values(&mut self, events: &[Event]) -> Vec<ParamValue> {
        let base = format!("{MS}InformParameter.");
        let Ok(rows) = self.store.expand(&base) else {
            return Vec::new();
        };
        let mut instances: Vec<String> = rows
            .iter()
            .filter_map(|p| {
                let rest = &p[base.len()..];
                rest.split_once('.').map(|(n, _)| format!("{base}{n}."))
            })
            .collect();
        instances.dedup();
        let mut out: Vec<ParamValue> = Vec::new();
        for inst in instances {
            let get = |s: &Self, n: &str| {
                s.store
                    .secret(&format!("{inst}{n}"))
                    .unwrap_or("")
                    .to_string()
            };
            if get(self, "Enable") != "true" {
                continue;
            }
            let name = get(self, "ParameterName");
            let list = get(self, "EventList");
            let wanted: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if !wanted.is_empty() && !events.iter().any(|e| wanted.contains(&e.code.as_str())) {
                continue;
            }
            for path in self.store.expand_pattern(&name) {
                if out.iter().any(|p| p.name == path) {
                    continue;
                }
                if let Ok(v) = self.store.get_values(&[path.as_str()])
                    && let Some(e) = v.into_iter().next()
                {
                    out.push(ParamValue::new(e.name, e.value, e.xsi_type));
                }
            }
        }
        out
    }

    fn build_inform(&mut self) -> (Inform, Vec<Event>, Vec<String>) {
        let changes = self.store.pending_changes();
        if !changes.is_empty() {
            self.cwmp.sched.queue.push(EventCode::ValueChange, "");
        }
        let events = self.cwmp.sched.queue.events.clone();
        let mut params: Vec<ParamValue> = self
            .store
            .forced_inform()
            .into_iter()
            .map(|e| ParamValue::new(e.name, e.value, e.xsi_type))
            .collect();
        let changed_names: Vec<String> = changes.iter().map(|e| e.name.clone()).collect();
        for e in changes {
            if !params.iter().any(|p| p.name == e.name) {
                params.push(ParamValue::new(e.name, e.value, e.xsi_type));
            }
        }
        for p in self.inform_parameter_values(&events) {
            if !params.iter().any(|q| q.name == p.name) {
                params.push(p);
            }
        }
        let di = |s: &mut Self, n: &str| {
            s.store
                .get(&format!("Device.DeviceInfo.{n}"))
                .unwrap_or_default()
        };
        let inform = Inform {
            device_id: DeviceId {
                manufacturer: di(self, "Manufacturer"),
                oui: di(self, "ManufacturerOUI"),
                product_class: di(self, "ProductClass"),
                serial_number: di(self, "SerialNumber"),
            },
            events: events
                .iter()
                .map(|e| EventStruct::new(e.code.to_string(), e.command_key.clone()))
                .collect(),
            max_envelopes: 1,
            current_time: current_time_or_unknown(now_unix()),
            retry_count: self.cwmp.sched.retry_count,
            params,
        };
        (inform, events, changed_names)
    }

    pub(crate) fn tls_settings(&self) -> TlsSettings {
        TlsSettings {
            ca_file: self.cfg.acs.ca_file.clone(),
            client_cert: self.cfg.acs.client_cert.clone(),
            client_key: self.cfg.acs.client_key.clone(),
            insecure_skip_verify: self.cfg.acs.insecure_skip_verify,
        }
    }

    /// POSTs one message; while waiting for the ACS, keeps serving the engine's commands.
    async fn post_serving(
        &mut self,
        client: &mut AcsClient,
        body: Vec<u8>,
    ) -> Result<crate::net::acs::AcsResponse, AcsError> {
        self.serving(client.post(body)).await
    }

    /// Runs one session: the message flow is [`Exchange`]'s; this drives it — the ACS
    /// connection, serving requests against the store, and what delivery means for the
    /// engine's state. Effects of the requests it served are left in `cwmp.effects`.
    pub async fn run_session(&mut self) -> Result<(), SessionError> {
        if !self.cwmp_enabled() {
            return Err(SessionError::Disabled);
        }
        let url = self.ms("URL");
        if url.is_empty() {
            return Err(SessionError::NoUrl);
        }
        let user = self.ms("Username");
        let pass = self
            .store
            .secret(&format!("{MS}Password"))
            .unwrap_or_default()
            .to_string();
        let timeout = Duration::from_secs(self.cfg.acs.response_timeout.max(1));
        let mut client = AcsClient::new(&url, &user, &pass, &self.tls_settings(), timeout)
            .map_err(SessionError::Transport)?;
        // The Inform carries ConnectionRequestURL: the route to the ACS must be known.
        self.ensure_acs_route().await;
        // A completed transfer not yet acknowledged: its events go (again) into this Inform.
        if self.ensure_transfer_events() {
            self.save_events();
        }
        self.ensure_du_events();
        client.set_gzip(self.ms("HTTPCompression") == "GZIP");
        client.set_allow_basic_over_http(self.cfg.acs.allow_basic_over_http);
        let (inform, sent, changed) = self.build_inform();
        let codes: Vec<&str> = sent.iter().map(|e| e.code.as_str()).collect();
        tracing::info!("session to {url} with events [{}]", codes.join(", "));
        let offer = self.version_offer(&url, &sent);
        let mut x = Exchange::new(
            Envelope::new(CpeMessage::Inform(inform)),
            self.pending_transfer_completes()
                .into_iter()
                .map(|(id, tc)| (id, CpeCall::TransferComplete(tc)))
                .chain(self.pending_du_completes())
                .collect(),
            self.cwmp.id_counter,
            offer,
        );
        self.cwmp.version = offer;
        let result = loop {
            match x.poll() {
                Step::Post(body) => match self.post_serving(&mut client, body).await {
                    Ok(resp) => x.on_response(resp.status, &resp.body),
                    Err(e) => break Err(SessionError::Transport(e)),
                },
                Step::InformDelivered { version } => {
                    tracing::info!("CWMP {version} (offered {offer})");
                    self.cwmp.version = version;
                    self.remember_version(&url, Some(version));
                    // The Inform was delivered: its events and changes are done with.
                    self.cwmp.sched.delivered(&sent);
                    self.store.clear_changes(&changed);
                    if sent.iter().any(|e| e.code == EventCode::Bootstrap) {
                        self.agent_state.bootstrapped_url = Some(url.clone());
                    }
                    self.save_events();
                }
                Step::Delivered(id) if id >= super::du::CALL_KEY_BASE => self.du_delivered(id),
                Step::Delivered(id) => self.transfer_delivered(id),
                Step::Serve(env) => {
                    tracing::debug!("ACS request {}", env.body.method_name());
                    let mut out = Vec::new();
                    self.serve_rpc(&env, &mut out).await;
                    if out.len() > 256 * 1024 {
                        self.cwmp.big_session = true;
                    }
                    x.served(out);
                }
                Step::Done => break Ok(()),
                Step::Failed(e) => {
                    break Err(match e {
                        ExchangeError::Status(s) => SessionError::Status(s),
                        ExchangeError::Protocol(m) => SessionError::Protocol(m),
                        ExchangeError::Version(m) => {
                            // Start over with the highest version next time.
                            self.remember_version(&url, None);
                            SessionError::Protocol(format!("CWMP version: {m}"))
                        }
                    });
                }
            }
        };
        self.cwmp.id_counter = x.id_counter();
        result
    }

    /// Carries out a Reboot or FactoryReset after the session that acknowledged it.
    fn apply_effect(&mut self, e: Effect, now: Instant) {
        match e {
            Effect::Reboot { .. } => self.start_action(ActionKind::Reboot, now),
            Effect::FactoryReset => self.factory_reset(now),
        }
    }

    /// Factory reset: the persisted state is removed and the store rebuilt from the factory
    /// state; the device's own status values (ConnectionRequestURL, the STUN-mapped address,
    /// the JabberID) are re-applied at once, so the BOOTSTRAP Inform carries them. Then the
    /// configured command runs (it normally reboots the box); without one, the BOOTSTRAP
    /// session starts at once.
    pub(crate) fn factory_reset(&mut self, now: Instant) {
        tracing::warn!("factory reset requested by the ACS");
        if let Err(e) = self.state_file.remove() {
            tracing::error!("cannot remove state: {e}");
        }
        match crate::engine::build_store(
            &self.cfg,
            Box::new(crate::model::store::ProcfsLive::default()),
        ) {
            Ok(s) => self.replace_store(s),
            Err(e) => tracing::error!("cannot rebuild the factory state: {e}"),
        }
        // What identifies this box's listener and the reboot bookkeeping survive the reset.
        let old = std::mem::take(&mut self.agent_state);
        self.agent_state = AgentState {
            cr_path: old.cr_path,
            cr_secret: old.cr_secret,
            boot_id: old.boot_id,
            ..AgentState::default()
        };
        self.cwmp.sched.queue = EventQueue::default();
        self.cwmp.sched.clear_scheduled();
        self.cwmp.delay_reboot = None;
        self.cwmp.sched.queue.push(EventCode::Bootstrap, "");
        self.cwmp.sched.queue.push(EventCode::Boot, "");
        self.agent_state.pending_action = Some(old.pending_action.unwrap_or(PendingAction {
            what: ActionKind::FactoryReset,
            started: false,
        }));
        self.save_events();
        self.start_action(ActionKind::FactoryReset, now);
    }
}

/// The kernel's boot id (changes with every boot), when readable.
fn read_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A configured command's argv with `{file}` replaced by `file`.
pub fn action_args(argv: &[String], file: Option<&str>) -> Vec<String> {
    argv.iter()
        .map(|a| match file {
            Some(f) => a.replace("{file}", f),
            None => a.clone(),
        })
        .collect()
}

/// Runs a configured action command, replacing `{file}`; logs failures.
pub async fn run_action(argv: &[String], file: Option<&str>) -> bool {
    let args = action_args(argv, file);
    match tokio::process::Command::new(&args[0])
        .args(&args[1..])
        .status()
        .await
    {
        Ok(s) if s.success() => true,
        Ok(s) => {
            tracing::error!("{} exited with {s}", args[0]);
            false
        }
        Err(e) => {
            tracing::error!("cannot run {}: {e}", args[0]);
            false
        }
    }
}
