//! The TR-106 / TR-181 data model (store, schema, types from `cwmp-proto`) and its persistence.

pub use cwmp_proto::model::{Fault, Origin, Schema, Store, fault, mirror, schema, store, types};

pub mod persist;
