//! The TR-106 / TR-181 data model: definitions (schema), value types, the store.

pub mod fault;
pub mod mirror;
pub mod schema;
pub mod store;
pub mod types;

pub use fault::Fault;
pub use schema::Schema;
pub use store::{Origin, Store};
