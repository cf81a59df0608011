"""Exported graphs on the emulated Cortex-M cores over their whole test set: accuracy,
agreement with the NumPy reference, flash, RAM, instructions, latency and energy estimates.

    python benchmarks/cortex_m.py MODEL.bnn [MODEL.bnn ...] [--targets cortex-m4,...] [--limit N] [--json]

Graphs come from ``bnnkit export`` (docs/cortex-m.md has the training commands). Every
row comes from ``bnnkit.runtime.evaluate.run_graphs`` in this run.
"""

from __future__ import annotations

import argparse
import json

from bnnkit.cost.formatting import render_table
from bnnkit.graph import Graph
from bnnkit.runtime.evaluate import run_graphs
from bnnkit.runtime.registry import device_runtimes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+", metavar="MODEL.bnn")
    parser.add_argument(
        "--targets", default=",".join(device_runtimes()), help="comma-separated cores (default: all three)"
    )
    parser.add_argument("--limit", type=int, help="first N test images only (default: the whole test set)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for path in args.graphs:
        graph = Graph.load(path)
        rows += [{"graph": path, **r.to_dict()} for r in run_graphs(graph, args.targets.split(","), limit=args.limit)]
    if args.json:
        print(json.dumps({"rows": rows}))
        return
    lines = [
        (
            "graph",
            "core",
            "images",
            "accuracy",
            "agreement",
            "bit-exact",
            "flash B",
            "RAM B",
            "instructions",
            "ms",
            "µJ",
        )
    ]
    for r in rows:
        d = r["device"]
        energy = f"{d['energy_uj_estimate']:,.0f}" if "energy_uj_estimate" in d else "-"
        lines.append(
            (r["graph"], r["runtime"], f"{r['n']:,}", f"{r['accuracy']:.4f}", f"{r['agreement']:.2%}",
             "yes" if r["bit_exact"] else "NO", f"{d['flash_bytes']:,}", f"{d['ram_bytes']:,}",
             f"{d['instructions_per_inference']:,.0f}", f"{d['latency_ms_estimate']:.1f}", energy)
        )  # fmt: skip
    print("\n".join(render_table(lines, left=2, total=False)))


if __name__ == "__main__":
    main()
