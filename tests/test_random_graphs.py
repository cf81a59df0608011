"""benchmarks/random_graphs.py, the one command behind "every runtime is bit-exact to the spec on
>= 1,000 random graphs" (docs/architecture.md), on a few graphs: it counts what it ran, and a
runtime that differs from the spec by one score makes it name the seed and exit 1."""

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "random_graphs.py"


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("random_graphs", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bench, monkeypatch, *argv: str) -> tuple[int, dict]:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv, "--json"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = bench.main()
    return rc, json.loads(out.getvalue())


def test_a_few_graphs_of_each_generator_are_bit_exact_on_the_host(bench, monkeypatch):
    rc, result = run(bench, monkeypatch, "--generators", "fixed,int8", "--graphs", "4", "--runtimes", "fast,c")
    assert rc == 0 and result["all_bit_exact"] and result["seeds"] == [0, 3]
    rows = {(r["generator"], r["runtime"]): r for r in result["rows"]}
    assert set(rows) == {(g, r) for g in ("fixed", "int8") for r in ("numpy (spec)", "fast", "c")}
    assert all(r["graphs"] == 4 and not r["mismatched_seeds"] for r in rows.values())
    assert "affine_q(i32)" in rows["fixed", "c"]["ops"] and "int8_conv2d(i8)" in rows["int8", "c"]["ops"]


def test_a_score_off_by_one_names_its_seed_and_fails(bench, monkeypatch):
    exact = bench.RUNTIMES["fast"]

    def off_by_one(cases, work):
        got = exact(cases, work)
        return [(s + (c.seed == 6), labels) for c, (s, labels) in zip(cases, got)]

    monkeypatch.setitem(bench.RUNTIMES, "fast", off_by_one)
    rc, result = run(bench, monkeypatch, "--graphs", "3", "--first-seed", "5", "--runtimes", "fast")
    assert rc == 1 and not result["all_bit_exact"]
    assert [r["mismatched_seeds"] for r in result["rows"]] == [[], [6]]


def test_a_batch_that_fails_to_build_counts_all_its_seeds(bench, monkeypatch):
    from bnnkit.errors import BnnkitError

    def broken(cases, work):
        raise BnnkitError("C compilation failed")

    monkeypatch.setitem(bench.RUNTIMES, "c", broken)
    rc, result = run(bench, monkeypatch, "--graphs", "3", "--runtimes", "c", "--batch", "2")
    assert rc == 1 and result["rows"][1]["mismatched_seeds"] == [0, 1, 2]
    assert result["rows"][1]["errors"] == ["C compilation failed"] * 2
