import json
import subprocess
import sys

import pytest

from bnnkit.cli import main


def run_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "bnnkit", *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_train_then_eval_json(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--model", "binarynet_mlp", "--dataset", "digits", "--epochs", "2", "--out", out,
                   "--option", "width=64", "--batch-size", "64", "--json")
    trained = json.loads(proc.stdout)
    assert 0.5 < trained["test_acc"] <= 1.0
    evaluated = json.loads(run_cli("eval", out, "--json").stdout)
    assert evaluated["n"] == 355 and evaluated["accuracy"] == trained["test_acc"]


def test_summary_json_totals_match_layers():
    result = json.loads(run_cli("summary", "--model", "small_cnn", "--dataset", "fashion_mnist", "--json").stdout)
    layers = result["layers"]
    assert result["totals"]["binary_macs"] == sum(l["binary_macs"] for l in layers) > 0
    assert result["totals"]["params"] == sum(l["params"] for l in layers)


def test_listings():
    assert "resnet20" in json.loads(run_cli("models", "--json").stdout)["models"]
    assert "mnist5k" in json.loads(run_cli("datasets", "--json").stdout)["datasets"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "nope", "--dataset", "digits", "--out", "X"], "unknown model 'nope'"),
        (["train", "--model", "ebnn_cnn", "--dataset", "imagenet", "--out", "X"], "imagenet"),
        (["train", "--model", "ebnn_cnn", "--dataset", "digits", "--out", "X", "--epochs", "0"], "--epochs must be >= 1"),
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
