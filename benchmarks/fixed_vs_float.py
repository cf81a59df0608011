"""A float32-stream graph against its fixed-point twin (``bnnkit export --real fixed``) on a whole
test set, in the NumPy spec: label agreement, the images whose labels differ and the margin of the
float32 graph's two best scores there, the binary activations of the stream's signs that differ
(per sign), values that saturated, and the float32 stream's peak:

    python benchmarks/fixed_vs_float.py F32.bnn FIXED.bnn [--dataset NAME] [--limit N]

Prints one JSON object (the numbers of docs/cortex-m.md, "Fixed point on the Cortex-M3").
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from bnnkit.graph import Q32_MAX, Graph
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.evaluate import test_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("float32", help="the float32-stream graph")
    ap.add_argument("fixed", help="its fixed-point twin")
    ap.add_argument("--dataset")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--batch", type=int, default=250)
    args = ap.parse_args()
    f, q = Graph.load(args.float32), Graph.load(args.fixed)
    _, x, y = test_images(f, args.dataset, args.limit, None)
    frac = q.meta["q32_fraction"]
    # a sign of the float graph is a threshold of the same output name in the twin
    signs = [op.output for op in f.ops if q.types.get(op.output) == f.types[op.output] and op.inputs[0] in f.types
             and f.types[op.inputs[0]][0] == "f32" and f.types[op.output][0] == "bits"]  # fmt: skip
    flips, saturated, peak = dict.fromkeys(signs, 0), 0, 0.0
    labels_f, labels_q, scores_f, scores_q = [], [], [], []
    for i in range(0, len(x), args.batch):
        ef, eq = (numpy_ref.execute(g, x[i : i + args.batch], keep=True) for g in (f, q))
        for s in signs:
            flips[s] += int((ef[s] != eq[s]).sum())
        saturated += sum(int((np.abs(eq[n]) == Q32_MAX).sum()) for n, (t, _) in q.types.items() if t == "q32")
        peak = max([peak] + [float(np.abs(ef[n]).max()) for n, (t, _) in f.types.items() if t == "f32"])
        labels_f.append(ef[f.ops[-1].output])
        labels_q.append(eq[q.ops[-1].output])
        scores_f.append(ef[f.scores])
        scores_q.append(eq[q.scores] * 2.0**-frac)
    lf, lq, sf, sq = (np.concatenate(v) for v in (labels_f, labels_q, scores_f, scores_q))
    differ = np.nonzero(lf != lq)[0]
    top2 = np.sort(sf[differ], axis=1)[:, -2:]
    print(json.dumps({
        "n": len(x), "q32_fraction": frac, "label_agreement": float(np.mean(lf == lq)),
        "accuracy_float32": float(np.mean(lf == y)), "accuracy_fixed": float(np.mean(lq == y)),
        "differ": differ.tolist(), "float32_margin_where_differ": (top2[:, 1] - top2[:, 0]).tolist(),
        "sign_flips": flips, "sign_values": len(x) * sum(int(np.prod(f.types[s][1])) for s in signs),
        "saturated_values": saturated, "float32_peak": peak, "calibration_peak": q.meta.get("q32_peak"),
        "max_score_difference": float(np.abs(sf - sq).max()),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
