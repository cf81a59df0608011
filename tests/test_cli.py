import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.commands import train_digits
from helpers.docblocks import user_env

from bnnkit.cli import main


def run_cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_train_then_eval_json(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--model",
        "binarynet_mlp",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--out",
        out,
        "--option",
        "width=64",
        "--batch-size",
        "64",
        "--validation",
        "200",
        "--grad-precision",
        "float32",
        "--json",
    )
    trained = json.loads(proc.stdout)
    assert 0.5 < trained["test_acc"] <= 1.0
    assert 0.5 < trained["val_acc"] <= 1.0 and trained["grad_precision"] == "float32"
    evaluated = json.loads(run_cli("eval", out, "--json").stdout)
    assert evaluated["n"] == 355 and evaluated["accuracy"] == trained["test_acc"]


def test_summary_json_totals_match_layers():
    result = json.loads(run_cli("summary", "--model", "small_cnn", "--dataset", "fashion_mnist", "--json").stdout)
    layers = result["layers"]
    assert result["totals"]["binary_macs"] == sum(layer["binary_macs"] for layer in layers) > 0
    assert result["totals"]["params"] == sum(layer["params"] for layer in layers)


def test_listings():
    assert "resnet20" in json.loads(run_cli("models", "--json").stdout)["models"]
    assert "mnist5k" in json.loads(run_cli("datasets", "--json").stdout)["datasets"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "nope", "--dataset", "digits", "--out", "X"], "unknown model 'nope'"),
        (["train", "--model", "ebnn_cnn", "--dataset", "imagenet", "--out", "X"], "imagenet"),
        (
            ["train", "--model", "ebnn_cnn", "--dataset", "digits", "--out", "X", "--epochs", "0"],
            "--epochs must be >= 1",
        ),
        (["train", "--model", "ebnn_cnn", "--dataset", "digits", "--out", "X", "--recipe", "zzz"], "unknown recipe"),
        (["train", "--model", "ebnn_cnn", "--dataset", "digits", "--out", "X", "--option", "depth=2"], "no option"),
        (["train", "--model", "ebnn_cnn", "--dataset", "digits", "--out", "X", "--bogus"], "unrecognized arguments"),
        (["train", "--model", "ebnn_cnn", "--dataset", "cifar10", "--out", "X", "--data-dir", "/nonexistent"], "cifar"),
        (["eval", "/nonexistent/run"], "no such run directory"),
        (["summary", "--model", "resnet20"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message.lower() in err.lower()
    assert not (tmp_path / "X").exists(), "a failed command must not leave a half-made run directory"


def test_methods_lists_the_catalogue_and_measures_cost_deltas(capsys):
    from bnnkit.cost import layer_costs
    from bnnkit.models import create_model
    from bnnkit.recipe import METHODS, TOPOLOGY, TRAINING

    assert main(["methods", "--model", "resnet20", "--option", "width_mult=0.25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["methods"]) == set(METHODS)
    assert {m["category"] for m in out["methods"].values()} == {TRAINING, TOPOLOGY}
    # the analytic weight scale costs one FP multiply per binary-conv output value
    model = create_model("resnet20", 10, (3, 32, 32), width_mult=0.25)
    outputs = sum(
        r.binary_macs // (r.params // r.out_shape[0]) for r in layer_costs(model, (3, 32, 32)) if r.binary_macs
    )
    delta = out["costs"]["xnor_weight_scale"]["fp_macs"] - out["costs"]["baseline"]["fp_macs"]
    assert delta == outputs
    assert out["costs"]["ste"] == out["costs"]["baseline"]


# --- a user's first hour (issue 21) ---------------------------------------------------------


@pytest.fixture(scope="module")
def digits_graph(tmp_path_factory):
    """A run trained on digits (binary end to end) and its exported graph; in this process, as the
    tests read the files only (they run their own commands in a child)."""
    tmp = tmp_path_factory.mktemp("digits")
    cli_ok(
        *train_digits(
            "binarynet_mlp", "--recipe", "embedded", "--epochs", 1, "--out", tmp / "run", "--json", width=32, depth=1
        )
    )
    cli_ok("export", tmp / "run", "-o", tmp / "m.bnn", "--json")
    return tmp / "run", tmp / "m.bnn"


def cli_ok(*args):
    assert main(list(map(str, args))) == 0


def test_swapped_run_directory_and_graph_file_name_the_right_command(digits_graph):
    run, graph = digits_graph
    cases = [
        (
            ["eval", graph],
            f"error: {graph}: a graph file, not a run directory; `bnnkit run {graph}` evaluates a graph "
            "(a run directory is what `bnnkit train --out DIR` writes)",
        ),
        (
            ["export", graph, "-o", "x.bnn"],
            f"error: {graph}: a graph file, not a run directory; it is exported already: "
            "`bnnkit run`, `profile`, `codegen` and `build` take it (a run directory is "
            "what `bnnkit train --out DIR` writes)",
        ),
        (
            ["eval", "nowhere.bnn"],
            "error: nowhere.bnn: no such run directory, and .bnn names a graph file, not a run "
            "directory; `bnnkit run nowhere.bnn` evaluates a graph (a run directory is what "
            "`bnnkit train --out DIR` writes)",
        ),
    ]
    cases += [
        (
            [command, run, *extra],
            f"error: {run}: a run directory, not a graph file; `bnnkit eval {run}` evaluates "
            f"it, `bnnkit export {run} -o run.bnn` makes its graph",
        )
        for command, extra in (("run", []), ("profile", []), ("codegen", ["-o", "c"]), ("verify", ["--image", "0"]))
    ]
    for args, message in cases:
        proc = run_cli(*args, check=False)
        assert (proc.returncode, proc.stderr) == (2, message + "\n"), args


def test_run_prints_its_time_and_a_log_gets_no_redraws(digits_graph):
    _, graph = digits_graph
    proc = run_cli("run", graph, "--runtime", "c")  # stderr is a pipe here, as in a log
    assert re.search(r"\(bit-identical scores\); \d+\.\d\d s in c, \d+\.\d\d s in numpy$", proc.stdout.strip())
    assert "\r" not in proc.stderr


@pytest.mark.slow
def test_verify_shows_the_graph_label_beside_the_true_one(digits_graph):
    pytest.importorskip("pysat")
    from bnnkit.data import load_dataset
    from bnnkit.graph import Graph
    from bnnkit.runtime.numpy_ref import predict

    _, graph = digits_graph
    args = ("verify", graph, "--image", "0", "--images", "12", "--eps", "1", "--timeout", "30")
    queries = json.loads(run_cli(*args, "--json").stdout)["queries"]
    rows = run_cli(*args).stdout.splitlines()
    test = load_dataset("digits", "test")
    _, labels = predict(Graph.load(graph), test.x[:12])  # the labels, independently of the SAT encoding
    assert rows[0].split()[:4] == ["image", "eps", "label", "true"]
    for q, row in zip(queries, rows[1:]):
        i = q["image"]
        mark = "x" if labels[i] != test.y[i] else ""
        assert row.split()[: 5 if mark else 4] == [
            str(i),
            "1",
            str(labels[i]),
            str(test.y[i]),
            *([mark] if mark else []),
        ]
    wrong = int(np.sum(labels != test.y[:12]))
    assert (f"x: {wrong} misclassified image(s)" in rows[-1]) == (wrong > 0)


def test_profile_names_the_op_energy_model(digits_graph, capsys):
    from bnnkit.cost.graph_cost import profile
    from bnnkit.graph import Graph

    _, graph = digits_graph
    assert main(["profile", str(graph)]) == 0
    energy = profile(Graph.load(graph))["totals"]["energy"]
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("energy"))
    assert line.startswith(f"energy, 45 nm op model: {energy['total_pj'] / 1e3:,.1f} nJ per inference")


# --- bnnkit export --real fixed (the q32 twin of a graph with a float32 stream) ----------------


@pytest.fixture(scope="module")
def residual_run(tmp_path_factory):
    """A quarter-width ResNet-20 trained one epoch on 128 digits: its residual adds and mean-pool
    are a float32 stream, which ``--real fixed`` puts in q32."""
    run = tmp_path_factory.mktemp("residual") / "run"
    cli_ok(*train_digits("resnet20", "--recipe", "embedded", "--epochs", 1, "--limit-train", 128, "--out", run,
                         "--threads", 1, "--json", width_mult=0.25))  # fmt: skip
    return run


def test_export_real_fixed_writes_the_q32_twin_and_reports_its_agreement(residual_run, tmp_path, capsys):
    from bnnkit.data import load_dataset
    from bnnkit.export.fixed import to_fixed
    from bnnkit.graph import Graph
    from bnnkit.runtime.numpy_ref import predict

    f32, q32 = tmp_path / "f32.bnn", tmp_path / "q32.bnn"
    cli_ok("export", residual_run, "-o", f32, "--check", 0, "--json")
    capsys.readouterr()
    argv = ["export", residual_run, "-o", q32, "--real", "fixed", "--calibration", 200, "--check", 120]
    cli_ok(*argv, "--json")
    result = json.loads(capsys.readouterr().out)
    float_graph, graph = Graph.load(f32), Graph.load(q32)
    kinds = {kind for kind, _ in graph.types.values()}
    assert "f32" in {kind for kind, _ in float_graph.types.values()} and "q32" in kinds and "f32" not in kinds
    assert graph.meta["real"] == "fixed" and graph.meta["q32_fraction"] == result["q32_fraction"]
    assert {"add_q", "affine_q"} <= {op.kind for op in graph.ops}
    # the twin of the float32 export, its fraction set on the first 200 training images
    train = load_dataset("digits", "train")
    assert result["calibration_images"] == 200
    assert to_fixed(float_graph, train.x[:200]).meta["q32_fraction"] == result["q32_fraction"]
    # the agreement with the float32 graph, counted again on the same test images
    x = load_dataset("digits", "test").x[:120]
    labels, float_labels = predict(graph, x)[1], predict(float_graph, x)[1]
    assert result["n"] == 120 and result["float32_graph_agreement"] == float(np.mean(labels == float_labels))
    assert result["float32_graph_agreement"] >= 0.95  # only signs within a rounding of their threshold may differ

    cli_ok(*argv)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"exported {len(graph.ops)} ops to {q32}; on 120 test images the graph agrees")
    assert line.endswith(
        f"(real stream in fixed point, F = {result['q32_fraction']}; labels agree with the float32 graph on "
        f"{result['float32_graph_agreement']:.2%})"
    )
    # and the C runs the twin of a trained model bit for bit
    cli_ok("run", q32, "--runtime", "c", "--limit", 40, "--json")
    run = json.loads(capsys.readouterr().out)
    assert run["bit_exact"] and run["agreement"] == 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "onnx"], "error: --real is for the integer graph; the ONNX file is the float model itself\n"),
        (["--calibration", "0"], "error: --calibration must be 1..60000 images, got 0\n"),
    ],
)
def test_export_real_fixed_refuses_a_bad_combination_in_one_line(residual_run, tmp_path, capsys, extra, message):
    # (every trained model's graph has a float32 stream, its score affine at least, so `to_fixed`'s
    # refusal of a graph without one is tested on a graph built in Python: tests/test_fixed.py)
    assert main(["export", str(residual_run), "-o", str(tmp_path / "q.bnn"), "--real", "fixed", *extra]) == 2
    assert capsys.readouterr().err == message
    assert not (tmp_path / "q.bnn").exists()


@pytest.mark.slow
def test_import_flag_loads_a_users_models_for_every_command(tmp_path):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        from torch import nn
        import bnnkit
        from bnnkit.models.layers import Layers

        @bnnkit.register_model()
        def pixel_mlp(num_classes, in_shape, recipe, *, width=16):
            layers = Layers(recipe)
            return nn.Sequential(nn.Flatten(), layers.first_linear(64, width), *layers.norm(width, dims=1),
                                 layers.classifier(width, num_classes))
    """)
    )
    env = user_env(tmp_path)  # `bnnkit` as the console script runs it: the current directory is not on sys.path

    def bnnkit_(*args, rc=0):
        proc = subprocess.run(
            ["bnnkit", *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == rc, proc.stderr
        return proc

    trained = json.loads(
        bnnkit_(
            "--import",
            "my_models",
            "train",
            "--model",
            "pixel_mlp",
            "--dataset",
            "digits",
            "--recipe",
            "embedded",
            "--epochs",
            "1",
            "--out",
            "run",
            "--json",
        ).stdout
    )
    evaluated = json.loads(bnnkit_("eval", "run", "--json", "--import", "my_models").stdout)
    assert evaluated["model"] == "pixel_mlp" and evaluated["accuracy"] == trained["test_acc"]
    bnnkit_("export", "run", "-o", "m.bnn", "--import", "my_models")
    assert "pixel_mlp" in json.loads(bnnkit_("models", "--import", "my_models", "--json").stdout)["models"]
    forgotten = bnnkit_("eval", "run", rc=2).stderr
    assert "unknown model 'pixel_mlp'" in forgotten and "bnnkit --import MODULE" in forgotten
    missing = bnnkit_("--import", "not_my_models", "models", rc=2).stderr
    assert missing == (
        "error: --import not_my_models: no module named 'not_my_models' (run from its directory or set PYTHONPATH)\n"
    )


def test_a_closed_pipe_ends_quietly():
    """`bnnkit methods --json | head -c 10`: the reader leaves before the writer is done."""
    read, write = os.pipe()
    os.close(read)  # every write now fails with EPIPE, as after head exits
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bnnkit", "methods", "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (1, "")


def test_dataset_and_preset_names_take_either_spelling(capsys):
    from bnnkit.data import get_info
    from bnnkit.review import load_grid

    assert main(["summary", "--model", "ebnn_cnn", "--dataset", "fashion-mnist", "--json"]) == 0
    hyphen = json.loads(capsys.readouterr().out)
    assert main(["summary", "--model", "ebnn_cnn", "--dataset", "fashion_mnist", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == hyphen and hyphen["dataset"] == "fashion_mnist"
    assert get_info("fashion-mnist") is get_info("fashion_mnist")
    assert [r.key for r in load_grid("fashion_mnist").runs] == [r.key for r in load_grid("fashion-mnist").runs]


def test_cortex_m_run_reports_its_phases_and_both_energy_models(digits_graph):
    pytest.importorskip("bnnkit.runtime.cortex_m").require_toolchain()
    _, graph = digits_graph
    proc = run_cli("run", graph, "--runtime", "cortex-m4", "--limit", "20")
    phases = [line for line in proc.stderr.splitlines() if line.startswith("cortex-m4: ")]
    assert phases == [
        "cortex-m4: cross-compiling ...",
        phases[1],
        "cortex-m4: 20 images in QEMU mps2-an386 ...",
        phases[3],
        "cortex-m4: counting instructions on 20 images ...",
        phases[5],
    ]
    assert all(re.fullmatch(r"cortex-m4: .*: done in \d+\.\d s", line) for line in phases[1::2])
    energy = [line for line in proc.stdout.splitlines() if line.startswith(("energy, ", "the MCU"))]
    assert [line.split(":")[0].split(" is ")[0] for line in energy] == [
        "energy, 45 nm op model",
        "energy, MCU datasheet model",
        "the MCU datasheet model",
    ]


def test_the_two_energy_figures_and_the_factor_between_them():
    from bnnkit.cost import energy
    from bnnkit.runtime.cortex_m import TARGETS, latency_estimate

    op = energy.energy_pj(binary_macs=1_000_000, int_ops=10_000, weight_bytes=4096, activation_bytes=1024)
    device = {**latency_estimate(TARGETS["cortex-m4"], 250_000), "instructions_per_inference": 250_000}
    lines = energy.describe(op, 1_000_000, device)
    pj_per_cycle = 79 * 3.0  # the STM32L412 datasheet: 79 µA/MHz at 3.0 V
    assert lines[1].startswith(
        f"energy, MCU datasheet model: {250_000 * pj_per_cycle / 1e6:,.1f} µJ per inference = "
        f"250,000 cycles (1 per instruction) × 237 pJ per cycle, STM32L412xx datasheet"
    )
    assert lines[2] == (
        f"the MCU datasheet model is {250_000 * pj_per_cycle / op['total_pj']:,.0f}x the 45 nm op "
        "model: 237 pJ per instruction against 0.1 pJ per 32-bit add and 0.022 pJ per binary MAC (the "
        "datapath alone), and 0.25 instructions per binary MAC on the STM32L412 (counting every "
        "instruction, loops and integer layers included) where the op model counts 1/32 of an "
        "XNOR-popcount-add"
    )
    assert energy.describe(op, 1_000_000, latency_estimate(TARGETS["cortex-m3"], 1e6)) == lines[:1]  # no datasheet
