#!/usr/bin/env bash
# Package tests (run by .ci/run): builds the amd64 packages with packaging/build.sh, cwmpd (the
# agent, for the set-top box) and cwmp-connreq (the ACS-side tool), each as .deb and .ipk, then
#  * checks what each package carries: cwmpd exactly the agent's files (no cwmp-connreq, no other
#    binary), cwmp-connreq only its binary (+ copyright in the .deb), control fields of both;
#  * installs the .debs into a throwaway root (dpkg --root, maintainer scripts chrootless with
#    DPKG_ROOT): files, modes, conffile handling on upgrade, removal/purge, `cwmpd check-config`
#    on the shipped config, cwmp-connreq runs (--help, a short stun-server on loopback), removing
#    either leaves nothing behind, and an upgrade from the older cwmpd that carried cwmp-connreq;
#  * unpacks the .ipks (ar, tar) and checks layout and control fields, then installs them into
#    a second throwaway root the way `opkg --offline-root` does (opkg is not in Debian: data
#    unpacked, file list kept, postinst/prerm run with IPKG_INSTROOT) and removes them again.
# Skips (and says so) without dpkg/dpkg-deb. Ends with "packaging: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TD=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$TD"
TD=$(cd "$TD" && pwd)
export CARGO_TARGET_DIR="$TD"

for t in dpkg dpkg-deb ar tar timeout; do
  if ! command -v "$t" >/dev/null; then
    echo "SKIPPED: package tests need $t (Debian's dpkg, binutils, tar, coreutils)"
    exit 0
  fi
done

pass=0
fail=0
ok() {
  pass=$((pass + 1))
  echo "ok   - $1"
}
bad() {
  fail=$((fail + 1))
  echo "FAIL - $1"
}
# check DESCRIPTION COMMAND...
check() {
  local d="$1"
  shift
  if "$@"; then ok "$d"; else bad "$d"; fi
}
# mode PATH EXPECTED-OCTAL
mode_is() { [ "$(stat -c %a "$1" 2>/dev/null)" = "$2" ]; }
owner_root() { [ "$(stat -c %u:%g "$1" 2>/dev/null)" = 0:0 ]; }
# same_list DESCRIPTION EXPECTED-FILE ACTUAL-FILE: passes when equal, else shows the difference.
same_list() {
  if diff -u "$2" "$3" >"$W/diff.out"; then
    ok "$1"
  else
    sed 's/^/    /' "$W/diff.out"
    bad "$1"
  fi
}
# files DIR: the non-directories under DIR, relative, sorted.
files() { (cd "$1" && find . ! -type d -printf '%P\n' | LC_ALL=C sort); }
# elf_files DIR: the ELF files under DIR, relative, sorted.
elf_files() {
  local f m
  (cd "$1" && find . -type f -printf '%P\n' | LC_ALL=C sort) | while IFS= read -r f; do
    m=
    IFS= read -r -n 4 m <"$1/$f" || true
    if [ "$m" = $'\177ELF' ]; then echo "$f"; fi
  done
}
# executables DIR: the files with an execute bit under DIR, relative, sorted.
executables() { (cd "$1" && find . -type f -perm /111 -printf '%P\n' | LC_ALL=C sort); }
# owned_by_root TAR.GZ: every member of the archive is owned by 0/0.
owned_by_root() {
  local l
  l=$(tar --numeric-owner -tvzf "$1" | awk '{print $2}' | LC_ALL=C sort -u) || return 1
  [ "$l" = 0/0 ]
}
# snap ROOT: what is in a throwaway root (type, path, mode, owner), package databases left out.
snap() {
  find "$1" -mindepth 1 \( -path "$1/var/lib/dpkg" -o -path "$1/usr/lib/opkg" \) -prune \
    -o -printf '%y %P %m %u:%g\n' | LC_ALL=C sort
}

W=$(mktemp -d "${TMPDIR:-/tmp}/cwmpd-pkgtest.XXXXXX")
finished=
cleanup() {
  local rc=$?
  rm -rf "$W"
  if [ -z "$finished" ]; then
    echo "FAIL - tests/packaging.sh stopped early (exit $rc) after the lines above"
    echo "packaging: $pass passed, $((fail + 1)) failed"
    exit 1
  fi
}
trap cleanup EXIT

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
echo "== building packages (version $VERSION-1 and $VERSION-2)"
t0=$(date +%s)
if ! PKG_OUT="$W/v1" PKG_REVISION=1 packaging/build.sh amd64; then
  bad "packaging/build.sh amd64"
  finished=1
  echo "packaging: $pass passed, $fail failed"
  exit 1
fi
PKG_OUT="$W/v2" PKG_REVISION=2 packaging/build.sh amd64 >/dev/null
echo "== built in $(($(date +%s) - t0)) s"
DEB1="$W/v1/cwmpd_${VERSION}-1_amd64.deb"
DEB2="$W/v2/cwmpd_${VERSION}-2_amd64.deb"
IPK="$W/v1/cwmpd_${VERSION}-1_x86_64.ipk"
CDEB="$W/v1/cwmp-connreq_${VERSION}-1_amd64.deb"
CIPK="$W/v1/cwmp-connreq_${VERSION}-1_x86_64.ipk"
check "cwmpd and cwmp-connreq .deb and .ipk built" test -s "$DEB1" -a -s "$DEB2" -a -s "$IPK" -a -s "$CDEB" -a -s "$CIPK"
printf '%s\n' "$(basename "$CDEB")" "$(basename "$CIPK")" "$(basename "$DEB1")" "$(basename "$IPK")" |
  LC_ALL=C sort >"$W/want.out"
ls -A "$W/v1" | LC_ALL=C sort >"$W/got.out"
same_list "build.sh leaves exactly the four packages in PKG_OUT (no staging trees)" "$W/want.out" "$W/got.out"

echo "== what each package carries"
X="$W/x"
mkdir -p "$X/cwmpd-deb" "$X/connreq-deb" "$X/cwmpd-ipk" "$X/connreq-ipk"
dpkg-deb -x "$DEB1" "$X/cwmpd-deb"
dpkg-deb -x "$CDEB" "$X/connreq-deb"
ipk_data() { ar p "$1" data.tar.gz | tar -xzf - -C "$2"; }
ipk_data "$IPK" "$X/cwmpd-ipk"
ipk_data "$CIPK" "$X/connreq-ipk"
dm=$(cd datamodel && ls -- *.xml | sed 's|^|usr/share/cwmpd/datamodel/|')
{
  printf '%s\n' etc/cwmpd/cwmpd.toml etc/init.d/cwmpd usr/sbin/cwmpd "$dm"
  printf '%s\n' lib/systemd/system/cwmpd.service usr/share/doc/cwmpd/copyright
} | LC_ALL=C sort >"$W/want.out"
files "$X/cwmpd-deb" >"$W/got.out"
same_list "cwmpd .deb: exactly the agent's files" "$W/want.out" "$W/got.out"
printf '%s\n' etc/cwmpd/cwmpd.toml etc/init.d/cwmpd usr/sbin/cwmpd "$dm" | LC_ALL=C sort >"$W/want.out"
files "$X/cwmpd-ipk" >"$W/got.out"
same_list "cwmpd .ipk: exactly the agent's files" "$W/want.out" "$W/got.out"
for f in deb ipk; do
  check "cwmpd .$f has no cwmp-connreq (and no /usr/bin)" \
    eval '[ -z "$(find "$X/cwmpd-$f" -name "*cwmp-connreq*")" ] && test ! -e "$X/cwmpd-$f/usr/bin"'
  check "cwmpd .$f: the only ELF file is usr/sbin/cwmpd (no test or demo binary)" \
    [ "$(elf_files "$X/cwmpd-$f")" = usr/sbin/cwmpd ]
  check "cwmpd .$f: executables are the agent and its init script" \
    [ "$(executables "$X/cwmpd-$f" | tr '\n' ' ')" = "etc/init.d/cwmpd usr/sbin/cwmpd " ]
done
printf '%s\n' ./ ./usr/ ./usr/bin/ ./usr/bin/cwmp-connreq ./usr/share/ ./usr/share/doc/ \
  ./usr/share/doc/cwmp-connreq/ ./usr/share/doc/cwmp-connreq/copyright >"$W/want.out"
dpkg-deb --fsys-tarfile "$CDEB" | tar -tf - | LC_ALL=C sort >"$W/got.out"
same_list "cwmp-connreq .deb: only /usr/bin/cwmp-connreq and its copyright" "$W/want.out" "$W/got.out"
printf '%s\n' ./ ./usr/ ./usr/bin/ ./usr/bin/cwmp-connreq >"$W/want.out"
ar p "$CIPK" data.tar.gz | tar -tzf - | LC_ALL=C sort >"$W/got.out"
same_list "cwmp-connreq .ipk: only /usr/bin/cwmp-connreq" "$W/want.out" "$W/got.out"
check "cwmp-connreq .deb and .ipk carry the same binary" \
  cmp -s "$X/connreq-deb/usr/bin/cwmp-connreq" "$X/connreq-ipk/usr/bin/cwmp-connreq"
check "cwmp-connreq binary is an ELF file" [ "$(elf_files "$X/connreq-deb")" = usr/bin/cwmp-connreq ]

echo "== .deb control data"
field() { dpkg-deb -f "$1" "$2"; }
check "Package: cwmpd" [ "$(field "$DEB1" Package)" = cwmpd ]
check "Version: $VERSION-1" [ "$(field "$DEB1" Version)" = "$VERSION-1" ]
check "Architecture: amd64" [ "$(field "$DEB1" Architecture)" = amd64 ]
check "Depends on libc6 (>= 2.x)" grep -Eq '^libc6 \(>= 2\.[0-9]+\)$' <<<"$(field "$DEB1" Depends)"
check "cwmpd neither depends on nor recommends cwmp-connreq" \
  eval '! grep -Eq "^(Pre-Depends|Depends|Recommends):.*cwmp-connreq" <<<"$(dpkg-deb -f "$DEB1")"'
conffiles=$(dpkg-deb --ctrl-tarfile "$DEB1" | tar -xOf - ./conffiles)
check "conffiles lists /etc/cwmpd/cwmpd.toml" grep -qx /etc/cwmpd/cwmpd.toml <<<"$conffiles"
for s in postinst prerm postrm; do
  dpkg-deb --ctrl-tarfile "$DEB1" | tar -xOf - "./$s" >"$W/$s"
  check "maintainer script $s parses (sh -n)" sh -n "$W/$s"
done
check "cwmp-connreq: Package" [ "$(field "$CDEB" Package)" = cwmp-connreq ]
check "cwmp-connreq: Version $VERSION-1" [ "$(field "$CDEB" Version)" = "$VERSION-1" ]
check "cwmp-connreq: Architecture amd64" [ "$(field "$CDEB" Architecture)" = amd64 ]
check "cwmp-connreq: Section net" [ "$(field "$CDEB" Section)" = net ]
check "cwmp-connreq: Depends on libc6 (>= 2.x) only" grep -Eq '^libc6 \(>= 2\.[0-9]+\)$' <<<"$(field "$CDEB" Depends)"
check "cwmp-connreq: Breaks and Replaces the older cwmpd that carried it" \
  eval '[ "$(field "$CDEB" Breaks)" = "cwmpd (<< $VERSION-1)" ] && [ "$(field "$CDEB" Replaces)" = "cwmpd (<< $VERSION-1)" ]'
cdesc=$(field "$CDEB" Description)
check "cwmp-connreq: description names connection requests and the TR-111 STUN server" \
  eval 'grep -qi "connection-request" <<<"$cdesc" && grep -q "TR-111 STUN server" <<<"$cdesc"'
check "cwmp-connreq: description says the STUN server sends UDP CRs from its socket" \
  grep -q "sends UDP connection" <<<"$cdesc"
check "cwmp-connreq: control member only (no conffiles, no maintainer scripts)" \
  [ "$(dpkg-deb --ctrl-tarfile "$CDEB" | tar -tf - | grep -vx './' | tr '\n' ' ')" = "./control " ]

echo "== install into a throwaway root"
R="$W/root"
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers"
: >"$R/var/lib/dpkg/status"
: >"$R/var/lib/dpkg/available"
snap "$R" >"$W/empty.snap"
# libc6 is not in the throwaway root: --force-depends. Scripts run outside it with DPKG_ROOT.
DPKG=(dpkg --root="$R" --log=/dev/null --force-script-chrootless --force-depends --force-not-root)
inst() { "${DPKG[@]}" "$@" </dev/null >"$W/dpkg.out" 2>&1 || { cat "$W/dpkg.out"; return 1; }; }
status_of() { "${DPKG[@]}" -s "$1" 2>/dev/null || true; }
# info_gone PKG: dpkg keeps no file of PKG in its database.
info_gone() { ! compgen -G "$R/var/lib/dpkg/info/$1.*" >/dev/null; }
check "dpkg -i cwmpd $VERSION-1" inst -i "$DEB1"
check "installed: status ok" grep -q 'Status: install ok installed' <<<"$(status_of cwmpd)"
for f in usr/sbin/cwmpd etc/init.d/cwmpd; do
  check "/$f is 0755 root:root" eval 'mode_is "$R/$f" 755 && owner_root "$R/$f"'
done
check "cwmpd installs no /usr/bin/cwmp-connreq" test ! -e "$R/usr/bin/cwmp-connreq"
check "dpkg -L cwmpd names no cwmp-connreq" eval '! grep -q cwmp-connreq <<<"$("${DPKG[@]}" -L cwmpd)"'
check "/var/lib/cwmpd is a 0700 directory" eval '[ -d "$R/var/lib/cwmpd" ] && mode_is "$R/var/lib/cwmpd" 700'
check "/etc/cwmpd/cwmpd.toml is 0644" mode_is "$R/etc/cwmpd/cwmpd.toml" 644
check "/etc/cwmpd/datamodel.d exists" test -d "$R/etc/cwmpd/datamodel.d"
check "/lib/systemd/system/cwmpd.service is 0644" mode_is "$R/lib/systemd/system/cwmpd.service" 644
n_src=$(find datamodel -maxdepth 1 -name '*.xml' | wc -l)
n_inst=$(find "$R/usr/share/cwmpd/datamodel" -maxdepth 1 -name '*.xml' 2>/dev/null | wc -l || true)
check "data model: $n_inst of $n_src files in /usr/share/cwmpd/datamodel" [ "$n_inst" = "$n_src" ]
check "dpkg lists the conffile" grep -q '^ /etc/cwmpd/cwmpd.toml [0-9a-f]\{32\}' <<<"$(status_of cwmpd)"
check "installed cwmpd runs (--version)" timeout 20 "$R/usr/sbin/cwmpd" --version
# The shipped config with its data-model paths moved into the throwaway root.
sed -e "s|\"/usr/share/cwmpd/datamodel\"|\"$R/usr/share/cwmpd/datamodel\"|" \
  -e "s|\"/etc/cwmpd/datamodel.d\"|\"$R/etc/cwmpd/datamodel.d\"|" \
  "$R/etc/cwmpd/cwmpd.toml" >"$W/check.toml"
check "shipped config points at the packaged data model" grep -q "\"$R/usr/share/cwmpd/datamodel\"" "$W/check.toml"
check "cwmpd check-config on the shipped config" timeout 20 "$R/usr/sbin/cwmpd" check-config "$W/check.toml"

unit="$R/lib/systemd/system/cwmpd.service"
for k in Restart=on-failure ProtectSystem=strict 'ReadWritePaths=/var/lib/cwmpd /run/cwmpd' \
  NoNewPrivileges=true RuntimeDirectory=cwmpd StateDirectory=cwmpd StateDirectoryMode=0700; do
  check "unit has $k" grep -qx "$k" "$unit"
done
if command -v systemd-analyze >/dev/null; then
  # The unit as installed, its binary paths pointed into the throwaway root.
  sed "s|/usr/sbin/cwmpd|$R/usr/sbin/cwmpd|g" "$unit" >"$W/cwmpd.service"
  if timeout 60 systemd-analyze verify "$W/cwmpd.service" >"$W/verify.out" 2>&1; then
    ok "systemd-analyze verify cwmpd.service"
  else
    cat "$W/verify.out"
    bad "systemd-analyze verify cwmpd.service"
  fi
else
  echo "SKIPPED: systemd-analyze verify (no systemd-analyze here)"
fi
check "sysv init script parses (sh -n)" sh -n "$R/etc/init.d/cwmpd"
check "sysv init script has LSB header" grep -q '^# Provides: *cwmpd' "$R/etc/init.d/cwmpd"

# connreq_runs ROOT WHAT: the installed cwmp-connreq prints its usage (--help, exit 0) and runs
# its STUN server on loopback for a moment (--max-seconds: it stops by itself, exit 0).
connreq_runs() {
  local b="$1/usr/bin/cwmp-connreq"
  if timeout 20 "$b" --help >"$W/help.out" 2>&1 && grep -q 'cwmp-connreq stun-server' "$W/help.out"; then
    ok "$2: cwmp-connreq --help (exit 0, usage)"
  else
    cat "$W/help.out"
    bad "$2: cwmp-connreq --help (exit 0, usage)"
  fi
  if timeout 20 "$b" stun-server --listen 127.0.0.1:0 --max-seconds 0.3 >"$W/stun.out" 2>&1 &&
    grep -q 'stun listening on 127\.0\.0\.1:[0-9]' "$W/stun.out"; then
    ok "$2: cwmp-connreq stun-server on 127.0.0.1 starts and stops (exit 0)"
  else
    cat "$W/stun.out"
    bad "$2: cwmp-connreq stun-server on 127.0.0.1 starts and stops (exit 0)"
  fi
}

echo "== cwmp-connreq beside the agent"
snap "$R" >"$W/agent.snap"
check "dpkg -i cwmp-connreq $VERSION-1" inst -i "$CDEB"
check "cwmp-connreq installed: status ok" grep -q 'Status: install ok installed' <<<"$(status_of cwmp-connreq)"
check "/usr/bin/cwmp-connreq is 0755 root:root" eval 'mode_is "$R/usr/bin/cwmp-connreq" 755 && owner_root "$R/usr/bin/cwmp-connreq"'
check "dpkg -S: /usr/bin/cwmp-connreq belongs to cwmp-connreq" \
  [ "$("${DPKG[@]}" -S /usr/bin/cwmp-connreq 2>/dev/null)" = "cwmp-connreq: /usr/bin/cwmp-connreq" ]
connreq_runs "$R" .deb
check "dpkg -r cwmp-connreq" inst -r cwmp-connreq
snap "$R" >"$W/now.snap"
same_list "cwmp-connreq removal leaves nothing behind (the agent's files untouched)" "$W/agent.snap" "$W/now.snap"
check "cwmp-connreq gone from dpkg's database" \
  eval '! grep -q "^Status: install" <<<"$(status_of cwmp-connreq)" && info_gone cwmp-connreq'
check "dpkg -P cwmp-connreq (nothing left to purge)" inst -P cwmp-connreq
check "installed agent still runs" timeout 20 "$R/usr/sbin/cwmpd" --version

echo "== upgrade keeps an edited config"
printf '\n# local edit\n' >>"$R/etc/cwmpd/cwmpd.toml"
sed -i 's/^log_level = "info"/log_level = "debug"/' "$R/etc/cwmpd/cwmpd.toml"
edited=$(sha256sum <"$R/etc/cwmpd/cwmpd.toml")
touch "$R/var/lib/cwmpd/state"
check "dpkg -i $VERSION-2 (same shipped config)" inst -i "$DEB2"
check "version is now $VERSION-2" grep -q "^Version: $VERSION-2" <<<"$(status_of cwmpd)"
check "edited config survived the upgrade" [ "$(sha256sum <"$R/etc/cwmpd/cwmpd.toml")" = "$edited" ]
check "no .dpkg-new/.dpkg-dist left" eval '! compgen -G "$R/etc/cwmpd/*.dpkg-*" >/dev/null'
check "state survived the upgrade" test -e "$R/var/lib/cwmpd/state"
check "/var/lib/cwmpd still 0700" mode_is "$R/var/lib/cwmpd" 700

# A third build whose shipped config changed as well: dpkg would ask; non-interactive with
# --force-confold it keeps the local file and puts the new one beside it.
dpkg-deb -R "$DEB2" "$W/v3"
sed -i "s/^Version: .*/Version: $VERSION-3/" "$W/v3/DEBIAN/control"
sed -i 's/^poll_interval = 30/poll_interval = 60/' "$W/v3/etc/cwmpd/cwmpd.toml"
dpkg-deb --root-owner-group -Zgzip -z1 --build "$W/v3" "$W/cwmpd_${VERSION}-3_amd64.deb" >/dev/null
check "dpkg -i $VERSION-3 (shipped config changed, --force-confold)" inst --force-confdef --force-confold -i "$W/cwmpd_${VERSION}-3_amd64.deb"
check "edited config survived again" [ "$(sha256sum <"$R/etc/cwmpd/cwmpd.toml")" = "$edited" ]
check "new shipped config beside it (.dpkg-dist)" grep -q 'poll_interval = 60' "$R/etc/cwmpd/cwmpd.toml.dpkg-dist"

echo "== remove and purge"
check "dpkg -r" inst -r cwmpd
check "binary gone after remove" test ! -e "$R/usr/sbin/cwmpd"
check "config kept after remove" test -e "$R/etc/cwmpd/cwmpd.toml"
check "dpkg -P" inst -P cwmpd
check "config gone after purge" test ! -e "$R/etc/cwmpd/cwmpd.toml"
check "state gone after purge" test ! -e "$R/var/lib/cwmpd"
snap "$R" >"$W/now.snap"
same_list "cwmpd purge leaves nothing behind" "$W/empty.snap" "$W/now.snap"
check "cwmpd gone from dpkg's database" info_gone cwmpd

echo "== from the older cwmpd that carried cwmp-connreq"
# That package, rebuilt: this cwmpd as $VERSION-0 with /usr/bin/cwmp-connreq added.
dpkg-deb -R "$DEB1" "$W/old"
install -d -m 0755 "$W/old/usr/bin"
install -m 0755 "$X/connreq-deb/usr/bin/cwmp-connreq" "$W/old/usr/bin/cwmp-connreq"
sed -i "s/^Version: .*/Version: $VERSION-0/" "$W/old/DEBIAN/control"
OLD="$W/cwmpd_${VERSION}-0_amd64.deb"
dpkg-deb --root-owner-group -Zgzip -z1 --build "$W/old" "$OLD" >/dev/null
check "dpkg -i the older cwmpd $VERSION-0" inst -i "$OLD"
check "set-top box: upgrading cwmpd alone to $VERSION-1 removes /usr/bin/cwmp-connreq" \
  eval 'inst -i "$DEB1" && test ! -e "$R/usr/bin/cwmp-connreq" && test ! -e "$R/usr/bin"'
check "purge" inst -P cwmpd
check "dpkg -i the older cwmpd $VERSION-0 again" inst -i "$OLD"
check "cwmp-connreq alone is refused while that cwmpd is installed (Breaks)" \
  eval '! inst -i "$CDEB" >/dev/null'
check "both new packages in one go (dpkg -i cwmpd cwmp-connreq)" inst -i "$DEB1" "$CDEB"
check "dpkg -S: /usr/bin/cwmp-connreq now belongs to cwmp-connreq" \
  [ "$("${DPKG[@]}" -S /usr/bin/cwmp-connreq 2>/dev/null)" = "cwmp-connreq: /usr/bin/cwmp-connreq" ]
check "dpkg -r cwmpd keeps cwmp-connreq" eval 'inst -r cwmpd && test -x "$R/usr/bin/cwmp-connreq"'
connreq_runs "$R" "without the agent"
check "purge both" inst -P cwmpd cwmp-connreq
snap "$R" >"$W/now.snap"
same_list "nothing left behind" "$W/empty.snap" "$W/now.snap"
check "neither left in dpkg's database" eval 'info_gone cwmpd && info_gone cwmp-connreq'

echo "== .ipk layout"
I="$W/ipk"
mkdir -p "$I/control" "$I/data"
check "ar members: debian-binary control.tar.gz data.tar.gz" \
  [ "$(ar t "$IPK" | tr '\n' ' ')" = "debian-binary control.tar.gz data.tar.gz " ]
(cd "$I" && ar x "$IPK")
check "debian-binary is 2.0" [ "$(cat "$I/debian-binary")" = 2.0 ]
tar -xzf "$I/control.tar.gz" -C "$I/control"
tar -xzf "$I/data.tar.gz" -C "$I/data"
check "control.tar.gz: control conffiles postinst prerm" \
  [ "$(tar -tzf "$I/control.tar.gz" | sort | tr '\n' ' ')" = "./conffiles ./control ./postinst ./prerm " ]
ctl="$I/control/control"
for f in "Package: cwmpd" "Version: $VERSION-1" "Architecture: x86_64" "Section: net"; do
  check "control: $f" grep -qx "$f" "$ctl"
done
for f in Maintainer Description; do
  check "control has $f" grep -q "^$f: ." "$ctl"
done
check "control: Installed-Size is a number" grep -Eq '^Installed-Size: [0-9]+$' "$ctl"
check "conffiles lists /etc/cwmpd/cwmpd.toml" grep -qx /etc/cwmpd/cwmpd.toml "$I/control/conffiles"
for s in postinst prerm; do
  check "$s is 0755 and parses" eval 'mode_is "$I/control/$s" 755 && sh -n "$I/control/$s"'
done
check "data.tar.gz owned by 0:0" owned_by_root "$I/data.tar.gz"
for f in usr/sbin/cwmpd etc/init.d/cwmpd; do
  check "ipk /$f is 0755" mode_is "$I/data/$f" 755
done
check "ipk /etc/cwmpd/cwmpd.toml" cmp -s "$I/data/etc/cwmpd/cwmpd.toml" packaging/cwmpd.toml
check "ipk /var/lib/cwmpd is 0700" mode_is "$I/data/var/lib/cwmpd" 700
n_ipk=$(find "$I/data/usr/share/cwmpd/datamodel" -maxdepth 1 -name '*.xml' 2>/dev/null | wc -l || true)
check "ipk data model: $n_ipk of $n_src files" [ "$n_ipk" = "$n_src" ]
check "ipk init script is procd's" eval 'grep -q "^USE_PROCD=1" "$I/data/etc/init.d/cwmpd" && grep -q procd_open_instance "$I/data/etc/init.d/cwmpd"'
check "ipk has no systemd unit" test ! -e "$I/data/lib/systemd"
check "ipk cwmpd is the packaged binary" cmp -s "$I/data/usr/sbin/cwmpd" "$W/v3/usr/sbin/cwmpd"

CI="$W/cipk"
mkdir -p "$CI/control"
check "cwmp-connreq ipk ar members: debian-binary control.tar.gz data.tar.gz" \
  [ "$(ar t "$CIPK" | tr '\n' ' ')" = "debian-binary control.tar.gz data.tar.gz " ]
(cd "$CI" && ar x "$CIPK")
check "cwmp-connreq ipk debian-binary is 2.0" [ "$(cat "$CI/debian-binary")" = 2.0 ]
check "cwmp-connreq control.tar.gz: control only (no conffiles, no scripts)" \
  [ "$(tar -tzf "$CI/control.tar.gz" | tr '\n' ' ')" = "./control " ]
tar -xzf "$CI/control.tar.gz" -C "$CI/control"
cctl="$CI/control/control"
for f in "Package: cwmp-connreq" "Version: $VERSION-1" "Architecture: x86_64" "Section: net" \
  "Source: cwmpd" "Depends: libc"; do
  check "cwmp-connreq control: $f" grep -qx "$f" "$cctl"
done
check "cwmp-connreq control: Installed-Size is a number" grep -Eq '^Installed-Size: [0-9]+$' "$cctl"
check "cwmp-connreq control: Description names the TR-111 STUN server" \
  grep -q '^Description: .*TR-111 STUN server' "$cctl"
check "cwmp-connreq data.tar.gz owned by 0:0" owned_by_root "$CI/data.tar.gz"
check "cwmp-connreq ipk binary is 0755" \
  eval '[ "$(tar -tvzf "$CI/data.tar.gz" ./usr/bin/cwmp-connreq | cut -c1-10)" = -rwxr-xr-x ]'

echo "== .ipk install and removal (as opkg --offline-root does)"
RI="$W/oroot"
mkdir -p "$RI/usr/lib/opkg/info"
snap "$RI" >"$W/oempty.snap"
# opkg_install IPK: data.tar.gz unpacked into $RI, its member list kept as the package's file
# list, control files under usr/lib/opkg/info, postinst run with IPKG_INSTROOT.
opkg_install() {
  local t name info="$RI/usr/lib/opkg/info"
  t=$(mktemp -d "$W/opkg.XXXXXX")
  (cd "$t" && ar x "$1") || return 1
  mkdir "$t/c"
  tar -xzf "$t/control.tar.gz" -C "$t/c" || return 1
  name=$(sed -n 's/^Package: //p' "$t/c/control")
  [ -n "$name" ] || return 1
  tar -tzf "$t/data.tar.gz" | sed -e 's|^\./||' -e 's|/$||' -e '/^$/d' >"$info/$name.list" || return 1
  tar -xzf "$t/data.tar.gz" -C "$RI" || return 1
  for f in "$t"/c/*; do cp -p "$f" "$info/$name.${f##*/}"; done
  if [ -e "$info/$name.postinst" ]; then IPKG_INSTROOT="$RI" sh "$info/$name.postinst" configure || return 1; fi
  rm -rf "$t"
}
# opkg_remove NAME: prerm with IPKG_INSTROOT, the listed files deleted, then the listed
# directories that are empty (deepest first), then the package's control files.
opkg_remove() {
  local p info="$RI/usr/lib/opkg/info"
  [ -e "$info/$1.list" ] || return 1
  if [ -e "$info/$1.prerm" ]; then IPKG_INSTROOT="$RI" sh "$info/$1.prerm" remove || return 1; fi
  while IFS= read -r p; do
    if [ -L "$RI/$p" ] || [ ! -d "$RI/$p" ]; then rm -f "$RI/$p"; fi
  done <"$info/$1.list"
  LC_ALL=C sort -r "$info/$1.list" | while IFS= read -r p; do
    if [ -d "$RI/$p" ] && [ ! -L "$RI/$p" ]; then rmdir "$RI/$p" 2>/dev/null || true; fi
  done
  rm -f "$info/$1".*
}
check "install cwmpd .ipk" opkg_install "$IPK"
check "ipk root: cwmpd runs (--version)" timeout 20 "$RI/usr/sbin/cwmpd" --version
check "ipk root: /var/lib/cwmpd is 0700 after postinst" mode_is "$RI/var/lib/cwmpd" 700
check "ipk root: no /usr/bin/cwmp-connreq from cwmpd" test ! -e "$RI/usr/bin/cwmp-connreq"
snap "$RI" >"$W/oagent.snap"
check "install cwmp-connreq .ipk" opkg_install "$CIPK"
check "ipk root: /usr/bin/cwmp-connreq is 0755" mode_is "$RI/usr/bin/cwmp-connreq" 755
connreq_runs "$RI" .ipk
check "remove cwmp-connreq .ipk" opkg_remove cwmp-connreq
snap "$RI" >"$W/now.snap"
same_list "cwmp-connreq .ipk removal leaves nothing behind (the agent's files untouched)" "$W/oagent.snap" "$W/now.snap"
check "remove cwmpd .ipk" opkg_remove cwmpd
snap "$RI" >"$W/now.snap"
same_list "cwmpd .ipk removal leaves nothing behind" "$W/oempty.snap" "$W/now.snap"
check "no package left in the opkg database" eval '[ -z "$(ls -A "$RI/usr/lib/opkg/info")" ]'

echo "== package sizes"
for f in "$DEB1" "$IPK" "$CDEB" "$CIPK"; do
  printf '%10s B  %s\n' "$(stat -c %s "$f")" "$(basename "$f")"
done

finished=1
echo "packaging: $pass passed, $fail failed"
[ "$fail" = 0 ]
