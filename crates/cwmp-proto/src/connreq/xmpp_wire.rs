//! The XMPP wire (RFC 6120) as far as TR-069 Annex K needs it, with no IO: an incremental,
//! bounded XML stream reader (bytes in, the stream header and then one complete top-level
//! element at a time out), a small owned element tree with a writer that escapes, the few
//! stanzas and nonzas the client sends, and JIDs with the normalisation the allowed-list check
//! relies on.
//!
//! The reader accepts the restricted XML of RFC 6120 §11.1: no comments, processing
//! instructions (other than the XML declaration before the stream header), DTDs or entity
//! references beyond the five predefined ones and character references. A stream restart (after
//! STARTTLS and after SASL) is a new [`StreamReader`].

use std::collections::VecDeque;
use std::fmt;

/// Namespace of client stanzas (the stream's default namespace).
pub const NS_CLIENT: &str = "jabber:client";
/// Namespace of the stream element, `stream:features` and `stream:error`.
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
/// STARTTLS (RFC 6120 §5).
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL (RFC 6120 §6).
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Resource binding (RFC 6120 §7).
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Stanza error conditions (RFC 6120 §8.3).
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// XEP-0199 ping.
pub const NS_PING: &str = "urn:xmpp:ping";
/// Namespace of the connection-request IQ payload (BBF cwmp-xmppConnReq-1-0.xsd).
pub const NS_CONNREQ: &str = "urn:broadband-forum-org:cwmp:xmppConnReq-1-0";

/// Largest top-level element (stanza) accepted, in bytes as received.
pub const MAX_STANZA: usize = 64 * 1024;
/// Deepest nesting accepted, the stream element counted.
pub const MAX_DEPTH: usize = 16;
/// Most attributes (namespace declarations included) on one element.
pub const MAX_ATTRS: usize = 32;

// ------------------------------------------------------------------------------------------
// Elements
// ------------------------------------------------------------------------------------------

/// An XML element with its namespace resolved. Text is the concatenation of the element's
/// character data (XMPP stanzas carry no mixed content that Annex K needs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name.
    pub name: String,
    /// Namespace URI.
    pub ns: String,
    /// Attributes other than namespace declarations, names as written (`xml:lang`).
    pub attrs: Vec<(String, String)>,
    /// Child elements in order.
    pub children: Vec<Element>,
    /// Character data, entities decoded.
    pub text: String,
}

impl Element {
    /// An empty element.
    pub fn new(name: &str, ns: &str) -> Element {
        Element {
            name: name.to_string(),
            ns: ns.to_string(),
            ..Element::default()
        }
    }

    /// With an attribute added (or replaced).
    pub fn with_attr(mut self, name: &str, value: &str) -> Element {
        self.set_attr(name, value);
        self
    }

    /// Sets an attribute.
    pub fn set_attr(&mut self, name: &str, value: &str) {
        match self.attrs.iter_mut().find(|(n, _)| n == name) {
            Some(a) => a.1 = value.to_string(),
            None => self.attrs.push((name.to_string(), value.to_string())),
        }
    }

    /// With a child appended.
    pub fn with_child(mut self, child: Element) -> Element {
        self.children.push(child);
        self
    }

    /// With character data.
    pub fn with_text(mut self, text: &str) -> Element {
        self.text = text.to_string();
        self
    }

    /// The value of an attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is `name` in `ns`.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// The first child `name` in `ns`.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(name, ns))
    }

    /// Serialises the element; `xmlns` is written where the namespace differs from `parent_ns`.
    pub fn write(&self, out: &mut String, parent_ns: &str) {
        out.push('<');
        out.push_str(&self.name);
        if self.ns != parent_ns {
            out.push_str(" xmlns='");
            escape_into(out, &self.ns);
            out.push('\'');
        }
        for (n, v) in &self.attrs {
            out.push(' ');
            out.push_str(n);
            out.push_str("='");
            escape_into(out, v);
            out.push('\'');
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        escape_into(out, &self.text);
        for c in &self.children {
            c.write(out, &self.ns);
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// The element as a stanza on a client stream (no `xmlns` for `jabber:client`).
    pub fn to_stanza(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, NS_CLIENT);
        s
    }
}

impl fmt::Display for Element {
    /// The element on its own, its namespace declared.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write(&mut s, "");
        f.write_str(&s)
    }
}

/// Escapes character data or an attribute value (either quote).
pub fn escape_into(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// [`escape_into`] to a new string.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

// ------------------------------------------------------------------------------------------
// The stream reader
// ------------------------------------------------------------------------------------------

/// What the reader gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The stream header (`stream:stream`) with its attributes and no children.
    StreamStart(Element),
    /// One complete top-level element (stanza or nonza).
    Element(Element),
    /// `</stream:stream>`.
    StreamEnd,
}

/// Why the stream cannot be read on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XmlError {
    /// A stanza (or the header) is larger than [`MAX_STANZA`].
    TooLarge,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// More than [`MAX_ATTRS`] attributes on one element.
    TooManyAttrs,
    /// Not well-formed, or XML that RFC 6120 restricts.
    Malformed(String),
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XmlError::TooLarge => write!(f, "stanza larger than {MAX_STANZA} bytes"),
            XmlError::TooDeep => write!(f, "XML nested deeper than {MAX_DEPTH}"),
            XmlError::TooManyAttrs => write!(f, "more than {MAX_ATTRS} attributes"),
            XmlError::Malformed(w) => write!(f, "malformed XML: {w}"),
        }
    }
}

impl std::error::Error for XmlError {}

fn bad(w: impl Into<String>) -> XmlError {
    XmlError::Malformed(w.into())
}

/// One open element.
struct Open {
    /// Name as written (prefix included), to check the end tag.
    qname: String,
    /// Namespace declarations: (prefix, URI); "" is the default namespace.
    decls: Vec<(String, String)>,
    el: Element,
}

/// The incremental reader of one XMPP stream (one per stream restart).
#[derive(Default)]
pub struct StreamReader {
    /// Bytes not yet parsed (at most one incomplete token).
    buf: Vec<u8>,
    /// Open elements; `stack[0]` is the stream element.
    stack: Vec<Open>,
    /// Bytes of the current top-level element so far.
    stanza_bytes: usize,
    events: VecDeque<Event>,
    ended: bool,
    failed: Option<XmlError>,
    /// Bytes of the incomplete token at the start of `buf` already scanned for its end, and
    /// the quote open there (start tags): a token fed byte by byte is not rescanned.
    resume: usize,
    resume_quote: Option<u8>,
}

impl StreamReader {
    /// A reader before the stream header.
    pub fn new() -> StreamReader {
        StreamReader::default()
    }

    /// Takes bytes from the wire; the events they complete queue up for [`next_event`]
    /// (Self::next_event). After an error the reader stays failed.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), XmlError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.ended {
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        let r = self.parse();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.buf.clear();
        }
        r
    }

    /// The next complete event, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Parses every complete token in the buffer.
    fn parse(&mut self) -> Result<(), XmlError> {
        let mut pos = 0;
        let result = loop {
            if self.ended || pos >= self.buf.len() {
                break Ok(());
            }
            match self.token(pos) {
                Ok(Some(used)) => {
                    self.resume = 0;
                    self.resume_quote = None;
                    if self.stack.len() > 1 || used.1 {
                        self.stanza_bytes += used.0;
                        if self.stanza_bytes > MAX_STANZA {
                            break Err(XmlError::TooLarge);
                        }
                    }
                    pos += used.0;
                    if self.stack.len() <= 1 {
                        self.stanza_bytes = 0;
                    }
                }
                Ok(None) => {
                    if self.buf.len() - pos + self.stanza_bytes > MAX_STANZA {
                        break Err(XmlError::TooLarge);
                    }
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..pos.min(self.buf.len()));
        result
    }

    /// Parses one token at `pos`: Some((bytes used, part of a stanza)), None when incomplete.
    fn token(&mut self, pos: usize) -> Result<Option<(usize, bool)>, XmlError> {
        let rest = &self.buf[pos..];
        let from = self.resume.min(rest.len());
        if rest[0] != b'<' {
            // Character data up to the next tag.
            let end = rest[from..]
                .iter()
                .position(|&b| b == b'<')
                .map(|i| i + from);
            if self.stack.len() <= 1 {
                // Between stanzas (or before the header): only whitespace (keep-alives).
                let n = end.unwrap_or(rest.len());
                if !rest[..n].iter().all(|b| b.is_ascii_whitespace()) {
                    return Err(bad("text outside a stanza"));
                }
                return Ok(Some((n, false)));
            }
            let Some(n) = end else {
                self.resume = rest.len();
                return Ok(None);
            };
            let raw = std::str::from_utf8(&rest[..n]).map_err(|_| bad("invalid UTF-8"))?;
            if raw.contains("]]>") {
                return Err(bad("']]>' in text"));
            }
            let text = decode(raw)?;
            if let Some(top) = self.stack.last_mut() {
                top.el.text.push_str(&text);
            }
            return Ok(Some((n, true)));
        }
        if rest.len() < 2 {
            return Ok(None);
        }
        match rest[1] {
            b'?' => {
                let Some(n) = find_from(rest, b"?>", from) else {
                    self.resume = rest.len();
                    return Ok(None);
                };
                if !self.stack.is_empty() || !rest.starts_with(b"<?xml") {
                    return Err(bad("processing instruction"));
                }
                Ok(Some((n + 2, false)))
            }
            b'!' => {
                const CDATA: &[u8] = b"<![CDATA[";
                if rest.len() < CDATA.len() {
                    return if CDATA.starts_with(rest) {
                        Ok(None)
                    } else {
                        Err(bad("comment or DTD"))
                    };
                }
                if !rest.starts_with(CDATA) || self.stack.len() <= 1 {
                    return Err(bad("comment or DTD"));
                }
                let Some(n) = find_from(rest, b"]]>", from.max(CDATA.len())) else {
                    self.resume = rest.len();
                    return Ok(None);
                };
                let text = std::str::from_utf8(&rest[CDATA.len()..n])
                    .map_err(|_| bad("invalid UTF-8"))?
                    .to_string();
                if let Some(top) = self.stack.last_mut() {
                    top.el.text.push_str(&text);
                }
                Ok(Some((n + 3, true)))
            }
            b'/' => {
                let Some(n) = rest[from..]
                    .iter()
                    .position(|&b| b == b'>')
                    .map(|i| i + from)
                else {
                    self.resume = rest.len();
                    return Ok(None);
                };
                let name = std::str::from_utf8(&rest[2..n])
                    .map_err(|_| bad("invalid UTF-8"))?
                    .trim_end();
                let Some(open) = self.stack.pop() else {
                    return Err(bad("end tag without start"));
                };
                if open.qname != name {
                    return Err(bad(format!("</{name}> closes <{}>", open.qname)));
                }
                let in_stanza = !self.stack.is_empty();
                self.closed(open);
                Ok(Some((n + 1, in_stanza)))
            }
            _ => {
                let n = match tag_end(rest, from.max(1), self.resume_quote) {
                    Ok(n) => n,
                    Err(quote) => {
                        self.resume = rest.len();
                        self.resume_quote = quote;
                        return Ok(None);
                    }
                };
                let in_stanza = !self.stack.is_empty();
                let raw = std::str::from_utf8(&rest[1..n]).map_err(|_| bad("invalid UTF-8"))?;
                let (raw, empty) = match raw.strip_suffix('/') {
                    Some(r) => (r, true),
                    None => (raw, false),
                };
                let open = self.start_tag(raw)?;
                if self.stack.is_empty() {
                    if !open.el.is("stream", NS_STREAM) {
                        return Err(bad(format!(
                            "<{}> instead of the stream header",
                            open.qname
                        )));
                    }
                    if empty {
                        return Err(bad("empty stream element"));
                    }
                    self.events.push_back(Event::StreamStart(open.el.clone()));
                    self.stack.push(open);
                } else if empty {
                    self.closed(open);
                } else {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(XmlError::TooDeep);
                    }
                    self.stack.push(open);
                }
                Ok(Some((n + 1, in_stanza)))
            }
        }
    }

    /// An element ended: to its parent, out as an event, or the end of the stream.
    fn closed(&mut self, open: Open) {
        match self.stack.len() {
            0 => {
                self.ended = true;
                self.events.push_back(Event::StreamEnd);
            }
            1 => self.events.push_back(Event::Element(open.el)),
            _ => {
                if let Some(parent) = self.stack.last_mut() {
                    parent.el.children.push(open.el);
                }
            }
        }
    }

    /// Parses the inside of a start tag (`name attr='v' …`).
    fn start_tag(&self, raw: &str) -> Result<Open, XmlError> {
        let raw = raw.trim_end();
        let name_end = raw
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(raw.len());
        let qname = &raw[..name_end];
        check_name(qname)?;
        let mut decls = Vec::new();
        let mut attrs = Vec::new();
        let mut s = &raw[name_end..];
        let mut count = 0;
        loop {
            s = s.trim_start();
            if s.is_empty() {
                break;
            }
            let eq = s.find('=').ok_or_else(|| bad("attribute without value"))?;
            let an = s[..eq].trim_end();
            check_name(an)?;
            let v = s[eq + 1..].trim_start();
            let q = v
                .chars()
                .next()
                .ok_or_else(|| bad("attribute without value"))?;
            if q != '\'' && q != '"' {
                return Err(bad("unquoted attribute"));
            }
            let close = v[1..]
                .find(q)
                .ok_or_else(|| bad("unterminated attribute"))?;
            let value = &v[1..1 + close];
            if value.contains('<') {
                return Err(bad("'<' in attribute"));
            }
            let value = decode(value)?;
            s = &v[close + 2..];
            if !s.is_empty() && !s.starts_with(|c: char| c.is_ascii_whitespace()) {
                return Err(bad("attributes not separated"));
            }
            count += 1;
            if count > MAX_ATTRS {
                return Err(XmlError::TooManyAttrs);
            }
            if an == "xmlns" {
                decls.push((String::new(), value));
            } else if let Some(p) = an.strip_prefix("xmlns:") {
                decls.push((p.to_string(), value));
            } else {
                if attrs.iter().any(|(n, _): &(String, String)| n == an) {
                    return Err(bad(format!("duplicate attribute {an}")));
                }
                attrs.push((an.to_string(), value));
            }
        }
        let (prefix, local) = match qname.split_once(':') {
            Some((p, l)) => (p, l),
            None => ("", qname),
        };
        let ns = decls
            .iter()
            .rev()
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.clone())
            .or_else(|| self.lookup(prefix))
            .or_else(|| (prefix == "xml").then(|| "http://www.w3.org/XML/1998/namespace".into()));
        let ns = match ns {
            Some(ns) => ns,
            None if prefix.is_empty() => String::new(),
            None => return Err(bad(format!("undeclared prefix {prefix}"))),
        };
        Ok(Open {
            qname: qname.to_string(),
            decls,
            el: Element {
                name: local.to_string(),
                ns,
                attrs,
                children: Vec::new(),
                text: String::new(),
            },
        })
    }

    fn lookup(&self, prefix: &str) -> Option<String> {
        self.stack.iter().rev().find_map(|o| {
            o.decls
                .iter()
                .rev()
                .find(|(p, _)| p == prefix)
                .map(|(_, u)| u.clone())
        })
    }
}

/// The index of `needle` in `hay`, the search starting where a match may end at `from` or later.
fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(needle.len() - 1);
    hay.get(start..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + start)
}

/// The index of the `>` ending a start tag (quotes respected), scanning from `from` with
/// `quote` open there; Err(the quote open at the end) when the tag is incomplete.
fn tag_end(s: &[u8], from: usize, mut quote: Option<u8>) -> Result<usize, Option<u8>> {
    for (i, &b) in s.iter().enumerate().skip(from) {
        match (quote, b) {
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return Ok(i),
            _ => {}
        }
    }
    Err(quote)
}

fn check_name(n: &str) -> Result<(), XmlError> {
    let ok = !n.is_empty()
        && n.len() <= 256
        && n.split(':').count() <= 2
        && !n.starts_with(':')
        && !n.ends_with(':')
        && !n.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        && n.chars().all(|c| {
            !c.is_whitespace()
                && !c.is_control()
                && !matches!(c, '<' | '>' | '&' | '\'' | '"' | '=' | '/' | '?' | '!')
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!("bad name {n:?}")))
    }
}

/// Decodes the predefined entities and character references.
fn decode(s: &str) -> Result<String, XmlError> {
    if !s.contains('&') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after
            .find(';')
            .filter(|&e| e <= 10)
            .ok_or_else(|| bad("unterminated entity"))?;
        let ent = &after[..end];
        let ch = match ent {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "apos" => '\'',
            "quot" => '"',
            _ => {
                let code = if let Some(h) = ent.strip_prefix("#x") {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = ent.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .filter(|&c| c != '\0')
                    .ok_or_else(|| bad(format!("entity &{ent};")))?
            }
        };
        out.push(ch);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// What the client writes
// ------------------------------------------------------------------------------------------

/// The client's stream header to `domain` (with the XML declaration).
pub fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}' \
         to='{}' version='1.0'>",
        escape(domain)
    )
}

/// The end of the stream.
pub const STREAM_END: &str = "</stream:stream>";

/// The STARTTLS request.
pub fn starttls() -> String {
    format!("<starttls xmlns='{NS_TLS}'/>")
}

/// SASL `<auth/>` with the initial response (base64; `=` for an empty one).
pub fn sasl_auth(mechanism: &str, initial: &[u8]) -> String {
    let data = if initial.is_empty() {
        "=".to_string()
    } else {
        super::xmpp_sasl::base64_encode(initial)
    };
    format!(
        "<auth xmlns='{NS_SASL}' mechanism='{}'>{data}</auth>",
        escape(mechanism)
    )
}

/// SASL `<response/>`.
pub fn sasl_response(data: &[u8]) -> String {
    format!(
        "<response xmlns='{NS_SASL}'>{}</response>",
        super::xmpp_sasl::base64_encode(data)
    )
}

/// The bind request (RFC 6120 §7), the resource requested or left to the server.
pub fn bind(id: &str, resource: Option<&str>) -> Element {
    let mut b = Element::new("bind", NS_BIND);
    if let Some(r) = resource {
        b.children
            .push(Element::new("resource", NS_BIND).with_text(r));
    }
    Element::new("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_child(b)
}

/// Initial presence.
pub fn presence() -> Element {
    Element::new("presence", NS_CLIENT)
}

/// An IQ `get` (or `set`) to `to` with its payload.
pub fn iq_request(kind: &str, id: &str, to: Option<&str>, payload: Element) -> Element {
    let mut iq = Element::new("iq", NS_CLIENT)
        .with_attr("type", kind)
        .with_attr("id", id);
    if let Some(to) = to {
        iq.set_attr("to", to);
    }
    iq.with_child(payload)
}

/// The empty IQ result answering `id`.
pub fn iq_result(id: &str, to: Option<&str>) -> Element {
    let mut iq = Element::new("iq", NS_CLIENT)
        .with_attr("type", "result")
        .with_attr("id", id);
    if let Some(to) = to {
        iq.set_attr("to", to);
    }
    iq
}

/// An IQ error answering `id` (TR-069 Annex K: the request's payload echoed, then
/// `<error type='cancel'><condition/></error>`).
pub fn iq_error(id: &str, to: Option<&str>, condition: &str, payload: Option<Element>) -> Element {
    let mut iq = Element::new("iq", NS_CLIENT)
        .with_attr("type", "error")
        .with_attr("id", id);
    if let Some(to) = to {
        iq.set_attr("to", to);
    }
    if let Some(p) = payload {
        iq.children.push(p);
    }
    iq.with_child(
        Element::new("error", NS_CLIENT)
            .with_attr("type", "cancel")
            .with_child(Element::new(condition, NS_STANZAS)),
    )
}

/// A XEP-0199 ping to `to`.
pub fn ping(id: &str, to: &str) -> Element {
    iq_request("get", id, Some(to), Element::new("ping", NS_PING))
}

/// The defined condition of a stanza error (`not-authorized`, …).
pub fn error_condition(stanza: &Element) -> Option<&str> {
    stanza
        .get_child("error", &stanza.ns)
        .and_then(|e| {
            e.children
                .iter()
                .find(|c| c.ns == NS_STANZAS && c.name != "text")
        })
        .map(|c| c.name.as_str())
}

/// Whether the stanza is of type `error`.
pub fn is_error(stanza: &Element) -> bool {
    stanza.attr("type") == Some("error")
}

/// A `connectionRequest` element (the ACS side).
pub fn connection_request_element(username: &str, password: &str) -> Element {
    Element::new("connectionRequest", NS_CONNREQ)
        .with_child(Element::new("username", NS_CONNREQ).with_text(username))
        .with_child(Element::new("password", NS_CONNREQ).with_text(password))
}

/// The credentials of a `connectionRequest` element (None if it is not one).
pub fn parse_connection_request(el: &Element) -> Option<(String, String)> {
    if !el.is("connectionRequest", NS_CONNREQ) {
        return None;
    }
    let text = |n: &str| el.get_child(n, NS_CONNREQ).map(|c| c.text.clone());
    Some((text("username")?, text("password")?))
}

// ------------------------------------------------------------------------------------------
// JIDs
// ------------------------------------------------------------------------------------------

/// A JID (RFC 7622), normalised: local part and domain lower-cased (ASCII case folding and
/// Unicode lower case; no full PRECIS), a trailing dot of the domain removed; the resource kept
/// as it is (it may hold `/` and `@`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
}

/// Characters RFC 7622 §3.3.1 forbids in a local part.
const LOCAL_FORBIDDEN: &[char] = &['"', '&', '\'', '/', ':', '<', '>', '@'];

impl Jid {
    /// Parses and normalises a JID.
    pub fn new(s: &str) -> Result<Jid, String> {
        let (bare, resource) = match s.split_once('/') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let (local, domain) = match bare.split_once('@') {
            Some((l, d)) => (Some(l), d),
            None => (None, bare),
        };
        if let Some(l) = local {
            if l.is_empty() || l.len() > 1023 {
                return Err(format!("JID {s:?}: local part empty or too long"));
            }
            if l.chars()
                .any(|c| c.is_whitespace() || c.is_control() || LOCAL_FORBIDDEN.contains(&c))
            {
                return Err(format!("JID {s:?}: forbidden character in the local part"));
            }
        }
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if domain.is_empty()
            || domain.len() > 1023
            || domain.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '@' | '/' | '<' | '>' | '\'' | '"' | '&')
            })
        {
            return Err(format!("JID {s:?}: invalid domain"));
        }
        if let Some(r) = resource
            && (r.is_empty() || r.len() > 1023 || r.chars().any(|c| c.is_control()))
        {
            return Err(format!("JID {s:?}: invalid resource"));
        }
        Ok(Jid {
            local: local.map(str::to_lowercase),
            domain: domain.to_lowercase(),
            resource: resource.map(str::to_string),
        })
    }

    /// The local part (username).
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// The domain part.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The resource.
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    /// The JID without its resource.
    pub fn to_bare(&self) -> Jid {
        Jid {
            resource: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.local {
            write!(f, "{l}@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Jid {
    type Err = String;
    fn from_str(s: &str) -> Result<Jid, String> {
        Jid::new(s)
    }
}

/// The canonical form of a JID as written (None when it is no valid JID).
pub fn canonical_jid(s: &str) -> Option<String> {
    Jid::new(s).ok().map(|j| j.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &mut StreamReader) -> Vec<Event> {
        std::iter::from_fn(|| r.next_event()).collect()
    }

    const SERVER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='d.test' version='1.0' \
        xml:lang='en'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>\
        <required/></starttls><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
        <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
        </stream:features> \n<iq type=\"get\" id='a&amp;b' from='acs@d.test/x'>\
        <connectionRequest xmlns='urn:broadband-forum-org:cwmp:xmppConnReq-1-0'>\
        <username>u&lt;&#x41;&#66;</username><password><![CDATA[p<&>]]></password>\
        </connectionRequest></iq><message/></stream:stream>";

    fn check(events: &[Event]) {
        assert_eq!(events.len(), 5, "{events:?}");
        let Event::StreamStart(h) = &events[0] else {
            panic!()
        };
        assert_eq!(h.attr("id"), Some("abc"));
        assert_eq!(h.attr("xml:lang"), Some("en"));
        let Event::Element(f) = &events[1] else {
            panic!()
        };
        assert!(f.is("features", NS_STREAM));
        let tls = f.get_child("starttls", NS_TLS).unwrap();
        assert!(tls.get_child("required", NS_TLS).is_some());
        let m = f.get_child("mechanisms", NS_SASL).unwrap();
        let names: Vec<_> = m.children.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(names, ["SCRAM-SHA-1", "PLAIN"]);
        let Event::Element(iq) = &events[2] else {
            panic!()
        };
        assert!(iq.is("iq", NS_CLIENT));
        assert_eq!(iq.attr("id"), Some("a&b"));
        assert_eq!(
            parse_connection_request(&iq.children[0]),
            Some(("u<AB".into(), "p<&>".into()))
        );
        assert_eq!(
            events[3],
            Event::Element(Element::new("message", NS_CLIENT))
        );
        assert_eq!(events[4], Event::StreamEnd);
    }

    #[test]
    fn reads_a_stream_whole_and_split_at_every_byte() {
        let mut r = StreamReader::new();
        r.feed(SERVER.as_bytes()).unwrap();
        check(&all(&mut r));
        for cut in 1..SERVER.len() {
            let mut r = StreamReader::new();
            let (a, b) = SERVER.as_bytes().split_at(cut);
            r.feed(a).unwrap();
            let mut ev = all(&mut r);
            r.feed(b).unwrap();
            ev.extend(all(&mut r));
            check(&ev);
        }
        let mut r = StreamReader::new();
        let mut ev = Vec::new();
        for b in SERVER.as_bytes() {
            r.feed(&[*b]).unwrap();
            ev.extend(all(&mut r));
        }
        check(&ev);
    }

    #[test]
    fn large_tokens_fed_byte_by_byte() {
        // Text, a start tag with '>' inside a quoted value, and CDATA near the bound, one byte
        // at a time (each byte only scanned once per token).
        let big = "q".repeat(MAX_STANZA / 4);
        let input = format!(
            "<stream:stream xmlns:stream='{NS_STREAM}' xmlns='{NS_CLIENT}'>\
             <m a='>{big}' b=\"'\">{big}<![CDATA[{big}]]]></m>"
        );
        let mut r = StreamReader::new();
        for b in input.as_bytes() {
            r.feed(&[*b]).unwrap();
        }
        let ev = all(&mut r);
        let Event::Element(m) = &ev[1] else { panic!() };
        assert_eq!(m.attr("a").map(str::len), Some(big.len() + 1));
        assert_eq!(m.attr("b"), Some("'"));
        assert_eq!(m.text.len(), 2 * big.len() + 1);
        assert!(m.text.ends_with("q]"));
    }

    #[test]
    fn prefixes_and_default_namespaces() {
        let mut r = StreamReader::new();
        r.feed(
            b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client'>\
              <s:error><x:bad xmlns:x='urn:x'/></s:error><iq xmlns='urn:other'><q/></iq>",
        )
        .unwrap();
        let ev = all(&mut r);
        let Event::Element(e) = &ev[1] else { panic!() };
        assert!(e.is("error", NS_STREAM));
        assert!(e.children[0].is("bad", "urn:x"));
        let Event::Element(iq) = &ev[2] else { panic!() };
        assert!(iq.is("iq", "urn:other") && iq.children[0].is("q", "urn:other"));
    }

    fn fails(input: &[u8]) -> XmlError {
        let mut r = StreamReader::new();
        let head = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
        r.feed(head).unwrap();
        let e = r.feed(input).unwrap_err();
        // The reader stays failed.
        assert_eq!(r.feed(b"<a/>").unwrap_err(), e);
        e
    }

    #[test]
    fn malformed_and_oversized_input_is_refused() {
        assert!(matches!(fails(b"<a></b>"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<!-- c -->"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<!DOCTYPE x>"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<a>&foo;</a>"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<a>&#0;</a>"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<a b=c/>"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<a b='1' b='2'/>"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<p:a/>"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"hello"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<a>\xff</a>"), XmlError::Malformed(_)));
        assert!(matches!(fails(b"<?pi x?>"), XmlError::Malformed(_)));
        let deep = "<a>".repeat(MAX_DEPTH);
        assert_eq!(fails(deep.as_bytes()), XmlError::TooDeep);
        let attrs: String = (0..=MAX_ATTRS).map(|i| format!(" a{i}='x'")).collect();
        assert_eq!(
            fails(format!("<a{attrs}/>").as_bytes()),
            XmlError::TooManyAttrs
        );
        // One stanza larger than the bound, in pieces or unfinished.
        let big = format!("<a>{}</a>", "x".repeat(MAX_STANZA));
        assert_eq!(fails(big.as_bytes()), XmlError::TooLarge);
        let mut r = StreamReader::new();
        r.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><a>")
            .unwrap();
        let chunk = format!("<b>{}</b>", "y".repeat(1000));
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = r.feed(chunk.as_bytes()) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(XmlError::TooLarge));
        // Many stanzas of moderate size are fine.
        let mut r = StreamReader::new();
        r.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>")
            .unwrap();
        let st = format!("<m>{}</m>", "z".repeat(30_000));
        for _ in 0..10 {
            r.feed(st.as_bytes()).unwrap();
        }
        assert_eq!(all(&mut r).len(), 11);
        // The first element must be the stream header.
        let mut r = StreamReader::new();
        assert!(r.feed(b"<iq/>").is_err());
    }

    #[test]
    fn writer_escapes_and_round_trips() {
        let cr = connection_request_element("a&b", "<p'\">");
        let s = cr.to_string();
        assert!(!s.contains("a&b") && !s.contains("<p'"), "{s}");
        let iq = iq_request("get", "i'd", Some("cpe@d.test/r"), cr.clone());
        let mut r = StreamReader::new();
        r.feed(stream_header("d.test").as_bytes()).unwrap();
        r.feed(iq.to_stanza().as_bytes()).unwrap();
        let ev = all(&mut r);
        assert_eq!(ev[1], Event::Element(iq));
        let Event::Element(back) = &ev[1] else {
            panic!()
        };
        assert_eq!(
            parse_connection_request(&back.children[0]),
            Some(("a&b".into(), "<p'\">".into()))
        );
        let e = iq_error("1", Some("acs@d.test/x"), "not-authorized", Some(cr));
        let s = e.to_stanza();
        assert!(s.starts_with("<iq type='error'"), "{s}");
        assert!(
            s.contains(&format!("<connectionRequest xmlns='{NS_CONNREQ}'>")),
            "{s}"
        );
        assert!(
            s.contains("<error type='cancel'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"),
            "{s}"
        );
        assert_eq!(error_condition(&e), Some("not-authorized"));
        assert!(is_error(&e));
        assert_eq!(
            bind("b", Some("r&")).to_stanza(),
            format!(
                "<iq type='set' id='b'><bind xmlns='{NS_BIND}'><resource>r&amp;</resource></bind></iq>"
            )
        );
        assert_eq!(
            sasl_auth("PLAIN", b""),
            format!("<auth xmlns='{NS_SASL}' mechanism='PLAIN'>=</auth>")
        );
    }

    #[test]
    fn jids_normalise() {
        let j = Jid::new("Acs@EXAMPLE.com./a/b@c").unwrap();
        assert_eq!(j.to_string(), "acs@example.com/a/b@c");
        assert_eq!(j.to_bare().to_string(), "acs@example.com");
        assert_eq!(j.local(), Some("acs"));
        assert_eq!(j.resource(), Some("a/b@c"));
        assert_eq!(canonical_jid("example.com"), Some("example.com".into()));
        for bad in ["@@", "@d", "a@", "a@b/", "a b@c", "", "a@b@c"] {
            assert_eq!(canonical_jid(bad), None, "{bad}");
        }
    }
}
