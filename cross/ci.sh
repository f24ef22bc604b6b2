#!/usr/bin/env bash
# cross/ci.sh: everything of the ARM64 deployment in one run (called by .ci/run): tools, the
# aarch64 + x86_64 release builds for glibc 2.31, the glibc check (and a self-test that it can
# fail), tract-linalg's aarch64 kernels, the .deb files and their checks (with the unit's exposure
# score), the qemu tests and the x86_64-vs-aarch64 comparison. Ends with a summary (sizes, highest
# GLIBC, exposure, times), also written to $CARGO_TARGET_DIR/cross-report/summary.md.
#   MAMMO_TEST_DATA         the real test data folder (required)
#   MAMMO_CROSS_SKIP_BUILD  1: use the binaries already built (developers; CI always rebuilds)
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$(date +%s)
. cross/env.sh
: "${MAMMO_TEST_DATA:?set MAMMO_TEST_DATA to the real test data folder}"
times=()
step() { # name, command...
  local name="$1" t0
  shift
  t0=$(date +%s)
  echo "== cross: $name"
  "$@"
  times+=("$name: $(since "$t0") s")
}

step "tools (cross/setup.sh)" cross/setup.sh
if [ "${MAMMO_CROSS_SKIP_BUILD:-0}" != 1 ]; then
  # The cache is shared with other checkouts (see .ci/run): rebuild this package, keep the rest.
  for t in "$A64" "$X64"; do
    cargo clean --quiet --release --target "$t" -p mammo-edge 2>/dev/null || true
  done
  step "build aarch64 + x86_64 (cross/build.sh all)" cross/build.sh all
fi

step "glibc <= $GLIBC_MAX (cross/check-glibc.sh)" cross/check-glibc.sh "$A64_BIN" "$X64_BIN"
# The check must be able to fail: this machine's own binaries need a newer glibc.
if [ "$(ldd --version | head -1 | grep -o '[0-9.]*$')" != "$GLIBC_MAX" ]; then
  if cross/check-glibc.sh "$(command -v mosquitto_sub)" >/dev/null; then
    echo "FAIL: check-glibc.sh accepted $(command -v mosquitto_sub), built for a newer glibc" >&2
    exit 1
  fi
  echo "self-test: check-glibc.sh refuses $(command -v mosquitto_sub) (built against this machine's glibc)"
fi
step "tract-linalg aarch64 kernels (cross/check-kernels.sh)" cross/check-kernels.sh

step "unit directives newer than systemd 245 marked (cross/check-unit-245.sh)" cross/check-unit-245.sh
step ".deb arm64 + amd64 (cross/deb.sh)" cross/deb.sh all
step ".deb contents, unit, conffile, exposure (cross/test-deb.sh)" cross/test-deb.sh all
step "qemu: --version, check, infer vs x86_64 (cross/test-qemu.sh)" cross/test-qemu.sh
step "qemu: daemon against mosquitto (cross/test-daemon-qemu.sh)" cross/test-daemon-qemu.sh

report="$CARGO_TARGET_DIR/cross-report"
size_a64="$(stat -c %s "$A64_BIN")" size_x64="$(stat -c %s "$X64_BIN")"
glibc_of() {
  readelf --wide -V "$1" | grep -o 'Name: GLIBC_[0-9.]*' | sed 's/Name: //' | sort -V | tail -1
}
{
  echo "## ARM64 build summary"
  echo
  # zig's linker already strips the symbol table (rustc's default strip=debuginfo becomes a full strip)
  echo "- binary size: aarch64 $size_a64 bytes ($((size_a64 / 1048576)) MiB), x86_64 $size_x64 bytes ($((size_x64 / 1048576)) MiB), stripped"
  echo "- highest glibc symbol version: aarch64 $(glibc_of "$A64_BIN"), x86_64 $(glibc_of "$X64_BIN") (limit $GLIBC_MAX)"
  echo "- exposure: $(systemd-analyze security --offline=true systemd/mammo-edge.service 2>/dev/null | tail -1)"
  for d in "$CARGO_TARGET_DIR"/debian/mammo-edge_*.deb; do echo "- $(basename "$d"): $(stat -c %s "$d") bytes"; done
  echo "- $(cat "$report/int8-kernel.txt")"
  echo "- qemu CPU: $QEMU_CPU; times: $(printf '%s; ' "${times[@]}")total $(since "$t_start") s"
  echo
  echo "### x86_64 vs aarch64 (qemu) infer outputs"
  echo
  cat "$report/comparison.md"
} > "$report/summary.md"
cat "$report/summary.md"
