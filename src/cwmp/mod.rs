//! CWMP: the SOAP codec and, on top of it, the session.

pub mod events;
pub mod exchange;
pub mod rpc;
pub mod schedule;
pub mod session;
pub mod soap;
pub mod transfer;
