#!/usr/bin/env bash
# cross/setup.sh: installs what cross/ needs, each step skipped when already there: Debian packages
# (qemu-user, the aarch64 binutils and sysroot, mosquitto + clients), the rustup target, zig from
# the ziglang PyPI wheel and cargo-zigbuild + cargo-deb from crates.io, at the versions pinned in
# cross/env.sh, into $CROSS_TOOLS (outside the clone: CI runs on this machine reuse them).
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

pkgs=()
command -v qemu-aarch64 >/dev/null || pkgs+=(qemu-user)
command -v aarch64-linux-gnu-readelf >/dev/null || pkgs+=(binutils-aarch64-linux-gnu)
[ -e "$A64_SYSROOT/lib/ld-linux-aarch64.so.1" ] || pkgs+=(libc6-arm64-cross)
[ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
command -v mosquitto_sub >/dev/null || pkgs+=(mosquitto-clients)
command -v systemd-analyze >/dev/null || pkgs+=(systemd)
command -v dpkg-statoverride >/dev/null || pkgs+=(dpkg)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "== apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

rustup target list --installed | grep -qx "$A64" || rustup target add "$A64"

mkdir -p "$CROSS_TOOLS"
if ! [ -x "$CROSS_TOOLS/ziglang-$CROSS_ZIG_VERSION/ziglang/zig" ]; then
  echo "== pip install ziglang==$CROSS_ZIG_VERSION (into $CROSS_TOOLS)"
  python3 -m pip install --quiet --disable-pip-version-check \
    --target "$CROSS_TOOLS/ziglang-$CROSS_ZIG_VERSION" "ziglang==$CROSS_ZIG_VERSION"
fi
# the qemu daemon test validates the payloads against docs/schemas/
if ! python3 -c "import jsonschema" 2>/dev/null; then
  echo "== pip install jsonschema"
  python3 -m pip install --quiet --disable-pip-version-check "jsonschema==4.26.0"
fi
# cargo install writes <root>/.crates.toml; a tool at another version is replaced.
installed() { grep -q "^\"$1 $2 " "$CROSS_TOOLS/.crates.toml" 2>/dev/null && [ -x "$CROSS_TOOLS/bin/$1" ]; }
for tool in "cargo-zigbuild $CROSS_ZIGBUILD_VERSION" "cargo-deb $CROSS_CARGO_DEB_VERSION"; do
  read -r name version <<<"$tool"
  if ! installed "$name" "$version"; then
    echo "== cargo install $name@$version (into $CROSS_TOOLS)"
    # with the toolchain of rust-toolchain.toml; its own build folder beside the tools
    CARGO_INSTALL_ROOT="$CROSS_TOOLS" CARGO_TARGET_DIR="$CROSS_TOOLS/build" \
      cargo install --quiet --locked "$name@$version"
  fi
done
echo "tools: zig $(zig version), $(cargo-zigbuild --version), $(cargo-deb --version 2>&1 | head -1), $(qemu-aarch64 --version | head -1)"
