//! Serving the ACS's requests against the engine's store: one request envelope in, the response
//! envelope written straight into the output buffer (GetParameterValues/Names are streamed, never
//! built twice), plus the deferred effects (reboot, factory reset, scheduled inform) the session
//! must carry out after it ends.

use super::Engine;
use super::transfer::UNKNOWN_TIME;
use crate::cwmp::soap::{
    self, AcsRequest, CpeMessage, Envelope, Fault as SoapFault, GpnWriter, GpvWriter, ParamAttr,
};
use crate::model::store::AttrSet;
use crate::model::{Fault, Origin};

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
pub const MAX_RESPONSE_ENTRIES: usize = 100_000;

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

    /// Serves one ACS request; the response envelope is appended to `out`.
    pub async fn serve_rpc(&mut self, env: &Envelope<AcsRequest>, out: &mut Vec<u8>) {
        let resp = match &env.body {
            AcsRequest::GetRPCMethods => reply(
                env,
                CpeMessage::GetRPCMethodsResponse {
                    methods: METHODS
                        .iter()
                        .filter(|m| env.ns.has_cpe_method(m))
                        .map(|m| m.to_string())
                        .collect(),
                },
            ),
            AcsRequest::GetParameterValues { names } => {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let count = match self.store.count_values_upto(&refs, MAX_RESPONSE_ENTRIES) {
                    Ok(c) => c,
                    Err(f) => {
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                        return;
                    }
                };
                if count > MAX_RESPONSE_ENTRIES {
                    soap::emit_cpe(&fault_env(env, SoapFault::new(9004)), out);
                    return;
                }
                if !self.providers.is_empty() {
                    let mut paths = Vec::new();
                    for n in names {
                        paths.extend(self.store.expand(n).unwrap_or_default());
                    }
                    // A provider that is down or hung: a fault naming it, never stale values
                    // passed off as current (docs/PROVIDERS.md).
                    if let Err(f) = self.refresh_external(&paths).await {
                        soap::emit_cpe(
                            &fault_env(env, SoapFault::with_string(f.code, f.reason)),
                            out,
                        );
                        return;
                    }
                }
                // Reserve roughly what the answer needs, so the buffer is not grown by doubling.
                out.reserve(count * 160);
                let mut w = GpvWriter::begin(out, &env.header());
                match self
                    .store
                    .for_each_value_ref(&refs, |n, v, t| w.param(n, v, t))
                {
                    Ok(_) => {
                        w.finish();
                    }
                    Err(f) => {
                        drop(w);
                        out.clear();
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                    }
                }
                return;
            }
            AcsRequest::GetParameterNames { path, next_level } => {
                match self.store.get_names(path, *next_level) {
                    Ok(list) => {
                        let mut w = GpnWriter::begin(out, &env.header());
                        for (n, wr) in &list {
                            w.param(n, *wr);
                        }
                        w.finish();
                        return;
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
                let old = match self.stage_key(parameter_key) {
                    Ok(o) => o,
                    Err(f) => {
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                        return;
                    }
                };
                match self.set_values(&items, Origin::Acs).await {
                    Ok(_) => reply(env, CpeMessage::SetParameterValuesResponse { status: 0 }),
                    Err(e) => {
                        self.unstage_key(old);
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
                }
            }
            AcsRequest::GetParameterAttributes { names } => {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                if self
                    .store
                    .count_values_upto(&refs, MAX_RESPONSE_ENTRIES)
                    .is_ok_and(|c| c > MAX_RESPONSE_ENTRIES)
                {
                    soap::emit_cpe(&fault_env(env, SoapFault::new(9004)), out);
                    return;
                }
                match self.store.get_attributes(&refs) {
                    Ok(v) => reply(
                        env,
                        CpeMessage::GetParameterAttributesResponse {
                            list: v
                                .into_iter()
                                .map(|(name, notification, access_list)| ParamAttr {
                                    name,
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
                match self.store.set_attributes(&sets) {
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
                let old = match self.stage_key(parameter_key) {
                    Ok(o) => o,
                    Err(f) => {
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                        return;
                    }
                };
                match self.add_object(object_name, Origin::Acs).await {
                    Ok(n) => reply(
                        env,
                        CpeMessage::AddObjectResponse {
                            instance_number: n,
                            status: 0,
                        },
                    ),
                    Err(f) => {
                        self.unstage_key(old);
                        fault_env(env, model_fault(&f))
                    }
                }
            }
            AcsRequest::DeleteObject {
                object_name,
                parameter_key,
            } => {
                let old = match self.stage_key(parameter_key) {
                    Ok(o) => o,
                    Err(f) => {
                        soap::emit_cpe(&fault_env(env, model_fault(&f)), out);
                        return;
                    }
                };
                match self.delete_object(object_name, Origin::Acs).await {
                    Ok(()) => reply(env, CpeMessage::DeleteObjectResponse { status: 0 }),
                    Err(f) => {
                        self.unstage_key(old);
                        fault_env(env, model_fault(&f))
                    }
                }
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
    }
}
