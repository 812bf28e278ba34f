//! The README's first command: `cwmpd-demo` runs the agent against the test ACS, the project's
//! STUN server and (when installed) Prosody; shows a boot session and a connection request by
//! HTTP, by UDP through the STUN server and by XMPP, each ending in a session with
//! "6 CONNECTION REQUEST"; and cleans up after itself. In CI (`CI=true`) a missing Prosody is a
//! failure, since .ci/run installs it.

use std::process::Command;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The text of section `n` ("N. ..." at the start of a line) up to the next section or the
/// summary.
fn section(out: &str, n: u32) -> &str {
    let start = out
        .find(&format!("\n{n}. "))
        .unwrap_or_else(|| panic!("no section {n}: {out}"));
    let rest = &out[start + 1..];
    let end = rest
        .find(&format!("\n{}. ", n + 1))
        .or_else(|| rest.find("\nconnection request -> Inform"))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn demo_shows_boot_and_every_connection_request() {
    let xmpp_expected = std::env::var("CI").is_ok_and(|v| v == "true") || have("prosody");
    let child = Command::new(env!("CARGO_BIN_EXE_cwmpd-demo"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cwmpd-demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("cwmpd-demo output");
    let (code, out, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    // 1. the boot session, the ACS reading and changing the box.
    let boot = section(&out, 1);
    assert!(
        boot.contains("events [\"0 BOOTSTRAP\", \"1 BOOT\"]"),
        "{out}"
    );
    assert!(
        boot.contains("SetParameterValuesResponse (status 0: applied)"),
        "{out}"
    );
    assert!(boot.contains("9008"), "a refused set is shown: {out}");
    // 3. HTTP CR.
    let http = section(&out, 3);
    assert!(http.contains(": 200 OK after"), "{out}");
    assert!(http.contains("events [\"6 CONNECTION REQUEST\"]"), "{out}");
    // 4. UDP CR sent by the STUN server from its socket.
    let udp = section(&out, 4);
    assert!(udp.contains("STUN server: udp cr to 127.0.0.1:"), "{out}");
    assert!(udp.contains("events [\"6 CONNECTION REQUEST\"]"), "{out}");
    // 5. XMPP CR through Prosody.
    let xmpp = section(&out, 5);
    if xmpp_expected {
        assert!(
            !out.contains("skipped"),
            "XMPP CR expected (CI=true or prosody installed): {out}"
        );
        assert!(
            xmpp.contains("connectionRequest IQ to cpe1@cpe.test/cwmp: Result"),
            "{out}"
        );
        assert!(xmpp.contains("events [\"6 CONNECTION REQUEST\"]"), "{out}");
    } else {
        assert!(
            out.contains(
                "XMPP CR: skipped — prosody not installed (apt install prosody lua-unbound)"
            ),
            "{out}"
        );
    }
    // The summary: a CR -> Inform time per mechanism.
    let summary = &out[out.find("\nconnection request -> Inform").expect("summary")..];
    for m in ["HTTP (Digest)", "UDP via the STUN server"]
        .into_iter()
        .chain(xmpp_expected.then_some("XMPP via Prosody"))
    {
        let line = summary
            .lines()
            .find(|l| l.trim_start().starts_with(m))
            .unwrap_or_else(|| panic!("no {m} in the summary: {out}"));
        assert!(line.ends_with(" ms"), "{line}");
    }
    assert!(out.contains("demo finished"), "{out}");
    // Nothing left behind: its directory (named after its PID) is gone, and no process (its
    // Prosody) still runs with it on the command line.
    let dir = std::env::temp_dir().join(format!("cwmpd-demo-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
    let needle = format!("{}/", dir.display());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&needle),
            "process {:?} still runs: {}",
            e.file_name(),
            String::from_utf8_lossy(&cmdline)
        );
    }
}
