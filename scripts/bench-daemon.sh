#!/usr/bin/env bash
# Daemon benchmark (release build): latency file close → PUBACK on the real mammograms of
# MAMMO_TEST_DATA, the same files sent by C-STORE (storescu → PUBACK, → SR at storescp), a four-view
# exam by C-STORE, and the burst of BURST (500) phantoms (peak RSS, throughput).
# Usage: MAMMO_TEST_DATA=../shared/data scripts/bench-daemon.sh > docs/bench-daemon.md
# Env: BIN (skip the build), MODEL (default the int8 demo model; its float32 twin beside it is
# timed too, model.precision = "auto"), BURST, SCALE, THREADS. Anchors need pydicom +
# pylibjpeg-openjpeg, onnxruntime and opj_decompress (apt-get install libopenjp2-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/mammo-edge/target}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin mammo-edge
  BIN="$CARGO_TARGET_DIR/release/mammo-edge"
fi
exec python3 scripts/bench_daemon.py --bin "$BIN" --model "${MODEL:-models/mammo-mtl-demo.int8.onnx}" \
  --data "${MAMMO_TEST_DATA:-}" --burst "${BURST:-500}" --scale "${SCALE:-0.25}" --threads "${THREADS:-1}"
