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
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write

OPTIMIZERS = ("adam", "sgd", "bop")
SCHEDULES = ("cosine", "step", "constant")
WEIGHT_NORMS = ("none", "standardize")
RESIDUALS = ("block", "double")
DOWNSAMPLES = ("binary", "fp")
ACTIVATIONS = ("none", "prelu", "rprelu", "relu")  # relu: the full-precision twins of the int8 baseline
POOL_ORDERS = ("pool_bn_sign", "bn_sign_pool")
# The vocabularies of the binary layers live here, with the recipe that names them, so that
# bnnkit.nn imports the recipe and not the other way round (a recipe loads without torch).
WEIGHT_SCALES = ("none", "mean_abs", "learned")
ACTIVATION_SCALES = ("none", "xnor")
PAD_VALUES = (0.0, -1.0, 1.0)  # what a padded tap reads, one per bnnkit.graph.PadMode (tests/test_op_table.py)
_TYPES = {"str": str, "bool": bool, "int": int, "float": float}


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        # NaN fails every comparison, so it never holds; nor does ±inf, all bounds being finite
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if isinstance(self.low, int) and isinstance(self.high, int) and not (self.low_open or self.high_open):
            return f"{self.low}..{self.high}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


# The range of every numeric field. The upper bounds are far beyond any useful value and
# keep a typo (or a hostile file) from allocating or diverging without end.
RANGES = {
    "lr": Interval(0.0, 10.0, low_open=True),
    "momentum": Interval(0.0, 1.0, high_open=True),  # at 1 or more the velocity grows without bound
    "weight_decay": Interval(0.0, 1.0),
    "warmup_epochs": Interval(0, 10_000),
    "latent_clip": Interval(0.0, 1e6),  # 0 disables; beyond every latent value it clips nothing
    "bop_threshold": Interval(0.0, 1e6, low_open=True),
    "bop_gamma": Interval(0.0, 1.0, low_open=True),  # the rate of an exponential moving average
    "batch_size": Interval(1, 1 << 20),
    "weight_bases": Interval(1, 8),
    "activation_bases": Interval(1, 8),
    "activation_bits": Interval(1, 8),
    "width_mult": Interval(0.0, 16.0, low_open=True),
}


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
        self._check_types()
        self._check()

    def _check_types(self) -> None:
        """Every field of its declared type (a bool is no number here); an int where a float
        is declared becomes that float, as TOML and JSON write 1 for 1.0."""
        if not isinstance(self.name, str):
            raise BnnkitError(f"recipe name must be a str, got {self.name!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            # A string, as this module postpones its annotations; dataclasses also allows a type.
            declared = f.type if isinstance(f.type, str) else f.type.__name__
            if declared == "float" and type(value) is int:
                object.__setattr__(self, f.name, float(value))
            elif type(value) is not _TYPES[declared]:
                article = "an" if declared == "int" else "a"
                raise BnnkitError(f"recipe {self.name!r}: {f.name} must be {article} {declared}, got {value!r}")

    def _check(self) -> None:
        def choice(field: str, allowed: tuple[object, ...]) -> None:
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
        for field, interval in RANGES.items():
            value = getattr(self, field)
            if not interval.holds(value):
                kind = "an integer" if isinstance(value, int) else "a finite number"
                raise BnnkitError(f"recipe {self.name!r}: {field} must be {kind} in {interval}, got {value!r}")
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
            raise BnnkitError(
                f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(_field_names()))}"
            )
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
        try:
            return cls(**data)
        except BnnkitError as exc:  # a bad type, value or combination: say which file it came from
            raise BnnkitError(f"{source}: {exc}") from None

    def to_toml(self) -> str:
        return "".join(f"{key} = {_toml_value(value)}\n" for key, value in self.to_dict().items())

    def save(self, path: str | Path) -> None:
        path = Path(path)
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n" if path.suffix == ".json" else self.to_toml())


def _field_names() -> set[str]:
    return {f.name for f in fields(Recipe)}


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
