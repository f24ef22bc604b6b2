#!/usr/bin/env bash
# Benchmark of ingest on real mammograms: per file, decode / grey pipeline / preprocessing time
# (release build, one process per file, as the daemon's worker does) and the process's peak RSS.
# Usage: scripts/bench-ingest.sh [DATA_DIR] > docs/bench-ingest.md
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${MAMMO_TEST_DATA:-../shared/data}}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/mammo-edge/target}"
cargo build --release --quiet --bin mammo-edge
bin="$CARGO_TARGET_DIR/release/mammo-edge"
runs="${RUNS:-3}"

echo "# Ingest benchmark"
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); $(date -u +%Y-%m-%d)."
echo "Release build, \`mammo-edge inspect --json\`, median of $runs runs; RSS = peak resident set of the whole process."
echo
echo "| file | matrix (cols x rows) | transfer syntax | decode ms | grey ms | preprocess ms | total ms | peak RSS MiB |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for f in "$data"/real-mammo/*.dcm; do
  rows=()
  for _ in $(seq "$runs"); do
    json=$(/usr/bin/time -f '%M' -o /tmp/bench-rss.$$ "$bin" inspect --json "$f")
    rss=$(cat /tmp/bench-rss.$$)
    rows+=("$(echo "$json" | jq -r --arg rss "$rss" '[.decode_ms, .grey_ms, .preprocess_ms, .total_ms, ($rss|tonumber/1024)] | @tsv')")
  done
  med=$(printf '%s\n' "${rows[@]}" | sort -t$'\t' -k4,4n | sed -n "$(( (runs + 1) / 2 ))p")
  meta=$(echo "$json" | jq -r '"\(.columns)x\(.rows) | \(.transfer_syntax_name)"')
  echo "$med" | awk -F'\t' -v f="$(basename "$f")" -v m="$meta" \
    '{printf "| %s | %s | %.0f | %.0f | %.0f | %.0f | %.0f |\n", f, m, $1, $2, $3, $4, $5}'
done
rm -f /tmp/bench-rss.$$
