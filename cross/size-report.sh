#!/usr/bin/env bash
# cross/size-report.sh TARGET [BINARY]
# What each crate costs in a cross-built binary (default cwmpd): the unstripped build that
# cross/build.sh leaves in $CARGO_TARGET_DIR/TARGET/$CROSS_PROFILE/, sections from `size -A`,
# then code and data symbols (nm --size-sort, demangled) summed per crate, the first path
# segment of each symbol (`<T as Trait>::f` counts for T's crate, drop glue for core). C symbols
# of ring count as ring. An approximation of `cargo bloat --crates` that needs only binutils.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${1:?usage: cross/size-report.sh TARGET [BINARY]}
BIN=${2:-cwmpd}
PROFILE=${CROSS_PROFILE:-release-z}
TD=${CARGO_TARGET_DIR:-$ROOT/target}
# shellcheck source=cross/env.sh
. cross/env.sh
cross_target_info "$TARGET"
f="$TD/$TARGET/$PROFILE/$BIN"
[ -f "$f" ] || cross_die "no $f: run cross/build.sh $TARGET first"

echo "== $f"
echo "stripped: $(stat -c %s "$TD/dist/$TARGET/$BIN" 2>/dev/null || echo '?') B"
"$gnu-size" -A "$f" | awk '$1 ~ /^\.(text|rodata|data\.rel\.ro|data|bss|eh_frame|eh_frame_hdr|ARM\.exidx|ARM\.extab|gcc_except_table)$/ { printf "  %-18s %9d B\n", $1, $2 }'
echo "== code + read-only data per crate (symbol sizes; KiB)"
"$gnu-nm" -S -t d --size-sort -C "$f" | awk '
  $3 ~ /^[tTrRdDbBvVwW]$/ {
    size = $2 + 0
    name = $0
    sub(/^[0-9]+ [0-9]+ [a-zA-Z] /, "", name)
    while (name ~ /^(<|&|\*const |\*mut |dyn |impl |\(|\[)/) sub(/^(<|&|\*const |\*mut |dyn |impl |\(|\[)/, "", name)
    if (name ~ /^core::ptr::drop_in_place/) crate = "core (drop glue)"
    else if (name ~ /^ring_core_/ || name ~ /^(ring|GFp|LIMBS|bn_|ecp_nistz|p256|p384|x25519|aes_|gcm_|ChaCha20|CRYPTO_)/) crate = "ring"
    else if (name ~ /::/) { crate = name; sub(/::.*/, "", crate) }
    else crate = "[C / no path]"
    sum[crate] += size
    total += size
  }
  END {
    for (c in sum) printf "%9.1f  %s\n", sum[c] / 1024, c
    printf "%9.1f  TOTAL\n", total / 1024
  }' | sort -rn | head -n "${SIZE_REPORT_TOP:-30}"
