"""BNN against int8 on the emulated Cortex-M4: the eBNN nets and small_cnn, each as a binary
network and as the int8 post-training quantization of its float twin, measured the same way.

For each net: the BNN (recipe ``embedded``, exported with ``bnnkit export``) and the float twin
(``bnnkit.export.int8.twin_recipe``, quantized with ``bnnkit quantize``) are trained into
``--runs`` (reused when there), then each graph is scored on the whole Fashion-MNIST test set
on the host (the NumPy reference) and run on the Cortex-M4 in QEMU on the first
``--device-images`` test images (bit-exact against the reference, labels compared), where the
image's flash, RAM and instructions per inference are measured. MACs are the producers'
multiply-accumulates (binary or int8, every kernel tap); the energy estimates are the device
model's (instructions × energy per cycle, ``bnnkit.runtime.cortex_m``) and the op model's
(``bnnkit.cost.energy``, through ``bnnkit profile``). The pairings: for each BNN, the int8 net
with the fewest instructions among those at least as accurate (matched accuracy), and the most
accurate int8 net with flash + RAM no larger (matched memory).

    python benchmarks/mcu_vs_int8.py [--runs DIR] [--epochs 3] [--limit-train N] [--device-images 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from bnnkit import api
from bnnkit.cost.formatting import render_table
from bnnkit.cost.graph_cost import profile
from bnnkit.export import export_run
from bnnkit.export.int8 import quantize_run, twin_recipe
from bnnkit.graph import OPS, Family, Graph
from bnnkit.recipe import load_recipe
from bnnkit.runtime.evaluate import run_graphs
from bnnkit.training.run import CONFIG, WEIGHTS

NETS = {
    "ebnn-4-8": ("ebnn_cnn", {"channels": [4, 8]}),
    "ebnn-8-16": ("ebnn_cnn", {"channels": [8, 16]}),
    "ebnn-16-32": ("ebnn_cnn", {"channels": [16, 32]}),
    "small_cnn": ("small_cnn", {}),
}
BNN_RECIPE = "embedded"


def macs(graph: Graph) -> int:
    """Multiply-accumulates of the producers (binary or int8), over every kernel tap."""
    total = 0
    for op in graph.ops:
        if OPS[op.kind].family is Family.PRODUCER:
            total += math.prod(graph.types[op.output][1]) * math.prod(op.params["weight"].shape[1:])
    return total


def trained(args: argparse.Namespace, net: str, kind: str) -> Path:
    """The run directory of ``net`` as ``kind`` (bnn or int8), trained unless it is there."""
    model, options = NETS[net]
    out = args.runs / f"{net}-{'bnn' if kind == 'bnn' else 'fp-twin'}"
    if not (out / WEIGHTS).exists():
        recipe = load_recipe(BNN_RECIPE)
        api.train(model, "fashion-mnist", out, recipe=recipe if kind == "bnn" else twin_recipe(recipe),
                  epochs=args.epochs, model_options=options, limit_train=args.limit_train, limit_test=2000,
                  data_dir=args.data_dir, progress=False)  # fmt: skip
    return out


def measure(args: argparse.Namespace, net: str, kind: str) -> dict:
    run = trained(args, net, kind)
    graph = export_run(run)[0] if kind == "bnn" else quantize_run(run, args.calibration, args.data_dir)[0]
    host = run_graphs(graph, ["numpy"], data_dir=args.data_dir)[0]
    device = run_graphs(graph, ["cortex-m4"], limit=args.device_images, data_dir=args.data_dir)[0]
    d, prof, n_macs = device.device or {}, profile(graph), macs(graph)
    config = json.loads((run / CONFIG).read_text())  # a reused run says how it was trained
    return {
        "net": net,
        "kind": kind,
        "run": str(run),
        "epochs": config["epochs"],
        "train_images": config.get("limit_train"),
        "accuracy": host.accuracy,
        "test_images": host.n,
        "device_images": device.n,
        "device_bit_exact": device.bit_exact,
        "device_agreement": device.agreement,
        "flash_bytes": d["flash_bytes"],
        "ram_bytes": d["ram_bytes"],
        "weight_bytes": prof["totals"]["weight_bytes"],
        "macs": n_macs,
        "instructions": d["instructions_per_inference"],
        "instructions_per_mac": d["instructions_per_inference"] / n_macs,
        "energy_uj_device_model": d.get("energy_uj_estimate"),
        "energy_nj_op_model": prof["totals"]["energy"]["total_pj"] / 1e3,
    }


def pairings(rows: list[dict]) -> list[dict]:
    """Per BNN, the int8 net at matched accuracy and the one at matched memory (None: no such net)."""
    int8 = [r for r in rows if r["kind"] == "int8"]
    out = []
    for b in (r for r in rows if r["kind"] == "bnn"):
        as_good = [r for r in int8 if r["accuracy"] >= b["accuracy"]]
        fits = [r for r in int8 if r["flash_bytes"] + r["ram_bytes"] <= b["flash_bytes"] + b["ram_bytes"]]
        for match, pick in (
            ("accuracy", min(as_good, key=lambda r: r["instructions"], default=None)),
            ("memory", max(fits, key=lambda r: r["accuracy"], default=None)),
        ):
            pair = {"bnn": b["net"], "matched": match, "int8": pick["net"] if pick else None}
            if pick:
                pair |= {
                    "accuracy_bnn": b["accuracy"],
                    "accuracy_int8": pick["accuracy"],
                    "instructions_ratio": b["instructions"] / pick["instructions"],
                    "flash_ratio": b["flash_bytes"] / pick["flash_bytes"],
                    "ram_ratio": b["ram_bytes"] / pick["ram_bytes"],
                }
            out.append(pair)
    return out


def print_tables(result: dict) -> None:
    lines = [("net", "kind", "trained", "accuracy", "M4 same labels", "flash B", "RAM B", "MACs", "instructions", "instr/MAC",
              "µJ (device)", "nJ (op model)")]  # fmt: skip
    for r in result["rows"]:
        same = f"{r['device_agreement']:.0%} of {r['device_images']}" + (
            "" if r["device_bit_exact"] else " (NOT bit-exact)"
        )
        lines.append((r["net"], r["kind"], f"{r['epochs']} x {r['train_images'] or 60000:,}", f"{r['accuracy']:.4f}", same, f"{r['flash_bytes']:,}", f"{r['ram_bytes']:,}",
                      f"{r['macs']:,}", f"{r['instructions']:,.0f}", f"{r['instructions_per_mac']:.2f}",
                      f"{r['energy_uj_device_model']:,.0f}", f"{r['energy_nj_op_model']:,.1f}"))  # fmt: skip
    print("\n".join(render_table(lines, left=2, total=False)))
    print()
    lines = [("BNN", "matched", "int8 net", "accuracy BNN / int8", "instructions", "flash", "RAM")]
    for p in result["pairings"]:
        if p["int8"] is None:
            lines.append((p["bnn"], p["matched"], "none", "-", "-", "-", "-"))
            continue
        lines.append((p["bnn"], p["matched"], p["int8"], f"{p['accuracy_bnn']:.4f} / {p['accuracy_int8']:.4f}",
                      f"{p['instructions_ratio']:.2f}x", f"{p['flash_ratio']:.2f}x", f"{p['ram_ratio']:.2f}x"))  # fmt: skip
    print("\n".join(render_table(lines, left=3, total=False)))
    print("(ratios: BNN / int8; below 1 the BNN uses less)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("mcu_vs_int8_runs"), help="run directories (reused)")
    parser.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, of: {', '.join(NETS)}")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, help="first N training images only (default: all 60,000)")
    parser.add_argument("--calibration", type=int, default=2000, help="training images that calibrate int8")
    parser.add_argument("--device-images", type=int, default=200, help="test images run on the Cortex-M4")
    parser.add_argument("--data-dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    nets = args.nets.split(",")
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        parser.error(f"unknown nets {unknown}; choose from {', '.join(NETS)}")
    rows = [measure(args, net, kind) for net in nets for kind in ("bnn", "int8")]
    settings = {k: getattr(args, k) for k in ("epochs", "limit_train", "calibration", "device_images")}
    result = {"settings": {**settings, "bnn_recipe": BNN_RECIPE}, "rows": rows, "pairings": pairings(rows)}
    if args.json:
        print(json.dumps(result))
    else:
        print_tables(result)


if __name__ == "__main__":
    main()
