"""A binary convolution handing its bfloat16 product straight to the BatchNorm after it, or
through a max-pool (bnnkit.nn.batchnorm.link_bfloat16_maps; host_kernels/batchnorm.c and
maxpool.c on bfloat16 maps): the kernels against the float32 path and PyTorch's cast and pool,
and training steps linked or not, bit for bit."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.training import trained_state

from bnnkit.errors import BnnkitError
from bnnkit.models import create_model
from bnnkit.nn import BatchNorm2d, BinaryConv2d, bf16
from bnnkit.nn.batchnorm import link_bfloat16_maps
from bnnkit.runtime import fast

needs_kernels = pytest.mark.skipif(not fast.batchnorm_fits(64, 8, 1), reason="no AVX2 and FMA, or no C compiler")


def bf16_bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16)


@needs_kernels
@pytest.mark.parametrize(("rows", "channels", "chunks"), [(16 * 7 * 7, 64, 1), (333, 24, 2), (1000, 8, 3)])
def test_a_bfloat16_map_gives_the_float32_results_and_a_gradient_cast_as_pytorch_casts(rows, channels, chunks):
    gen = torch.Generator().manual_seed(rows)
    x16 = (torch.randn(rows, channels, generator=gen) * 40).round().bfloat16()  # a convolution's integer sums
    x32 = x16.float().numpy()
    w, b = (torch.randn(channels, generator=gen).numpy() for _ in "wb")
    grad = torch.randn(rows, channels, generator=gen)
    running = [torch.rand(channels, generator=gen).numpy() for _ in "mv"]
    theirs_running, ours_running = [r.copy() for r in running], [r.copy() for r in running]

    y32, mean, invstd = fast.batchnorm_forward(x32, w, b, tuple(theirs_running), 0.1, 1e-5, chunks)
    y16, mean16, invstd16 = fast.batchnorm_forward(bf16_bits(x16), w, b, tuple(ours_running), 0.1, 1e-5, chunks)
    for theirs, ours in [(y32, y16), (mean, mean16), (invstd, invstd16), *zip(theirs_running, ours_running)]:
        assert np.array_equal(theirs, ours)

    dx32, dw32, db32 = fast.batchnorm_backward(x32, grad.numpy(), mean, invstd, w, chunks)
    dx16, dw16, db16 = fast.batchnorm_backward(bf16_bits(x16), grad.numpy(), mean, invstd, w, chunks)
    assert dx16 is not None and dx16.dtype == np.uint16 and dx32 is not None
    assert np.array_equal(dx16, bf16_bits(torch.from_numpy(dx32).bfloat16()))
    assert np.array_equal(dw16, dw32) and np.array_equal(db16, db32)


@needs_kernels
def test_the_gradient_is_rounded_as_pytorch_rounds_ties_overflow_subnormals_and_nan():
    """With x at its mean, invstd and the weight 1 and a gradient whose rows cancel in pairs,
    the input gradient is the gradient itself: so the kernel rounds chosen values."""
    special = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2**-126 + 2**-140, 1e-39, 3.389e38, 3.3961e38, 3.4e38, 0.0]
    special += [float(v) for v in torch.randn(23, generator=torch.Generator().manual_seed(0))]
    column = torch.tensor(special).repeat_interleave(2)  # v, then -v: each pair sums to exactly 0
    column[1::2] *= -1
    grad = torch.stack([column] * 15 + [column.clone().fill_(math.nan)], 1).contiguous()  # 16 channels
    rows, c = grad.shape
    x = np.full((rows, c), 5.0, np.float32)
    mean, invstd, w = np.full(c, 5.0, np.float32), np.ones(c, np.float32), np.ones(c, np.float32)
    x16 = bf16_bits(torch.from_numpy(x).bfloat16())
    for chunks in (1, 2):
        dx32, *_ = fast.batchnorm_backward(x, grad.numpy(), mean, invstd, w, chunks)
        dx16, *_ = fast.batchnorm_backward(x16, grad.numpy(), mean, invstd, w, chunks)
        assert np.array_equal(dx32[:, :-1], grad.numpy()[:, :-1]) and np.isnan(dx32[:, -1]).all()
        assert np.array_equal(dx16, bf16_bits(torch.from_numpy(dx32).bfloat16()))
        assert {0x3F80, 0x3F82, 0x7F80, 0xFFFF} <= set(dx16.ravel().tolist())  # ties to even, overflow, NaN


@pytest.mark.skipif(not fast.builds(), reason="no C compiler")
def test_the_pool_kernels_on_a_bfloat16_map_are_atens_pool_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 16, 6, 10, generator=gen) * 20).round()
    x[0, 0, :2, :2] = 7.0  # a tie: the first tap wins
    x[1, 1, 0, 0] = math.nan  # NaN wins
    x = x.bfloat16().contiguous(memory_format=torch.channels_last)
    out, tap = fast.maxpool2(bf16_bits(x.permute(0, 2, 3, 1)).copy())
    theirs, index = F.max_pool2d_with_indices(x, 2)
    assert out.dtype == np.uint16 and np.array_equal(out, bf16_bits(theirs.permute(0, 2, 3, 1).contiguous()))
    grad = torch.randn(theirs.shape, generator=gen).bfloat16()
    dx = fast.maxpool2_backward(bf16_bits(grad.permute(0, 2, 3, 1).contiguous()).copy(), tap)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, index)
    assert np.array_equal(dx, bf16_bits(expected.permute(0, 2, 3, 1).contiguous()))


@needs_kernels
def test_the_kernels_take_float32_or_bfloat16_bits_and_nothing_else():
    ones = np.ones(8, np.float32)
    with pytest.raises(BnnkitError, match="float32"):
        fast.batchnorm_forward(np.zeros((10, 8), np.int16), ones, ones, None, 0.1, 1e-5, 1)
    x = np.zeros((10, 8), np.uint16)
    with pytest.raises(BnnkitError, match="float32"):  # the gradient is float32 whatever x is
        fast.batchnorm_backward(x, np.zeros((10, 8), np.uint16), ones, ones, ones, 1)


@pytest.fixture
def bfloat16_training(monkeypatch):
    """The bfloat16 path whatever this CPU has (oneDNN emulates it where it lacks it), with
    bfloat16 gradients."""
    monkeypatch.setattr(bf16, "cpu_has_fast_bf16", lambda: True)
    with bf16.gradient_precision("bfloat16"):
        yield


def bfloat16_inputs(net: torch.nn.Module) -> list[str]:
    """Names of the BatchNorms that receive a bfloat16 map in a training forward."""
    seen: list[str] = []
    for name, module in net.named_modules():
        if isinstance(module, BatchNorm2d):
            module.register_forward_hook(
                lambda m, inputs, out, name=name: seen.append(name) if inputs[0].dtype == torch.bfloat16 else None
            )
    return seen


@pytest.mark.parametrize(
    ("model", "options", "layout"),
    [
        ("resnet20", {"width_mult": 0.5}, torch.channels_last),  # every BatchNorm in the kernels
        ("resnet20", {"width_mult": 0.25}, torch.channels_last),  # 4 channels: ATen's, on the widened map
        ("resnet20", {"width_mult": 0.5}, torch.contiguous_format),  # NCHW: ATen's
        ("small_cnn", {"width": 16}, torch.channels_last),  # through max-pools to two of the BatchNorms
        ("ebnn_cnn", {}, torch.channels_last),  # conv, pool, BatchNorm, whose gradient comes back NCHW
    ],
)
def test_training_steps_are_the_same_bits_linked_or_not(bfloat16_training, model, options, layout):
    torch.manual_seed(0)
    plain = create_model(model, 10, (1, 28, 28), "embedded", **options).to(memory_format=layout)
    linked = copy.deepcopy(plain)
    assert link_bfloat16_maps(linked) > 0
    handed_over = bfloat16_inputs(linked)
    ours, theirs = trained_state(linked, layout), trained_state(plain, layout)
    assert handed_over  # the bfloat16 maps did reach the BatchNorms
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_only_a_bare_convolution_read_by_a_batchnorm_alone_is_linked(bfloat16_training):
    # eBNN's order, conv → pool → BatchNorm: linked through the pool
    assert link_bfloat16_maps(create_model("ebnn_cnn", 10, (1, 28, 28), "embedded")) == 2
    # pooling after the sign: the sign, not the BatchNorm, reads the pool
    after_sign = create_model("ebnn_cnn", 10, (1, 28, 28), "embedded+pool_after_sign")
    assert link_bfloat16_maps(after_sign) == 2  # conv → BatchNorm, the pool comes later
    resnet = create_model("resnet20", 10, (1, 28, 28), "embedded", width_mult=0.5)
    assert link_bfloat16_maps(resnet) >= 18  # at least the two convolutions of each of the 9 blocks
    # a scale after the product: the layer still widens it, and the BatchNorm gets float32
    scaled = torch.nn.Sequential(BinaryConv2d(8, 8, 3, padding=1, weight_scale="mean_abs"), BatchNorm2d(8))
    assert link_bfloat16_maps(scaled) == 1
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    seen = bfloat16_inputs(scaled)
    scaled(x.requires_grad_()).sum().backward()
    assert seen == []
    bare = torch.nn.Sequential(BinaryConv2d(8, 8, 3, padding=1), BatchNorm2d(8))
    link_bfloat16_maps(bare)
    seen = bfloat16_inputs(bare)
    bare(x).sum().backward()
    assert seen == ["1"]
    with torch.no_grad():  # evaluation: nothing is trained, the product is widened as before
        seen.clear()
        bare.eval()(x)
    assert seen == []
