"""Quantizers: forward binarization (or k-bit quantization) with a surrogate gradient.

One registry, looked up by name, in the manner of Larq's quantizers. Every quantizer is a
small ``torch.nn.Module`` so that the ones with parameters or schedules (``swish_sign``'s
β, ``ede_sign``'s training progress) work like the stateless ones. Conventions fixed
once: ``sign(0) = +1`` for every sign-like quantizer, and the surrogate gradient of each
is written next to its forward in the docstring.

Registered names: ``ste_sign``, ``clipped_ste_sign``, ``approx_sign``, ``swish_sign``,
``ede_sign``, ``magnitude_aware_sign`` (in ``sign``) and ``ste_ternary``, ``dorefa``,
``identity`` (in ``multibit``). ABC-Net's ``MultiBaseWeights`` and ``MultiBaseActivations``
wrap a base binarizer and are built by the layer, which knows their shape.
"""

from bnnkit.quant.multibit import MultiBaseActivations, MultiBaseWeights  # also registers multibit's quantizers
from bnnkit.quant.registry import (
    QUANTIZERS,
    Quantizer,
    QuantizerSpec,
    ScheduledQuantizer,
    get_quantizer,
    quantizer_names,
    register_quantizer,
    scheduled_quantizers,
    set_training_progress,
)
from bnnkit.quant.sign import sign

__all__ = [
    "MultiBaseActivations",
    "MultiBaseWeights",
    "QUANTIZERS",
    "Quantizer",
    "QuantizerSpec",
    "ScheduledQuantizer",
    "get_quantizer",
    "quantizer_names",
    "register_quantizer",
    "scheduled_quantizers",
    "set_training_progress",
    "sign",
]
