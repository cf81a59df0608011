"""Exporter: module vs graph, bit for bit on every binary activation, on random models
whose BatchNorms hold realistic statistics plus the awkward cases (γ < 0, γ = 0)."""

import numpy as np
import pytest
import torch
from helpers.exactness import DIGITS, EMBEDDED, calibrated, check_exact

from bnnkit.analysis.agreement import compare
from bnnkit.errors import BnnkitError
from bnnkit.export import export_model
from bnnkit.graph import INT32_MIN
from bnnkit.models import create_model
from bnnkit.nn import LearnableThreshold
from bnnkit.quant import get_quantizer


@pytest.mark.parametrize(
    "name, options, changes",
    [
        ("ebnn_cnn", {"channels": [7, 12]}, {}),
        ("ebnn_cnn", {"channels": [5, 9], "kernel": 5}, {"weight_scale": "mean_abs"}),
        ("small_cnn", {"width": 6, "hidden": 20}, {"pad_value": -1.0}),
        ("small_cnn", {"width": 5, "hidden": 33}, {"pad_value": 1.0, "weight_scale": "learned"}),
        ("binarynet_mlp", {"width": 40, "depth": 2}, {"input_quantizer": "approx_sign"}),
        ("vgg_small", {"width_mult": 0.05}, {"kernel_quantizer": "ste_sign"}),
    ],
)
def test_graph_reproduces_every_sign(name, options, changes):
    torch.manual_seed(0)
    in_shape = (3, 32, 32) if name == "vgg_small" else DIGITS.info.in_shape
    x = DIGITS.x if name != "vgg_small" else np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    model = calibrated(create_model(name, 10, in_shape, EMBEDDED.with_(**changes), **options), x)
    graph = check_exact(model, x)
    kinds = [op.kind for op in graph.ops if op.kind != "flatten"]
    assert kinds[0] in ("input_conv2d", "input_dense") and kinds[-2:] == ["affine", "argmax"]
    assert "threshold" in kinds and graph.types[graph.ops[-3].output][0] == "i32"  # binary up to the scores


def test_negative_gamma_after_pool_becomes_min_pool():
    torch.manual_seed(1)
    model = calibrated(create_model("ebnn_cnn", 10, (1, 8, 8), EMBEDDED, channels=[16, 8]), DIGITS.x, seed=3)
    bn = model.net[2]
    with torch.no_grad():
        bn.weight[:8] = -bn.weight[:8].abs() - 0.1
        bn.weight[8:] = bn.weight[8:].abs() + 0.1
        bn.weight[3] = 0.0
    graph = check_exact(model, DIGITS.x)
    pool = next(op for op in graph.ops if op.kind == "maxpool")
    assert pool.params["min_channels"][:8].tolist() == [True] * 3 + [False] + [True] * 4  # γ=0: constant, either way
    assert not pool.params["min_channels"][8:].any()
    thr = next(op for op in graph.ops if op.kind == "threshold")
    assert thr.params["flip"][[0, 1, 2, 4]].all() and not thr.params["flip"][8:].any()
    assert thr.params["thresh"][3] == INT32_MIN


def test_pool_after_sign_pools_the_signs_whatever_gamma():
    """conv → BN → sign → pool: the max of ±1 is an OR of bits even where γ < 0 flips the
    threshold, so no min-pool is needed (unlike conv → pool → BN)."""
    torch.manual_seed(4)
    recipe = EMBEDDED.with_(pool_order="bn_sign_pool")
    model = calibrated(create_model("ebnn_cnn", 10, (1, 8, 8), recipe, channels=[8, 8]), DIGITS.x, seed=6)
    with torch.no_grad():
        model.net[1].weight[:4] = -model.net[1].weight[:4].abs() - 0.1
    graph = check_exact(model, DIGITS.x)
    kinds = [op.kind for op in graph.ops]
    assert kinds[:5] == ["input_conv2d", "threshold", "maxpool", "binary_conv2d", "threshold"]
    assert graph.ops[1].params["flip"][:4].all()
    assert all("min_channels" not in op.params for op in graph.ops if op.kind == "maxpool")


def test_refuses_a_layer_that_would_binarize_bits_differently():
    recipe = EMBEDDED.with_(pool_order="bn_sign_pool")
    model = calibrated(create_model("ebnn_cnn", 10, (1, 8, 8), recipe, channels=[4, 4]), DIGITS.x)
    model.net[4].input_quantizer = LearnableThreshold(4, get_quantizer("ste_sign"))
    with torch.no_grad():
        model.net[4].input_quantizer.shift.fill_(1.5)  # sign(±1 − 1.5) = −1: not the bits it gets
    with pytest.raises(BnnkitError, match="'net.4'.*does not pass ±1 through unchanged"):
        export_model(model, (1, 8, 8))


def test_refuses_a_later_layer_without_input_quantizer():
    """Its input is a chain's float values: nothing binarizes them (was a TypeError calling None)."""
    model = calibrated(create_model("ebnn_cnn", 10, (1, 8, 8), EMBEDDED, channels=[4, 4]), DIGITS.x)
    model.net[3].input_quantizer = None
    with pytest.raises(
        BnnkitError, match="layer 'net.3': a layer without an input quantizer is only exported as the first"
    ):
        export_model(model, (1, 8, 8))


def test_thresholds_match_bn_algebra():
    """Independent check: the threshold is where γ(a·1 − μ)/σ + β crosses 0, by algebra."""
    torch.manual_seed(2)
    model = calibrated(create_model("binarynet_mlp", 10, (1, 8, 8), EMBEDDED, width=24, depth=2), DIGITS.x, seed=5)
    graph = export_model(model, (1, 8, 8))
    bn = model.net[4]  # after the second (binary) linear, 24 inputs: sums are even, in [-24, 24]
    thr = [op for op in graph.ops if op.kind == "threshold"][1]
    a = np.arange(-24, 25, 2)[:, None]
    with torch.no_grad():
        sigma = torch.sqrt(bn.running_var.double() + bn.eps).numpy()
        y = (a - bn.running_mean.double().numpy()) / sigma * bn.weight.double().numpy() + bn.bias.double().numpy()
    t, flip = thr.params["thresh"].astype(np.int64), thr.params["flip"]
    ours = np.where(flip, a <= t, a >= t)
    assert (y >= 0).any() and (y < 0).any() and flip.any()
    np.testing.assert_array_equal(ours, y >= 0)


def test_refuses_full_precision_first_layer():
    model = create_model("small_cnn", 10, (1, 28, 28), "baseline")
    with pytest.raises(BnnkitError, match="layer '0'.*--recipe embedded"):
        export_model(model, (1, 28, 28))


def test_residual_blocks_export_through_the_real_valued_path():
    """(tests/test_export_residual.py checks those graphs against their modules.)"""
    graph = export_model(create_model("resnet20", 10, (3, 32, 32), EMBEDDED, width_mult=0.25), (3, 32, 32))
    assert {"add", "sign", "threshold", "meanpool"} <= {op.kind for op in graph.ops}


def test_refuses_scaled_kernel_quantizer():
    model = create_model("ebnn_cnn", 10, (1, 8, 8), EMBEDDED.with_(kernel_quantizer="magnitude_aware_sign"))
    with pytest.raises(BnnkitError, match="scales the weights inside the product; use weight_scale"):
        export_model(model, (1, 8, 8))


def test_full_precision_classifier_only_with_allow_approx():
    torch.manual_seed(3)
    recipe = EMBEDDED.with_(fp_last_layer=True)
    model = calibrated(create_model("ebnn_cnn", 10, (1, 8, 8), recipe, channels=[8, 16]), DIGITS.x)
    with pytest.raises(BnnkitError, match="Linear has no exact integer form.*--allow-approx"):
        export_model(model, (1, 8, 8))
    graph = export_model(model, (1, 8, 8), allow_approx=True)
    assert graph.meta["approximations"] and "classifier" in graph.meta["approximations"][0]
    result = compare(model, graph, DIGITS.x)
    assert all(v == 1.0 for v in result["sign_agreement"].values())  # everything before the classifier is exact
    assert 0.0 <= result["top1_agreement"] <= 1.0
