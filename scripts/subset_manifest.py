#!/usr/bin/env python3
"""Keep a share of the RSNA training women of a merged manifest (the data-size learning curve of
models/MODEL_CARD.md; scripts/learning-curve.sh).

    python3 scripts/subset_manifest.py IN.csv SHARE [SEED] > OUT.csv

IN.csv: a merged manifest (docs/manifest.md) with the extra column `source`. Rows of the training
split whose `source` starts with `rsna-` are kept for a share SHARE (0 < SHARE <= 1) of their
patients, chosen by a seeded hash of `patient_id` (the same women at every call, and the women of
a smaller share are among those of a larger one); every other row (validation, test, the other
sets, phantoms) is kept unchanged, so runs on different shares are judged on the same women.
Write OUT.csv next to IN.csv: image paths are relative to the manifest's folder.
"""
import csv
import hashlib
import sys


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    path, seed = sys.argv[1], sys.argv[3] if len(sys.argv) == 4 else "1"
    try:
        share = float(sys.argv[2])
    except ValueError:
        share = float("nan")
    if not 0.0 < share <= 1.0:
        sys.exit(f"SHARE must be in (0, 1], got {sys.argv[2]}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in ("patient_id", "split", "source") if c not in fields]
    if missing:
        sys.exit(f"{path}: no column {', '.join(missing)} (a merged manifest of the research "
                 "importers has them)")

    def in_scope(r):
        return r["split"] == "train" and r["source"].startswith("rsna-")

    patients = sorted({r["patient_id"] for r in rows if in_scope(r)},
                      key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    keep = set(patients[: round(share * len(patients))])
    out = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    out.writeheader()
    kept = 0
    for r in rows:
        if in_scope(r) and r["patient_id"] not in keep:
            continue
        kept += in_scope(r)
        out.writerow(r)
    print(f"subset: {len(keep)} of {len(patients)} RSNA training women, {kept} images",
          file=sys.stderr)


if __name__ == "__main__":
    main()
