#!/usr/bin/env bash
# Run the cargo-fuzz targets of fuzz/ (nightly + cargo-fuzz, installed here when missing), each
# for SECONDS of wall time on its corpus (fuzz/corpus/<target>, git-ignored), seeded from the
# phantoms, the shared real files and the test cases; crashers land in fuzz/artifacts/<target>.
#   scripts/fuzz.sh [SECONDS per target, default 60] [TARGET …]   (CI: 60 s each)
# Prints the executions each target ran (libFuzzer's last stats line).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(dicom image_file config messages)
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo +nightly install --locked cargo-fuzz
data="${MAMMO_TEST_DATA:-$(cd .. && pwd)/shared/data}"
seed() {
  local t=$1 dir=fuzz/corpus/$1
  mkdir -p "$dir"
  [ -n "$(ls -A "$dir" 2>/dev/null)" ] && return 0
  case $t in
    dicom)
      "${CARGO_TARGET_DIR:-target}/debug/mammo-edge" synth --out "$dir.synth" --count 8 --seed 1 --scale 0.03 >/dev/null 2>&1 || true
      find "$dir.synth" -name '*.dcm' -exec cp {} "$dir/" \; 2>/dev/null || true
      rm -rf "$dir.synth"
      # the vendors' codecs (JPEG 2000 of the Hologic style: the reduced-resolution decode)
      "${CARGO_TARGET_DIR:-target}/debug/mammo-edge" synth --out "$dir.synth" --count 8 --seed 2 --scale 0.03 --compress >/dev/null 2>&1 || true
      find "$dir.synth" -name '*.dcm' -exec sh -c 'cp "$1" "$2/z-$(basename "$1")"' _ {} "$dir" \; 2>/dev/null || true
      rm -rf "$dir.synth"
      # small real and non-mammography files (the large ones slow every run down)
      # (head closes the pipe early: find's SIGPIPE is expected, hence || true under pipefail)
      find "$data" -name '*.dcm' -size -2M 2>/dev/null | head -20 | xargs -r -I{} cp {} "$dir/" || true ;;
    image_file)
      find "$data/real-labelled" \( -name '*.png' -o -name '*.pgm' \) -size -200k 2>/dev/null | head -30 \
        | xargs -r -I{} cp {} "$dir/" || true ;;
    config)
      cp systemd/config.toml "$dir/default.toml"
      printf '[mqtt]\nurl = "mqtts://h:8883"\n[privacy]\nuids = "hashed"\n' > "$dir/tls.toml" ;;
    messages)
      printf '/srv/export/DOE^JANE.dcm\0key\0not_mammogram: Modality CT' > "$dir/plain" ;;
  esac
}
# -O: release build without debug assertions, as the appliance runs; with them, std's UB checks
# stop every JPEG 2000 decode inside the openjp2 crate (FUZZ_FLAGS=-a to see it; docs/ingest.md).
flags=(${FUZZ_FLAGS:--O})
status=0
for t in "${targets[@]}"; do
  seed "$t"
  mkdir -p "fuzz/artifacts/$t"
  echo "== fuzz $t for ${secs}s"
  log="${TMPDIR:-/tmp}/fuzz-$t.log"
  if (cd fuzz && cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" -- -max_total_time="$secs" \
     -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=20 -print_final_stats=1 \
     -artifact_prefix="artifacts/$t/") >"$log" 2>&1; then
    echo "$t: no crash; $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') executions"
  else
    status=1
    echo "$t: CRASH; $(grep -m2 -E 'panicked|SUMMARY|ERROR: libFuzzer' "$log" || true)"
    ls "fuzz/artifacts/$t" || true
  fi
done
exit $status
