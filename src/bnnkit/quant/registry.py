"""The quantizer registry and the base class every quantizer shares."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from bnnkit.errors import BnnkitError

QUANTIZERS: dict[str, type[Quantizer]] = {}


class Quantizer(nn.Module):
    """Base of all quantizers.

    ``bits`` is the width of one quantized value (the cost model reads it); ``binary``
    says that every output is ±1, or ±1 times a per-channel scale, so that a product
    with another binary operand is an XNOR-popcount. ``signs`` says more: every output is
    exactly +1.0 or -1.0 (no scale), so a product of two such operands sums integers, which a
    binary layer may compute in bfloat16 without changing a bit (``bnnkit.nn.bf16``). It is
    a property of a forward: a subclass that defines its own forward has ``signs`` only if it
    sets it itself.
    """

    bits: int = 32
    binary: bool = False
    signs: bool = False
    registered_name: str | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__ and "signs" not in cls.__dict__:
            cls.signs = False

    def __init__(self) -> None:
        # An explicit empty signature lets get_quantizer reject options that a
        # stateless quantizer does not take (nn.Module.__init__ takes *args, **kwargs).
        super().__init__()

    def fit_(self, x: torch.Tensor) -> None:
        """Initialise parameters that depend on the tensor this quantizer will see; a
        layer calls it with its weights whenever it (re)initialises them. Most have none."""


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator: make ``cls`` available to ``get_quantizer(name)``."""

    def decorate(cls: type[Quantizer]) -> type[Quantizer]:
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"register_quantizer({name!r}) needs a Quantizer subclass, got {cls!r}")
        # "none" already means "no quantizer"; a silent overwrite would swap a layer's
        # binarizer behind the user's back.
        if name == "none" or QUANTIZERS.get(name, cls) is not cls:
            raise ValueError(f"quantizer name {name!r} is taken")
        QUANTIZERS[name] = cls
        cls.registered_name = name
        return cls

    return decorate


def quantizer_names() -> list[str]:
    return sorted(QUANTIZERS)


class _Wrapped(Quantizer):
    """A plain callable used as a quantizer; full precision unless the callable carries
    ``bits``/``binary`` attributes of its own."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn
        self.bits = getattr(fn, "bits", 32)
        self.binary = getattr(fn, "binary", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return "" if isinstance(self.fn, nn.Module) else getattr(self.fn, "__name__", repr(self.fn))


def _instantiate(name: str, cls: type[Quantizer], kwargs: dict[str, Any]) -> Quantizer:
    # Binding first tells a misspelt option apart from a TypeError raised inside __init__.
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError:
        params = list(inspect.signature(cls).parameters)
        takes = ", ".join(params) if params else "no options"
        raise BnnkitError(f"quantizer {name!r} got option(s) {', '.join(sorted(kwargs))}; it takes: {takes}") from None
    return cls(**kwargs)


# What a layer takes as a quantizer: see get_quantizer.
QuantizerSpec = str | Quantizer | type[Quantizer] | Callable[[torch.Tensor], torch.Tensor] | None


@runtime_checkable
class ScheduledQuantizer(Protocol):
    """A quantizer that follows the training progress (``ede_sign``)."""

    def set_progress(self, progress: float) -> None: ...


def get_quantizer(spec: QuantizerSpec, **kwargs: Any) -> Quantizer | None:
    """Resolve what a layer was given as its quantizer.

    ``None`` or ``"none"`` → ``None`` (that side stays full precision); a registered name
    → a new instance built with ``kwargs``; a ``Quantizer`` subclass → a new instance; a
    ``Quantizer`` instance → itself (shared, not copied); any other callable → wrapped
    in a ``Quantizer`` that calls it.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "none":
            return None
        if spec not in QUANTIZERS:
            raise BnnkitError(f"unknown quantizer {spec!r}; available: none, {', '.join(quantizer_names())}")
        return _instantiate(spec, QUANTIZERS[spec], kwargs)
    if isinstance(spec, type):
        if issubclass(spec, Quantizer):
            return _instantiate(spec.__name__, spec, kwargs)
        # Callable, but calling a class builds an instance of it, not a quantized tensor.
        raise BnnkitError(f"a quantizer class must subclass bnnkit.quant.Quantizer, got {spec.__name__}")
    if kwargs:
        raise BnnkitError(
            f"quantizer options ({', '.join(sorted(kwargs))}) need a quantizer name, not a {type(spec).__name__}"
        )
    if isinstance(spec, Quantizer):
        return spec
    if callable(spec):
        return _Wrapped(spec)
    raise BnnkitError(f"a quantizer must be a name, a callable or None, got {type(spec).__name__}")


def scheduled_quantizers(module: nn.Module) -> list[ScheduledQuantizer]:
    """The quantizers in ``module`` that follow the training progress (those with
    ``set_progress``, such as ``ede_sign``)."""
    return [m for m in module.modules() if isinstance(m, Quantizer) and isinstance(m, ScheduledQuantizer)]


def set_training_progress(module: nn.Module, progress: float) -> None:
    """Tell every scheduled quantizer in ``module`` how far training is, from 0 (first
    step) to 1 (last step). The trainer does this before every optimiser step, over the
    list ``scheduled_quantizers`` made once."""
    for m in scheduled_quantizers(module):
        m.set_progress(progress)
