"""The generated C (``bnnkit.runtime.c``) compiled for this machine and run through a pipe:
the ``c-portable`` runtime, and ``bnnkit build --target host``.

One executable holds many graphs, each under its own prefix (``g0``, ``g1``, ...), with the
harness ``c_kernels/host_harness.c``: argv[1] picks the graph, images go in on stdin and
scores and labels come out on stdout.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnnkit.errors import BnnkitError
from bnnkit.files import make_dir
from bnnkit.graph import Graph
from bnnkit.runtime.c import write_sources
from bnnkit.runtime.c_library import harness_sources, read_text
from bnnkit.runtime.numpy_ref import check_input
from bnnkit.runtime.toolchain import CFLAGS, SANITIZE, host_cc, run_tool

EXECUTABLE = "bnnkit_host"


@dataclass(frozen=True)
class HostModel:
    """A graph compiled for this machine; ``predict`` runs the executable."""

    graph: Graph
    executable: Path
    index: int  # which of the executable's models
    sanitize: bool = False

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores float32 (N, classes) and labels int64 (N,) of uint8 images (N, C, H, W)."""
        x = np.ascontiguousarray(check_input(self.graph, x))
        env = dict(os.environ)
        if self.sanitize:  # leak checking needs ptrace, which containers often forbid
            env["ASAN_OPTIONS"] = "detect_leaks=0:" + env.get("ASAN_OPTIONS", "")
        proc = subprocess.run([str(self.executable), str(self.index)], input=x.tobytes(), capture_output=True, env=env)
        if proc.returncode != 0:
            raise BnnkitError(
                f"{self.executable} exited with status {proc.returncode}:\n{proc.stderr.decode(errors='replace')}"
            )
        k = self.graph.num_classes
        record = np.dtype([("scores", "=f4", (k,)), ("label", "=i4")])
        if len(proc.stdout) != len(x) * record.itemsize:
            raise BnnkitError(f"{self.executable} wrote {len(proc.stdout)} bytes for {len(x)} images")
        out = np.frombuffer(proc.stdout, dtype=record)
        return out["scores"].astype(np.float32).reshape(len(x), k), out["label"].astype(np.int64)


def build_hosts(
    graphs: Sequence[Graph],
    workdir: str | Path,
    *,
    sanitize: bool = False,
    cc: str | None = None,
    cflags: Sequence[str] = (),
) -> list[HostModel]:
    """Compile ``graphs`` into one host executable under ``workdir`` (one compile for many
    graphs). ``cc`` is the compiler (default: ``$CC``, else gcc or cc; see
    ``toolchain.host_cc``); ``cflags`` are added to the strict ``toolchain.CFLAGS``;
    ``sanitize`` adds AddressSanitizer and UBSan."""
    compiler = host_cc(cc)
    if not graphs:
        raise BnnkitError("build_hosts needs at least one graph")
    work = make_dir(workdir, "build directory")
    flags = [*CFLAGS, *(SANITIZE if sanitize else ()), *cflags]
    prefixes = [f"g{i}" for i in range(len(graphs))]
    for graph, prefix in zip(graphs, prefixes):
        write_sources(graph, work, prefix, scratch=True)
    for name, text in {**harness_sources(graphs, prefixes), "harness.c": read_text("host_harness.c")}.items():
        (work / name).write_text(text)
    units = [*prefixes, "harness"]
    compiles = ([*compiler, *flags, "-c", str(work / f"{u}.c"), "-o", str(work / f"{u}.o")] for u in units)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda cmd: run_tool(cmd, "C compilation"), compiles))
    exe = work / EXECUTABLE
    run_tool([*compiler, *flags, *(str(work / f"{u}.o") for u in units), "-o", str(exe)], "linking")
    return [HostModel(graph, exe, i, sanitize) for i, graph in enumerate(graphs)]


def build_host(
    graph: Graph, workdir: str | Path, *, sanitize: bool = False, cc: str | None = None, cflags: Sequence[str] = ()
) -> HostModel:
    """Compile ``graph`` with its C runtime and the stdin/stdout harness under ``workdir``
    (see ``build_hosts`` for the options)."""
    return build_hosts([graph], workdir, sanitize=sanitize, cc=cc, cflags=cflags)[0]
