"""Run a graph on a real test set in one of the runtimes and score it."""

from __future__ import annotations

import tempfile
import time

import numpy as np

from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph
from bnnkit.runtime import RUNTIMES
from bnnkit.runtime.numpy_ref import predict

# "c": the host kernels in-process, a batch per call (bnnkit.runtime.fast); "c-portable":
# the generated C99 of the device runtime, built for the host and fed through a pipe.


def test_images(graph: Graph, dataset: str | None, limit: int | None, data_dir: str | None):
    """The test split the graph was trained for (or ``dataset``), first ``limit`` images."""
    name = dataset or graph.meta.get("dataset")
    if not name:
        raise BnnkitError("the graph does not record its dataset; pass --dataset")
    ds = load_dataset(name, "test", data_dir)
    if ds.info.in_shape != graph.input_shape:
        raise BnnkitError(f"{name} images are {ds.info.in_shape}, the graph takes {graph.input_shape}")
    if limit is not None and limit < 1:
        raise BnnkitError(f"--limit must be >= 1, got {limit}")
    return name, ds.x[:limit], ds.y[:limit]


def run_graph(graph: Graph, runtime: str = "numpy", dataset: str | None = None, limit: int | None = None,
              data_dir: str | None = None, progress: bool = False) -> dict:
    """Accuracy of ``graph`` in ``runtime`` on a test set, and its agreement with the NumPy
    reference: the fraction of equal labels and whether every score is bit-identical."""
    return run_graphs(graph, [runtime], dataset, limit, data_dir, progress)[0]


def run_graphs(graph: Graph, runtimes: list[str], dataset: str | None = None, limit: int | None = None,
               data_dir: str | None = None, progress: bool = False) -> list[dict]:
    """``run_graph`` for each of ``runtimes`` on the same images, with one reference pass."""
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise BnnkitError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if any(runtime.startswith("cortex-") for runtime in runtimes):
        from bnnkit.runtime.cortex_m import require_toolchain

        require_toolchain()  # before the reference pass, not minutes after it
    name, x, y = test_images(graph, dataset, limit, data_dir)
    t0 = time.perf_counter()
    reference = predict(graph, x, progress=progress)
    numpy_seconds = time.perf_counter() - t0
    return [_score(graph, runtime, name, x, y, reference, numpy_seconds, progress) for runtime in runtimes]


def _score(graph: Graph, runtime: str, name: str, x: np.ndarray, y: np.ndarray,
           reference: tuple[np.ndarray, np.ndarray], numpy_seconds: float, progress: bool = False) -> dict:
    ref_scores, ref_labels = reference
    seconds = {"numpy": numpy_seconds}
    scores, labels = ref_scores, ref_labels
    device = {}
    if runtime == "c":
        from bnnkit.runtime.fast import FastModel

        model = FastModel(graph)
        t0 = time.perf_counter()
        scores, labels = model.predict(x)
        seconds["c"] = time.perf_counter() - t0
    elif runtime == "c-portable":
        from bnnkit.runtime.c import build_host

        with tempfile.TemporaryDirectory(prefix="bnnkit-c-") as work:
            host = build_host(graph, work)
            t0 = time.perf_counter()
            scores, labels = host.predict(x)
            seconds["c-portable"] = time.perf_counter() - t0
    elif runtime.startswith("cortex-"):
        from bnnkit.runtime.cortex_m import measure

        with tempfile.TemporaryDirectory(prefix="bnnkit-mcu-") as work:
            run, report = measure(graph, runtime, x, work, progress)
        scores, labels, seconds[runtime] = run.scores, run.labels, run.seconds
        device = {"device": report}
    return {
        "runtime": runtime,
        "dataset": name,
        "n": int(len(y)),
        "accuracy": float(np.mean(labels == y)),
        "agreement": float(np.mean(labels == ref_labels)),
        "bit_exact": bool(np.array_equal(scores, ref_scores)),
        "seconds": seconds,
        **device,
    }
