//! UDP Lightweight Notifications (TR-069 Annex M, feature `lightweight-notif`): the driver of
//! `cwmp_proto::lwnotif`. The store collects the changes of parameters with Notification 3–6
//! (coalesced per parameter); this module decides when a message goes out and sends it:
//!
//! * an active lightweight change (Notification 5 or 6) sends a message soon: at once, or
//!   [`ACTIVE_FLOOR`] after the previous one (a flapping value gives at most one message per
//!   floor, carrying its latest value);
//! * passive lightweight changes (3, 4) wait for the next trigger of
//!   `LightweightNotificationTriggerInterval`, in the phase of `…TriggerTime` (wall clock), or
//!   for the next active one; an interval of 0 leaves only the latter (TR-181);
//! * every message carries all pending lightweight changes with their current values, split
//!   into datagrams of at most `lwnotif::MAX_DATAGRAM` bytes, at most [`FLUSH_BUDGET`] bytes
//!   per trigger (the rest waits for the next one, its order kept);
//! * the destination is `UDPLightweightNotificationHost` (empty: the host of
//!   `ManagementServer.URL`, TR-181) and `…Port`, resolved off the engine's thread;
//! * `LightweightNotificationProtocolsUsed` without `UDP` disables the mechanism: changes are
//!   dropped (counted), nothing is sent.
//!
//! UDP has no acknowledgement: a message whose destination cannot be resolved or whose send
//! fails is counted and not repeated (the values stay readable; the next change is sent).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cwmp_proto::lwnotif;
use serde_json::{Value, json};

use super::{Done, Engine, resolve};
use crate::cwmp::soap::CwmpVersion;
use crate::util::time::{now_unix, parse_datetime};

/// Shortest time between two messages sent because of active lightweight changes.
pub(crate) const ACTIVE_FLOOR: Duration = Duration::from_secs(1);

/// Most bytes sent per trigger (about 46 full datagrams); what is left waits.
pub(crate) const FLUSH_BUDGET: usize = 64 * 1024;

const MS: &str = "Device.ManagementServer.";

/// Whether Notification `n` may be set in a session of CWMP version `v`: 3–6 exist from
/// CWMP 1.4 (cwmp-1-4.xsd: "Lightweight Notification"); cwmp-1-2.xsd and cwmp-1-3.xsd list
/// them as "Reserved for future use", cwmp-1-0 and cwmp-1-1 allow 0–2 only. So they need a
/// session the ACS made 1.4 (UseCWMPVersion). The one place that decides it.
pub(crate) fn notification_allowed(v: CwmpVersion, n: u8) -> bool {
    n <= 2 || (v >= CwmpVersion::V1_4 && n <= cwmp_proto::model::store::MAX_NOTIFICATION)
}

/// Counters and timers of the mechanism.
#[derive(Default)]
pub(crate) struct Lwn {
    /// The store's active-lightweight generation last acted on.
    seen_active: u64,
    /// When the message an active change asked for is due.
    active_due: Option<Instant>,
    /// (interval, trigger time) the next trigger was computed from.
    trigger_key: Option<(u32, String)>,
    /// The phase chosen when TriggerTime is the Unknown Time (Unix seconds).
    local_phase: i64,
    /// The next trigger of passive lightweight changes.
    next_trigger: Option<Instant>,
    /// When the last message went out.
    last_flush: Option<Instant>,
    /// A send task is running.
    in_flight: bool,
    messages: u64,
    datagrams: u64,
    params: u64,
    discarded: u64,
    no_destination: u64,
    send_errors: u64,
    too_large: u64,
    last_error: Option<String>,
}

/// A send task's outcome (opaque outside the engine).
pub struct LwnDone {
    sent: usize,
    error: Option<String>,
}

impl Engine {
    pub(crate) fn lwn_init(&mut self) {}

    fn lwn_value(&self, name: &str) -> String {
        self.store
            .secret(&format!("{MS}{name}"))
            .unwrap_or("")
            .to_string()
    }

    fn lwn_enabled(&self) -> bool {
        self.lwn_value("LightweightNotificationProtocolsUsed")
            .split(',')
            .any(|p| p.trim() == "UDP")
    }

    /// After store changes: drop changes while disabled, schedule the active message, follow
    /// the trigger settings.
    pub(crate) fn lwn_after_change(&mut self, now: Instant) {
        if !self.lwn_enabled() {
            let n = self.store.lw_pending_count();
            if n > 0 {
                self.lwn.discarded += n as u64;
                self.store.clear_lw_changes(None);
            }
            self.lwn.seen_active = self.store.lw_active_generation();
            self.lwn.active_due = None;
            self.lwn.next_trigger = None;
            self.lwn.trigger_key = None;
            return;
        }
        let generation = self.store.lw_active_generation();
        if generation != self.lwn.seen_active {
            self.lwn.seen_active = generation;
            if self.lwn.active_due.is_none() {
                let floor = self.lwn.last_flush.map(|t| t + ACTIVE_FLOOR);
                self.lwn.active_due = Some(floor.map_or(now, |f| f.max(now)));
            }
        }
        let interval = self
            .lwn_value("LightweightNotificationTriggerInterval")
            .parse::<u32>()
            .unwrap_or(0);
        let key = (
            interval,
            self.lwn_value("LightweightNotificationTriggerTime"),
        );
        if self.lwn.trigger_key.as_ref() != Some(&key) {
            self.lwn.local_phase = now_unix();
            self.lwn.trigger_key = Some(key);
            self.lwn_arm_trigger(now);
        }
    }

    /// Computes the next trigger from the wall clock and the phase.
    fn lwn_arm_trigger(&mut self, now: Instant) {
        let Some((interval, time)) = &self.lwn.trigger_key else {
            self.lwn.next_trigger = None;
            return;
        };
        let unix = now_unix();
        // The Unknown Time (year 0001), an unparsable value, or a clock not set yet: the phase
        // is the moment the interval was set (TR-181 lets the CPE choose).
        let phase = parse_datetime(time)
            .filter(|t| *t > 0 && crate::util::time::clock_synchronised(unix))
            .unwrap_or(self.lwn.local_phase);
        self.lwn.next_trigger = lwnotif::next_trigger(unix, *interval, phase)
            .map(|t| now + Duration::from_secs((t - unix).max(1) as u64));
    }

    /// When the engine must wake for lightweight notifications.
    pub(crate) fn lwn_next_wakeup(&self) -> Option<Instant> {
        if self.lwn.in_flight {
            return None;
        }
        match (self.lwn.active_due, self.lwn.next_trigger) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        }
    }

    /// A trigger or an active message is due.
    pub(crate) fn lwn_tick(&mut self, now: Instant) {
        let mut due = false;
        if self.lwn.next_trigger.is_some_and(|t| t <= now) {
            self.lwn_arm_trigger(now);
            due = true;
        }
        if self.lwn.active_due.is_some_and(|t| t <= now) {
            self.lwn.active_due = None;
            due = true;
        }
        if due && !self.lwn.in_flight && self.store.lw_pending_count() > 0 && self.lwn_enabled() {
            self.lwn_flush(now);
        }
    }

    /// Builds the message of the pending changes and starts sending it.
    fn lwn_flush(&mut self, now: Instant) {
        let mut host = self.lwn_value("UDPLightweightNotificationHost");
        if host.trim().is_empty() {
            let url = self.lwn_value("URL");
            host = crate::net::url::Url::host_port(&url)
                .map(|(h, _)| h)
                .unwrap_or_default();
        }
        let port = self
            .lwn_value("UDPLightweightNotificationPort")
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0);
        let (host, port) = match (host.trim(), port) {
            (h, Some(p)) if !h.is_empty() => (h.to_string(), p),
            _ => {
                self.lwn.no_destination += 1;
                self.lwn.discarded += self.store.lw_pending_count() as u64;
                self.store.clear_lw_changes(None);
                return;
            }
        };
        let pending = self.store.lw_pending();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let username = self.lwn_value("Username");
        let oui = self
            .store
            .secret("Device.DeviceInfo.ManufacturerOUI")
            .unwrap_or("")
            .to_string();
        let product_class = self
            .store
            .secret("Device.DeviceInfo.ProductClass")
            .unwrap_or("")
            .to_string();
        let serial = self
            .store
            .secret("Device.DeviceInfo.SerialNumber")
            .unwrap_or("")
            .to_string();
        let header = lwnotif::Header {
            ts: now_unix(),
            username: &username,
            oui: &oui,
            product_class: &product_class,
            serial_number: &serial,
            host: &authority,
        };
        let params: Vec<(&str, &str)> = pending
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        let built = {
            let password = self.store.secret(&format!("{MS}Password")).unwrap_or("");
            lwnotif::build(
                &header,
                &params,
                password.as_bytes(),
                FLUSH_BUDGET,
                &mut || crate::util::codec::to_hex(&crate::util::codec::random_bytes::<16>()),
            )
        };
        let names: Vec<String> = pending[..built.consumed]
            .iter()
            .map(|e| e.name.clone())
            .collect();
        self.store.clear_lw_changes(Some(&names));
        self.lwn.too_large += built.too_large.len() as u64;
        self.lwn.params += (built.consumed - built.too_large.len()) as u64;
        if built.consumed < pending.len() {
            // Over the budget: the rest goes after the floor.
            self.lwn.active_due = Some(now + ACTIVE_FLOOR);
        }
        if built.datagrams.is_empty() {
            return;
        }
        self.lwn.last_flush = Some(now);
        self.lwn.messages += 1;
        self.lwn.in_flight = true;
        let datagrams = built.datagrams;
        tracing::debug!(
            "lightweight notification: {} parameters in {} datagrams to {authority}",
            names.len(),
            datagrams.len()
        );
        self.tasks.push(Box::pin(async move {
            Done::Lwn(send_all((host, port), datagrams).await)
        }));
    }

    pub(crate) fn lwn_done(&mut self, d: LwnDone) {
        self.lwn.in_flight = false;
        self.lwn.datagrams += d.sent as u64;
        if let Some(e) = d.error {
            self.lwn.send_errors += 1;
            tracing::warn!("lightweight notification not sent: {e}");
            self.lwn.last_error = Some(e);
        }
    }

    /// `ctl status` `lightweight_notifications`.
    pub(crate) fn lwn_status(&self) -> Value {
        json!({
            "enabled": self.lwn_enabled(),
            "pending": self.store.lw_pending_count(),
            "messages": self.lwn.messages,
            "datagrams": self.lwn.datagrams,
            "parameters": self.lwn.params,
            "discarded": self.lwn.discarded,
            "no_destination": self.lwn.no_destination,
            "send_errors": self.lwn.send_errors,
            "too_large": self.lwn.too_large,
            "last_error": self.lwn.last_error,
        })
    }
}

/// Resolves the destination (off the engine's thread, bounded) and sends the datagrams from
/// an ephemeral socket.
async fn send_all(dest: (String, u16), datagrams: Vec<Vec<u8>>) -> LwnDone {
    let addrs = resolve(&dest).await;
    let Some(addr) = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
    else {
        return LwnDone {
            sent: 0,
            error: Some(format!("cannot resolve {}", dest.0)),
        };
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let sock = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            return LwnDone {
                sent: 0,
                error: Some(format!("UDP socket: {e}")),
            };
        }
    };
    let mut sent = 0;
    for d in &datagrams {
        match tokio::time::timeout(Duration::from_secs(5), sock.send_to(d, addr)).await {
            Ok(Ok(_)) => sent += 1,
            Ok(Err(e)) => {
                return LwnDone {
                    sent,
                    error: Some(format!("send to {addr}: {e}")),
                };
            }
            Err(_) => {
                return LwnDone {
                    sent,
                    error: Some(format!("send to {addr} timed out")),
                };
            }
        }
    }
    LwnDone { sent, error: None }
}
