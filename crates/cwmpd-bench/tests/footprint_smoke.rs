//! `cwmpd-bench footprint --skip-idle` against the `cwmpd` binary of this build (found next to
//! `cwmpd-bench`, built there when missing): the result files are written, every figure of the
//! summary has a row with a judgement, missing binaries are "not built", and every hostile ACS
//! message got a row with the agent's answer. Asserts on the outputs, not on the figures.

use std::path::Path;
use std::process::Command;

#[test]
fn footprint_smoke() {
    let bench = Path::new(env!("CARGO_BIN_EXE_cwmpd-bench"));
    cwmp_testacs::binaries::agent_and_connreq(bench)
        .unwrap_or_else(|e| panic!("the binaries for cwmpd-bench: {e}"));
    let out = std::env::temp_dir().join(format!("cwmpd-bench-footprint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let res = Command::new(bench)
        .args(["footprint", "--skip-idle", "--out"])
        .arg(&out)
        .output()
        .expect("run cwmpd-bench");
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    let md = std::fs::read_to_string(out.join("footprint.md")).expect("footprint.md");
    let csv = std::fs::read_to_string(out.join("footprint.csv")).expect("footprint.csv");
    assert!(stdout.contains(md.trim()), "stdout is the table");

    // The summary: one row per target, each judged (or not measured, with why).
    assert!(md.contains("| figure | value | target | |"), "{md}");
    for (figure, target) in [
        ("stripped cwmpd, x86_64, all features", "≤ 3.5 MB"),
        ("stripped cwmpd, armhf, all features", "≤ 2 MB"),
        ("stripped cwmpd, arm64, all features", "≤ 2.8 MB"),
        ("stripped cwmpd, mipsel, all features", "≤ 3.5 MB"),
        ("stripped cwmpd, armhf, http+stun", "≤ 1.3 MB"),
        ("agent PSS at idle, all mechanisms up", "≤ 3.5 MB"),
        ("agent RssAnon at idle", "≤ 1 MB"),
        ("GPV session", "≤ 6 MB"),
        ("hostile/huge ACS messages (max)", "≤ 16 MB"),
    ] {
        let row = md
            .lines()
            .find(|l| l.contains(figure) && l.contains(target))
            .unwrap_or_else(|| panic!("no summary row {figure}: {md}"));
        let verdict = row.trim_end_matches(" |").rsplit("| ").next().unwrap_or("");
        assert!(
            verdict == "met" || verdict.starts_with("missed by ") || verdict == "not measured",
            "{row}"
        );
    }
    let idle = md
        .lines()
        .find(|l| l.contains("agent PSS at idle"))
        .unwrap();
    assert!(
        idle.contains("--skip-idle") && idle.ends_with("| not measured |"),
        "{idle}"
    );
    // The agent next to the bench was measured: a figure and a verdict.
    let x86 = md
        .lines()
        .find(|l| l.contains("| stripped cwmpd, x86_64, all features |"))
        .unwrap();
    assert!(
        x86.contains(" MB | ≤ 3.5 MB |") && !x86.contains("not built"),
        "{x86}"
    );
    assert!(
        md.lines()
            .any(|l| l.contains("(next to the bench)") && l.contains(" B) |")),
        "{md}"
    );
    // Cross builds that are not there are reported, not fatal.
    let dist = bench
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("dist/armv7-unknown-linux-gnueabihf/cwmpd");
    if !dist.exists() {
        assert!(
            md.lines().any(
                |l| l.contains("armv7-unknown-linux-gnueabihf") && l.ends_with("| not built |")
            ),
            "{md}"
        );
    }

    // The hostile messages: one row each with the agent's answer (a response, a fault or no
    // answer, whatever the agent of this build does) and its VmHWM.
    for case in [
        "baseline: boot session only",
        "GPV, 50,000 valid names",
        "GPV, 50,000 distinct non-existent names",
        "SPV, 10,000 valid values",
        "GPN Device. NextLevel false",
        "20 MB of whitespace",
        "elements nested 10,000 deep",
    ] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {case}")))
            .unwrap_or_else(|| panic!("no hostile row {case}: {md}"));
        let answer = row.split(" | ").nth(2).unwrap_or("");
        assert!(
            answer.contains("Response")
                || answer.starts_with("Fault ")
                || answer.starts_with("no answer")
                || answer == "boot session completed",
            "{row}"
        );
        assert!(row.ends_with(" MB |"), "no VmHWM: {row}");
        assert!(
            csv.lines()
                .any(|l| l.starts_with("hostile,") && l.contains(case)),
            "{csv}"
        );
    }

    // The CSV: a header, every size row, the nine summary rows.
    assert!(csv.starts_with("section,item,value,unit,target,verdict,note\n"));
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("summary,")).count(),
        9,
        "{csv}"
    );
    assert!(
        csv.lines().filter(|l| l.starts_with("size,")).count() >= 5,
        "{csv}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
