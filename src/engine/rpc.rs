//! Serving the ACS's requests against the engine's store: one request envelope in, the response
//! envelope written straight into the output buffer (GetParameterValues/Names are streamed, never
//! built twice), plus the deferred effects (reboot, factory reset, scheduled inform) the session
//! must carry out after it ends.

use super::transfer::UNKNOWN_TIME;
use super::{Engine, Fetched, SetPlan, fetch};
use crate::cwmp::soap::{
    self, AcsRequest, CpeMessage, Envelope, Fault as SoapFault, GpnWriter, GpvWriter, ParamAttr,
};
use std::collections::HashMap;

use crate::model::store::SetError;
use crate::model::store::{AliasPath, AttrSet, check_alias_form, with_aliases};
use crate::model::{Fault, Origin};
use crate::provider::{Provider, ProviderError};

/// RPCs this agent serves (GetRPCMethods answer).
pub const METHODS: &[&str] = &[
    "GetRPCMethods",
    "GetParameterNames",
    "GetParameterValues",
    "SetParameterValues",
    "GetParameterAttributes",
    "SetParameterAttributes",
    "AddObject",
    "DeleteObject",
    "Reboot",
    "FactoryReset",
    "ScheduleInform",
    "Download",
    "ChangeDUState",
    "Upload",
    "ScheduleDownload",
    "GetQueuedTransfers",
    "GetAllQueuedTransfers",
    "CancelTransfer",
];

const PARAMETER_KEY: &str = "Device.ManagementServer.ParameterKey";

/// Most entries one GetParameterValues or GetParameterAttributes answer may hold; more gives
/// 9004 Resources exceeded. Without it a request naming `Device.` 100,000 times (3 MB, within
/// the parse limits) asks for an answer of tens of gigabytes (issue #9).
pub const MAX_RESPONSE_ENTRIES: usize = 32_768;

/// Largest GetParameterValues / GetParameterNames answer, in bytes; a larger one is given up
/// while it is written and answered 9004 Resources exceeded, so one request can never make the
/// agent hold more than this (an STB shares its RAM with the video pipeline). A 10,000-parameter
/// GPV answer is about 1.5 MB.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// What must happen after the session because of a request served in it. Recorded (and
/// persisted) when the response is written, carried out after the session however it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Reboot { command_key: String },
    FactoryReset,
}

fn fault_env(env: &Envelope<AcsRequest>, f: SoapFault) -> Envelope<CpeMessage> {
    let mut e = env.header().map(|_| CpeMessage::Fault(f));
    e.hold_requests = None;
    e
}

/// What [`Engine::resolve_aliases`] / [`Engine::resolve_wildcards`] made of a request.
enum Rewrite {
    /// No wildcard: served as it is.
    None,
    /// The answer (or fault) is written.
    Answered,
    /// The request with its aliases or wildcards replaced by concrete names.
    Expanded(Box<Envelope<AcsRequest>>),
}

/// Whether a written response is a SOAP fault.
fn is_fault(out: &[u8]) -> bool {
    out.windows(16).any(|w| w == b"<soap-env:Fault>")
}

fn model_fault(f: &Fault) -> SoapFault {
    SoapFault::with_string(f.code, Fault::standard_string(f.code))
}

fn reply(env: &Envelope<AcsRequest>, m: CpeMessage) -> Envelope<CpeMessage> {
    let mut e = env.header().map(|_| m);
    e.hold_requests = None;
    e
}

impl Engine {
    /// Writes the ParameterKey into the store ahead of a change that persists on success, and
    /// gives back the old key to restore on failure (so key and change land in one write).
    /// The ACS's own bookkeeping: not notified back to it. A key the model cannot hold is a
    /// fault (9003), checked before anything is applied.
    fn stage_key(&mut self, key: &str) -> Result<Option<String>, Fault> {
        let old = self.store.secret(PARAMETER_KEY).map(str::to_string);
        if old.is_some() {
            self.store
                .set_unchecked(PARAMETER_KEY, key, Origin::Acs)
                .map_err(|f| Fault::new(9003, format!("ParameterKey: {}", f.reason)))?;
        }
        Ok(old)
    }

    fn unstage_key(&mut self, old: Option<String>) {
        if let Some(o) = old {
            let _ = self.store.set_unchecked(PARAMETER_KEY, &o, Origin::Acs);
        }
    }

    /// Serves one ACS request; the response envelope is appended to `out`. The driver's part:
    /// the pure first half ([`Engine::rpc_begin`]), the provider IO it asks for (the only
    /// await, the engine serving its commands meanwhile), the pure second half
    /// ([`Engine::rpc_end`]).
    pub async fn serve_rpc(&mut self, env: &Envelope<AcsRequest>, out: &mut Vec<u8>) {
        self.cwmp.pending_alias = None;
        let mut created = Vec::new();
        let aliased;
        let original = env;
        let env = match self.resolve_aliases(env, out, &mut created) {
            Rewrite::None => env,
            Rewrite::Answered => return,
            Rewrite::Expanded(e) => {
                aliased = e;
                &*aliased
            }
        };
        self.serve_resolved(env, out).await;
        self.cwmp.pending_alias = None;
        // A SetParameterValuesFault names the parameters as the ACS wrote them.
        if let (
            AcsRequest::SetParameterValues { list: sent, .. },
            AcsRequest::SetParameterValues { list: served, .. },
        ) = (&original.body, &env.body)
            && sent.iter().zip(served).any(|(a, b)| a.name != b.name)
            && is_fault(out)
            && let Ok(mut reply) = soap::parse_cpe_message(out)
            && let CpeMessage::Fault(f) = &mut reply.body
        {
            for pf in &mut f.set_parameter_values_faults {
                if let Some((a, _)) = sent.iter().zip(served).find(|(_, b)| b.name == pf.name) {
                    pf.name = a.name.clone();
                }
            }
            out.clear();
            soap::emit_cpe(&reply, out);
        }
        // All or nothing: instances AutoCreateInstances made for a SetParameterValues that
        // failed are removed again.
        if !created.is_empty() && is_fault(out) {
            for inst in created.iter().rev() {
                if let Err(f) = self.acs_delete_commit(inst, Origin::Acs) {
                    tracing::warn!("cannot remove the auto-created {inst}: {f}");
                }
            }
        }
    }

    async fn serve_resolved(&mut self, env: &Envelope<AcsRequest>, out: &mut Vec<u8>) {
        let expanded;
        let env = match self.resolve_wildcards(env, out) {
            Rewrite::None => env,
            Rewrite::Answered => return,
            Rewrite::Expanded(e) => {
                expanded = e;
                &*expanded
            }
        };
        if let Some((io, resume)) = self.rpc_begin(env, out) {
            let done = self.serving(io.run()).await;
            self.rpc_end(env, resume, done, out);
        }
    }

    /// Whether alias-based addressing applies in this session (CWMP 1.3+, feature cwmp14).
    fn alias_addressing(&self) -> bool {
        cfg!(feature = "cwmp14") && self.cwmp.version.has_alias_addressing()
    }

    /// The instance path → Alias map for returned names when they are to carry aliases
    /// (`InstanceMode = InstanceAlias` in a session with alias-based addressing).
    pub(crate) fn returned_aliases(&mut self) -> Option<HashMap<String, String>> {
        (self.alias_addressing()
            && self
                .store
                .get("Device.ManagementServer.InstanceMode")
                .is_some_and(|m| m == "InstanceAlias"))
        .then(|| self.store.alias_map())
    }

    /// Instance aliases (`[alias]` in place of an instance number, CWMP 1.3) in a request's
    /// paths, replaced by instance numbers. An unknown alias is 9005, except in a
    /// SetParameterValues with `AutoCreateInstances` true, which creates the instance with that
    /// Alias (`created`: removed again if the request fails); an AddObject of `Table.[alias].`
    /// creates the instance with that Alias (9007 when the table has it already or it is not
    /// a valid Alias). Outside alias-based addressing the paths are served as they are (and
    /// name nothing: 9005).
    fn resolve_aliases(
        &mut self,
        env: &Envelope<AcsRequest>,
        out: &mut Vec<u8>,
        created: &mut Vec<String>,
    ) -> Rewrite {
        let has = |n: &String| n.contains('[');
        let any = match &env.body {
            AcsRequest::GetParameterValues { names }
            | AcsRequest::GetParameterAttributes { names } => names.iter().any(has),
            AcsRequest::GetParameterNames { path, .. } => has(path),
            AcsRequest::SetParameterValues { list, .. } => list.iter().any(|p| has(&p.name)),
            AcsRequest::SetParameterAttributes { list } => list.iter().any(|a| has(&a.name)),
            AcsRequest::AddObject { object_name, .. }
            | AcsRequest::DeleteObject { object_name, .. } => has(object_name),
            _ => false,
        };
        if !any {
            return Rewrite::None;
        }
        let method = env.body.method_name();
        if !self.alias_addressing() {
            tracing::info!(
                "{method}: instance alias in a path refused: CWMP {} has no alias-based addressing{}",
                self.cwmp.version,
                if cfg!(feature = "cwmp14") {
                    ""
                } else {
                    " (not built: feature cwmp14)"
                }
            );
            return Rewrite::None;
        }
        let fail = |out: &mut Vec<u8>, f: Fault| {
            tracing::info!("{method}: {} ({})", f.reason, f.code);
            soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
            Rewrite::Answered
        };
        let mut body = env.body.clone();
        match &mut body {
            AcsRequest::GetParameterValues { names }
            | AcsRequest::GetParameterAttributes { names } => {
                for n in names.iter_mut() {
                    match self.resolve_known(n) {
                        Ok(r) => *n = r,
                        Err(f) => return fail(out, f),
                    }
                }
            }
            AcsRequest::GetParameterNames { path, .. }
            | AcsRequest::DeleteObject {
                object_name: path, ..
            } => match self.resolve_known(path) {
                Ok(r) => *path = r,
                Err(f) => return fail(out, f),
            },
            AcsRequest::SetParameterAttributes { list } => {
                for a in list.iter_mut() {
                    match self.resolve_known(&a.name) {
                        Ok(r) => a.name = r,
                        Err(f) => return fail(out, f),
                    }
                }
            }
            AcsRequest::AddObject { object_name, .. } => {
                let Some(alias) = object_name
                    .strip_suffix("].")
                    .and_then(|s| s.rsplit_once(".["))
                    .map(|(_, a)| a.to_string())
                else {
                    // Aliases only above the table: resolved like any path.
                    match self.resolve_known(object_name) {
                        Ok(r) => *object_name = r,
                        Err(f) => return fail(out, f),
                    }
                    return Rewrite::Expanded(Box::new(env.header().map(|_| body)));
                };
                // `Table.` (what precedes `[alias].`).
                let prefix = &object_name[..object_name.len() - alias.len() - 3];
                let table = match self.resolve_known(prefix) {
                    Ok(t) => t,
                    Err(f) => return fail(out, f),
                };
                if !self.store.table_has_alias(&table) {
                    let f = Fault::new(9005, format!("{table} has no Alias"));
                    return fail(out, f);
                }
                if let Err(f) = check_alias_form(&alias)
                    .map_err(|m| Fault::new(9007, m))
                    .and_then(|()| match self.store.instance_by_alias(&table, &alias) {
                        Some(_) => Err(Fault::new(
                            9007,
                            format!("Alias {alias:?} is already used in {table}"),
                        )),
                        None => Ok(()),
                    })
                {
                    return fail(out, f);
                }
                self.cwmp.pending_alias = Some(alias);
                *object_name = table;
            }
            AcsRequest::SetParameterValues { list, .. } => {
                let auto = self
                    .store
                    .get("Device.ManagementServer.AutoCreateInstances")
                    .is_some_and(|v| v == "true" || v == "1");
                for p in list.iter_mut() {
                    // Each unknown alias on the way is created (a bounded number of levels).
                    let mut tries = 0;
                    loop {
                        let r = self.store.resolve_alias_path(&p.name);
                        match r {
                            Ok(AliasPath::Resolved(r)) => {
                                p.name = r;
                                break;
                            }
                            Ok(AliasPath::Unknown { table, alias, .. }) => {
                                tries += 1;
                                let problem = if !auto {
                                    Some((9005, format!("no instance [{alias}] in {table}")))
                                } else if tries > 8 {
                                    Some((9005, format!("{}: too deep", p.name)))
                                } else if !self.store.table_has_alias(&table) {
                                    Some((9005, format!("{table} has no Alias")))
                                } else if self.provider_for(&table).is_some() {
                                    Some((9005, format!("{table} is a provider's table")))
                                } else {
                                    check_alias_form(&alias).err().map(|m| (9007, m))
                                };
                                if let Some((code, why)) = problem {
                                    tracing::info!("SetParameterValues: {why}");
                                    let mut f = SoapFault::new(9003);
                                    f.push_spv_fault(p.name.clone(), code);
                                    soap::emit_cpe(&fault_env(env, f), out);
                                    return Rewrite::Answered;
                                }
                                match self.store.add_object(&table, Origin::Acs) {
                                    Ok(n) => {
                                        let a = format!("{table}{n}.Alias");
                                        let _ = self.store.set_unchecked(&a, &alias, Origin::Acs);
                                        tracing::info!(
                                            "AutoCreateInstances: {table}{n}. with Alias {alias}"
                                        );
                                        created.push(format!("{table}{n}."));
                                    }
                                    Err(f) => {
                                        let mut sf = SoapFault::new(9003);
                                        sf.push_spv_fault(p.name.clone(), f.code);
                                        soap::emit_cpe(&fault_env(env, sf), out);
                                        return Rewrite::Answered;
                                    }
                                }
                            }
                            Err(f) => {
                                let mut sf = SoapFault::new(9003);
                                sf.push_spv_fault(p.name.clone(), f.code);
                                tracing::info!("SetParameterValues: {}", f.reason);
                                soap::emit_cpe(&fault_env(env, sf), out);
                                return Rewrite::Answered;
                            }
                        }
                    }
                }
            }
            _ => return Rewrite::None,
        }
        Rewrite::Expanded(Box::new(env.header().map(|_| body)))
    }

    /// The Alias values a SetParameterValues writes (with the `cwmp14` feature, i.e. when the
    /// CPE supports alias-based addressing, TR-106 `_AliasCWMP` is enforced whatever the
    /// session's version): the form, unique in the table, also among the request's own values;
    /// 9007 per parameter, 9003 overall.
    fn check_aliases(&self, items: &[(String, String, Option<String>)]) -> Result<(), SetError> {
        if !cfg!(feature = "cwmp14") {
            return Ok(());
        }
        let mut per_param = Vec::new();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (name, value, _) in items {
            let Some(inst) = name.strip_suffix("Alias") else {
                continue;
            };
            let Some(table) = inst
                .strip_suffix('.')
                .and_then(|s| s.rsplit_once('.'))
                .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .map(|(t, _)| &name[..t.len() + 1])
            else {
                continue;
            };
            if !self.store.table_has_alias(table) || self.store.secret(name).is_none() {
                continue;
            }
            let r = self.store.check_alias(name, value).and_then(|()| {
                if seen.contains(&(table, value.as_str())) {
                    Err(Fault::new(
                        9007,
                        format!("Alias {value:?} set twice in {table}"),
                    ))
                } else {
                    Ok(())
                }
            });
            seen.push((table, value.as_str()));
            if let Err(f) = r {
                per_param.push((name.clone(), f));
            }
        }
        if per_param.is_empty() {
            Ok(())
        } else {
            Err(SetError {
                fault: Fault::new(9003, "Invalid arguments"),
                per_param,
            })
        }
    }

    /// A path whose aliases must all name existing instances (9005 otherwise).
    fn resolve_known(&self, path: &str) -> Result<String, Fault> {
        if !path.contains('[') {
            return Ok(path.to_string());
        }
        match self.store.resolve_alias_path(path)? {
            AliasPath::Resolved(r) => Ok(r),
            AliasPath::Unknown { table, alias, .. } => Err(Fault::new(
                9005,
                format!("{path}: no instance [{alias}] in {table}"),
            )),
        }
    }

    /// Instance wildcards (`*` in place of an instance number, CWMP 1.4) in a Get RPC. In a
    /// session of an older version (or a build without the `cwmp14` feature) a wildcard name is
    /// 9005 Invalid parameter name. Otherwise GetParameterValues / Attributes are rewritten to
    /// the concrete names (then served, streamed and bounded, like any other), and
    /// GetParameterNames is answered here, one instance after the other.
    fn resolve_wildcards(&mut self, env: &Envelope<AcsRequest>, out: &mut Vec<u8>) -> Rewrite {
        let names: Vec<&str> = match &env.body {
            AcsRequest::GetParameterValues { names }
            | AcsRequest::GetParameterAttributes { names } => {
                names.iter().map(String::as_str).collect()
            }
            AcsRequest::GetParameterNames { path, .. } => vec![path.as_str()],
            _ => return Rewrite::None,
        };
        let Some(first) = names.iter().find(|n| n.contains('*')) else {
            return Rewrite::None;
        };
        let version = self.cwmp.version;
        if !cfg!(feature = "cwmp14") || !version.has_instance_wildcards() {
            tracing::info!(
                "{}: instance wildcard in {first} refused (9005): {}",
                env.body.method_name(),
                if cfg!(feature = "cwmp14") {
                    format!("CWMP {version} has none")
                } else {
                    "not built (feature cwmp14)".to_string()
                }
            );
            soap::emit_cpe(
                &fault_env(
                    env,
                    SoapFault::with_string(9005, "Invalid parameter name: instance wildcard"),
                ),
                out,
            );
            return Rewrite::Answered;
        }
        let mut concrete = Vec::new();
        for n in &names {
            let r = if n.contains('*') {
                self.store.expand_wildcards(n)
            } else {
                Ok(vec![n.to_string()])
            };
            match r {
                Ok(v) => concrete.extend(v),
                Err(f) => {
                    tracing::info!("{}: {} ({})", env.body.method_name(), f.reason, f.code);
                    soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                    return Rewrite::Answered;
                }
            }
            if concrete.len() > MAX_RESPONSE_ENTRIES {
                soap::emit_cpe(&fault_env(env, SoapFault::new(9004)), out);
                return Rewrite::Answered;
            }
        }
        match &env.body {
            AcsRequest::GetParameterValues { .. } => Rewrite::Expanded(Box::new(
                env.header()
                    .map(|_| AcsRequest::GetParameterValues { names: concrete }),
            )),
            AcsRequest::GetParameterAttributes { .. } => Rewrite::Expanded(Box::new(
                env.header()
                    .map(|_| AcsRequest::GetParameterAttributes { names: concrete }),
            )),
            AcsRequest::GetParameterNames { next_level, .. } => {
                self.system_sync_for(concrete.iter().map(String::as_str));
                let aliases = self.returned_aliases().unwrap_or_default();
                let mut w = GpnWriter::begin(out, &env.header());
                for path in &concrete {
                    match self.store.get_names(path, *next_level) {
                        Ok(list) => {
                            for (n, wr) in &list {
                                w.param(&with_aliases(n, &aliases), *wr);
                            }
                        }
                        Err(f) => {
                            drop(w);
                            out.clear();
                            soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                            return Rewrite::Answered;
                        }
                    }
                    if w.bytes() > MAX_ANSWER_BYTES {
                        drop(w);
                        out.clear();
                        soap::emit_cpe(&fault_env(env, SoapFault::new(9004)), out);
                        return Rewrite::Answered;
                    }
                }
                w.finish();
                Rewrite::Answered
            }
            _ => Rewrite::None,
        }
    }

    /// Writes a GetParameterValues answer (streamed from the store) or the fault.
    fn write_gpv(
        &mut self,
        env: &Envelope<AcsRequest>,
        names: &[String],
        count: usize,
        out: &mut Vec<u8>,
    ) {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // Reserve roughly what the answer needs (within the budget), so the buffer is not grown
        // by doubling.
        out.reserve((count * 160).min(MAX_ANSWER_BYTES));
        let aliases = self.returned_aliases().unwrap_or_default();
        let mut w = GpvWriter::begin(out, &env.header());
        let mut over = false;
        let r = self.store.for_each_value_ref(&refs, |n, v, t| {
            if !over {
                w.param(&with_aliases(n, &aliases), v, t);
                over = w.bytes() > MAX_ANSWER_BYTES;
            }
        });
        let fault = match r {
            Ok(_) if !over => {
                w.finish();
                return;
            }
            Ok(_) => SoapFault::new(9004),
            Err(f) => model_fault(&f),
        };
        drop(w);
        out.clear();
        soap::emit_cpe(&fault_env(env, fault), out);
    }

    /// The second half of a request that needed provider IO: commit or undo, then answer.
    /// Pure: no IO, no clock.
    pub(crate) fn rpc_end(
        &mut self,
        env: &Envelope<AcsRequest>,
        resume: Resume,
        done: IoDone,
        out: &mut Vec<u8>,
    ) {
        let resp = match (resume, done) {
            (Resume::Gpv { count }, IoDone::Read(r)) => {
                // A provider that is down or hung: a fault naming it, never stale values
                // passed off as current (docs/PROVIDERS.md).
                if let Err(f) = self.apply_fetched(r) {
                    fault_env(env, SoapFault::with_string(f.code, f.reason))
                } else {
                    if let AcsRequest::GetParameterValues { names } = &env.body {
                        self.write_gpv(env, names, count, out);
                    }
                    return;
                }
            }
            (
                Resume::Spv {
                    items,
                    old_key,
                    undo,
                },
                IoDone::Apply(r),
            ) => {
                let r = r.and_then(|()| {
                    let c = self.set_commit(&items, Origin::Acs);
                    if c.is_err() {
                        self.push_undo(undo);
                    }
                    c
                });
                match r {
                    Ok(_) => reply(env, CpeMessage::SetParameterValuesResponse { status: 0 }),
                    Err(e) => {
                        self.unstage_key(old_key);
                        spv_fault(env, &e)
                    }
                }
            }
            (
                Resume::Add {
                    table,
                    instance,
                    old_key,
                },
                IoDone::Provider(r),
            ) => {
                let r = match r {
                    Ok(()) => self.add_commit(&table, instance),
                    Err(e) => {
                        let _ = self
                            .store
                            .delete_object(&format!("{table}{instance}."), Origin::Internal);
                        Err(Fault::new(9002, format!("provider refused: {e}")))
                    }
                };
                self.add_answer(env, r, old_key)
            }
            (Resume::Delete { object, old_key }, IoDone::Provider(r)) => {
                let r = match r {
                    Ok(()) => self.acs_delete_commit(&object, Origin::Acs),
                    Err(e) => Err(Fault::new(9002, format!("provider refused: {e}"))),
                };
                self.delete_answer(env, r, old_key)
            }
            // A resume always comes back with the IO its first half asked for.
            _ => fault_env(env, SoapFault::new(9002)),
        };
        soap::emit_cpe(&resp, out);
    }

    fn add_answer(
        &mut self,
        env: &Envelope<AcsRequest>,
        r: Result<u32, Fault>,
        old_key: Option<String>,
    ) -> Envelope<CpeMessage> {
        match r {
            Ok(n) => reply(
                env,
                CpeMessage::AddObjectResponse {
                    instance_number: n,
                    status: 0,
                },
            ),
            Err(f) => {
                self.unstage_key(old_key);
                fault_env(env, model_fault(&f))
            }
        }
    }

    fn delete_answer(
        &mut self,
        env: &Envelope<AcsRequest>,
        r: Result<(), Fault>,
        old_key: Option<String>,
    ) -> Envelope<CpeMessage> {
        match r {
            Ok(()) => reply(env, CpeMessage::DeleteObjectResponse { status: 0 }),
            Err(f) => {
                self.unstage_key(old_key);
                fault_env(env, model_fault(&f))
            }
        }
    }

    /// The first half of serving a request: answers it into `out` at once, or gives back the
    /// provider IO it needs and what [`Engine::rpc_end`] must know to finish. Pure: no IO, no
    /// await; the store is changed only where the second half commits or undoes it.
    pub(crate) fn rpc_begin(
        &mut self,
        env: &Envelope<AcsRequest>,
        out: &mut Vec<u8>,
    ) -> Option<(RpcIo, Resume)> {
        let resp = match &env.body {
            AcsRequest::ChangeDUState {
                command_key,
                operations,
            } => match self.accept_change_du_state(command_key, operations) {
                Ok(()) => reply(env, CpeMessage::ChangeDUStateResponse),
                Err(code) => fault_env(env, SoapFault::new(code)),
            },
            AcsRequest::GetRPCMethods => reply(
                env,
                CpeMessage::GetRPCMethodsResponse {
                    methods: METHODS
                        .iter()
                        .filter(|m| env.ns.has_cpe_method(m))
                        .filter(|m| cfg!(feature = "software-modules") || **m != "ChangeDUState")
                        .map(|m| m.to_string())
                        .collect(),
                },
            ),
            AcsRequest::GetParameterValues { names } => {
                self.system_sync_for(names.iter().map(String::as_str));
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let count = match self.store.count_values_upto(&refs, MAX_RESPONSE_ENTRIES) {
                    Ok(c) => c,
                    Err(f) => {
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                        return None;
                    }
                };
                if count > MAX_RESPONSE_ENTRIES {
                    soap::emit_cpe(&fault_env(env, SoapFault::new(9004)), out);
                    return None;
                }
                if !self.providers.is_empty() {
                    let mut paths = Vec::new();
                    for n in names {
                        paths.extend(self.store.expand(n).unwrap_or_default());
                    }
                    if let Some(reads) = self.external_reads(&paths) {
                        return Some((RpcIo::Read(reads), Resume::Gpv { count }));
                    }
                }
                self.write_gpv(env, names, count, out);
                return None;
            }
            AcsRequest::GetParameterNames { path, next_level } => {
                self.system_sync_for([path.as_str()]);
                match self.store.get_names(path, *next_level) {
                    Ok(list) => {
                        let aliases = self.returned_aliases().unwrap_or_default();
                        let mut w = GpnWriter::begin(out, &env.header());
                        for (n, wr) in &list {
                            w.param(&with_aliases(n, &aliases), *wr);
                            if w.bytes() > MAX_ANSWER_BYTES {
                                drop(w);
                                out.clear();
                                soap::emit_cpe(&fault_env(env, SoapFault::new(9004)), out);
                                return None;
                            }
                        }
                        w.finish();
                        return None;
                    }
                    Err(f) => fault_env(env, model_fault(&f)),
                }
            }
            AcsRequest::SetParameterValues {
                list,
                parameter_key,
            } => {
                let items: Vec<(String, String, Option<String>)> = list
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone(), p.xsi_type.clone()))
                    .collect();
                self.system_sync_for(items.iter().map(|(n, _, _)| n.as_str()));
                if let Err(e) = self.check_aliases(&items) {
                    soap::emit_cpe(&spv_fault(env, &e), out);
                    return None;
                }
                let old_key = match self.stage_key(parameter_key) {
                    Ok(o) => o,
                    Err(f) => {
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                        return None;
                    }
                };
                let r = match self.set_prepare(&items, Origin::Acs) {
                    Ok(plan) if !plan.is_empty() => {
                        let undo = plan.undo();
                        return Some((
                            RpcIo::Apply(plan),
                            Resume::Spv {
                                items,
                                old_key,
                                undo,
                            },
                        ));
                    }
                    Ok(_) => self.set_commit(&items, Origin::Acs),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(_) => reply(env, CpeMessage::SetParameterValuesResponse { status: 0 }),
                    Err(e) => {
                        self.unstage_key(old_key);
                        spv_fault(env, &e)
                    }
                }
            }
            AcsRequest::GetParameterAttributes { names } => {
                self.system_sync_for(names.iter().map(String::as_str));
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                if self
                    .store
                    .count_values_upto(&refs, MAX_RESPONSE_ENTRIES)
                    .is_ok_and(|c| c > MAX_RESPONSE_ENTRIES)
                {
                    soap::emit_cpe(&fault_env(env, SoapFault::new(9004)), out);
                    return None;
                }
                let aliases = self.returned_aliases().unwrap_or_default();
                match self.store.get_attributes(&refs) {
                    Ok(v) => reply(
                        env,
                        CpeMessage::GetParameterAttributesResponse {
                            list: v
                                .into_iter()
                                .map(|(name, notification, access_list)| ParamAttr {
                                    name: with_aliases(&name, &aliases).into_owned(),
                                    notification,
                                    access_list,
                                })
                                .collect(),
                        },
                    ),
                    Err(f) => fault_env(env, model_fault(&f)),
                }
            }
            AcsRequest::SetParameterAttributes { list } => {
                self.system_sync_for(list.iter().map(|a| a.name.as_str()));
                let sets: Vec<AttrSet> = list
                    .iter()
                    .map(|a| AttrSet {
                        name: a.name.clone(),
                        notification: if a.notification_change {
                            Some(a.notification.unwrap_or(0))
                        } else {
                            None
                        },
                        access_list: a.access_list_change.then(|| a.access_list.clone()),
                    })
                    .collect();
                // Notification 3-6 only where the session's CWMP version has them.
                let refused = sets.iter().find_map(|a| {
                    a.notification
                        .filter(|n| !super::lwnotif::notification_allowed(self.cwmp.version, *n))
                });
                let set = match refused {
                    Some(n) => Err(Fault::new(9003, format!("Notification {n} not allowed"))),
                    None => self.store.set_attributes(&sets),
                };
                match set {
                    Ok(()) => match self.persist() {
                        Ok(()) => reply(env, CpeMessage::SetParameterAttributesResponse),
                        Err(_) => fault_env(env, SoapFault::new(9002)),
                    },
                    Err(f) => fault_env(env, model_fault(&f)),
                }
            }
            AcsRequest::AddObject {
                object_name,
                parameter_key,
            } => {
                let old_key = match self.stage_key(parameter_key) {
                    Ok(o) => o,
                    Err(f) => {
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                        return None;
                    }
                };
                let r = match self.store.add_object(object_name, Origin::Acs) {
                    Ok(instance) => match self.provider_for(object_name) {
                        Some(provider) => {
                            return Some((
                                RpcIo::Add {
                                    provider,
                                    table: object_name.clone(),
                                    instance,
                                },
                                Resume::Add {
                                    table: object_name.clone(),
                                    instance,
                                    old_key,
                                },
                            ));
                        }
                        None => self.add_commit(object_name, instance),
                    },
                    Err(f) => Err(f),
                };
                self.add_answer(env, r, old_key)
            }
            AcsRequest::DeleteObject {
                object_name,
                parameter_key,
            } => {
                let old_key = match self.stage_key(parameter_key) {
                    Ok(o) => o,
                    Err(f) => {
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                        return None;
                    }
                };
                let r = match self.provider_for(object_name) {
                    // Checked before the provider is told.
                    Some(_) if self.store.get_names(object_name, true).is_err() => {
                        Err(Fault::new(9005, format!("no object {object_name}")))
                    }
                    Some(provider) => {
                        return Some((
                            RpcIo::Delete {
                                provider,
                                object: object_name.clone(),
                            },
                            Resume::Delete {
                                object: object_name.clone(),
                                old_key,
                            },
                        ));
                    }
                    None => self.acs_delete_commit(object_name, Origin::Acs),
                };
                self.delete_answer(env, r, old_key)
            }
            AcsRequest::Reboot { command_key } => {
                self.record_effect(Effect::Reboot {
                    command_key: command_key.clone(),
                });
                reply(env, CpeMessage::RebootResponse)
            }
            AcsRequest::FactoryReset => {
                self.record_effect(Effect::FactoryReset);
                reply(env, CpeMessage::FactoryResetResponse)
            }
            AcsRequest::ScheduleInform {
                delay_seconds,
                command_key,
            } => {
                if *delay_seconds == 0 {
                    fault_env(env, SoapFault::new(9003))
                } else {
                    self.schedule_inform(*delay_seconds, command_key, std::time::Instant::now());
                    reply(env, CpeMessage::ScheduleInformResponse)
                }
            }
            // Transfers are queued (and persisted) now and run after the session.
            AcsRequest::Download(d) => match self.accept_download(d) {
                Ok(()) => reply(
                    env,
                    CpeMessage::DownloadResponse {
                        status: 1,
                        start_time: UNKNOWN_TIME.into(),
                        complete_time: UNKNOWN_TIME.into(),
                    },
                ),
                Err(code) => fault_env(env, SoapFault::new(code)),
            },
            AcsRequest::Upload(u) => match self.accept_upload(u) {
                Ok(()) => reply(
                    env,
                    CpeMessage::UploadResponse {
                        status: 1,
                        start_time: UNKNOWN_TIME.into(),
                        complete_time: UNKNOWN_TIME.into(),
                    },
                ),
                Err(code) => fault_env(env, SoapFault::new(code)),
            },
            AcsRequest::ScheduleDownload(d) => match self.accept_schedule_download(d) {
                Ok(()) => reply(env, CpeMessage::ScheduleDownloadResponse),
                Err(code) => fault_env(env, SoapFault::new(code)),
            },
            AcsRequest::CancelTransfer { command_key } => match self.cancel_transfer(command_key) {
                Ok(()) => reply(env, CpeMessage::CancelTransferResponse),
                Err(code) => fault_env(env, SoapFault::new(code)),
            },
            AcsRequest::GetQueuedTransfers => reply(
                env,
                CpeMessage::GetQueuedTransfersResponse {
                    list: self.queued_transfers(),
                },
            ),
            AcsRequest::GetAllQueuedTransfers => reply(
                env,
                CpeMessage::GetAllQueuedTransfersResponse {
                    list: self.all_queued_transfers(),
                },
            ),
        };
        soap::emit_cpe(&resp, out);
        None
    }
}

/// The SetParameterValues fault: the overall code and one entry per refused parameter.
fn spv_fault(env: &Envelope<AcsRequest>, e: &SetError) -> Envelope<CpeMessage> {
    let mut f = SoapFault::new(e.fault.code);
    for (n, pf) in &e.per_param {
        f.push_spv_fault(n.clone(), pf.code);
    }
    tracing::info!(
        "SetParameterValues refused: {}",
        e.per_param
            .iter()
            .map(|(n, f)| format!("{n}: {f}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    fault_env(env, f)
}

/// Provider IO a request needs between its two pure halves.
pub(crate) enum RpcIo {
    /// Fresh values of provider-backed parameters (GetParameterValues).
    Read(Vec<(Provider, Vec<String>)>),
    /// A SetParameterValues's writes, all or nothing across providers.
    Apply(SetPlan),
    Add {
        provider: Provider,
        table: String,
        instance: u32,
    },
    Delete {
        provider: Provider,
        object: String,
    },
}

impl RpcIo {
    /// Runs the IO. Borrows nothing from the engine, so the engine serves its commands
    /// meanwhile.
    pub(crate) async fn run(self) -> IoDone {
        match self {
            RpcIo::Read(reads) => IoDone::Read(fetch(reads).await),
            RpcIo::Apply(plan) => IoDone::Apply(plan.apply().await),
            RpcIo::Add {
                provider,
                table,
                instance,
            } => IoDone::Provider(provider.add(&table, instance).await),
            RpcIo::Delete { provider, object } => IoDone::Provider(provider.delete(&object).await),
        }
    }
}

/// What the IO gave.
pub(crate) enum IoDone {
    Read(Fetched),
    Apply(Result<(), SetError>),
    Provider(Result<(), ProviderError>),
}

/// What the second half needs to finish a request after its IO.
pub(crate) enum Resume {
    Gpv {
        count: usize,
    },
    Spv {
        items: Vec<(String, String, Option<String>)>,
        old_key: Option<String>,
        undo: SetPlan,
    },
    Add {
        table: String,
        instance: u32,
        old_key: Option<String>,
    },
    Delete {
        object: String,
        old_key: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    //! The two pure halves of serving a request, without a provider process, a socket or a
    //! clock: what the first half asks for, and what the second half commits or undoes.
    use super::*;
    use crate::config::Config;
    use crate::cwmp::soap::{AcsRequest, Envelope};

    const KEY: &str = "Device.ManagementServer.ParameterKey";
    const TABLE: &str = "Device.XMPP.Connection.";

    fn engine(dir: &std::path::Path) -> Engine {
        let text = format!(
            // The host's interfaces and processes stay out: answers are sized exactly.
            "[agent]\nstate_dir = \"{}\"\ndatamodel = [\"{}\"]\ncontrol_socket = \"\"\n\
             [system]\nenable = false\n",
            dir.join("state").display(),
            cwmp_testacs::datamodel_dir().display()
        );
        let cfg = Config::parse(&text, &dir.join("cwmpd.toml")).expect("config");
        let mut e = Engine::new(cfg).expect("engine");
        // A provider for the XMPP table whose program never runs: the halves never call it.
        e.providers.push(Provider::detached(0, TABLE));
        e
    }

    fn request(body: AcsRequest) -> Envelope<AcsRequest> {
        let mut env = Envelope::new(body);
        env.id = Some("1".into());
        env
    }

    fn instances(e: &Engine) -> usize {
        e.store.get_names(TABLE, true).map(|v| v.len()).unwrap_or(0)
    }

    #[test]
    fn add_object_asks_its_provider_then_commits_or_undoes() {
        let dir = tempdir();
        let mut e = engine(&dir);
        let before = instances(&e);
        let add = request(AcsRequest::AddObject {
            object_name: TABLE.into(),
            parameter_key: "k1".into(),
        });
        // First half: the instance is made and the provider must be told; nothing answered.
        let mut out = Vec::new();
        let (io, resume) = e.rpc_begin(&add, &mut out).expect("needs the provider");
        assert!(out.is_empty());
        let RpcIo::Add {
            table, instance, ..
        } = io
        else {
            panic!("an Add for the provider")
        };
        assert_eq!((table.as_str(), instance), (TABLE, 1));
        // The provider refuses: the instance goes, the ParameterKey is not changed, and the
        // ACS gets 9002.
        e.rpc_end(
            &add,
            resume,
            IoDone::Provider(Err(ProviderError::Failed("no".into()))),
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("<FaultCode>9002</FaultCode>"), "{text}");
        assert_eq!(instances(&e), before);
        assert_ne!(e.store.secret(KEY), Some("k1"));
        // It accepts: the instance stays, the key is the request's, the answer names it.
        let mut out = Vec::new();
        let (_, resume) = e.rpc_begin(&add, &mut out).expect("needs the provider");
        e.rpc_end(&add, resume, IoDone::Provider(Ok(())), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("AddObjectResponse"), "{text}");
        assert!(instances(&e) > before);
        assert_eq!(e.store.secret(KEY), Some("k1"));
    }

    #[test]
    fn delete_of_a_missing_instance_is_answered_without_provider_io() {
        let dir = tempdir();
        let mut e = engine(&dir);
        let del = request(AcsRequest::DeleteObject {
            object_name: format!("{TABLE}7."),
            parameter_key: "k2".into(),
        });
        let mut out = Vec::new();
        assert!(e.rpc_begin(&del, &mut out).is_none());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("<FaultCode>9005</FaultCode>"), "{text}");
        assert_ne!(e.store.secret(KEY), Some("k2"));
    }

    #[test]
    fn an_answer_larger_than_the_byte_budget_is_9004_not_a_built_copy() {
        let dir = tempdir();
        let mut e = engine(&dir);
        let name = "Device.DeviceInfo.";
        let gpv = |n: usize| {
            request(AcsRequest::GetParameterValues {
                names: vec![name.into(); n],
            })
        };
        let per = e.store.expand(name).unwrap().len();
        let mut len = |n: usize| {
            let mut out = Vec::new();
            assert!(e.rpc_begin(&gpv(n), &mut out).is_none());
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("GetParameterValuesResponse"), "{text}");
            text.len()
        };
        // Bytes per repeat of the name, and of the envelope around the list.
        let (one, two) = (len(1), len(2));
        let step = two - one;
        let base = one - step;
        // Enough repeats to pass the byte budget while staying within the entry limit.
        let n = (MAX_ANSWER_BYTES - base) / step + 2;
        assert!(n * per <= MAX_RESPONSE_ENTRIES, "{n} x {per} entries");
        let mut out = Vec::new();
        assert!(e.rpc_begin(&gpv(n), &mut out).is_none());
        let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
        assert!(text.contains("<FaultCode>9004</FaultCode>"), "{text}");
        assert!(
            text.len() < 4096,
            "only the fault is left: {} bytes",
            text.len()
        );
        // Just under the budget: answered in full.
        let n = (MAX_ANSWER_BYTES - base) / step - 1;
        assert!(e.rpc_begin(&gpv(n), &mut out).is_none());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("GetParameterValuesResponse"));
        assert_eq!(text.matches("<Name>").count(), n * per);
    }

    fn tempdir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "cwmpd-rpc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
