#!/usr/bin/env python3
"""Times onnxruntime (CPU, one intra-op thread) on each model, like `mammo-edge bench` does with
tract, and prints a Markdown table. Used by scripts/bench-model.sh."""
import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    print("| model | median ms | p90 ms | images/s | speed-up vs first |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for path in a.models:
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}
        h, w = int(meta["mammo.input_height"]), int(meta["mammo.input_width"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(42).standard_normal((1, 1, h, w)).astype(np.float32)
        for _ in range(3):
            sess.run(None, {"image": x})
        t = []
        for _ in range(a.runs):
            s = time.perf_counter()
            sess.run(None, {"image": x})
            t.append((time.perf_counter() - s) * 1e3)
        t.sort()
        med, p90 = t[len(t) // 2], t[round((len(t) - 1) * 0.9)]
        base = base or med
        print(f"| {path.rsplit('/', 1)[-1]} | {med:.2f} | {p90:.2f} | {1e3 / med:.1f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
