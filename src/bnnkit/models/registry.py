"""``create_model(name, ...)``: one registry of architectures, in the manner of timm."""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Callable, Sequence

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
    params = inspect.signature(_builder(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


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
    unknown = sorted(set(options) - set(model_options(name)))
    if unknown:
        known = ", ".join(sorted(model_options(name))) or "none"
        raise BnnkitError(f"model {name!r} has no option(s) {', '.join(unknown)}; its options: {known}")
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
    model.recipe = recipe
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
