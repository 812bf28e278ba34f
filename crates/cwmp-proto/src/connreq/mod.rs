//! Connection requests: wire formats (Digest, UDP CR, STUN), the sans-IO STUN client and XMPP
//! policy and its wire (XML stream, SASL, SRV), and the pure policies shared by the listeners (rate limit, coalescing, retry waits).

pub mod backoff;
pub mod digest;
pub mod dns_srv;
#[cfg(feature = "stun")]
pub mod stun;
#[cfg(feature = "stun")]
pub mod stun_client;
pub mod udpcr;
pub mod xmpp_policy;
pub mod xmpp_sasl;
pub mod xmpp_wire;
