"""The small building blocks that repair methods add to a binary network.

The quantizer wrappers (``LearnableThreshold``, ``StandardizedWeights``, ``Prequantized``)
are ``Quantizer``s themselves, so a binary layer takes them wherever it takes a binarizer,
and they report the ``bits``/``binary`` of the binarizer they stand for to the cost model
and the exporter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.quant import Quantizer


def _per_channel(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (C,) shaped to broadcast over dim 1 of ``x``."""
    return values.view((1, -1) + (1,) * (x.ndim - 2))


class _Wrapper(Quantizer):
    def __init__(self, quantizer: Quantizer):
        super().__init__()
        self.quantizer = quantizer
        self.bits, self.binary = quantizer.bits, quantizer.binary
        # The output is the wrapped quantizer's, whatever the input: ±1 exactly if its are.
        self.signs = quantizer.signs


class LearnableThreshold(_Wrapper):
    """ReActNet's RSign (Liu et al., 2020): ``q(x − v_c)`` with a learnable threshold
    ``v_c`` per input channel, initialised to 0 (the plain binarizer ``q``).

    The input of a linear layer that follows a ``Flatten`` has ``C·H·W`` features in
    channel-major order; it is viewed as (N, C, H·W), so the threshold stays one per
    channel of the feature map, as a device's per-channel integer threshold needs.
    """

    def __init__(self, channels: int, quantizer: Quantizer):
        super().__init__(quantizer)
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim > 2:  # a feature map: broadcast, which keeps its memory format (channels last)
            return self.quantizer(x - _per_channel(x, self.shift))
        grouped = x.reshape(x.shape[0], len(self.shift), -1)
        return self.quantizer((grouped - self.shift.view(1, -1, 1)).reshape(x.shape))

    def extra_repr(self) -> str:
        return f"channels={len(self.shift)}"


class StandardizedWeights(_Wrapper):
    """IR-Net's Libra-PB (Qin et al., 2020): the latent weights centred and divided by
    their standard deviation per output channel (dim 0) before ``q``. The sign of a
    balanced, unit-variance tensor carries the most information, and the division puts
    the weights where the surrogate gradient of ``q`` is non-zero. Gradients flow
    through the statistics too, as in IR-Net."""

    eps = 1e-8  # a channel of equal weights has std 0

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.standardize(w))

    def standardize(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.flatten(1)
        shape = (-1,) + (1,) * (w.ndim - 1)
        return (w - flat.mean(1).view(shape)) / (flat.std(1, correction=0).view(shape) + self.eps)

    def fit_(self, w: torch.Tensor) -> None:
        self.quantizer.fit_(self.standardize(w))


class Prequantized(Quantizer):
    """The input of a layer that an explicit ``quantizer`` already quantized, before a
    max-pool (recipe ``pool_order = "bn_sign_pool"``): identity forward and backward.

    Quantizing again would be idempotent forward, but its surrogate gradient would be
    applied a second time at ±1, where ApproxSign's and EDE's are (nearly) zero and
    would cut the gradient off. ``quantizer`` is only described (bits, binary, name),
    not held: its parameters belong to the module that applies it.
    """

    def __init__(self, quantizer: Quantizer):
        super().__init__()
        self.bits, self.binary = quantizer.bits, quantizer.binary
        self.by = type(quantizer).__name__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"by={self.by}"


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``PReLU(x − γ_c) + ζ_c`` with learnable per-channel shifts γ, ζ
    (initialised to 0) and slope (initialised to 0.25, as ``nn.PReLU``), on dim 1. It
    moves the real-valued distribution and its kink to where the next sign needs them."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), 0.25))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x - _per_channel(x, self.shift_in), self.slope) + _per_channel(x, self.shift_out)

    def extra_repr(self) -> str:
        return f"channels={len(self.slope)}"
