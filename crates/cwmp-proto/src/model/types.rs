//! TR-106 data types: the syntax of a parameter (base type, facets, list) and value validation.
//!
//! Validation answers with the CWMP fault the ACS should see: 9006 when the text is not a value
//! of the type at all (or a declared xsi:type disagrees), 9007 when it is a value of the type but
//! outside the facets (range, size, enumeration, list length).

use super::fault::Fault;

/// The ten base types of the BBF data-model schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseType {
    String,
    Int,
    UnsignedInt,
    Long,
    UnsignedLong,
    Boolean,
    DateTime,
    Base64,
    HexBinary,
    Decimal,
}

impl BaseType {
    pub fn from_element(name: &str) -> Option<BaseType> {
        Some(match name {
            "string" => BaseType::String,
            "int" => BaseType::Int,
            "unsignedInt" => BaseType::UnsignedInt,
            "long" => BaseType::Long,
            "unsignedLong" => BaseType::UnsignedLong,
            "boolean" => BaseType::Boolean,
            "dateTime" => BaseType::DateTime,
            "base64" => BaseType::Base64,
            "hexBinary" => BaseType::HexBinary,
            "decimal" => BaseType::Decimal,
            _ => return None,
        })
    }

    /// The name used in the data-model files and in `cwmpd dump-model`.
    pub fn name(self) -> &'static str {
        match self {
            BaseType::String => "string",
            BaseType::Int => "int",
            BaseType::UnsignedInt => "unsignedInt",
            BaseType::Long => "long",
            BaseType::UnsignedLong => "unsignedLong",
            BaseType::Boolean => "boolean",
            BaseType::DateTime => "dateTime",
            BaseType::Base64 => "base64",
            BaseType::HexBinary => "hexBinary",
            BaseType::Decimal => "decimal",
        }
    }

    /// The `xsi:type` written on the wire (lists are always strings on the wire).
    pub fn xsi_type(self) -> &'static str {
        match self {
            BaseType::String => "xsd:string",
            BaseType::Int => "xsd:int",
            BaseType::UnsignedInt => "xsd:unsignedInt",
            BaseType::Long => "xsd:long",
            BaseType::UnsignedLong => "xsd:unsignedLong",
            BaseType::Boolean => "xsd:boolean",
            BaseType::DateTime => "xsd:dateTime",
            BaseType::Base64 => "xsd:base64",
            BaseType::HexBinary => "xsd:hexBinary",
            BaseType::Decimal => "xsd:decimal",
        }
    }

    fn is_integer(self) -> bool {
        matches!(
            self,
            BaseType::Int | BaseType::UnsignedInt | BaseType::Long | BaseType::UnsignedLong
        )
    }
}

/// An inclusive integer range facet; either end may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    pub min: Option<i128>,
    pub max: Option<i128>,
    pub step: Option<i128>,
}

/// The `list` facet: the value is a comma-separated list of items of the base type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListFacet {
    pub min_items: Option<u32>,
    pub max_items: Option<u32>,
    /// Maximum length of the whole list string.
    pub max_length: Option<u32>,
}

/// The full syntax of a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syntax {
    pub base: BaseType,
    pub list: Option<ListFacet>,
    pub min_length: Option<u32>,
    pub max_length: Option<u32>,
    pub ranges: Vec<Range>,
    pub enumeration: Vec<String>,
    /// Hidden/secured: reads back as an empty string.
    pub hidden: bool,
}

impl Syntax {
    pub fn new(base: BaseType) -> Syntax {
        Syntax {
            base,
            list: None,
            min_length: None,
            max_length: None,
            ranges: Vec::new(),
            enumeration: Vec::new(),
            hidden: false,
        }
    }

    /// The type's natural default when the model gives none.
    pub fn zero_value(&self) -> &'static str {
        if self.list.is_some() {
            return "";
        }
        match self.base {
            BaseType::Boolean => "false",
            BaseType::DateTime => "0001-01-01T00:00:00Z",
            b if b.is_integer() => {
                // 0 unless the range excludes it.
                "0"
            }
            BaseType::Decimal => "0",
            _ => "",
        }
    }

    pub fn xsi_type(&self) -> &'static str {
        if self.list.is_some() {
            "xsd:string"
        } else {
            self.base.xsi_type()
        }
    }

    /// Human-readable form for `dump-model`, e.g. `unsignedInt[1:65535]` or `list<string(256)>`.
    pub fn describe(&self) -> String {
        let mut s = self.base.name().to_string();
        if let Some(m) = self.max_length {
            s.push_str(&format!("({m})"));
        }
        for r in &self.ranges {
            let lo = r.min.map(|v| v.to_string()).unwrap_or_default();
            let hi = r.max.map(|v| v.to_string()).unwrap_or_default();
            s.push_str(&format!("[{lo}:{hi}]"));
        }
        if !self.enumeration.is_empty() {
            s.push_str(&format!("{{{}}}", self.enumeration.join("|")));
        }
        if self.list.is_some() {
            s = format!("list<{s}>");
        }
        s
    }

    /// Checks `value` against the syntax and returns the canonical stored form
    /// (booleans become `true`/`false`; everything else is kept as given).
    pub fn validate(&self, value: &str) -> Result<String, Fault> {
        if let Some(list) = &self.list {
            if let Some(max) = list.max_length
                && value.chars().count() > max as usize
            {
                return Err(Fault::new(9007, "list longer than allowed"));
            }
            if value.is_empty() {
                if list.min_items.unwrap_or(0) > 0 {
                    return Err(Fault::new(9007, "list needs at least one item"));
                }
                return Ok(String::new());
            }
            let items: Vec<&str> = value.split(',').map(str::trim).collect();
            if let Some(max) = list.max_items
                && items.len() > max as usize
            {
                return Err(Fault::new(9007, "too many list items"));
            }
            if let Some(min) = list.min_items
                && items.len() < min as usize
            {
                return Err(Fault::new(9007, "too few list items"));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(self.validate_scalar(item)?);
            }
            return Ok(out.join(","));
        }
        self.validate_scalar(value)
    }

    fn validate_scalar(&self, value: &str) -> Result<String, Fault> {
        match self.base {
            BaseType::String => {
                self.check_len(value.chars().count())?;
                if !self.enumeration.is_empty() && !self.enumeration.iter().any(|e| e == value) {
                    return Err(Fault::new(9007, "value not in the enumeration"));
                }
                Ok(value.to_string())
            }
            // Case-insensitive, as NextLevel and the other SOAP booleans are read (real ACSs
            // send `TRUE` / `False`); stored in the canonical lower-case form.
            BaseType::Boolean => match value.trim() {
                "1" => Ok("true".into()),
                "0" => Ok("false".into()),
                v if v.eq_ignore_ascii_case("true") => Ok("true".into()),
                v if v.eq_ignore_ascii_case("false") => Ok("false".into()),
                _ => Err(Fault::new(9006, "not a boolean")),
            },
            BaseType::Int | BaseType::UnsignedInt | BaseType::Long | BaseType::UnsignedLong => {
                let v = parse_integer(value.trim())
                    .ok_or_else(|| Fault::new(9006, "not an integer"))?;
                let (lo, hi): (i128, i128) = match self.base {
                    BaseType::Int => (i32::MIN as i128, i32::MAX as i128),
                    BaseType::UnsignedInt => (0, u32::MAX as i128),
                    BaseType::Long => (i64::MIN as i128, i64::MAX as i128),
                    _ => (0, u64::MAX as i128),
                };
                if v < lo || v > hi {
                    return Err(Fault::new(9006, "integer outside the type's range"));
                }
                if !self.ranges.is_empty() && !self.ranges.iter().any(|r| in_range(r, v)) {
                    return Err(Fault::new(9007, "value outside the allowed range"));
                }
                Ok(v.to_string())
            }
            BaseType::Decimal => {
                let t = value.trim();
                if t.is_empty() || t.parse::<f64>().is_err() || t.contains(['e', 'E', 'n', 'N']) {
                    return Err(Fault::new(9006, "not a decimal"));
                }
                Ok(t.to_string())
            }
            BaseType::DateTime => {
                if crate::util::time::parse_datetime(value.trim()).is_none() {
                    return Err(Fault::new(9006, "not an xsd:dateTime"));
                }
                Ok(value.trim().to_string())
            }
            BaseType::Base64 => {
                let n = base64_decoded_len(value.trim())
                    .ok_or_else(|| Fault::new(9006, "not base64"))?;
                self.check_len(n)?;
                Ok(value.trim().to_string())
            }
            BaseType::HexBinary => {
                let t = value.trim();
                if !t.len().is_multiple_of(2) || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Fault::new(9006, "not hexBinary"));
                }
                self.check_len(t.len() / 2)?;
                Ok(t.to_string())
            }
        }
    }

    fn check_len(&self, n: usize) -> Result<(), Fault> {
        if let Some(max) = self.max_length
            && n > max as usize
        {
            return Err(Fault::new(9007, "value longer than allowed"));
        }
        if let Some(min) = self.min_length
            && n < min as usize
        {
            return Err(Fault::new(9007, "value shorter than allowed"));
        }
        Ok(())
    }

    /// Whether a declared `xsi:type` (from SetParameterValues) is acceptable for this syntax.
    /// Absent or unprefixed-any types are accepted; so is `xsd:string` for anything (GenieACS
    /// and others send strings for everything when they don't know the type).
    pub fn accepts_xsi_type(&self, xsi: &str) -> bool {
        let local = xsi.rsplit(':').next().unwrap_or(xsi);
        if local.is_empty() || local == "string" || local == "anySimpleType" {
            return true;
        }
        let want = self.xsi_type().rsplit(':').next().unwrap_or("");
        if local == want {
            return true;
        }
        // Integers of a narrower type fit a wider integer parameter and vice versa;
        // the range check on the value decides.
        let ints = ["int", "unsignedInt", "long", "unsignedLong"];
        ints.contains(&local) && ints.contains(&want)
            || (local == "base64Binary" && want == "base64")
    }
}

fn in_range(r: &Range, v: i128) -> bool {
    if let Some(min) = r.min
        && v < min
    {
        return false;
    }
    if let Some(max) = r.max
        && v > max
    {
        return false;
    }
    if let Some(step) = r.step
        && step > 0
    {
        let base = r.min.unwrap_or(0);
        if (v - base) % step != 0 {
            return false;
        }
    }
    true
}

/// Parses a decimal integer with an optional sign; no surrounding junk, no overflow.
pub fn parse_integer(s: &str) -> Option<i128> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 25 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i128 = digits.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Length of the decoded bytes of a base64 text, or None when it is not base64.
pub fn base64_decoded_len(s: &str) -> Option<usize> {
    let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let pad = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &bytes[..bytes.len() - pad];
    if !body
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
    {
        return None;
    }
    Some(bytes.len() / 4 * 3 - pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn(base: BaseType) -> Syntax {
        Syntax::new(base)
    }

    #[test]
    fn booleans_accept_words_and_digits() {
        let s = syn(BaseType::Boolean);
        assert_eq!(s.validate("1").unwrap(), "true");
        assert_eq!(s.validate("false").unwrap(), "false");
        // Issue #12 (17): real ACSs send TRUE / False.
        assert_eq!(s.validate("TRUE").unwrap(), "true");
        assert_eq!(s.validate("False").unwrap(), "false");
        assert_eq!(s.validate("yes").unwrap_err().code, 9006);
    }

    #[test]
    fn integer_types_and_ranges() {
        let mut s = syn(BaseType::UnsignedInt);
        assert_eq!(s.validate("-1").unwrap_err().code, 9006);
        assert_eq!(s.validate("4294967296").unwrap_err().code, 9006);
        assert_eq!(s.validate("abc").unwrap_err().code, 9006);
        s.ranges.push(Range {
            min: Some(1),
            max: Some(65535),
            step: None,
        });
        assert_eq!(s.validate("0").unwrap_err().code, 9007);
        assert_eq!(s.validate("65535").unwrap(), "65535");
        let l = syn(BaseType::Long);
        assert_eq!(
            l.validate("-9223372036854775808").unwrap(),
            "-9223372036854775808"
        );
        assert!(syn(BaseType::Int).validate("2147483648").is_err());
    }

    #[test]
    fn strings_sizes_and_enums() {
        let mut s = syn(BaseType::String);
        s.max_length = Some(3);
        assert!(s.validate("abc").is_ok());
        assert_eq!(s.validate("abcd").unwrap_err().code, 9007);
        s.enumeration = vec!["a".into(), "b".into()];
        assert_eq!(s.validate("c").unwrap_err().code, 9007);
        assert!(s.validate("a").is_ok());
    }

    #[test]
    fn lists_check_each_item() {
        let mut s = syn(BaseType::UnsignedInt);
        s.list = Some(ListFacet {
            max_items: Some(3),
            ..Default::default()
        });
        assert_eq!(s.validate("1, 2,3").unwrap(), "1,2,3");
        assert_eq!(s.validate("1,x").unwrap_err().code, 9006);
        assert_eq!(s.validate("1,2,3,4").unwrap_err().code, 9007);
        assert_eq!(s.validate("").unwrap(), "");
    }

    #[test]
    fn binary_types() {
        let mut b = syn(BaseType::Base64);
        b.max_length = Some(3);
        assert!(b.validate("YWJj").is_ok());
        assert_eq!(b.validate("YWJjZA==").unwrap_err().code, 9007);
        assert_eq!(b.validate("Y!Jj").unwrap_err().code, 9006);
        let h = syn(BaseType::HexBinary);
        assert!(h.validate("00ff").is_ok());
        assert!(h.validate("0ff").is_err());
    }

    #[test]
    fn datetimes() {
        let d = syn(BaseType::DateTime);
        assert!(d.validate("2026-01-02T03:04:05.000Z").is_ok());
        assert!(d.validate("2026-01-02T03:04:05+01:00").is_ok());
        assert!(d.validate("0001-01-01T00:00:00Z").is_ok());
        assert_eq!(d.validate("yesterday").unwrap_err().code, 9006);
        assert!(d.validate("2026-13-02T03:04:05Z").is_err());
    }

    #[test]
    fn xsi_types() {
        let s = syn(BaseType::UnsignedInt);
        assert!(s.accepts_xsi_type("xsd:unsignedInt"));
        assert!(s.accepts_xsi_type("xsd:int"));
        assert!(s.accepts_xsi_type("xsd:string"));
        assert!(!s.accepts_xsi_type("xsd:boolean"));
    }
}
