"""The quantizer registry and the base class every quantizer shares."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from bnnkit.errors import BnnkitError

QUANTIZERS: dict[str, type["Quantizer"]] = {}


class Quantizer(nn.Module):
    """Base of all quantizers.

    ``bits`` is the width of one quantized value (the cost model reads it); ``binary``
    says that every output is ±1, or ±1 times a per-channel scale, so that a product
    with another binary operand is an XNOR-popcount.
    """

    bits: int = 32
    binary: bool = False


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    def decorate(cls: type[Quantizer]) -> type[Quantizer]:
        QUANTIZERS[name] = cls
        cls.registered_name = name
        return cls

    return decorate


def quantizer_names() -> list[str]:
    return sorted(QUANTIZERS)


class _Wrapped(Quantizer):
    """A plain callable used as a quantizer; assumed full precision unless it says otherwise."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn
        self.bits = getattr(fn, "bits", 32)
        self.binary = getattr(fn, "binary", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def get_quantizer(spec, **kwargs) -> Quantizer | None:
    """A quantizer from a registered name, an instance, any callable, or None/"none"."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, Quantizer):
        return spec
    if isinstance(spec, str):
        try:
            cls = QUANTIZERS[spec]
        except KeyError:
            raise BnnkitError(f"unknown quantizer {spec!r}; available: {', '.join(quantizer_names())}") from None
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise BnnkitError(f"quantizer {spec!r}: {exc}") from None
    if callable(spec):
        return _Wrapped(spec)
    raise BnnkitError(f"a quantizer must be a name, a callable or None, got {type(spec).__name__}")


def set_training_progress(module: nn.Module, progress: float) -> None:
    """Tell every scheduled quantizer in ``module`` how far training is, in [0, 1]."""
    for m in module.modules():
        if isinstance(m, Quantizer) and hasattr(m, "set_progress"):
            m.set_progress(progress)
