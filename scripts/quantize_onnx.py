#!/usr/bin/env python3
"""Static int8 quantisation of a mammo-edge model with onnxruntime's quantizer, in the QOperator
format that tract runs with integer kernels (QLinearConv / QLinearMatMul, standard ONNX domain).

Called by `mammo-train quantize` (which writes the calibration tensors, recomputes the thresholds
with tract on the result and proves from tract's plan that it runs int8); usable alone:

    quantize_onnx.py --model m.onnx --calib calib.f32 --count N --out m.int8.onnx

calib.f32: N preprocessed model inputs, little-endian float32 [N, 1, H, W] (H, W from the model's
metadata). Only Conv and MatMul are quantised: per-channel symmetric int8 weights, asymmetric uint8
activations, MinMax calibration. Gemm (the small heads) stays float because onnxruntime would write
com.microsoft QGemm, which tract does not run; ConvTranspose stays float because standard ONNX has
no integer transposed convolution. Needs: pip install onnx onnxruntime numpy
"""
import argparse
import json
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)


class Calibration(CalibrationDataReader):
    def __init__(self, x: np.ndarray):
        self.items = iter([{"image": x[i:i + 1]} for i in range(x.shape[0])])

    def get_next(self):
        return next(self.items, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    model = onnx.load(a.model)
    meta = {p.key: p.value for p in model.metadata_props}
    h, w = int(meta["mammo.input_height"]), int(meta["mammo.input_width"])
    x = np.fromfile(a.calib, dtype="<f4")
    if x.size != a.count * h * w:
        print(f"{a.calib}: {x.size} values, expected {a.count}x1x{h}x{w}", file=sys.stderr)
        return 2
    x = x.reshape(a.count, 1, h, w)
    quantize_static(a.model, a.out, Calibration(x), quant_format=QuantFormat.QOperator,
                    op_types_to_quantize=["Conv", "MatMul"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    q = onnx.load(a.out)
    # shape annotations written for the calibration batch would pin the batch size
    del q.graph.value_info[:]
    foreign = sorted({f"{n.domain}:{n.op_type}" for n in q.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        print(f"non-standard operators {foreign}: tract cannot run them", file=sys.stderr)
        return 1
    note = (f"int8 QOperator: onnxruntime {onnxruntime.__version__} quantize_static, Conv/MatMul, "
            f"per-channel symmetric int8 weights, uint8 activations, MinMax on {a.count} images")
    props = {p.key: p.value for p in q.metadata_props}
    props["mammo.quantization"] = note
    del q.metadata_props[:]
    for k, v in props.items():
        q.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(q, full_check=True)
    onnx.save(q, a.out)
    print(json.dumps({"nodes": dict(Counter(n.op_type for n in q.graph.node)), "quantization": note}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
