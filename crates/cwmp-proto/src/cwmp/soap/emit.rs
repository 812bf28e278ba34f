//! Typed CWMP messages → XML bytes, for both directions: [`emit_cpe`] (what
//! the agent sends) and [`emit_acs`] (what a test ACS sends), plus the
//! streaming [`GpvWriter`] / [`GpnWriter`] that write large responses straight
//! into the output buffer.
//!
//! Output shape (validates against BBF `cwmp-1-4.xsd` through the offline
//! driver, except the GenieACS-style empty `<Notification/>` that is written
//! for a [`SetAttr`](super::SetAttr) whose `notification` is `None`):
//! * prefixes `soap-env`, `soap-enc`, `xsd`, `xsi`, `cwmp`, with `cwmp` bound to
//!   [`Envelope::ns`];
//! * `cwmp:ID` / `HoldRequests` / `UseCWMPVersion` carry
//!   `soap-env:mustUnderstand="1"`, `SupportedCWMPVersions` carries `"0"`,
//!   `SessionTimeout` none; the Header is omitted when all are absent;
//! * arrays carry `soap-enc:arrayType` with the xsd item type and count;
//!   every `Value` carries `xsi:type` (`xsd:string` when none is given);
//! * booleans are written `true`/`false`;
//! * text and attribute values are escaped (`& < > " '`), `\r` is written as
//!   `&#13;` (and `\t`/`\n` as references inside attributes) so it survives
//!   parsing, and characters XML 1.0 forbids (C0 controls, U+FFFE, U+FFFF) are
//!   replaced by U+FFFD.

use std::io::Write as _;

use super::du;
use super::{
    AcsMessage, AcsRequest, CpeMessage, Envelope, Fault, ParamValue, SOAP_ENC_NS, SOAP_ENV_NS,
    TransferFault, XSD_NS, XSI_NS, soap_fault_code,
};

/// Appends the XML of a message sent by the CPE.
pub fn emit_cpe(env: &Envelope<CpeMessage>, out: &mut Vec<u8>) {
    match &env.body {
        CpeMessage::GetParameterValuesResponse { list } => {
            let mut w = GpvWriter::begin(out, env);
            for p in list {
                w.param(&p.name, &p.value, value_type(p));
            }
            w.finish();
            return;
        }
        CpeMessage::GetParameterNamesResponse { list } => {
            let mut w = GpnWriter::begin(out, env);
            for p in list {
                w.param(&p.name, p.writable);
            }
            w.finish();
            return;
        }
        _ => {}
    }
    begin_envelope(out, env);
    let name = env.body.method_name();
    match &env.body {
        CpeMessage::Fault(f) => fault(out, &env.ns.rpc_fault(f)),
        CpeMessage::Inform(i) => {
            method_open(out, name);
            raw(out, "<DeviceId>");
            leaf(out, "Manufacturer", &i.device_id.manufacturer);
            leaf(out, "OUI", &i.device_id.oui);
            leaf(out, "ProductClass", &i.device_id.product_class);
            leaf(out, "SerialNumber", &i.device_id.serial_number);
            raw(out, "</DeviceId>\n");
            array_open(out, "Event", "cwmp:EventStruct", i.events.len());
            for e in &i.events {
                raw(out, "<EventStruct>");
                leaf(out, "EventCode", &e.event_code);
                leaf(out, "CommandKey", &e.command_key);
                raw(out, "</EventStruct>\n");
            }
            raw(out, "</Event>\n");
            leaf_num(out, "MaxEnvelopes", i.max_envelopes);
            leaf(out, "CurrentTime", &i.current_time);
            leaf_num(out, "RetryCount", i.retry_count);
            raw(out, "\n");
            array_open(
                out,
                "ParameterList",
                "cwmp:ParameterValueStruct",
                i.params.len(),
            );
            for p in &i.params {
                param_value(out, &p.name, &p.value, value_type(p));
            }
            raw(out, "</ParameterList>\n");
            method_close(out, name);
        }
        CpeMessage::TransferComplete(t) => {
            method_open(out, name);
            leaf(out, "CommandKey", &t.command_key);
            transfer_fault(out, &env.ns.transfer_fault(&t.fault));
            leaf(out, "StartTime", &t.start_time);
            leaf(out, "CompleteTime", &t.complete_time);
            method_close(out, name);
        }
        CpeMessage::AutonomousTransferComplete(t) => {
            method_open(out, name);
            leaf(out, "AnnounceURL", &t.announce_url);
            leaf(out, "TransferURL", &t.transfer_url);
            leaf_bool(out, "IsDownload", t.is_download);
            leaf(out, "FileType", &t.file_type);
            leaf_num(out, "FileSize", t.file_size);
            leaf(out, "TargetFileName", &t.target_file_name);
            transfer_fault(out, &env.ns.transfer_fault(&t.fault));
            leaf(out, "StartTime", &t.start_time);
            leaf(out, "CompleteTime", &t.complete_time);
            method_close(out, name);
        }
        CpeMessage::GetRPCMethodsResponse { methods } => {
            method_open(out, name);
            string_array(out, "MethodList", methods);
            method_close(out, name);
        }
        CpeMessage::SetParameterValuesResponse { status }
        | CpeMessage::DeleteObjectResponse { status } => {
            method_open(out, name);
            leaf_num(out, "Status", *status);
            method_close(out, name);
        }
        CpeMessage::GetParameterAttributesResponse { list } => {
            method_open(out, name);
            array_open(
                out,
                "ParameterList",
                "cwmp:ParameterAttributeStruct",
                list.len(),
            );
            for a in list {
                raw(out, "<ParameterAttributeStruct>");
                leaf(out, "Name", &a.name);
                leaf_num(out, "Notification", a.notification);
                string_array(out, "AccessList", &a.access_list);
                raw(out, "</ParameterAttributeStruct>\n");
            }
            raw(out, "</ParameterList>");
            method_close(out, name);
        }
        CpeMessage::AddObjectResponse {
            instance_number,
            status,
        } => {
            method_open(out, name);
            leaf_num(out, "InstanceNumber", *instance_number);
            leaf_num(out, "Status", *status);
            method_close(out, name);
        }
        CpeMessage::DownloadResponse {
            status,
            start_time,
            complete_time,
        }
        | CpeMessage::UploadResponse {
            status,
            start_time,
            complete_time,
        } => {
            method_open(out, name);
            leaf_num(out, "Status", *status);
            leaf(out, "StartTime", start_time);
            leaf(out, "CompleteTime", complete_time);
            method_close(out, name);
        }
        CpeMessage::GetQueuedTransfersResponse { list } => {
            method_open(out, name);
            array_open(out, "TransferList", "cwmp:QueuedTransferStruct", list.len());
            for t in list {
                raw(out, "<QueuedTransferStruct>");
                leaf(out, "CommandKey", &t.command_key);
                leaf_num(out, "State", t.state);
                raw(out, "</QueuedTransferStruct>\n");
            }
            raw(out, "</TransferList>");
            method_close(out, name);
        }
        CpeMessage::GetAllQueuedTransfersResponse { list } => {
            method_open(out, name);
            array_open(
                out,
                "TransferList",
                "cwmp:AllQueuedTransferStruct",
                list.len(),
            );
            for t in list {
                raw(out, "<AllQueuedTransferStruct>");
                leaf(out, "CommandKey", &t.command_key);
                leaf_num(out, "State", t.state);
                leaf_bool(out, "IsDownload", t.is_download);
                leaf(out, "FileType", &t.file_type);
                leaf_num(out, "FileSize", t.file_size);
                leaf(out, "TargetFileName", &t.target_file_name);
                raw(out, "</AllQueuedTransferStruct>\n");
            }
            raw(out, "</TransferList>");
            method_close(out, name);
        }
        CpeMessage::DUStateChangeComplete(d) => {
            method_open(out, name);
            du::emit_du_complete(out, d);
            method_close(out, name);
        }
        CpeMessage::AutonomousDUStateChangeComplete(d) => {
            method_open(out, name);
            du::emit_auton_du_complete(out, d);
            method_close(out, name);
        }
        CpeMessage::GetRPCMethods
        | CpeMessage::SetParameterAttributesResponse
        | CpeMessage::RebootResponse
        | CpeMessage::FactoryResetResponse
        | CpeMessage::ScheduleInformResponse
        | CpeMessage::ScheduleDownloadResponse
        | CpeMessage::CancelTransferResponse
        | CpeMessage::ChangeDUStateResponse => method_empty(out, name),
        // Written by the streaming writers above.
        CpeMessage::GetParameterValuesResponse { .. }
        | CpeMessage::GetParameterNamesResponse { .. } => {}
    }
    end_envelope(out);
}

/// Appends the XML of a message sent by the ACS.
pub fn emit_acs(env: &Envelope<AcsMessage>, out: &mut Vec<u8>) {
    begin_envelope(out, env);
    let name = env.body.method_name();
    match &env.body {
        AcsMessage::Request(r) => acs_request(out, r),
        AcsMessage::InformResponse { max_envelopes } => {
            method_open(out, name);
            leaf_num(out, "MaxEnvelopes", *max_envelopes);
            method_close(out, name);
        }
        AcsMessage::TransferCompleteResponse
        | AcsMessage::AutonomousTransferCompleteResponse
        | AcsMessage::DUStateChangeCompleteResponse
        | AcsMessage::AutonomousDUStateChangeCompleteResponse => method_empty(out, name),
        AcsMessage::GetRPCMethodsResponse { methods } => {
            method_open(out, name);
            string_array(out, "MethodList", methods);
            method_close(out, name);
        }
        AcsMessage::Fault(f) => fault(out, f),
    }
    end_envelope(out);
}

fn acs_request(out: &mut Vec<u8>, r: &AcsRequest) {
    let name = r.method_name();
    match r {
        AcsRequest::GetRPCMethods
        | AcsRequest::FactoryReset
        | AcsRequest::GetQueuedTransfers
        | AcsRequest::GetAllQueuedTransfers => {
            method_empty(out, name);
            return;
        }
        _ => {}
    }
    method_open(out, name);
    match r {
        AcsRequest::GetParameterNames { path, next_level } => {
            leaf(out, "ParameterPath", path);
            leaf_bool(out, "NextLevel", *next_level);
        }
        AcsRequest::GetParameterValues { names } | AcsRequest::GetParameterAttributes { names } => {
            string_array(out, "ParameterNames", names)
        }
        AcsRequest::SetParameterValues {
            list,
            parameter_key,
        } => {
            array_open(
                out,
                "ParameterList",
                "cwmp:ParameterValueStruct",
                list.len(),
            );
            for p in list {
                param_value(out, &p.name, &p.value, value_type(p));
            }
            raw(out, "</ParameterList>");
            leaf(out, "ParameterKey", parameter_key);
        }
        AcsRequest::SetParameterAttributes { list } => {
            array_open(
                out,
                "ParameterList",
                "cwmp:SetParameterAttributesStruct",
                list.len(),
            );
            for a in list {
                raw(out, "<SetParameterAttributesStruct>");
                leaf(out, "Name", &a.name);
                leaf_bool(out, "NotificationChange", a.notification_change);
                match a.notification {
                    Some(n) => leaf_num(out, "Notification", n),
                    None => raw(out, "<Notification></Notification>"),
                }
                leaf_bool(out, "AccessListChange", a.access_list_change);
                string_array(out, "AccessList", &a.access_list);
                raw(out, "</SetParameterAttributesStruct>\n");
            }
            raw(out, "</ParameterList>");
        }
        AcsRequest::AddObject {
            object_name,
            parameter_key,
        }
        | AcsRequest::DeleteObject {
            object_name,
            parameter_key,
        } => {
            leaf(out, "ObjectName", object_name);
            leaf(out, "ParameterKey", parameter_key);
        }
        AcsRequest::Reboot { command_key } | AcsRequest::CancelTransfer { command_key } => {
            leaf(out, "CommandKey", command_key)
        }
        AcsRequest::Download(d) => {
            leaf(out, "CommandKey", &d.command_key);
            leaf(out, "FileType", &d.file_type);
            leaf(out, "URL", &d.url);
            leaf(out, "Username", &d.username);
            leaf(out, "Password", &d.password);
            leaf_num(out, "FileSize", d.file_size);
            leaf(out, "TargetFileName", &d.target_file_name);
            leaf_num(out, "DelaySeconds", d.delay_seconds);
            leaf(out, "SuccessURL", &d.success_url);
            leaf(out, "FailureURL", &d.failure_url);
        }
        AcsRequest::Upload(u) => {
            leaf(out, "CommandKey", &u.command_key);
            leaf(out, "FileType", &u.file_type);
            leaf(out, "URL", &u.url);
            leaf(out, "Username", &u.username);
            leaf(out, "Password", &u.password);
            leaf_num(out, "DelaySeconds", u.delay_seconds);
        }
        AcsRequest::ScheduleInform {
            delay_seconds,
            command_key,
        } => {
            leaf_num(out, "DelaySeconds", *delay_seconds);
            leaf(out, "CommandKey", command_key);
        }
        AcsRequest::ScheduleDownload(d) => {
            leaf(out, "CommandKey", &d.command_key);
            leaf(out, "FileType", &d.file_type);
            leaf(out, "URL", &d.url);
            leaf(out, "Username", &d.username);
            leaf(out, "Password", &d.password);
            leaf_num(out, "FileSize", d.file_size);
            leaf(out, "TargetFileName", &d.target_file_name);
            array_open(
                out,
                "TimeWindowList",
                "cwmp:TimeWindowStruct",
                d.time_windows.len(),
            );
            for w in &d.time_windows {
                raw(out, "<TimeWindowStruct>");
                leaf_num(out, "WindowStart", w.window_start);
                leaf_num(out, "WindowEnd", w.window_end);
                leaf(out, "WindowMode", &w.window_mode);
                leaf(out, "UserMessage", &w.user_message);
                leaf_num(out, "MaxRetries", w.max_retries);
                raw(out, "</TimeWindowStruct>");
            }
            raw(out, "</TimeWindowList>");
        }
        AcsRequest::ChangeDUState {
            command_key,
            operations,
        } => {
            du::emit_operations(out, operations);
            leaf(out, "CommandKey", command_key);
        }
        AcsRequest::GetRPCMethods
        | AcsRequest::FactoryReset
        | AcsRequest::GetQueuedTransfers
        | AcsRequest::GetAllQueuedTransfers => {}
    }
    method_close(out, name);
}

// ---------------------------------------------------------------------------
// Streaming writers
// ---------------------------------------------------------------------------

/// An envelope whose body is one method holding one array, written
/// incrementally; the array count is inserted by `finish`.
struct ArrayBody<'a> {
    out: &'a mut Vec<u8>,
    method: &'static str,
    array: &'static str,
    count_at: usize,
    count: usize,
}

impl<'a> ArrayBody<'a> {
    fn begin<B>(
        out: &'a mut Vec<u8>,
        env: &Envelope<B>,
        method: &'static str,
        array: &'static str,
        item_type: &str,
    ) -> Self {
        begin_envelope(out, env);
        method_open(out, method);
        raw(out, "<");
        raw(out, array);
        raw(out, " soap-enc:arrayType=\"");
        raw(out, item_type);
        raw(out, "[");
        let count_at = out.len();
        raw(out, "]\">\n");
        ArrayBody {
            out,
            method,
            array,
            count_at,
            count: 0,
        }
    }

    fn finish(self) -> usize {
        raw(self.out, "</");
        raw(self.out, self.array);
        raw(self.out, ">");
        method_close(self.out, self.method);
        end_envelope(self.out);
        let digits = self.count.to_string();
        self.out
            .splice(self.count_at..self.count_at, digits.bytes());
        self.count
    }
}

/// Writes a GetParameterValuesResponse straight into an output buffer, one
/// `ParameterValueStruct` at a time, so that a large response needs neither
/// a `Vec<ParamValue>` nor a second copy of the document. The array count is
/// filled in by [`GpvWriter::finish`]; until then the buffer holds an
/// incomplete document.
///
/// ```text
/// let mut w = GpvWriter::begin(&mut out, &Envelope::new(()).with_id(id));
/// w.param("Device.DeviceInfo.UpTime", "42", "xsd:unsignedInt");
/// w.finish();
/// ```
#[must_use = "call finish() to complete the envelope"]
pub struct GpvWriter<'a>(ArrayBody<'a>);

impl<'a> GpvWriter<'a> {
    /// Writes the envelope header (from `env`, body ignored) and opens the
    /// response.
    pub fn begin<B>(out: &'a mut Vec<u8>, env: &Envelope<B>) -> Self {
        GpvWriter(ArrayBody::begin(
            out,
            env,
            "GetParameterValuesResponse",
            "ParameterList",
            "cwmp:ParameterValueStruct",
        ))
    }

    /// Appends one `ParameterValueStruct`; `xsi_type` is e.g. `xsd:string`.
    pub fn param(&mut self, name: &str, value: &str, xsi_type: &str) {
        param_value(self.0.out, name, value, xsi_type);
        self.0.count += 1;
    }

    /// Entries written so far.
    pub fn count(&self) -> usize {
        self.0.count
    }

    /// Bytes in the output buffer so far (for a caller's size budget).
    pub fn bytes(&self) -> usize {
        self.0.out.len()
    }

    /// Closes the document and returns the number of entries.
    pub fn finish(self) -> usize {
        self.0.finish()
    }
}

/// Writes a GetParameterNamesResponse straight into an output buffer, one
/// `ParameterInfoStruct` at a time (see [`GpvWriter`]).
#[must_use = "call finish() to complete the envelope"]
pub struct GpnWriter<'a>(ArrayBody<'a>);

impl<'a> GpnWriter<'a> {
    /// Writes the envelope header (from `env`, body ignored) and opens the
    /// response.
    pub fn begin<B>(out: &'a mut Vec<u8>, env: &Envelope<B>) -> Self {
        GpnWriter(ArrayBody::begin(
            out,
            env,
            "GetParameterNamesResponse",
            "ParameterList",
            "cwmp:ParameterInfoStruct",
        ))
    }

    /// Appends one `ParameterInfoStruct`. Object names end with `.`.
    pub fn param(&mut self, name: &str, writable: bool) {
        let out = &mut *self.0.out;
        raw(out, "<ParameterInfoStruct>");
        leaf(out, "Name", name);
        leaf_bool(out, "Writable", writable);
        raw(out, "</ParameterInfoStruct>\n");
        self.0.count += 1;
    }

    /// Entries written so far.
    pub fn count(&self) -> usize {
        self.0.count
    }

    /// Bytes in the output buffer so far (for a caller's size budget).
    pub fn bytes(&self) -> usize {
        self.0.out.len()
    }

    /// Closes the document and returns the number of entries.
    pub fn finish(self) -> usize {
        self.0.finish()
    }
}

// ---------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------

fn begin_envelope<B>(out: &mut Vec<u8>, env: &Envelope<B>) {
    raw(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    raw(out, "<soap-env:Envelope xmlns:soap-env=\"");
    raw(out, SOAP_ENV_NS);
    raw(out, "\" xmlns:soap-enc=\"");
    raw(out, SOAP_ENC_NS);
    raw(out, "\" xmlns:xsd=\"");
    raw(out, XSD_NS);
    raw(out, "\" xmlns:xsi=\"");
    raw(out, XSI_NS);
    raw(out, "\" xmlns:cwmp=\"");
    raw(out, env.ns.uri());
    raw(out, "\">\n");
    let has_header = env.id.is_some()
        || env.hold_requests.is_some()
        || env.session_timeout.is_some()
        || env.supported_cwmp_versions.is_some()
        || env.use_cwmp_version.is_some();
    if has_header {
        raw(out, "<soap-env:Header>\n");
        if let Some(id) = &env.id {
            header(out, "ID", Some("1"), id);
        }
        if let Some(h) = env.hold_requests {
            header(
                out,
                "HoldRequests",
                Some("1"),
                if h { "true" } else { "false" },
            );
        }
        if let Some(t) = env.session_timeout {
            header(out, "SessionTimeout", None, &t.to_string());
        }
        if let Some(v) = &env.supported_cwmp_versions {
            header(out, "SupportedCWMPVersions", Some("0"), v);
        }
        if let Some(v) = &env.use_cwmp_version {
            header(out, "UseCWMPVersion", Some("1"), v);
        }
        raw(out, "</soap-env:Header>\n");
    }
    raw(out, "<soap-env:Body>\n");
}

fn header(out: &mut Vec<u8>, name: &str, must_understand: Option<&str>, value: &str) {
    raw(out, "<cwmp:");
    raw(out, name);
    if let Some(m) = must_understand {
        raw(out, " soap-env:mustUnderstand=\"");
        raw(out, m);
        raw(out, "\"");
    }
    raw(out, ">");
    escape(out, value, false);
    raw(out, "</cwmp:");
    raw(out, name);
    raw(out, ">\n");
}

fn end_envelope(out: &mut Vec<u8>) {
    raw(out, "\n</soap-env:Body>\n</soap-env:Envelope>\n");
}

fn fault(out: &mut Vec<u8>, f: &Fault) {
    raw(out, "<soap-env:Fault><faultcode>");
    raw(out, soap_fault_code(f.code));
    raw(
        out,
        "</faultcode><faultstring>CWMP fault</faultstring><detail><cwmp:Fault>",
    );
    leaf_num(out, "FaultCode", f.code);
    leaf(out, "FaultString", &f.string);
    for s in &f.set_parameter_values_faults {
        raw(out, "\n<SetParameterValuesFault>");
        leaf(out, "ParameterName", &s.name);
        leaf_num(out, "FaultCode", s.code);
        leaf(out, "FaultString", &s.string);
        raw(out, "</SetParameterValuesFault>");
    }
    raw(out, "</cwmp:Fault></detail></soap-env:Fault>");
}

/// The SOAP `MustUnderstand` fault (SOAP 1.1 §4.2.3) for a header entry the
/// CPE does not understand; `env` gives the cwmp:ID to echo.
pub fn emit_must_understand(env: &Envelope<()>, header_name: &str, out: &mut Vec<u8>) {
    begin_envelope(out, env);
    raw(
        out,
        "<soap-env:Fault><faultcode>soap-env:MustUnderstand</faultcode><faultstring>",
    );
    escape(out, &format!("header {header_name} not understood"), false);
    raw(out, "</faultstring></soap-env:Fault>");
    end_envelope(out);
}

fn transfer_fault(out: &mut Vec<u8>, f: &TransferFault) {
    raw(out, "<FaultStruct>");
    leaf_num(out, "FaultCode", f.code);
    leaf(out, "FaultString", &f.string);
    raw(out, "</FaultStruct>");
}

fn value_type(p: &ParamValue) -> &str {
    p.xsi_type.as_deref().unwrap_or("xsd:string")
}

fn param_value(out: &mut Vec<u8>, name: &str, value: &str, xsi_type: &str) {
    raw(out, "<ParameterValueStruct>");
    leaf(out, "Name", name);
    raw(out, "<Value xsi:type=\"");
    escape(out, xsi_type, true);
    raw(out, "\">");
    escape(out, value, false);
    raw(out, "</Value></ParameterValueStruct>\n");
}

fn string_array(out: &mut Vec<u8>, tag: &str, items: &[String]) {
    array_open(out, tag, "xsd:string", items.len());
    for s in items {
        leaf(out, "string", s);
    }
    raw(out, "</");
    raw(out, tag);
    raw(out, ">");
}

fn array_open(out: &mut Vec<u8>, tag: &str, item_type: &str, n: usize) {
    let _ = write!(out, "<{tag} soap-enc:arrayType=\"{item_type}[{n}]\">");
}

pub(super) fn method_open(out: &mut Vec<u8>, name: &str) {
    let _ = write!(out, "<cwmp:{name}>");
}

pub(super) fn method_close(out: &mut Vec<u8>, name: &str) {
    let _ = write!(out, "</cwmp:{name}>");
}

fn method_empty(out: &mut Vec<u8>, name: &str) {
    let _ = write!(out, "<cwmp:{name}/>");
}

pub(super) fn raw(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn leaf(out: &mut Vec<u8>, tag: &str, value: &str) {
    let _ = write!(out, "<{tag}>");
    escape(out, value, false);
    let _ = write!(out, "</{tag}>");
}

pub(super) fn leaf_num(out: &mut Vec<u8>, tag: &str, n: impl std::fmt::Display) {
    let _ = write!(out, "<{tag}>{n}</{tag}>");
}

pub(super) fn leaf_bool(out: &mut Vec<u8>, tag: &str, b: bool) {
    let _ = write!(out, "<{tag}>{b}</{tag}>");
}

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Escapes `s` for element content (`attr == false`) or a double-quoted
/// attribute value.
fn escape(out: &mut Vec<u8>, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let rep: &[u8] = match bytes[i] {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&apos;",
            b'\r' => b"&#13;",
            b'\t' if attr => b"&#9;",
            b'\n' if attr => b"&#10;",
            b'\t' | b'\n' => {
                i += 1;
                continue;
            }
            0..=0x1F => REPLACEMENT,
            // U+FFFE and U+FFFF (EF BF BE / EF BF BF) are not XML characters.
            0xEF if matches!(bytes.get(i + 1..i + 3), Some([0xBF, 0xBE | 0xBF])) => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(REPLACEMENT);
                i += 3;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::super::{CwmpNs, Fault, ParamInfo, parse_acs_message, parse_cpe_message};
    use super::*;

    fn esc(s: &str, attr: bool) -> String {
        let mut out = Vec::new();
        escape(&mut out, s, attr);
        String::from_utf8(out).unwrap()
    }

    fn cpe(env: &Envelope<CpeMessage>) -> String {
        let mut out = Vec::new();
        emit_cpe(env, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escaping() {
        assert_eq!(esc("plain text", false), "plain text");
        assert_eq!(
            esc("a&b<c>d\"e'f", false),
            "a&amp;b&lt;c&gt;d&quot;e&apos;f"
        );
        assert_eq!(esc("l1\nl2\tt\r\n", false), "l1\nl2\tt&#13;\n");
        assert_eq!(esc("l1\nl2\tt\r", true), "l1&#10;l2&#9;t&#13;");
        // Characters XML 1.0 forbids are replaced, never emitted raw.
        assert_eq!(
            esc("a\0b\x01c\x1Fd\x0Be", false),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}e"
        );
        assert_eq!(
            esc("x\u{FFFE}y\u{FFFF}z\u{FFFD}", false),
            "x\u{FFFD}y\u{FFFD}z\u{FFFD}"
        );
        assert_eq!(esc("é✓𝄞\u{7F}\u{85}", false), "é✓𝄞\u{7F}\u{85}");
        assert_eq!(esc("", false), "");
        // A value full of hostile characters survives a round trip except for
        // the replaced ones.
        let env = Envelope::new(CpeMessage::GetParameterValuesResponse {
            list: vec![ParamValue::new(
                "Device.A",
                "<\0>&\r\n]]>",
                "xsd:string\"/><x a=\"",
            )],
        });
        let back = parse_cpe_message(cpe(&env).as_bytes()).unwrap();
        assert_eq!(
            back.body,
            CpeMessage::GetParameterValuesResponse {
                list: vec![ParamValue::new(
                    "Device.A",
                    "<\u{FFFD}>&\r\n]]>",
                    "xsd:string\"/><x a=\""
                )]
            }
        );
    }

    #[test]
    fn envelope_shape() {
        let xml = cpe(&Envelope::new(CpeMessage::RebootResponse).with_id("a<b"));
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap-env:Envelope "));
        for decl in [
            "xmlns:soap-env=\"http://schemas.xmlsoap.org/soap/envelope/\"",
            "xmlns:soap-enc=\"http://schemas.xmlsoap.org/soap/encoding/\"",
            "xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"",
            "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"",
            "xmlns:cwmp=\"urn:dslforum-org:cwmp-1-2\"",
        ] {
            assert!(xml.contains(decl), "{decl}");
        }
        assert!(xml.contains("<cwmp:ID soap-env:mustUnderstand=\"1\">a&lt;b</cwmp:ID>"));
        assert!(xml.contains("<cwmp:RebootResponse/>"));
        // No header elements: no Header.
        let xml = cpe(&Envelope::new(CpeMessage::RebootResponse).with_ns(CwmpNs::Cwmp10));
        assert!(!xml.contains("Header"));
        assert!(xml.contains("xmlns:cwmp=\"urn:dslforum-org:cwmp-1-0\""));
        // All header elements.
        let mut env = Envelope::new(AcsMessage::InformResponse { max_envelopes: 1 }).with_id("7");
        env.hold_requests = Some(false);
        env.session_timeout = Some(30);
        env.supported_cwmp_versions = Some("1.0,1.4".into());
        env.use_cwmp_version = Some("1.4".into());
        let mut out = Vec::new();
        emit_acs(&env, &mut out);
        let xml = String::from_utf8(out).unwrap();
        for h in [
            "<cwmp:HoldRequests soap-env:mustUnderstand=\"1\">false</cwmp:HoldRequests>",
            "<cwmp:SessionTimeout>30</cwmp:SessionTimeout>",
            "<cwmp:SupportedCWMPVersions soap-env:mustUnderstand=\"0\">1.0,1.4</cwmp:SupportedCWMPVersions>",
            "<cwmp:UseCWMPVersion soap-env:mustUnderstand=\"1\">1.4</cwmp:UseCWMPVersion>",
            "<cwmp:InformResponse><MaxEnvelopes>1</MaxEnvelopes></cwmp:InformResponse>",
        ] {
            assert!(xml.contains(h), "{h}\n{xml}");
        }
        // Appending to a non-empty buffer leaves the prefix alone.
        let mut out = b"prefix".to_vec();
        emit_cpe(&Envelope::new(CpeMessage::RebootResponse), &mut out);
        assert!(out.starts_with(b"prefix<?xml"));
    }

    #[test]
    fn fault_shape() {
        let mut f = Fault::new(9003);
        f.push_spv_fault("Device.A", 9007);
        let xml = cpe(&Envelope::new(CpeMessage::Fault(f)).with_id("f1"));
        assert!(xml.contains(
            "<soap-env:Body>\n<soap-env:Fault><faultcode>Client</faultcode><faultstring>CWMP fault</faultstring>\
             <detail><cwmp:Fault><FaultCode>9003</FaultCode><FaultString>Invalid arguments</FaultString>\n\
             <SetParameterValuesFault><ParameterName>Device.A</ParameterName><FaultCode>9007</FaultCode>\
             <FaultString>Invalid parameter value</FaultString></SetParameterValuesFault>\
             </cwmp:Fault></detail></soap-env:Fault>"
        ), "{xml}");
        let xml = cpe(&Envelope::new(CpeMessage::Fault(Fault::new(9002))));
        assert!(xml.contains("<faultcode>Server</faultcode>"));
        let mut out = Vec::new();
        emit_acs(
            &Envelope::new(AcsMessage::Fault(Fault::new(8003))),
            &mut out,
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("<faultcode>Client</faultcode>")
        );
    }

    #[test]
    fn arrays_carry_type_and_count() {
        let xml = cpe(&Envelope::new(CpeMessage::GetParameterValuesResponse {
            list: vec![
                ParamValue::new("Device.A", "1", "xsd:unsignedInt"),
                ParamValue {
                    name: "Device.B".into(),
                    value: "x".into(),
                    xsi_type: None,
                },
            ],
        }));
        assert!(
            xml.contains("<ParameterList soap-enc:arrayType=\"cwmp:ParameterValueStruct[2]\">")
        );
        assert!(xml.contains("<Value xsi:type=\"xsd:unsignedInt\">1</Value>"));
        assert!(xml.contains("<Value xsi:type=\"xsd:string\">x</Value>"));
        let xml = cpe(&Envelope::new(CpeMessage::GetParameterNamesResponse {
            list: vec![ParamInfo {
                name: "Device.".into(),
                writable: false,
            }],
        }));
        assert!(xml.contains(
            "<ParameterList soap-enc:arrayType=\"cwmp:ParameterInfoStruct[1]\">\n<ParameterInfoStruct>\
             <Name>Device.</Name><Writable>false</Writable></ParameterInfoStruct>"
        ));
        let mut out = Vec::new();
        let env = Envelope::new(AcsMessage::Request(AcsRequest::GetParameterValues {
            names: vec!["A.".into(), "B.".into(), "C".into()],
        }));
        emit_acs(&env, &mut out);
        let xml = String::from_utf8(out).unwrap();
        assert!(
            xml.contains(
                "<ParameterNames soap-enc:arrayType=\"xsd:string[3]\"><string>A.</string>"
            )
        );
        // Empty lists.
        let xml = cpe(&Envelope::new(CpeMessage::GetParameterValuesResponse {
            list: vec![],
        }));
        assert!(xml.contains("cwmp:ParameterValueStruct[0]\">"));
        assert_eq!(
            parse_cpe_message(xml.as_bytes()).unwrap().body,
            CpeMessage::GetParameterValuesResponse { list: vec![] }
        );
    }

    #[test]
    fn streaming_gpv_writer_10000_entries() {
        let mut out = Vec::with_capacity(1 << 20);
        let mut w = GpvWriter::begin(&mut out, &Envelope::new(()).with_id("gpv-1"));
        for i in 0..10_000 {
            let name = format!("Device.X_Test.Item.{i}.Value");
            w.param(&name, &i.to_string(), "xsd:unsignedInt");
        }
        assert_eq!(w.count(), 10_000);
        assert_eq!(w.finish(), 10_000);
        let xml = std::str::from_utf8(&out).unwrap();
        assert!(
            xml.contains(
                "<ParameterList soap-enc:arrayType=\"cwmp:ParameterValueStruct[10000]\">\n"
            )
        );
        assert!(xml.ends_with("</soap-env:Envelope>\n"));
        let env = parse_cpe_message(&out).unwrap();
        assert_eq!(env.id.as_deref(), Some("gpv-1"));
        let CpeMessage::GetParameterValuesResponse { list } = env.body else {
            panic!()
        };
        assert_eq!(list.len(), 10_000);
        assert_eq!(
            list[9_999],
            ParamValue::new("Device.X_Test.Item.9999.Value", "9999", "xsd:unsignedInt")
        );
        // Same bytes as emit_cpe with the owned list.
        let mut again = Vec::new();
        emit_cpe(
            &Envelope::new(CpeMessage::GetParameterValuesResponse { list }).with_id("gpv-1"),
            &mut again,
        );
        assert_eq!(again, out);
    }

    #[test]
    fn streaming_gpn_writer() {
        let mut out = b"keep".to_vec();
        let mut w = GpnWriter::begin(
            &mut out,
            &Envelope::new(()).with_id("gpn").with_ns(CwmpNs::Cwmp11),
        );
        w.param("Device.", false);
        for i in 0..10_000 {
            w.param(&format!("Device.Obj.{i}."), i % 2 == 0);
        }
        assert_eq!(w.finish(), 10_001);
        assert!(out.starts_with(b"keep"));
        let env = parse_cpe_message(&out[4..]).unwrap();
        assert_eq!(env.ns, CwmpNs::Cwmp11);
        let CpeMessage::GetParameterNamesResponse { list } = env.body else {
            panic!()
        };
        assert_eq!(list.len(), 10_001);
        assert_eq!(
            list[1],
            ParamInfo {
                name: "Device.Obj.0.".into(),
                writable: true
            }
        );
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains("cwmp:ParameterInfoStruct[10001]")
        );
        // An empty response.
        let mut out = Vec::new();
        assert_eq!(GpnWriter::begin(&mut out, &Envelope::new(())).finish(), 0);
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains("cwmp:ParameterInfoStruct[0]\">")
        );
        assert!(parse_cpe_message(&out).is_ok());
    }

    #[test]
    fn every_acs_request_parses_back() {
        // emit_acs → parse_acs_message for requests is covered by the
        // round-trip tests; here: what the agent would receive from a test
        // ACS keeps its cwmp:ID.
        let mut out = Vec::new();
        let env = Envelope::new(AcsMessage::Request(AcsRequest::FactoryReset)).with_id("z");
        emit_acs(&env, &mut out);
        assert!(String::from_utf8_lossy(&out).contains("<cwmp:FactoryReset/>"));
        assert_eq!(parse_acs_message(&out).unwrap(), env);
    }
}
