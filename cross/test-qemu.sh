#!/usr/bin/env bash
# cross/test-qemu.sh: the aarch64 binary under qemu-aarch64 (Debian qemu-user, aarch64 sysroot of
# libc6-arm64-cross, CPU $QEMU_CPU): --version, `check` with the shipped model, and `infer` (JSON)
# with the float32 and the int8 model on a 4-view phantom exam (scale 0.1) and real mammograms,
# compared with the x86_64 binary (cross/compare.py: f32 within 1e-4, int8 within one
# quantisation step, same classes), and which int8 kernel tract runs (qemu's -d in_asm log).
# Needs both binaries (cross/build.sh all) and python3 with onnx (as .ci/run installs).
#   MAMMO_TEST_DATA  folder of the real test data (real-mammo/); required
#   MAMMO_CROSS_REAL which real mammograms: "all" (two GE, two Hologic; the default, ~30 s under
#                    qemu), "ge" (one GE), "none"
#   MAMMO_CROSS_OUT  report folder (default $CARGO_TARGET_DIR/cross-report): outputs, comparison.md
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

for b in "$A64_BIN" "$X64_BIN"; do
  [ -x "$b" ] || { echo "$b missing: run cross/build.sh all" >&2; exit 1; }
done
command -v qemu-aarch64 >/dev/null || { echo "qemu-aarch64 missing: run cross/setup.sh" >&2; exit 1; }
[ -e "$A64_SYSROOT/lib/ld-linux-aarch64.so.1" ] ||
  { echo "$A64_SYSROOT: no aarch64 loader (apt-get install libc6-arm64-cross)" >&2; exit 1; }
data="${MAMMO_TEST_DATA:?set MAMMO_TEST_DATA to the real test data folder}"
[ -d "$data/real-mammo" ] || { echo "$data/real-mammo: missing" >&2; exit 1; }

out="${MAMMO_CROSS_OUT:-$CARGO_TARGET_DIR/cross-report}"
rm -rf "$out"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== qemu-aarch64 -cpu $QEMU_CPU: --version"
v_a64="$(qemu_a64 "$A64_BIN" --version)"
v_x64="$("$X64_BIN" --version)"
echo "aarch64: $v_a64"
[ "$v_a64" = "$v_x64" ] || { echo "FAIL: x86_64 says $v_x64" >&2; exit 1; }

echo "== check --no-broker with the shipped int8 model"
mkdir -p "$work/export" "$work/state"
cat > "$work/config.toml" <<TOML
[watch]
dirs = ["$work/export"]
[state]
dir = "$work/state"
[model]
path = "$PWD/models/mammo-mtl-demo.int8.onnx"
TOML
t0=$(date +%s)
qemu_a64 "$A64_BIN" check --config "$work/config.toml" --no-broker | tee "$out/check.txt"
grep -q '^ok: config; model ' "$out/check.txt" || { echo "FAIL: check did not say ok" >&2; exit 1; }
echo "check: $(since "$t0") s"

echo "== inputs: a 4-view phantom exam (scale 0.1) and real mammograms (${MAMMO_CROSS_REAL:-all})"
"$X64_BIN" synth --out "$work/phantom" --count 4 --seed 11 --scale 0.1 --threads 2 2>&1 | sed 's/^/  /'
inputs=("$work/phantom/images")
case "${MAMMO_CROSS_REAL:-all}" in
  ge) inputs+=("$data/real-mammo/ge_senographe_R_CC_jpegll.dcm") ;;
  all) inputs+=("$data"/real-mammo/{ge_senographe_R_CC_jpegll,ge_senographe_L_CC_jpegll,hologic_selenia_L_CC_j2k,hologic_selenia_R_MLO_j2k}.dcm) ;;
  none) ;;
  *) echo "MAMMO_CROSS_REAL: ge, all or none" >&2; exit 2 ;;
esac

pairs=()
for kind in f32 int8; do
  model=models/mammo-mtl-demo.onnx
  [ "$kind" = int8 ] && model=models/mammo-mtl-demo.int8.onnx
  t0=$(date +%s)
  "$X64_BIN" infer --json --precision file --model "$model" "${inputs[@]}" > "$out/x86_64-$kind.jsonl" 2> "$out/x86_64-$kind.log"
  t_x64=$(since "$t0")
  t0=$(date +%s)
  qemu_a64 "$A64_BIN" infer --json --precision file --model "$model" "${inputs[@]}" > "$out/aarch64-$kind.jsonl" \
    2> "$out/aarch64-$kind.log"
  echo "infer $kind ($(grep -c '"file":' "$out/aarch64-$kind.jsonl") files): x86_64 ${t_x64} s, aarch64 under qemu $(since "$t0") s"
  pairs+=("$kind" "$model" "$out/x86_64-$kind.jsonl" "$out/aarch64-$kind.jsonl")
done

# Report (not a check): which int8 matmul kernel tract runs for the shipped model on this CPU.
# tract 0.23.9 picks arm64simd_mmm_i32_8x8_dot (SDOT) when the CPU has FEAT_DotProd (the plan says
# so: `mammo-edge bench --kernels`). qemu 7.2's disassembler does not know SDOT and prints it as
# `.byte`, so SDOT / UDOT (by element) are counted by their encoding, not their mnemonic.
one="$(find "$work/phantom/images" -name '*.dcm' | sort | head -1)"
qemu-aarch64 -cpu "$QEMU_CPU" -L "$A64_SYSROOT" -d in_asm -D "$work/in_asm.log" \
  "$A64_BIN" infer --precision file --model models/mammo-mtl-demo.int8.onnx "$one" > /dev/null 2>&1
# lines like "0x5501aadf38:  0f492150  smlal    v16.4s, v10.4h, v9.h[0]"
read -r sdot smlal < <(python3 - "$work/in_asm.log" <<'PY'
import re, sys
sdot = smlal = 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^0x[0-9a-f]+:\s+([0-9a-f]{8})\s+(\S+)", line)
    if not m:
        continue
    op = int(m.group(1), 16)
    sdot += (op & 0xBF00F400) == 0x0F00E000  # SDOT/UDOT (by element), Q either
    smlal += m.group(2) in ("smlal", "smlal2")
print(sdot, smlal)
PY
)
echo "int8 kernel run under qemu -cpu $QEMU_CPU (qemu -d in_asm, instructions translated): $sdot sdot (by encoding), $smlal smlal" |
  tee "$out/int8-kernel.txt"
qemu_a64 "$A64_BIN" bench --runs 1 --kernels models/mammo-mtl-demo.onnx models/mammo-mtl-demo.int8.onnx \
  2>/dev/null > "$out/kernels.md"
echo "kernels of the shipped models' matrix products (bench --kernels; times are qemu's):"
grep -E '^\| (arm64|OptMatMul|sve|arm64fp16)[^|]* \| [0-9]+ \|' "$out/kernels.md" | sed 's/^/  /'
rm -f "$work/in_asm.log"

echo "== x86_64 vs aarch64 (qemu -cpu $QEMU_CPU)"
python3 cross/compare.py --out "$out/comparison.md" "${pairs[@]}"

# The comparison must be able to fail: a probability moved by 3e-4 (f32) and a class changed
# (int8) in copies of the aarch64 outputs.
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for kind, change in (("f32", "prob"), ("int8", "class")):
    rows = [json.loads(l) for l in open(f"{out}/aarch64-{kind}.jsonl")]
    if change == "prob":
        rows[0]["cancer_probability"] += 3e-4
    else:
        rows[0]["density"] = "D" if rows[0]["density"] != "D" else "A"
    with open(f"{out}/tampered-{kind}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
PY
for kind in f32 int8; do
  model=models/mammo-mtl-demo.onnx
  [ "$kind" = int8 ] && model=models/mammo-mtl-demo.int8.onnx
  if python3 cross/compare.py "$kind" "$model" "$out/x86_64-$kind.jsonl" "$out/tampered-$kind.jsonl" > "$out/tampered-$kind.txt"; then
    echo "FAIL: compare.py accepted tampered $kind outputs" >&2
    exit 1
  fi
  echo "self-test: compare.py refuses tampered $kind outputs: $(grep -m1 -o 'FAIL: [^|]*' "$out/tampered-$kind.txt")"
done
