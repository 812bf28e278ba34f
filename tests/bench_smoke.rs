//! `cwmpd-bench cr` in its smoke mode (5 runs, 2 s idle) against the release binaries, when
//! they have been built (`cargo build --release --bins --features tools`); skipped otherwise. Checks that every
//! mechanism that can run here produced figures and that the result files are written.

use std::path::PathBuf;
use std::process::Command;

fn release_dir() -> Option<PathBuf> {
    // target/<profile>/cwmpd → target/release/
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_cwmpd"))
        .parent()?
        .parent()?
        .join("release");
    ["cwmpd", "cwmp-connreq", "cwmpd-bench"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

#[test]
fn cr_bench_smoke() {
    let Some(dir) = release_dir() else {
        println!(
            "SKIPPED cr_bench_smoke: no release binaries (cargo build --release --bins --features tools)"
        );
        return;
    };
    let out = std::env::temp_dir().join(format!("cwmpd-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let res = Command::new(dir.join("cwmpd-bench"))
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
