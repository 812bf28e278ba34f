//! Reading Linux without IO: the rtnetlink messages the agent sends and the dumps it receives
//! ([`rtnl`]), and the procfs / sysfs / resolv.conf texts it reads ([`procfs`]). The agent's
//! `system` module owns the sockets and files; these parsers take bytes and never panic on
//! malformed input.

pub mod procfs;
pub mod rtnl;
