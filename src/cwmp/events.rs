//! The event queue of TR-069 §3.7.1.5: which events wait for delivery, their multiplicity, which
//! survive a failed session and which survive a restart. Pure; persisted by the engine.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub code: String,
    pub command_key: String,
}

/// Undelivered events, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQueue {
    pub events: Vec<Event>,
}

/// "M …" events occur once per RPC (each with its CommandKey); all others at most once.
fn is_multiple(code: &str) -> bool {
    code.starts_with("M ")
}

/// 6 CONNECTION REQUEST is discarded when a session fails (the ACS retries the CR itself).
fn retried(code: &str) -> bool {
    code != "6 CONNECTION REQUEST"
}

/// Events worth keeping across a restart (BOOT, VALUE CHANGE, CONNECTION REQUEST and
/// DIAGNOSTICS COMPLETE are regenerated or obsolete after one).
fn persistent(code: &str) -> bool {
    !matches!(
        code,
        "1 BOOT" | "4 VALUE CHANGE" | "6 CONNECTION REQUEST" | "8 DIAGNOSTICS COMPLETE"
    )
}

impl EventQueue {
    /// Adds an event. `0 BOOTSTRAP` drops every other undelivered event except those it may not
    /// drop (BOOT and the method events, whose CommandKeys the ACS is waiting for).
    pub fn push(&mut self, code: &str, command_key: &str) {
        if code == "0 BOOTSTRAP" {
            self.events.retain(|e| {
                e.code == "1 BOOT" || e.code.starts_with("M ") || e.code == "7 TRANSFER COMPLETE"
            });
        }
        if !is_multiple(code) && self.events.iter().any(|e| e.code == code) {
            return;
        }
        self.events.push(Event {
            code: code.to_string(),
            command_key: command_key.to_string(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn contains(&self, code: &str) -> bool {
        self.events.iter().any(|e| e.code == code)
    }

    /// After the Inform of a session was answered: everything sent is delivered.
    pub fn delivered(&mut self, sent: &[Event]) {
        self.events.retain(|e| !sent.contains(e));
    }

    /// After a failed session: drop what is not retried.
    pub fn session_failed(&mut self) {
        self.events.retain(|e| retried(&e.code));
    }

    /// What to persist.
    pub fn to_persist(&self) -> EventQueue {
        EventQueue {
            events: self
                .events
                .iter()
                .filter(|e| persistent(&e.code))
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
    fn single_and_multiple() {
        let mut q = EventQueue::default();
        q.push("6 CONNECTION REQUEST", "");
        q.push("6 CONNECTION REQUEST", "");
        q.push("M Reboot", "a");
        q.push("M Reboot", "b");
        assert_eq!(codes(&q), ["6 CONNECTION REQUEST", "M Reboot", "M Reboot"]);
    }

    #[test]
    fn bootstrap_drops_others_and_failures_drop_cr() {
        let mut q = EventQueue::default();
        q.push("1 BOOT", "");
        q.push("2 PERIODIC", "");
        q.push("M Reboot", "k");
        q.push("0 BOOTSTRAP", "");
        assert_eq!(codes(&q), ["1 BOOT", "M Reboot", "0 BOOTSTRAP"]);
        q.push("6 CONNECTION REQUEST", "");
        q.session_failed();
        assert!(!q.contains("6 CONNECTION REQUEST"));
        assert_eq!(codes(&q.to_persist()), ["M Reboot", "0 BOOTSTRAP"]);
        let sent = q.events.clone();
        q.push("4 VALUE CHANGE", "");
        q.delivered(&sent);
        assert_eq!(codes(&q), ["4 VALUE CHANGE"]);
    }
}
