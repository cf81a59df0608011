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
from bnnkit.nn import BatchNorm2d, BinaryConv2d, batchnorm, bf16
from bnnkit.nn.batchnorm import link_bfloat16_maps
from bnnkit.quant.sign import open_bounds
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
@pytest.mark.parametrize(("x_bf16", "chunks"), [(False, 1), (True, 1), (False, 2), (True, 3)])
def test_the_sign_of_the_output_and_its_clipped_gradient_are_the_sign_kernels_bits(x_bf16, chunks):
    """batchnorm_forward(signs=True) is sign_bf16 of its output; the backward from the sign's
    gradient is the backward from clipped_grad_bf16 of it, at the clip bounds, 0 and NaN too."""
    gen = torch.Generator().manual_seed(chunks)
    rows, c = 200, 16
    x = (torch.randn(rows, c, generator=gen) * 30).round()
    x[5, 7] = math.nan  # a NaN output row for channel 7: sign +1, gradient 0
    x = bf16_bits(x.bfloat16()) if x_bf16 else x.numpy()
    w, b = torch.randn(c, generator=gen).numpy(), torch.randn(c, generator=gen).numpy()
    # weight 0: every output is the bias: outside the clip in channels 3 and 6 (the first float32
    # below -1: no gradient), 0 in channel 4 (sign +1) and on the clip's bound in channel 5, both
    # inside (the whole gradient)
    low, high = open_bounds(1.0, torch.float32)
    w[3:7], b[3:7] = 0.0, (1.5, 0.0, 1.0, low)
    y, mean, invstd = fast.batchnorm_forward(x, w, b, None, 0.1, 1e-5, chunks)
    signs, mean_s, invstd_s = fast.batchnorm_forward(x, w, b, None, 0.1, 1e-5, chunks, signs=True)
    assert np.array_equal(signs, fast.sign_bf16(y.ravel()).reshape(y.shape))
    assert np.array_equal(mean, mean_s, equal_nan=True) and np.array_equal(invstd, invstd_s, equal_nan=True)
    assert {0x3F80, 0xBF80} == set(signs.ravel().tolist())

    grad = bf16_bits(torch.randn(rows, c, generator=gen).bfloat16())
    clipped = fast.clipped_grad_bf16(grad.ravel(), y.ravel(), low, high).reshape(y.shape)
    assert (clipped[:, [3, 6]] == 0).all() and np.array_equal(clipped[:, 4:6], bf16_bits_widened(grad[:, 4:6]))
    theirs = fast.batchnorm_backward(x, clipped, mean, invstd, w, chunks)
    ours = fast.batchnorm_backward(x, grad, mean, invstd, w, chunks, sign_of=(b, low, high))
    for a, o in zip(theirs, ours, strict=True):
        assert a is not None and o is not None and a.dtype == o.dtype
        assert np.array_equal(a, o, equal_nan=True)


@needs_kernels
@pytest.mark.parametrize("grad_layout", [torch.channels_last, torch.contiguous_format])
def test_the_sign_handed_over_has_the_gradients_of_the_sign_after_the_batchnorm(grad_layout):
    """_HostBatchNormSign against _HostBatchNorm then the fused sign, whatever layout the gradient
    comes back in (another than the map's takes the fallback, which recomputes the output)."""
    gen = torch.Generator().manual_seed(4)
    x0 = (torch.randn(6, 16, 5, 7, generator=gen) * 3).contiguous(memory_format=torch.channels_last)
    w0, b0 = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    grad = torch.randn(6, 16, 5, 7, generator=gen).bfloat16().contiguous(memory_format=grad_layout)
    results = []
    for fused in (True, False):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        running = [torch.zeros(16), torch.ones(16)]
        if fused:
            out = batchnorm._HostBatchNormSign.apply(x, w, b, *running, 0.1, 1e-5, 1.0)
        else:
            out = bf16._ClippedSignBf16.apply(batchnorm._HostBatchNorm.apply(x, w, b, *running, 0.1, 1e-5, None), 1.0)
        out.backward(grad)
        results.append([out, x.grad, w.grad, b.grad, *running])
    for ours, theirs in zip(*results, strict=True):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


@needs_kernels
def test_the_sign_written_beside_the_output_and_the_gradients_added_in_its_clip_are_the_kernels_bits():
    """batchnorm_forward(signs_into=) writes sign_bf16 of the output it returns unchanged;
    clipped_grad_bf16(plus=) is plus + the clipped gradient, -0.0 + 0.0 = +0.0 included."""
    gen = torch.Generator().manual_seed(7)
    rows, c = 150, 16
    x = (torch.randn(rows, c, generator=gen) * 3).numpy()
    w, b, residual = torch.randn(c, generator=gen).numpy(), torch.randn(c, generator=gen).numpy(), x[::-1].copy()
    y, mean, invstd = fast.batchnorm_forward(x, w, b, None, 0.1, 1e-5, 2, residual=residual)
    signs = np.empty((rows, c), np.uint16)
    y2, mean2, invstd2 = fast.batchnorm_forward(x, w, b, None, 0.1, 1e-5, 2, residual=residual, signs_into=signs)
    assert np.array_equal(y, y2) and np.array_equal(mean, mean2) and np.array_equal(invstd, invstd2)
    assert np.array_equal(signs, fast.sign_bf16(y.ravel()).reshape(y.shape))

    low, high = open_bounds(1.0, torch.float32)
    grad = bf16_bits(torch.randn(rows * c, generator=gen).bfloat16())
    plus = torch.randn(rows * c, generator=gen).numpy()
    plus[:40] = -0.0  # where the clip passes nothing: +0.0 from autograd's addition
    outside = np.abs(y.ravel()) >= 1
    plus[:40][~outside[:40]] = 1.0
    clipped = fast.clipped_grad_bf16(grad, y.ravel(), low, high)
    added = fast.clipped_grad_bf16(grad, y.ravel(), low, high, plus=plus)
    expected = (torch.from_numpy(plus) + torch.from_numpy(clipped)).numpy()  # autograd's float32 addition
    assert np.array_equal(added.view(np.uint32), expected.view(np.uint32))
    assert outside[:40].any() and (added[:40][outside[:40]].view(np.uint32) == 0).all()

    # the backward that makes that sum in its first pass: the sum written, and the gradients of
    # the BatchNorm for it, the same bits as the two passes apart
    for other in (plus, None):
        into = np.full((rows, c), np.nan, np.float32)
        clip = fast.SavedClip(y, low, high, None if other is None else other.reshape(rows, c), into)
        fused = fast.batchnorm_backward(x, grad.reshape(rows, c), mean, invstd, w, 2, clipped_by=clip)
        dy = added if other is not None else clipped
        apart = fast.batchnorm_backward(x, dy.reshape(rows, c), mean, invstd, w, 2)
        assert np.array_equal(into.view(np.uint32), dy.reshape(rows, c).view(np.uint32))
        assert all(np.array_equal(f, a) for f, a in zip(fused, apart, strict=True))


@needs_kernels
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("grads", ["both", "sign", "map", "other layout"])
def test_the_sign_shared_with_the_output_has_the_gradients_of_the_sign_made_apart(residual, grads):
    """_HostBatchNormSharedSign against _HostBatchNorm and a fused sign of its output, read by
    the sign's reader and the output's: forward and every gradient, bit for bit, whichever reader
    sends a gradient and in whatever layout."""
    gen = torch.Generator().manual_seed(5)
    shape = (6, 16, 5, 7)
    x0, r0 = ((torch.randn(*shape, generator=gen) * 2).contiguous(memory_format=torch.channels_last) for _ in "xr")
    w0, b0 = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    layout = torch.contiguous_format if grads == "other layout" else torch.channels_last
    grad_sign = torch.randn(*shape, generator=gen).bfloat16().contiguous(memory_format=layout)
    grad_map = torch.randn(*shape, generator=gen).contiguous(memory_format=layout)
    results = []
    for shared in (True, False):
        x, w, b, r = (t.clone().requires_grad_() for t in (x0, w0, b0, r0))
        running = [torch.zeros(16), torch.ones(16)]
        args = (x, w, b, *running, 0.1, 1e-5, r if residual else None)
        if shared:
            out, sign = batchnorm._HostBatchNormSharedSign.apply(*args, 1.0)
        else:
            out = batchnorm._HostBatchNorm.apply(*args)
            sign = bf16._ClippedSignBf16.apply(out, 1.0)
        ends = {"sign": [sign], "map": [out]}.get(grads, [sign, out])
        torch.autograd.backward(ends, [grad_sign if e is sign else grad_map for e in ends])
        results.append([out, sign, x.grad, w.grad, b.grad, *running, r.grad if residual else r0])
    for ours, theirs in zip(*results, strict=True):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def bf16_bits_widened(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


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


def bfloat16_inputs(net: torch.nn.Module, outputs: bool = False) -> list[str]:
    """Names of the BatchNorms that receive a bfloat16 map in a training forward (``outputs``: that
    hand one over, their sign)."""
    seen: list[str] = []
    for name, module in net.named_modules():
        if isinstance(module, BatchNorm2d):
            module.register_forward_hook(
                lambda m, inputs, out, name=name: (
                    seen.append(name) if (out if outputs else inputs[0]).dtype == torch.bfloat16 else None
                )
            )
    return seen


def signs_shared(net: torch.nn.Module) -> list[str]:
    """Names of the binary convolutions that take the sign handed over with their input."""
    seen: list[str] = []
    for name, module in net.named_modules():
        if isinstance(module, BinaryConv2d):
            module.register_forward_pre_hook(
                lambda m, inputs, name=name: (
                    seen.append(name) if m.shares_sign and hasattr(inputs[0], bf16.HANDED_SIGN) else None
                )
            )
    return seen


@pytest.mark.parametrize(
    ("model", "options", "layout", "signs", "shared"),
    [
        ("resnet20", {"width_mult": 0.5}, torch.channels_last, 9, 9),  # every BatchNorm in the kernels
        # 4 channels in the first stage: ATen's BatchNorm, on the widened map; 8 and 16 in the kernels
        ("resnet20", {"width_mult": 0.25}, torch.channels_last, 6, 5),
        ("resnet20", {"width_mult": 0.5}, torch.contiguous_format, 0, 0),  # NCHW: ATen's
        ("resnet20", {}, torch.channels_last, 9, 9),  # 64 channels: the last stage's products in halves
        ("resnet20", {"width_mult": 0.5, "recipe": "embedded+double_residual"}, torch.channels_last, 0, 18),
        ("small_cnn", {"width": 16}, torch.channels_last, 3, 0),  # through max-pools to two of the BatchNorms
        ("ebnn_cnn", {}, torch.channels_last, 1, 0),  # conv, pool, BatchNorm, whose gradient comes back NCHW
    ],
)
def test_training_steps_are_the_same_bits_linked_or_not(bfloat16_training, model, options, layout, signs, shared):
    torch.manual_seed(0)
    options = {"recipe": "embedded", **options}
    plain = create_model(model, 10, (1, 28, 28), options.pop("recipe"), **options).to(memory_format=layout)
    linked = copy.deepcopy(plain)
    assert link_bfloat16_maps(linked) > 0
    handed_over, signs_handed_over = bfloat16_inputs(linked), bfloat16_inputs(linked, outputs=True)
    taken_with_input = signs_shared(linked)
    ours, theirs = trained_state(linked, layout), trained_state(plain, layout)
    assert handed_over  # the bfloat16 maps did reach the BatchNorms
    assert len(set(signs_handed_over)) == signs  # and the signs the convolutions after them
    assert len(set(taken_with_input)) == shared  # and, with their outputs, to the blocks' convolutions
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def sign_links(net: torch.nn.Module) -> int:
    return sum(bool(m.sign_reader) for m in net.modules() if isinstance(m, BatchNorm2d))


def shared_links(net: torch.nn.Module) -> int:
    return sum(bool(m.sign_sharer) for m in net.modules() if isinstance(m, BatchNorm2d))


def test_only_a_bare_convolution_read_by_a_batchnorm_alone_is_linked(bfloat16_training):
    # eBNN's order, conv → pool → BatchNorm: linked through the pool; and the first BatchNorm's
    # sign to the second convolution
    ebnn = create_model("ebnn_cnn", 10, (1, 28, 28), "embedded")
    assert link_bfloat16_maps(ebnn) == 3 and sign_links(ebnn) == 1
    # pooling after the sign: the sign module, not a convolution, reads the BatchNorm
    after_sign = create_model("ebnn_cnn", 10, (1, 28, 28), "embedded+pool_after_sign")
    assert link_bfloat16_maps(after_sign) == 2 and sign_links(after_sign) == 0
    # 21 convolutions (stem, blocks, two shortcuts) into their BatchNorms; each block's first
    # BatchNorm into its second convolution, unless the double residual's shortcut reads it too,
    # where the sign goes with the output instead, as it does to each block's first convolution
    resnet = create_model("resnet20", 10, (1, 28, 28), "embedded", width_mult=0.5)
    assert link_bfloat16_maps(resnet) == 39 and sign_links(resnet) == 9 and shared_links(resnet) == 9
    double = create_model("resnet20", 10, (1, 28, 28), "embedded+double_residual", width_mult=0.5)
    assert link_bfloat16_maps(double) == 39 and sign_links(double) == 0 and shared_links(double) == 18
    # a feature_norm BatchNorm, not the convolution, reads each block's input: nothing shared
    normed = create_model("resnet20", 10, (1, 28, 28), "embedded+feature_norm", width_mult=0.5)
    link_bfloat16_maps(normed)
    assert shared_links(normed) == 0
    # XNOR-Net's K reads the real input: no sign handed over
    xnor = torch.nn.Sequential(BatchNorm2d(8), BinaryConv2d(8, 8, 3, activation_scale="xnor"))
    assert link_bfloat16_maps(xnor) == 0
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
