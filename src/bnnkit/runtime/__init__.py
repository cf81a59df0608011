"""Executors of a ``Graph``: the NumPy reference interpreter (the specification), bnnkit's
fast host kernels, the C code generator with its host build, and the Cortex-M build run
in QEMU; ``registry`` names them."""

from bnnkit.runtime.numpy_ref import execute, predict
from bnnkit.runtime.registry import RUNTIMES

# RUNTIMES: name -> Runtime, what `bnnkit run --runtime` and `bnnkit.runtime.evaluate.run_graph` accept.
__all__ = ["RUNTIMES", "execute", "predict"]
