"""Each quantizer's forward and surrogate gradient against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.nn import BinaryConv2d, StandardizedWeights
from bnnkit.quant import (
    QUANTIZERS,
    MultiBaseActivations,
    MultiBaseWeights,
    Quantizer,
    get_quantizer,
    quantizer_names,
    register_quantizer,
    set_training_progress,
)

POINTS = [-1e6, -2.0, -1.0001, -1.0, -0.5, -1e-8, 0.0, 1e-8, 0.5, 1.0, 1.0001, 2.0, 1e6]
SIGN = [-1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1]
CLIP = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]  # 1[|x| <= 1]
UPSTREAM = torch.arange(1.0, len(POINTS) + 1, dtype=torch.float64)  # distinct values expose any mix-up

REQUIRED = {
    "ste_sign",
    "clipped_ste_sign",
    "approx_sign",
    "swish_sign",
    "magnitude_aware_sign",
    "ede_sign",
    "dorefa",
    "ste_ternary",
    "identity",
}


def forward_backward(name, points=POINTS, **kwargs):
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    y = get_quantizer(name, **kwargs)(x)
    y.backward(UPSTREAM[: len(points)])
    return y.detach(), x.grad


def times_upstream(derivative):
    return [u * d for u, d in zip(UPSTREAM.tolist(), derivative)]


# --- registry -------------------------------------------------------------------------


def test_required_quantizers_are_registered():
    assert set(quantizer_names()) >= REQUIRED
    assert quantizer_names() == sorted(QUANTIZERS)


@pytest.mark.parametrize(
    "name, bits, binary",
    [
        ("ste_sign", 1, True),
        ("clipped_ste_sign", 1, True),
        ("approx_sign", 1, True),
        ("swish_sign", 1, True),
        ("magnitude_aware_sign", 1, True),
        ("ede_sign", 1, True),
        ("ste_ternary", 2, False),
        ("dorefa", 2, False),
        ("identity", 32, False),
    ],
)
def test_bits_and_binary_flags(name, bits, binary):
    q = get_quantizer(name)
    assert isinstance(q, Quantizer) and q.bits == bits and q.binary is binary
    assert get_quantizer("dorefa", k_bit=5).bits == 5


@pytest.mark.parametrize("name", [n for n in sorted(QUANTIZERS) if QUANTIZERS[n].binary])
def test_every_binary_quantizer_maps_zero_to_plus_one(name):
    x = torch.tensor([[0.0, -0.0, -3.0, 3.0]])
    y = get_quantizer(name)(x)
    # magnitude_aware_sign scales by a positive per-channel factor, so compare signs.
    assert torch.equal(torch.sign(y), torch.tensor([[1.0, 1.0, -1.0, 1.0]]))


def test_get_quantizer_accepts_names_classes_instances_callables_and_none():
    assert get_quantizer(None) is None and get_quantizer("none") is None
    q = get_quantizer("ste_sign")
    assert type(q) is QUANTIZERS["ste_sign"] and get_quantizer(q) is q
    assert get_quantizer("ste_sign") is not q  # a name builds a fresh instance each time
    assert get_quantizer("swish_sign", beta=2.0).beta == 2.0
    assert get_quantizer(QUANTIZERS["clipped_ste_sign"], clip_value=0.5).clip_value == 0.5
    wrapped = get_quantizer(torch.tanh)
    assert isinstance(wrapped, Quantizer) and not wrapped.binary and wrapped.bits == 32
    assert torch.equal(wrapped(torch.tensor([0.5])), torch.tanh(torch.tensor([0.5])))
    hardtanh = get_quantizer(nn.Hardtanh())
    assert isinstance(hardtanh, Quantizer) and hardtanh(torch.tensor([3.0])).item() == 1.0


def test_get_quantizer_errors_are_bnnkit_errors_that_name_the_choices():
    with pytest.raises(BnnkitError, match="unknown quantizer 'sgn'") as info:
        get_quantizer("sgn")
    assert all(name in str(info.value) for name in REQUIRED | {"none"})
    assert "\n" not in str(info.value)
    with pytest.raises(BnnkitError, match="'swish_sign' got option.* gamma.*takes: beta"):
        get_quantizer("swish_sign", gamma=2)
    with pytest.raises(BnnkitError, match="'ste_sign'.*no options"):
        get_quantizer("ste_sign", clip_value=1.0)
    with pytest.raises(BnnkitError, match="k_bit"):
        get_quantizer("dorefa", k_bit=0)
    with pytest.raises(BnnkitError, match="k_bit"):
        get_quantizer("dorefa", k_bit=2.0)
    with pytest.raises(BnnkitError, match="need a quantizer name"):
        get_quantizer(get_quantizer("ste_sign"), clip_value=1.0)
    with pytest.raises(BnnkitError, match="got int"):
        get_quantizer(3)
    with pytest.raises(BnnkitError, match="beta > 0"):
        get_quantizer("swish_sign", beta=0.0)


def test_get_quantizer_refuses_a_class_that_is_no_quantizer():
    # A class is callable, so it used to be wrapped like a function: its first forward
    # called nn.Hardtanh(x), which builds a module from x (here: fails in its __init__).
    with pytest.raises(BnnkitError, match=r"^a quantizer class must subclass bnnkit.quant.Quantizer, got Hardtanh$"):
        get_quantizer(nn.Hardtanh)


def test_register_quantizer_adds_a_name_and_refuses_to_overwrite():
    @register_quantizer("test_negate")
    class Negate(Quantizer):
        """Forward -x, backward -1: a stand-in for a user's own quantizer."""

        def forward(self, x):
            return -x

    try:
        assert "test_negate" in quantizer_names()
        assert get_quantizer("test_negate")(torch.tensor([2.0])).item() == -2.0
        with pytest.raises(ValueError, match="taken"):
            register_quantizer("ste_sign")(Negate)
        with pytest.raises(ValueError, match="taken"):
            register_quantizer("none")(Negate)
    finally:
        del QUANTIZERS["test_negate"]


# --- sign with surrogate gradients -----------------------------------------------------


def test_ste_sign_passes_the_gradient_everywhere():
    y, g = forward_backward("ste_sign")
    assert y.tolist() == SIGN
    assert torch.equal(g, UPSTREAM)


def test_clipped_ste_sign_passes_gradient_up_to_and_on_the_boundary():
    y, g = forward_backward("clipped_ste_sign")
    assert y.tolist() == SIGN
    assert g.tolist() == times_upstream(CLIP)
    _, g = forward_backward("clipped_ste_sign", [0.4, 0.5, 0.6, -0.5, -0.6], clip_value=0.5)
    assert g.tolist() == [1.0, 2.0, 0.0, 4.0, 0.0]


def test_approx_sign_gradient_is_two_minus_two_abs_x_inside_the_unit_interval():
    y, g = forward_backward("approx_sign")
    assert y.tolist() == SIGN
    expected = [0, 0, 0, 0, 1, 2 - 2e-8, 2, 2 - 2e-8, 1, 0, 0, 0, 0]
    assert g.tolist() == pytest.approx(times_upstream(expected), rel=1e-12, abs=0)
    _, g = forward_backward("approx_sign", [0.25, -0.75])
    assert g.tolist() == [1.5, 2 * 0.5]


def _signswish(x, beta):
    z = beta * x
    s = 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))
    return 2 * s * (1 + z * (1 - s)) - 1


@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_swish_sign_gradient_is_the_numerical_derivative_of_signswish(beta):
    y, g = forward_backward("swish_sign", beta=beta)
    assert y.tolist() == SIGN
    h = 1e-6
    numeric = [(_signswish(x + h, beta) - _signswish(x - h, beta)) / (2 * h) for x in POINTS]
    assert (g / UPSTREAM).tolist() == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_swish_sign_gradient_closed_form_values():
    # β(2 − βx·tanh(βx/2)) / (1 + cosh βx), worked by hand:
    #   β=5, x=0:    5·2/2 = 5
    #   β=5, x=±0.2: 5·(2 − tanh 0.5)/(1 + cosh 1) = 5·1.5378828/2.5430806 = 3.0236612
    #   β=5, x=1:    5·(2 − 5·tanh 2.5)/(1 + cosh 5) = 5·(−2.9330668)/75.209910 = −0.1949923
    #   β=1, x=2:    (2 − 2·tanh 1)/(1 + cosh 2) = 0.4768117/4.7621957 = 0.1001243
    _, g = forward_backward("swish_sign", [0.0, 0.2, -0.2, 1.0])
    assert (g / UPSTREAM[:4]).tolist() == pytest.approx([5.0, 3.0236612, 3.0236612, -0.1949923], rel=1e-6)
    _, g = forward_backward("swish_sign", [2.0], beta=1.0)
    assert g.item() == pytest.approx(0.1001243, rel=1e-6)


def test_swish_sign_gradient_stays_finite_for_huge_float32_inputs():
    x = torch.tensor([-1e30, -100.0, 100.0, 1e30], requires_grad=True)
    get_quantizer("swish_sign")(x).sum().backward()
    assert torch.equal(x.grad.abs(), torch.zeros(4))


def ede_expected(t):
    k = max(1 / t, 1)
    return times_upstream([k * t * (1 - math.tanh(t * p) ** 2) for p in POINTS])


@pytest.mark.parametrize("progress, t", [(0.0, 0.1), (0.5, 1.0), (1.0, 10.0)])
def test_ede_sign_follows_its_schedule(progress, t):
    q = get_quantizer("ede_sign")
    set_training_progress(nn.Sequential(nn.Linear(1, 1), nn.Sequential(q)), progress)
    assert q.progress.item() == progress
    x = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    y = q(x)
    y.backward(UPSTREAM)
    assert y.tolist() == SIGN
    assert x.grad.tolist() == pytest.approx(ede_expected(t), rel=1e-12, abs=1e-300)


def test_ede_sign_ends_of_the_schedule_by_hand():
    q = get_quantizer("ede_sign")
    x = torch.tensor([0.0, 10.0], dtype=torch.float64, requires_grad=True)
    q(x).sum().backward()
    # p=0: t=0.1, k=10 → k·t = 1 at zero; at x=10, 1 − tanh²(1) = 0.4199743
    assert x.grad.tolist() == pytest.approx([1.0, 0.4199743], rel=1e-6)
    q.set_progress(1.0)
    x.grad = None
    q(x).sum().backward()
    # p=1: t=10, k=1 → 10 at zero; at x=10, 10·(1 − tanh²(100)) underflows to 0
    assert x.grad.tolist() == pytest.approx([10.0, 0.0], abs=1e-12)


def test_ede_progress_is_clamped_buffer_not_saved_with_the_weights():
    q = get_quantizer("ede_sign")
    q.set_progress(1.5)
    assert q.progress.item() == 1.0
    q.set_progress(-0.1)
    assert q.progress.item() == 0.0
    assert "progress" in dict(q.named_buffers()) and "progress" not in q.state_dict()
    q.set_progress(0.25)
    assert "progress=0.250" in repr(q)


def test_ede_gradient_uses_the_progress_of_its_forward_pass():
    q = get_quantizer("ede_sign")
    x = torch.tensor([0.0], requires_grad=True)
    y = q(x)
    q.set_progress(1.0)  # between forward and backward: must not leak into this step
    y.backward()
    assert x.grad.item() == pytest.approx(1.0)


# --- magnitude-aware sign --------------------------------------------------------------


def test_magnitude_aware_sign_by_hand():
    w = torch.tensor([[0.5, -1.5, 0.0], [-0.2, 0.1, 0.3]], dtype=torch.float64, requires_grad=True)
    y = get_quantizer("magnitude_aware_sign")(w)
    # α = mean|w| per row: 2/3 and 0.2
    assert torch.allclose(y, torch.tensor([[2 / 3, -2 / 3, 2 / 3], [-0.2, 0.2, 0.2]], dtype=torch.float64))
    y.backward(torch.arange(1.0, 7.0, dtype=torch.float64).view(2, 3))
    # ∂/∂w = α·g·1[|w|≤1] + sign(w)/n·Σ g·s, with d|w|/dw = 0 at w = 0:
    #   row 0: α=2/3, Σ g·s = 1 − 2 + 3 = 2 → [2/3 + 2/3, 0 − 2/3, 2 + 0]
    #   row 1: α=0.2, Σ g·s = −4 + 5 + 6 = 7 → [0.8 − 7/3, 1 + 7/3, 1.2 + 7/3]
    expected = [[4 / 3, -2 / 3, 2.0], [0.8 - 7 / 3, 1 + 7 / 3, 1.2 + 7 / 3]]
    assert torch.allclose(w.grad, torch.tensor(expected, dtype=torch.float64))


def test_magnitude_aware_sign_matches_an_explicit_reference_expression():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    w[0, 0, 0] = torch.tensor([0.0, 1.0])
    w[1, 2, 1] = torch.tensor([-1.0, 1.0001])
    w[2] *= 3  # a channel with many weights beyond the clip
    up = torch.arange(w.numel(), dtype=torch.float64).view_as(w) - 20

    a = w.clone().requires_grad_()
    out = get_quantizer("magnitude_aware_sign")(a)
    out.backward(up)

    b = w.clone().requires_grad_()
    alpha = b.abs().mean(dim=(1, 2, 3), keepdim=True)
    clipped = b.clamp(-1, 1)  # straight through with the hardtanh's gradient
    ref = alpha * (torch.where(b >= 0, 1.0, -1.0).double() + clipped - clipped.detach())
    ref.backward(up)

    assert torch.allclose(out, ref) and torch.allclose(a.grad, b.grad)
    assert torch.equal(out / alpha.detach(), torch.where(w >= 0, 1.0, -1.0).double())


# --- more than one bit -----------------------------------------------------------------


def _half_points(levels):
    """x with x·levels exactly (i + 0.5): the points where the rounding rule decides."""
    points = [(i + 0.5) / levels for i in range(levels)]
    assert all(p * levels == i + 0.5 for i, p in enumerate(points))
    return points


@pytest.mark.parametrize(
    "k, expected_steps",
    [
        (1, [0]),  # 0.5 → 0
        (2, [0, 2, 2]),  # 0.5 → 0, 1.5 → 2, 2.5 → 2
        (3, [0, 2, 2, 4, 4, 6, 6]),
    ],
)
def test_dorefa_rounds_halves_to_even(k, expected_steps):
    levels = 2**k - 1
    y, _ = forward_backward("dorefa", _half_points(levels), k_bit=k)
    assert (y * levels).tolist() == pytest.approx(expected_steps, abs=1e-12)


@pytest.mark.parametrize(
    "k, points, expected",
    [
        (1, [-0.5, 0.0, 0.49, 0.51, 1.0, 1.5], [0, 0, 0, 1, 1, 1]),
        (2, [-3.0, 0.1, 0.2, 0.9, 1.0, 7.0], [0, 0, 1 / 3, 1, 1, 1]),
        (3, [0.0, 1 / 7, 0.3, 0.99, 1.0], [0, 1 / 7, 2 / 7, 1, 1]),
    ],
)
def test_dorefa_levels_and_straight_through_inside_the_unit_interval(k, points, expected):
    y, g = forward_backward("dorefa", points, k_bit=k)
    assert y.tolist() == pytest.approx(expected, abs=1e-15)
    assert g.tolist() == times_upstream([1.0 if 0 <= p <= 1 else 0.0 for p in points])


def test_ste_ternary_with_a_fixed_threshold():
    y, g = forward_backward("ste_ternary", threshold_value=0.5)
    # |x| < 0.5 → 0; x = ±0.5 is on the threshold and keeps its sign
    assert y.tolist() == [-1, -1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 1, 1]
    # the clipped STE, dead zone included
    assert g.tolist() == times_upstream(CLIP)
    y, _ = forward_backward("ste_ternary", [-0.06, -0.05, -0.04, 0.0, 0.04, 0.05, 0.3])
    assert y.tolist() == [-1, -1, 0, 0, 0, 1, 1]


def test_ste_ternary_twn_threshold_is_per_tensor():
    x = torch.tensor([1.0, -1.0, 0.1, -0.5])  # Δ = 0.7 · 0.65 = 0.455
    q = get_quantizer("ste_ternary", ternary_weight_networks=True)
    assert q(x).tolist() == [1, -1, 0, -1]
    assert q(x * 10).tolist() == [1, -1, 0, -1]  # Δ scales with the tensor
    assert q(torch.tensor([0.3, 0.2, 0.1])).tolist() == [1, 1, 0]  # Δ = 0.14


def test_identity():
    y, g = forward_backward("identity")
    assert y.tolist() == POINTS and torch.equal(g, UPSTREAM)


# --- ABC-Net bases ----------------------------------------------------------------------


def test_multi_base_weights_cut_the_centred_weights_at_spread_levels():
    torch.manual_seed(0)
    q = MultiBaseWeights(channels=2, bases=3)
    w = torch.randn(2, 5) * 0.3 + 0.1
    q.fit_(w)
    mean, std = w.mean(1, keepdim=True), w.std(1, correction=0, keepdim=True)
    bases = [torch.where(w - mean + u * std >= 0, 1.0, -1.0) for u in (-1.0, 0.0, 1.0)]
    ref = sum(a.view(2, 1) * b for a, b in zip(q.alpha, bases))
    assert torch.allclose(q(w), ref)
    # α is the least-squares fit of each channel by its bases
    for c in range(2):
        design = torch.stack([b[c] for b in bases], dim=1)
        best = torch.linalg.lstsq(design, w[c : c + 1].t()).solution.squeeze(1)
        assert torch.allclose(q.alpha[:, c], best, atol=1e-5)
    assert q.bits == 3 and not q.binary and q.alpha.shape == (3, 2)


def test_multi_base_weights_gradient_is_the_clipped_ste_of_every_base_weighted_by_alpha():
    q = MultiBaseWeights(channels=1, bases=2)
    with torch.no_grad():
        q.alpha.copy_(torch.tensor([[0.5], [2.0]]))
    w = torch.tensor([[-3.0, -0.5, 0.5, 3.0]], requires_grad=True)  # mean 0, std ~2.1
    q(w).backward(torch.ones(1, 4))
    std = w.detach().std(correction=0)
    cuts = [w.detach() - std, w.detach() + std]  # u = -1, +1
    expected = sum(a * (c.abs() <= 1).float() for a, c in zip((0.5, 2.0), cuts))
    assert torch.equal(w.grad, expected)
    signs = [torch.where(c >= 0, 1.0, -1.0) for c in cuts]
    assert q.alpha.grad.flatten().tolist() == [float(s.sum()) for s in signs]


def test_multi_base_activations_start_as_a_staircase_of_hardtanh_and_learn_shift_and_scale():
    q = MultiBaseActivations(bases=3)
    assert torch.allclose(q.shift, torch.tensor([-2 / 3, 0.0, 2 / 3])) and torch.allclose(
        q.beta, torch.full((3,), 1 / 3)
    )
    x = torch.tensor([-5.0, -0.7, -0.1, 0.1, 0.7, 5.0], requires_grad=True)
    assert torch.allclose(q(x), torch.tensor([-1.0, -1.0, -1 / 3, 1 / 3, 1.0, 1.0]))
    q(x).sum().backward()
    # each base's clipped STE at its own shift, weighted by β; v_j gets minus that, β_j its sign sum
    near = [((x.detach() - v).abs() <= 1).float() for v in (-2 / 3, 0.0, 2 / 3)]
    assert torch.allclose(x.grad, sum(n / 3 for n in near))
    assert torch.allclose(q.shift.grad, torch.stack([-n.sum() / 3 for n in near]))
    assert q.beta.grad.tolist() == [2.0, 0.0, -2.0]
    assert q.bits == 3 and not q.binary


def test_multi_base_quantizers_check_their_options_and_wrap_any_binarizer():
    assert MultiBaseActivations(2, "approx_sign").base.registered_name == "approx_sign"
    for bad in (0, 9, 2.0, True):
        with pytest.raises(BnnkitError, match="bases in 1..8"):
            MultiBaseWeights(4, bad)
    with pytest.raises(BnnkitError, match="base binarizer"):
        MultiBaseActivations(2, None)


def test_a_layer_fits_its_multi_base_weights_on_init_and_reset():
    conv = BinaryConv2d(3, 4, 3, kernel_quantizer=MultiBaseWeights(4, 3))
    fitted = conv.kernel_quantizer.alpha.detach().clone()
    assert not torch.allclose(fitted, torch.full((3, 4), 1 / 3))
    with torch.no_grad():
        conv.weight.mul_(10)
    conv.reset_parameters()
    assert not torch.allclose(conv.kernel_quantizer.alpha, fitted)
    # behind a standardization, the bases are fitted to the standardized weights
    std = BinaryConv2d(3, 4, 3, kernel_quantizer=StandardizedWeights(MultiBaseWeights(4, 3)))
    inner = std.kernel_quantizer.quantizer
    target = std.kernel_quantizer.standardize(std.weight.detach())
    fresh = MultiBaseWeights(4, 3)
    fresh.fit_(target)
    assert torch.allclose(inner.alpha, fresh.alpha)


# --- the fast forms: the same values as the plain expressions ---------------------------


def special_values(dtype):
    finfo = torch.finfo(dtype)
    edge = [
        0.0,
        -0.0,
        finfo.tiny,
        -finfo.tiny,
        finfo.smallest_normal / 4,
        -finfo.smallest_normal / 4,
        finfo.max,
        -finfo.max,
        math.inf,
        -math.inf,
        1.0,
        -1.0,
        0.3,
        -0.3,
    ]
    random = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    return torch.cat([torch.tensor(edge, dtype=torch.float64), random]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_sign_is_the_plus_one_at_zero_sign_of_every_value(dtype):
    from bnnkit.quant import sign

    x = special_values(dtype)
    assert torch.equal(sign(x), torch.where(x >= 0, 1.0, -1.0).to(dtype))
    assert sign(x).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("clip", [1.0, 0.3, 2.5])
def test_clipped_gradient_passes_exactly_where_abs_x_is_at_most_clip(dtype, clip):
    from bnnkit.quant.sign import clipped_gradient

    x = special_values(dtype)
    c = torch.tensor(clip, dtype=dtype)
    inf = torch.tensor(math.inf, dtype=dtype)
    # the clip itself, as the dtype rounds it, and its neighbours on both sides
    x = torch.cat(
        [
            x,
            torch.stack(
                [
                    c,
                    -c,
                    torch.nextafter(c, inf),
                    -torch.nextafter(c, inf),
                    torch.nextafter(c, -inf),
                    -torch.nextafter(c, -inf),
                ]
            ),
        ]
    )
    grad = torch.arange(1, len(x) + 1).to(dtype)
    assert torch.equal(clipped_gradient(grad, x, clip), grad * (x.abs() <= clip).to(dtype))


def test_clipped_ste_sign_autograd_equals_the_reference_expression_on_a_channels_last_map():
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64).mul(1.5).contiguous(memory_format=torch.channels_last)
    x[0, :4, 0, 0] = torch.tensor([1.0, -1.0, 0.0, -0.0], dtype=torch.float64)  # on the boundary, and zeros
    upstream = torch.randn_like(x)
    a = x.clone().requires_grad_()
    y = get_quantizer("clipped_ste_sign")(a)
    y.backward(upstream)
    assert torch.equal(y, torch.where(x >= 0, 1.0, -1.0).double())
    assert torch.equal(a.grad, upstream * (x.abs() <= 1).double())
    assert y.is_contiguous(memory_format=torch.channels_last)
