"""The review runner: grids, the store, resume after kill -9, the report's numbers, Ray."""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from helpers.datafiles import cifar_images, write_cifar_bin

from bnnkit.cli import main
from bnnkit.errors import BnnkitError
from bnnkit.recipe import METHODS, TOPOLOGY, TRAINING
from bnnkit.review import Store, expand, load_grid, preset_names, run_review, summarize, write_report
from bnnkit.review.runner import run_dir
from bnnkit.training import TrainOptions, read_metrics, train

TINY = {
    "model": "binarynet_mlp",
    "model_options": {"width": 16},
    "dataset": "digits",
    "epochs": 1,
    "seeds": [0, 1],
    "methods": ["rsign", "xnor_weight_scale"],
}


def write_grid(path, table):
    lines = ["[review]"] + [f"{key} = {toml(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def toml(value):
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf and nan are spelt the same in TOML
    return json.dumps(value)


# --- grids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epoch": 3}, r"unknown key\(s\) epoch in \[review\]; known: model, model_options"),
        ({"model": None}, "needs model"),
        ({"epochs": "3"}, "epochs must be an integer"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"seeds": [0, 0]}, "distinct integers"),
        ({"seeds": [True]}, "distinct integers"),
        ({"methods": ["rsign", "no_such_method"]}, "unknown repair method 'no_such_method'"),
        ({"combinations": [["rsign"]]}, "two or more method names"),
        ({"combinations": [["rsign", "prelu_typo"]], "skip_inapplicable": True}, "unknown repair method 'prelu_typo'"),
        ({"recipe": {"lrr": 0.1}}, r"unknown recipe key\(s\) lrr"),
        ({"model": "resnet99"}, "unknown model 'resnet99'"),
        ({"limit_train": 0}, "limit_train must be >= 1"),
    ],
)
def test_grid_errors_name_the_problem(change, message):
    raw = {k: v for k, v in {**TINY, **change}.items() if v is not None}
    with pytest.raises(BnnkitError, match=message):
        expand(raw)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"recipe": {"lr": math.inf}},
            r"grid.toml: recipe: recipe 'baseline': lr must be a finite number in \(0, 10\], got inf",
        ),
        (
            {"recipe": {"width_mult": math.inf}},
            "grid.toml: recipe: recipe 'baseline': width_mult must be a finite number",
        ),
        ({"recipe": {"lr": math.nan}}, "lr must be a finite number in .*, got nan"),
        ({"recipe": {"batch_size": True}}, "batch_size must be an int, got True"),
        ({"recipe": {"momentum": 1.5}}, r"momentum must be a finite number in \[0, 1\)"),
        ({"epochs": 10**7}, "grid.toml: epochs must be an integer in 1..1000000, got 10000000"),
        ({"epochs": True}, "grid.toml: epochs must be an integer >= 1, got True"),
        ({"seeds": [0, -1]}, "grid.toml: seed must be an integer in 0..9223372036854775807, got -1"),
        ({"seeds": [2**64]}, "grid.toml: seed must be an integer in 0.."),
        ({"limit_train": 0}, "grid.toml: limit_train must be >= 1, got 0"),
        ({"limit_test": 1.5}, "grid.toml: limit_test must be an integer >= 1, got 1.5"),
        (
            {"model_options": {"width": "wide"}},
            "grid.toml: model binarynet_mlp option width: expected an int like width=512",
        ),
        ({"model_options": {"width": math.inf}}, "option width: expected an int like width=512, got inf"),
        ({"base": "no_such_recipe"}, "grid.toml: base: unknown recipe 'no_such_recipe'"),
    ],
)
def test_a_hostile_grid_is_one_error_line_and_writes_nothing(tmp_path, capsys, change, message):
    grid = write_grid(tmp_path / "grid.toml", {**TINY, **change})
    out = tmp_path / "review"
    assert main(["review", str(grid), "--out", str(out), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert re.search(message, captured.err), captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


def test_grid_file_errors(tmp_path):
    with pytest.raises(BnnkitError, match="no such grid file or preset; presets: deputter-cifar10"):
        load_grid(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[review\n")
    with pytest.raises(BnnkitError, match="not valid TOML"):
        load_grid(tmp_path / "bad.toml")
    (tmp_path / "two.toml").write_text("model = 'x'\n[review]\n")
    with pytest.raises(BnnkitError, match="a grid is one \\[review\\] table"):
        load_grid(tmp_path / "two.toml")


def test_inapplicable_entries_are_all_listed_or_skipped():
    raw = {**TINY, "methods": ["rsign", "double_residual"], "combinations": [["rsign", "dorefa_2bit"]]}
    with pytest.raises(BnnkitError) as info:
        expand(raw)
    message = str(info.value)
    assert "2 entries cannot be built for binarynet_mlp" in message and "skip_inapplicable" in message
    assert "double_residual: double_residual needs a residual model" in message and "rsign+dorefa_2bit:" in message
    grid = expand({**raw, "skip_inapplicable": True})
    assert [label for label, _ in grid.skipped] == ["double_residual", "rsign+dorefa_2bit"]
    assert sorted({r.label for r in grid.runs}) == ["baseline", "rsign"]


def test_expansion_every_method_once_per_seed_plus_baseline_and_combinations():
    raw = {
        "model": "resnet20",
        "model_options": {"width_mult": 0.25},
        "dataset": "cifar10",
        "epochs": 2,
        "seeds": [0, 1],
        "methods": ["all"],
        "combinations": [["rsign", "double_residual"]],
        "recipe": {"lr": 0.01},
        "skip_inapplicable": True,
    }
    grid = expand(raw)
    assert [label for label, _ in grid.skipped] == ["pool_after_sign"]  # ResNet-20 has no pooling to move
    labels = [r.label for r in grid.runs]
    expected = ["baseline", *(m for m in METHODS if m != "pool_after_sign"), "rsign+double_residual"]
    assert labels == [label for label in expected for _ in (0, 1)]
    assert [r.config.seed for r in grid.runs] == [0, 1] * len(expected)
    assert len({r.key for r in grid.runs}) == len(grid.runs)
    by_label = {r.label: r for r in grid.runs}
    assert by_label["baseline"].category == "baseline"
    assert by_label["rsign"].category == TRAINING and by_label["rsign"].kind == "feature binarizer"
    assert by_label["double_residual"].category == TOPOLOGY
    assert by_label["rsign+double_residual"].category == "combination"
    combo = by_label["rsign+double_residual"].config.recipe
    assert combo.learnable_threshold and combo.residual == "double"
    assert by_label["baseline"].config.recipe.lr == 0.01 and by_label["sgd_step"].config.recipe.lr == 0.1
    # what decides a result is in the key; where the data lives is not
    spec = grid.runs[0]
    assert replace(spec, config=replace(spec.config, data_dir="/elsewhere")).key == spec.key
    assert replace(spec, config=replace(spec.config, epochs=3)).key != spec.key
    assert replace(spec, limit_train=10).key != spec.key


def test_presets_load():
    assert {"deputter-cifar10", "deputter-cifar100", "fashion-mnist"} <= set(preset_names())
    grid = load_grid("fashion-mnist")
    assert grid.runs[0].config.model == "resnet20" and grid.runs[0].config.model_options == {"width_mult": 0.5}
    assert {r.label for r in load_grid("deputter-cifar100").runs} >= {"baseline", "rsign+feature_norm+double_residual"}


# --- running ------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_grid_runs_in_two_processes_then_skips_finished_runs(tmp_path, capsys):
    grid = expand(TINY)
    result = run_review(grid, tmp_path, workers=2, progress=False)
    assert result["runs"] == result["done"] == result["ran"] == 6 and result["failed"] == 0
    with Store(tmp_path) as store:
        first = {r["key"]: r for r in store.rows()}
    assert all(0 <= r["top1_final"] <= r["top1_best"] <= 1 and r["cost_params"] > 0 for r in first.values())
    assert all(json.loads(r["costs_json"])["binary_macs"] == r["cost_binary_macs"] for r in first.values())

    assert run_review(grid, tmp_path, progress=False)["ran"] == 0
    with Store(tmp_path) as store:
        assert {r["key"]: r for r in store.rows()} == first

    assert main(["report", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in report["rows"]][0] == "baseline" and all(r["n"] == 2 for r in report["rows"])
    assert (tmp_path / "plots" / "acc_vs_energy_pj.png").stat().st_size > 0
    assert (tmp_path / "plots" / "delta_by_category.png").stat().st_size > 0


def test_failed_runs_are_recorded_and_retried(tmp_path):
    grid = expand({**TINY, "seeds": [0], "methods": []})
    broken = replace(
        grid,
        runs=[
            replace(r, config=replace(r.config, dataset="mnist", data_dir=str(tmp_path / "none"))) for r in grid.runs
        ],
    )
    result = run_review(broken, tmp_path / "review", progress=False)
    assert result["failed"] == 1 and result["failed_runs"] == [{"label": "baseline", "seed": 0}]
    with Store(tmp_path / "review") as store:
        (row,) = store.rows()
    assert row["status"] == "failed" and "BnnkitError" in row["error"]
    assert run_review(broken, tmp_path / "review", progress=False)["ran"] == 0
    assert run_review(broken, tmp_path / "review", retry_failed=True, progress=False)["ran"] == 1
    write_report(tmp_path / "review")
    assert "## Failed runs" in (tmp_path / "review" / "report.md").read_text()


@pytest.mark.slow
def test_kill_9_then_rerun_keeps_finished_runs_and_resumes_the_rest(tmp_path):
    table = {**TINY, "model_options": {"width": 64}, "epochs": 2, "methods": ["rsign"]}
    grid_file = write_grid(tmp_path / "grid.toml", table)
    out = tmp_path / "review"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnnkit", "review", str(grid_file), "--out", str(out), "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    done = {}
    while not done and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        if (out / "review.sqlite").exists():
            with Store(out, create=False) as store:
                done = {r["key"]: r for r in store.rows() if r["status"] == "done"}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()

    grid = load_grid(grid_file)
    with Store(out) as store:
        rows = {r["key"]: r for r in store.rows()}
    done = {k: r for k, r in rows.items() if r["status"] == "done"}
    assert 1 <= len(done) < len(grid.runs)
    # A run killed mid-way, and one left with its first epoch trained, as a kill would leave them.
    killed = [s for s in grid.runs if rows[s.key]["status"] == "running"]
    waiting = next(s for s in grid.runs if rows[s.key]["status"] == "pending")
    train(replace(waiting.config, epochs=1), run_dir(out, waiting), TrainOptions(progress=False))
    before = {
        s.key: (run_dir(out, s) / "metrics.jsonl").read_text()
        for s in [*killed, waiting]
        if (run_dir(out, s) / "metrics.jsonl").exists()
    }

    result = run_review(grid, out, progress=False)
    assert result["done"] == len(grid.runs) and result["ran"] == len(grid.runs) - len(done)
    with Store(out) as store:
        after = {r["key"]: r for r in store.rows()}
    for key, row in done.items():
        assert after[key] == row  # neither retrained nor rewritten
    for key, text in before.items():
        assert (run_dir(out, next(s for s in grid.runs if s.key == key)) / "metrics.jsonl").read_text().startswith(text)
    assert [m["epoch"] for m in read_metrics(run_dir(out, waiting))] == [1, 2]


def test_two_reviews_cannot_share_a_directory(tmp_path):
    from bnnkit.files import exclusive

    with exclusive(tmp_path, "review directory"), pytest.raises(BnnkitError) as info:  # what the first review holds
        run_review(expand(TINY), tmp_path, progress=False)
    assert str(info.value) == (
        f"{tmp_path}: another bnnkit process (PID {os.getpid()}) is writing this review "
        "directory; wait for it to finish or choose another directory"
    )


# --- the report ---------------------------------------------------------------------------


def test_report_numbers_equal_hand_computed_mean_and_std(tmp_path):
    grid = expand({**TINY, "seeds": [0, 1, 2], "methods": ["rsign", "prelu"]})
    accuracy = {"baseline": [0.80, 0.83, 0.86], "rsign": [0.85, 0.90, None], "prelu": [0.70, None, None]}
    params = {"baseline": 1000, "rsign": 1016, "prelu": 1032}
    with Store(tmp_path) as store:
        store.add(grid.runs)
        for spec in grid.runs:
            top1 = accuracy[spec.label][spec.config.seed]
            if top1 is None:
                store.finish(spec.key, {"status": "failed", "error": "RuntimeError: boom\ntraceback"})
                continue
            store.finish(
                spec.key,
                {
                    "status": "done",
                    "top1_final": top1,
                    "top1_best": top1 + 0.01,
                    "train_seconds": 10.0 + spec.config.seed,
                    "costs": {
                        "params": params[spec.label],
                        "energy_pj": 2.5 * params[spec.label],
                        "note": "not a number",
                    },
                },
            )
    result = write_report(tmp_path)
    with open(tmp_path / "report.csv") as f:
        rows = {r["label"]: r for r in csv.DictReader(f)}

    base_mean = (0.80 + 0.83 + 0.86) / 3
    base_std = math.sqrt(((0.80 - base_mean) ** 2 + (0.83 - base_mean) ** 2 + (0.86 - base_mean) ** 2) / 2)
    rsign_mean = (0.85 + 0.90) / 2
    rsign_std = math.sqrt(((0.85 - rsign_mean) ** 2 + (0.90 - rsign_mean) ** 2) / 1)
    assert float(rows["baseline"]["top1_mean"]) == pytest.approx(base_mean) == pytest.approx(0.83)
    assert float(rows["baseline"]["top1_std"]) == pytest.approx(base_std) == pytest.approx(0.03)
    assert float(rows["rsign"]["top1_mean"]) == pytest.approx(0.875)
    assert float(rows["rsign"]["top1_std"]) == pytest.approx(rsign_std)
    assert float(rows["rsign"]["delta_top1"]) == pytest.approx(0.875 - base_mean)
    assert float(rows["rsign"]["top1_best_mean"]) == pytest.approx(0.885)
    assert float(rows["baseline"]["train_seconds_mean"]) == pytest.approx(11.0)
    assert (rows["rsign"]["n"], rows["rsign"]["failed"], rows["prelu"]["n"]) == ("2", "1", "1")
    assert rows["prelu"]["top1_std"] == ""  # one seed: no sample std
    assert float(rows["prelu"]["delta_params"]) == 32 and float(rows["rsign"]["delta_energy_pj"]) == 40
    assert "note" not in rows["baseline"]  # only numeric costs become columns
    assert [r["label"] for r in result["rows"]] == ["baseline", "rsign", "prelu"]  # category, then Δ

    markdown = (tmp_path / "report.md").read_text()
    assert "| baseline | baseline | 3 | 83.00 ± 3.00 | +0.00 | 84.00 |" in markdown
    assert "| rsign | training technique (feature binarizer) | 2 (1 failed) | 87.50 ± 3.54 | +4.50 |" in markdown
    assert "| prelu | topology change (activation) | 1 (2 failed) | 70.00 | -13.00 |" in markdown
    assert "- rsign, seed 2: RuntimeError: boom" in markdown
    assert summarize([], []) == []


# --- executors ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_executor_agrees_with_the_local_one(tmp_path):
    pytest.importorskip("ray", reason='the Ray executor is optional: pip install -c constraints.txt -e ".[ray]"')
    grid = expand({**TINY, "seeds": [0]})  # three runs on two workers: the third waits for a free one
    ray = run_review(grid, tmp_path / "ray", executor="ray", workers=2, progress=False)
    local = run_review(grid, tmp_path / "local", progress=False, threads=1)  # as every Ray task: bit for bit alike
    assert ray["done"] == local["done"] == 3
    tables = []
    for name in ("ray", "local"):
        with Store(tmp_path / name) as store:
            tables.append({r["key"]: (r["top1_final"], r["top1_best"], r["costs_json"]) for r in store.rows()})
    assert tables[0] == tables[1]


# --- presets from the command line ------------------------------------------------------------


@pytest.mark.slow
def test_cifar10_preset_with_overrides(tmp_path, capsys):
    data = tmp_path / "cifar-10-batches-bin"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        write_cifar_bin(data / f"data_batch_{i}.bin", cifar_images(16, i), rng.integers(0, 10, 16).tolist())
    write_cifar_bin(data / "test_batch.bin", cifar_images(32, 9), rng.integers(0, 10, 32).tolist())
    out = tmp_path / "review"
    args = [
        "review",
        "deputter-cifar10",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--limit-train",
        "64",
        "--limit-test",
        "64",
        "--methods",
        "baseline,rsign",
        "--data-dir",
        str(tmp_path),
        "--json",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == result["done"] == 2
    assert main(["report", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["label"] for r in rows] == ["baseline", "rsign"]
    assert rows[0]["study"].startswith("resnet20 on cifar10, 1 epoch") and rows[0]["params"] > 200_000
