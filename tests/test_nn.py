"""Binary layers against independent references written with plain torch ops."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.nn import (
    BinaryConv2d,
    BinaryLinear,
    InputNorm,
    LearnableThreshold,
    Prequantized,
    RPReLU,
    StandardizedWeights,
    binary_layers,
    clip_latent_weights_,
)
from bnnkit.quant import get_quantizer, set_training_progress


def sign_ref(t):
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def clipped_ste_ref(t):
    """sign forward, hardtanh gradient backward, from plain torch ops."""
    clipped = t.clamp(-1, 1)
    return sign_ref(t.detach()) + clipped - clipped.detach()


def with_zeros(x):
    x = x.clone()
    x.view(-1)[::7] = 0.0  # exact zeros must binarize to +1
    return x


@pytest.mark.parametrize("pad_value", [0.0, -1.0, 1.0])
@pytest.mark.parametrize(
    "stride, cin, cout, kernel, padding",
    [
        (1, 3, 5, 3, 1),
        (2, 33, 4, 3, 1),
        (1, 5, 7, 5, 2),
        (2, 2, 3, 1, 0),
        (2, 3, 4, 3, (2, 1)),
    ],
)
def test_binary_conv_matches_reference(pad_value, stride, cin, cout, kernel, padding):
    torch.manual_seed(0)
    conv = BinaryConv2d(cin, cout, kernel, stride=stride, padding=padding, pad_value=pad_value)
    x = with_zeros(torch.randn(2, cin, 9, 6))
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    ref = F.conv2d(F.pad(sign_ref(x), (pw, pw, ph, ph), value=pad_value), sign_ref(conv.weight), stride=stride)
    out = conv(x)
    assert torch.equal(out, ref)
    assert out.shape == nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)(x).shape
    assert conv.padding == (ph, pw)  # the logical padding, as nn.Conv2d reports it


@pytest.mark.parametrize("pad_value", [-1.0, 1.0])
def test_groups_and_dilation_pad_explicitly_too(pad_value):
    torch.manual_seed(5)
    conv = BinaryConv2d(6, 4, 3, padding=2, dilation=2, groups=2, pad_value=pad_value)
    x = torch.randn(1, 6, 7, 8)
    ref = F.conv2d(F.pad(sign_ref(x), (2,) * 4, value=pad_value), sign_ref(conv.weight), dilation=2, groups=2)
    assert torch.equal(conv(x), ref)
    assert conv(x).shape == nn.Conv2d(6, 4, 3, padding=2, dilation=2, groups=2)(x).shape


def test_pad_values_differ_only_at_the_border_and_by_the_padded_taps():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 6, 6)
    convs = {v: BinaryConv2d(2, 3, 3, padding=1, pad_value=v) for v in (0.0, -1.0, 1.0)}
    for c in convs.values():
        c.load_state_dict(convs[0.0].state_dict())
    out = {v: c(x) for v, c in convs.items()}
    assert torch.equal(out[0.0][..., 1:-1, 1:-1], out[-1.0][..., 1:-1, 1:-1])
    # a padded tap adds pad·w, so ±1 padding sits symmetrically around zero padding
    assert torch.equal(out[1.0] - out[0.0], out[0.0] - out[-1.0])
    corner_taps = sign_ref(convs[0.0].weight)[:, :, 0, :].sum((1, 2)) + sign_ref(convs[0.0].weight)[:, :, 1:, 0].sum(
        (1, 2)
    )
    assert torch.equal(out[1.0][0, :, 0, 0] - out[0.0][0, :, 0, 0], corner_taps)


def test_mean_abs_scale_multiplies_each_output_channel_and_bias_comes_after():
    torch.manual_seed(2)
    conv = BinaryConv2d(4, 3, 3, padding=1, bias=True, weight_scale="mean_abs")
    x = torch.randn(2, 4, 5, 7)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3))
    ref = F.conv2d(F.pad(sign_ref(x), (1,) * 4), sign_ref(conv.weight)) * alpha.view(1, -1, 1, 1)
    assert torch.allclose(conv(x), ref + conv.bias.view(1, -1, 1, 1), atol=1e-6)


def test_mean_abs_gradient_flows_through_alpha_into_latent_weights():
    torch.manual_seed(3)
    conv = BinaryConv2d(3, 4, 3, padding=1, weight_scale="mean_abs", pad_value=-1.0)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 1.5  # beyond the clip: only α's gradient reaches it
        conv.weight[1, 1, 1, 1] = 1.0  # on the clip: the STE still passes
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    up = torch.randn(2, 4, 6, 5)
    conv(x).backward(up)

    w = conv.weight.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    alpha = w.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1)
    ref = F.conv2d(F.pad(clipped_ste_ref(xr), (1,) * 4, value=-1.0), clipped_ste_ref(w)) * alpha
    ref.backward(up)
    assert torch.allclose(conv.weight.grad, w.grad, atol=1e-5)
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)
    # the STE part is zero beyond the clip, α's part is not
    assert conv.weight.grad[0, 0, 0, 0] != 0


def test_learned_scale_is_a_trained_parameter_initialised_to_mean_abs():
    torch.manual_seed(4)
    lin = BinaryLinear(6, 3, weight_scale="learned")
    assert isinstance(lin.scale, nn.Parameter) and lin.scale.shape == (3,)
    assert torch.allclose(lin.scale, lin.weight.abs().mean(dim=1))
    x = torch.randn(4, 6)
    with torch.no_grad():
        lin.scale.copy_(torch.tensor([1.0, 2.0, -3.0]))
    out = lin(x)
    assert torch.allclose(out, (sign_ref(x) @ sign_ref(lin.weight).T) * torch.tensor([1.0, 2.0, -3.0]))
    out.sum().backward()
    # ∂(Σ out)/∂α_c = Σ_n (sign x · sign W)_{n,c}
    assert torch.allclose(lin.scale.grad, (sign_ref(x) @ sign_ref(lin.weight).T).sum(0))
    assert "scale" in lin.state_dict()
    lin.reset_parameters()
    assert torch.allclose(lin.scale, lin.weight.abs().mean(dim=1))
    conv = BinaryConv2d(2, 5, 3, weight_scale="learned")
    assert conv.scale.shape == (5,)
    with torch.no_grad():
        conv.weight.mul_(3)
    conv.reset_parameters()
    assert torch.allclose(conv.scale, conv.weight.abs().mean(dim=(1, 2, 3)))
    assert BinaryConv2d(2, 5, 3).scale is None


def test_binary_linear_matches_reference_and_gradients_reach_latent_weights():
    torch.manual_seed(3)
    lin = BinaryLinear(10, 4)
    with torch.no_grad():
        lin.weight[0, 0] = 1.5  # beyond the clip: the clipped STE gives it no gradient
        lin.weight[1, 0] = -1.0001
        lin.weight[2, 0] = 1.0  # on the clip: it still gets one
    x = with_zeros(torch.randn(5, 10))
    out = lin(x)
    assert torch.equal(out, sign_ref(x) @ sign_ref(lin.weight).T)
    up = torch.arange(20.0).view(5, 4) - 7
    out.backward(up)
    expected = (up.T @ sign_ref(x)) * (lin.weight.detach().abs() <= 1)
    assert torch.equal(lin.weight.grad, expected)
    assert lin.weight.grad[0, 0] == 0 and lin.weight.grad[1, 0] == 0 and lin.weight.grad[2, 0] != 0


def test_binary_linear_mean_abs_and_bias():
    torch.manual_seed(6)
    lin = BinaryLinear(7, 3, bias=True, weight_scale="mean_abs")
    x = torch.randn(2, 7)
    ref = (sign_ref(x) @ sign_ref(lin.weight).T) * lin.weight.abs().mean(1) + lin.bias
    assert torch.allclose(lin(x), ref, atol=1e-6)


def test_conv_gradient_is_zero_for_latent_weights_beyond_the_clip():
    torch.manual_seed(7)
    conv = BinaryConv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-2, 2, conv.weight.numel()).view_as(conv.weight))
    conv(torch.randn(2, 2, 5, 5)).square().sum().backward()
    outside = conv.weight.detach().abs() > 1
    assert outside.any() and (~outside).any()
    assert torch.all(conv.weight.grad[outside] == 0)
    assert conv.weight.grad[~outside].abs().sum() > 0


def test_layers_are_torch_layers_with_float32_latent_weights():
    conv, lin = BinaryConv2d(3, 4, 3), BinaryLinear(4, 2)
    assert isinstance(conv, nn.Conv2d) and isinstance(lin, nn.Linear)
    for m in (conv, lin):
        assert isinstance(m.weight, nn.Parameter) and m.weight.dtype == torch.float32
        assert m.bias is None
        assert type(m.input_quantizer).__name__ == "ClippedSteSign" and m.kernel_quantizer.binary


def test_real_input_first_layer():
    torch.manual_seed(4)
    conv = BinaryConv2d(1, 2, 3, padding=1, input_quantizer=None)
    assert conv.input_quantizer is None
    x = torch.rand(1, 1, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(x, sign_ref(conv.weight), padding=1))
    lin = BinaryLinear(3, 2, input_quantizer="none", kernel_quantizer=None)
    x = torch.randn(4, 3)
    assert torch.allclose(lin(x), x @ lin.weight.T)


def test_quantizers_given_as_instances_and_callables():
    torch.manual_seed(8)
    mas = get_quantizer("magnitude_aware_sign")
    conv = BinaryConv2d(2, 3, 3, input_quantizer=torch.tanh, kernel_quantizer=mas)
    assert conv.kernel_quantizer is mas
    x = torch.randn(1, 2, 5, 5)
    w = conv.weight
    ref = F.conv2d(torch.tanh(x), sign_ref(w) * w.abs().mean((1, 2, 3), keepdim=True))
    assert torch.allclose(conv(x), ref, atol=1e-6)
    lin = BinaryLinear(4, 2, input_quantizer="dorefa", kernel_quantizer="ste_ternary")
    assert lin.input_quantizer.bits == 2 and not lin.kernel_quantizer.binary


def test_extra_repr_shows_quantizers_scale_and_padding():
    text = repr(
        BinaryConv2d(
            3,
            4,
            3,
            padding=1,
            input_quantizer=None,
            kernel_quantizer="approx_sign",
            weight_scale="mean_abs",
            pad_value=-1,
        )
    )
    assert "input_quantizer=None" in text and "kernel_quantizer=approx_sign" in text
    assert "weight_scale=mean_abs" in text and "pad_value=-1" in text and "padding=(1, 1)" in text
    assert "weight_scale=learned" in repr(BinaryLinear(2, 2, weight_scale="learned"))


def test_clip_latent_weights_touches_binary_layers_only():
    model = nn.Sequential(
        nn.Linear(3, 3),
        BinaryLinear(3, 3),
        BinaryLinear(3, 3, kernel_quantizer="identity"),
        nn.Sequential(BinaryConv2d(3, 3, 1, kernel_quantizer="swish_sign")),
        BinaryConv2d(3, 3, 1, kernel_quantizer=None),
        nn.Conv2d(3, 3, 1),
    )
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "weight"):
                m.weight.fill_(3.0)
                m.weight[0].fill_(-2.0)
    clip_latent_weights_(model, 1.0)
    maxima = [model[i].weight.max().item() for i in (0, 1, 2, 4, 5)] + [model[3][0].weight.max().item()]
    minima = [model[i].weight.min().item() for i in (0, 1, 2, 4, 5)] + [model[3][0].weight.min().item()]
    assert maxima == [3.0, 1.0, 3.0, 3.0, 3.0, 1.0]
    assert minima == [-2.0, -1.0, -2.0, -2.0, -2.0, -1.0]
    assert binary_layers(model) == [model[1], model[3][0]]
    clip_latent_weights_(model, 0.5)
    assert model[1].weight.abs().max().item() == 0.5


def test_bad_configuration_is_a_clear_error():
    for bad in (0.5, 2, "zero", None, True):
        with pytest.raises(BnnkitError, match="pad_value"):
            BinaryConv2d(1, 1, 3, padding=1, pad_value=bad)
    with pytest.raises(BnnkitError, match="weight_scale.*none, mean_abs, learned"):
        BinaryLinear(2, 2, weight_scale="max")
    with pytest.raises(BnnkitError, match="weight_scale"):
        BinaryConv2d(2, 2, 3, weight_scale=None)
    with pytest.raises(BnnkitError, match="unknown quantizer 'sign'.*clipped_ste_sign"):
        BinaryLinear(2, 2, input_quantizer="sign")
    with pytest.raises(BnnkitError, match="unknown quantizer"):
        BinaryConv2d(2, 2, 3, kernel_quantizer="xnor")
    with pytest.raises(BnnkitError, match="numeric padding"):
        BinaryConv2d(2, 2, 3, padding="same")


def test_state_dict_round_trip():
    a = BinaryConv2d(3, 4, 3, padding=1, weight_scale="learned", input_quantizer="ede_sign", pad_value=1.0)
    b = BinaryConv2d(3, 4, 3, padding=1, weight_scale="learned", input_quantizer="ede_sign", pad_value=1.0)
    with torch.no_grad():
        a.scale.mul_(torch.tensor([1.0, -2.0, 3.0, 0.5]))
    x = torch.randn(1, 3, 4, 5)
    assert not torch.equal(a(x), b(x))
    # the schedule's progress is not a weight: only the latent weights and α are saved
    assert set(a.state_dict()) == {"weight", "scale"}
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_training_progress_reaches_quantizers_inside_layers():
    model = nn.Sequential(
        BinaryLinear(3, 3, input_quantizer="ede_sign"), BinaryLinear(3, 2, kernel_quantizer="ede_sign")
    )
    set_training_progress(model, 0.75)
    assert model[0].input_quantizer.progress.item() == 0.75 and model[1].kernel_quantizer.progress.item() == 0.75


def test_input_norm():
    norm = InputNorm([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    x = torch.rand(2, 3, 4, 5)
    ref = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.25, x[:, 2] / 2.0], dim=1)
    assert torch.allclose(norm(x), ref)
    assert torch.allclose(norm(x[:, :, 0, 0]), ref[:, :, 0, 0])  # (N, C) input too
    state = norm.state_dict()
    assert set(state) == {"mean", "std"} and state["mean"].tolist() == [0.5, 0.25, 0.0]
    assert list(norm.parameters()) == []
    other = InputNorm([0.0] * 3, [1.0] * 3)
    other.load_state_dict(state)
    assert torch.equal(other(x), norm(x))
    for mean, std in (((0.5,), (0.0,)), ((0.5, 0.5), (1.0,)), ((), ())):
        with pytest.raises(BnnkitError, match="InputNorm"):
            InputNorm(mean, std)


def test_xnor_activation_scale_multiplies_by_the_box_filtered_mean_abs_input():
    torch.manual_seed(9)
    conv = BinaryConv2d(3, 4, 3, stride=2, padding=1, activation_scale="xnor", weight_scale="mean_abs", bias=True)
    x = torch.randn(2, 3, 7, 6, requires_grad=True)
    k = F.avg_pool2d(x.abs().mean(1, keepdim=True), 3, 2, 1)  # zeros count at the border
    alpha = conv.weight.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1)
    ref = F.conv2d(sign_ref(x), sign_ref(conv.weight), stride=2, padding=1) * k * alpha + conv.bias.view(1, -1, 1, 1)
    out = conv(x)
    assert torch.allclose(out, ref, atol=1e-5)
    out.sum().backward()
    assert x.grad[x.abs() > 1].abs().sum() > 0  # the clipped STE passes nothing there; K does
    lin = BinaryLinear(5, 2, activation_scale="xnor")
    x = torch.randn(3, 5)
    assert torch.allclose(lin(x), (sign_ref(x) @ sign_ref(lin.weight).T) * x.abs().mean(1, keepdim=True))
    assert "activation_scale=xnor" in repr(lin)
    with pytest.raises(BnnkitError, match="activation_scale.*none, xnor"):
        BinaryLinear(2, 2, activation_scale="spatial")
    with pytest.raises(BnnkitError, match="undilated"):
        BinaryConv2d(2, 2, 3, padding=2, dilation=2, activation_scale="xnor")


def test_learnable_threshold_shifts_each_channel_before_the_sign():
    torch.manual_seed(10)
    q = LearnableThreshold(3, get_quantizer("clipped_ste_sign"))
    assert q.binary and q.bits == 1 and torch.equal(q.shift, torch.zeros(3))
    with torch.no_grad():
        q.shift.copy_(torch.tensor([0.5, -0.25, 2.0]))
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(q(x), sign_ref(x - q.shift.view(1, 3, 1, 1)))
    # a flattened map keeps one threshold per channel of the map
    assert torch.equal(q(x.flatten(1)), q(x).flatten(1))
    y = torch.tensor([[0.0, 0.0, 1.5]], requires_grad=True)
    q(y).sum().backward()
    # d/dv sign(x − v) through the clipped STE: −1 where |x − v| ≤ 1
    assert q.shift.grad.tolist() == [-1.0, -1.0, -1.0] and y.grad.tolist() == [[1.0, 1.0, 1.0]]


def test_standardized_weights_are_centred_and_unit_variance_per_output_channel():
    torch.manual_seed(11)
    q = StandardizedWeights(get_quantizer("identity"))
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.1, 1.0, 5.0, 0.01]).view(4, 1, 1, 1) + 0.3
    s = q(w).flatten(1)
    assert torch.allclose(s.mean(1), torch.zeros(4), atol=1e-5) and torch.allclose(
        s.std(1, correction=0), torch.ones(4), atol=1e-4
    )
    assert torch.isfinite(q(torch.ones(2, 3))).all()  # constant channel: std 0
    conv = BinaryConv2d(3, 4, 3, kernel_quantizer=StandardizedWeights(get_quantizer("clipped_ste_sign")))
    w = conv.weight.detach().clone().requires_grad_()
    x = torch.randn(2, 3, 5, 5)
    ref_w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), correction=0, keepdim=True) + 1e-8)
    ref = F.conv2d(sign_ref(x), clipped_ste_ref(ref_w))
    out = conv(x)
    assert torch.equal(out, ref)
    up = torch.randn_like(out)
    out.backward(up)
    ref.backward(up)
    assert torch.allclose(conv.weight.grad, w.grad, atol=1e-4)  # through the statistics too


def test_prequantized_passes_values_and_gradients_and_describes_its_quantizer():
    by = LearnableThreshold(4, get_quantizer("approx_sign"))
    q = Prequantized(by)
    assert q.binary and q.bits == 1 and list(q.parameters()) == [] and "LearnableThreshold" in repr(q)
    x = torch.tensor([[-1.0, 1.0, 1.0, -1.0]], requires_grad=True)
    q(x).sum().backward()
    assert torch.equal(q(x), x) and x.grad.tolist() == [[1.0] * 4]


def test_rprelu_is_shift_prelu_shift_per_channel():
    act = RPReLU(2)
    x = torch.randn(3, 2, 4, 4)
    assert torch.allclose(act(x), F.prelu(x, torch.full((2,), 0.25)))  # starts as PReLU
    with torch.no_grad():
        act.shift_in.copy_(torch.tensor([0.5, -1.0]))
        act.slope.copy_(torch.tensor([0.1, -0.2]))
        act.shift_out.copy_(torch.tensor([2.0, 0.0]))
    shifted = x - torch.tensor([0.5, -1.0]).view(1, 2, 1, 1)
    slope = torch.tensor([0.1, -0.2]).view(1, 2, 1, 1)
    ref = torch.where(shifted >= 0, shifted, slope * shifted) + torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)
    assert torch.allclose(act(x), ref)
    assert torch.allclose(act(x[:, :, 0, 0]), ref[:, :, 0, 0])  # (N, C) too
    assert sum(p.numel() for p in act.parameters()) == 6


# --- the trainer's fast paths ---------------------------------------------------------


def test_clip_weights_clamps_every_tensor_in_place_like_clamp():
    from bnnkit.nn import clip_weights_, latent_weights

    torch.manual_seed(3)
    model = nn.Sequential(BinaryConv2d(2, 4, 3), nn.Conv2d(4, 4, 1), BinaryLinear(4, 3))
    latent = latent_weights(model)
    assert [id(w) for w in latent] == [id(model[0].weight), id(model[2].weight)]  # not the FP conv
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5)
    before = [p.detach().clone() for p in model.parameters()]
    clip_weights_(latent, 0.75)
    assert torch.equal(model[0].weight, before[0].clamp(-0.75, 0.75))
    assert torch.equal(model[2].weight, before[-1].clamp(-0.75, 0.75))
    assert torch.equal(model[1].weight, before[1])  # full precision: untouched
    clip_weights_([], 1.0)  # nothing to clip is no error


def test_learnable_threshold_on_a_channels_last_map_keeps_its_layout_and_values():
    torch.manual_seed(11)
    q = LearnableThreshold(3, get_quantizer("clipped_ste_sign"))
    with torch.no_grad():
        q.shift.copy_(torch.tensor([0.5, -0.25, 2.0]))
    x = torch.randn(2, 3, 4, 4)
    y = q(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, q(x))


def test_integer_pixels_keep_channels_last_strides_of_a_one_channel_batch():
    from bnnkit.nn import IntegerPixels
    from bnnkit.training.batching import in_memory_format

    pixels = torch.arange(256, dtype=torch.float32).div(255).repeat(4).view(4, 1, 16, 16)
    x = in_memory_format(pixels, torch.channels_last)
    assert x.data_ptr() == pixels.data_ptr() and x.stride() == (256, 1, 16, 1)  # a view, no copy
    y = IntegerPixels()(x)
    assert y.stride() == x.stride() and torch.equal(y, torch.arange(256.0).repeat(4).view(4, 1, 16, 16))
    # a convolution given those strides answers in channels_last
    conv = BinaryConv2d(1, 8, 3, padding=1, input_quantizer=None).to(memory_format=torch.channels_last)
    out = conv(y)
    assert out.stride()[1] == 1 and torch.equal(out, conv(y.contiguous()))
