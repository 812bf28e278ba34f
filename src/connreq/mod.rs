//! Connection requests: the listeners and clients (HTTP, UDP/STUN, XMPP, UPnP) that drive the
//! wire formats and sans-IO state machines of `cwmp-proto`. UDP/STUN, UPnP and XMPP are cargo
//! features (`stun`, `upnp`, `xmpp`; all on by default); HTTP is always built.

pub use cwmp_proto::connreq::{backoff, digest, udpcr, xmpp_policy};
#[cfg(feature = "stun")]
pub use cwmp_proto::connreq::{stun, stun_client};

pub mod http;
#[cfg(feature = "stun")]
pub mod udp;
#[cfg(feature = "upnp")]
pub mod upnp;
#[cfg(feature = "xmpp")]
pub mod xmpp;
