"""One exported graph in several runtimes over its whole test set: accuracy, agreement
with the NumPy reference and time. The long test run before each release note:

    python benchmarks/agreement.py [MODEL.bnn] [--runtimes numpy,c,cortex-m4] [--limit N] [--json]

MODEL.bnn defaults to runs/demo/model.bnn (``bnnkit demo`` writes it), the runtimes to
one of each kind (``bnnkit.runtime.registry.RUNTIMES`` lists them). Every row comes from
``bnnkit.runtime.evaluate.run_graphs`` in this run (one reference pass, shared); "seconds" is that runtime's own
time on the images (for Cortex-M the QEMU run, build excluded). Exits 1 unless every
runtime agrees with the reference bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys

from bnnkit.cost.formatting import render_table
from bnnkit.graph import Graph
from bnnkit.runtime.evaluate import run_graphs
from bnnkit.runtime.registry import RUNTIMES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", nargs="?", default="runs/demo/model.bnn", metavar="MODEL.bnn")
    parser.add_argument(
        "--runtimes",
        default="numpy,c,cortex-m4",
        help=f"comma-separated, of {', '.join(RUNTIMES)} (default: numpy,c,cortex-m4)",
    )
    parser.add_argument("--limit", type=int, help="first N test images only (default: the whole test set)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    graph = Graph.load(args.graph)
    rows = [
        {
            "runtime": r.runtime,
            "dataset": r.dataset,
            "n": r.n,
            "accuracy": r.accuracy,
            "agreement": r.agreement,
            "bit_exact": r.bit_exact,
            "seconds": r.seconds[r.runtime],
        }
        for r in run_graphs(graph, args.runtimes.split(","), limit=args.limit)
    ]
    agree = all(r["bit_exact"] and r["agreement"] == 1.0 for r in rows)
    if args.json:
        print(json.dumps({"graph": args.graph, "rows": rows, "all_bit_exact": agree}))
    else:
        lines = [("runtime", "images", "accuracy", "agreement", "bit-identical scores", "seconds")]
        for r in rows:
            lines.append((r["runtime"], f"{r['n']:,}", f"{r['accuracy']:.4f}", f"{r['agreement']:.2%}",
                          "yes" if r["bit_exact"] else "NO", f"{r['seconds']:.2f}"))  # fmt: skip
        print(f"{args.graph} on {rows[0]['dataset']} (test split)")
        print("\n".join(render_table(lines, left=1, total=False)))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
