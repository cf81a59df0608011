"""Executors of a ``Graph``: the NumPy reference interpreter (the specification) and the
C code generator with its host build."""

from bnnkit.runtime.numpy_ref import execute, predict

__all__ = ["execute", "predict"]
