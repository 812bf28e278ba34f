//! What the agent's tasks send each other: the engine's commands, the settings snapshot the
//! engine publishes to the transports, and the accepted connection request. A leaf module: the
//! engine and the transports both depend on it, and not on each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::oneshot;

/// A request to the engine.
pub enum Command {
    /// A control-socket request (JSON object) and where to send the JSON reply.
    Ctl(Value, oneshot::Sender<Value>),
    /// Values pushed by provider N.
    ProviderNotify(usize, BTreeMap<String, String>),
    /// A connection request that passed authentication and the rate limit.
    ConnectionRequest(CrEvent),
    /// Status reported by a transport (mapped address, NATDetected, JabberID, XMPP Status,
    /// counters...): written as the device's own values, so notification rules apply.
    Status(Vec<(String, String)>),
    /// The UPnP gateway forwards to our HTTP CR listener: its public base URL (empty: gone).
    UpnpMapping(String),
    /// Save what is unsaved and stop.
    Shutdown,
}

/// A snapshot of raw parameter values (passwords included) under [`SETTINGS_PREFIXES`], by
/// full path. Transports derive their configuration from it and get every change.
pub type Settings = std::sync::Arc<BTreeMap<String, String>>;

/// The subtrees published to transports.
pub const SETTINGS_PREFIXES: &[&str] = &["Device.ManagementServer.", "Device.XMPP."];

/// How a connection request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Http,
    Udp,
    Xmpp,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Http => "http",
            Mechanism::Udp => "udp",
            Mechanism::Xmpp => "xmpp",
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accepted connection request, sent to the engine.
#[derive(Clone, Debug)]
pub struct CrEvent {
    pub mechanism: Mechanism,
    /// When the request was accepted.
    pub received: Instant,
    /// Who sent it.
    pub peer: SocketAddr,
}

/// What the HTTP listener needs from the data model; the engine publishes it on a watch
/// channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrSettings {
    /// `EnableCWMP && HTTPConnectionRequestEnable`.
    pub enabled: bool,
    /// `ConnectionRequestUsername`.
    pub username: String,
    /// `ConnectionRequestPassword` (raw value).
    pub password: String,
    /// The published URL path, e.g. `/3f9a0c…`.
    pub path: String,
}
