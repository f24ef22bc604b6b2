#!/usr/bin/env bash
# cross/check-kernels.sh: fails unless tract-linalg's aarch64 assembly kernels are in the (not yet
# stripped) aarch64 binary. tract-linalg's build script probes the assembler and silently leaves
# out the int8 SDOT kernel (FEAT_DotProd) and the fp16 kernels when it cannot encode them; this
# checks the symbols and that their code holds the instructions (sdot, fmla on .8h).
#   cross/check-kernels.sh [BINARY]   (default: the aarch64 release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

bin="${1:-$A64_BIN}"
[ -f "$bin" ] || { echo "$bin missing: run cross/build.sh" >&2; exit 1; }
nm=aarch64-linux-gnu-nm objdump=aarch64-linux-gnu-objdump
command -v $nm >/dev/null || { echo "$nm missing (binutils-aarch64-linux-gnu)" >&2; exit 1; }
syms="$($nm --defined-only "$bin" 2>/dev/null | awk '{ print $3 }')"
[ -n "$syms" ] || { echo "FAIL: $bin has no symbol table (stripped?)" >&2; exit 1; }

fail=0
# what, symbol regex, instruction regex its code must contain (empty: none checked)
while IFS='|' read -r what pattern insn; do
  found="$(grep -E "^${pattern}" <<<"$syms" | sort | head -1 || true)"
  n="$(grep -cE "^${pattern}" <<<"$syms" || true)"
  if [ -z "$found" ]; then
    echo "FAIL: $what: no symbol ${pattern}*"; fail=1; continue
  fi
  line="$what: $n symbol(s), e.g. $found"
  if [ -n "$insn" ]; then
    count="$($objdump -d --no-show-raw-insn --disassemble="$found" "$bin" | grep -cE "$insn" || true)"
    if [ "$count" -eq 0 ]; then
      echo "FAIL: $line: no '$insn' instruction in its code"; fail=1; continue
    fi
    line="$line ($count '$insn' instructions)"
  fi
  echo "ok: $line"
done <<'LIST'
f32 NEON matmul (arm64simd)|arm64simd_mmm_f32_|fmla
int8 matmul, SMLAL fallback (arm64simd)|arm64simd_mmm_i32_8x8_[0-9]|smlal
int8 matmul, SDOT (FEAT_DotProd)|arm64simd_mmm_i32_8x8_dot|sdot
fp16 matmul (arm64fp16)|arm64fp16_mmm_f16_|fmla.*\.8h
fp16 activations (arm64fp16)|arm64fp16_(sigmoid|tanh)_f16|
LIST
exit $fail
