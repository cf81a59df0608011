"""Quantizers that keep more than one bit: DoReFa k-bit activations and the identity."""

from __future__ import annotations

import torch

from bnnkit.errors import BnnkitError
from bnnkit.quant.registry import Quantizer, register_quantizer


@register_quantizer("dorefa")
class DoReFa(Quantizer):
    """DoReFa-Net k-bit activations (Zhou et al., 2016): clip to [0, 1], then round to
    one of ``2^k`` levels ``i / (2^k − 1)``. ``torch.round`` rounds halves to even, so
    0.5 with k=1 goes to 0. Backward: straight through inside [0, 1], zero outside."""

    def __init__(self, k_bit: int = 2):
        super().__init__()
        if not (isinstance(k_bit, int) and 1 <= k_bit <= 16):
            raise BnnkitError(f"dorefa needs an integer k_bit in 1..16, got {k_bit!r}")
        self.k_bit = k_bit
        self.bits = k_bit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.k_bit - 1
        clipped = torch.clamp(x, 0.0, 1.0)
        return clipped + (torch.round(clipped * levels) / levels - clipped).detach()

    def extra_repr(self) -> str:
        return f"k_bit={self.k_bit}"


@register_quantizer("identity")
class Identity(Quantizer):
    """No quantization: the full-precision twin of a binary layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
