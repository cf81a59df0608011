"""Sign binarizers and their surrogate gradients.

All of them compute the same forward, ``sign(x)`` with ``sign(0) = +1``; they differ in
the gradient that training pretends the sign has. Each surrogate is the derivative
``d(x)`` in ``∂L/∂x = ∂L/∂y · d(x)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from bnnkit.errors import BnnkitError
from bnnkit.quant.registry import Quantizer, register_quantizer

Derivative = Callable[[torch.Tensor], torch.Tensor]


def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 with sign(0) = +1 (and -0.0 → +1): zero must map to a bit, and the bit
    convention is 1 ⇔ +1 ⇔ x ≥ 0. ``torch.sign`` alone would give 0 (and 0 for NaN, so a
    NaN maps to +1 here)."""
    # Not torch.where(x >= 0, 1, -1): on a CPU the comparison and the select are scalar
    # loops, about 10x the three vectorised passes below (-1/0/+1, then 0 → +0.5 → +1).
    return torch.sign(x).add_(0.5).sign_()


def clipped_derivative(x: torch.Tensor, clip_value: float = 1.0) -> torch.Tensor:
    """1 inside [-clip, clip], the boundary included (as ``torch.clamp`` passes gradient
    at its bounds, so a latent weight clipped to exactly ±1 can still move); 0 outside."""
    return (x.abs() <= clip_value).to(x.dtype)


@functools.cache
def open_bounds(clip_value: float, dtype: torch.dtype) -> tuple[float, float]:
    """The values of ``dtype`` just outside ``[-clip, clip]`` (clip rounded to ``dtype``, as
    a comparison with a Python number rounds it): hardtanh's backward passes the gradient
    strictly inside its bounds, so with these it passes exactly where ``|x| ≤ clip``."""
    clip = torch.tensor(clip_value, dtype=dtype)
    outside = torch.nextafter(clip, torch.tensor(math.inf, dtype=dtype)).item()
    return -outside, outside


def clipped_gradient(grad: torch.Tensor, x: torch.Tensor, clip_value: float = 1.0) -> torch.Tensor:
    """``grad · clipped_derivative(x, clip_value)`` in one elementwise kernel."""
    if not x.dtype.is_floating_point or x.dtype != grad.dtype:
        return grad * clipped_derivative(x, clip_value)
    low, high = open_bounds(float(clip_value), x.dtype)
    return torch.ops.aten.hardtanh_backward(grad, x, low, high)


class _ClippedSignFunction(torch.autograd.Function):
    """Forward sign; backward the clipped STE, the incoming gradient where
    ``|x| ≤ clip_value`` and 0 elsewhere (``clipped_gradient``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, clip_value: float) -> torch.Tensor:
        ctx.clip_value = clip_value
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return clipped_gradient(grad, x, ctx.clip_value), None


def clipped_sign(x: torch.Tensor, clip_value: float = 1.0) -> torch.Tensor:
    """``sign(x)`` with the clipped straight-through gradient ``1[|x| ≤ clip_value]``."""
    return _ClippedSignFunction.apply(x, clip_value)


class _SignFunction(torch.autograd.Function):
    """Forward sign; backward multiplies the incoming gradient by ``derivative(x)``
    (``None`` means the plain straight-through estimator, ``d(x) = 1``)."""

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
    """``sign(x)`` whose backward pretends its derivative is ``derivative(x)``."""
    return _SignFunction.apply(x, derivative)


class _Sign(Quantizer):
    bits = 1
    binary = True


@register_quantizer("ste_sign")
class SteSign(_Sign):
    """Sign with the plain straight-through estimator (Bengio et al., 2013):
    ``d(x) = 1`` everywhere, the incoming gradient passes unchanged."""

    signs = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_with_gradient(x, None)


@register_quantizer("clipped_ste_sign")
class ClippedSteSign(_Sign):
    """Sign with the clipped STE of BinaryNet (Courbariaux et al., 2016):
    ``d(x) = 1[|x| ≤ clip_value]``, the derivative of hardtanh. At exactly
    ``|x| = clip_value`` the gradient passes."""

    signs = True

    def __init__(self, clip_value: float = 1.0):
        super().__init__()
        if not clip_value > 0:
            raise BnnkitError(f"clipped_ste_sign needs clip_value > 0, got {clip_value}")
        self.clip_value = float(clip_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clipped_sign(x, self.clip_value)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


def _approx_sign_derivative(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(2 - 2 * x.abs(), min=0)


@register_quantizer("approx_sign")
class ApproxSign(_Sign):
    """Sign with Bi-Real Net's ApproxSign gradient (Liu et al., 2018): the derivative of
    the piecewise quadratic ``2x + x²`` (−1 ≤ x < 0) / ``2x − x²`` (0 ≤ x ≤ 1), ±1
    outside, i.e. ``d(x) = 2 − 2|x|`` for ``|x| < 1`` and 0 elsewhere: 2 at zero,
    falling linearly to 0 at ±1."""

    signs = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_with_gradient(x, _approx_sign_derivative)


def swish_sign_function(x: torch.Tensor, beta: float) -> torch.Tensor:
    """SignSwish ``2σ(βx)(1 + βx(1 − σ(βx))) − 1``, the smooth curve whose derivative
    swish_sign uses."""
    s = torch.sigmoid(beta * x)
    return 2 * s * (1 + beta * x * (1 - s)) - 1


def _swish_sign_derivative(x: torch.Tensor, beta: float) -> torch.Tensor:
    # cosh overflows to inf for large |βx|, which gives the right limit, 0.
    z = beta * x
    return beta * (2 - z * torch.tanh(z / 2)) / (1 + torch.cosh(z))


@register_quantizer("swish_sign")
class SwishSign(_Sign):
    """Sign with the SignSwish gradient of BNN+ (Darabi et al., 2018):
    ``d(x) = β(2 − βx·tanh(βx/2)) / (1 + cosh(βx))``, the derivative of
    ``swish_sign_function``. It peaks at β for x = 0 and turns slightly negative for
    ``|x| ≳ 2.4/β``, pushing values away from the flip point. ``beta`` (default 5.0, the
    paper's choice) sets the width: larger β is closer to the true sign."""

    signs = True

    def __init__(self, beta: float = 5.0):
        super().__init__()
        if not beta > 0:
            raise BnnkitError(f"swish_sign needs beta > 0, got {beta}")
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta
        return sign_with_gradient(x, lambda v: _swish_sign_derivative(v, beta))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register_quantizer("ede_sign")
class EdeSign(_Sign):
    """Sign with IR-Net's Error Decay Estimator (Qin et al., 2020):
    ``d(x) = k·t·(1 − tanh²(t·x))`` with ``t = T_min·10^(p·log10(T_max/T_min))`` and
    ``k = max(1/t, 1)``, where ``p ∈ [0, 1]`` is the training progress. At p = 0
    (t = 0.1, k = 10) the gradient is nearly the identity, so every latent value gets
    updated; at p = 1 (t = 10, k = 1) it is a narrow bump around zero, close to the
    sign's own.

    ``p`` lives in the buffer ``progress``; the trainer sets it before every step with
    ``set_progress`` (via ``set_training_progress``). The buffer is not persistent: it
    only shapes the backward pass, so a saved model does not need it and the cost model
    does not count it as a weight.
    """

    signs = True

    progress: torch.Tensor

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0):
        super().__init__()
        if not 0 < t_min < t_max:
            raise BnnkitError(f"ede_sign needs 0 < t_min < t_max, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.register_buffer("progress", torch.zeros(()), persistent=False)

    def set_progress(self, progress: float) -> None:
        # Clamped, not rejected: step / (steps − 1) can land a rounding error past 1.
        self.progress.fill_(min(1.0, max(0.0, float(progress))))

    def t_and_k(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        # A tensor computation, so the forward pass never waits on the device for p.
        p = self.progress.to(dtype)
        t = self.t_min * torch.pow(10.0, p * math.log10(self.t_max / self.t_min))
        return t, torch.clamp(1 / t, min=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, k = self.t_and_k(x.dtype)
        return sign_with_gradient(x, lambda v: k * t * (1 - torch.tanh(t * v) ** 2))

    def extra_repr(self) -> str:
        return f"t_min={self.t_min}, t_max={self.t_max}, progress={self.progress.item():.3f}"


@register_quantizer("magnitude_aware_sign")
class MagnitudeAwareSign(_Sign):
    """Bi-Real Net's weight binarizer: ``sign(w) · mean|w|`` per output channel (dim 0,
    the mean over all other dims). Meant for weights, not activations.

    Backward: the product rule on ``α · s`` with ``α = mean|w|`` and ``s = sign(w)``.
    Through ``s`` the clipped STE, ``α · 1[|w| ≤ 1]``; through ``α`` its true gradient,
    ``sign(w) / n`` for the ``n`` weights of the channel (0 at w = 0, as torch
    differentiates |w|). Each weight therefore gets
    ``α·g·1[|w|≤1] + sign(w)/n · Σ_channel g·s``. An all-zero channel outputs zeros.
    """

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, w.ndim))
        scale = w.abs().mean(dim=dims, keepdim=True) if dims else w.abs()
        return scale * clipped_sign(w)
