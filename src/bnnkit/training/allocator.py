"""Freed memory stays in the process while it trains (glibc's malloc).

A training step allocates and frees the same large buffers every step: activations, their
gradients, oneDNN's work space. glibc maps an allocation above its mmap threshold afresh and
gives free memory above its trim threshold back to the system, so the next step faults the
same pages in again: 4,400 page faults and 14.5 ms of system time per small_cnn step (batch
128, about 180 ms), 6,300 per resnet20 step. With both thresholds fixed high the pages stay
mapped (740 and 200 faults, docs/performance.md), as jemalloc or tcmalloc would keep them.
The values a step computes do not depend on where its buffers live.

A process that set glibc's ``MALLOC_*_THRESHOLD_`` variables keeps its own choice.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # the most glibc takes on 64-bit: larger blocks are still mapped afresh
TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap before any goes back


@functools.cache
def keep_freed_memory() -> bool:
    """Fix glibc's thresholds for this process (once); whether they were set."""
    chosen = any(os.environ.get(f"MALLOC_{name}_THRESHOLD_") for name in ("MMAP", "TRIM"))
    if chosen or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
