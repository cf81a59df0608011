"""Binary layers: ordinary torch layers whose input and weights pass through quantizers.

The latent weights stay float32 parameters (what the optimiser updates); the forward
pass uses their quantized values. Subclassing ``nn.Conv2d``/``nn.Linear`` keeps every
tool that understands those layers (initialisation, summaries, ``isinstance``) working.
There is no sign activation module: the sign lives in the next layer's
``input_quantizer``, as in Larq.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.nn import bf16
from bnnkit.quant import Quantizer, QuantizerSpec, get_quantizer
from bnnkit.quant.sign import ClippedSteSign
from bnnkit.recipe.core import ACTIVATION_SCALES, PAD_VALUES, WEIGHT_SCALES


def _quantizer_name(q: Quantizer | None) -> str:
    return "None" if q is None else (q.registered_name or type(q).__name__)


class _BinaryMixin:
    """Quantizers and the per-output-channel scale shared by both binary layers.

    ``weight_scale``:

    * ``"none"``: the output of the binary product as is.
    * ``"mean_abs"``: XNOR-Net's analytic ``α_c = mean|W_c|`` over the channel's
      in×kh×kw latent weights, recomputed every forward; the gradient flows through it
      into the latent weights.
    * ``"learned"``: XNOR-Net++'s learnable ``α`` (parameter ``scale``, shape (out,)),
      initialised to ``mean|W_c|`` so that training starts from XNOR-Net's scaling
      (and re-initialised with the weights by ``reset_parameters``).

    α multiplies the output channel, which equals scaling the weights but keeps the
    product itself purely binary; the bias is added after the scaling.

    ``activation_scale="xnor"``: XNOR-Net's ``K``, the mean over input channels of
    ``|x|`` (the real input, before its quantizer) averaged over each output position's
    receptive field, multiplies that output position (per sample for a linear layer).
    The gradient flows through ``K`` into the input.
    """

    weight: torch.Tensor  # as torch's Conv2d and Linear declare it (an nn.Parameter)
    scale: nn.Parameter | None
    input_quantizer: Quantizer | None
    kernel_quantizer: Quantizer | None
    # Off during the first stage of two-stage training (see set_weight_binarization).
    binarize_weights: bool = True

    def _init_binary(
        self, input_quantizer: QuantizerSpec, kernel_quantizer: QuantizerSpec, weight_scale: str, activation_scale: str
    ) -> None:
        self.input_quantizer = get_quantizer(input_quantizer)
        self.kernel_quantizer = get_quantizer(kernel_quantizer)
        if not isinstance(weight_scale, str) or weight_scale not in WEIGHT_SCALES:
            raise BnnkitError(f"unknown weight_scale {weight_scale!r}; use one of {', '.join(WEIGHT_SCALES)}")
        if not isinstance(activation_scale, str) or activation_scale not in ACTIVATION_SCALES:
            raise BnnkitError(
                f"unknown activation_scale {activation_scale!r}; use one of {', '.join(ACTIVATION_SCALES)}"
            )
        self.weight_scale, self.activation_scale = weight_scale, activation_scale
        self.scale = nn.Parameter(torch.empty(len(self.weight))) if weight_scale == "learned" else None
        self._fit_to_weights()

    def _fit_to_weights(self) -> None:
        """Initialise what starts from the weights: the learned scale, the kernel quantizer's parameters."""
        # torch's __init__ calls reset_parameters before _init_binary has made them
        if not hasattr(self, "weight_scale"):
            return
        with torch.no_grad():
            if self.scale is not None:
                self.scale.copy_(self._mean_abs())
            if self.kernel_quantizer is not None:
                self.kernel_quantizer.fit_(self.weight)

    def _mean_abs(self) -> torch.Tensor:
        return self.weight.abs().flatten(1).mean(dim=1)

    def _signs_only(self) -> bool:
        """Whether both operands of the product are exactly ±1 (see ``Quantizer.signs``)."""
        iq, kq = self.input_quantizer, self.kernel_quantizer
        return self.binarize_weights and getattr(iq, "signs", False) and getattr(kq, "signs", False)

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kernel = self.kernel_quantizer if self.binarize_weights else None
        wq = self.weight if kernel is None else kernel(self.weight)
        return self._quantized_input(x, wq), wq

    def _quantized_input(self, x: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _input_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """XNOR-Net's ``K`` for ``x``, shaped to multiply the output."""
        raise NotImplementedError

    def _input_scaled(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return out if self.activation_scale == "none" else out * self._input_magnitude(x)

    def _bias(self) -> torch.Tensor | None:
        """The layer's bias. torch's Conv2d and Linear type theirs differently (Tensor |
        None, Parameter), so each layer reads its own rather than declaring one here."""
        raise NotImplementedError

    def _scaled_plus_bias(self, out: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (out.ndim - 2)
        if self.weight_scale != "none":
            # _init_binary made ``scale`` exactly when weight_scale is "learned"
            alpha = self._mean_abs() if self.scale is None else self.scale
            out = out * alpha.view(shape)
        bias = self._bias()
        if bias is not None:
            out = out + bias.view(shape)
        return out

    def _binary_repr(self) -> str:
        return (
            f"input_quantizer={_quantizer_name(self.input_quantizer)}, "
            f"kernel_quantizer={_quantizer_name(self.kernel_quantizer)}, weight_scale={self.weight_scale}, "
            f"activation_scale={self.activation_scale}"
        )


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """A 2-D convolution on quantized inputs with quantized weights.

    ``input_quantizer``/``kernel_quantizer`` take a registered name, a ``Quantizer``, any
    callable, or ``None`` for no quantization of that side (a first layer on real pixels
    uses ``input_quantizer=None``). ``weight_scale`` and ``activation_scale`` are described
    in ``_BinaryMixin``.

    Padding is explicit: the *quantized* input is padded with ``pad_value`` and then
    convolved with no implicit padding, so the padded taps hold exactly ``pad_value``
    whatever the quantizer. ``pad_value=0`` (the default) makes them contribute nothing,
    which a binary runtime reproduces by counting only the valid taps; ``-1``/``+1`` keep
    the padded map strictly binary, so an XNOR-popcount kernel needs no border case.
    ``self.padding`` still reports the logical padding, so shapes (and summaries)
    read as for an ``nn.Conv2d`` of the same configuration.
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
        activation_scale: str = "none",
        groups: int = 1,
        dilation=1,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self._pads()  # refuses 'same'/'valid'
        try:
            pad = float(pad_value)
        except (TypeError, ValueError):
            pad = None
        if isinstance(pad_value, bool) or pad not in PAD_VALUES:
            raise BnnkitError(f"pad_value must be one of 0, -1, +1, got {pad_value!r}")
        self.pad_value = pad + 0.0  # -0.0 → 0.0, for the repr
        self._init_binary(input_quantizer, kernel_quantizer, weight_scale, activation_scale)
        if activation_scale != "none" and self.dilation != (1, 1):
            raise BnnkitError("activation_scale needs an undilated convolution (its box filter cannot dilate)")

    def reset_parameters(self) -> None:
        super().reset_parameters()  # the torch layer's own initialisation
        self._fit_to_weights()

    def _bias(self) -> torch.Tensor | None:
        return self.bias

    def _pads(self) -> tuple[int, int]:
        """``padding`` as (rows, cols); torch also allows the strings 'same' and 'valid'."""
        if isinstance(self.padding, str):
            raise BnnkitError("BinaryConv2d needs numeric padding, not 'same'/'valid'")
        return self.padding[0], self.padding[1]

    # Set by bnnkit.nn.batchnorm.link_bfloat16_maps where a bnnkit BatchNorm2d alone reads the output
    # (feeds_batchnorm), or makes the input and may hand over its sign, as the input (takes_signs)
    # or beside it (shares_sign: bf16.HANDED_SIGN).
    feeds_batchnorm = False
    takes_signs = False
    shares_sign = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, wq = self._quantized(x)
        ph, pw = self._pads()
        if self.pad_value != 0.0 and (ph or pw):
            xq, ph, pw = F.pad(xq, (pw, pw, ph, ph), value=self.pad_value), 0, 0
        # Zero padding is the convolution's own: the same values, without a padded copy.
        args = (self.stride, (ph, pw), self.dilation, self.groups)
        if not self._signs_only():
            out = F.conv2d(xq, wq, None, *args)
        elif self.feeds_batchnorm and self._bare():
            return bf16.binary_conv2d(xq, wq, None, *args, bf16_out=True)  # the BatchNorm widens it
        else:
            out = bf16.binary_conv2d(xq, wq, None, *args)
        return self._scaled_plus_bias(self._input_scaled(out, x))

    def _bare(self) -> bool:
        """Whether the output is the product itself: no scale and no bias after it."""
        return self.activation_scale == "none" and self.weight_scale == "none" and self.bias is None

    def _quantized_input(self, x: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        if self.takes_signs and x.dtype == torch.bfloat16:
            return x  # the linked BatchNorm's own clipped sign (fused_sign_clip)
        handed = getattr(x, bf16.HANDED_SIGN, None) if self.shares_sign else None
        if handed is not None:
            return handed
        clip = self.fused_sign_clip(x)
        fused = None if clip is None else bf16.clipped_sign_for_conv(x, clip, wq)
        return super()._quantized_input(x, wq) if fused is None else fused

    def fused_sign_clip(self, x: torch.Tensor) -> float | None:
        """The clip of the input quantizer where it is the plain clipped sign and runs fused with
        the bfloat16 casts on a float32 map laid out as ``x`` (``bf16.sign_fuses``); else None."""
        iq = self.input_quantizer
        if type(iq) is ClippedSteSign and self._signs_only() and bf16.sign_fuses(x, self.weight):
            return iq.clip_value
        return None

    def _input_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        # Padded positions count as zeros, as in XNOR-Net's convolution with a k×k box.
        return F.avg_pool2d(x.abs().mean(1, keepdim=True), self.kernel_size, self.stride, self._pads())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}, pad_value={self.pad_value:g}"


class BinaryLinear(_BinaryMixin, nn.Linear):
    """A fully connected layer on quantized inputs with quantized weights; quantizers and
    scales as for ``BinaryConv2d``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        input_quantizer="clipped_ste_sign",
        kernel_quantizer="clipped_ste_sign",
        weight_scale: str = "none",
        activation_scale: str = "none",
    ):
        super().__init__(in_features, out_features, bias=bias)
        self._init_binary(input_quantizer, kernel_quantizer, weight_scale, activation_scale)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # the torch layer's own initialisation
        self._fit_to_weights()

    def _bias(self) -> torch.Tensor | None:
        return self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, wq = self._quantized(x)
        out = bf16.binary_linear(xq, wq) if self._signs_only() else F.linear(xq, wq)
        return self._scaled_plus_bias(self._input_scaled(out, x))

    def _input_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs().mean(1, keepdim=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"


class InputNorm(nn.Module):
    """Fixed per-channel ``(x − mean) / std`` over dim 1. The statistics are persistent
    buffers of shape (C,), saved with the weights, so a trained model carries how it saw
    its input and an exporter can fold them into the first layer."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean, std = list(mean), list(std)
        if not mean or len(mean) != len(std) or min(std) <= 0:
            raise BnnkitError(f"InputNorm needs one positive std per mean, got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class IntegerPixels(nn.Module):
    """Pixels in [0, 1] back to their integer values 0..255, exactly.

    Every ``k / 255`` in float32, times 255, rounds back to ``k``; the rounding makes
    that explicit. A binary first layer on these sums integers far below 2^24, which
    float32 holds exactly, so PyTorch and an integer device compute the same values.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: torch.round would give one-channel images in channels-last strides
        # (see training.batching.in_memory_format) NCHW strides again.
        return (x * 255).round_()


def binary_layers(model: nn.Module) -> list[BinaryConv2d | BinaryLinear]:
    """The ``BinaryConv2d``/``BinaryLinear`` layers whose kernel quantizer is binary, in
    ``model.modules()`` order: the ones whose weights are latent (clipped, not decayed)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.kernel_quantizer is not None and m.kernel_quantizer.binary
    ]


def latent_weights(model: nn.Module) -> list[torch.Tensor]:
    """The latent weights of ``binary_layers(model)``."""
    return [m.weight for m in binary_layers(model)]


@torch.no_grad()
def clip_weights_(weights: list[torch.Tensor], value: float = 1.0) -> None:
    """Clamp every tensor of ``weights`` to [-value, value], in place, in two calls
    whatever their number (the trainer's per-step form of ``clip_latent_weights_``)."""
    if weights:
        torch._foreach_clamp_min_(weights, -value)
        torch._foreach_clamp_max_(weights, value)


def clip_latent_weights_(model: nn.Module, value: float = 1.0) -> None:
    """Clamp the latent weights of ``binary_layers(model)`` to [-value, value], in place
    (BinaryNet). Beyond the clip a weight gets no gradient through the clipped STE and
    could never flip back.

    `bnnkit.training.train` calls it after every optimiser step with the recipe's
    ``latent_clip`` (0 turns it off); a training loop of your own makes the same call,
    right after each step::

        loss.backward()
        optimizer.step()
        clip_latent_weights_(model, recipe.latent_clip)  # e.g. 1.0

    ``model`` may be the module or a wrapper around it (DistributedDataParallel)."""
    clip_weights_(latent_weights(model), value)


def set_weight_binarization(model: nn.Module, enabled: bool) -> None:
    """Switch the kernel quantizers of every binary layer on or off. Two-stage training
    (Martinez et al., 2020) first trains binary activations with real-valued weights, then
    binarizes the weights; the switch is not saved, the trainer sets it every epoch."""
    for m in model.modules():
        if isinstance(m, _BinaryMixin):
            m.binarize_weights = enabled
