"""The bfloat16 forward of binary convolutions (bnnkit.nn.bf16) against float32 F.conv2d."""

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from bnnkit.errors import BnnkitError
from bnnkit.nn import BinaryConv2d, BinaryLinear, LearnableThreshold, bf16, set_weight_binarization
from bnnkit.quant import get_quantizer, quantizer_names
from bnnkit.quant.sign import ClippedSteSign
from bnnkit.recipe import BASELINE
from bnnkit.runtime import fast
from bnnkit.training import RunConfig, TrainOptions, train


@pytest.fixture
def bf16_calls(monkeypatch):
    """Take the bfloat16 path whatever this CPU has, and count the convolutions it runs."""
    calls = []

    def counting(forward):
        def counted(*args):
            calls.append(args[1].shape)
            return forward(*args)

        return counted

    monkeypatch.setattr(bf16, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(bf16, "_forward", counting(bf16._forward))
    monkeypatch.setattr(bf16, "_linear_forward", counting(bf16._linear_forward))
    return calls


def signs(*shape, generator, p_plus=0.5):
    return torch.where(torch.rand(*shape, generator=generator) < p_plus, 1.0, -1.0)


@pytest.mark.parametrize(
    ("cin", "kernel"),
    [(1, 3), (28, 3), (29, 3), (56, 3), (57, 3), (58, 3), (60, 3), (64, 3), (113, 3), (116, 3), (120, 3), (256, 1)],
)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_forward_parts_is_exactly_where_the_worst_sums_survive_the_rounding(cin, kernel, layout):
    # All ones: every interior output is the largest sum, cin·k², and the border ones each
    # smaller count of whole taps; one -1 more makes the next largest, cin·k² - 2; random
    # signs leaning to +1 give the sums in between. Beyond one product's bound _forward sums
    # two halves of the input channels, exact where each half is (forward_parts 2); or, on
    # a channels-last map, the host kernels' XNOR-popcount sums.
    gen = torch.Generator().manual_seed(cin)
    ones, flipped = torch.ones(2, cin, 6, 6), torch.ones(2, cin, 6, 6)
    flipped[0, 0, 2, 2] = -1.0
    cases = [(ones, torch.ones(3, cin, kernel, kernel)), (flipped, torch.ones(3, cin, kernel, kernel))]
    cases += [
        (signs(2, cin, 6, 6, generator=gen, p_plus=0.97), signs(3, cin, kernel, kernel, generator=gen))
        for _ in range(4)
    ]
    cases = [(x.contiguous(memory_format=layout), w) for x, w in cases]
    agree = [
        torch.equal(bf16._forward(x, w, 1, kernel // 2, 1, 1), F.conv2d(x, w, None, 1, kernel // 2)) for x, w in cases
    ]
    parts = bf16.forward_parts(cin, kernel * kernel, 1)
    popcounts = bf16._popcounts(cases[0][0], kernel // 2, 1)
    assert popcounts == (layout == torch.channels_last or cin == 1) or not fast.builds()
    assert (parts == 1) == bf16.exact_in_bf16(cin, kernel * kernel)
    if parts or popcounts:  # within the bound; or the popcount's integer sums, exact beyond it
        assert all(agree)
    else:  # the bound is tight: one of the two largest sums is already rounded
        assert not (agree[0] and agree[1])


@pytest.mark.skipif(not fast.builds(), reason="no C compiler")
@pytest.mark.parametrize(
    ("cin", "kernel", "stride", "padding", "cout"),
    [(64, 3, 1, 1, 64), (64, 3, 2, 1, 128), (60, 3, 1, 0, 33), (96, 3, 2, 2, 16), (600, 1, 1, 0, 8), (64, 3, 1, 1, 7)],
)
def test_the_popcount_forward_is_the_float32_convolution(cin, kernel, stride, padding, cout):
    """Channels that fill a word or not, strides, zero padding wider than a tap, output counts off
    the kernels' block: the XNOR-popcount sums against PyTorch's float32 product."""
    gen = torch.Generator().manual_seed(cin + cout)
    x = signs(5, cin, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
    w = signs(cout, cin, kernel, kernel, generator=gen)
    assert bf16.forward_parts(cin, kernel * kernel, 1) == 2 and bf16._popcounts(x, padding, 1)
    out = bf16._forward(x, w, stride, padding, 1, 1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, F.conv2d(x, w, None, stride, padding))
    with pytest.raises(BnnkitError, match="bfloat16 bits"):
        fast.binary_conv_sums(x.permute(0, 2, 3, 1).numpy(), (w > 0).numpy(), (1, 1), (1, 1))
    with pytest.raises(BnnkitError, match="kernel"):
        fast.binary_conv_sums(bf16.numpy_view(x.bfloat16().permute(0, 2, 3, 1)), w.numpy(), (1, 1), (1, 1))


@pytest.mark.parametrize("features", [255, 256, 257, 510, 512, 514])
def test_a_linear_layer_is_exact_up_to_the_same_bound(features):
    ones, flipped = torch.ones(3, features), torch.ones(3, features)
    flipped[0, 0] = -1.0
    w = torch.ones(4, features)
    agree = [torch.equal(bf16._linear_forward(x, w), F.linear(x, w)) for x in (ones, flipped)]
    assert all(agree) == bf16.exact_in_bf16(features, 1)


def run(monkeypatch, layer, x0, enabled):
    """The layer's forward and backward on ``x0`` with the bf16 path on or off: output, input and weight
    gradients, and the output's strides (its memory layout)."""
    monkeypatch.setattr(bf16, "enabled", enabled)
    layer.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_()
    out = layer(x)
    (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), x.grad, layer.weight.grad, out.stride()


def assert_same_bits(fast, plain):
    for a, b in zip(fast, plain, strict=True):
        assert a == b if isinstance(a, tuple) else torch.equal(a, b)


def test_linear_forward_and_gradients_are_the_bits_of_float32(bf16_calls, monkeypatch):
    torch.manual_seed(0)
    layer = BinaryLinear(512, 64)
    x0 = torch.randn(16, 512)
    results = [run(monkeypatch, layer, x0, enabled) for enabled in (True, False)]
    assert len(bf16_calls) == 1
    assert_same_bits(*results)


@pytest.mark.parametrize(
    ("cin", "pad_value", "stride", "groups", "channels_last"),
    [
        (32, 0.0, 1, 1, True),
        (32, 0.0, 2, 1, False),
        (32, -1.0, 1, 2, True),
        (32, 1.0, 1, 1, False),
        (64, 0.0, 1, 1, True),  # 576 products: two halves of 288, added in float32
        (64, 0.0, 2, 1, False),
        (64, -1.0, 1, 1, True),
    ],
)
def test_forward_and_gradients_are_the_bits_of_float32(
    bf16_calls, monkeypatch, cin, pad_value, stride, groups, channels_last
):
    torch.manual_seed(0)
    conv = BinaryConv2d(cin, 16, 3, stride=stride, padding=1, pad_value=pad_value, groups=groups)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv = conv.to(memory_format=layout)
    x0 = torch.randn(4, cin, 9, 9)
    x0.view(-1)[::11] = 0.0  # exact zeros binarize to +1 in both paths
    x0 = x0.contiguous(memory_format=layout)
    results = [run(monkeypatch, conv, x0, enabled) for enabled in (True, False)]
    assert len(bf16_calls) == 1
    assert_same_bits(*results)


def test_the_sum_of_two_halves_is_exact_in_every_layout_pairing():
    # The host kernel where both halves share a dense layout, PyTorch's ops where they do not.
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randint(-512, 513, (3, 16, 5, 5), generator=gen).float().bfloat16() for _ in "ab")
    expected = a.float() + b.float()
    last = torch.channels_last
    transposed = b.mT.contiguous().mT  # b's values, other strides
    for left, right in [(a, b), (a.contiguous(memory_format=last), b.contiguous(memory_format=last)), (a, transposed)]:
        total = bf16._sum(left, right)
        assert total.dtype == torch.float32 and torch.equal(total, expected)
        assert total.stride() == left.stride()


def test_only_products_of_two_sign_operands_take_the_bf16_path(bf16_calls):
    x = torch.randn(2, 8, 5, 5)
    BinaryConv2d(8, 4, 3, padding=1)(x)
    BinaryConv2d(8, 4, 3, input_quantizer=LearnableThreshold(8, get_quantizer("ste_sign")))(x)
    assert len(bf16_calls) == 2
    BinaryConv2d(8, 4, 3, kernel_quantizer="magnitude_aware_sign")(x)  # ±α, not ±1
    BinaryConv2d(8, 4, 3, input_quantizer=None)(x)  # real input
    BinaryConv2d(8, 4, 3, input_quantizer="ste_sign", kernel_quantizer="dorefa")(x)
    BinaryConv2d(58, 4, 3)(torch.randn(2, 58, 5, 5))  # 522 products, halves of 261: not exact
    two_stage = BinaryConv2d(8, 4, 3)
    set_weight_binarization(two_stage, False)  # real weights in the first stage
    two_stage(x)
    BinaryLinear(514, 4)(torch.randn(2, 514))  # 514 products: not exact
    BinaryLinear(8, 4)(torch.randn(2, 3, 8))  # not one row per sample
    BinaryLinear(8, 4)(torch.randn(8, 2).t())  # column-major input
    assert len(bf16_calls) == 2


def test_every_quantizer_that_claims_signs_outputs_exactly_plus_or_minus_one():
    x = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 0.3, -0.3, 1.0, -1.0, 7.0, -7.0, float("inf"), -float("inf")])
    claiming = [name for name in quantizer_names() if get_quantizer(name).signs]
    assert {"ste_sign", "clipped_ste_sign"} <= set(claiming)
    assert not get_quantizer("magnitude_aware_sign").signs  # ±mean|w|
    for name in claiming:
        q = get_quantizer(name)
        q.fit_(x.view(1, -1))
        assert set(q(x.view(1, -1)).flatten().tolist()) <= {-1.0, 1.0}, name


def test_a_subclass_with_a_forward_of_its_own_loses_signs_unless_it_says_so(bf16_calls):
    class Halved(ClippedSteSign):
        def forward(self, x):
            return super().forward(x) / 2

    class Declared(ClippedSteSign):
        signs = True

        def forward(self, x):
            return super().forward(x)

    assert not Halved.signs and Declared.signs
    x = torch.randn(2, 8, 5, 5)
    halved = BinaryConv2d(8, 4, 3, input_quantizer=Halved())
    assert torch.equal(halved(x), F.conv2d(ClippedSteSign()(x) / 2, ClippedSteSign()(halved.weight)))
    assert not bf16_calls
    BinaryConv2d(8, 4, 3, input_quantizer=Declared())(x)
    assert len(bf16_calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "options"), [("ebnn_cnn", {}), ("binarynet_mlp", {"width": 64, "depth": 2}), ("resnet20", {})]
)
def test_training_is_the_same_bits_with_and_without_bf16(bf16_calls, monkeypatch, tmp_path, model, options):
    recipe = BASELINE.with_(batch_size=32)
    config = RunConfig(model=model, dataset="digits", epochs=1, seed=5, recipe=recipe, model_options=options)
    # one thread for both: the default follows the load, and float sums differ between thread counts
    options = TrainOptions(progress=False, limit_train=256, limit_test=64, threads=1, grad_precision="float32")
    weights = []
    for enabled in (True, False):
        monkeypatch.setattr(bf16, "enabled", enabled)
        train(config, tmp_path / str(enabled), options)
        weights.append(safetensors.torch.load_file(tmp_path / str(enabled) / "model.safetensors"))
    # ebnn_cnn's second convolution (16 channels in), the MLP's 64-input layers, ResNet-20's (its last
    # stage's in two halves)
    assert bf16_calls
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def coarse_run(layer, x0, grad_out_of):
    """Input and weight gradients of ``layer`` on ``x0`` for the output gradient ``grad_out_of(out)``,
    in the bfloat16 gradient precision."""
    layer.zero_grad(set_to_none=True)
    x = x0.clone().requires_grad_()
    with bf16.gradient_precision("bfloat16"):
        out = layer(x)
        out.backward(grad_out_of(out))
    return x.grad, layer.weight.grad


def assert_one_bf16_rounding_from(coarse, reference):
    """``coarse`` is ``reference`` rounded once to bfloat16 (relative 2⁻⁸), up to float32 summation order."""
    assert coarse.dtype == torch.float32
    slack = 2.0**-8 * reference.abs() + 1e-5 * reference.abs().max()
    assert torch.all((coarse - reference).abs() <= slack)
    assert not torch.equal(coarse, reference)  # it did take the coarse path


@pytest.mark.parametrize("cin", [16, 64, 120])  # 120: a float32 forward (two halves of 540) still takes it
def test_bf16_gradients_are_float32s_of_the_rounded_output_gradient_rounded_once(bf16_calls, cin):
    torch.manual_seed(1)
    conv = BinaryConv2d(cin, 8, 3, padding=1).to(memory_format=torch.channels_last)
    x0 = torch.randn(4, cin, 7, 7).contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 8, 7, 7)
    coarse = coarse_run(conv, x0, lambda out: g.contiguous(memory_format=torch.channels_last))
    # The reference: float32 autograd fed the output gradient as bfloat16 holds it.
    rounded = g.bfloat16().float()
    x = x0.clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    with bf16.gradient_precision("float32"):
        conv(x).backward(rounded.contiguous(memory_format=torch.channels_last))
    for c, r in zip(coarse, (x.grad, conv.weight.grad), strict=True):
        assert_one_bf16_rounding_from(c, r)
    assert len(bf16_calls) == (0 if cin == 120 else 2)  # the forward in bfloat16 only where exact, both runs


def test_bf16_gradients_of_a_linear_layer(bf16_calls):
    torch.manual_seed(2)
    layer = BinaryLinear(600, 32)  # 600 products: a float32 forward, a coarse backward
    x0, g = torch.randn(8, 600), torch.randn(8, 32)
    coarse = coarse_run(layer, x0, lambda out: g)
    x = x0.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    layer(x).backward(g.bfloat16().float())
    for c, r in zip(coarse, (x.grad, layer.weight.grad), strict=True):
        assert_one_bf16_rounding_from(c, r)
    assert not bf16_calls


def test_bf16_gradients_leave_evaluation_and_unknown_precisions_alone(bf16_calls):
    conv = BinaryConv2d(64, 8, 3)
    x = torch.randn(2, 64, 5, 5)
    with bf16.gradient_precision("bfloat16"), torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(torch.sign(x + (x == 0)), torch.sign(conv.weight)))
    with pytest.raises(ValueError, match="float16"):
        bf16.gradient_precision("float16").__enter__()
    assert bf16.gradients == "float32"
