"""Binary layers: ordinary torch layers whose input and weights pass through quantizers.

The latent weights stay float32 parameters (what the optimiser updates); the forward
pass uses their quantized values. Subclassing ``nn.Conv2d``/``nn.Linear`` keeps every
tool that understands those layers (initialisation, summaries, ``isinstance``) working.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.quant import get_quantizer

WEIGHT_SCALES = ("none", "mean_abs", "learned")
PAD_VALUES = (0.0, -1.0, 1.0)


class _BinaryMixin:
    """Quantizers and the per-output-channel scale shared by both binary layers."""

    def _init_binary(self, input_quantizer, kernel_quantizer, weight_scale: str) -> None:
        self.input_quantizer = get_quantizer(input_quantizer)
        self.kernel_quantizer = get_quantizer(kernel_quantizer)
        if weight_scale not in WEIGHT_SCALES:
            raise BnnkitError(f"unknown weight_scale {weight_scale!r}; use one of {', '.join(WEIGHT_SCALES)}")
        self.weight_scale = weight_scale
        # XNOR-Net++ learns the scale; starting at mean|W| makes it start as XNOR-Net's.
        self.scale = None
        if weight_scale == "learned":
            self.scale = nn.Parameter(self._mean_abs().detach().clone())

    def _mean_abs(self) -> torch.Tensor:
        return self.weight.abs().flatten(1).mean(dim=1)

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xq = x if self.input_quantizer is None else self.input_quantizer(x)
        wq = self.weight if self.kernel_quantizer is None else self.kernel_quantizer(self.weight)
        return xq, wq

    def _scaled(self, out: torch.Tensor) -> torch.Tensor:
        """XNOR-Net's α applied to the output, which equals scaling the weights but keeps
        the product itself purely binary."""
        if self.weight_scale == "none":
            return out
        alpha = self.scale if self.weight_scale == "learned" else self._mean_abs()
        shape = (1, -1) + (1,) * (out.ndim - 2)
        return out * alpha.view(shape)

    def _binary_repr(self) -> str:
        def name(q) -> str:
            return "None" if q is None else getattr(q, "registered_name", type(q).__name__)

        return f"input_quantizer={name(self.input_quantizer)}, kernel_quantizer={name(self.kernel_quantizer)}, weight_scale={self.weight_scale}"


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """A 2-D convolution on quantized inputs with quantized weights.

    Padding is explicit: the quantized input is padded with ``pad_value`` and then
    convolved without implicit padding. ``pad_value=0`` (the default) makes the padded
    taps contribute nothing, which a binary runtime reproduces by counting only the valid
    taps; ``-1``/``+1`` keep the padded map strictly binary (Simons & Lee discuss both).
    ``self.padding`` still reports the logical padding, so shapes read as for nn.Conv2d.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = False,
        *,
        input_quantizer="clipped_ste_sign",
        kernel_quantizer="clipped_ste_sign",
        weight_scale: str = "none",
        pad_value: float = 0.0,
        groups: int = 1,
        dilation=1,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias
        )
        if isinstance(self.padding, str):
            raise BnnkitError("BinaryConv2d needs numeric padding, not 'same'/'valid'")
        if float(pad_value) not in PAD_VALUES:
            raise BnnkitError(f"pad_value must be one of 0, -1, +1, got {pad_value!r}")
        self.pad_value = float(pad_value)
        self._init_binary(input_quantizer, kernel_quantizer, weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, wq = self._quantized(x)
        ph, pw = self.padding
        if ph or pw:
            xq = F.pad(xq, (pw, pw, ph, ph), value=self.pad_value)
        out = F.conv2d(xq, wq, self.bias, self.stride, 0, self.dilation, self.groups)
        return self._scaled(out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}, pad_value={self.pad_value:g}"


class BinaryLinear(_BinaryMixin, nn.Linear):
    """A fully connected layer on quantized inputs with quantized weights."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        input_quantizer="clipped_ste_sign",
        kernel_quantizer="clipped_ste_sign",
        weight_scale: str = "none",
    ):
        super().__init__(in_features, out_features, bias=bias)
        self._init_binary(input_quantizer, kernel_quantizer, weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, wq = self._quantized(x)
        return self._scaled(F.linear(xq, wq, self.bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"


class InputNorm(nn.Module):
    """Fixed per-channel ``(x − mean) / std``; the statistics are saved with the weights
    so a trained model carries how it saw its input."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise BnnkitError(f"InputNorm needs one positive std per mean, got mean={list(mean)}, std={list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def binary_layers(model: nn.Module) -> list[nn.Module]:
    """The binary layers whose weights are binarized (their latent weights are what gets clipped)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.kernel_quantizer is not None and m.kernel_quantizer.binary
    ]


@torch.no_grad()
def clip_latent_weights_(model: nn.Module, value: float = 1.0) -> None:
    """Clamp latent binary weights to [-value, value] (BinaryNet): beyond the clip a
    weight gets no gradient through the clipped STE and could never flip back."""
    for m in binary_layers(model):
        m.weight.clamp_(-value, value)

