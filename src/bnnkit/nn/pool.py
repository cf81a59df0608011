"""The models' pools. The 2x2 max-pool: ``nn.MaxPool2d(2)`` whose pass on a CPU runs in bnnkit's host
kernels (``bnnkit.runtime.fast.maxpool2``) where the map allows it.

ATen's CPU pool keeps an int64 index per output for the backward, which zero-fills the
input gradient and scatters into it; the host kernel keeps one byte per output and writes
each input gradient once. The values and gradients are ATen's bit for bit (ties to the
first tap in row order, NaN wins), so a training run is the same bits either way; an ebnn_cnn
step takes about 0.95x the time (docs/performance.md). Anything else (another device or
dtype, a map that is not channels-last, odd sizes, channels not a multiple of 4, tracing
and ONNX export, a machine without a C compiler) takes ATen's pool.

Between a bfloat16 convolution and the BatchNorm that takes its product unwidened
(``bnnkit.nn.batchnorm.link_bfloat16_maps``) the map and its gradient are bfloat16: the kernels
pool them as they are (the maximum of bfloat16 values is one of them, and its gradient is
copied, not summed), and so does ATen's pool where the kernels do not take the map.

The global average pool (``GlobalAvgPool``, ``nn.AdaptiveAvgPool2d(1)``) returns a channels-last
map's gradient channels-last: ATen's mean backward divides the broadcast gradient into a
contiguous (NCHW) map, which sends the BatchNorms of a ResNet's last stage to ATen's NCHW
backward instead of bnnkit's kernels, at a few times their cost (docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from bnnkit.nn.bf16 import numpy_view, tensor_view
from bnnkit.runtime import fast


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class _HostMaxPool2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        out, tap = fast.maxpool2(numpy_view(_nhwc(x.detach())), threads)
        ctx.save_for_backward(torch.from_numpy(tap))
        ctx.threads = threads  # type: ignore[attr-defined]
        return tensor_view(out).permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (tap,) = ctx.saved_tensors  # type: ignore[attr-defined]
        g = numpy_view(_nhwc(grad).contiguous())  # autograd gives the output's type: float32 or bfloat16
        return tensor_view(fast.maxpool2_backward(g, tap.numpy(), ctx.threads)).permute(0, 3, 1, 2)  # type: ignore[attr-defined]


def _traced() -> bool:
    """Whether the pass is being traced or exported, which records ATen's ops, not autograd Functions."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def _host_pool_takes(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and fast.maxpool2_fits(tuple(_nhwc(x).shape))
        and not _traced()
        and fast.builds()
    )


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``, in the host kernels where the map allows it (module docstring)."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _HostMaxPool2.apply(x) if _host_pool_takes(x) else super().forward(x)


class _ChannelsLastMean(torch.autograd.Function):
    """The mean over H and W, keeping both; its gradient laid out as the input. Each input
    gradient is the output's divided by H·W, as ATen's mean backward computes it."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape  # type: ignore[attr-defined]
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        shape = ctx.shape  # type: ignore[attr-defined]
        spread = (grad / (shape[2] * shape[3])).expand(shape)
        return spread.contiguous(memory_format=torch.channels_last)


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` whose gradient keeps a channels-last map's layout (module docstring)."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.requires_grad and x.is_contiguous(memory_format=torch.channels_last) and not _traced():
            return _ChannelsLastMean.apply(x)
        return super().forward(x)
