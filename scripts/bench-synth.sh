#!/usr/bin/env bash
# Benchmark of the phantom generator (release build, 2 threads): images per second per vendor style
# at full detector size and at the test scale, written as a Markdown table.
# Usage: scripts/bench-synth.sh > docs/bench-synth.md
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/mammo-edge/target}"
cargo build --release --quiet --bin mammo-edge
bin="$CARGO_TARGET_DIR/release/mammo-edge"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
echo "# Phantom generator benchmark"
echo
echo "Machine: $(nproc) cores; $(date -u +%Y-%m-%d). Release build, \`--threads 2\`, one 4-view exam per run (uncompressed)."
echo
echo "| vendor | scale | matrix | images/s | s/image | peak RSS MiB |"
echo "|---|---:|---|---:|---:|---:|"
for v in hologic ge siemens fujifilm ims_giotto planmed; do
  for scale in 1.0 0.25 0.06; do
    out="$tmp/$v-$scale"
    start=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$tmp/rss" "$bin" synth --out "$out" --count 4 --seed 1 --vendors "$v" --scale "$scale" 2>/dev/null
    end=$(date +%s.%N)
    f=$(ls "$out"/images/*.dcm | head -1)
    matrix=$("$bin" inspect --json "$f" | jq -r '"\(.columns)x\(.rows)"')
    awk -v v="$v" -v s="$scale" -v m="$matrix" -v a="$start" -v b="$end" -v r="$(cat "$tmp/rss")" \
      'BEGIN { t = b - a; printf "| %s | %s | %s | %.2f | %.3f | %.0f |\n", v, s, m, 4 / t, t / 4, r / 1024 }'
    rm -rf "$out"
  done
done
