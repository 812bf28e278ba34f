//! The README's first command: `cwmpd demo` runs the agent against the test ACS, shows a boot
//! session and an HTTP connection request, and cleans up after itself.

mod common;

#[test]
fn demo_runs_a_boot_session_and_a_connection_request() {
    let (code, out, err) = common::cwmpd(&["demo"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("events [\"0 BOOTSTRAP\", \"1 BOOT\"]"),
        "{out}"
    );
    assert!(
        out.contains("SetParameterValuesResponse (status 0: applied)"),
        "{out}"
    );
    assert!(out.contains("9008"), "a refused set is shown: {out}");
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("events [\"6 CONNECTION REQUEST\"]"), "{out}");
    assert!(out.contains("demo finished"), "{out}");
}
