# Sourced by cross/build.sh, cross/qemu-test.sh and packaging/build.sh: what each cross target
# needs, and installing it from Debian (bookworm + bookworm-security) when it is missing.
# Expects TARGET to be set; sets arch, gnu, musl, qemu, sysroot, strip, cc.

cross_targets="x86_64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu mipsel-unknown-linux-gnu
armv7-unknown-linux-musleabihf aarch64-unknown-linux-musl mipsel-unknown-linux-musl"

cross_die() {
  echo "cross: $*" >&2
  exit 1
}

# Debian architecture name, GNU triple of the cross gcc, musl gcc wrapper (empty for glibc) and
# qemu-user binary of a Rust target.
cross_target_info() {
  musl=""
  case "$1" in
    # The host's own target, built the same way (std for size) for the amd64 package; no qemu.
    x86_64-unknown-linux-gnu) arch=amd64 gnu=x86_64-linux-gnu qemu=env ;;
    armv7-unknown-linux-gnueabihf) arch=armhf gnu=arm-linux-gnueabihf qemu=qemu-arm ;;
    aarch64-unknown-linux-gnu) arch=arm64 gnu=aarch64-linux-gnu qemu=qemu-aarch64 ;;
    mipsel-unknown-linux-gnu) arch=mipsel gnu=mipsel-linux-gnu qemu=qemu-mipsel ;;
    armv7-unknown-linux-musleabihf) arch=armhf gnu=arm-linux-gnueabihf musl=arm-linux-musleabihf qemu=qemu-arm ;;
    aarch64-unknown-linux-musl) arch=arm64 gnu=aarch64-linux-gnu musl=aarch64-linux-musl qemu=qemu-aarch64 ;;
    mipsel-unknown-linux-musl) arch=mipsel gnu=mipsel-linux-gnu musl=mipsel-linux-musl qemu=qemu-mipsel ;;
    *) cross_die "unknown target '$1'; known: $(echo $cross_targets)" ;;
  esac
  strip="$gnu-strip"
  if [ -n "$musl" ]; then
    cc="$musl-gcc"
    sysroot=""  # static binaries: qemu needs no -L
  elif [ "$arch" = amd64 ]; then
    cc="$gnu-gcc"
    sysroot=""  # native: the host's own libc
  else
    cc="$gnu-gcc"
    sysroot="/usr/$gnu"
  fi
}

# Installs (as root) whatever of the Debian toolchain the target lacks: rustc-web/cargo-web 1.96
# with rust-web-src (std is built from source with -Zbuild-std), the cross gcc and glibc, the
# musl wrappers for musl targets, qemu-user when $1 is "qemu".
cross_install() {
  local want=() p
  [ -x /usr/bin/rustc ] && /usr/bin/rustc --version 2>/dev/null | grep -q '^rustc 1\.9[6-9]' || want+=(rustc-web cargo-web)
  [ -x /usr/bin/cargo ] || want+=(cargo-web)
  [ -d /usr/lib/rustlib/src/rust/library ] || want+=(rust-web-src)
  if [ "$arch" = amd64 ]; then
    command -v "$gnu-gcc" >/dev/null || want+=(gcc)
    [ -e "/usr/lib/$gnu/libc.so" ] || want+=(libc6-dev)
  else
    command -v "$gnu-gcc" >/dev/null || want+=("gcc-$gnu")
    [ -e "/usr/$gnu/lib/libc.so" ] || want+=("libc6-dev-$arch-cross")
  fi
  if [ -n "$musl" ] && ! command -v "$musl-gcc" >/dev/null; then
    dpkg --print-foreign-architectures | grep -qx "$arch" || {
      [ "$(id -u)" = 0 ] || cross_die "need 'dpkg --add-architecture $arch' (run as root)"
      dpkg --add-architecture "$arch"
    }
    want+=("musl-dev:$arch")
  fi
  if [ "${1:-}" = qemu ]; then
    command -v "$qemu" >/dev/null || want+=(qemu-user)
  fi
  if [ "${#want[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || cross_die "missing Debian packages: ${want[*]} (run as root, or install them)"
    echo "== cross: installing ${want[*]}"
    # A foreign architecture's list can fail to refresh (size mismatch while the mirror syncs);
    # apt then carries on with what it has, which is enough for these packages.
    apt-get update -qq || echo "== cross: apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  fi
  # std is built from rust-web-src, which must be the same version as the compiler.
  local rv sv
  rv=$(dpkg-query -W -f '${Version}' rustc-web 2>/dev/null || true)
  sv=$(dpkg-query -W -f '${Version}' rust-web-src 2>/dev/null || true)
  [ -n "$rv" ] && [ "$rv" = "$sv" ] || cross_die "rustc-web ($rv) and rust-web-src ($sv) differ"
  for p in /usr/bin/rustc /usr/bin/cargo "$(command -v "$cc")"; do
    [ -x "$p" ] || cross_die "missing $p"
  done
}

# The environment for Debian's cargo and rustc (rustup's rustc cannot use Debian's std, and
# rustup usually comes first in PATH) and for cc-rs (ring's C code).
cross_cargo_env() {
  local t
  t=$(echo "$TARGET" | tr '[:lower:]-' '[:upper:]_')
  export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
  export "CC_${TARGET//-/_}=$cc" "AR_${TARGET//-/_}=$gnu-ar"
  # The agent's size comes from the profile; this build keeps symbols so that the size of each
  # dependency can be measured, and build.sh strips a copy with the cross binutils.
  export "CARGO_PROFILE_$(echo "$PROFILE" | tr '[:lower:]-' '[:upper:]_')_STRIP=false"
  unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS "CARGO_TARGET_${t}_RUSTFLAGS"
}

# gcc's unwinder as the libunwind.a that std links on musl, plus a stub for glibc's
# _dl_find_object that gcc 12's libgcc_eh calls and musl lacks (returning -1 makes libgcc fall
# back to dl_iterate_phdr). Echoes the directory. Only panic=abort builds were exercised.
cross_musl_unwind() {
  local d="$1/musl-unwind/$arch"
  if [ ! -e "$d/libunwind.a" ]; then
    mkdir -p "$d"
    cp "$("$gnu-gcc" -print-file-name=libgcc_eh.a)" "$d/libunwind.a.tmp"
    echo 'int _dl_find_object(void *pc, void *out) { (void)pc; (void)out; return -1; }' >"$d/dl_find_object_stub.c"
    "$gnu-gcc" -O2 -c "$d/dl_find_object_stub.c" -o "$d/dl_find_object_stub.o"
    "$gnu-ar" rcs "$d/libunwind.a.tmp" "$d/dl_find_object_stub.o"
    mv "$d/libunwind.a.tmp" "$d/libunwind.a"
  fi
  echo "$d"
}
