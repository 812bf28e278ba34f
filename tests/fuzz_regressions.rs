//! Replays the fuzz targets' seeds and every input kept in `fuzz/regressions/<target>/` (inputs
//! that once crashed or hung a target, see fuzz/run.sh) through the same functions the fuzzers
//! call (`cwmpd::fuzzing`), so a fixed crash stays fixed. The targets cover the STUN and XMPP
//! parsers, so the replay needs both features.
#![cfg(all(feature = "stun", feature = "xmpp"))]

use std::path::Path;
use std::time::{Duration, Instant};

use cwmpd::fuzzing::TARGETS;

#[test]
fn fuzz_seeds_and_regressions_do_not_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for t in TARGETS {
        let mut inputs: Vec<(String, Vec<u8>)> = (t.seeds)()
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("seed {i}"), s))
            .collect();
        if let Ok(rd) = std::fs::read_dir(root.join(t.name)) {
            for e in rd.flatten() {
                inputs.push((
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
        for (name, data) in inputs {
            let t0 = Instant::now();
            (t.run)(&data);
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{}: {name} took {:?}",
                t.name,
                t0.elapsed()
            );
            replayed += 1;
        }
    }
    println!("replayed {replayed} fuzz seeds and regression inputs");
}
