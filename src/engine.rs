//! The engine: the one task that owns the data-model store and the persisted state.
//!
//! Everything else (control socket, providers, connection-request listeners, the CWMP session)
//! talks to it through [`Command`]s on one channel. The engine persists after every change
//! that was acknowledged, before it answers.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ConfigError};
use crate::model::persist::{Loaded, State, StateFile};
use crate::model::schema::Schema;
use crate::model::store::{AttrSet, LiveSource, ProcfsLive, SetError};
use crate::model::{Fault, Origin, Store};
use crate::provider::Provider;

/// A request to the engine.
pub enum Command {
    /// A control-socket request (JSON object) and where to send the JSON reply.
    Ctl(Value, oneshot::Sender<Value>),
    /// Values pushed by provider N.
    ProviderNotify(usize, BTreeMap<String, String>),
    /// Save what is unsaved and stop.
    Shutdown,
}

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

pub struct Engine {
    pub store: Store,
    pub state_file: StateFile,
    pub agent_state: BTreeMap<String, Value>,
    pub providers: Vec<Provider>,
    pub cfg: Config,
    notify_rx: Option<mpsc::Receiver<(usize, BTreeMap<String, String>)>>,
}

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
        Ok(Engine {
            store,
            state_file,
            agent_state: state.agent,
            providers: Vec::new(),
            cfg,
            notify_rx: None,
        })
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
    pub fn persist(&mut self) -> Result<(), String> {
        let st = State {
            model: self.store.snapshot(),
            agent: self.agent_state.clone(),
        };
        match self.state_file.save(&st) {
            Ok(()) => {
                self.store.mark_clean();
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "cannot save state to {}: {e}",
                    self.state_file.path().display()
                );
                Err(format!("state not saved: {e}"))
            }
        }
    }

    /// Refreshes the cached values of provider-backed parameters among `paths`.
    pub async fn refresh_external(&mut self, paths: &[String]) {
        let wanted = self.store.external_of(paths);
        if wanted.is_empty() {
            return;
        }
        let mut by: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (i, p) in wanted {
            by.entry(i).or_default().push(p);
        }
        for (i, ps) in by {
            let Some(prov) = self.providers.get(i).cloned() else {
                continue;
            };
            match prov.get(&ps).await {
                Ok(vals) => {
                    for (k, v) in vals {
                        if ps.contains(&k)
                            && let Err(f) = self.store.update_cached(&k, &v)
                        {
                            tracing::warn!("provider value for {k} refused: {f}");
                        }
                    }
                }
                Err(e) => tracing::warn!(provider = i, "get failed: {e}; using cached values"),
            }
        }
    }

    /// One poll of live and provider-backed parameters with notification on.
    pub async fn poll(&mut self) {
        self.store.poll_live();
        let watched: Vec<String> = self
            .store
            .watched_external()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        self.refresh_external(&watched).await;
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
                _ => tracing::warn!(provider = index, "pushed value for {k} outside its subtree"),
            }
        }
    }

    /// A SetParameterValues from any origin, with provider write-through and persistence.
    pub async fn set_values(
        &mut self,
        list: &[(String, String, Option<String>)],
        origin: Origin,
    ) -> Result<Vec<String>, SetError> {
        // Validate everything first (the store is all-or-nothing), then write providers.
        let mut faults = Vec::new();
        for (n, v, t) in list {
            if let Err(f) = self.store.check_set(n, v, t.as_deref(), origin) {
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
        let mut by: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
        for (i, p) in self.store.external_of(&names) {
            let v = list
                .iter()
                .find(|(n, _, _)| *n == p)
                .map(|(_, v, _)| v.clone());
            by.entry(i).or_default().push((p, v.unwrap_or_default()));
        }
        for (i, vals) in by {
            let Some(prov) = self.providers.get(i).cloned() else {
                continue;
            };
            if let Err(e) = prov.set(&vals).await {
                return Err(SetError {
                    fault: Fault::new(9002, format!("provider refused the change: {e}")),
                    per_param: vals
                        .iter()
                        .map(|(n, _)| (n.clone(), Fault::new(9002, e.clone())))
                        .collect(),
                });
            }
        }
        let changed = self.store.set_values(list, origin)?;
        if let Err(e) = self.persist() {
            tracing::error!("{e}");
        }
        Ok(changed)
    }

    /// AddObject with provider notification and persistence.
    pub async fn add_object(&mut self, table: &str, origin: Origin) -> Result<u32, Fault> {
        let n = self.store.add_object(table, origin)?;
        if let Some(p) = self.provider_for(table)
            && let Err(e) = p.add(table, n).await
        {
            let _ = self
                .store
                .delete_object(&format!("{table}{n}."), Origin::Internal);
            return Err(Fault::new(9002, format!("provider refused: {e}")));
        }
        self.persist().map_err(|e| Fault::new(9002, e))?;
        Ok(n)
    }

    pub async fn delete_object(&mut self, obj: &str, origin: Origin) -> Result<(), Fault> {
        // Check before telling the provider.
        if let Some(p) = self.provider_for(obj) {
            self.store
                .get_names(obj, true)
                .map_err(|_| Fault::new(9005, format!("no object {obj}")))?;
            p.delete(obj)
                .await
                .map_err(|e| Fault::new(9002, format!("provider refused: {e}")))?;
        }
        self.store.delete_object(obj, origin)?;
        self.persist().map_err(|e| Fault::new(9002, e))?;
        Ok(())
    }

    fn provider_for(&self, path: &str) -> Option<Provider> {
        let g = crate::model::schema::generic_path(path);
        self.providers
            .iter()
            .find(|p| g.starts_with(crate::model::schema::generic_path(&p.prefix).as_ref()))
            .cloned()
    }

    /// Answers one control-socket request.
    pub async fn handle_ctl(&mut self, req: Value) -> Value {
        let op = req.get("op").and_then(Value::as_str).unwrap_or("");
        match op {
            "get" => {
                let names = str_list(req.get("names"));
                let names = if names.is_empty() {
                    vec![String::new()]
                } else {
                    names
                };
                let mut paths = Vec::new();
                for n in &names {
                    match self.store.expand(n) {
                        Ok(p) => paths.extend(p),
                        Err(f) => return fault_json(&f),
                    }
                }
                self.refresh_external(&paths).await;
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                match self.store.get_values(&refs) {
                    Ok(vals) => json!({"ok": true, "values": vals.iter().map(|e| json!({
                        "name": e.name, "value": e.value, "type": e.xsi_type})).collect::<Vec<_>>()}),
                    Err(f) => fault_json(&f),
                }
            }
            "names" => {
                let path = req.get("path").and_then(Value::as_str).unwrap_or("");
                let nl = req
                    .get("next_level")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
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
                match self.set_values(&list, Origin::Local).await {
                    Ok(changed) => json!({"ok": true, "changed": changed}),
                    Err(e) => {
                        json!({"ok": false, "fault": {"code": e.fault.code, "message": e.fault.reason},
                        "faults": e.per_param.iter().map(|(n, f)| json!({"name": n, "code": f.code, "message": f.reason})).collect::<Vec<_>>()})
                    }
                }
            }
            "add" => {
                let obj = req.get("object").and_then(Value::as_str).unwrap_or("");
                match self.add_object(obj, Origin::Local).await {
                    Ok(n) => json!({"ok": true, "instance": n}),
                    Err(f) => fault_json(&f),
                }
            }
            "delete" => {
                let obj = req.get("object").and_then(Value::as_str).unwrap_or("");
                match self.delete_object(obj, Origin::Local).await {
                    Ok(()) => json!({"ok": true}),
                    Err(f) => fault_json(&f),
                }
            }
            "getattr" => {
                let names = str_list(req.get("names"));
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
                        Err(e) => json!({"ok": false, "error": e}),
                    },
                    Err(f) => fault_json(&f),
                }
            }
            "changes" => {
                let ch = self.store.pending_changes();
                json!({"ok": true, "active": self.store.has_active_change(),
                    "changes": ch.iter().map(|e| json!({"name": e.name, "value": e.value})).collect::<Vec<_>>()})
            }
            "poll" => {
                self.poll().await;
                json!({"ok": true})
            }
            "status" => json!({
                "ok": true,
                "version": env!("CARGO_PKG_VERSION"),
                "parameters": self.store.param_count(),
                "pending_changes": self.store.pending_changes().len(),
                "state_file": self.state_file.path().display().to_string(),
                "providers": self.providers.len(),
            }),
            "" => json!({"ok": false, "error": "request needs an \"op\""}),
            other => json!({"ok": false, "error": format!("unknown op {other:?}")}),
        }
    }

    /// Runs until the command channel closes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut tick =
            tokio::time::interval(Duration::from_secs(self.cfg.agent.poll_interval.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut notify_rx = self.notify_rx.take();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Ctl(req, reply)) => {
                        let v = self.handle_ctl(req).await;
                        let _ = reply.send(v);
                    }
                    Some(Command::ProviderNotify(i, vals)) => self.provider_notify(i, vals),
                    Some(Command::Shutdown) | None => break,
                },
                Some((i, vals)) = async { match notify_rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    self.provider_notify(i, vals);
                }
                _ = tick.tick() => self.poll().await,
            }
        }
        if self.store.is_dirty() {
            let _ = self.persist();
        }
    }
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

fn fault_json(f: &Fault) -> Value {
    json!({"ok": false, "fault": {"code": f.code, "message": f.reason}})
}
