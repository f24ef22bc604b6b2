#!/usr/bin/env python3
"""Do bright dots (biopsy clips, skin markers) in the RSNA crops separate cancers? (model card, run H)

For each crop of real-labelled/rsna: the number of small bright components (8-bit grey >= 240,
2 px to 1 % of the image) and of local peaks (>= 60 grey levels over the 9 x 9 median, >= 3 px);
prints per machine the share of images with such dots and the AUC of each count for cancer.
Needs numpy, pillow, scipy.   python3 scripts/rsna_bright_dots.py ../shared/data/real-labelled/rsna
"""
import collections
import csv
import sys

import numpy as np
from PIL import Image
from scipy import ndimage


def auc(y, s):
    y, s = np.asarray(y), np.asarray(s, float)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()


def dots(a):
    bright = a >= 240
    lab, n = ndimage.label(bright)
    sizes = ndimage.sum(bright, lab, range(1, n + 1)) if n else []
    n_bright = sum(1 for s in sizes if 2 <= s <= 0.01 * a.size)
    peak = (a - ndimage.median_filter(a, size=9)) > 60
    lab, n = ndimage.label(peak)
    sizes = ndimage.sum(peak, lab, range(1, n + 1)) if n else []
    return n_bright, sum(1 for s in sizes if s >= 3)


def main(root):
    by = collections.defaultdict(list)
    for r in csv.DictReader(open(f"{root}/train.csv")):
        a = np.asarray(Image.open(f"{root}/train_images/{r['patient_id']}/{r['image_id']}.png"))
        a = (a[..., 0] if a.ndim == 3 else a).astype(np.float32)
        by[r["machine_id"]].append((int(r["cancer"]), *dots(a)))
    by["all"] = [x for k in list(by) for x in by[k]]
    print("machine images cancers with_bright_dots auc_bright auc_peaks")
    for k, v in sorted(by.items()):
        y = [x[0] for x in v]
        print(k, len(v), sum(y), f"{np.mean([x[1] > 0 for x in v]):.2f}",
              f"{auc(y, [x[1] for x in v]):.3f}", f"{auc(y, [x[2] for x in v]):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/real-labelled/rsna")
