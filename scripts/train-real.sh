#!/usr/bin/env bash
# Model 0.2 from scratch (issue 18; models/MODEL_CARD.md): import the research sets in their own
# formats, add phantoms, hold RSNA machine 21 out of training entirely, train the multi-task
# network on LibTorch, export float32 + int8, evaluate with tract on the held-out women of the
# seen machines and on the unseen machine, and train the cancer-only ablation on the same data.
#
#   MAMMO_TEST_DATA=../shared/data scripts/train-real.sh [WORK_DIR]     # default runs/real
#
# Environment: EPOCHS (default 50), SENSITIVITY (0.8), PATIENCE (early stop after this many epochs without a better
# validation cancer AUC; default 100 = let the cosine schedule anneal to the end), BIN (default target/release; build it with
# `cargo build --release --features train,libtorch --bins`), SEED (default 1), PHANTOMS (192),
# STANDARDIZE (0, 1 or window), VERSION (the model version written, default 0.4.0), MEMBERS (default 1: networks of seeds SEED, SEED+1, … trained
# alike and exported as one ensemble, outputs averaged), OVERSAMPLE (JSON object source → draws per
# epoch, default {}; e.g. '{"rsna-m29": 2}'), IMPORT_ONLY (1: import and merge, then stop).
# Steps whose output exists are skipped, and `fit` resumes from its checkpoint, so the same
# command continues an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${MAMMO_TEST_DATA:?set MAMMO_TEST_DATA to the shared data folder}/real-labelled"
W="${1:-runs/real}"
BIN="${BIN:-target/release}"
EPOCHS="${EPOCHS:-50}"
PATIENCE="${PATIENCE:-100}"
SEED="${SEED:-1}"
# the cancer operating point: this share of the validation cancers flagged (at 0.9 the first run
# flagged 97-99 % of every RSNA test image, cancers or not)
SENSITIVITY="${SENSITIVITY:-0.8}"
PHANTOMS="${PHANTOMS:-192}"
mkdir -p "$W"
log() { echo "== $(date +%H:%M:%S) $*"; }

[ -f "$W/rsna/manifest.csv" ] || "$BIN/mammo-train" import rsna --csv "$DATA/rsna/train.csv" \
  --root "$DATA/rsna" --out "$W/rsna/manifest.csv"
[ -f "$W/mias/manifest.csv" ] || "$BIN/mammo-train" import mias --csv "$DATA/mias/Info.txt" \
  --root "$DATA/mias" --out "$W/mias/manifest.csv"
[ -f "$W/ddsm/manifest.csv" ] || "$BIN/mammo-train" import ddsm-tissue \
  --csv "$DATA/ddsm-tissue/tissue_fractions.csv" --root "$DATA/ddsm-tissue" --out "$W/ddsm/manifest.csv"
[ -f "$W/synth/manifest.csv" ] || "$BIN/mammo-edge" synth --out "$W/synth" --count "$PHANTOMS" \
  --seed 11 --scale 0.1 2>&1 | tail -1
[ -f "$W/all/manifest.csv" ] || "$BIN/mammo-train" merge "$W/rsna/manifest.csv" \
  "$W/mias/manifest.csv" "$W/ddsm/manifest.csv" "$W/synth/manifest.csv" \
  --out "$W/all/manifest.csv" --hold-out source=rsna-m21
# IMPORT_ONLY=1: stop here (scripts/learning-curve.sh trains its own runs on these manifests)
[ "${IMPORT_ONLY:-0}" = 1 ] && exit 0

# 256x160: the RSNA crops are at most 256 px tall (median 138x238), so a larger input only
# upsamples them; docs/training.md has the measurement.
# STANDARDIZE=1 (window + gamma) or window: per-image intensity standardisation of the breast
# (src/ingest/preprocess.rs), recorded
# in the model's metadata so the appliance applies it too.
STANDARDIZE="${STANDARDIZE:-0}"
case "$STANDARDIZE" in
  0) std_json=false ;;
  1) std_json=true ;;   # window, then gamma to a breast median of 0.5
  window) std_json='"window"' ;;   # window only: keeps the breast's brightness (density)
  *) echo "STANDARDIZE is 0, 1 or window" >&2; exit 2 ;;
esac
OVERSAMPLE="${OVERSAMPLE:-{\}}"
MEMBERS="${MEMBERS:-1}"
echo "{\"patience\": $PATIENCE, \"standardize\": $std_json, \"oversample\": $OVERSAMPLE}" > "$W/fit-extra.json"
fit_args=(--manifest "$W/all/manifest.csv" --config "$W/fit-extra.json" --epochs "$EPOCHS"
  --height 256 --width 160 --batch-size 32 --lr 1e-3)
# member k (0-based) trains with seed SEED+k into fit (k = 0) or fit-<k>; the first one is the
# ablation's reference
runs=()
for k in $(seq 0 $((MEMBERS - 1))); do
  dir="$W/fit"; [ "$k" -gt 0 ] && dir="$W/fit-$k"
  runs+=(--run "$dir")
  log "fit (multi-task), member $((k + 1)) of $MEMBERS, seed $((SEED + k))"
  resume=(); [ -d "$dir/checkpoint" ] && resume=(--resume)
  "$BIN/mammo-train" fit "${fit_args[@]}" --seed $((SEED + k)) --out "$dir" "${resume[@]}" 2>&1 \
    | grep -v '^epoch' | tail -3
done

log "export float32 + int8"
training="RSNA screening crops (8 machines less machine 21, held out), mini-MIAS, DDSM tissue masks, ${PHANTOMS} phantoms; research use only"
"$BIN/mammo-train" export "${runs[@]}" --manifest "$W/all/manifest.csv" --out "$W/model.onnx" \
  --name mammo-mtl-demo --version "${VERSION:-0.4.0}" --training-data "$training" \
  --sensitivity "$SENSITIVITY" 2>&1 | tail -1
"$BIN/mammo-train" quantize --model "$W/model.onnx" --manifest "$W/all/manifest.csv" --run "$W/fit" \
  --samples 128 --out "$W/model.int8.onnx" 2>&1 | tail -2

log "evaluate with tract: test split (held-out women + the unseen machine), float32 and int8"
"$BIN/mammo-train" eval --model "$W/model.onnx" --manifest "$W/all/manifest.csv" --split test \
  --out "$W/eval-test" 2>&1 | tail -1
"$BIN/mammo-train" eval --model "$W/model.int8.onnx" --manifest "$W/all/manifest.csv" --split test \
  --out "$W/eval-test-int8" 2>&1 | tail -1
"$BIN/mammo-train" eval --model "$W/model.onnx" --manifest "$W/all/manifest.csv" --split val \
  --out "$W/eval-val" 2>&1 | tail -1

if [ "${ABLATION:-1}" = 1 ]; then
  log "ablation: the same network, data and schedule, cancer only"
  "$BIN/mammo-train" eval --model "$W/model.onnx" --manifest "$W/all/manifest.csv" --split test \
    --out "$W/ablation" --ablation --run "$W/fit" 2>&1 | tail -2
fi
log "done: $W/eval-test/report.md"
