#!/usr/bin/env bash
# Package tests (run by .ci/run): builds the amd64 .deb and .ipk with packaging/build.sh, installs
# the .deb into a throwaway root (dpkg --root, maintainer scripts chrootless with DPKG_ROOT), and
# checks files, modes, conffile handling on upgrade, removal/purge and `cwmpd check-config` on
# the shipped config; unpacks the .ipk (ar, tar) and checks its layout and control fields.
# Skips (and says so) without dpkg/dpkg-deb. Ends with "packaging: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TD=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$TD"
TD=$(cd "$TD" && pwd)
export CARGO_TARGET_DIR="$TD"

for t in dpkg dpkg-deb ar tar; do
  if ! command -v "$t" >/dev/null; then
    echo "SKIPPED: package tests need $t (Debian's dpkg, binutils, tar)"
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

W=$(mktemp -d "${TMPDIR:-/tmp}/cwmpd-pkgtest.XXXXXX")
trap 'rm -rf "$W"' EXIT

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
echo "== building packages (version $VERSION-1 and $VERSION-2)"
if ! PKG_OUT="$W/v1" PKG_REVISION=1 packaging/build.sh amd64; then
  echo "FAIL - packaging/build.sh amd64"
  echo "packaging: 0 passed, 1 failed"
  exit 1
fi
PKG_OUT="$W/v2" PKG_REVISION=2 packaging/build.sh amd64 >/dev/null
DEB1="$W/v1/cwmpd_${VERSION}-1_amd64.deb"
DEB2="$W/v2/cwmpd_${VERSION}-2_amd64.deb"
IPK="$W/v1/cwmpd_${VERSION}-1_x86_64.ipk"
check ".deb and .ipk built" test -s "$DEB1" -a -s "$DEB2" -a -s "$IPK"

echo "== .deb control data"
field() { dpkg-deb -f "$1" "$2"; }
check "Package: cwmpd" [ "$(field "$DEB1" Package)" = cwmpd ]
check "Version: $VERSION-1" [ "$(field "$DEB1" Version)" = "$VERSION-1" ]
check "Architecture: amd64" [ "$(field "$DEB1" Architecture)" = amd64 ]
check "Depends on libc6 (>= 2.x)" grep -Eq '^libc6 \(>= 2\.[0-9]+\)$' <<<"$(field "$DEB1" Depends)"
conffiles=$(dpkg-deb --ctrl-tarfile "$DEB1" | tar -xOf - ./conffiles)
check "conffiles lists /etc/cwmpd/cwmpd.toml" grep -qx /etc/cwmpd/cwmpd.toml <<<"$conffiles"
for s in postinst prerm postrm; do
  dpkg-deb --ctrl-tarfile "$DEB1" | tar -xOf - "./$s" >"$W/$s"
  check "maintainer script $s parses (sh -n)" sh -n "$W/$s"
done

echo "== install into a throwaway root"
R="$W/root"
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers"
: >"$R/var/lib/dpkg/status"
: >"$R/var/lib/dpkg/available"
# libc6 is not in the throwaway root: --force-depends. Scripts run outside it with DPKG_ROOT.
DPKG=(dpkg --root="$R" --log=/dev/null --force-script-chrootless --force-depends --force-not-root)
inst() { "${DPKG[@]}" "$@" </dev/null >"$W/dpkg.out" 2>&1 || { cat "$W/dpkg.out"; return 1; }; }
check "dpkg -i $VERSION-1" inst -i "$DEB1"
check "installed: status ok" grep -q 'Status: install ok installed' <<<"$("${DPKG[@]}" -s cwmpd 2>/dev/null)"
for f in usr/sbin/cwmpd usr/bin/cwmp-connreq etc/init.d/cwmpd; do
  check "/$f is 0755 root:root" eval 'mode_is "$R/$f" 755 && owner_root "$R/$f"'
done
check "/var/lib/cwmpd is a 0700 directory" eval '[ -d "$R/var/lib/cwmpd" ] && mode_is "$R/var/lib/cwmpd" 700'
check "/etc/cwmpd/cwmpd.toml is 0644" mode_is "$R/etc/cwmpd/cwmpd.toml" 644
check "/etc/cwmpd/datamodel.d exists" test -d "$R/etc/cwmpd/datamodel.d"
check "/lib/systemd/system/cwmpd.service is 0644" mode_is "$R/lib/systemd/system/cwmpd.service" 644
n_src=$(ls datamodel/*.xml | wc -l)
n_inst=$(ls "$R"/usr/share/cwmpd/datamodel/*.xml 2>/dev/null | wc -l)
check "data model: $n_inst of $n_src files in /usr/share/cwmpd/datamodel" [ "$n_inst" = "$n_src" ]
check "dpkg lists the conffile" grep -q '^ /etc/cwmpd/cwmpd.toml [0-9a-f]\{32\}' <<<"$("${DPKG[@]}" -s cwmpd 2>/dev/null)"
check "installed cwmpd runs (--version)" "$R/usr/sbin/cwmpd" --version
# The shipped config with its data-model paths moved into the throwaway root.
sed -e "s|\"/usr/share/cwmpd/datamodel\"|\"$R/usr/share/cwmpd/datamodel\"|" \
  -e "s|\"/etc/cwmpd/datamodel.d\"|\"$R/etc/cwmpd/datamodel.d\"|" \
  "$R/etc/cwmpd/cwmpd.toml" >"$W/check.toml"
check "shipped config points at the packaged data model" grep -q "\"$R/usr/share/cwmpd/datamodel\"" "$W/check.toml"
check "cwmpd check-config on the shipped config" "$R/usr/sbin/cwmpd" check-config "$W/check.toml"

unit="$R/lib/systemd/system/cwmpd.service"
for k in Restart=on-failure ProtectSystem=strict 'ReadWritePaths=/var/lib/cwmpd /run/cwmpd' \
  NoNewPrivileges=true RuntimeDirectory=cwmpd StateDirectory=cwmpd StateDirectoryMode=0700; do
  check "unit has $k" grep -qx "$k" "$unit"
done
if command -v systemd-analyze >/dev/null; then
  # The unit as installed, its binary paths pointed into the throwaway root.
  sed "s|/usr/sbin/cwmpd|$R/usr/sbin/cwmpd|g" "$unit" >"$W/cwmpd.service"
  if systemd-analyze verify "$W/cwmpd.service" >"$W/verify.out" 2>&1; then
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

echo "== upgrade keeps an edited config"
printf '\n# local edit\n' >>"$R/etc/cwmpd/cwmpd.toml"
sed -i 's/^log_level = "info"/log_level = "debug"/' "$R/etc/cwmpd/cwmpd.toml"
edited=$(sha256sum <"$R/etc/cwmpd/cwmpd.toml")
touch "$R/var/lib/cwmpd/state"
check "dpkg -i $VERSION-2 (same shipped config)" inst -i "$DEB2"
check "version is now $VERSION-2" grep -q "^Version: $VERSION-2" <<<"$("${DPKG[@]}" -s cwmpd 2>/dev/null)"
check "edited config survived the upgrade" [ "$(sha256sum <"$R/etc/cwmpd/cwmpd.toml")" = "$edited" ]
check "no .dpkg-new/.dpkg-dist left" eval '! ls "$R"/etc/cwmpd/*.dpkg-* >/dev/null 2>&1'
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
check "data.tar.gz owned by 0:0" eval '! tar --numeric-owner -tvzf "$I/data.tar.gz" | awk "{print \$2}" | grep -qv "^0/0$"'
for f in usr/sbin/cwmpd usr/bin/cwmp-connreq etc/init.d/cwmpd; do
  check "ipk /$f is 0755" mode_is "$I/data/$f" 755
done
check "ipk /etc/cwmpd/cwmpd.toml" cmp -s "$I/data/etc/cwmpd/cwmpd.toml" packaging/cwmpd.toml
check "ipk /var/lib/cwmpd is 0700" mode_is "$I/data/var/lib/cwmpd" 700
n_ipk=$(ls "$I"/data/usr/share/cwmpd/datamodel/*.xml 2>/dev/null | wc -l)
check "ipk data model: $n_ipk of $n_src files" [ "$n_ipk" = "$n_src" ]
check "ipk init script is procd's" eval 'grep -q "^USE_PROCD=1" "$I/data/etc/init.d/cwmpd" && grep -q procd_open_instance "$I/data/etc/init.d/cwmpd"'
check "ipk has no systemd unit" test ! -e "$I/data/lib/systemd"
check "ipk cwmpd is the packaged binary" cmp -s "$I/data/usr/sbin/cwmpd" "$W/v3/usr/sbin/cwmpd"

echo "packaging: $pass passed, $fail failed"
[ "$fail" = 0 ]
