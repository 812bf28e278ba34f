//! Connection requests: the listeners and clients (HTTP, UDP/STUN, XMPP, UPnP) that drive the
//! wire formats and sans-IO state machines of `cwmp-proto`.

pub use cwmp_proto::connreq::{backoff, digest, stun, stun_client, udpcr, xmpp_policy};

pub mod http;
pub mod udp;
pub mod upnp;
pub mod xmpp;
