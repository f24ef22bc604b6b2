#!/usr/bin/env python3
"""Independent check of `mammo-edge synth` output with pydicom: every generated file reads and its
pixels decode (uncompressed and --compress sets, one exam per vendor style), the compressed twin's
pixels equal the uncompressed ones, and the header matches the manifest.

Usage: check_synth_pydicom.py PLAIN_DIR COMPRESSED_DIR   (both made with the same seed and options)
Needs: pip install pydicom numpy pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg
"""
import csv
import sys
from pathlib import Path

import numpy as np
import pydicom


def main(plain: Path, packed: Path) -> int:
    rows = list(csv.DictReader(open(plain / "manifest.csv", newline="")))
    assert rows, "empty manifest"
    checked = 0
    for row in rows:
        a = pydicom.dcmread(plain / row["path"])
        b = pydicom.dcmread(packed / row["path"])
        pa, pb = a.pixel_array, b.pixel_array
        assert pa.shape == (a.Rows, a.Columns), (row["path"], pa.shape)
        assert np.array_equal(pa, pb), f"{row['path']}: compressed twin ({b.file_meta.TransferSyntaxUID.name}) differs"
        assert a.ImageLaterality == row["laterality"], row["path"]
        assert a.ViewPosition == row["view"], row["path"]
        assert a.Modality == "MG" and a.PresentationIntentType == "FOR PRESENTATION"
        assert pa.max() <= (1 << a.BitsStored) - 1
        checked += 1
        print(f"{row['path']}: {a.Manufacturer} {b.file_meta.TransferSyntaxUID.name} {pa.shape} ok")
    print(f"pydicom: {checked} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
