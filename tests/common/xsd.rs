//! Validation of what the agent emitted against the BBF CWMP schema of each message's own
//! version (xmllint, offline through the catalog in tests/schema), with the strict envelope
//! drivers: a Header or Body element the version's schema does not declare fails.
//!
//! | message namespace | session version | driver |
//! |---|---|---|
//! | `cwmp-1-0` | – | `cwmp-envelope-1-0.xsd` (BBF cwmp-1-0.xsd) |
//! | `cwmp-1-1` | – | `cwmp-envelope-1-1.xsd` (BBF cwmp-1-1.xsd) |
//! | `cwmp-1-2` | 1.2, no 1.3/1.4 header | `cwmp-envelope-1-2-only.xsd` (BBF cwmp-1-2.xsd alone) |
//! | `cwmp-1-2` | 1.3, 1.4, or a 1.3/1.4 header | `cwmp-envelope-1-4.xsd` (BBF cwmp-1-4.xsd, with 1-3, 1-2) |
//!
//! The Inform is checked against the version it offers (its namespace and headers); every
//! later message must also be in the namespace of the version the ACS chose.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;

use cwmp_proto::cwmp::soap::{CwmpNs, CwmpVersion};
use cwmp_testacs::SessionRecord;

/// The `cwmp` namespace a message declares.
pub fn message_ns(body: &[u8]) -> Option<CwmpNs> {
    let s = String::from_utf8_lossy(body);
    let i = s.find("xmlns:cwmp=\"")? + "xmlns:cwmp=\"".len();
    let end = s[i..].find('"')?;
    let uri = &s[i..i + end];
    [CwmpNs::Cwmp10, CwmpNs::Cwmp11, CwmpNs::Cwmp12]
        .into_iter()
        .find(|n| n.uri() == uri)
}

fn has_v13_header(body: &[u8]) -> bool {
    let s = String::from_utf8_lossy(body);
    let head = s.split("<soap-env:Body>").next().unwrap_or("");
    ["SessionTimeout", "SupportedCWMPVersions", "UseCWMPVersion"]
        .iter()
        .any(|h| head.contains(&format!("<cwmp:{h}")))
}

/// The driver schema for a message of a session whose version is `version`.
fn driver(test: &str, label: &str, body: &[u8], version: CwmpVersion) -> &'static str {
    match message_ns(body) {
        Some(CwmpNs::Cwmp10) => "cwmp-envelope-1-0.xsd",
        Some(CwmpNs::Cwmp11) => "cwmp-envelope-1-1.xsd",
        Some(CwmpNs::Cwmp12) if has_v13_header(body) || version >= CwmpVersion::V1_3 => {
            "cwmp-envelope-1-4.xsd"
        }
        Some(CwmpNs::Cwmp12) => "cwmp-envelope-1-2-only.xsd",
        None => panic!(
            "{test}: {label} has no BBF cwmp namespace:\n{}",
            String::from_utf8_lossy(body)
        ),
    }
}

/// Validates every body the CPE posted in `sessions`; returns how many were checked, or None
/// (a failure in CI, else a printed SKIPPED line) when xmllint is not installed.
pub fn validate_sessions(test: &str, sessions: &[SessionRecord]) -> Option<usize> {
    if Command::new("xmllint").arg("--version").output().is_err() {
        super::skip(
            &format!("schema validation in {test}"),
            "xmllint not installed (libxml2-utils)",
        );
        return None;
    }
    let dir = super::manifest().join("tests/schema");
    let tmp = super::TempDir::new("xsd");
    let mut by_driver: BTreeMap<&str, Vec<std::path::PathBuf>> = BTreeMap::new();
    let mut count = 0;
    for (i, s) in sessions.iter().enumerate() {
        let chosen = s.version;
        for (j, b) in s.bodies.iter().enumerate() {
            let label = format!("session {i} message {j}");
            let version = match chosen.filter(|_| j > 0) {
                Some(v) => {
                    assert_eq!(
                        message_ns(b),
                        Some(v.ns()),
                        "{test}: {label} is not in the namespace of the session's CWMP {v}:\n{}",
                        String::from_utf8_lossy(b)
                    );
                    v
                }
                // The Inform: the version it offers.
                None => match message_ns(b) {
                    Some(CwmpNs::Cwmp12) if has_v13_header(b) => CwmpVersion::V1_4,
                    Some(n) => CwmpVersion::of_ns(n),
                    None => CwmpVersion::V1_2,
                },
            };
            let p = tmp.path().join(format!("s{i:03}-m{j:04}.xml"));
            std::fs::write(&p, b).unwrap();
            by_driver
                .entry(driver(test, &label, b, version))
                .or_default()
                .push(p);
            count += 1;
        }
    }
    for (driver, files) in &by_driver {
        let out = Command::new("xmllint")
            .env("XML_CATALOG_FILES", dir.join("catalog.xml"))
            .args(["--nonet", "--noout", "--schema"])
            .arg(dir.join(driver))
            .args(files)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{test}: emitted SOAP does not validate against {driver}:\n{stderr}"
        );
        assert_eq!(
            stderr.matches(" validates").count(),
            files.len(),
            "{stderr}"
        );
    }
    Some(count)
}

/// Validates UDP Lightweight Notification bodies (the XML after the datagram's blank line)
/// against the BBF cwmp-UDPLightweightNotification-1-0.xsd (offline, through the catalog);
/// returns how many were checked, or None when xmllint is not installed.
pub fn validate_lwn(test: &str, bodies: &[Vec<u8>]) -> Option<usize> {
    if Command::new("xmllint").arg("--version").output().is_err() {
        super::skip(
            &format!("schema validation in {test}"),
            "xmllint not installed (libxml2-utils)",
        );
        return None;
    }
    let dir = super::manifest().join("tests/schema");
    let tmp = super::TempDir::new("lwn-xsd");
    let mut files = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let p = tmp.path().join(format!("lwn-{i:04}.xml"));
        std::fs::write(&p, b).unwrap();
        files.push(p);
    }
    if files.is_empty() {
        return Some(0);
    }
    let out = Command::new("xmllint")
        .env("XML_CATALOG_FILES", dir.join("catalog.xml"))
        .args(["--nonet", "--noout", "--schema"])
        .arg(dir.join("cwmp-UDPLightweightNotification-1-0.xsd"))
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test}: lightweight notification does not validate:\n{stderr}"
    );
    assert_eq!(
        stderr.matches(" validates").count(),
        files.len(),
        "{stderr}"
    );
    Some(files.len())
}
