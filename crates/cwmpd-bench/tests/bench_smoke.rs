//! `cwmpd-bench cr` in its smoke mode (5 runs, 2 s idle, no namespaces) against the `cwmpd` and
//! `cwmp-connreq` binaries of this build (found next to `cwmpd-bench`, built there when
//! missing). Checks that every mechanism that can run here produced figures and that the result
//! files are written.

use std::path::Path;
use std::process::Command;

#[test]
fn cr_bench_smoke() {
    let bench = Path::new(env!("CARGO_BIN_EXE_cwmpd-bench"));
    // The bench runs the binaries next to its own executable: the agent and cwmp-connreq (its
    // STUN server), other packages' binaries, so not built for this test by cargo itself.
    cwmp_testacs::binaries::agent_and_connreq(bench)
        .unwrap_or_else(|e| panic!("the binaries for cwmpd-bench: {e}"));
    let out = std::env::temp_dir().join(format!("cwmpd-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let res = Command::new(bench)
        .args([
            "cr",
            "--runs",
            "5",
            "--idle-seconds",
            "2",
            "--no-netns",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run cwmpd-bench");
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    let table = std::fs::read_to_string(out.join("README-table.md")).expect("table");
    let csv = std::fs::read_to_string(out.join("cr.csv")).expect("csv");
    let svg = std::fs::read_to_string(out.join("cr.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // The loopback mechanisms ran (XMPP only when Prosody is installed).
    for mech in ["HTTP CR direct", "UDP CR via STUN"] {
        let line = csv
            .lines()
            .find(|l| l.contains(mech) && l.contains("CR → Inform") && l.contains("loopback"))
            .unwrap_or_else(|| panic!("no {mech} row: {csv}"));
        assert!(line.contains(",5,"), "{line}");
    }
    assert!(table.contains("| netns |") && table.contains("skipped: --no-netns"));
    assert!(table.contains("agent RSS at idle"), "{table}");
    let _ = std::fs::remove_dir_all(&out);
}
