//! CWMP version negotiation (issue #18 part 1) of the real agent against test ACSs speaking
//! CWMP 1.0, 1.1, 1.2 and 1.4: the offer in the Inform, the ACS's choice followed for the rest
//! of the session (namespace, methods, fault codes), what is remembered across sessions and
//! restarts, a new ACS URL starting over, and a broken choice. Every CPE message is validated
//! against the schema of its own version (tests/common/xsd.rs).

mod common;

use std::time::Duration;

use common::*;
use cwmp_testacs::{AcsOptions, SessionRecord, TestAcsHandle, spawn_in_thread};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, CwmpNs, CwmpVersion};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(25);
const OFFER: &str = "1.0,1.1,1.2,1.3,1.4";

fn config_for(dir: &std::path::Path, acs: &TestAcsHandle) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\n[parameters]\n\"Device.ManagementServer.URL\" = \"{url}\"\n\"Device.DeviceInfo.Manufacturer\" = \"Test Co\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.ProductClass\" = \"STB\"\n\"Device.DeviceInfo.SerialNumber\" = \"SN0001\"\n",
            url = acs.url()
        ),
    )
}

fn acs_speaking(v: CwmpVersion) -> TestAcsHandle {
    spawn_in_thread(AcsOptions {
        cwmp_version: Some(v),
        ..AcsOptions::default()
    })
}

fn methods(s: &SessionRecord) -> Vec<String> {
    s.received
        .iter()
        .find_map(|m| match m {
            CpeMessage::GetRPCMethodsResponse { methods } => Some(methods.clone()),
            _ => None,
        })
        .expect("a GetRPCMethodsResponse")
}

fn fault_codes(s: &SessionRecord) -> Vec<u32> {
    s.received
        .iter()
        .filter_map(|m| match m {
            CpeMessage::Fault(f) => Some(f.code),
            _ => None,
        })
        .collect()
}

fn assert_offer_1_4(s: &SessionRecord) {
    assert_eq!(s.inform_ns, Some(CwmpNs::Cwmp12), "the Inform offers 1.4");
    assert_eq!(s.supported_cwmp_versions.as_deref(), Some(OFFER));
    let b = String::from_utf8_lossy(&s.bodies[0]);
    assert!(
        b.contains("<cwmp:SupportedCWMPVersions soap-env:mustUnderstand=\"0\">"),
        "{b}"
    );
}

/// One agent per ACS version: the first Inform offers 1.4; the session then follows the ACS
/// (methods of GetRPCMethods, 9000 for a method the version lacks, a 9005 fault, everything
/// in the version's namespace, schema-valid for that version); the next session's Inform is
/// the offer again for 1.2 / 1.4 and the remembered 1.0 / 1.1 for the older ACSs.
#[test]
fn talks_to_1_0_1_1_1_2_and_1_4_acs() {
    for v in [
        CwmpVersion::V1_0,
        CwmpVersion::V1_1,
        CwmpVersion::V1_2,
        CwmpVersion::V1_4,
    ] {
        let acs = acs_speaking(v);
        acs.queue(vec![
            AcsRequest::GetRPCMethods,
            AcsRequest::GetParameterValues {
                names: vec!["Device.DeviceInfo.Manufacturer".into()],
            },
            AcsRequest::GetParameterValues {
                names: vec!["Device.NoSuch.".into()],
            },
            AcsRequest::CancelTransfer {
                command_key: "none".into(),
            },
        ]);
        let d = TempDir::new("ver");
        let a = Agent::start(&config_for(d.path(), &acs));
        let s = acs.wait_sessions(1, WAIT);
        assert!(s[0].succeeded(), "{v}: {:?}", s[0].errors);
        assert_offer_1_4(&s[0]);
        let m = methods(&s[0]);
        assert_eq!(
            m.iter().any(|x| x == "ScheduleDownload"),
            v >= CwmpVersion::V1_2,
            "{v}: {m:?}"
        );
        assert_eq!(
            m.iter().any(|x| x == "GetAllQueuedTransfers"),
            v >= CwmpVersion::V1_1,
            "{v}: {m:?}"
        );
        let f = fault_codes(&s[0]);
        assert_eq!(f[0], 9005, "{v}: {f:?}");
        if v < CwmpVersion::V1_2 {
            assert_eq!(f.get(1), Some(&9000), "{v}: CancelTransfer is 1.2's: {f:?}");
        }
        a.ctl(json!({"op": "inform"}));
        let s = acs.wait_sessions(2, WAIT);
        assert!(s[1].succeeded(), "{v}: {:?}", s[1].errors);
        if v < CwmpVersion::V1_2 {
            assert_eq!(s[1].inform_ns, Some(v.ns()), "{v}: remembered");
            assert_eq!(s[1].supported_cwmp_versions, None, "{v}");
        } else {
            assert_offer_1_4(&s[1]);
        }
        let n = common::xsd::validate_sessions(&format!("versions {v}"), &s);
        assert!(n.is_none_or(|n| n >= 6), "{v}: {n:?}");
        a.stop();
    }
}

/// The choice of a 1.0 ACS survives a restart; a new ManagementServer.URL starts over with the
/// offer of 1.4, and a 1.4 ACS's UseCWMPVersion is followed.
#[test]
fn remembered_across_restart_until_the_url_changes() {
    let old = acs_speaking(CwmpVersion::V1_0);
    let d = TempDir::new("ver-url");
    let a = Agent::start(&config_for(d.path(), &old));
    let s = old.wait_sessions(1, WAIT);
    assert_offer_1_4(&s[0]);
    a.stop();
    let a = Agent::start(&config_for(d.path(), &old));
    let s = old.wait_sessions(2, WAIT);
    assert!(s[1].succeeded(), "{:?}", s[1].errors);
    assert_eq!(s[1].inform_ns, Some(CwmpNs::Cwmp10));
    assert_eq!(s[1].supported_cwmp_versions, None);
    common::xsd::validate_sessions("remembered (1.0 ACS)", &s);

    let new = acs_speaking(CwmpVersion::V1_4);
    new.queue(vec![AcsRequest::GetRPCMethods]);
    a.set("Device.ManagementServer.URL", &new.url());
    let s = new.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    assert_offer_1_4(&s[0]);
    assert!(
        methods(&s[0])
            .iter()
            .any(|m| m == "ChangeDUState" || m == "CancelTransfer")
    );
    common::xsd::validate_sessions("new URL (1.4 ACS)", &s);
}

/// A UseCWMPVersion that names no CWMP version fails the session (no crash); the agent forgets
/// the remembered 1.0 and its retry offers 1.4 again.
#[test]
fn unknown_use_cwmp_version_fails_and_starts_over() {
    let acs = acs_speaking(CwmpVersion::V1_0);
    let d = TempDir::new("ver-bad");
    let a = Agent::start(&config_for(d.path(), &acs));
    acs.wait_sessions(1, WAIT);
    acs.update_options(|o| {
        o.cwmp_version = None;
        o.use_cwmp_version_text = Some("9.9".into());
    });
    a.ctl(json!({"op": "inform"}));
    assert!(wait_until(WAIT, || acs.session_count() >= 2
        && acs.session(1).is_some_and(|s| s.ended)));
    let s1 = acs.session(1).unwrap();
    assert_eq!(s1.inform_ns, Some(CwmpNs::Cwmp10), "the remembered 1.0");
    assert!(
        s1.empty_posts == 0 && s1.received.is_empty(),
        "the session ended at the InformResponse"
    );
    acs.update_options(|o| {
        o.use_cwmp_version_text = None;
        o.cwmp_version = Some(CwmpVersion::V1_4);
    });
    // The retry (TR-069 §3.2.1.1 wait) offers 1.4 again.
    let s = acs.wait_sessions(3, Duration::from_secs(40));
    assert!(s.len() >= 3, "a retry came");
    assert!(s[2].succeeded(), "{:?}", s[2].errors);
    assert_offer_1_4(&s[2]);
    assert!(
        a.ctl(json!({"op": "status"}))["ok"]
            .as_bool()
            .unwrap_or(true)
    );
}

const IP: &str = "Device.ManagementServer.InformParameter.";

fn wildcard_script() -> Vec<AcsRequest> {
    let add = |k: &str| AcsRequest::AddObject {
        object_name: IP.into(),
        parameter_key: k.into(),
    };
    let gpv = |n: &str| AcsRequest::GetParameterValues {
        names: vec![n.into()],
    };
    vec![
        add("k1"),
        add("k2"),
        gpv(&format!("{IP}*.Enable")),
        AcsRequest::GetParameterNames {
            path: format!("{IP}*."),
            next_level: true,
        },
        AcsRequest::GetParameterAttributes {
            names: vec![format!("{IP}*.ParameterName")],
        },
        gpv("Device.DeviceInfo.*.Manufacturer"),
        gpv(&format!("{IP}1*.Enable")),
        gpv("Device.ManagementServer.InstanceWildcardsSupported"),
    ]
}

fn added(s: &SessionRecord) -> Vec<u32> {
    s.received
        .iter()
        .filter_map(|m| match m {
            CpeMessage::AddObjectResponse {
                instance_number, ..
            } => Some(*instance_number),
            _ => None,
        })
        .collect()
}

/// Instance wildcards (CWMP 1.4, feature `cwmp14`): in a 1.4 session `*` names every instance
/// in GetParameterValues / Names / Attributes; `*` where no instance number goes is 9005. In a
/// 1.2 session every wildcard is 9005. All schema-valid for the session's version.
#[test]
fn instance_wildcards_in_1_4_sessions_only() {
    let acs = acs_speaking(CwmpVersion::V1_4);
    acs.queue(wildcard_script());
    let d = TempDir::new("ver-wild");
    let _a = Agent::start(&config_for(d.path(), &acs));
    let s = acs.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    let inst = added(&s[0]);
    assert_eq!(inst.len(), 2, "{:?}", s[0].received);
    let r = &s[0].received[2..];
    if cfg!(feature = "cwmp14") {
        let CpeMessage::GetParameterValuesResponse { list } = &r[0] else {
            panic!("GPV: {:?}", r[0])
        };
        let got: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
        let want: Vec<String> = inst.iter().map(|n| format!("{IP}{n}.Enable")).collect();
        assert_eq!(got, want);
        let CpeMessage::GetParameterNamesResponse { list } = &r[1] else {
            panic!("GPN: {:?}", r[1])
        };
        for n in &inst {
            assert!(
                list.iter()
                    .any(|p| p.name == format!("{IP}{n}.ParameterName"))
            );
        }
        assert!(list.iter().all(|p| {
            let rest = &p.name[IP.len()..];
            rest.split('.').count() == 2 && !rest.ends_with('.')
        }));
        let CpeMessage::GetParameterAttributesResponse { list } = &r[2] else {
            panic!("GPA: {:?}", r[2])
        };
        assert_eq!(list.len(), 2);
        assert!(
            matches!(&r[3], CpeMessage::Fault(f) if f.code == 9005),
            "{:?}",
            r[3]
        );
        assert!(
            matches!(&r[4], CpeMessage::Fault(f) if f.code == 9005),
            "{:?}",
            r[4]
        );
        assert!(
            matches!(&r[5], CpeMessage::GetParameterValuesResponse { list } if list[0].value == "true")
        );
    } else {
        for m in &r[..5] {
            assert!(matches!(m, CpeMessage::Fault(f) if f.code == 9005), "{m:?}");
        }
        assert!(
            matches!(&r[5], CpeMessage::GetParameterValuesResponse { list } if list[0].value == "false")
        );
    }
    common::xsd::validate_sessions("wildcards (1.4 ACS)", &s);

    // A 1.2 ACS: no wildcards.
    let old = acs_speaking(CwmpVersion::V1_2);
    old.queue(wildcard_script());
    let d = TempDir::new("ver-wild12");
    let _a = Agent::start(&config_for(d.path(), &old));
    let s = old.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    for m in &s[0].received[2..7] {
        assert!(matches!(m, CpeMessage::Fault(f) if f.code == 9005), "{m:?}");
    }
    common::xsd::validate_sessions("wildcards (1.2 ACS)", &s);
}

fn spv(name: &str, value: &str, ty: &str) -> AcsRequest {
    AcsRequest::SetParameterValues {
        list: vec![cwmpd::cwmp::soap::ParamValue::new(name, value, ty)],
        parameter_key: String::new(),
    }
}

fn gpv1(name: &str) -> AcsRequest {
    AcsRequest::GetParameterValues {
        names: vec![name.into()],
    }
}

fn spv_fault(m: &CpeMessage) -> Option<(u32, Vec<u32>)> {
    match m {
        CpeMessage::Fault(f) => Some((
            f.code,
            f.set_parameter_values_faults
                .iter()
                .map(|s| s.code)
                .collect(),
        )),
        _ => None,
    }
}

/// Alias-based addressing (CWMP 1.3+, feature `cwmp14`): AddObject of `Table.[alias].`, a
/// `cpe-N` Alias for an instance the ACS did not name, `[alias]` in every kind of path, the
/// Alias rules (duplicate, bad form: 9007), AutoCreateInstances (off: 9005; on: the instance is
/// made, and removed again when the rest of the SetParameterValues fails), InstanceMode =
/// InstanceAlias in returned names, persisted across a restart; not in a 1.2 session.
#[test]
fn alias_based_addressing_in_1_3_and_later() {
    if !cfg!(feature = "cwmp14") {
        return;
    }
    let acs = acs_speaking(CwmpVersion::V1_4);
    let b = "xsd:boolean";
    let st = "xsd:string";
    acs.queue(vec![
        AcsRequest::AddObject {
            object_name: format!("{IP}[evt]."),
            parameter_key: "a1".into(),
        },
        AcsRequest::AddObject {
            object_name: IP.into(),
            parameter_key: "a2".into(),
        },
        spv(
            &format!("{IP}[evt].ParameterName"),
            "Device.DeviceInfo.UpTime",
            st,
        ),
        gpv1(&format!("{IP}[evt].ParameterName")),
        spv(&format!("{IP}[evt].Alias"), "1bad", st),
        AcsRequest::AddObject {
            object_name: format!("{IP}[evt]."),
            parameter_key: "a3".into(),
        },
        spv(&format!("{IP}[auto].Enable"), "true", b),
        spv("Device.ManagementServer.AutoCreateInstances", "true", b),
        spv(&format!("{IP}[auto].Enable"), "true", b),
        spv(&format!("{IP}[auto2].Enable"), "maybe", b),
        spv("Device.ManagementServer.InstanceMode", "InstanceAlias", st),
        AcsRequest::GetParameterNames {
            path: IP.into(),
            next_level: true,
        },
        AcsRequest::DeleteObject {
            object_name: format!("{IP}[auto]."),
            parameter_key: "d1".into(),
        },
    ]);
    let d = TempDir::new("ver-alias");
    let a = Agent::start(&config_for(d.path(), &acs));
    let s = acs.wait_sessions(1, WAIT);
    assert!(s[0].succeeded(), "{:?}", s[0].errors);
    let r = &s[0].received;
    let inst = added(&s[0]);
    assert_eq!(inst.len(), 2, "{r:?}");
    let (evt, other) = (inst[0], inst[1]);
    assert!(
        matches!(&r[2], CpeMessage::SetParameterValuesResponse { .. }),
        "{:?}",
        r[2]
    );
    let CpeMessage::GetParameterValuesResponse { list } = &r[3] else {
        panic!("{:?}", r[3])
    };
    assert_eq!(list[0].name, format!("{IP}{evt}.ParameterName"));
    assert_eq!(list[0].value, "Device.DeviceInfo.UpTime");
    assert_eq!(spv_fault(&r[4]), Some((9003, vec![9007])), "bad form");
    assert!(
        matches!(&r[5], CpeMessage::Fault(f) if f.code == 9007),
        "{:?}",
        r[5]
    );
    assert_eq!(spv_fault(&r[6]), Some((9003, vec![9005])), "AutoCreate off");
    assert!(
        matches!(&r[8], CpeMessage::SetParameterValuesResponse { .. }),
        "{:?}",
        r[8]
    );
    assert!(matches!(&r[9], CpeMessage::Fault(_)), "{:?}", r[9]);
    let CpeMessage::GetParameterNamesResponse { list } = &r[11] else {
        panic!("{:?}", r[11])
    };
    let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&format!("{IP}[evt].").as_str()), "{names:?}");
    assert!(
        names.contains(&format!("{IP}[cpe-{other}].").as_str()),
        "{names:?}"
    );
    assert!(
        names.contains(&format!("{IP}[auto].").as_str()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("auto2")),
        "undone: {names:?}"
    );
    assert!(
        matches!(&r[12], CpeMessage::DeleteObjectResponse { .. }),
        "{:?}",
        r[12]
    );
    common::xsd::validate_sessions("aliases (1.4 ACS)", &s);

    // Persisted: after a restart the aliases still address the instances, and the names come
    // back in the instance-alias form.
    a.stop();
    acs.queue(vec![
        gpv1(&format!("{IP}[evt].ParameterName")),
        spv(&format!("{IP}{other}.Alias"), "evt", st),
    ]);
    let _a = Agent::start(&config_for(d.path(), &acs));
    let s = acs.wait_sessions(2, WAIT);
    let r = &s[1].received;
    let CpeMessage::GetParameterValuesResponse { list } = &r[0] else {
        panic!("{:?}", r[0])
    };
    assert_eq!(list[0].name, format!("{IP}[evt].ParameterName"));
    assert_eq!(spv_fault(&r[1]), Some((9003, vec![9007])), "duplicate");

    // A 1.2 ACS: no aliases in paths.
    let old = acs_speaking(CwmpVersion::V1_2);
    old.queue(vec![gpv1(&format!("{IP}[evt].ParameterName"))]);
    let d = TempDir::new("ver-alias12");
    let _a = Agent::start(&config_for(d.path(), &old));
    let s = old.wait_sessions(1, WAIT);
    assert!(matches!(&s[0].received[0], CpeMessage::Fault(f) if f.code == 9005));
    common::xsd::validate_sessions("aliases (1.2 ACS)", &s);
}
