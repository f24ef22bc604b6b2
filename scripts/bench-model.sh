#!/usr/bin/env bash
# Benchmark of model inference on this machine, all models measured in one run on the same input
# (`mammo-edge bench --profile` and `scripts/bench_ort.py --profile` add the time per operator):
# tract (the appliance's runtime, `mammo-edge bench`) and onnxruntime (Python, one thread like
# tract), for each model given, e.g. the float32 and the int8 demo model.
# Usage: scripts/bench-model.sh MODEL.onnx [MODEL.int8.onnx ...] > docs/bench-model.md
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 MODEL.onnx [MODEL...]" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/mammo-edge/target}"
# BIN: an already built mammo-edge (skips the build)
bin="${BIN:-$CARGO_TARGET_DIR/release/mammo-edge}"
[ -n "${BIN:-}" ] || cargo build --release --quiet --bin mammo-edge
runs="${RUNS:-50}"

echo "# Model inference benchmark"
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); $(date -u +%Y-%m-%d)."
echo "One forward pass (all heads) on one seeded noise image, $runs timed runs after 3 warm-ups; median."
echo
echo "## tract (release build, \`mammo-edge bench\`)"
echo
"$bin" bench --runs "$runs" "$@" 2>/dev/null
echo
echo "## onnxruntime $(python3 -c 'import onnxruntime; print(onnxruntime.__version__)') (CPU, 1 thread), same files"
echo
python3 scripts/bench_ort.py --runs "$runs" "$@"
