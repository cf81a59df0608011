"""The clipped straight-through sign fused with the bfloat16 casts of a binary convolution
(bnnkit.nn.bf16.clipped_sign_for_conv, host_kernels/sign.c) against PyTorch's ops: the same
bits forward, backward and over training steps."""

import math

import numpy as np
import pytest
import torch
from helpers.training import trained_state

from bnnkit.errors import BnnkitError
from bnnkit.models import create_model
from bnnkit.nn import BinaryConv2d, bf16
from bnnkit.quant.sign import clipped_gradient, open_bounds, sign
from bnnkit.runtime import fast

CLIP = 1.0
LOW, HIGH = open_bounds(CLIP, torch.float32)
SPECIAL = [
    0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 0.5, -0.5, CLIP, -CLIP, HIGH, LOW,
    math.nextafter(CLIP, 0), -math.nextafter(CLIP, 0), 3.0, -3.0, math.inf, -math.inf, math.nan, -math.nan,
]  # fmt: skip


def bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.view(torch.int32).numpy()


def values(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * 1.5
    x[: len(SPECIAL)] = torch.tensor(SPECIAL)
    return x


def test_the_sign_kernel_is_the_sign_then_the_cast_bit_for_bit():
    x = values(10_001, 0)  # odd: a vector loop's tail
    ours = fast.sign_bf16(x.numpy())
    assert np.array_equal(ours, bits(sign(x).bfloat16()))
    assert set(ours.tolist()) == {0x3F80, 0xBF80}  # NaN signs +1, as sign does


def test_the_gradient_kernel_is_the_widening_then_hardtanhs_backward_bit_for_bit():
    x = values(10_001, 1)
    grad = values(10_001, 2).roll(7)  # special gradients meet other special inputs
    grad[100:110] = torch.tensor([1e-40, -1e-40, 0.0, -0.0, math.inf, -math.inf, math.nan, 1e30, -1e30, 2.0])
    g16 = grad.bfloat16()
    ours = fast.clipped_grad_bf16(bits(g16).copy(), x.numpy(), LOW, HIGH)
    theirs = clipped_gradient(g16.float(), x, CLIP)
    assert np.array_equal(ours.view(np.int32), bits(theirs))


def test_kernels_refuse_arrays_of_the_wrong_type_or_size():
    with pytest.raises(BnnkitError, match="float32"):
        fast.sign_bf16(np.zeros(4, np.float64))
    with pytest.raises(BnnkitError, match="uint16"):
        fast.clipped_grad_bf16(np.zeros(3, np.uint16), np.zeros(4, np.float32), LOW, HIGH)


@pytest.fixture
def fused(monkeypatch):
    """The bfloat16 path whatever this CPU has (oneDNN emulates it where it lacks it), bfloat16
    gradients, and a count of the fused calls."""
    calls = []
    monkeypatch.setattr(bf16, "cpu_has_fast_bf16", lambda: True)
    apply = bf16._ClippedSignBf16.apply
    monkeypatch.setattr(bf16._ClippedSignBf16, "apply", lambda *a: (calls.append(a[0].shape), apply(*a))[1])
    with bf16.gradient_precision("bfloat16"):
        yield calls


def train_steps(model: str, fused_sign: bool, layout: torch.memory_format, steps: int = 3, **options):
    bf16.fused_sign = fused_sign
    try:
        torch.manual_seed(0)
        net = create_model(model, 10, (1, 28, 28), "embedded", **options).to(memory_format=layout)
        return trained_state(net, layout, steps)
    finally:
        bf16.fused_sign = True


@pytest.mark.parametrize(
    ("model", "options", "layout"),
    [
        ("resnet20", {"width_mult": 0.5}, torch.channels_last),
        ("small_cnn", {"width": 16}, torch.channels_last),
        ("small_cnn", {"width": 16}, torch.contiguous_format),
    ],
)
def test_training_steps_are_the_same_bits_fused_or_not(fused, model, options, layout):
    with_fused = train_steps(model, True, layout, **options)
    taken = len(fused)
    without = train_steps(model, False, layout, **options)
    assert taken > 0 and len(fused) == taken  # the fused path ran, and only when asked
    assert with_fused.keys() == without.keys()
    for key in with_fused:
        assert torch.equal(with_fused[key], without[key]), key


def test_evaluation_and_float32_gradients_keep_the_plain_sign(fused):
    conv = BinaryConv2d(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with torch.no_grad():
        conv(x)
    with bf16.gradient_precision("float32"):
        conv(x).sum().backward()
    assert fused == []
    conv(x).sum().backward()  # bfloat16 gradients while training: fused
    assert len(fused) == 1
