#!/usr/bin/env bash
# Training speed of every Burn backend that builds here, beside PyTorch on the same network, in one
# run: images/s of one optimizer step (forward through all heads and the decoder, masked
# multi-task loss, backward, AdamW; batch 16) at each size, the ratio to PyTorch, and the share of
# the float32 GEMM peak numpy reaches on the same cores. Then one real `fit` epoch on phantoms with
# the default backend, for the share of time the step waited for data.
#
#   scripts/bench-train.sh > docs/bench-train.md
#
# Needs: PyTorch 2.9.0 (pip install torch==2.9.0; its LibTorch is what the libtorch backend links),
# numpy. Environment: SIZES (default "256x160 512x320"), STEPS (timed steps, default 5),
# BACKENDS (default "libtorch flex candle ndarray"), SLOW_STEPS (steps for ndarray, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
export LIBTORCH_USE_PYTORCH=1
sizes=${SIZES:-"256x160 512x320"}
steps=${STEPS:-5}
slow_steps=${SLOW_STEPS:-2}
backends=${BACKENDS:-"libtorch flex candle ndarray"}
target=${CARGO_TARGET_DIR:-target}
cargo build --quiet --release --features train,libtorch,candle --bins >&2
bin="$target/release"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

python3 scripts/bench_train_torch.py --sgemm > "$out/sgemm.json"
for size in $sizes; do
  h=${size%x*}; w=${size#*x}
  for b in $backends; do
    n=$steps; warm=2
    [ "$b" = ndarray ] && { n=$slow_steps; warm=1; }
    echo "bench: $b $size" >&2
    "$bin/mammo-train" bench-step --backend "$b" --height "$h" --width "$w" --steps "$n" \
      --warmup "$warm" >> "$out/rows.jsonl" || echo "{\"backend\": \"$b\", \"height\": $h, \"width\": $w, \"failed\": true}" >> "$out/rows.jsonl"
  done
  echo "bench: pytorch $size" >&2
  python3 scripts/bench_train_torch.py --height "$h" --width "$w" --steps "$steps" >> "$out/rows.jsonl"
done

# one real epoch: decoding is cached before training; augmentation runs beside the step
echo "bench: fit epoch" >&2
"$bin/mammo-edge" synth --out "$out/synth" --count 96 --seed 11 --scale 0.25 >/dev/null 2>&1
"$bin/mammo-train" fit --manifest "$out/synth/manifest.csv" --out "$out/run" --epochs 2 \
  --height 512 --width 320 2> "$out/fit.log" >/dev/null

python3 - "$out" <<'EOF'
import json, os, platform, subprocess, sys
out = sys.argv[1]
peak = json.load(open(f"{out}/sgemm.json"))["sgemm_gflops"]
rows = [json.loads(l) for l in open(f"{out}/rows.jsonl")]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni") if f" {f}" in flags)
print("# Training speed: Burn backends beside PyTorch (`scripts/bench-train.sh`)\n")
print(f"One run on {os.cpu_count()} cores of {cpu} ({isa}); release build. One optimizer step =")
print("forward through every head and the decoder, the masked multi-task loss, backward and AdamW,")
print("batch 16, base 16 (`mammo-train bench-step`; PyTorch: `scripts/bench_train_torch.py`, the same")
print("network and loss). GFLOP/s count 2 per multiply-accumulate and backward as twice the forward.")
print(f"Peak for the share: numpy float32 GEMM on the same cores, same run: **{peak:.0f} GFLOP/s**.\n")
print("| size | backend | ms / step | images/s | × PyTorch | GFLOP/s | share of GEMM peak |")
print("|---|---|---:|---:|---:|---:|---:|")
for size in sorted({(r["height"], r["width"]) for r in rows}):
    group = [r for r in rows if (r["height"], r["width"]) == size]
    torch = next((r for r in group if r["backend"].startswith("pytorch")), None)
    for r in group:
        name = r["backend"] if r["backend"].startswith("pytorch") else f"burn {r['backend']}"
        if r.get("failed"):
            print(f"| {size[0]}×{size[1]} | {name} | failed | | | | |")
            continue
        ratio = r["images_per_s"] / torch["images_per_s"] if torch else float("nan")
        print(f"| {size[0]}×{size[1]} | {name} | {r['ms_per_step']:.0f} | {r['images_per_s']:.2f} | "
              f"{ratio:.2f} | {r['gflops']:.1f} | {100 * r['gflops'] / peak:.1f} % |")
log = open(f"{out}/fit.log").read().splitlines()
summary = next((l for l in reversed(log) if l.startswith("fit:")), "fit: (no summary)")
print("\nA real `mammo-train fit` (default backend, 96 phantoms at scale 0.25 → 512×320, 2 epochs;")
print("decode + preprocessing cached first, augmentation on a producer thread beside the step):\n")
print(f"    {summary}")
EOF
