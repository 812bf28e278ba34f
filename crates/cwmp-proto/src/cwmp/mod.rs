//! CWMP: the SOAP codec, the event queue, and the session's sans-IO state machines.

pub mod events;
pub mod exchange;
pub mod schedule;
pub mod soap;
