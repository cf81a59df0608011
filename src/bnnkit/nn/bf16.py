"""The forward product of a binary convolution or linear layer in bfloat16, bit for bit the float32 one.

When both operands are exactly ±1 (quantizers with ``signs``), every output of the
convolution is an integer sum of ±1 products; zero padding drops taps, never single
products of a tap. oneDNN multiplies bfloat16 operands and accumulates in float32, so
only the final rounding to a bfloat16 output can lose anything, and it loses nothing
while the sum is a bfloat16 value: any integer up to 256 in magnitude, any even one up
to 512. A sum of an even number of ±1 is even, so a convolution whose input has an even
number of channels per group (each valid tap adds that many products) is exact up to
512 products per output; a linear layer's outputs all sum ``in_features`` products. Within
that bound this forward costs about half of float32's on a CPU with AVX512-BF16
(docs/performance.md). A convolution with up to twice that (64 input channels of a 3×3
kernel, as in ResNet-20's last stage) sums each half of its input channels in bfloat16 and
adds the two halves in float32, exactly (``forward_parts``). On a channels-last map (a training
step's layout) the host's XNOR-popcount kernel makes those sums instead, in one pass
(``fast.binary_conv_sums``): integers, so the same values.

The gradients are a separate choice, made per training run (``gradient_precision``):

* ``"float32"``: PyTorch's own float32 backward, called as autograd would call it, so the
  gradients (and a training run) are the same bits as with ``F.conv2d``/``F.linear``;
* ``"bfloat16"``: the incoming gradient is rounded to bfloat16 (the saved ±1 operands are
  exact in it), oneDNN sums the products in float32 and rounds each result to bfloat16.
  Every gradient of a binary layer is then within a relative 2⁻⁸ of float32's, as in
  bfloat16 mixed-precision training; latent weights, BatchNorm and the optimiser stay
  float32. On a CPU with AVX512-BF16 the convolutions' backward, the larger half of a
  training step, takes about 0.6× float32's time. Layers whose forward is not exact in
  bfloat16 (``forward_parts`` 0) keep a float32 forward and still take this backward.

Before such a convolution the clipped straight-through sign (``clipped_sign_for_conv``) runs in
the host kernels, straight to bfloat16 and back: one pass each way over the map instead of
PyTorch's four forward (sign, +0.5, sign, cast) and two backward (widen, hardtanh's backward),
with the same bits. A ResNet-20 step takes about 0.95x the time (docs/performance.md).

A convolution whose output only a bnnkit ``BatchNorm2d`` reads (``bnnkit.nn.batchnorm.link_bfloat16_maps``)
hands it the bfloat16 product as it is: the BatchNorm widens it as it loads it and returns its
input gradient in bfloat16, rounded as the cast in this module's backward would round it. The
same bits, without a widening pass forward and a cast backward. The other way round, a
BatchNorm whose output only such a convolution's fused sign reads writes that sign itself, and
takes its gradient back, without the float32 map in between.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from bnnkit.quant.sign import clipped_gradient, open_bounds
from bnnkit.runtime import fast

# Off: every binary convolution and linear layer runs in float32 (benchmarks/train_speed.py compares both).
enabled = True
# Off: the clipped sign before a bfloat16 convolution runs as PyTorch ops (the same bits; for tests and benchmarks).
fused_sign = True
# The binary layers' gradients (module docstring); training sets it for a run with gradient_precision().
gradients = "float32"
GRADIENT_PRECISIONS = ("float32", "bfloat16")


@contextlib.contextmanager
def gradient_precision(name: str) -> Iterator[None]:
    """The binary layers' gradients in ``name`` (one of GRADIENT_PRECISIONS) inside the block."""
    global gradients
    if name not in GRADIENT_PRECISIONS:
        raise ValueError(f"gradient precision {name!r}: use one of {', '.join(GRADIENT_PRECISIONS)}")
    before, gradients = gradients, name
    try:
        yield
    finally:
        gradients = before


@contextlib.contextmanager
def float32_only() -> Iterator[None]:
    """Every binary layer in float32 inside the block: a traced or exported graph (ONNX) must hold the
    float32 ops its consumers run, not this CPU-specific shortcut."""
    global enabled
    before, enabled = enabled, False
    try:
        yield
    finally:
        enabled = before


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN computes bfloat16 natively here; elsewhere it emulates it, slower than float32."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch without the query: stay in float32
        return False


def exact_in_bf16(channels_per_group: int, taps: int) -> bool:
    """Whether every sum of ``channels_per_group × taps`` products of ±1 (whole taps of them
    missing at a zero-padded border) is a bfloat16 value (module docstring)."""
    products = channels_per_group * taps
    return products <= 256 or (channels_per_group % 2 == 0 and products <= 512)


def forward_parts(channels_per_group: int, taps: int, groups: int) -> int:
    """In how many bfloat16 products over parts of the input channels a convolution's forward is
    exact (module docstring): 1 where one product holds every sum (``exact_in_bf16``); 2 where
    each half of an ungrouped convolution's input channels does (the first ``channels // 2``, and
    the rest), the two then added in float32; 0 where neither."""
    if exact_in_bf16(channels_per_group, taps):
        return 1
    half = channels_per_group // 2
    halves_exact = exact_in_bf16(half, taps) and exact_in_bf16(channels_per_group - half, taps)
    return 2 if groups == 1 and halves_exact else 0


def _fast_here(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        enabled
        and x.device.type == "cpu"
        and w.dtype == torch.float32
        and x.dtype in (torch.float32, torch.bfloat16)  # bfloat16: signs from clipped_sign_for_conv
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # a compiled graph runs elsewhere: float32, as written
        and cpu_has_fast_bf16()
    )


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a convolution (4-D ``w``) or a linear layer (2-D ``x`` and ``w``) of ±1
    operands may take the bfloat16 forward."""
    if w.ndim == 4:
        exact = x.ndim == 4 and forward_parts(w.shape[1], w.shape[2] * w.shape[3], x.shape[1] // w.shape[1]) > 0
    else:
        # Row-major operands: autograd's mm backward takes other products for other strides.
        exact = x.ndim == 2 and x.is_contiguous() and w.is_contiguous() and exact_in_bf16(w.shape[1], 1)
    return exact and _fast_here(x, w)


def _trained(x: torch.Tensor, w: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)


def coarse_gradients(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a layer of ±1 operands that is being trained takes the bfloat16 gradients."""
    return gradients == "bfloat16" and (w.ndim == 4 or x.ndim == 2) and _trained(x, w) and _fast_here(x, w)


def _forward(
    x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups: int, widen: bool = True
) -> torch.Tensor:
    """The exact forward (``forward_parts`` > 0) in bfloat16; in float32, except where ``widen`` is
    False and one product holds every sum."""
    xb, wb = x.bfloat16(), w.bfloat16()
    if forward_parts(w.shape[1], w.shape[2] * w.shape[3], groups) == 1:
        product = F.conv2d(xb, wb, None, stride, padding, dilation, groups)
        return product.float() if widen else product
    if _popcounts(xb, padding, dilation):
        signs = numpy_view(xb.detach().permute(0, 2, 3, 1))
        sums = fast.binary_conv_sums(signs, (wb > 0).numpy(), _pair(stride), _pair(padding), torch.get_num_threads())
        return torch.from_numpy(sums).permute(0, 3, 1, 2)
    half = w.shape[1] // 2
    low, high = (
        F.conv2d(xb[:, part], wb[:, part], None, stride, padding, dilation) for part in (slice(half), slice(half, None))
    )
    return _sum(low, high)


def _popcounts(xb: torch.Tensor, padding, dilation) -> bool:
    """Whether the host kernels' XNOR-popcount convolution (``fast.binary_conv_sums``) takes a
    forward that bfloat16 holds only in two halves: a channels-last map, as the training step
    lays maps out. It makes the same integer sums in one pass instead of two products and their
    addition (about half the time for 64 channels at 7x7, docs/performance.md)."""
    plain = not isinstance(padding, str) and _pair(dilation) == [1, 1]
    return plain and xb.is_contiguous(memory_format=torch.channels_last) and fast.builds()


def _sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b in float32 for bfloat16 maps of integers (exact): one pass in the host kernels where
    both have the same dense layout."""
    if a.stride() != b.stride() or not _dense(a) or not fast.builds():
        return a.float() + b.float()
    out = torch.empty_like(a, dtype=torch.float32)  # a's strides: the three memories align
    fast.sum_bf16(_flat(a), _flat(b), _flat(out), torch.get_num_threads())
    return out


def _operands(ctx, x: torch.Tensor, w: torch.Tensor, exact: bool, coarse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The operands of the forward, cast to bfloat16 once where the forward or the backward takes
    them so; saves what the backward reads (±1 operands are exact in bfloat16: the coarse backward
    keeps them at half the memory)."""
    ctx.coarse, ctx.input_dtype = coarse, x.dtype
    cast = (x.bfloat16(), w.bfloat16()) if exact or coarse else (x, w)
    ctx.save_for_backward(*(cast if coarse else (x, w)))
    return cast


def _widened(ctx, grad_x: torch.Tensor | None, grad_w: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The gradients in the operands' types: float32, or bfloat16 for signs that
    ``clipped_sign_for_conv`` made, whose backward widens them in the same pass as its mask."""
    return (None if grad_x is None else grad_x.to(ctx.input_dtype), None if grad_w is None else grad_w.float())


class _Bf16Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, exact, coarse, bf16_out, stride, padding, dilation, groups):
        ctx.config = (stride, padding, dilation, groups)
        xb, wb = _operands(ctx, x, w, exact, coarse)
        if exact:
            return _forward(xb, wb, stride, padding, dilation, groups, not bf16_out)
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.config
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad.bfloat16() if ctx.coarse else grad,
            x,
            w,
            None,
            _pair(stride),
            _pair(padding),
            _pair(dilation),
            False,
            [0, 0],
            groups,
            mask,
        )
        return *_widened(ctx, grad_x, grad_w), None, None, None, None, None, None, None


def _linear_forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x.bfloat16(), w.bfloat16()).float()


class _Bf16Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, exact, coarse):
        xb, wb = _operands(ctx, x, w, exact, coarse)
        return _linear_forward(xb, wb) if exact else F.linear(x, w)

    @staticmethod
    def backward(ctx, grad):
        # F.linear is mm(x, w.t()) for a 2-D x; autograd's mm backward for a row-major x and
        # a transposed w computes exactly these two products.
        x, w = ctx.saved_tensors
        grad = grad.bfloat16() if ctx.coarse else grad
        grad_x = grad.mm(w) if ctx.needs_input_grad[0] else None
        grad_w = grad.t().mm(x) if ctx.needs_input_grad[1] else None
        return *_widened(ctx, grad_x, grad_w), None, None


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """t's memory as a NumPy array, no copy; a bfloat16 tensor (NumPy has no bfloat16) as the
    uint16 of its bits, as the host kernels take it."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def tensor_view(a: np.ndarray) -> torch.Tensor:
    """The inverse of ``numpy_view``."""
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == fast.BF16_BITS else torch.from_numpy(a)


def _flat(t: torch.Tensor) -> np.ndarray:
    """The memory of a dense tensor (any dimension order) as one flat array, with no copy
    (``numpy_view``: a bfloat16 tensor as its bits)."""
    return numpy_view(t.as_strided((t.numel(),), (1,)))


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


class _ClippedSignBf16(torch.autograd.Function):
    """``clipped_sign(x, clip_value).bfloat16()`` and its backward, one pass each (host kernels)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, clip_value: float) -> torch.Tensor:
        ctx.clip_value = clip_value
        ctx.save_for_backward(x)
        out = torch.empty_like(x, dtype=torch.bfloat16)  # x's strides: the two memories align
        fast.sign_bf16(_flat(x.detach()), _flat(out), torch.get_num_threads())
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return clipped_sign_backward(grad, x, ctx.clip_value), None


# The attribute of a float32 map that carries its clipped sign in bfloat16, made in the same pass
# by the BatchNorm that made the map (bnnkit.nn.batchnorm's sign_sharer) for the binary
# convolution that reads it beside another reader (BinaryConv2d.shares_sign).
HANDED_SIGN = "bnnkit_clipped_sign"


def clipped_sign_backward(
    grad: torch.Tensor, x: torch.Tensor, clip_value: float, plus: torch.Tensor | None = None
) -> torch.Tensor:
    """The float32 gradient of ``x`` for the bfloat16 gradient ``grad`` of its clipped sign; plus
    ``plus`` where given (the float32 gradient from x's other reader, added as autograd adds them)."""
    if grad.stride() != x.stride() or not _dense(grad) or (plus is not None and plus.stride() != x.stride()):
        # PyTorch's ops, whose output layout (which the layers before read, and sum in that
        # order) follows both operands' strides: the kernel's would always be x's.
        clipped = clipped_gradient(grad.float(), x, clip_value)
        return clipped if plus is None else plus + clipped
    out = torch.empty_like(x)
    low, high = open_bounds(clip_value, torch.float32)
    added = None if plus is None else _flat(plus.detach())
    fast.clipped_grad_bf16(_flat(grad), _flat(x.detach()), low, high, _flat(out), torch.get_num_threads(), added)
    return out


def sign_fuses(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the clipped sign of a float32 map laid out as ``x`` (which may itself be a bfloat16
    map, whose float32 image a BatchNorm would make) is fused with its casts before a binary
    convolution with the ±1 kernel ``w`` (``clipped_sign_for_conv``)."""
    fits = fused_sign and x.dim() == 4 and _dense(x) and not torch.jit.is_tracing()
    return fits and usable(x, w) and coarse_gradients(x, w) and fast.builds()


def clipped_sign_for_conv(x: torch.Tensor, clip_value: float, w: torch.Tensor) -> torch.Tensor | None:
    """The clipped straight-through sign of ``x`` (``bnnkit.quant.sign.clipped_sign``) already in
    bfloat16, where a binary convolution with the ±1 kernel ``w`` takes bfloat16 operands and
    gradients anyway (``coarse_gradients``); None elsewhere. The sign, the casts and the mask
    then cost one pass over the map each way instead of four forward and two backward: the same
    values and gradients, bit for bit."""
    if x.dtype != torch.float32 or not sign_fuses(x, w):
        return None
    return _ClippedSignBf16.apply(x, clip_value)


def _pair(v) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def binary_conv2d(
    x: torch.Tensor, w: torch.Tensor, bias: None, stride, padding, dilation, groups: int, bf16_out: bool = False
) -> torch.Tensor:
    """``F.conv2d(x, w, None, ...)`` (``bias`` None, for the same signature) for operands that are exactly ±1 (and zero padding):
    the forward in bfloat16 where that is exact and fast, else in float32, the same values either way; the
    gradients in the run's ``gradients`` precision. ``bf16_out``: a training step that takes bfloat16
    forward and gradients returns the bfloat16 product unwidened (for a linked BatchNorm, module docstring)."""
    exact, coarse = usable(x, w), coarse_gradients(x, w)
    if coarse or (exact and _trained(x, w)):
        return _Bf16Conv.apply(x, w, exact, coarse, bf16_out and exact and coarse, stride, padding, dilation, groups)
    if exact:
        return _forward(x, w, stride, padding, dilation, groups)
    return F.conv2d(x, w, None, stride, padding, dilation, groups)


def binary_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, w)`` for operands that are exactly ±1, as ``binary_conv2d``."""
    exact, coarse = usable(x, w), coarse_gradients(x, w)
    if coarse or (exact and _trained(x, w)):
        return _Bf16Linear.apply(x, w, exact, coarse)
    return _linear_forward(x, w) if exact else F.linear(x, w)
