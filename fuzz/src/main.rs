//! `cwmpd-fuzz`: a coverage-free mutation fuzzer on stable Rust for the targets of
//! `cwmpd::fuzzing` (the same functions the libFuzzer targets in `fuzz_targets/` call).
//!
//! ```text
//! cwmpd-fuzz [--seconds N] [--rng SEED] [--max-len BYTES] [--summary FILE] [TARGET...]
//! cwmpd-fuzz seed DIR              write every target's seed corpus to DIR/<target>/
//! cwmpd-fuzz replay TARGET FILE... run the given inputs once (a crash reproducer)
//! cwmpd-fuzz list                  the target names
//! ```
//!
//! Each target starts from its seeds (`cwmpd::fuzzing`, plus files in `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/` when present) and applies 1–8 stacked mutations per input
//! (bit flips, interesting bytes, deletions, insertions, dictionary tokens, repeated chunks for
//! nesting and attribute floods, splices between inputs, number swaps, truncation), driven by a
//! xorshift generator. A panic or an input slower than 2 s is saved under
//! `fuzz/artifacts/<target>/` and makes the run fail. Executions per target are printed (and
//! written as JSON to `--summary`).

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cwmpd::fuzzing::{TARGETS, Target, target};

static PANIC_MSG: Mutex<Option<String>> = Mutex::new(None);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING_BYTES: &[u8] = b"\x00\xff\x7f\x80<>&\"'\n\r\t =/:;.%\\";
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551616",
    "99999999999999999999999",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[&[u8]], max_len: usize) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let span = if rng.chance(4) { len } else { 16 };
                let n = 1 + rng.below((len - a).min(span));
                input.drain(a..a + n);
            }
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            5 | 6 if !dict.is_empty() => {
                let tok = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                if rng.chance(2) || len == 0 {
                    input.splice(at..at, tok.iter().copied());
                } else {
                    let end = (at + tok.len()).min(len);
                    input.splice(at..end, tok.iter().copied());
                }
            }
            7 if len > 0 => {
                // Repeat a chunk: deep nesting, attribute and element floods, long names.
                let a = rng.below(len);
                let n = 1 + rng.below((len - a).min(64));
                let chunk = input[a..a + n].to_vec();
                let most = if rng.chance(8) { 2000 } else { 32 };
                let copies = 1 + rng.below(most);
                let mut ins = Vec::with_capacity(n * copies);
                for _ in 0..copies {
                    ins.extend_from_slice(&chunk);
                }
                input.splice(a..a, ins);
            }
            8 if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - a).min(256));
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[a..a + n].iter().copied());
                }
            }
            9 => {
                // Replace a run of digits with a boundary number.
                if let Some(start) = (0..len)
                    .map(|k| (k + rng.below(len.max(1))) % len.max(1))
                    .take(64)
                    .find(|&i| input.get(i).is_some_and(u8::is_ascii_digit))
                {
                    let mut end = start;
                    while end < len && input[end].is_ascii_digit() {
                        end += 1;
                    }
                    let num = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())];
                    input.splice(start..end, num.bytes());
                }
            }
            10 if len > 0 => {
                input.truncate(rng.below(len));
            }
            _ if len > 1 => {
                // Swap two bytes.
                let (i, j) = (rng.below(len), rng.below(len));
                input.swap(i, j);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(max_len);
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn corpus_for(t: &Target) -> Vec<Vec<u8>> {
    let mut c = (t.seeds)();
    c.extend(read_dir_files(&manifest().join("corpus").join(t.name)));
    c.extend(read_dir_files(&manifest().join("regressions").join(t.name)));
    if c.is_empty() {
        c.push(Vec::new());
    }
    c
}

fn fnv(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn save_artifact(t: &Target, kind: &str, data: &[u8]) -> PathBuf {
    let dir = manifest().join("artifacts").join(t.name);
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{kind}-{:016x}", fnv(data)));
    let _ = std::fs::write(&p, data);
    p
}

/// Runs one input; `Err(message)` on a panic.
fn run_one(t: &Target, data: &[u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    match std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(data))) {
        Ok(()) => Ok(t0.elapsed()),
        Err(_) => Err(PANIC_MSG
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "panic".into())),
    }
}

struct Outcome {
    name: &'static str,
    execs: u64,
    secs: f64,
    failures: Vec<String>,
}

fn fuzz(t: &'static Target, seconds: f64, seed: u64, max_len: Option<usize>) -> Outcome {
    let mut rng = Rng(seed ^ fnv(t.name.as_bytes()) | 1);
    let seeds = corpus_for(t);
    let max_len = max_len.unwrap_or_else(|| {
        (seeds.iter().map(Vec::len).max().unwrap_or(0) * 4).clamp(4096, 256 * 1024)
    });
    let mut failures = Vec::new();
    let mut execs = 0u64;
    // Seeds first, unmutated.
    for s in &seeds {
        execs += 1;
        if let Err(m) = run_one(t, s) {
            let p = save_artifact(t, "crash", s);
            failures.push(format!("seed panics: {m} ({})", p.display()));
        }
    }
    // A pool of recent mutants, so mutations stack across generations.
    let mut pool: Vec<Vec<u8>> = seeds.clone();
    let cap = seeds.len() + 512;
    let limit = Duration::from_secs_f64(seconds);
    let t0 = Instant::now();
    let mut buf = Vec::new();
    while t0.elapsed() < limit && failures.len() < 5 {
        for _ in 0..64 {
            buf.clear();
            let base = if rng.chance(3) {
                &seeds[rng.below(seeds.len())]
            } else {
                &pool[rng.below(pool.len())]
            };
            buf.extend_from_slice(base);
            mutate(&mut rng, &mut buf, &pool, t.dict, max_len);
            execs += 1;
            match run_one(t, &buf) {
                Ok(d) if d > Duration::from_secs(2) => {
                    let p = save_artifact(t, "slow", &buf);
                    failures.push(format!("input took {d:?} ({})", p.display()));
                }
                Ok(_) => {}
                Err(m) => {
                    let p = save_artifact(t, "crash", &buf);
                    failures.push(format!("{m} ({})", p.display()));
                }
            }
            if rng.chance(16) {
                if pool.len() < cap {
                    pool.push(buf.clone());
                } else {
                    let i = seeds.len() + rng.below(cap - seeds.len());
                    pool[i] = buf.clone();
                }
            }
        }
    }
    Outcome {
        name: t.name,
        execs,
        secs: t0.elapsed().as_secs_f64(),
        failures,
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cwmpd-fuzz [--seconds N] [--rng SEED] [--max-len BYTES] [--summary FILE] [TARGET...]\n       cwmpd-fuzz seed DIR | replay TARGET FILE... | list\ntargets: {}",
        TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(" ")
    );
    std::process::exit(2)
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("{info}");
        *PANIC_MSG.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in TARGETS {
                println!("{}", t.name);
            }
            return;
        }
        Some("seed") => {
            let Some(dir) = args.get(1) else { usage() };
            for t in TARGETS {
                let d = Path::new(dir).join(t.name);
                std::fs::create_dir_all(&d).expect("create corpus directory");
                for s in (t.seeds)() {
                    std::fs::write(d.join(format!("seed-{:016x}", fnv(&s))), &s)
                        .expect("write seed");
                }
            }
            return;
        }
        Some("replay") => {
            let Some(t) = args.get(1).and_then(|n| target(n)) else {
                usage()
            };
            let mut bad = 0;
            for f in &args[2..] {
                let data = std::fs::read(f).expect("read input");
                match run_one(t, &data) {
                    Ok(d) => println!("{f}: ok ({d:?})"),
                    Err(m) => {
                        bad += 1;
                        println!("{f}: PANIC {m}");
                    }
                }
            }
            std::process::exit(i32::from(bad > 0));
        }
        _ => {}
    }
    let mut seconds = 10.0f64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut max_len = None;
    let mut summary = None;
    let mut names = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--rng" => {
                seed = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--max-len" => {
                max_len = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--summary" => summary = Some(it.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            n => match target(n) {
                Some(t) => names.push(t),
                None => usage(),
            },
        }
    }
    if names.is_empty() {
        names = TARGETS.iter().collect();
    }
    println!("cwmpd-fuzz: rng seed {seed}, {seconds} s per target");
    let mut all = Vec::new();
    for t in names {
        let o = fuzz(t, seconds, seed, max_len);
        println!(
            "{:<10} {:>10} execs in {:>5.1} s ({:>8.0}/s) {}",
            o.name,
            o.execs,
            o.secs,
            o.execs as f64 / o.secs.max(1e-9),
            if o.failures.is_empty() {
                "ok".to_string()
            } else {
                format!("{} FAILURES", o.failures.len())
            }
        );
        for f in &o.failures {
            println!("    {f}");
        }
        let _ = std::io::stdout().flush();
        all.push(o);
    }
    if let Some(path) = summary {
        let rows: Vec<String> = all
            .iter()
            .map(|o| {
                format!(
                    "  {{\"target\": \"{}\", \"execs\": {}, \"seconds\": {:.1}, \"failures\": {}}}",
                    o.name,
                    o.execs,
                    o.secs,
                    o.failures.len()
                )
            })
            .collect();
        let _ = std::fs::write(path, format!("[\n{}\n]\n", rows.join(",\n")));
    }
    let failed = all.iter().any(|o| !o.failures.is_empty());
    std::process::exit(i32::from(failed));
}
