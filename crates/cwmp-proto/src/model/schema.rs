//! The supported data model: object and parameter definitions loaded from BBF data-model XML
//! files (the subset described in datamodel/README.md).
//!
//! Paths here are *generic*: multi-instance levels are written `{i}`
//! (`Device.XMPP.Connection.{i}.Username`). The store maps concrete paths onto these.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::types::{BaseType, ListFacet, Range, Syntax};

pub type ObjId = usize;
pub type ParamId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
    WriteOnceReadOnly,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::ReadOnly => "readOnly",
            Access::ReadWrite => "readWrite",
            Access::WriteOnceReadOnly => "writeOnceReadOnly",
        }
    }
}

/// TR-106 `activeNotify`: how the Notification attribute may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveNotify {
    Normal,
    /// Always active; SetParameterAttributes may not change it.
    ForceEnabled,
    /// Active by default; the ACS may change it.
    ForceDefaultEnabled,
    /// The CPE may refuse active notification (it does: fault 9009).
    CanDeny,
}

#[derive(Debug, Clone)]
pub struct ObjDef {
    /// Generic path, ending in `.`; for a table, ends in `{i}.`. Shared: the stores built from
    /// this schema use it as the key of a single-instance object.
    pub path: Arc<str>,
    pub parent: Option<ObjId>,
    /// True for a multi-instance object (`…{i}.`).
    pub multi: bool,
    /// readWrite on a table: the ACS may add and delete instances.
    pub writable: bool,
    pub min_entries: u32,
    pub max_entries: Option<u32>,
    /// Name of the parameter in the parent object that counts this table's instances.
    pub num_entries_param: Option<String>,
    pub child_objs: Vec<ObjId>,
    pub params: Vec<ParamId>,
}

#[derive(Debug, Clone)]
pub struct ParamDef {
    /// Generic full path. Shared: the stores built from this schema use it as the key of a
    /// parameter outside any table.
    pub path: Arc<str>,
    /// Local name (the last path segment).
    pub name: String,
    pub obj: ObjId,
    pub syntax: Syntax,
    pub access: Access,
    pub forced_inform: bool,
    pub active_notify: ActiveNotify,
    pub default: Option<String>,
}

impl ParamDef {
    pub fn writable(&self) -> bool {
        self.access != Access::ReadOnly
    }
}

/// A definition error, with the file and line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub file: PathBuf,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.msg)
    }
}

impl std::error::Error for SchemaError {}

#[derive(Debug, Default, Clone)]
pub struct Schema {
    pub objects: Vec<ObjDef>,
    pub params: Vec<ParamDef>,
    obj_index: HashMap<String, ObjId>,
    param_index: HashMap<String, ParamId>,
}

/// Replaces every all-digit path segment with `{i}`: `A.3.B` → `A.{i}.B`.
pub fn generic_path(concrete: &str) -> std::borrow::Cow<'_, str> {
    if !concrete.bytes().any(|b| b.is_ascii_digit()) {
        return std::borrow::Cow::Borrowed(concrete);
    }
    let mut out = String::with_capacity(concrete.len() + 8);
    for (i, seg) in concrete.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str("{i}");
        } else {
            out.push_str(seg);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Schema {
    pub fn object(&self, generic: &str) -> Option<ObjId> {
        self.obj_index.get(generic).copied()
    }

    pub fn param(&self, generic: &str) -> Option<ParamId> {
        self.param_index.get(generic).copied()
    }

    /// Loads every `*.xml` file of each directory, in lexical order of file name per directory.
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<Schema, SchemaError> {
        let mut schema = Schema::default();
        for dir in dirs {
            let rd = std::fs::read_dir(dir).map_err(|e| SchemaError {
                file: dir.clone(),
                line: 0,
                msg: format!("cannot read data-model directory: {e}"),
            })?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "xml") && p.is_file())
                .collect();
            files.sort();
            for f in files {
                schema.load_file(&f)?;
            }
        }
        if schema.object("Device.").is_none() {
            return Err(SchemaError {
                file: dirs.first().cloned().unwrap_or_default(),
                line: 0,
                msg: "no definition of the root object Device. in the data-model directories"
                    .into(),
            });
        }
        Ok(schema)
    }

    pub fn load_file(&mut self, path: &Path) -> Result<(), SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|e| SchemaError {
            file: path.to_path_buf(),
            line: 0,
            msg: format!("cannot read: {e}"),
        })?;
        self.load_str(&text, path)
    }

    /// Parses one data-model document and merges it in. On error nothing of this document
    /// stays in the schema.
    pub fn load_str(&mut self, text: &str, file: &Path) -> Result<(), SchemaError> {
        let backup = (self.objects.len(), self.params.len());
        let res = self.load_inner(text, file);
        if res.is_err() {
            // Roll back this document's additions.
            for o in self.objects.drain(backup.0..) {
                self.obj_index.remove(&*o.path);
            }
            for p in self.params.drain(backup.1..) {
                self.param_index.remove(&*p.path);
            }
            for o in &mut self.objects {
                o.child_objs.retain(|&c| c < backup.0);
                o.params.retain(|&p| p < backup.1);
            }
        }
        res
    }

    fn load_inner(&mut self, text: &str, file: &Path) -> Result<(), SchemaError> {
        let mut reader = Reader::from_str(text);
        reader.config_mut().trim_text(true);
        let err = |pos: u64, msg: String| SchemaError {
            file: file.to_path_buf(),
            line: line_of(text, pos as usize),
            msg,
        };
        let mut cur_obj: Option<ObjId> = None;
        let mut cur_param: Option<PendingParam> = None;
        // Depth inside <syntax>: which element we are in decides what a facet applies to.
        let mut in_list = false;
        let mut depth = 0usize;
        loop {
            let pos = reader.buffer_position();
            let ev = reader
                .read_event()
                .map_err(|e| err(reader.error_position(), format!("XML error: {e}")))?;
            let (start, empty) = match &ev {
                Event::Start(e) => (Some(e.clone()), false),
                Event::Empty(e) => (Some(e.clone()), true),
                Event::End(e) => {
                    depth = depth.saturating_sub(1);
                    match e.local_name().as_ref() {
                        "object" => cur_obj = None,
                        "parameter" => {
                            if let Some(p) = cur_param.take() {
                                self.finish_param(p).map_err(|m| err(pos, m))?;
                            }
                        }
                        "list" => in_list = false,
                        _ => {}
                    }
                    continue;
                }
                Event::DocType(_) => return Err(err(pos, "DOCTYPE is not allowed".into())),
                Event::Eof => break,
                _ => continue,
            };
            let e = start.expect("start element");
            if !empty {
                depth += 1;
                if depth > 64 {
                    return Err(err(pos, "elements nested too deeply".into()));
                }
            }
            // Elements whose content the loader does not use.
            if matches!(
                e.local_name().as_ref(),
                "uniqueKey" | "description" | "profile" | "component" | "import" | "bibliography"
            ) {
                if !empty {
                    depth -= 1;
                    reader
                        .read_to_end(e.name())
                        .map_err(|x| err(reader.error_position(), format!("XML error: {x}")))?;
                }
                continue;
            }
            let attrs = attributes(&e).map_err(|m| err(pos, m))?;
            let get = |k: &str| attr(&attrs, k);
            match e.local_name().as_ref() {
                "object" => {
                    // `base` extends an object an earlier file defined (BBF's own form).
                    let id = if let (None, Some(base)) = (get("name"), get("base")) {
                        self.object(base)
                            .ok_or_else(|| err(pos, format!("base object {base} is not defined")))?
                    } else {
                        let name =
                            get("name").ok_or_else(|| err(pos, "object without name".into()))?;
                        self.add_object(name, &attrs).map_err(|m| err(pos, m))?
                    };
                    cur_obj = if empty { None } else { Some(id) };
                }
                "parameter" => {
                    let obj =
                        cur_obj.ok_or_else(|| err(pos, "parameter outside an object".into()))?;
                    let name =
                        get("name").ok_or_else(|| err(pos, "parameter without name".into()))?;
                    if name.is_empty() || name.contains('.') || name.contains('{') {
                        return Err(err(pos, format!("bad parameter name {name:?}")));
                    }
                    let access = match get("access").unwrap_or("readOnly") {
                        "readOnly" => Access::ReadOnly,
                        "readWrite" => Access::ReadWrite,
                        "writeOnceReadOnly" => Access::WriteOnceReadOnly,
                        a => return Err(err(pos, format!("unknown access {a:?}"))),
                    };
                    let active_notify = match get("activeNotify").unwrap_or("normal") {
                        "normal" => ActiveNotify::Normal,
                        "forceEnabled" => ActiveNotify::ForceEnabled,
                        "forceDefaultEnabled" => ActiveNotify::ForceDefaultEnabled,
                        "canDeny" => ActiveNotify::CanDeny,
                        a => return Err(err(pos, format!("unknown activeNotify {a:?}"))),
                    };
                    let p = PendingParam {
                        obj,
                        name: name.to_string(),
                        access,
                        forced_inform: get("forcedInform") == Some("true"),
                        active_notify,
                        syntax: None,
                        list: None,
                        hidden: false,
                        default: None,
                    };
                    if empty {
                        return Err(err(pos, format!("parameter {name} has no syntax")));
                    }
                    cur_param = Some(p);
                }
                "syntax" => {
                    if let Some(p) = cur_param.as_mut() {
                        p.hidden = get("hidden") == Some("true") || get("secured") == Some("true");
                    }
                }
                "list" => {
                    if let Some(p) = cur_param.as_mut() {
                        p.list = Some(ListFacet {
                            min_items: num_attr(get("minItems")).map_err(|m| err(pos, m))?,
                            max_items: num_attr(get("maxItems")).map_err(|m| err(pos, m))?,
                            max_length: None,
                        });
                        in_list = !empty;
                    }
                }
                "default" => {
                    if let Some(p) = cur_param.as_mut() {
                        p.default = get("value").map(str::to_string);
                    }
                }
                "size" => {
                    let Some(p) = cur_param.as_mut() else {
                        continue;
                    };
                    let max = num_attr(get("maxLength")).map_err(|m| err(pos, m))?;
                    let min = num_attr(get("minLength")).map_err(|m| err(pos, m))?;
                    if in_list && p.syntax.is_none() {
                        if let Some(l) = p.list.as_mut() {
                            l.max_length = max;
                        }
                    } else if let Some(s) = p.syntax.as_mut() {
                        s.max_length = max.or(s.max_length);
                        s.min_length = min.or(s.min_length);
                    }
                }
                "range" => {
                    let Some(s) = cur_param.as_mut().and_then(|p| p.syntax.as_mut()) else {
                        continue;
                    };
                    let int = |k: &str| -> Result<Option<i128>, String> {
                        get(k)
                            .map(|v| {
                                super::types::parse_integer(v)
                                    .ok_or_else(|| format!("bad range bound {v:?}"))
                            })
                            .transpose()
                    };
                    s.ranges.push(Range {
                        min: int("minInclusive").map_err(|m| err(pos, m))?,
                        max: int("maxInclusive").map_err(|m| err(pos, m))?,
                        step: int("step").map_err(|m| err(pos, m))?,
                    });
                }
                "enumeration" => {
                    if let Some(s) = cur_param.as_mut().and_then(|p| p.syntax.as_mut())
                        && let Some(v) = get("value")
                    {
                        s.enumeration.push(v.to_string());
                    }
                }
                "dataType" if cur_param.is_some() => {
                    return Err(err(
                        pos,
                        "dataType references are not supported; expand to a base type".into(),
                    ));
                }
                other => {
                    if let Some(p) = cur_param.as_mut()
                        && let Some(base) = BaseType::from_element(other)
                    {
                        if p.syntax.is_some() {
                            return Err(err(pos, format!("parameter {} has two types", p.name)));
                        }
                        p.syntax = Some(Syntax::new(base));
                    }
                }
            }
        }
        Ok(())
    }

    fn add_object(&mut self, name: &str, attrs: &[(String, String)]) -> Result<ObjId, String> {
        let get = |k: &str| attr(attrs, k);
        if !name.ends_with('.') || name.starts_with('.') || name.contains("..") {
            return Err(format!("object name {name:?} must be a path ending in '.'"));
        }
        if self.obj_index.contains_key(name) {
            return Err(format!("object {name} is defined twice"));
        }
        let trimmed = &name[..name.len() - 1];
        let multi = trimmed.ends_with(".{i}");
        let parent =
            match trimmed.rfind('.') {
                None => None,
                Some(_) => {
                    // Parent of A.B.{i}. is A. (the table A.B. itself is not an object definition).
                    let base = if multi {
                        &trimmed[..trimmed.len() - 4]
                    } else {
                        trimmed
                    };
                    let cut = base.rfind('.').map(|i| &base[..=i]);
                    match cut {
                        Some(pp) => Some(*self.obj_index.get(pp).ok_or_else(|| {
                            format!("parent object {pp} of {name} is not defined")
                        })?),
                        None => None,
                    }
                }
            };
        if parent.is_none() && name != "Device." {
            return Err(format!("object {name} is outside Device."));
        }
        let writable = get("access") == Some("readWrite");
        let min_entries = num_attr(get("minEntries"))?.unwrap_or(if multi { 0 } else { 1 });
        let max_entries = match get("maxEntries") {
            None => {
                if multi {
                    None
                } else {
                    Some(1)
                }
            }
            Some("unbounded") => None,
            Some(v) => Some(v.parse().map_err(|_| format!("bad maxEntries {v:?}"))?),
        };
        let id = self.objects.len();
        self.objects.push(ObjDef {
            path: Arc::from(name),
            parent,
            multi,
            writable: multi && writable,
            min_entries,
            max_entries,
            num_entries_param: get("numEntriesParameter").map(str::to_string),
            child_objs: Vec::new(),
            params: Vec::new(),
        });
        if let Some(p) = parent {
            self.objects[p].child_objs.push(id);
        }
        self.obj_index.insert(name.to_string(), id);
        Ok(id)
    }

    fn finish_param(&mut self, p: PendingParam) -> Result<(), String> {
        let mut syntax = p
            .syntax
            .ok_or_else(|| format!("parameter {} has no base type", p.name))?;
        syntax.list = p.list;
        syntax.hidden = p.hidden;
        let path = format!("{}{}", self.objects[p.obj].path, p.name);
        if self.param_index.contains_key(&path) {
            return Err(format!("parameter {path} is defined twice"));
        }
        let default = match p.default {
            Some(d) => Some(
                syntax
                    .validate(&d)
                    .map_err(|f| format!("default {d:?} of {path} is invalid: {}", f.reason))?,
            ),
            None => None,
        };
        let id = self.params.len();
        self.params.push(ParamDef {
            path: Arc::from(path.as_str()),
            name: p.name,
            obj: p.obj,
            syntax,
            access: p.access,
            forced_inform: p.forced_inform,
            active_notify: p.active_notify,
            default,
        });
        self.objects[p.obj].params.push(id);
        self.param_index.insert(path, id);
        Ok(())
    }

    /// Checks cross references once all files are loaded: every numEntriesParameter exists.
    pub fn validate(&self) -> Result<(), String> {
        for o in &self.objects {
            if let (Some(n), Some(parent)) = (&o.num_entries_param, o.parent) {
                let p = format!("{}{}", self.objects[parent].path, n);
                if self.param(&p).is_none() {
                    return Err(format!(
                        "{} names numEntriesParameter {n}, but {p} is not defined",
                        o.path
                    ));
                }
            }
        }
        Ok(())
    }
}

struct PendingParam {
    obj: ObjId,
    name: String,
    access: Access,
    forced_inform: bool,
    active_notify: ActiveNotify,
    syntax: Option<Syntax>,
    list: Option<ListFacet>,
    hidden: bool,
    default: Option<String>,
}

fn attributes(e: &BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| format!("bad attribute: {e}"))?;
        let key = a.key.local_name().as_ref().to_string();
        let val = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| format!("bad attribute value: {e}"))?
            .into_owned();
        out.push((key, val));
    }
    Ok(out)
}

fn attr<'a>(attrs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn num_attr(v: Option<&str>) -> Result<Option<u32>, String> {
    v.map(|s| s.parse::<u32>().map_err(|_| format!("bad number {s:?}")))
        .transpose()
}

fn line_of(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    text.as_bytes()[..pos]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"<?xml version="1.0"?>
<dm:document xmlns:dm="urn:broadband-forum-org:cwmp:datamodel-1-14" spec="urn:test">
 <model name="Device:2.19">
  <object name="Device." access="readOnly" minEntries="1" maxEntries="1">
   <parameter name="RootDataModelVersion" access="readOnly" forcedInform="true">
    <syntax><string><size maxLength="32"/></string><default type="object" value="2.19"/></syntax>
   </parameter>
   <parameter name="TNumberOfEntries" access="readOnly">
    <syntax><unsignedInt/></syntax>
   </parameter>
  </object>
  <object name="Device.T.{i}." access="readWrite" minEntries="0" maxEntries="4" numEntriesParameter="TNumberOfEntries">
   <parameter name="L" access="readWrite">
    <syntax><list maxItems="3"><size maxLength="100"/></list><unsignedInt><range minInclusive="1" maxInclusive="9"/></unsignedInt></syntax>
   </parameter>
   <parameter name="Secret" access="readWrite">
    <syntax hidden="true"><string/></syntax>
   </parameter>
  </object>
 </model>
</dm:document>"#;

    #[test]
    fn loads_objects_params_and_facets() {
        let mut s = Schema::default();
        s.load_str(DOC, Path::new("t.xml")).unwrap();
        s.validate().unwrap();
        let t = s.object("Device.T.{i}.").unwrap();
        assert!(s.objects[t].multi && s.objects[t].writable);
        assert_eq!(s.objects[t].max_entries, Some(4));
        let l = &s.params[s.param("Device.T.{i}.L").unwrap()];
        assert_eq!(l.syntax.list.as_ref().unwrap().max_length, Some(100));
        assert_eq!(l.syntax.ranges.len(), 1);
        assert!(l.syntax.validate("1,2").is_ok());
        assert!(l.syntax.validate("1,10").is_err());
        assert!(
            s.params[s.param("Device.T.{i}.Secret").unwrap()]
                .syntax
                .hidden
        );
        let r = &s.params[s.param("Device.RootDataModelVersion").unwrap()];
        assert!(r.forced_inform);
        assert_eq!(r.default.as_deref(), Some("2.19"));
    }

    #[test]
    fn errors_name_file_and_line_and_roll_back() {
        let mut s = Schema::default();
        s.load_str(DOC, Path::new("t.xml")).unwrap();
        let bad = "<dm:document xmlns:dm=\"x\">\n<model>\n<object name=\"Device.U.\">\n<parameter name=\"A\"><syntax><int><range minInclusive=\"x\"/></int></syntax></parameter>\n</object></model></dm:document>";
        let e = s.load_str(bad, Path::new("v.xml")).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.to_string().starts_with("v.xml:4:"), "{e}");
        assert!(s.object("Device.U.").is_none(), "rolled back");
        let dup = "<d><model><object name=\"Device.T.{i}.\"/></model></d>";
        assert!(
            s.load_str(dup, Path::new("w.xml"))
                .unwrap_err()
                .msg
                .contains("twice")
        );
        let orphan = "<d><model><object name=\"Device.A.B.\"/></model></d>";
        assert!(
            s.load_str(orphan, Path::new("w.xml"))
                .unwrap_err()
                .msg
                .contains("parent")
        );
    }

    #[test]
    fn a_later_file_extends_an_object_with_base() {
        let mut s = Schema::default();
        s.load_str(DOC, Path::new("t.xml")).unwrap();
        let ext = "<d><model><object base=\"Device.T.{i}.\"><parameter name=\"X_00D09E_Extra\" access=\"readWrite\"><syntax><boolean/></syntax></parameter></object></model></d>";
        s.load_str(ext, Path::new("x.xml")).unwrap();
        assert!(s.param("Device.T.{i}.X_00D09E_Extra").is_some());
        let bad = "<d><model><object base=\"Device.Nope.\"/></model></d>";
        assert!(s.load_str(bad, Path::new("y.xml")).is_err());
    }

    #[test]
    fn generic_paths() {
        assert_eq!(generic_path("Device.A.12.B.3.C"), "Device.A.{i}.B.{i}.C");
        assert_eq!(generic_path("Device.A."), "Device.A.");
    }
}
