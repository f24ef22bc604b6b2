#!/usr/bin/env bash
# cross/check-kernels.sh: fails unless tract-linalg's aarch64 assembly kernels are in the aarch64
# binary. tract-linalg's build script probes the assembler and silently leaves out the int8 SDOT
# kernel (FEAT_DotProd) and the fp16 kernels when it cannot encode them. Checked twice, since the
# zig-linked release binary has no symbol table: the kernel names that tract registers only for
# kernels it compiled, and their instructions in .text (baseline armv8-a Rust code never emits
# sdot or fmla on .8h; only these kernels do).
#   cross/check-kernels.sh [BINARY]   (default: the aarch64 release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

bin="${1:-$A64_BIN}"
[ -f "$bin" ] || { echo "$bin missing: run cross/build.sh" >&2; exit 1; }
objdump=aarch64-linux-gnu-objdump
command -v $objdump >/dev/null || { echo "$objdump missing (binutils-aarch64-linux-gnu)" >&2; exit 1; }

# Rust string constants are not NUL-separated: match whole known name shapes.
names="$(strings -a -n 12 "$bin" | grep -oE 'arm64simd_mmm_f32_[0-9]+x[0-9]+_(a53|a55|gen)|arm64simd_mmm_i32_(8x8_dot|8x8|64x1)|arm64fp16_mmm_f16_[0-9]+x[0-9]+_(a55|gen)' | sort -u)"
dis="$(mktemp)"
trap 'rm -f "$dis"' EXIT
$objdump -d --no-show-raw-insn -j .text "$bin" > "$dis"

fail=0
# what | kernel name regex | instruction regex | least number of such instructions
while IFS='|' read -r what pattern insn least; do
  n_names="$(grep -cE "^${pattern}" <<<"$names" || true)"
  n_insn="$(grep -cE "$insn" "$dis" || true)"
  line="$what: $n_names kernel(s) registered (e.g. $(grep -m1 -E "^${pattern}" <<<"$names" || echo none)), $n_insn '$insn' instructions"
  if [ "$n_names" -eq 0 ] || [ "$n_insn" -lt "$least" ]; then
    echo "FAIL: $line (want >= 1 kernel, >= $least instructions)"
    fail=1
  else
    echo "ok: $line"
  fi
done <<'LIST'
f32 NEON matmul (arm64simd)|arm64simd_mmm_f32_|	fmla	v[0-9]+\.4s|100
int8 matmul, SMLAL (arm64simd)|arm64simd_mmm_i32_8x8$|	smlal2?	|100
int8 matmul, SDOT (FEAT_DotProd)|arm64simd_mmm_i32_8x8_dot|	sdot	|16
fp16 matmul (arm64fp16)|arm64fp16_mmm_f16_|	fmla	v[0-9]+\.8h|100
LIST
exit $fail
