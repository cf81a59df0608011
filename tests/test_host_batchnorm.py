"""The training BatchNorm in the host kernels (bnnkit.nn.BatchNorm2d) against ATen's
nn.BatchNorm2d: outputs, batch and running statistics and all three gradients bit for bit,
where it runs and where it hands over to ATen."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.models import create_model
from bnnkit.nn import BatchNorm2d, batchnorm
from bnnkit.runtime import fast

# The CPU only: on one with AVX2 and FMA the kernels must give ATen's bits, and a test that finds
# them off fails (the run-time check would quietly hand every map to ATen).
needs_kernels = pytest.mark.skipif(not fast.batchnorm_fits(30, 16, 1), reason="a CPU without AVX2 and FMA")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def pair(c: int, momentum: float | None, seed: int) -> tuple[BatchNorm2d, nn.BatchNorm2d]:
    """bnnkit's and torch's BatchNorm with the same random affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    ours, theirs = BatchNorm2d(c, momentum=momentum), nn.BatchNorm2d(c, momentum=momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(ours, name).copy_(torch.randn(c, generator=g))
        ours.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def run(bn: nn.Module, x: torch.Tensor, grad: torch.Tensor, steps: int = 2) -> list[torch.Tensor]:
    """The outputs and input gradients of ``steps`` training passes, then every parameter's
    gradient and every buffer."""
    out = []
    for _ in range(steps):
        xi = x.detach().clone().requires_grad_()
        y = bn(xi)
        y.backward(grad)
        out += [y.detach(), xi.grad]
    return out + [p.grad for p in bn.parameters()] + list(bn.buffers())


def channels_last_map(shape: tuple[int, ...], seed: int, scale: float, offset: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale + offset).contiguous(memory_format=torch.channels_last)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("shape", "scale", "offset", "momentum"),
    [
        ((4, 8, 7, 7), 1.0, 0.0, 0.1),
        ((3, 16, 5, 9), 50.0, -100.0, 0.1),
        ((2, 24, 3, 3), 1e-3, 3.0, None),  # momentum None: the cumulative average
        ((8, 40, 6, 6), 1.0, -100.0, 0.3),
        ((1, 64, 2, 3), 7.0, 1.0, 0.1),
        ((16, 8, 28, 28), 1.0, 0.5, 0.1),
    ],
)
def test_host_batchnorm_is_atens_bit_for_bit(shape, scale, offset, momentum, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = channels_last_map(shape, sum(shape) + threads, scale, offset)
        grad = channels_last_map(shape, threads, 1.0, 0.0)
        ours, theirs = pair(shape[1], momentum, seed=threads)
        assert batchnorm._host_takes(ours, x)
        mine, aten = run(ours, x, grad), run(theirs, x, grad)
    finally:
        torch.set_num_threads(before)
    assert len(mine) == len(aten) == 4 + 2 + 3
    assert all(same_bits(a, b) for a, b in zip(mine[:-1], aten[:-1], strict=True))
    assert torch.equal(mine[-1], aten[-1])  # num_batches_tracked
    assert mine[0].is_contiguous(memory_format=torch.channels_last) and mine[1].is_contiguous(
        memory_format=torch.channels_last
    )


@needs_kernels
def test_a_gradient_in_another_layout_takes_atens_backward():
    """A global average pool hands back an NCHW gradient; ATen's own backward must take it (its
    sums run in another order there), and so the gradients stay ATen's."""
    x = channels_last_map((4, 16, 5, 5), 0, 2.0, 1.0)
    grad = torch.randn(4, 16, 5, 5)  # contiguous NCHW
    ours, theirs = pair(16, 0.1, seed=1)
    mine, aten = run(ours, x, grad), run(theirs, x, grad)
    assert all(same_bits(a, b) for a, b in zip(mine[:-1], aten[:-1], strict=True))


@needs_kernels
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_a_residual_added_in_the_pass_is_the_addition_after_it(layout):
    """bnnkit's BatchNorm2d(x, residual) against ATen's BatchNorm then ``+ residual``: the output,
    every gradient (the residual's is the output's) and the statistics. A residual in another
    layout than x's is added after the kernels' pass instead."""
    x, grad = channels_last_map((4, 16, 5, 5), 3, 2.0, 1.0), channels_last_map((4, 16, 5, 5), 4, 1.0, 0.0)
    residual = channels_last_map((4, 16, 5, 5), 5, 3.0, 0.5).contiguous(memory_format=layout)
    ours, theirs = pair(16, 0.1, seed=3)
    results = []
    for bn, fused in ((ours, True), (theirs, False)):
        xi, ri = x.clone().requires_grad_(), residual.clone().requires_grad_()
        y = bn(xi, ri) if fused else bn(xi) + ri
        y.backward(grad)
        results.append([y, xi.grad, ri.grad, *(p.grad for p in bn.parameters()), *bn.buffers()])
    for a, b in zip(*results, strict=True):
        assert same_bits(a, b) if a.is_floating_point() else torch.equal(a, b)  # num_batches_tracked


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(4, 12, 5, 5).contiguous(memory_format=torch.channels_last),  # channels % 8
        torch.randn(4, 16, 5, 5),  # NCHW
        torch.randn(4, 16, 1, 1).contiguous(memory_format=torch.channels_last),  # ambiguous layout
        torch.randn(4, 16, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
    ],
    ids=["channels-12", "nchw", "1x1", "float64"],
)
def test_maps_the_kernels_cannot_take_go_to_aten(x):
    ours, theirs = pair(x.shape[1], 0.1, seed=2)
    ours, theirs = ours.to(x.dtype), theirs.to(x.dtype)
    assert not batchnorm._host_takes(ours, x)
    grad = torch.randn(x.shape, dtype=x.dtype)
    mine, aten = run(ours, x, grad), run(theirs, x, grad)
    assert all(torch.equal(a, b) for a, b in zip(mine, aten, strict=True))


def test_evaluation_reads_the_running_statistics_as_torch_does():
    x = channels_last_map((4, 16, 5, 5), 3, 1.0, 0.0)
    ours, theirs = pair(16, 0.1, seed=3)
    ours.eval(), theirs.eval()
    assert same_bits(ours(x), theirs(x))


@needs_kernels
def test_kernels_that_differ_from_aten_are_not_used(monkeypatch):
    """The first use compares both on a small map; one bit off and ATen's BatchNorm runs."""
    forward = fast.batchnorm_forward

    def off_by_one_ulp(*args, **kwargs):
        y, mean, invstd = forward(*args, **kwargs)
        return np.nextafter(y, np.float32(np.inf)), mean, invstd

    monkeypatch.setattr(fast, "batchnorm_forward", off_by_one_ulp)
    batchnorm._matches_aten.cache_clear()
    try:
        x = channels_last_map((4, 16, 5, 5), 4, 1.0, 0.0)
        ours, theirs = pair(16, 0.1, seed=4)
        assert not batchnorm._host_takes(ours, x)
        assert same_bits(ours(x), theirs(x))
    finally:
        batchnorm._matches_aten.cache_clear()


@needs_kernels
@pytest.mark.parametrize("recipe", ["baseline", "baseline+double_residual"])
def test_training_steps_are_the_same_bits_with_either_batchnorm(monkeypatch, recipe):
    """A half-width ResNet-20 (8, 16 and 32 channels, so every BatchNorm can take the kernels)
    trained 3 steps: the same parameters and buffers with bnnkit's BatchNorm, which adds each
    shortcut in its own pass, and with ATen's, after which PyTorch adds it."""
    x = channels_last_map((32, 1, 28, 28), 5, 1.0, 0.0)
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(5))

    def trained() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = create_model("resnet20", 10, (1, 28, 28), recipe, width_mult=0.5)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return model.state_dict()

    calls, residuals = [], []
    monkeypatch.setattr(
        fast, "batchnorm_backward", lambda *a, f=fast.batchnorm_backward, **k: calls.append(1) or f(*a, **k)
    )
    monkeypatch.setattr(
        fast,
        "batchnorm_forward",
        lambda *a, f=fast.batchnorm_forward: residuals.append(len(a) > 8 and a[8] is not None) or f(*a),
    )
    mine = trained()
    # the BatchNorms whose gradient comes back channels last: the pool's NCHW one reaches the last
    # stage's second BatchNorms, and with the double residual its first ones too
    assert len(calls) >= 3 * (17 if recipe == "baseline" else 14)
    # every block's shortcut joins a BatchNorm's pass: once a block, twice with the double residual
    assert sum(residuals) == 3 * 9 * (2 if "double" in recipe else 1)
    monkeypatch.setattr(batchnorm, "_host_takes", lambda bn, x: False)
    aten = trained()
    assert mine.keys() == aten.keys() and all(torch.equal(mine[k], aten[k]) for k in mine)


@needs_kernels
def test_the_kernels_refuse_what_they_cannot_sum():
    with pytest.raises(BnnkitError, match="float32"):
        fast.batchnorm_forward(np.zeros((10, 8)), np.ones(8, np.float32), np.zeros(8, np.float32), None, 0.1, 1e-5, 1)
    ones = np.ones(12, np.float32)
    with pytest.raises(BnnkitError, match="cannot take"):
        fast.batchnorm_forward(np.zeros((10, 12), np.float32), ones, ones, None, 0.1, 1e-5, 1)
    with pytest.raises(BnnkitError, match="cannot take"):  # as many chunks as rows: ATen sums otherwise
        fast.batchnorm_forward(np.zeros((2, 8), np.float32), ones[:8], ones[:8], None, 0.1, 1e-5, 2)
