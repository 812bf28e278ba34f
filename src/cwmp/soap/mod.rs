//! CWMP (TR-069) SOAP codec: typed messages for both directions, a hardened
//! parser ([`parse_acs_message`], [`parse_cpe_message`]) and an emitter
//! ([`emit_cpe`], [`emit_acs`], plus the streaming [`GpvWriter`] /
//! [`GpnWriter`]).
//!
//! Self-contained: depends only on `std` and `quick_xml`. Argument names and
//! order follow BBF `cwmp-1-2.xsd`; see `docs/SPEC-NOTES.md` §e for the
//! protocol rules and §h for the GenieACS quirks this module tolerates.
//!
//! Conventions:
//! * dateTime values are kept as strings (validation belongs to the store);
//! * string arguments that are absent are accepted as empty where the schema
//!   makes them merely informative (CommandKey, ParameterKey, Username, ...),
//!   see the parser's module documentation for the exact rules;
//! * the emitter always writes the `cwmp` namespace given in
//!   [`Envelope::ns`], which can only be 1-0, 1-1 or 1-2 (CWMP 1.3 and 1.4
//!   keep the 1-2 namespace; `cwmp-1-3`/`cwmp-1-4` are accepted on input
//!   only).

mod emit;
mod parse;

pub use emit::{GpnWriter, GpvWriter, emit_acs, emit_cpe};
pub use parse::{ParseError, ParseLimits, is_empty_body, parse_acs_message, parse_acs_message_with};
pub use parse::{parse_cpe_message, parse_cpe_message_with};

/// SOAP 1.1 envelope namespace.
pub const SOAP_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.1 encoding namespace.
pub const SOAP_ENC_NS: &str = "http://schemas.xmlsoap.org/soap/encoding/";
/// XML Schema namespace (prefix `xsd`).
pub const XSD_NS: &str = "http://www.w3.org/2001/XMLSchema";
/// XML Schema instance namespace (prefix `xsi`).
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// The `cwmp` namespace of a message. Only the three namespaces that exist in
/// BBF schemas are representable, so the emitter can never produce
/// `cwmp-1-3`/`cwmp-1-4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CwmpNs {
    /// `urn:dslforum-org:cwmp-1-0` (CWMP 1.0).
    Cwmp10,
    /// `urn:dslforum-org:cwmp-1-1` (CWMP 1.1).
    Cwmp11,
    /// `urn:dslforum-org:cwmp-1-2` (CWMP 1.2, 1.3 and 1.4).
    #[default]
    Cwmp12,
}

impl CwmpNs {
    /// The namespace URI.
    pub fn uri(self) -> &'static str {
        match self {
            CwmpNs::Cwmp10 => "urn:dslforum-org:cwmp-1-0",
            CwmpNs::Cwmp11 => "urn:dslforum-org:cwmp-1-1",
            CwmpNs::Cwmp12 => "urn:dslforum-org:cwmp-1-2",
        }
    }

    /// Maps a received namespace URI. `cwmp-1-3` and `cwmp-1-4` (emitted by
    /// some agents such as icwmp, but in no schema) are read as 1-2.
    pub fn from_uri(uri: &str) -> Option<CwmpNs> {
        match uri {
            "urn:dslforum-org:cwmp-1-0" => Some(CwmpNs::Cwmp10),
            "urn:dslforum-org:cwmp-1-1" => Some(CwmpNs::Cwmp11),
            "urn:dslforum-org:cwmp-1-2" | "urn:dslforum-org:cwmp-1-3" | "urn:dslforum-org:cwmp-1-4" => {
                Some(CwmpNs::Cwmp12)
            }
            _ => None,
        }
    }
}

/// A SOAP envelope: the CWMP header elements plus a typed body.
///
/// For the streaming writers the body is ignored, so `Envelope<()>` can be
/// used to pass just the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<B> {
    /// `cwmp:ID`. A response must echo the ID of the request it answers.
    pub id: Option<String>,
    /// `cwmp:HoldRequests` (ACS → CPE).
    pub hold_requests: Option<bool>,
    /// `cwmp:SessionTimeout` in seconds (CPE → ACS, CWMP 1.3+).
    pub session_timeout: Option<u32>,
    /// `cwmp:SupportedCWMPVersions`, e.g. `1.0,1.1,1.2,1.3,1.4` (CPE → ACS, 1.4).
    pub supported_cwmp_versions: Option<String>,
    /// `cwmp:UseCWMPVersion` (ACS → CPE, 1.4).
    pub use_cwmp_version: Option<String>,
    /// The `cwmp` namespace the peer used (parse) or to use (emit).
    pub ns: CwmpNs,
    /// The message.
    pub body: B,
}

impl<B> Envelope<B> {
    /// An envelope with no header elements in the default namespace (1-2).
    pub fn new(body: B) -> Self {
        Envelope {
            id: None,
            hold_requests: None,
            session_timeout: None,
            supported_cwmp_versions: None,
            use_cwmp_version: None,
            ns: CwmpNs::default(),
            body,
        }
    }

    /// Sets `cwmp:ID`.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the namespace.
    pub fn with_ns(mut self, ns: CwmpNs) -> Self {
        self.ns = ns;
        self
    }

    /// Replaces the body, keeping the header.
    pub fn map<C>(self, f: impl FnOnce(B) -> C) -> Envelope<C> {
        Envelope {
            id: self.id,
            hold_requests: self.hold_requests,
            session_timeout: self.session_timeout,
            supported_cwmp_versions: self.supported_cwmp_versions,
            use_cwmp_version: self.use_cwmp_version,
            ns: self.ns,
            body: f(self.body),
        }
    }

    /// A copy of the header with an empty body (for the streaming writers).
    pub fn header(&self) -> Envelope<()> {
        Envelope {
            id: self.id.clone(),
            hold_requests: self.hold_requests,
            session_timeout: self.session_timeout,
            supported_cwmp_versions: self.supported_cwmp_versions.clone(),
            use_cwmp_version: self.use_cwmp_version.clone(),
            ns: self.ns,
            body: (),
        }
    }
}

/// `ParameterValueStruct`. `xsi_type` is the `xsi:type` of `Value` with the
/// XML Schema prefix normalised to `xsd:` (e.g. `xsd:unsignedInt`); `None`
/// when the peer sent none. The emitter writes `xsd:string` for `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamValue {
    pub name: String,
    pub value: String,
    pub xsi_type: Option<String>,
}

impl ParamValue {
    /// Convenience constructor.
    pub fn new(name: impl Into<String>, value: impl Into<String>, xsi_type: &str) -> Self {
        ParamValue { name: name.into(), value: value.into(), xsi_type: Some(xsi_type.to_string()) }
    }
}

/// `SetParameterAttributesStruct`. `notification` is `None` when the element
/// was empty or absent, which is only accepted with `notification_change ==
/// false` (GenieACS sends `<Notification></Notification>` then).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetAttr {
    pub name: String,
    pub notification_change: bool,
    pub notification: Option<u8>,
    pub access_list_change: bool,
    pub access_list: Vec<String>,
}

/// `TimeWindowStruct` of ScheduleDownload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TimeWindow {
    pub window_start: u32,
    pub window_end: u32,
    /// e.g. `1 At Any Time`.
    pub window_mode: String,
    pub user_message: String,
    pub max_retries: i32,
}

/// Download arguments (A.3.2.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Download {
    pub command_key: String,
    /// e.g. `1 Firmware Upgrade Image`.
    pub file_type: String,
    pub url: String,
    pub username: String,
    pub password: String,
    pub file_size: u32,
    pub target_file_name: String,
    pub delay_seconds: u32,
    pub success_url: String,
    pub failure_url: String,
}

/// Upload arguments (A.4.1.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upload {
    pub command_key: String,
    /// e.g. `1 Vendor Configuration File`.
    pub file_type: String,
    pub url: String,
    pub username: String,
    pub password: String,
    pub delay_seconds: u32,
}

/// ScheduleDownload arguments (A.4.1.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScheduleDownload {
    pub command_key: String,
    pub file_type: String,
    pub url: String,
    pub username: String,
    pub password: String,
    pub file_size: u32,
    pub target_file_name: String,
    pub time_windows: Vec<TimeWindow>,
}

/// A request the ACS sends to the CPE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcsRequest {
    GetRPCMethods,
    GetParameterNames { path: String, next_level: bool },
    GetParameterValues { names: Vec<String> },
    SetParameterValues { list: Vec<ParamValue>, parameter_key: String },
    GetParameterAttributes { names: Vec<String> },
    SetParameterAttributes { list: Vec<SetAttr> },
    AddObject { object_name: String, parameter_key: String },
    DeleteObject { object_name: String, parameter_key: String },
    Reboot { command_key: String },
    FactoryReset,
    Download(Download),
    Upload(Upload),
    ScheduleInform { delay_seconds: u32, command_key: String },
    ScheduleDownload(ScheduleDownload),
    GetQueuedTransfers,
    GetAllQueuedTransfers,
    CancelTransfer { command_key: String },
}

impl AcsRequest {
    /// The RPC element name, e.g. `GetParameterValues`.
    pub fn method_name(&self) -> &'static str {
        match self {
            AcsRequest::GetRPCMethods => "GetRPCMethods",
            AcsRequest::GetParameterNames { .. } => "GetParameterNames",
            AcsRequest::GetParameterValues { .. } => "GetParameterValues",
            AcsRequest::SetParameterValues { .. } => "SetParameterValues",
            AcsRequest::GetParameterAttributes { .. } => "GetParameterAttributes",
            AcsRequest::SetParameterAttributes { .. } => "SetParameterAttributes",
            AcsRequest::AddObject { .. } => "AddObject",
            AcsRequest::DeleteObject { .. } => "DeleteObject",
            AcsRequest::Reboot { .. } => "Reboot",
            AcsRequest::FactoryReset => "FactoryReset",
            AcsRequest::Download(_) => "Download",
            AcsRequest::Upload(_) => "Upload",
            AcsRequest::ScheduleInform { .. } => "ScheduleInform",
            AcsRequest::ScheduleDownload(_) => "ScheduleDownload",
            AcsRequest::GetQueuedTransfers => "GetQueuedTransfers",
            AcsRequest::GetAllQueuedTransfers => "GetAllQueuedTransfers",
            AcsRequest::CancelTransfer { .. } => "CancelTransfer",
        }
    }
}

/// Everything a CPE can receive from the ACS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcsMessage {
    /// An RPC the CPE must answer.
    Request(AcsRequest),
    InformResponse { max_envelopes: u32 },
    TransferCompleteResponse,
    AutonomousTransferCompleteResponse,
    /// The ACS's answer to the CPE's GetRPCMethods.
    GetRPCMethodsResponse { methods: Vec<String> },
    /// A SOAP fault (8000..8899) in reply to a CPE request.
    Fault(Fault),
}

impl AcsMessage {
    /// The body element name (`Fault` for a SOAP fault).
    pub fn method_name(&self) -> &'static str {
        match self {
            AcsMessage::Request(r) => r.method_name(),
            AcsMessage::InformResponse { .. } => "InformResponse",
            AcsMessage::TransferCompleteResponse => "TransferCompleteResponse",
            AcsMessage::AutonomousTransferCompleteResponse => "AutonomousTransferCompleteResponse",
            AcsMessage::GetRPCMethodsResponse { .. } => "GetRPCMethodsResponse",
            AcsMessage::Fault(_) => "Fault",
        }
    }
}

/// `DeviceIdStruct` of the Inform.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceId {
    pub manufacturer: String,
    /// Exactly six upper-case hex digits on the wire.
    pub oui: String,
    pub product_class: String,
    pub serial_number: String,
}

/// `EventStruct` of the Inform, e.g. `("M Reboot", "ck-42")`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventStruct {
    pub event_code: String,
    pub command_key: String,
}

impl EventStruct {
    /// Convenience constructor.
    pub fn new(event_code: impl Into<String>, command_key: impl Into<String>) -> Self {
        EventStruct { event_code: event_code.into(), command_key: command_key.into() }
    }
}

/// The Inform RPC (A.3.3.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inform {
    pub device_id: DeviceId,
    pub events: Vec<EventStruct>,
    pub max_envelopes: u32,
    pub current_time: String,
    pub retry_count: u32,
    pub params: Vec<ParamValue>,
}

/// `TransferCompleteFaultStruct`: code 0 means success.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferFault {
    pub code: u32,
    pub string: String,
}

/// The TransferComplete RPC (A.3.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferComplete {
    pub command_key: String,
    pub fault: TransferFault,
    pub start_time: String,
    pub complete_time: String,
}

/// The AutonomousTransferComplete RPC (A.3.3.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AutonomousTransferComplete {
    pub announce_url: String,
    pub transfer_url: String,
    pub is_download: bool,
    pub file_type: String,
    pub file_size: u32,
    pub target_file_name: String,
    pub fault: TransferFault,
    pub start_time: String,
    pub complete_time: String,
}

/// `ParameterInfoStruct` of GetParameterNamesResponse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamInfo {
    pub name: String,
    pub writable: bool,
}

/// `ParameterAttributeStruct` of GetParameterAttributesResponse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamAttr {
    pub name: String,
    pub notification: u8,
    pub access_list: Vec<String>,
}

/// `QueuedTransferStruct` (state 1 not started, 2 in progress, 3 completed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueuedTransfer {
    pub command_key: String,
    pub state: i32,
}

/// `AllQueuedTransferStruct`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllQueuedTransfer {
    pub command_key: String,
    pub state: i32,
    pub is_download: bool,
    pub file_type: String,
    pub file_size: u32,
    pub target_file_name: String,
}

/// Everything a CPE sends: its own requests, every RPC response, and faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpeMessage {
    Inform(Inform),
    TransferComplete(TransferComplete),
    AutonomousTransferComplete(AutonomousTransferComplete),
    /// The CPE asking the ACS for its methods.
    GetRPCMethods,
    GetRPCMethodsResponse { methods: Vec<String> },
    GetParameterNamesResponse { list: Vec<ParamInfo> },
    GetParameterValuesResponse { list: Vec<ParamValue> },
    SetParameterValuesResponse { status: u32 },
    GetParameterAttributesResponse { list: Vec<ParamAttr> },
    SetParameterAttributesResponse,
    AddObjectResponse { instance_number: u32, status: u32 },
    DeleteObjectResponse { status: u32 },
    RebootResponse,
    FactoryResetResponse,
    DownloadResponse { status: u32, start_time: String, complete_time: String },
    UploadResponse { status: u32, start_time: String, complete_time: String },
    ScheduleInformResponse,
    ScheduleDownloadResponse,
    GetQueuedTransfersResponse { list: Vec<QueuedTransfer> },
    GetAllQueuedTransfersResponse { list: Vec<AllQueuedTransfer> },
    CancelTransferResponse,
    /// A SOAP fault (9000..9899) in reply to an ACS request.
    Fault(Fault),
}

impl CpeMessage {
    /// The body element name (`Fault` for a SOAP fault).
    pub fn method_name(&self) -> &'static str {
        match self {
            CpeMessage::Inform(_) => "Inform",
            CpeMessage::TransferComplete(_) => "TransferComplete",
            CpeMessage::AutonomousTransferComplete(_) => "AutonomousTransferComplete",
            CpeMessage::GetRPCMethods => "GetRPCMethods",
            CpeMessage::GetRPCMethodsResponse { .. } => "GetRPCMethodsResponse",
            CpeMessage::GetParameterNamesResponse { .. } => "GetParameterNamesResponse",
            CpeMessage::GetParameterValuesResponse { .. } => "GetParameterValuesResponse",
            CpeMessage::SetParameterValuesResponse { .. } => "SetParameterValuesResponse",
            CpeMessage::GetParameterAttributesResponse { .. } => "GetParameterAttributesResponse",
            CpeMessage::SetParameterAttributesResponse => "SetParameterAttributesResponse",
            CpeMessage::AddObjectResponse { .. } => "AddObjectResponse",
            CpeMessage::DeleteObjectResponse { .. } => "DeleteObjectResponse",
            CpeMessage::RebootResponse => "RebootResponse",
            CpeMessage::FactoryResetResponse => "FactoryResetResponse",
            CpeMessage::DownloadResponse { .. } => "DownloadResponse",
            CpeMessage::UploadResponse { .. } => "UploadResponse",
            CpeMessage::ScheduleInformResponse => "ScheduleInformResponse",
            CpeMessage::ScheduleDownloadResponse => "ScheduleDownloadResponse",
            CpeMessage::GetQueuedTransfersResponse { .. } => "GetQueuedTransfersResponse",
            CpeMessage::GetAllQueuedTransfersResponse { .. } => "GetAllQueuedTransfersResponse",
            CpeMessage::CancelTransferResponse => "CancelTransferResponse",
            CpeMessage::Fault(_) => "Fault",
        }
    }
}

/// One `SetParameterValuesFault` entry of a SetParameterValues fault.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpvFault {
    pub name: String,
    pub code: u32,
    pub string: String,
}

/// A CWMP fault (`detail/cwmp:Fault`). CPE codes are 9000..9899, ACS codes
/// 8000..8899.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fault {
    pub code: u32,
    pub string: String,
    pub set_parameter_values_faults: Vec<SpvFault>,
}

impl Fault {
    /// A fault with the standard string for `code` (see [`fault_string`]),
    /// or `"Fault <code>"` for codes without one (vendor codes).
    pub fn new(code: u32) -> Self {
        let string = match fault_string(code) {
            Some(s) => s.to_string(),
            None => format!("Fault {code}"),
        };
        Fault { code, string, set_parameter_values_faults: Vec::new() }
    }

    /// A fault with a caller-chosen string.
    pub fn with_string(code: u32, string: impl Into<String>) -> Self {
        Fault { code, string: string.into(), set_parameter_values_faults: Vec::new() }
    }

    /// Adds a `SetParameterValuesFault` entry with the standard string.
    pub fn push_spv_fault(&mut self, name: impl Into<String>, code: u32) {
        let string = fault_string(code).unwrap_or("").to_string();
        self.set_parameter_values_faults.push(SpvFault { name: name.into(), code, string });
    }
}

/// CPE fault codes (TR-069 Annex A.5.1, BBF cwmp-1-2.xsd `CPEFaultCodeType`).
pub mod cpe_fault {
    pub const METHOD_NOT_SUPPORTED: u32 = 9000;
    pub const REQUEST_DENIED: u32 = 9001;
    pub const INTERNAL_ERROR: u32 = 9002;
    pub const INVALID_ARGUMENTS: u32 = 9003;
    pub const RESOURCES_EXCEEDED: u32 = 9004;
    pub const INVALID_PARAMETER_NAME: u32 = 9005;
    pub const INVALID_PARAMETER_TYPE: u32 = 9006;
    pub const INVALID_PARAMETER_VALUE: u32 = 9007;
    pub const NON_WRITABLE_PARAMETER: u32 = 9008;
    pub const NOTIFICATION_REQUEST_REJECTED: u32 = 9009;
    pub const DOWNLOAD_FAILURE: u32 = 9010;
    pub const UPLOAD_FAILURE: u32 = 9011;
    pub const TRANSFER_AUTH_FAILURE: u32 = 9012;
    pub const UNSUPPORTED_TRANSFER_PROTOCOL: u32 = 9013;
    pub const MULTICAST_JOIN_FAILURE: u32 = 9014;
    pub const CONTACT_FILE_SERVER_FAILURE: u32 = 9015;
    pub const ACCESS_FILE_FAILURE: u32 = 9016;
    pub const COMPLETE_DOWNLOAD_FAILURE: u32 = 9017;
    pub const FILE_CORRUPTED: u32 = 9018;
    pub const FILE_AUTHENTICATION_FAILURE: u32 = 9019;
    pub const DOWNLOAD_WINDOW_FAILURE: u32 = 9020;
    pub const CANCEL_NOT_PERMITTED: u32 = 9021;
}

/// ACS fault codes (TR-069 Annex A.5.2; 8006 since CWMP 1.4).
pub mod acs_fault {
    pub const METHOD_NOT_SUPPORTED: u32 = 8000;
    pub const REQUEST_DENIED: u32 = 8001;
    pub const INTERNAL_ERROR: u32 = 8002;
    pub const INVALID_ARGUMENTS: u32 = 8003;
    pub const RESOURCES_EXCEEDED: u32 = 8004;
    pub const RETRY_REQUEST: u32 = 8005;
    pub const VERSION_INCOMPATIBLE: u32 = 8006;
}

/// The standard fault string of a CPE (9000..9032) or ACS (8000..8006) code.
pub fn fault_string(code: u32) -> Option<&'static str> {
    Some(match code {
        8000 => "Method not supported",
        8001 => "Request denied (no reason specified)",
        8002 => "Internal error",
        8003 => "Invalid arguments",
        8004 => "Resources exceeded",
        8005 => "Retry request",
        8006 => "ACS version incompatible with CPE",
        9000 => "Method not supported",
        9001 => "Request denied (no reason specified)",
        9002 => "Internal error",
        9003 => "Invalid arguments",
        9004 => "Resources exceeded",
        9005 => "Invalid parameter name",
        9006 => "Invalid parameter type",
        9007 => "Invalid parameter value",
        9008 => "Attempt to set a non-writable parameter",
        9009 => "Notification request rejected",
        9010 => "File transfer failure",
        9011 => "Upload failure",
        9012 => "File transfer server authentication failure",
        9013 => "Unsupported protocol for file transfer",
        9014 => "File transfer failure: unable to join multicast group",
        9015 => "File transfer failure: unable to contact file server",
        9016 => "File transfer failure: unable to access file",
        9017 => "File transfer failure: unable to complete download",
        9018 => "File transfer failure: file corrupted",
        9019 => "File transfer failure: file authentication failure",
        9020 => "File transfer failure: unable to complete download within specified time windows",
        9021 => "Cancelation of file transfer not permitted in current transfer state",
        9022 => "Invalid UUID Format",
        9023 => "Unknown Execution Environment",
        9024 => "Disabled Execution Environment",
        9025 => "Deployment Unit to Execution Environment Mismatch",
        9026 => "Duplicate Deployment Unit",
        9027 => "System Resources Exceeded",
        9028 => "Unknown Deployment Unit",
        9029 => "Invalid Deployment Unit State",
        9030 => "Invalid Deployment Unit Update - Downgrade not permitted",
        9031 => "Invalid Deployment Unit Update - Version not specified",
        9032 => "Invalid Deployment Unit Update - Version already exists",
        _ => return None,
    })
}

/// The SOAP `faultcode` for a CWMP fault code: `Client` when the request
/// itself was at fault (9003, 9005..9008, 9021, 8003; TR-069 Annex A.5),
/// `Server` otherwise (including vendor codes).
pub fn soap_fault_code(code: u32) -> &'static str {
    match code {
        9003 | 9005..=9008 | 9021 | 8003 => "Client",
        _ => "Server",
    }
}
