//! Tables and values the device's own system fills: network interfaces, addresses, routes,
//! DNS servers, sensors. The agent reads the system (netlink, procfs, sysfs) into a [`Mirror`]
//! and [`Store::sync_mirror`](super::Store::sync_mirror) brings the store in step with it.
//!
//! Rows are named by a **key** (an interface name, an address), never by instance number: the
//! store keeps the key → instance number map (persisted), so a row keeps its number while it
//! exists, a new row gets a number never used before in its table, and a row that comes back
//! (an interface re-created) gets a new one. References between tables (`LowerLayers`,
//! `Interface`) are given by key too and resolved to the current object paths by the store.

/// A value the system reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MVal {
    Text(String),
    /// The path of the row with `key` in the top-level table `table` (e.g.
    /// `Device.Ethernet.Interface.`), without the trailing dot as TR-181 references are
    /// written (`Device.Ethernet.Interface.2`); empty when no such row exists.
    Ref {
        table: &'static str,
        key: String,
    },
    /// A comma-separated list of such references (missing rows are left out).
    RefList(Vec<(&'static str, String)>),
}

impl From<String> for MVal {
    fn from(s: String) -> MVal {
        MVal::Text(s)
    }
}

impl From<&str> for MVal {
    fn from(s: &str) -> MVal {
        MVal::Text(s.to_string())
    }
}

/// One row of a table the system fills.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MRow {
    /// Names the row in its table: unique within the table, stable while the row exists.
    pub key: String,
    /// Parameter names relative to the row (`Name`, `Stats.BytesSent`) and their values.
    pub values: Vec<(&'static str, MVal)>,
    /// Tables below the row, named relative to it (`IPv4Address.`).
    pub children: Vec<MTable>,
}

/// A table the system fills, with all its rows (rows not listed are removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MTable {
    /// A top-level table's full generic path (`Device.IP.Interface.`), or a child table's name
    /// relative to its row (`IPv4Address.`).
    pub table: &'static str,
    pub rows: Vec<MRow>,
}

/// Everything the system reports in one reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirror {
    pub tables: Vec<MTable>,
    /// Parameters of single-instance objects (`Device.Time.Status`), full paths.
    pub values: Vec<(&'static str, MVal)>,
}

/// What a sync changed in the tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Instances created (`Device.IP.Interface.3.`).
    pub added: Vec<String>,
    /// Instances removed.
    pub removed: Vec<String>,
    /// Rows or values the store refused (not in the model, bad value, table full), with why.
    pub refused: Vec<String>,
}
