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
from bnnkit.review import Store, expand, load_grid, preset_names, run_review, runner, summarize, write_report
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


@pytest.mark.slow  # builds every model of every preset (about 100 ResNets)
def test_presets_load():
    assert {"deputter-cifar10", "deputter-cifar100", "fashion-mnist", "small-cnn"} <= set(preset_names())
    grids = {name: load_grid(name) for name in preset_names()}
    grid = grids["fashion-mnist"]
    assert grid.runs[0].config.model == "resnet20" and grid.runs[0].config.model_options == {"width_mult": 0.5}
    assert {r.label for r in grids["deputter-cifar100"].runs} >= {"baseline", "rsign+feature_norm+double_residual"}
    for name, grid in grids.items():  # every preset follows the protocol
        assert grid.runs[0].validation == 5000 and len(grid.raw["confirm"]["seeds"]) >= 3, name
    # the deployable benchmark: every entry exports
    deployable = grids["small-cnn"]
    names = {n for r in deployable.runs for n in r.label.split("+") if n != "baseline"}
    assert names and all(METHODS[n].exportable for n in names) and not deployable.skipped


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


def test_runs_go_seed_by_seed_so_a_stopped_review_holds_whole_pairs(tmp_path, monkeypatch):
    """Entry by entry, a review stopped after k runs would hold the first entries' every seed and
    nothing of the rest; seed by seed it holds the baseline and every entry with the first seeds."""
    grid = expand({**TINY, "seeds": [0, 1, 2]})
    labels = list(dict.fromkeys(s.label for s in grid.runs))
    assert [s.config.seed for s in grid.runs[:3]] == [0, 1, 2]  # the grid itself lists entry by entry
    started = []
    monkeypatch.setattr(runner, "run_local", lambda specs, *args: iter(started.extend(specs) or ()))
    run_review(grid, tmp_path, progress=False)
    assert [(s.config.seed, s.label) for s in started] == [(seed, label) for seed in (0, 1, 2) for label in labels]


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


def test_report_numbers_equal_hand_computed_statistics(tmp_path):
    grid = expand({**TINY, "seeds": [0, 1, 2], "methods": ["rsign", "prelu", "xnor_weight_scale"]})
    accuracy = {
        "baseline": [0.80, 0.83, 0.86],
        "rsign": [0.85, 0.90, None],
        "prelu": [0.70, None, None],
        "xnor_weight_scale": [0.79, 0.85, 0.84],
    }
    validation = {"baseline": 0.5, "rsign": 0.6, "prelu": 0.4, "xnor_weight_scale": 0.45}
    params = {"baseline": 1000, "rsign": 1016, "prelu": 1032, "xnor_weight_scale": 1000}
    with Store(tmp_path) as store:
        store.add(grid.runs)
        for spec in grid.runs:
            top1 = accuracy[spec.label][spec.config.seed]
            if top1 is None:
                store.finish(spec.key, {"status": "failed", "error": "RuntimeError: boom\ntraceback"})
                continue
            val = validation[spec.label] + spec.config.seed / 100
            store.finish(
                spec.key,
                {
                    "status": "done",
                    "top1_final": top1,
                    "top1_best": top1 + 0.01,
                    "val_final": val,
                    "val_best": val,
                    "val_best_epoch": 1,
                    "val_curve": [val],
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

    def number(label, column):
        return float(rows[label][column])

    base_mean = (0.80 + 0.83 + 0.86) / 3
    base_std = math.sqrt(((0.80 - base_mean) ** 2 + (0.83 - base_mean) ** 2 + (0.86 - base_mean) ** 2) / 2)
    assert number("baseline", "top1_mean") == pytest.approx(base_mean) == pytest.approx(0.83)
    assert number("baseline", "top1_std") == pytest.approx(base_std) == pytest.approx(0.03)
    assert number("rsign", "top1_mean") == pytest.approx(0.875)
    assert number("rsign", "top1_std") == pytest.approx(math.sqrt(2 * 0.025**2))
    # rsign pairs with the baseline on seeds 0 and 1: differences 0.05, 0.07; mean 0.06, sd 0.01*sqrt(2),
    # standard error 0.01, t = 6 on 1 df (Cauchy): t_0.975 = tan(0.475 pi), p = 1 - 2 atan(6) / pi.
    assert number("rsign", "n_pairs") == 2 and number("rsign", "delta_top1") == pytest.approx(0.06)
    t1 = math.tan(0.475 * math.pi)
    assert t1 == pytest.approx(12.706, abs=5e-4)  # the printed t table
    assert number("rsign", "delta_ci_low") == pytest.approx(0.06 - t1 * 0.01, rel=1e-9)
    assert number("rsign", "delta_ci_high") == pytest.approx(0.06 + t1 * 0.01, rel=1e-9)
    p_rsign = 1 - 2 * math.atan(6) / math.pi
    assert number("rsign", "delta_p") == pytest.approx(p_rsign, rel=1e-9)
    # xnor_weight_scale: differences -0.01, +0.02, -0.02 on 2 df, where the t CDF is closed-form:
    # P(|T| > t) = 1 - t / sqrt(2 + t^2), and t_q = (2q - 1) / sqrt(2 q (1 - q)).
    d = [-0.01, 0.02, -0.02]
    mean, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    t_stat = abs(mean) / (sd / math.sqrt(3))
    p_xnor = 1 - t_stat / math.sqrt(2 + t_stat**2)
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert t2 == pytest.approx(4.303, abs=5e-4)
    assert number("xnor_weight_scale", "delta_top1") == pytest.approx(mean)
    assert number("xnor_weight_scale", "delta_ci_high") == pytest.approx(mean + t2 * sd / math.sqrt(3), rel=1e-9)
    assert number("xnor_weight_scale", "delta_p") == pytest.approx(p_xnor, rel=1e-9)
    # MDE on 2 df at 80% power: t_0.8 = 0.6 / sqrt(2 * 0.8 * 0.2)
    t2_power = 0.6 / math.sqrt(0.32)
    assert number("xnor_weight_scale", "delta_mde") == pytest.approx((t2 + t2_power) * sd / math.sqrt(3), rel=1e-9)
    # Holm over the two tested entries (prelu has one seed: no test)
    low, high = sorted([p_rsign, p_xnor])
    expected = {p_rsign: None, p_xnor: None}
    expected[low] = min(1, 2 * low)
    expected[high] = max(expected[low], min(1, high))
    assert number("rsign", "delta_p_holm") == pytest.approx(expected[p_rsign], rel=1e-9)
    assert number("xnor_weight_scale", "delta_p_holm") == pytest.approx(expected[p_xnor], rel=1e-9)
    assert rows["prelu"]["delta_p"] == rows["prelu"]["delta_ci_low"] == rows["baseline"]["delta_p"] == ""
    # validation: paired, every seed adds the same 0.01 to both sides
    assert number("rsign", "delta_val") == pytest.approx(0.1) and number("rsign", "val_mean") == pytest.approx(0.605)
    assert number("baseline", "train_seconds_mean") == pytest.approx(11.0)
    assert (rows["rsign"]["n"], rows["rsign"]["failed"], rows["prelu"]["n"]) == ("2", "1", "1")
    assert rows["prelu"]["top1_std"] == ""  # one seed: no sample std
    assert number("prelu", "delta_params") == 32 and number("rsign", "delta_energy_pj") == 40
    assert "note" not in rows["baseline"]  # only numeric costs become columns
    assert "top1_best_mean" not in rows["baseline"]  # the best epoch by test accuracy is no longer reported
    assert [r["label"] for r in result["rows"]] == ["baseline", "rsign", "xnor_weight_scale", "prelu"]

    markdown = (tmp_path / "report.md").read_text()
    assert "| baseline | baseline | 3 | 83.00 ± 3.00 | +0.00 | – | – | 51.00 | +0.00 | 1.0 |" in markdown
    ci = f"[{100 * (0.06 - t1 * 0.01):+.2f}, {100 * (0.06 + t1 * 0.01):+.2f}]"
    assert (
        f"| rsign | training technique (feature binarizer) | 2 (1 failed) | 87.50 ± 3.54 | +6.00 {ci} "
        f"| {expected[p_rsign]:.3f} | {100 * (t1 + math.tan(0.3 * math.pi)) * 0.01:.2f} | 60.50 | +10.00 | 1.0 |"
        in markdown
    )
    assert (
        "| prelu | topology change (activation) | 1 (2 failed) | 70.00 | -10.00 | – | – | 40.00 | -10.00 |" in markdown
    )
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
        "--validation",
        "16",
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
    assert (
        rows[0]["study"].endswith("(limit_train=64, limit_test=64, validation=16)") and rows[0]["val_mean"] is not None
    )


# --- the protocol: validation split, paired seeds, screen -> confirm ------------------------------

PROTOCOL = {
    **TINY,
    "validation": 300,
    "confirm": {"epochs": 1, "seeds": [0, 1, 2], "top_k": 1, "always": ["prelu"], "limit_train": 600},
}


def test_validation_split_is_fixed_disjoint_and_independent_of_the_run():
    from bnnkit.training.loop import VALIDATION_SEED, validation_split

    keep, held = validation_split(1000, 100)
    assert len(held) == 100 and len(keep) == 900 and not set(keep) & set(held)
    assert sorted([*keep, *held]) == list(range(1000)) and list(keep) == sorted(keep)
    # the rule as documented, recomputed: the last 100 of a permutation seeded by VALIDATION_SEED
    assert set(held) == set(np.random.default_rng(VALIDATION_SEED).permutation(1000)[-100:])
    again_keep, again_held = validation_split(1000, 100)
    assert (again_keep == keep).all() and (again_held == held).all()
    for size in (0, 1000):
        with pytest.raises(BnnkitError, match=r"validation must be 1..999 images \(the training set has 1000\)"):
            validation_split(1000, size)


def record_training(monkeypatch):
    """What every training of this process saw: its training images, first batch and initial weights."""
    import bnnkit.training.loop as loop

    seen = []
    batches, the_model = loop.batches, loop.the_model

    def record_batches(ds, batch_size, *, shuffle, **kw):
        if shuffle and kw.get("epoch") == 0:
            first = next(iter(batches(ds, batch_size, shuffle=True, **kw)))
            seen[-1] |= {"train_x": ds.x, "first_batch": first}
        return batches(ds, batch_size, shuffle=shuffle, **kw)

    def record_model(config, model, out):
        config, model = the_model(config, model, out)
        seen.append({"seed": config.seed, "init": {k: v.clone() for k, v in model.state_dict().items()}})
        return config, model

    monkeypatch.setattr(loop, "batches", record_batches)
    monkeypatch.setattr(loop, "the_model", record_model)
    return seen


@pytest.mark.slow
def test_paired_runs_share_batches_and_initial_weights_and_never_train_on_validation(tmp_path, monkeypatch):
    from bnnkit.data import load_dataset

    seen = record_training(monkeypatch)
    grid = expand({**PROTOCOL, "methods": ["rsign"]})
    result = run_review(grid, tmp_path, progress=False)
    assert result["done"] == 4, result
    assert [s.label for s in grid.runs] == ["baseline", "baseline", "rsign", "rsign"] and len(seen) == 4
    assert [s["seed"] for s in seen] == [0, 0, 1, 1]  # run seed by seed, the baseline first
    base0, rsign0, base1, rsign1 = seen
    assert len(rsign0["init"]) > len(base0["init"]) and len(rsign1["init"]) > len(base1["init"])  # RSign's thresholds
    assert torch_equal(base0["first_batch"], rsign0["first_batch"]) and torch_equal(
        base1["first_batch"], rsign1["first_batch"]
    )
    assert not torch_equal(base0["first_batch"], base1["first_batch"])
    shared = [k for k in base0["init"] if k in rsign0["init"] and base0["init"][k].shape == rsign0["init"][k].shape]
    assert shared and all((base0["init"][k] == rsign0["init"][k]).all() for k in shared)
    assert any((base0["init"][k] != base1["init"][k]).any() for k in shared)
    # no held-out image among the training images (digits has no duplicate images between the two)
    full = load_dataset("digits", "train")
    from bnnkit.training.loop import validation_split

    keep, held = validation_split(len(full.y), 300)
    assert (base0["train_x"] == full.x[keep]).all()
    with Store(tmp_path) as store:
        rows = store.rows()
        meta = store.meta("validation/digits/300")
    assert all(r["val_final"] is not None and len(json.loads(r["val_curve_json"])) == 1 for r in rows)
    assert meta["images"] == 300 and len(meta["sha256"]) == 64


def torch_equal(a, b):
    return all((x == y).all() for x, y in zip(a, b, strict=True))


def fake_screen(tmp_path, grid, val):
    with Store(tmp_path) as store:
        store.add(grid.runs)
        for spec in grid.runs:
            v = val[spec.label] + spec.config.seed / 1000
            store.finish(
                spec.key,
                {"status": "done", "top1_final": 0.5, "top1_best": 0.5, "val_final": v, "val_best": v, "val_best_epoch": 1,
                 "val_curve": [v], "train_seconds": 1.0, "costs": {"params": 1}},
            )  # fmt: skip
        return [r for r in store.rows() if r["stage"] == "screen"]


def test_confirm_takes_the_top_k_by_validation_plus_the_named_entries(tmp_path):
    table = {**PROTOCOL, "methods": ["rsign", "xnor_weight_scale", "prelu", "xnor_activation_scale"]}
    table["confirm"] = {**table["confirm"], "top_k": 2, "always": ["prelu", "rsign+prelu"]}
    grid = expand(table)
    val = {"baseline": 0.5, "rsign": 0.49, "xnor_weight_scale": 0.56, "prelu": 0.40, "xnor_activation_scale": 0.53}
    screen = fake_screen(tmp_path, grid, val)
    confirmation, ranking = grid.confirmation(screen)
    assert [r["label"] for r in ranking] == ["xnor_weight_scale", "xnor_activation_scale", "rsign", "prelu"]
    assert ranking[0]["delta_val"] == pytest.approx(0.06) and ranking[0]["n"] == 2
    labels = list(dict.fromkeys(r.label for r in confirmation.runs))
    assert labels == ["baseline", "xnor_weight_scale", "xnor_activation_scale", "prelu", "rsign+prelu"]
    assert {r.config.seed for r in confirmation.runs} == {0, 1, 2} and {r.stage for r in confirmation.runs} == {
        "confirm"
    }
    assert {(r.limit_train, r.validation, r.config.epochs) for r in confirmation.runs} == {(600, 300, 1)}
    assert not {r.key for r in confirmation.runs} & {r.key for r in grid.runs}


def fake_confirmation(store, confirmation, val):
    """Finish every run of ``confirmation`` in ``store`` with the validation accuracy ``val[label][seed]``."""
    store.add(confirmation.runs)
    for spec in confirmation.runs:
        v = val[spec.label][spec.config.seed]
        store.finish(
            spec.key,
            {"status": "done", "top1_final": v, "top1_best": v, "val_final": v, "val_best": v, "val_best_epoch": 1,
             "val_curve": [v], "train_seconds": 1.0, "costs": {"params": 1}},
        )  # fmt: skip


def test_more_seeds_go_to_the_entries_whose_interval_is_too_wide(tmp_path):
    from bnnkit.review.grid import half_widths

    table = {**PROTOCOL, "methods": ["rsign"]}
    table["confirm"] = {**table["confirm"], "always": ["prelu"], "target_half_width": 2.5, "max_seeds": 4}
    grid = expand(table)
    confirmation, _ = grid.confirmation(fake_screen(tmp_path, grid, {"baseline": 0.5, "rsign": 0.6}))
    # paired differences in points: rsign 1, 2, 3 (mean 2, sd 1: half-width t(0.975, 2) / sqrt(3)
    # = 4.302653 / 1.732051 = 2.4841); prelu -1, 1, 3 (sd 2: 4.9682)
    val = {
        "baseline": {0: 0.50, 1: 0.50, 2: 0.50, 3: 0.50},
        "rsign": {0: 0.51, 1: 0.52, 2: 0.53},
        "prelu": {0: 0.49, 1: 0.51, 2: 0.53, 3: 0.50},
    }
    with Store(tmp_path) as store:
        fake_confirmation(store, confirmation, val)
        rows = store.rows()
    widths = half_widths(confirmation, rows)
    assert widths["rsign"] == pytest.approx(2.4841, abs=1e-4) and widths["prelu"] == pytest.approx(4.9682, abs=1e-4)
    wider = confirmation.with_more_seeds(rows)
    added = {(s.label, s.config.seed) for s in wider.runs} - {(s.label, s.config.seed) for s in confirmation.runs}
    assert added == {("baseline", 3), ("prelu", 3)}  # rsign is within +-2.5 points already
    assert {s.key for s in wider.runs} > {s.key for s in confirmation.runs}
    # the fourth seed of prelu (difference 0): -1, 1, 3, 0 has sd 1.7078, half-width 2.7175: still too
    # wide, but max_seeds = 4 stops it
    with Store(tmp_path) as store:
        fake_confirmation(store, wider, val)
        rows = store.rows()
    assert half_widths(wider, rows)["prelu"] == pytest.approx(2.7175, abs=1e-4)
    assert wider.with_more_seeds(rows) is None
    unlimited = replace(wider, raw={**wider.raw, "confirm": {**wider.raw["confirm"], "max_seeds": 10}})
    assert {(s.label, s.config.seed) for s in unlimited.with_more_seeds(rows).runs[len(wider.runs) :]} == {
        ("baseline", 4),
        ("prelu", 4),
    }
    no_target = replace(wider, raw={**wider.raw, "confirm": PROTOCOL["confirm"]})
    assert no_target.with_more_seeds(rows) is None


@pytest.mark.slow
def test_confirmation_adds_seeds_until_its_target_then_resumes_without_training(tmp_path):
    table = {**PROTOCOL, "methods": ["rsign"]}
    table["confirm"] = {**table["confirm"], "always": [], "target_half_width": 1e-6, "max_seeds": 4}
    grid = expand(table)
    result = run_review(grid, tmp_path, stage="all", progress=False)
    confirm = result["confirm"]
    # two different trainings never agree to 1e-6 points on every seed: one seed more, to max_seeds
    assert confirm["seeds"] == {"baseline": 4, "rsign": 4} and confirm["done"] == confirm["ran"] == 8
    assert confirm["half_width_val"]["rsign"] > 1e-6
    again = run_review(grid, tmp_path, stage="confirm", progress=False)
    assert again["ran"] == 0 and again["seeds"] == confirm["seeds"]


@pytest.mark.parametrize(
    "confirm, message",
    [
        ({"epochs": 1, "seeds": [0, 1]}, r"confirm.seeds must be a list of 3 or more distinct integer seeds"),
        ({"seeds": [0, 1, 2]}, r"\[review.confirm\] needs epochs"),
        ({"epochs": 1, "seeds": [0, 1, 2], "top": 1}, r"unknown key\(s\) top in \[review.confirm\]"),
        ({"epochs": 1, "seeds": [0, 1, 2], "top_k": -1}, "confirm.top_k must be an integer >= 0, got -1"),
        ({"epochs": 1, "seeds": [0, 1, 2], "always": ["rsign+nope"]}, "unknown repair method 'nope'"),
        ({"epochs": 1, "seeds": [0, 1, 2], "target_half_width": 0}, "confirm.target_half_width must be a number of"),
        ({"epochs": 1, "seeds": [0, 1, 2], "target_half_width": float("nan")}, "must be a number of accuracy points"),
        ({"epochs": 1, "seeds": [0, 1, 2], "target_half_width": "0.5"}, "must be a number of accuracy points > 0"),
        ({"epochs": 1, "seeds": [0, 1, 2], "max_seeds": 5}, "confirm.max_seeds needs target_half_width, got 5"),
        (
            {"epochs": 1, "seeds": [0, 1, 2], "target_half_width": 0.5, "max_seeds": 2},
            "confirm.max_seeds must be >= the 3 confirm.seeds, got 2",
        ),
    ],
)
def test_confirm_table_errors(confirm, message):
    with pytest.raises(BnnkitError, match=message):
        expand({**PROTOCOL, "confirm": confirm})
    with pytest.raises(BnnkitError, match="ranks the screen on validation accuracy: set validation"):
        expand({**TINY, "confirm": PROTOCOL["confirm"]})


def test_confirm_before_the_screen_is_done_is_an_error(tmp_path, capsys):
    grid_file = write_grid(tmp_path / "grid.toml", {k: v for k, v in PROTOCOL.items() if k != "confirm"})
    assert main(["review", str(grid_file), "--out", str(tmp_path / "a"), "--stage", "confirm"]) == 2
    assert capsys.readouterr().err == f"error: {grid_file}: no [review.confirm] table: nothing to confirm\n"
    grid = expand(PROTOCOL)
    (tmp_path / "b").mkdir()
    with Store(tmp_path / "b") as store:
        store.add(grid.runs)
    with pytest.raises(BnnkitError, match=r"6 of the screen's 6 runs are not done; run --stage screen first"):
        run_review(grid, tmp_path / "b", stage="confirm", progress=False)


@pytest.mark.slow
def test_screen_then_confirm_from_the_command_line_resumes_and_reports(tmp_path, capsys):
    grid_file = write_grid(tmp_path / "grid.toml", {k: v for k, v in PROTOCOL.items() if k != "confirm"})
    grid_file.write_text(
        grid_file.read_text() + '[review.confirm]\nepochs = 1\nseeds = [0, 1, 2]\ntop_k = 1\nalways = ["prelu"]\n'
    )
    out = tmp_path / "review"
    assert main(["review", str(grid_file), "--out", str(out), "--stage", "screen", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 6
    assert main(["review", str(grid_file), "--out", str(out), "--stage", "all", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ran"] == 0  # the screen is done: nothing of it runs again
    best = result["screen_ranking"][0]["label"]
    confirm = result["confirm"]
    assert confirm["done"] == confirm["ran"] == 3 * len({"baseline", best, "prelu"})
    assert main(["review", str(grid_file), "--out", str(out), "--stage", "confirm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 0

    assert main(["report", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stages = {r["stage"] for r in report["rows"]}
    assert stages == {"screen", "confirm"}
    (agreement,) = report["rank_agreement"]
    # prelu was not screened: the rankings share the one entry both ran (too few for a correlation)
    assert agreement["confirm"].startswith("confirm: ") and agreement["labels"] == [best]
    assert agreement["spearman"] is None
    confirmed = [r for r in report["rows"] if r["stage"] == "confirm" and r["label"] != "baseline"]
    assert all(r["n_pairs"] == 3 and r["delta_ci_low"] <= r["delta_top1"] <= r["delta_ci_high"] for r in confirmed)
    assert (out / "plots" / "study2_val_curves.png").stat().st_size > 0


def test_a_damaged_store_neither_crashes_the_report_nor_passes_a_bad_split(tmp_path):
    grid = expand({**PROTOCOL, "methods": ["rsign"]})
    fake_screen(tmp_path, grid, {"baseline": 0.5, "rsign": 0.6})
    with Store(tmp_path) as store:
        store.db.execute("UPDATE runs SET val_curve_json = '[1, \"x\"' WHERE label = 'rsign'")
        store.db.execute("UPDATE runs SET val_curve_json = '[NaN]' WHERE label = 'baseline' AND seed = 0")
        store.db.execute("INSERT INTO meta VALUES ('validation/digits/300', '{not json')")
        with pytest.raises(
            BnnkitError, match=r"review.sqlite: meta 'validation/digits/300' is not JSON; the store is damaged"
        ):
            store.meta("validation/digits/300")
    result = write_report(tmp_path)
    assert (tmp_path / "plots" / "val_curves.png").stat().st_size > 0 and len(result["rows"]) == 2
