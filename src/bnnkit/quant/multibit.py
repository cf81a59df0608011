"""Quantizers that keep more than one bit: ternary, DoReFa k-bit, the identity, and
ABC-Net's multiple binary bases."""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.quant.registry import Quantizer, get_quantizer, register_quantizer
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


def _check_bases(bases) -> int:
    if isinstance(bases, bool) or not isinstance(bases, int) or not 1 <= bases <= 8:
        raise BnnkitError(f"ABC-Net needs an integer number of bases in 1..8, got {bases!r}")
    return bases


def _base_quantizer(spec) -> Quantizer:
    base = get_quantizer(spec)
    if base is None:
        raise BnnkitError("ABC-Net needs a base binarizer, got none")
    return base


class MultiBaseWeights(Quantizer):
    """ABC-Net weights (Lin et al., 2017): ``W ≈ Σ_i α_i · b(W − mean + u_i·std)`` with
    ``b`` the base binarizer, ``u_i`` spread evenly over [-1, 1] and statistics per output
    channel (dim 0), so each base is the sign of the centred weights cut at a different
    level. ``α`` (``bases`` × ``channels``) is learnable and set by ``fit_`` to the least
    squares solution, so that training starts from the best approximation of ``W``.

    Backward: the base binarizer's surrogate for every base (straight through its cut),
    weighted by α; mean and std count as constants, as the shifts are only a choice of
    where to cut. The sum is one tensor, so the layer still runs a single convolution.
    Not registered by name: α's shape needs the layer's output channels.
    """

    levels: torch.Tensor

    def __init__(self, channels: int, bases: int = 3, base="clipped_ste_sign"):
        super().__init__()
        bases = _check_bases(bases)
        self.base = _base_quantizer(base)
        self.bits = bases * self.base.bits
        levels = torch.linspace(-1.0, 1.0, bases) if bases > 1 else torch.zeros(1)
        self.register_buffer("levels", levels, persistent=False)
        self.alpha = nn.Parameter(torch.full((bases, channels), 1.0 / bases))

    def _bases(self, w: torch.Tensor) -> torch.Tensor:
        """(bases, *w.shape): every base's binarized weights."""
        flat = w.detach().flatten(1)
        shape = (-1,) + (1,) * (w.ndim - 1)
        mean, std = flat.mean(1).view(shape), flat.std(1, correction=0).view(shape)
        return torch.stack([self.base(w - mean + u * std) for u in self.levels])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.view(*self.alpha.shape, *(1,) * (w.ndim - 1))
        return (alpha * self._bases(w)).sum(0)

    @torch.no_grad()
    def fit_(self, w: torch.Tensor) -> None:
        # pinv rather than lstsq: a channel whose cuts coincide makes the bases rank deficient
        b = self._bases(w).flatten(2).permute(1, 2, 0)  # (channels, fan_in, bases)
        alpha = torch.linalg.pinv(b) @ w.flatten(1).unsqueeze(2)
        self.alpha.copy_(alpha.squeeze(2).t())

    def extra_repr(self) -> str:
        return f"bases={len(self.levels)}, channels={self.alpha.shape[1]}"


class MultiBaseActivations(Quantizer):
    """ABC-Net activations: ``x ≈ Σ_j β_j · b(x − v_j)`` with learnable shifts ``v_j`` and
    scales ``β_j`` (one of each per base, shared by all channels). They start as the even
    staircase approximation of hardtanh: ``β_j = 1/n`` and ``v_j`` the midpoints between
    the ``n + 1`` levels -1, ..., 1. Backward: the base binarizer's surrogate at every
    shift, weighted by β; v and β get their exact gradients through the sum.
    """

    def __init__(self, bases: int = 3, base="clipped_ste_sign"):
        super().__init__()
        bases = _check_bases(bases)
        self.base = _base_quantizer(base)
        self.bits = bases * self.base.bits
        self.shift = nn.Parameter(torch.tensor([(2 * j + 1 - bases) / bases for j in range(bases)]))
        self.beta = nn.Parameter(torch.full((bases,), 1.0 / bases))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(beta * self.base(x - v) for beta, v in zip(self.beta, self.shift))

    def extra_repr(self) -> str:
        return f"bases={len(self.beta)}"
