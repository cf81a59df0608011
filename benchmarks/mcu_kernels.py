"""Instructions per layer of exported graphs on the emulated Cortex-M cores, beside the
binary MACs, with flash, RAM and the labels of the first test images; against a saved
run (``--baseline``) it prints the ratios, so one kernel change is measured before/after.

    python benchmarks/mcu_kernels.py MODEL.bnn [...] [--targets cortex-m4,...] [--limit 1000]
        [--counted 5] [--json > before.json] [--baseline before.json]

Every number comes from this run (``McuImage.layer_instructions`` on a build with layer
marks, ``counted_run`` on the plain build) except the baseline's, read from its file.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from bnnkit.cost.formatting import render_table
from bnnkit.cost.graph_cost import device_layers, profile
from bnnkit.graph import Graph
from bnnkit.runtime.cortex_m import build_mcu
from bnnkit.runtime.evaluate import test_images
from bnnkit.runtime.registry import device_runtimes


def measure(path: str, target: str, limit: int, counted: int) -> dict:
    graph = Graph.load(path)
    _, x, y = test_images(graph, None, limit, None)
    with tempfile.TemporaryDirectory(prefix="bnnkit-mcu-kernels-") as work:
        image = build_mcu(graph, f"{work}/plain", target)
        run = image.run(x)
        whole = image.instructions_per_inference(x[:counted])
        per_step, _ = build_mcu(graph, f"{work}/marked", target, layer_marks=True).layer_instructions(x[:counted])
    result = profile(graph)
    result["device"] = {"instructions_per_inference": whole}
    layers = device_layers(graph, result, per_step, whole)["layers"]
    conv_macs = sum(r["binary_macs"] for r in layers if r["kinds"].startswith("binary_conv2d"))
    conv_instructions = sum(r["instructions"] for r in layers if r["kinds"].startswith("binary_conv2d"))
    return {
        "graph": path,
        "target": target,
        "images": len(x),
        "accuracy": float((run.labels == y).mean()),
        "labels": run.labels.tolist(),
        "flash_bytes": image.size.flash,
        "ram_bytes": run.ram_bytes,
        "instructions": whole,
        "binary_conv_instructions_per_mac": conv_instructions / conv_macs if conv_macs else None,
        "layers": layers,
    }


def _ratio(new: float, old: float | None) -> str:
    return "-" if not old else f"{old / new:.2f}x"


def report(rows: list[dict], baseline: dict[tuple[str, str], dict]) -> str:
    lines = [("graph", "core", "flash B", "RAM B", "instructions", "fewer", "conv instr/MAC", "same labels")]
    for r in rows:
        b = baseline.get((r["graph"], r["target"]), {})
        per_mac = r["binary_conv_instructions_per_mac"]
        n = min(len(r["labels"]), len(b.get("labels", [])))
        same = "-" if not b else f"{'yes' if b['labels'][:n] == r['labels'][:n] else 'NO'} ({n:,})"
        flash = f"{r['flash_bytes']:,}" + (f" ({b['flash_bytes']:,})" if b else "")
        ram = f"{r['ram_bytes']:,}" + (f" ({b['ram_bytes']:,})" if b else "")
        instructions = f"{r['instructions']:,.0f}" + (f" ({b['instructions']:,.0f})" if b else "")
        lines.append(
            (r["graph"], r["target"], flash, ram, instructions, _ratio(r["instructions"], b.get("instructions")),
             "-" if per_mac is None else f"{per_mac:.3f}", same)
        )  # fmt: skip
    text = render_table(lines, left=2, total=False)
    for r in rows:
        b = {tuple(layer["ops"]): layer for layer in baseline.get((r["graph"], r["target"]), {}).get("layers", [])}
        text += ["", f"{r['graph']} on {r['target']}, per layer (baseline in brackets):"]
        layer_lines = [("ops", "layer", "instructions", "fewer", "binary MACs", "per MAC")]
        for layer in r["layers"]:
            old = b.get(tuple(layer["ops"]), {}).get("instructions")
            per_mac = layer["instructions_per_binary_mac"]
            layer_lines.append(
                ("-".join(map(str, layer["ops"])), layer["kinds"],
                 f"{layer['instructions']:,.0f}" + ("" if old is None else f" ({old:,.0f})"),
                 _ratio(layer["instructions"], old), f"{layer['binary_macs']:,}",
                 "-" if per_mac is None else f"{per_mac:.3f}")
            )  # fmt: skip
        text += render_table(layer_lines, left=2, total=False)
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+", metavar="MODEL.bnn")
    parser.add_argument("--targets", default="cortex-m4", help=f"comma-separated, of {', '.join(device_runtimes())}")
    parser.add_argument("--limit", type=int, default=1000, help="test images run for the labels (default 1000)")
    parser.add_argument("--counted", type=int, default=5, help="images whose instructions are counted (default 5)")
    parser.add_argument("--baseline", help="a --json output of this script to compare with")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [measure(g, t, args.limit, args.counted) for g in args.graphs for t in args.targets.split(",")]
    if args.json:
        print(json.dumps({"rows": rows}))
        return
    baseline = {}
    if args.baseline:
        with open(args.baseline) as f:
            baseline = {(r["graph"], r["target"]): r for r in json.load(f)["rows"]}
    print(report(rows, baseline))


if __name__ == "__main__":
    main()
