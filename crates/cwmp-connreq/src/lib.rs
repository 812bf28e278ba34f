//! The ACS side of TR-069 connection requests, as a library and as the `cwmp-connreq` tool:
//!
//! * [`http`]: an HTTP connection request answering the CPE's Digest challenge (TR-069 §3.2.2);
//! * [`udp`]: a signed TR-111 UDP connection request (TR-069 Annex G), sent from an ephemeral
//!   socket;
//! * [`xmpp`]: the `connectionRequest` IQ (TR-069 Annex K), sent from an ACS's XMPP account;
//! * [`stunsrv`]: a TR-111-aware STUN server that records each CPE's binding and sends UDP
//!   connection requests from its own STUN socket (the only way through a port-restricted NAT),
//!   with a small loopback HTTP API; run it in-process with [`stunsrv::spawn`], or block on
//!   [`stunsrv::run`].
//!
//! The senders are async (tokio); a caller without a runtime runs them on a current-thread one.

pub mod http;
mod mmsg;
pub mod resp;
mod stunfast;
pub mod stunsrv;
pub mod udp;
pub mod xmpp;
