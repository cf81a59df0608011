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
from bnnkit.files import atomic_write
from bnnkit.nn.layers import ACTIVATION_SCALES, PAD_VALUES, WEIGHT_SCALES

OPTIMIZERS = ("adam", "sgd", "bop")
SCHEDULES = ("cosine", "step", "constant")
WEIGHT_NORMS = ("none", "standardize")
RESIDUALS = ("block", "double")
DOWNSAMPLES = ("binary", "fp")
ACTIVATIONS = ("none", "prelu", "rprelu")
POOL_ORDERS = ("pool_bn_sign", "bn_sign_pool")


@dataclass(frozen=True)
class Recipe:
    """Training techniques and topology choices of one binary network.

    The defaults are the baseline of the review: sign binarizers with the clipped
    straight-through estimator for activations and weights (Courbariaux et al., 2016), no
    scaling factors, full-precision first and last layers, exact zero padding, Adam with
    latent-weight clipping and a cosine schedule.
    """

    name: str = "baseline"
    # --- training techniques --------------------------------------------------------
    # Binarizers (names from bnnkit.quant): the forward sign and its gradient approximation.
    input_quantizer: str = "clipped_ste_sign"
    kernel_quantizer: str = "clipped_ste_sign"
    # A learnable per-channel threshold in front of every activation binarizer (RSign).
    learnable_threshold: bool = False
    # Scaling factors: per-output-channel weight scale, and XNOR-Net's spatial activation scale.
    weight_scale: str = "none"
    activation_scale: str = "none"
    # Normalisation: a BatchNorm directly in front of every activation binarizer, and
    # zero-mean unit-variance latent weights before their sign (IR-Net's Libra-PB).
    feature_norm: bool = False
    weight_norm: str = "none"
    # Multiple bases (ABC-Net): a binary layer becomes weight_bases × activation_bases ones.
    weight_bases: int = 1
    activation_bases: int = 1
    # Partial binarisation: which layers stay full precision, and k-bit (DoReFa) activations.
    fp_first_layer: bool = True
    fp_last_layer: bool = True
    activation_bits: int = 1
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
    # Bop (Helwegen et al., 2019): flip a binary weight when its gradient momentum
    # (adaptivity rate bop_gamma) exceeds bop_threshold; the other parameters use Adam.
    bop_threshold: float = 1e-8
    bop_gamma: float = 1e-4
    batch_size: int = 128
    # Knowledge distillation from a full-precision twin trained first (ReActNet's
    # distribution loss), and two-stage training (binary activations, then binary weights).
    distill: bool = False
    two_stage: bool = False
    # --- topology changes -----------------------------------------------------------
    # Shortcuts of residual networks: around every two binary convolutions ("block") or
    # around every one ("double", Bi-Real Net), and how a strided shortcut downsamples.
    residual: str = "block"
    downsample: str = "binary"
    # Activation after each BatchNorm of the real-valued stream.
    activation: str = "none"
    # Where max-pooling sits: on the integer sums before BN and sign, or on the signs.
    pool_order: str = "pool_bn_sign"
    width_mult: float = 1.0
    # Value that pads binary feature maps: 0 is exact zero padding, ±1 keeps them binary.
    pad_value: float = 0.0

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
        choice("activation_scale", ACTIVATION_SCALES)
        choice("weight_norm", WEIGHT_NORMS)
        choice("residual", RESIDUALS)
        choice("downsample", DOWNSAMPLES)
        choice("activation", ACTIVATIONS)
        choice("pool_order", POOL_ORDERS)
        for field in ("lr", "batch_size", "width_mult", "bop_threshold", "bop_gamma"):
            if not getattr(self, field) > 0:
                raise BnnkitError(f"recipe {self.name!r}: {field} must be > 0, got {getattr(self, field)!r}")
        for field in ("momentum", "weight_decay", "warmup_epochs", "latent_clip"):
            value = getattr(self, field)
            if not (value >= 0 and math.isfinite(value)):
                raise BnnkitError(f"recipe {self.name!r}: {field} must be a finite number >= 0, got {value!r}")
        for field in ("weight_bases", "activation_bases", "activation_bits"):
            if not 1 <= getattr(self, field) <= 8:
                raise BnnkitError(f"recipe {self.name!r}: {field} must be in 1..8, got {getattr(self, field)!r}")
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Fields that each replace the same part of the activation binarizer cannot be mixed."""
        replacing = [
            f
            for f, on in (
                ("activation_bits", self.activation_bits > 1),
                ("activation_bases", self.activation_bases > 1),
                ("learnable_threshold", self.learnable_threshold),
            )
            if on
        ]
        if len(replacing) > 1:
            raise BnnkitError(
                f"recipe {self.name!r}: {' and '.join(replacing)} each replace the activation binarizer; use one"
            )
        if self.optimizer == "bop":
            # Bop flips the binary weights themselves: nothing may compute them from latent ones
            latent = [f for f, on in (("two_stage", self.two_stage), ("weight_bases", self.weight_bases > 1),
                                      ("weight_norm", self.weight_norm != "none")) if on]  # fmt: skip
            if latent:
                raise BnnkitError(
                    f"recipe {self.name!r}: {', '.join(latent)} need(s) latent real-valued weights, which Bop does not have"
                )

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
        try:
            return cls(**clean)
        except BnnkitError as exc:  # a bad value or combination: say which file it came from
            raise BnnkitError(f"{source}: {exc}") from None

    def to_toml(self) -> str:
        return "".join(f"{key} = {_toml_value(value)}\n" for key, value in self.to_dict().items())

    def save(self, path: str | Path) -> None:
        path = Path(path)
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n" if path.suffix == ".json" else self.to_toml())


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


def read_recipe_file(path: Path) -> Recipe:
    """A recipe from a ``.toml`` or ``.json`` file; its name defaults to the file's stem."""
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
