import pytest
import torch
from torch import nn

from bnnkit.cost import activation_sizes, energy, format_table, layer_costs, model_costs, totals
from bnnkit.cost.summary import COUNTED
from bnnkit.models import create_model
from bnnkit.recipe import BASELINE


def test_mlp_counts_by_hand():
    model = create_model("binarynet_mlp", 10, (1, 4, 4), width=8, depth=2)
    rows = layer_costs(model, (1, 4, 4))
    by_kind = [(r.kind, r.params, r.binary_params, r.binary_macs, r.fp_macs) for r in rows]
    assert by_kind == [
        ("Linear", 16 * 8, 0, 0, 16 * 8),  # FP first layer
        ("BatchNorm1d", 4 * 8, 0, 0, 8),  # gamma, beta, mean, var; one FMA per unit
        ("BinaryLinear", 64, 64, 64, 0),
        ("BatchNorm1d", 32, 0, 0, 8),
        ("Linear", 8 * 10 + 10, 0, 0, 8 * 10 + 10),  # FP classifier with bias
    ]
    t = totals(rows)
    assert t["binary_macs"] == 64 and t["fp_macs"] == 128 + 8 + 8 + 90
    assert t["memory_bytes"] == (64 + 32 * (128 + 32 + 32 + 90)) / 8
    assert t["fp32_memory_bytes"] == 4 * (128 + 32 + 64 + 32 + 90)


def test_binary_weights_on_real_input_are_not_binary_macs():
    recipe = BASELINE.with_(fp_first_layer=False)
    model = create_model("ebnn_cnn", 10, (1, 4, 4), recipe, channels=(2,))
    conv = layer_costs(model, (1, 4, 4))[0]
    assert conv.kind == "BinaryConv2d" and conv.out_shape == (2, 4, 4)
    assert conv.binary_params == 2 * 9 and conv.binary_macs == 0 and conv.fp_macs == 2 * 4 * 4 * 9


def test_scaled_binary_conv_adds_one_fp_mac_per_output():
    recipe = BASELINE.with_(weight_scale="mean_abs")
    model = create_model("ebnn_cnn", 10, (1, 8, 8), recipe, channels=(2, 3))
    conv = [r for r in layer_costs(model, (1, 8, 8)) if r.kind == "BinaryConv2d"][0]
    assert conv.binary_macs == 3 * 4 * 4 * 2 * 9 and conv.fp_macs == 3 * 4 * 4


def test_table_has_a_row_per_layer_and_totals():
    model = create_model("small_cnn", 10, (1, 28, 28))
    rows = layer_costs(model, (1, 28, 28))
    text = format_table(rows)
    assert text.count("\n") == len(rows) + 4
    assert "total" in text and "float32" in text
    assert model.training, "summarising must not leave the model in eval mode"


def test_summary_leaves_batchnorm_statistics_alone():
    model = create_model("small_cnn", 10, (1, 28, 28))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_costs(model, (1, 28, 28))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model, nn.Module)


def test_activation_sizes_by_hand():
    # mlp on a 4x4 image: the FP first layer reads 16 floats; the BN after it feeds a
    # binary layer, so its 8 outputs are stored as 8 bits; the binary layer's sums are
    # floats; its BN output feeds the FP classifier, so it stays 32-bit.
    model = create_model("binarynet_mlp", 10, (1, 4, 4), width=8, depth=2)
    rows = activation_sizes(model, (1, 4, 4))
    kinds = [type(m).__name__ for _, m in model.named_modules() if isinstance(m, COUNTED)]
    assert kinds == ["Linear", "BatchNorm1d", "BinaryLinear", "BatchNorm1d", "Linear"]
    assert [(i, o) for _, i, o in rows] == [
        (16 * 1, 8 * 4),  # the image is uint8 pixels (flatten is a view of it)
        (8 * 4, 8 / 8),
        (8 / 8, 8 * 4),
        (8 * 4, 8 * 4),
        (8 * 4, 10 * 4),
    ]


def test_model_costs_energy_from_the_cited_constants():
    model = create_model("binarynet_mlp", 10, (1, 4, 4), width=8, depth=2)
    costs = model_costs(model, (1, 4, 4))
    t = totals(layer_costs(model, (1, 4, 4)))
    activations = sum(o for _, _, o in activation_sizes(model, (1, 4, 4)))
    assert costs["binary_macs"] == t["binary_macs"] and costs["model_bytes"] == t["memory_bytes"]
    assert costs["activation_bytes"] == activations
    # the model and its activations fit an 8 KB SRAM: 10 pJ per 64-bit access
    expected = t["binary_macs"] * 0.7 / 32 + t["fp_macs"] * (3.7 + 0.9) + (t["memory_bytes"] + 2 * activations) * 10 / 8
    assert costs["energy_pj"] == pytest.approx(expected)
    assert energy.sram_access_pj(8 * 1024 + 1) == 20.0 and energy.sram_access_pj(10**9) == 100.0


def test_repair_methods_cost_what_they_add():
    shape = (1, 8, 8)

    def row(recipe, kind="BinaryLinear"):
        model = create_model("binarynet_mlp", 10, shape, recipe, width=8, depth=2)
        return next(r for r in layer_costs(model, shape) if r.kind == kind)

    base = row(BASELINE)
    # ABC-Net: 3 weight bases x 2 activation bases = 6 binary products per MAC, summed in FP
    abc = row(BASELINE.with_(weight_bases=3, activation_bases=2))
    assert abc.binary_macs == 6 * base.binary_macs and abc.binary_params == 3 * base.binary_params
    assert abc.fp_macs == 6 * 8 and abc.fp_params == 3 * 8 + 2 * 2  # alpha per base and output; shift, beta
    dorefa = row(BASELINE.with_(activation_bits=2))
    assert dorefa.binary_macs == 2 * base.binary_macs and dorefa.fp_macs == 2 * 8
    prelu = row(BASELINE.with_(activation="prelu"), "PReLU")
    assert prelu.fp_macs == 8 and prelu.params == 8

    def adds(recipe):
        model = create_model("resnet20", 10, (3, 8, 8), recipe, width_mult=0.25)
        return sum(r.fp_macs for r in layer_costs(model, (3, 8, 8)) if r.kind == "BasicBlock")

    # one addition per block output, two with a shortcut around every conv
    per_block_outputs = 3 * (4 * 8 * 8) + 3 * (8 * 4 * 4) + 3 * (16 * 2 * 2)
    assert adds(BASELINE) == per_block_outputs and adds(BASELINE.with_(residual="double")) == 2 * per_block_outputs
