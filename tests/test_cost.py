import torch
from torch import nn

from bnnkit.cost import format_table, layer_costs, totals
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
