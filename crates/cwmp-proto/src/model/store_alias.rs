//! Alias-based addressing (TR-069 Amendment 4 §3.6.1 and Appendix II, CWMP 1.3): instance
//! aliases `[alias]` in place of instance numbers in request paths, the Alias values' rules
//! (TR-106 `_AliasCWMP`: not empty, starting with a letter, `cpe-` when the CPE assigns it) and
//! their uniqueness within a table, and the instance-alias form of returned path names
//! (`ManagementServer.InstanceMode = InstanceAlias`). The agent decides when they apply (the
//! session's CWMP version, its build); these are the store's pure parts.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{Fault, ObjKind, Store, generic_path};

/// Longest Alias (TR-181: `string(64)`).
pub const MAX_ALIAS_LEN: usize = 64;

/// What `[alias]` segments of a path resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasPath {
    /// Every alias named an instance: the path with instance numbers.
    Resolved(String),
    /// `table` has no instance with Alias `alias` (`rest`: what followed it in the path).
    Unknown {
        table: String,
        alias: String,
        rest: String,
    },
}

/// Checks the form of an Alias value (TR-106 `_AliasCWMP`): not empty, at most 64 characters,
/// starting with an ASCII letter, and none of the characters that would break a path
/// (`.`, `[`, `]`, `*`, `,`), white space or control characters [the exact set of forbidden
/// characters in TR-069 is unverified; these are the ones path syntax needs].
pub fn check_alias_form(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("an Alias must not be empty".into());
    }
    if v.len() > MAX_ALIAS_LEN {
        return Err(format!("an Alias is at most {MAX_ALIAS_LEN} characters"));
    }
    if !v.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("Alias {v:?} does not start with a letter"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| matches!(c, '.' | '[' | ']' | '*' | ',') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("Alias {v:?} contains {c:?}"));
    }
    Ok(())
}

/// `name` with every instance number that has an Alias written as `[alias]`; `aliases` maps
/// instance paths (`Device.X.3.`) to their Alias ([`Store::alias_map`]).
pub fn with_aliases<'a>(name: &'a str, aliases: &HashMap<String, String>) -> Cow<'a, str> {
    if aliases.is_empty() || !name.bytes().any(|b| b.is_ascii_digit()) {
        return Cow::Borrowed(name);
    }
    let mut concrete = String::with_capacity(name.len());
    let mut out = String::with_capacity(name.len() + 16);
    let mut changed = false;
    for (i, seg) in name.split('.').enumerate() {
        if i > 0 {
            concrete.push('.');
            out.push('.');
        }
        concrete.push_str(seg);
        let numeric = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
        let alias = numeric
            .then(|| aliases.get(&format!("{concrete}.")))
            .flatten();
        match alias {
            Some(a) => {
                out.push('[');
                out.push_str(a);
                out.push(']');
                changed = true;
            }
            None => out.push_str(seg),
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(name)
    }
}

impl Store {
    /// Whether the instances of `table` (a table path, `Device.X.`) have an `Alias`.
    pub fn table_has_alias(&self, table: &str) -> bool {
        let g = generic_path(table);
        self.schema.param(&format!("{g}{{i}}.Alias")).is_some()
    }

    /// The instance of `table` whose Alias is `alias`.
    pub fn instance_by_alias(&self, table: &str, alias: &str) -> Option<u32> {
        self.instance_numbers(table).into_iter().find(|n| {
            self.params
                .get(format!("{table}{n}.Alias").as_str())
                .is_some_and(|p| p.value(&self.schema) == alias)
        })
    }

    /// Replaces the `[alias]` segments of a request path by instance numbers. A bracket
    /// anywhere but around a whole segment after a table, or an empty alias, is 9005.
    pub fn resolve_alias_path(&self, path: &str) -> Result<AliasPath, Fault> {
        let bad = || Fault::new(9005, format!("{path}: invalid instance alias"));
        let mut out = String::with_capacity(path.len());
        let mut rest = path;
        while !rest.is_empty() {
            let (seg, tail) = match rest.find('.') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            let dot = rest.len() > seg.len();
            if let Some(alias) = seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                if alias.is_empty() || alias.contains(['[', ']']) {
                    return Err(bad());
                }
                let table = out.clone();
                if !self
                    .objects
                    .get(table.as_str())
                    .is_some_and(|o| o.kind == ObjKind::Table)
                {
                    return Err(bad());
                }
                match self.instance_by_alias(&table, alias) {
                    Some(n) => out.push_str(&n.to_string()),
                    None => {
                        return Ok(AliasPath::Unknown {
                            table,
                            alias: alias.to_string(),
                            rest: tail.to_string(),
                        });
                    }
                }
            } else if seg.contains(['[', ']']) {
                return Err(bad());
            } else {
                out.push_str(seg);
            }
            if dot {
                out.push('.');
            }
            rest = tail;
        }
        Ok(AliasPath::Resolved(out))
    }

    /// Whether `value` may be the Alias `alias_param` (`Device.X.3.Alias`): its form, and no
    /// other instance of the table has it. 9007 Invalid parameter value otherwise.
    pub fn check_alias(&self, alias_param: &str, value: &str) -> Result<(), Fault> {
        check_alias_form(value).map_err(|m| Fault::new(9007, m))?;
        let inst = alias_param.strip_suffix("Alias").unwrap_or(alias_param);
        let table = inst
            .strip_suffix('.')
            .and_then(|s| s.rsplit_once('.'))
            .map(|(t, _)| format!("{t}."))
            .unwrap_or_default();
        let dup = self.instance_numbers(&table).into_iter().any(|n| {
            let p = format!("{table}{n}.Alias");
            p != alias_param
                && self
                    .params
                    .get(p.as_str())
                    .is_some_and(|p| p.value(&self.schema) == value)
        });
        if dup {
            return Err(Fault::new(
                9007,
                format!("Alias {value:?} is already used in {table}"),
            ));
        }
        Ok(())
    }

    /// Instance path (`Device.X.3.`) → its Alias, for every instance with a non-empty Alias.
    pub fn alias_map(&self) -> HashMap<String, String> {
        self.params
            .iter()
            .filter_map(|(k, p)| {
                let inst = k.strip_suffix("Alias")?;
                let last = inst.strip_suffix('.')?.rsplit('.').next()?;
                let value = p.value(&self.schema);
                (!value.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| (inst.to_string(), value.to_string()))
            })
            .collect()
    }
}
