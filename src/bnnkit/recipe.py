"""Recipes: which repair methods a binary network uses, as one frozen, serialisable value.

A recipe is the unit of the empirical review: the baseline is one recipe, every repair
method is ``baseline.with_(...)`` changing the few fields it is about, and a training run
records the recipe it used so that it can be rebuilt exactly. The catalogue of named
methods grows on top of these fields; models read them through `bnnkit.models`, never the
other way round.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bnnkit.errors import BnnkitError
from bnnkit.nn.layers import PAD_VALUES, WEIGHT_SCALES

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class Recipe:
    """Training techniques and topology choices of one binary network.

    The defaults are the baseline of the review: sign binarizers with the clipped
    straight-through estimator for activations and weights (Courbariaux et al., 2016), no
    scaling factors, full-precision first and last layers, exact zero padding, Adam with
    latent-weight clipping and a cosine schedule.
    """

    name: str = "baseline"
    # Binarizers (names from bnnkit.quant).
    input_quantizer: str = "clipped_ste_sign"
    kernel_quantizer: str = "clipped_ste_sign"
    weight_scale: str = "none"
    # Partial binarisation: which layers stay full precision.
    fp_first_layer: bool = True
    fp_last_layer: bool = True
    # Value that pads binary feature maps: 0 is exact zero padding, ±1 keeps them binary.
    pad_value: float = 0.0
    # Optimiser and schedule.
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    # Decay applies to full-precision weights only; decaying latent binary weights only
    # pushes them towards the sign flip without changing any binary value.
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 0
    # Latent weights are clamped to [-latent_clip, latent_clip] after each step; 0 disables.
    latent_clip: float = 1.0
    batch_size: int = 128

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        def choice(field: str, allowed: tuple) -> None:
            value = getattr(self, field)
            if value not in allowed:
                raise BnnkitError(
                    f"recipe {self.name!r}: {field} = {value!r} is not one of {', '.join(map(repr, allowed))}"
                )

        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("weight_scale", WEIGHT_SCALES)
        choice("pad_value", PAD_VALUES)
        for field in ("lr", "batch_size"):
            if not getattr(self, field) > 0:
                raise BnnkitError(f"recipe {self.name!r}: {field} must be > 0, got {getattr(self, field)!r}")
        for field in ("momentum", "weight_decay", "warmup_epochs", "latent_clip"):
            value = getattr(self, field)
            if not (value >= 0 and math.isfinite(value)):
                raise BnnkitError(f"recipe {self.name!r}: {field} must be a finite number >= 0, got {value!r}")

    def with_(self, **changes: Any) -> Recipe:
        """A copy with some fields changed; the way a repair method is applied in isolation."""
        unknown = sorted(set(changes) - _field_names())
        if unknown:
            raise BnnkitError(f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(_field_names()))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise BnnkitError(f"{source}: a recipe must be a table of fields, got {type(data).__name__}")
        unknown = sorted(set(data) - _field_names())
        if unknown:
            raise BnnkitError(
                f"{source}: unknown recipe key(s) {', '.join(unknown)}; known: {', '.join(sorted(_field_names()))}"
            )
        types = {f.name: f.type for f in fields(cls)}
        clean = {key: _coerce(source, key, value, types[key]) for key, value in data.items()}
        return cls(**clean)

    def to_toml(self) -> str:
        return "".join(f"{key} = {_toml_value(value)}\n" for key, value in self.to_dict().items())

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n" if path.suffix == ".json" else self.to_toml()
        path.write_text(text)


def _field_names() -> set[str]:
    return {f.name for f in fields(Recipe)}


def _coerce(source: str, key: str, value: Any, type_name: str) -> Any:
    """Check one value against the field's declared type; TOML and JSON both write 1 for 1.0."""
    if type_name == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"str": str, "bool": bool, "int": int, "float": float}[type_name]
    if type(value) is not expected:
        raise BnnkitError(f"{source}: {key} must be a {type_name}, got {value!r}")
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


BASELINE = Recipe()

RECIPES: dict[str, Recipe] = {
    "baseline": BASELINE,
    # Every layer binary-weighted, so the whole network runs in integers on a device:
    # the first layer multiplies uint8 pixels by ±1, the last one's scores are a BN of
    # popcounts.
    "embedded": BASELINE.with_(name="embedded", fp_first_layer=False, fp_last_layer=False),
}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def load_recipe(spec: str | Path | Recipe | None) -> Recipe:
    """A recipe from a name in the catalogue, a ``.toml``/``.json`` file, or a Recipe."""
    if spec is None:
        return BASELINE
    if isinstance(spec, Recipe):
        return spec
    text = str(spec)
    if text in RECIPES:
        return RECIPES[text]
    path = Path(text)
    if path.suffix not in (".toml", ".json"):
        raise BnnkitError(f"unknown recipe {text!r}: give one of {', '.join(recipe_names())} or a .toml/.json file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BnnkitError(f"{path}: cannot read recipe file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise BnnkitError(f"{path}: not a valid {path.suffix[1:].upper()} recipe ({exc})") from None
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": path.stem}
    return Recipe.from_dict(data, source=str(path))
