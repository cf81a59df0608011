"""``create_model(name, ...)``: one registry of architectures, in the manner of timm."""

from __future__ import annotations

import inspect
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.nn import InputNorm, IntegerPixels
from bnnkit.recipe import METHODS, Recipe, load_recipe, methods_needing

Builder = Callable[..., nn.Module]
MODELS: dict[str, Builder] = {}
# The model features that repair methods act on (Method.needs), and which models have them.
FEATURES = frozenset(m.needs for m in METHODS.values() if m.needs)
MODEL_FEATURES: dict[str, frozenset[str]] = {}


def register_model(*features: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn(num_classes, in_shape, recipe, **options)`` under its own
    name, with the model ``features`` it has ("residual", "pooling")."""
    unknown = sorted(set(features) - FEATURES)
    if unknown:
        raise BnnkitError(f"unknown model feature(s) {', '.join(unknown)}; known: {', '.join(sorted(FEATURES))}")

    def decorate(fn: Builder) -> Builder:
        for key, default in _keyword_defaults(fn).items():
            _option_kind(fn.__name__, key, default)
        MODELS[fn.__name__] = fn
        MODEL_FEATURES[fn.__name__] = frozenset(features)
        return fn

    return decorate


def model_names() -> list[str]:
    return sorted(MODELS)


def model_features(name: str) -> frozenset[str]:
    """The features of model ``name`` that repair methods need ("residual", "pooling")."""
    _builder(name)  # the error for an unknown name
    return MODEL_FEATURES[name]


def model_options(name: str) -> dict[str, Any]:
    """The keyword options of a model and their defaults."""
    return _keyword_defaults(_builder(name))


def _keyword_defaults(fn: Builder) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


# Model options are sizes and counts (widths, channels, kernels, depths: ints) and width
# factors (floats). The bounds make a typo or a hostile config.json an error line rather
# than a huge allocation.
RANGES = {int: (1, 1 << 16), float: (0.0, 64.0)}  # ints: low..high; floats: (low, high]
_NAMES = {int: "int", float: "number", bool: "bool", str: "string"}
_INT_LIST = re.compile(r"\s*[+-]?\d+\s*(,\s*[+-]?\d+\s*)*")


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of model ``name`` as its builder takes them, each checked against the
    type of the builder's default for it (an int, a float, a bool, a str, or a list of
    one of those), numbers against ``RANGES``. A list of ints may also be given as the
    shell-safe text ``16,32``; an int where a float is expected becomes that float. A
    problem is one ``BnnkitError`` line with an example of a valid value."""
    defaults = model_options(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise BnnkitError(f"model {name!r} has no option(s) {', '.join(unknown)}; its options: {known}")
    return {key: _option_value(name, key, value, defaults[key]) for key, value in options.items()}


def _kind(default: Any) -> tuple[type, ...] | None:
    """(type,) of a scalar option, (list, element type) of a list option, from its default."""
    if isinstance(default, (bool, int, float, str)):
        return (type(default),)
    if isinstance(default, (list, tuple)) and default and len({type(v) for v in default}) == 1:
        element = _kind(default[0])
        return (list, *element) if element and len(element) == 1 else None
    return None


def _option_kind(model: str, key: str, default: Any) -> tuple[type, ...]:
    """``_kind`` of an option: its type is read from its default, which must have one."""
    kind = _kind(default)
    if kind is None:
        raise TypeError(f"model {model} option {key}: default {default!r} is no int, float, bool, str or list")
    return kind


def _option_value(model: str, key: str, value: Any, default: Any) -> Any:
    kind = _option_kind(model, key, default)
    if kind[0] is list:
        element = kind[1]
        if isinstance(value, str) and element is int and _INT_LIST.fullmatch(value):
            value = [int(v) for v in value.split(",")]
        items = [_scalar(v, element) for v in value] if isinstance(value, (list, tuple)) and value else [None]
        what = f"a list of {_NAMES[element]}s"
    else:
        element, items, what = (
            kind[0],
            [_scalar(value, kind[0])],
            f"{'an' if kind[0] is int else 'a'} {_NAMES[kind[0]]}",
        )
    if any(v is None for v in items):
        _bad_option(model, key, value, default, what)
    if not all(_in_range(v) for v in items):
        low, high = RANGES[element]
        interval = f"{low}..{high}" if element is int else f"({low:g}, {high:g}]"
        _bad_option(model, key, value, default, f"{what} in {interval}")
    return items if kind[0] is list else items[0]


def _scalar(value: Any, expected: type) -> Any:
    """``value`` as an ``expected`` (a bool is no number; an int is a float), or None."""
    if expected is float and type(value) is int:
        return float(value)
    return value if type(value) is expected else None


def _in_range(value: Any) -> bool:
    if type(value) not in RANGES:
        return True
    low, high = RANGES[type(value)]
    return low <= value <= high if type(value) is int else low < value <= high  # NaN and inf fail


def _bad_option(model: str, key: str, value: Any, default: Any, expected: str) -> None:
    example = json.dumps(list(default) if isinstance(default, tuple) else default, separators=(",", ":"))
    raise BnnkitError(f"model {model} option {key}: expected {expected} like {key}={example}, got {value!r}")


def create_model(
    name: str,
    num_classes: int,
    in_shape: tuple[int, int, int],
    recipe: Recipe | str | None = None,
    *,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    **options: Any,
) -> nn.Module:
    """Build architecture ``name`` for inputs of shape ``(C, H, W)`` with the given recipe.

    A model takes pixels in [0, 1]. With ``normalize=(mean, std)`` and a full-precision
    first layer, it starts with a fixed per-channel normalisation (saved with the weights).
    A binary first layer instead sees the integer pixel values 0..255 (`IntegerPixels`):
    its BatchNorm does the centring, its zero padding is a black pixel, and its sums are
    exact integers, so a device computes it bit for bit from uint8 input.
    """
    builder = _builder(name)
    options = check_options(name, options)
    if num_classes < 2:
        raise BnnkitError(f"num_classes must be >= 2, got {num_classes}")
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise BnnkitError(f"in_shape must be (channels, height, width), got {tuple(in_shape)}")
    recipe = load_recipe(recipe)
    _check_features(name, recipe)
    model = builder(num_classes, tuple(in_shape), recipe, **options)
    if not recipe.fp_first_layer:
        model = nn.Sequential(OrderedDict(norm=IntegerPixels(), net=model))
    elif normalize is not None:
        model = nn.Sequential(OrderedDict(norm=InputNorm(*normalize), net=model))
    # The exporter reads which repair methods the model was built with.
    model.recipe = recipe  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    return model


def _check_features(name: str, recipe: Recipe) -> None:
    for feature in sorted(FEATURES - MODEL_FEATURES[name]):
        used = methods_needing(feature, recipe)
        if used:
            verb = "needs" if len(used) == 1 else "need"
            raise BnnkitError(f"{' and '.join(used)} {verb} a {feature} model; {name} has none")


def _builder(name: str) -> Builder:
    try:
        return MODELS[name]
    except KeyError:
        raise BnnkitError(
            f"unknown model {name!r}; available: {', '.join(model_names())} (a model of your own: import the module "
            "that registers it, e.g. bnnkit --import MODULE)"
        ) from None
