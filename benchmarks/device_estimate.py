"""``bnnkit.cost.device``'s Cortex-M4 estimate against the built image, on the graphs of
docs/review-protocol.md section 5 (graphgen's ebnn_cnn and ebnn16, seeds 0-29): one Markdown
table, then what ``HARNESS_FLASH`` stands for, the image less what the linker keeps of the
compiled object of its generated C, on each build.

    python benchmarks/device_estimate.py [--seeds 30]

Every number comes from this run: ``device_estimate(graph)`` and ``build_mcu(graph, dir,
"cortex-m4")`` run on one black image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bnnkit.cost.device import HARNESS_FLASH, device_estimate
from bnnkit.runtime.cortex_m import build_mcu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.graphgen import case_from_seed, ebnn16, ebnn_cnn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    args = parser.parse_args()
    graphs = {
        "graphgen `ebnn_cnn`": ebnn_cnn(np.random.default_rng(0)),
        "graphgen `ebnn16`": ebnn16(np.random.default_rng(0)),
        **{f"seed {s}": case_from_seed(s).graph for s in range(args.seeds)},
    }
    print("| graph | flash est. | flash meas. | Δ | RAM est. | RAM meas. | Δ | stack est. | stack meas. |")
    print("|---|---|---|---|---|---|---|---|---|")
    rest, deltas = {}, []
    for name, graph in graphs.items():
        e = device_estimate(graph)
        with tempfile.TemporaryDirectory(prefix="bnnkit-estimate-") as work:
            image = build_mcu(graph, work, "cortex-m4")
            run = image.run(np.zeros((1, *graph.input_shape), dtype=np.uint8))
        flash, ram = image.size.flash, run.ram_bytes
        rest[name] = flash - (e["flash_bytes"] - HARNESS_FLASH)
        df, dr = (e["flash_bytes"] - flash) / flash, (e["ram_bytes"] - ram) / ram
        deltas.append((df, dr))
        print(
            f"| {name} | {e['flash_bytes']:,} | {flash:,} | {df:+.1%} | {e['ram_bytes']:,} | {ram:,} | {dr:+.1%} "
            f"| {e['stack_bytes']} | {run.stack_bytes_used} |",
            flush=True,
        )
    flash_d, ram_d = zip(*deltas)
    print(f"\nflash {min(flash_d):+.1%} to {max(flash_d):+.1%}, RAM {min(ram_d):+.1%} to {max(ram_d):+.1%}")
    print(f"image less kept object: {min(rest.values())}-{max(rest.values())} B;", rest)


if __name__ == "__main__":
    main()
