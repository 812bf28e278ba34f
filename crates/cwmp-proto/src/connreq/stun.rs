//! STUN Binding messages with the TR-111 attributes (TR-069 Annex G) for the
//! UDP connection-request socket: the CPE side builds Binding Requests and
//! parses responses; the server side (`cwmp-connreq stun-server`) parses
//! requests and builds success / 401 responses. Both the RFC 5389 form
//! (magic cookie; encoded and decoded with `stun_codec`) and the classic
//! RFC 3489 form (16-byte transaction id, which `stun_codec` rejects; handled
//! by a small hand codec) are supported, as are both MESSAGE-INTEGRITY input
//! layouts (RFC 3489 zero-padded to 64 bytes, RFC 5389 unpadded). Pure code.

use crate::util::codec::ct_eq;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytecodec::bytes::{BytesEncoder, RemainingBytesDecoder};
use bytecodec::{
    ByteCount, Decode, DecodeExt, Encode, EncodeExt, Eos, SizedEncode, TryTaggedDecode,
};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use stun_codec::net::{SocketAddrDecoder, SocketAddrEncoder};
use stun_codec::rfc5389::attributes::{
    ErrorCode, MappedAddress, MessageIntegrity, Nonce, Realm, Software, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::{
    Attribute, AttributeType, Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId,
};

/// The RFC 5389 magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Value of CONNECTION-REQUEST-BINDING: 20 bytes, with the trailing space.
pub const CRB_VALUE: &[u8; 20] = b"dslforum.org/TR-111 ";

const T_MAPPED_ADDRESS: u16 = 0x0001;
const T_RESPONSE_ADDRESS: u16 = 0x0002;
const T_USERNAME: u16 = 0x0006;
const T_MESSAGE_INTEGRITY: u16 = 0x0008;
const T_ERROR_CODE: u16 = 0x0009;
const T_REALM: u16 = 0x0014;
const T_NONCE: u16 = 0x0015;
const T_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const T_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
const T_CRB: u16 = 0xC001;
const T_BINDING_CHANGE: u16 = 0xC002;

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;

/// Most attributes accepted in one message.
const MAX_ATTRS: usize = 64;

/// STUN decoding/encoding failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StunError {
    /// Shorter than the 20-byte header.
    TooShort,
    /// Not a STUN message: top bits set, length not a multiple of 4 or not
    /// matching the datagram.
    NotStun,
    /// An attribute runs past the end of the message, or too many attributes.
    Malformed,
    /// Not the expected message type (e.g. a request where a response was expected).
    UnexpectedType(u16),
    /// The transaction id does not match the request's.
    TransactionMismatch,
    /// A success response without MAPPED-ADDRESS / XOR-MAPPED-ADDRESS.
    NoMappedAddress,
    /// A value cannot be encoded (e.g. a username over 512 bytes).
    Encode,
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StunError::TooShort => f.write_str("shorter than a STUN header"),
            StunError::NotStun => f.write_str("not a STUN message"),
            StunError::Malformed => f.write_str("malformed STUN attributes"),
            StunError::UnexpectedType(t) => write!(f, "unexpected STUN message type {t:#06x}"),
            StunError::TransactionMismatch => f.write_str("transaction id mismatch"),
            StunError::NoMappedAddress => f.write_str("success response without a mapped address"),
            StunError::Encode => f.write_str("cannot encode STUN message"),
        }
    }
}

impl std::error::Error for StunError {}

// ---------------------------------------------------------------------------
// Transaction ids, demultiplexing
// ---------------------------------------------------------------------------

/// A transaction id, which also fixes the message form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxId {
    /// RFC 3489: 128 bits, no magic cookie. The first four bytes should not
    /// equal the magic cookie (a random id hits it with probability 2^-32).
    Classic([u8; 16]),
    /// RFC 5389: magic cookie followed by these 96 bits.
    Rfc5389([u8; 12]),
}

impl TxId {
    /// The 16 header bytes after type and length.
    pub fn header_bytes(&self) -> [u8; 16] {
        match self {
            TxId::Classic(b) => *b,
            TxId::Rfc5389(b) => {
                let mut h = [0u8; 16];
                h[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                h[4..].copy_from_slice(b);
                h
            }
        }
    }

    /// Interprets 16 header bytes.
    pub fn from_header_bytes(h: [u8; 16]) -> TxId {
        if h[..4] == MAGIC_COOKIE.to_be_bytes() {
            let mut b = [0u8; 12];
            b.copy_from_slice(&h[4..]);
            TxId::Rfc5389(b)
        } else {
            TxId::Classic(h)
        }
    }

    /// Whether this is the classic (cookie-less) form.
    pub fn is_classic(&self) -> bool {
        matches!(self, TxId::Classic(_))
    }
}

/// Whether a datagram starting with `first_byte` may be STUN (top two bits 0).
/// A UDP connection request starts with `G` (0x47) and never is.
pub fn is_stun(first_byte: u8) -> bool {
    first_byte & 0xC0 == 0
}

/// What arrived on the shared UDP connection-request socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramKind {
    /// A STUN message (header and length consistent).
    Stun,
    /// Looks like an HTTP GET (a UDP connection request).
    UdpConnectionRequest,
    /// Neither.
    Other,
}

/// Demultiplexes a datagram received on the UDP connection-request socket.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    if datagram.starts_with(b"GET ") {
        return DatagramKind::UdpConnectionRequest;
    }
    if datagram.len() >= 20 && is_stun(datagram[0]) {
        let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
        if len % 4 == 0 && len + 20 == datagram.len() {
            return DatagramKind::Stun;
        }
    }
    DatagramKind::Other
}

// ---------------------------------------------------------------------------
// stun_codec attribute set with the TR-111 attributes
// ---------------------------------------------------------------------------

/// CONNECTION-REQUEST-BINDING (0xC001), TR-111. Value: [`CRB_VALUE`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionRequestBinding(pub Vec<u8>);

impl ConnectionRequestBinding {
    /// The attribute type.
    pub const CODEPOINT: u16 = T_CRB;

    /// The attribute with the exact TR-111 value.
    pub fn new() -> Self {
        ConnectionRequestBinding(CRB_VALUE.to_vec())
    }
}

impl Default for ConnectionRequestBinding {
    fn default() -> Self {
        Self::new()
    }
}

impl Attribute for ConnectionRequestBinding {
    type Decoder = ConnectionRequestBindingDecoder;
    type Encoder = ConnectionRequestBindingEncoder;
    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// BINDING-CHANGE (0xC002), TR-111. Empty value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindingChange;

impl BindingChange {
    /// The attribute type.
    pub const CODEPOINT: u16 = T_BINDING_CHANGE;
}

impl Attribute for BindingChange {
    type Decoder = BindingChangeDecoder;
    type Encoder = BindingChangeEncoder;
    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

/// RESPONSE-ADDRESS (0x0002), RFC 3489; used for NAT binding-timeout discovery.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResponseAddress(pub SocketAddr);

impl ResponseAddress {
    /// The attribute type.
    pub const CODEPOINT: u16 = T_RESPONSE_ADDRESS;
}

impl Attribute for ResponseAddress {
    type Decoder = ResponseAddressDecoder;
    type Encoder = ResponseAddressEncoder;
    fn get_type(&self) -> AttributeType {
        AttributeType::new(Self::CODEPOINT)
    }
}

macro_rules! value_codec {
    ($dec:ident, $enc:ident, $item:ty, $inner_dec:ty, $inner_enc:ty, $from:expr, $into:expr) => {
        #[doc = concat!("Decoder for [`", stringify!($item), "`].")]
        #[derive(Debug, Default)]
        pub struct $dec($inner_dec);

        impl Decode for $dec {
            type Item = $item;
            fn decode(&mut self, buf: &[u8], eos: Eos) -> bytecodec::Result<usize> {
                self.0.decode(buf, eos)
            }
            fn finish_decoding(&mut self) -> bytecodec::Result<$item> {
                self.0.finish_decoding().map($from)
            }
            fn requiring_bytes(&self) -> ByteCount {
                self.0.requiring_bytes()
            }
            fn is_idle(&self) -> bool {
                self.0.is_idle()
            }
        }

        impl TryTaggedDecode for $dec {
            type Tag = AttributeType;
            fn try_start_decoding(&mut self, tag: AttributeType) -> bytecodec::Result<bool> {
                Ok(tag.as_u16() == <$item>::CODEPOINT)
            }
        }

        #[doc = concat!("Encoder for [`", stringify!($item), "`].")]
        #[derive(Debug, Default)]
        pub struct $enc($inner_enc);

        impl Encode for $enc {
            type Item = $item;
            fn encode(&mut self, buf: &mut [u8], eos: Eos) -> bytecodec::Result<usize> {
                self.0.encode(buf, eos)
            }
            fn start_encoding(&mut self, item: $item) -> bytecodec::Result<()> {
                self.0.start_encoding($into(item))
            }
            fn requiring_bytes(&self) -> ByteCount {
                self.0.requiring_bytes()
            }
            fn is_idle(&self) -> bool {
                self.0.is_idle()
            }
        }

        impl SizedEncode for $enc {
            fn exact_requiring_bytes(&self) -> u64 {
                self.0.exact_requiring_bytes()
            }
        }
    };
}

value_codec!(
    ConnectionRequestBindingDecoder,
    ConnectionRequestBindingEncoder,
    ConnectionRequestBinding,
    RemainingBytesDecoder,
    BytesEncoder<Vec<u8>>,
    ConnectionRequestBinding,
    |a: ConnectionRequestBinding| a.0
);
value_codec!(
    BindingChangeDecoder,
    BindingChangeEncoder,
    BindingChange,
    RemainingBytesDecoder,
    BytesEncoder<Vec<u8>>,
    |_| BindingChange,
    |_| Vec::new()
);
value_codec!(
    ResponseAddressDecoder,
    ResponseAddressEncoder,
    ResponseAddress,
    SocketAddrDecoder,
    SocketAddrEncoder,
    ResponseAddress,
    |a: ResponseAddress| a.0
);

stun_codec::define_attribute_enums!(
    Tr111Attribute,
    Tr111AttributeDecoder,
    Tr111AttributeEncoder,
    [
        MappedAddress,
        XorMappedAddress,
        Username,
        MessageIntegrity,
        ErrorCode,
        Realm,
        Nonce,
        Software,
        ResponseAddress,
        ConnectionRequestBinding,
        BindingChange
    ]
);

fn encode_with_codec(m: Message<Tr111Attribute>) -> Result<Vec<u8>, StunError> {
    MessageEncoder::new()
        .encode_into_bytes(m)
        .map_err(|_| StunError::Encode)
}

// ---------------------------------------------------------------------------
// Raw (hand) codec: classic messages, MESSAGE-INTEGRITY, fallback decoding
// ---------------------------------------------------------------------------

struct RawAttr<'a> {
    typ: u16,
    value: &'a [u8],
    offset: usize,
}

struct RawMsg<'a> {
    msg_type: u16,
    header: [u8; 16],
    attrs: Vec<RawAttr<'a>>,
}

fn parse_raw(b: &[u8]) -> Result<RawMsg<'_>, StunError> {
    if b.len() < 20 {
        return Err(StunError::TooShort);
    }
    if !is_stun(b[0]) {
        return Err(StunError::NotStun);
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if len % 4 != 0 || len + 20 != b.len() {
        return Err(StunError::NotStun);
    }
    let mut header = [0u8; 16];
    header.copy_from_slice(&b[4..20]);
    let mut attrs = Vec::new();
    let mut i = 20;
    while i < b.len() {
        if i + 4 > b.len() || attrs.len() >= MAX_ATTRS {
            return Err(StunError::Malformed);
        }
        let typ = u16::from_be_bytes([b[i], b[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        let start = i + 4;
        let end = start + alen;
        if end > b.len() {
            return Err(StunError::Malformed);
        }
        attrs.push(RawAttr {
            typ,
            value: &b[start..end],
            offset: i,
        });
        i = end.div_ceil(4) * 4;
    }
    Ok(RawMsg {
        msg_type: u16::from_be_bytes([b[0], b[1]]),
        header,
        attrs,
    })
}

fn header(msg_type: u16, txid: &TxId) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    v.extend_from_slice(&msg_type.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&txid.header_bytes());
    v
}

fn push_attr(buf: &mut Vec<u8>, typ: u16, value: &[u8]) -> Result<(), StunError> {
    let len = u16::try_from(value.len()).map_err(|_| StunError::Encode)?;
    buf.extend_from_slice(&typ.to_be_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(value);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
    Ok(())
}

fn set_len(buf: &mut [u8], len: usize) -> Result<(), StunError> {
    let l = u16::try_from(len).map_err(|_| StunError::Encode)?;
    buf[2..4].copy_from_slice(&l.to_be_bytes());
    Ok(())
}

fn finish(mut buf: Vec<u8>) -> Result<Vec<u8>, StunError> {
    let n = buf.len() - 20;
    set_len(&mut buf, n)?;
    Ok(buf)
}

fn encode_addr(addr: SocketAddr, xor_with: Option<&[u8; 16]>) -> Vec<u8> {
    let mut v = vec![0u8];
    let mut ip: Vec<u8> = match addr.ip() {
        IpAddr::V4(a) => {
            v.push(1);
            a.octets().to_vec()
        }
        IpAddr::V6(a) => {
            v.push(2);
            a.octets().to_vec()
        }
    };
    let mut port = addr.port();
    if let Some(h) = xor_with {
        port ^= u16::from_be_bytes([h[0], h[1]]);
        for (b, k) in ip.iter_mut().zip(h.iter()) {
            *b ^= k;
        }
    }
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&ip);
    v
}

fn decode_addr(v: &[u8], xor_with: Option<&[u8; 16]>) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    let mut ip = v.get(4..)?.to_vec();
    match (v[1], ip.len()) {
        (1, 4) | (2, 16) => {}
        _ => return None,
    }
    if let Some(h) = xor_with {
        port ^= u16::from_be_bytes([h[0], h[1]]);
        for (b, k) in ip.iter_mut().zip(h.iter()) {
            *b ^= k;
        }
    }
    let ip = if let Ok(a) = <[u8; 4]>::try_from(ip.as_slice()) {
        IpAddr::V4(Ipv4Addr::from(a))
    } else {
        let a = <[u8; 16]>::try_from(ip.as_slice()).ok()?;
        IpAddr::V6(Ipv6Addr::from(a))
    };
    Some(SocketAddr::new(ip, port))
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha1> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    let mut out = [0u8; 20];
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

/// How the MESSAGE-INTEGRITY input is formed. In both, the header length
/// already counts the MESSAGE-INTEGRITY attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MiLayout {
    /// RFC 3489: the message up to MESSAGE-INTEGRITY, zero-padded to a multiple of 64 bytes.
    Rfc3489Padded,
    /// RFC 5389: the message up to MESSAGE-INTEGRITY, no padding.
    Rfc5389,
}

/// Result of a MESSAGE-INTEGRITY check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Integrity {
    /// No MESSAGE-INTEGRITY attribute.
    Absent,
    /// Valid under the given key, computed with this layout.
    Valid(MiLayout),
    /// Present but wrong for the key (or not 20 bytes).
    Invalid,
}

fn mi_input(msg_upto_mi: &[u8], layout: MiLayout) -> Vec<u8> {
    let mut input = msg_upto_mi.to_vec();
    let l = (msg_upto_mi.len() - 20 + 24) as u16;
    input[2..4].copy_from_slice(&l.to_be_bytes());
    if layout == MiLayout::Rfc3489Padded {
        input.resize(input.len().div_ceil(64) * 64, 0);
    }
    input
}

/// Appends MESSAGE-INTEGRITY (short-term: `key` = password bytes) to an
/// encoded message and fixes the header length.
fn append_integrity(buf: &mut Vec<u8>, key: &[u8], layout: MiLayout) -> Result<(), StunError> {
    if buf.len() + 24 - 20 > usize::from(u16::MAX) {
        return Err(StunError::Encode);
    }
    let mac = hmac_sha1(key, &mi_input(buf, layout));
    push_attr(buf, T_MESSAGE_INTEGRITY, &mac)?;
    let n = buf.len() - 20;
    set_len(buf, n)
}

/// Checks the MESSAGE-INTEGRITY of any STUN message against `key`
/// (short-term credentials: the password bytes), accepting either layout.
pub fn check_integrity(msg: &[u8], key: &[u8]) -> Integrity {
    let Ok(raw) = parse_raw(msg) else {
        return Integrity::Absent;
    };
    let Some(mi) = raw.attrs.iter().find(|a| a.typ == T_MESSAGE_INTEGRITY) else {
        return Integrity::Absent;
    };
    if mi.value.len() != 20 {
        return Integrity::Invalid;
    }
    // The layout of the message's form first (one HMAC for a well-formed request).
    let layouts = if raw.header[..4] == MAGIC_COOKIE.to_be_bytes() {
        [MiLayout::Rfc5389, MiLayout::Rfc3489Padded]
    } else {
        [MiLayout::Rfc3489Padded, MiLayout::Rfc5389]
    };
    for layout in layouts {
        let mac = hmac_sha1(key, &mi_input(&msg[..mi.offset], layout));
        if ct_eq(&mac, mi.value) {
            return Integrity::Valid(layout);
        }
    }
    Integrity::Invalid
}

// ---------------------------------------------------------------------------
// Normalised attribute view
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Attrs {
    mapped: Option<SocketAddr>,
    xor_mapped: Option<SocketAddr>,
    username: Option<String>,
    error: Option<(u16, String)>,
    realm: Option<String>,
    nonce: Option<String>,
    software: Option<String>,
    crb: Option<Vec<u8>>,
    binding_change: bool,
    response_address: Option<SocketAddr>,
    has_integrity: bool,
    unknown_required: Vec<u16>,
}

fn text(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    s.trim_end_matches(['\0', ' ']).to_owned()
}

/// Attribute view by the hand codec. Attributes after MESSAGE-INTEGRITY are
/// ignored (they are not covered by it). XOR-MAPPED-ADDRESS is used only in
/// cookie form: stund sends a differently XORed one in classic responses.
fn attrs_from_raw(raw: &RawMsg<'_>) -> Attrs {
    let cookie = raw.header[..4] == MAGIC_COOKIE.to_be_bytes();
    let mut a = Attrs::default();
    for at in &raw.attrs {
        let v = at.value;
        match at.typ {
            T_MAPPED_ADDRESS => a.mapped = a.mapped.or(decode_addr(v, None)),
            T_XOR_MAPPED_ADDRESS | T_XOR_MAPPED_ADDRESS_ALT if cookie => {
                a.xor_mapped = a.xor_mapped.or(decode_addr(v, Some(&raw.header)));
            }
            T_XOR_MAPPED_ADDRESS => {}
            T_RESPONSE_ADDRESS => {
                a.response_address = a.response_address.or(decode_addr(v, None));
            }
            T_USERNAME if a.username.is_none() => a.username = Some(text(v)),
            T_ERROR_CODE if a.error.is_none() && v.len() >= 4 => {
                let code = u16::from(v[2] & 7) * 100 + u16::from(v[3]);
                a.error = Some((code, text(&v[4..])));
            }
            T_REALM if a.realm.is_none() => a.realm = Some(text(v)),
            T_NONCE if a.nonce.is_none() => a.nonce = Some(text(v)),
            0x8022 if a.software.is_none() => a.software = Some(text(v)),
            T_CRB if a.crb.is_none() => a.crb = Some(v.to_vec()),
            T_BINDING_CHANGE => a.binding_change = true,
            T_MESSAGE_INTEGRITY => {
                a.has_integrity = true;
                break;
            }
            t if t < 0x8000 && !matches!(t, T_USERNAME | T_ERROR_CODE | T_REALM | T_NONCE) => {
                a.unknown_required.push(t);
            }
            _ => {}
        }
    }
    a
}

/// Attribute view through `stun_codec` (cookie form only). Falls back to the
/// hand codec when `stun_codec` cannot decode the message.
fn attrs_from_codec(msg: &[u8], raw: &RawMsg<'_>) -> Attrs {
    let decoded = MessageDecoder::<Tr111Attribute>::new().decode_from_bytes(msg);
    let Ok(Ok(m)) = decoded else {
        return attrs_from_raw(raw);
    };
    let mut a = Attrs::default();
    for attr in m.attributes() {
        match attr {
            Tr111Attribute::MappedAddress(x) => a.mapped = a.mapped.or(Some(x.address())),
            Tr111Attribute::XorMappedAddress(x) => {
                a.xor_mapped = a.xor_mapped.or(Some(x.address()));
            }
            Tr111Attribute::Username(x) if a.username.is_none() => {
                a.username = Some(x.name().to_owned());
            }
            Tr111Attribute::ErrorCode(x) if a.error.is_none() => {
                a.error = Some((x.code(), x.reason_phrase().to_owned()));
            }
            Tr111Attribute::Realm(x) if a.realm.is_none() => a.realm = Some(x.text().to_owned()),
            Tr111Attribute::Nonce(x) if a.nonce.is_none() => a.nonce = Some(x.value().to_owned()),
            Tr111Attribute::Software(x) if a.software.is_none() => {
                a.software = Some(x.description().to_owned());
            }
            Tr111Attribute::ResponseAddress(x) => {
                a.response_address = a.response_address.or(Some(x.0));
            }
            Tr111Attribute::ConnectionRequestBinding(x) if a.crb.is_none() => {
                a.crb = Some(x.0.clone());
            }
            Tr111Attribute::BindingChange(_) => a.binding_change = true,
            Tr111Attribute::MessageIntegrity(_) => {
                a.has_integrity = true;
                break;
            }
            _ => {}
        }
    }
    // Unknown comprehension-required types (and the XOR-MAPPED-ADDRESS
    // variant stun_codec does not know), before MESSAGE-INTEGRITY.
    let from_raw = attrs_from_raw(raw);
    a.unknown_required = from_raw.unknown_required;
    if a.xor_mapped.is_none() {
        a.xor_mapped = from_raw.xor_mapped;
    }
    a
}

fn attrs_of(msg: &[u8], raw: &RawMsg<'_>) -> Attrs {
    if raw.header[..4] == MAGIC_COOKIE.to_be_bytes() {
        attrs_from_codec(msg, raw)
    } else {
        attrs_from_raw(raw)
    }
}

// ---------------------------------------------------------------------------
// CPE side
// ---------------------------------------------------------------------------

/// A Binding Request from the CPE's UDP connection-request socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingRequest<'a> {
    /// Transaction id; its variant selects the classic or RFC 5389 form.
    pub txid: TxId,
    /// `STUNUsername`; when `Some` and non-empty, USERNAME and
    /// MESSAGE-INTEGRITY are added.
    pub username: Option<&'a str>,
    /// `STUNPassword`, the MESSAGE-INTEGRITY key (empty when `None`).
    pub password: Option<&'a str>,
    /// MESSAGE-INTEGRITY input layout.
    pub mi_layout: MiLayout,
    /// Add CONNECTION-REQUEST-BINDING (true for every request from the CR socket).
    pub connection_request_binding: bool,
    /// Add BINDING-CHANGE (the mapped address changed since last reported).
    pub binding_change: bool,
    /// Add RESPONSE-ADDRESS (RFC 3489; binding-timeout discovery).
    pub response_address: Option<SocketAddr>,
}

impl<'a> BindingRequest<'a> {
    /// An unauthenticated request with CONNECTION-REQUEST-BINDING. The MI
    /// layout follows the form: padded for classic, unpadded for RFC 5389.
    pub fn new(txid: TxId) -> Self {
        BindingRequest {
            txid,
            username: None,
            password: None,
            mi_layout: if txid.is_classic() {
                MiLayout::Rfc3489Padded
            } else {
                MiLayout::Rfc5389
            },
            connection_request_binding: true,
            binding_change: false,
            response_address: None,
        }
    }

    /// Encodes the request. Attribute order: CONNECTION-REQUEST-BINDING,
    /// USERNAME, BINDING-CHANGE, RESPONSE-ADDRESS, MESSAGE-INTEGRITY (last);
    /// this reproduces the SPEC-NOTES §c.6 bytes exactly.
    ///
    /// In classic form USERNAME is padded with spaces inside its length (as
    /// icwmp does; stund drops other lengths); in RFC 5389 form its length is
    /// the real length with zero padding.
    pub fn encode(&self) -> Result<Vec<u8>, StunError> {
        let user = self.username.filter(|u| !u.is_empty());
        let mut buf = match self.txid {
            TxId::Classic(_) => {
                let mut b = header(BINDING_REQUEST, &self.txid);
                if self.connection_request_binding {
                    push_attr(&mut b, T_CRB, CRB_VALUE)?;
                }
                if let Some(u) = user {
                    let mut v = u.as_bytes().to_vec();
                    while v.len() % 4 != 0 {
                        v.push(b' ');
                    }
                    push_attr(&mut b, T_USERNAME, &v)?;
                }
                if self.binding_change {
                    push_attr(&mut b, T_BINDING_CHANGE, &[])?;
                }
                if let Some(r) = self.response_address {
                    push_attr(&mut b, T_RESPONSE_ADDRESS, &encode_addr(r, None))?;
                }
                finish(b)?
            }
            TxId::Rfc5389(id) => {
                let mut m = Message::<Tr111Attribute>::new(
                    MessageClass::Request,
                    BINDING,
                    TransactionId::new(id),
                );
                if self.connection_request_binding {
                    m.add_attribute(ConnectionRequestBinding::new());
                }
                if let Some(u) = user {
                    m.add_attribute(Username::new(u.to_owned()).map_err(|_| StunError::Encode)?);
                }
                if self.binding_change {
                    m.add_attribute(BindingChange);
                }
                if let Some(r) = self.response_address {
                    m.add_attribute(ResponseAddress(r));
                }
                encode_with_codec(m)?
            }
        };
        if user.is_some() {
            let key = self.password.unwrap_or("").as_bytes();
            append_integrity(&mut buf, key, self.mi_layout)?;
        }
        Ok(buf)
    }
}

/// Convenience: a Binding Request with CONNECTION-REQUEST-BINDING, optional
/// USERNAME + MESSAGE-INTEGRITY (only when `username` is non-empty) and
/// optional BINDING-CHANGE, in the form selected by `txid`.
pub fn binding_request(
    txid: TxId,
    username: Option<&str>,
    password: Option<&str>,
    binding_change: bool,
) -> Result<Vec<u8>, StunError> {
    BindingRequest {
        username,
        password,
        binding_change,
        ..BindingRequest::new(txid)
    }
    .encode()
}

/// A parsed Binding response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StunResponse {
    /// The transaction id (and form) of the response.
    pub txid: TxId,
    /// The mapped (public) address: XOR-MAPPED-ADDRESS when the response has
    /// the magic cookie, else MAPPED-ADDRESS. Always `Some` for a success response.
    pub mapped: Option<SocketAddr>,
    /// ERROR-CODE of an error response: (code, reason phrase).
    pub error: Option<(u16, String)>,
    /// REALM, if present.
    pub realm: Option<String>,
    /// NONCE, if present.
    pub nonce: Option<String>,
    /// SOFTWARE, if present.
    pub software: Option<String>,
    /// Whether MESSAGE-INTEGRITY is present (verify with [`check_integrity`]).
    pub has_integrity: bool,
}

impl StunResponse {
    /// Whether this is an error response asking for credentials (401).
    pub fn is_unauthorized(&self) -> bool {
        self.error.as_ref().is_some_and(|(c, _)| *c == 401)
    }
}

/// Parses a Binding success or error response and checks it answers `expected`.
pub fn parse_response(msg: &[u8], expected: &TxId) -> Result<StunResponse, StunError> {
    let raw = parse_raw(msg)?;
    if raw.msg_type != BINDING_SUCCESS && raw.msg_type != BINDING_ERROR {
        return Err(StunError::UnexpectedType(raw.msg_type));
    }
    if !ct_eq(&raw.header, &expected.header_bytes()) {
        return Err(StunError::TransactionMismatch);
    }
    let a = attrs_of(msg, &raw);
    let mapped = a.xor_mapped.or(a.mapped);
    let error = if raw.msg_type == BINDING_ERROR {
        Some(a.error.unwrap_or((0, String::new())))
    } else {
        None
    };
    if error.is_none() && mapped.is_none() {
        return Err(StunError::NoMappedAddress);
    }
    Ok(StunResponse {
        txid: TxId::from_header_bytes(raw.header),
        mapped,
        error,
        realm: a.realm,
        nonce: a.nonce,
        software: a.software,
        has_integrity: a.has_integrity,
    })
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

/// What a TR-111 STUN server needs to know about a Binding Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingRequestInfo {
    /// Transaction id; `Classic` for an RFC 3489 request.
    pub txid: TxId,
    /// USERNAME (trailing spaces/NULs used as classic padding removed).
    pub username: Option<String>,
    /// MESSAGE-INTEGRITY present (verify with [`check_integrity`]).
    pub has_integrity: bool,
    /// CONNECTION-REQUEST-BINDING present.
    pub connection_request_binding: bool,
    /// Its value is exactly [`CRB_VALUE`] (some CPEs omit the trailing space).
    pub crb_value_exact: bool,
    /// BINDING-CHANGE present.
    pub binding_change: bool,
    /// RESPONSE-ADDRESS, if present.
    pub response_address: Option<SocketAddr>,
    /// Unknown comprehension-required attribute types (a strict server answers 420).
    pub unknown_required: Vec<u16>,
}

impl BindingRequestInfo {
    /// Whether the request is in classic RFC 3489 form.
    pub fn is_classic(&self) -> bool {
        self.txid.is_classic()
    }
}

/// Parses a Binding Request (server side).
pub fn parse_binding_request(msg: &[u8]) -> Result<BindingRequestInfo, StunError> {
    let raw = parse_raw(msg)?;
    if raw.msg_type != BINDING_REQUEST {
        return Err(StunError::UnexpectedType(raw.msg_type));
    }
    let a = attrs_of(msg, &raw);
    let crb_value_exact = a.crb.as_deref() == Some(&CRB_VALUE[..]);
    Ok(BindingRequestInfo {
        txid: TxId::from_header_bytes(raw.header),
        username: a.username,
        has_integrity: a.has_integrity,
        connection_request_binding: a.crb.is_some(),
        crb_value_exact,
        binding_change: a.binding_change,
        response_address: a.response_address,
        unknown_required: a.unknown_required,
    })
}

/// Builds a Binding Success response for a request from `source`, in the
/// request's form: RFC 5389 → XOR-MAPPED-ADDRESS and MAPPED-ADDRESS; classic
/// → MAPPED-ADDRESS only. With `integrity`, MESSAGE-INTEGRITY is appended
/// (key = password bytes, in the given layout; mirror the request's).
pub fn binding_success(
    txid: &TxId,
    source: SocketAddr,
    integrity: Option<(&[u8], MiLayout)>,
) -> Result<Vec<u8>, StunError> {
    let mut buf = match txid {
        TxId::Classic(_) => {
            let mut b = header(BINDING_SUCCESS, txid);
            push_attr(&mut b, T_MAPPED_ADDRESS, &encode_addr(source, None))?;
            finish(b)?
        }
        TxId::Rfc5389(id) => {
            let mut m = Message::<Tr111Attribute>::new(
                MessageClass::SuccessResponse,
                BINDING,
                TransactionId::new(*id),
            );
            m.add_attribute(XorMappedAddress::new(source));
            m.add_attribute(MappedAddress::new(source));
            encode_with_codec(m)?
        }
    };
    if let Some((key, layout)) = integrity {
        append_integrity(&mut buf, key, layout)?;
    }
    Ok(buf)
}

/// Builds a Binding Error response with ERROR-CODE `code` (300..=699).
pub fn binding_error(txid: &TxId, code: u16, reason: &str) -> Result<Vec<u8>, StunError> {
    if !(300..700).contains(&code) {
        return Err(StunError::Encode);
    }
    match txid {
        TxId::Classic(_) => {
            let mut b = header(BINDING_ERROR, txid);
            let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
            v.extend_from_slice(reason.as_bytes());
            // RFC 3489: the reason phrase length is a multiple of 4.
            while v.len() % 4 != 0 {
                v.push(b' ');
            }
            push_attr(&mut b, T_ERROR_CODE, &v)?;
            finish(b)
        }
        TxId::Rfc5389(id) => {
            let mut m = Message::<Tr111Attribute>::new(
                MessageClass::ErrorResponse,
                BINDING,
                TransactionId::new(*id),
            );
            let e = ErrorCode::new(code, reason.to_owned()).map_err(|_| StunError::Encode)?;
            m.add_attribute(e);
            encode_with_codec(m)
        }
    }
}

/// A `401 Unauthorized` Binding Error response.
pub fn unauthorized(txid: &TxId) -> Result<Vec<u8>, StunError> {
    binding_error(txid, 401, "Unauthorized")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    const VEC_TXID: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    #[test]
    fn spec_vector_unauthenticated() {
        let b = binding_request(TxId::Classic(VEC_TXID), None, None, false).unwrap();
        let want = unhex(
            "0001 0018 000102030405060708090a0b0c0d0e0f
             c001 0014 64736c666f72756d2e6f72672f54522d31313120",
        );
        assert_eq!(b, want);
        assert_eq!(b.len(), 44);
    }

    #[test]
    fn spec_vector_authenticated_rfc3489_layout() {
        let b = binding_request(
            TxId::Classic(VEC_TXID),
            Some("stunuser"),
            Some("stunpass"),
            false,
        )
        .unwrap();
        let want = unhex(
            "0001003c000102030405060708090a0b0c0d0e0fc001001464736c666f72756d2e6f72672f54522d31313120
             000600087374756e7573657200080014a7ca401d853ea68d2e18c43c7c3e594d1bb8d4ba",
        );
        assert_eq!(b, want);
        assert_eq!(b.len(), 80);
        assert_eq!(
            check_integrity(&b, b"stunpass"),
            Integrity::Valid(MiLayout::Rfc3489Padded)
        );
        assert_eq!(check_integrity(&b, b"stunpasS"), Integrity::Invalid);
        let covered = &want[..56];
        assert_eq!(
            hex(&hmac_sha1(
                b"stunpass",
                &mi_input(covered, MiLayout::Rfc3489Padded)
            )),
            "a7ca401d853ea68d2e18c43c7c3e594d1bb8d4ba"
        );
        assert_eq!(
            hex(&hmac_sha1(
                b"stunpass",
                &mi_input(covered, MiLayout::Rfc5389)
            )),
            "1358a8f324dccb5ecb5cfb24b3b45ccf720059f7"
        );
        // Byte-exact reproduction with the vector's attribute order.
        let mut v = header(BINDING_REQUEST, &TxId::Classic(VEC_TXID));
        push_attr(&mut v, T_CRB, CRB_VALUE).unwrap();
        push_attr(&mut v, T_USERNAME, b"stunuser").unwrap();
        append_integrity(&mut v, b"stunpass", MiLayout::Rfc3489Padded).unwrap();
        assert_eq!(v, want);
        // The unpadded variant of the same message verifies as RFC 5389 layout.
        let mut v5 = header(BINDING_REQUEST, &TxId::Classic(VEC_TXID));
        push_attr(&mut v5, T_CRB, CRB_VALUE).unwrap();
        push_attr(&mut v5, T_USERNAME, b"stunuser").unwrap();
        append_integrity(&mut v5, b"stunpass", MiLayout::Rfc5389).unwrap();
        assert_eq!(hex(&v5[60..]), "1358a8f324dccb5ecb5cfb24b3b45ccf720059f7");
        assert_eq!(
            check_integrity(&v5, b"stunpass"),
            Integrity::Valid(MiLayout::Rfc5389)
        );
        // Server-side parse of the vector.
        let info = parse_binding_request(&want).unwrap();
        assert!(info.is_classic());
        assert_eq!(info.username.as_deref(), Some("stunuser"));
        assert!(info.has_integrity && info.connection_request_binding && info.crb_value_exact);
        assert!(!info.binding_change);
    }

    #[test]
    fn binding_change_attribute_bytes() {
        let b = binding_request(TxId::Classic(VEC_TXID), None, None, true).unwrap();
        assert_eq!(&b[44..], &unhex("c002 0000")[..]);
        assert_eq!(&b[2..4], &[0, 0x1c]);
    }

    #[test]
    fn integrity_wrong_password_and_tamper() {
        for txid in [TxId::Classic(VEC_TXID), TxId::Rfc5389([9; 12])] {
            let b = binding_request(txid, Some("user1"), Some("pw"), true).unwrap();
            assert!(matches!(check_integrity(&b, b"pw"), Integrity::Valid(_)));
            assert_eq!(check_integrity(&b, b"pW"), Integrity::Invalid);
            let mut t = b.clone();
            t[25] ^= 1; // inside the first attribute
            assert_eq!(check_integrity(&t, b"pw"), Integrity::Invalid);
            let plain = binding_request(txid, None, Some("pw"), false).unwrap();
            assert_eq!(check_integrity(&plain, b"pw"), Integrity::Absent);
            // Empty username: no MESSAGE-INTEGRITY.
            let empty = binding_request(txid, Some(""), Some("pw"), false).unwrap();
            assert_eq!(empty, plain);
        }
    }

    #[test]
    fn rfc5389_request_round_trip_all_attributes() {
        let id = [7u8; 12];
        let ra: SocketAddr = "192.0.2.10:4000".parse().unwrap();
        let req = BindingRequest {
            username: Some("cpe-42"),
            password: Some("secret"),
            binding_change: true,
            response_address: Some(ra),
            ..BindingRequest::new(TxId::Rfc5389(id))
        };
        let b = req.encode().unwrap();
        assert_eq!(&b[4..8], &MAGIC_COOKIE.to_be_bytes());
        assert_eq!(classify(&b), DatagramKind::Stun);
        // stun_codec decodes it, with the custom attributes typed.
        let m = MessageDecoder::<Tr111Attribute>::new()
            .decode_from_bytes(&b)
            .unwrap()
            .unwrap();
        assert_eq!(m.class(), MessageClass::Request);
        assert_eq!(m.get_attribute::<Username>().unwrap().name(), "cpe-42");
        assert_eq!(
            m.get_attribute::<ConnectionRequestBinding>().unwrap().0,
            CRB_VALUE
        );
        assert!(m.get_attribute::<BindingChange>().is_some());
        assert_eq!(m.get_attribute::<ResponseAddress>().unwrap().0, ra);
        // Our hand-appended MI equals stun_codec's own short-term MI.
        let mi = m.get_attribute::<MessageIntegrity>().unwrap();
        assert!(mi.check_short_term_credential("secret").is_ok());
        assert!(mi.check_short_term_credential("wrong").is_err());
        // Server-side view.
        let info = parse_binding_request(&b).unwrap();
        assert_eq!(
            info,
            BindingRequestInfo {
                txid: TxId::Rfc5389(id),
                username: Some("cpe-42".into()),
                has_integrity: true,
                connection_request_binding: true,
                crb_value_exact: true,
                binding_change: true,
                response_address: Some(ra),
                unknown_required: vec![],
            }
        );
        assert_eq!(
            check_integrity(&b, b"secret"),
            Integrity::Valid(MiLayout::Rfc5389)
        );
    }

    #[test]
    fn classic_request_round_trip_and_username_padding() {
        let ra: SocketAddr = "[2001:db8::5]:7000".parse().unwrap();
        let req = BindingRequest {
            username: Some("cpe1x"),
            password: Some("k"),
            binding_change: true,
            response_address: Some(ra),
            ..BindingRequest::new(TxId::Classic([0xAB; 16]))
        };
        let b = req.encode().unwrap();
        // USERNAME "cpe1x" padded with spaces inside an 8-byte length.
        assert_eq!(&b[44..56], b"\x00\x06\x00\x08cpe1x   ");
        let info = parse_binding_request(&b).unwrap();
        assert_eq!(info.username.as_deref(), Some("cpe1x"));
        assert!(info.binding_change && info.has_integrity && info.crb_value_exact);
        assert_eq!(info.response_address, Some(ra));
        assert_eq!(
            check_integrity(&b, b"k"),
            Integrity::Valid(MiLayout::Rfc3489Padded)
        );
    }

    #[test]
    fn crb_without_trailing_space_is_flagged() {
        let mut v = header(BINDING_REQUEST, &TxId::Classic(VEC_TXID));
        push_attr(&mut v, T_CRB, b"dslforum.org/TR-111").unwrap();
        let v = finish(v).unwrap();
        let info = parse_binding_request(&v).unwrap();
        assert!(info.connection_request_binding);
        assert!(!info.crb_value_exact);
    }

    #[test]
    fn server_responses_and_client_parse() {
        let src4: SocketAddr = "203.0.113.9:49152".parse().unwrap();
        let src6: SocketAddr = "[2001:db8::9]:50000".parse().unwrap();
        for txid in [TxId::Rfc5389([3; 12]), TxId::Classic([0x42; 16])] {
            for src in [src4, src6] {
                let ok = binding_success(&txid, src, None).unwrap();
                let r = parse_response(&ok, &txid).unwrap();
                assert_eq!(r.mapped, Some(src));
                assert_eq!(r.error, None);
                assert!(!r.has_integrity);
                // With integrity in the mirrored layout.
                let layout = if txid.is_classic() {
                    MiLayout::Rfc3489Padded
                } else {
                    MiLayout::Rfc5389
                };
                let ok = binding_success(&txid, src, Some((b"pw", layout))).unwrap();
                let r = parse_response(&ok, &txid).unwrap();
                assert!(r.has_integrity);
                assert_eq!(check_integrity(&ok, b"pw"), Integrity::Valid(layout));
            }
            let e = unauthorized(&txid).unwrap();
            let r = parse_response(&e, &txid).unwrap();
            assert!(r.is_unauthorized());
            assert_eq!(r.error, Some((401, "Unauthorized".into())));
            assert_eq!(r.mapped, None);
            // Wrong transaction id.
            assert_eq!(
                parse_response(&e, &TxId::Rfc5389([4; 12])),
                Err(StunError::TransactionMismatch)
            );
            // A request is not a response.
            let req = binding_request(txid, None, None, false).unwrap();
            assert_eq!(
                parse_response(&req, &txid),
                Err(StunError::UnexpectedType(1))
            );
            assert_eq!(
                parse_binding_request(&e),
                Err(StunError::UnexpectedType(0x111))
            );
        }
        // The RFC 5389 success carries XOR-MAPPED-ADDRESS first, as stun_codec encodes it.
        let ok = binding_success(&TxId::Rfc5389([3; 12]), src4, None).unwrap();
        assert_eq!(&ok[20..22], &[0x00, 0x20]);
        let m = MessageDecoder::<Tr111Attribute>::new()
            .decode_from_bytes(&ok)
            .unwrap()
            .unwrap();
        assert_eq!(
            m.get_attribute::<XorMappedAddress>().unwrap().address(),
            src4
        );
    }

    #[test]
    fn classic_rfc3489_server_response_parsing() {
        // As a classic server (stund) answers: MAPPED-ADDRESS, SOURCE-ADDRESS,
        // CHANGED-ADDRESS, plus an XOR-MAPPED-ADDRESS XORed with the first four
        // txid bytes, which must be ignored.
        let txid = [0x11u8; 16];
        let mut v = Vec::new();
        v.extend_from_slice(&[0x01, 0x01, 0, 0]);
        v.extend_from_slice(&txid);
        let mapped: SocketAddr = "198.51.100.20:40000".parse().unwrap();
        push_attr(&mut v, 0x0001, &encode_addr(mapped, None)).unwrap();
        push_attr(
            &mut v,
            0x0004,
            &encode_addr("192.0.2.1:3478".parse().unwrap(), None),
        )
        .unwrap();
        push_attr(
            &mut v,
            0x0005,
            &encode_addr("192.0.2.2:3479".parse().unwrap(), None),
        )
        .unwrap();
        push_attr(&mut v, 0x8020, &encode_addr(mapped, Some(&txid))).unwrap();
        let v = finish(v).unwrap();
        // stun_codec itself refuses cookie-less messages.
        assert!(
            MessageDecoder::<Tr111Attribute>::new()
                .decode_from_bytes(&v)
                .is_err()
        );
        let r = parse_response(&v, &TxId::Classic(txid)).unwrap();
        assert_eq!(r.mapped, Some(mapped));
        assert_eq!(r.txid, TxId::Classic(txid));
        // Classic error response with a space-padded reason.
        let e = binding_error(&TxId::Classic(txid), 420, "Unknown").unwrap();
        let r = parse_response(&e, &TxId::Classic(txid)).unwrap();
        assert_eq!(r.error, Some((420, "Unknown".into())));
    }

    #[test]
    fn rfc5389_response_with_realm_nonce_and_fallback() {
        let id = [5u8; 12];
        let mut m = Message::<Tr111Attribute>::new(
            MessageClass::ErrorResponse,
            BINDING,
            TransactionId::new(id),
        );
        m.add_attribute(ErrorCode::new(401, "Unauthorized".into()).unwrap());
        m.add_attribute(Realm::new("acs.example".into()).unwrap());
        m.add_attribute(Nonce::new("abc123".into()).unwrap());
        let b = encode_with_codec(m).unwrap();
        let r = parse_response(&b, &TxId::Rfc5389(id)).unwrap();
        assert_eq!(r.realm.as_deref(), Some("acs.example"));
        assert_eq!(r.nonce.as_deref(), Some("abc123"));
        assert!(r.is_unauthorized());
        // A cookie-form success with an attribute stun_codec cannot decode
        // (MAPPED-ADDRESS with a bad family) and a good XOR-MAPPED-ADDRESS:
        // the hand codec takes over.
        let txid = TxId::Rfc5389(id);
        let h = txid.header_bytes();
        let mapped: SocketAddr = "198.51.100.1:1234".parse().unwrap();
        let mut v = header(BINDING_SUCCESS, &txid);
        push_attr(&mut v, T_MAPPED_ADDRESS, &[0, 9, 0, 0, 1, 2, 3, 4]).unwrap();
        push_attr(&mut v, T_XOR_MAPPED_ADDRESS, &encode_addr(mapped, Some(&h))).unwrap();
        let v = finish(v).unwrap();
        assert!(matches!(
            MessageDecoder::<Tr111Attribute>::new().decode_from_bytes(&v),
            Ok(Err(_)) | Err(_)
        ));
        assert_eq!(parse_response(&v, &txid).unwrap().mapped, Some(mapped));
        // Only MAPPED-ADDRESS in a cookie response: fall back to it.
        let mut v = header(BINDING_SUCCESS, &txid);
        push_attr(&mut v, T_MAPPED_ADDRESS, &encode_addr(mapped, None)).unwrap();
        let v = finish(v).unwrap();
        assert_eq!(parse_response(&v, &txid).unwrap().mapped, Some(mapped));
        // Success without any address.
        let v = finish(header(BINDING_SUCCESS, &txid)).unwrap();
        assert_eq!(parse_response(&v, &txid), Err(StunError::NoMappedAddress));
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let txid = TxId::Classic([0x33; 16]);
        let mut v = binding_request(txid, Some("u"), Some("p"), false).unwrap();
        push_attr(&mut v, T_BINDING_CHANGE, &[]).unwrap();
        let v = finish(v).unwrap();
        let info = parse_binding_request(&v).unwrap();
        assert!(!info.binding_change);
        assert!(info.has_integrity);
    }

    #[test]
    fn unknown_required_attributes_reported() {
        let txid = TxId::Classic([0x34; 16]);
        let mut v = header(BINDING_REQUEST, &txid);
        push_attr(&mut v, 0x0003, &[0, 0, 0, 6]).unwrap(); // CHANGE-REQUEST
        push_attr(&mut v, 0x7777, &[]).unwrap();
        push_attr(&mut v, 0x8888, &[]).unwrap();
        let v = finish(v).unwrap();
        assert_eq!(
            parse_binding_request(&v).unwrap().unknown_required,
            vec![0x0003, 0x7777]
        );
    }

    #[test]
    fn demux() {
        assert!(is_stun(0x00) && is_stun(0x01) && is_stun(0x3f));
        assert!(!is_stun(b'G') && !is_stun(0x80));
        let cr = b"GET http://h:1?ts=1 HTTP/1.1\r\n\r\n";
        assert_eq!(classify(cr), DatagramKind::UdpConnectionRequest);
        let s = binding_request(TxId::Classic(VEC_TXID), None, None, false).unwrap();
        assert_eq!(classify(&s), DatagramKind::Stun);
        assert_eq!(classify(&s[..30]), DatagramKind::Other);
        assert_eq!(classify(b""), DatagramKind::Other);
    }

    #[test]
    fn malformed_inputs() {
        assert_eq!(
            parse_response(&[0; 10], &TxId::Classic(VEC_TXID)),
            Err(StunError::TooShort)
        );
        let mut s =
            binding_success(&TxId::Classic(VEC_TXID), "1.2.3.4:5".parse().unwrap(), None).unwrap();
        s[0] |= 0x80;
        assert_eq!(
            parse_response(&s, &TxId::Classic(VEC_TXID)),
            Err(StunError::NotStun)
        );
        s[0] &= 0x3f;
        s[23] = 0xff; // attribute length beyond the end
        assert_eq!(
            parse_response(&s, &TxId::Classic(VEC_TXID)),
            Err(StunError::Malformed)
        );
        assert_eq!(
            binding_error(&TxId::Classic(VEC_TXID), 200, "x"),
            Err(StunError::Encode)
        );
        let long = "x".repeat(600);
        assert_eq!(
            binding_request(TxId::Rfc5389([1; 12]), Some(&long), Some("p"), false),
            Err(StunError::Encode)
        );
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x1234_5678_9abc_def1_u64;
        let seeds = [
            binding_request(TxId::Rfc5389([1; 12]), Some("user"), Some("p"), true).unwrap(),
            binding_request(TxId::Classic(VEC_TXID), Some("user"), Some("p"), true).unwrap(),
            binding_success(&TxId::Rfc5389([1; 12]), "[::1]:9".parse().unwrap(), None).unwrap(),
            unauthorized(&TxId::Rfc5389([1; 12])).unwrap(),
        ];
        for i in 0..10_000u32 {
            let d: Vec<u8> = if i % 3 == 0 {
                let len = (xorshift(&mut x) % 120) as usize;
                let mut d: Vec<u8> = (0..len).map(|_| xorshift(&mut x) as u8).collect();
                if d.len() >= 20 {
                    // Make the header plausible so the attribute walkers run.
                    d[0] &= 0x01;
                    let l = ((d.len() - 20) & !3) as u16;
                    d.truncate(20 + usize::from(l));
                    d[2..4].copy_from_slice(&l.to_be_bytes());
                    if i % 2 == 0 {
                        d[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                    }
                }
                d
            } else {
                let mut d = seeds[(i as usize) % seeds.len()].clone();
                for _ in 0..(xorshift(&mut x) % 4 + 1) {
                    let p = (xorshift(&mut x) as usize) % d.len();
                    d[p] = xorshift(&mut x) as u8;
                }
                d
            };
            let _ = classify(&d);
            let _ = parse_binding_request(&d);
            let _ = parse_response(&d, &TxId::Rfc5389([1; 12]));
            let _ = parse_response(&d, &TxId::Classic(VEC_TXID));
            let _ = check_integrity(&d, b"p");
        }
    }
}
