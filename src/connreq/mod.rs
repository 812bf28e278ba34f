//! Connection requests: wire formats (Digest, UDP CR, STUN) and the pure policies shared by the
//! listeners (rate limit, coalescing, retry waits).

pub mod backoff;
pub mod digest;
pub mod http;
pub mod stun;
pub mod stun_client;
pub mod udp;
pub mod udpcr;
pub mod upnp;
pub mod xmpp;
pub mod xmpp_policy;
