"""The catalogue of repair methods: each named once, with its place in the taxonomy of
de Putter & Corporaal (2022), the paper it comes from, what it costs at inference and
the recipe fields it changes.

A method is nothing but a set of recipe field values, so applying it in isolation is
``BASELINE.with_(**method.changes)`` and combining methods is applying them in turn;
two methods that want different values for the same field do not compose, and say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnkit.errors import BnnkitError
from bnnkit.recipe.core import BASELINE, Recipe, read_recipe_file

TRAINING, TOPOLOGY = "training technique", "topology change"


@dataclass(frozen=True)
class Method:
    name: str
    category: str  # TRAINING or TOPOLOGY
    kind: str  # the sub-category: binarizer, scaling factor, normalisation, ...
    source: str
    changes: Mapping[str, Any]
    # What the method adds to inference, per binary layer with C output channels and an
    # H×W output, and whether bnnkit's exporter can turn it into the integer graph.
    inference_cost: str
    exportable: bool
    summary: str
    # Model feature the method acts on ("residual", "pooling"); models without it refuse it.
    needs: str | None = None

    def used_by(self, recipe: Recipe) -> bool:
        """Whether ``recipe`` applies this method: its choices (names, switches) as the
        method makes them, and its numbers (bits, bases, rates) changed from the baseline."""
        return all(
            getattr(recipe, key) == value
            if isinstance(value, (str, bool))
            else getattr(recipe, key) != getattr(BASELINE, key)
            for key, value in self.changes.items()
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "kind": self.kind,
            "source": self.source,
            "changes": dict(self.changes),
            "inference_cost": self.inference_cost,
            "exportable": self.exportable,
            "needs": self.needs,
            "summary": self.summary,
        }


FREE = "none (training only)"

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        # --- binarizers and their gradient approximations (activations) --------------
        Method(
            "ste",
            TRAINING,
            "binarizer",
            "Bengio et al., 2013 (straight-through estimator)",
            {"input_quantizer": "ste_sign"},
            FREE,
            True,
            "sign forward, identity gradient everywhere",
        ),
        Method(
            "approx_sign",
            TRAINING,
            "binarizer",
            "Liu et al., 2018 (Bi-Real Net)",
            {"input_quantizer": "approx_sign"},
            FREE,
            True,
            "sign forward, piecewise-quadratic gradient 2-2|x| on [-1, 1]",
        ),
        Method(
            "swish_sign",
            TRAINING,
            "binarizer",
            "Darabi et al., 2018 (BNN+)",
            {"input_quantizer": "swish_sign"},
            FREE,
            True,
            "sign forward, derivative of the SignSwish function as gradient",
        ),
        Method(
            "ede",
            TRAINING,
            "binarizer",
            "Qin et al., 2020 (IR-Net)",
            {"input_quantizer": "ede_sign"},
            FREE,
            True,
            "error decay estimator: a tanh-shaped gradient sharpened towards sign during training",
        ),
        Method(
            "rsign",
            TRAINING,
            "feature binarizer",
            "Liu et al., 2020 (ReActNet)",
            {"learnable_threshold": True},
            "+C FP params; folds into the integer threshold",
            True,
            "learnable per-channel threshold in front of every activation sign",
        ),
        # --- scaling factors ------------------------------------------------------------
        Method(
            "xnor_weight_scale",
            TRAINING,
            "scaling factor",
            "Rastegari et al., 2016 (XNOR-Net)",
            {"weight_scale": "mean_abs"},
            "+C FP params, +C·H·W FP mul; folds into the threshold",
            True,
            "analytic per-output-channel weight scale mean|W|",
        ),
        Method(
            "xnor_activation_scale",
            TRAINING,
            "scaling factor",
            "Rastegari et al., 2016 (XNOR-Net)",
            {"activation_scale": "xnor"},
            "+H·W·(Cin + k²) FP ops per layer (mean|x| map and its box filter)",
            False,
            "spatial activation scale K = box-filtered mean over channels of |input|",
        ),
        Method(
            "learned_weight_scale",
            TRAINING,
            "scaling factor",
            "Bulat & Tzimiropoulos, 2019 (XNOR-Net++)",
            {"weight_scale": "learned"},
            "+C FP params, +C·H·W FP mul; folds into the threshold",
            True,
            "learnable per-output-channel weight scale, initialised to mean|W|",
        ),
        # --- normalisation ---------------------------------------------------------------
        Method(
            "feature_norm",
            TRAINING,
            "normalisation",
            "de Putter & Corporaal, 2022; Ioffe & Szegedy, 2015",
            {"feature_norm": True},
            "+2·Cin FP params, +Cin·H·W FP ops; folds into the threshold",
            True,
            "BatchNorm directly in front of every activation sign of the residual stream",
            needs="residual",
        ),
        Method(
            "weight_standardization",
            TRAINING,
            "normalisation",
            "Qin et al., 2020 (IR-Net, Libra-PB)",
            {"weight_norm": "standardize"},
            FREE,
            True,
            "latent weights centred and scaled to unit variance per output channel before their sign",
        ),
        # --- optimisers and schedules -------------------------------------------------------
        Method(
            "bop",
            TRAINING,
            "optimiser",
            "Helwegen et al., 2019 (Bop)",
            {"optimizer": "bop"},
            FREE,
            True,
            "binary optimiser: flips a weight when its gradient momentum passes a threshold; no latent weights",
        ),
        Method(
            "sgd_step",
            TRAINING,
            "optimiser",
            "He et al., 2016 (SGD with momentum, step decay)",
            {"optimizer": "sgd", "lr": 0.1, "schedule": "step"},
            FREE,
            True,
            "SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 at 50% and 75%",
        ),
        Method(
            "step_schedule",
            TRAINING,
            "schedule",
            "He et al., 2016 (step decay)",
            {"schedule": "step"},
            FREE,
            True,
            "the baseline's Adam with step instead of cosine decay",
        ),
        # --- distillation and multi-stage training ------------------------------------------
        Method(
            "distillation",
            TRAINING,
            "distillation",
            "Liu et al., 2020 (ReActNet distribution loss); Hinton et al., 2015",
            {"distill": True},
            FREE,
            True,
            "loss = KL(teacher || student) to a full-precision twin trained first for the same epochs",
        ),
        Method(
            "two_stage",
            TRAINING,
            "multi-stage training",
            "Martinez et al., 2020 (Real-to-Binary); Bulat et al., 2019",
            {"two_stage": True},
            FREE,
            True,
            "first half of the epochs with binary activations and real weights, then binary weights",
        ),
        # --- topology: residual structure, downsampling, activation ------------------------
        Method(
            "double_residual",
            TOPOLOGY,
            "residual structure",
            "Liu et al., 2018 (Bi-Real Net)",
            {"residual": "double"},
            "+C·H·W FP adds per binary conv",
            True,
            "a real-valued shortcut around every binary convolution instead of every two",
            needs="residual",
        ),
        Method(
            "fp_downsample",
            TOPOLOGY,
            "downsampling",
            "Liu et al., 2018 (Bi-Real Net); Bethge et al., 2019",
            {"downsample": "fp"},
            "FP 1×1 conv: Cin·C FP params, Cin·C·H·W FP MACs per strided shortcut",
            True,
            "strided shortcuts as 2×2 average pool → full-precision 1×1 conv → BN",
            needs="residual",
        ),
        Method(
            "prelu",
            TOPOLOGY,
            "activation",
            "He et al., 2015; Bulat et al., 2019",
            {"activation": "prelu"},
            "+C FP params, +C·H·W FP ops",
            True,
            "PReLU (learnable negative slope per channel) after every BatchNorm",
        ),
        Method(
            "rprelu",
            TOPOLOGY,
            "activation",
            "Liu et al., 2020 (ReActNet)",
            {"activation": "rprelu"},
            "+3·C FP params, +3·C·H·W FP ops",
            True,
            "RPReLU: shift, PReLU, shift, all learnable per channel",
        ),
        # --- topology: layer order, width, padding --------------------------------------------
        Method(
            "pool_after_sign",
            TOPOLOGY,
            "layer order",
            "Simons & Lee, 2019 (layer order); Courbariaux et al., 2016",
            {"pool_order": "bn_sign_pool"},
            "none (max-pool of signs is an OR)",
            True,
            "conv → BN → sign → pool instead of conv → pool → BN → sign",
            needs="pooling",
        ),
        Method(
            "width_x2",
            TOPOLOGY,
            "width",
            "Mishra et al., 2018 (WRPN)",
            {"width_mult": 2.0},
            "4× binary MACs and weights in hidden layers",
            True,
            "every hidden layer twice as wide",
        ),
        Method(
            "pad_minus_one",
            TOPOLOGY,
            "padding",
            "Simons & Lee, 2019 (padding); Larq pad_values",
            {"pad_value": -1.0},
            "none (padding stays binary: cheaper than exact zero padding)",
            True,
            "binary feature maps padded with -1 instead of exact zeros",
        ),
        Method(
            "pad_plus_one",
            TOPOLOGY,
            "padding",
            "Simons & Lee, 2019 (padding); Larq pad_values",
            {"pad_value": 1.0},
            "none (padding stays binary: cheaper than exact zero padding)",
            True,
            "binary feature maps padded with +1 instead of exact zeros",
        ),
        # --- topology: precision of layers and multiple bases -----------------------------------
        Method(
            "binary_first_last",
            TOPOLOGY,
            "partial binarisation",
            "McDanel et al., 2017 (eBNN)",
            {"fp_first_layer": False, "fp_last_layer": False},
            "saves the FP first and last layers: all integer",
            True,
            "binary weights in the first and last layers too (the baseline keeps them full precision)",
        ),
        Method(
            "dorefa_2bit",
            TOPOLOGY,
            "partial binarisation",
            "Zhou et al., 2016 (DoReFa-Net)",
            {"activation_bits": 2},
            "2-bit activations: 2× the activation bits, 2-bit × 1-bit MACs",
            False,
            "activations quantized to 2 bits (4 levels in [0, 1]) instead of a sign",
        ),
        Method(
            "abc_weight_bases",
            TOPOLOGY,
            "multiple bases",
            "Lin et al., 2017 (ABC-Net)",
            {"weight_bases": 3},
            "3× binary MACs and weights, +3·C FP params, +3·C·H·W FP MACs",
            True,
            "weights approximated by 3 scaled binary bases",
        ),
        Method(
            "abc_activation_bases",
            TOPOLOGY,
            "multiple bases",
            "Lin et al., 2017 (ABC-Net)",
            {"activation_bases": 3},
            "3× binary MACs and activation bits, +6 FP params, +3·C·H·W FP MACs",
            True,
            "activations approximated by 3 scaled, shifted binary bases",
        ),
    ]
}

RECIPES: dict[str, Recipe] = {
    "baseline": BASELINE,
    # Every layer binary-weighted, so the whole network runs in integers on a device:
    # the first layer multiplies uint8 pixels by ±1, the last one's scores are a BN of
    # popcounts.
    "embedded": BASELINE.with_(name="embedded", fp_first_layer=False, fp_last_layer=False),
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise BnnkitError(f"unknown repair method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def apply_methods(base: Recipe | str, names: Iterable[str], name: str | None = None) -> Recipe:
    """``base`` (a Recipe or anything `load_recipe` takes) with the repair methods ``names``
    applied, named ``name`` (default: the base's name and the methods joined by '+').
    Methods that set one field to different values, or fields that cannot be combined,
    raise one error naming both."""
    base = load_recipe(base)
    names = list(names)
    changes: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for method in map(get_method, names):
        for key, value in method.changes.items():
            if key in changes and changes[key] != value:
                raise BnnkitError(
                    f"repair methods {owner[key]!r} and {method.name!r} are incompatible: both set {key} "
                    f"({changes[key]!r} vs {value!r})"
                )
            changes[key], owner[key] = value, method.name
    label = name or "+".join([base.name, *names] if base.name != "baseline" or not names else names)
    try:
        return base.with_(name=label, **changes)
    except BnnkitError as exc:
        raise BnnkitError(f"repair methods {', '.join(names)} do not compose: {exc}") from None


def methods_needing(feature: str, recipe: Recipe) -> list[str]:
    """The methods that need model ``feature`` and that ``recipe`` applies."""
    return [m.name for m in METHODS.values() if m.needs == feature and m.used_by(recipe)]


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def load_recipe(spec: str | Path | Recipe | None) -> Recipe:
    """A recipe from a name (``baseline``, ``embedded``), repair methods on the baseline
    joined by '+' (``rsign+double_residual``), a ``.toml``/``.json`` file, or a Recipe."""
    if spec is None:
        return BASELINE
    if isinstance(spec, Recipe):
        return spec
    text = str(spec)
    if text in RECIPES:
        return RECIPES[text]
    if Path(text).suffix in (".toml", ".json"):
        return read_recipe_file(Path(text))
    parts = text.split("+")
    base = RECIPES.get(parts[0])
    methods = parts[1:] if base is not None else parts
    if all(p in METHODS for p in methods) and methods:
        return apply_methods(base or BASELINE, methods, name=text)
    raise BnnkitError(
        f"unknown recipe {text!r}: give a recipe ({', '.join(recipe_names())}), repair methods joined by '+' "
        f"(see `bnnkit methods`), or a .toml/.json file"
    )
