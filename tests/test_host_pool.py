"""The training max-pool in the host kernels (bnnkit.nn.MaxPool2x2) against ATen's: the same
values and input gradients bit for bit, where it runs and where it hands over to ATen; the
global average pool (bnnkit.nn.GlobalAvgPool) against nn.AdaptiveAvgPool2d(1)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.models import create_model
from bnnkit.nn import GlobalAvgPool, MaxPool2x2, pool
from bnnkit.recipe import load_recipe
from bnnkit.runtime import fast
from bnnkit.training.batching import in_memory_format


def special_map(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Small integers (ties in most windows, as a binary conv's sums have), with NaN, +-inf and
    -0.0 sprinkled in; channels last."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=g).float()
    flat = x.view(-1)
    for value, every in ((float("nan"), 37), (float("inf"), 53), (float("-inf"), 41), (-0.0, 29)):
        flat[torch.randperm(flat.numel(), generator=g)[: flat.numel() // every]] = value
    return x.contiguous(memory_format=torch.channels_last)


def pooled_with_grad(pool_fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    y = pool_fn(x)
    (gx,) = torch.autograd.grad(y, x, grad)
    return y.detach(), gx


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(3, 4, 2, 2), (5, 8, 6, 10), (2, 16, 28, 28), (4, 12, 14, 8), (1, 64, 4, 4)])
def test_host_pool_is_atens_bit_for_bit(shape, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = special_map(shape, seed=sum(shape) + threads)
        n, c, h, w = shape
        grad = torch.randn(n, c, h // 2, w // 2).contiguous(memory_format=torch.channels_last)
        assert pool._host_pool_takes(x)
        ours = pooled_with_grad(MaxPool2x2(), x, grad)
        aten = pooled_with_grad(lambda t: F.max_pool2d(t, 2), x, grad)
    finally:
        torch.set_num_threads(before)
    assert same_bits(ours[0], aten[0]) and same_bits(ours[1], aten[1])
    assert ours[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(2, 8, 7, 6).contiguous(memory_format=torch.channels_last),  # odd height
        torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last),  # 6 channels
        torch.randn(2, 8, 8, 8),  # NCHW
        torch.randn(2, 8, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
    ],
    ids=["odd-height", "channels-not-4k", "nchw", "float64"],
)
def test_maps_the_host_pool_does_not_take_go_to_aten(x):
    assert not pool._host_pool_takes(x)
    n, c, h, w = x.shape
    grad = torch.randn(n, c, h // 2, w // 2, dtype=x.dtype)
    ours, aten = pooled_with_grad(MaxPool2x2(), x, grad), pooled_with_grad(lambda t: F.max_pool2d(t, 2), x, grad)
    assert torch.equal(ours[0], aten[0]) and torch.equal(ours[1], aten[1])


def test_inference_mode_and_the_models_take_the_host_pool(monkeypatch):
    x = special_map((4, 8, 6, 6), seed=3)
    with torch.inference_mode():
        assert same_bits(MaxPool2x2()(x), F.max_pool2d(x, 2))
    taken = []
    original = pool._HostMaxPool2.apply
    monkeypatch.setattr(pool._HostMaxPool2, "apply", lambda t: taken.append(t.shape) or original(t))
    model = create_model("ebnn_cnn", recipe=load_recipe("embedded"), in_shape=(1, 28, 28), num_classes=10)
    model = model.to(memory_format=torch.channels_last)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]  # what the exporters look for
    assert len(pools) == 2 and all(isinstance(m, MaxPool2x2) for m in pools)
    model(in_memory_format(torch.rand(3, 1, 28, 28), torch.channels_last)).sum().backward()  # as training lays it out
    assert [tuple(s) for s in taken] == [(3, 16, 28, 28), (3, 32, 14, 14)]


def test_the_kernel_entry_points_refuse_what_they_cannot_pool():
    with pytest.raises(BnnkitError, match="even"):
        fast.maxpool2(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(BnnkitError, match="C % 4"):
        fast.maxpool2(np.zeros((1, 4, 4, 6), np.float32))
    with pytest.raises(BnnkitError, match="float32"):
        fast.maxpool2(np.zeros((1, 4, 4, 4), np.float64))
    out, tap = fast.maxpool2(np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(BnnkitError, match="taps"):
        fast.maxpool2_backward(out, tap[:, :1].copy())
    with pytest.raises(BnnkitError, match="uint8"):
        fast.maxpool2_backward(out, tap.astype(np.int32))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_the_global_average_pool_is_atens_and_its_gradient_keeps_the_layout(layout):
    """The values and the gradient that reaches the layer before (a hook on a non-leaf map: the
    gradient autograd passes on, not the one it accumulates into a leaf's .grad) are
    nn.AdaptiveAvgPool2d(1)'s bit for bit; the gradient's layout is the map's."""
    x0 = (torch.randn(8, 16, 7, 7, generator=torch.Generator().manual_seed(3)) * 5).contiguous(memory_format=layout)
    grad = torch.randn(8, 16, 1, 1)
    results = []
    for module in (GlobalAvgPool(), nn.AdaptiveAvgPool2d(1)):
        x = x0.clone().requires_grad_()
        before = x * 1.0  # a map inside the graph
        seen: list[torch.Tensor] = []
        before.register_hook(seen.append)
        out = module(before)
        out.backward(grad)
        results.append((out, seen[0]))
    (ours, our_grad), (theirs, their_grad) = results
    assert torch.equal(ours, theirs) and torch.equal(our_grad, their_grad)
    assert our_grad.is_contiguous(memory_format=layout)
    if layout == torch.channels_last:  # where ATen's would not be: what the kernels after it need
        assert not their_grad.is_contiguous(memory_format=layout)
