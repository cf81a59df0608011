"""``bnnkit report DIR``: the store as tables and plots.

One row per label (the baseline, a method, a combination) of each study: over the seeds
that finished, top-1 mean ± sample standard deviation (ddof=1; none for a single seed),
its difference to the baseline's mean, the best-epoch accuracy, the training time, and
every cost column with its difference to the baseline. Writes DIR/report.md,
DIR/report.csv and DIR/plots/*.png.
"""

from __future__ import annotations

import csv
import io
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from bnnkit.files import atomic_write, make_dir
from bnnkit.recipe import TOPOLOGY, TRAINING
from bnnkit.review.store import BASELINE_LABEL, COMBINATION, Store
from bnnkit.training.plots import label_points, max_column, pyplot, save_figure

CATEGORY_ORDER = (BASELINE_LABEL, TRAINING, TOPOLOGY, COMBINATION)
COLORS = {BASELINE_LABEL: "black", TRAINING: "tab:blue", TOPOLOGY: "tab:orange", COMBINATION: "tab:green"}
# x-axis titles of the accuracy-vs-cost plots, with their units (bnnkit.cost.model_costs, one inference)
COST_AXES = {
    "params": "parameters",
    "binary_params": "binary parameters",
    "fp_params": "full-precision parameters",
    "binary_macs": "binary MACs per inference",
    "fp_macs": "FP MACs per inference",
    "model_bytes": "model size (bytes)",
    "peak_activation_bytes": "peak activation memory (bytes)",
    "activation_bytes": "activations written per inference (bytes)",
    "energy_pj": "energy per inference (pJ, 45 nm op model: bnnkit.cost.energy)",
}


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarize(runs: list[dict[str, Any]], costs: list[str]) -> list[dict[str, Any]]:
    """One row per (study, label), sorted by study, category, then Δ top-1 (best first)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["study"], run["label"]].append(run)
    rows = []
    for (study, label), members in groups.items():
        done = [r for r in members if r["status"] == "done"]
        top1 = [r["top1_final"] for r in done]
        row = {
            "study": study,
            "label": label,
            "category": members[0]["category"],
            "kind": members[0]["kind"],
            "n": len(done),
            "failed": sum(r["status"] == "failed" for r in members),
            "pending": sum(r["status"] in ("pending", "running") for r in members),
            "top1_mean": _mean(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
            "top1_best_mean": _mean([r["top1_best"] for r in done]),
            "train_seconds_mean": _mean([r["train_seconds"] for r in done]),
        }
        for cost in costs:
            row[cost] = _mean([r[f"cost_{cost}"] for r in done if r.get(f"cost_{cost}") is not None])
        rows.append(row)
    baselines = {r["study"]: r for r in rows if r["label"] == BASELINE_LABEL}
    for row in rows:
        base = baselines.get(row["study"], {})
        row["delta_top1"] = _minus(row["top1_mean"], base.get("top1_mean"))
        for cost in costs:
            row[f"delta_{cost}"] = _minus(row[cost], base.get(cost))
    studies = list(dict.fromkeys(r["study"] for r in runs))

    def order(row):
        delta = row["delta_top1"]
        return (
            studies.index(row["study"]),
            _category_rank(row["category"]),
            delta is None,
            -(delta or 0.0),
            row["label"],
        )

    return sorted(rows, key=order)


# --- Markdown ---------------------------------------------------------------------------


def _pct(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else f"{100 * value:{'+' if signed else ''}.2f}"


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    sign = "+" if signed else ""
    return f"{value:{sign},.0f}" if abs(value) >= 100 or value == int(value) else f"{value:{sign}.3g}"


def _markdown(rows: list[dict], runs: list[dict], costs: list[str]) -> str:
    status: defaultdict[str, int] = defaultdict(int)
    for run in runs:
        status[run["status"]] += 1
    lines = [
        "# Review",
        "",
        f"{len(runs)} runs: "
        + ", ".join(f"{status[s]} {s}" for s in ("done", "running", "pending", "failed") if status[s])
        + ".",
        "Top-1 in %: mean ± sample std over the seeds that finished (n); Δ against the baseline's mean "
        "(percentage points for top-1); best: the best epoch's test accuracy, mean over seeds; "
        "costs (bnnkit.cost.model_costs, one inference): value (Δ).",
    ]
    header = ["label", "category", "n", "top-1", "Δ top-1", "best", "train s", *costs]
    for study in dict.fromkeys(r["study"] for r in rows):
        lines += ["", f"## {study}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in (r for r in rows if r["study"] == study):
            top1 = _pct(r["top1_mean"]) + (f" ± {_pct(r['top1_std'])}" if r["top1_std"] is not None else "")
            category = r["category"] + (f" ({r['kind']})" if r["kind"] else "")
            cells = [
                r["label"],
                category,
                f"{r['n']}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
                top1,
                _pct(r["delta_top1"], signed=True),
                _pct(r["top1_best_mean"]),
                _num(r["train_seconds_mean"]),
                *(f"{_num(r[c])} ({_num(r[f'delta_{c}'], signed=True)})" for c in costs),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", "", "Rerun them with `bnnkit review GRID --out DIR --retry-failed`.", ""]
        for r in failed:
            reason = (r["error"] or "").partition("\n")[0]  # the traceback stays in the store
            lines.append(f"- {r['label']}, seed {r['seed']}: {reason}")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["study", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- plots ------------------------------------------------------------------------------


def _plots(rows: list[dict], costs: list[str], folder: Path) -> list[Path]:
    plt = pyplot()
    make_dir(folder, "plot directory")
    studies = list(dict.fromkeys(r["study"] for r in rows))
    written = []
    for i, study in enumerate(studies, 1):
        prefix = f"study{i}_" if len(studies) > 1 else ""
        done = [r for r in rows if r["study"] == study and r["n"]]
        for cost in costs:
            points = [r for r in done if r[cost] is not None]
            # tall enough for the largest column of labels (most methods share the baseline's MACs)
            fig, ax = plt.subplots(figsize=(9, max(5.5, 0.16 * max_column([r[cost] for r in points]) + 1.5)))
            for r in points:
                ax.errorbar(
                    r[cost],
                    100 * r["top1_mean"],
                    yerr=100 * (r["top1_std"] or 0),
                    fmt="o",
                    capsize=3,
                    color=COLORS.get(r["category"], "tab:gray"),
                    alpha=0.8,
                )
            ax.set(
                xlabel=COST_AXES.get(cost, cost.replace("_", " ")),
                ylabel="top-1 accuracy (%; error bar: std over seeds)",
                title=textwrap.fill(study, 90),
            )
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            ax.margins(x=0.08)
            _legend(ax, {r["category"] for r in points})
            xs, ys = [r[cost] for r in points], [100 * r["top1_mean"] for r in points]
            label_points(ax, xs, ys, [r["label"] for r in points])
            save_figure(fig, folder / f"{prefix}acc_vs_{cost}.png")
            written.append(folder / f"{prefix}acc_vs_{cost}.png")

        bars = [r for r in done if r["label"] != BASELINE_LABEL and r["delta_top1"] is not None]
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(bars) + 1)))
        positions = range(len(bars))
        ax.barh(
            positions,
            [100 * r["delta_top1"] for r in bars],
            xerr=[100 * (r["top1_std"] or 0) for r in bars],
            color=[COLORS.get(r["category"], "tab:gray") for r in bars],
            capsize=2,
        )
        ax.set_yticks(list(positions), [r["label"] for r in bars], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set(
            xlabel="Δ top-1 vs baseline (percentage points; error bar: std over seeds)", title=textwrap.fill(study, 90)
        )
        ax.title.set_fontsize(9)
        ax.grid(axis="x", alpha=0.3)
        _legend(ax, {r["category"] for r in bars})
        save_figure(fig, folder / f"{prefix}delta_by_category.png")
        written.append(folder / f"{prefix}delta_by_category.png")
    return written


def _legend(ax, categories: set[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=COLORS.get(c, "tab:gray"), label=c) for c in sorted(categories, key=_category_rank)]
    if handles:
        ax.legend(handles=handles, fontsize=7)


def _category_rank(category: str) -> int:
    return CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)


def plots_from_csv(csv_path: str | Path, folder: str | Path) -> list[Path]:
    """Redraw the plots from a ``report.csv`` alone (e.g. the one committed with a study
    whose store is gone)."""
    with open(csv_path, newline="") as f:
        rows = [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
    costs = [c for c in COST_AXES if rows and c in rows[0]]
    return _plots(rows, costs, Path(folder))


def _cell(text: str) -> Any:
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number


def write_report(directory: str | Path) -> dict[str, Any]:
    """Write DIR/report.md, DIR/report.csv and DIR/plots/; returns the rows and the files."""
    directory = Path(directory)
    with Store(directory, create=False) as store:
        runs, costs = store.rows(), store.cost_columns()
    rows = summarize(runs, costs)
    atomic_write(directory / "report.md", _markdown(rows, runs, costs))
    atomic_write(directory / "report.csv", _csv(rows))
    files = [directory / "report.md", directory / "report.csv", *_plots(rows, costs, directory / "plots")]
    return {"rows": rows, "files": [str(f) for f in files]}
