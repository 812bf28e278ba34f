//! Built without the `bulkdata` feature: `Device.BulkData.` stays in the model (when its file
//! is installed) but collection cannot be enabled: `BulkData.Enable` and `Profile.{i}.Enable`
//! = true are refused with 9001, `Status` reads `Disabled` and no report is built.

use std::time::Instant;

use serde_json::Value;

use crate::model::Fault;

use super::Engine;

#[derive(Default)]
pub(crate) struct BulkData;

impl Engine {
    pub(crate) fn bulk_init(&mut self) {
        if self.store.secret("Device.BulkData.Enable") == Some("true") {
            tracing::warn!(
                "Device.BulkData.Enable is true but this build has no bulk data collection"
            );
        }
    }

    pub(crate) fn bulk_changed(&mut self) {}

    pub(crate) fn bulk_write_refused(&self, name: &str, value: &str) -> Option<Fault> {
        let enable = name == "Device.BulkData.Enable"
            || (name.starts_with("Device.BulkData.Profile.")
                && name.ends_with(".Enable")
                && name.matches('.').count() == 4);
        (enable && (value == "true" || value == "1"))
            .then(|| Fault::new(9001, "this build has no bulk data collection"))
    }

    pub(crate) fn bulk_add_refused(&self, _table: &str) -> Option<Fault> {
        None
    }

    pub(crate) fn bulk_after_change(&mut self, _now: Instant) {}

    pub(crate) fn bulk_next_wakeup(&self) -> Option<Instant> {
        None
    }

    pub(crate) fn bulk_tick(&mut self, _now: Instant) {}

    pub(crate) fn bulk_status(&self) -> Value {
        Value::Null
    }
}
