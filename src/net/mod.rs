//! Network clients of the agent.

pub mod acs;
pub mod files;
pub mod url;
