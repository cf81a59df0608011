"""The runtimes a graph runs in, by name: what ``bnnkit run --runtime``, ``bnnkit.predict``,
``bnnkit.evaluate``, the demo, ``bnnkit fit --target``, ``bnnkit profile --target`` and
benchmarks/agreement.py accept, all from ``RUNTIMES``.

A runtime is prepared once for a graph (loaded, compiled or cross-compiled), then predicts
batches of images; what it prepared is freed when the predictor closes::

    with RUNTIMES["c-portable"].prepare(graph) as predictor:
        result = predictor.predict(x)  # a Prediction: scores, labels, seconds, device

Every runtime gives the NumPy reference's scores bit for bit. A device runtime
(``device=True``, the Cortex-M cores in QEMU) also reports what it measured on the device.
docs/architecture.md ("Adding a runtime") adds one.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph
from bnnkit.progress import stage
from bnnkit.runtime.cortex_m import TARGETS, build_mcu, require_toolchain
from bnnkit.runtime.fast import FastModel
from bnnkit.runtime.host import build_host
from bnnkit.runtime.numpy_ref import predict
from bnnkit.runtime.toolchain import QEMU

T = TypeVar("T")

REFERENCE = "numpy"  # the runtime that defines every op; the others are measured against it


@dataclass(frozen=True)
class Prediction:
    """What a predictor returns for a batch of images."""

    scores: np.ndarray  # (N, classes), of the dtype the NumPy reference gives
    labels: np.ndarray  # int64 (N,)
    seconds: float  # the runtime's own time on the images, preparation excluded
    device: dict[str, Any] | None = None  # a device runtime's measurements, JSON-ready (cortex_m.device_report)

    def measured(self) -> dict[str, Any]:
        """``device``, of a device runtime's prediction (which always has it)."""
        if self.device is None:
            raise BnnkitError("this runtime measures nothing on a device; use one of " + ", ".join(device_runtimes()))
        return self.device


class Predictor:
    """A runtime prepared for one graph. Close it (or use it in ``with``) to free what
    ``prepare`` built."""

    def predict(self, x: np.ndarray) -> Prediction:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Runtime:
    name: str
    summary: str  # one line for --help and the docs
    build: Callable[[Graph, bool], Predictor]  # (graph, progress) -> a predictor for that graph
    # Raises BnnkitError naming what to install; cheap, so callers run it before any long work.
    require: Callable[[], object] = lambda: None
    device: bool = False

    def prepare(self, graph: Graph, *, progress: bool = False) -> Predictor:
        self.require()
        return self.build(graph, progress)


RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    if runtime.name in RUNTIMES:
        raise BnnkitError(f"a runtime named {runtime.name!r} is registered already")
    RUNTIMES[runtime.name] = runtime
    return runtime


def get_runtime(name: str, *, device: bool = False) -> Runtime:
    """The runtime ``name`` (with ``device``, a device runtime), or an error listing them."""
    choices = device_runtimes() if device else tuple(RUNTIMES)
    if name not in choices:
        kind = "device runtime" if device else "runtime"
        raise BnnkitError(f"unknown {kind} {name!r}; use one of {', '.join(choices)}")
    return RUNTIMES[name]


def device_runtimes() -> tuple[str, ...]:
    return tuple(name for name, runtime in RUNTIMES.items() if runtime.device)


# --- the runtimes bnnkit brings --------------------------------------------------------


class _Timed(Predictor):
    """A predictor from a function images -> (scores, labels), timed around the call."""

    def __init__(
        self, run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], close: Callable[[], None] = lambda: None
    ):
        self._run, self._close = run, close

    def predict(self, x: np.ndarray) -> Prediction:
        t0 = time.perf_counter()
        scores, labels = self._run(x)
        return Prediction(scores, labels, time.perf_counter() - t0)

    def close(self) -> None:
        self._close()


def _in_scratch(prefix: str, build: Callable[[str], T]) -> tuple[T, Callable[[], None]]:
    """``build(directory)`` in a temporary directory, and what removes it (at once if the build fails)."""
    work = tempfile.TemporaryDirectory(prefix=prefix)
    try:
        return build(work.name), work.cleanup
    except BaseException:
        work.cleanup()
        raise


def _numpy(graph: Graph, progress: bool) -> Predictor:
    return _Timed(lambda x: predict(graph, x, progress=progress))


def _fast(graph: Graph, progress: bool) -> Predictor:
    return _Timed(FastModel(graph).predict)


def _portable(graph: Graph, progress: bool) -> Predictor:
    host, cleanup = _in_scratch("bnnkit-c-", lambda work: build_host(graph, work))
    return _Timed(host.predict, cleanup)


class _Emulated(Predictor):
    """A graph cross-compiled for a Cortex-M core, run in QEMU."""

    def __init__(self, graph: Graph, target: str, progress: bool):
        with stage(f"{target}: cross-compiling", progress):
            self.image, self._cleanup = _in_scratch("bnnkit-mcu-", lambda work: build_mcu(graph, work, target))
        self.progress = progress

    def predict(self, x: np.ndarray) -> Prediction:
        run, report = self.image.measure(x, self.progress)
        return Prediction(run.scores, run.labels, run.seconds, report)

    def close(self) -> None:
        self._cleanup()


def _require_cortex_m() -> None:
    require_toolchain(qemu=QEMU)


def _emulated(target: str) -> Callable[[Graph, bool], Predictor]:
    return lambda graph, progress: _Emulated(graph, target, progress)


register(Runtime("numpy", "the reference interpreter, the specification of every op", _numpy))
register(Runtime("c", "bnnkit's fast host kernels (AVX-512, AVX2 or portable C), in-process", _fast))
register(Runtime("c-portable", "the generated C99 of the device runtime, compiled for this host", _portable))
for _target in TARGETS.values():
    register(
        Runtime(
            _target.name,
            f"the generated C99 cross-compiled for an Arm {_target.name}, run in QEMU {_target.machine}",
            _emulated(_target.name),
            _require_cortex_m,
            device=True,
        )
    )
