#!/usr/bin/env python3
"""Markdown tables of a real-data run for models/MODEL_CARD.md (scripts/train-real.sh output).

    python3 scripts/model_card_tables.py runs/real [MAMMO_EDGE_BIN] > /tmp/tables.md

Reads the run's eval reports (report.json: per source, pooled, overall; float32 and int8), its
training log (learning curve) and ablation, and runs `mammo-edge infer --json` with the run's
models on the four real DICOMs (real-mammo/) and, with --any, on the non-mammography files of
dicom-misc/ (the out-of-distribution flag). Needs MAMMO_TEST_DATA.
"""
import json
import os
import subprocess
import sys

run = sys.argv[1]
edge = sys.argv[2] if len(sys.argv) > 2 else "target/release/mammo-edge"
data = os.environ.get("MAMMO_TEST_DATA", "../shared/data")


def ci(v):
    return "–" if v is None else f"{v[0]:.3f} ({v[1]:.3f}–{v[2]:.3f})"


def f(v, d=3):
    return "–" if v is None else f"{v:.{d}f}"


def report(name):
    with open(os.path.join(run, name, "report.json")) as fh:
        return json.load(fh)


def main_table(r):
    out = ["| group | images | women | cancer +/labelled | cancer AUC per image (95 % CI) | per breast | biopsied only | sens | spec | density κ | PD MAE | tissue ρ | source F1 | view acc | mask Dice | OOD |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = list(r["by_source"].items()) + list(r["pooled"].items()) + [("all", r["overall"])]
    for k, g in groups:
        out.append(
            f"| {k} | {g['images']} | {g['patients']} | {g['cancer_positive']}/{g['cancer_labelled']} | "
            f"{ci(g['cancer_auc'])} | {ci(g['cancer_auc_breast'])} | {ci(g['cancer_auc_biopsied'])} | "
            f"{f(g['sensitivity'])} | {f(g['specificity'])} | {f(g['density_kappa'])} | "
            f"{f(g['percent_density_mae'], 1)} | {f(g['tissue_spearman'])} | {f(g['vendor_macro_f1'])} | "
            f"{f(g['view_accuracy'])} | {f(g['mask_dice'])} | {g['ood_fraction']:.2f} |")
    return "\n".join(out)


def infer(model, files, extra=()):
    # --precision file: the file given, not its faster sibling (model.onnx / model.int8.onnx)
    p = subprocess.run([edge, "infer", "--json", "--precision", "file", "--model", model, *extra,
                        *files],
                       capture_output=True, text=True)
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


print("## Test split, float32 (tract)\n")
f32 = report("eval-test")
print(main_table(f32))
print(f"\nSpread of the per-source cancer AUC (≥ 10 of each class): {f(f32.get('cancer_auc_spread'))}\n")
print("## Test split, int8 (tract)\n")
print(main_table(report("eval-test-int8")))
print("\n## Validation split, float32\n")
print(main_table(report("eval-val")))

print("\n## Learning curve (validation, every epoch)\n")
print("| epoch | train loss | val loss | cancer AUC | density κ | PD MAE | source acc | view acc | mask Dice | s |")
print("|---|---|---|---|---|---|---|---|---|---|")
with open(os.path.join(run, "fit", "train_log.jsonl")) as fh:
    for line in fh:
        e = json.loads(line)
        v = e["val"]
        print(f"| {e['epoch']} | {e['train_loss']:.3f} | {v['loss']:.3f} | {f(v['cancer_auc'])} | "
              f"{f(v['density_kappa'])} | {f(v['percent_mae'], 1)} | {f(v['vendor_accuracy'])} | "
              f"{f(v['view_accuracy'])} | {f(v['mask_dice'])} | {e['seconds']:.1f} |")

abl = os.path.join(run, "ablation", "ablation.md")
if os.path.exists(abl):
    print("\n## Ablation\n")
    with open(abl) as fh:
        print(fh.read().split("\n", 1)[1])

for name in ("model.onnx", "model.int8.onnx"):
    model = os.path.join(run, name)
    print(f"\n## The four real DICOMs, {name}\n")
    print("| file | laterality / view (header) | view predicted | source predicted | cancer | flag | density | PD % | OOD (score) |")
    print("|---|---|---|---|---|---|---|---|---|")
    files = sorted(os.path.join(data, "real-mammo", x) for x in os.listdir(os.path.join(data, "real-mammo")))
    for m in infer(model, files):
        if m["schema"] != "mammo-edge.image/1":
            continue
        print(f"| {os.path.basename(m['file'])} | {m['laterality']} {m['view']} | {m['view_predicted']} "
              f"({m['view_probability']:.2f}) | {m['vendor_predicted']} ({m['vendor_probability']:.2f}) | "
              f"{m['cancer_probability']:.3f} | {m['cancer_flag']} | {m['density']} | {m['percent_density']:.1f} | "
              f"{m['ood']} ({m['ood_score']:.3f}) |")
    misc = sorted(os.path.join(data, "dicom-misc", x) for x in os.listdir(os.path.join(data, "dicom-misc")))
    scored = [m for m in infer(model, misc, ["--any"]) if m["schema"] == "mammo-edge.image/1"]
    flagged = [os.path.basename(m["file"]) for m in scored if m["ood"]]
    print(f"\nNon-mammography files forced through ({name}, `infer --any`): {len(flagged)} of "
          f"{len(scored)} flagged OOD ({', '.join(flagged) or 'none'}); "
          + ", ".join(f"{os.path.basename(m['file'])} {m['ood_score']:.3f}" for m in scored))
