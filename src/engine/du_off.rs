//! Built without the `software-modules` feature: ChangeDUState is answered with 9000 (Method
//! not supported) and not offered by GetRPCMethods; `Device.SoftwareModules.` stays empty.

use crate::cwmp::exchange::CpeCall;
use crate::cwmp::soap::DuOperation;

use super::Engine;

/// CpeCall keys of DUStateChangeCompletes (none in this build).
pub(crate) const CALL_KEY_BASE: u64 = 1 << 48;

impl Engine {
    pub(crate) fn du_boot(&mut self) {}

    pub(crate) fn accept_change_du_state(
        &mut self,
        _command_key: &str,
        _ops: &[DuOperation],
    ) -> Result<(), u32> {
        Err(9000)
    }

    pub(crate) fn du_tick(&mut self) {}

    pub(crate) fn ensure_du_events(&mut self) {}

    pub(crate) fn pending_du_completes(&self) -> Vec<(u64, CpeCall)> {
        Vec::new()
    }

    pub(crate) fn du_delivered(&mut self, _key: u64) {}

    pub(crate) fn du_local(
        &mut self,
        _kind: &str,
        _file: &str,
        _uuid: &str,
        _env_ref: &str,
    ) -> Result<u64, String> {
        Err("built without software modules".into())
    }

    pub(crate) fn du_local_result(&self, _id: u64) -> Option<serde_json::Value> {
        None
    }

    pub(crate) fn du_writable(_name: &str) -> bool {
        false
    }

    pub(crate) fn du_after_set(&mut self, _list: &[(String, String, Option<String>)]) {}
}
