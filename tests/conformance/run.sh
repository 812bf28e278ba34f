#!/usr/bin/env bash
# Runs the TR-069 conformance suite (tests/conformance, Python standard library + xmllint,
# prosody for Annex K) against the real agent binary, and ends with unittest's summary.
#
#   tests/conformance/run.sh                      # the whole suite
#   tests/conformance/run.sh test_rpc             # one module (or module.Class[.test])
#   tests/conformance/run.sh -k hold              # unittest name filter
#
# CWMPD_BIN: the agent (default target/debug/cwmpd; build it with `cargo build --bin cwmpd`).
# CI=true: a missing peer (xmllint, prosody, prosodyctl, openssl, libfaketime) fails the tests
# that need it; elsewhere they skip with a printed reason.
# PYTHON: the interpreter (default python3, >= 3.11).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CWMPD_BIN="${CWMPD_BIN:-$repo/target/debug/cwmpd}"
py="${PYTHON:-python3}"

if [ ! -x "$CWMPD_BIN" ]; then
  echo "conformance: agent binary $CWMPD_BIN missing: run 'cargo build --bin cwmpd' or set CWMPD_BIN" >&2
  exit 2
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "conformance: $py is older than Python 3.11" >&2
  exit 2
fi
peers=""
for t in xmllint prosody prosodyctl openssl; do
  if command -v "$t" >/dev/null 2>&1; then peers="$peers $t"; else peers="$peers $t(missing)"; fi
done
if compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null; then
  peers="$peers libfaketime"
else
  peers="$peers libfaketime(missing)"
fi
echo "== TR-069 conformance suite: agent $CWMPD_BIN, CI=${CI:-}, peers:$peers"

# A private copy of the binary: a rebuild in the shared target dir during the run cannot swap
# or remove the agent under the tests.
bindir="$(mktemp -d "${TMPDIR:-/tmp}/cwc-bin-XXXXXX")"
trap 'rm -rf "$bindir"' EXIT
cp "$CWMPD_BIN" "$bindir/cwmpd"
export CWMPD_BIN="$bindir/cwmpd"

cd "$here"
export PYTHONDONTWRITEBYTECODE=1
rc=0
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  "$py" -m unittest -v "$@" || rc=$?
else
  "$py" -m unittest discover -s "$here" -t "$here" -p 'test_*.py' -v "$@" || rc=$?
fi
exit "$rc"
