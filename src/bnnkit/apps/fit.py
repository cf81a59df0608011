"""``bnnkit fit``: find binary networks that fit a device's RAM and flash, train them, and
keep the best (the eBNN tools, automated).

Every candidate architecture is built with the ``embedded`` recipe (binary end to end,
so it exports), exported untrained and sized: its footprint — the planned RAM peak of
the C runtime (input included) and its packed parameters in flash, or with ``target``
the flash and RAM measured on a Cortex-M image in QEMU — does not depend on the weights,
so the search filters before training anything. The candidates that fit
train cheapest first until the time budget is spent. Results go to ``DIR/fit.jsonl``
one line per trained candidate; a rerun skips what is recorded and resumes a candidate
whose training was interrupted, so nothing is lost.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit import training
from bnnkit.cost.formatting import render_table
from bnnkit.cost.graph_cost import profile
from bnnkit.data import get_info
from bnnkit.errors import BnnkitError
from bnnkit.export import export_model, export_run
from bnnkit.files import atomic_write, exclusive, make_dir, read_json_lines
from bnnkit.graph import Graph
from bnnkit.models import create_model
from bnnkit.progress import progress as bar
from bnnkit.recipe import load_recipe
from bnnkit.runtime.registry import get_runtime
from bnnkit.training import RunConfig, TrainOptions, plots

RESULTS, BEST, PLOT = "fit.jsonl", "best.bnn", "pareto.png"
LR = 3e-3  # what the demo measured best for the embedded recipe on Fashion-MNIST


@dataclass(frozen=True)
class Candidate:
    model: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        opts = "-".join(
            f"{k}={'x'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in self.options.items()
        )
        return f"{self.model}-{opts}" if opts else self.model


def search_space() -> list[Candidate]:
    """Depth, width, kernel size and pooling vary: eBNN conv-pool nets of one to three
    blocks, the VGG-like net (two pools, a hidden layer) and the MLP (no pooling)."""
    space = [
        Candidate("ebnn_cnn", {"channels": list(ch), "kernel": k})
        for ch in ((8,), (16,), (8, 16), (16, 32), (32, 64), (16, 32, 64))
        for k in (3, 5)
    ]
    space += [Candidate("small_cnn", {"width": w, "hidden": h}) for w in (8, 16, 32) for h in (64, 256)]
    space += [Candidate("binarynet_mlp", {"width": w, "depth": d}) for w in (128, 512) for d in (1, 3)]
    return space


def parse_bytes(text: str) -> int:
    """'4096', '4K', '4KB', '4KiB', '1M' → bytes (K = 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise BnnkitError(f"not a byte count: {text!r} (use e.g. 4096, 4K, 32KiB)")
    return int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()])


def candidate_graph(candidate: Candidate, in_shape: tuple, num_classes: int) -> Graph:
    """The candidate, untrained, exported; ``BnnkitError`` if it cannot take this input."""
    model = create_model(candidate.model, num_classes, in_shape, "embedded", **candidate.options)
    return export_model(model, in_shape)


def footprint(graph: Graph, target: str | None = None) -> dict:
    """RAM, flash and operations of a graph (its weights do not change them).

    Without ``target``: the memory plan's RAM peak (input included) and the packed
    parameters. With a Cortex-M ``target``: measured on the compiled image — flash is
    text + rodata + data, RAM is data + bss + the stack high-water mark of one inference
    in QEMU — so code, word padding and the harness's buffers count too — and the
    instructions of that inference are counted."""
    p = profile(graph)
    sizes = {"ram": p["memory"]["planned_peak_bytes"], "flash": p["totals"]["weight_bytes"]}
    if target is not None:
        with get_runtime(target, device=True).prepare(graph) as device:
            measured = device.predict(np.zeros((1, *graph.input_shape), np.uint8)).measured()
        sizes = {
            "ram": measured["ram_bytes"],
            "flash": measured["flash_bytes"],
            "instructions": measured["instructions_per_inference"],
        }
    return {**sizes, "binary_macs": p["totals"]["binary_macs"], "int_ops": p["totals"]["int_ops"]}


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats: at least as accurate, as small in RAM and flash, as few
    instructions (measured on a target) or else binary MACs, and strictly better in one."""
    work = "instructions" if rows and all("instructions" in r for r in rows) else "binary_macs"
    keys = (("accuracy", -1), ("ram", 1), ("flash", 1), (work, 1))

    def dominates(a: dict, b: dict) -> bool:
        better_or_equal = all(s * a[k] <= s * b[k] for k, s in keys)
        return better_or_equal and any(s * a[k] < s * b[k] for k, s in keys)

    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def _recorded(out: Path) -> dict[str, dict]:
    rows = read_json_lines(
        out / RESULTS, "a candidate's record", "name", "; delete that line to train the candidate again"
    )
    return {r["name"]: r for r in rows}


def fit(
    dataset: str,
    ram: int,
    flash: int,
    out: str | Path,
    *,
    budget_minutes: float = 10.0,
    epochs: int = 3,
    data_dir: str | None = None,
    limit_train: int | None = None,
    progress: bool = True,
    space: list[Candidate] | None = None,
    target: str | None = None,
    threads: int | None = None,
) -> dict:
    if ram <= 0 or flash <= 0 or budget_minutes <= 0 or epochs < 1:
        raise BnnkitError("--ram, --flash and --budget-minutes must be > 0 and --epochs >= 1")
    info = get_info(dataset)
    out = Path(out)
    done = _recorded(out)  # a damaged record stops the fit before any work
    say = print if progress else (lambda *_: None)
    sized = []
    candidates = space or search_space()
    for c in bar(candidates, desc=f"sizing on {target or 'the memory plan'}", unit="candidate", enabled=progress):
        try:
            graph = candidate_graph(c, info.in_shape, info.num_classes)
        except BnnkitError:
            continue  # e.g. more pools than this input size allows
        sized.append({"name": c.name, "model": c.model, "options": c.options, **footprint(graph, target)})
    fits = sorted((r for r in sized if r["ram"] <= ram and r["flash"] <= flash), key=lambda r: r["binary_macs"])
    if not fits:
        smallest = min(sized, key=lambda r: (r["ram"], r["flash"]))
        raise BnnkitError(
            f"no architecture fits RAM {ram} B and flash {flash} B for {dataset}; the smallest candidate, "
            f"{smallest['name']}, needs RAM {smallest['ram']} B and flash {smallest['flash']} B"
        )
    say(
        f"bnnkit fit: {len(fits)} of {len(sized)} candidates fit RAM {ram} B / flash {flash} B; training cheapest first"
    )
    make_dir(out, "fit directory")
    with exclusive(out, "fit directory"):
        done = _recorded(out)  # again, under the lock: a fit that finished meanwhile may have added some
        recipe = load_recipe("embedded").with_(lr=LR)
        t0 = time.perf_counter()
        for row in fits:
            if row["name"] in done:
                continue
            if time.perf_counter() - t0 > budget_minutes * 60:
                say(f"time budget of {budget_minutes:g} min spent; rerun to continue")
                break
            say(f"training {row['name']} (RAM {row['ram']} B, flash {row['flash']} B)")
            config = RunConfig(
                row["model"], dataset, epochs, recipe=recipe, model_options=row["options"], data_dir=data_dir
            )
            started = time.perf_counter()
            options = TrainOptions(resume=True, progress=progress, limit_train=limit_train, threads=threads)
            result = training.train(config, out / "runs" / row["name"], options)
            seconds = time.perf_counter() - started
            done[row["name"]] = {**row, "accuracy": result["test_acc"], "epochs": epochs, "seconds": seconds}
            # the whole file, atomically: a kill leaves the previous records or these, never a torn line
            atomic_write(out / RESULTS, "".join(json.dumps(r) + "\n" for r in done.values()))
        trained = [done[r["name"]] for r in fits if r["name"] in done]
        front = pareto(trained)
        best = max(trained, key=lambda r: r["accuracy"], default=None)
        if best is not None:
            graph, _, _ = export_run(out / "runs" / best["name"])
            graph.save(out / BEST)
            _plot(sized, trained, front, ram, flash, out / PLOT)
    return {
        "dataset": dataset,
        "measured_on": target or "memory plan",
        "ram_budget": ram,
        "flash_budget": flash,
        "candidates": len(sized),
        "fitting": fits,
        "trained": trained,
        "pareto": [r["name"] for r in front],
        "best": best,
        "best_graph": str(out / BEST) if best else None,
        "remaining": len(fits) - len(trained),
    }


def _plot(sized: list[dict], trained: list[dict], front: list[dict], ram: int, flash: int, path: Path) -> None:
    """Accuracy against RAM and against flash, each panel with its own 2-D front (the
    staircase of the best accuracy within a budget; the table's Pareto column is the front
    over accuracy, RAM, flash and work together), and every candidate's footprint."""
    fig, axes = plots.pyplot().subplots(1, 3, figsize=(16, 5.2))
    for ax, key, budget, what in ((axes[0], "ram", ram, "RAM"), (axes[1], "flash", flash, "flash")):
        staircase = _front_2d(trained, key)
        ax.scatter(
            [r[key] / 1024 for r in trained],
            [100 * r["accuracy"] for r in trained],
            c="tab:gray",
            s=18,
            label="trained",
        )
        ax.step(
            [r[key] / 1024 for r in staircase],
            [100 * r["accuracy"] for r in staircase],
            "o-",
            where="post",
            c="tab:red",
            label=f"best within a {what} budget",
        )
        ax.axvline(budget / 1024, c="k", ls="--", lw=1, label="budget")
        ax.set(
            xlabel=f"{what}{', planned peak' if key == 'ram' else ''} (KiB)",
            ylabel="test accuracy (%)",
            title=f"accuracy vs {what}",
        )
        _kib_axis(ax, "x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        plots.label_points(
            ax,
            [r[key] / 1024 for r in staircase],
            [100 * r["accuracy"] for r in staircase],
            [r["name"] for r in staircase],
        )
    ax = axes[2]
    done = {r["name"] for r in trained}
    for rows, style in (
        ([r for r in sized if r["name"] not in done], {"c": "tab:blue", "s": 12, "label": "sized"}),
        ([r for r in sized if r["name"] in done], {"c": "tab:red", "s": 18, "label": "trained"}),
    ):
        ax.scatter([r["ram"] / 1024 for r in rows], [r["flash"] / 1024 for r in rows], **style)
    ax.axvline(ram / 1024, c="k", ls="--", lw=1)
    ax.axhline(flash / 1024, c="k", ls="--", lw=1, label="budget")
    ax.set(xlabel="RAM, planned peak (KiB)", ylabel="flash (KiB)", title="footprints of all candidates")
    _kib_axis(ax, "x")
    _kib_axis(ax, "y")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plots.save_figure(fig, path, dpi=110)


def _front_2d(rows: list[dict], key: str) -> list[dict]:
    """The rows that no other beats on accuracy and ``key`` alone, cheapest first."""
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r[key], -r["accuracy"])):
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front


def _kib_axis(ax, which: str) -> None:
    """A log axis with 1-2-5 ticks written as plain numbers: footprints span decades, and
    matplotlib's default shows one or two powers of ten there."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def format_fit(result: dict) -> str:
    lines = [("candidate", "accuracy", "RAM B", "flash B", "binary MACs", "instructions", "Pareto")]
    for r in sorted(result["trained"], key=lambda r: -r["accuracy"]):
        counted = f"{r['instructions']:,.0f}" if "instructions" in r else "-"
        lines.append(
            (
                r["name"],
                f"{r['accuracy']:.4f}",
                f"{r['ram']:,}",
                f"{r['flash']:,}",
                f"{r['binary_macs']:,}",
                counted,
                "*" if r["name"] in result["pareto"] else "",
            )
        )
    text = render_table(lines, left=1, total=False)
    best = result["best"]
    text.append(
        f"{len(result['fitting'])} of {result['candidates']} candidates fit; {len(result['trained'])} trained"
        + (f", {result['remaining']} left (rerun to continue)" if result["remaining"] else "")
        + (f"; best {best['name']} {best['accuracy']:.4f} -> {result['best_graph']}" if best else "")
    )
    return "\n".join(text)
