#!/usr/bin/env python3
"""cross/quantize_i8act.py: an int8 variant of a float model with SIGNED int8 activations, for the
qemu test only (not a model to ship: calibrated on random inputs).

Why: the shipped int8 model has uint8 activations (onnxruntime's QOperator default), and tract
consults the aarch64 dispatch tier, which prefers the SDOT kernel, only when weights and
activations have the same type; with i8 x i8 the SDOT kernel (FEAT_DotProd) runs on an
Orin-like CPU, so the x86_64-vs-aarch64 comparison covers it too.

  quantize_i8act.py FLOAT.onnx OUT.onnx
Needs: onnx, onnxruntime, numpy.
"""
import logging
import sys
import warnings

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)


class Calibration(CalibrationDataReader):
    def __init__(self, x):
        self.items = iter([{"image": x[i:i + 1]} for i in range(x.shape[0])])

    def get_next(self):
        return next(self.items, None)


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, out = argv
    meta = {p.key: p.value for p in onnx.load(src).metadata_props}
    h, w = int(meta["mammo.input_height"]), int(meta["mammo.input_width"])
    x = np.random.default_rng(0).normal(0.0, 1.0, (4, 1, h, w)).astype("<f4")
    logging.disable(logging.WARNING)  # onnxruntime's advice to use QDQ on x64 and to pre-process
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(src, out, Calibration(x), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=["Conv", "MatMul"], per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    q = onnx.load(out)
    del q.graph.value_info[:]  # shapes annotated for the calibration batch
    onnx.save(q, out)
    ops = sorted({n.op_type for n in q.graph.node if n.op_type.startswith("QLinear")})
    print(f"{out}: int8 weights and activations, {', '.join(ops)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
