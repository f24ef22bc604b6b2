#!/usr/bin/env bash
# cross/deb.sh: the .deb packages (cargo-deb, [package.metadata.deb] in Cargo.toml) for arm64 and
# amd64 from the binaries of cross/build.sh (not rebuilt here), stripped with the target's strip.
# Written to $CARGO_TARGET_DIR/debian/ and listed with their sizes.
#   cross/deb.sh [aarch64|x86_64|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

case "${1:-all}" in
  aarch64) targets=("$A64") ;;
  x86_64) targets=("$X64") ;;
  all) targets=("$A64" "$X64") ;;
  *) echo "usage: cross/deb.sh [aarch64|x86_64|all]" >&2; exit 2 ;;
esac
command -v cargo-deb >/dev/null || { echo "cargo-deb missing: run cross/setup.sh" >&2; exit 1; }

mkdir -p "$CARGO_TARGET_DIR/debian"
for t in "${targets[@]}"; do
  bin="$CARGO_TARGET_DIR/$t/release/mammo-edge"
  [ -x "$bin" ] || { echo "$bin missing: run cross/build.sh" >&2; exit 1; }
  tools=()
  if [ "$t" = "$A64" ]; then
    # binutils-aarch64-linux-gnu; cargo-deb reads STRIP_<triple> / OBJCOPY_<triple>
    tools=("STRIP_$t=$(command -v aarch64-linux-gnu-strip)" "OBJCOPY_$t=$(command -v aarch64-linux-gnu-objcopy)")
  fi
  t0=$(date +%s)
  deb="$(env "${tools[@]}" cargo deb --quiet --no-build --target "$t" --output "$CARGO_TARGET_DIR/debian/")"
  echo "$deb: $(stat -c %s "$deb") bytes ($(since "$t0") s)"
done
