//! cwmpd: a TR-069 (CWMP) agent for Linux set-top boxes and other CPEs.
//!
//! Layers: wire formats and pure state machines (no IO, time passed in) in `model`, `cwmp`,
//! `connreq`; drivers (tokio tasks owning sockets) in `engine`, `ctl` and the transports.
//! See docs/ARCHITECTURE.md.

pub mod agent;
#[cfg(feature = "bulkdata")]
pub mod bulkdata;
pub mod command;
pub mod config;
pub mod connreq;
pub mod ctl;
pub mod cwmp;
pub mod diag;
pub mod engine;
#[cfg(all(feature = "stun", feature = "xmpp"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod model;
pub mod net;
pub mod provider;
#[cfg(feature = "software-modules")]
pub mod swmod;
pub mod system;
pub mod util;
