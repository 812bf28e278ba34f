//! The engine: the one task that owns the data-model store and the persisted state.
//!
//! Everything else (control socket, providers, connection-request listeners, the CWMP session)
//! talks to it through [`Command`]s on one channel. The engine persists after every change
//! that was acknowledged, before it answers.

#[cfg(feature = "bulkdata")]
pub mod bulkdata;
#[cfg(not(feature = "bulkdata"))]
#[path = "bulkdata_off.rs"]
pub(crate) mod bulkdata;
pub(crate) mod diag;
#[cfg(feature = "software-modules")]
pub(crate) mod du;
#[cfg(not(feature = "software-modules"))]
#[path = "du_off.rs"]
pub(crate) mod du;
#[cfg(feature = "software-modules")]
pub(crate) mod du_units;
#[cfg(feature = "lightweight-notif")]
pub mod lwnotif;
#[cfg(not(feature = "lightweight-notif"))]
#[path = "lwnotif_off.rs"]
pub mod lwnotif;
pub mod rpc;
pub mod session;
pub(crate) mod system;
pub mod transfer;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::command::{Command, CrEvent, CrSettings, SETTINGS_PREFIXES, Settings};
use crate::config::{Config, ConfigError};
use crate::model::persist::{AgentState, Loaded, State, StateFile};
use crate::model::schema::Schema;
use crate::model::store::{AttrSet, LiveSource, ProcfsLive, SetError};
use crate::model::{Fault, Origin, Store};
use crate::provider::Provider;

/// Builds the store from a configuration: schema, factory values, persisted state.
pub fn build_store(cfg: &Config, live: Box<dyn LiveSource>) -> Result<Store, ConfigError> {
    let schema = Schema::load_dirs(&cfg.agent.datamodel).map_err(|e| ConfigError {
        file: e.file.clone(),
        line: e.line,
        msg: e.msg.clone(),
    })?;
    schema.validate().map_err(|m| ConfigError {
        file: cfg.agent.datamodel.first().cloned().unwrap_or_default(),
        line: 0,
        msg: m,
    })?;
    cfg.check_against(&schema)?;
    let mut factory = cfg.parameters.clone();
    add_host_facts(&schema, &mut factory);
    let mut store = Store::new(schema, &factory, live).map_err(|m| cfg.error_for(m))?;
    for (i, p) in cfg.providers.iter().enumerate() {
        let g = crate::model::schema::generic_path(&p.prefix).into_owned();
        store.set_external_source(&g, i);
    }
    Ok(store)
}

/// Factory facts the host knows when the configuration does not give them.
fn add_host_facts(schema: &Schema, factory: &mut Vec<(String, String)>) {
    let has = |f: &Vec<(String, String)>, k: &str| f.iter().any(|(p, _)| p == k);
    let sw = "Device.DeviceInfo.SoftwareVersion";
    if schema.param(sw).is_some()
        && !has(factory, sw)
        && let Ok(osr) = std::fs::read_to_string("/etc/os-release")
        && let Some(v) = osr
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_ID="))
            .map(|v| v.trim_matches('"').to_string())
    {
        factory.push((sw.into(), v));
    }
    // Capabilities of the build, not settings: always the build's own values.
    for cap in [
        "Device.ManagementServer.InstanceWildcardsSupported",
        "Device.ManagementServer.AliasBasedAddressing",
    ] {
        if schema.param(cap).is_some() {
            factory.retain(|(p, _)| p != cap);
            factory.push((cap.into(), cfg!(feature = "cwmp14").to_string()));
        }
    }
    let sn = "Device.DeviceInfo.SerialNumber";
    if schema.param(sn).is_some()
        && !has(factory, sn)
        && let Ok(id) = std::fs::read_to_string("/etc/machine-id")
    {
        let id: String = id
            .trim()
            .chars()
            .take(12)
            .collect::<String>()
            .to_uppercase();
        if !id.is_empty() {
            factory.push((sn.into(), id));
        }
    }
}

/// Something the engine started and waits for without blocking its thread (polled in its loop).
pub enum Done {
    /// The ACS host resolved to these addresses (empty: the lookup failed or timed out).
    Resolved {
        host: (String, u16),
        addrs: Vec<SocketAddr>,
    },
    /// A reboot or factory-reset command ended (`ok`: exit status 0).
    Action {
        what: crate::model::persist::ActionKind,
        ok: bool,
    },
    /// Provider values fetched for a poll; `reply`: a control `poll` waiting for it.
    Polled {
        results: Fetched,
        reply: Option<oneshot::Sender<Value>>,
    },
    /// A control request whose provider IO ended.
    Ctl {
        reply: oneshot::Sender<Value>,
        op: CtlOp,
    },
    /// Providers were put back to their old values after a change that could not be kept.
    Compensated(Result<(), SetError>),
    /// A diagnostic ended (`None`: it was cancelled).
    Diag {
        kind: crate::diag::Kind,
        generation: u64,
        outcome: Option<crate::diag::Outcome>,
    },
    /// A configured hook command ended.
    Hook { what: &'static str, ok: bool },
    /// A bulk-data fetch or report delivery ended.
    #[cfg(feature = "bulkdata")]
    Bulk(bulkdata::BulkDone),
    /// A lightweight notification was sent (or failed).
    #[cfg_attr(not(feature = "lightweight-notif"), allow(dead_code))]
    Lwn(lwnotif::LwnDone),
    /// An execution unit's process ended (`requested`: the agent stopped it).
    #[cfg(feature = "software-modules")]
    EuExit { key: String, requested: bool },
    /// A software-module operation ended.
    #[cfg(feature = "software-modules")]
    DuOp {
        job: u64,
        index: usize,
        result: Box<Result<crate::swmod::DuInfo, (u32, String)>>,
    },
    /// The dpkg backend settled an operation a restart cut.
    #[cfg(feature = "software-modules")]
    DpkgRecovered,
}

/// What providers answered to reads: (provider, paths asked, values or why not).
pub(crate) type Fetched = Vec<(
    usize,
    Vec<String>,
    Result<BTreeMap<String, String>, crate::provider::ProviderError>,
)>;

/// The second half of a control request that needed provider IO.
pub enum CtlOp {
    Get {
        names: Vec<String>,
        results: Fetched,
    },
    Set {
        list: Vec<(String, String, Option<String>)>,
        result: Result<(), SetError>,
    },
    Add {
        table: String,
        instance: u32,
        result: Result<(), crate::provider::ProviderError>,
    },
    Delete {
        object: String,
        result: Result<(), crate::provider::ProviderError>,
    },
}

/// The provider writes of one SetParameterValues, in provider order: the handle, the new
/// values and the values to put back if a later provider refuses.
pub(crate) struct SetPlan {
    writes: Vec<(Provider, Values, Values)>,
}

/// (path, value) pairs.
type Values = Vec<(String, String)>;

impl SetPlan {
    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Writes every provider's part; when one refuses (or fails), the parts already written
    /// are put back to their old values (all or nothing across providers).
    pub(crate) async fn apply(self) -> Result<(), SetError> {
        let mut done: Vec<(Provider, Vec<(String, String)>)> = Vec::new();
        for (p, new, old) in self.writes {
            if let Err(e) = p.set(&new).await {
                for (q, old) in done.iter().rev() {
                    if let Err(e2) = q.set(old).await {
                        tracing::error!(
                            provider = q.index,
                            "cannot put the old values back after a refused set: {e2}"
                        );
                    }
                }
                return Err(SetError {
                    fault: Fault::new(
                        9002,
                        format!("provider {} refused the change: {e}", p.index),
                    ),
                    per_param: new
                        .iter()
                        .map(|(n, _)| (n.clone(), Fault::new(9002, e.to_string())))
                        .collect(),
                });
            }
            done.push((p, old));
        }
        Ok(())
    }

    /// The plan that puts every provider back to the old values.
    pub(crate) fn undo(&self) -> SetPlan {
        SetPlan {
            writes: self
                .writes
                .iter()
                .map(|(p, _, old)| (p.clone(), old.clone(), Vec::new()))
                .collect(),
        }
    }
}

/// Reads of provider-backed parameters, as a future that borrows nothing from the engine.
pub(crate) async fn fetch(reads: Vec<(Provider, Vec<String>)>) -> Fetched {
    let mut out = Vec::with_capacity(reads.len());
    for (p, paths) in reads {
        let r = p.get(&paths).await;
        out.push((p.index, paths, r));
    }
    out
}

/// Sleeps until `t` (never, when there is none).
async fn sleep_opt(t: Option<std::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Awaits the next message of an optional channel (never, when there is none).
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

pub(crate) type Task = Pin<Box<dyn std::future::Future<Output = Done>>>;

/// Longest wait for the ACS host's name resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Engine {
    pub(crate) store: Store,
    pub(crate) state_file: StateFile,
    pub(crate) agent_state: AgentState,
    pub(crate) providers: Vec<Provider>,
    pub(crate) cfg: Config,
    /// CWMP session state (events, timers, retries).
    pub(crate) cwmp: session::CwmpState,
    /// A Shutdown arrived (possibly during a session).
    pub(crate) shutdown_requested: bool,
    notify_rx: Option<mpsc::Receiver<(usize, BTreeMap<String, String>)>>,
    /// The engine's command channel (set by [`Self::run`]); also served while the engine
    /// waits for the ACS or a provider (see [`Self::serving`]).
    rx: Option<mpsc::Receiver<Command>>,
    /// Rate limit of the warning about values a provider pushes outside its subtree.
    push_warn: crate::util::LogLimit,
    /// Current HTTP connection-request settings, watched by the listener.
    cr_tx: watch::Sender<CrSettings>,
    /// The addresses the HTTP CR listener is bound to (for ConnectionRequestURL).
    cr_listen: Vec<std::net::SocketAddr>,
    /// Digest nonce key of the CR listener (persisted as `cr_secret`).
    cr_secret: [u8; 32],
    /// Inputs of the last ConnectionRequestURL computation (skip it when unchanged).
    cr_url_key: Option<(bool, String, Vec<std::net::SocketAddr>)>,
    /// Connection requests accepted since start.
    pub(crate) cr_count: u64,
    /// The last accepted connection request: its mechanism and the time from its arrival
    /// (datagram received, request head parsed, IQ read) to the engine taking the trigger.
    pub(crate) last_cr: Option<(&'static str, Duration)>,
    /// Set once [`run`](Self::run) has started.
    running: bool,
    /// Raw values (secrets included) of the subtrees transports configure themselves from.
    settings_tx: watch::Sender<Settings>,
    /// Public base URL of a UPnP IGD port mapping, when one is in place.
    upnp_base: String,
    /// How the state was loaded at start (`ctl status` `state_loaded`): "fresh", "current",
    /// "previous: why" (the previous copy was used) or "factory: why" (both were bad).
    state_loaded: String,
    /// Why the last state write failed, if it did (`ctl status` `last_persist_error`).
    last_persist_error: Option<String>,
    /// Work in flight (name resolution, action commands), polled by [`Self::run`].
    pub(crate) tasks: FuturesUnordered<Task>,
    /// The ACS host (name, port) and the addresses it resolved to (empty: it did not).
    acs_addrs: Option<((String, u16), Vec<SocketAddr>)>,
    /// A resolution of this host is in flight.
    resolving: Option<(String, u16)>,
    /// The last value of every status parameter a transport reported, re-applied to a store
    /// rebuilt by a factory reset (so the BOOTSTRAP Inform carries them).
    status_cache: BTreeMap<String, String>,
    /// TR-143 diagnostics waiting and running.
    pub(crate) diag: diag::Diagnostics,
    /// Software-module jobs and the backend.
    #[cfg(feature = "software-modules")]
    pub(crate) du: du::SoftwareModules,
    /// Rate limit of warnings about reading the system.
    sys_warn: crate::util::LogLimit,
    /// TR-181 bulk data collection profiles.
    #[cfg_attr(not(feature = "bulkdata"), allow(dead_code))]
    pub(crate) bulk: bulkdata::BulkData,
    /// UDP Lightweight Notifications (TR-069 Annex M).
    #[cfg_attr(not(feature = "lightweight-notif"), allow(dead_code))]
    pub(crate) lwn: lwnotif::Lwn,
}

const MS_ENABLE: &str = "Device.ManagementServer.EnableCWMP";
const MS_URL: &str = "Device.ManagementServer.URL";
const MS_CR_ENABLE: &str = "Device.ManagementServer.HTTPConnectionRequestEnable";
const MS_CR_USER: &str = "Device.ManagementServer.ConnectionRequestUsername";
const MS_CR_PASS: &str = "Device.ManagementServer.ConnectionRequestPassword";
const MS_CR_URL: &str = "Device.ManagementServer.ConnectionRequestURL";

impl Engine {
    /// Builds the engine and loads the persisted state (falling back to the previous copy, or
    /// to the factory state, with a log line saying why).
    pub fn new(cfg: Config) -> Result<Engine, ConfigError> {
        let store = build_store(&cfg, Box::new(ProcfsLive::default()))?;
        Self::with_store(cfg, store)
    }

    pub fn with_store(cfg: Config, mut store: Store) -> Result<Engine, ConfigError> {
        crate::util::fsutil::ensure_private_dir(&cfg.agent.state_dir).map_err(|e| ConfigError {
            file: cfg.file.clone(),
            line: 0,
            msg: format!("state_dir {}: {e}", cfg.agent.state_dir.display()),
        })?;
        let state_file = StateFile::new(&cfg.agent.state_dir);
        let (state, how) = state_file.load();
        let state_loaded = match &how {
            Loaded::Fresh => "fresh".to_string(),
            Loaded::Current => "current".to_string(),
            Loaded::Previous(why) => format!("previous: {why}"),
            Loaded::BothBad(why) => format!("factory: {why}"),
        };
        match &how {
            Loaded::Fresh => tracing::info!("no saved state: starting from the factory state"),
            Loaded::Current => tracing::debug!("state loaded from {}", state_file.path().display()),
            Loaded::Previous(why) => {
                tracing::error!("saved state unusable ({why}); using the previous good copy")
            }
            Loaded::BothBad(why) => {
                tracing::error!("saved state unusable ({why}); starting from the factory state")
            }
        }
        for w in store.restore(&state.model) {
            tracing::warn!("{w}");
        }
        let mut agent_state = state.agent;
        let mut created = false;
        let cr_path = match agent_state.cr_path.as_deref() {
            Some(p) if p.starts_with('/') && p.len() > 1 => p.to_string(),
            _ => {
                let p = crate::connreq::http::random_path();
                agent_state.cr_path = Some(p.clone());
                created = true;
                p
            }
        };
        let cr_secret = match agent_state.cr_secret.as_deref().and_then(parse_secret) {
            Some(s) => s,
            None => {
                let s = crate::connreq::http::random_secret();
                agent_state.cr_secret = Some(crate::util::codec::to_hex(&s));
                created = true;
                s
            }
        };
        let (cr_tx, _) = watch::channel(CrSettings {
            path: cr_path,
            ..CrSettings::default()
        });
        let mut e = Engine {
            store,
            state_file,
            agent_state,
            providers: Vec::new(),
            cfg,
            cwmp: Default::default(),
            shutdown_requested: false,
            notify_rx: None,
            rx: None,
            push_warn: crate::util::LogLimit::new(Duration::from_secs(10)),
            cr_tx,
            cr_listen: Vec::new(),
            cr_secret,
            cr_url_key: None,
            cr_count: 0,
            last_cr: None,
            running: false,
            settings_tx: watch::channel(Settings::default()).0,
            upnp_base: String::new(),
            tasks: FuturesUnordered::new(),
            state_loaded,
            last_persist_error: None,
            acs_addrs: None,
            resolving: None,
            status_cache: BTreeMap::new(),
            diag: Default::default(),
            #[cfg(feature = "software-modules")]
            du: Default::default(),
            sys_warn: crate::util::LogLimit::new(Duration::from_secs(60)),
            bulk: Default::default(),
            lwn: Default::default(),
        };
        e.system_init();
        e.diag_init();
        e.bulk_init();
        e.lwn_init();
        e.publish_settings();
        e.refresh_cr();
        if created {
            let _ = e.persist();
        }
        Ok(e)
    }

    /// Transports' view of the raw settings (follows every change).
    pub fn settings(&self) -> watch::Receiver<Settings> {
        self.settings_tx.subscribe()
    }

    /// Recomputes the settings snapshot and publishes it when it changed.
    pub fn publish_settings(&mut self) {
        let mut m = BTreeMap::new();
        for prefix in SETTINGS_PREFIXES {
            if let Ok(paths) = self.store.expand(prefix) {
                for p in paths {
                    let v = self.store.secret(&p).unwrap_or_default().to_string();
                    m.insert(p, v);
                }
            }
        }
        self.settings_tx.send_if_modified(|cur| {
            if **cur == m {
                false
            } else {
                *cur = std::sync::Arc::new(m);
                true
            }
        });
    }

    /// Applies status values reported by a transport.
    /// Only values that are persisted at all (not counters) cause a write.
    pub fn apply_status(&mut self, values: Vec<(String, String)>) {
        let before = self.store.snapshot();
        for (k, v) in values {
            self.status_cache.insert(k.clone(), v.clone());
            if let Err(f) = self.store.set_internal(&k, &v) {
                tracing::warn!("status value for {k} refused: {f}");
            }
        }
        if self.store.snapshot() != before {
            let _ = self.persist();
        }
    }

    /// The listener's view of the CR settings (follows every change).
    pub fn cr_settings(&self) -> watch::Receiver<CrSettings> {
        self.cr_tx.subscribe()
    }

    /// The persisted Digest nonce key for the CR listener.
    pub fn cr_secret(&self) -> [u8; 32] {
        self.cr_secret
    }

    /// Tells the engine where the HTTP CR listener is bound, and republishes the URL.
    pub fn set_cr_listen(&mut self, addrs: Vec<std::net::SocketAddr>) {
        self.cr_listen = addrs;
        self.refresh_cr();
    }

    /// The public base URL of the HTTP CR listener when it sits behind a port forward: the
    /// configured `public_url`, or, with `external_port`, the gateway's public address as STUN
    /// learned it (UDPConnectionRequestAddress) with that port. Empty when neither applies
    /// (the URL then names the local address on the route to the ACS).
    fn forwarded_base(&self) -> String {
        let c = &self.cfg.connreq;
        if !c.public_url.is_empty() {
            return c.public_url.clone();
        }
        if !self.upnp_base.is_empty() {
            return self.upnp_base.clone();
        }
        if c.external_port == 0
            || self.store.secret("Device.ManagementServer.STUNEnable") != Some("true")
        {
            return String::new();
        }
        let mapped = self
            .store
            .secret("Device.ManagementServer.UDPConnectionRequestAddress")
            .unwrap_or("");
        let host = match mapped.parse::<std::net::SocketAddr>() {
            Ok(a) => match a.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            },
            // A host name or host without port: take the part before the last ':'.
            Err(_) => match mapped.rsplit_once(':') {
                Some((h, _)) if !h.is_empty() => h.to_string(),
                _ => return String::new(),
            },
        };
        format!("http://{host}:{}/", c.external_port)
    }

    /// Recomputes the CR settings from the store and ConnectionRequestURL; call after any change.
    pub fn refresh_cr(&mut self) {
        let on = |s: &Store, p: &str| {
            s.secret(p)
                .is_none_or(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        };
        let enabled = on(&self.store, MS_ENABLE) && on(&self.store, MS_CR_ENABLE);
        let username = self.store.secret(MS_CR_USER).unwrap_or("").to_string();
        let password = self.store.secret(MS_CR_PASS).unwrap_or("").to_string();
        self.cr_tx.send_if_modified(|s| {
            let new = CrSettings {
                enabled,
                username,
                password,
                path: s.path.clone(),
            };
            if *s == new {
                false
            } else {
                if s.enabled != new.enabled {
                    tracing::info!(
                        "HTTP connection requests {}",
                        if new.enabled { "enabled" } else { "disabled" }
                    );
                }
                *s = new;
                true
            }
        });
        let acs = self.store.secret(MS_URL).unwrap_or("").to_string();
        let public = self.forwarded_base();
        let key = (enabled, format!("{acs} {public}"), self.cr_listen.clone());
        if self.cr_url_key.as_ref() == Some(&key) {
            return;
        }
        let url = if enabled && !self.cr_listen.is_empty() {
            let path = self.cr_tx.borrow().path.clone();
            match self.cr_url_for(&public, &acs, &path) {
                Some(u) => u,
                // The route to the ACS is not known yet (its name is being resolved) or not at
                // all: keep what is published rather than a guess (never a loopback URL for
                // a remote ACS). Recomputed when the resolution ends.
                None => return,
            }
        } else {
            String::new()
        };
        if let Some(prev) = self.store.secret(MS_CR_URL).filter(|v| *v != url) {
            // The first publication at start-up (factory value empty) is not a value change:
            // the URL is forcedInform and goes out with the boot Inform anyway.
            let first = !self.running && prev.is_empty();
            match self.store.set_internal(MS_CR_URL, &url) {
                Ok(_) => {
                    if first {
                        self.store.clear_changes(&[MS_CR_URL.to_string()]);
                    }
                    tracing::info!("ConnectionRequestURL = {url:?}");
                    // Derived at every start: saved with the next change, not on its own
                    // (no extra fsync on the start-up path).
                    if self.running {
                        let _ = self.persist();
                    }
                }
                Err(f) => tracing::warn!("cannot set ConnectionRequestURL: {f}"),
            }
        }
        self.cr_url_key = Some(key);
    }

    /// Swaps in a rebuilt store (factory reset): the published URL is recomputed and the
    /// transports' last status values re-applied at once.
    pub(crate) fn replace_store(&mut self, store: Store) {
        self.store = store;
        let cached: Vec<(String, String)> = self
            .status_cache
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in cached {
            let _ = self.store.set_internal(&k, &v);
        }
        self.cr_url_key = None;
        self.refresh_cr();
        self.publish_settings();
        // The values above are the device's state at the reset, not changes to report.
        let all: Vec<String> = self
            .store
            .pending_changes()
            .into_iter()
            .map(|e| e.name)
            .collect();
        self.store.clear_changes(&all);
    }

    /// Something started earlier ended.
    fn task_done(&mut self, done: Done, now: std::time::Instant) {
        match done {
            Done::Resolved { host, addrs } => self.resolved(host, addrs),
            Done::Action { what, ok } => self.action_done(what, ok, now),
            Done::Polled { results, reply } => {
                if let Err(f) = self.apply_fetched(results) {
                    tracing::debug!("poll: {}", f.reason);
                }
                if let Some(r) = reply {
                    let _ = r.send(json!({"ok": true}));
                }
                self.refresh_cr();
            }
            Done::Ctl { reply, op } => self.ctl_done(reply, op),
            Done::Compensated(r) => {
                if let Err(e) = r {
                    tracing::error!("providers could not be put back: {}", e.fault.reason);
                }
            }
            Done::Diag {
                kind,
                generation,
                outcome,
            } => self.diag_done(kind, generation, outcome),
            #[cfg(feature = "software-modules")]
            Done::DuOp { job, index, result } => self.du_done(job, index, *result),
            #[cfg(feature = "software-modules")]
            Done::DpkgRecovered => self.dpkg_recovered(),
            #[cfg(feature = "software-modules")]
            Done::EuExit { key, requested } => self.eu_exit(key, requested),
            Done::Hook { what, ok } => {
                if !ok {
                    tracing::warn!("{what} command failed");
                }
            }
            #[cfg(feature = "bulkdata")]
            Done::Bulk(d) => self.bulk_done(d),
            Done::Lwn(d) => self.lwn_done(d),
        }
    }

    /// The ConnectionRequestURL for the current listeners, or None while the route to the ACS
    /// is unknown. Never blocks: a host name is resolved by a task of the engine.
    fn cr_url_for(&mut self, public: &str, acs: &str, path: &str) -> Option<String> {
        if !public.is_empty() {
            return Some(format!("{}{path}", public.trim_end_matches('/')));
        }
        let first = *self.cr_listen.first()?;
        let ip = if !first.ip().is_unspecified() {
            first.ip()
        } else {
            let addrs = self.acs_addresses(acs)?;
            route_source(&addrs, first.is_ipv6())?
        };
        let host = match ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        Some(format!("http://{host}:{}{path}", first.port()))
    }

    /// The addresses of the ACS host: an IP literal at once, a name from the last resolution
    /// (starting one when there is none for this host).
    fn acs_addresses(&mut self, acs: &str) -> Option<Vec<SocketAddr>> {
        let (host, port) = crate::net::url::Url::host_port(acs)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(vec![SocketAddr::new(ip, port)]);
        }
        let key = (host, port);
        match &self.acs_addrs {
            Some((k, a)) if *k == key => Some(a.clone()),
            _ => {
                self.start_resolve(key);
                None
            }
        }
    }

    fn start_resolve(&mut self, key: (String, u16)) {
        if self.resolving.as_ref() == Some(&key) {
            return;
        }
        self.resolving = Some(key.clone());
        self.tasks.push(Box::pin(async move {
            let addrs = resolve(&key).await;
            Done::Resolved { host: key, addrs }
        }));
    }

    /// A name resolution ended: remember it and recompute the URL.
    fn resolved(&mut self, host: (String, u16), addrs: Vec<SocketAddr>) {
        if self.resolving.as_ref() == Some(&host) {
            self.resolving = None;
        }
        if addrs.is_empty() {
            tracing::warn!(
                "cannot resolve the ACS host {}: ConnectionRequestURL left as it is",
                host.0
            );
        } else {
            tracing::debug!("ACS host {} resolved to {addrs:?}", host.0);
        }
        self.acs_addrs = Some((host, addrs));
        self.cr_url_key = None;
        self.refresh_cr();
    }

    /// Resolves the ACS host now if the ConnectionRequestURL waits for it (before an Inform,
    /// which must carry the URL), serving the engine's commands meanwhile.
    pub(crate) async fn ensure_acs_route(&mut self) {
        let acs = self.store.secret(MS_URL).unwrap_or("").to_string();
        let Some((host, port)) = crate::net::url::Url::host_port(&acs) else {
            return;
        };
        let known = host.parse::<IpAddr>().is_ok()
            || matches!(&self.acs_addrs, Some((k, _)) if k.0 == host && k.1 == port);
        if known {
            return;
        }
        let key = (host, port);
        let addrs = self.serving(resolve(&key)).await;
        self.resolved(key, addrs);
    }

    /// Runs `fut` while serving the engine's commands (the control socket, listeners), the
    /// values providers push, and the engine's tasks, so that nothing waits for the ACS or a
    /// provider. Not nested: command handlers never wait themselves (they start tasks).
    pub(crate) async fn serving<T>(&mut self, fut: impl std::future::Future<Output = T>) -> T {
        enum Ev {
            Cmd(Option<Command>),
            Notify(Option<(usize, BTreeMap<String, String>)>),
            Done(Done),
        }
        tokio::pin!(fut);
        loop {
            let open = !self.shutdown_requested;
            let bulk_wake = self.bulk_next_wakeup();
            let lwn_wake = self.lwn_next_wakeup();
            let ev = tokio::select! {
                biased;
                r = &mut fut => return r,
                c = recv_opt(&mut self.rx), if open => Ev::Cmd(c),
                n = recv_opt(&mut self.notify_rx) => Ev::Notify(n),
                Some(d) = self.tasks.next(), if !self.tasks.is_empty() => Ev::Done(d),
                _ = sleep_opt(bulk_wake) => {
                    self.bulk_tick(std::time::Instant::now());
                    continue;
                }
                _ = sleep_opt(lwn_wake) => {
                    self.lwn_tick(std::time::Instant::now());
                    continue;
                }
            };
            match ev {
                Ev::Cmd(Some(c)) => {
                    let _ = self.handle_command(c).await;
                }
                Ev::Cmd(None) => self.shutdown_requested = true,
                Ev::Notify(Some((i, vals))) => {
                    self.provider_notify(i, vals);
                    self.refresh_cr();
                }
                Ev::Notify(None) => self.notify_rx = None,
                Ev::Done(d) => self.task_done(d, std::time::Instant::now()),
            }
        }
    }

    /// HOOK for the session engine: an accepted connection request. The session engine will
    /// start a session with "6 CONNECTION REQUEST" here (coalesced, SPEC-NOTES H8/H9).
    fn on_connection_request(&mut self, ev: CrEvent) {
        self.cr_count += 1;
        self.last_cr = Some((ev.mechanism.as_str(), ev.received.elapsed()));
        tracing::debug!(peer = %ev.peer, "accepted connection request");
        self.connection_request(ev.mechanism.as_str(), ev.received);
    }

    /// Starts the configured providers (needs a tokio LocalSet).
    pub fn start_providers(&mut self) {
        let (ntx, nrx) = mpsc::channel(64);
        for (i, p) in self.cfg.providers.iter().enumerate() {
            self.providers.push(Provider::spawn(
                i,
                p.prefix.clone(),
                p.command.clone(),
                ntx.clone(),
            ));
        }
        self.notify_rx = Some(nrx);
    }

    /// Writes the state file. Errors are logged and returned.
    pub fn persist(&mut self) -> Result<(), crate::model::persist::PersistError> {
        let st = State {
            model: self.store.snapshot(),
            agent: self.agent_state.clone(),
        };
        self.bulk_changed();
        match self.state_file.save(&st) {
            Ok(()) => {
                self.store.mark_clean();
                Ok(())
            }
            Err(e) => {
                self.last_persist_error = Some(e.to_string());
                tracing::error!(
                    "cannot save state to {}: {e}",
                    self.state_file.path().display()
                );
                Err(crate::model::persist::PersistError {
                    path: self.state_file.path().to_path_buf(),
                    source: e,
                })
            }
        }
    }

    /// The provider reads needed to refresh the cached values among `paths` (None: none).
    pub(crate) fn external_reads(&self, paths: &[String]) -> Option<Vec<(Provider, Vec<String>)>> {
        let wanted = self.store.external_of(paths);
        if wanted.is_empty() {
            return None;
        }
        let mut by: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (i, p) in wanted {
            by.entry(i).or_default().push(p);
        }
        let reads: Vec<(Provider, Vec<String>)> = by
            .into_iter()
            .filter_map(|(i, ps)| Some((self.providers.get(i)?.clone(), ps)))
            .collect();
        (!reads.is_empty()).then_some(reads)
    }

    /// Stores what providers answered. A provider that failed (down, hung, refused) makes
    /// the answer a fault 9002 naming it: its cached values are not passed off as current.
    pub(crate) fn apply_fetched(&mut self, results: Fetched) -> Result<(), Fault> {
        let mut failed = None;
        for (i, asked, r) in results {
            match r {
                Ok(vals) => {
                    for (k, v) in vals {
                        if asked.contains(&k)
                            && let Err(f) = self.store.update_cached(&k, &v)
                        {
                            tracing::warn!("provider value for {k} refused: {f}");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = i, "get failed: {e}");
                    failed.get_or_insert(Fault::new(
                        9002,
                        format!(
                            "provider {i} ({}) unavailable: {e}",
                            self.cfg.providers[i].prefix
                        ),
                    ));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// One poll of live and provider-backed parameters with notification on. Provider reads
    /// run as a task of the engine (its loop never waits for them).
    pub fn poll(&mut self, reply: Option<oneshot::Sender<Value>>) {
        self.store.poll_live();
        self.system_poll();
        let watched: Vec<String> = self
            .store
            .watched_external()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        match self.external_reads(&watched) {
            Some(reads) => self.tasks.push(Box::pin(async move {
                Done::Polled {
                    results: fetch(reads).await,
                    reply,
                }
            })),
            None => {
                if let Some(r) = reply {
                    let _ = r.send(json!({"ok": true}));
                }
            }
        }
    }

    /// Applies values pushed by a provider.
    pub fn provider_notify(&mut self, index: usize, values: BTreeMap<String, String>) {
        for (k, v) in values {
            match self.store.source(&k) {
                Some(crate::model::store::Source::External(i)) if i == index => {
                    if let Err(f) = self.store.update_cached(&k, &v) {
                        tracing::warn!("pushed value for {k} refused: {f}");
                    }
                }
                _ => {
                    if let Some(n) = self.push_warn.check(std::time::Instant::now()) {
                        tracing::warn!(
                            provider = index,
                            "pushed value for {k} outside its subtree; ignored \
                             ({n} more such warnings suppressed)"
                        );
                    }
                }
            }
        }
    }

    /// Checks a SetParameterValues and plans its provider writes; nothing is changed yet.
    pub(crate) fn set_prepare(
        &self,
        list: &[(String, String, Option<String>)],
        origin: Origin,
    ) -> Result<SetPlan, SetError> {
        let mut faults = Vec::new();
        for (n, v, t) in list {
            let refused = self
                .store
                .check_set(n, v, t.as_deref(), origin)
                .err()
                .or_else(|| self.bulk_write_refused(n, v))
                .or_else(|| {
                    if origin != Origin::Acs {
                        return None;
                    }
                    self.system_write_refused(n, origin)
                        .or_else(|| self.diag_write_refused(n, v))
                });
            if let Some(f) = refused {
                faults.push((n.clone(), f));
            }
        }
        if !faults.is_empty() {
            return Err(SetError {
                fault: Fault::new(9003, "one or more parameters could not be set"),
                per_param: faults,
            });
        }
        let names: Vec<String> = list.iter().map(|(n, _, _)| n.clone()).collect();
        let mut by: BTreeMap<usize, (Values, Values)> = BTreeMap::new();
        for (i, p) in self.store.external_of(&names) {
            let v = list
                .iter()
                .find(|(n, _, _)| *n == p)
                .map(|(_, v, _)| v.clone())
                .unwrap_or_default();
            let old = self.store.secret(&p).unwrap_or("").to_string();
            let e = by.entry(i).or_default();
            e.0.push((p.clone(), v));
            e.1.push((p, old));
        }
        Ok(SetPlan {
            writes: by
                .into_iter()
                .filter_map(|(i, (new, old))| Some((self.providers.get(i)?.clone(), new, old)))
                .collect(),
        })
    }

    /// The store side of a SetParameterValues whose providers accepted it: applied and made
    /// durable, or undone (a change the caller is told succeeded must survive a power cut).
    pub(crate) fn set_commit(
        &mut self,
        list: &[(String, String, Option<String>)],
        origin: Origin,
    ) -> Result<Vec<String>, SetError> {
        let before: Vec<(String, String)> = list
            .iter()
            .filter_map(|(n, _, _)| self.store.secret(n).map(|v| (n.clone(), v.to_string())))
            .collect();
        if let Err((name, f)) = self.system_apply(list, origin) {
            return Err(SetError {
                fault: Fault::new(9002, f.reason.clone()),
                per_param: vec![(name, f)],
            });
        }
        let changed = self.store.set_values(list, origin)?;
        if let Err(e) = self.persist() {
            self.store.revert_values(&before);
            return Err(SetError {
                fault: Fault::new(9002, e.to_string()),
                per_param: list
                    .iter()
                    .map(|(n, _, _)| (n.clone(), Fault::new(9002, e.to_string())))
                    .collect(),
            });
        }
        if origin == Origin::Acs {
            self.system_after_set(list);
            self.diag_after_set(list);
            self.du_after_set(list);
        }
        Ok(changed)
    }

    /// Puts providers back (`undo`, from [`SetPlan::undo`]) when their part of a set could
    /// not be kept: a task of the engine.
    pub(crate) fn push_undo(&mut self, undo: SetPlan) {
        if !undo.is_empty() {
            self.tasks.push(Box::pin(
                async move { Done::Compensated(undo.apply().await) },
            ));
        }
    }

    pub(crate) fn add_commit(&mut self, table: &str, n: u32) -> Result<u32, Fault> {
        let pending = self.cwmp.pending_alias.take();
        if let Some(f) = self.bulk_add_refused(table) {
            let _ = self
                .store
                .delete_object(&format!("{table}{n}."), Origin::Internal);
            return Err(f);
        }
        if cfg!(feature = "cwmp14") && self.store.table_has_alias(table) {
            // The ACS's alias (AddObject of `Table.[alias].`), else one of the CPE's own
            // (TR-106 Alias: `cpe-` prefix, unique in the table).
            let param = format!("{table}{n}.Alias");
            let alias = pending.unwrap_or_else(|| {
                let mut a = format!("cpe-{n}");
                let mut k = 1;
                while self.store.instance_by_alias(table, &a).is_some() {
                    k += 1;
                    a = format!("cpe-{n}-{k}");
                }
                a
            });
            if self.store.get(&param).is_some_and(|v| v.is_empty())
                && let Err(f) = self.store.set_unchecked(&param, &alias, Origin::Acs)
            {
                tracing::warn!("cannot set {param}: {f}");
            }
        }
        if let Err(e) = self.persist() {
            // Not durable: undo, so the state matches what the ACS is told (a fault).
            let _ = self
                .store
                .delete_object(&format!("{table}{n}."), Origin::Internal);
            return Err(Fault::new(9002, e.to_string()));
        }
        Ok(n)
    }

    /// The store side of a DeleteObject whose provider (if any) accepted it.
    pub(crate) fn acs_delete_commit(&mut self, obj: &str, origin: Origin) -> Result<(), Fault> {
        self.store.delete_object(obj, origin)?;
        self.persist()
            .map_err(|e| Fault::new(9002, e.to_string()))?;
        Ok(())
    }

    pub(crate) fn provider_for(&self, path: &str) -> Option<Provider> {
        let g = crate::model::schema::generic_path(path);
        self.providers
            .iter()
            .find(|p| g.starts_with(crate::model::schema::generic_path(&p.prefix).as_ref()))
            .cloned()
    }

    /// Answers one control-socket request.
    /// Answers one control request: at once, or (when providers must be asked) from a task
    /// of the engine, so the engine never waits for a provider here.
    pub fn handle_ctl(&mut self, req: Value, reply: oneshot::Sender<Value>) {
        let mut slot = Some(reply);
        let v = self.ctl_answer(req, &mut slot);
        if let Some(r) = slot {
            let _ = r.send(v);
        }
    }

    /// Starts a control request's provider IO; [`Self::ctl_done`] answers it.
    fn ctl_task(
        &mut self,
        reply: oneshot::Sender<Value>,
        fut: impl std::future::Future<Output = CtlOp> + 'static,
    ) {
        self.tasks.push(Box::pin(async move {
            Done::Ctl {
                reply,
                op: fut.await,
            }
        }));
    }

    /// The second half of a control request whose provider IO ended.
    fn ctl_done(&mut self, reply: oneshot::Sender<Value>, op: CtlOp) {
        let v = match op {
            CtlOp::Get { names, results } => match self.apply_fetched(results) {
                Ok(()) => self.ctl_get_answer(&names),
                Err(f) => fault_json(&f),
            },
            CtlOp::Set { list, result } => match result {
                Ok(()) => {
                    let undo = self.set_prepare(&list, Origin::Local).map(|p| p.undo());
                    match self.set_commit(&list, Origin::Local) {
                        Ok(changed) => json!({"ok": true, "changed": changed}),
                        Err(e) => {
                            if let Ok(u) = undo {
                                self.push_undo(u);
                            }
                            set_error_json(&e)
                        }
                    }
                }
                Err(e) => set_error_json(&e),
            },
            CtlOp::Add {
                table,
                instance,
                result,
            } => match result {
                Ok(()) => match self.add_commit(&table, instance) {
                    Ok(n) => json!({"ok": true, "instance": n}),
                    Err(f) => fault_json(&f),
                },
                Err(e) => {
                    let _ = self
                        .store
                        .delete_object(&format!("{table}{instance}."), Origin::Internal);
                    fault_json(&Fault::new(9002, format!("provider refused: {e}")))
                }
            },
            CtlOp::Delete { object, result } => match result {
                Ok(()) => self.delete_commit(&object),
                Err(e) => fault_json(&Fault::new(9002, format!("provider refused: {e}"))),
            },
        };
        let _ = reply.send(v);
        self.refresh_cr();
    }

    /// The answer-size limit of GetParameterValues for the control socket's get and getattr:
    /// counted (and the counting stopped early) before anything is built.
    fn check_answer_size(&self, names: &[String]) -> Result<(), Fault> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let c = self
            .store
            .count_values_upto(&refs, rpc::MAX_RESPONSE_ENTRIES)?;
        if c > rpc::MAX_RESPONSE_ENTRIES {
            return Err(Fault::new(
                9004,
                format!("answer of more than {} entries", rpc::MAX_RESPONSE_ENTRIES),
            ));
        }
        Ok(())
    }

    fn ctl_get_answer(&mut self, names: &[String]) -> Value {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        match self.store.get_values(&refs) {
            Ok(vals) => json!({"ok": true, "values": vals.iter().map(|e| json!({
                "name": e.name, "value": e.value, "type": e.xsi_type})).collect::<Vec<_>>()}),
            Err(f) => fault_json(&f),
        }
    }

    fn delete_commit(&mut self, obj: &str) -> Value {
        match self.store.delete_object(obj, Origin::Local) {
            Ok(()) => match self.persist() {
                Ok(()) => json!({"ok": true}),
                Err(e) => fault_json(&Fault::new(9002, e.to_string())),
            },
            Err(f) => fault_json(&f),
        }
    }

    /// The device side (control socket) may write what the ACS may write, and read-only
    /// values that describe the device's own state and have no other source. Never: what the
    /// agent computes itself (status values, counters, live values), what a provider owns,
    /// and the device's identity (docs/CONTROL.md).
    fn device_write_refused(&self, name: &str) -> Option<Fault> {
        use crate::model::store::Source;
        let id = self
            .store
            .schema()
            .param(&crate::model::schema::generic_path(name))?;
        if self.store.schema().params[id].writable() {
            return None;
        }
        let generic = crate::model::schema::generic_path(name);
        if DEVICE_OWN_GENERIC
            .iter()
            .any(|p| generic == *p || (p.ends_with('.') && generic.starts_with(p)))
        {
            return Some(Fault::new(
                9008,
                format!("{name} is read-only: the agent's own status"),
            ));
        }
        let why = match self.store.source(name) {
            Some(Source::Live(_)) => Some("computed by the device"),
            Some(Source::External(_)) => Some("owned by its provider (it pushes the value)"),
            _ if DEVICE_OWN.contains(&name)
                || name.ends_with("NumberOfEntries")
                || self.status_cache.contains_key(name) =>
            {
                Some("the agent's own status or the device's identity")
            }
            _ => None,
        }?;
        Some(Fault::new(9008, format!("{name} is read-only: {why}")))
    }

    fn ctl_answer(&mut self, req: Value, reply: &mut Option<oneshot::Sender<Value>>) -> Value {
        let op = req.get("op").and_then(Value::as_str).unwrap_or("");
        match op {
            "get" => {
                let names = str_list(req.get("names"));
                let names = if names.is_empty() {
                    vec![String::new()]
                } else {
                    names
                };
                if names.len() > crate::ctl::MAX_NAMES {
                    return fault_json(&Fault::new(
                        9004,
                        format!("more than {} names in one request", crate::ctl::MAX_NAMES),
                    ));
                }
                self.system_sync_for(names.iter().map(String::as_str));
                if let Err(f) = self.check_answer_size(&names) {
                    return fault_json(&f);
                }
                let mut paths = Vec::new();
                for n in &names {
                    match self.store.expand(n) {
                        Ok(p) => paths.extend(p),
                        Err(f) => return fault_json(&f),
                    }
                }
                match self.external_reads(&paths) {
                    Some(reads) => {
                        self.ctl_task(reply.take().expect("reply"), async move {
                            CtlOp::Get {
                                names,
                                results: fetch(reads).await,
                            }
                        });
                        Value::Null
                    }
                    None => self.ctl_get_answer(&names),
                }
            }
            "names" => {
                let path = req.get("path").and_then(Value::as_str).unwrap_or("");
                let nl = req
                    .get("next_level")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                self.system_sync_for([path]);
                match self.store.get_names(path, nl) {
                    Ok(v) => {
                        json!({"ok": true, "names": v.iter().map(|(n, w)| json!({"name": n, "writable": w})).collect::<Vec<_>>()})
                    }
                    Err(f) => fault_json(&f),
                }
            }
            "set" => {
                let list: Vec<(String, String, Option<String>)> = match req.get("values") {
                    Some(Value::Object(m)) => m
                        .iter()
                        .map(|(k, v)| (k.clone(), value_text(v), None))
                        .collect(),
                    _ => {
                        return json!({"ok": false, "error": "set needs \"values\": {path: value}"});
                    }
                };
                if let Some(f) = list
                    .iter()
                    .find_map(|(n, _, _)| self.device_write_refused(n))
                {
                    return fault_json(&f);
                }
                match self.set_prepare(&list, Origin::Local) {
                    Err(e) => set_error_json(&e),
                    Ok(plan) if plan.is_empty() => match self.set_commit(&list, Origin::Local) {
                        Ok(changed) => json!({"ok": true, "changed": changed}),
                        Err(e) => set_error_json(&e),
                    },
                    Ok(plan) => {
                        self.ctl_task(reply.take().expect("reply"), async move {
                            CtlOp::Set {
                                list,
                                result: plan.apply().await,
                            }
                        });
                        Value::Null
                    }
                }
            }
            "add" => {
                let obj = req.get("object").and_then(Value::as_str).unwrap_or("");
                let n = match self.store.add_object(obj, Origin::Local) {
                    Ok(n) => n,
                    Err(f) => return fault_json(&f),
                };
                match self.provider_for(obj) {
                    Some(p) => {
                        let table = obj.to_string();
                        self.ctl_task(reply.take().expect("reply"), async move {
                            let result = p.add(&table, n).await;
                            CtlOp::Add {
                                table,
                                instance: n,
                                result,
                            }
                        });
                        Value::Null
                    }
                    None => match self.add_commit(obj, n) {
                        Ok(n) => json!({"ok": true, "instance": n}),
                        Err(f) => fault_json(&f),
                    },
                }
            }
            "delete" => {
                let obj = req.get("object").and_then(Value::as_str).unwrap_or("");
                match self.provider_for(obj) {
                    Some(p) => {
                        if self.store.get_names(obj, true).is_err() {
                            return fault_json(&Fault::new(9005, format!("no object {obj}")));
                        }
                        let object = obj.to_string();
                        self.ctl_task(reply.take().expect("reply"), async move {
                            let result = p.delete(&object).await;
                            CtlOp::Delete { object, result }
                        });
                        Value::Null
                    }
                    None => self.delete_commit(obj),
                }
            }
            "getattr" => {
                let names = str_list(req.get("names"));
                if let Err(f) = self.check_answer_size(&names) {
                    return fault_json(&f);
                }
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                match self.store.get_attributes(&refs) {
                    Ok(v) => {
                        json!({"ok": true, "attributes": v.iter().map(|(n, no, al)| json!({"name": n, "notification": no, "access_list": al})).collect::<Vec<_>>()})
                    }
                    Err(f) => fault_json(&f),
                }
            }
            "setattr" => {
                let name = req
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let notification = req
                    .get("notification")
                    .and_then(Value::as_u64)
                    .map(|n| n.min(255) as u8);
                let access_list = req.get("access_list").map(|v| str_list(Some(v)));
                match self.store.set_attributes(&[AttrSet {
                    name,
                    notification,
                    access_list,
                }]) {
                    Ok(()) => match self.persist() {
                        Ok(()) => json!({"ok": true}),
                        Err(e) => fault_json(&Fault::new(9002, e.to_string())),
                    },
                    Err(f) => fault_json(&f),
                }
            }
            "changes" => {
                let ch = self.store.pending_changes();
                json!({"ok": true, "active": self.store.has_active_change(),
                    "changes": ch.iter().map(|e| json!({"name": e.name, "value": e.value})).collect::<Vec<_>>()})
            }
            "inform" => {
                let ev = req
                    .get("event")
                    .and_then(Value::as_str)
                    .unwrap_or("6 CONNECTION REQUEST")
                    .to_string();
                self.event_now(
                    crate::cwmp::events::EventCode::parse(&ev),
                    "",
                    std::time::Instant::now(),
                );
                json!({"ok": true, "queued": ev})
            }
            "du-install" | "du-update" | "du-uninstall" => {
                let arg = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let kind = match op {
                    "du-install" => "Install",
                    "du-update" => "Update",
                    _ => "Uninstall",
                };
                match self.du_local(kind, &arg("file"), &arg("uuid"), &arg("env")) {
                    Ok(job) => json!({"ok": true, "job": job}),
                    Err(e) => json!({"ok": false, "error": e}),
                }
            }
            "du-result" => match req.get("job").and_then(Value::as_u64) {
                Some(job) => match self.du_local_result(job) {
                    Some(r) => json!({"ok": true, "done": true, "result": r}),
                    None => json!({"ok": true, "done": false}),
                },
                None => json!({"ok": false, "error": "du-result needs a \"job\" number"}),
            },
            "poll" => {
                self.poll(reply.take());
                Value::Null
            }
            "status" => json!({
                "ok": true,
                "version": env!("CARGO_PKG_VERSION"),
                "parameters": self.store.param_count(),
                "pending_changes": self.store.pending_changes().len(),
                "state_file": self.state_file.path().display().to_string(),
                "state_loaded": self.state_loaded,
                "last_persist_error": self.last_persist_error,
                "providers": self.providers.len(),
                "provider_stats": self.providers.iter().map(|p| json!({
                    "prefix": p.prefix, "stats": p.stats()})).collect::<Vec<_>>(),
                "connection_requests": self.cr_count,
                "last_cr_mechanism": self.last_cr.map(|(m, _)| m),
                "last_cr_latency_us": self.last_cr.map(|(_, d)| d.as_micros() as u64),
                "sessions_ok": self.cwmp.sched.sessions_ok,
                "sessions_failed": self.cwmp.sched.sessions_failed,
                "retry_count": self.cwmp.sched.retry_count,
                "pending_events": self.cwmp.sched.queue.events.iter().map(|e| e.code.to_string()).collect::<Vec<_>>(),
                "bulkdata": self.bulk_status(),
                "lightweight_notifications": self.lwn_status(),
            }),
            "" => json!({"ok": false, "error": "request needs an \"op\""}),
            other => json!({"ok": false, "error": format!("unknown op {other:?}")}),
        }
    }

    /// Handles one command; false when the engine should stop. Also used while a session runs,
    /// so the control socket and the listeners are served during sessions.
    pub async fn handle_command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Ctl(req, reply) => {
                self.handle_ctl(req, reply);
                self.refresh_cr();
            }
            Command::ProviderNotify(i, vals) => {
                self.provider_notify(i, vals);
                self.refresh_cr();
            }
            Command::ConnectionRequest(ev) => self.on_connection_request(ev),
            Command::Status(values) => self.apply_status(values),
            Command::UpnpMapping(base) => {
                self.upnp_base = base;
                self.refresh_cr();
            }
            Command::Shutdown => {
                self.shutdown_requested = true;
                return false;
            }
        }
        true
    }

    /// Runs until the command channel closes or a Shutdown arrives.
    ///
    /// The session (`cwmp_tick`) and command handling are boxed while they run: inline, their
    /// state would make this task's allocation several times larger for its whole life, idle
    /// or not (it matters to the fleet simulator's thousands of agents).
    pub async fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut tick =
            tokio::time::interval(Duration::from_secs(self.cfg.agent.poll_interval.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.rx = Some(rx);
        self.running = true;
        self.cwmp_boot(std::time::Instant::now());
        let mut xfer_rx = self.cwmp.xfer.rx.take();
        // The kernel's reports of link, address and route changes: the model follows at once
        // (a watched address that changes raises its notification without waiting for a poll).
        let mut watcher = if self.cfg.system.enable {
            crate::system::Watcher::new()
                .map_err(|e| tracing::warn!("no netlink change reports ({e}); polling only"))
                .ok()
        } else {
            None
        };
        loop {
            let wake = self.cwmp_next_wakeup();
            // Due now (a connection request just arrived): run it without going through the
            // timer, whose millisecond granularity would add up to 1 ms to every CR → Inform.
            if wake.is_some_and(|t| t <= std::time::Instant::now()) {
                Box::pin(self.cwmp_tick(std::time::Instant::now())).await;
                if self.shutdown_requested {
                    break;
                }
                self.after_change(std::time::Instant::now());
                continue;
            }
            let sleep = sleep_opt(wake);
            let bulk_wake = self.bulk_next_wakeup();
            let lwn_wake = self.lwn_next_wakeup();
            tokio::select! {
                biased;
                cmd = recv_opt(&mut self.rx) => match cmd {
                    Some(c) => {
                        if !Box::pin(self.handle_command(c)).await {
                            break;
                        }
                    }
                    None => break,
                },
                Some((i, vals)) = recv_opt(&mut self.notify_rx) => {
                    self.provider_notify(i, vals);
                    self.refresh_cr();
                }
                Some(done) = self.tasks.next(), if !self.tasks.is_empty() => {
                    self.task_done(done, std::time::Instant::now());
                }
                _ = tick.tick() => {
                    self.poll(None);
                    // The route to the ACS (our address) may have changed: recompute the URL
                    // (no name lookup unless the last one failed).
                    if matches!(&self.acs_addrs, Some((_, a)) if a.is_empty()) {
                        self.acs_addrs = None;
                    }
                    self.cr_url_key = None;
                    self.refresh_cr();
                }
                Some(m) = async { match xfer_rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    self.transfer_msg(m, std::time::Instant::now());
                }
                _ = async { match watcher.as_mut() { Some(w) => w.changed().await, None => std::future::pending().await } } => {
                    self.system_changed();
                }
                _ = sleep_opt(bulk_wake) => self.bulk_tick(std::time::Instant::now()),
                _ = sleep_opt(lwn_wake) => self.lwn_tick(std::time::Instant::now()),
                _ = sleep => Box::pin(self.cwmp_tick(std::time::Instant::now())).await,
            }
            if self.shutdown_requested {
                break;
            }
            self.after_change(std::time::Instant::now());
        }
        if self.store.is_dirty() {
            let _ = self.persist();
        }
    }
}

fn parse_secret(s: &str) -> Option<[u8; 32]> {
    crate::util::codec::from_hex(s)?.try_into().ok()
}

/// Resolves a host name off the engine's thread (tokio's resolver runs getaddrinfo on a
/// blocking-pool thread), bounded in time; empty on failure.
async fn resolve(key: &(String, u16)) -> Vec<SocketAddr> {
    let lookup = tokio::net::lookup_host((key.0.as_str(), key.1));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(it)) => it.collect(),
        _ => Vec::new(),
    }
}

/// The local address used to reach one of `targets` (a UDP connect sends no packet).
fn route_source(targets: &[SocketAddr], v6_listener: bool) -> Option<IpAddr> {
    use std::net::UdpSocket;
    // A wildcard IPv4 listener can only be reached over IPv4.
    for t in targets.iter().filter(|t| v6_listener || t.is_ipv4()) {
        let bind: SocketAddr = if t.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        if let Ok(s) = UdpSocket::bind(bind)
            && s.connect(t).is_ok()
            && let Ok(a) = s.local_addr()
        {
            return Some(a.ip());
        }
    }
    None
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Read-only parameters the device side may not write (besides counters, live values,
/// provider values and the transports' status values): the agent's own bookkeeping and the
/// device's identity.
const DEVICE_OWN: &[&str] = &[
    "Device.ManagementServer.ConnectionRequestURL",
    "Device.ManagementServer.ParameterKey",
    "Device.ManagementServer.UDPConnectionRequestAddress",
    "Device.ManagementServer.NATDetected",
    "Device.ManagementServer.ConnReqJabberID",
    "Device.ManagementServer.AliasBasedAddressing",
    "Device.DeviceInfo.Manufacturer",
    "Device.DeviceInfo.ManufacturerOUI",
    "Device.DeviceInfo.ProductClass",
    "Device.DeviceInfo.SerialNumber",
    "Device.DeviceInfo.HardwareVersion",
    "Device.DeviceInfo.SoftwareVersion",
    "Device.RootDataModelVersion",
];

/// Generic paths (a trailing `.`: the subtree) of status values the agent computes, refused to
/// the device side whether or not a transport reported them yet.
const DEVICE_OWN_GENERIC: &[&str] = &[
    "Device.XMPP.Connection.{i}.JabberID",
    "Device.XMPP.Connection.{i}.Status",
    "Device.XMPP.Connection.{i}.LastChangeDate",
    "Device.XMPP.Connection.{i}.TLSEstablished",
    "Device.XMPP.Connection.{i}.Stats.",
    "Device.XMPP.SupportedServerConnectAlgorithms",
    "Device.ManagementServer.SupportedConnReqMethods",
    "Device.ManagementServer.HTTPCompressionSupported",
    "Device.ManagementServer.InstanceWildcardsSupported",
    "Device.ManagementServer.KickURL",
    "Device.ManagementServer.DownloadProgressURL",
    "Device.DeviceInfo.SupportedDataModel.{i}.",
];

fn set_error_json(e: &SetError) -> Value {
    json!({"ok": false, "fault": {"code": e.fault.code, "message": e.fault.reason},
    "faults": e.per_param.iter().map(|(n, f)| json!({"name": n, "code": f.code, "message": f.reason})).collect::<Vec<_>>()})
}

fn fault_json(f: &Fault) -> Value {
    json!({"ok": false, "fault": {"code": f.code, "message": f.reason}})
}
