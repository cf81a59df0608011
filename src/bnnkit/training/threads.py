"""How many threads a training uses: the cores this process may run on that nothing else
keeps busy, never fewer than one.

PyTorch's default is one thread per core. When other processes keep some of those cores
busy, every parallel region (hundreds per training step) waits at its barrier for a
thread that the scheduler has parked for a whole time slice, and an epoch on 2 busy
cores ran 10x slower with 2 threads than with 1. So the default counts the cores in this
process's affinity mask, takes away the tasks that the machine is running right now
(sampled from ``/proc/loadavg`` over 20 ms, so that it sees a job that started a second
ago, which the load averages do not yet show), and splits the rest between the processes
of a ``torchrun`` job. ``--threads N`` or ``OMP_NUM_THREADS`` overrides it.

The thread count changes how reductions are split (convolution weight gradients,
BatchNorm statistics) and so the rounding of a training: the trainer records the count in
the training state, a resume uses it again, and ``--threads N`` pins it where runs must be
reproduced bit for bit on another day or machine.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from bnnkit.errors import BnnkitError

LOADAVG = Path("/proc/loadavg")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which taskset and container
    runtimes narrow), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def runnable_tasks(samples: int = 3, interval: float = 0.01, path: Path = LOADAVG) -> float | None:
    """Tasks running or ready to run on the machine besides this one: the median of a few
    readings of ``/proc/loadavg``'s "running/total" field (None where there is no such file)."""
    readings = []
    for i in range(samples):
        try:
            running = int(path.read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        readings.append(running - 1)  # the reader itself is running
        if i + 1 < samples:
            time.sleep(interval)
    return max(0.0, statistics.median(readings))


def busy_cores() -> float:
    """How many cores other processes keep busy now; the 1-minute load average where the
    instantaneous count cannot be read."""
    now = runnable_tasks()
    if now is not None:
        return now
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def auto_threads(processes: int | None = None) -> int:
    """Threads for one of ``processes`` training processes on this machine (default: those
    of this torchrun job on this node, else 1): the free cores split evenly, at least 1."""
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = available_cores()
    share = cores // max(1, processes)
    free = round(cores - busy_cores())
    return max(1, min(share, free))


def check_threads(threads: int | None) -> None:
    """A thread count from a user: None (choose) or an integer >= 1."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise BnnkitError(f"--threads must be an integer >= 1, got {threads!r}")


def _from_environment() -> int | None:
    """``OMP_NUM_THREADS`` where it holds a positive integer (torchrun sets it to 1), else None."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def choose_threads(requested: int | None, recorded: int | None = None, processes: int | None = None) -> int:
    """What a training uses: ``requested`` (``--threads``) if given, else ``$OMP_NUM_THREADS``,
    else the count the run recorded (a resume), else ``auto_threads(processes)``."""
    check_threads(requested)
    for choice in (requested, _from_environment(), recorded):
        if choice:
            return int(choice)
    return auto_threads(processes)


def use_threads(threads: int) -> None:
    """Set PyTorch's intra-op threads for this process."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
