#!/usr/bin/env bash
# packaging/build.sh [ARCH...]    ARCH: amd64 (default) armhf arm64 mipsel
# Builds a .deb (dpkg-deb) and an .ipk (ar + tar, opkg) per Debian architecture into
# $CARGO_TARGET_DIR/packages (or $PKG_OUT).
#   amd64: from the native build (cargo build --release, run here; incremental);
#   others: from cross/build.sh's stripped binaries in $CARGO_TARGET_DIR/dist/<triple>/ (built
#           here when missing): the glibc build for the .deb; for the .ipk the static musl build
#           when it exists (OpenWrt uses musl), else the glibc one.
# Env: CARGO_TARGET_DIR, PKG_OUT, PKG_VERSION (default: Cargo.toml's), PKG_REVISION (1),
#      PKG_MAINTAINER, IPK_ARCH_<arch> (opkg architecture name, see below).
# Layout (both formats): /usr/sbin/cwmpd, /usr/bin/cwmp-connreq, /etc/cwmpd/cwmpd.toml
# (conffile), /etc/cwmpd/datamodel.d/, /usr/share/cwmpd/datamodel/*.xml, /var/lib/cwmpd (0700),
# /etc/init.d/cwmpd; the .deb adds the systemd unit, the .ipk's init script is procd's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TD=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$TD"
TD=$(cd "$TD" && pwd)
export CARGO_TARGET_DIR="$TD"
OUT=${PKG_OUT:-$TD/packages}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VERSION=${PKG_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
REV=${PKG_REVISION:-1}
MAINT=${PKG_MAINTAINER:-cwmpd developers <cwmpd@example.invalid>}
DESC_SHORT="TR-069 (CWMP) agent for Linux set-top boxes and CPEs"
DESC_LONG=" cwmpd keeps a TR-181 / TR-135 data model and talks CWMP to an ACS; it can be woken
 by HTTP, UDP (STUN) and XMPP connection requests. cwmp-connreq is the ACS side of those."
umask 022

[ $# -gt 0 ] || set -- amd64

for t in dpkg-deb ar tar gzip readelf; do
  command -v "$t" >/dev/null || { echo "packaging: $t is missing" >&2; exit 1; }
done

glibc_triple() {
  case "$1" in
    armhf) echo armv7-unknown-linux-gnueabihf ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    mipsel) echo mipsel-unknown-linux-gnu ;;
    *) echo "packaging: unknown architecture '$1' (amd64 armhf arm64 mipsel)" >&2; exit 1 ;;
  esac
}
musl_triple() {
  case "$1" in
    armhf) echo armv7-unknown-linux-musleabihf ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    mipsel) echo mipsel-unknown-linux-musl ;;
    amd64) echo x86_64-unknown-linux-musl ;;
  esac
}
# opkg architecture names differ per device (`opkg print-architecture`); these are OpenWrt's
# names for common cores. Override with IPK_ARCH_armhf=... etc.
ipk_arch() {
  local v="IPK_ARCH_$1"
  if [ -n "${!v:-}" ]; then echo "${!v}"; return; fi
  case "$1" in
    amd64) echo x86_64 ;;
    armhf) echo arm_cortex-a7_neon-vfpv4 ;;
    arm64) echo aarch64_generic ;;
    mipsel) echo mipsel_24kc ;;
  esac
}

# The libc dependency of a binary: empty when static, else the highest GLIBC_ symbol version.
glibc_needed() {
  if ! readelf -d "$1" | grep -q '(NEEDED)'; then
    return
  fi
  readelf -V "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n1
}

# stage DIR BINDIR INIT(sysv|procd) SYSTEMD(yes|no)
stage() {
  local d="$1" bin="$2"
  rm -rf "$d"
  install -d -m 0755 "$d/usr/sbin" "$d/usr/bin" "$d/etc/cwmpd/datamodel.d" \
    "$d/usr/share/cwmpd/datamodel" "$d/etc/init.d" "$d/var/lib"
  install -d -m 0700 "$d/var/lib/cwmpd"
  install -m 0755 "$bin/cwmpd" "$d/usr/sbin/cwmpd"
  install -m 0755 "$bin/cwmp-connreq" "$d/usr/bin/cwmp-connreq"
  install -m 0644 packaging/cwmpd.toml "$d/etc/cwmpd/cwmpd.toml"
  install -m 0644 datamodel/*.xml "$d/usr/share/cwmpd/datamodel/"
  install -m 0755 "packaging/init/cwmpd.$3" "$d/etc/init.d/cwmpd"
  if [ "$4" = yes ]; then
    install -d -m 0755 "$d/lib/systemd/system" "$d/usr/share/doc/cwmpd"
    install -m 0644 packaging/cwmpd.service "$d/lib/systemd/system/cwmpd.service"
    printf 'cwmpd\n\nCopyright: the cwmpd developers\nLicense: Apache-2.0\n On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n' \
      >"$d/usr/share/doc/cwmpd/copyright"
    chmod 0644 "$d/usr/share/doc/cwmpd/copyright"
  fi
}

build_deb() {
  local arch="$1" bin="$2" d="$OUT/stage/deb-$arch" glibc dep=""
  stage "$d" "$bin" sysv yes
  install -d -m 0755 "$d/DEBIAN"
  glibc=$(glibc_needed "$bin/cwmpd")
  [ -z "$glibc" ] || dep="Depends: libc6 (>= $glibc)"
  {
    echo "Package: cwmpd"
    echo "Version: $VERSION-$REV"
    echo "Architecture: $arch"
    echo "Maintainer: $MAINT"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$d" | cut -f1)"
    [ -z "$dep" ] || echo "$dep"
    echo "Section: net"
    echo "Priority: optional"
    echo "Description: $DESC_SHORT"
    echo "$DESC_LONG"
  } >"$d/DEBIAN/control"
  printf '/etc/cwmpd/cwmpd.toml\n/etc/init.d/cwmpd\n' >"$d/DEBIAN/conffiles"
  install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$d/DEBIAN/"
  chmod 0644 "$d/DEBIAN/control" "$d/DEBIAN/conffiles"
  local f="$OUT/cwmpd_${VERSION}-${REV}_${arch}.deb"
  dpkg-deb --root-owner-group -Zxz --build "$d" "$f" >/dev/null
  echo "$f"
}

build_ipk() {
  local arch="$1" bin="$2" oarch d="$OUT/stage/ipk-$arch" dep=""
  oarch=$(ipk_arch "$arch")
  rm -rf "$d"
  stage "$d/data" "$bin" procd no
  install -d -m 0755 "$d/control"
  [ -z "$(glibc_needed "$bin/cwmpd")" ] || dep="Depends: libc"
  {
    echo "Package: cwmpd"
    echo "Version: $VERSION-$REV"
    [ -z "$dep" ] || echo "$dep"
    echo "Source: cwmpd"
    echo "Section: net"
    echo "Priority: optional"
    echo "Maintainer: $MAINT"
    echo "Architecture: $oarch"
    # Bytes, as OpenWrt's ipkg-build writes it.
    echo "Installed-Size: $(du -sb "$d/data" | cut -f1)"
    echo "Description: $DESC_SHORT"
    echo "$DESC_LONG"
  } >"$d/control/control"
  echo /etc/cwmpd/cwmpd.toml >"$d/control/conffiles"
  install -m 0755 packaging/ipk/postinst packaging/ipk/prerm "$d/control/"
  chmod 0644 "$d/control/control" "$d/control/conffiles"
  local tarflags=(--numeric-owner --owner=0 --group=0 --sort=name --format=gnu)
  echo 2.0 >"$d/debian-binary"
  tar "${tarflags[@]}" -C "$d/control" -czf "$d/control.tar.gz" ./control ./conffiles ./postinst ./prerm
  tar "${tarflags[@]}" -C "$d/data" -czf "$d/data.tar.gz" .
  local f="$OUT/cwmpd_${VERSION}-${REV}_${oarch}.ipk"
  rm -f "$f"
  (cd "$d" && ar rc "$f" debian-binary control.tar.gz data.tar.gz)
  echo "$f"
}

for arch in "$@"; do
  if [ "$arch" = amd64 ]; then
    echo "== packaging: native build (release)"
    cargo build --locked --release --bin cwmpd --bin cwmp-connreq
    debbin="$TD/release"
    ipkbin="$debbin"
  else
    triple=$(glibc_triple "$arch")
    debbin="$TD/dist/$triple"
    [ -x "$debbin/cwmpd" ] || cross/build.sh "$triple"
    ipkbin="$debbin"
  fi
  m=$(musl_triple "$arch")
  if [ -x "$TD/dist/$m/cwmpd" ]; then ipkbin="$TD/dist/$m"; fi
  echo "== packaging: $arch (.deb from $debbin, .ipk from $ipkbin)"
  for f in "$(build_deb "$arch" "$debbin")" "$(build_ipk "$arch" "$ipkbin")"; do
    printf '%10s B  %s\n' "$(stat -c %s "$f")" "$f"
  done
done
