"""Quantizers that keep more than one bit: ternary, DoReFa k-bit and the identity."""

from __future__ import annotations

import torch

from bnnkit.errors import BnnkitError
from bnnkit.quant.registry import Quantizer, register_quantizer
from bnnkit.quant.sign import sign


def _straight_through(surrogate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward, ``surrogate``'s gradient backward. Written so the forward adds
    an exact zero: ``surrogate + (value − surrogate)`` can miss ``value`` by a rounding."""
    return value.detach() + (surrogate - surrogate.detach())


@register_quantizer("ste_ternary")
class SteTernary(Quantizer):
    """Ternary −1/0/+1: 0 where ``|x| < Δ``, else sign(x) (so x = Δ maps to +1).

    Δ is ``threshold_value`` or, with ``ternary_weight_networks=True``, ``0.7·mean|x|``
    over the whole tensor (Li & Liu, 2016, TWN). Backward: the clipped STE,
    ``d(x) = 1[|x| ≤ 1]`` (the hardtanh derivative), dead zone included; a value that
    got no gradient inside the dead zone could never leave it.

    Counted as 2 bits: the information is log2(3) ≈ 1.58 bits, storage needs 2.
    """

    bits = 2

    def __init__(self, threshold_value: float = 0.05, ternary_weight_networks: bool = False):
        super().__init__()
        if not threshold_value >= 0:
            raise BnnkitError(f"ste_ternary needs threshold_value >= 0, got {threshold_value}")
        self.threshold_value = float(threshold_value)
        self.ternary_weight_networks = bool(ternary_weight_networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        magnitude = x.detach().abs()
        delta = 0.7 * magnitude.mean() if self.ternary_weight_networks else self.threshold_value
        ternary = (magnitude >= delta).to(x.dtype) * sign(x.detach())
        return _straight_through(torch.clamp(x, -1.0, 1.0), ternary)

    def extra_repr(self) -> str:
        return "delta=0.7*mean|x|" if self.ternary_weight_networks else f"threshold_value={self.threshold_value}"


@register_quantizer("dorefa")
class DoReFa(Quantizer):
    """DoReFa-Net k-bit activations (Zhou et al., 2016): clip to [0, 1], then round to
    one of the ``2^k`` levels ``i / (2^k − 1)``.

    Rounding is ``torch.round``, which sends exact halves to the even neighbour: with
    k=1, 0.5 → 0; with k=2, x·3 = 0.5 → 0 but x·3 = 1.5 → 2/3. Backward: straight
    through inside [0, 1] (bounds included, as ``torch.clamp`` passes them), zero outside.
    """

    def __init__(self, k_bit: int = 2):
        super().__init__()
        if isinstance(k_bit, bool) or not isinstance(k_bit, int) or not 1 <= k_bit <= 16:
            raise BnnkitError(f"dorefa needs an integer k_bit in 1..16, got {k_bit!r}")
        self.k_bit = k_bit
        self.bits = k_bit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.k_bit - 1
        clipped = torch.clamp(x, 0.0, 1.0)
        return _straight_through(clipped, torch.round(clipped * levels) / levels)

    def extra_repr(self) -> str:
        return f"k_bit={self.k_bit}"


@register_quantizer("identity")
class Identity(Quantizer):
    """No quantization, forward and backward: the full-precision twin of a binary
    layer, for ablations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
