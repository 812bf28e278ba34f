//! cwmp-proto: the protocol side of cwmpd, without IO. Wire formats (the CWMP SOAP codec, HTTP
//! Digest, the TR-111 UDP connection request, STUN), the TR-106 data-model store and its types,
//! the TR-069 event rules, and the sans-IO state machines the agent drives: the session's
//! message flow and schedule, the STUN client, the XMPP connection policy.
//!
//! Nothing here opens a socket, spawns a task or reads the clock on its own: time comes in as
//! an argument (the few `now_*` helpers in `util::time` are for callers). The crate's
//! dependency list has no tokio, hyper or socket crate, so the compiler keeps it that way.

pub mod connreq;
pub mod cwmp;
pub mod linux;
pub mod lwnotif;
pub mod model;
pub mod util;
