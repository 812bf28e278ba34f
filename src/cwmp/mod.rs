//! CWMP protocol (codec, events, the session's sans-IO state machines) from `cwmp-proto`; the
//! agent's session driver, RPC serving and transfers are part of the engine (`crate::engine`).

pub use cwmp_proto::cwmp::{events, exchange, schedule, soap};
