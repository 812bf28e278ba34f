//! The README's first command: `cwmpd-demo` (built with the `tools` feature) runs the agent
//! against the test ACS, shows a boot session and an HTTP connection request, and cleans up
//! after itself.
#![cfg(feature = "tools")]

#[test]
fn demo_runs_a_boot_session_and_a_connection_request() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cwmpd-demo"))
        .output()
        .expect("run cwmpd-demo");
    let (code, out, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
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
