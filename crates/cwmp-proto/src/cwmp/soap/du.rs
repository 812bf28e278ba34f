//! Software module management (TR-069 Annex A, CWMP 1.2+): `ChangeDUState` (ACS → CPE, A.4.1.10),
//! `DUStateChangeComplete` and `AutonomousDUStateChangeComplete` (CPE → ACS), their types and
//! their part of the codec. Names, order and facets follow BBF `cwmp-1-2.xsd` (unchanged in
//! 1-3 and 1-4). Whether a namespace has ChangeDUState at all is
//! [`CwmpNs::has_cpe_method`](super::CwmpNs::has_cpe_method) (1-2 only).
//!
//! Reading ChangeDUState:
//! * schema form: one `Operations` element per operation, its `xsi:type` naming
//!   `InstallOpStruct`, `UpdateOpStruct` or `UninstallOpStruct`; the QName is resolved through the
//!   namespace declarations in scope and must be in a CWMP namespace (or none);
//! * also accepted: an `Operations` element without `xsi:type` holding one `InstallOpStruct` /
//!   `UpdateOpStruct` / `UninstallOpStruct` element per operation (the SOAP-array shape some ACSes
//!   send), and such elements directly in `ChangeDUState`;
//! * an absent optional string reads as empty, and the emitter leaves empty optional elements out;
//! * invalid arguments (9003): no operation, an unknown or foreign type, an Install without URL,
//!   an Uninstall without UUID, a value over the schema's maxLength (URL 1024,
//!   Username/Password/ExecutionEnvRef 256, Version/CommandKey 32, UUID 36, the length its
//!   pattern implies). A UUID of at most 36 characters in the wrong format is accepted: the CPE
//!   reports it for that operation as 9022 in DUStateChangeComplete (see [`is_du_uuid`]).

use super::emit::{leaf, leaf_bool, leaf_num, raw};
use super::parse::{Ctx, Elem, Ns, clip};
use super::{AcsRequest, ParseError, TransferFault};

/// One operation of ChangeDUState, in the ACS's order. An empty string is an absent element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DuOperation {
    /// `InstallOpStruct`: `url` is required; without `uuid` the CPE chooses one.
    Install {
        url: String,
        uuid: String,
        username: String,
        password: String,
        execution_env_ref: String,
    },
    /// `UpdateOpStruct`: all optional; neither `uuid` nor `url` means every deployment unit.
    Update {
        uuid: String,
        version: String,
        url: String,
        username: String,
        password: String,
    },
    /// `UninstallOpStruct`: `uuid` is required; without `version`, every version.
    Uninstall {
        uuid: String,
        version: String,
        execution_env_ref: String,
    },
}

impl DuOperation {
    /// Install, Update or Uninstall.
    pub fn operation_type(&self) -> DuOperationType {
        match self {
            DuOperation::Install { .. } => DuOperationType::Install,
            DuOperation::Update { .. } => DuOperationType::Update,
            DuOperation::Uninstall { .. } => DuOperationType::Uninstall,
        }
    }
}

/// `DeploymentUnitOperationType` (OperationPerformed of an autonomous result). The schema also
/// allows vendor strings; they are not represented (the test ACS answers 8003).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DuOperationType {
    Install,
    Update,
    Uninstall,
}

impl DuOperationType {
    const ALL: [DuOperationType; 3] = [
        DuOperationType::Install,
        DuOperationType::Update,
        DuOperationType::Uninstall,
    ];

    /// The wire value, e.g. `Install`.
    pub fn as_str(self) -> &'static str {
        match self {
            DuOperationType::Install => "Install",
            DuOperationType::Update => "Update",
            DuOperationType::Uninstall => "Uninstall",
        }
    }

    /// The operation's struct type, e.g. `InstallOpStruct`.
    fn struct_name(self) -> &'static str {
        match self {
            DuOperationType::Install => "InstallOpStruct",
            DuOperationType::Update => "UpdateOpStruct",
            DuOperationType::Uninstall => "UninstallOpStruct",
        }
    }

    fn from_struct_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.struct_name() == s)
    }
}

/// `DeploymentUnitState`: the state of the deployment unit after the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DuState {
    Installed,
    Uninstalled,
    /// The install failed and no DeploymentUnit instance was created.
    Failed,
}

impl DuState {
    /// The wire value, e.g. `Installed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DuState::Installed => "Installed",
            DuState::Uninstalled => "Uninstalled",
            DuState::Failed => "Failed",
        }
    }

    fn from_wire(s: &str) -> Option<Self> {
        [DuState::Installed, DuState::Uninstalled, DuState::Failed]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// `DeploymentUnitFaultStruct`: code 0 means success. The schema allows only 0, 9001, 9003,
/// 9012, 9013, 9015–9018, 9022–9032 and 9033–9899 here; the emitter writes the code as given.
pub type DuFault = TransferFault;

/// `OpResultStruct`: the result of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuOpResult {
    /// Must match the `DeploymentUnitUUID` pattern ([`is_du_uuid`]).
    pub uuid: String,
    /// e.g. `Device.SoftwareModules.DeploymentUnit.1`.
    pub deployment_unit_ref: String,
    /// At most 32 characters.
    pub version: String,
    pub current_state: DuState,
    /// Whether the deployment unit resolved all its dependencies.
    pub resolved: bool,
    /// `ExecutionUnitRefList`, a comma-separated list on the wire.
    pub execution_unit_refs: Vec<String>,
    pub start_time: String,
    pub complete_time: String,
    pub fault: DuFault,
}

/// `AutonOpResultStruct`: an [`DuOpResult`] plus the operation the CPE performed on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutonDuOpResult {
    pub result: DuOpResult,
    pub operation_performed: DuOperationType,
}

/// The DUStateChangeComplete RPC: one result per operation of the ChangeDUState, same order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DUStateChangeComplete {
    pub command_key: String,
    pub results: Vec<DuOpResult>,
}

/// The AutonomousDUStateChangeComplete RPC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AutonomousDUStateChangeComplete {
    pub results: Vec<AutonDuOpResult>,
}

/// Whether `s` matches the schema's `DeploymentUnitUUID` pattern (8-4-4-4-12 hex digits, either
/// case). An operation with a UUID that does not is reported with fault 9022.
pub fn is_du_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// The arguments of ChangeDUState.
pub(super) fn change_du_state(c: &Ctx<'_>, m: &Elem) -> Result<AcsRequest, ParseError> {
    let mut operations = Vec::new();
    for e in &m.children {
        if e.name == "Operations" && e.xsi_type.is_none() {
            if e.children.is_empty() {
                return Err(c.err("Operations without xsi:type"));
            }
            for item in &e.children {
                operations.push(operation(c, item)?);
            }
        } else if e.name == "Operations" || DuOperationType::from_struct_name(&e.name).is_some() {
            operations.push(operation(c, e)?);
        }
    }
    if operations.is_empty() {
        return Err(c.err("missing Operations"));
    }
    Ok(AcsRequest::ChangeDUState {
        command_key: c.opt_string_max(m, "CommandKey", 32)?,
        operations,
    })
}

/// The type an operation element names: its `xsi:type` when it has one, else its own name.
fn operation_type(e: &Elem) -> Option<DuOperationType> {
    let name = match (&e.xsi_type, e.xsi_type_ns) {
        (Some(t), Some(Ns::Cwmp(_) | Ns::Unqualified)) => {
            t.rsplit_once(':').map_or(t.as_str(), |(_, l)| l)
        }
        (None, _) if e.is_cwmp_or_unqualified() => e.name.as_str(),
        _ => return None,
    };
    DuOperationType::from_struct_name(name)
}

fn operation(c: &Ctx<'_>, e: &Elem) -> Result<DuOperation, ParseError> {
    let Some(ty) = operation_type(e) else {
        let t = e.xsi_type.as_deref().unwrap_or(&e.name);
        return Err(c.err(format!("unknown operation type {:?}", clip(t))));
    };
    let opt = |name, max| c.opt_string_max(e, name, max);
    let required = |name, max| {
        let v = c.opt_string_max(e, name, max)?;
        if v.trim().is_empty() {
            return Err(c.err(format!("{} without {name}", ty.struct_name())));
        }
        Ok(v)
    };
    Ok(match ty {
        DuOperationType::Install => DuOperation::Install {
            url: required("URL", 1024)?,
            uuid: opt("UUID", 36)?,
            username: opt("Username", 256)?,
            password: opt("Password", 256)?,
            execution_env_ref: opt("ExecutionEnvRef", 256)?,
        },
        DuOperationType::Update => DuOperation::Update {
            uuid: opt("UUID", 36)?,
            version: opt("Version", 32)?,
            url: opt("URL", 1024)?,
            username: opt("Username", 256)?,
            password: opt("Password", 256)?,
        },
        DuOperationType::Uninstall => DuOperation::Uninstall {
            uuid: required("UUID", 36)?,
            version: opt("Version", 32)?,
            execution_env_ref: opt("ExecutionEnvRef", 256)?,
        },
    })
}

/// The arguments of DUStateChangeComplete.
pub(super) fn du_complete(c: &Ctx<'_>, m: &Elem) -> Result<DUStateChangeComplete, ParseError> {
    let mut results = Vec::new();
    for e in result_items(c, m)? {
        results.push(op_result(c, e)?);
    }
    Ok(DUStateChangeComplete {
        command_key: c.opt_string_max(m, "CommandKey", 32)?,
        results,
    })
}

/// The arguments of AutonomousDUStateChangeComplete.
pub(super) fn auton_du_complete(
    c: &Ctx<'_>,
    m: &Elem,
) -> Result<AutonomousDUStateChangeComplete, ParseError> {
    let mut results = Vec::new();
    for e in result_items(c, m)? {
        let op = c.string(e, "OperationPerformed")?;
        let operation_performed = DuOperationType::ALL
            .into_iter()
            .find(|t| t.as_str() == op.trim())
            .ok_or_else(|| c.err(format!("unknown OperationPerformed {:?}", clip(&op))))?;
        results.push(AutonDuOpResult {
            result: op_result(c, e)?,
            operation_performed,
        });
    }
    Ok(AutonomousDUStateChangeComplete { results })
}

/// One `Results` element per result, or (SOAP-array shape) one `Results` holding them.
fn result_items<'e>(c: &Ctx<'_>, m: &'e Elem) -> Result<Vec<&'e Elem>, ParseError> {
    let mut items = Vec::new();
    for e in m.children.iter().filter(|e| e.name == "Results") {
        if e.child("UUID").is_some() {
            items.push(e);
        } else {
            items.extend(e.children.iter());
        }
    }
    if items.is_empty() {
        return Err(c.err("missing Results"));
    }
    Ok(items)
}

fn op_result(c: &Ctx<'_>, e: &Elem) -> Result<DuOpResult, ParseError> {
    let state = c.string(e, "CurrentState")?;
    let f = c.get(e, "Fault")?;
    Ok(DuOpResult {
        uuid: c.string_max(e, "UUID", 36)?,
        deployment_unit_ref: c.string(e, "DeploymentUnitRef")?,
        version: c.string_max(e, "Version", 32)?,
        current_state: DuState::from_wire(state.trim())
            .ok_or_else(|| c.err(format!("unknown CurrentState {:?}", clip(&state))))?,
        resolved: c.boolean(e, "Resolved")?,
        execution_unit_refs: c
            .string(e, "ExecutionUnitRefList")?
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        start_time: c.string(e, "StartTime")?,
        complete_time: c.string(e, "CompleteTime")?,
        fault: DuFault {
            code: c.u32(f, "FaultCode")?,
            string: c.opt_string(f, "FaultString")?,
        },
    })
}

// ---------------------------------------------------------------------------
// Emission (inside the method element, which the caller writes)
// ---------------------------------------------------------------------------

/// The `Operations` of ChangeDUState, in schema form (`xsi:type` on each).
pub(super) fn emit_operations(out: &mut Vec<u8>, operations: &[DuOperation]) {
    for op in operations {
        raw(out, "<Operations xsi:type=\"cwmp:");
        raw(out, op.operation_type().struct_name());
        raw(out, "\">");
        match op {
            DuOperation::Install {
                url,
                uuid,
                username,
                password,
                execution_env_ref,
            } => {
                leaf(out, "URL", url);
                opt_leaf(out, "UUID", uuid);
                opt_leaf(out, "Username", username);
                opt_leaf(out, "Password", password);
                opt_leaf(out, "ExecutionEnvRef", execution_env_ref);
            }
            DuOperation::Update {
                uuid,
                version,
                url,
                username,
                password,
            } => {
                opt_leaf(out, "UUID", uuid);
                opt_leaf(out, "Version", version);
                opt_leaf(out, "URL", url);
                opt_leaf(out, "Username", username);
                opt_leaf(out, "Password", password);
            }
            DuOperation::Uninstall {
                uuid,
                version,
                execution_env_ref,
            } => {
                leaf(out, "UUID", uuid);
                opt_leaf(out, "Version", version);
                opt_leaf(out, "ExecutionEnvRef", execution_env_ref);
            }
        }
        raw(out, "</Operations>\n");
    }
}

/// The arguments of DUStateChangeComplete.
pub(super) fn emit_du_complete(out: &mut Vec<u8>, d: &DUStateChangeComplete) {
    for r in &d.results {
        raw(out, "<Results>");
        emit_op_result(out, r);
        raw(out, "</Results>\n");
    }
    leaf(out, "CommandKey", &d.command_key);
}

/// The arguments of AutonomousDUStateChangeComplete.
pub(super) fn emit_auton_du_complete(out: &mut Vec<u8>, d: &AutonomousDUStateChangeComplete) {
    for r in &d.results {
        raw(out, "<Results>");
        emit_op_result(out, &r.result);
        leaf(out, "OperationPerformed", r.operation_performed.as_str());
        raw(out, "</Results>\n");
    }
}

fn emit_op_result(out: &mut Vec<u8>, r: &DuOpResult) {
    leaf(out, "UUID", &r.uuid);
    leaf(out, "DeploymentUnitRef", &r.deployment_unit_ref);
    leaf(out, "Version", &r.version);
    leaf(out, "CurrentState", r.current_state.as_str());
    leaf_bool(out, "Resolved", r.resolved);
    leaf(
        out,
        "ExecutionUnitRefList",
        &r.execution_unit_refs.join(","),
    );
    leaf(out, "StartTime", &r.start_time);
    leaf(out, "CompleteTime", &r.complete_time);
    raw(out, "<Fault>");
    leaf_num(out, "FaultCode", r.fault.code);
    leaf(out, "FaultString", &r.fault.string);
    raw(out, "</Fault>");
}

fn opt_leaf(out: &mut Vec<u8>, tag: &str, value: &str) {
    if !value.is_empty() {
        leaf(out, tag, value);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{
        AcsMessage, CpeMessage, CwmpNs, Envelope, emit_acs, emit_cpe, parse_acs_message,
        parse_cpe_message,
    };
    use super::*;

    const U1: &str = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    const U2: &str = "6BA7B810-9DAD-11D1-80B4-00C04FD430C8";

    fn install() -> DuOperation {
        DuOperation::Install {
            url: "http://apps.example/du/player.ipk?a=1&b=2".into(),
            uuid: U1.into(),
            username: "u".into(),
            password: "p<w>".into(),
            execution_env_ref: "Device.SoftwareModules.ExecEnv.1".into(),
        }
    }

    fn update() -> DuOperation {
        DuOperation::Update {
            uuid: U2.into(),
            version: "2.0".into(),
            url: "https://apps.example/du/epg-2.0.ipk".into(),
            username: String::new(),
            password: String::new(),
        }
    }

    fn uninstall() -> DuOperation {
        DuOperation::Uninstall {
            uuid: U1.into(),
            version: String::new(),
            execution_env_ref: String::new(),
        }
    }

    fn result(uuid: &str, state: DuState, code: u32) -> DuOpResult {
        DuOpResult {
            uuid: uuid.into(),
            deployment_unit_ref: "Device.SoftwareModules.DeploymentUnit.1".into(),
            version: "1.0".into(),
            current_state: state,
            resolved: code == 0,
            execution_unit_refs: vec![
                "Device.SoftwareModules.ExecutionUnit.1".into(),
                "Device.SoftwareModules.ExecutionUnit.2".into(),
            ],
            start_time: "2024-05-01T12:00:00Z".into(),
            complete_time: "2024-05-01T12:00:07Z".into(),
            fault: DuFault {
                code,
                string: if code == 0 {
                    String::new()
                } else {
                    "Unknown Deployment Unit".into()
                },
            },
        }
    }

    /// One schema-valid envelope per new CPE → ACS message kind.
    pub(crate) fn cpe_samples() -> Vec<Envelope<CpeMessage>> {
        let mut not_installed = result(U2, DuState::Failed, 9028);
        not_installed.execution_unit_refs.clear();
        vec![
            Envelope::new(CpeMessage::ChangeDUStateResponse).with_id("du-1"),
            Envelope::new(CpeMessage::DUStateChangeComplete(DUStateChangeComplete {
                command_key: "cds-1".into(),
                results: vec![result(U1, DuState::Installed, 0), not_installed],
            }))
            .with_id("du-2"),
            Envelope::new(CpeMessage::AutonomousDUStateChangeComplete(
                AutonomousDUStateChangeComplete {
                    results: vec![AutonDuOpResult {
                        result: result(U1, DuState::Uninstalled, 0),
                        operation_performed: DuOperationType::Uninstall,
                    }],
                },
            ))
            .with_id("du-3"),
        ]
    }

    /// One schema-valid envelope per new ACS → CPE message kind.
    pub(crate) fn acs_samples() -> Vec<Envelope<AcsMessage>> {
        vec![
            Envelope::new(AcsMessage::Request(AcsRequest::ChangeDUState {
                command_key: "cds-1".into(),
                operations: vec![install(), update(), uninstall()],
            }))
            .with_id("du-4"),
            Envelope::new(AcsMessage::DUStateChangeCompleteResponse).with_id("du-5"),
            Envelope::new(AcsMessage::AutonomousDUStateChangeCompleteResponse),
        ]
    }

    const ENV_OPEN: &str = r#"<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:soap-enc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:cwmp="urn:dslforum-org:cwmp-1-2">"#;

    fn envelope(body: &str) -> String {
        format!(
            "{ENV_OPEN}<soap-env:Header><cwmp:ID soap-env:mustUnderstand=\"1\">du-7</cwmp:ID>\
             </soap-env:Header><soap-env:Body>{body}</soap-env:Body></soap-env:Envelope>"
        )
    }

    fn cds(ops: &str) -> Result<AcsRequest, ParseError> {
        let xml = envelope(&format!(
            "<cwmp:ChangeDUState>{ops}<CommandKey>ck</CommandKey></cwmp:ChangeDUState>"
        ));
        match parse_acs_message(xml.as_bytes())?.body {
            AcsMessage::Request(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    fn ops(r: AcsRequest) -> Vec<DuOperation> {
        match r {
            AcsRequest::ChangeDUState {
                command_key,
                operations,
            } => {
                assert_eq!(command_key, "ck");
                operations
            }
            other => panic!("{other:?}"),
        }
    }

    const INSTALL_FIELDS: &str = "<URL>http://apps.example/du/player.ipk?a=1&amp;b=2</URL>\
        <UUID>3f2504e0-4f89-11d3-9a0c-0305e82c3301</UUID><Username>u</Username>\
        <Password>p&lt;w&gt;</Password><ExecutionEnvRef>Device.SoftwareModules.ExecEnv.1</ExecutionEnvRef>";
    const UPDATE_FIELDS: &str = "<UUID>6BA7B810-9DAD-11D1-80B4-00C04FD430C8</UUID><Version>2.0</Version>\
        <URL>https://apps.example/du/epg-2.0.ipk</URL>";
    const UNINSTALL_FIELDS: &str = "<UUID>3f2504e0-4f89-11d3-9a0c-0305e82c3301</UUID>";

    #[test]
    fn change_du_state_xsi_type_form() {
        // The cwmp prefix of the envelope, another prefix for a CWMP namespace (1-4 read as
        // 1-2), and an unprefixed type in a CWMP default namespace.
        let r = cds(&format!(
            "<Operations xsi:type=\"cwmp:InstallOpStruct\">{INSTALL_FIELDS}</Operations>\
             <Operations xmlns:c=\"urn:dslforum-org:cwmp-1-4\" xsi:type=\" c:UpdateOpStruct \">{UPDATE_FIELDS}</Operations>\
             <Operations xmlns=\"urn:dslforum-org:cwmp-1-2\" xsi:type=\"UninstallOpStruct\">{UNINSTALL_FIELDS}</Operations>"
        ))
        .unwrap();
        assert_eq!(ops(r), vec![install(), update(), uninstall()]);
        // Arguments in any order, absent optional ones read as empty.
        let r = cds(
            "<Operations xsi:type=\"cwmp:InstallOpStruct\"><ExecutionEnvRef/><URL>http://x/a</URL></Operations>",
        )
        .unwrap();
        assert_eq!(
            ops(r),
            vec![DuOperation::Install {
                url: "http://x/a".into(),
                uuid: String::new(),
                username: String::new(),
                password: String::new(),
                execution_env_ref: String::new(),
            }]
        );
        // An Update with neither UUID nor URL: every deployment unit.
        let r = cds("<Operations xsi:type=\"cwmp:UpdateOpStruct\"/>").unwrap();
        assert_eq!(
            ops(r),
            vec![DuOperation::Update {
                uuid: String::new(),
                version: String::new(),
                url: String::new(),
                username: String::new(),
                password: String::new(),
            }]
        );
    }

    #[test]
    fn change_du_state_struct_element_form() {
        // An Operations array holding one element per operation.
        let r = cds(&format!(
            "<Operations soap-enc:arrayType=\"cwmp:OperationStruct[3]\">\
             <InstallOpStruct>{INSTALL_FIELDS}</InstallOpStruct>\
             <UpdateOpStruct>{UPDATE_FIELDS}</UpdateOpStruct>\
             <cwmp:UninstallOpStruct>{UNINSTALL_FIELDS}</cwmp:UninstallOpStruct></Operations>"
        ))
        .unwrap();
        assert_eq!(ops(r), vec![install(), update(), uninstall()]);
        // Such elements directly in ChangeDUState, mixed with the schema form, in document order.
        let r = cds(&format!(
            "<UninstallOpStruct>{UNINSTALL_FIELDS}</UninstallOpStruct>\
             <Operations xsi:type=\"cwmp:InstallOpStruct\">{INSTALL_FIELDS}</Operations>\
             <UpdateOpStruct>{UPDATE_FIELDS}</UpdateOpStruct>"
        ))
        .unwrap();
        assert_eq!(ops(r), vec![uninstall(), install(), update()]);
        // An xsi:type on an item wins over its element name.
        let r = cds(&format!(
            "<Operations><OperationStruct xsi:type=\"cwmp:UninstallOpStruct\">{UNINSTALL_FIELDS}</OperationStruct></Operations>"
        ))
        .unwrap();
        assert_eq!(ops(r), vec![uninstall()]);
    }

    #[test]
    fn change_du_state_invalid_arguments_are_9003() {
        let url = |n: usize| format!("http://x/{}", "a".repeat(n - 9));
        let cases = [
            // Unknown or foreign types.
            format!("<Operations xsi:type=\"cwmp:RestartOpStruct\">{UNINSTALL_FIELDS}</Operations>"),
            format!(
                "<Operations xmlns:v=\"urn:vendor\" xsi:type=\"v:InstallOpStruct\">{INSTALL_FIELDS}</Operations>"
            ),
            format!("<Operations xsi:type=\"xsd:string\">{INSTALL_FIELDS}</Operations>"),
            format!("<Operations xsi:type=\"nope:InstallOpStruct\">{INSTALL_FIELDS}</Operations>"),
            format!(
                "<Operations xmlns=\"urn:vendor\" xsi:type=\"InstallOpStruct\">{INSTALL_FIELDS}</Operations>"
            ),
            format!("<Operations><RestartOpStruct>{UNINSTALL_FIELDS}</RestartOpStruct></Operations>"),
            format!("<Operations><v:InstallOpStruct xmlns:v=\"urn:vendor\">{INSTALL_FIELDS}</v:InstallOpStruct></Operations>"),
            // No type at all: the fields are read as (unknown) operations.
            format!("<Operations>{INSTALL_FIELDS}</Operations>"),
            // No operation.
            "<Operations/>".to_string(),
            String::new(),
            // Required arguments.
            "<Operations xsi:type=\"cwmp:InstallOpStruct\"><UUID>3f2504e0-4f89-11d3-9a0c-0305e82c3301</UUID></Operations>".to_string(),
            "<Operations xsi:type=\"cwmp:InstallOpStruct\"><URL> </URL></Operations>".to_string(),
            "<Operations xsi:type=\"cwmp:UninstallOpStruct\"><Version>1</Version></Operations>".to_string(),
            "<UninstallOpStruct><UUID/></UninstallOpStruct>".to_string(),
            // Over the schema's maxLength.
            format!("<Operations xsi:type=\"cwmp:InstallOpStruct\"><URL>{}</URL></Operations>", url(1025)),
            format!("<Operations xsi:type=\"cwmp:UpdateOpStruct\"><URL>{}</URL></Operations>", url(1025)),
            format!("<Operations xsi:type=\"cwmp:InstallOpStruct\"><URL>http://x/</URL><Username>{}</Username></Operations>", "u".repeat(257)),
            format!("<Operations xsi:type=\"cwmp:InstallOpStruct\"><URL>http://x/</URL><ExecutionEnvRef>{}</ExecutionEnvRef></Operations>", "e".repeat(257)),
            format!("<Operations xsi:type=\"cwmp:UninstallOpStruct\">{UNINSTALL_FIELDS}<Version>{}</Version></Operations>", "9".repeat(33)),
            format!("<Operations xsi:type=\"cwmp:UninstallOpStruct\"><UUID>{U1}0</UUID></Operations>"),
            // A structure where a string belongs.
            "<Operations xsi:type=\"cwmp:InstallOpStruct\"><URL><a/></URL></Operations>".to_string(),
        ];
        for ops in cases {
            let e = cds(&ops).unwrap_err();
            assert!(
                matches!(&e, ParseError::InvalidArguments { method, id, .. }
                    if method == "ChangeDUState" && id.as_deref() == Some("du-7")),
                "{ops}: {e:?}"
            );
            assert_eq!(e.cpe_fault().map(|f| f.code), Some(9003), "{ops}");
        }
        let long_key = envelope(&format!(
            "<cwmp:ChangeDUState><Operations xsi:type=\"cwmp:UninstallOpStruct\">{UNINSTALL_FIELDS}</Operations>\
             <CommandKey>{}</CommandKey></cwmp:ChangeDUState>",
            "k".repeat(33)
        ));
        let e = parse_acs_message(long_key.as_bytes()).unwrap_err();
        assert_eq!(e.cpe_fault().map(|f| f.code), Some(9003));
        // At the limits: accepted. A malformed UUID is left to the agent (9022 per operation).
        let r = cds(&format!(
            "<Operations xsi:type=\"cwmp:InstallOpStruct\"><URL>{}</URL><UUID>not-a-uuid</UUID>\
             <Password>{}</Password></Operations>",
            url(1024),
            "p".repeat(256)
        ))
        .unwrap();
        let DuOperation::Install { url: u, uuid, .. } = &ops(r)[0] else {
            panic!()
        };
        assert_eq!((u.len(), uuid.as_str()), (1024, "not-a-uuid"));
        assert!(!is_du_uuid(uuid));
    }

    #[test]
    fn change_du_state_exists_in_cwmp_1_2_only() {
        for (uri, has) in [
            ("urn:dslforum-org:cwmp-1-0", false),
            ("urn:dslforum-org:cwmp-1-1", false),
            ("urn:dslforum-org:cwmp-1-2", true),
            ("urn:dslforum-org:cwmp-1-4", true),
        ] {
            let xml = envelope(&format!(
                "<c:ChangeDUState xmlns:c=\"{uri}\"><Operations xsi:type=\"c:UninstallOpStruct\">\
                 {UNINSTALL_FIELDS}</Operations></c:ChangeDUState>"
            ));
            let env = parse_acs_message(xml.as_bytes()).unwrap();
            assert_eq!(env.ns.has_cpe_method(env.body.method_name()), has, "{uri}");
        }
    }

    #[test]
    fn du_messages_round_trip() {
        for env in cpe_samples() {
            let mut xml = Vec::new();
            emit_cpe(&env, &mut xml);
            assert_eq!(parse_cpe_message(&xml).unwrap(), env);
        }
        for env in acs_samples() {
            let mut xml = Vec::new();
            emit_acs(&env, &mut xml);
            assert_eq!(parse_acs_message(&xml).unwrap(), env);
        }
        // Argument order and shape as the schema has them.
        let mut xml = Vec::new();
        emit_acs(&acs_samples()[0], &mut xml);
        let xml = String::from_utf8(xml).unwrap();
        assert!(xml.contains(
            "<cwmp:ChangeDUState><Operations xsi:type=\"cwmp:InstallOpStruct\"><URL>http://apps.example/du/player.ipk?a=1&amp;b=2</URL>"
        ), "{xml}");
        assert!(xml.contains("<Operations xsi:type=\"cwmp:UninstallOpStruct\"><UUID>3f2504e0-4f89-11d3-9a0c-0305e82c3301</UUID></Operations>\n<CommandKey>cds-1</CommandKey></cwmp:ChangeDUState>"), "{xml}");
        let mut xml = Vec::new();
        emit_cpe(&cpe_samples()[2], &mut xml);
        let xml = String::from_utf8(xml).unwrap();
        assert!(xml.contains(
            "<Resolved>true</Resolved><ExecutionUnitRefList>Device.SoftwareModules.ExecutionUnit.1,Device.SoftwareModules.ExecutionUnit.2</ExecutionUnitRefList>"
        ), "{xml}");
        assert!(xml.contains("<Fault><FaultCode>0</FaultCode><FaultString></FaultString></Fault><OperationPerformed>Uninstall</OperationPerformed></Results>"), "{xml}");
    }

    #[test]
    fn du_results_from_a_cpe() {
        let res = |extra: &str, state: &str| {
            format!(
                "<UUID>{U1}</UUID><DeploymentUnitRef>Device.SoftwareModules.DeploymentUnit.1</DeploymentUnitRef>\
                 <Version>1.0</Version><CurrentState>{state}</CurrentState><Resolved>1</Resolved>\
                 <ExecutionUnitRefList> Device.SoftwareModules.ExecutionUnit.1 ,, </ExecutionUnitRefList>\
                 <StartTime>0001-01-01T00:00:00Z</StartTime><CompleteTime>0001-01-01T00:00:00Z</CompleteTime>\
                 <Fault><FaultCode>0</FaultCode></Fault>{extra}"
            )
        };
        let cpe = |body: String| parse_cpe_message(envelope(&body).as_bytes());
        // SOAP-array shape, no CommandKey.
        let env = cpe(format!(
            "<cwmp:DUStateChangeComplete><Results soap-enc:arrayType=\"cwmp:OpResultStruct[1]\">\
             <OpResultStruct>{}</OpResultStruct></Results></cwmp:DUStateChangeComplete>",
            res("", "Installed")
        ))
        .unwrap();
        let CpeMessage::DUStateChangeComplete(d) = env.body else {
            panic!()
        };
        assert_eq!(d.command_key, "");
        assert!(d.results[0].resolved);
        assert_eq!(
            d.results[0].execution_unit_refs,
            vec!["Device.SoftwareModules.ExecutionUnit.1".to_string()]
        );
        let env = cpe(format!(
            "<cwmp:AutonomousDUStateChangeComplete><Results>{}</Results></cwmp:AutonomousDUStateChangeComplete>",
            res("<OperationPerformed>Update</OperationPerformed>", "Installed")
        ))
        .unwrap();
        let CpeMessage::AutonomousDUStateChangeComplete(d) = env.body else {
            panic!()
        };
        assert_eq!(d.results[0].operation_performed, DuOperationType::Update);
        // The test ACS answers invalid ones with 8003.
        for body in [
            format!(
                "<cwmp:DUStateChangeComplete><Results>{}</Results></cwmp:DUStateChangeComplete>",
                res("", "Running")
            ),
            "<cwmp:DUStateChangeComplete><CommandKey/></cwmp:DUStateChangeComplete>".to_string(),
            format!(
                "<cwmp:DUStateChangeComplete><Results>{}</Results></cwmp:DUStateChangeComplete>",
                res("", "Installed").replace("<Fault><FaultCode>0</FaultCode></Fault>", "")
            ),
            format!(
                "<cwmp:AutonomousDUStateChangeComplete><Results>{}</Results></cwmp:AutonomousDUStateChangeComplete>",
                res(
                    "<OperationPerformed>X_Restart</OperationPerformed>",
                    "Installed"
                )
            ),
            format!(
                "<cwmp:AutonomousDUStateChangeComplete><Results>{}</Results></cwmp:AutonomousDUStateChangeComplete>",
                res("", "Installed")
            ),
        ] {
            let e = cpe(body.clone()).unwrap_err();
            assert_eq!(e.acs_fault().map(|f| f.code), Some(8003), "{body}: {e:?}");
        }
        // The responses, as the agent reads them.
        for name in [
            "DUStateChangeCompleteResponse",
            "AutonomousDUStateChangeCompleteResponse",
        ] {
            let env = parse_acs_message(envelope(&format!("<cwmp:{name}/>")).as_bytes()).unwrap();
            assert_eq!(env.body.method_name(), name);
        }
    }

    #[test]
    fn du_uuid_format() {
        assert!(is_du_uuid(U1) && is_du_uuid(U2));
        for bad in [
            "",
            "3f2504e0-4f89-11d3-9a0c-0305e82c330",
            "3f2504e0-4f89-11d3-9a0c-0305e82c33011",
            "3f2504e0f4f89-11d3-9a0c-0305e82c3301",
            "3g2504e0-4f89-11d3-9a0c-0305e82c3301",
            "{3f2504e0-4f89-11d3-9a0c-0305e82c33}",
            "3f2504e0-4f89-11d3-9a0c-0305e82c33é",
        ] {
            assert!(!is_du_uuid(bad), "{bad}");
        }
    }

    /// The ChangeDUState shapes the shared samples do not have (one operation type alone, the
    /// minimal ones), validated like every sample (`soap::tests::xmllint_all`).
    #[test]
    fn du_messages_validate_against_bbf_schema() {
        let tmp = std::env::temp_dir().join(format!("cwmpd-du-xsd-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let mut files = Vec::new();
        let mut write = |name: String, xml: Vec<u8>| {
            let path = tmp.join(name);
            std::fs::write(&path, xml).unwrap();
            files.push(path);
        };
        // Each operation type alone, and minimal ones.
        let minimal = vec![
            DuOperation::Install {
                url: "ftp://x/y".into(),
                uuid: String::new(),
                username: String::new(),
                password: String::new(),
                execution_env_ref: String::new(),
            },
            DuOperation::Update {
                uuid: String::new(),
                version: String::new(),
                url: String::new(),
                username: String::new(),
                password: String::new(),
            },
        ];
        for (i, operations) in [vec![install()], vec![update()], vec![uninstall()], minimal]
            .into_iter()
            .enumerate()
        {
            let env = Envelope::new(AcsMessage::Request(AcsRequest::ChangeDUState {
                command_key: String::new(),
                operations,
            }))
            .with_ns(CwmpNs::Cwmp12);
            let mut xml = Vec::new();
            emit_acs(&env, &mut xml);
            write(format!("acs-ops-{i}.xml"), xml);
        }
        super::super::tests::xmllint_all("du_messages_validate_against_bbf_schema", &files);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
