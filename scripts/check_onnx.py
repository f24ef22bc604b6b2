#!/usr/bin/env python3
"""Independent check of an exported model: the ONNX checker (full_check) accepts it, and
onnxruntime gives the same outputs as tract (`mammo-edge infer --tensor`) on seeded random and
constant inputs, within 1e-4.

Usage: check_onnx.py MODEL.onnx MAMMO_EDGE_BINARY
Needs: pip install onnx onnxruntime numpy
"""
import json
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

OUTPUTS = ["cancer", "normal", "density", "percent_density", "vendor", "view",
           "dense_mask", "reconstruction", "recon_error"]


def main(model_path: str, binary: str) -> int:
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    h, w = int(meta["mammo.input_height"]), int(meta["mammo.input_width"])
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    failed = 0
    cases = {"random": rng.standard_normal((1, 1, h, w)).astype(np.float32),
             "constant": np.full((1, 1, h, w), -0.8, dtype=np.float32)}
    for name, x in cases.items():
        with tempfile.NamedTemporaryFile(suffix=".f32") as f:
            f.write(x.astype("<f4").tobytes())
            f.flush()
            out = subprocess.run([binary, "infer", "--model", model_path, "--tensor", f.name],
                                 check=True, capture_output=True, text=True).stdout
        tract = json.loads(out)
        ort_out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))
        for k in OUTPUTS:
            a = np.asarray(tract[k], dtype=np.float64).ravel()
            b = np.asarray(ort_out[k], dtype=np.float64).ravel()
            d = float(np.max(np.abs(a - b))) if a.size else 0.0
            ok = a.shape == b.shape and d <= 1e-4
            failed += not ok
            print(f"{name} {k}: max |tract - onnxruntime| = {d:.2e} {'ok' if ok else 'FAIL'}")
    checks = 2 * len(OUTPUTS)
    print(f"onnx: {checks - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
