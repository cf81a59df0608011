"""Run a graph on a real test set in runtimes of the registry and score it against the
NumPy reference."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph
from bnnkit.runtime.registry import REFERENCE, RUNTIMES, Prediction, Runtime, get_runtime


@dataclass(frozen=True)
class Evaluation:
    """A graph in one runtime on a test set; ``to_dict`` is what ``bnnkit run --json`` prints."""

    runtime: str
    dataset: str
    n: int
    accuracy: float
    agreement: float  # the fraction of labels equal to the reference's
    bit_exact: bool  # every score equal to the reference's, bit for bit
    seconds: dict[str, float]  # the runtime's own time on the images, and the reference's
    device: dict[str, Any] | None = None  # what a device runtime measured

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.device is None:
            del out["device"]
        return out


def test_images(
    graph: Graph, dataset: str | None, limit: int | None, data_dir: str | None
) -> tuple[str, np.ndarray, np.ndarray]:
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


def run_graph(
    graph: Graph,
    runtime: str = REFERENCE,
    dataset: str | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
    progress: bool = False,
) -> Evaluation:
    """Accuracy of ``graph`` in ``runtime`` on a test set, and its agreement with the NumPy
    reference: the fraction of equal labels and whether every score is bit-identical."""
    return run_graphs(graph, [runtime], dataset, limit, data_dir, progress)[0]


def run_graphs(
    graph: Graph,
    runtimes: list[str],
    dataset: str | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
    progress: bool = False,
) -> list[Evaluation]:
    """``run_graph`` for each of ``runtimes`` on the same images, with one reference pass."""
    chosen = [get_runtime(name) for name in runtimes]
    for runtime in chosen:
        runtime.require()  # before the reference pass, not minutes after it
    name, x, y = test_images(graph, dataset, limit, data_dir)
    with RUNTIMES[REFERENCE].prepare(graph, progress=progress) as reference:
        expected = reference.predict(x)
    return [_score(graph, runtime, name, x, y, expected, progress) for runtime in chosen]


def _score(
    graph: Graph, runtime: Runtime, dataset: str, x: np.ndarray, y: np.ndarray, expected: Prediction, progress: bool
) -> Evaluation:
    if runtime.name == REFERENCE:
        got = expected
    else:
        with runtime.prepare(graph, progress=progress) as predictor:
            got = predictor.predict(x)
    return Evaluation(
        runtime=runtime.name,
        dataset=dataset,
        n=int(len(y)),
        accuracy=float(np.mean(got.labels == y)),
        agreement=float(np.mean(got.labels == expected.labels)),
        bit_exact=same_scores(got.scores, expected.scores),
        seconds={REFERENCE: expected.seconds, runtime.name: got.seconds},
        device=got.device,
    )


def same_scores(got: np.ndarray, want: np.ndarray) -> bool:
    """Bit for bit in the runtime's own type. The C API's scores are float32, so a q32 score beyond
    2**24 is compared as the float32 it rounds to (the labels come from the exact integers); a
    runtime that gives the reference's dtype (NumPy, the host kernels) must give its exact values
    (held against the reference's float32 rounding, exact int32 scores beyond 2**24 would differ
    and scores equal only to that rounding would pass)."""
    if got.dtype == want.dtype:
        return bool(np.array_equal(got, want))
    return got.dtype == np.float32 and bool(np.array_equal(got, want.astype(np.float32)))
