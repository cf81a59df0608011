"""The CIFAR-shaped residual nets on an emulated Cortex-M: ResNet-20 and ResNet-18 at 32x32x3,
random weights (a graph's flash, RAM and instructions depend on its shapes, not on its weights),
exported with a recipe, run in QEMU on random images and compared with the NumPy spec bit for bit.

    python benchmarks/cifar_resnets_on_mcu.py [--nets resnet20:1,resnet18:1] [--recipe baseline]
        [--target cortex-m4] [--images 2] [--json]

Every number comes from this run: flash and RAM of the image (``McuImage.size``, the run's
stack high-water mark), instructions of one inference (``instructions_per_inference``).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch

from bnnkit.cost.formatting import render_table
from bnnkit.export import export_model
from bnnkit.models import create_model
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.cortex_m import build_mcu

SHAPE = (3, 32, 32)


def measure(model: str, width: float, recipe: str, target: str, images: int) -> dict:
    torch.manual_seed(0)
    net = create_model(model, 10, SHAPE, recipe, width_mult=width).eval()
    graph = export_model(net, SHAPE)
    x = np.random.default_rng(0).integers(0, 256, (images, *SHAPE), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="bnnkit-cifar-resnets-") as work:
        image = build_mcu(graph, work, target)
        run = image.run(x)
        instructions = image.instructions_per_inference(x[:1])
    scores, labels = numpy_ref.predict(graph, x)
    return {
        "net": f"{model} x{width:g}",
        "recipe": recipe,
        "target": target,
        "ops": len(graph.ops),
        "bit_exact": bool(np.array_equal(run.scores, scores) and np.array_equal(run.labels, labels)),
        "flash_bytes": image.size.flash,
        "ram_bytes": run.ram_bytes,
        "instructions": instructions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="resnet20:1,resnet18:1", help="model:width_mult, comma-separated")
    ap.add_argument("--recipe", default="baseline")
    ap.add_argument("--target", default="cortex-m4")
    ap.add_argument("--images", type=int, default=2, help="random images run in QEMU and compared with the spec")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for spec in args.nets.split(","):
        model, width = spec.split(":")
        rows.append(measure(model, float(width), args.recipe, args.target, args.images))
    if args.json:
        print(json.dumps({"rows": rows}))
        return
    head = ("net", "recipe", "core", "graph ops", "bit-exact", "flash B", "RAM B", "instructions")
    keys = ("net", "recipe", "target", "ops", "bit_exact", "flash_bytes", "ram_bytes", "instructions")
    cells = [
        tuple(
            f"{r[k]:,.0f}" if isinstance(r[k], (int, float)) and not isinstance(r[k], bool) else str(r[k]) for k in keys
        )
        for r in rows
    ]
    print("\n".join(render_table([head, *cells], left=3, total=False)))


if __name__ == "__main__":
    main()
