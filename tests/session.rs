//! CWMP sessions of the real agent against the project's test ACS: the Inform, every RPC the
//! agent serves on success and fault paths, events across restarts, retries, auth and cookies.

mod common;

use std::time::Duration;

use common::*;
use cwmp_testacs::{AcsAuth, AcsOptions, TestAcsHandle, spawn_in_thread};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, ParamValue, SetAttr};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn config_for(dir: &std::path::Path, acs: &TestAcsHandle, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\n[actions]\nreboot = [\"sh\", \"-c\", \"echo reboot >> {d}/actions.log\"]\n[parameters]\n\"Device.ManagementServer.URL\" = \"{url}\"\n\"Device.ManagementServer.Username\" = \"cpe\"\n\"Device.ManagementServer.Password\" = \"cpe-pass\"\n\"Device.DeviceInfo.Manufacturer\" = \"Test Co\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.ProductClass\" = \"STB\"\n\"Device.DeviceInfo.SerialNumber\" = \"SN0001\"\n{extra}",
            d = dir.display(),
            url = acs.url()
        ),
    )
}

#[test]
fn boot_session_carries_bootstrap_deviceid_and_forced_params() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-boot");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    let s = acs.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    let ev = events(&s[0]);
    assert!(
        ev.contains(&"0 BOOTSTRAP".into()) && ev.contains(&"1 BOOT".into()),
        "{ev:?}"
    );
    let inf = s[0].inform.as_ref().unwrap();
    assert_eq!(inf.device_id.oui, "00D09E");
    assert_eq!(inf.device_id.serial_number, "SN0001");
    assert_eq!(inf.device_id.manufacturer, "Test Co");
    assert_eq!(inf.retry_count, 0);
    assert!(inform_param(&s[0], "Device.RootDataModelVersion").is_some());
    assert!(inform_param(&s[0], "Device.DeviceInfo.SoftwareVersion").is_some());
    assert!(inform_param(&s[0], "Device.ManagementServer.ParameterKey").is_some());
    assert!(s[0].cookie_ok, "cookie returned for the session");
    assert_eq!(s[0].connections, 1, "one keep-alive connection");
    // A restart: BOOT only, no BOOTSTRAP.
    a.stop();
    let _a = Agent::start(&config_for(d.path(), &acs, ""));
    let s = acs.wait_sessions(2, WAIT);
    let ev = events(&s[1]);
    assert_eq!(ev, vec!["1 BOOT".to_string()], "{ev:?}");
    common::xsd::validate_sessions(
        "boot_session_carries_bootstrap_deviceid_and_forced_params",
        &acs.sessions(),
    );
}

#[test]
fn every_store_rpc_on_success_and_fault_paths() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-rpc");
    acs.queue(vec![
        AcsRequest::GetRPCMethods,
        AcsRequest::GetParameterNames {
            path: String::new(),
            next_level: true,
        },
        AcsRequest::GetParameterNames {
            path: "Device.XMPP.".into(),
            next_level: false,
        },
        AcsRequest::GetParameterValues {
            names: vec!["Device.DeviceInfo.".into()],
        },
        AcsRequest::GetParameterValues {
            names: vec!["Device.NoSuch.".into()],
        },
        AcsRequest::SetParameterValues {
            list: vec![
                ParamValue {
                    name: "Device.ManagementServer.PeriodicInformInterval".into(),
                    value: "1200".into(),
                    xsi_type: Some("xsd:unsignedInt".into()),
                },
                ParamValue {
                    name: "Device.ManagementServer.PeriodicInformTime".into(),
                    value: "2026-01-02T03:04:05.000Z".into(),
                    xsi_type: Some("xsd:dateTime".into()),
                },
                ParamValue {
                    name: "Device.ManagementServer.PeriodicInformEnable".into(),
                    value: "1".into(),
                    xsi_type: Some("xsd:boolean".into()),
                },
            ],
            parameter_key: "key-1".into(),
        },
        AcsRequest::SetParameterValues {
            list: vec![
                ParamValue {
                    name: "Device.ManagementServer.PeriodicInformInterval".into(),
                    value: "0".into(),
                    xsi_type: None,
                },
                ParamValue {
                    name: "Device.DeviceInfo.Manufacturer".into(),
                    value: "X".into(),
                    xsi_type: None,
                },
                ParamValue {
                    name: "Device.ManagementServer.CWMPRetryMinimumWaitInterval".into(),
                    value: "abc".into(),
                    xsi_type: None,
                },
                ParamValue {
                    name: "Device.ManagementServer.STUNServerPort".into(),
                    value: "1".into(),
                    xsi_type: Some("xsd:boolean".into()),
                },
            ],
            parameter_key: "key-2".into(),
        },
        AcsRequest::SetParameterAttributes {
            list: vec![SetAttr {
                name: "Device.DeviceInfo.ProvisioningCode".into(),
                notification_change: false,
                notification: None,
                access_list_change: false,
                access_list: vec![],
            }],
        },
        AcsRequest::SetParameterAttributes {
            list: vec![SetAttr {
                name: "Device.ManagementServer.URL".into(),
                notification_change: true,
                notification: Some(1),
                access_list_change: false,
                access_list: vec![],
            }],
        },
        AcsRequest::SetParameterAttributes {
            list: vec![SetAttr {
                name: "Device.DeviceInfo.UpTime".into(),
                notification_change: true,
                notification: Some(2),
                access_list_change: false,
                access_list: vec![],
            }],
        },
        AcsRequest::GetParameterAttributes {
            names: vec!["Device.ManagementServer.URL".into()],
        },
        AcsRequest::AddObject {
            object_name: "Device.XMPP.Connection.".into(),
            parameter_key: "key-3".into(),
        },
        AcsRequest::AddObject {
            object_name: "Device.DeviceInfo.".into(),
            parameter_key: "key-x".into(),
        },
        AcsRequest::DeleteObject {
            object_name: "Device.XMPP.Connection.1.".into(),
            parameter_key: "key-4".into(),
        },
        AcsRequest::DeleteObject {
            object_name: "Device.XMPP.Connection.7.".into(),
            parameter_key: "key-y".into(),
        },
        AcsRequest::GetQueuedTransfers,
        AcsRequest::GetParameterValues {
            names: vec![
                "Device.ManagementServer.ParameterKey".into(),
                "Device.ManagementServer.Password".into(),
            ],
        },
    ]);
    let _a = Agent::start(&config_for(d.path(), &acs, ""));
    let s = acs.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    let r = &s[0].received;
    assert_eq!(r.len(), 17, "{r:#?}");
    match &r[0] {
        CpeMessage::GetRPCMethodsResponse { methods } => {
            assert!(methods.contains(&"SetParameterValues".into()))
        }
        m => panic!("{m:?}"),
    }
    match &r[1] {
        CpeMessage::GetParameterNamesResponse { list } => {
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].name, "Device.");
        }
        m => panic!("{m:?}"),
    }
    match &r[2] {
        CpeMessage::GetParameterNamesResponse { list } => {
            assert_eq!(list[0].name, "Device.XMPP.");
            assert!(
                list.iter()
                    .any(|p| p.name == "Device.XMPP.Connection." && p.writable)
            );
        }
        m => panic!("{m:?}"),
    }
    match &r[3] {
        CpeMessage::GetParameterValuesResponse { list } => {
            let sn = list
                .iter()
                .find(|p| p.name == "Device.DeviceInfo.SerialNumber")
                .unwrap();
            assert_eq!(sn.value, "SN0001");
            assert_eq!(sn.xsi_type.as_deref(), Some("xsd:string"));
            let up = list
                .iter()
                .find(|p| p.name == "Device.DeviceInfo.UpTime")
                .unwrap();
            assert_eq!(up.xsi_type.as_deref(), Some("xsd:unsignedInt"));
        }
        m => panic!("{m:?}"),
    }
    match &r[4] {
        CpeMessage::Fault(f) => assert_eq!(f.code, 9005),
        m => panic!("{m:?}"),
    }
    match &r[5] {
        CpeMessage::SetParameterValuesResponse { status } => assert_eq!(*status, 0),
        m => panic!("{m:?}"),
    }
    match &r[6] {
        CpeMessage::Fault(f) => {
            assert_eq!(f.code, 9003);
            let mut per: Vec<(String, u32)> = f
                .set_parameter_values_faults
                .iter()
                .map(|x| (x.name.clone(), x.code))
                .collect();
            per.sort();
            assert_eq!(
                per,
                vec![
                    ("Device.DeviceInfo.Manufacturer".into(), 9008),
                    (
                        "Device.ManagementServer.CWMPRetryMinimumWaitInterval".into(),
                        9006
                    ),
                    (
                        "Device.ManagementServer.PeriodicInformInterval".into(),
                        9007
                    ),
                    ("Device.ManagementServer.STUNServerPort".into(), 9006),
                ]
            );
        }
        m => panic!("{m:?}"),
    }
    assert!(
        matches!(r[7], CpeMessage::SetParameterAttributesResponse),
        "empty Notification with NotificationChange=false accepted"
    );
    assert!(matches!(r[8], CpeMessage::SetParameterAttributesResponse));
    match &r[9] {
        CpeMessage::Fault(f) => assert_eq!(f.code, 9009, "active notification on UpTime is denied"),
        m => panic!("{m:?}"),
    }
    match &r[10] {
        CpeMessage::GetParameterAttributesResponse { list } => assert_eq!(list[0].notification, 1),
        m => panic!("{m:?}"),
    }
    match &r[11] {
        CpeMessage::AddObjectResponse {
            instance_number,
            status,
        } => assert_eq!((*instance_number, *status), (1, 0)),
        m => panic!("{m:?}"),
    }
    match &r[12] {
        CpeMessage::Fault(f) => assert_eq!(f.code, 9005),
        m => panic!("{m:?}"),
    }
    assert!(
        matches!(r[13], CpeMessage::DeleteObjectResponse { status: 0 }),
        "{:?}",
        r[13]
    );
    match &r[14] {
        CpeMessage::Fault(f) => assert_eq!(f.code, 9005),
        m => panic!("{m:?}"),
    }
    assert!(matches!(
        r[15],
        CpeMessage::GetQueuedTransfersResponse { .. }
    ));
    match &r[16] {
        CpeMessage::GetParameterValuesResponse { list } => {
            assert_eq!(
                list[0].value, "key-4",
                "ParameterKey of the last successful change"
            );
            assert_eq!(list[1].value, "", "password reads back empty");
        }
        m => panic!("{m:?}"),
    }
    common::xsd::validate_sessions(
        "every_store_rpc_on_success_and_fault_paths",
        &acs.sessions(),
    );
}

#[test]
fn connection_requests_during_a_session_give_one_follow_up() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-cr");
    // A long first session: many RPCs.
    acs.queue(
        (0..40)
            .map(|_| AcsRequest::GetParameterValues {
                names: vec!["Device.".into()],
            })
            .collect(),
    );
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    // Wait for the session to start, then ask for 50 sessions through the control socket.
    let t0 = std::time::Instant::now();
    while acs.sessions().is_empty() && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..50 {
        a.ctl(json!({"op": "inform"}));
    }
    let s = acs.wait_sessions(2, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let s2 = acs.sessions();
    assert_eq!(
        s2.len(),
        2,
        "exactly one follow-up session: {:?}",
        s2.iter().map(events).collect::<Vec<_>>()
    );
    assert!(events(&s[1]).contains(&"6 CONNECTION REQUEST".to_string()));
    common::xsd::validate_sessions(
        "connection_requests_during_a_session_give_one_follow_up",
        &acs.sessions(),
    );
}

#[test]
fn value_changes_active_and_passive_reach_the_acs() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-vc");
    let chan = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!("\"{chan}\" = \"1\"\n"),
    ));
    acs.wait_sessions(1, WAIT);
    assert_eq!(
        a.ctl(json!({"op": "setattr", "name": chan, "notification": 1}))["ok"],
        true
    );
    // Passive: rides the next session, does not start one.
    a.set(chan, "2");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        acs.sessions().len(),
        1,
        "a passive change starts no session"
    );
    // Active (ProvisioningCode is forced active): starts one that carries both.
    a.set("Device.DeviceInfo.ProvisioningCode", "P1");
    let s = acs.wait_sessions(2, WAIT);
    assert!(
        events(&s[1]).contains(&"4 VALUE CHANGE".to_string()),
        "{:?}",
        events(&s[1])
    );
    assert_eq!(inform_param(&s[1], chan).as_deref(), Some("2"));
    assert_eq!(
        inform_param(&s[1], "Device.DeviceInfo.ProvisioningCode").as_deref(),
        Some("P1")
    );
    // Delivered: nothing pending any more.
    let ch = a.ctl(json!({"op": "changes"}));
    assert_eq!(ch["changes"].as_array().unwrap().len(), 0, "{ch}");
    common::xsd::validate_sessions(
        "value_changes_active_and_passive_reach_the_acs",
        &acs.sessions(),
    );
}

#[test]
fn failed_sessions_retry_and_keep_events_across_restart() {
    let acs = spawn_in_thread(AcsOptions {
        inform_status: Some(503),
        ..Default::default()
    });
    let d = TempDir::new("sess-retry");
    let cfg = config_for(
        d.path(),
        &acs,
        "\"Device.ManagementServer.CWMPRetryMinimumWaitInterval\" = 1\n",
    );
    let a = Agent::start(&cfg);
    let s = acs.wait_sessions(2, WAIT);
    assert_eq!(s[0].inform.as_ref().unwrap().retry_count, 0);
    assert_eq!(
        s[1].inform.as_ref().unwrap().retry_count,
        1,
        "RetryCount counts failed attempts"
    );
    assert!(
        events(&s[1]).contains(&"0 BOOTSTRAP".to_string()),
        "BOOTSTRAP is retried"
    );
    let st = a.ctl(json!({"op": "status"}));
    assert!(st["sessions_failed"].as_u64().unwrap() >= 1, "{st}");
    // Restart in the middle of failing: BOOTSTRAP survives, the ACS recovers.
    a.kill9();
    acs.update_options(|o| o.inform_status = None);
    let n = acs.sessions().len();
    let _a = Agent::start(&cfg);
    let s = acs.wait_sessions(n + 1, WAIT);
    let last = s.last().unwrap();
    assert!(last.succeeded());
    let ev = events(last);
    assert!(
        ev.contains(&"0 BOOTSTRAP".to_string()) && ev.contains(&"1 BOOT".to_string()),
        "{ev:?}"
    );
    common::xsd::validate_sessions(
        "failed_sessions_retry_and_keep_events_across_restart",
        &acs.sessions(),
    );
}

#[test]
fn digest_auth_to_the_acs_on_one_connection_and_wrong_password_fails() {
    let acs = spawn_in_thread(AcsOptions {
        auth: AcsAuth::Digest {
            user: "cpe".into(),
            pass: "cpe-pass".into(),
        },
        ..Default::default()
    });
    let d = TempDir::new("sess-digest");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    let s = acs.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    assert_eq!(s[0].connections, 1, "Digest retry on the same connection");
    assert!(s[0].statuses.contains(&401));
    // The password is never logged.
    assert!(!a.log_text().contains("cpe-pass"));
    // A wrong password: failed session, retried later (not a tight loop).
    a.set("Device.ManagementServer.Password", "wrong");
    a.ctl(json!({"op": "inform"}));
    std::thread::sleep(Duration::from_millis(800));
    assert!(acs.auth_failures() >= 1);
    let st = a.ctl(json!({"op": "status"}));
    assert!(st["sessions_failed"].as_u64().unwrap() >= 1, "{st}");
    assert!(acs.sessions().len() <= 3, "no retry storm");
    common::xsd::validate_sessions(
        "digest_auth_to_the_acs_on_one_connection_and_wrong_password_fails",
        &acs.sessions(),
    );
}

#[test]
fn url_change_bootstraps_the_new_acs_and_reboot_runs_after_the_session() {
    let acs1 = spawn_in_thread(AcsOptions::default());
    let acs2 = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-url");
    acs1.queue(vec![AcsRequest::SetParameterValues {
        list: vec![ParamValue {
            name: "Device.ManagementServer.URL".into(),
            value: acs2.url(),
            xsi_type: None,
        }],
        parameter_key: "move".into(),
    }]);
    let _a = Agent::start(&config_for(d.path(), &acs1, ""));
    acs1.wait_sessions(1, WAIT);
    let s = acs2.wait_sessions(1, WAIT);
    assert!(
        events(&s[0]).contains(&"0 BOOTSTRAP".to_string()),
        "{:?}",
        events(&s[0])
    );
    // Reboot: answered in the session, the command runs after it, and no session is opened
    // before the box goes down: `M Reboot` goes out together with `1 BOOT` in the first
    // Inform after the reboot (TR-069 Table 7; issue #12, defect 2).
    acs2.queue(vec![AcsRequest::Reboot {
        command_key: "rb-1".into(),
    }]);
    _a.ctl(json!({"op": "inform"}));
    let s = acs2.wait_sessions(2, WAIT);
    assert!(matches!(s[1].received[0], CpeMessage::RebootResponse));
    assert!(
        wait_file_contains(&d.path().join("actions.log"), "reboot", WAIT),
        "reboot command ran"
    );
    // The "reboot": the agent stops and starts again on the same state.
    _a.stop();
    let _b = Agent::start(&config_for(d.path(), &acs2, ""));
    let s = acs2.wait_sessions(3, WAIT);
    assert_eq!(s.len(), 3, "no session between the Reboot and the restart");
    let inf = s[2].inform.as_ref().unwrap();
    assert!(
        inf.events
            .iter()
            .any(|e| e.event_code == "M Reboot" && e.command_key == "rb-1"),
        "{:?}",
        inf.events
    );
    assert!(
        events(&s[2]).contains(&"1 BOOT".to_string()),
        "{:?}",
        inf.events
    );
    common::xsd::validate_sessions(
        "url_change_bootstraps_the_new_acs_and_reboot_runs_after_the_session",
        &acs2.sessions(),
    );
}

#[test]
fn genieacs_session_endings_and_refusals() {
    // 204 + Connection: close ends the session; so does 200 with an empty body.
    for (close, empty200) in [(true, false), (false, true)] {
        let acs = spawn_in_thread(AcsOptions {
            connection_close_on_end: close,
            end_with_200_empty: empty200,
            ..Default::default()
        });
        acs.queue(vec![AcsRequest::GetParameterValues {
            names: vec!["Device.ManagementServer.URL".into()],
        }]);
        let d = TempDir::new("sess-end");
        let a = Agent::start(&config_for(d.path(), &acs, ""));
        let s = acs.wait_sessions(1, WAIT);
        assert!(s[0].succeeded());
        a.ctl(json!({"op": "inform"}));
        let s = acs.wait_sessions(2, WAIT);
        assert!(
            s[1].succeeded(),
            "a second session after the first one ended"
        );
        let st = a.ctl(json!({"op": "status"}));
        assert_eq!(st["sessions_failed"], 0, "{st}");
        common::xsd::validate_sessions("genieacs_session_endings", &acs.sessions());
    }
    // 400 on the Inform ("CPE already in session" / bad session state) is a failed session.
    let acs = spawn_in_thread(AcsOptions {
        inform_status: Some(400),
        ..Default::default()
    });
    let d = TempDir::new("sess-400");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    acs.wait_sessions(1, WAIT);
    let t0 = std::time::Instant::now();
    loop {
        let st = a.ctl(json!({"op": "status"}));
        if st["sessions_failed"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(st["retry_count"], 1, "{st}");
            break;
        }
        assert!(t0.elapsed() < WAIT, "{st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gzip_request_bodies_when_http_compression_asks() {
    let acs = spawn_in_thread(AcsOptions::default());
    acs.queue(vec![AcsRequest::GetParameterValues {
        names: vec!["Device.DeviceInfo.".into()],
    }]);
    let d = TempDir::new("sess-gzip");
    let _a = Agent::start(&config_for(
        d.path(),
        &acs,
        "\"Device.ManagementServer.HTTPCompression\" = \"GZIP\"\n",
    ));
    let s = acs.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    assert!(matches!(
        s[0].received[0],
        CpeMessage::GetParameterValuesResponse { .. }
    ));
    assert_eq!(
        acs.gzip_requests(),
        2,
        "the Inform and the GPV response were gzipped"
    );
    common::xsd::validate_sessions("gzip", &acs.sessions());
}

/// Issue #12, defect 3: after an ACS FactoryReset the BOOTSTRAP Inform carries the device's
/// ConnectionRequestURL (not "" until the next poll).
#[test]
fn factory_reset_bootstrap_inform_carries_the_connection_request_url() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-freset");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    let s = acs.wait_sessions(1, WAIT);
    let url = inform_param(&s[0], "Device.ManagementServer.ConnectionRequestURL").unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    acs.queue(vec![AcsRequest::FactoryReset]);
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(3, WAIT);
    assert!(matches!(s[1].received[0], CpeMessage::FactoryResetResponse));
    assert!(
        events(&s[2]).contains(&"0 BOOTSTRAP".to_string()),
        "{:?}",
        events(&s[2])
    );
    assert_eq!(
        inform_param(&s[2], "Device.ManagementServer.ConnectionRequestURL").as_deref(),
        Some(url.as_str()),
        "the URL is published in the BOOTSTRAP Inform"
    );
    assert_eq!(a.get("Device.ManagementServer.ConnectionRequestURL"), url);
}

/// Issue #12, defects 4, 10, 11, 17: arguments the schema or the model cannot hold are
/// refused with 9003 and nothing applied; Notification 7 → 9003; the ACS's own changes
/// (ParameterKey, *NumberOfEntries) are not notified back to it; booleans in any case.
#[test]
fn argument_facets_attributes_and_acs_own_changes() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-facets");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    acs.wait_sessions(1, WAIT);
    let key33 = "k".repeat(33);
    acs.queue(vec![
        // Passive notification on the parameters the ACS's own requests change.
        attr("Device.ManagementServer.ParameterKey", 1),
        attr("Device.ManagementServer.InformParameterNumberOfEntries", 1),
        spv(
            "Device.ManagementServer.PeriodicInformInterval",
            "1234",
            &key33,
        ),
        AcsRequest::AddObject {
            object_name: "Device.ManagementServer.InformParameter.".into(),
            parameter_key: key33.clone(),
        },
        AcsRequest::Reboot {
            command_key: key33.clone(),
        },
        attr("Device.DeviceInfo.UpTime", 7),
        spv("Device.ManagementServer.PeriodicInformEnable", "TRUE", "k1"),
        AcsRequest::AddObject {
            object_name: "Device.ManagementServer.InformParameter.".into(),
            parameter_key: "k2".into(),
        },
    ]);
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(2, WAIT);
    let fault = |m: &CpeMessage| match m {
        CpeMessage::Fault(f) => f.code,
        other => panic!("expected a fault, got {}", other.method_name()),
    };
    let r = &s[1].received;
    assert!(matches!(r[0], CpeMessage::SetParameterAttributesResponse));
    assert!(matches!(r[1], CpeMessage::SetParameterAttributesResponse));
    assert_eq!(fault(&r[2]), 9003, "ParameterKey of 33 characters");
    assert_eq!(fault(&r[3]), 9003, "ParameterKey of 33 characters");
    assert_eq!(fault(&r[4]), 9003, "CommandKey of 33 characters");
    assert_eq!(
        fault(&r[5]),
        9003,
        "Notification 7 is outside cwmp-1-4.xsd's 0-6"
    );
    assert!(matches!(
        r[6],
        CpeMessage::SetParameterValuesResponse { .. }
    ));
    assert!(matches!(r[7], CpeMessage::AddObjectResponse { .. }));
    // Nothing of the refused requests was applied.
    assert_eq!(
        a.get("Device.ManagementServer.PeriodicInformInterval"),
        "86400"
    );
    assert_eq!(
        a.get("Device.ManagementServer.PeriodicInformEnable"),
        "true"
    );
    assert_eq!(a.get("Device.ManagementServer.ParameterKey"), "k2");
    assert_eq!(
        a.get("Device.ManagementServer.InformParameterNumberOfEntries"),
        "1"
    );
    // The ACS's own changes are not reported back to it as VALUE CHANGE.
    let ch = a.ctl(json!({"op": "changes"}));
    assert_eq!(ch["changes"], json!([]), "{ch}");
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(3, WAIT);
    assert!(
        !events(&s[2]).contains(&"4 VALUE CHANGE".to_string()),
        "{:?}",
        events(&s[2])
    );
    common::xsd::validate_sessions(
        "argument_facets_attributes_and_acs_own_changes",
        &acs.sessions(),
    );
}

/// Issue #12, defect 8: the InformParameter table adds its parameters to the Informs whose
/// events match its EventList.
#[test]
fn inform_parameter_table_is_honoured() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-informparam");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    acs.wait_sessions(1, WAIT);
    let t = "Device.ManagementServer.InformParameter.1.";
    let pv = |n: &str, v: &str| ParamValue {
        name: format!("{t}{n}"),
        value: v.into(),
        xsi_type: None,
    };
    acs.queue(vec![
        AcsRequest::AddObject {
            object_name: "Device.ManagementServer.InformParameter.".into(),
            parameter_key: "ip".into(),
        },
        AcsRequest::SetParameterValues {
            list: vec![
                pv("Enable", "true"),
                pv(
                    "ParameterName",
                    "Device.ManagementServer.PeriodicInformInterval",
                ),
                pv("EventList", "6 CONNECTION REQUEST"),
            ],
            parameter_key: "ip".into(),
        },
    ]);
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(2, WAIT);
    assert!(matches!(
        s[1].received[1],
        CpeMessage::SetParameterValuesResponse { .. }
    ));
    // A connection request Inform carries it; a periodic one (event not listed) does not.
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(3, WAIT);
    assert_eq!(
        inform_param(&s[2], "Device.ManagementServer.PeriodicInformInterval").as_deref(),
        Some("86400")
    );
    a.ctl(json!({"op": "inform", "event": "2 PERIODIC"}));
    let s = acs.wait_sessions(4, WAIT);
    assert_eq!(
        inform_param(&s[3], "Device.ManagementServer.PeriodicInformInterval"),
        None
    );
}

/// Issue #12, defect 13: a ScheduleInform the ACS was told succeeded survives a restart of
/// the agent before its time.
#[test]
fn schedule_inform_survives_a_restart() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-schedinf");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    acs.wait_sessions(1, WAIT);
    acs.queue(vec![AcsRequest::ScheduleInform {
        delay_seconds: 3,
        command_key: "later".into(),
    }]);
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(2, WAIT);
    assert!(matches!(
        s[1].received[0],
        CpeMessage::ScheduleInformResponse
    ));
    a.kill9();
    let _b = Agent::start(&config_for(d.path(), &acs, ""));
    let t0 = std::time::Instant::now();
    loop {
        let s = acs.sessions();
        if let Some(x) = s.iter().skip(2).find(|x| {
            x.inform.as_ref().is_some_and(|i| {
                i.events
                    .iter()
                    .any(|e| e.event_code == "M ScheduleInform" && e.command_key == "later")
            })
        }) {
            assert!(events(x).contains(&"3 SCHEDULED".to_string()));
            break;
        }
        assert!(t0.elapsed() < WAIT, "no scheduled inform after the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue #12, defect 8: DelayReboot reboots that many seconds after the session that set it,
/// and is -1 again after the reboot; ScheduleReboot reboots at its time.
#[test]
fn delay_reboot_and_schedule_reboot_reboot_the_box() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-delayreboot");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    acs.wait_sessions(1, WAIT);
    acs.queue(vec![AcsRequest::SetParameterValues {
        list: vec![ParamValue {
            name: "Device.ManagementServer.DelayReboot".into(),
            value: "1".into(),
            xsi_type: None,
        }],
        parameter_key: "dr".into(),
    }]);
    a.ctl(json!({"op": "inform"}));
    acs.wait_sessions(2, WAIT);
    let log = d.path().join("actions.log");
    assert!(
        wait_file_contains(&log, "reboot", WAIT),
        "DelayReboot rebooted"
    );
    a.stop();
    std::fs::remove_file(&log).unwrap();
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    acs.wait_sessions(3, WAIT);
    // ScheduleReboot two seconds ahead.
    let at = cwmpd::util::time::format_datetime(cwmpd::util::time::now_unix() + 2);
    let r = a.set("Device.ManagementServer.ScheduleReboot", &at);
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        wait_file_contains(&log, "reboot", WAIT),
        "ScheduleReboot rebooted"
    );
}

/// Issue #12, defect 16: while the wall clock was never set (a box without RTC boots in
/// 1970), the Inform's CurrentTime is the Unknown Time value, not 1970. libfaketime moves only
/// the agent's clock.
#[test]
fn inform_current_time_is_unknown_while_the_clock_is_not_set() {
    let Some(lib) = faketime_lib() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI: libfaketime is not installed"
        );
        common::skip(
            "inform_current_time_is_unknown",
            "libfaketime not installed",
        );
        return;
    };
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-clock");
    let env = [
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME", "@1970-01-02 00:00:00".to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ];
    let _a = Agent::start_with_env(&config_for(d.path(), &acs, ""), &env);
    let s = acs.wait_sessions(1, WAIT);
    let inf = s[0].inform.as_ref().unwrap();
    assert_eq!(inf.current_time, "0001-01-01T00:00:00Z");
    common::xsd::validate_sessions(
        "inform_current_time_is_unknown_while_the_clock_is_not_set",
        &acs.sessions(),
    );
}

/// Issue #12, defect 18: SetParameterAttributes on a partial path sets the attribute on the
/// parameters below that can take it; one whose Notification is forced (SoftwareVersion) keeps
/// its own, instead of the whole request failing with 9009. Named by its full path, it still
/// gets 9009. UDPConnectionRequestAddress takes active notification (TR-181: normal).
#[test]
fn set_attributes_on_a_partial_path_skips_forced_parameters() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-spa-partial");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    acs.wait_sessions(1, WAIT);
    acs.queue(vec![
        attr("Device.DeviceInfo.", 1),
        attr("Device.DeviceInfo.SoftwareVersion", 1),
        attr("Device.ManagementServer.UDPConnectionRequestAddress", 2),
    ]);
    a.ctl(json!({"op": "inform"}));
    let s = acs.wait_sessions(2, WAIT);
    let r = &s[1].received;
    assert!(
        matches!(r[0], CpeMessage::SetParameterAttributesResponse),
        "{:?}",
        r[0]
    );
    match &r[1] {
        CpeMessage::Fault(f) => assert_eq!(f.code, 9009),
        other => panic!("expected 9009, got {other:?}"),
    }
    assert!(matches!(r[2], CpeMessage::SetParameterAttributesResponse));
    let attrs = a.ctl(json!({"op": "getattr", "names": [
        "Device.DeviceInfo.SoftwareVersion",
        "Device.DeviceInfo.Manufacturer",
        "Device.ManagementServer.UDPConnectionRequestAddress"]}));
    let n = |i: usize| attrs["attributes"][i]["notification"].as_u64().unwrap();
    assert_eq!(n(0), 2, "forced active notification kept");
    assert_eq!(n(1), 1, "passive set below the partial path");
    assert_eq!(n(2), 2);
}

/// Issue #20: a value with active notification flapping as fast as the device side can set
/// it starts a bounded number of sessions (the agent's floor: a burst of 4, then one per
/// 10 s), and the last value still reaches the ACS.
#[test]
fn a_flapping_active_value_starts_a_bounded_number_of_sessions() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("sess-flap");
    let a = Agent::start(&config_for(d.path(), &acs, ""));
    acs.wait_sessions(1, WAIT);
    let code = "Device.DeviceInfo.ProvisioningCode";
    let t0 = std::time::Instant::now();
    let mut n = 0u32;
    while t0.elapsed() < Duration::from_secs(12) {
        n += 1;
        let r = a.set(code, &format!("flap{n}"));
        assert_eq!(r["ok"], true, "{r}");
    }
    let after_flapping = acs.sessions().len() - 1;
    // Burst 4 + one per 10 s over 12 s, plus the one that may be pending at the end.
    assert!(
        after_flapping <= 4 + 2 + 1,
        "{after_flapping} sessions from {n} changes in 12 s"
    );
    // The final value is delivered (within the floor's period).
    let last = format!("flap{n}");
    let t1 = std::time::Instant::now();
    loop {
        let s = acs.sessions();
        if s.iter()
            .any(|x| inform_param(x, code).as_deref() == Some(last.as_str()))
        {
            break;
        }
        assert!(t1.elapsed() < WAIT, "the last value never reached the ACS");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("flapping: {n} changes in 12 s → {after_flapping} sessions");
}

/// SetParameterAttributes of one name to Notification `n`.
fn attr(name: &str, n: u8) -> AcsRequest {
    AcsRequest::SetParameterAttributes {
        list: vec![SetAttr {
            name: name.into(),
            notification_change: true,
            notification: Some(n),
            access_list_change: false,
            access_list: vec![],
        }],
    }
}

/// SetParameterValues of one parameter with a ParameterKey.
fn spv(name: &str, value: &str, key: &str) -> AcsRequest {
    AcsRequest::SetParameterValues {
        list: vec![ParamValue {
            name: name.into(),
            value: value.into(),
            xsi_type: None,
        }],
        parameter_key: key.into(),
    }
}
