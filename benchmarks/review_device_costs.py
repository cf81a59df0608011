"""The review's accuracy beside each method's cost measured on the device: joins a screen's
``report.csv`` (accuracy) with the ``report.csv`` of a ``--measure`` review of the same network
(flash, RAM, instructions), by method label, and prints one Markdown table.

    python benchmarks/review_device_costs.py docs/review-fashion-mnist/report.csv runs/measure-m4/report.csv

A graph's size and instruction count depend on its shape, not on its weights: the measured
review may train each run for a few steps only (docs/review-fashion-mnist/measure-m4.toml).
"""

from __future__ import annotations

import argparse
import csv
import json


def rows(path: str) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["label"]: row for row in csv.DictReader(f)}


def number(row: dict[str, str], key: str) -> float | None:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else None


def join(accuracy_csv: str, measured_csv: str) -> list[dict]:
    accuracy, measured = rows(accuracy_csv), rows(measured_csv)
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


def markdown(table: list[dict]) -> str:
    lines = [
        "| method | category | Δ top-1 (points) | flash B | Δ flash | RAM B | Δ RAM | instructions | × baseline | µJ |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        if r["flash"] is None:
            lines.append(
                f"| {r['label']} | {r['category']} | {r['delta_top1']:+.2f} | {r['not_measured']} |" + " |" * 6
            )
            continue
        lines.append(
            f"| {r['label']} | {r['category']} | {r['delta_top1']:+.2f} | {r['flash']:,.0f} | {r['delta_flash']:+,.0f} "
            f"| {r['ram']:,.0f} | {r['delta_ram']:+,.0f} | {r['instructions']:,.0f} | {r['instructions_ratio']:.3f} "
            f"| {r['energy_uj']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("accuracy_csv", help="report.csv of the review that measured accuracy")
    parser.add_argument("measured_csv", help="report.csv of the review run with --measure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = join(args.accuracy_csv, args.measured_csv)
    print(json.dumps({"rows": table}) if args.json else markdown(table))


if __name__ == "__main__":
    main()
