"""Executors of a ``Graph``: the NumPy reference interpreter (the specification), bnnkit's
fast host kernels, the C code generator with its host build, and the Cortex-M build run
in QEMU."""

from bnnkit.runtime.numpy_ref import execute, predict

# What `bnnkit run --runtime` and `bnnkit.runtime.evaluate.run_graph` accept.
RUNTIMES = ("numpy", "c", "c-portable", "cortex-m3", "cortex-m4", "cortex-m7")

__all__ = ["RUNTIMES", "execute", "predict"]
