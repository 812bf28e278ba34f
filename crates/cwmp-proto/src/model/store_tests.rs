//! Unit tests of the data-model store: the CWMP semantics of TR-069 Annex A.3.2 on a small
//! inline model (and, in a few tests, on the shipped `datamodel/` directory), with live values
//! injected through [`LiveSource`]. Pure and fast: no files are written, no clock, no network.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::*;

/// A small model covering every feature the store implements: forced and canDeny
/// notifications, a live parameter (UpTime), every base type the tests need, a hidden value, a
/// writeOnceReadOnly one, a writable bounded table with a single sub-object and an unbounded
/// sub-table, a read-only table, and a table with minEntries.
const MODEL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<dm:document xmlns:dm="urn:broadband-forum-org:cwmp:datamodel-1-14" spec="urn:cwmpd:test" file="test.xml">
 <model name="Device:2.19">
  <object name="Device." access="readOnly" minEntries="1" maxEntries="1">
   <parameter name="RootDataModelVersion" access="readOnly" forcedInform="true">
    <syntax><string><size maxLength="32"/></string><default type="object" value="2.19"/></syntax>
   </parameter>
   <parameter name="TableNumberOfEntries" access="readOnly"><syntax><unsignedInt/></syntax></parameter>
   <parameter name="FixedNumberOfEntries" access="readOnly"><syntax><unsignedInt/></syntax></parameter>
   <parameter name="KeptNumberOfEntries" access="readOnly"><syntax><unsignedInt/></syntax></parameter>
  </object>
  <object name="Device.DeviceInfo." access="readOnly" minEntries="1" maxEntries="1">
   <parameter name="SoftwareVersion" access="readOnly" activeNotify="forceEnabled" forcedInform="true">
    <syntax><string><size maxLength="64"/></string></syntax>
   </parameter>
   <parameter name="ProvisioningCode" access="readWrite" activeNotify="forceEnabled" forcedInform="true">
    <syntax><string><size maxLength="64"/></string></syntax>
   </parameter>
   <parameter name="UpTime" access="readOnly" activeNotify="canDeny">
    <syntax><unsignedInt/></syntax>
   </parameter>
   <parameter name="Description" access="readOnly">
    <syntax><string><size maxLength="256"/></string></syntax>
   </parameter>
  </object>
  <object name="Device.Settings." access="readOnly" minEntries="1" maxEntries="1">
   <parameter name="Int" access="readWrite">
    <syntax><int><range minInclusive="-10" maxInclusive="10"/></int></syntax>
   </parameter>
   <parameter name="Plain" access="readWrite"><syntax><int/></syntax></parameter>
   <parameter name="Count" access="readWrite"><syntax><unsignedInt/></syntax></parameter>
   <parameter name="Flag" access="readWrite"><syntax><boolean/></syntax></parameter>
   <parameter name="When" access="readWrite"><syntax><dateTime/></syntax></parameter>
   <parameter name="Name" access="readWrite">
    <syntax><string><size maxLength="8"/></string></syntax>
   </parameter>
   <parameter name="Mode" access="readWrite">
    <syntax>
     <string><enumeration value="Auto"/><enumeration value="Manual"/></string>
     <default type="object" value="Auto"/>
    </syntax>
   </parameter>
   <parameter name="Secret" access="readWrite">
    <syntax hidden="true"><string><size maxLength="32"/></string></syntax>
   </parameter>
   <parameter name="Serial" access="writeOnceReadOnly"><syntax><string/></syntax></parameter>
   <parameter name="Status" access="readOnly">
    <syntax><string/><default type="object" value="Up"/></syntax>
   </parameter>
  </object>
  <object name="Device.Table.{i}." access="readWrite" minEntries="0" maxEntries="3"
      numEntriesParameter="TableNumberOfEntries">
   <parameter name="Alias" access="readWrite">
    <syntax><string><size maxLength="64"/></string></syntax>
   </parameter>
   <parameter name="Enable" access="readWrite"><syntax><boolean/></syntax></parameter>
   <parameter name="SubNumberOfEntries" access="readOnly"><syntax><unsignedInt/></syntax></parameter>
  </object>
  <object name="Device.Table.{i}.Stats." access="readOnly" minEntries="1" maxEntries="1">
   <parameter name="Bytes" access="readOnly"><syntax><unsignedInt/></syntax></parameter>
  </object>
  <object name="Device.Table.{i}.Sub.{i}." access="readWrite" minEntries="0" maxEntries="unbounded"
      numEntriesParameter="SubNumberOfEntries">
   <parameter name="Value" access="readWrite"><syntax><unsignedInt/></syntax></parameter>
  </object>
  <object name="Device.Fixed.{i}." access="readOnly" minEntries="0" maxEntries="unbounded"
      numEntriesParameter="FixedNumberOfEntries">
   <parameter name="Label" access="readOnly"><syntax><string/></syntax></parameter>
  </object>
  <object name="Device.Kept.{i}." access="readWrite" minEntries="1" maxEntries="2"
      numEntriesParameter="KeptNumberOfEntries">
   <parameter name="Name" access="readWrite">
    <syntax><string><size maxLength="16"/></string></syntax>
   </parameter>
  </object>
 </model>
</dm:document>"#;

/// Factory values of the test store: a software version, two rows of the read-only table and
/// the one row the minEntries table needs.
const FACTORY: &[(&str, &str)] = &[
    ("Device.DeviceInfo.SoftwareVersion", "1.0.0"),
    ("Device.Fixed.1.Label", "a"),
    ("Device.Fixed.2.Label", "b"),
    ("Device.Kept.1.Name", "first"),
];

/// Live values the test controls after the store is built.
#[derive(Clone, Default)]
struct FakeLive(Rc<RefCell<Vec<(LiveKind, String)>>>);

impl FakeLive {
    fn set(&self, kind: LiveKind, value: &str) {
        let mut v = self.0.borrow_mut();
        v.retain(|(k, _)| *k != kind);
        v.push((kind, value.to_string()));
    }

    fn unset(&self, kind: LiveKind) {
        self.0.borrow_mut().retain(|(k, _)| *k != kind);
    }
}

impl LiveSource for FakeLive {
    fn read(&mut self, kind: LiveKind) -> Option<String> {
        let v = self.0.borrow();
        v.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.clone())
    }
}

fn schema_from(xml: &str) -> Schema {
    let mut s = Schema::default();
    s.load_str(xml, Path::new("test.xml")).expect("test model");
    s.validate().expect("test model references");
    s
}

fn factory(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

/// The test store (factory state) and the handle of its live values.
fn store_with(list: &[(&str, &str)]) -> (Store, FakeLive) {
    let live = FakeLive::default();
    live.set(LiveKind::UpTime, "42");
    let s =
        Store::new(schema_from(MODEL), &factory(list), Box::new(live.clone())).expect("test store");
    (s, live)
}

fn store() -> Store {
    store_with(FACTORY).0
}

/// A store on the shipped data model (datamodel/*.xml), as the agent loads it.
fn shipped() -> (Store, FakeLive) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datamodel");
    let schema = Schema::load_dirs(&[dir]).expect("shipped data model loads");
    schema.validate().expect("shipped data model references");
    let live = FakeLive::default();
    live.set(LiveKind::UpTime, "1234");
    let s = Store::new(schema, &[], Box::new(live.clone())).expect("shipped store");
    (s, live)
}

fn spv(items: &[(&str, &str)]) -> Vec<(String, String, Option<String>)> {
    items
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string(), None))
        .collect()
}

fn spv_typed(name: &str, value: &str, xsi: &str) -> Vec<(String, String, Option<String>)> {
    vec![(name.to_string(), value.to_string(), Some(xsi.to_string()))]
}

/// The per-parameter fault codes of a failed SetParameterValues, in order.
fn spv_faults(e: &SetError) -> Vec<(&str, u32)> {
    e.per_param
        .iter()
        .map(|(n, f)| (n.as_str(), f.code))
        .collect()
}

/// The fault code of one SetParameterValues entry set by the ACS.
fn spv_code(s: &mut Store, name: &str, value: &str) -> u32 {
    let e = s
        .set_values(&spv(&[(name, value)]), Origin::Acs)
        .expect_err("the set should fail");
    assert_eq!(e.fault.code, 9003, "overall fault");
    assert_eq!(e.per_param.len(), 1, "{e:?}");
    assert_eq!(e.per_param[0].0, name);
    e.per_param[0].1.code
}

fn value(s: &mut Store, path: &str) -> String {
    s.get(path).unwrap_or_else(|| panic!("no parameter {path}"))
}

fn names(list: &[(String, bool)]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

fn writable(list: &[(String, bool)], name: &str) -> bool {
    list.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not in the answer"))
        .1
}

fn notif(n: u8, name: &str) -> AttrSet {
    AttrSet {
        name: name.to_string(),
        notification: Some(n),
        access_list: None,
    }
}

fn access(name: &str, list: &[&str]) -> AttrSet {
    AttrSet {
        name: name.to_string(),
        notification: None,
        access_list: Some(list.iter().map(|s| s.to_string()).collect()),
    }
}

fn notification(s: &Store, path: &str) -> u8 {
    let a = s.get_attributes(&[path]).expect("attributes");
    assert_eq!(a.len(), 1);
    a[0].1
}

fn pending(s: &mut Store) -> Vec<(String, String)> {
    s.pending_changes()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}

/// A syntactically fine name of `len` characters below `Device.` that names nothing.
fn long_name(len: usize) -> String {
    let mut n = "Device.".to_string();
    n.push_str(&"A".repeat(len - n.len()));
    n
}

fn all_values(s: &mut Store) -> Vec<(String, String)> {
    s.get_values(&[""])
        .expect("whole tree")
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// GetParameterNames (TR-069 A.3.2.3)
// ---------------------------------------------------------------------------------------------

/// TR-069 A.3.2.3: a full parameter path with NextLevel false answers that one parameter with
/// its Writable flag; NextLevel true on a parameter path is an invalid argument (9003).
#[test]
fn gpn_full_parameter_path_names_that_parameter() {
    let s = store();
    assert_eq!(
        s.get_names("Device.Settings.Flag", false).unwrap(),
        vec![("Device.Settings.Flag".to_string(), true)]
    );
    assert_eq!(
        s.get_names("Device.DeviceInfo.SoftwareVersion", false)
            .unwrap(),
        vec![("Device.DeviceInfo.SoftwareVersion".to_string(), false)]
    );
    assert_eq!(
        s.get_names("Device.Settings.Flag", true).unwrap_err().code,
        9003
    );
}

/// TR-069 A.3.2.3: a partial path with NextLevel false answers the object itself and its whole
/// subtree, objects (tables, instances, sub-objects) with a trailing dot, every object before
/// the parameters and objects below it.
#[test]
fn gpn_partial_path_next_level_false_lists_the_whole_subtree() {
    let mut s = store();
    assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(1));
    assert_eq!(s.add_object("Device.Table.1.Sub.", Origin::Acs), Ok(1));
    let got = s.get_names("Device.Table.", false).unwrap();
    let mut got_names = names(&got);
    assert_eq!(
        got_names[0], "Device.Table.",
        "the object itself comes first"
    );
    for (i, n) in got_names.iter().enumerate() {
        if n.ends_with('.') {
            assert!(
                got_names[..i].iter().all(|m| !m.starts_with(n)),
                "{n} comes after something below it: {got_names:?}"
            );
        }
    }
    got_names.sort_unstable();
    assert_eq!(
        got_names,
        vec![
            "Device.Table.",
            "Device.Table.1.",
            "Device.Table.1.Alias",
            "Device.Table.1.Enable",
            "Device.Table.1.Stats.",
            "Device.Table.1.Stats.Bytes",
            "Device.Table.1.Sub.",
            "Device.Table.1.Sub.1.",
            "Device.Table.1.Sub.1.Value",
            "Device.Table.1.SubNumberOfEntries",
        ]
    );
    // A single object: the same rule.
    let got = s.get_names("Device.DeviceInfo.", false).unwrap();
    assert_eq!(
        names(&got),
        vec![
            "Device.DeviceInfo.",
            "Device.DeviceInfo.Description",
            "Device.DeviceInfo.ProvisioningCode",
            "Device.DeviceInfo.SoftwareVersion",
            "Device.DeviceInfo.UpTime",
        ]
    );
}

/// TR-069 A.3.2.3: NextLevel true answers only the immediate children (parameters, and
/// objects with a trailing dot), not the object itself and nothing deeper.
#[test]
fn gpn_partial_path_next_level_true_lists_one_level() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.1.Sub.", Origin::Acs).unwrap();
    let mut got = names(&s.get_names("Device.", true).unwrap())
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    got.sort();
    assert_eq!(
        got,
        vec![
            "Device.DeviceInfo.",
            "Device.Fixed.",
            "Device.FixedNumberOfEntries",
            "Device.Kept.",
            "Device.KeptNumberOfEntries",
            "Device.RootDataModelVersion",
            "Device.Settings.",
            "Device.Table.",
            "Device.TableNumberOfEntries",
        ]
    );
    // A table's children are its instances.
    assert_eq!(
        names(&s.get_names("Device.Table.", true).unwrap()),
        vec!["Device.Table.1."]
    );
    assert_eq!(
        names(&s.get_names("Device.Fixed.", true).unwrap()),
        vec!["Device.Fixed.1.", "Device.Fixed.2."]
    );
    let mut inst = names(&s.get_names("Device.Table.1.", true).unwrap())
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    inst.sort();
    assert_eq!(
        inst,
        vec![
            "Device.Table.1.Alias",
            "Device.Table.1.Enable",
            "Device.Table.1.Stats.",
            "Device.Table.1.Sub.",
            "Device.Table.1.SubNumberOfEntries",
        ]
    );
    // An empty table has no children, and that is no fault.
    s.delete_object("Device.Table.1.", Origin::Acs).unwrap();
    assert!(s.get_names("Device.Table.", true).unwrap().is_empty());
}

/// TR-069 A.3.2.3: an empty ParameterPath starts at the root: with NextLevel true the answer is
/// the root object `Device.`; with NextLevel false it is the whole tree.
#[test]
fn gpn_empty_path_starts_at_the_root() {
    let s = store();
    assert_eq!(
        s.get_names("", true).unwrap(),
        vec![("Device.".to_string(), false)]
    );
    let all = s.get_names("", false).unwrap();
    assert_eq!(all, s.get_names("Device.", false).unwrap());
    assert_eq!(all[0], ("Device.".to_string(), false));
    let params = all.iter().filter(|(n, _)| !n.ends_with('.')).count();
    assert_eq!(params, s.param_count(), "every parameter is named");
    assert!(names(&all).contains(&"Device.Kept.1.Name"));
}

/// TR-069 A.3.2.3 with the fault table of A.5: a path that names no parameter or object is
/// fault 9005 Invalid parameter name; so is one longer than 256 characters (cwmp-1-2.xsd).
#[test]
fn gpn_invalid_path_is_9005() {
    let s = store();
    for bad in [
        "Device.Nope.",
        "Device.Nope",
        "Device.Settings",
        "Device.Settings.Flag.",
        "Device.Table.1.",
        "Device.Table.0.",
        "Device.Fixed.3.",
        "device.",
        "Device",
        ".",
    ] {
        for next_level in [false, true] {
            let e = s.get_names(bad, next_level).unwrap_err();
            assert_eq!(e.code, 9005, "{bad:?} next_level={next_level}: {e}");
        }
    }
    assert_eq!(s.get_names(&long_name(257), false).unwrap_err().code, 9005);
    let long_obj = format!("{}.", long_name(256));
    assert_eq!(s.get_names(&long_obj, true).unwrap_err().code, 9005);
}

/// TR-069 A.3.2.3 ParameterInfoStruct.Writable: a parameter is writable unless read-only; an
/// object is writable when the ACS may AddObject (table) or DeleteObject (instance) on it; a
/// single-instance object never is.
#[test]
fn gpn_writable_flags() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    let all = s.get_names("", false).unwrap();
    for (name, want) in [
        ("Device.Settings.Flag", true),
        ("Device.Settings.Secret", true),
        ("Device.Settings.Serial", true), // writeOnceReadOnly: writable until written
        ("Device.Settings.Status", false),
        ("Device.DeviceInfo.UpTime", false),
        ("Device.DeviceInfo.ProvisioningCode", true),
        ("Device.TableNumberOfEntries", false),
        ("Device.", false),
        ("Device.Settings.", false),
        ("Device.Table.", true),
        ("Device.Table.1.", true),
        ("Device.Table.1.Stats.", false),
        ("Device.Table.1.Sub.", true),
        ("Device.Fixed.", false),
        ("Device.Fixed.1.", false),
        ("Device.Fixed.1.Label", false),
        ("Device.Kept.", true),
        ("Device.Kept.1.", true),
    ] {
        assert_eq!(writable(&all, name), want, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// GetParameterValues (TR-069 A.3.2.2)
// ---------------------------------------------------------------------------------------------

/// TR-069 A.3.2.2: a partial path stands for every parameter below it (all instances, all
/// levels), with the xsi:type of each; several names are answered in order; count_values
/// agrees with what is produced.
#[test]
fn gpv_partial_path_expands_to_every_parameter_below() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.2.Sub.", Origin::Acs).unwrap();
    let got = s.get_values(&["Device.Settings."]).unwrap();
    let got_names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        got_names,
        vec![
            "Device.Settings.Count",
            "Device.Settings.Flag",
            "Device.Settings.Int",
            "Device.Settings.Mode",
            "Device.Settings.Name",
            "Device.Settings.Plain",
            "Device.Settings.Secret",
            "Device.Settings.Serial",
            "Device.Settings.Status",
            "Device.Settings.When",
        ]
    );
    let typ = |n: &str| got.iter().find(|e| e.name == n).unwrap().xsi_type;
    assert_eq!(typ("Device.Settings.Count"), "xsd:unsignedInt");
    assert_eq!(typ("Device.Settings.Flag"), "xsd:boolean");
    assert_eq!(typ("Device.Settings.Int"), "xsd:int");
    assert_eq!(typ("Device.Settings.When"), "xsd:dateTime");
    assert_eq!(typ("Device.Settings.Name"), "xsd:string");
    // Defaults and zero values.
    let val = |n: &str| got.iter().find(|e| e.name == n).unwrap().value.clone();
    assert_eq!(val("Device.Settings.Mode"), "Auto");
    assert_eq!(val("Device.Settings.Flag"), "false");
    assert_eq!(val("Device.Settings.Count"), "0");
    assert_eq!(val("Device.Settings.When"), "0001-01-01T00:00:00Z");

    let table = s.get_values(&["Device.Table."]).unwrap();
    let table_names: Vec<&str> = table.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        table_names,
        vec![
            "Device.Table.1.Alias",
            "Device.Table.1.Enable",
            "Device.Table.1.Stats.Bytes",
            "Device.Table.1.SubNumberOfEntries",
            "Device.Table.2.Alias",
            "Device.Table.2.Enable",
            "Device.Table.2.Stats.Bytes",
            "Device.Table.2.Sub.1.Value",
            "Device.Table.2.SubNumberOfEntries",
        ]
    );
    let names_in = ["Device.Table.2.", "Device.Settings.Flag", "Device.Kept."];
    let several = s.get_values(&names_in).unwrap();
    assert_eq!(several.len(), 5 + 1 + 1);
    assert_eq!(several[5].name, "Device.Settings.Flag");
    assert_eq!(several[6].name, "Device.Kept.1.Name");
    assert_eq!(s.count_values(&names_in), Ok(several.len()));
    assert_eq!(s.count_values(&["Device.Table."]), Ok(table.len()));
    assert_eq!(s.count_values(&[""]), Ok(s.param_count()));
    assert_eq!(s.get_values(&[""]).unwrap().len(), s.param_count());
    // An empty table is a valid partial path with nothing below it.
    assert_eq!(s.get_values(&["Device.Table.2.Sub.1."]).unwrap().len(), 1);
    assert!(s.get_values(&["Device.Table.1.Sub."]).unwrap().is_empty());
}

/// TR-069 A.3.2.2 / TR-106 `hidden`: a hidden (secured) value reads back as an empty string,
/// by full and by partial path, while the agent can still read it for its own use.
#[test]
fn gpv_hidden_values_read_back_empty() {
    let mut s = store();
    s.set_values(&spv(&[("Device.Settings.Secret", "s3cret")]), Origin::Acs)
        .unwrap();
    assert_eq!(value(&mut s, "Device.Settings.Secret"), "");
    let full = s.get_values(&["Device.Settings.Secret"]).unwrap();
    assert_eq!(full[0].value, "");
    assert_eq!(full[0].xsi_type, "xsd:string");
    let partial = s.get_values(&["Device.Settings."]).unwrap();
    let e = partial
        .iter()
        .find(|e| e.name == "Device.Settings.Secret")
        .unwrap();
    assert_eq!(e.value, "");
    assert_eq!(s.secret("Device.Settings.Secret"), Some("s3cret"));
}

/// TR-069 A.3.2.2: an unknown name anywhere in the list is fault 9005, and no value is produced
/// (every name is checked first).
#[test]
fn gpv_unknown_name_is_9005_and_nothing_is_produced() {
    let mut s = store();
    for bad in [
        "Device.Nope",
        "Device.Nope.",
        "Device.Settings",
        "Device.Settings.Flag.",
        "Device.Table.1.",
        "Device.Kept.1.Nope",
    ] {
        let mut produced = 0;
        let r = s.for_each_value(&["Device.Settings.", bad], |_| produced += 1);
        assert_eq!(r.unwrap_err().code, 9005, "{bad}");
        assert_eq!(produced, 0, "{bad}: entries produced before the fault");
        assert_eq!(s.get_values(&[bad]).unwrap_err().code, 9005);
        assert_eq!(s.count_values(&[bad]).unwrap_err().code, 9005);
    }
}

/// TR-069 A.3.2.2 with cwmp-1-2.xsd (names are string(256)): a longer name is fault 9005.
#[test]
fn gpv_names_longer_than_256_are_9005() {
    let mut s = store();
    let too_long = long_name(257);
    assert_eq!(too_long.len(), 257);
    assert_eq!(s.get_values(&[&too_long]).unwrap_err().code, 9005);
    assert_eq!(s.count_values(&[&too_long]).unwrap_err().code, 9005);
    let too_long_obj = format!("{}.", long_name(256));
    assert_eq!(s.get_values(&[&too_long_obj]).unwrap_err().code, 9005);
    assert_eq!(s.get_attributes(&[&too_long]).unwrap_err().code, 9005);
    assert!(s.expand(&too_long).is_err());
}

/// TR-069 A.3.2.2: live values (UpTime) are read through the live source at each request; when
/// the source has nothing, the stored value is answered.
#[test]
fn gpv_live_values_come_from_the_live_source() {
    let (mut s, live) = store_with(FACTORY);
    assert_eq!(value(&mut s, "Device.DeviceInfo.UpTime"), "42");
    live.set(LiveKind::UpTime, "43");
    let v = s.get_values(&["Device.DeviceInfo."]).unwrap();
    let up = v
        .iter()
        .find(|e| e.name == "Device.DeviceInfo.UpTime")
        .unwrap();
    assert_eq!(up.value, "43");
    assert_eq!(up.xsi_type, "xsd:unsignedInt");
    live.unset(LiveKind::UpTime);
    assert_eq!(value(&mut s, "Device.DeviceInfo.UpTime"), "0");
    assert_eq!(
        s.source("Device.DeviceInfo.UpTime"),
        Some(Source::Live(LiveKind::UpTime))
    );
    assert_eq!(s.source("Device.Settings.Flag"), Some(Source::Stored));
}

// ---------------------------------------------------------------------------------------------
// SetParameterValues (TR-069 A.3.2.1)
// ---------------------------------------------------------------------------------------------

/// TR-069 A.3.2.1: the values are applied; the answer lists the parameters whose value really
/// changed (a set to the current value changes nothing).
#[test]
fn spv_applies_values_and_reports_what_changed() {
    let mut s = store();
    let changed = s
        .set_values(
            &spv(&[
                ("Device.Settings.Flag", "true"),
                ("Device.Settings.Count", "7"),
                ("Device.Settings.Mode", "Auto"),
            ]),
            Origin::Acs,
        )
        .unwrap();
    assert_eq!(
        changed,
        vec!["Device.Settings.Flag", "Device.Settings.Count"]
    );
    assert_eq!(value(&mut s, "Device.Settings.Flag"), "true");
    assert_eq!(value(&mut s, "Device.Settings.Count"), "7");
    assert!(s.is_dirty());
    s.mark_clean();
    let again = s
        .set_values(&spv(&[("Device.Settings.Flag", "1")]), Origin::Acs)
        .unwrap();
    assert!(again.is_empty(), "same value: {again:?}");
    assert!(!s.is_dirty());
}

/// TR-069 A.3.2.1: SetParameterValues is atomic. One bad entry and nothing is applied; the
/// fault (9003) lists every failing parameter with its own code: 9005 unknown, 9006 wrong type,
/// 9007 bad value, 9008 not writable.
#[test]
fn spv_is_atomic_and_lists_every_failing_parameter() {
    let mut s = store();
    let before = all_values(&mut s);
    let e = s
        .set_values(
            &spv(&[
                ("Device.Settings.Count", "5"),
                ("Device.Settings.Nope", "1"),
                ("Device.Settings.Flag", "maybe"),
                ("Device.Settings.Name", "much too long"),
                ("Device.Settings.Status", "Down"),
                ("Device.Settings.Int", "3"),
                ("Device.Kept.1.", "x"),
            ]),
            Origin::Acs,
        )
        .unwrap_err();
    assert_eq!(e.fault.code, 9003);
    assert_eq!(
        spv_faults(&e),
        vec![
            ("Device.Settings.Nope", 9005),
            ("Device.Settings.Flag", 9006),
            ("Device.Settings.Name", 9007),
            ("Device.Settings.Status", 9008),
            ("Device.Kept.1.", 9005),
        ]
    );
    assert_eq!(all_values(&mut s), before, "nothing applied");
    assert!(!s.is_dirty());
    assert!(!s.has_changes());
}

/// TR-069 A.3.2.1: a parameter named twice in one request is an invalid argument (9003), and
/// nothing is applied, even when both entries carry the same valid value.
#[test]
fn spv_same_parameter_twice_is_9003() {
    let mut s = store();
    for second in ["false", "true"] {
        let e = s
            .set_values(
                &spv(&[
                    ("Device.Settings.Flag", "true"),
                    ("Device.Settings.Count", "3"),
                    ("Device.Settings.Flag", second),
                ]),
                Origin::Acs,
            )
            .unwrap_err();
        assert_eq!(e.fault.code, 9003);
        assert_eq!(spv_faults(&e), vec![("Device.Settings.Flag", 9003)]);
        assert_eq!(value(&mut s, "Device.Settings.Flag"), "false");
        assert_eq!(value(&mut s, "Device.Settings.Count"), "0");
    }
}

/// TR-069 A.3.2.1 with TR-106 `int` and the range facet: the facet's bounds are inclusive;
/// outside the facet is 9007, outside the 32-bit type or not a number is 9006. A leading `+`
/// is accepted and stored in canonical form.
#[test]
fn spv_int_ranges() {
    let mut s = store();
    for ok in ["-10", "10", "0", "+5"] {
        s.set_values(&spv(&[("Device.Settings.Int", ok)]), Origin::Acs)
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    assert_eq!(value(&mut s, "Device.Settings.Int"), "5");
    assert_eq!(spv_code(&mut s, "Device.Settings.Int", "11"), 9007);
    assert_eq!(spv_code(&mut s, "Device.Settings.Int", "-11"), 9007);
    assert_eq!(spv_code(&mut s, "Device.Settings.Int", "ten"), 9006);
    assert_eq!(spv_code(&mut s, "Device.Settings.Int", "1.5"), 9006);
    assert_eq!(spv_code(&mut s, "Device.Settings.Int", ""), 9006);
    for ok in ["-2147483648", "2147483647"] {
        s.set_values(&spv(&[("Device.Settings.Plain", ok)]), Origin::Acs)
            .unwrap();
        assert_eq!(value(&mut s, "Device.Settings.Plain"), ok);
    }
    assert_eq!(
        spv_code(&mut s, "Device.Settings.Plain", "2147483648"),
        9006
    );
    assert_eq!(
        spv_code(&mut s, "Device.Settings.Plain", "-2147483649"),
        9006
    );
}

/// TR-069 A.3.2.1 with TR-106 `unsignedInt`: 0 to 4294967295; negative, too large or not an
/// integer is 9006.
#[test]
fn spv_unsigned_int() {
    let mut s = store();
    for ok in ["0", "4294967295"] {
        s.set_values(&spv(&[("Device.Settings.Count", ok)]), Origin::Acs)
            .unwrap();
        assert_eq!(value(&mut s, "Device.Settings.Count"), ok);
    }
    for bad in ["-1", "4294967296", "1e3", "0x10", "12abc"] {
        assert_eq!(
            spv_code(&mut s, "Device.Settings.Count", bad),
            9006,
            "{bad}"
        );
    }
}

/// TR-069 A.3.2.1 with xsd:boolean: `true`/`false` in any case and `1`/`0` are accepted and
/// stored as `true`/`false`; anything else is 9006.
#[test]
fn spv_boolean_in_any_case() {
    let mut s = store();
    for (given, stored) in [
        ("TRUE", "true"),
        ("False", "false"),
        ("1", "true"),
        ("0", "false"),
        ("tRuE", "true"),
        ("false", "false"),
        ("true", "true"),
    ] {
        s.set_values(&spv(&[("Device.Settings.Flag", given)]), Origin::Acs)
            .unwrap_or_else(|e| panic!("{given}: {e:?}"));
        assert_eq!(value(&mut s, "Device.Settings.Flag"), stored, "{given}");
    }
    for bad in ["yes", "on", "2", "", "truth"] {
        assert_eq!(
            spv_code(&mut s, "Device.Settings.Flag", bad),
            9006,
            "{bad:?}"
        );
    }
}

/// TR-069 A.3.2.1 with xsd:dateTime: UTC with or without fractional seconds (GenieACS sends
/// `.000Z`), offsets and the Unknown Time are accepted; impossible dates and other text are
/// 9006.
#[test]
fn spv_date_time() {
    let mut s = store();
    for ok in [
        "2024-02-29T12:00:00Z",
        "2024-02-29T12:00:00.000Z",
        "2024-06-01T08:30:00+02:00",
        "0001-01-01T00:00:00Z",
    ] {
        s.set_values(&spv(&[("Device.Settings.When", ok)]), Origin::Acs)
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        assert_eq!(value(&mut s, "Device.Settings.When"), ok);
    }
    for bad in [
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-01 00:00:00Z",
        "yesterday",
        "",
    ] {
        assert_eq!(
            spv_code(&mut s, "Device.Settings.When", bad),
            9006,
            "{bad:?}"
        );
    }
}

/// TR-069 A.3.2.1 with the size and enumeration facets: a string longer than maxLength (counted
/// in characters) is 9007; a value outside the enumeration (case-sensitive) is 9007.
#[test]
fn spv_string_max_length_and_enumerations() {
    let mut s = store();
    for ok in ["", "12345678", "éééééééé"] {
        s.set_values(&spv(&[("Device.Settings.Name", ok)]), Origin::Acs)
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        assert_eq!(value(&mut s, "Device.Settings.Name"), ok);
    }
    assert_eq!(spv_code(&mut s, "Device.Settings.Name", "123456789"), 9007);
    assert_eq!(spv_code(&mut s, "Device.Settings.Name", "ééééééééé"), 9007);
    s.set_values(&spv(&[("Device.Settings.Mode", "Manual")]), Origin::Acs)
        .unwrap();
    assert_eq!(value(&mut s, "Device.Settings.Mode"), "Manual");
    for bad in ["manual", "AUTO", "Off", ""] {
        assert_eq!(
            spv_code(&mut s, "Device.Settings.Mode", bad),
            9007,
            "{bad:?}"
        );
    }
}

/// TR-069 A.3.2.1: an xsi:type that does not fit the parameter is 9006; xsd:string is accepted
/// for anything (ACSs send it when they do not know the type), integer types for integers.
#[test]
fn spv_declared_xsi_type_must_fit() {
    let mut s = store();
    let e = s
        .set_values(
            &spv_typed("Device.Settings.Flag", "1", "xsd:int"),
            Origin::Acs,
        )
        .unwrap_err();
    assert_eq!(spv_faults(&e), vec![("Device.Settings.Flag", 9006)]);
    let e = s
        .set_values(
            &spv_typed("Device.Settings.Count", "1", "xsd:dateTime"),
            Origin::Acs,
        )
        .unwrap_err();
    assert_eq!(spv_faults(&e), vec![("Device.Settings.Count", 9006)]);
    for (name, v, t) in [
        ("Device.Settings.Flag", "true", "xsd:boolean"),
        ("Device.Settings.Flag", "false", "xsd:string"),
        ("Device.Settings.Count", "9", "xsd:int"),
        ("Device.Settings.Count", "10", "xsd:unsignedInt"),
        ("Device.Settings.Int", "-3", "xsd:long"),
    ] {
        s.set_values(&spv_typed(name, v, t), Origin::Acs)
            .unwrap_or_else(|e| panic!("{name} {t}: {e:?}"));
    }
}

/// TR-069 A.3.2.1: a read-only parameter is 9008 for the ACS; the device side (Origin::Local)
/// may write it, since it describes the device's own state. A writeOnceReadOnly parameter takes
/// one write from the ACS, then is 9008.
#[test]
fn spv_read_only_is_9008_for_the_acs_but_allowed_locally() {
    let mut s = store();
    assert_eq!(spv_code(&mut s, "Device.Settings.Status", "Down"), 9008);
    assert_eq!(
        spv_code(&mut s, "Device.DeviceInfo.SoftwareVersion", "2"),
        9008
    );
    assert_eq!(spv_code(&mut s, "Device.TableNumberOfEntries", "3"), 9008);
    assert_eq!(value(&mut s, "Device.Settings.Status"), "Up");
    s.set_values(&spv(&[("Device.Settings.Status", "Down")]), Origin::Local)
        .unwrap();
    assert_eq!(value(&mut s, "Device.Settings.Status"), "Down");
    // The type is still checked for the device side.
    let e = s
        .set_values(&spv(&[("Device.Settings.Count", "-1")]), Origin::Local)
        .unwrap_err();
    assert_eq!(spv_faults(&e), vec![("Device.Settings.Count", 9006)]);

    s.set_values(&spv(&[("Device.Settings.Serial", "SN1")]), Origin::Acs)
        .unwrap();
    assert_eq!(spv_code(&mut s, "Device.Settings.Serial", "SN2"), 9008);
    assert_eq!(value(&mut s, "Device.Settings.Serial"), "SN1");
}

/// TR-069 A.3.2.1: a value the device computes (a live value such as UpTime) cannot be set:
/// 9008 for the ACS and for the device side alike.
#[test]
fn spv_live_values_are_9008() {
    let mut s = store();
    assert_eq!(spv_code(&mut s, "Device.DeviceInfo.UpTime", "5"), 9008);
    for origin in [Origin::Local, Origin::Internal] {
        let e = s
            .set_values(&spv(&[("Device.DeviceInfo.UpTime", "5")]), origin)
            .unwrap_err();
        assert_eq!(spv_faults(&e), vec![("Device.DeviceInfo.UpTime", 9008)]);
    }
    assert_eq!(value(&mut s, "Device.DeviceInfo.UpTime"), "42");
}

/// TR-069 A.3.2.1 and §3.7.1.5 (4 VALUE CHANGE): a change the ACS makes itself is not
/// notified back to it, whatever the Notification attribute.
#[test]
fn spv_changes_by_the_acs_are_not_notified() {
    let mut s = store();
    s.set_attributes(&[
        notif(1, "Device.Settings.Flag"),
        notif(2, "Device.Settings.Count"),
    ])
    .unwrap();
    let generation = s.active_generation();
    s.set_values(
        &spv(&[
            ("Device.Settings.Flag", "true"),
            ("Device.Settings.Count", "9"),
            ("Device.DeviceInfo.ProvisioningCode", "ABC"),
        ]),
        Origin::Acs,
    )
    .unwrap();
    assert!(!s.has_changes());
    assert!(pending(&mut s).is_empty());
    assert!(!s.has_active_change());
    assert_eq!(s.active_generation(), generation);
    // The agent's bookkeeping of an ACS request (ParameterKey) is the ACS's own change too.
    assert_eq!(
        s.set_unchecked("Device.Settings.Count", "10", Origin::Acs),
        Ok(true)
    );
    assert!(!s.has_changes());
}

/// TR-069 §3.7.1.5 / A.3.2.4 (Notification): a change made by the device side is notified:
/// passive (1) → a pending change for the next Inform, no session; active (2) → a pending
/// change, has_active_change and a new active_generation. Notification 0 → nothing. Delivered
/// changes are forgotten.
#[test]
fn local_changes_are_notified_passive_and_active() {
    let mut s = store();
    s.set_attributes(&[
        notif(1, "Device.Settings.Flag"),
        notif(2, "Device.Settings.Count"),
    ])
    .unwrap();
    let g0 = s.active_generation();

    s.set_values(&spv(&[("Device.Settings.Name", "quiet")]), Origin::Local)
        .unwrap();
    assert!(!s.has_changes(), "Notification 0 is not notified");

    s.set_values(&spv(&[("Device.Settings.Flag", "TRUE")]), Origin::Local)
        .unwrap();
    assert_eq!(
        pending(&mut s),
        vec![("Device.Settings.Flag".to_string(), "true".to_string())]
    );
    assert!(!s.has_active_change());
    assert_eq!(s.active_generation(), g0);

    assert_eq!(s.set_internal("Device.Settings.Count", "4"), Ok(true));
    assert!(s.has_active_change());
    let g1 = s.active_generation();
    assert!(g1 > g0);
    let p = s.pending_changes();
    assert_eq!(p.len(), 2);
    let count = p
        .iter()
        .find(|e| e.name == "Device.Settings.Count")
        .unwrap();
    assert_eq!(
        (count.value.as_str(), count.xsi_type),
        ("4", "xsd:unsignedInt")
    );

    // The same value again is no change.
    assert_eq!(s.set_internal("Device.Settings.Count", "4"), Ok(false));
    assert_eq!(s.active_generation(), g1);
    // A second active change is a new generation.
    s.set_values(&spv(&[("Device.Settings.Count", "5")]), Origin::Local)
        .unwrap();
    assert!(s.active_generation() > g1);

    // Delivering the passive one leaves the active one pending.
    s.clear_changes(&["Device.Settings.Flag".to_string()]);
    assert!(s.has_active_change());
    assert_eq!(pending(&mut s).len(), 1);
    s.clear_changes(&["Device.Settings.Count".to_string()]);
    assert!(!s.has_active_change());
    assert!(!s.has_changes());
}

/// TR-069 §3.7.1.5 / A.3.2.4: live values with Notification on are polled; a changed live value
/// is a pending change (passive here: UpTime is canDeny, so only passive is possible).
#[test]
fn polled_live_values_are_notified() {
    let (mut s, live) = store_with(FACTORY);
    live.set(LiveKind::UpTime, "100");
    assert_eq!(s.poll_live(), 0, "no notification: not polled");
    s.set_attributes(&[notif(1, "Device.DeviceInfo.UpTime")])
        .unwrap();
    s.poll_live();
    s.clear_changes(&["Device.DeviceInfo.UpTime".to_string()]);
    live.set(LiveKind::UpTime, "101");
    assert_eq!(s.poll_live(), 1);
    assert_eq!(
        pending(&mut s),
        vec![("Device.DeviceInfo.UpTime".to_string(), "101".to_string())]
    );
    assert!(!s.has_active_change());
    assert_eq!(s.poll_live(), 0, "unchanged");
}

// ---------------------------------------------------------------------------------------------
// AddObject / DeleteObject (TR-069 A.3.2.6, A.3.2.7)
// ---------------------------------------------------------------------------------------------

/// TR-069 A.3.2.6: instance numbers increase and are never reused, also after the last (highest)
/// instance was deleted and after every instance was deleted.
#[test]
fn add_object_instance_numbers_increase_and_are_never_reused() {
    let mut s = store();
    assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(1));
    assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(2));
    s.delete_object("Device.Table.2.", Origin::Acs).unwrap();
    assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(3));
    s.delete_object("Device.Table.1.", Origin::Acs).unwrap();
    s.delete_object("Device.Table.3.", Origin::Acs).unwrap();
    assert!(s.instance_numbers("Device.Table.").is_empty());
    assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(4));
    assert_eq!(s.instance_numbers("Device.Table."), vec![4]);
    // A new instance starts from defaults, not from what a deleted one held.
    s.set_values(&spv(&[("Device.Table.4.Alias", "x")]), Origin::Acs)
        .unwrap();
    s.delete_object("Device.Table.4.", Origin::Acs).unwrap();
    assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(5));
    assert_eq!(value(&mut s, "Device.Table.5.Alias"), "");
    // Sub-tables count on their own.
    assert_eq!(s.add_object("Device.Table.5.Sub.", Origin::Acs), Ok(1));
    assert_eq!(s.add_object("Device.Table.5.Sub.", Origin::Acs), Ok(2));
    // Factory instances (from the configuration) count too.
    let (mut f, _) = store_with(&[("Device.Table.7.Alias", "seven")]);
    assert_eq!(f.instance_numbers("Device.Table."), vec![7]);
    assert_eq!(f.add_object("Device.Table.", Origin::Acs), Ok(8));
}

/// TR-069 A.3.2.6: an AddObject beyond maxEntries is 9004 Resources exceeded; the refused add
/// consumes no instance number.
#[test]
fn add_object_beyond_max_entries_is_9004() {
    let mut s = store();
    for n in 1..=3 {
        assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(n));
    }
    assert_eq!(
        s.add_object("Device.Table.", Origin::Acs).unwrap_err().code,
        9004
    );
    assert_eq!(
        s.add_object("Device.Table.", Origin::Local)
            .unwrap_err()
            .code,
        9004
    );
    assert_eq!(s.instance_numbers("Device.Table."), vec![1, 2, 3]);
    s.delete_object("Device.Table.2.", Origin::Acs).unwrap();
    assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(4));
    // Kept: maxEntries 2, one factory row.
    assert_eq!(s.add_object("Device.Kept.", Origin::Acs), Ok(2));
    assert_eq!(
        s.add_object("Device.Kept.", Origin::Acs).unwrap_err().code,
        9004
    );
}

/// TR-069 A.3.2.6 (9004): a table the model leaves unbounded still stops at
/// MAX_ENTRIES_UNBOUNDED instances, so an ACS cannot grow the store without end.
#[test]
fn add_object_to_an_unbounded_table_stops_at_the_run_time_limit() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    for n in 1..=MAX_ENTRIES_UNBOUNDED {
        assert_eq!(s.add_object("Device.Table.1.Sub.", Origin::Acs), Ok(n));
    }
    let e = s
        .add_object("Device.Table.1.Sub.", Origin::Acs)
        .unwrap_err();
    assert_eq!(e.code, 9004);
    assert_eq!(
        value(&mut s, "Device.Table.1.SubNumberOfEntries"),
        MAX_ENTRIES_UNBOUNDED.to_string()
    );
}

/// TR-069 A.3.2.7: deleting an instance of a table at its minEntries is refused with 9001
/// Request denied.
#[test]
fn delete_object_below_min_entries_is_9001() {
    let mut s = store();
    assert_eq!(
        s.delete_object("Device.Kept.1.", Origin::Acs)
            .unwrap_err()
            .code,
        9001
    );
    assert_eq!(
        s.delete_object("Device.Kept.1.", Origin::Local)
            .unwrap_err()
            .code,
        9001
    );
    assert_eq!(s.add_object("Device.Kept.", Origin::Acs), Ok(2));
    s.delete_object("Device.Kept.1.", Origin::Acs).unwrap();
    assert_eq!(
        s.delete_object("Device.Kept.2.", Origin::Acs)
            .unwrap_err()
            .code,
        9001
    );
    assert_eq!(s.instance_numbers("Device.Kept."), vec![2]);
}

/// TR-069 A.3.2.6 / A.3.2.7: a table the model marks read-only (the device fills it) refuses
/// AddObject and DeleteObject from the ACS with 9005; the device side may add and delete.
#[test]
fn a_read_only_table_is_9005_for_the_acs() {
    let mut s = store();
    assert_eq!(
        s.add_object("Device.Fixed.", Origin::Acs).unwrap_err().code,
        9005
    );
    assert_eq!(
        s.delete_object("Device.Fixed.1.", Origin::Acs)
            .unwrap_err()
            .code,
        9005
    );
    assert_eq!(s.instance_numbers("Device.Fixed."), vec![1, 2]);
    assert_eq!(s.add_object("Device.Fixed.", Origin::Local), Ok(3));
    s.delete_object("Device.Fixed.1.", Origin::Local).unwrap();
    assert_eq!(s.instance_numbers("Device.Fixed."), vec![2, 3]);
    assert_eq!(value(&mut s, "Device.FixedNumberOfEntries"), "2");
}

/// TR-069 A.3.2.6 / A.3.2.7: ObjectName must be a table path (AddObject) or an instance path
/// (DeleteObject) ending in a dot; anything else is 9005.
#[test]
fn add_and_delete_object_on_wrong_paths_are_9005() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    for bad in [
        "Device.Table",
        "Device.Settings.",
        "Device.Table.1.",
        "Device.Table.1.Stats.",
        "Device.Nope.",
        "Device.Settings.Flag",
        "",
    ] {
        assert_eq!(
            s.add_object(bad, Origin::Acs).unwrap_err().code,
            9005,
            "add {bad:?}"
        );
    }
    let too_long = format!("{}.", long_name(256));
    assert_eq!(s.add_object(&too_long, Origin::Acs).unwrap_err().code, 9005);
    for bad in [
        "Device.Table.",
        "Device.Table.1",
        "Device.Table.9.",
        "Device.Settings.",
        "Device.Table.1.Stats.",
        "Device.Table.1.Sub.",
        "",
    ] {
        assert_eq!(
            s.delete_object(bad, Origin::Acs).unwrap_err().code,
            9005,
            "delete {bad:?}"
        );
    }
    assert_eq!(s.instance_numbers("Device.Table."), vec![1]);
}

/// TR-069 A.3.2.6 / A.3.2.7 with TR-106 numEntriesParameter: `…NumberOfEntries` follows every
/// add and delete, of tables and sub-tables; a deleted instance takes its whole subtree with it.
#[test]
fn number_of_entries_follows_add_and_delete() {
    let mut s = store();
    assert_eq!(value(&mut s, "Device.TableNumberOfEntries"), "0");
    assert_eq!(value(&mut s, "Device.FixedNumberOfEntries"), "2");
    assert_eq!(value(&mut s, "Device.KeptNumberOfEntries"), "1");
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    assert_eq!(value(&mut s, "Device.TableNumberOfEntries"), "2");
    assert_eq!(value(&mut s, "Device.Table.1.SubNumberOfEntries"), "0");
    s.add_object("Device.Table.1.Sub.", Origin::Acs).unwrap();
    s.add_object("Device.Table.1.Sub.", Origin::Acs).unwrap();
    assert_eq!(value(&mut s, "Device.Table.1.SubNumberOfEntries"), "2");
    assert_eq!(value(&mut s, "Device.Table.2.SubNumberOfEntries"), "0");
    s.delete_object("Device.Table.1.Sub.1.", Origin::Acs)
        .unwrap();
    assert_eq!(value(&mut s, "Device.Table.1.SubNumberOfEntries"), "1");
    let params_before = s.param_count();
    s.delete_object("Device.Table.1.", Origin::Acs).unwrap();
    assert_eq!(value(&mut s, "Device.TableNumberOfEntries"), "1");
    // Alias, Enable, SubNumberOfEntries, Stats.Bytes, Sub.2.Value.
    assert_eq!(s.param_count(), params_before - 5);
    for gone in [
        "Device.Table.1.",
        "Device.Table.1.Sub.",
        "Device.Table.1.Sub.2.",
        "Device.Table.1.Stats.",
    ] {
        assert_eq!(s.get_values(&[gone]).unwrap_err().code, 9005, "{gone}");
        assert_eq!(s.get_names(gone, true).unwrap_err().code, 9005, "{gone}");
    }
    assert!(s.get("Device.Table.1.Sub.2.Value").is_none());
    assert!(s.get("Device.Table.2.Alias").is_some());
}

/// TR-069 A.3.2.6 and §3.7.1.5: the ACS's own AddObject/DeleteObject does not raise a change of
/// `…NumberOfEntries` (it is the ACS's own change), a device-side add or delete does.
#[test]
fn number_of_entries_changes_are_notified_only_for_device_side_adds() {
    let mut s = store();
    s.set_attributes(&[notif(2, "Device.TableNumberOfEntries")])
        .unwrap();
    let g0 = s.active_generation();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.delete_object("Device.Table.1.", Origin::Acs).unwrap();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    assert!(!s.has_changes());
    assert!(!s.has_active_change());
    assert_eq!(s.active_generation(), g0);

    s.add_object("Device.Table.", Origin::Local).unwrap();
    assert_eq!(
        pending(&mut s),
        vec![("Device.TableNumberOfEntries".to_string(), "2".to_string())]
    );
    assert!(s.has_active_change());
    assert!(s.active_generation() > g0);
    s.clear_changes(&["Device.TableNumberOfEntries".to_string()]);

    s.delete_object("Device.Table.2.", Origin::Local).unwrap();
    assert_eq!(
        pending(&mut s),
        vec![("Device.TableNumberOfEntries".to_string(), "1".to_string())]
    );
}

/// TR-069 A.3.2.7 with §3.7.1.5: a pending change of a parameter inside a deleted instance is
/// dropped with it (the parameter no longer exists), and so is the active-change flag it raised.
#[test]
fn delete_object_drops_the_pending_changes_of_the_instance() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.set_attributes(&[notif(2, "Device.Table.1.Enable")])
        .unwrap();
    s.set_values(&spv(&[("Device.Table.1.Enable", "true")]), Origin::Local)
        .unwrap();
    assert!(s.has_active_change());
    s.delete_object("Device.Table.1.", Origin::Acs).unwrap();
    assert!(pending(&mut s).is_empty());
    assert!(!s.has_changes());
    assert!(
        !s.has_active_change(),
        "no change is waiting, but a session would still be asked for"
    );
}

// ---------------------------------------------------------------------------------------------
// Attributes (TR-069 A.3.2.4 SetParameterAttributes, A.3.2.5 GetParameterAttributes)
// ---------------------------------------------------------------------------------------------

/// TR-069 A.3.2.4 / A.3.2.5: Notification 0 (off), 1 (passive) and 2 (active) are set and read
/// back; the default is 0 with an empty AccessList; a partial path reads every parameter below.
#[test]
fn notification_0_to_2_is_set_and_read_back() {
    let mut s = store();
    let a = s.get_attributes(&["Device.Settings.Flag"]).unwrap();
    assert_eq!(a, vec![("Device.Settings.Flag".to_string(), 0, Vec::new())]);
    for n in [1, 2, 0, 2] {
        s.set_attributes(&[notif(n, "Device.Settings.Flag")])
            .unwrap();
        assert_eq!(notification(&s, "Device.Settings.Flag"), n);
    }
    s.set_attributes(&[notif(1, "Device.Settings.")]).unwrap();
    let all = s.get_attributes(&["Device.Settings."]).unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|(_, n, _)| *n == 1), "{all:?}");
    // The forced ones default to active.
    assert_eq!(notification(&s, "Device.DeviceInfo.SoftwareVersion"), 2);
    assert_eq!(s.get_attributes(&["Device.Nope"]).unwrap_err().code, 9005);
    assert_eq!(s.get_attributes(&[""]).unwrap().len(), s.param_count());
}

/// TR-069 A.3.2.4 with cwmp-1-4.xsd: Notification takes 0–6 (3–6 are the lightweight
/// notifications of Annex M); 7 is refused with 9003 and nothing changes. 3–6 read back and
/// survive a snapshot / restore.
#[test]
fn notification_3_to_6_accepted_7_is_9003() {
    let mut s = store();
    for n in 3..=6 {
        s.set_attributes(&[notif(n, "Device.Settings.Flag")])
            .unwrap();
        assert_eq!(notification(&s, "Device.Settings.Flag"), n);
    }
    for name in ["Device.Settings.Flag", "Device.Settings."] {
        let e = s.set_attributes(&[notif(7, name)]).unwrap_err();
        assert_eq!(e.code, 9003, "{name}");
    }
    assert_eq!(notification(&s, "Device.Settings.Flag"), 6);
    let snap = s.snapshot();
    let mut t = store();
    assert!(t.restore(&snap).is_empty());
    assert_eq!(notification(&t, "Device.Settings.Flag"), 6);
}

/// cwmp-1-4.xsd: 3 passive lightweight, 4 = passive + passive lightweight, 5 active
/// lightweight, 6 = passive + active lightweight; the two mechanisms run independently and
/// none of 3–6 is an active (session-opening) notification. The ACS's own changes are not
/// notified; changes coalesce per parameter.
#[test]
fn lightweight_notification_values_split_inform_and_lightweight() {
    let mut s = store();
    let names = [
        "Device.Settings.Int",
        "Device.Settings.Plain",
        "Device.Settings.Count",
        "Device.Settings.Flag",
    ];
    for (n, name) in (3..=6).zip(names) {
        s.set_attributes(&[notif(n, name)]).unwrap();
    }
    let g0 = s.lw_active_generation();
    for (i, name) in names.iter().enumerate() {
        let v = if *name == "Device.Settings.Flag" {
            "true".to_string()
        } else {
            (i + 1).to_string()
        };
        assert_eq!(s.set_internal(name, &v), Ok(true), "{name}");
    }
    // The Inform gets the passive parts of 4 and 6 only; no active change.
    let inform: Vec<String> = pending(&mut s).into_iter().map(|(n, _)| n).collect();
    assert_eq!(inform, ["Device.Settings.Flag", "Device.Settings.Plain"]);
    assert!(!s.has_active_change());
    // The lightweight side gets all four; 5 and 6 are active lightweight.
    let lw: Vec<String> = s.lw_pending().into_iter().map(|e| e.name).collect();
    assert_eq!(lw.len(), 4, "{lw:?}");
    assert_eq!(s.lw_active_generation(), g0 + 2);
    // A second change of the same parameter coalesces.
    s.set_internal("Device.Settings.Int", "9").unwrap();
    assert_eq!(s.lw_pending_count(), 4);
    let int = s
        .lw_pending()
        .into_iter()
        .find(|e| e.name == "Device.Settings.Int")
        .unwrap();
    assert_eq!(int.value, "9");
    s.clear_lw_changes(Some(&["Device.Settings.Int".to_string()]));
    assert_eq!(s.lw_pending_count(), 3);
    s.clear_lw_changes(None);
    assert_eq!(s.lw_pending_count(), 0);
    // The ACS's own change is not notified, lightweight or not.
    s.set_values(&spv(&[("Device.Settings.Plain", "42")]), Origin::Acs)
        .unwrap();
    assert_eq!(s.lw_pending_count(), 0);
    assert_eq!(s.lw_active_generation(), g0 + 2);
}

/// TR-069 A.3.2.4 with TR-106 activeNotify="forceEnabled" (SoftwareVersion, ProvisioningCode):
/// Notification cannot be changed from active; naming such a parameter by full path with 0 or 1
/// is 9009 Notification request rejected; setting it to 2 is accepted.
#[test]
fn force_enabled_named_by_full_path_is_9009() {
    let mut s = store();
    for p in [
        "Device.DeviceInfo.SoftwareVersion",
        "Device.DeviceInfo.ProvisioningCode",
    ] {
        for n in [0, 1] {
            assert_eq!(
                s.set_attributes(&[notif(n, p)]).unwrap_err().code,
                9009,
                "{p} {n}"
            );
        }
        s.set_attributes(&[notif(2, p)]).unwrap();
        assert_eq!(notification(&s, p), 2);
    }
}

/// TR-069 A.3.2.4: under a partial path, a forceEnabled parameter keeps its active notification
/// and the rest of the subtree is set (no 9009); so for the empty path (the whole tree).
#[test]
fn force_enabled_is_skipped_under_a_partial_path() {
    let mut s = store();
    s.set_attributes(&[notif(1, "Device.DeviceInfo.")]).unwrap();
    assert_eq!(notification(&s, "Device.DeviceInfo.SoftwareVersion"), 2);
    assert_eq!(notification(&s, "Device.DeviceInfo.ProvisioningCode"), 2);
    assert_eq!(notification(&s, "Device.DeviceInfo.Description"), 1);
    assert_eq!(notification(&s, "Device.DeviceInfo.UpTime"), 1);
    s.set_attributes(&[notif(0, "")]).unwrap();
    assert_eq!(notification(&s, "Device.DeviceInfo.SoftwareVersion"), 2);
    assert_eq!(notification(&s, "Device.DeviceInfo.Description"), 0);
    assert_eq!(notification(&s, "Device.DeviceInfo.UpTime"), 0);
}

/// TR-069 A.3.2.4 with TR-106 activeNotify="canDeny" (UpTime): active notification is refused,
/// 9009 by full path and skipped under a partial path; passive is always accepted.
#[test]
fn can_deny_refuses_active_notification() {
    let mut s = store();
    let up = "Device.DeviceInfo.UpTime";
    assert_eq!(s.set_attributes(&[notif(2, up)]).unwrap_err().code, 9009);
    assert_eq!(notification(&s, up), 0);
    s.set_attributes(&[notif(1, up)]).unwrap();
    assert_eq!(notification(&s, up), 1);
    s.set_attributes(&[notif(2, "Device.DeviceInfo.")]).unwrap();
    assert_eq!(notification(&s, up), 1, "kept under a partial path");
    assert_eq!(notification(&s, "Device.DeviceInfo.Description"), 2);
    s.set_attributes(&[notif(0, up)]).unwrap();
    assert_eq!(notification(&s, up), 0);
}

/// TR-069 A.3.2.4 (AccessList): the only defined entry is "Subscriber"; any other is 9007. An
/// empty list clears it. AccessListChange alone leaves Notification as it is, and an
/// AccessList applies to every parameter under a partial path, forced ones included.
#[test]
fn access_list_takes_only_subscriber() {
    let mut s = store();
    s.set_attributes(&[notif(1, "Device.Settings.Flag")])
        .unwrap();
    s.set_attributes(&[access("Device.Settings.Flag", &["Subscriber"])])
        .unwrap();
    assert_eq!(
        s.get_attributes(&["Device.Settings.Flag"]).unwrap(),
        vec![(
            "Device.Settings.Flag".to_string(),
            1,
            vec!["Subscriber".to_string()]
        )]
    );
    for bad in [&["Admin"][..], &["Subscriber", "Other"], &["subscriber"]] {
        let e = s
            .set_attributes(&[access("Device.Settings.Count", bad)])
            .unwrap_err();
        assert_eq!(e.code, 9007, "{bad:?}");
    }
    assert!(
        s.get_attributes(&["Device.Settings.Count"]).unwrap()[0]
            .2
            .is_empty()
    );
    s.set_attributes(&[access("Device.Settings.Flag", &[])])
        .unwrap();
    assert!(
        s.get_attributes(&["Device.Settings.Flag"]).unwrap()[0]
            .2
            .is_empty()
    );
    s.set_attributes(&[access("Device.DeviceInfo.", &["Subscriber"])])
        .unwrap();
    let di = s.get_attributes(&["Device.DeviceInfo."]).unwrap();
    assert!(di.iter().all(|(_, _, al)| al == &["Subscriber"]), "{di:?}");
    assert_eq!(notification(&s, "Device.DeviceInfo.SoftwareVersion"), 2);
}

/// TR-069 A.3.2.4: SetParameterAttributes is all or nothing across its list: one entry refused
/// (9005 unknown, 9009 forced, 9007 access list, 9003 out of range) and no entry is applied.
#[test]
fn set_attributes_is_all_or_nothing() {
    let mut s = store();
    let before = s.get_attributes(&[""]).unwrap();
    let cases: Vec<(Vec<AttrSet>, u32)> = vec![
        (
            vec![
                notif(1, "Device.Settings.Flag"),
                notif(1, "Device.Settings.Nope"),
            ],
            9005,
        ),
        (
            vec![
                notif(2, "Device.Settings."),
                notif(0, "Device.DeviceInfo.SoftwareVersion"),
            ],
            9009,
        ),
        (
            vec![
                notif(1, "Device.Settings.Flag"),
                notif(2, "Device.DeviceInfo.UpTime"),
            ],
            9009,
        ),
        (
            vec![
                access("Device.Settings.Flag", &["Subscriber"]),
                access("Device.Settings.Count", &["Admin"]),
            ],
            9007,
        ),
        (
            vec![
                notif(1, "Device.Settings.Flag"),
                notif(7, "Device.Settings.Count"),
            ],
            9003,
        ),
        (
            vec![notif(1, "Device.Settings.Flag"), notif(1, &long_name(257))],
            9005,
        ),
    ];
    for (list, code) in cases {
        let e = s.set_attributes(&list).unwrap_err();
        assert_eq!(e.code, code, "{list:?}");
        assert_eq!(s.get_attributes(&[""]).unwrap(), before, "{list:?} applied");
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot / restore (persisted state across restarts)
// ---------------------------------------------------------------------------------------------

/// Persistence of what TR-069 A.3.2.1 / A.3.2.4 / A.3.2.6 change: the factory state has
/// nothing to persist.
#[test]
fn the_factory_state_snapshots_empty() {
    let s = store();
    assert_eq!(s.snapshot(), Snapshot::default());
}

/// TR-069 A.3.2.1 / A.3.2.4 / A.3.2.6 across a restart: values, attributes, instances and the
/// next instance numbers survive a snapshot and a restore into a fresh factory store, and the
/// restored store snapshots the same; no number is reused after it.
#[test]
fn snapshot_restore_round_trip() {
    let mut a = store();
    for _ in 0..3 {
        a.add_object("Device.Table.", Origin::Acs).unwrap();
    }
    a.delete_object("Device.Table.3.", Origin::Acs).unwrap();
    a.delete_object("Device.Table.1.", Origin::Acs).unwrap();
    a.add_object("Device.Table.2.Sub.", Origin::Acs).unwrap();
    a.add_object("Device.Table.2.Sub.", Origin::Acs).unwrap();
    a.delete_object("Device.Table.2.Sub.2.", Origin::Acs)
        .unwrap();
    a.add_object("Device.Fixed.", Origin::Local).unwrap();
    a.set_values(
        &spv(&[
            ("Device.Settings.Flag", "true"),
            ("Device.Settings.Secret", "pw"),
            ("Device.Settings.When", "2024-01-02T03:04:05Z"),
            ("Device.Table.2.Alias", "two"),
            ("Device.Table.2.Sub.1.Value", "17"),
            ("Device.Kept.1.Name", "renamed"),
            ("Device.DeviceInfo.ProvisioningCode", "PC1"),
        ]),
        Origin::Acs,
    )
    .unwrap();
    a.set_attributes(&[
        notif(1, "Device.Settings.Flag"),
        notif(2, "Device.Table.2.Alias"),
        access("Device.Settings.Count", &["Subscriber"]),
    ])
    .unwrap();
    let snap = a.snapshot();
    assert_eq!(
        snap.tables.get("Device.Table."),
        Some(&(4, vec![2])),
        "{snap:?}"
    );
    assert_eq!(snap.tables.get("Device.Table.2.Sub."), Some(&(3, vec![1])));
    assert_eq!(snap.tables.get("Device.Fixed."), Some(&(4, vec![1, 2, 3])));
    assert!(!snap.tables.contains_key("Device.Kept."), "unchanged table");
    assert_eq!(
        snap.values
            .get("Device.Settings.Secret")
            .map(String::as_str),
        Some("pw"),
        "hidden values are persisted raw"
    );

    let (mut b, _) = store_with(FACTORY);
    let warnings = b.restore(&snap);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(b.snapshot(), snap);
    assert_eq!(all_values(&mut b), all_values(&mut a));
    assert_eq!(
        b.get_attributes(&[""]).unwrap(),
        a.get_attributes(&[""]).unwrap()
    );
    assert_eq!(b.secret("Device.Settings.Secret"), Some("pw"));
    assert!(!b.is_dirty());
    assert!(!b.has_changes());
    assert_eq!(b.add_object("Device.Table.", Origin::Acs), Ok(4));
    assert_eq!(b.add_object("Device.Table.2.Sub.", Origin::Acs), Ok(3));
    assert_eq!(b.add_object("Device.Fixed.", Origin::Local), Ok(4));
    assert_eq!(b.add_object("Device.Kept.", Origin::Acs), Ok(2));
}

/// TR-069 A.3.2.6 across a restart: with every instance deleted, the next number is still
/// persisted, so the first add after the restart does not reuse one.
#[test]
fn restore_keeps_instance_numbers_after_deleting_the_last_instance() {
    let mut a = store();
    a.add_object("Device.Table.", Origin::Acs).unwrap();
    a.add_object("Device.Table.", Origin::Acs).unwrap();
    a.delete_object("Device.Table.2.", Origin::Acs).unwrap();
    a.delete_object("Device.Table.1.", Origin::Acs).unwrap();
    let snap = a.snapshot();
    assert_eq!(snap.tables.get("Device.Table."), Some(&(3, vec![])));
    let mut b = store();
    assert!(b.restore(&snap).is_empty());
    assert!(b.instance_numbers("Device.Table.").is_empty());
    assert_eq!(b.add_object("Device.Table.", Origin::Acs), Ok(3));
}

/// TR-069 A.3.2.7 across a restart: a factory instance the ACS deleted stays deleted after a
/// restore, also in a table with minEntries (the persisted set satisfied it when it was saved).
#[test]
fn restore_replaces_factory_instances_of_a_table_with_min_entries() {
    let mut a = store();
    assert_eq!(a.add_object("Device.Kept.", Origin::Acs), Ok(2));
    a.delete_object("Device.Kept.1.", Origin::Acs).unwrap();
    let snap = a.snapshot();
    assert_eq!(snap.tables.get("Device.Kept."), Some(&(3, vec![2])));
    let mut b = store();
    let warnings = b.restore(&snap);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(b.instance_numbers("Device.Kept."), vec![2]);
    assert_eq!(value(&mut b, "Device.KeptNumberOfEntries"), "1");
    assert_eq!(b.snapshot(), snap);
}

/// TR-069 A.3.2.4 across a restart: the Notification the ACS set on a live (or provider-backed)
/// parameter is persisted like any other attribute, so notifications keep working after it.
#[test]
fn attributes_of_live_parameters_survive_a_restore() {
    let mut a = store();
    a.set_attributes(&[notif(1, "Device.DeviceInfo.UpTime")])
        .unwrap();
    let snap = a.snapshot();
    assert_eq!(
        snap.attrs.get("Device.DeviceInfo.UpTime"),
        Some(&(1, vec![])),
        "{snap:?}"
    );
    let mut b = store();
    assert!(b.restore(&snap).is_empty());
    assert_eq!(notification(&b, "Device.DeviceInfo.UpTime"), 1);
    // The live value itself is never persisted.
    assert!(!snap.values.contains_key("Device.DeviceInfo.UpTime"));
}

/// Restore after a firmware upgrade (TR-069 A.3.2.8 Download, file type 1): entries the model
/// no longer has (tables, values, attributes) and values it no longer accepts are skipped, each
/// with a warning; the rest is applied.
#[test]
fn restore_skips_what_the_model_no_longer_has_with_warnings() {
    let mut snap = Snapshot::default();
    snap.tables.insert("Device.Gone.".into(), (3, vec![1, 2]));
    snap.tables.insert("Device.Table.".into(), (5, vec![4]));
    snap.tables
        .insert("Device.Table.9.Sub.".into(), (2, vec![1]));
    snap.values.insert("Device.Gone.1.X".into(), "1".into());
    snap.values
        .insert("Device.Settings.Flag".into(), "true".into());
    snap.values
        .insert("Device.Settings.Count".into(), "-5".into());
    snap.values
        .insert("Device.Table.4.Alias".into(), "four".into());
    snap.attrs.insert("Device.Gone.1.Y".into(), (1, vec![]));
    snap.attrs
        .insert("Device.Settings.Flag".into(), (2, vec![]));
    let mut s = store();
    let warnings = s.restore(&snap);
    // How many warnings name `what` as a whole path.
    let mentions = |what: &str| {
        warnings
            .iter()
            .filter(|w| w.split([' ', ',', ':']).any(|t| t == what))
            .count()
    };
    assert_eq!(mentions("Device.Gone."), 1, "{warnings:?}");
    assert_eq!(mentions("Device.Table.9.Sub."), 1, "{warnings:?}");
    assert_eq!(mentions("Device.Gone.1.X"), 1, "{warnings:?}");
    assert_eq!(mentions("Device.Settings.Count"), 1, "{warnings:?}");
    assert_eq!(mentions("Device.Gone.1.Y"), 1, "{warnings:?}");
    assert_eq!(warnings.len(), 5, "{warnings:?}");
    assert_eq!(value(&mut s, "Device.Settings.Flag"), "true");
    assert_eq!(value(&mut s, "Device.Settings.Count"), "0");
    assert_eq!(value(&mut s, "Device.Table.4.Alias"), "four");
    assert_eq!(notification(&s, "Device.Settings.Flag"), 2);
    assert_eq!(s.add_object("Device.Table.", Origin::Acs), Ok(5));
}

/// TR-069 A.3.2.6 (InstanceNumber is an unsignedInt ≥ 1): when the largest instance number is
/// in use (from the configuration or a restored state), AddObject is 9004; nothing panics and
/// no instance 0 appears.
#[test]
fn instance_numbers_exhausted_is_9004() {
    let mut snap = Snapshot::default();
    snap.tables
        .insert("Device.Table.".into(), (u32::MAX, vec![]));
    let mut s = store();
    assert!(s.restore(&snap).is_empty());
    assert_eq!(
        s.add_object("Device.Table.", Origin::Acs).unwrap_err().code,
        9004
    );

    let last = format!("Device.Table.{}.Alias", u32::MAX);
    let (mut f, _) = store_with(&[(last.as_str(), "last")]);
    assert_eq!(f.instance_numbers("Device.Table."), vec![u32::MAX]);
    assert_eq!(
        f.add_object("Device.Table.", Origin::Acs).unwrap_err().code,
        9004
    );
    assert_eq!(f.instance_numbers("Device.Table."), vec![u32::MAX]);

    let mut snap = Snapshot::default();
    snap.tables
        .insert("Device.Table.".into(), (1, vec![u32::MAX]));
    let mut r = store();
    assert!(r.restore(&snap).is_empty());
    assert_eq!(
        r.add_object("Device.Table.", Origin::Acs).unwrap_err().code,
        9004
    );
}

// ---------------------------------------------------------------------------------------------
// expand_pattern (InformParameter.{i}.ParameterName, TR-069 A.3.3.1 Inform)
// ---------------------------------------------------------------------------------------------

/// TR-181 InformParameter.{i}.ParameterName (Inform, TR-069 A.3.3.1): `*` stands for any
/// instance number, at any table level; a pattern ending in a dot names every parameter below.
#[test]
fn expand_pattern_matches_instance_numbers() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.2.Sub.", Origin::Acs).unwrap();
    s.add_object("Device.Table.2.Sub.", Origin::Acs).unwrap();
    assert_eq!(
        s.expand_pattern("Device.Table.*.Enable"),
        vec!["Device.Table.1.Enable", "Device.Table.2.Enable"]
    );
    assert_eq!(
        s.expand_pattern("Device.Table.*.Sub.*.Value"),
        vec!["Device.Table.2.Sub.1.Value", "Device.Table.2.Sub.2.Value"]
    );
    assert_eq!(
        s.expand_pattern("Device.Table.2.Sub.*.Value"),
        vec!["Device.Table.2.Sub.1.Value", "Device.Table.2.Sub.2.Value"]
    );
    assert_eq!(
        s.expand_pattern("Device.Table.*.Stats."),
        vec!["Device.Table.1.Stats.Bytes", "Device.Table.2.Stats.Bytes"]
    );
    let all = s.expand_pattern("Device.Table.*.");
    assert_eq!(all, s.expand("Device.Table.").unwrap());
    assert_eq!(all.len(), 4 + 4 + 2);
    assert_eq!(
        s.expand_pattern("Device.Fixed.*.Label"),
        vec!["Device.Fixed.1.Label", "Device.Fixed.2.Label"]
    );
}

/// TR-181 InformParameter.{i}.ParameterName (TR-069 A.3.3.1 Inform): `*` matches instance
/// numbers only (not object names); without a wildcard a pattern is an ordinary full or partial
/// path; a partial pattern names what is below an object, not a parameter; unknown names give
/// nothing (no fault: an InformParameter may name what this device lacks).
#[test]
fn expand_pattern_partial_and_unknown() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    assert!(s.expand_pattern("Device.*.Flag").is_empty());
    assert!(s.expand_pattern("Device.*.").is_empty());
    assert!(s.expand_pattern("Device.*").is_empty());
    assert_eq!(
        s.expand_pattern("Device.Settings.Flag"),
        vec!["Device.Settings.Flag"]
    );
    assert_eq!(s.expand_pattern("Device.Settings.").len(), 10);
    for unknown in [
        "Device.Nope.*.X",
        "Device.Table.*.Nope",
        "Device.Table.*.Enable.",
        "Device.Table.1*.Enable",
        "Device.Table.*1.Enable",
        "Device.Nope",
        "Device.Nope.",
        "Device.Table.5.Enable",
        "",
    ] {
        let got = s.expand_pattern(unknown);
        if unknown.is_empty() {
            // The empty path is the whole tree, as in GetParameterValues.
            assert_eq!(got.len(), s.param_count());
        } else {
            assert!(got.is_empty(), "{unknown:?} gave {got:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shipped data model (datamodel/*.xml)
// ---------------------------------------------------------------------------------------------

/// TR-069 A.3.2.3 on the shipped model: the root, the required objects, and the Writable flags
/// of its tables (InformParameter and XMPP.Connection writable, SupportedDataModel and
/// STBService filled by the device).
#[test]
fn shipped_model_names_and_writable_tables() {
    let (s, _) = shipped();
    assert_eq!(
        s.get_names("", true).unwrap(),
        vec![("Device.".to_string(), false)]
    );
    let top = s.get_names("Device.", true).unwrap();
    for obj in [
        "Device.DeviceInfo.",
        "Device.ManagementServer.",
        "Device.XMPP.",
        "Device.Time.",
        "Device.Services.",
    ] {
        assert!(!writable(&top, obj), "{obj}");
    }
    let ms = s.get_names("Device.ManagementServer.", true).unwrap();
    assert!(writable(&ms, "Device.ManagementServer.InformParameter."));
    assert!(writable(&ms, "Device.ManagementServer.URL"));
    assert!(!writable(&ms, "Device.ManagementServer.ParameterKey"));
    assert!(!writable(
        &ms,
        "Device.ManagementServer.ConnectionRequestURL"
    ));
    assert!(writable(
        &s.get_names("Device.XMPP.", true).unwrap(),
        "Device.XMPP.Connection."
    ));
    assert!(!writable(
        &s.get_names("Device.DeviceInfo.", true).unwrap(),
        "Device.DeviceInfo.SupportedDataModel."
    ));
    assert!(!writable(
        &s.get_names("Device.Services.", true).unwrap(),
        "Device.Services.STBService."
    ));
}

/// TR-069 §3.7.1 (e.5 of the notes): the forced-inform parameters of Device:2, and the
/// notification rules of the shipped model: forceEnabled SoftwareVersion (9009 by full path),
/// canDeny ParameterKey and UpTime (active refused), forceDefaultEnabled ConnectionRequestURL
/// (active by default, the ACS may turn it off).
#[test]
fn shipped_model_forced_inform_and_notification_rules() {
    let (mut s, _) = shipped();
    let mut forced: Vec<String> = s.forced_inform().into_iter().map(|e| e.name).collect();
    forced.sort();
    assert_eq!(
        forced,
        vec![
            "Device.DeviceInfo.HardwareVersion",
            "Device.DeviceInfo.ProvisioningCode",
            "Device.DeviceInfo.SoftwareVersion",
            "Device.ManagementServer.AliasBasedAddressing",
            "Device.ManagementServer.ConnectionRequestURL",
            "Device.ManagementServer.ParameterKey",
            "Device.RootDataModelVersion",
        ]
    );
    let sw = "Device.DeviceInfo.SoftwareVersion";
    assert_eq!(notification(&s, sw), 2);
    assert_eq!(s.set_attributes(&[notif(0, sw)]).unwrap_err().code, 9009);
    for p in [
        "Device.ManagementServer.ParameterKey",
        "Device.DeviceInfo.UpTime",
    ] {
        assert_eq!(
            s.set_attributes(&[notif(2, p)]).unwrap_err().code,
            9009,
            "{p}"
        );
        s.set_attributes(&[notif(1, p)]).unwrap();
    }
    let cr = "Device.ManagementServer.ConnectionRequestURL";
    assert_eq!(notification(&s, cr), 2);
    s.set_attributes(&[notif(0, cr)]).unwrap();
    assert_eq!(notification(&s, cr), 0);
    s.set_attributes(&[notif(1, "Device.ManagementServer.")])
        .unwrap();
    assert_eq!(notification(&s, "Device.ManagementServer.ParameterKey"), 1);
    assert_eq!(notification(&s, "Device.ManagementServer.URL"), 1);
    assert_eq!(value(&mut s, "Device.DeviceInfo.UpTime"), "1234");
    assert_eq!(spv_code(&mut s, "Device.DeviceInfo.UpTime", "1"), 9008);
}

/// TR-069 A.3.2.2 on the shipped model: passwords (hidden/secured) read back empty.
#[test]
fn shipped_model_passwords_read_back_empty() {
    let (mut s, _) = shipped();
    assert_eq!(s.add_object("Device.XMPP.Connection.", Origin::Acs), Ok(1));
    let pw = [
        "Device.ManagementServer.Password",
        "Device.ManagementServer.ConnectionRequestPassword",
        "Device.ManagementServer.STUNPassword",
        "Device.XMPP.Connection.1.Password",
    ];
    let list: Vec<(&str, &str)> = pw.iter().map(|p| (*p, "secret")).collect();
    s.set_values(&spv(&list), Origin::Acs).unwrap();
    for p in pw {
        assert_eq!(value(&mut s, p), "", "{p}");
        assert_eq!(s.secret(p), Some("secret"), "{p}");
    }
    let all = s.get_values(&[""]).unwrap();
    assert!(all.iter().all(|e| e.value != "secret"));
}

/// TR-069 A.3.2.6 / A.3.2.7 on the shipped model: XMPP connections and their servers, the
/// counters, the ACS refused on the STBService table, and an InformParameter pattern over them.
#[test]
fn shipped_model_tables_and_patterns() {
    let (mut s, _) = shipped();
    assert_eq!(s.add_object("Device.XMPP.Connection.", Origin::Acs), Ok(1));
    assert_eq!(s.add_object("Device.XMPP.Connection.", Origin::Acs), Ok(2));
    assert_eq!(
        s.add_object("Device.XMPP.Connection.2.Server.", Origin::Acs),
        Ok(1)
    );
    assert_eq!(value(&mut s, "Device.XMPP.ConnectionNumberOfEntries"), "2");
    assert_eq!(
        value(&mut s, "Device.XMPP.Connection.2.ServerNumberOfEntries"),
        "1"
    );
    assert_eq!(
        value(&mut s, "Device.XMPP.Connection.2.Server.1.Port"),
        "5222"
    );
    assert_eq!(
        s.expand_pattern("Device.XMPP.Connection.*.Server.*.Port"),
        vec!["Device.XMPP.Connection.2.Server.1.Port"]
    );
    assert_eq!(
        s.add_object("Device.Services.STBService.", Origin::Acs)
            .unwrap_err()
            .code,
        9005
    );
    assert_eq!(
        s.add_object("Device.ManagementServer.InformParameter.", Origin::Acs),
        Ok(1)
    );
    assert_eq!(
        value(
            &mut s,
            "Device.ManagementServer.InformParameterNumberOfEntries"
        ),
        "1"
    );
    s.delete_object("Device.XMPP.Connection.1.", Origin::Acs)
        .unwrap();
    assert_eq!(s.add_object("Device.XMPP.Connection.", Origin::Acs), Ok(3));
}

// ---------------------------------------------------------------------------------------------
// expand_wildcards (instance wildcards of the Get RPCs, TR-069 Amendment 6 / CWMP 1.4)
// ---------------------------------------------------------------------------------------------

/// `*` in place of an instance number names every existing instance, at any table level; a
/// partial path gives instance paths, a parameter path parameter paths; no instance is an
/// empty list; `*` anywhere else, or a part of a segment, is 9005.
#[test]
fn expand_wildcards_names_existing_instances() {
    let mut s = store();
    assert_eq!(
        s.expand_wildcards("Device.Table.*.Enable").unwrap(),
        Vec::<String>::new()
    );
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.2.Sub.", Origin::Acs).unwrap();
    s.add_object("Device.Table.2.Sub.", Origin::Acs).unwrap();
    assert_eq!(
        s.expand_wildcards("Device.Table.*.Enable").unwrap(),
        vec!["Device.Table.1.Enable", "Device.Table.2.Enable"]
    );
    assert_eq!(
        s.expand_wildcards("Device.Table.*.").unwrap(),
        vec!["Device.Table.1.", "Device.Table.2."]
    );
    assert_eq!(
        s.expand_wildcards("Device.Table.*.Sub.*.Value").unwrap(),
        vec!["Device.Table.2.Sub.1.Value", "Device.Table.2.Sub.2.Value"]
    );
    assert_eq!(
        s.expand_wildcards("Device.Table.1.Sub.*.").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        s.expand_wildcards("Device.Table.*.Stats.").unwrap(),
        vec!["Device.Table.1.Stats.", "Device.Table.2.Stats."]
    );
    for bad in [
        "Device.DeviceInfo.*.UpTime",
        "Device.*.",
        "Device.Table.1*.Enable",
        "Device.Table.*",
        "Device.Table.*.NoSuch",
        "Device.Table.**.Enable",
    ] {
        assert_eq!(s.expand_wildcards(bad).unwrap_err().code, 9005, "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Alias-based addressing (TR-069 Amendment 4 §3.6.1, CWMP 1.3)
// ---------------------------------------------------------------------------------------------

/// `[alias]` resolves to the instance with that Alias at any level; an unknown alias is
/// reported with its table (for AutoCreateInstances); a bracket elsewhere is 9005. Returned
/// names get `[alias]` where an instance has one.
#[test]
fn alias_paths_resolve_and_names_take_aliases() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.2.Sub.", Origin::Acs).unwrap();
    s.set_values(&spv(&[("Device.Table.2.Alias", "wan")]), Origin::Acs)
        .unwrap();
    assert!(s.table_has_alias("Device.Table."));
    assert_eq!(s.instance_by_alias("Device.Table.", "wan"), Some(2));
    assert_eq!(
        s.resolve_alias_path("Device.Table.[wan].Sub.1.Value")
            .unwrap(),
        AliasPath::Resolved("Device.Table.2.Sub.1.Value".into())
    );
    assert_eq!(
        s.resolve_alias_path("Device.Table.[wan].").unwrap(),
        AliasPath::Resolved("Device.Table.2.".into())
    );
    assert_eq!(
        s.resolve_alias_path("Device.Table.[lan].Enable").unwrap(),
        AliasPath::Unknown {
            table: "Device.Table.".into(),
            alias: "lan".into(),
            rest: "Enable".into()
        }
    );
    for bad in [
        "Device.Table.[].Enable",
        "Device.[wan].X",
        "Device.Table.x[wan].Enable",
        "Device.Table.[w[a]n].Enable",
    ] {
        assert_eq!(s.resolve_alias_path(bad).unwrap_err().code, 9005, "{bad}");
    }
    let map = s.alias_map();
    assert_eq!(map.get("Device.Table.2.").map(String::as_str), Some("wan"));
    assert_eq!(
        with_aliases("Device.Table.2.Sub.1.Value", &map),
        "Device.Table.[wan].Sub.1.Value"
    );
    assert_eq!(
        with_aliases("Device.Table.1.Enable", &map),
        "Device.Table.1.Enable"
    );
}

/// An Alias must start with a letter, have none of `.[]*,` or blanks, be at most 64
/// characters and be unique in its table: 9007 otherwise.
#[test]
fn alias_values_are_checked_and_unique() {
    let mut s = store();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.add_object("Device.Table.", Origin::Acs).unwrap();
    s.set_values(&spv(&[("Device.Table.1.Alias", "tv")]), Origin::Acs)
        .unwrap();
    assert!(s.check_alias("Device.Table.2.Alias", "radio-1_x").is_ok());
    assert!(
        s.check_alias("Device.Table.1.Alias", "tv").is_ok(),
        "its own value"
    );
    for bad in [
        "",
        "1tv",
        "a.b",
        "a[b",
        "a]",
        "a*",
        "a,b",
        "a b",
        &"a".repeat(65),
        "tv",
    ] {
        assert_eq!(
            s.check_alias("Device.Table.2.Alias", bad).unwrap_err().code,
            9007,
            "{bad:?}"
        );
    }
}
