"""Quantizers: forward binarization (or k-bit quantization) with a surrogate gradient.

One registry, looked up by name, in the manner of Larq's quantizers. Every quantizer is a
small ``torch.nn.Module`` so that the ones with parameters or schedules (``swish_sign``'s
β, ``ede_sign``'s training progress) work like the stateless ones. Conventions fixed
once: ``sign(0) = +1`` for every binary quantizer, and the surrogate gradient of each is
written next to its forward in the docstring.
"""

from bnnkit.quant.registry import (
    QUANTIZERS,
    Quantizer,
    get_quantizer,
    quantizer_names,
    register_quantizer,
    set_training_progress,
)
from bnnkit.quant import sign  # noqa: F401  (registers the quantizers)
from bnnkit.quant import multibit  # noqa: F401

__all__ = [
    "QUANTIZERS",
    "Quantizer",
    "get_quantizer",
    "quantizer_names",
    "register_quantizer",
    "set_training_progress",
]
