"""Binary layers against independent references written with plain torch ops."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.nn import BinaryConv2d, BinaryLinear, InputNorm, binary_layers, clip_latent_weights_


def sign_ref(t):
    return torch.where(t >= 0, 1.0, -1.0)


@pytest.mark.parametrize("pad_value", [0.0, -1.0, 1.0])
@pytest.mark.parametrize("stride, cin, cout, kernel, padding", [(1, 3, 5, 3, 1), (2, 33, 4, 3, 1), (1, 5, 7, 5, 2), (2, 2, 3, 1, 0)])
def test_binary_conv_matches_reference(pad_value, stride, cin, cout, kernel, padding):
    torch.manual_seed(0)
    conv = BinaryConv2d(cin, cout, kernel, stride=stride, padding=padding, pad_value=pad_value)
    x = torch.randn(2, cin, 9, 6)
    x[0, 0, 0, 0] = 0.0
    ref = F.conv2d(F.pad(sign_ref(x), (padding,) * 4, value=pad_value), sign_ref(conv.weight), stride=stride)
    out = conv(x)
    assert torch.equal(out, ref)
    assert out.shape == nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)(x).shape


def test_zero_padding_differs_from_minus_one_padding_only_at_the_border():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 6, 6)
    zero = BinaryConv2d(2, 3, 3, padding=1, pad_value=0.0)
    minus = BinaryConv2d(2, 3, 3, padding=1, pad_value=-1.0)
    minus.load_state_dict(zero.state_dict())
    a, b = zero(x), minus(x)
    assert torch.equal(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1])
    assert not torch.equal(a, b)


def test_mean_abs_scale_multiplies_each_output_channel():
    torch.manual_seed(2)
    conv = BinaryConv2d(4, 3, 3, padding=1, weight_scale="mean_abs")
    x = torch.randn(2, 4, 5, 5)
    alpha = conv.weight.abs().mean(dim=(1, 2, 3))
    ref = F.conv2d(F.pad(sign_ref(x), (1,) * 4), sign_ref(conv.weight)) * alpha.view(1, -1, 1, 1)
    assert torch.allclose(conv(x), ref)


def test_learned_scale_is_a_trained_parameter():
    lin = BinaryLinear(6, 3, weight_scale="learned")
    assert lin.scale.shape == (3,)
    assert torch.allclose(lin.scale, lin.weight.abs().mean(dim=1))
    lin(torch.randn(4, 6)).sum().backward()
    assert lin.scale.grad is not None and lin.scale.grad.abs().sum() > 0
    assert "scale" in lin.state_dict()


def test_binary_linear_matches_reference_and_gradients_reach_latent_weights():
    torch.manual_seed(3)
    lin = BinaryLinear(10, 4)
    with torch.no_grad():
        lin.weight[0, 0] = 1.5  # beyond the clip: the clipped STE gives it no gradient
    x = torch.randn(5, 10)
    out = lin(x)
    assert torch.equal(out, sign_ref(x) @ sign_ref(lin.weight).T)
    out.sum().backward()
    assert lin.weight.grad[0, 0] == 0 and lin.weight.grad.abs().sum() > 0


def test_real_input_first_layer():
    torch.manual_seed(4)
    conv = BinaryConv2d(1, 2, 3, padding=1, input_quantizer=None)
    x = torch.rand(1, 1, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(x, sign_ref(conv.weight), padding=1))


def test_clip_latent_weights_touches_binary_layers_only():
    model = nn.Sequential(nn.Linear(3, 3), BinaryLinear(3, 3), BinaryLinear(3, 3, kernel_quantizer="identity"))
    with torch.no_grad():
        for m in model:
            m.weight.fill_(3.0)
    clip_latent_weights_(model, 1.0)
    assert [m.weight.max().item() for m in model] == [3.0, 1.0, 3.0]
    assert binary_layers(model) == [model[1]]


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(BnnkitError, match="pad_value"):
        BinaryConv2d(1, 1, 3, padding=1, pad_value=0.5)
    with pytest.raises(BnnkitError, match="weight_scale"):
        BinaryLinear(2, 2, weight_scale="max")
    with pytest.raises(BnnkitError, match="unknown quantizer"):
        BinaryLinear(2, 2, input_quantizer="sign")
    with pytest.raises(BnnkitError, match="InputNorm"):
        InputNorm((0.5,), (0.0,))


def test_state_dict_round_trip():
    a = BinaryConv2d(3, 4, 3, padding=1, weight_scale="learned")
    b = BinaryConv2d(3, 4, 3, padding=1, weight_scale="learned")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(a(x), b(x))
