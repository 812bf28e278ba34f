//! The CWMP session driver: when to open a session (boot, periodic, scheduled, value change,
//! connection request, retry), the Inform, serving the ACS's requests until it ends the session,
//! and what to do afterwards (retry wait, reboot, factory reset).
//!
//! The session runs inside the engine task, which owns the store: while a session runs, other
//! requests to the engine wait in its channel, so connection requests that arrive meanwhile
//! are handled after it and produce exactly one follow-up session.

use std::time::{Duration, Instant};

use serde_json::json;

use super::events::{Event, EventQueue};
use super::rpc::Effect;
use super::soap::{
    self, AcsMessage, CpeMessage, CwmpNs, DeviceId, Envelope, EventStruct, Inform, ParamValue,
};
use crate::engine::{Command, Engine};
use crate::net::acs::{AcsClient, AcsError, TlsSettings};
use crate::util::time::{format_datetime, now_unix, parse_datetime};
use tokio::sync::mpsc;

const MS: &str = "Device.ManagementServer.";
/// Upper bound on messages in one session (a runaway ACS cannot keep the agent forever).
const MAX_EXCHANGES: usize = 10_000;

/// Session bookkeeping kept by the engine.
#[derive(Debug, Default)]
pub struct CwmpState {
    pub queue: EventQueue,
    pub retry_count: u32,
    /// When the next session should start (None: nothing pending).
    pub next_session: Option<Instant>,
    pub next_periodic: Option<Instant>,
    /// ScheduleInform timers: (when, CommandKey).
    pub scheduled: Vec<(Instant, String)>,
    pub last_session_end: Option<Instant>,
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    /// The (PeriodicInformEnable, Interval, Time) the periodic timer was computed from.
    periodic_key: Option<(bool, u32, String)>,
    id_counter: u64,
    /// A session is running: events raised now are kept aside and queued after it, so they
    /// neither merge into the Inform already sent nor get lost.
    pub in_session: bool,
    deferred: Vec<(String, String)>,
    /// The store's active-change generation a session was last asked for.
    active_seen: u64,
    /// This session sent a large message (worth trimming the heap afterwards).
    big_session: bool,
    /// ACS-requested file transfers (see [`super::transfer`]).
    pub xfer: super::transfer::Transfers,
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
        if let Some(v) = self.agent_state.get("events")
            && let Ok(q) = serde_json::from_value::<EventQueue>(v.clone())
        {
            self.cwmp.queue = q;
        }
        self.transfers_boot();
        self.check_bootstrap();
        self.cwmp.queue.push("1 BOOT", "");
        self.save_events();
        self.cwmp.next_session = Some(now);
        self.update_periodic(now);
    }

    /// Pushes 0 BOOTSTRAP when the ACS URL differs from the one last bootstrapped with.
    /// Returns true when it did.
    pub fn check_bootstrap(&mut self) -> bool {
        let url = self.ms("URL");
        let known = self
            .agent_state
            .get("bootstrapped_url")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        if known.as_deref() != Some(url.as_str())
            && !url.is_empty()
            && !self.cwmp.queue.contains("0 BOOTSTRAP")
        {
            self.cwmp.queue.push("0 BOOTSTRAP", "");
            return true;
        }
        false
    }

    /// After anything changed the store (a control request, a session): react to a new ACS
    /// URL, active notifications and periodic-inform settings.
    pub fn after_change(&mut self, now: Instant) {
        if self.check_bootstrap() {
            self.save_events();
            self.cwmp.next_session = Some(now);
        }
        self.check_active_changes(now);
        self.update_periodic(now);
        self.refresh_cr();
        self.publish_settings();
    }

    /// Persists the events that survive a restart. Nothing is written when they did not change
    /// (a connection-request session has none worth keeping: no fsync on its path) unless the
    /// store itself has unsaved changes.
    pub(crate) fn save_events(&mut self) {
        let q = serde_json::to_value(self.cwmp.queue.to_persist()).unwrap_or_default();
        if self.agent_state.get("events") == Some(&q) && !self.store.is_dirty() {
            return;
        }
        self.agent_state.insert("events".into(), q);
        let _ = self.persist();
    }

    /// Adds an event and asks for a session now.
    pub fn event_now(&mut self, code: &str, command_key: &str, now: Instant) {
        if self.cwmp.in_session {
            self.cwmp.deferred.push((code.into(), command_key.into()));
            return;
        }
        self.cwmp.queue.push(code, command_key);
        self.save_events();
        self.cwmp.next_session = Some(now);
    }

    /// A connection request was accepted by one of the listeners.
    pub fn connection_request(&mut self, mechanism: &str, now: Instant) {
        tracing::info!("connection request via {mechanism}");
        if !self.cwmp_enabled() {
            return;
        }
        if self.cwmp.in_session {
            self.cwmp
                .deferred
                .push(("6 CONNECTION REQUEST".into(), String::new()));
            return;
        }
        self.cwmp.queue.push("6 CONNECTION REQUEST", "");
        self.cwmp.next_session = Some(now);
    }

    /// After store changes: an active notification opens a session (throttled).
    pub fn check_active_changes(&mut self, now: Instant) {
        // Only a new change asks for a session; an undelivered old one waits for the retry.
        let generation = self.store.active_generation();
        if generation == self.cwmp.active_seen
            || !self.store.has_active_change()
            || !self.cwmp_enabled()
            || self.ms("URL").is_empty()
        {
            return;
        }
        self.cwmp.active_seen = generation;
        let throttle =
            Duration::from_secs(self.ms_u32("DefaultActiveNotificationThrottle", 0) as u64);
        let at = match self.cwmp.last_session_end {
            Some(end) if end + throttle > now => end + throttle,
            _ => now,
        };
        self.cwmp.next_session = Some(match self.cwmp.next_session {
            Some(t) if t < at => t,
            _ => at,
        });
    }

    /// Recomputes the periodic-inform timer when its parameters changed.
    pub fn update_periodic(&mut self, now: Instant) {
        let key = (
            self.ms("PeriodicInformEnable") == "true",
            self.ms_u32("PeriodicInformInterval", 86400).max(1),
            self.ms("PeriodicInformTime"),
        );
        if self.cwmp.periodic_key.as_ref() == Some(&key) && self.cwmp.next_periodic.is_some() {
            return;
        }
        let (enabled, interval, time) = key.clone();
        self.cwmp.periodic_key = Some(key);
        if !enabled {
            self.cwmp.next_periodic = None;
            return;
        }
        let interval = interval as i64;
        // Phase: informs happen at PeriodicInformTime + k·interval; unknown time → from now.
        let delay = match parse_datetime(&time) {
            Some(t) if t > 0 => {
                let now_s = now_unix();
                let d = (t - now_s).rem_euclid(interval);
                if d == 0 { interval } else { d }
            }
            _ => interval,
        };
        self.cwmp.next_periodic = Some(now + Duration::from_secs(delay as u64));
    }

    /// The earliest time the engine must wake for the CWMP side.
    pub fn cwmp_next_wakeup(&self) -> Option<Instant> {
        let mut t = [self.cwmp.next_session, self.cwmp.next_periodic]
            .into_iter()
            .flatten()
            .min();
        for (w, _) in &self.cwmp.scheduled {
            t = Some(t.map_or(*w, |x| x.min(*w)));
        }
        if let Some(w) = self.transfer_wakeup() {
            t = Some(t.map_or(w, |x| x.min(w)));
        }
        t
    }

    /// Fires due timers and runs a session when one is due.
    pub async fn cwmp_tick(&mut self, now: Instant, rx: &mut mpsc::Receiver<Command>) {
        if let Some(p) = self.cwmp.next_periodic
            && p <= now
        {
            self.cwmp.queue.push("2 PERIODIC", "");
            self.cwmp.next_periodic = None;
            self.cwmp.periodic_key = None;
            self.update_periodic(now);
            self.save_events();
            self.cwmp.next_session = Some(now);
        }
        let due: Vec<String> = self
            .cwmp
            .scheduled
            .iter()
            .filter(|(w, _)| *w <= now)
            .map(|(_, k)| k.clone())
            .collect();
        if !due.is_empty() {
            self.cwmp.scheduled.retain(|(w, _)| *w > now);
            for k in due {
                self.cwmp.queue.push("3 SCHEDULED", "");
                self.cwmp.queue.push("M ScheduleInform", &k);
            }
            self.save_events();
            self.cwmp.next_session = Some(now);
        }
        if matches!(self.cwmp.next_session, Some(t) if t <= now) {
            self.cwmp.next_session = None;
            self.session_cycle(rx).await;
        }
        // Transfers start only outside sessions (after the one that requested them).
        self.transfer_tick(Instant::now());
    }

    /// One session attempt with its aftermath (retry scheduling, effects).
    pub async fn session_cycle(&mut self, rx: &mut mpsc::Receiver<Command>) {
        let started = Instant::now();
        self.cwmp.in_session = true;
        let result = self.run_session(rx).await;
        self.cwmp.in_session = false;
        let end = Instant::now();
        self.cwmp.last_session_end = Some(end);
        if std::mem::take(&mut self.cwmp.big_session) {
            // Give a large answer's memory back (glibc keeps it otherwise); small sessions skip
            // the heap walk.
            crate::util::trim_heap();
        }
        // Requests that arrived during the session: exactly one follow-up session.
        let deferred = std::mem::take(&mut self.cwmp.deferred);
        if !deferred.is_empty() {
            for (c, k) in deferred {
                self.cwmp.queue.push(&c, &k);
            }
            self.cwmp.next_session = Some(end);
        }
        match result {
            Ok(effects) => {
                self.cwmp.sessions_ok += 1;
                tracing::info!(
                    "session ended after {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                );
                for e in effects {
                    self.apply_effect(e, end).await;
                }
                // Events that arrived or were raised (M Reboot, ...) need another session.
                if !self.cwmp.queue.is_empty() {
                    self.cwmp.next_session = Some(end);
                }
            }
            Err(SessionError::NoUrl) | Err(SessionError::Disabled) => {
                tracing::debug!("no session: {}", self.last_skip_reason());
                self.cwmp.queue.session_failed();
            }
            Err(e) => {
                self.cwmp.sessions_failed += 1;
                self.cwmp.queue.session_failed();
                self.cwmp.retry_count = self.cwmp.retry_count.saturating_add(1);
                let m = self.ms_u32("CWMPRetryMinimumWaitInterval", 5);
                let k = self.ms_u32("CWMPRetryIntervalMultiplier", 2000);
                let wait = crate::connreq::backoff::cwmp_retry_wait(
                    self.cwmp.retry_count,
                    m,
                    k,
                    crate::util::codec::random_u32(),
                );
                tracing::warn!(
                    "session failed: {e}; retry {} in {:.1} s",
                    self.cwmp.retry_count,
                    wait.as_secs_f64()
                );
                self.cwmp.next_session = Some(end + wait);
                self.save_events();
            }
        }
        self.after_change(end);
    }

    fn last_skip_reason(&mut self) -> &'static str {
        if !self.cwmp_enabled() {
            "EnableCWMP is false"
        } else {
            "ManagementServer.URL is empty"
        }
    }

    fn next_id(&mut self) -> String {
        self.cwmp.id_counter += 1;
        format!("cwmpd-{}", self.cwmp.id_counter)
    }

    fn build_inform(&mut self) -> (Inform, Vec<Event>, Vec<String>) {
        let changes = self.store.pending_changes();
        if !changes.is_empty() {
            self.cwmp.queue.push("4 VALUE CHANGE", "");
        }
        let events = self.cwmp.queue.events.clone();
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
                .map(|e| EventStruct::new(e.code.clone(), e.command_key.clone()))
                .collect(),
            max_envelopes: 1,
            current_time: format_datetime(now_unix()),
            retry_count: self.cwmp.retry_count,
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

    /// Runs one session; returns the effects to apply after it.
    /// POSTs one message; while waiting for the ACS, keeps serving the engine's commands.
    async fn post_serving(
        &mut self,
        client: &mut AcsClient,
        body: Vec<u8>,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Result<crate::net::acs::AcsResponse, AcsError> {
        let fut = client.post(body);
        tokio::pin!(fut);
        let mut open = !self.shutdown_requested;
        loop {
            tokio::select! {
                biased;
                r = &mut fut => return r,
                cmd = rx.recv(), if open => match cmd {
                    Some(c) => {
                        if !self.handle_command(c).await {
                            open = false;
                        }
                    }
                    None => open = false,
                },
            }
        }
    }

    /// Runs one session; returns the effects to apply after it.
    pub async fn run_session(
        &mut self,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Result<Vec<Effect>, SessionError> {
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
        // A completed transfer not yet acknowledged: its events go (again) into this Inform.
        if self.ensure_transfer_events() {
            self.save_events();
        }
        client.set_gzip(self.ms("HTTPCompression") == "GZIP");
        let (inform, sent, changed) = self.build_inform();
        let codes: Vec<&str> = sent.iter().map(|e| e.code.as_str()).collect();
        tracing::info!("session to {url} with events [{}]", codes.join(", "));
        let mut out = Vec::with_capacity(4096);
        let env = Envelope::new(CpeMessage::Inform(inform)).with_id(self.next_id());
        soap::emit_cpe(&env, &mut out);
        let resp = self
            .post_serving(&mut client, std::mem::take(&mut out), rx)
            .await
            .map_err(SessionError::Transport)?;
        if resp.status != 200 {
            return Err(SessionError::Status(resp.status));
        }
        let (ns, hold) = match soap::parse_acs_message(&resp.body) {
            Ok(env) => match env.body {
                AcsMessage::InformResponse { .. } => (env.ns, env.hold_requests == Some(true)),
                AcsMessage::Fault(f) => {
                    return Err(SessionError::Protocol(format!(
                        "ACS answered the Inform with fault {} {}",
                        f.code, f.string
                    )));
                }
                other => {
                    return Err(SessionError::Protocol(format!(
                        "expected InformResponse, got {}",
                        other.method_name()
                    )));
                }
            },
            Err(e) => return Err(SessionError::Protocol(format!("InformResponse: {e}"))),
        };
        // The Inform was delivered: its events and changes are done with.
        self.cwmp.queue.delivered(&sent);
        self.store.clear_changes(&changed);
        self.cwmp.retry_count = 0;
        if sent.iter().any(|e| e.code == "0 BOOTSTRAP") {
            self.agent_state
                .insert("bootstrapped_url".into(), json!(url));
        }
        self.save_events();

        // Our own requests: one TransferComplete per completed transfer, before the empty POST.
        if hold {
            tracing::info!("the ACS holds requests: TransferComplete deferred to a later session");
        } else {
            self.send_transfer_completes(&mut client, ns, rx).await?;
        }

        // The empty POST, then the ACS's requests until it ends the session.
        let mut effects = Vec::new();
        let mut body = Vec::new();
        for _ in 0..MAX_EXCHANGES {
            let resp = self
                .post_serving(&mut client, std::mem::take(&mut body), rx)
                .await
                .map_err(SessionError::Transport)?;
            if resp.status == 204 || (resp.status == 200 && soap::is_empty_body(&resp.body)) {
                return Ok(effects);
            }
            if resp.status != 200 {
                return Err(SessionError::Status(resp.status));
            }
            match soap::parse_acs_message(&resp.body) {
                Ok(env) => match env.body {
                    AcsMessage::Request(req) => {
                        let env = Envelope {
                            id: env.id,
                            hold_requests: None,
                            session_timeout: None,
                            supported_cwmp_versions: None,
                            use_cwmp_version: None,
                            ns: if env.ns == CwmpNs::Cwmp12 { ns } else { env.ns },
                            body: req,
                        };
                        tracing::debug!("ACS request {}", env.body.method_name());
                        if let Some(e) = self.serve_rpc(&env, &mut out).await {
                            effects.push(e);
                        }
                        if out.len() > 256 * 1024 {
                            self.cwmp.big_session = true;
                        }
                        body = std::mem::take(&mut out);
                    }
                    other => {
                        tracing::warn!("unexpected {} from the ACS; ignored", other.method_name());
                    }
                },
                Err(e) => match e.cpe_fault() {
                    Some(f) => {
                        tracing::info!("ACS request refused: {e}");
                        let mut fe = Envelope::new(CpeMessage::Fault(f)).with_ns(ns);
                        fe.id = e.id().map(str::to_string);
                        soap::emit_cpe(&fe, &mut out);
                        body = std::mem::take(&mut out);
                    }
                    None => return Err(SessionError::Protocol(format!("{e}"))),
                },
            }
        }
        Err(SessionError::Protocol("session too long".into()))
    }

    /// Sends the pending TransferCompletes, each answered by a TransferCompleteResponse (8005
    /// makes it retry, up to 4 times); a transfer is forgotten only once acknowledged.
    async fn send_transfer_completes(
        &mut self,
        client: &mut AcsClient,
        ns: CwmpNs,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Result<(), SessionError> {
        for (id, tc) in self.pending_transfer_completes() {
            let mut tries = 0;
            loop {
                tries += 1;
                let mut out = Vec::with_capacity(1024);
                let env = Envelope::new(CpeMessage::TransferComplete(tc.clone()))
                    .with_id(self.next_id())
                    .with_ns(ns);
                soap::emit_cpe(&env, &mut out);
                tracing::info!(
                    "TransferComplete for {:?} (fault {})",
                    tc.command_key,
                    tc.fault.code
                );
                let resp = self
                    .post_serving(client, out, rx)
                    .await
                    .map_err(SessionError::Transport)?;
                if resp.status != 200 {
                    return Err(SessionError::Status(resp.status));
                }
                match soap::parse_acs_message(&resp.body).map(|e| e.body) {
                    // Matched by name; one ACS is known to answer with the autonomous variant.
                    Ok(AcsMessage::TransferCompleteResponse)
                    | Ok(AcsMessage::AutonomousTransferCompleteResponse) => {
                        self.transfer_delivered(id);
                        break;
                    }
                    Ok(AcsMessage::Fault(f)) if f.code == 8005 && tries < 5 => {
                        tracing::info!("ACS asked to retry the TransferComplete (8005)");
                    }
                    Ok(AcsMessage::Fault(f)) => {
                        return Err(SessionError::Protocol(format!(
                            "ACS answered TransferComplete with fault {} {}",
                            f.code, f.string
                        )));
                    }
                    Ok(other) => {
                        return Err(SessionError::Protocol(format!(
                            "expected TransferCompleteResponse, got {}",
                            other.method_name()
                        )));
                    }
                    Err(e) => {
                        return Err(SessionError::Protocol(format!(
                            "TransferCompleteResponse: {e}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    async fn apply_effect(&mut self, e: Effect, now: Instant) {
        match e {
            Effect::ScheduleInform {
                delay_seconds,
                command_key,
            } => {
                self.cwmp
                    .scheduled
                    .push((now + Duration::from_secs(delay_seconds as u64), command_key));
            }
            Effect::Reboot { command_key } => {
                // M Reboot must reach the ACS after the reboot: persist it first.
                self.cwmp.queue.push("M Reboot", &command_key);
                self.save_events();
                let argv = self.cfg.actions.reboot.clone();
                if argv.is_empty() {
                    tracing::warn!("Reboot requested but [actions] reboot is not configured");
                } else {
                    tracing::info!("rebooting: {}", argv.join(" "));
                    run_action(&argv, None).await;
                }
            }
            Effect::FactoryReset => {
                tracing::warn!("factory reset requested by the ACS");
                if let Err(e) = self.state_file.remove() {
                    tracing::error!("cannot remove state: {e}");
                }
                match crate::engine::build_store(
                    &self.cfg,
                    Box::new(crate::model::store::ProcfsLive::default()),
                ) {
                    Ok(s) => self.store = s,
                    Err(e) => tracing::error!("cannot rebuild the factory state: {e}"),
                }
                self.agent_state.clear();
                self.cwmp.queue = EventQueue::default();
                self.cwmp.queue.push("0 BOOTSTRAP", "");
                self.cwmp.queue.push("1 BOOT", "");
                self.save_events();
                self.cwmp.next_session = Some(now);
                let argv = self.cfg.actions.factory_reset.clone();
                if !argv.is_empty() {
                    run_action(&argv, None).await;
                }
            }
        }
    }
}

/// Runs a configured action command, replacing `{file}`; logs failures.
pub async fn run_action(argv: &[String], file: Option<&str>) -> bool {
    let args: Vec<String> = argv
        .iter()
        .map(|a| match file {
            Some(f) => a.replace("{file}", f),
            None => a.clone(),
        })
        .collect();
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
