"""The review's accuracy beside each method's cost measured on the device: joins a review's
``report.csv`` (accuracy; ``--stage`` picks the screen's or the confirmation's rows of a protocol
review) with the ``report.csv`` of a ``--measure`` review of the same network (flash, RAM,
instructions), by method label, and prints one Markdown table; ``--plot`` draws Δ top-1 with its
95% interval against the measured instructions.

    python benchmarks/review_device_costs.py docs/review-fashion-mnist/report.csv runs/measure-m4/report.csv
    python benchmarks/review_device_costs.py docs/review-fashion-mnist/protocol/report.csv \
        docs/review-fashion-mnist/measure-m4-report.csv --stage confirm --plot confirm_acc_vs_m4.png

A graph's size and instruction count depend on its shape, not on its weights: the measured
review may train each run for a few steps only (docs/review-fashion-mnist/measure-m4.toml).
"""

from __future__ import annotations

import argparse
import csv
import json


def rows(path: str, stage: str | None = None) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        found = {row["label"]: row for row in csv.DictReader(f) if stage is None or row.get("stage") == stage}
    if not found:
        raise SystemExit(f"{path}: no rows" + (f" of stage {stage!r}" if stage else ""))
    return found


def number(row: dict[str, str], key: str) -> float | None:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else None


def join(accuracy_csv: str, measured_csv: str, stage: str | None = None) -> list[dict]:
    accuracy, measured = rows(accuracy_csv, stage), rows(measured_csv)
    base = measured["baseline"]
    flash0, ram0, insn0 = (number(base, k) for k in ("device_flash_bytes", "device_ram_bytes", "device_instructions"))
    table = []
    for label, row in accuracy.items():
        m = measured.get(label, {})
        flash, ram, insn = (number(m, k) for k in ("device_flash_bytes", "device_ram_bytes", "device_instructions"))
        table.append(
            {
                "label": label,
                "category": row["category"],
                "delta_top1": float(row["delta_top1"]) * 100,
                # the paired interval, in points (None for the baseline and for a lone seed)
                "ci": [None if (v := number(row, k)) is None else v * 100 for k in ("delta_ci_low", "delta_ci_high")],
                "p_holm": number(row, "delta_p_holm"),
                "flash": flash,
                "ram": ram,
                "instructions": insn,
                "energy_uj": number(m, "device_energy_uj"),
                "delta_flash": None if flash is None or flash0 is None else flash - flash0,
                "delta_ram": None if ram is None or ram0 is None else ram - ram0,
                "instructions_ratio": None if insn is None or not insn0 else insn / insn0,
                "not_measured": m.get("measure_error") or ("" if m else "not in the measured review"),
            }
        )
    return table


def _delta(r: dict) -> str:
    low, high = r["ci"]
    interval = "" if low is None or high is None else f" [{low:+.2f}, {high:+.2f}]"
    return f"{r['delta_top1']:+.2f}{interval}"


def markdown(table: list[dict]) -> str:
    lines = [
        "| method | category | Δ top-1 (points) [95% CI] | flash B | Δ flash | RAM B | Δ RAM | instructions | × baseline | µJ |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        if r["flash"] is None:
            lines.append(f"| {r['label']} | {r['category']} | {_delta(r)} | {r['not_measured']} |" + " |" * 6)
            continue
        lines.append(
            f"| {r['label']} | {r['category']} | {_delta(r)} | {r['flash']:,.0f} | {r['delta_flash']:+,.0f} "
            f"| {r['ram']:,.0f} | {r['delta_ram']:+,.0f} | {r['instructions']:,.0f} | {r['instructions_ratio']:.3f} "
            f"| {r['energy_uj']:,.0f} |"
        )
    return "\n".join(lines)


def plot(table: list[dict], path: str) -> None:
    """Δ top-1 with its 95% paired interval against the measured instructions per inference
    (× the baseline's), one point per measured method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnnkit.review.report import COLORS, category_legend
    from bnnkit.training.plots import label_points, save_figure

    points = [r for r in table if r["instructions_ratio"] is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in points:
        low, high = r["ci"]
        err = None if low is None or high is None else [[r["delta_top1"] - low], [high - r["delta_top1"]]]
        color = COLORS.get(r["category"], "tab:gray")
        ax.errorbar(r["instructions_ratio"], r["delta_top1"], yerr=err, fmt="o", capsize=3, color=color)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(
        xlabel="instructions per inference on the device (× baseline)",
        ylabel="Δ top-1 vs baseline (points; error bar: 95% paired t interval)",
    )
    ax.grid(alpha=0.3)
    category_legend(ax, {r["category"] for r in points})
    label_points(
        ax, [r["instructions_ratio"] for r in points], [r["delta_top1"] for r in points], [r["label"] for r in points]
    )
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("accuracy_csv", help="report.csv of the review that measured accuracy")
    parser.add_argument("measured_csv", help="report.csv of the review run with --measure")
    parser.add_argument("--stage", help="only the accuracy rows of this stage (screen or confirm)")
    parser.add_argument("--plot", metavar="PNG", help="also draw Δ top-1 against the measured instructions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = join(args.accuracy_csv, args.measured_csv, args.stage)
    if args.plot:
        plot(table, args.plot)
    print(json.dumps({"rows": table}) if args.json else markdown(table))


if __name__ == "__main__":
    main()
