"""bnnkit review --measure: device measurements in the store, resume, refusals, the report's flags."""

import json
import sqlite3
import threading
import time
from dataclasses import replace

import pytest

from bnnkit.cli import main
from bnnkit.cost.device import device_estimate
from bnnkit.errors import BnnkitError
from bnnkit.export import export_run
from bnnkit.review import Store, expand, run_review, summarize
from bnnkit.review import measure as measure_module
from bnnkit.review.measure import IMAGES, check_target
from bnnkit.review.report import TOLERANCE, disagreements
from bnnkit.review.runner import run_dir
from bnnkit.review.store import FILENAME, LATER_COLUMNS, MEASURED, SCHEMA
from bnnkit.runtime import evaluate
from bnnkit.runtime.registry import RUNTIMES

TARGET = "cortex-m4"
TINY = {
    "model": "ebnn_cnn",
    "dataset": "digits",
    "epochs": 1,
    "base": "embedded",  # the default recipe's real-valued first layer has no integer graph
    "seeds": [0],
    "methods": ["rsign", "xnor_activation_scale"],  # the second is refused by the exporter
    "measure": TARGET,
}


def run_row(label, seed, flash, ram, estimated_flash, estimated_ram):
    return {
        "key": f"{label}{seed}",
        "study": "s",
        "stage": "screen",
        "label": label,
        "category": "baseline" if label == "baseline" else "topology",
        "kind": "",
        "seed": seed,
        "status": "done",
        "top1_final": 0.5,
        "val_final": None,
        "val_best_epoch": None,
        "train_seconds": 1.0,
        # model_costs' figures far from the device: the flags must come from the estimate, not from them
        "cost_model_bytes": 1,
        "cost_peak_activation_bytes": 1,
        "measure_target": TARGET,
        "measure_error": None,
        **{f"device_{name}": None for name in MEASURED},
        "device_flash_bytes": flash,
        "device_ram_bytes": ram,
        "device_estimated_flash_bytes": estimated_flash,
        "device_estimated_ram_bytes": estimated_ram,
    }


def test_the_flag_is_set_beyond_ten_percent_of_the_measured_figure():
    runs = [
        # flash: mean measured 1,100 vs 1,000 estimated = -9.1%; RAM 550 vs 500 = +10.0% exactly: no flag
        run_row("baseline", 0, 1000, 500, 1000, 550),
        run_row("baseline", 1, 1200, 500, 1000, 550),
        # flash 1,000 vs 1,120 = -10.7%: flagged; RAM 400 vs 300 = +33%: flagged
        run_row("a", 0, 1120, 300, 1000, 400),
        # refused: no figures, its reason
        {**run_row("b", 0, None, None, 1000, 400), "measure_error": "cannot export recipe 'b': why"},
    ]
    rows = {r["label"]: r for r in summarize(runs, ["model_bytes", "peak_activation_bytes"])}
    base, a, b = rows["baseline"], rows["a"], rows["b"]
    assert base["device_flash_bytes"] == 1100 and base["flash_error"] == pytest.approx(-100 / 1100)
    assert base["ram_error"] == pytest.approx(TOLERANCE) and base["measure_flag"] is None
    assert a["flash_error"] == pytest.approx(-120 / 1120) and a["ram_error"] == pytest.approx(100 / 300)
    assert a["measure_flag"] == "flash,ram"
    assert b["measure_flag"] is None and b["measure_error"] == "cannot export recipe 'b': why"
    lines = disagreements(list(rows.values()))
    assert lines == [
        "s: a: estimated flash (bnnkit.cost.device) 1,000 B is -10.7% off the measured 1,120 B on cortex-m4 (tolerance ±10%)",
        "s: a: estimated ram (bnnkit.cost.device) 400 B is +33.3% off the measured 300 B on cortex-m4 (tolerance ±10%)",
    ]


def test_an_old_store_gains_the_measure_columns(tmp_path):
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute(SCHEMA)
    db.close()
    with Store(tmp_path) as store:
        columns = {row["name"] for row in store.db.execute("PRAGMA table_info(runs)")}
    assert {"measure_target", "measure_json", "measure_error", *(f"device_{n}" for n in MEASURED)} <= columns


def test_two_processes_opening_an_old_store_at_once_add_each_column_once(tmp_path):
    """A review and its report (or a watcher) open one store together: an opener that comes while
    another is adding the later columns waits for it and then finds them, rather than adding them
    again (sqlite: "duplicate column name", seen in CI when the two interleaved)."""
    db = sqlite3.connect(tmp_path / FILENAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")  # as every store is from its first opening
    db.execute(SCHEMA)
    db.execute("BEGIN IMMEDIATE")  # the first opener, half-way through its migration
    opened: list[object] = []
    other = threading.Thread(target=lambda: opened.append(_open_or_error(tmp_path)))
    other.start()
    time.sleep(0.5)  # the second opener has read the old schema (or waits for the lock)
    for name, kind in LATER_COLUMNS.items():
        db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
    db.execute("COMMIT")
    db.close()
    other.join(timeout=60)
    assert opened == ["opened"]


def _open_or_error(directory):
    try:
        with Store(directory):
            return "opened"
    except BnnkitError as exc:
        return str(exc)


def test_without_the_toolchain_measuring_is_skipped_with_the_reason(monkeypatch):
    def missing():
        raise BnnkitError("no Arm cross compiler 'arm-none-eabi-gcc' found; apt install gcc-arm-none-eabi")

    monkeypatch.setitem(RUNTIMES, TARGET, replace(RUNTIMES[TARGET], require=missing))
    assert check_target(TARGET) == "no Arm cross compiler 'arm-none-eabi-gcc' found; apt install gcc-arm-none-eabi"
    with pytest.raises(BnnkitError, match="unknown device runtime 'numpy'; use one of cortex-m"):
        check_target("numpy")


@pytest.mark.slow
@pytest.mark.skipif(check_target(TARGET) is not None, reason="needs gcc-arm-none-eabi and qemu-system-arm")
def test_review_measures_each_run_once_as_the_runtime_does_and_stores_refusals(tmp_path, monkeypatch, capsys):
    grid = expand(TINY)
    result = run_review(grid, tmp_path, progress=False)
    assert result["measure"] == {"target": TARGET, "measured": 2, "refused": 1, "failed": 0}
    with Store(tmp_path) as store:
        rows = {r["label"]: r for r in store.rows()}

    # the stored figures are those of the runtime itself on the same graph and images
    for spec in grid.runs:
        row = rows[spec.label]
        if spec.label == "xnor_activation_scale":
            with pytest.raises(BnnkitError) as refusal:
                export_run(run_dir(tmp_path, spec))
            assert row["measure_error"] == str(refusal.value).partition("\n")[0]
            assert row["measure_target"] == TARGET and row["measure_json"] is None and row["device_flash_bytes"] is None
            continue
        graph, _, config = export_run(run_dir(tmp_path, spec))
        _, x, _ = evaluate.test_images(graph, None, IMAGES, config.data_dir)
        with RUNTIMES[TARGET].prepare(graph) as device:
            direct = device.predict(x).measured()
        # the estimate stored beside it is bnnkit.cost.device's of the graph that was measured
        estimate = device_estimate(graph)
        direct |= {"estimated_flash_bytes": estimate["flash_bytes"], "estimated_ram_bytes": estimate["ram_bytes"]}
        assert json.loads(row["measure_json"]) == direct and row["measure_error"] is None
        assert [row[f"device_{name}"] for name in MEASURED] == [direct[source] for source in MEASURED.values()]
        assert direct["flash_bytes"] > 0 and direct["ram_bytes"] > 0 and direct["instructions_per_inference"] > 0

    # resume: only the run whose measurement is gone is measured again
    with Store(tmp_path) as store:
        store.record_measurement(grid.runs[0].key, None, None, None)
    measured = []
    real = measure_module.measure_run
    monkeypatch.setattr(measure_module, "measure_run", lambda d, t: measured.append(d) or real(d, t))
    again = run_review(grid, tmp_path, progress=False)
    assert again["ran"] == 0 and again["measure"] == {"target": TARGET, "measured": 1, "refused": 0, "failed": 0}
    assert measured == [run_dir(tmp_path, grid.runs[0])]
    with Store(tmp_path) as store:
        assert {r["label"]: r for r in store.rows()} == rows

    assert main(["report", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    flagged = {r["label"] for r in report["rows"] if r["measure_flag"]}
    assert {line.split(": ")[1] for line in report["measure_disagreements"]} == flagged
    assert "measured on cortex-m4" in (tmp_path / "report.md").read_text()


def test_an_unknown_target_names_where_it_came_from(tmp_path, capsys):
    grid = expand({**TINY, "measure": "cortex-m9"}, source="g.toml")
    with pytest.raises(BnnkitError, match=r"^g.toml: measure: unknown device runtime 'cortex-m9'; use one of"):
        run_review(grid, tmp_path, progress=False)
    with pytest.raises(BnnkitError, match=r"^--measure: unknown device runtime 'numpy'"):
        run_review(grid, tmp_path, progress=False, measure="numpy")
    assert not (tmp_path / FILENAME).exists()
    # the command line offers the device runtimes only
    assert main(["review", "g.toml", "--out", str(tmp_path), "--measure", "numpy"]) == 2
    assert "invalid choice: 'numpy'" in capsys.readouterr().err


def test_without_the_toolchain_the_review_trains_and_says_why_nothing_was_measured(tmp_path, monkeypatch, capsys):
    def missing():
        raise BnnkitError("no QEMU 'qemu-system-arm' found; apt install qemu-system-arm")

    monkeypatch.setitem(RUNTIMES, TARGET, replace(RUNTIMES[TARGET], require=missing))
    grid = tmp_path / "g.toml"
    grid.write_text(
        '[review]\nmodel = "binarynet_mlp"\ndataset = "digits"\nepochs = 1\nseeds = [0]\nbase = "embedded"\n'
    )
    assert main(["review", str(grid), "--out", str(tmp_path / "out"), "--measure", TARGET]) == 0
    out = capsys.readouterr().out
    assert "1 runs, 1 done" in out
    assert f"\nnote: not measured on {TARGET}: no QEMU 'qemu-system-arm' found; apt install qemu-system-arm" in out
    with Store(tmp_path / "out") as store:
        (row,) = store.rows()
    assert row["measure_target"] is None and row["measure_error"] is None
