#!/usr/bin/env bash
# Runs the fuzz targets of cwmpd (issue #9). The targets are the functions of src/fuzzing.rs:
# soap udp_cr stun digest xmpp config datamodel.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#       The stable, coverage-free mutation driver (fuzz/src/main.rs), SECONDS per target
#       (default 10; CI runs this). Prints executions per target; fails on a panic or a slow
#       input, saved under fuzz/artifacts/<target>/.
#   fuzz/run.sh --libfuzzer SECONDS [TARGET...]
#       Coverage-guided libFuzzer, built on stable Rust: libfuzzer-sys compiles libFuzzer with
#       the system C++ compiler and rustc's stable SanitizerCoverage flags instrument the code
#       (no -Zsanitizer, so no nightly is needed; panics abort and are reported as crashes).
#       The corpus grows in fuzz/corpus/<target>/ (seeded from the built-in seeds); crashes go
#       to fuzz/artifacts/<target>/. E.g. `fuzz/run.sh --libfuzzer 3600 soap` for an hour.
#       With a nightly toolchain and cargo-fuzz, `cargo +nightly fuzz run soap` works as well.
#
# A crash input is replayed with `cargo run --manifest-path fuzz/Cargo.toml --bin cwmpd-fuzz --
# replay TARGET FILE`; fix it and copy the input to fuzz/regressions/<target>/,
# which tests/fuzz_regressions.rs replays in the normal test suite.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never
# Same dependency versions as the main crate (fuzz/Cargo.lock is generated, not kept).
cp ../Cargo.lock Cargo.lock

if [ "${1:-}" = "--libfuzzer" ]; then
  shift
  secs="${1:-60}"
  shift || true
  host="$(rustc -vV | sed -n 's/^host: //p')"
  flags="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
  flags="$flags -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
  flags="$flags -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
  targets=("$@")
  if [ "${#targets[@]}" = 0 ]; then
    mapfile -t targets < <(CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-../target}" cargo run --quiet --bin cwmpd-fuzz -- list)
  fi
  # Only the libFuzzer targets: the instrumented stable driver would not link without libFuzzer.
  bins=()
  for t in "${targets[@]}"; do bins+=(--bin "$t"); done
  RUSTFLAGS="$flags" cargo build --release --features libfuzzer "${bins[@]}" --target "$host" \
    --target-dir "${LIBFUZZER_TARGET_DIR:-target-libfuzzer}"
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-../target}" cargo run --quiet --bin cwmpd-fuzz -- seed corpus
  rc=0
  for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== libFuzzer $t for $secs s"
    "${LIBFUZZER_TARGET_DIR:-target-libfuzzer}/$host/release/$t" -max_total_time="$secs" -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" -max_len=262144 -rss_limit_mb=1024 "corpus/$t" \
      2>&1 | grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY|Done)' || rc=1
  done
  exit "$rc"
fi

secs="${1:-10}"
shift || true
# The main crate's target directory: its dependencies are already built there (dev profile).
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-../target}" cargo run --quiet --bin cwmpd-fuzz -- \
  --seconds "$secs" --summary "${CARGO_TARGET_DIR:-../target}/fuzz-summary.json" "$@"
