#!/usr/bin/env bash
# cross/stb-image.sh ARCH    ARCH: armhf (qemu-system-arm -M virt), arm64 (qemu-system-aarch64
#                                  -M virt), mipsel (qemu-system-mipsel -M malta)
# Builds an emulated set-top box from Debian packages and this project's own build:
#   a Debian kernel (linux-image-armmp / -arm64 / -4kc-malta, downloaded, not installed), a
#   BusyBox initramfs that is the box's boot stage (cross/stb/bootloader-init: A/B firmware
#   slots with try-once and rollback), and firmware images whose root file system holds BusyBox,
#   the agent installed from its own .deb (packaging/build.sh: binary, data model, the shipped
#   init script started by init), the middleware stand-in (crates/stb-middleware) and the
#   box's scripts (cross/stb/rootfs).
# Output in $CARGO_TARGET_DIR/stb/ARCH/ (README there):
#   vmlinuz, initrd.img      the kernel and the boot stage
#   flash.img                64 MiB ext4 "flash": slot a = firmware.img, slot b empty, data/
#   firmware.img             the image in slot a (version VERSION.1)
#   firmware-next.img        the same box with version VERSION.2 (a firmware upgrade)
#   firmware-broken.img      version VERSION.3-broken: installs and boots, but its agent
#                            configuration is invalid, so it fails its boot check (rollback test)
#   boot.sh                  boots it: qemu-system with user-mode networking (box 10.0.2.15,
#                            host 10.0.2.2); env STB_FLASH, STB_APPEND, STB_HOSTFWD, STB_MEM
# Firmware image format: a 512-byte text header ("CWMPD-STB-FIRMWARE 1", then "arch A",
# "version V", "size N", "sha256 H" lines, padded with newlines), then N bytes: the root file
# system as a gzip'd newc cpio archive, whose sha256 is H.
# Env: CARGO_TARGET_DIR, STB_VERSION (default <package version>-stb), STB_OUT (output directory).
# Installs what it needs from Debian when missing (as root): cpio, e2fsprogs, qemu-system for
# the architecture, the foreign architecture's package lists.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
cd "$(dirname "$0")/.."
ROOT=$PWD
TD=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$TD"
TD=$(cd "$TD" && pwd)
export CARGO_TARGET_DIR="$TD"

die() {
  echo "stb-image: $*" >&2
  exit 1
}
[ $# -eq 1 ] || die "usage: cross/stb-image.sh ARCH   (armhf arm64 mipsel)"
ARCH=$1
case "$ARCH" in
  armhf)
    TARGET=armv7-unknown-linux-gnueabihf kmeta=linux-image-armmp qpkg=qemu-system-arm
    qsys="qemu-system-arm -M virt -cpu cortex-a15" console=ttyAMA0 bus=device
    ;;
  arm64)
    TARGET=aarch64-unknown-linux-gnu kmeta=linux-image-arm64 qpkg=qemu-system-arm
    qsys="qemu-system-aarch64 -M virt -cpu cortex-a53" console=ttyAMA0 bus=device
    ;;
  mipsel)
    TARGET=mipsel-unknown-linux-gnu kmeta=linux-image-4kc-malta qpkg=qemu-system-mips
    qsys="qemu-system-mipsel -M malta -cpu 24Kc" console=ttyS0 bus=pci
    ;;
  *) die "unknown architecture '$ARCH' (armhf arm64 mipsel)" ;;
esac
# virtio over MMIO (virt boards) or PCI (Malta); block, net and rng; ext4 (and the crc32c it
# asks the crypto API for) for the flash.
if [ "$bus" = device ]; then transport=virtio_mmio; else transport=virtio_pci; fi
modules=("$transport" virtio_blk virtio_net virtio-rng crc32c_generic ext4)
# shellcheck source=cross/env.sh
. cross/env.sh
cross_target_info "$TARGET"
PKGVER=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
VERSION=${STB_VERSION:-$PKGVER-stb}
OUT=${STB_OUT:-$TD/stb/$ARCH}
CACHE=$TD/stb/cache/$ARCH
mkdir -p "$OUT" "$CACHE"

# --- tools and Debian packages -------------------------------------------------------------
need=()
command -v cpio >/dev/null || need+=(cpio)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v depmod >/dev/null || [ -x /sbin/depmod ] || need+=(kmod)
command -v "${qsys%% *}" >/dev/null || need+=("$qpkg")
if ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
  [ "$(id -u)" = 0 ] || die "the Debian architecture $ARCH is not enabled (dpkg --add-architecture $ARCH, as root)"
  dpkg --add-architecture "$ARCH"
  apt-get update -qq || echo "stb-image: apt-get update reported errors; going on with the lists it has" >&2
fi
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need[*]} (install them, or run as root)"
  echo "== stb-image: installing ${need[*]}"
  apt-get update -qq || echo "stb-image: apt-get update reported errors; going on with the lists it has" >&2
  # This machine kind may carry a newer qemu-utils from backports that breaks Debian 12's
  # qemu-system-common: take the matching one (qemu-img stays available).
  extra=()
  case " ${need[*]} " in *" qemu-system"*) extra+=(--allow-downgrades "qemu-utils/$(. /etc/os-release && echo "$VERSION_CODENAME")") ;; esac
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" "${extra[@]}" >/dev/null
fi
kpkg=$(apt-cache depends "$kmeta:$ARCH" | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || die "no kernel package behind $kmeta:$ARCH"
kpkg=${kpkg%%:*}
fetch() { # fetch PACKAGE: its .deb in $CACHE (downloaded once)
  local f
  f=$(find "$CACHE" -maxdepth 1 -name "${1}_*_${ARCH}.deb" | head -n1)
  if [ -z "$f" ]; then
    (cd "$CACHE" && apt-get download -q "$1:$ARCH" >/dev/null 2>&1) || die "cannot download $1:$ARCH"
    f=$(find "$CACHE" -maxdepth 1 -name "${1}_*_${ARCH}.deb" | head -n1)
  fi
  echo "$f"
}
kdeb=$(fetch "$kpkg")
bbdeb=$(fetch busybox-static)
W=$(mktemp -d "$TD/stb/.work.XXXXXX")
trap 'rm -rf "$W"' EXIT
dpkg-deb -x "$kdeb" "$W/kernel"
dpkg-deb -x "$bbdeb" "$W/busybox"
BB=$W/busybox/bin/busybox
[ -x "$BB" ] || die "no busybox in $bbdeb"
KV=$(ls "$W/kernel/lib/modules")
# The package leaves modules.dep to its postinst: generate it for the unpacked tree.
depmod -b "$W/kernel" "$KV" || die "depmod failed"

# --- the project's binaries and package ------------------------------------------------------
dist=$TD/dist/$TARGET
# (cargo makes this a no-op when the middleware is up to date)
CROSS_FEATURE_SET=stb bash cross/build.sh "$TARGET" >/dev/null
[ -x "$dist/stb/stb-middleware" ] || die "no stb-middleware in $dist/stb"
echo "== stb-image: the agent's package (packaging/build.sh $ARCH)"
bash packaging/build.sh "$ARCH" >/dev/null
deb=$(ls -t "$TD"/packages/cwmpd_*_"$ARCH".deb | head -n1)
[ -f "$deb" ] || die "no cwmpd .deb for $ARCH"

# --- kernel and boot stage -------------------------------------------------------------------
kimg=$(find "$W/kernel/boot" -name 'vmlinu[xz]-*' | head -n1)
[ -n "$kimg" ] || die "no kernel image in $kdeb"
cp "$kimg" "$OUT/vmlinuz"

I=$W/initramfs
mkdir -p "$I/bin" "$I/lib/modules" "$I/etc"
cp "$BB" "$I/bin/busybox"
cp cross/stb/bootloader-init "$I/init"
chmod 755 "$I/init"
echo "$ARCH" > "$I/etc/stb-arch"
mdir=$W/kernel/lib/modules/$KV
loaded=" "
add_module() { # add_module PATH (relative to $mdir): its dependencies first
  local p=$1 deps d i
  case "$loaded" in *" $p "*) return ;; esac
  deps=$(grep "^$p:" "$mdir/modules.dep" | cut -d: -f2)
  # modules.dep lists what a module needs with the deepest dependency last.
  local arr=($deps)
  for ((i = ${#arr[@]} - 1; i >= 0; i--)); do add_module "${arr[$i]}"; done
  loaded="$loaded$p "
  local name
  name=$(basename "$p")
  case "$name" in
    *.ko.xz) xz -dc "$mdir/$p" > "$I/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$mdir/$p" > "$I/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$mdir/$p" "$I/lib/modules/$name" ;;
  esac
  echo "$name" >> "$I/lib/modules/load.list"
}
: > "$I/lib/modules/load.list"
for m in "${modules[@]}"; do
  p=$(grep -oE "^[^:]*/$m\.ko(\.xz|\.zst)?:" "$mdir/modules.dep" | head -n1 | tr -d :)
  if [ -n "$p" ]; then
    add_module "$p"
  elif grep -qE "/$m\.ko$" "$mdir/modules.builtin"; then
    :
  else
    die "kernel $KV has no module $m"
  fi
done
(cd "$I" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9n) > "$OUT/initrd.img"

# --- firmware images -------------------------------------------------------------------------
# Libraries of a dynamic binary (and theirs), from the cross toolchain's glibc.
copy_libs() { # copy_libs ROOTFS BINARY...
  local r=$1 b l interp todo=() seen=" "
  shift
  for b in "$@"; do
    interp=$($gnu-readelf -l "$b" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
    if [ -n "$interp" ] && [ ! -e "$r$interp" ]; then
      mkdir -p "$r$(dirname "$interp")"
      cp -L "$sysroot/lib/$(basename "$interp")" "$r$interp"
    fi
    todo+=("$b")
  done
  while [ "${#todo[@]}" -gt 0 ]; do
    b=${todo[0]}
    todo=("${todo[@]:1}")
    for l in $($gnu-readelf -d "$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case "$seen" in *" $l "*) continue ;; esac
      seen="$seen$l "
      [ -e "$sysroot/lib/$l" ] || die "library $l of $b not in $sysroot/lib"
      cp -L "$sysroot/lib/$l" "$r/lib/$l"
      todo+=("$r/lib/$l")
    done
  done
}

make_firmware() { # make_firmware VERSION OUTPUT [broken]
  local v=$1 out=$2 broken=${3:-} R=$W/rootfs-$1
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,etc,proc,sys,dev,tmp,run,flash,var,root}
  cp "$BB" "$R/bin/busybox"
  ln -s busybox "$R/bin/sh"
  ln -s ../bin/busybox "$R/sbin/init"
  # The agent from its own package: binary, data model, configuration, init script.
  dpkg-deb -x "$deb" "$R"
  cp -a cross/stb/rootfs/. "$R/"
  ln -s cwmpd "$R/etc/init.d/S60cwmpd"
  cp "$dist/stb/stb-middleware" "$R/usr/bin/stb-middleware"
  copy_libs "$R" "$R/usr/sbin/cwmpd" "$R/usr/bin/stb-middleware"
  echo "$ARCH" > "$R/etc/stb-arch"
  echo stb > "$R/etc/hostname"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
  printf 'root:x:0:\n' > "$R/etc/group"
  printf '127.0.0.1 localhost\n' > "$R/etc/hosts"
  printf 'NAME="cwmpd emulated STB"\nID=cwmpd-stb\nVERSION_ID="%s"\nPRETTY_NAME="cwmpd emulated STB %s (%s)"\n' \
    "$v" "$v" "$ARCH" > "$R/etc/os-release"
  if [ -n "$broken" ]; then
    # A release with a broken agent configuration: the box boots, the agent refuses to start.
    printf '\n[broken]\nwhy = "a test firmware that fails its boot check"\n' >> "$R/etc/cwmpd/cwmpd.toml"
  fi
  (cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9n) > "$W/payload"
  local size sum hdr
  size=$(stat -c %s "$W/payload")
  sum=$(sha256sum "$W/payload" | cut -d' ' -f1)
  hdr=$(printf 'CWMPD-STB-FIRMWARE 1\narch %s\nversion %s\nsize %s\nsha256 %s\n' "$ARCH" "$v" "$size" "$sum")
  { printf '%s\n' "$hdr"; head -c $((512 - ${#hdr} - 1)) /dev/zero | tr '\0' '\n'; cat "$W/payload"; } > "$out"
  [ "$(stat -c %s "$out")" = $((512 + size)) ] || die "bad image header size"
}
make_firmware "$VERSION.1" "$OUT/firmware.img"
make_firmware "$VERSION.2" "$OUT/firmware-next.img"
make_firmware "$VERSION.3-broken" "$OUT/firmware-broken.img" broken

# --- flash -----------------------------------------------------------------------------------
F=$W/flash
mkdir -p "$F/boot" "$F/slot-a" "$F/slot-b" "$F/data" "$F/config"
cp "$OUT/firmware.img" "$F/slot-a/firmware.img"
echo a > "$F/boot/active"
rm -f "$OUT/flash.img"
mke2fs -q -t ext4 -L stb-flash -E root_owner=0:0 -d "$F" "$OUT/flash.img" 64M

# --- boot script and README ------------------------------------------------------------------
if [ "$bus" = device ]; then
  dev() { echo "virtio-$1-device"; }
  netdev=virtio-net-device
else
  dev() { echo "virtio-$1-pci"; }
  # No option ROM for the PCI NIC (the kernel is loaded directly; no ipxe-qemu needed).
  netdev=virtio-net-pci,romfile=
fi
cat > "$OUT/boot.sh" <<EOF
#!/bin/sh
# Boots the emulated STB ($ARCH) built by cross/stb-image.sh; the console is this terminal
# (press Enter for a shell; Ctrl-A X quits). The box is 10.0.2.15 behind the emulator's NAT;
# the host is 10.0.2.2 from inside.
# Env: STB_FLASH    flash image (default: flash.img here; the box writes to it)
#      STB_APPEND   kernel command-line words, e.g. "cwmpd.acs=http://10.0.2.2:7557/"
#      STB_HOSTFWD  port forwards, e.g. ",hostfwd=tcp:127.0.0.1:17547-:7547"
#      STB_MEM      memory in MiB (default 256)
d=\$(cd "\$(dirname "\$0")" && pwd)
exec $qsys -m "\${STB_MEM:-256}" -nodefaults -no-user-config -display none \\
  -serial mon:stdio \\
  -kernel "\$d/vmlinuz" -initrd "\$d/initrd.img" \\
  -append "console=$console rdinit=/init panic=1 quiet \${STB_APPEND:-}" \\
  -drive "file=\${STB_FLASH:-\$d/flash.img},if=none,format=raw,id=flash" -device $(dev blk),drive=flash \\
  -netdev "user,id=net0\${STB_HOSTFWD:-}" -device $netdev,netdev=net0 \\
  -device $(dev rng)
EOF
chmod 755 "$OUT/boot.sh"
cat > "$OUT/README" <<EOF
Emulated STB ($ARCH), built by cross/stb-image.sh on $(date -u +%Y-%m-%d) from $kpkg and busybox-static.
Firmware: $VERSION.1 in slot a (firmware.img); upgrades: firmware-next.img ($VERSION.2),
firmware-broken.img ($VERSION.3-broken, fails its boot check: rollback).
Boot (box 10.0.2.15, host 10.0.2.2; HTTP CRs forwarded from 127.0.0.1:17547):
  STB_APPEND="cwmpd.acs=http://10.0.2.2:7557/ cwmpd.public_url=http://127.0.0.1:17547/" \\
  STB_HOSTFWD=",hostfwd=tcp:127.0.0.1:17547-:7547" $OUT/boot.sh
i.e. $qsys -m 256 -nodefaults -display none -serial mon:stdio -kernel vmlinuz -initrd initrd.img \\
  -append "console=$console rdinit=/init panic=1 quiet cwmpd.acs=..." \\
  -drive file=flash.img,if=none,format=raw,id=flash -device $(dev blk),drive=flash \\
  -netdev user,id=net0,hostfwd=tcp:127.0.0.1:17547-:7547 -device $netdev,netdev=net0 -device $(dev rng)
EOF
echo "== stb-image: $OUT"
ls -l "$OUT"
