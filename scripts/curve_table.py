#!/usr/bin/env python3
"""The table of scripts/learning-curve.sh: one row a run (RSNA training share or input size).

    python3 scripts/curve_table.py WORK_DIR NAME [NAME ...] > curve.md

Per run (WORK_DIR/NAME): RSNA training women and images (its manifest), training seconds, the
best epoch by validation cancer AUC and that AUC as the trainer measured it (train_log.jsonl),
then tract on the exported file: validation cancer AUC and density κ (all sources), and on the
test split the RSNA seen machines' (pooled) and the unseen machine 21's cancer AUC per image and per breast
with their 95 % bootstrap intervals.
"""
import csv
import json
import os
import sys


UNSEEN = "rsna-m21"


def ci(v):
    return "–" if v is None else f"{v[0]:.3f} ({v[1]:.3f}–{v[2]:.3f})"


def f(v):
    return "–" if v is None else f"{v:.3f}"


def main():
    work, names = sys.argv[1], sys.argv[2:]
    print("| run | RSNA training women / images | input | fit s | best epoch (val AUC, trainer) "
          "| val cancer AUC (tract) | val density κ | test seen, per image | test machine 21 (unseen), per image "
          "| test seen, per breast | test machine 21, per breast |")
    print("|---|---|---|---:|---|---|---|---|---|---|---|")
    for name in names:
        d = os.path.join(work, name)
        with open(os.path.join(work, "all", f"manifest-{name}.csv"), newline="") as fh:
            rows = [r for r in csv.DictReader(fh)
                    if r["split"] == "train" and r["source"].startswith("rsna-")]
        women = len({r["patient_id"] for r in rows})
        with open(os.path.join(d, "fit", "train_log.jsonl")) as fh:
            log = [json.loads(line) for line in fh if line.strip()]
        best = max(log, key=lambda e: e["val"]["cancer_auc"] or 0.0)
        with open(os.path.join(d, "fit", "fit_config.json")) as fh:
            cfg = json.load(fh)
        model = cfg.get("model", cfg)
        size = f"{model.get('height', '?')}×{model.get('width', '?')}"
        secs = open(os.path.join(d, "fit_seconds")).read().strip()
        with open(os.path.join(d, "eval-val", "report.json")) as fh:
            val = json.load(fh)["overall"]
        with open(os.path.join(d, "eval-test", "report.json")) as fh:
            test = json.load(fh)
        # the seen machines pooled; the unseen one by its own row: a small machine whose few
        # training women fall out of a share would join the pooled `rsna unseen`
        seen = test["pooled"].get("rsna seen", {})
        unseen = next((g for k, g in test["by_source"].items() if k.split()[0] == UNSEEN), {})
        print(f"| {name} | {women} / {len(rows)} | {size} | {secs} | {best['epoch']} "
              f"({f(best['val']['cancer_auc'])}) | {ci(val['cancer_auc'])} | "
              f"{f(val['density_kappa'])} | {ci(seen.get('cancer_auc'))} | "
              f"{ci(unseen.get('cancer_auc'))} | {ci(seen.get('cancer_auc_breast'))} | "
              f"{ci(unseen.get('cancer_auc_breast'))} |")


if __name__ == "__main__":
    main()
