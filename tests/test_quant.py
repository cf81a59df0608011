"""Each quantizer's forward and surrogate gradient against hand-computed values."""

import math

import pytest
import torch

from bnnkit.errors import BnnkitError
from bnnkit.quant import QUANTIZERS, Quantizer, get_quantizer, quantizer_names, set_training_progress

POINTS = [-2.0, -1.0001, -1.0, -0.5, -1e-8, 0.0, 1e-8, 0.5, 1.0, 1.0001, 2.0]
UPSTREAM = torch.arange(1.0, len(POINTS) + 1)  # distinct upstream gradients expose any mix-up


def forward_backward(name, points=POINTS, **kwargs):
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    y = get_quantizer(name, **kwargs)(x)
    y.backward(UPSTREAM[: len(points)].double())
    return y.detach(), x.grad


SIGN = [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1]


def test_required_quantizers_are_registered():
    required = {"ste_sign", "clipped_ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign", "ede_sign", "dorefa", "ste_ternary", "identity"}
    assert required <= set(quantizer_names())


@pytest.mark.parametrize("name", [n for n in sorted(QUANTIZERS) if QUANTIZERS[n].binary])
def test_every_binary_quantizer_maps_zero_to_plus_one(name):
    x = torch.tensor([[0.0, -0.0, -3.0, 3.0]])
    y = get_quantizer(name)(x)
    assert torch.equal(torch.sign(y), torch.tensor([[1.0, 1.0, -1.0, 1.0]]))


def test_ste_sign():
    y, g = forward_backward("ste_sign")
    assert y.tolist() == SIGN
    assert torch.equal(g, UPSTREAM.double())


def test_clipped_ste_sign_passes_gradient_on_the_boundary_only_inside():
    y, g = forward_backward("clipped_ste_sign")
    assert y.tolist() == SIGN
    inside = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert g.tolist() == [u * m for u, m in zip(UPSTREAM.tolist(), inside)]
    _, g = forward_backward("clipped_ste_sign", [0.4, 0.6], clip_value=0.5)
    assert g.tolist() == [1.0, 0.0]


def test_approx_sign():
    y, g = forward_backward("approx_sign")
    assert y.tolist() == SIGN
    # 2 - 2|x| inside [-1, 1], 0 outside.
    expected = [0, 0, 0, 1, 2 - 2e-8, 2, 2 - 2e-8, 1, 0, 0, 0]
    assert g.tolist() == pytest.approx([u * e for u, e in zip(UPSTREAM.tolist(), expected)])


def _signswish(x, beta):
    s = 1 / (1 + math.exp(-beta * x))
    return 2 * s * (1 + beta * x * (1 - s)) - 1


@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_swish_sign_gradient_is_the_derivative_of_signswish(beta):
    y, g = forward_backward("swish_sign", beta=beta)
    assert y.tolist() == SIGN
    h = 1e-6
    numeric = [(_signswish(x + h, beta) - _signswish(x - h, beta)) / (2 * h) for x in POINTS]
    assert (g / UPSTREAM.double()).tolist() == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    # closed form at 0: beta * 2 / (1 + cosh 0) = beta
    assert g[POINTS.index(0.0)].item() / UPSTREAM[POINTS.index(0.0)].item() == pytest.approx(beta)


@pytest.mark.parametrize("progress, t", [(0.0, 0.1), (0.5, 1.0), (1.0, 10.0)])
def test_ede_sign_follows_its_schedule(progress, t):
    q = get_quantizer("ede_sign")
    set_training_progress(torch.nn.Sequential(q), progress)
    x = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    q(x).backward(UPSTREAM.double())
    k = max(1 / t, 1)
    expected = [u * k * t * (1 - math.tanh(t * p) ** 2) for u, p in zip(UPSTREAM.tolist(), POINTS)]
    assert x.grad.tolist() == pytest.approx(expected)


def test_magnitude_aware_sign_scales_by_mean_abs_per_output_channel():
    w = torch.tensor([[0.5, -1.5, 0.0], [-0.2, 0.1, 0.3]], dtype=torch.float64, requires_grad=True)
    y = get_quantizer("magnitude_aware_sign")(w)
    expected = torch.tensor([[1, -1, 1], [-1, 1, 1]], dtype=torch.float64) * torch.tensor([[2 / 3], [0.2]], dtype=torch.float64)
    assert torch.allclose(y, expected)
    up = torch.arange(1.0, 7.0, dtype=torch.float64).view(2, 3)
    y.backward(up)
    # scale is a constant in backward; the sign passes |w| <= 1 only.
    ref = up * torch.tensor([[2 / 3], [0.2]], dtype=torch.float64) * (w.detach().abs() <= 1)
    assert torch.allclose(w.grad, ref)


@pytest.mark.parametrize("k, points, expected", [
    (1, [-0.5, 0.0, 0.49, 0.5, 0.51, 1.0, 1.5], [0, 0, 0, 0, 1, 1, 1]),
    (2, [1 / 6, 0.2, 0.5, 5 / 6, 0.9], [0, 1 / 3, 2 / 3, 2 / 3, 1]),  # 1/6*3=0.5→0 and 5/6*3=2.5→2: halves round to even
    (3, [0.0, 1 / 7, 0.3, 1.0], [0, 1 / 7, 2 / 7, 1]),
])
def test_dorefa_levels(k, points, expected):
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    y = get_quantizer("dorefa", k_bit=k)(x)
    assert y.tolist() == pytest.approx(expected)
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == [1.0 if 0 <= p <= 1 else 0.0 for p in points]


def test_ste_ternary():
    y, g = forward_backward("ste_ternary", threshold_value=0.5)
    assert y.tolist() == [-1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 1]
    inside = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert g.tolist() == [u * m for u, m in zip(UPSTREAM.tolist(), inside)]
    x = torch.tensor([1.0, -1.0, 0.1, -0.5])  # TWN: delta = 0.7 * 0.65 = 0.455
    assert get_quantizer("ste_ternary", ternary_weight_networks=True)(x).tolist() == [1, -1, 0, -1]


def test_identity():
    y, g = forward_backward("identity")
    assert y.tolist() == POINTS and torch.equal(g, UPSTREAM.double())


def test_get_quantizer_accepts_names_instances_callables_and_none():
    assert get_quantizer(None) is None and get_quantizer("none") is None
    q = get_quantizer("ste_sign")
    assert get_quantizer(q) is q and q.binary and q.bits == 1
    wrapped = get_quantizer(torch.tanh)
    assert isinstance(wrapped, Quantizer) and not wrapped.binary
    assert torch.equal(wrapped(torch.tensor([0.5])), torch.tanh(torch.tensor([0.5])))
    with pytest.raises(BnnkitError, match="unknown quantizer 'sgn'.*clipped_ste_sign"):
        get_quantizer("sgn")
    with pytest.raises(BnnkitError, match="swish_sign"):
        get_quantizer("swish_sign", gamma=2)
    with pytest.raises(BnnkitError, match="k_bit"):
        get_quantizer("dorefa", k_bit=0)
