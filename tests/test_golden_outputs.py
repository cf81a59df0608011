"""Outputs that refactoring must not change: a demo-shaped graph (small_cnn, `embedded`, one
short epoch on Fashion-MNIST) and its scores in every runtime, saved by the code of
2026-12-02 before the op table and runtime registry were introduced (issue 17). The file
holds the 64 images too, so the test needs no dataset. Any change of a runtime's output
bits, however small, fails here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bnnkit.graph import Graph
from bnnkit.runtime.fast import FastModel
from bnnkit.runtime.host import build_host
from bnnkit.runtime.numpy_ref import predict

DATA = Path(__file__).parent / "data"
GOLDEN = np.load(DATA / "demo_small_cnn_scores.npz", allow_pickle=False)
IMAGES = GOLDEN["images"]


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph.load(DATA / "demo_small_cnn.bnn")


def assert_same(runtime: str, scores: np.ndarray, labels: np.ndarray) -> None:
    want_scores, want_labels = GOLDEN[f"{runtime}_scores"], GOLDEN[f"{runtime}_labels"]
    assert scores.dtype == want_scores.dtype and scores.tobytes() == want_scores.tobytes(), runtime
    assert np.array_equal(labels, want_labels), runtime


def test_numpy_reference(graph):
    assert_same("numpy", *predict(graph, IMAGES))


def test_fast_host_kernels(graph):
    assert_same("c", *FastModel(graph).predict(IMAGES))


def test_generated_c99_on_the_host(graph, tmp_path):
    assert_same("c-portable", *build_host(graph, tmp_path).predict(IMAGES))


@pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="needs gcc-arm-none-eabi and qemu-system-arm (installed by .ci/run)",
)
def test_cortex_m4_in_qemu(graph, tmp_path):
    from bnnkit.runtime.cortex_m import measure

    run, _ = measure(graph, "cortex-m4", IMAGES[: len(GOLDEN["cortex-m4_labels"])], tmp_path, False)
    assert_same("cortex-m4", run.scores, run.labels)
