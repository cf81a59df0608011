"""Training keeps freed memory in the process (bnnkit.training.allocator): a pattern of large
allocations that faults its pages in again on every round under glibc's defaults faults none
after ``keep_freed_memory``. Each case runs in a fresh interpreter: the setting is per process."""

import json
import os
import platform
import subprocess
import sys

import pytest

ROUNDS = """
import json, os, resource, sys
import numpy as np
from bnnkit.training.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():  # buffers of a training step's sizes, freed together
    bufs = [np.ones(n, np.uint8) for n in (3 << 20, 5 << 20, 9 << 20, 17 << 20)]
    del bufs
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"kept": kept, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")


def faults_per_round(mode: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True, env=env)
    result: dict = json.loads(out.stdout)
    return result


def test_freed_pages_stay_mapped():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    default, kept = faults_per_round("default", env), faults_per_round("keep", env)
    assert kept["kept"] is True
    assert default["faults"] > 1000  # 34 MB a round: 8,500 pages, most faulted in again
    assert kept["faults"] < 50


def test_a_process_that_chose_its_thresholds_keeps_them():
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"}
    assert faults_per_round("keep", env)["kept"] is False
