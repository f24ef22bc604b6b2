#!/usr/bin/env python3
"""cross/compare.py: compares `mammo-edge infer --json` outputs of the x86_64 and the aarch64
(qemu) binary and prints a Markdown table; exit status 1 on any mismatch.

Rules (issue 6): the same files, status and classes (density, vendor, view, flags) on both sides;
probabilities within 1e-4 for a float model; for an int8 model within one quantisation step, read
from the model: the scale of the last DequantizeLinear each output depends on (a probability head
computed in float after the int8 backbone gets the step of that backbone's last activation). The
OOD score (mean squared reconstruction error, e = error of a pixel) is allowed what one step q
of the reconstruction changes it by: 2 * rmse * q + q * q (f32: 1e-4).

  compare.py [--out TABLE.md] KIND MODEL X86.jsonl A64.jsonl [KIND MODEL X86.jsonl A64.jsonl ...]

KIND is f32 or int8. Needs the `onnx` Python package for int8 models only.
"""

import json
import math
import os
import sys

F32_TOL = 1e-4
# infer --json field -> (model output name, factor: percent_density is 100 * a sigmoid)
PROB_FIELDS = {
    "cancer_probability": ("cancer", 1.0),
    "normal_probability": ("normal", 1.0),
    "density_probabilities": ("density", 1.0),
    "percent_density": ("percent_density", 100.0),
    "vendor_probability": ("vendor", 1.0),
    "view_probability": ("view", 1.0),
}
EXACT_FIELDS = [
    "status", "reason", "model_name", "model_version", "laterality", "view", "vendor",
    "vendor_predicted", "density", "view_predicted", "cancer_flag", "ood", "orientation_mismatch",
]


def quant_steps(model_path):
    """For each graph output: the scale of the nearest DequantizeLinear upstream (None if none)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(model_path).graph
    producer = {o: n for n in g.node for o in n.output}
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    steps = {}
    for out in g.output:
        seen, frontier, found = set(), [out.name], []
        while frontier and not found:
            nxt = []
            for name in frontier:
                n = producer.get(name)
                if n is None or id(n) in seen:
                    continue
                seen.add(id(n))
                if n.op_type == "DequantizeLinear":
                    found.append(float(init[n.input[1]].max()))
                else:
                    nxt.extend(n.input)
            frontier = nxt
        steps[out.name] = max(found) if found else None
    return steps


STATUS = {"mammo-edge.image/1": "scored", "mammo-edge.skipped/1": "skipped",
          "mammo-edge.error/1": "error"}


def load(path):
    """The per-file payloads of `infer --json` (image / skipped / error), by file name; the exam
    payloads that follow them are derived from these and left out."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    by_file = {}
    for r in rows:
        if "file" not in r or r.get("schema") not in STATUS:
            continue
        r["status"] = STATUS[r["schema"]]
        r["model_name"] = (r.get("model") or {}).get("name")
        r["model_version"] = (r.get("model") or {}).get("version")
        by_file[os.path.basename(r["file"])] = r
    return by_file


def as_list(v):
    return v if isinstance(v, list) else [v]


def compare(kind, model, x86, a64, steps):
    """One table row per file: (row cells, ok)."""
    rows = []
    ref, got = load(x86), load(a64)
    for name in sorted(set(ref) | set(got)):
        r, g = ref.get(name), got.get(name)
        problems = []
        # the difference closest to its tolerance: (diff / tolerance, diff, tolerance, field)
        worst = None
        if r is None or g is None:
            problems.append("only in " + ("aarch64" if r is None else "x86_64"))
        else:
            for k in EXACT_FIELDS:
                if r.get(k) != g.get(k):
                    problems.append(f"{k}: {r.get(k)!r} != {g.get(k)!r}")
            fields = dict(PROB_FIELDS, ood_score=("recon_error", 1.0))
            for k, (output, factor) in fields.items():
                if k not in r and k not in g:
                    continue
                a, b = as_list(r.get(k)), as_list(g.get(k))
                if len(a) != len(b) or any(x is None for x in a + b):
                    problems.append(f"{k}: {r.get(k)!r} vs {g.get(k)!r}")
                    continue
                if kind == "f32":
                    tol = F32_TOL * factor
                elif k == "ood_score":
                    q = steps.get(output) or F32_TOL
                    tol = 2 * math.sqrt(max(a[0], 0.0)) * q + q * q
                else:
                    q = steps.get(output)
                    tol = (q if q is not None else F32_TOL) * factor
                for x, y in zip(a, b):
                    d = abs(x - y)
                    if worst is None or d / tol > worst[0]:
                        worst = (d / tol, d, tol, k)
                    # payload values are rounded (probabilities to 1e-4, percent density to
                    # 1e-2): values within one grid step stay within one step once rounded
                    if not d <= tol * (1 + 1e-6):
                        problems.append(f"{k}: {x} vs {y}, diff {d:.3g} > {tol:.3g}")
        status = r.get("status", "?") if r else g.get("status", "?")
        classes = "-" if r is None or g is None else "/".join(
            str(r.get(k)) for k in ("density", "vendor_predicted", "view_predicted", "cancer_flag"))
        cells = [
            os.path.basename(model), kind, name, status, classes,
            f"{worst[1]:.2e}" if worst else "-", worst[3] if worst else "-",
            f"{worst[2]:.1e}" if worst else "-", "ok" if not problems else "FAIL: " + "; ".join(problems),
        ]
        rows.append((cells, not problems))
    return rows


def main(argv):
    out = None
    if argv[:1] == ["--out"]:
        out, argv = argv[1], argv[2:]
    if not argv or len(argv) % 4:
        print(__doc__, file=sys.stderr)
        return 2
    header = ["model", "kind", "file", "status", "classes (density/vendor/view/flag)",
              "max abs diff", "field", "tolerance", "result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ok_all, n = True, 0
    for i in range(0, len(argv), 4):
        kind, model, x86, a64 = argv[i:i + 4]
        if kind not in ("f32", "int8"):
            print(f"KIND must be f32 or int8, not {kind!r}", file=sys.stderr)
            return 2
        steps = quant_steps(model) if kind == "int8" else {}
        for cells, ok in compare(kind, model, x86, a64, steps):
            lines.append("| " + " | ".join(cells) + " |")
            ok_all &= ok
            n += 1
    if n == 0:
        lines.append("| (no results) |")
        ok_all = False
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if out:
        with open(out, "w") as f:
            f.write(table)
    failed = sum(1 for line in lines[2:] if "FAIL" in line)
    print(f"compare: {n - failed} passed, {failed} failed")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
