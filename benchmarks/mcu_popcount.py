"""Popcount variants on the Cortex-M cores: instructions per inference and flash.

No Cortex-M has a popcount instruction, so the generated C chooses one of four
implementations at compile time (``bnnkit.runtime.c.POPCOUNT_VARIANTS``). This builds the
same exported network with each on each core, checks the scores against the NumPy
reference, and counts instructions per inference in QEMU (bnnkit's TCG plugin). Ratios
are against the default (SWAR with one multiply), all from one run.

    python benchmarks/mcu_popcount.py [--images 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from bnnkit.apps.fit import Candidate, candidate_graph
from bnnkit.cost.formatting import render_table
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.c import POPCOUNT_VARIANTS
from bnnkit.runtime.cortex_m import TARGETS, build_mcu

# the Fashion-MNIST network that meets the M4 target in docs/cortex-m.md, untrained: the
# instruction count depends on the shapes, hardly on the weights
NETWORK = Candidate("ebnn_cnn", {"channels": [32, 64], "kernel": 5})


def measure(images: int) -> list[dict]:
    graph = candidate_graph(NETWORK, (1, 28, 28), 10)
    x = np.random.default_rng(0).integers(0, 256, (images, 1, 28, 28), dtype=np.uint8)
    ref_scores, _ = numpy_ref.predict(graph, x)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bnnkit-popcount-") as work:
        for target in TARGETS:
            for variant in POPCOUNT_VARIANTS:
                image = build_mcu(graph, Path(work) / target / variant, target, cflags=[f"-DBNNKIT_POPCOUNT_{variant}"])
                scores, _ = image.predict(x)
                rows.append({
                    "target": target, "variant": variant, "bit_exact": bool(np.array_equal(scores, ref_scores)),
                    "instructions": image.instructions_per_inference(x), "flash_bytes": image.size.flash,
                })  # fmt: skip
    for row in rows:
        base = next(r for r in rows if r["target"] == row["target"] and r["variant"] == "SWAR")
        row["instructions_ratio"] = row["instructions"] / base["instructions"]
        row["flash_ratio"] = row["flash_bytes"] / base["flash_bytes"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="random images to count instructions on (default 3)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.images)
    if args.json:
        print(json.dumps({"network": {"model": NETWORK.model, **NETWORK.options}, "rows": rows}))
        return
    lines = [("core", "popcount", "bit-exact", "instructions", "vs SWAR", "flash B", "vs SWAR")]
    lines += [
        (r["target"], r["variant"], "yes" if r["bit_exact"] else "NO", f"{r['instructions']:,.0f}",
         f"{r['instructions_ratio']:.3f}", f"{r['flash_bytes']:,}", f"{r['flash_ratio']:.3f}")
        for r in rows
    ]  # fmt: skip
    print("\n".join(render_table(lines, left=2, total=False)))


if __name__ == "__main__":
    main()
