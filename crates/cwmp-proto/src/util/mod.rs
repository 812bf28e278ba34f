//! Encoding helpers and xsd:dateTime without a calendar crate.

pub mod codec;
pub mod time;
