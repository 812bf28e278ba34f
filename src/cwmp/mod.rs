//! CWMP: the SOAP codec and, on top of it, the session.

pub mod soap;
