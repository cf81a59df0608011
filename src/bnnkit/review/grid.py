"""A review grid: one model on one dataset, the baseline and every chosen repair method in
isolation (plus chosen combinations), each trained with every seed.

A grid is the ``[review]`` table of a TOML file, or of a preset shipped with bnnkit::

    [review]
    model = "resnet20"
    model_options = { width_mult = 0.5 }
    dataset = "fashion_mnist"
    epochs = 5
    seeds = [0, 1]
    base = "baseline"                 # recipe name, methods joined by '+', or a .toml/.json file
    methods = ["all"]                 # or catalogue names: ["rsign", "double_residual"]
    combinations = [["rsign", "double_residual"]]
    skip_inapplicable = false         # true: drop methods the model cannot use, with a note
    limit_train = 1024                # optional: first N images only
    limit_test = 1024
    data_dir = "data"                 # optional; relative paths are relative to the grid file
    recipe = { lr = 3e-3 }            # optional overrides of the base recipe's fields
    validation = 5000                 # hold out N training images; every choice uses them

    [review.confirm]                  # optional: what `bnnkit review --stage confirm` runs
    epochs = 30
    seeds = [0, 1, 2, 3, 4]           # >= 3
    top_k = 3                         # the screen's k best methods by paired validation Δ ...
    always = ["rsign", "feature_norm", "double_residual", "rsign+feature_norm+double_residual"]  # ... and these
    target_half_width = 0.5           # optional: add seeds until every entry's paired validation Δ has a
    max_seeds = 10                    # 95% interval within ±0.5 points, or there are max_seeds (default 10)
    # limit_train / limit_test: absent = every image (the screen's limits do not carry over)

The screen runs the baseline, every method and every combination; the confirmation runs the
baseline, the top_k entries of the screen ranked by their mean paired difference in final
validation accuracy to the baseline, and the ``always`` entries, each on the confirm budget.

Every run is identified by the SHA-256 of everything that decides its result, so changing
any of it makes a new run instead of silently reusing an old one.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from bnnkit.errors import BnnkitError
from bnnkit.recipe import METHODS, Recipe, apply_methods, get_method, load_recipe
from bnnkit.review.stats import mean_ci
from bnnkit.review.store import BASELINE_LABEL, COMBINATION
from bnnkit.training import RunConfig

# key: (type(s) accepted, what to say when another type is given)
KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "model": (str, "a model name"),
    "model_options": (dict, "a table of model options"),
    "dataset": (str, "a dataset name"),
    "epochs": (int, "an integer >= 1"),
    "seeds": (list, "a list of integer seeds"),
    "base": (str, "a recipe name, methods joined by '+', or a recipe file"),
    "methods": (list, 'a list of method names, or ["all"]'),
    "combinations": (list, "a list of lists of method names"),
    "skip_inapplicable": (bool, "true or false"),
    "limit_train": (int, "an integer >= 1"),
    "limit_test": (int, "an integer >= 1"),
    "data_dir": (str, "a path"),
    "recipe": (dict, "a table of recipe fields"),
    "validation": (int, "an integer >= 1 (training images held out)"),
    "confirm": (dict, "a table: epochs, seeds, top_k, always, limit_train, limit_test"),
    "measure": (str, 'a device runtime, e.g. "cortex-m4" (bnnkit review --measure)'),
}
CONFIRM_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "epochs": (int, "an integer >= 1"),
    "seeds": (list, "a list of 3 or more distinct integer seeds"),
    "top_k": (int, "an integer >= 0"),
    "always": (list, "a list of method names or combinations joined by '+'"),
    "limit_train": (int, "an integer >= 1"),
    "limit_test": (int, "an integer >= 1"),
    "target_half_width": ((int, float), "a number of accuracy points > 0"),
    "max_seeds": (int, "an integer >= the number of confirm.seeds"),
}
# Keys of [review.confirm] that choose what the confirmation runs, not how a run trains.
CHOICE_KEYS = ("top_k", "always", "target_half_width", "max_seeds")
DEFAULT_MAX_SEEDS = 10
MIN_CONFIRM_SEEDS = 3
STAGES = ("screen", "confirm")
REQUIRED = ("model", "dataset", "epochs", "seeds")


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    label: str  # "baseline", a method name, or methods joined by '+'
    category: str  # "baseline", the method's taxonomy category, or "combination"
    kind: str  # the method's sub-category ("" for the baseline and combinations)
    study: str  # what every run of the grid shares; the report compares within a study
    config: RunConfig
    limit_train: int | None = None
    limit_test: int | None = None
    validation: int | None = None  # training images held out (bnnkit.training.loop.validation_split)
    stage: str = "screen"

    @property
    def key(self) -> str:
        identity = self.config.to_dict()
        # Where the data lives does not change a result; moving it must not retrain.
        identity.pop("data_dir")
        identity["limits"] = [self.limit_train, self.limit_test]
        # Only where set, so that the keys of stores written before these fields existed stay valid.
        if self.validation is not None:
            identity["validation"] = self.validation
        if self.stage != "screen":
            identity["stage"] = self.stage
        return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Grid:
    source: str
    runs: list[RunSpec]
    # (label, reason) of methods dropped because the model cannot use them
    skipped: list[tuple[str, str]]
    raw: dict[str, Any] = field(default_factory=dict)  # the [review] table, to derive the confirmation from
    folder: Path | None = None

    def confirmation(self, screen: list[dict[str, Any]]) -> tuple[Grid, list[dict[str, Any]]]:
        """The confirmation grid chosen from the store rows ``screen`` of this grid's runs,
        and the screen's ranking it was chosen from."""
        confirm = self.raw.get("confirm")
        if confirm is None:
            raise BnnkitError(f"{self.source}: no [review.confirm] table: nothing to confirm")
        ranking = screen_ranking(screen)
        chosen = [r["label"] for r in ranking[: confirm.get("top_k", 3)]]
        labels = list(dict.fromkeys([*chosen, *confirm.get("always", [])]))
        table = {k: v for k, v in self.raw.items() if k not in ("limit_train", "limit_test", "confirm")}
        table |= {k: v for k, v in confirm.items() if k not in CHOICE_KEYS}
        table |= methods_override(",".join(labels)) if labels else {"methods": [], "combinations": []}
        # An `always` entry the model cannot use is dropped, as skip_inapplicable drops it from the screen.
        grid = expand({**table, "skip_inapplicable": True}, self.source, self.folder, stage="confirm")
        return replace(grid, raw=self.raw), ranking

    def with_more_seeds(self, rows: list[dict[str, Any]]) -> Grid | None:
        """This confirmation grid with one more seed, for the baseline and every entry whose
        95% interval of the paired difference in final validation accuracy (``half_widths``
        of the store rows ``rows``) is wider than ``confirm.target_half_width`` on either
        side; None when every entry is within it, without a target, or at ``max_seeds``.
        Decided on validation, as every other choice of the protocol; the new seed is one
        above the largest run so far, so a resumed review takes the same steps."""
        confirm = self.raw.get("confirm", {})
        target = confirm.get("target_half_width")
        seeds = sorted({s.config.seed for s in self.runs})
        if target is None or len(seeds) >= confirm.get("max_seeds", DEFAULT_MAX_SEEDS):
            return None
        wide = {label for label, hw in half_widths(self, rows).items() if hw is None or hw > target}
        if not wide:
            return None
        first, new = seeds[0], seeds[-1] + 1
        more = [
            replace(s, config=replace(s.config, seed=new))
            for s in self.runs
            if s.config.seed == first and s.label in wide | {BASELINE_LABEL}
        ]
        return replace(self, runs=[*self.runs, *more])


def half_widths(grid: Grid, rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per entry of ``grid`` but the baseline: the half-width, in accuracy points, of the 95% t
    interval of its paired differences in final validation accuracy to the baseline over the
    seeds where both runs are done (None for fewer than 2 such seeds)."""
    val = {r["key"]: r["val_final"] for r in rows if r["status"] == "done" and r["val_final"] is not None}
    base = {s.config.seed: val[s.key] for s in grid.runs if s.label == BASELINE_LABEL and s.key in val}
    pairs: dict[str, list[float]] = {}
    for s in grid.runs:
        if s.label != BASELINE_LABEL:
            both = s.key in val and s.config.seed in base
            pairs.setdefault(s.label, []).extend([100 * (val[s.key] - base[s.config.seed])] if both else [])
    return {label: mean_ci(d)[1] for label, d in pairs.items()}


def screen_ranking(screen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every entry but the baseline with its mean paired difference in final validation
    accuracy to the baseline (seeds both finished), best first; ties by label."""
    base = {r["seed"]: r["val_final"] for r in screen if r["label"] == BASELINE_LABEL and r["status"] == "done"}
    pairs: dict[str, list[float]] = {}
    for r in screen:
        if r["label"] != BASELINE_LABEL and r["status"] == "done" and r["seed"] in base:
            pairs.setdefault(r["label"], []).append(r["val_final"] - base[r["seed"]])
    ranking = [{"label": label, "delta_val": sum(d) / len(d), "n": len(d)} for label, d in pairs.items()]
    return sorted(ranking, key=lambda r: (-r["delta_val"], r["label"]))


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in _presets().iterdir() if p.name.endswith(".toml"))


def _presets():
    return resources.files("bnnkit.review") / "presets"


def load_grid(source: str | Path, overrides: dict[str, Any] | None = None) -> Grid:
    """The grid in TOML file ``source``, or the preset of that name, with ``overrides``
    (the same keys as the file) replacing the file's values."""
    path = Path(source)
    if path.is_file():
        text, folder = _read(path), path.parent
    elif str(source).replace("_", "-") in preset_names():  # fashion_mnist, as the dataset is spelled, works too
        text, folder = (_presets() / f"{str(source).replace('_', '-')}.toml").read_text(), None
    else:
        raise BnnkitError(f"{source}: no such grid file or preset; presets: {', '.join(preset_names())}")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BnnkitError(f"{source}: not valid TOML ({exc})") from None
    if set(table) != {"review"} or not isinstance(table["review"], dict):
        raise BnnkitError(f"{source}: a grid is one [review] table, found {', '.join(map(repr, table)) or 'nothing'}")
    return expand({**table["review"], **(overrides or {})}, str(source), folder)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BnnkitError(f"{path}: cannot read grid ({exc})") from None


def _check(raw: dict[str, Any], source: str) -> None:
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise BnnkitError(f"{source}: unknown key(s) {', '.join(unknown)} in [review]; known: {', '.join(KEYS)}")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise BnnkitError(f"{source}: [review] needs {', '.join(missing)}")
    for key, value in raw.items():
        types, what = KEYS[key]
        # bool is an int in Python, never a count or a seed here
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            raise BnnkitError(f"{source}: {key} must be {what}, got {value!r}")
    for key in ("epochs", "limit_train", "limit_test"):
        if key in raw and raw[key] < 1:
            raise BnnkitError(f"{source}: {key} must be >= 1, got {raw[key]}")
    seeds = raw["seeds"]
    if not seeds or not all(type(s) is int for s in seeds) or len(set(seeds)) != len(seeds):
        raise BnnkitError(f"{source}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    if not all(isinstance(m, str) for m in raw.get("methods", [])):
        raise BnnkitError(f"{source}: methods must be {KEYS['methods'][1]}, got {raw['methods']!r}")
    for combo in raw.get("combinations", []):
        if not isinstance(combo, list) or len(combo) < 2 or not all(isinstance(m, str) for m in combo):
            raise BnnkitError(f"{source}: each combination must list two or more method names, got {combo!r}")
    if "validation" in raw and raw["validation"] < 1:
        raise BnnkitError(f"{source}: validation must be >= 1, got {raw['validation']}")
    if "confirm" in raw:
        _check_confirm(raw, source)


def _check_confirm(raw: dict[str, Any], source: str) -> None:
    confirm = raw["confirm"]
    unknown = sorted(set(confirm) - set(CONFIRM_KEYS))
    if unknown:
        raise BnnkitError(
            f"{source}: unknown key(s) {', '.join(unknown)} in [review.confirm]; known: {', '.join(CONFIRM_KEYS)}"
        )
    for key in ("epochs", "seeds"):
        if key not in confirm:
            raise BnnkitError(f"{source}: [review.confirm] needs {key}")
    for key, value in confirm.items():
        types, what = CONFIRM_KEYS[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise BnnkitError(f"{source}: confirm.{key} must be {what}, got {value!r}")
        if isinstance(value, int) and value < (0 if key == "top_k" else 1):
            raise BnnkitError(f"{source}: confirm.{key} must be {what}, got {value!r}")
    seeds = confirm["seeds"]
    target = confirm.get("target_half_width")
    if target is not None and not 0 < target < float("inf"):
        raise BnnkitError(
            f"{source}: confirm.target_half_width must be {CONFIRM_KEYS['target_half_width'][1]}, got {target!r}"
        )
    if "max_seeds" in confirm and (target is None or confirm["max_seeds"] < len(seeds)):
        problem = "needs target_half_width" if target is None else f"must be >= the {len(seeds)} confirm.seeds"
        raise BnnkitError(f"{source}: confirm.max_seeds {problem}, got {confirm['max_seeds']!r}")
    if len(seeds) < MIN_CONFIRM_SEEDS or not all(type(s) is int for s in seeds) or len(set(seeds)) != len(seeds):
        raise BnnkitError(f"{source}: confirm.seeds must be {CONFIRM_KEYS['seeds'][1]}, got {seeds!r}")
    if "validation" not in raw:
        raise BnnkitError(f"{source}: [review.confirm] ranks the screen on validation accuracy: set validation")
    for entry in confirm.get("always", []):
        if not isinstance(entry, str) or not entry:
            raise BnnkitError(f"{source}: confirm.always must be {CONFIRM_KEYS['always'][1]}, got {entry!r}")
        for name in entry.split("+"):
            get_method(name)


def _methods(raw: dict[str, Any]) -> list[str]:
    # A misspelt name is the grid's error, never an entry to skip as inapplicable.
    for name in [*raw.get("methods", []), *(n for combo in raw.get("combinations", []) for n in combo)]:
        if name not in ("all", BASELINE_LABEL):
            get_method(name)
    names = raw.get("methods", [])
    if "all" in names:
        return list(METHODS)
    # The baseline runs in every grid; naming it is harmless.
    return list(dict.fromkeys(n for n in names if n != BASELINE_LABEL))


def _base(raw: dict[str, Any], source: str, folder: Path | None) -> Recipe:
    spec = raw.get("base", "baseline")
    if folder is not None and Path(spec).suffix in (".toml", ".json") and not Path(spec).is_absolute():
        spec = str(folder / spec)
    try:
        base = load_recipe(spec)
    except BnnkitError as exc:
        raise BnnkitError(f"{source}: base: {exc}") from None
    if "recipe" in raw:
        base = Recipe.from_dict({**base.to_dict(), **raw["recipe"]}, source=f"{source}: recipe")
    return base


def _study(raw: dict[str, Any], base: Recipe) -> str:
    options = ", ".join(f"{k}={v}" for k, v in raw.get("model_options", {}).items())
    model = f"{raw['model']}({options})" if options else raw["model"]
    epochs = f"{raw['epochs']} epoch{'s' if raw['epochs'] > 1 else ''}"
    text = f"{model} on {raw['dataset']}, {epochs}, base {base.name}"
    if raw.get("recipe"):
        text += " with " + ", ".join(f"{k}={v}" for k, v in raw["recipe"].items())
    limits = [f"{k}={raw[k]}" for k in ("limit_train", "limit_test", "validation") if k in raw]
    return text + (f" ({', '.join(limits)})" if limits else "")


def expand(raw: dict[str, Any], source: str = "grid", folder: Path | None = None, stage: str = "screen") -> Grid:
    """The runs of a grid table: the baseline, each method, each combination, × seeds.

    Every entry is built once on the CPU first, so a method the model cannot use fails the
    whole grid before any training starts, naming every such entry at once (or is dropped
    with ``skip_inapplicable``)."""
    _check(raw, source)
    base = _base(raw, source, folder)
    data_dir = raw.get("data_dir")
    if data_dir is not None and folder is not None:
        data_dir = str(folder / data_dir)
    try:
        # a bad model, dataset, option, epoch count or seed is the grid's error, not an entry's
        template = RunConfig(
            model=raw["model"],
            dataset=raw["dataset"],
            epochs=raw["epochs"],
            recipe=base,
            model_options=dict(raw.get("model_options", {})),
            data_dir=data_dir,
        )
        template.build_model()
        for seed in raw["seeds"]:
            replace(template, seed=seed)
    except BnnkitError as exc:
        raise BnnkitError(f"{source}: {exc}") from None
    entries: list[tuple[str, str, str, list[str]]] = [(BASELINE_LABEL, BASELINE_LABEL, "", [])]
    for name in _methods(raw):
        method = METHODS[name]
        entries.append((name, method.category, method.kind, [name]))
    for combo in raw.get("combinations", []):
        entries.append(("+".join(combo), COMBINATION, "", combo))

    study = _study(raw, base) if stage == "screen" else f"{stage}: {_study(raw, base)}"
    runs, bad = [], []
    for label, category, kind, names in entries:
        try:
            recipe = apply_methods(base, names, name=label) if names else base
            config = replace(template, recipe=recipe)
            config.build_model()
        except BnnkitError as exc:
            bad.append((label, str(exc)))
            continue
        runs += [
            RunSpec(
                label,
                category,
                kind,
                study,
                replace(config, seed=seed),
                raw.get("limit_train"),
                raw.get("limit_test"),
                raw.get("validation"),
                stage,
            )
            for seed in raw["seeds"]
        ]
    if bad and not raw.get("skip_inapplicable", False):
        lines = "\n".join(f"  {label}: {reason}" for label, reason in bad)
        raise BnnkitError(
            f"{source}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} cannot be built for {raw['model']} "
            f"(set skip_inapplicable = true to drop them):\n{lines}"
        )
    return Grid(source=source, runs=runs, skipped=bad, raw=raw, folder=folder)


def methods_override(text: str) -> dict[str, list]:
    """``--methods rsign,double_residual,rsign+double_residual``: the methods and the
    combinations (entries joined by '+') that replace a grid's own."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    return {
        "methods": [e for e in entries if "+" not in e],
        "combinations": [e.split("+") for e in entries if "+" in e],
    }
