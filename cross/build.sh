#!/usr/bin/env bash
# cross/build.sh TARGET...
# Cross-builds cwmpd and cwmp-connreq for each Rust TARGET with Debian's rustc-web/cargo-web and
# the size profile, std built from source (-Zbuild-std) so that it is optimised for size and
# LTO'd with the agent. Installs the Debian packages it needs when missing (as root), strips the
# binaries into $CARGO_TARGET_DIR/dist/TARGET/ and prints their sizes.
#
# Targets: armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu mipsel-unknown-linux-gnu
#          armv7-unknown-linux-musleabihf aarch64-unknown-linux-musl mipsel-unknown-linux-musl
# Env: CARGO_TARGET_DIR (default ./target), CROSS_PROFILE (default release-z),
#      CROSS_STD_FEATURES (std features, default optimize_for_size; see below),
#      CROSS_RUSTFLAGS (extra rustc flags for the target, whitespace-separated),
#      CROSS_FEATURE_SET: all (default) | no-diag | cr-only | http+stun+upnp | http+stun | http — the agent alone
#      with only those connection-request mechanisms, into dist/TARGET/<set>/ (for the
#      footprint figures: `cwmpd-bench footprint`); stb: the emulated STB's middleware
#      stand-in (crates/stb-middleware) into dist/TARGET/stb/, for cross/stb-image.sh.
# See cross/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROFILE=${CROSS_PROFILE:-release-z}
# std's cargo features. The default set would add "backtrace" (symbolising backtraces with
# gimli/addr2line/miniz: ~150 KB, useless in a stripped binary); panics still print their message
# and location. optimize_for_size picks std's smaller algorithms.
STD_FEATURES=${CROSS_STD_FEATURES-optimize_for_size}
SET=${CROSS_FEATURE_SET:-all}
case "$SET" in
  all) pkgs=(-p cwmpd -p cwmp-connreq --bin cwmpd --bin cwmp-connreq) bins=(cwmpd cwmp-connreq) ;;
  # The agent alone: built with cwmp-connreq, cargo would unify in the xmpp feature it needs.
  # Everything but the TR-143 diagnostics runners.
  no-diag) pkgs=(-p cwmpd --bin cwmpd --no-default-features --features xmpp,stun,upnp,software-modules,bulkdata,cwmp14) bins=(cwmpd) ;;
  # Every connection-request mechanism, neither diagnostics nor software modules.
  cr-only) pkgs=(-p cwmpd --bin cwmpd --no-default-features --features xmpp,stun,upnp) bins=(cwmpd) ;;
  http+stun+upnp) pkgs=(-p cwmpd --bin cwmpd --no-default-features --features stun,upnp) bins=(cwmpd) ;;
  http+stun) pkgs=(-p cwmpd --bin cwmpd --no-default-features --features stun) bins=(cwmpd) ;;
  http) pkgs=(-p cwmpd --bin cwmpd --no-default-features) bins=(cwmpd) ;;
  # The emulated set-top box's middleware stand-in (cross/stb-image.sh), not a product binary.
  stb) pkgs=(-p stb-middleware --bin stb-middleware) bins=(stb-middleware) ;;
  *) echo "cross: unknown CROSS_FEATURE_SET '$SET' (all no-diag cr-only http+stun+upnp http+stun http stb)" >&2; exit 1 ;;
esac
TD=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$TD"
TD=$(cd "$TD" && pwd)
export CARGO_TARGET_DIR="$TD"
# shellcheck source=cross/env.sh
. cross/env.sh

[ $# -gt 0 ] || cross_die "usage: cross/build.sh TARGET...   (targets: $(echo $cross_targets))"

for TARGET in "$@"; do
  cross_target_info "$TARGET"
  cross_install
  (
    cross_cargo_env
    extra=()
    if [ -n "$musl" ]; then
      uw=$(cross_musl_unwind "$TD")
      extra+=(--config "target.$TARGET.rustflags=[\"-L\", \"$uw\"]")
    fi
    # Extra rustc flags for the target (added to those of cross/cargo-config.toml), e.g.
    # CROSS_RUSTFLAGS="-Z location-detail=none".
    for f in ${CROSS_RUSTFLAGS:-}; do
      extra+=(--config "target.$TARGET.rustflags=[\"$f\"]")
    done
    echo "== cross: building $TARGET ($PROFILE, std from source with features [$STD_FEATURES], agent features: $SET)"
    # The agent (package cwmpd) and the ACS-side tool (package cwmp-connreq); packaging/build.sh
    # makes a package of each.
    t0=$(date +%s)
    RUSTC_BOOTSTRAP=1 cargo build --locked --config cross/cargo-config.toml "${extra[@]}" \
      -Zbuild-std=std,panic_abort "-Zbuild-std-features=$STD_FEATURES" --target "$TARGET" --profile "$PROFILE" \
      "${pkgs[@]}"
    echo "== cross: $TARGET built in $(($(date +%s) - t0)) s"
  )
  out="$TD/dist/$TARGET"
  [ "$SET" = all ] || out="$out/$SET"
  mkdir -p "$out"
  for b in "${bins[@]}"; do
    "$strip" -o "$out/$b" "$TD/$TARGET/$PROFILE/$b"
    chmod 0755 "$out/$b"
  done
  echo "== cross: $TARGET stripped binaries in $out"
  for b in "${bins[@]}"; do
    kind=$(command -v file >/dev/null && file -b "$out/$b" | cut -d, -f1-2,4-5 || true)
    printf '%-14s %10s B  %s\n' "$b" "$(stat -c %s "$out/$b")" "$kind"
  done
done
