#!/usr/bin/env bash
# packaging/build.sh [ARCH...]    ARCH: amd64 (default) armhf arm64 mipsel
# Builds two packages per Debian architecture, each as a .deb (dpkg-deb) and an .ipk (ar + tar,
# opkg), into $CARGO_TARGET_DIR/packages (or $PKG_OUT):
#   cwmpd_<ver>-<rev>_<arch>.deb/.ipk         the agent, for the set-top box;
#   cwmp-connreq_<ver>-<rev>_<arch>.deb/.ipk  the ACS-side tool (connection-request senders and
#                                             the TR-111 STUN server), for ACS hosts and test rigs.
# The .ipk names carry the opkg architecture (cwmpd_0.1.0-1_x86_64.ipk, see ipk_arch below).
#   amd64: from cross/build.sh x86_64-unknown-linux-gnu (std built for size, like the other
#          targets; run here, incremental); PKG_NATIVE=1: from a plain cargo build --release;
#   others: from cross/build.sh's stripped binaries in $CARGO_TARGET_DIR/dist/<triple>/ (built
#           here when missing): the glibc build for the .deb; for the .ipk the static musl build
#           when it exists (OpenWrt uses musl), else the glibc one.
# Env: CARGO_TARGET_DIR, PKG_OUT, PKG_NATIVE, PKG_VERSION (default: Cargo.toml's), PKG_REVISION (1),
#      PKG_MAINTAINER, IPK_ARCH_<arch> (opkg architecture name, see below).
# Layout:
#   cwmpd: /usr/sbin/cwmpd, /etc/cwmpd/cwmpd.toml (conffile), /etc/cwmpd/datamodel.d/,
#     /usr/share/cwmpd/datamodel/*.xml, /var/lib/cwmpd (0700), /etc/init.d/cwmpd; the .deb adds
#     the systemd unit and /usr/share/doc/cwmpd/copyright, the .ipk's init script is procd's.
#   cwmp-connreq: /usr/bin/cwmp-connreq; the .deb adds /usr/share/doc/cwmp-connreq/copyright.
#     No config, no init script, no maintainer scripts.
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
umask 022

[ $# -gt 0 ] || set -- amd64

for t in dpkg-deb ar tar gzip readelf du; do
  command -v "$t" >/dev/null || { echo "packaging: $t is missing" >&2; exit 1; }
done

glibc_triple() {
  case "$1" in
    armhf) echo armv7-unknown-linux-gnueabihf ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    mipsel) echo mipsel-unknown-linux-gnu ;;
    *) echo "packaging: unknown architecture '$1' (amd64 armhf arm64 mipsel)" >&2; return 1 ;;
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

# Every architecture is checked before anything is built (a typo should not cost a cross build).
for arch in "$@"; do
  [ "$arch" = amd64 ] || glibc_triple "$arch" >/dev/null
done

# Staging trees, removed on exit; under $OUT so that dpkg-deb and tar read from the same disk.
STAGE=$(mktemp -d "$OUT/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# The libc dependency of a binary: empty when static, else the highest GLIBC_ symbol version.
# (readelf's output is read whole: `readelf | grep -q` can end on SIGPIPE, a failure under pipefail.)
glibc_needed() {
  local dyn
  dyn=$(readelf -d "$1")
  case "$dyn" in
    *'(NEEDED)'*) ;;
    *) return 0 ;;
  esac
  readelf -V "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n1
}

# Where each package's binary goes.
bin_path() {
  case "$1" in
    cwmpd) echo usr/sbin/cwmpd ;;
    cwmp-connreq) echo usr/bin/cwmp-connreq ;;
  esac
}

# The Description field: synopsis, then the extended description (one leading space a line).
description() {
  case "$1" in
    cwmpd)
      cat <<'EOF'
Description: TR-069 (CWMP) agent for Linux set-top boxes and CPEs
 cwmpd keeps a TR-181 / TR-135 data model and talks CWMP to an ACS; it can be
 woken by HTTP, UDP (STUN) and XMPP connection requests. The ACS-side tool that
 sends those is in its own package, cwmp-connreq, which a set-top box does not
 need.
EOF
      ;;
    cwmp-connreq)
      cat <<'EOF'
Description: TR-069 connection-request senders and TR-111 STUN server (ACS side)
 cwmp-connreq wakes a CPE the way an ACS does: it sends HTTP connection
 requests (Digest authentication), TR-111 UDP connection requests and XMPP
 connection requests (TR-069 Annex K), and reports how each was answered.
 .
 Its stun-server command is a TR-111-aware STUN server: it records each CPE's
 connection-request binding (BINDING-CHANGE included) and sends UDP connection
 requests from its own STUN socket, the one a CPE behind a port-restricted NAT
 can be reached from.
 .
 For ACS hosts and test rigs; the agent (package cwmpd) does not need it.
EOF
      ;;
  esac
}

copyright() {
  install -d -m 0755 "$1/usr/share/doc/$2"
  printf '%s\n\nCopyright: the cwmpd developers\nLicense: Apache-2.0\n On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n' "$2" \
    >"$1/usr/share/doc/$2/copyright"
  chmod 0644 "$1/usr/share/doc/$2/copyright"
}

# stage PKG DIR BINDIR FORMAT(deb|ipk)
stage() {
  local pkg="$1" d="$2" bin="$3" fmt="$4"
  rm -rf "$d"
  install -d -m 0755 "$d"
  case "$pkg" in
    cwmpd)
      install -d -m 0755 "$d/usr/sbin" "$d/etc/cwmpd/datamodel.d" "$d/usr/share/cwmpd/datamodel" \
        "$d/etc/init.d" "$d/var/lib"
      install -d -m 0700 "$d/var/lib/cwmpd"
      install -m 0755 "$bin/cwmpd" "$d/usr/sbin/cwmpd"
      install -m 0644 packaging/cwmpd.toml "$d/etc/cwmpd/cwmpd.toml"
      install -m 0644 datamodel/*.xml "$d/usr/share/cwmpd/datamodel/"
      if [ "$fmt" = deb ]; then
        install -m 0755 packaging/init/cwmpd.sysv "$d/etc/init.d/cwmpd"
        install -d -m 0755 "$d/lib/systemd/system"
        install -m 0644 packaging/cwmpd.service "$d/lib/systemd/system/cwmpd.service"
        copyright "$d" cwmpd
      else
        install -m 0755 packaging/init/cwmpd.procd "$d/etc/init.d/cwmpd"
      fi
      ;;
    cwmp-connreq)
      install -d -m 0755 "$d/usr/bin"
      install -m 0755 "$bin/cwmp-connreq" "$d/usr/bin/cwmp-connreq"
      if [ "$fmt" = deb ]; then copyright "$d" cwmp-connreq; fi
      ;;
  esac
}

# Package files made, printed with their sizes at the end of each architecture.
built=()

# build_deb PKG ARCH BINDIR
build_deb() {
  local pkg="$1" arch="$2" d="$STAGE/$1-deb-$2" glibc
  stage "$pkg" "$d" "$3" deb
  glibc=$(glibc_needed "$d/$(bin_path "$pkg")")
  install -d -m 0755 "$d/DEBIAN"
  {
    echo "Package: $pkg"
    [ "$pkg" = cwmpd ] || echo "Source: cwmpd"
    echo "Version: $VERSION-$REV"
    echo "Architecture: $arch"
    echo "Maintainer: $MAINT"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$d" | cut -f1)"
    [ -z "$glibc" ] || echo "Depends: libc6 (>= $glibc)"
    if [ "$pkg" = cwmp-connreq ]; then
      # cwmpd packages before the split shipped /usr/bin/cwmp-connreq. Which ones cannot be told
      # from the version alone (the split did not bump it), so every older cwmpd counts: the
      # file moves to this package, and dpkg/apt upgrade cwmpd along with it.
      echo "Breaks: cwmpd (<< $VERSION-$REV)"
      echo "Replaces: cwmpd (<< $VERSION-$REV)"
    fi
    echo "Section: net"
    echo "Priority: optional"
    description "$pkg"
  } >"$d/DEBIAN/control"
  chmod 0644 "$d/DEBIAN/control"
  if [ "$pkg" = cwmpd ]; then
    printf '/etc/cwmpd/cwmpd.toml\n/etc/init.d/cwmpd\n' >"$d/DEBIAN/conffiles"
    chmod 0644 "$d/DEBIAN/conffiles"
    install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$d/DEBIAN/"
  fi
  local f="$OUT/${pkg}_${VERSION}-${REV}_${arch}.deb"
  dpkg-deb --root-owner-group -Zxz --build "$d" "$f" >/dev/null
  built+=("$f")
}

# build_ipk PKG ARCH BINDIR
build_ipk() {
  local pkg="$1" arch="$2" d="$STAGE/$1-ipk-$2" oarch ctl=(./control)
  oarch=$(ipk_arch "$arch")
  install -d -m 0755 "$d" "$d/control"
  stage "$pkg" "$d/data" "$3" ipk
  {
    echo "Package: $pkg"
    echo "Version: $VERSION-$REV"
    [ -z "$(glibc_needed "$d/data/$(bin_path "$pkg")")" ] || echo "Depends: libc"
    echo "Source: cwmpd"
    echo "Section: net"
    echo "Priority: optional"
    echo "Maintainer: $MAINT"
    echo "Architecture: $oarch"
    # Bytes, as OpenWrt's ipkg-build writes it.
    echo "Installed-Size: $(du -sb "$d/data" | cut -f1)"
    description "$pkg"
  } >"$d/control/control"
  chmod 0644 "$d/control/control"
  if [ "$pkg" = cwmpd ]; then
    echo /etc/cwmpd/cwmpd.toml >"$d/control/conffiles"
    chmod 0644 "$d/control/conffiles"
    install -m 0755 packaging/ipk/postinst packaging/ipk/prerm "$d/control/"
    ctl+=(./conffiles ./postinst ./prerm)
  fi
  local tarflags=(--numeric-owner --owner=0 --group=0 --sort=name --format=gnu)
  echo 2.0 >"$d/debian-binary"
  tar "${tarflags[@]}" -C "$d/control" -czf "$d/control.tar.gz" "${ctl[@]}"
  tar "${tarflags[@]}" -C "$d/data" -czf "$d/data.tar.gz" .
  local f="$OUT/${pkg}_${VERSION}-${REV}_${oarch}.ipk"
  rm -f "$f"
  (cd "$d" && ar rc "$f" debian-binary control.tar.gz data.tar.gz)
  built+=("$f")
}

# has_bins DIR: both binaries are there.
has_bins() { [ -x "$1/cwmpd" ] && [ -x "$1/cwmp-connreq" ]; }

for arch in "$@"; do
  if [ "$arch" = amd64 ] && [ "${PKG_NATIVE:-}" = 1 ]; then
    echo "== packaging: native build (release, PKG_NATIVE=1)"
    # The agent (package cwmpd) and the ACS-side tool (package cwmp-connreq, crates/cwmp-connreq):
    # both packages named, so that neither depends on the workspace's default-members.
    cargo build --locked --release -p cwmpd -p cwmp-connreq --bin cwmpd --bin cwmp-connreq
    debbin="$TD/release"
  elif [ "$arch" = amd64 ]; then
    # Like every shipped target: the size profile with std built for size (cross/build.sh;
    # cargo is incremental, so a second call only checks).
    debbin="$TD/dist/x86_64-unknown-linux-gnu"
    cross/build.sh x86_64-unknown-linux-gnu
  else
    triple=$(glibc_triple "$arch")
    debbin="$TD/dist/$triple"
    has_bins "$debbin" || cross/build.sh "$triple"
  fi
  ipkbin="$debbin"
  m=$(musl_triple "$arch")
  if has_bins "$TD/dist/$m"; then ipkbin="$TD/dist/$m"; fi
  echo "== packaging: $arch (.deb from $debbin, .ipk from $ipkbin)"
  built=()
  for pkg in cwmpd cwmp-connreq; do
    build_deb "$pkg" "$arch" "$debbin"
    build_ipk "$pkg" "$arch" "$ipkbin"
  done
  for f in "${built[@]}"; do
    printf '%10s B  %s\n' "$(stat -c %s "$f")" "$f"
  done
done
