"""The models' BatchNorm: ``nn.BatchNorm2d`` whose training pass on a CPU runs in bnnkit's host
kernels (``bnnkit.runtime.fast.batchnorm_forward``/``_backward``) where the map allows it.

ATen's channels-last BatchNorm keeps each channel's running sums in a buffer that it loads and
stores every row, and makes three passes over the map forward and three backward; the host
kernels keep the sums in registers and make two. The outputs, batch statistics, running
statistics and gradients are ATen's bit for bit: the same sums in the same order (ATen's split
of the rows between its threads included), the multiply-adds fused where ATen's build fuses
them. A training run is therefore the same bits either way; BatchNorm's time in a half-width
ResNet-20 step falls by about a fifth, and a ResNet-20 step (batch 128) takes about 6% less
(docs/performance.md).

That equality rests on how PyTorch's kernels were compiled, so the first use at each thread
count compares both on a small map and keeps ATen's if a single bit differs. Anything else
(evaluation, another device or dtype, a map that is not channels-last, channels not a multiple
of 8, no affine parameters, tracing and ONNX export, a CPU without AVX2 and FMA, no C compiler)
takes ATen's BatchNorm.

After a bfloat16 binary convolution (``link_bfloat16_maps``) the map arrives in bfloat16: the
kernels widen it as they load it (exactly) and return its gradient in bfloat16, rounded as the
convolution's backward would have rounded the float32 one. Where ATen takes the map instead it
is widened first, so the bits are the same either way.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from bnnkit.errors import BnnkitError
from bnnkit.nn import bf16
from bnnkit.nn.layers import BinaryConv2d
from bnnkit.quant.sign import open_bounds
from bnnkit.runtime import fast


def _rows(x: torch.Tensor) -> np.ndarray:
    """A channels-last map (N, C, H, W) as the (N·H·W, C) array the kernels read, no copy
    (``bf16.numpy_view``: a bfloat16 map as its bits)."""
    return bf16.numpy_view(x.detach().permute(0, 2, 3, 1).reshape(-1, x.shape[1]))


def _as_map(rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    n, c, h, w = like.shape
    return bf16.tensor_view(rows).view(n, h, w, c).permute(0, 3, 1, 2)


def _forward(
    ctx: Any,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
    signs: bool = False,
    residual: torch.Tensor | None = None,
    signs_too: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The host kernels' forward (with ``signs``, the output's sign in bfloat16; with ``residual``,
    that map added; with ``signs_too``, the output and its sign), saving what the backward reads
    (and with ``signs_too`` the output, whose clip the sign's gradient passes through)."""
    chunks = torch.get_num_threads()
    running = None if running_mean is None or running_var is None else (running_mean.numpy(), running_var.numpy())
    params = (weight.detach().numpy(), bias.detach().numpy())
    plus = None if residual is None else _rows(residual)
    sign_bits = np.empty((x.numel() // x.shape[1], x.shape[1]), fast.BF16_BITS) if signs_too else None
    y, mean, invstd = fast.batchnorm_forward(_rows(x), *params, running, momentum, eps, chunks, signs, plus, sign_bits)
    out = _as_map(y, x)
    saved = (x, weight, bias, torch.from_numpy(mean), torch.from_numpy(invstd))
    ctx.save_for_backward(*saved, *((out,) if signs_too else ()))
    ctx.chunks, ctx.eps = chunks, eps
    return out, None if sign_bits is None else _as_map(sign_bits, x)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """The gradients of x, the weight and the bias for the float32 output gradient ``grad``."""
    x, weight, _, mean, invstd = ctx.saved_tensors[:5]
    if not (_channels_last(grad) and grad.dtype == torch.float32):
        # what autograd would have called: ATen's backward takes every layout (and a float32
        # map: autograd casts the gradient of a bfloat16 one as the convolution would)
        mask = list(ctx.needs_input_grad[:3])
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            grad, x.float(), weight, None, None, mean, invstd, True, ctx.eps, mask
        )
        return dx, dw, db
    return _host_backward(ctx, grad)


def _host_backward(ctx: Any, grad: torch.Tensor, **how: Any) -> tuple[torch.Tensor | None, ...]:
    """The host kernels' gradients of x, the weight and the bias for the output gradient ``grad``:
    float32, or the bfloat16 gradient of the output's sign as ``how`` says (``fast.batchnorm_backward``'s
    ``sign_of`` or ``clipped_by``)."""
    x, weight, _, mean, invstd = ctx.saved_tensors[:5]
    stats = (mean.numpy(), invstd.numpy(), weight.detach().numpy())
    dx, dw, db = fast.batchnorm_backward(_rows(x), _rows(grad), *stats, ctx.chunks, ctx.needs_input_grad[0], **how)
    return None if dx is None else _as_map(dx, x), torch.from_numpy(dw), torch.from_numpy(db)


class _HostBatchNorm(torch.autograd.Function):
    """The BatchNorm, and where a residual block adds a map to its output (``residual``, else
    None), that addition in the same pass; its gradient is the output's, as an addition's is."""

    # ctx is Any: the saved chunks and eps are attributes FunctionCtx does not declare
    @staticmethod
    def forward(ctx: Any, x, weight, bias, running_mean, running_var, momentum: float, eps: float, residual):
        return _forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, residual=residual)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):
        return *_backward(ctx, grad), None, None, None, None, grad if ctx.needs_input_grad[7] else None


class _HostBatchNormSign(torch.autograd.Function):
    """The BatchNorm's output handed straight to the clipped sign of the binary convolution that
    alone reads it (``bnnkit.nn.bf16.clipped_sign_for_conv``), in one pass each way: forward the
    sign in bfloat16, backward the BatchNorm's gradients from the sign's bfloat16 gradient, the
    output recomputed where the clip needs it. The same bits as the two apart."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, running_mean, running_var, momentum: float, eps: float, clip: float):
        ctx.clip = clip
        return _forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, signs=True)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):
        x, weight, bias = ctx.saved_tensors[:3]
        if grad.dtype == torch.bfloat16 and grad.stride() == x.stride():  # x is channels-last and dense
            sign_of = (bias.detach().numpy(), *open_bounds(ctx.clip, torch.float32))
            return *_host_backward(ctx, grad, sign_of=sign_of), None, None, None, None, None
        # another layout: the output again (the same bits), then the sign's backward and the
        # BatchNorm's, as they run apart
        params = (weight.detach().numpy(), bias.detach().numpy())
        y, _, _ = fast.batchnorm_forward(_rows(x), *params, None, 0.0, ctx.eps, ctx.chunks)
        dy = bf16.clipped_sign_backward(grad, _as_map(y, x), ctx.clip)
        return *_backward(ctx, dy), None, None, None, None, None


class _HostBatchNormSharedSign(torch.autograd.Function):
    """The BatchNorm (plus ``residual`` where given) and, in the same pass, the clipped sign of its
    output for the binary convolution that reads it beside one other reader (a residual block's
    input: the first convolution and the shortcut). Backward, the two readers' gradients are
    added as the first of the kernels' two passes clips the sign's and sums the result
    (``fast.SavedClip``): the same bits as the sign made and clipped apart."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, running_mean, running_var, momentum: float, eps: float, residual, clip):
        ctx.clip = clip
        ctx.set_materialize_grads(False)
        args = (x, weight, bias, running_mean, running_var, momentum, eps)
        return _forward(ctx, *args, residual=residual, signs_too=True)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor | None, grad_sign: torch.Tensor | None):
        x, out = ctx.saved_tensors[0], ctx.saved_tensors[5]
        if grad_sign is not None and all(g.stride() == x.stride() for g in (grad_sign, out, *_given(grad))):
            # the kernels make the whole output gradient (also the residual's) in their first pass
            dy = torch.empty_like(out)
            low, high = open_bounds(ctx.clip, torch.float32)
            clip = fast.SavedClip(_rows(out), low, high, None if grad is None else _rows(grad), _rows(dy))
            grads = _host_backward(ctx, grad_sign, clipped_by=clip)
        else:
            apart = grad if grad_sign is None else bf16.clipped_sign_backward(grad_sign, out, ctx.clip, plus=grad)
            if apart is None:
                return (None,) * 9
            dy, grads = apart, _backward(ctx, apart)
        return *grads, None, None, None, None, dy if ctx.needs_input_grad[7] else None, None


def _given(grad: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    return () if grad is None else (grad,)


def _channels_last(x: torch.Tensor) -> bool:
    """Channels-last and not also contiguous, as ATen decides which kernel a map takes."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@functools.cache
def _matches_aten(chunks: int) -> bool:
    """Whether the host kernels give ATen's bits here, on a small map, while ATen runs ``chunks``
    threads (``torch.get_num_threads()``, which this cache is keyed on; module docstring)."""
    try:
        if not fast.batchnorm_fits(2 * 3 * 5, 16, chunks):
            return False
    except (BnnkitError, OSError):  # no C compiler, or a library that does not load
        return False
    gen = torch.Generator().manual_seed(0)
    x, g = (
        (torch.randn(2, 16, 3, 5, generator=gen) * 3 + 1).contiguous(memory_format=torch.channels_last) for _ in "xg"
    )
    w, b, mean_before = (torch.randn(16, generator=gen) for _ in "wbm")
    running = (mean_before, torch.rand(16, generator=gen) + 0.5)
    theirs, mine = [r.clone() for r in running], [r.clone().numpy() for r in running]
    y, mean, invstd = torch.ops.aten.native_batch_norm(x, w, b, *theirs, True, 0.1, 1e-5)
    grads = torch.ops.aten.native_batch_norm_backward(g, x, w, None, None, mean, invstd, True, 1e-5, [True] * 3)
    host = fast.batchnorm_forward(_rows(x), w.numpy(), b.numpy(), (mine[0], mine[1]), 0.1, 1e-5, chunks)
    dx, dw, db = fast.batchnorm_backward(_rows(x), _rows(g), host[1], host[2], w.numpy(), chunks)
    expected = [_rows(y), mean.numpy(), invstd.numpy(), _rows(grads[0]), grads[1].numpy(), grads[2].numpy()]
    expected += [r.numpy() for r in theirs]
    return dx is not None and all(
        np.array_equal(a, b) for a, b in zip(expected, [*host, dx, dw, db, *mine], strict=True)
    )


def _host_takes(bn: nn.BatchNorm2d, x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and _channels_last(x)
        and bn.affine
        and (bn.running_mean is None or bn.running_mean.dtype == torch.float32)
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
        and _matches_aten(torch.get_num_threads())
        and fast.batchnorm_fits(x.numel() // x.shape[1], x.shape[1], torch.get_num_threads())
    )


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d``, its training pass in the host kernels where the map allows it (module docstring)."""

    # Set by link_bfloat16_maps: the convolution before may hand over its bfloat16 product
    # (takes_bf16); the binary convolution after, which alone reads the output, may take its
    # clipped sign from here (a tuple, which nn.Module does not register as a child); a binary
    # convolution that reads the output beside one other reader may take its sign from here too.
    takes_bf16 = False
    sign_reader: tuple[BinaryConv2d, ...] = ()
    sign_sharer: tuple[BinaryConv2d, ...] = ()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The BatchNorm of ``x``, plus ``residual`` where given (a residual block's addition: in
        the kernels' pass where the two maps share a layout)."""
        # Evaluation, and training without running statistics kept, read torch's own forward.
        if not (self.training and self.track_running_stats) or not _host_takes(self, x):
            out = super().forward(x.float() if self.takes_bf16 and x.dtype == torch.bfloat16 else x)
            return out if residual is None else out + residual
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:  # nn.BatchNorm2d's bookkeeping, as its forward does it
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        args = (x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps)
        if residual is not None:
            fits = residual.dtype == torch.float32 and residual.shape == x.shape and residual.stride() == x.stride()
            if not fits:
                return _HostBatchNorm.apply(*args, None) + residual
        # The host kernels' output is float32 and laid out as x: the reader's sign fuses for it as for x.
        sharer = self.sign_sharer[0].fused_sign_clip(x) if self.sign_sharer else None
        if sharer is not None:
            out, sign = _HostBatchNormSharedSign.apply(*args, residual, sharer)
            setattr(out, bf16.HANDED_SIGN, sign)  # for the sharer's forward (BinaryConv2d._quantized_input)
            return out
        clip = self.sign_reader[0].fused_sign_clip(x) if self.sign_reader and residual is None else None
        if clip is None:
            return _HostBatchNorm.apply(*args, residual)
        return _HostBatchNormSign.apply(*args, clip)


def plus_residual(norm: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``norm(x) + residual``: in the BatchNorm's own pass where ``norm`` is a bnnkit ``BatchNorm2d``
    (the same bits: the addition is rounded once either way)."""
    return norm(x, residual) if isinstance(norm, BatchNorm2d) else norm(x) + residual


def _end(module: nn.Module, last: bool) -> nn.Module:
    """The module that reads a chain's input (or makes its output): into nested Sequentials."""
    while isinstance(module, nn.Sequential) and len(module):
        module = module[-1 if last else 0]
    return module


def _sole_reader_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module]]:
    """(maker, reader) pairs where the reader alone reads the maker's output: neighbours in a
    Sequential, and the pairs a block names (``sole_reader_pairs()``, as the residual blocks do)."""
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            yield from zip(module, list(module)[1:])
        pairs = getattr(module, "sole_reader_pairs", None)
        if callable(pairs):
            yield from pairs()


def _sign_sharing_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module]]:
    """(maker, reader) pairs where the reader and one other module read the maker's output, as the
    models name them (``sign_sharing_pairs()``: a residual block's input and its first convolution)."""
    for module in model.modules():
        pairs = getattr(module, "sign_sharing_pairs", None)
        if callable(pairs):
            yield from pairs()


def link_bfloat16_maps(model: nn.Module) -> int:
    """Lets every binary convolution whose output only a bnnkit ``BatchNorm2d`` reads, directly
    or through a ``MaxPool2x2`` that only it reads, hand over the bfloat16 product unwidened
    (``bnnkit.nn.bf16``; module docstring), every such BatchNorm whose output only a binary
    convolution reads hand over that convolution's clipped sign (``_HostBatchNormSign``), and
    every one whose output a binary convolution reads beside one other module hand that sign over
    with the output (``_HostBatchNormSharedSign``): the same bits, fewer passes over the maps per
    step. Returns the number of links made."""
    from bnnkit.nn.pool import MaxPool2x2

    linked = 0
    for maker, read in _sign_sharing_pairs(model):
        norm, conv = _end(maker, last=True), _end(read, last=False)
        if isinstance(norm, BatchNorm2d) and isinstance(conv, BinaryConv2d):
            norm.sign_sharer, conv.shares_sign = (conv,), True
            linked += 1
    reader = {id(_end(maker, last=True)): _end(read, last=False) for maker, read in _sole_reader_pairs(model)}
    for module in model.modules():
        after = reader.get(id(module))
        if isinstance(module, BatchNorm2d) and isinstance(after, BinaryConv2d) and after.activation_scale == "none":
            module.sign_reader, after.takes_signs = (after,), True  # XNOR-Net's K reads the real input
            linked += 1
        if not isinstance(module, BinaryConv2d):
            continue
        if isinstance(after, MaxPool2x2):  # the pool passes bfloat16 through as it is (bnnkit.nn.pool)
            after = reader.get(id(after))
        if isinstance(after, BatchNorm2d):
            module.feeds_batchnorm = after.takes_bf16 = True
            linked += 1
    return linked
