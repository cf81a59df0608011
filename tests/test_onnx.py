"""`bnnkit export --format onnx`: the float model in onnxruntime against PyTorch."""

import json
import sys

import numpy as np
import pytest
import torch

import bnnkit.export.onnx as bnn_onnx
from bnnkit.cli import main
from bnnkit.data import load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.recipe import BASELINE, load_recipe
from bnnkit.training import RunConfig, TrainOptions, load_run, train

_EXTRA = 'the ONNX export is optional: pip install -c constraints.txt -e ".[onnx]"'
pytest.importorskip("onnx", reason=_EXTRA)
ort = pytest.importorskip("onnxruntime", reason=_EXTRA)

RUNS = {
    "mlp": RunConfig(
        model="binarynet_mlp",
        dataset="digits",
        epochs=1,
        seed=1,
        recipe=BASELINE.with_(batch_size=64),
        model_options={"width": 64, "depth": 2},
    ),
    # non-default binarizer, learnable sign thresholds and XNOR weight scaling
    "cnn": RunConfig(
        model="ebnn_cnn",
        dataset="digits",
        epochs=1,
        seed=1,
        recipe=load_recipe("approx_sign+rsign+xnor_weight_scale").with_(batch_size=64),
    ),
}


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    for name, config in RUNS.items():
        train(config, tmp / name, TrainOptions(progress=False, limit_train=640))
    return tmp


@pytest.mark.parametrize("name", RUNS)
def test_onnxruntime_computes_what_pytorch_computes(run_dirs, tmp_path, capsys, name):
    out = tmp_path / f"{name}.onnx"
    assert main(["export", str(run_dirs / name), "--format", "onnx", "-o", str(out), "--check", "100", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert reported["n"] == 100 and reported["top1_agreement"] == 1.0

    # Independently of the exporter's own check: a default onnxruntime session against the module.
    model, config = load_run(run_dirs / name)
    x = load_dataset(config.dataset, "test").x[:200]
    images = x.astype(np.float32) / 255
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images})
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    assert np.array_equal(got.argmax(1), want.argmax(1))
    # The binary layers' sums are exact integers in both runtimes; only the float layers
    # (first and last, BN) accumulate in different orders: float32 rounding of logits of
    # magnitude ~10 over ≤ a few hundred terms stays far below 1e-4 (measured: ≤ 2e-6).
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_disagreement_is_refused_and_nothing_written(run_dirs, tmp_path, monkeypatch):
    real = bnn_onnx.run_onnx

    def shifted(model_bytes, x, optimized=False):
        logits = real(model_bytes, x, optimized)
        return np.roll(logits, 1, axis=1)  # every label moves to the next class

    monkeypatch.setattr(bnn_onnx, "run_onnx", shifted)
    out = tmp_path / "m.onnx"
    with pytest.raises(BnnkitError, match="differ from PyTorch's on 100.00% of 50 test images"):
        bnn_onnx.export_onnx(run_dirs / "mlp", out, check=50)
    assert not out.exists()


def test_bad_run_dir(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx", "-o", str(out)]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not out.exists()


def test_allow_approx_is_refused_for_onnx(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path), "--format", "onnx", "--allow-approx", "-o", str(out)]) == 2
    assert "--allow-approx is for the integer graph" in capsys.readouterr().err
    assert not out.exists()


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(BnnkitError, match=r"pip install bnnkit\[onnx\]"):
        bnn_onnx.export_onnx(tmp_path, tmp_path / "m.onnx")
