"""The runtime registry: every runtime behind one protocol gives the reference's bits, frees
what it built, and is what the CLI, the API and evaluation offer; a runtime registered by a
user's module (the worked example of docs/architecture.md) runs from the command line."""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from helpers.docblocks import ROOT, blocks, run_shell, user_env
from helpers.graphgen import case_from_seed

from bnnkit.cli import build_parser, main
from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph, Op
from bnnkit.runtime import numpy_ref, registry
from bnnkit.runtime.cortex_m import TARGETS
from bnnkit.runtime.evaluate import Evaluation
from bnnkit.runtime.registry import RUNTIMES, Prediction, Runtime, device_runtimes, get_runtime, register

HAVE_MCU_TOOLS = bool(shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"))
RUNTIME_PARAMS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            RUNTIMES[name].device and not HAVE_MCU_TOOLS, reason="needs gcc-arm-none-eabi and qemu-system-arm"
        ),
    )
    for name in RUNTIMES
]
RUN_KEYS = {"runtime", "dataset", "n", "accuracy", "agreement", "bit_exact", "seconds"}


def digits_graph() -> Graph:
    """A binary MLP for scikit-learn's 8x8 digits, random weights: labels still vary."""
    rng = np.random.default_rng(0)
    ops = [
        Op("flatten", ["input"], "f"),
        Op("input_dense", ["f"], "d", {}, {"weight": rng.random((32, 64)) < 0.5}),
        Op(
            "threshold",
            ["d"],
            "s",
            {},
            {"thresh": rng.integers(-80, 80, 32).astype(np.int32), "flip": rng.random(32) < 0.3},
        ),
        Op("binary_dense", ["s"], "o", {}, {"weight": rng.random((10, 32)) < 0.5}),
        Op("argmax", ["o"], "y"),
    ]
    graph = Graph((1, 8, 8), ops)
    graph.meta["dataset"] = "digits"
    return graph


@pytest.mark.parametrize("name", RUNTIME_PARAMS)
def test_every_runtime_gives_the_reference_bits(name):
    case = case_from_seed(3)
    want_scores, want_labels = numpy_ref.predict(case.graph, case.x)
    with RUNTIMES[name].prepare(case.graph) as predictor:
        got = predictor.predict(case.x)
        again = predictor.predict(case.x[:2])  # a prepared runtime serves many batches
    assert isinstance(got, Prediction) and got.seconds >= 0
    assert got.scores.dtype == want_scores.dtype and got.scores.tobytes() == want_scores.tobytes()
    assert got.labels.dtype == np.int64 and np.array_equal(got.labels, want_labels)
    assert np.array_equal(again.labels, want_labels[:2])
    if RUNTIMES[name].device:
        d = got.device
        assert (
            d["target"] == name and d["board"] == TARGETS[name].machine and d["instructions_counted_on"] == len(case.x)
        )
        assert d["flash_bytes"] == d["text"] + d["rodata"] + d["data"] and d["instructions_per_inference"] > 0
    else:
        assert got.device is None


def test_prepare_frees_its_build_directory_also_when_the_build_fails(tmp_path, monkeypatch):
    from bnnkit.runtime import c as c_runtime

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    graph = case_from_seed(0).graph
    predictor = RUNTIMES["c-portable"].prepare(graph)
    assert [p.name.startswith("bnnkit-c-") for p in tmp_path.iterdir()] == [True]
    predictor.close()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(
        c_runtime, "generate_c", lambda g, prefix: {f"{prefix}.h": "", f"{prefix}.c": "int broken(void) {\n"}
    )
    with pytest.raises(BnnkitError, match="^C compilation failed"):
        RUNTIMES["c-portable"].prepare(graph)
    assert list(tmp_path.iterdir()) == []


def test_names_and_their_errors():
    assert list(RUNTIMES)[:3] == ["numpy", "c", "c-portable"] and device_runtimes() == tuple(TARGETS)
    with pytest.raises(BnnkitError) as error:
        get_runtime("tpu")
    assert str(error.value) == "unknown runtime 'tpu'; use one of numpy, c, c-portable, cortex-m3, cortex-m4, cortex-m7"
    with pytest.raises(BnnkitError) as error:
        get_runtime("c", device=True)
    assert str(error.value) == "unknown device runtime 'c'; use one of cortex-m3, cortex-m4, cortex-m7"
    with pytest.raises(BnnkitError) as error:
        register(Runtime("c", "another", lambda graph, progress: None))
    assert str(error.value) == "a runtime named 'c' is registered already"


def test_a_missing_cross_toolchain_stops_a_device_runtime_before_any_work(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        BnnkitError, match="^no Arm cross compiler 'arm-none-eabi-gcc' found; install the Debian packages"
    ):
        RUNTIMES["cortex-m4"].prepare(case_from_seed(0).graph)


def test_the_cli_offers_what_the_registry_holds():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices

    def options(command: str) -> dict:
        return {a.dest: a.choices for a in commands[command]._actions}

    assert options("profile")["target"] == device_runtimes() == options("fit")["target"]
    assert options("build")["target"] == (*device_runtimes(), "host")
    code = "import sys, bnnkit.cli, bnnkit.runtime.registry; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"  # the CLI's choices cost no torch import


def test_run_json_is_the_evaluation(tmp_path, capsys, monkeypatch):
    digits_graph().save(tmp_path / "m.bnn")
    assert main(["run", str(tmp_path / "m.bnn"), "--runtime", "c-portable", "--limit", "50", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == RUN_KEYS and set(printed["seconds"]) == {"numpy", "c-portable"}
    assert printed["n"] == 50 and printed["bit_exact"] and printed["agreement"] == 1.0
    evaluation = Evaluation(**{**printed, "device": None})
    assert evaluation.to_dict() == printed and Evaluation(**printed, device={"target": "x"}).to_dict()["device"] == {
        "target": "x"
    }
    assert main(["run", str(tmp_path / "m.bnn"), "--runtime", "tpu"]) == 2
    assert capsys.readouterr().err.strip() == f"error: unknown runtime 'tpu'; use one of {', '.join(RUNTIMES)}"


def test_a_registered_runtime_runs_everywhere_a_name_is_taken(tmp_path, capsys, monkeypatch):
    calls = []

    def build(graph, progress):
        calls.append(graph)
        return registry._Timed(lambda x: numpy_ref.predict(graph, x))

    monkeypatch.setitem(RUNTIMES, "mine", Runtime("mine", "the reference again", build))
    digits_graph().save(tmp_path / "m.bnn")
    assert main(["run", str(tmp_path / "m.bnn"), "--runtime", "mine", "--limit", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bit_exact"] and len(calls) == 1
    import bnnkit

    x = np.zeros((3, 1, 8, 8), np.uint8)
    assert np.array_equal(bnnkit.predict(digits_graph(), x, runtime="mine")[1], numpy_ref.predict(digits_graph(), x)[1])
    assert len(calls) == 2


@pytest.mark.slow
def test_adding_a_runtime_works_as_documented(tmp_path):
    """docs/architecture.md, "Adding a runtime": the module marked `file: NAME` and the
    commands after it, run as a user would."""
    section = [b for b in blocks(ROOT / "docs/architecture.md") if b.heading == "Adding a runtime"]
    files = [b for b in section if b.marker and b.marker.startswith("file: ")]
    shell = [b.code for b in section if b.lang == "bash"]
    assert len(files) == 1 and shell
    (tmp_path / files[0].marker.removeprefix("file: ")).write_text(files[0].code)
    digits_graph().save(tmp_path / "model.bnn")
    out = run_shell("\n".join(shell), tmp_path, user_env(tmp_path)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["runtime"] == "c-native" and result["bit_exact"] and result["agreement"] == 1.0
