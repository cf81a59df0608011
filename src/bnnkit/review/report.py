"""``bnnkit report DIR``: the store as tables and plots.

One row per label (the baseline, a method, a combination) of each study: over the seeds
that finished, test top-1 of the last-epoch model (mean ± sample std, ddof=1), validation
accuracy, the paired difference to the baseline with its 95% t interval, Holm-adjusted
p-value and minimum detectable effect (``bnnkit.review.stats``), the training time, and
every cost column with its difference to the baseline. For a screen and its confirmation,
Spearman's correlation of their rankings. Writes DIR/report.md, DIR/report.csv and
DIR/plots/*.png (accuracy against each cost, Δ by category, validation curves).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from bnnkit.files import atomic_write, make_dir
from bnnkit.recipe import TOPOLOGY, TRAINING
from bnnkit.review.stats import holm, mean_ci, paired, spearman
from bnnkit.review.store import BASELINE_LABEL, COMBINATION, MEASURED, Store
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
        val = [r["val_final"] for r in done if r.get("val_final") is not None]
        row = {
            "study": study,
            "stage": members[0].get("stage") or "screen",
            "label": label,
            "category": members[0]["category"],
            "kind": members[0]["kind"],
            "n": len(done),
            "failed": sum(r["status"] == "failed" for r in members),
            "pending": sum(r["status"] in ("pending", "running") for r in members),
            "top1_mean": _mean(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
            "top1_ci": mean_ci(top1)[1] if top1 else None,
            "val_mean": _mean(val),
            "val_best_epoch_mean": _mean([r["val_best_epoch"] for r in done if r.get("val_best_epoch") is not None]),
            "train_seconds_mean": _mean([r["train_seconds"] for r in done]),
        }
        for cost in costs:
            row[cost] = _mean([r[f"cost_{cost}"] for r in done if r.get(f"cost_{cost}") is not None])
        row |= _measured(done)
        rows.append(row)
    _compare_with_baselines(rows, groups, costs)
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


# bnnkit.cost.device's estimate -> the device figure it estimates (both store.MEASURED); model_costs'
# model_bytes and peak_activation_bytes count parameters and activations only, so they stay cost columns
COMPARED = {"flash": ("estimated_flash_bytes", "flash_bytes"), "ram": ("estimated_ram_bytes", "ram_bytes")}
TOLERANCE = 0.10  # a measured figure further than this from the estimate is flagged


def _measured(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The device columns of an entry: each measured figure's mean over its measured seeds,
    the estimate beside flash and RAM, their relative difference and the flag."""
    row: dict[str, Any] = {"measure_target": next((r["measure_target"] for r in done if r.get("measure_target")), None)}
    refusals = [r["measure_error"] for r in done if r.get("measure_error")]
    row["measure_error"] = refusals[0] if refusals else None
    for name in MEASURED:
        row[f"device_{name}"] = _mean([r[f"device_{name}"] for r in done if r.get(f"device_{name}") is not None])
    flags = []
    for what, (analytic, device) in COMPARED.items():
        estimate = _mean([r[f"device_{analytic}"] for r in done if r.get(f"device_{analytic}") is not None])
        error = relative_error(estimate, row[f"device_{device}"])
        row[f"{what}_estimated"], row[f"{what}_error"] = estimate, error
        if error is not None and abs(error) > TOLERANCE:
            flags.append(what)
    row["measure_flag"] = ",".join(flags) or None
    return row


def relative_error(analytic: float | None, measured: float | None) -> float | None:
    """(analytic − measured) / measured: how far the estimate is off the device, or None
    without both (or with nothing measured)."""
    if analytic is None or measured is None or measured == 0:
        return None
    return (analytic - measured) / measured


def disagreements(rows: list[dict[str, Any]]) -> list[str]:
    """One line per entry whose estimated flash or RAM is more than TOLERANCE off the device."""
    lines = []
    for r in rows:
        for what in (r["measure_flag"] or "").split(","):
            if what:
                _, device = COMPARED[what]
                lines.append(
                    f"{r['study']}: {r['label']}: estimated {what} (bnnkit.cost.device) {_num(r[f'{what}_estimated'])} B is "
                    f"{100 * r[f'{what}_error']:+.1f}% off the measured {_num(r[f'device_{device}'])} B on "
                    f"{r['measure_target']} (tolerance ±{100 * TOLERANCE:.0f}%)"
                )
    return lines


def _by_seed(members: list[dict], metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in members if r["status"] == "done" and r.get(metric) is not None}


def _compare_with_baselines(rows: list[dict], groups: dict[tuple[str, str], list[dict]], costs: list[str]) -> None:
    """Δ columns: top-1 and validation as means of the per-seed differences to the baseline
    (seeds both finished: ``stats.paired``), costs as differences of the means; then the
    p-values Holm-adjusted over each study's entries."""
    baselines = {r["study"]: r for r in rows if r["label"] == BASELINE_LABEL}
    for row in rows:
        base = baselines.get(row["study"], {})
        base_runs = groups.get((row["study"], BASELINE_LABEL), [])
        members = groups[row["study"], row["label"]]
        for metric, name in (("top1_final", "top1"), ("val_final", "val")):
            mine, theirs = _by_seed(members, metric), _by_seed(base_runs, metric)
            seeds = sorted(set(mine) & set(theirs))
            result = paired([mine[s] for s in seeds], [theirs[s] for s in seeds]) if seeds else None
            row[f"delta_{name}"] = result.delta if result else None
            if name == "top1":
                row["n_pairs"] = len(seeds)
                for field in ("ci_low", "ci_high", "p", "mde"):
                    row[f"delta_{field}"] = (
                        getattr(result, field) if result and row["label"] != BASELINE_LABEL else None
                    )
        for cost in costs:
            row[f"delta_{cost}"] = _minus(row[cost], base.get(cost))
    for study in baselines:
        tested = [r for r in rows if r["study"] == study and r["delta_p"] is not None]
        for r, adjusted in zip(tested, holm([r["delta_p"] for r in tested]), strict=True):
            r["delta_p_holm"] = adjusted
    for row in rows:
        row.setdefault("delta_p_holm", None)


def rank_agreement(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each confirmation study, Spearman's correlation between the screen's ranking
    (validation Δ) and the confirmation's (test Δ) of the entries both ran, the baseline
    excluded. The screen of a confirmation is the screen study of the same model and dataset."""
    studies: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for run in runs:
        studies[run["model"], run["dataset"], run.get("stage") or "screen"].add(run["study"])
    result = []
    for (model, dataset, stage), confirms in studies.items():
        screens = studies.get((model, dataset, "screen"), set())
        if stage != "confirm" or len(screens) != 1 or len(confirms) != 1:
            continue
        (screen,), (confirm,) = screens, confirms
        before = {r["label"]: r["delta_val"] for r in rows if r["study"] == screen and r["delta_val"] is not None}
        after = {r["label"]: r["delta_top1"] for r in rows if r["study"] == confirm and r["delta_top1"] is not None}
        labels = sorted((set(before) & set(after)) - {BASELINE_LABEL})
        rho = spearman([before[x] for x in labels], [after[x] for x in labels])
        result.append({"screen": screen, "confirm": confirm, "labels": labels, "spearman": rho})
    return result


# --- Markdown ---------------------------------------------------------------------------


def _pct(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else f"{100 * value:{'+' if signed else ''}.2f}"


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    sign = "+" if signed else ""
    return f"{value:{sign},.0f}" if abs(value) >= 100 or value == int(value) else f"{value:{sign}.3g}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _delta_cell(r: dict) -> str:
    text = _pct(r["delta_top1"], signed=True)
    if r.get("delta_ci_low") is not None:
        text += f" [{_pct(r['delta_ci_low'], signed=True)}, {_pct(r['delta_ci_high'], signed=True)}]"
    return text


STATISTICS_NOTE = (
    "Top-1: test accuracy in % of each run's last-epoch model, mean ± sample std over the seeds that finished "
    "(n); no choice reads it. Val: validation accuracy (training images held out, the same for every run) of "
    "the same model; best ep.: the epoch of best validation accuracy, mean over seeds. "
    "Δ top-1: mean over the seeds both finished of (entry − baseline) in points; a method and the baseline "
    "with one seed share batches and, where the shapes agree, initial weights. [95% CI]: Student's t interval "
    "of that mean (n − 1 df); p: two-sided paired t test, Holm-adjusted over the study's entries; MDE: the "
    "smallest true Δ a paired t test on these seeds detects with 80% power at α = 0.05, given the observed "
    "spread of the differences. Costs (bnnkit.cost.model_costs, one inference): value (Δ)."
)


def _markdown(rows: list[dict], runs: list[dict], costs: list[str], agreement: list[dict]) -> str:
    status: defaultdict[str, int] = defaultdict(int)
    for run in runs:
        status[run["status"]] += 1
    lines = [
        "# Review",
        "",
        f"{len(runs)} runs: "
        + ", ".join(f"{status[s]} {s}" for s in ("done", "running", "pending", "failed") if status[s])
        + ".",
        STATISTICS_NOTE,
    ]
    header = ["label", "category", "n", "top-1", "Δ top-1 [95% CI]", "p (Holm)", "MDE", "val", "Δ val", "best ep."]
    header += ["train s", *costs]
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
                _delta_cell(r),
                _p(r["delta_p_holm"]),
                _pct(r["delta_mde"]),
                _pct(r["val_mean"]),
                _pct(r["delta_val"], signed=True),
                "–" if r["val_best_epoch_mean"] is None else f"{r['val_best_epoch_mean']:.1f}",
                _num(r["train_seconds_mean"]),
                *(f"{_num(r[c])} ({_num(r[f'delta_{c}'], signed=True)})" for c in costs),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += _device_tables(rows)
    for a in agreement:
        rho = (
            "undefined (fewer than 3 entries, or a constant ranking)"
            if a["spearman"] is None
            else f"{a['spearman']:+.2f}"
        )
        lines += [
            "",
            f"Screen ({a['screen']}) vs confirmation: Spearman's ρ between the screen's validation Δ and the "
            f"confirmation's test Δ over {len(a['labels'])} entries ({', '.join(a['labels'])}): {rho}.",
        ]
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", "", "Rerun them with `bnnkit review GRID --out DIR --retry-failed`.", ""]
        for r in failed:
            reason = (r["error"] or "").partition("\n")[0]  # the traceback stays in the store
            lines.append(f"- {r['label']}, seed {r['seed']}: {reason}")
    return "\n".join(lines) + "\n"


def _device_tables(rows: list[dict]) -> list[str]:
    """Per study with a measured or refused entry: estimated against measured flash and RAM."""
    lines: list[str] = []
    header = ["label", "flash estimated", "flash measured", "Δ flash", "RAM estimated", "RAM measured", "Δ RAM"]
    header += ["stack", "instructions", "energy µJ", "> ±10%"]
    for study in dict.fromkeys(r["study"] for r in rows):
        entries = [r for r in rows if r["study"] == study and (r["measure_target"] or r["measure_error"])]
        if not entries:
            continue
        target = next((r["measure_target"] for r in entries if r["measure_target"]), "the device")
        lines += [
            "",
            f"### {study}: measured on {target}",
            "",
            f"Estimated: bnnkit.cost.device's flash and RAM of the same graph (docs/review-protocol.md section 5); "
            f"measured: the image's flash (code included) and RAM (data + bss + stack used) in QEMU, mean over seeds. "
            f"Δ: (estimated − measured) / "
            f"measured; flagged (⚠) beyond ±{100 * TOLERANCE:.0f}%.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for r in entries:
            if r["device_flash_bytes"] is None:
                lines.append(f"| {r['label']} | not measured: {r['measure_error'] or 'pending'} |")
                continue
            cells = [r["label"]]
            for what, (_, device) in COMPARED.items():
                error = r[f"{what}_error"]
                cells += [_num(r[f"{what}_estimated"]), _num(r[f"device_{device}"])]
                cells.append("–" if error is None else f"{100 * error:+.1f}%")
            energy = r["device_energy_uj"]
            cells += [_num(r["device_stack_bytes"]), _num(r["device_instructions"])]
            cells += [
                "–" if energy is None else f"{energy:,.1f}",
                "⚠ " + r["measure_flag"] if r["measure_flag"] else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


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
                    yerr=100 * (r.get("top1_ci") or 0),
                    fmt="o",
                    capsize=3,
                    color=COLORS.get(r["category"], "tab:gray"),
                    alpha=0.8,
                )
            ax.set(
                xlabel=COST_AXES.get(cost, cost.replace("_", " ")),
                ylabel="top-1 accuracy (%; error bar: 95% t interval of the mean)",
                title=textwrap.fill(study, 90),
            )
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            ax.margins(x=0.08)
            category_legend(ax, {r["category"] for r in points})
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
            xerr=[100 * _half_width(r) for r in bars],
            color=[COLORS.get(r["category"], "tab:gray") for r in bars],
            capsize=2,
        )
        ax.set_yticks(list(positions), [r["label"] for r in bars], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set(xlabel="Δ top-1 vs baseline (points; error bar: 95% paired t interval)", title=textwrap.fill(study, 90))
        ax.title.set_fontsize(9)
        ax.grid(axis="x", alpha=0.3)
        category_legend(ax, {r["category"] for r in bars})
        save_figure(fig, folder / f"{prefix}delta_by_category.png")
        written.append(folder / f"{prefix}delta_by_category.png")
    return written


def _half_width(row: dict) -> float:
    low, high = row.get("delta_ci_low"), row.get("delta_ci_high")
    return 0.0 if low is None or high is None else (high - low) / 2


def _curve(text: str | None) -> list[float] | None:
    """A stored validation curve, or None where the store holds something else (a damaged or
    foreign store draws without that run rather than failing the report)."""
    try:
        curve = json.loads(text) if text else None
    except ValueError:
        return None
    ok = isinstance(curve, list) and all(type(v) in (int, float) and math.isfinite(v) for v in curve)
    return curve if ok and curve else None


def _curves(runs: list[dict], folder: Path) -> list[Path]:
    """Per study, each entry's validation accuracy per epoch, mean over its finished seeds."""
    plt = pyplot()
    studies = list(dict.fromkeys(r["study"] for r in runs))
    written = []
    for i, study in enumerate(studies, 1):
        curves: dict[str, list[list[float]]] = defaultdict(list)
        category = {}
        for r in runs:
            curve = _curve(r.get("val_curve_json")) if r["study"] == study and r["status"] == "done" else None
            if curve:
                curves[r["label"]].append(curve)
                category[r["label"]] = r["category"]
        if not curves:
            continue
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(9, 5.5))
        ends: list[tuple[float, float, str]] = []
        for label, members in curves.items():
            length = min(map(len, members))
            mean = [100 * statistics.fmean(c[e] for c in members) for e in range(length)]
            baseline = label == BASELINE_LABEL
            ax.plot(
                range(1, length + 1),
                mean,
                color=COLORS.get(category[label], "tab:gray"),
                linewidth=2.0 if baseline else 0.8,
                alpha=1.0 if baseline else 0.6,
                marker="o" if length < 20 else None,
                markersize=3,
            )
            ends.append((length, mean[-1], label))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.margins(x=0.15)
        ax.set(xlabel="epoch", ylabel="validation accuracy (%; mean over seeds)", title=textwrap.fill(study, 90))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        category_legend(ax, set(category.values()))
        xs, ys, names = zip(*ends, strict=True)
        label_points(ax, xs, ys, names)
        path = folder / f"{f'study{i}_' if len(studies) > 1 else ''}val_curves.png"
        save_figure(fig, path)
        written.append(path)
    return written


def category_legend(ax, categories: set[str]) -> None:
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
    agreement = rank_agreement(runs, rows)
    atomic_write(directory / "report.md", _markdown(rows, runs, costs, agreement))
    atomic_write(directory / "report.csv", _csv(rows))
    plots = [*_plots(rows, costs, directory / "plots"), *_curves(runs, directory / "plots")]
    files = [directory / "report.md", directory / "report.csv", *plots]
    return {
        "rows": rows,
        "rank_agreement": agreement,
        "measure_disagreements": disagreements(rows),
        "files": [str(f) for f in files],
    }
