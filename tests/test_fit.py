"""bnnkit fit: footprint filter, training within budget, Pareto front, resume after a crash."""

import json
import shutil

import numpy as np
import pytest

import bnnkit.apps.fit as fitmod
from bnnkit.apps.fit import BEST, RESULTS, Candidate, candidate_graph, fit, footprint, pareto, parse_bytes
from bnnkit.cli import main
from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph
from bnnkit.runtime.evaluate import run_graph

SPACE = [
    Candidate("ebnn_cnn", {"channels": [8], "kernel": 3}),
    Candidate("binarynet_mlp", {"width": 64, "depth": 1}),
    Candidate("ebnn_cnn", {"channels": [16, 32], "kernel": 3}),
    Candidate("small_cnn", {"width": 32, "hidden": 256}),  # too big for the flash budget below
]


def test_parse_bytes():
    assert [parse_bytes(t) for t in ("4096", "4K", "4KiB", "4kb", "1M", "1.5K")] == [4096] * 4 + [1 << 20, 1536]
    with pytest.raises(BnnkitError, match="not a byte count"):
        parse_bytes("four kilobytes")


def test_pareto_by_hand():
    rows = [
        {"name": "a", "accuracy": 0.9, "ram": 100, "flash": 100, "binary_macs": 10},
        {"name": "b", "accuracy": 0.8, "ram": 100, "flash": 100, "binary_macs": 10},  # worse than a in accuracy only
        {"name": "c", "accuracy": 0.7, "ram": 50, "flash": 200, "binary_macs": 10},  # less RAM: kept
        {"name": "d", "accuracy": 0.9, "ram": 100, "flash": 100, "binary_macs": 10},  # equal to a: neither dominates
    ]
    assert [r["name"] for r in pareto(rows)] == ["a", "c", "d"]
    # measured instructions, where every row has them, replace the binary MACs
    counted = [{**r, "instructions": i} for r, i in zip(rows, (10, 10, 10, 5))]
    assert [r["name"] for r in pareto(counted)] == ["c", "d"]


@pytest.mark.slow
def test_fit_trains_what_fits_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "fit"
    sizes = {c.name: footprint(candidate_graph(c, (1, 8, 8), 10)) for c in SPACE}
    flash = max(s["flash"] for name, s in sizes.items() if not name.startswith("small_cnn"))
    assert sizes["small_cnn-width=32-hidden=256"]["flash"] > flash

    calls = []
    import bnnkit.training as train_pkg  # fit imports train when it runs: patch it at the source

    original = train_pkg.train

    def crash_on_second(config, run_dir, options):
        calls.append(config.model_options)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(config, run_dir, options)

    monkeypatch.setattr(train_pkg, "train", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        fit("digits", 10_000, flash, out, epochs=1, progress=False, space=SPACE)
    assert len((out / RESULTS).read_text().splitlines()) == 1  # the finished candidate is kept
    monkeypatch.setattr(train_pkg, "train", original)
    result = fit("digits", 10_000, flash, out, epochs=1, progress=False, space=SPACE)
    names = [r["name"] for r in result["trained"]]
    assert len(names) == 3 and "small_cnn-width=32-hidden=256" not in names and result["remaining"] == 0
    assert len((out / RESULTS).read_text().splitlines()) == 3
    for r in result["trained"]:
        assert r["ram"] == sizes[r["name"]]["ram"] and r["flash"] <= flash
    # the kept model is the most accurate, and its graph scores what training measured
    best = result["best"]
    assert best["accuracy"] == max(r["accuracy"] for r in result["trained"])
    ran = run_graph(Graph.load(out / BEST), "numpy")
    assert ran.accuracy == pytest.approx(best["accuracy"]) and ran.n == 355
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    def must_not_train(*_):
        raise AssertionError("a recorded candidate was trained again")

    monkeypatch.setattr(train_pkg, "train", must_not_train)
    again = fit("digits", 10_000, flash, out, epochs=1, progress=False, space=SPACE)
    assert [r["accuracy"] for r in again["trained"]] == [r["accuracy"] for r in result["trained"]]


def test_a_second_fit_on_one_directory_is_refused_naming_the_first(tmp_path, monkeypatch):
    import os

    from bnnkit.files import exclusive

    (tmp_path / RESULTS).write_text(json.dumps({"name": "recorded", "accuracy": 0.5}) + "\n")
    monkeypatch.setattr("bnnkit.training.train", lambda *_: pytest.fail("trained while another fit held the directory"))
    with exclusive(tmp_path, "fit directory"), pytest.raises(BnnkitError) as info:  # what a running `bnnkit fit` holds
        fit("digits", 10_000, 10_000, tmp_path, epochs=1, progress=False, space=SPACE[:1])
    assert str(info.value) == (
        f"{tmp_path}: another bnnkit process (PID {os.getpid()}) is writing this fit directory; "
        "wait for it to finish or choose another directory"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [RESULTS]


def test_nothing_fits_says_what_the_smallest_needs(tmp_path):
    with pytest.raises(BnnkitError, match="no architecture fits RAM 10 B.*smallest candidate.*needs RAM"):
        fit("digits", 10, 10, tmp_path, progress=False, space=SPACE)


def test_cli_fit_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fitmod, "search_space", lambda: SPACE[:2])
    assert (
        main(
            [
                "fit",
                "--ram",
                "1K",
                "--flash",
                "2KiB",
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--out",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["ram_budget"] == 1024 and result["flash_budget"] == 2048
    assert {r["name"] for r in result["trained"]} <= {c.name for c in SPACE[:2]} and result["best"]
    assert np.isfinite(result["best"]["accuracy"])


@pytest.mark.skipif(
    not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")), reason="no Arm toolchain/QEMU"
)
def test_measured_footprint_is_the_compiled_image():
    from bnnkit.graph.plan import plan_memory

    graph = candidate_graph(SPACE[0], (1, 8, 8), 10)
    analytic, measured = footprint(graph), footprint(graph, "cortex-m4")
    assert measured["flash"] > analytic["flash"]  # code and word padding come on top of the packed weights
    assert measured["ram"] > plan_memory(graph).arena_bytes  # the arena, the harness's buffers and the stack
    assert measured["binary_macs"] == analytic["binary_macs"]
    assert measured["instructions"] > analytic["binary_macs"] / 32 and "instructions" not in analytic
