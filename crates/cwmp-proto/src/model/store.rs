//! The data-model store: the concrete tree of objects, instances and parameter values, with the
//! CWMP semantics of GetParameterNames/Values/Attributes, SetParameterValues/Attributes,
//! AddObject and DeleteObject, and change tracking for notifications.
//!
//! The store is synchronous and owned by one task (the engine). Values that come from outside
//! (procfs, an integrator's provider program) are either read on the spot through
//! [`LiveSource`] or cached here and refreshed by the engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use super::fault::Fault;
use super::schema::{Access, ActiveNotify, ObjId, ParamDef, ParamId, Schema, generic_path};

/// Who is changing the model. Changes made by the ACS are not notified back to it
/// (TR-069 §A.3.2.1 SetParameterValues), everything else is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Acs,
    /// The device side: middleware through the control socket, a provider, the config.
    /// May write read-only parameters (they describe the device's own state).
    Local,
    /// The agent itself reporting status (ConnectionRequestURL, JabberID, ...).
    Internal,
}

/// Values computed on read rather than stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    UpTime,
    MemoryTotal,
    MemoryFree,
    CpuUsage,
    CurrentLocalTime,
}

impl LiveKind {
    pub fn for_path(generic: &str) -> Option<LiveKind> {
        Some(match generic {
            "Device.DeviceInfo.UpTime" => LiveKind::UpTime,
            "Device.DeviceInfo.MemoryStatus.Total" => LiveKind::MemoryTotal,
            "Device.DeviceInfo.MemoryStatus.Free" => LiveKind::MemoryFree,
            "Device.DeviceInfo.ProcessStatus.CPUUsage" => LiveKind::CpuUsage,
            "Device.Time.CurrentLocalTime" => LiveKind::CurrentLocalTime,
            _ => return None,
        })
    }
}

/// Reads live values. The default implementation reads procfs; tests inject their own.
pub trait LiveSource {
    fn read(&mut self, kind: LiveKind) -> Option<String>;
}

/// Where a parameter's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stored,
    Live(LiveKind),
    /// Cached here; owned by external provider number N (the engine refreshes the cache).
    External(usize),
    /// Written by the agent from the device's own system (netlink, procfs, sysfs) through
    /// [`Store::sync_mirror`]; never persisted (the system is the record).
    System,
}

/// [`Source`] in two bytes: a store keeps one for every parameter definition of the schema.
/// 0 stored, 1 system, 2–6 live, 7 and up external provider (index + 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Src(u16);

const LIVE_KINDS: [LiveKind; 5] = [
    LiveKind::UpTime,
    LiveKind::MemoryTotal,
    LiveKind::MemoryFree,
    LiveKind::CpuUsage,
    LiveKind::CurrentLocalTime,
];

impl Src {
    const STORED: Src = Src(0);
    const SYSTEM: Src = Src(1);
    const EXTERNAL: u16 = 7;

    /// `None` for a provider index too large to encode.
    fn pack(s: Source) -> Option<Src> {
        Some(Src(match s {
            Source::Stored => 0,
            Source::System => 1,
            Source::Live(k) => 2 + LIVE_KINDS.iter().position(|&x| x == k)? as u16,
            Source::External(i) => u16::try_from(i).ok()?.checked_add(Self::EXTERNAL)?,
        }))
    }

    fn get(self) -> Source {
        match self.0 {
            0 => Source::Stored,
            1 => Source::System,
            n if n < Self::EXTERNAL => Source::Live(LIVE_KINDS[usize::from(n - 2)]),
            n => Source::External(usize::from(n - Self::EXTERNAL)),
        }
    }
}

/// A concrete path as a key of the store's maps. Objects and parameters outside any table
/// share their schema definition's path (no copy per store); instance paths own theirs.
type Key = Arc<str>;

/// The entries of `map` from `start` on, in path order.
fn from<'a, V>(
    map: &'a BTreeMap<Key, V>,
    start: &str,
) -> std::collections::btree_map::Range<'a, Key, V> {
    map.range::<str, _>((Bound::Included(start), Bound::Unbounded))
}

/// The entries of `map` whose path starts with `prefix`, in path order.
fn under<'a, V>(
    map: &'a BTreeMap<Key, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a Key, &'a V)> {
    from(map, prefix).take_while(move |(k, _)| k.starts_with(prefix))
}

/// Rebuilds `map` with full nodes. `append` of a map into a non-empty one builds the result
/// from the merged entries, which are in order (no sort, unlike `collect`, and less code).
fn refill<V>(map: &mut BTreeMap<Key, V>) {
    let Some((k, v)) = map.pop_first() else {
        return;
    };
    let mut full = BTreeMap::new();
    full.insert(k, v);
    full.append(map);
    *map = full;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjKind {
    Single,
    Table,
    Instance,
}

#[derive(Debug, Clone)]
struct ObjNode {
    def: u32,
    kind: ObjKind,
    /// A table's next instance number (unused for other objects).
    next: u32,
}

impl ObjNode {
    fn def(&self) -> ObjId {
        self.def as ObjId
    }
}

#[derive(Debug, Clone)]
struct ParamNode {
    def: u32,
    notification: u8,
    /// AccessList contains "Subscriber" (its only defined value), so one flag holds it.
    subscriber: bool,
    /// `None`: the definition's default ([`default_value`]), which most parameters keep.
    value: Option<Box<str>>,
}

/// What a parameter holds until something writes it: the schema's default, or the zero value
/// of its type.
fn default_value(def: &ParamDef) -> &str {
    def.default
        .as_deref()
        .unwrap_or_else(|| def.syntax.zero_value())
}

impl ParamNode {
    fn def(&self) -> ParamId {
        self.def as ParamId
    }

    fn value<'a>(&'a self, schema: &'a Schema) -> &'a str {
        match &self.value {
            Some(v) => v,
            None => default_value(&schema.params[self.def()]),
        }
    }

    /// Stores `v`; false when it is the value already held.
    fn set(&mut self, schema: &Schema, v: String) -> bool {
        if self.value(schema) == v {
            return false;
        }
        self.value = if v == default_value(&schema.params[self.def()]) {
            None
        } else {
            Some(v.into_boxed_str())
        };
        true
    }
}

/// One entry of a GetParameterValues answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueEntry {
    pub name: String,
    pub value: String,
    pub xsi_type: &'static str,
}

/// A failed SetParameterValues: every failing parameter with its fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetError {
    /// The overall fault: 9003 when there are per-parameter faults, or e.g. 9003 for duplicates.
    pub fault: Fault,
    pub per_param: Vec<(String, Fault)>,
}

/// One SetParameterAttributes entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrSet {
    pub name: String,
    pub notification: Option<u8>,
    pub access_list: Option<Vec<String>>,
}

/// What is persisted: only what differs from the factory state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Table path (`Device.XMPP.Connection.`) → (next instance number, live instances).
    pub tables: BTreeMap<String, (u32, Vec<u32>)>,
    /// Concrete parameter path → value, for values that differ from the factory value.
    pub values: BTreeMap<String, String>,
    /// Concrete parameter path → (notification, access list), where not the default.
    pub attrs: BTreeMap<String, (u8, Vec<String>)>,
    /// Tables the system fills (concrete table path) → row key → instance number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, BTreeMap<String, u32>>,
}

pub struct Store {
    /// The definitions, shared by every store built from them (the fleet simulator's agents).
    schema: std::sync::Arc<Schema>,
    /// By parameter definition.
    sources: Vec<Src>,
    objects: BTreeMap<Key, ObjNode>,
    params: BTreeMap<Key, ParamNode>,
    /// Factory values given by configuration, by concrete path.
    factory_values: HashMap<String, String>,
    /// Factory instance sets, by table path.
    factory_tables: BTreeMap<Key, (u32, Vec<u32>)>,
    /// Parameters whose value changed since the last Inform and whose notification is on.
    changed: BTreeSet<Key>,
    /// True when one of `changed` has active notification.
    active_change: bool,
    /// Counts active-notification changes, so a caller can tell a new one from an old one.
    active_generation: u64,
    /// Parameters with lightweight notification (3–6) whose value changed since their last
    /// Lightweight Notification message (TR-069 Annex M), coalesced per parameter.
    lw_changed: BTreeSet<Key>,
    /// Counts active-lightweight (5, 6) changes: each asks for a message soon.
    lw_active_generation: u64,
    dirty: bool,
    live: Box<dyn LiveSource>,
    /// Tables the system fills: concrete table path → row key → instance number.
    mirror_keys: BTreeMap<String, BTreeMap<String, u32>>,
    /// Generic table paths whose rows are not persisted (processes, diagnostics results).
    volatile: Vec<String>,
}

/// Instances allowed in a table whose schema says `maxEntries="unbounded"`.
pub const MAX_ENTRIES_UNBOUNDED: u32 = 256;

/// Highest Notification attribute value (cwmp-1-4.xsd: 0–6; earlier versions: 0–2).
pub const MAX_NOTIFICATION: u8 = 6;

/// Whether Notification `n` puts a changed value in the next Inform (1, 2, 4, 6).
pub fn notify_in_inform(n: u8) -> bool {
    matches!(n, 1 | 2 | 4 | 6)
}

/// Whether Notification `n` puts a changed value in the next Lightweight Notification (3–6).
pub fn notify_lightweight(n: u8) -> bool {
    matches!(n, 3..=6)
}

/// Parameter paths are ≤256 characters (cwmp-1-2.xsd).
pub const MAX_PATH_LEN: usize = 256;

impl Store {
    /// Builds the factory state: every single-instance object of the schema, plus the
    /// instances named by `factory` paths, with their values.
    pub fn new(
        schema: impl Into<std::sync::Arc<Schema>>,
        factory: &[(String, String)],
        live: Box<dyn LiveSource>,
    ) -> Result<Store, String> {
        let schema: std::sync::Arc<Schema> = schema.into();
        let sources = schema
            .params
            .iter()
            .map(|p| match LiveKind::for_path(&p.path) {
                Some(k) => Src::pack(Source::Live(k)).expect("a live kind"),
                None => Src::STORED,
            })
            .collect();
        let root = schema
            .object("Device.")
            .ok_or("the model has no Device. object")?;
        let mut s = Store {
            schema,
            sources,
            objects: BTreeMap::new(),
            params: BTreeMap::new(),
            factory_values: HashMap::new(),
            factory_tables: BTreeMap::new(),
            changed: BTreeSet::new(),
            lw_changed: BTreeSet::new(),
            lw_active_generation: 0,
            active_change: false,
            active_generation: 0,
            dirty: false,
            live,
            mirror_keys: BTreeMap::new(),
            volatile: Vec::new(),
        };
        s.instantiate(root, "Device.", ObjKind::Single);
        for (path, value) in factory {
            s.apply_factory(path, value)?;
        }
        s.factory_tables = s
            .objects
            .iter()
            .filter(|(_, o)| o.kind == ObjKind::Table)
            .map(|(t, o)| (t.clone(), (o.next, s.instance_numbers(t))))
            .collect();
        s.changed.clear();
        s.lw_changed.clear();
        s.active_change = false;
        s.dirty = false;
        // Rebuilt from their sorted entries, the maps' nodes are full: about a third less
        // memory than the half-full nodes that inserting one by one leaves.
        refill(&mut s.params);
        refill(&mut s.objects);
        Ok(s)
    }

    fn apply_factory(&mut self, path: &str, value: &str) -> Result<(), String> {
        let generic = generic_path(path).into_owned();
        let pid = self
            .schema
            .param(&generic)
            .ok_or_else(|| format!("{path} is not a parameter of the data model"))?;
        // Create the instances the path names.
        let segs: Vec<&str> = path.split('.').collect();
        let mut prefix = String::new();
        for (i, seg) in segs.iter().enumerate().take(segs.len() - 1) {
            if i > 0 && seg.bytes().all(|b| b.is_ascii_digit()) {
                let n: u32 = seg
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("{path}: instance numbers start at 1"))?;
                let inst = format!("{prefix}{seg}.");
                if !self.objects.contains_key(inst.as_str()) {
                    if !matches!(self.objects.get(prefix.as_str()), Some(o) if o.kind == ObjKind::Table)
                    {
                        return Err(format!("{path}: {prefix} is not a table"));
                    }
                    self.create_instance(&prefix, n, Origin::Internal)
                        .map_err(|f| format!("{path}: {}", f.reason))?;
                }
            }
            prefix.push_str(seg);
            prefix.push('.');
        }
        let syntax = &self.schema.params[pid].syntax;
        let v = syntax
            .validate(value)
            .map_err(|f| format!("{path}: value {value:?} is invalid: {}", f.reason))?;
        match self.params.get_mut(path) {
            Some(node) => {
                node.set(&self.schema, v.clone());
            }
            None => return Err(format!("{path} does not exist")),
        }
        self.factory_values.insert(path.to_string(), v);
        Ok(())
    }

    /// Creates object `path` of definition `def` and everything below it that exists
    /// without instances.
    fn instantiate(&mut self, def: ObjId, path: &str, kind: ObjKind) {
        let schema = std::sync::Arc::clone(&self.schema);
        let o = &schema.objects[def];
        // Outside any table the concrete paths are the schema's own: share them.
        let generic = *o.path == *path;
        for &pid in &o.params {
            let p = &schema.params[pid];
            let notification = match p.active_notify {
                ActiveNotify::ForceEnabled | ActiveNotify::ForceDefaultEnabled => 2,
                _ => 0,
            };
            let key = if generic {
                p.path.clone()
            } else {
                Key::from(format!("{path}{}", p.name))
            };
            self.params.insert(
                key,
                ParamNode {
                    def: pid as u32,
                    value: None,
                    notification,
                    subscriber: false,
                },
            );
        }
        let key = if generic {
            o.path.clone()
        } else {
            Key::from(path)
        };
        let node = ObjNode {
            def: def as u32,
            kind,
            next: 1,
        };
        self.objects.insert(key, node);
        for &c in &o.child_objs {
            let cdef = &schema.objects[c];
            let local = last_segment(&cdef.path);
            let child = format!("{path}{local}.");
            if cdef.multi {
                let node = ObjNode {
                    def: c as u32,
                    kind: ObjKind::Table,
                    next: 1,
                };
                self.objects.insert(Key::from(child), node);
            } else {
                self.instantiate(c, &child, ObjKind::Single);
            }
        }
    }

    fn create_instance(&mut self, table: &str, n: u32, origin: Origin) -> Result<(), Fault> {
        let node = self
            .objects
            .get(table)
            .filter(|o| o.kind == ObjKind::Table)
            .ok_or_else(|| Fault::new(9005, "not a multi-instance object"))?
            .clone();
        let def = &self.schema.objects[node.def()];
        if let Some(max) = def.max_entries
            && self.instance_numbers(table).len() >= max as usize
        {
            return Err(Fault::new(
                9004,
                format!("{table} has its maximum of {max} entries"),
            ));
        }
        let inst = format!("{table}{n}.");
        if self.objects.contains_key(inst.as_str()) {
            return Err(Fault::new(9002, "instance exists"));
        }
        self.instantiate(node.def(), &inst, ObjKind::Instance);
        if let Some(t) = self.objects.get_mut(table)
            && t.next <= n
        {
            t.next = n.saturating_add(1);
        }
        self.update_count(table, origin);
        Ok(())
    }

    /// Instance numbers of a table, ascending.
    pub fn instance_numbers(&self, table: &str) -> Vec<u32> {
        let mut v: Vec<u32> = under(&self.objects, table)
            .filter(|(_, o)| o.kind == ObjKind::Instance)
            .filter_map(|(k, _)| {
                let rest = &k[table.len()..];
                let seg = rest.strip_suffix('.')?;
                if seg.contains('.') {
                    None
                } else {
                    seg.parse().ok()
                }
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Updates the table's `…NumberOfEntries`; `origin` is the one of the change that added or
    /// removed the instance (an ACS's own AddObject is not notified back to it).
    fn update_count(&mut self, table: &str, origin: Origin) {
        let Some(node) = self.objects.get(table) else {
            return;
        };
        let def = &self.schema.objects[node.def()];
        let Some(name) = def.num_entries_param.clone() else {
            return;
        };
        let parent = &table[..table[..table.len() - 1].rfind('.').map_or(0, |i| i + 1)];
        let count = self.instance_numbers(table).len().to_string();
        let path = format!("{parent}{name}");
        self.write_value(&path, count, origin);
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Marks parameters under `prefix` (generic or concrete prefix, e.g. a subtree) as served
    /// by external provider `index`.
    /// Provider indexes above 65,528 are not supported (nothing is marked).
    pub fn set_external_source(&mut self, generic_prefix: &str, index: usize) -> usize {
        let Some(src) = Src::pack(Source::External(index)) else {
            return 0;
        };
        let mut n = 0;
        for (i, p) in self.schema.params.iter().enumerate() {
            if p.path.starts_with(generic_prefix) {
                self.sources[i] = src;
                n += 1;
            }
        }
        n
    }

    pub fn source(&self, path: &str) -> Option<Source> {
        self.params.get(path).map(|p| self.sources[p.def()].get())
    }

    fn read(&mut self, path: &str) -> Option<String> {
        let node = self.params.get(path)?;
        let def = &self.schema.params[node.def()];
        if def.syntax.hidden {
            return Some(String::new());
        }
        match self.sources[node.def()].get() {
            Source::Live(kind) => {
                let v = self
                    .live
                    .read(kind)
                    .unwrap_or_else(|| node.value(&self.schema).to_string());
                Some(v)
            }
            _ => Some(node.value(&self.schema).to_string()),
        }
    }

    /// The raw stored value, including hidden ones (for the agent's own use: passwords).
    pub fn secret(&self, path: &str) -> Option<&str> {
        self.params.get(path).map(|p| p.value(&self.schema))
    }

    /// Value of one parameter as the ACS would read it (hidden → empty).
    pub fn get(&mut self, path: &str) -> Option<String> {
        self.read(path)
    }

    /// Expands one GPV/GPA name (full path, partial path ending in '.', or "" for all) to the
    /// parameter paths it covers. Unknown names → 9005.
    pub fn expand(&self, name: &str) -> Result<Vec<String>, Fault> {
        if name.len() > MAX_PATH_LEN {
            return Err(Fault::new(9005, "name longer than 256 characters"));
        }
        if name.is_empty() {
            return Ok(self.params.keys().map(|k| k.to_string()).collect());
        }
        if name.ends_with('.') {
            if !self.objects.contains_key(name) {
                return Err(Fault::new(9005, format!("no object {name}")));
            }
            return Ok(under(&self.params, name)
                .map(|(k, _)| k.to_string())
                .collect());
        }
        if self.params.contains_key(name) {
            Ok(vec![name.to_string()])
        } else {
            Err(Fault::new(9005, format!("no parameter {name}")))
        }
    }

    /// GetParameterValues. All names are checked before any value is read.
    pub fn get_values(&mut self, names: &[&str]) -> Result<Vec<ValueEntry>, Fault> {
        let mut out = Vec::new();
        self.for_each_value(names, |e| out.push(e))?;
        Ok(out)
    }

    /// GetParameterValues without collecting: `f` gets each entry in order. Every name is
    /// checked before the first entry is produced.
    pub fn for_each_value(
        &mut self,
        names: &[&str],
        mut f: impl FnMut(ValueEntry),
    ) -> Result<usize, Fault> {
        self.for_each_value_ref(names, |name, value, xsi_type| {
            f(ValueEntry {
                name: name.to_string(),
                value: value.to_string(),
                xsi_type,
            })
        })
    }

    /// Like [`for_each_value`](Self::for_each_value) with borrowed name and value (nothing is
    /// copied for stored values: a 10,000-parameter answer is written straight out).
    pub fn for_each_value_ref(
        &mut self,
        names: &[&str],
        mut f: impl FnMut(&str, &str, &'static str),
    ) -> Result<usize, Fault> {
        for n in names {
            self.check_name(n)?;
        }
        let Store {
            params,
            schema,
            sources,
            live,
            ..
        } = self;
        let mut count = 0;
        for n in names {
            let range: Box<dyn Iterator<Item = (&Key, &ParamNode)>> = if n.is_empty() {
                Box::new(params.iter())
            } else if n.ends_with('.') {
                Box::new(under(params, n))
            } else {
                Box::new(params.get_key_value(*n).into_iter())
            };
            for (k, node) in range {
                let def = &schema.params[node.def()];
                let live_value;
                let value: &str = if def.syntax.hidden {
                    ""
                } else if let Source::Live(kind) = sources[node.def()].get() {
                    live_value = live.read(kind);
                    live_value.as_deref().unwrap_or(node.value(schema))
                } else {
                    node.value(schema)
                };
                f(k, value, def.syntax.xsi_type());
                count += 1;
            }
        }
        Ok(count)
    }

    /// How many values a GetParameterValues of `names` returns (9005 for an unknown name).
    pub fn count_values(&self, names: &[&str]) -> Result<usize, Fault> {
        self.count_values_upto(names, usize::MAX)
    }

    /// [`Self::count_values`] that stops once the count passes `limit` (then returns a count
    /// above it): a request naming a large subtree thousands of times costs no more than
    /// `limit` steps to refuse.
    pub fn count_values_upto(&self, names: &[&str], limit: usize) -> Result<usize, Fault> {
        let mut n: usize = 0;
        for name in names {
            self.check_name(name)?;
            let room = limit.saturating_sub(n).saturating_add(1);
            n = n.saturating_add(if name.is_empty() {
                self.params.len()
            } else if name.ends_with('.') {
                under(&self.params, name).take(room).count()
            } else {
                1
            });
            if n > limit {
                break;
            }
        }
        Ok(n)
    }

    /// Checks that a GPV/GPA name exists (9005 otherwise).
    fn check_name(&self, name: &str) -> Result<(), Fault> {
        if name.len() > MAX_PATH_LEN {
            return Err(Fault::new(9005, "name longer than 256 characters"));
        }
        let ok = name.is_empty()
            || (name.ends_with('.') && self.objects.contains_key(name))
            || self.params.contains_key(name);
        if ok {
            Ok(())
        } else {
            Err(Fault::new(9005, format!("no parameter or object {name}")))
        }
    }

    /// GetParameterNames.
    pub fn get_names(&self, path: &str, next_level: bool) -> Result<Vec<(String, bool)>, Fault> {
        if path.len() > MAX_PATH_LEN {
            return Err(Fault::new(9005, "name longer than 256 characters"));
        }
        if path.is_empty() {
            if next_level {
                return Ok(vec![("Device.".to_string(), false)]);
            }
            return self.get_names("Device.", false);
        }
        if !path.ends_with('.') {
            let node = self
                .params
                .get(path)
                .ok_or_else(|| Fault::new(9005, format!("no parameter {path}")))?;
            if next_level {
                return Err(Fault::new(9003, "NextLevel true on a parameter path"));
            }
            return Ok(vec![(path.to_string(), self.param_writable(node))]);
        }
        let obj = self
            .objects
            .get(path)
            .ok_or_else(|| Fault::new(9005, format!("no object {path}")))?;
        let mut out = Vec::new();
        if !next_level {
            out.push((path.to_string(), self.obj_writable(obj)));
        }
        let mut objs = under(&self.objects, path)
            .filter(|(k, _)| k.len() > path.len())
            .filter(|(k, _)| !next_level || !k[path.len()..k.len() - 1].contains('.'))
            .peekable();
        let mut params = under(&self.params, path)
            .filter(|(k, _)| !next_level || !k[path.len()..].contains('.'))
            .peekable();
        // Merge in path order so a subtree's parameters follow its object.
        loop {
            let take_obj = match (objs.peek(), params.peek()) {
                (Some((o, _)), Some((p, _))) => **o < **p,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_obj {
                let (k, o) = objs.next().expect("peeked");
                out.push((k.to_string(), self.obj_writable(o)));
            } else {
                let (k, p) = params.next().expect("peeked");
                out.push((k.to_string(), self.param_writable(p)));
            }
        }
        Ok(out)
    }

    fn obj_writable(&self, o: &ObjNode) -> bool {
        o.kind != ObjKind::Single && self.schema.objects[o.def()].writable
    }

    fn param_writable(&self, p: &ParamNode) -> bool {
        self.schema.params[p.def()].writable()
    }

    /// Checks one SPV entry and returns the canonical value, without changing anything.
    pub fn check_set(
        &self,
        name: &str,
        value: &str,
        xsi_type: Option<&str>,
        origin: Origin,
    ) -> Result<String, Fault> {
        if name.len() > MAX_PATH_LEN {
            return Err(Fault::new(9005, "name longer than 256 characters"));
        }
        let node = self
            .params
            .get(name)
            .ok_or_else(|| Fault::new(9005, format!("no parameter {name}")))?;
        let def = &self.schema.params[node.def()];
        if origin == Origin::Acs {
            match def.access {
                Access::ReadOnly => return Err(Fault::new(9008, format!("{name} is read-only"))),
                Access::WriteOnceReadOnly if !node.value(&self.schema).is_empty() => {
                    return Err(Fault::new(9008, format!("{name} was already written")));
                }
                _ => {}
            }
        }
        if let Some(t) = xsi_type
            && !def.syntax.accepts_xsi_type(t)
        {
            return Err(Fault::new(
                9006,
                format!("{name} is {}, not {t}", def.syntax.xsi_type()),
            ));
        }
        if matches!(self.sources[node.def()].get(), Source::Live(_)) {
            return Err(Fault::new(
                9008,
                format!("{name} is computed by the device"),
            ));
        }
        def.syntax.validate(value)
    }

    /// SetParameterValues: all or nothing. Returns the paths whose value actually changed.
    pub fn set_values(
        &mut self,
        list: &[(String, String, Option<String>)],
        origin: Origin,
    ) -> Result<Vec<String>, SetError> {
        let mut seen = BTreeSet::new();
        let mut faults = Vec::new();
        let mut ok = Vec::with_capacity(list.len());
        for (name, value, xsi) in list {
            if !seen.insert(name.as_str()) {
                faults.push((
                    name.clone(),
                    Fault::new(9003, "parameter named twice in one request"),
                ));
                continue;
            }
            match self.check_set(name, value, xsi.as_deref(), origin) {
                Ok(v) => ok.push((name.clone(), v)),
                Err(f) => faults.push((name.clone(), f)),
            }
        }
        if !faults.is_empty() {
            return Err(SetError {
                fault: Fault::new(9003, "one or more parameters could not be set"),
                per_param: faults,
            });
        }
        let mut changed = Vec::new();
        for (name, v) in ok {
            if self.write_value(&name, v, origin) {
                changed.push(name);
            }
        }
        Ok(changed)
    }

    /// Puts back raw values saved before a change that could not be made durable (the state
    /// file could not be written): no notification, no access check.
    pub fn revert_values(&mut self, old: &[(String, String)]) {
        for (path, value) in old {
            if let Some(node) = self.params.get_mut(path.as_str()) {
                node.set(&self.schema, value.clone());
            }
        }
        self.dirty = true;
    }

    /// Writes a value the agent or a provider reports (no access check, but type-checked).
    pub fn set_internal(&mut self, path: &str, value: &str) -> Result<bool, Fault> {
        self.set_unchecked(path, value, Origin::Internal)
    }

    /// Writes a value without the access check (type-checked), on behalf of `origin`: the
    /// agent's bookkeeping of an ACS request (ParameterKey) is the ACS's own change and is not
    /// notified back to it.
    pub fn set_unchecked(
        &mut self,
        path: &str,
        value: &str,
        origin: Origin,
    ) -> Result<bool, Fault> {
        let node = self
            .params
            .get(path)
            .ok_or_else(|| Fault::new(9005, format!("no parameter {path}")))?;
        let v = self.schema.params[node.def()].syntax.validate(value)?;
        Ok(self.write_value(path, v, origin))
    }

    /// Empties a command parameter after it was acted on (BBF `command="true"`, e.g.
    /// `ExecutionUnit.{i}.RequestedState`): it reads back empty whatever its syntax allows,
    /// and the emptying is no change to notify.
    pub fn clear_command(&mut self, path: &str) -> bool {
        let Some(node) = self.params.get_mut(path) else {
            return false;
        };
        if !node.set(&self.schema, String::new()) {
            return false;
        }
        let def = node.def();
        if self.persisted(def) {
            self.dirty = true;
        }
        true
    }

    /// Stores a value; records a notification when it changed and the origin is not the ACS.
    fn write_value(&mut self, path: &str, value: String, origin: Origin) -> bool {
        let Some(node) = self.params.get_mut(path) else {
            return false;
        };
        if !node.set(&self.schema, value) {
            return false;
        }
        let notification = node.notification;
        let def = node.def();
        if self.persisted(def) {
            self.dirty = true;
        }
        if origin != Origin::Acs && notification > 0 {
            let key = self.params.get_key_value(path).expect("exists").0.clone();
            self.record_change(&key, notification);
        }
        true
    }

    /// Records a value change for the notification mechanisms `notification` asks for
    /// (cwmp-1-4.xsd: 1 passive, 2 active, 3 passive lightweight, 4 = 1 + 3, 5 active
    /// lightweight, 6 = 1 + 5; the Inform and the lightweight mechanisms run independently).
    fn record_change(&mut self, path: &Key, notification: u8) {
        if notify_in_inform(notification) {
            self.changed.insert(path.clone());
        }
        if notification == 2 {
            self.active_change = true;
            self.active_generation += 1;
        }
        if notify_lightweight(notification) {
            self.lw_changed.insert(path.clone());
            if matches!(notification, 5 | 6) {
                self.lw_active_generation += 1;
            }
        }
    }

    /// Re-reads live values of parameters with notification on and records changes.
    /// Returns how many changed.
    pub fn poll_live(&mut self) -> usize {
        let watched: Vec<(Key, LiveKind)> = self
            .params
            .iter()
            .filter(|(_, p)| p.notification > 0)
            .filter_map(|(k, p)| match self.sources[p.def()].get() {
                Source::Live(kind) => Some((k.clone(), kind)),
                _ => None,
            })
            .collect();
        let mut n = 0;
        for (path, kind) in watched {
            if let Some(v) = self.live.read(kind) {
                let node = self.params.get_mut(&path).expect("listed");
                if node.set(&self.schema, v) {
                    let notification = node.notification;
                    self.record_change(&path, notification);
                    n += 1;
                }
            }
        }
        n
    }

    /// Provider-backed parameters with notification on, by provider: what a poll must fetch.
    pub fn watched_external(&self) -> Vec<(usize, String)> {
        self.params
            .iter()
            .filter(|(_, p)| p.notification > 0)
            .filter_map(|(k, p)| match self.sources[p.def()].get() {
                Source::External(i) => Some((i, k.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Provider-backed parameters among `paths`, by provider.
    pub fn external_of(&self, paths: &[String]) -> Vec<(usize, String)> {
        paths
            .iter()
            .filter_map(|k| match self.source(k) {
                Some(Source::External(i)) => Some((i, k.clone())),
                _ => None,
            })
            .collect()
    }

    /// Updates the cached value of a provider-backed parameter; returns whether it changed.
    pub fn update_cached(&mut self, path: &str, value: &str) -> Result<bool, Fault> {
        self.set_internal(path, value)
    }

    /// AddObject: creates the next instance of `table` (a path ending in `.`).
    pub fn add_object(&mut self, table: &str, origin: Origin) -> Result<u32, Fault> {
        if table.len() > MAX_PATH_LEN || !table.ends_with('.') {
            return Err(Fault::new(9005, format!("{table} is not an object path")));
        }
        let node = self
            .objects
            .get(table)
            .ok_or_else(|| Fault::new(9005, format!("no object {table}")))?;
        if node.kind != ObjKind::Table {
            return Err(Fault::new(
                9005,
                format!("{table} is not a multi-instance object"),
            ));
        }
        if origin == Origin::Acs && !self.schema.objects[node.def()].writable {
            return Err(Fault::new(
                9005,
                format!("{table} does not allow AddObject"),
            ));
        }
        // A table the schema leaves unbounded still gets a limit at run time, so that an ACS
        // cannot grow the store (and the state file) without end. Factory instances from the
        // configuration are the integrator's choice and are not limited.
        if self.schema.objects[node.def()].max_entries.is_none()
            && self.instance_numbers(table).len() >= MAX_ENTRIES_UNBOUNDED as usize
        {
            return Err(Fault::new(
                9004,
                format!("{table} has its maximum of {MAX_ENTRIES_UNBOUNDED} entries"),
            ));
        }
        let n = node.next;
        if n == u32::MAX {
            return Err(Fault::new(9004, "instance numbers exhausted"));
        }
        self.create_instance(table, n, origin)?;
        self.dirty = true;
        Ok(n)
    }

    /// DeleteObject: removes an instance (a path ending in `N.`) and everything below it.
    pub fn delete_object(&mut self, inst: &str, origin: Origin) -> Result<(), Fault> {
        let node = self
            .objects
            .get(inst)
            .ok_or_else(|| Fault::new(9005, format!("no object {inst}")))?;
        if node.kind != ObjKind::Instance {
            return Err(Fault::new(
                9005,
                format!("{inst} is not an object instance"),
            ));
        }
        let def = &self.schema.objects[node.def()];
        if origin == Origin::Acs && !def.writable {
            return Err(Fault::new(
                9005,
                format!("{inst} does not allow DeleteObject"),
            ));
        }
        let table = inst[..inst[..inst.len() - 1].rfind('.').map_or(0, |i| i + 1)].to_string();
        if self.instance_numbers(&table).len() <= def.min_entries as usize {
            return Err(Fault::new(
                9001,
                format!("{table} needs at least {} entries", def.min_entries),
            ));
        }
        let objs: Vec<Key> = under(&self.objects, inst).map(|(k, _)| k.clone()).collect();
        for k in objs {
            self.objects.remove(&k);
        }
        let ps: Vec<Key> = under(&self.params, inst).map(|(k, _)| k.clone()).collect();
        for k in ps {
            self.params.remove(&k);
            self.changed.remove(&k);
            self.lw_changed.remove(&k);
        }
        self.active_change = self
            .changed
            .iter()
            .any(|n| self.params.get(n).is_some_and(|p| p.notification == 2));
        self.update_count(&table, origin);
        self.dirty = true;
        Ok(())
    }

    /// GetParameterAttributes.
    pub fn get_attributes(&self, names: &[&str]) -> Result<Vec<(String, u8, Vec<String>)>, Fault> {
        let mut out = Vec::new();
        for n in names {
            for p in self.expand(n)? {
                let node = &self.params[p.as_str()];
                out.push((p, node.notification, access_list(node.subscriber)));
            }
        }
        Ok(out)
    }

    /// SetParameterAttributes: all or nothing.
    ///
    /// Notification takes 0–6 (cwmp-1-4.xsd; 3–6 are the lightweight notifications of Annex
    /// M); more is refused with 9003. Whether the session's CWMP version allows 3–6 is the
    /// caller's check. A parameter whose Notification cannot take the requested value (forceEnabled: always
    /// active; canDeny: active refused) gives 9009 when named by its full path; under a partial
    /// path it keeps its own attribute and the others below are set (TR-069 A.3.2.4: a partial
    /// path applies the attributes to the parameters below it; one that cannot take them is not
    /// a reason to refuse the whole subtree).
    pub fn set_attributes(&mut self, list: &[AttrSet]) -> Result<(), Fault> {
        struct Plan {
            notify: Vec<String>,
            notification: Option<u8>,
            all: Vec<String>,
            access_list: Option<Vec<String>>,
        }
        let mut plan = Vec::new();
        for a in list {
            let all = self.expand(&a.name)?;
            let partial = a.name.is_empty() || a.name.ends_with('.');
            let mut notify = Vec::new();
            if let Some(n) = a.notification {
                if n > MAX_NOTIFICATION {
                    return Err(Fault::new(
                        9003,
                        format!("notification {n} is out of range"),
                    ));
                }
                for p in &all {
                    let def = &self.schema.params[self.params[p.as_str()].def()];
                    let refused = match def.active_notify {
                        ActiveNotify::ForceEnabled => n != 2,
                        ActiveNotify::CanDeny => n == 2,
                        _ => false,
                    };
                    match (refused, partial) {
                        (false, _) => notify.push(p.clone()),
                        (true, true) => {}
                        (true, false) if n == 2 => {
                            return Err(Fault::new(
                                9009,
                                format!("active notification refused for {p}"),
                            ));
                        }
                        (true, false) => {
                            return Err(Fault::new(
                                9009,
                                format!("{p} always has active notification"),
                            ));
                        }
                    }
                }
            }
            if let Some(al) = &a.access_list
                && let Some(bad) = al.iter().find(|e| e.as_str() != "Subscriber")
            {
                return Err(Fault::new(
                    9007,
                    format!("access list entry {bad:?} is not Subscriber"),
                ));
            }
            plan.push(Plan {
                notify,
                notification: a.notification,
                all,
                access_list: a.access_list.clone(),
            });
        }
        for p in plan {
            if let Some(n) = p.notification {
                for path in &p.notify {
                    self.params
                        .get_mut(path.as_str())
                        .expect("expanded")
                        .notification = n;
                }
            }
            if let Some(al) = &p.access_list {
                for path in &p.all {
                    let node = self.params.get_mut(path.as_str()).expect("expanded");
                    node.subscriber = !al.is_empty();
                }
            }
        }
        self.dirty = true;
        Ok(())
    }

    /// The concrete names a Get RPC name with instance wildcards stands for (TR-069 Amendment
    /// 6, CWMP 1.4: `*` in place of an instance number in GetParameterValues / Names /
    /// Attributes), in path order: instance paths for a partial path (ending in `.`),
    /// parameter paths otherwise. Only instances that exist are named; none matching is an
    /// empty list. 9005 Invalid parameter name: a `*` that is not a whole path segment, one
    /// that does not stand in place of a table's instance number, or a path the data model
    /// does not define.
    pub fn expand_wildcards(&self, name: &str) -> Result<Vec<String>, Fault> {
        if name.len() > MAX_PATH_LEN {
            return Err(Fault::new(9005, "name longer than 256 characters"));
        }
        let partial = name.ends_with('.');
        let body = name.strip_suffix('.').unwrap_or(name);
        let segs: Vec<&str> = body.split('.').collect();
        if segs.iter().any(|s| s.contains('*') && *s != "*") {
            return Err(Fault::new(
                9005,
                format!("{name}: `*` must be a whole segment"),
            ));
        }
        // The generic path: `*` and instance numbers become `{i}`.
        let generic = generic_path(&name.replace('*', "{i}")).into_owned();
        let defined = if partial {
            self.schema.object(&generic).is_some()
        } else {
            self.schema.param(&generic).is_some()
        };
        if !defined {
            return Err(Fault::new(
                9005,
                format!("{name}: no such path, or `*` not in place of an instance number"),
            ));
        }
        let mut prefixes = vec![String::new()];
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let mut next = Vec::with_capacity(prefixes.len());
            for p in &prefixes {
                if *seg == "*" {
                    next.extend(
                        self.instance_numbers(p)
                            .into_iter()
                            .map(|n| format!("{p}{n}.")),
                    );
                } else if last && !partial {
                    next.push(format!("{p}{seg}"));
                } else {
                    let o = format!("{p}{seg}.");
                    // A path through an instance that does not exist matches nothing.
                    if self.objects.contains_key(o.as_str()) {
                        next.push(o);
                    }
                }
            }
            prefixes = next;
        }
        prefixes.retain(|p| {
            if partial {
                self.objects.contains_key(p.as_str())
            } else {
                self.params.contains_key(p.as_str())
            }
        });
        Ok(prefixes)
    }

    /// The parameters a name with instance wildcards names (`*` in place of an instance
    /// number, as InformParameter.ParameterName allows); a partial path (ending in `.`) names
    /// every parameter below. Unknown names give nothing.
    pub fn expand_pattern(&self, pattern: &str) -> Vec<String> {
        let Some(star) = pattern.find('*') else {
            return self.expand(pattern).unwrap_or_default();
        };
        let prefix = &pattern[..star];
        if !prefix.ends_with('.') {
            return Vec::new();
        }
        let want: Vec<&str> = pattern.split('.').collect();
        let partial = pattern.ends_with('.');
        let matches = |path: &str| {
            let got: Vec<&str> = path.split('.').collect();
            let n = if partial { want.len() - 1 } else { want.len() };
            if got.len() < n || (partial && got.len() == n) || (!partial && got.len() != n) {
                return false;
            }
            want[..n].iter().zip(&got).all(|(w, g)| {
                *w == *g || (*w == "*" && !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
            })
        };
        self.expand(prefix)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| matches(p))
            .collect()
    }

    /// Parameters that changed since the last delivered Inform, with their current values.
    pub fn pending_changes(&mut self) -> Vec<ValueEntry> {
        let names: Vec<String> = self.changed.iter().map(|k| k.to_string()).collect();
        self.entries_of(names)
    }

    /// The current values of `names` (those still readable), in the given order.
    fn entries_of(&mut self, names: Vec<String>) -> Vec<ValueEntry> {
        names
            .into_iter()
            .filter_map(|n| {
                let value = self.read(&n)?;
                let t = self.schema.params[self.params[n.as_str()].def()]
                    .syntax
                    .xsi_type();
                Some(ValueEntry {
                    name: n,
                    value,
                    xsi_type: t,
                })
            })
            .collect()
    }

    /// Parameters with lightweight notification that changed since their last Lightweight
    /// Notification message, with their current values, in path order.
    pub fn lw_pending(&mut self) -> Vec<ValueEntry> {
        let names: Vec<String> = self.lw_changed.iter().map(|k| k.to_string()).collect();
        self.entries_of(names)
    }

    /// How many parameters wait for a Lightweight Notification message.
    pub fn lw_pending_count(&self) -> usize {
        self.lw_changed.len()
    }

    /// Increases with every active-lightweight (Notification 5 or 6) change.
    pub fn lw_active_generation(&self) -> u64 {
        self.lw_active_generation
    }

    /// Forgets lightweight changes (sent, or discarded while the mechanism is off); `None`:
    /// all of them.
    pub fn clear_lw_changes(&mut self, names: Option<&[String]>) {
        match names {
            Some(ns) => {
                for n in ns {
                    self.lw_changed.remove(n.as_str());
                }
            }
            None => self.lw_changed.clear(),
        }
    }

    /// Whether an active-notification change is waiting (it should start a session).
    pub fn has_active_change(&self) -> bool {
        self.active_change
    }

    /// Increases with every active-notification change.
    pub fn active_generation(&self) -> u64 {
        self.active_generation
    }

    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// Forgets the given reported changes (after the Inform carrying them succeeded).
    pub fn clear_changes(&mut self, names: &[String]) {
        for n in names {
            self.changed.remove(n.as_str());
        }
        self.active_change = self
            .changed
            .iter()
            .any(|n| self.params.get(n).is_some_and(|p| p.notification == 2));
    }

    /// Values of the forcedInform parameters, in path order.
    pub fn forced_inform(&mut self) -> Vec<ValueEntry> {
        let names: Vec<String> = self
            .params
            .iter()
            .filter(|(_, p)| self.schema.params[p.def()].forced_inform)
            .map(|(k, _)| k.to_string())
            .collect();
        names
            .into_iter()
            .filter_map(|n| {
                let value = self.read(&n)?;
                let t = self.schema.params[self.params[n.as_str()].def()]
                    .syntax
                    .xsi_type();
                Some(ValueEntry {
                    name: n,
                    value,
                    xsi_type: t,
                })
            })
            .collect()
    }

    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn mark_clean(&mut self) {
        self.dirty = false;
    }

    /// What differs from the factory state, for persistence.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for (t, o) in &self.objects {
            if o.kind != ObjKind::Table || self.is_volatile(t) {
                continue;
            }
            let st = (o.next, self.instance_numbers(t));
            if self.factory_tables.get(t) != Some(&st) {
                snap.tables.insert(t.to_string(), st);
            }
        }
        for (path, node) in &self.params {
            let def = &self.schema.params[node.def()];
            if self.is_volatile(path) {
                continue;
            }
            let value = node.value(&self.schema);
            if self.persisted(node.def()) && value != self.factory_value(path, node.def()) {
                snap.values.insert(path.to_string(), value.to_string());
            }
            let default_n = match def.active_notify {
                ActiveNotify::ForceEnabled | ActiveNotify::ForceDefaultEnabled => 2,
                _ => 0,
            };
            if node.notification != default_n || node.subscriber {
                snap.attrs.insert(
                    path.to_string(),
                    (node.notification, access_list(node.subscriber)),
                );
            }
        }
        snap.keys = self
            .mirror_keys
            .iter()
            .filter(|(t, _)| !self.is_volatile(t))
            .map(|(t, m)| (t.clone(), m.clone()))
            .collect();
        snap
    }

    /// Whether a parameter's value is kept in the state file: stored (not live, provider or
    /// system) values that the ACS can write or that are reported in every Inform or by active
    /// notification. Only their changes make the store dirty.
    fn persisted(&self, id: ParamId) -> bool {
        let def = &self.schema.params[id];
        self.sources[id] == Src::STORED
            && (def.writable()
                || def.forced_inform
                || matches!(
                    def.active_notify,
                    ActiveNotify::ForceEnabled | ActiveNotify::ForceDefaultEnabled
                ))
    }

    fn factory_value(&self, path: &str, def: ParamId) -> &str {
        match self.factory_values.get(path) {
            Some(v) => v,
            None => default_value(&self.schema.params[def]),
        }
    }

    /// Applies a persisted snapshot on top of the factory state. Entries the current model no
    /// longer has are skipped and returned as warnings.
    pub fn restore(&mut self, snap: &Snapshot) -> Vec<String> {
        let mut warnings = Vec::new();
        // Tables, parents before children (BTreeMap order puts A. before A.1.B.).
        for (table, (next, live)) in &snap.tables {
            if !matches!(self.objects.get(table.as_str()), Some(o) if o.kind == ObjKind::Table) {
                warnings.push(format!("state names table {table}, which does not exist"));
                continue;
            }
            let have = self.instance_numbers(table);
            // A deletion minEntries refuses now is retried once the persisted instances exist.
            let mut refused = Vec::new();
            for n in &have {
                if !live.contains(n)
                    && self
                        .delete_object(&format!("{table}{n}."), Origin::Internal)
                        .is_err()
                {
                    refused.push(*n);
                }
            }
            for n in live {
                if !have.contains(n)
                    && let Err(f) = self.create_instance(table, *n, Origin::Internal)
                {
                    warnings.push(format!("cannot restore {table}{n}.: {}", f.reason));
                }
            }
            for n in refused {
                if let Err(f) = self.delete_object(&format!("{table}{n}."), Origin::Internal) {
                    warnings.push(format!("cannot remove {table}{n}.: {}", f.reason));
                }
            }
            if let Some(t) = self.objects.get_mut(table.as_str()) {
                t.next = t.next.max(*next);
            }
        }
        for (path, value) in &snap.values {
            let Some(node) = self.params.get(path.as_str()) else {
                warnings.push(format!("state value for unknown parameter {path} skipped"));
                continue;
            };
            match self.schema.params[node.def()].syntax.validate(value) {
                Ok(v) => {
                    let node = self.params.get_mut(path.as_str()).expect("exists");
                    node.set(&self.schema, v);
                }
                Err(f) => warnings.push(format!("state value of {path} skipped: {}", f.reason)),
            }
        }
        for (path, (n, al)) in &snap.attrs {
            if *n > MAX_NOTIFICATION {
                warnings.push(format!(
                    "state attributes of {path} skipped: notification {n}"
                ));
            } else if let Some(node) = self.params.get_mut(path.as_str()) {
                node.notification = *n;
                node.subscriber = al.iter().any(|e| e == "Subscriber");
            } else {
                warnings.push(format!(
                    "state attributes of unknown parameter {path} skipped"
                ));
            }
        }
        self.mirror_keys = snap.keys.clone();
        self.changed.clear();
        self.lw_changed.clear();
        self.active_change = false;
        self.dirty = false;
        warnings
    }
}

fn access_list(subscriber: bool) -> Vec<String> {
    if subscriber {
        vec!["Subscriber".to_string()]
    } else {
        Vec::new()
    }
}

fn last_segment(generic_obj_path: &str) -> &str {
    let t = generic_obj_path.trim_end_matches('.');
    let t = t.strip_suffix(".{i}").unwrap_or(t);
    t.rsplit('.').next().unwrap_or(t)
}

/// Reads live values from procfs and the clock.
#[derive(Default)]
pub struct ProcfsLive {
    last_cpu: Option<(u64, u64)>,
}

impl LiveSource for ProcfsLive {
    fn read(&mut self, kind: LiveKind) -> Option<String> {
        match kind {
            LiveKind::UpTime => {
                let s = std::fs::read_to_string("/proc/uptime").ok()?;
                let secs = s.split('.').next()?.trim().parse::<u64>().ok()?;
                Some(secs.min(u32::MAX as u64).to_string())
            }
            LiveKind::MemoryTotal | LiveKind::MemoryFree => {
                let s = std::fs::read_to_string("/proc/meminfo").ok()?;
                let key = if kind == LiveKind::MemoryTotal {
                    "MemTotal:"
                } else {
                    "MemFree:"
                };
                let line = s.lines().find(|l| l.starts_with(key))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb.min(u32::MAX as u64).to_string())
            }
            LiveKind::CpuUsage => {
                let s = std::fs::read_to_string("/proc/stat").ok()?;
                let fields: Vec<u64> = s
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse().ok())
                    .collect();
                let total: u64 = fields.iter().sum();
                let idle =
                    fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
                let pct = match self.last_cpu {
                    Some((t0, i0)) if total > t0 => {
                        let dt = total - t0;
                        let di = idle.saturating_sub(i0);
                        (dt.saturating_sub(di)) * 100 / dt
                    }
                    _ => 0,
                };
                self.last_cpu = Some((total, idle));
                Some(pct.to_string())
            }
            LiveKind::CurrentLocalTime => Some(crate::util::time::now_datetime()),
        }
    }
}

#[path = "store_mirror.rs"]
mod mirror_sync;

#[path = "store_alias.rs"]
mod alias;
pub use alias::{AliasPath, MAX_ALIAS_LEN, check_alias_form, with_aliases};
pub use mirror_sync::MAX_MIRROR_ROWS;

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
