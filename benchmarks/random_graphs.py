"""Random graphs of tests/helpers/graphgen.py in every runtime against the NumPy spec: per
generator and runtime the graphs run, the op kinds they cover (kind, input type) and the
graphs whose scores or labels differ from the spec's. The claim "all runtimes stay bit-exact
to the spec on >= 1,000 random graphs" is this command:

    python benchmarks/random_graphs.py [--generators fixed,binary,narrow,int8] [--graphs 1000]
        [--first-seed 0] [--runtimes fast,c,cortex-m3,cortex-m4] [--batch 100] [--json]

Graph i of a generator is ``graphgen.<generator>_case_from_seed(first_seed + i)`` run on its
own 8 images, so a mismatch names a seed that rebuilds it. The C is built ``--batch`` graphs to
an executable (``build_hosts``) or ELF (``build_mcus``). A C score is a float32 (the API's type),
so it is compared with the spec's score as the float32 that rounds to; labels exactly. Exits 1
on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bnnkit.cost.formatting import render_table
from bnnkit.errors import BnnkitError
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.cortex_m import TARGETS, build_mcus
from bnnkit.runtime.evaluate import same_scores
from bnnkit.runtime.fast import FastModel
from bnnkit.runtime.host import build_hosts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import graphgen  # noqa: E402

GENERATORS: dict[str, Callable[[int], graphgen.Case]] = {
    "fixed": graphgen.fixed_case_from_seed,
    "binary": graphgen.case_from_seed,
    "narrow": graphgen.narrow_case_from_seed,
    "int8": graphgen.int8_case_from_seed,
}


def _fast(cases: list[graphgen.Case], work: str) -> list[tuple[np.ndarray, np.ndarray]]:
    return [FastModel(c.graph, threads=1).predict(c.x) for c in cases]


def _host_c(cases: list[graphgen.Case], work: str) -> list[tuple[np.ndarray, np.ndarray]]:
    return [h.predict(c.x) for h, c in zip(build_hosts([c.graph for c in cases], work), cases)]


def _mcu(target: str) -> Callable[[list[graphgen.Case], str], list[tuple[np.ndarray, np.ndarray]]]:
    def run(cases: list[graphgen.Case], work: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return [m.predict(c.x) for m, c in zip(build_mcus([c.graph for c in cases], work, target), cases)]

    return run


RUNTIMES = {"fast": _fast, "c": _host_c, **{t: _mcu(t) for t in TARGETS}}


def same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray], runtime: str) -> bool:
    """Scores as `bnnkit run`'s ``bit_exact`` compares them (``same_scores``: the C's are float32),
    the fast runtime's in the spec's own dtypes; labels exactly."""
    own_type = runtime != "fast" or got[0].dtype == want[0].dtype
    return own_type and same_scores(got[0], want[0]) and np.array_equal(got[1], want[1])


def check(generator: str, seeds: range, runtimes: list[str], batch: int) -> list[dict]:
    """One row per runtime (the spec's first) for the graphs of ``generator`` numbered ``seeds``."""
    start = time.perf_counter()
    cases = [GENERATORS[generator](s) for s in seeds]
    want = [numpy_ref.predict(c.graph, c.x) for c in cases]
    covered = sorted({f"{op.kind}({c.graph.types[op.inputs[0]][0]})" for c in cases for op in c.graph.ops})
    rows = [{"generator": generator, "runtime": "numpy (spec)", "graphs": len(cases), "ops": covered,
             "mismatched_seeds": [], "errors": [], "seconds": time.perf_counter() - start}]  # fmt: skip
    for runtime in runtimes:
        start, bad, errors = time.perf_counter(), [], []
        for i in range(0, len(cases), batch):
            some = cases[i : i + batch]
            try:
                with tempfile.TemporaryDirectory(prefix="bnnkit-random-graphs-") as work:
                    got = RUNTIMES[runtime](some, work)
            except BnnkitError as e:  # a compile error or a crash: the whole batch fails, by its seeds
                bad += [c.seed for c in some]
                errors.append(str(e))
                continue
            bad += [c.seed for c, g, w in zip(some, got, want[i : i + batch]) if not same(g, w, runtime)]
        rows.append({**rows[0], "runtime": runtime, "mismatched_seeds": bad, "errors": errors,
                     "seconds": time.perf_counter() - start})  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generators", default="fixed", help=f"comma-separated, of {', '.join(GENERATORS)}")
    parser.add_argument("--graphs", type=int, default=1000, help="graphs per generator (default 1000)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--runtimes", default="fast,c", help=f"comma-separated, of {', '.join(RUNTIMES)}")
    parser.add_argument("--batch", type=int, default=100, help="graphs per C executable or ELF (default 100)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    generators, runtimes = args.generators.split(","), args.runtimes.split(",")
    unknown = [g for g in generators if g not in GENERATORS] + [r for r in runtimes if r not in RUNTIMES]
    if unknown or args.graphs < 1 or args.batch < 1:
        parser.error(f"unknown generator or runtime {unknown}" if unknown else "--graphs and --batch must be >= 1")
    seeds = range(args.first_seed, args.first_seed + args.graphs)
    rows = [row for g in generators for row in check(g, seeds, runtimes, args.batch)]
    exact = not any(r["mismatched_seeds"] for r in rows)
    if args.json:
        print(json.dumps({"seeds": [seeds.start, seeds.stop - 1], "rows": rows, "all_bit_exact": exact}))
    else:
        lines = [("generator", "runtime", "graphs", "op kinds", "mismatches", "seconds")]
        for r in rows:
            lines.append((r["generator"], r["runtime"], f"{r['graphs']:,}", str(len(r["ops"])),
                          str(len(r["mismatched_seeds"])), f"{r['seconds']:.1f}"))  # fmt: skip
        print(f"seeds {seeds.start}-{seeds.stop - 1}")
        print("\n".join(render_table(lines, left=2, total=False)))
        for g in generators:
            print(f"{g}: {', '.join(next(r['ops'] for r in rows if r['generator'] == g))}")
        for r in rows:
            if r["mismatched_seeds"]:
                print(f"{r['generator']} on {r['runtime']}: seeds {r['mismatched_seeds']} differ from the spec")
            for error in r["errors"]:
                print(f"{r['generator']} on {r['runtime']}: {error}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
