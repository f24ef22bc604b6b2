#!/usr/bin/env python3
"""Times onnxruntime (CPU, one intra-op thread) on each model, like `mammo-edge bench` does with
tract, and prints a Markdown table. Used by scripts/bench-model.sh. `--profile`: also the time
per operator type from onnxruntime's own profiler (beside `mammo-edge bench --profile`)."""
import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    profiles = []
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
        if a.profile:
            profiles.append((path, op_profile(path, x, a.runs)))
    for path, ops in profiles:
        total = sum(ops.values())
        print(f"\n{path.rsplit('/', 1)[-1]} (onnxruntime): {total:.2f} ms per pass in its operators\n")
        print("| operator | ms per pass | share |\n|---|---:|---:|")
        for op, ms in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"| {op} | {ms:.3f} | {100 * ms / total:.1f} % |")


def op_profile(path, x, runs):
    """ms per pass by operator type, from onnxruntime's profiler (one thread), after 3 warm-ups."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(3 + runs):
        sess.run(None, {"image": x})
    trace = json.load(open(sess.end_profiling()))
    per = collections.defaultdict(list)
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            per[ev["args"]["op_name"]].append(ev["dur"] / 1e3)
    # every pass, warm-ups included, is in the trace
    return {op: sum(d) / (3 + runs) for op, d in per.items()}


if __name__ == "__main__":
    main()
