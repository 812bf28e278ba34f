//! Tests of `cwmp_testacs`, driven by `cwmpd::net::acs::AcsClient` playing
//! a fake CPE (so both modules are exercised together).

use std::time::Duration;

use cwmp_testacs::{AcsAuth, AcsOptions, TestAcs, spawn_in_thread};
use cwmpd::cwmp::soap::{
    AcsMessage, AcsRequest, CpeMessage, CwmpNs, DeviceId, Envelope, EventStruct, Inform,
    ParamValue, TransferComplete, emit_cpe, parse_acs_message,
};
use cwmpd::net::acs::{AcsClient, AcsError, AcsResponse, TlsSettings};

const T: Duration = Duration::from_secs(5);

fn inform() -> Inform {
    Inform {
        device_id: DeviceId {
            manufacturer: "Example".into(),
            oui: "00D09E".into(),
            product_class: "STB".into(),
            serial_number: "SN42".into(),
        },
        events: vec![EventStruct::new("1 BOOT", "")],
        max_envelopes: 1,
        current_time: "2024-05-01T12:00:00Z".into(),
        retry_count: 0,
        params: vec![ParamValue::new(
            "Device.DeviceInfo.SoftwareVersion",
            "1.0",
            "xsd:string",
        )],
    }
}

fn emit(msg: CpeMessage, id: &str, ns: CwmpNs) -> Vec<u8> {
    let mut out = Vec::new();
    emit_cpe(&Envelope::new(msg).with_id(id).with_ns(ns), &mut out);
    out
}

fn parse(r: &AcsResponse) -> Envelope<AcsMessage> {
    assert_eq!(r.status, 200, "body: {}", String::from_utf8_lossy(&r.body));
    parse_acs_message(&r.body).unwrap()
}

fn client(url: &str, user: &str, pass: &str) -> AcsClient {
    AcsClient::new(url, user, pass, &TlsSettings::default(), T).unwrap()
}

/// Inform → InformResponse → empty POST → queued GPV → GPV response → 204.
async fn run_gpv_session(acs_url: &str, user: &str, pass: &str) -> Result<(), AcsError> {
    let mut c = client(acs_url, user, pass);
    // The test ACS is plain http: Basic there needs the explicit opt-in (issue #12, 14).
    c.set_allow_basic_over_http(true);
    let r = c
        .post(emit(CpeMessage::Inform(inform()), "inf-1", CwmpNs::Cwmp12))
        .await?;
    let env = parse(&r);
    assert_eq!(env.id.as_deref(), Some("inf-1"));
    assert_eq!(env.ns, CwmpNs::Cwmp12);
    assert_eq!(env.body, AcsMessage::InformResponse { max_envelopes: 1 });

    let r = c.post(Vec::new()).await?;
    let env = parse(&r);
    let id = env.id.clone().unwrap();
    assert_eq!(
        env.body,
        AcsMessage::Request(AcsRequest::GetParameterValues {
            names: vec!["Device.DeviceInfo.".into()]
        })
    );

    let resp = CpeMessage::GetParameterValuesResponse {
        list: vec![ParamValue::new(
            "Device.DeviceInfo.SoftwareVersion",
            "1.0",
            "xsd:string",
        )],
    };
    let r = c.post(emit(resp, &id, CwmpNs::Cwmp12)).await?;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(c.connections(), 1);
    Ok(())
}

fn gpv() -> AcsRequest {
    AcsRequest::GetParameterValues {
        names: vec!["Device.DeviceInfo.".into()],
    }
}

#[tokio::test(flavor = "current_thread")]
async fn full_session_with_queued_gpv() {
    let acs = TestAcs::start(AcsOptions::default()).await.unwrap();
    acs.queue(vec![gpv()]);
    run_gpv_session(&acs.url(), "", "").await.unwrap();
    let s = acs.wait_sessions(1, T).await;
    assert_eq!(s.len(), 1);
    let s = &s[0];
    assert!(s.ended && !s.aborted && s.succeeded(), "{s:?}");
    assert_eq!(s.inform.as_ref().unwrap().device_id.serial_number, "SN42");
    assert_eq!(s.sent, vec![gpv()]);
    assert_eq!(s.received.len(), 1);
    assert_eq!(s.received[0].method_name(), "GetParameterValuesResponse");
    assert_eq!(s.connections, 1);
    assert!(s.cookie_ok);
    assert_eq!(s.statuses, vec![200, 200, 204]);
    assert_eq!(s.empty_posts, 1);
    assert!(s.inform_at.is_some());

    // The queue was claimed by that session: the next one just ends.
    let mut c = client(&acs.url(), "", "");
    let r = c
        .post(emit(CpeMessage::Inform(inform()), "2", CwmpNs::Cwmp12))
        .await
        .unwrap();
    parse(&r);
    assert_eq!(c.post(Vec::new()).await.unwrap().status, 204);
    let s = acs.wait_sessions(2, T).await;
    assert_eq!(s.len(), 2);
    assert!(s[1].succeeded() && s[1].sent.is_empty());
    acs.stop();
}

#[tokio::test(flavor = "current_thread")]
async fn transfer_complete_namespace_and_200_end() {
    let acs = TestAcs::start(AcsOptions {
        end_with_200_empty: true,
        connection_close_on_end: true,
        ..AcsOptions::default()
    })
    .await
    .unwrap();
    acs.queue(vec![AcsRequest::Reboot {
        command_key: "rb".into(),
    }]);
    let mut c = client(&acs.url(), "", "");
    let env = parse(
        &c.post(emit(CpeMessage::Inform(inform()), "a", CwmpNs::Cwmp10))
            .await
            .unwrap(),
    );
    assert_eq!(env.ns, CwmpNs::Cwmp10);
    let tc = CpeMessage::TransferComplete(TransferComplete {
        command_key: "dl".into(),
        start_time: "2024-05-01T12:00:00Z".into(),
        complete_time: "2024-05-01T12:00:01Z".into(),
        ..TransferComplete::default()
    });
    let env = parse(&c.post(emit(tc, "tc-1", CwmpNs::Cwmp10)).await.unwrap());
    assert_eq!(env.body, AcsMessage::TransferCompleteResponse);
    assert_eq!(env.id.as_deref(), Some("tc-1"));
    let env = parse(
        &c.post(emit(CpeMessage::GetRPCMethods, "g", CwmpNs::Cwmp10))
            .await
            .unwrap(),
    );
    assert!(matches!(env.body, AcsMessage::GetRPCMethodsResponse { .. }));
    let env = parse(&c.post(Vec::new()).await.unwrap());
    assert_eq!(env.ns, CwmpNs::Cwmp10);
    assert_eq!(env.body.method_name(), "Reboot");
    let r = c
        .post(emit(
            CpeMessage::RebootResponse,
            env.id.as_deref().unwrap(),
            CwmpNs::Cwmp10,
        ))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.is_empty(), r.connection_close),
        (200, true, true)
    );
    let s = acs.wait_sessions(1, T).await;
    let names: Vec<&str> = s[0].received.iter().map(|m| m.method_name()).collect();
    assert_eq!(
        names,
        ["TransferComplete", "GetRPCMethods", "RebootResponse"]
    );
    assert!(s[0].succeeded());
}

#[tokio::test(flavor = "current_thread")]
async fn digest_auth_on_acs_side() {
    let opts = AcsOptions {
        auth: AcsAuth::Digest {
            user: "cpe".into(),
            pass: "pw".into(),
        },
        ..AcsOptions::default()
    };
    let acs = TestAcs::start(opts).await.unwrap();
    acs.queue(vec![gpv()]);
    run_gpv_session(&acs.url(), "cpe", "pw").await.unwrap();
    let s = acs.wait_sessions(1, T).await;
    assert!(s[0].succeeded(), "{:?}", s[0]);
    assert_eq!(acs.auth_failures(), 0);

    // Wrong password: AuthFailed, nothing recorded but the failure.
    let mut c = client(&acs.url(), "cpe", "bad");
    let e = c
        .post(emit(CpeMessage::Inform(inform()), "1", CwmpNs::Cwmp12))
        .await
        .unwrap_err();
    assert_eq!(e, AcsError::AuthFailed);
    assert_eq!(acs.auth_failures(), 1);
    assert_eq!(acs.sessions().len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn basic_auth_on_acs_side() {
    let opts = AcsOptions {
        auth: AcsAuth::Basic {
            user: "cpe".into(),
            pass: "pw".into(),
        },
        ..AcsOptions::default()
    };
    let acs = TestAcs::start(opts).await.unwrap();
    acs.queue(vec![gpv()]);
    run_gpv_session(&acs.url(), "cpe", "pw").await.unwrap();
    assert!(acs.wait_sessions(1, T).await[0].succeeded());
}

#[tokio::test(flavor = "current_thread")]
async fn inform_status_503() {
    let acs = TestAcs::start(AcsOptions {
        inform_status: Some(503),
        ..AcsOptions::default()
    })
    .await
    .unwrap();
    acs.queue(vec![gpv()]);
    let mut c = client(&acs.url(), "", "");
    let r = c
        .post(emit(CpeMessage::Inform(inform()), "1", CwmpNs::Cwmp12))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.retry_after, r.connection_close),
        (503, Some(60), true)
    );
    let s = acs.wait_sessions(1, T).await;
    assert!(s[0].ended && !s[0].succeeded());
    assert_eq!(s[0].statuses, vec![503]);
    assert!(s[0].inform.is_some());

    // Back to normal: the next session gets InformResponse.
    acs.update_options(|o| o.inform_status = None);
    let mut c = client(&acs.url(), "", "");
    parse(
        &c.post(emit(CpeMessage::Inform(inform()), "2", CwmpNs::Cwmp12))
            .await
            .unwrap(),
    );
    assert_eq!(c.post(Vec::new()).await.unwrap().status, 204);
    assert!(acs.wait_sessions(2, T).await[1].succeeded());
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_message_is_recorded_and_refused() {
    let acs = TestAcs::start(AcsOptions::default()).await.unwrap();
    let mut c = client(&acs.url(), "", "");
    let r = c.post(b"<not-soap>".to_vec()).await.unwrap();
    assert_eq!(r.status, 400);
    let s = acs.wait_sessions(1, T).await;
    assert_eq!(s[0].raw, vec![b"<not-soap>".to_vec()]);
    assert_eq!(s[0].errors.len(), 1);
    assert!(!s[0].succeeded());
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_connection_ends_session_as_aborted() {
    let acs = TestAcs::start(AcsOptions::default()).await.unwrap();
    let mut c = client(&acs.url(), "", "");
    parse(
        &c.post(emit(CpeMessage::Inform(inform()), "1", CwmpNs::Cwmp12))
            .await
            .unwrap(),
    );
    drop(c);
    let s = acs.wait_sessions(1, T).await;
    assert!(s[0].ended && s[0].aborted && !s[0].succeeded());
}

#[test]
fn spawn_in_thread_blocking_api() {
    let acs = spawn_in_thread(AcsOptions::default());
    acs.queue(vec![gpv()]);
    assert!(acs.url().starts_with("http://127.0.0.1:"));
    let url = acs.url();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_gpv_session(&url, "", "")).unwrap();
    });
    let s = acs.wait_sessions(1, T);
    t.join().unwrap();
    assert_eq!(s.len(), 1);
    assert!(s[0].succeeded(), "{:?}", s[0]);
    assert_eq!(s[0].sent, vec![gpv()]);
    // Times out cleanly when nothing more comes.
    let t0 = std::time::Instant::now();
    assert_eq!(acs.wait_sessions(2, Duration::from_millis(200)).len(), 1);
    assert!(t0.elapsed() >= Duration::from_millis(200));
    acs.stop();
}
