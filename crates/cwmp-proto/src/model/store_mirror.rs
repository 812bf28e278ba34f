//! [`Store::sync_mirror`]: bringing the tables the system fills in step with a reading of it.

use std::collections::{BTreeMap, BTreeSet};

use super::super::mirror::{MRow, MVal, Mirror, SyncReport};
use super::super::schema::generic_path;
use super::{ObjKind, Origin, Src, Store};

/// Rows kept per table at most (a box with more processes or routes shows the first ones).
pub const MAX_MIRROR_ROWS: usize = 1024;

impl Store {
    /// Makes the store show `m`: rows are created (with an instance number never used before
    /// in their table and an `Alias` of `cpe-<key>`), updated and removed by key, then every
    /// value is written as the device's own (a change raises a notification where the ACS
    /// enabled one). With `quiet`, values are written without recording changes: the first
    /// reading after start is the state the boot Inform reports, not a change.
    ///
    /// Every listed table becomes the system's: its rows not in `m` are removed, whatever
    /// created them. A table must therefore only be listed when it was read.
    pub fn sync_mirror(&mut self, m: &Mirror, quiet: bool) -> SyncReport {
        let mut rep = SyncReport::default();
        let dirty = self.dirty;
        let mut writes: Vec<(String, &MVal)> = Vec::new();
        for t in &m.tables {
            self.sync_table(t.table.to_string(), &t.rows, &mut writes, &mut rep);
        }
        writes.extend(m.values.iter().map(|(p, v)| (p.to_string(), v)));
        for (path, v) in writes {
            let value = self.resolve_ref(v);
            let Some(node) = self.params.get(path.as_str()) else {
                rep.refused.push(format!("{path}: not in the data model"));
                continue;
            };
            let def = node.def();
            match self.schema.params[def].syntax.validate(&value) {
                Ok(v) => {
                    if self.sources[def] == Src::STORED {
                        self.sources[def] = Src::SYSTEM;
                    }
                    if quiet {
                        if let Some(n) = self.params.get_mut(path.as_str()) {
                            n.set(&self.schema, v);
                        }
                    } else {
                        self.write_value(&path, v, Origin::Local);
                    }
                }
                Err(f) => rep.refused.push(format!("{path}: {value:?}: {}", f.reason)),
            }
        }
        // Only rows of persisted tables make a state write due.
        let structural = rep
            .added
            .iter()
            .chain(&rep.removed)
            .any(|p| !self.is_volatile(p));
        self.dirty = dirty || structural;
        rep
    }

    /// Rows of tables under `generic_prefix` (`Device.DeviceInfo.ProcessStatus.Process.`)
    /// come and go too often to be kept: they, their keys and their values are left out of
    /// the snapshot (instance numbers restart after a restart).
    pub fn set_volatile(&mut self, generic_prefix: &str) {
        self.volatile.push(generic_prefix.to_string());
    }

    pub(super) fn is_volatile(&self, path: &str) -> bool {
        !self.volatile.is_empty() && {
            let g = generic_path(path);
            self.volatile.iter().any(|v| g.starts_with(v.as_str()))
        }
    }

    fn sync_table<'m>(
        &mut self,
        table: String,
        rows: &'m [MRow],
        writes: &mut Vec<(String, &'m MVal)>,
        rep: &mut SyncReport,
    ) {
        if !matches!(self.objects.get(table.as_str()), Some(o) if o.kind == ObjKind::Table) {
            rep.refused
                .push(format!("{table}: not a table of the data model"));
            return;
        }
        let mut map = self.mirror_keys.remove(&table).unwrap_or_default();
        let mut wanted: BTreeSet<&str> = BTreeSet::new();
        for r in rows {
            if wanted.len() >= MAX_MIRROR_ROWS {
                rep.refused.push(format!(
                    "{table}: more than {MAX_MIRROR_ROWS} rows; rest left out"
                ));
                break;
            }
            if !wanted.insert(r.key.as_str()) {
                rep.refused.push(format!("{table}: key {:?} twice", r.key));
            }
        }
        // Rows gone from the system, and rows of this table nobody keyed (left by an older
        // state or the configuration): the table is the system's.
        let keyed: BTreeMap<u32, String> = map.iter().map(|(k, &n)| (n, k.clone())).collect();
        for n in self.instance_numbers(&table) {
            let keep = keyed.get(&n).is_some_and(|k| wanted.contains(k.as_str()));
            if !keep {
                let inst = format!("{table}{n}.");
                self.remove_mirrored(&inst);
                rep.removed.push(inst);
            }
        }
        map.retain(|k, n| {
            wanted.contains(k.as_str())
                && self.objects.contains_key(format!("{table}{n}.").as_str())
        });
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for r in rows {
            if !wanted.contains(r.key.as_str()) || !seen.insert(r.key.as_str()) {
                continue;
            }
            let n = match map.get(&r.key) {
                Some(&n) => n,
                None => {
                    let n = self.objects.get(table.as_str()).map_or(1, |t| t.next);
                    if n == u32::MAX {
                        rep.refused
                            .push(format!("{table}: instance numbers exhausted"));
                        continue;
                    }
                    if let Err(f) = self.create_instance(&table, n, Origin::Local) {
                        rep.refused.push(format!("{table}{n}.: {}", f.reason));
                        continue;
                    }
                    self.dirty = true;
                    let alias = format!("{table}{n}.Alias");
                    let schema = &self.schema;
                    if let Some(p) = self.params.get_mut(alias.as_str())
                        && p.value(schema).is_empty()
                    {
                        p.set(schema, cpe_alias(&r.key));
                    }
                    map.insert(r.key.clone(), n);
                    rep.added.push(format!("{table}{n}."));
                    n
                }
            };
            for (name, v) in &r.values {
                writes.push((format!("{table}{n}.{name}"), v));
            }
            for c in &r.children {
                self.sync_table(format!("{table}{n}.{}", c.table), &c.rows, writes, rep);
            }
        }
        // Keys of child tables of rows that are gone.
        let prefix = table.clone();
        self.mirror_keys.retain(|t, _| {
            !t.starts_with(&prefix)
                || t.len() == prefix.len()
                || map
                    .values()
                    .any(|n| t.starts_with(&format!("{prefix}{n}.")))
        });
        self.mirror_keys.insert(table, map);
    }

    /// Removes an instance the system no longer has (minEntries does not hold the system).
    fn remove_mirrored(&mut self, inst: &str) {
        if self.delete_object(inst, Origin::Local).is_err() {
            // minEntries: the row stays but is no longer the system's.
            return;
        }
        self.dirty = true;
    }

    /// The text of a value, references resolved to the current rows.
    fn resolve_ref(&self, v: &MVal) -> String {
        match v {
            MVal::Text(s) => s.clone(),
            MVal::Ref { table, key } => self.row_path(table, key).unwrap_or_default(),
            MVal::RefList(list) => list
                .iter()
                .filter_map(|(t, k)| self.row_path(t, k))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn row_path(&self, table: &str, key: &str) -> Option<String> {
        let n = self.mirror_keys.get(table)?.get(key)?;
        Some(format!("{table}{n}"))
    }

    /// The instance path of the row with `key` in a system table (`Device.IP.Interface.3.`).
    pub fn mirror_row(&self, table: &str, key: &str) -> Option<String> {
        self.row_path(table, key).map(|p| p + ".")
    }

    /// The key of the system row at `inst` (`Device.IP.Interface.3.` → `eth0`).
    pub fn mirror_key(&self, inst: &str) -> Option<&str> {
        let body = inst.strip_suffix('.')?;
        let (table, n) = body.rsplit_once('.')?;
        let n: u32 = n.parse().ok()?;
        let map = self.mirror_keys.get(&format!("{table}."))?;
        map.iter().find(|(_, v)| **v == n).map(|(k, _)| k.as_str())
    }

    /// Whether a generic table path is filled by the system (`Device.IP.Interface.{i}.`).
    pub fn is_mirrored(&self, generic_table: &str) -> bool {
        self.mirror_keys
            .keys()
            .any(|t| generic_path(t) == generic_table.trim_end_matches("{i}."))
    }
}

/// `cpe-` and the key with characters outside TR-069's Alias rules replaced (TR-069 A.2.2.1:
/// a CPE-assigned Alias starts with `cpe-`; at most 64 characters).
fn cpe_alias(key: &str) -> String {
    let mut a = String::from("cpe-");
    for c in key.chars() {
        if a.len() >= 64 {
            break;
        }
        a.push(if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '-'
        });
    }
    a
}

#[cfg(test)]
pub(super) fn table(name: &'static str, rows: Vec<MRow>) -> super::super::mirror::MTable {
    super::super::mirror::MTable { table: name, rows }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::super::mirror::{MRow, MVal, Mirror};
    use super::super::{LiveKind, LiveSource, Snapshot, Store};
    use super::table;
    use crate::model::schema::Schema;

    const MODEL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<dm:document xmlns:dm="urn:broadband-forum-org:cwmp:datamodel-1-14" spec="urn:cwmpd:test" file="t.xml">
 <model name="Device:2.19">
  <object name="Device." access="readOnly" minEntries="1" maxEntries="1">
   <parameter name="IfNumberOfEntries" access="readOnly"><syntax><unsignedInt/></syntax></parameter>
   <parameter name="LinkNumberOfEntries" access="readOnly"><syntax><unsignedInt/></syntax></parameter>
   <parameter name="Status" access="readOnly"><syntax><string/></syntax></parameter>
  </object>
  <object name="Device.Link.{i}." access="readOnly" minEntries="0" maxEntries="unbounded"
      numEntriesParameter="LinkNumberOfEntries">
   <parameter name="Name" access="readOnly"><syntax><string/></syntax></parameter>
  </object>
  <object name="Device.If.{i}." access="readOnly" minEntries="0" maxEntries="unbounded"
      numEntriesParameter="IfNumberOfEntries">
   <parameter name="Alias" access="readWrite"><syntax><string><size maxLength="64"/></string></syntax></parameter>
   <parameter name="Name" access="readOnly"><syntax><string/></syntax></parameter>
   <parameter name="Up" access="readOnly"><syntax><boolean/></syntax></parameter>
   <parameter name="Lower" access="readOnly"><syntax><string/></syntax></parameter>
   <parameter name="AddrNumberOfEntries" access="readOnly"><syntax><unsignedInt/></syntax></parameter>
  </object>
  <object name="Device.If.{i}.Addr.{i}." access="readOnly" minEntries="0" maxEntries="unbounded"
      numEntriesParameter="AddrNumberOfEntries">
   <parameter name="IP" access="readOnly"><syntax><string/></syntax></parameter>
  </object>
 </model>
</dm:document>"#;

    struct NoLive;
    impl LiveSource for NoLive {
        fn read(&mut self, _: LiveKind) -> Option<String> {
            None
        }
    }

    fn store() -> Store {
        let mut s = Schema::default();
        s.load_str(MODEL, Path::new("t.xml")).expect("model");
        s.validate().expect("refs");
        Store::new(s, &[], Box::new(NoLive)).expect("store")
    }

    fn iface(name: &str, up: bool, addrs: &[&str]) -> MRow {
        MRow {
            key: name.to_string(),
            values: vec![
                ("Name", name.into()),
                ("Up", if up { "true" } else { "false" }.into()),
                (
                    "Lower",
                    MVal::Ref {
                        table: "Device.Link.",
                        key: name.to_string(),
                    },
                ),
            ],
            children: vec![table(
                "Addr.",
                addrs
                    .iter()
                    .map(|a| MRow {
                        key: a.to_string(),
                        values: vec![("IP", (*a).into())],
                        children: vec![],
                    })
                    .collect(),
            )],
        }
    }

    fn mirror(ifs: Vec<MRow>) -> Mirror {
        let links = ifs
            .iter()
            .map(|r| MRow {
                key: r.key.clone(),
                values: vec![("Name", r.key.as_str().into())],
                children: vec![],
            })
            .collect();
        Mirror {
            tables: vec![table("Device.Link.", links), table("Device.If.", ifs)],
            values: vec![("Device.Status", "Up".into())],
        }
    }

    #[test]
    fn rows_keep_their_numbers_and_numbers_are_never_reused() {
        let mut s = store();
        let rep = s.sync_mirror(
            &mirror(vec![
                iface("lo", true, &["127.0.0.1"]),
                iface("eth0", true, &[]),
            ]),
            true,
        );
        assert!(rep.refused.is_empty(), "{:?}", rep.refused);
        assert_eq!(
            rep.added,
            [
                "Device.Link.1.",
                "Device.Link.2.",
                "Device.If.1.",
                "Device.If.1.Addr.1.",
                "Device.If.2."
            ]
        );
        assert_eq!(s.get("Device.If.2.Name").as_deref(), Some("eth0"));
        assert_eq!(s.get("Device.If.2.Lower").as_deref(), Some("Device.Link.2"));
        assert_eq!(s.get("Device.If.1.Alias").as_deref(), Some("cpe-lo"));
        assert_eq!(s.get("Device.If.1.Addr.1.IP").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.get("Device.IfNumberOfEntries").as_deref(), Some("2"));
        assert_eq!(s.get("Device.Status").as_deref(), Some("Up"));

        // eth0 goes, eth1 comes: eth1 gets 3, lo keeps 1.
        let rep = s.sync_mirror(
            &mirror(vec![
                iface("eth1", true, &[]),
                iface("lo", true, &["127.0.0.1"]),
            ]),
            false,
        );
        assert_eq!(rep.removed, ["Device.Link.2.", "Device.If.2."]);
        assert_eq!(s.get("Device.If.1.Name").as_deref(), Some("lo"));
        assert_eq!(s.get("Device.If.3.Name").as_deref(), Some("eth1"));
        assert_eq!(s.get("Device.If.3.Lower").as_deref(), Some("Device.Link.3"));
        assert!(s.get("Device.If.2.Name").is_none());
        // eth0 comes back: a new number, not 2.
        s.sync_mirror(
            &mirror(vec![
                iface("lo", true, &[]),
                iface("eth0", true, &[]),
                iface("eth1", true, &[]),
            ]),
            false,
        );
        assert_eq!(s.instance_numbers("Device.If."), [1, 3, 4]);
        assert_eq!(s.mirror_key("Device.If.4."), Some("eth0"));
        assert_eq!(
            s.mirror_row("Device.If.", "eth1").as_deref(),
            Some("Device.If.3.")
        );
        // lo's address went: its sub-table is empty.
        assert!(s.instance_numbers("Device.If.1.Addr.").is_empty());
    }

    #[test]
    fn keys_survive_a_restart_through_the_snapshot() {
        let mut s = store();
        s.sync_mirror(
            &mirror(vec![iface("a", true, &[]), iface("b", true, &[])]),
            true,
        );
        s.sync_mirror(&mirror(vec![iface("b", true, &[])]), true);
        let snap: Snapshot =
            serde_json::from_str(&serde_json::to_string(&s.snapshot()).unwrap()).unwrap();
        assert!(s.is_dirty());
        let mut t = store();
        assert!(t.restore(&snap).is_empty());
        t.sync_mirror(
            &mirror(vec![iface("c", true, &[]), iface("b", true, &[])]),
            true,
        );
        assert_eq!(
            t.mirror_row("Device.If.", "b").as_deref(),
            Some("Device.If.2.")
        );
        assert_eq!(
            t.mirror_row("Device.If.", "c").as_deref(),
            Some("Device.If.3.")
        );
    }

    #[test]
    fn changes_notify_and_values_do_not_dirty_the_store() {
        let mut s = store();
        s.sync_mirror(&mirror(vec![iface("eth0", true, &["10.0.0.1"])]), true);
        s.mark_clean();
        s.set_attributes(&[super::super::AttrSet {
            name: "Device.If.1.Addr.1.IP".into(),
            notification: Some(2),
            access_list: None,
        }])
        .unwrap();
        s.mark_clean();
        // Same value: nothing; the row's other value changes: not watched, not dirty.
        s.sync_mirror(&mirror(vec![iface("eth0", false, &["10.0.0.1"])]), false);
        assert!(!s.has_changes());
        assert!(!s.is_dirty());
        // The address goes and another comes: the watched parameter went with its row, the new
        // row is not watched (new instances start with notification off).
        s.sync_mirror(&mirror(vec![iface("eth0", false, &["10.0.0.2"])]), false);
        assert!(!s.has_changes());
        assert!(s.is_dirty(), "the table changed");
        // A watched value changing in place is an active change.
        s.set_attributes(&[super::super::AttrSet {
            name: "Device.If.1.Up".into(),
            notification: Some(2),
            access_list: None,
        }])
        .unwrap();
        s.sync_mirror(&mirror(vec![iface("eth0", true, &["10.0.0.2"])]), false);
        assert!(s.has_active_change());
        assert_eq!(s.pending_changes()[0].name, "Device.If.1.Up");
    }

    #[test]
    fn volatile_tables_are_not_persisted() {
        let mut s = store();
        s.set_volatile("Device.If.{i}.Addr.");
        s.sync_mirror(&mirror(vec![iface("eth0", true, &["10.0.0.1"])]), true);
        s.mark_clean();
        s.sync_mirror(&mirror(vec![iface("eth0", true, &["10.0.0.2"])]), false);
        assert!(!s.is_dirty());
        let snap = s.snapshot();
        assert!(snap.keys.contains_key("Device.If."));
        assert!(!snap.keys.contains_key("Device.If.1.Addr."));
        assert!(snap.tables.keys().all(|t| !t.contains("Addr")));
    }

    #[test]
    fn bad_rows_and_values_are_reported_not_applied() {
        let mut s = store();
        let mut m = mirror(vec![iface("x", true, &[]), iface("x", true, &[])]);
        m.tables.push(table("Device.Nope.", vec![]));
        m.values.push(("Device.Missing", "1".into()));
        m.tables[1].rows[0].values.push(("Up", "maybe".into()));
        let rep = s.sync_mirror(&m, false);
        assert_eq!(s.instance_numbers("Device.If."), [1]);
        assert_eq!(rep.refused.len(), 5, "{:?}", rep.refused);
    }
}
