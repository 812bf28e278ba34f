//! Small helpers shared by every layer.

pub mod fsutil;
pub mod signals;
pub mod time;
