//! CWMP: the protocol side (codec, events, the session's state machines) from `cwmp-proto`, and
//! the agent's drivers on top of it: the session, RPC serving against the store, transfers.

pub use cwmp_proto::cwmp::{events, exchange, schedule, soap};

pub mod rpc;
pub mod session;
pub mod transfer;
