import pytest
import torch
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.models import create_model, model_names, model_options
from bnnkit.nn import BinaryConv2d, BinaryLinear, InputNorm
from bnnkit.recipe import BASELINE

SHAPES = {
    "binarynet_mlp": (1, 28, 28),
    "ebnn_cnn": (1, 28, 28),
    "small_cnn": (1, 28, 28),
    "vgg_small": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "resnet18": (3, 32, 32),
}


def test_registry_has_the_required_architectures():
    assert set(SHAPES) <= set(model_names())


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_forward_and_backward(name):
    torch.manual_seed(0)
    options = {"width_mult": 0.25} if "width_mult" in model_options(name) else {}
    model = create_model(name, 7, SHAPES[name], **options)
    x = torch.rand(3, *SHAPES[name])
    out = model(x)
    assert out.shape == (3, 7)
    out.sum().backward()
    binary = [m for m in model.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    assert binary, "a binary network must have binary layers"
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in binary)


def _weights(model, kinds):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, kinds))


def test_resnet20_weight_count_matches_the_architecture():
    model = create_model("resnet20", 10, (3, 32, 32))
    # stem 3x3x3x16; 6 convs 16->16; 32-wide stage: 16->32 then 5 x 32->32; 64-wide likewise;
    # two binary 1x1 downsampling shortcuts; the FP classifier 64->10.
    expected = 3 * 16 * 9 + 6 * 16 * 16 * 9 + (16 * 32 * 9 + 5 * 32 * 32 * 9) + (32 * 64 * 9 + 5 * 64 * 64 * 9)
    expected += 16 * 32 + 32 * 64
    assert _weights(model, nn.Conv2d) == expected
    assert _weights(model, nn.Linear) == 64 * 10
    # Everything but the stem and the classifier is binary.
    assert _weights(model, (BinaryConv2d,)) == expected - 3 * 16 * 9


def test_resnet18_weight_count():
    model = create_model("resnet18", 100, (3, 32, 32))
    widths = [64, 128, 256, 512]
    expected = 3 * 64 * 9
    cin = 64
    for w in widths:
        expected += cin * w * 9 + 3 * w * w * 9 + (cin * w if cin != w else 0)
        cin = w
    assert _weights(model, nn.Conv2d) == expected
    assert _weights(model, nn.Linear) == 512 * 100


def test_small_cnn_layout():
    model = create_model("small_cnn", 10, (1, 28, 28), width=8, hidden=16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [type(c) for c in convs] == [nn.Conv2d, BinaryConv2d, BinaryConv2d, BinaryConv2d]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16 * 7 * 7, 16), (16, 10)]
    assert type(linears[0]) is BinaryLinear and type(linears[1]) is nn.Linear


def test_first_and_last_layer_precision_is_switchable():
    recipe = BASELINE.with_(fp_first_layer=False, fp_last_layer=False)
    model = create_model("ebnn_cnn", 10, (1, 28, 28), recipe)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(first, BinaryConv2d) and first.input_quantizer is None and first.kernel_quantizer is not None
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert isinstance(last, BinaryLinear) and last.input_quantizer is not None
    assert isinstance(list(model.modules())[-1], nn.BatchNorm1d)


def test_hidden_activations_are_binary():
    model = create_model("small_cnn", 10, (1, 28, 28), width=4, hidden=8).eval()
    seen = []
    for m in model.modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.input_quantizer is not None:
            m.input_quantizer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model(torch.randn(2, 1, 28, 28))
    assert len(seen) == 4
    assert all(set(t.unique().tolist()) <= {-1.0, 1.0} for t in seen)


def test_normalize_prepends_input_norm_to_a_full_precision_first_layer_only():
    model = create_model("binarynet_mlp", 10, (1, 4, 4), normalize=((0.5,), (0.25,)), width=8, depth=1)
    assert isinstance(model.norm, InputNorm)
    x = torch.rand(2, 1, 4, 4)
    model.eval()
    torch.testing.assert_close(model(x), model.net((x - 0.5) / 0.25))
    binary_first = create_model("binarynet_mlp", 10, (1, 4, 4), "embedded", normalize=((0.5,), (0.25,)), width=8)
    assert not any(isinstance(m, InputNorm) for m in binary_first.modules())
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(binary_first.norm(pixels.float() / 255), pixels.float())  # exact integers back


def test_bad_names_and_options():
    with pytest.raises(BnnkitError, match="unknown model 'resnet21'.*resnet20"):
        create_model("resnet21", 10, (3, 32, 32))
    with pytest.raises(BnnkitError, match="no option.*depth.*width_mult"):
        create_model("resnet20", 10, (3, 32, 32), depth=3)
    with pytest.raises(BnnkitError, match="too small"):
        create_model("vgg_small", 10, (3, 4, 4))
    with pytest.raises(BnnkitError, match="num_classes"):
        create_model("ebnn_cnn", 1, (1, 28, 28))


def test_recipe_width_mult_multiplies_every_hidden_width_and_the_model_option():
    wide = BASELINE.with_(width_mult=1.5)
    mlp = create_model("binarynet_mlp", 10, (1, 4, 4), wide, width=10, depth=2)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [15, 15, 10]
    cnn = create_model("small_cnn", 10, (1, 8, 8), wide, width=4, hidden=8)
    assert [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv2d)] == [6, 6, 12, 12]
    resnet = create_model("resnet20", 10, (3, 8, 8), wide, width_mult=0.5)
    assert resnet.stem[0].out_channels == 12  # 16 × 0.5 × 1.5
    vgg = create_model("vgg_small", 10, (3, 32, 32), BASELINE.with_(width_mult=0.01), width_mult=0.5)
    assert [m.out_channels for m in vgg.modules() if isinstance(m, nn.Conv2d)] == [1, 1, 1, 1, 3, 3]  # >= 1


def test_a_model_carries_its_recipe_and_the_baseline_keeps_its_parameter_names():
    recipe = BASELINE.with_(name="mine", activation="prelu")
    assert create_model("ebnn_cnn", 10, (1, 8, 8), recipe).recipe is recipe
    assert create_model("ebnn_cnn", 10, (1, 8, 8), "embedded").recipe.name == "embedded"
    names = set(create_model("resnet20", 10, (3, 8, 8), width_mult=0.25).state_dict())
    assert {"blocks.0.conv1.weight", "blocks.0.bn1.weight", "blocks.3.shortcut.0.weight"} <= names


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"learnable_threshold": True, "input_quantizer": "none"}, 'learnable_threshold .* input_quantizer is "none"'),
        ({"weight_norm": "standardize", "kernel_quantizer": "none"}, 'weight_norm = "standardize" .* kernel_quantizer'),
    ],
)
def test_a_method_that_wraps_a_binarizer_refuses_none(changes, message):
    # Found by mypy: both built their wrapper around None and failed with an AttributeError.
    with pytest.raises(BnnkitError, match=rf"^recipe 'x': {message}"):
        create_model("small_cnn", 10, (1, 8, 8), BASELINE.with_(name="x", **changes), width=4, hidden=8)


def test_bn_sign_pool_with_full_precision_activations_is_bn_then_pool():
    # Found by mypy: the missing quantizer went into the model as a None module, which
    # failed at the first forward. A fresh BatchNorm in eval mode is increasing, so BN then
    # pool gives exactly what pool then BN gives.
    models = []
    for order in ("bn_sign_pool", "pool_bn_sign"):
        torch.manual_seed(0)
        recipe = BASELINE.with_(input_quantizer="none", pool_order=order)
        models.append(create_model("small_cnn", 10, (1, 8, 8), recipe, width=4, hidden=8).eval())
    assert not any(m is None for m in models[0].modules())
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(models[0](x), models[1](x))


def test_a_bi_real_block_still_casts_with_double():
    # Found by mypy: the block stored its residual choice as ``self.double``, which hid
    # nn.Module.double(), so ``block.double()`` raised "'bool' object is not callable".
    model = create_model("resnet20", 10, (3, 8, 8), BASELINE.with_(residual="double"), width_mult=0.25)
    block = model.blocks[0]
    assert block.residual_adds == 2
    assert all(p.dtype == torch.float64 for p in block.double().parameters())
