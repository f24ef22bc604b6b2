#!/usr/bin/env bash
# What limits the cancer task (issue 18's time box; models/MODEL_CARD.md, "What limits the model"):
# the same network, schedule and seed as scripts/train-real.sh, trained on a share of the RSNA
# training women (data) and at half the input size (resolution), each exported and judged with
# tract on the same validation and test women.
#
#   MAMMO_TEST_DATA=../shared/data scripts/learning-curve.sh [WORK_DIR]    # default runs/curve
#
# Environment: SHARES (default "0.25 0.5 1"), HALF (default 1: also a 128x96 run on all the
# data), EPOCHS (50), BIN (target/release). The table goes to WORK_DIR/curve.md. Steps whose
# output exists are skipped and `fit` resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
W="${1:-runs/curve}"
BIN="${BIN:-target/release}"
EPOCHS="${EPOCHS:-50}"
SHARES="${SHARES:-0.25 0.5 1}"
log() { echo "== $(date +%H:%M:%S) $*"; }

# the imports, phantoms and merged manifest of train-real.sh (machine 21 held out)
IMPORT_ONLY=1 BIN="$BIN" scripts/train-real.sh "$W" >/dev/null
echo '{"patience": 100, "standardize": false, "oversample": {}}' > "$W/fit-extra.json"

one() { # name share height width
  local name=$1 share=$2 h=$3 w=$4 dir="$W/$1"
  local m="$W/all/manifest-$name.csv"
  [ -f "$m" ] || python3 scripts/subset_manifest.py "$W/all/manifest.csv" "$share" > "$m"
  if [ ! -f "$dir/model.onnx" ]; then
    log "$name: fit (RSNA training share $share, input ${h}x$w)"
    local resume=(); [ -d "$dir/fit/checkpoint" ] && resume=(--resume)
    local t0; t0=$(date +%s)
    "$BIN/mammo-train" fit --manifest "$m" --config "$W/fit-extra.json" --epochs "$EPOCHS" \
      --height "$h" --width "$w" --batch-size 32 --lr 1e-3 --seed 1 --out "$dir/fit" \
      "${resume[@]}" 2>&1 | grep -v '^epoch' | tail -1
    echo $(( $(date +%s) - t0 )) > "$dir/fit_seconds"
    "$BIN/mammo-train" export --run "$dir/fit" --manifest "$m" --out "$dir/model.onnx" \
      --name "curve-$name" --version 0.0.0 --training-data "learning curve: $name" \
      --sensitivity 0.8 2>&1 | tail -1
  fi
  for split in val test; do
    [ -f "$dir/eval-$split/report.json" ] || "$BIN/mammo-train" eval --model "$dir/model.onnx" \
      --manifest "$m" --split "$split" --out "$dir/eval-$split" 2>&1 | tail -1
  done
}

names=()
for s in $SHARES; do
  n="share-$s"; one "$n" "$s" 256 160; names+=("$n")
done
if [ "${HALF:-1}" = 1 ]; then
  one half 1 128 96; names+=(half)
fi
python3 scripts/curve_table.py "$W" "${names[@]}" | tee "$W/curve.md"
log "done: $W/curve.md"
