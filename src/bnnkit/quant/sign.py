"""Sign binarizers and their surrogate gradients.

All of them compute the same forward, ``sign(x)`` with ``sign(0) = +1``; they differ in
the gradient that training pretends the sign has. Each surrogate is the derivative
``d(x)`` in ``∂L/∂x = ∂L/∂y · d(x)``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from bnnkit.errors import BnnkitError
from bnnkit.quant.registry import Quantizer, register_quantizer

Derivative = Callable[[torch.Tensor], torch.Tensor]


def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 with sign(0) = +1: zero must map to a bit, and bit 1 ⇔ +1 ⇔ x ≥ 0."""
    return (x >= 0).to(x.dtype) * 2 - 1


class _SignFunction(torch.autograd.Function):
    """Forward sign; backward multiplies the incoming gradient by ``derivative(x)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, derivative: Derivative | None) -> torch.Tensor:
        ctx.derivative = derivative
        if derivative is not None:
            ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.derivative is None:
            return grad, None
        (x,) = ctx.saved_tensors
        return grad * ctx.derivative(x), None


def sign_with_gradient(x: torch.Tensor, derivative: Derivative | None) -> torch.Tensor:
    return _SignFunction.apply(x, derivative)


def clipped_derivative(x: torch.Tensor, clip_value: float = 1.0) -> torch.Tensor:
    """1 inside [-clip, clip] (the boundary included), 0 outside: the hardtanh derivative."""
    return (x.abs() <= clip_value).to(x.dtype)


class _Sign(Quantizer):
    bits = 1
    binary = True


@register_quantizer("ste_sign")
class SteSign(_Sign):
    """Sign with the plain straight-through estimator: ``d(x) = 1`` everywhere
    (Bengio et al., 2013)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_with_gradient(x, None)


@register_quantizer("clipped_ste_sign")
class ClippedSteSign(_Sign):
    """Sign with the clipped STE of BinaryNet (Courbariaux et al., 2016):
    ``d(x) = 1[|x| ≤ clip_value]``, the derivative of hardtanh. At exactly ``|x| = clip``
    the gradient passes, as it does through ``torch.clamp``."""

    def __init__(self, clip_value: float = 1.0):
        super().__init__()
        if not clip_value > 0:
            raise BnnkitError(f"clipped_ste_sign needs clip_value > 0, got {clip_value}")
        self.clip_value = float(clip_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = self.clip_value
        return sign_with_gradient(x, lambda v: clipped_derivative(v, clip))

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


def _approx_sign_derivative(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(2 - 2 * x.abs(), min=0)


@register_quantizer("approx_sign")
class ApproxSign(_Sign):
    """Sign with Bi-Real Net's ApproxSign gradient (Liu et al., 2018): the derivative of
    the piecewise quadratic ``2x + x²`` (x < 0) / ``2x − x²`` (x ≥ 0) on [-1, 1],
    ``d(x) = max(0, 2 − 2|x|)``: 2 at zero, falling to 0 at ±1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_with_gradient(x, _approx_sign_derivative)


def swish_sign_function(x: torch.Tensor, beta: float) -> torch.Tensor:
    """SignSwish ``2σ(βx)(1 + βx(1 − σ(βx))) − 1``, the smooth curve whose derivative
    swish_sign uses."""
    s = torch.sigmoid(beta * x)
    return 2 * s * (1 + beta * x * (1 - s)) - 1


@register_quantizer("swish_sign")
class SwishSign(_Sign):
    """Sign with the SignSwish gradient of BNN+ (Darabi et al., 2018):
    ``d(x) = β(2 − βx·tanh(βx/2)) / (1 + cosh(βx))``. Larger β approaches the sign; β=5
    is the paper's choice for CIFAR."""

    def __init__(self, beta: float = 5.0):
        super().__init__()
        if not beta > 0:
            raise BnnkitError(f"swish_sign needs beta > 0, got {beta}")
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.beta
        return sign_with_gradient(x, lambda v: b * (2 - b * v * torch.tanh(b * v / 2)) / (1 + torch.cosh(b * v)))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register_quantizer("ede_sign")
class EdeSign(_Sign):
    """Sign with IR-Net's Error Decay Estimator (Qin et al., 2020):
    ``d(x) = k·t·(1 − tanh²(t·x))`` with ``t = T_min·10^(p·log10(T_max/T_min))`` and
    ``k = max(1/t, 1)``, where ``p ∈ [0, 1]`` is the training progress. Early on the
    gradient is close to the identity (good updates everywhere); towards the end it
    approaches the sign's own (accurate near zero). The trainer calls
    ``set_progress`` before every step (see ``set_training_progress``)."""

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0):
        super().__init__()
        if not 0 < t_min < t_max:
            raise BnnkitError(f"ede_sign needs 0 < t_min < t_max, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = min(1.0, max(0.0, float(progress)))

    def t_and_k(self) -> tuple[float, float]:
        t = self.t_min * 10 ** (self.progress * math.log10(self.t_max / self.t_min))
        return t, max(1.0 / t, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, k = self.t_and_k()
        return sign_with_gradient(x, lambda v: k * t * (1 - torch.tanh(t * v) ** 2))

    def extra_repr(self) -> str:
        return f"t_min={self.t_min}, t_max={self.t_max}, progress={self.progress:.3f}"


@register_quantizer("magnitude_aware_sign")
class MagnitudeAwareSign(_Sign):
    """Bi-Real Net's weight binarizer: ``sign(w) · mean|w|`` per output channel (dim 0).

    The gradient goes through the sign with the clipped STE, times the scale; the scale
    itself is treated as a constant in the backward pass, as in Bi-Real's update rule.
    """

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, w.ndim))
        scale = w.detach().abs().mean(dim=dims, keepdim=True) if dims else w.detach().abs()
        return scale * sign_with_gradient(w, clipped_derivative)


@register_quantizer("ste_ternary")
class SteTernary(Quantizer):
    """Ternary −1/0/+1: 0 where ``|x| < Δ``, else sign(x); the clipped STE backward.

    Δ is ``threshold_value`` or, with ``ternary_weight_networks=True``, ``0.7·mean|x|``
    over the whole tensor (Li & Liu, 2016, TWN).
    """

    bits = 2

    def __init__(self, threshold_value: float = 0.05, ternary_weight_networks: bool = False):
        super().__init__()
        if not threshold_value >= 0:
            raise BnnkitError(f"ste_ternary needs threshold_value >= 0, got {threshold_value}")
        self.threshold_value = float(threshold_value)
        self.ternary_weight_networks = bool(ternary_weight_networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = 0.7 * x.detach().abs().mean() if self.ternary_weight_networks else self.threshold_value
        ternary = (x.detach().abs() >= delta).to(x.dtype) * sign(x.detach())
        # Straight through hardtanh: the dead zone still passes gradient, or weights in it
        # could never leave it.
        hardtanh = torch.clamp(x, -1.0, 1.0)
        return hardtanh + (ternary - hardtanh).detach()

    def extra_repr(self) -> str:
        return "delta=0.7*mean|x|" if self.ternary_weight_networks else f"threshold_value={self.threshold_value}"
