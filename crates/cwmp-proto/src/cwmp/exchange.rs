//! One CWMP session's message flow (TR-069 §3.7.1) as a state machine without IO.
//!
//! The driver (the engine) POSTs what [`Exchange::poll`] returns, feeds every ACS answer back
//! with [`Exchange::on_response`], and serves the ACS's requests against the store, handing
//! the response envelope back with [`Exchange::served`]. Everything about the flow is decided
//! here: the Inform and its response, the CPE's own requests (TransferComplete, held back while
//! the ACS sets HoldRequests and sent once it stops), the empty POST, the ACS's requests until
//! its empty answer, faults for requests that cannot be served (unknown method, a method the
//! negotiated CWMP version lacks, invalid arguments, an unknown mandatory header), and when the
//! session has failed (an HTTP error, a malformed or unexpected message, a fault to one of our
//! requests). No socket, no clock, no store: the tests drive it with bytes.
//!
//! CWMP version negotiation (TR-069 Amendment 6 §3.7.4 as read by cwmpd, see
//! `docs/CWMP-VERSIONS.md`): the Inform goes in the namespace of the version
//! offered; an offer of 1.4 carries `SupportedCWMPVersions` (mustUnderstand 0) listing every
//! version. The ACS's InformResponse decides: its `UseCWMPVersion` (mustUnderstand 1) when
//! present, else the namespace it answered in. Every later message of the session is written in
//! that version's namespace with that version's methods and fault codes; an ACS request is
//! read in the session's version whatever namespace it carries. A `UseCWMPVersion` that names
//! no version cwmpd speaks, or fault 8006 (ACS version incompatible with CPE) to the Inform,
//! fails the session with [`ExchangeError::Version`].

use std::collections::VecDeque;

use super::soap::{
    self, AcsMessage, AcsRequest, AutonomousDUStateChangeComplete, CpeMessage, CwmpNs, CwmpVersion,
    DUStateChangeComplete, Envelope, Fault, ParseError, TransferComplete, cpe_fault,
};

/// Upper bound on messages in one session (a runaway ACS cannot keep the agent forever).
pub const MAX_EXCHANGES: usize = 10_000;
/// Tries of one CPE request the ACS answers with 8005 (retry request).
const TC_TRIES: u32 = 5;

/// A request of the CPE's own, sent after the InformResponse (A.3.3.2, A.4.2.3, A.4.2.4). The
/// driver gives each a key of its own and learns which were acknowledged through
/// [`Step::Delivered`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpeCall {
    TransferComplete(TransferComplete),
    DUStateChangeComplete(DUStateChangeComplete),
    AutonomousDUStateChangeComplete(AutonomousDUStateChangeComplete),
}

impl CpeCall {
    fn message(self) -> CpeMessage {
        match self {
            CpeCall::TransferComplete(m) => CpeMessage::TransferComplete(m),
            CpeCall::DUStateChangeComplete(m) => CpeMessage::DUStateChangeComplete(m),
            CpeCall::AutonomousDUStateChangeComplete(m) => {
                CpeMessage::AutonomousDUStateChangeComplete(m)
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            CpeCall::TransferComplete(_) => "TransferComplete",
            CpeCall::DUStateChangeComplete(_) => "DUStateChangeComplete",
            CpeCall::AutonomousDUStateChangeComplete(_) => "AutonomousDUStateChangeComplete",
        }
    }

    /// Whether `m` answers this request. Matched by family: one ACS is known to answer a
    /// TransferComplete with the autonomous variant's response.
    fn answered_by(&self, m: &AcsMessage) -> bool {
        match self {
            CpeCall::TransferComplete(_) => matches!(
                m,
                AcsMessage::TransferCompleteResponse
                    | AcsMessage::AutonomousTransferCompleteResponse
            ),
            CpeCall::DUStateChangeComplete(_) | CpeCall::AutonomousDUStateChangeComplete(_) => {
                matches!(
                    m,
                    AcsMessage::DUStateChangeCompleteResponse
                        | AcsMessage::AutonomousDUStateChangeCompleteResponse
                )
            }
        }
    }
}

/// Why a session failed, as far as the message flow can tell (transport errors are the
/// driver's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// The ACS answered with an HTTP status other than 200 / 204.
    Status(u16),
    /// A malformed, unexpected or refused message.
    Protocol(String),
    /// The version negotiation failed: the ACS chose a version cwmpd does not speak, or refused
    /// the offer with fault 8006. The driver forgets what it remembered of the ACS's version.
    Version(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Status(s) => write!(f, "ACS answered HTTP {s}"),
            ExchangeError::Protocol(m) => write!(f, "protocol error: {m}"),
            ExchangeError::Version(m) => write!(f, "CWMP version negotiation failed: {m}"),
        }
    }
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// POST this body (empty: the empty POST) and pass the answer to
    /// [`Exchange::on_response`].
    Post(Vec<u8>),
    /// The ACS answered the Inform: the events and changes it carried are delivered. `version`
    /// is the CWMP version the ACS chose for the session.
    InformDelivered { version: CwmpVersion },
    /// The ACS acknowledged the CPE request the driver keyed `id`.
    Delivered(u64),
    /// Serve this request and pass the response envelope to [`Exchange::served`].
    Serve(Box<Envelope<AcsRequest>>),
    /// The session ended cleanly.
    Done,
    /// The session failed.
    Failed(ExchangeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The Inform was posted; waiting for the InformResponse.
    Inform,
    /// The first of `pending` was posted (tries so far).
    CpeCall { tries: u32 },
    /// The empty POST or a response was posted; waiting for the ACS's next request.
    Requests,
    /// A request is being served by the driver.
    Serving,
    /// Finished (Done or Failed was returned).
    Over,
}

/// The message flow of one session.
#[derive(Debug)]
pub struct Exchange {
    state: State,
    /// The session's CWMP version (offered until the InformResponse, then the ACS's choice).
    version: CwmpVersion,
    /// Its namespace.
    ns: CwmpNs,
    /// The CPE's requests to deliver: (the driver's key, message).
    pending: VecDeque<(u64, CpeCall)>,
    /// The CPE's requests were held back by HoldRequests on the InformResponse.
    held: bool,
    exchanges: usize,
    id_counter: u64,
    out: VecDeque<Step>,
}

impl Exchange {
    /// Starts a session with `inform` (its cwmp:ID, namespace and version headers are set
    /// here) and the CPE's requests waiting for delivery, in order. `offer` is the CWMP version
    /// the Inform is written in (1.4 carries `SupportedCWMPVersions`). `id_counter` numbers the
    /// CPE's messages (`cwmpd-N`); read it back with [`Self::id_counter`].
    pub fn new(
        inform: Envelope<CpeMessage>,
        calls: Vec<(u64, CpeCall)>,
        id_counter: u64,
        offer: CwmpVersion,
    ) -> Exchange {
        let mut x = Exchange {
            state: State::Inform,
            version: offer,
            ns: offer.ns(),
            pending: calls.into(),
            held: false,
            exchanges: 0,
            id_counter,
            out: VecDeque::new(),
        };
        let id = x.next_id();
        let mut inform = inform.with_id(id).with_ns(offer.ns());
        // SupportedCWMPVersions exists from cwmp-1-4.xsd on; SessionTimeout is not sent.
        inform.supported_cwmp_versions =
            (offer >= CwmpVersion::V1_4).then(|| CwmpVersion::SUPPORTED_LIST.to_string());
        inform.session_timeout = None;
        inform.use_cwmp_version = None;
        let mut body = Vec::with_capacity(4096);
        soap::emit_cpe(&inform, &mut body);
        x.out.push_back(Step::Post(body));
        x
    }

    /// The message counter after this session's messages.
    pub fn id_counter(&self) -> u64 {
        self.id_counter
    }

    /// The session's namespace (the offer's until the Inform was answered).
    pub fn ns(&self) -> CwmpNs {
        self.ns
    }

    /// The session's CWMP version (the offer until the Inform was answered).
    pub fn version(&self) -> CwmpVersion {
        self.version
    }

    fn next_id(&mut self) -> String {
        self.id_counter += 1;
        format!("cwmpd-{}", self.id_counter)
    }

    /// The next thing to do. After `Post` and `Serve` the driver must answer (with
    /// [`Self::on_response`] / [`Self::served`]) before polling again; `Done`/`Failed` end it.
    pub fn poll(&mut self) -> Step {
        match self.out.pop_front() {
            Some(s) => s,
            // Waiting for the driver: nothing new (a driver bug if it polls here).
            None => Step::Failed(ExchangeError::Protocol("no step pending".into())),
        }
    }

    fn fail(&mut self, e: ExchangeError) {
        self.state = State::Over;
        self.out.push_back(Step::Failed(e));
    }

    fn done(&mut self) {
        self.state = State::Over;
        self.out.push_back(Step::Done);
    }

    /// Posts the next CPE request, or the empty POST when none is left.
    fn next_request_or_empty(&mut self) {
        if self.held {
            self.post(Vec::new());
            self.state = State::Requests;
            return;
        }
        match self.pending.front().cloned() {
            Some((_, call)) => self.post_call(call, 1),
            None => {
                self.post(Vec::new());
                self.state = State::Requests;
            }
        }
    }

    fn post_call(&mut self, call: CpeCall, tries: u32) {
        let id = self.next_id();
        let env = Envelope::new(call.message()).with_id(id).with_ns(self.ns);
        let mut body = Vec::with_capacity(1024);
        soap::emit_cpe(&env, &mut body);
        self.post(body);
        self.state = State::CpeCall { tries };
    }

    fn post(&mut self, body: Vec<u8>) {
        self.exchanges += 1;
        if self.exchanges > MAX_EXCHANGES {
            self.fail(ExchangeError::Protocol("session too long".into()));
        } else {
            self.out.push_back(Step::Post(body));
        }
    }

    /// The ACS's answer to the last POST.
    pub fn on_response(&mut self, status: u16, body: &[u8]) {
        let empty = status == 204 || (status == 200 && soap::is_empty_body(body));
        match self.state {
            State::Inform => {
                if status != 200 {
                    return self.fail(ExchangeError::Status(status));
                }
                match soap::parse_acs_message(body) {
                    Ok(env) => match env.body {
                        AcsMessage::InformResponse { .. } => {
                            let version = match env.use_cwmp_version.as_deref() {
                                None => CwmpVersion::of_ns(env.ns),
                                Some(v) => match CwmpVersion::parse(v) {
                                    Some(v) => v,
                                    None => {
                                        return self.fail(ExchangeError::Version(format!(
                                            "UseCWMPVersion {v:?} is none of {}",
                                            CwmpVersion::SUPPORTED_LIST
                                        )));
                                    }
                                },
                            };
                            self.version = version;
                            self.ns = version.ns();
                            self.held = env.hold_requests == Some(true);
                            self.out.push_back(Step::InformDelivered { version });
                            self.next_request_or_empty();
                        }
                        AcsMessage::Fault(f) if f.code == 8006 => {
                            self.fail(ExchangeError::Version(format!(
                                "ACS answered the Inform of CWMP {} with fault 8006 {}",
                                self.version, f.string
                            )))
                        }
                        AcsMessage::Fault(f) => self.fail(ExchangeError::Protocol(format!(
                            "ACS answered the Inform with fault {} {}",
                            f.code, f.string
                        ))),
                        other => self.fail(ExchangeError::Protocol(format!(
                            "expected InformResponse, got {}",
                            other.method_name()
                        ))),
                    },
                    Err(e) => self.fail(ExchangeError::Protocol(format!("InformResponse: {e}"))),
                }
            }
            State::CpeCall { tries } => {
                if status != 200 {
                    return self.fail(ExchangeError::Status(status));
                }
                let Some((key, call)) = self.pending.front().cloned() else {
                    return self.fail(ExchangeError::Protocol("no request pending".into()));
                };
                let name = call.name();
                match soap::parse_acs_message(body).map(|e| e.body) {
                    Ok(m) if call.answered_by(&m) => {
                        self.pending.pop_front();
                        self.out.push_back(Step::Delivered(key));
                        self.next_request_or_empty();
                    }
                    Ok(AcsMessage::Fault(f)) if f.code == 8005 && tries < TC_TRIES => {
                        self.post_call(call, tries + 1);
                    }
                    Ok(AcsMessage::Fault(f)) => self.fail(ExchangeError::Protocol(format!(
                        "ACS answered {name} with fault {} {}",
                        f.code, f.string
                    ))),
                    Ok(other) => self.fail(ExchangeError::Protocol(format!(
                        "expected {name}Response, got {}",
                        other.method_name()
                    ))),
                    Err(e) => self.fail(ExchangeError::Protocol(format!("{name}Response: {e}"))),
                }
            }
            State::Requests => {
                if empty {
                    // The ACS has no more requests and no longer holds ours (an empty answer
                    // carries no HoldRequests): requests held back go now, then a new empty
                    // POST (§3.7.1.4: the session ends when neither side has requests left).
                    if self.held && !self.pending.is_empty() {
                        self.held = false;
                        return self.next_request_or_empty();
                    }
                    return self.done();
                }
                if status != 200 {
                    return self.fail(ExchangeError::Status(status));
                }
                self.on_request(body);
            }
            State::Serving | State::Over => {}
        }
    }

    /// An ACS message in answer to the empty POST or to a response of ours.
    fn on_request(&mut self, body: &[u8]) {
        match soap::parse_acs_message(body) {
            Ok(env) => match env.body {
                AcsMessage::Request(req) => {
                    let env = Envelope {
                        id: env.id,
                        hold_requests: None,
                        session_timeout: None,
                        supported_cwmp_versions: None,
                        use_cwmp_version: None,
                        // Read and answered in the session's version, whatever namespace the
                        // request carries (a method that version lacks gets 9000).
                        ns: self.ns,
                        body: req,
                    };
                    if env.ns.has_cpe_method(env.body.method_name()) {
                        self.state = State::Serving;
                        self.out.push_back(Step::Serve(Box::new(env)));
                    } else {
                        let fe = env.header().map(|_| {
                            CpeMessage::Fault(Fault::new(cpe_fault::METHOD_NOT_SUPPORTED))
                        });
                        let mut out = Vec::new();
                        soap::emit_cpe(&fe, &mut out);
                        self.post(out);
                    }
                }
                // A response or fault where a request was due: ignored, as the ACS's empty
                // answer would be awaited anyway (the next POST is empty).
                _ => self.post(Vec::new()),
            },
            Err(ParseError::MustUnderstand { id, header }) => {
                // SOAP 1.1 §4.2.3: not processed, answered with a MustUnderstand fault.
                let mut h = Envelope::new(()).with_ns(self.ns);
                h.id = id;
                let mut out = Vec::new();
                soap::emit_must_understand(&h, &header, &mut out);
                self.post(out);
            }
            Err(e) => match e.cpe_fault() {
                Some(f) => {
                    let mut fe = Envelope::new(CpeMessage::Fault(f)).with_ns(self.ns);
                    fe.id = e.id().map(str::to_string);
                    let mut out = Vec::new();
                    soap::emit_cpe(&fe, &mut out);
                    self.post(out);
                }
                None => self.fail(ExchangeError::Protocol(format!("{e}"))),
            },
        }
    }

    /// The response envelope to the request of the last [`Step::Serve`].
    pub fn served(&mut self, response: Vec<u8>) {
        if self.state == State::Serving {
            self.state = State::Requests;
            self.post(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cwmp::soap::{DeviceId, DuOpResult, DuState, Inform, TransferFault};

    const V14: CwmpVersion = CwmpVersion::V1_4;

    fn inform() -> Envelope<CpeMessage> {
        Envelope::new(CpeMessage::Inform(Inform {
            device_id: DeviceId {
                manufacturer: "M".into(),
                oui: "00D09E".into(),
                product_class: "STB".into(),
                serial_number: "1".into(),
            },
            events: vec![],
            max_envelopes: 1,
            current_time: "2026-01-01T00:00:00Z".into(),
            retry_count: 0,
            params: vec![],
        }))
    }

    fn tc(key: &str) -> CpeCall {
        CpeCall::TransferComplete(TransferComplete {
            command_key: key.into(),
            fault: TransferFault {
                code: 0,
                string: String::new(),
            },
            start_time: "2026-01-01T00:00:00Z".into(),
            complete_time: "2026-01-01T00:00:01Z".into(),
        })
    }

    fn du(key: &str) -> CpeCall {
        CpeCall::DUStateChangeComplete(DUStateChangeComplete {
            command_key: key.into(),
            results: vec![DuOpResult {
                uuid: "6ba7b810-9dad-11d1-80b4-00c04fd430c8".into(),
                deployment_unit_ref: "Device.SoftwareModules.DeploymentUnit.1".into(),
                version: "1.0".into(),
                current_state: DuState::Installed,
                resolved: true,
                execution_unit_refs: Vec::new(),
                start_time: "2026-01-01T00:00:00Z".into(),
                complete_time: "2026-01-01T00:00:01Z".into(),
                fault: TransferFault {
                    code: 0,
                    string: String::new(),
                },
            }],
        })
    }

    /// An ACS message in namespace `ns` with optional HoldRequests.
    fn acs(body: AcsMessage, ns: CwmpNs, hold: Option<bool>) -> Vec<u8> {
        let mut env = Envelope::new(body).with_id("acs-1").with_ns(ns);
        env.hold_requests = hold;
        let mut out = Vec::new();
        soap::emit_acs(&env, &mut out);
        out
    }

    fn inform_response(hold: Option<bool>) -> Vec<u8> {
        acs(
            AcsMessage::InformResponse { max_envelopes: 1 },
            CwmpNs::Cwmp12,
            hold,
        )
    }

    fn post(x: &mut Exchange) -> Vec<u8> {
        match x.poll() {
            Step::Post(b) => b,
            other => panic!("expected a POST, got {other:?}"),
        }
    }

    fn method(body: &[u8]) -> String {
        match soap::parse_cpe_message(body) {
            Ok(e) => e.body.method_name().to_string(),
            Err(e) => panic!("CPE message does not parse: {e}"),
        }
    }

    /// TR-069 §3.7.1: Inform, InformResponse, TransferComplete, empty POST, 204.
    #[test]
    fn inform_transfer_complete_empty_post_end() {
        let mut x = Exchange::new(inform(), vec![(7, tc("fw"))], 0, V14);
        assert_eq!(method(&post(&mut x)), "Inform");
        x.on_response(200, &inform_response(None));
        assert_eq!(
            x.poll(),
            Step::InformDelivered {
                version: CwmpVersion::V1_2
            }
        );
        assert_eq!(method(&post(&mut x)), "TransferComplete");
        x.on_response(
            200,
            &acs(AcsMessage::TransferCompleteResponse, CwmpNs::Cwmp12, None),
        );
        assert_eq!(x.poll(), Step::Delivered(7));
        assert!(post(&mut x).is_empty(), "the empty POST");
        x.on_response(204, b"");
        assert_eq!(x.poll(), Step::Done);
        assert_eq!(x.id_counter(), 2);
    }

    /// A.4.2.3: a DUStateChangeComplete after a TransferComplete, each acknowledged by its own
    /// response; a TransferCompleteResponse does not acknowledge a DUStateChangeComplete.
    #[test]
    fn transfer_and_du_state_change_completes_in_order() {
        let mut x = Exchange::new(inform(), vec![(1, tc("fw")), (9, du("apps"))], 0, V14);
        post(&mut x);
        x.on_response(200, &inform_response(None));
        assert!(matches!(x.poll(), Step::InformDelivered { .. }));
        assert_eq!(method(&post(&mut x)), "TransferComplete");
        x.on_response(
            200,
            &acs(AcsMessage::TransferCompleteResponse, CwmpNs::Cwmp12, None),
        );
        assert_eq!(x.poll(), Step::Delivered(1));
        assert_eq!(method(&post(&mut x)), "DUStateChangeComplete");
        x.on_response(
            200,
            &acs(
                AcsMessage::DUStateChangeCompleteResponse,
                CwmpNs::Cwmp12,
                None,
            ),
        );
        assert_eq!(x.poll(), Step::Delivered(9));
        assert!(post(&mut x).is_empty());
        x.on_response(204, b"");
        assert_eq!(x.poll(), Step::Done);

        let mut x = Exchange::new(inform(), vec![(9, du("apps"))], 0, V14);
        post(&mut x);
        x.on_response(200, &inform_response(None));
        x.poll();
        assert_eq!(method(&post(&mut x)), "DUStateChangeComplete");
        x.on_response(
            200,
            &acs(AcsMessage::TransferCompleteResponse, CwmpNs::Cwmp12, None),
        );
        assert!(
            matches!(x.poll(), Step::Failed(ExchangeError::Protocol(m)) if m.contains("DUStateChangeCompleteResponse")),
            "the wrong response does not acknowledge it"
        );
    }

    /// §3.7.1.4 HoldRequests: no CPE request while held; held requests go once the ACS's
    /// empty answer no longer holds them, then a new empty POST ends the session.
    #[test]
    fn hold_requests_defers_transfer_complete_until_released() {
        let mut x = Exchange::new(inform(), vec![(1, tc("a"))], 0, V14);
        post(&mut x);
        x.on_response(200, &inform_response(Some(true)));
        assert!(matches!(x.poll(), Step::InformDelivered { .. }));
        assert!(post(&mut x).is_empty(), "held: the empty POST instead");
        // The ACS sends a request (still holding) and gets its response.
        x.on_response(
            200,
            &acs(
                AcsMessage::Request(AcsRequest::GetRPCMethods),
                CwmpNs::Cwmp12,
                Some(true),
            ),
        );
        let Step::Serve(env) = x.poll() else {
            panic!("expected Serve")
        };
        assert_eq!(env.body, AcsRequest::GetRPCMethods);
        x.served(b"<response/>".to_vec());
        assert_eq!(post(&mut x), b"<response/>");
        x.on_response(204, b"");
        assert_eq!(method(&post(&mut x)), "TransferComplete");
        x.on_response(
            200,
            &acs(AcsMessage::TransferCompleteResponse, CwmpNs::Cwmp12, None),
        );
        assert_eq!(x.poll(), Step::Delivered(1));
        assert!(post(&mut x).is_empty());
        x.on_response(204, b"");
        assert_eq!(x.poll(), Step::Done);
    }

    /// A.3.3.2: 8005 asks for the TransferComplete again (bounded); another fault fails.
    #[test]
    fn transfer_complete_retry_and_fault() {
        let mut x = Exchange::new(inform(), vec![(3, tc("a"))], 0, V14);
        post(&mut x);
        x.on_response(200, &inform_response(None));
        x.poll();
        let retry = acs(AcsMessage::Fault(Fault::new(8005)), CwmpNs::Cwmp12, None);
        for _ in 1..TC_TRIES {
            assert_eq!(method(&post(&mut x)), "TransferComplete");
            x.on_response(200, &retry);
        }
        assert_eq!(method(&post(&mut x)), "TransferComplete");
        x.on_response(200, &retry);
        assert!(matches!(x.poll(), Step::Failed(ExchangeError::Protocol(_))));
    }

    /// §3.7.1.4: an HTTP error or a malformed answer fails the session.
    #[test]
    fn http_errors_and_garbage_fail_the_session() {
        let mut x = Exchange::new(inform(), vec![], 0, V14);
        post(&mut x);
        x.on_response(503, b"");
        assert_eq!(x.poll(), Step::Failed(ExchangeError::Status(503)));
        let mut x = Exchange::new(inform(), vec![], 0, V14);
        post(&mut x);
        x.on_response(200, b"<not-soap/>");
        assert!(matches!(x.poll(), Step::Failed(ExchangeError::Protocol(_))));
    }

    /// A method the ACS's version lacks gets 9000 (cwmp-1-0 has no ScheduleDownload); an
    /// unknown mandatory header a MustUnderstand fault; bad arguments 9003 — each echoing the
    /// request's cwmp:ID, and the session goes on.
    #[test]
    fn requests_that_cannot_be_served_get_faults() {
        let mut x = Exchange::new(inform(), vec![], 0, V14);
        post(&mut x);
        x.on_response(
            200,
            &acs(
                AcsMessage::InformResponse { max_envelopes: 1 },
                CwmpNs::Cwmp10,
                None,
            ),
        );
        assert_eq!(
            x.poll(),
            Step::InformDelivered {
                version: CwmpVersion::V1_0
            }
        );
        post(&mut x);
        let sd = AcsRequest::ScheduleDownload(Default::default());
        x.on_response(200, &acs(AcsMessage::Request(sd), CwmpNs::Cwmp10, None));
        let f = post(&mut x);
        let env = soap::parse_cpe_message(&f).unwrap();
        assert_eq!(env.id.as_deref(), Some("acs-1"));
        assert!(matches!(env.body, CpeMessage::Fault(ref f) if f.code == 9000));
        let mu = br#"<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cwmp="urn:dslforum-org:cwmp-1-0"><soap-env:Header><cwmp:ID soap-env:mustUnderstand="1">m1</cwmp:ID><x:Y xmlns:x="urn:x" soap-env:mustUnderstand="1"/></soap-env:Header><soap-env:Body><cwmp:GetRPCMethods/></soap-env:Body></soap-env:Envelope>"#;
        x.on_response(200, mu);
        let f = String::from_utf8(post(&mut x)).unwrap();
        assert!(f.contains("MustUnderstand") && f.contains(">m1<"), "{f}");
        let bad = br#"<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cwmp="urn:dslforum-org:cwmp-1-0"><soap-env:Header><cwmp:ID soap-env:mustUnderstand="1">b1</cwmp:ID></soap-env:Header><soap-env:Body><cwmp:Reboot><CommandKey>kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk</CommandKey></cwmp:Reboot></soap-env:Body></soap-env:Envelope>"#;
        x.on_response(200, bad);
        let env = soap::parse_cpe_message(&post(&mut x)).unwrap();
        assert!(matches!(env.body, CpeMessage::Fault(ref f) if f.code == 9003));
        x.on_response(200, b"");
        assert_eq!(x.poll(), Step::Done);
    }

    /// The Inform offered as 1.4 goes in cwmp-1-2 with SupportedCWMPVersions (mustUnderstand
    /// 0); the ACS's UseCWMPVersion decides the session's version.
    #[test]
    fn offer_1_4_and_use_cwmp_version() {
        let mut x = Exchange::new(inform(), vec![], 0, V14);
        let b = String::from_utf8(post(&mut x)).unwrap();
        assert!(
            b.contains("xmlns:cwmp=\"urn:dslforum-org:cwmp-1-2\""),
            "{b}"
        );
        assert!(
            b.contains("<cwmp:SupportedCWMPVersions soap-env:mustUnderstand=\"0\">1.0,1.1,1.2,1.3,1.4</cwmp:SupportedCWMPVersions>"),
            "{b}"
        );
        let mut ir = Envelope::new(AcsMessage::InformResponse { max_envelopes: 1 }).with_id("i");
        ir.use_cwmp_version = Some("1.4".into());
        let mut out = Vec::new();
        soap::emit_acs(&ir, &mut out);
        x.on_response(200, &out);
        assert_eq!(x.poll(), Step::InformDelivered { version: V14 });
        assert_eq!(x.version(), V14);
        assert!(post(&mut x).is_empty());
    }

    /// An ACS answering in cwmp-1-0 (no UseCWMPVersion) gets 1-0 for the rest of the session:
    /// the TransferComplete in 1-0, a 1.2-only request in another namespace refused with 9000.
    #[test]
    fn acs_answering_in_1_0_gets_1_0() {
        let mut x = Exchange::new(inform(), vec![(4, tc("a"))], 0, V14);
        post(&mut x);
        x.on_response(
            200,
            &acs(
                AcsMessage::InformResponse { max_envelopes: 1 },
                CwmpNs::Cwmp10,
                None,
            ),
        );
        assert_eq!(
            x.poll(),
            Step::InformDelivered {
                version: CwmpVersion::V1_0
            }
        );
        let tc = soap::parse_cpe_message(&post(&mut x)).unwrap();
        assert_eq!(tc.ns, CwmpNs::Cwmp10);
        x.on_response(
            200,
            &acs(AcsMessage::TransferCompleteResponse, CwmpNs::Cwmp10, None),
        );
        assert_eq!(x.poll(), Step::Delivered(4));
        post(&mut x);
        let cd = AcsRequest::CancelTransfer {
            command_key: "k".into(),
        };
        x.on_response(200, &acs(AcsMessage::Request(cd), CwmpNs::Cwmp12, None));
        let f = soap::parse_cpe_message(&post(&mut x)).unwrap();
        assert_eq!(f.ns, CwmpNs::Cwmp10);
        assert!(matches!(f.body, CpeMessage::Fault(ref f) if f.code == 9000));
        // A method 1.0 has, sent in another namespace, is served in 1-0.
        x.on_response(
            200,
            &acs(
                AcsMessage::Request(AcsRequest::GetRPCMethods),
                CwmpNs::Cwmp12,
                None,
            ),
        );
        let Step::Serve(env) = x.poll() else {
            panic!("expected Serve")
        };
        assert_eq!(env.ns, CwmpNs::Cwmp10);
    }

    /// An offer of 1.0 (remembered from an older ACS) is a plain 1-0 Inform.
    #[test]
    fn offer_1_0_has_no_version_header() {
        let mut x = Exchange::new(inform(), vec![], 0, CwmpVersion::V1_0);
        let b = String::from_utf8(post(&mut x)).unwrap();
        assert!(b.contains("urn:dslforum-org:cwmp-1-0"), "{b}");
        assert!(!b.contains("SupportedCWMPVersions"), "{b}");
    }

    /// UseCWMPVersion naming a version cwmpd does not speak, or fault 8006 to the Inform,
    /// fails the negotiation.
    #[test]
    fn bad_version_choice_fails() {
        for v in ["2.0", "1.5", "", "one"] {
            let mut x = Exchange::new(inform(), vec![], 0, V14);
            post(&mut x);
            let mut ir =
                Envelope::new(AcsMessage::InformResponse { max_envelopes: 1 }).with_id("i");
            ir.use_cwmp_version = Some(v.into());
            let mut out = Vec::new();
            soap::emit_acs(&ir, &mut out);
            x.on_response(200, &out);
            assert!(
                matches!(x.poll(), Step::Failed(ExchangeError::Version(_))),
                "{v}"
            );
        }
        let mut x = Exchange::new(inform(), vec![], 0, V14);
        post(&mut x);
        x.on_response(
            200,
            &acs(AcsMessage::Fault(Fault::new(8006)), CwmpNs::Cwmp12, None),
        );
        assert!(matches!(x.poll(), Step::Failed(ExchangeError::Version(_))));
    }

    /// A runaway ACS cannot keep the session forever.
    #[test]
    fn session_length_is_bounded() {
        let mut x = Exchange::new(inform(), vec![], 0, V14);
        post(&mut x);
        x.on_response(200, &inform_response(None));
        x.poll();
        let req = acs(
            AcsMessage::Request(AcsRequest::GetRPCMethods),
            CwmpNs::Cwmp12,
            None,
        );
        let mut n = 0;
        loop {
            match x.poll() {
                Step::Post(_) => x.on_response(200, &req),
                Step::Serve(_) => x.served(b"r".to_vec()),
                Step::Failed(e) => {
                    assert_eq!(e, ExchangeError::Protocol("session too long".into()));
                    break;
                }
                other => panic!("{other:?}"),
            }
            n += 1;
            assert!(n < 3 * MAX_EXCHANGES, "not bounded");
        }
    }
}
