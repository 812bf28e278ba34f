//! Built without the `lightweight-notif` feature: SetParameterAttributes refuses Notification
//! 3–6 with 9003 (as for CWMP versions before 1.4), `LightweightNotificationProtocolsSupported`
//! reads empty, and no Lightweight Notification is sent. The parameters stay in the model.

use std::time::Instant;

use serde_json::Value;

use super::Engine;
use crate::cwmp::soap::CwmpVersion;

/// Only 0–2: this build has no lightweight notifications.
pub(crate) fn notification_allowed(_v: CwmpVersion, n: u8) -> bool {
    n <= 2
}

#[derive(Default)]
pub(crate) struct Lwn;

pub struct LwnDone;

impl Engine {
    pub(crate) fn lwn_init(&mut self) {
        let _ = self.store.set_internal(
            "Device.ManagementServer.LightweightNotificationProtocolsSupported",
            "",
        );
    }

    pub(crate) fn lwn_after_change(&mut self, _now: Instant) {
        self.store.clear_lw_changes(None);
    }

    pub(crate) fn lwn_next_wakeup(&self) -> Option<Instant> {
        None
    }

    pub(crate) fn lwn_tick(&mut self, _now: Instant) {}

    pub(crate) fn lwn_done(&mut self, _d: LwnDone) {}

    pub(crate) fn lwn_status(&self) -> Value {
        Value::Null
    }
}
