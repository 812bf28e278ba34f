//! Validation of what the agent emitted against the BBF CWMP schema (xmllint, offline through
//! the catalog in tests/schema).
#![allow(dead_code)]

use std::process::Command;

use cwmp_testacs::SessionRecord;

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
    let mut files = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        for (j, b) in s.bodies.iter().enumerate() {
            let p = tmp.path().join(format!("s{i:03}-m{j:04}.xml"));
            std::fs::write(&p, b).unwrap();
            files.push(p);
        }
    }
    if files.is_empty() {
        return Some(0);
    }
    let out = Command::new("xmllint")
        .env("XML_CATALOG_FILES", dir.join("catalog.xml"))
        .args(["--nonet", "--noout", "--schema"])
        .arg(dir.join("cwmp-envelope-1-2.xsd"))
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test}: emitted SOAP does not validate:\n{stderr}"
    );
    assert_eq!(
        stderr.matches(" validates").count(),
        files.len(),
        "{stderr}"
    );
    Some(files.len())
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
