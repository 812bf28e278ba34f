//! The event queue of TR-069 §3.7.1.5: which events wait for delivery, their multiplicity, which
//! survive a failed session and which survive a restart. Pure; persisted by the engine.

use serde::{Deserialize, Serialize};

/// A TR-069 event code (Table 7). Persisted and sent as its text (`"1 BOOT"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventCode {
    Bootstrap,
    Boot,
    Periodic,
    Scheduled,
    ValueChange,
    Kicked,
    ConnectionRequest,
    TransferComplete,
    DiagnosticsComplete,
    RequestDownload,
    AutonomousTransferComplete,
    DuStateChangeComplete,
    AutonomousDuStateChangeComplete,
    MReboot,
    MScheduleInform,
    MDownload,
    MUpload,
    MScheduleDownload,
    MChangeDUState,
    /// Any other code (a vendor `X <OUI> …` event, one raised through the control socket).
    Other(String),
}

impl EventCode {
    const KNOWN: [(EventCode, &'static str); 19] = [
        (EventCode::Bootstrap, "0 BOOTSTRAP"),
        (EventCode::Boot, "1 BOOT"),
        (EventCode::Periodic, "2 PERIODIC"),
        (EventCode::Scheduled, "3 SCHEDULED"),
        (EventCode::ValueChange, "4 VALUE CHANGE"),
        (EventCode::Kicked, "5 KICKED"),
        (EventCode::ConnectionRequest, "6 CONNECTION REQUEST"),
        (EventCode::TransferComplete, "7 TRANSFER COMPLETE"),
        (EventCode::DiagnosticsComplete, "8 DIAGNOSTICS COMPLETE"),
        (EventCode::RequestDownload, "9 REQUEST DOWNLOAD"),
        (
            EventCode::AutonomousTransferComplete,
            "10 AUTONOMOUS TRANSFER COMPLETE",
        ),
        (
            EventCode::DuStateChangeComplete,
            "11 DU STATE CHANGE COMPLETE",
        ),
        (
            EventCode::AutonomousDuStateChangeComplete,
            "12 AUTONOMOUS DU STATE CHANGE COMPLETE",
        ),
        (EventCode::MReboot, "M Reboot"),
        (EventCode::MScheduleInform, "M ScheduleInform"),
        (EventCode::MDownload, "M Download"),
        (EventCode::MUpload, "M Upload"),
        (EventCode::MScheduleDownload, "M ScheduleDownload"),
        (EventCode::MChangeDUState, "M ChangeDUState"),
    ];

    /// The code as sent in the Inform.
    pub fn as_str(&self) -> &str {
        if let EventCode::Other(s) = self {
            return s;
        }
        Self::KNOWN
            .iter()
            .find(|(c, _)| c == self)
            .map(|(_, s)| *s)
            .unwrap_or("")
    }

    /// Reads a code (any text that is not a known code is kept as [`EventCode::Other`]).
    pub fn parse(s: &str) -> EventCode {
        Self::KNOWN
            .iter()
            .find(|(_, t)| *t == s)
            .map(|(c, _)| c.clone())
            .unwrap_or_else(|| EventCode::Other(s.to_string()))
    }

    /// "M …" events occur once per RPC (each with its CommandKey); all others at most once.
    pub fn is_multiple(&self) -> bool {
        self.as_str().starts_with("M ")
    }

    /// 6 CONNECTION REQUEST is discarded when a session fails (the ACS retries the CR itself).
    fn retried(&self) -> bool {
        *self != EventCode::ConnectionRequest
    }

    /// Events worth keeping across a restart (BOOT, VALUE CHANGE, CONNECTION REQUEST and
    /// DIAGNOSTICS COMPLETE are regenerated or obsolete after one).
    fn persistent(&self) -> bool {
        !matches!(
            self,
            EventCode::Boot
                | EventCode::ValueChange
                | EventCode::ConnectionRequest
                | EventCode::DiagnosticsComplete
        )
    }
}

impl std::fmt::Display for EventCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(EventCode::parse(&String::deserialize(d)?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub code: EventCode,
    pub command_key: String,
}

/// Undelivered events, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQueue {
    pub events: Vec<Event>,
}

impl EventQueue {
    /// Adds an event. `0 BOOTSTRAP` drops every other undelivered event except those it may not
    /// drop (BOOT and the method events, whose CommandKeys the ACS is waiting for).
    pub fn push(&mut self, code: EventCode, command_key: &str) {
        if code == EventCode::Bootstrap {
            self.events.retain(|e| {
                e.code == EventCode::Boot
                    || e.code.is_multiple()
                    || e.code == EventCode::TransferComplete
                    || e.code == EventCode::DuStateChangeComplete
                    || e.code == EventCode::AutonomousDuStateChangeComplete
            });
        }
        if !code.is_multiple() && self.events.iter().any(|e| e.code == code) {
            return;
        }
        self.events.push(Event {
            code,
            command_key: command_key.to_string(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn contains(&self, code: &EventCode) -> bool {
        self.events.iter().any(|e| e.code == *code)
    }

    /// After the Inform of a session was answered: everything sent is delivered.
    pub fn delivered(&mut self, sent: &[Event]) {
        self.events.retain(|e| !sent.contains(e));
    }

    /// After a failed session: drop what is not retried.
    pub fn session_failed(&mut self) {
        self.events.retain(|e| e.code.retried());
    }

    /// What to persist.
    pub fn to_persist(&self) -> EventQueue {
        EventQueue {
            events: self
                .events
                .iter()
                .filter(|e| e.code.persistent())
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(q: &EventQueue) -> Vec<&str> {
        q.events.iter().map(|e| e.code.as_str()).collect()
    }

    #[test]
    fn codes_round_trip_as_text() {
        for (c, s) in EventCode::KNOWN {
            assert_eq!(c.as_str(), s);
            assert_eq!(EventCode::parse(s), c);
        }
        let v = EventCode::parse("X 00D09E Tuned");
        assert_eq!(v, EventCode::Other("X 00D09E Tuned".into()));
        let q = EventQueue {
            events: vec![Event {
                code: EventCode::MReboot,
                command_key: "k".into(),
            }],
        };
        let json = serde_json::to_string(&q).unwrap();
        assert!(json.contains("\"M Reboot\""), "{json}");
        assert_eq!(serde_json::from_str::<EventQueue>(&json).unwrap(), q);
    }

    #[test]
    fn single_and_multiple() {
        let mut q = EventQueue::default();
        q.push(EventCode::parse("6 CONNECTION REQUEST"), "");
        q.push(EventCode::parse("6 CONNECTION REQUEST"), "");
        q.push(EventCode::parse("M Reboot"), "a");
        q.push(EventCode::parse("M Reboot"), "b");
        assert_eq!(codes(&q), ["6 CONNECTION REQUEST", "M Reboot", "M Reboot"]);
    }

    #[test]
    fn bootstrap_drops_others_and_failures_drop_cr() {
        let mut q = EventQueue::default();
        q.push(EventCode::parse("1 BOOT"), "");
        q.push(EventCode::parse("2 PERIODIC"), "");
        q.push(EventCode::parse("M Reboot"), "k");
        q.push(EventCode::parse("0 BOOTSTRAP"), "");
        assert_eq!(codes(&q), ["1 BOOT", "M Reboot", "0 BOOTSTRAP"]);
        q.push(EventCode::parse("6 CONNECTION REQUEST"), "");
        q.session_failed();
        assert!(!q.contains(&EventCode::ConnectionRequest));
        assert_eq!(codes(&q.to_persist()), ["M Reboot", "0 BOOTSTRAP"]);
        let sent = q.events.clone();
        q.push(EventCode::parse("4 VALUE CHANGE"), "");
        q.delivered(&sent);
        assert_eq!(codes(&q), ["4 VALUE CHANGE"]);
    }
}
