#!/usr/bin/env bash
# cross/build.sh: release build of mammo-edge for the appliance, against glibc 2.31 (Ubuntu 20.04 /
# JetPack 5) with cargo-zigbuild: aarch64 by default, `cross/build.sh all` for aarch64 + x86_64
# (the amd64 .deb and the reference outputs of the qemu comparison). Appliance features only
# (--no-default-features). Prints the build time of each target.
#   cross/build.sh [aarch64|x86_64|all]
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

case "${1:-aarch64}" in
  aarch64) targets=("$A64") ;;
  x86_64) targets=("$X64") ;;
  all) targets=("$A64" "$X64") ;;
  *) echo "usage: cross/build.sh [aarch64|x86_64|all]" >&2; exit 2 ;;
esac

command -v cargo-zigbuild >/dev/null && command -v zig >/dev/null ||
  { echo "cargo-zigbuild or zig missing: run cross/setup.sh" >&2; exit 1; }

for t in "${targets[@]}"; do
  t0=$(date +%s)
  # `<triple>.2.31`: zig links against glibc 2.31's symbol versions; the output still goes to
  # $CARGO_TARGET_DIR/<triple>/release.
  cargo zigbuild --quiet --release --locked "${CARGO_FEATURE_ARGS[@]}" --bin mammo-edge \
    --target "$t.$GLIBC_MAX"
  echo "build $t (glibc $GLIBC_MAX): $(since "$t0") s"
done
