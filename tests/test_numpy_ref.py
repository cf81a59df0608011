"""The reference interpreter, op by op, against hand-computed values and against torch's
own convolution as an independent reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnnkit.graph import INT32_MIN, Op
from bnnkit.runtime import numpy_ref as ref

T, Fa = True, False


def test_binary_dense_by_hand():
    x = np.array([[T, Fa, T, T]])  # +1 -1 +1 +1
    w = np.array([[T, T, T, T], [Fa, T, Fa, T]])  # +1+1+1+1 ; -1+1-1+1
    out = ref.binary_dense(Op("binary_dense", ["x"], "y", params={"weight": w}), x)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[2, -2]])  # 1-1+1+1 ; -1-1-1+1


def test_input_dense_by_hand():
    x = np.array([[10, 0, 255]], np.uint8)
    w = np.array([[T, Fa, Fa]])
    out = ref.input_dense(Op("input_dense", ["x"], "y", params={"weight": w}), x)
    np.testing.assert_array_equal(out, [[10 - 0 - 255]])


def test_zero_padding_counts_only_valid_taps():
    # 1 channel 2x2 of +1, 3x3 all-(+1) kernel, padding 1: each output sees 4 valid taps.
    x = np.ones((1, 1, 2, 2), bool)
    w = np.ones((1, 1, 3, 3), bool)
    op = Op("binary_conv2d", ["x"], "y", {"stride": 1, "padding": 1, "pad": "zero"}, {"weight": w})
    np.testing.assert_array_equal(ref.binary_conv2d(op, x), [[[[4, 4], [4, 4]]]])
    op.attrs["pad"] = "minus_one"  # 5 padded taps of -1 each
    np.testing.assert_array_equal(ref.binary_conv2d(op, x), [[[[-1, -1], [-1, -1]]]])
    op.attrs["pad"] = "plus_one"
    np.testing.assert_array_equal(ref.binary_conv2d(op, x), [[[[9, 9], [9, 9]]]])


@pytest.mark.parametrize(
    "stride, padding, pad", [(1, 0, "zero"), (2, 1, "zero"), ((2, 1), (0, 2), "minus_one"), (1, 1, "plus_one")]
)
def test_binary_conv_matches_torch(stride, padding, pad):
    rng = np.random.default_rng(1)
    x, w = rng.random((3, 5, 7, 9)) < 0.5, rng.random((6, 5, 3, 5)) < 0.5
    op = Op("binary_conv2d", ["x"], "y", {"stride": stride, "padding": padding, "pad": pad}, {"weight": w})
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    xt = F.pad(torch.tensor(ref.pm1(x)), (pw, pw, ph, ph), value={"zero": 0.0, "minus_one": -1.0, "plus_one": 1.0}[pad])
    want = F.conv2d(xt, torch.tensor(ref.pm1(w)), stride=stride).numpy()
    np.testing.assert_array_equal(ref.binary_conv2d(op, x), want)


def test_input_conv_matches_torch():
    rng = np.random.default_rng(2)
    x, w = rng.integers(0, 256, (2, 3, 8, 6), dtype=np.uint8), rng.random((4, 3, 3, 3)) < 0.5
    op = Op("input_conv2d", ["x"], "y", {"stride": 2, "padding": 1}, {"weight": w})
    want = F.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(ref.pm1(w)), stride=2, padding=1).numpy()
    np.testing.assert_array_equal(ref.input_conv2d(op, x), want)


def test_threshold_flip_and_constant_channels():
    x = np.array([[[-3, 0, 3]], [[-3, 0, 3]], [[-3, 0, 3]], [[-3, 0, 3]]], np.int32)[None]  # (1, 4, 1, 3)
    params = {"thresh": np.array([0, 0, INT32_MIN, INT32_MIN], np.int32), "flip": np.array([Fa, T, Fa, T])}
    out = ref.threshold(Op("threshold", ["x"], "y", params=params), x)
    np.testing.assert_array_equal(out[0, :, 0], [[Fa, T, T], [T, T, Fa], [T, T, T], [Fa, Fa, Fa]])


def test_affine_rounds_like_float32():
    x = np.array([[3, -7]], np.int32)
    scale, bias = np.array([0.1, 1 / 3], np.float32), np.array([1e-8, -2.5], np.float32)
    out = ref.affine(Op("affine", ["x"], "y", params={"scale": scale, "bias": bias}), x)
    want = [np.float32(np.float32(3) * scale[0]) + bias[0], np.float32(np.float32(-7) * scale[1]) + bias[1]]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], np.array(want, np.float32))


def test_pools():
    bits = np.array([[[[T, Fa], [Fa, Fa]], [[T, T], [T, Fa]]]])  # (1, 2, 2, 2)
    op = Op("maxpool", ["x"], "y", {"kernel": 2, "stride": 2}, {"min_channels": np.array([Fa, T])})
    np.testing.assert_array_equal(ref.maxpool(op, bits)[:, :, 0, 0], [[T, Fa]])  # OR, then AND
    ints = np.arange(16, dtype=np.int32).reshape(1, 1, 4, 4)
    op = Op("maxpool", ["x"], "y", {"kernel": (2, 3), "stride": (2, 1)})
    np.testing.assert_array_equal(ref.maxpool(op, ints)[0, 0], [[6, 7], [14, 15]])
    op = Op("avgpool", ["x"], "y", {"kernel": 2, "stride": 2})
    np.testing.assert_array_equal(
        ref.avgpool(op, ints)[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    )


def test_add_flatten_argmax():
    a = np.array([[1, 5, 5]], np.int32)
    assert ref.add(Op("add", ["a", "b"], "c"), a, a).tolist() == [[2, 10, 10]]
    assert ref.argmax(Op("argmax", ["a"], "l"), a).tolist() == [1]  # the first of equal maxima
    x = np.arange(12).reshape(1, 3, 2, 2)
    assert ref.flatten(Op("flatten", ["x"], "f"), x)[0].tolist() == list(range(12))  # C order: channel-major
