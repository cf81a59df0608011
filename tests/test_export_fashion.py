"""Models as the CLI trains them, exported and checked on the full Fashion-MNIST test set:
every binary activation equal and 100% top-1 agreement, or the test fails."""

import json
from pathlib import Path

import pytest

from bnnkit.cli import main

needs_fashion = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)


def cli_json(capsys, *args):
    assert main([str(a) for a in args] + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


@needs_fashion
@pytest.mark.parametrize(
    "model, options",
    [
        ("ebnn_cnn", []),
        ("small_cnn", ["--option", "width=16", "--option", "hidden=128"]),
        ("binarynet_mlp", ["--option", "width=256"]),
    ],
)
@pytest.mark.slow
def test_cli_trained_model_exports_exactly(tmp_path, capsys, model, options):
    run = tmp_path / "run"
    cli_json(
        capsys,
        "train",
        "--model",
        model,
        "--dataset",
        "fashion_mnist",
        "--recipe",
        "embedded",
        "--epochs",
        "1",
        "--limit-train",
        "6000",
        "--out",
        run,
        *options,
    )
    result = cli_json(capsys, "export", run, "-o", tmp_path / "m.bnn", "--check", "10000")
    assert result["n"] == 10000
    assert result["sign_agreement"] == 1.0, result["sign_agreement_per_layer"]
    assert result["top1_agreement"] == 1.0
    evaluated = cli_json(capsys, "eval", run)
    ran = cli_json(capsys, "run", tmp_path / "m.bnn", "--runtime", "c")
    assert ran["n"] == 10000 and ran["bit_exact"] and ran["agreement"] == 1.0
    assert ran["accuracy"] == evaluated["accuracy"] > 0.5  # 100% top-1 agreement, so the same accuracy
