"""A training run's directory: what it was trained with, and how to rebuild its model.

    DIR/config.json        model, dataset, recipe, options, seed, epochs, input shape, and
                           the data subsets trained and tested on (limit_train, limit_test)
    DIR/model.safetensors  the weights after the last finished epoch
    DIR/train_state.pt     optimiser state for --resume (weights_only loadable)
    DIR/metrics.jsonl      one JSON line per finished epoch
    DIR/curves.png         loss and accuracy per epoch
    DIR/.bnnkit.lock       while a process trains into DIR (``bnnkit.files.exclusive``)

A model is built from the registry by name (``RunConfig.model``), or is the caller's own
``nn.Module``: then the configuration records its class (``model_class``) and the caller
gives the model again to resume or load the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from bnnkit import __version__
from bnnkit.data import get_info
from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write, created_dir, exclusive, read_json_lines
from bnnkit.models import create_model
from bnnkit.models.registry import MODELS, check_options
from bnnkit.recipe import Recipe, load_recipe
from bnnkit.training import distributed
from bnnkit.training.checkpoint import load_weights, read_json

CONFIG, WEIGHTS, STATE, METRICS, CURVES = (
    "config.json",
    "model.safetensors",
    "train_state.pt",
    "metrics.jsonl",
    "curves.png",
)
RUN_FILES = (CONFIG, WEIGHTS, STATE, METRICS, CURVES)
# How a run's data was cut; recorded in config.json beside the RunConfig, which says what
# is trained, because the same RunConfig on another subset is another run.
LIMITS = ("limit_train", "limit_test", "validation")
MAX_EPOCHS = 1_000_000
MAX_SEED = (1 << 63) - 1  # torch.manual_seed and NumPy's SeedSequence both take it

# A user's own model: the module itself, or a function of no arguments that builds it.
ModelArg = nn.Module | Callable[[], nn.Module]


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild the model of a run and to continue its training.

    ``recipe`` may be given as anything `load_recipe` takes (``"embedded"``,
    ``"rsign+double_residual"``, a file); it is stored as the Recipe. ``model_class`` is
    set by `train` for a model of the caller's own (``train(..., model=...)``): the import
    path of its class, ``module:QualName``; ``model`` is then only the run's label.
    """

    model: str
    dataset: str
    epochs: int
    seed: int = 0
    recipe: Recipe = field(default_factory=Recipe)
    model_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    model_class: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            object.__setattr__(self, "recipe", load_recipe(self.recipe))
        for name, value in (("model", self.model), ("dataset", self.dataset)):
            if not isinstance(value, str):
                raise BnnkitError(f"{name} must be a name, got {value!r}")
        _check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        _check_int("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.model_options, dict):
            raise BnnkitError(f"model_options must be a table of options, got {self.model_options!r}")
        if self.model_class is None and self.model in MODELS:
            # normalised as the builder takes them ("16,32" -> [16, 32]), so a resume compares like with like;
            # another name is a user's model about to be given to train(), or an error of build_model()
            object.__setattr__(self, "model_options", check_options(self.model, self.model_options))
        elif self.model_class is not None and self.model_options:
            raise BnnkitError(f"model_options are for registry models; {self.model_class} is built by its owner")

    @property
    def user_model(self) -> bool:
        return self.model_class is not None

    def build_model(self) -> nn.Module:
        if self.user_model:
            raise BnnkitError(_NOT_BUILT.format(self.model_class))
        info = get_info(self.dataset)
        return create_model(
            self.model,
            info.num_classes,
            info.in_shape,
            self.recipe,
            normalize=(info.mean, info.std),
            **self.model_options,
        )

    def to_dict(self) -> dict:
        info = get_info(self.dataset)
        data = {
            **asdict(self),
            "recipe": self.recipe.to_dict(),
            "in_shape": list(info.in_shape),
            "num_classes": info.num_classes,
            "bnnkit_version": __version__,
        }
        if not self.user_model:
            del data["model_class"]  # registry runs keep the form (and the review keys) they always had
        # Through JSON once so that a config built in Python (tuples) equals one read back (lists).
        return json.loads(json.dumps(data))

    def differences(self, stored: dict, limits: dict[str, int | None]) -> list[tuple[str, Any, Any]]:
        """(field, stored value, value now) for every field that changes the numbers of a
        run and differs between the ``stored`` config.json of a run and this configuration
        trained on data ``limits``. Not compared: ``epochs`` (a run may be extended; its
        schedule is then that of the longer run), ``data_dir`` (where the same files are),
        the device and the number of processes (they round differently, but train the
        same run)."""
        now = _identity({**self.to_dict(), **limits})
        before = _identity(stored)
        return [(key, before[key], now[key]) for key in now if key in before and before[key] != now[key]]

    def save(self, run_dir: str | Path, limits: dict[str, int | None] | None = None) -> None:
        data = {**self.to_dict(), **{key: (limits or {}).get(key) for key in LIMITS}}
        atomic_write(Path(run_dir) / CONFIG, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> RunConfig:
        path = Path(run_dir) / CONFIG
        data = read_json(path, "run configuration")
        try:
            return cls(
                model=data["model"],
                dataset=data["dataset"],
                epochs=data["epochs"],
                seed=data.get("seed", 0),
                recipe=Recipe.from_dict(data.get("recipe", {}), source=str(path)),
                model_options=data.get("model_options", {}),
                data_dir=data.get("data_dir"),
                model_class=data.get("model_class"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BnnkitError(f"{path}: not a bnnkit run configuration ({type(exc).__name__}: {exc})") from None
        except BnnkitError as exc:
            message = str(exc)
            raise BnnkitError(message if message.startswith(str(path)) else f"{path}: {message}") from None


_NOT_BUILT = (
    "the run's model is the user's own {}, which bnnkit cannot build: "
    "give it again (train(..., model=...), load_run(run_dir, model=...))"
)


def _recorded_class(run_dir: Path) -> str | None:
    """The user's model class a run directory records, if it holds a readable config."""
    try:
        recorded = read_json(run_dir / CONFIG, "run configuration").get("model_class")
    except BnnkitError:
        return None
    return recorded if isinstance(recorded, str) else None


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise BnnkitError(f"{name} must be an integer in {low}..{high}, got {value!r}")


def _identity(config: dict) -> dict[str, Any]:
    """The fields of a config.json that decide the numbers of a run, recipe fields flattened
    ("recipe.lr"). The recipe's name is a label; a config.json written before bnnkit
    recorded the data limits has none, and they are then not compared."""
    recipe = config.get("recipe", {})
    identity = {key: config.get(key) for key in ("model", "model_class", "dataset", "model_options", "seed")}
    identity |= {key: config[key] for key in LIMITS if key in config}
    identity |= {f"recipe.{key}": value for key, value in recipe.items() if key != "name"}
    return identity


def check_continues(run_dir: Path, config: RunConfig, limits: dict[str, int | None]) -> None:
    """Raise unless ``config`` on data ``limits`` continues the run in ``run_dir``, naming
    every field that differs and both its values."""
    path = run_dir / CONFIG
    stored = RunConfig.load(run_dir).to_dict()  # checked, and new recipe fields at their defaults
    stored |= {key: value for key, value in read_json(path, "run configuration").items() if key in LIMITS}
    differences = config.differences(stored, limits)
    if differences:
        # the first difference says which side is which; the others read the same way
        listed = [
            f"{key} {before!r}{' (stored)' if i == 0 else ''} vs {now!r}{' (now)' if i == 0 else ''}"
            for i, (key, before, now) in enumerate(differences)
        ]
        raise BnnkitError(f"{path} describes a different run: {'; '.join(listed)}")


def class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def user_module(model: ModelArg) -> nn.Module:
    """The caller's model: ``model`` itself, or what the zero-argument ``model()`` returns."""
    module = model if isinstance(model, nn.Module) or not callable(model) else model()
    if not isinstance(module, nn.Module):
        raise BnnkitError(
            f"model= must be a torch nn.Module or a function of no arguments returning one, got {type(module).__name__}"
        )
    return module


def the_model(config: RunConfig, model: ModelArg | None, run_dir: Path) -> tuple[RunConfig, nn.Module]:
    """The model of ``config`` for ``run_dir``: built from the registry, or the caller's
    ``model``, whose class the returned configuration records; a run recorded with a
    user's class needs one of that class again."""
    if model is None:
        recorded = config.model_class or (None if config.model in MODELS else _recorded_class(run_dir))
        if recorded is not None:
            raise BnnkitError(f"{run_dir}: {_NOT_BUILT.format(recorded)}")
        return config, config.build_model()
    module = user_module(model)
    if config.model_class is None:
        config = replace(config, model_class=class_path(module))
    elif config.model_class != class_path(module):
        raise BnnkitError(f"{run_dir}: the run's model is a {config.model_class}; model= gave a {class_path(module)}")
    return config, module


def load_run(run_dir: str | Path, model: ModelArg | None = None) -> tuple[nn.Module, RunConfig]:
    """The trained model of a run directory, in eval mode, and its configuration. A run of
    a user's own model needs ``model`` (the module or its zero-argument factory) again:
    its weights are loaded into it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BnnkitError(f"{run_dir}: no such run directory (create one with `bnnkit train --out {run_dir}`)")
    config = RunConfig.load(run_dir)
    if model is not None and not config.user_model:
        raise BnnkitError(
            f"{run_dir} holds the registry model {config.model}, which bnnkit builds: load it without model="
        )
    config, module = the_model(config, model, run_dir)
    load_weights(run_dir / WEIGHTS, module)
    return module.eval(), config


def read_metrics(run_dir: str | Path) -> list[dict]:
    return read_json_lines(Path(run_dir) / METRICS, "an epoch's record", "epoch", " (the file was edited or damaged)")


@contextmanager
def run_directory(out: Path, writer: bool = True) -> Iterator[None]:
    """Hold run directory ``out`` for one training call: created if need be, and locked,
    so that a second process training into it stops with an error naming this one's PID.
    Where the call fails before its first epoch is on disk, the files it wrote and the
    directories it created are removed: a failed start leaves nothing behind.

    Under torchrun only rank 0 (``writer``) touches the directory; every rank learns
    whether it got the lock, so that none waits for the others in a collective forever."""
    with ExitStack() as stack:
        error = None
        if writer:
            try:
                stack.enter_context(created_dir(out, "run directory"))
                stack.enter_context(exclusive(out, "run directory"))
            except BnnkitError as exc:
                error = exc
        if distributed.sum_over_ranks(float(error is not None))[0]:
            raise error or BnnkitError(f"{out}: rank 0 could not take the run directory")
        before = {name for name in RUN_FILES if (out / name).exists()}
        try:
            yield
        except BaseException:
            if writer and STATE not in before and not (out / STATE).exists():
                for name in RUN_FILES:
                    if name not in before or name == CONFIG:  # the config of a start that never finished an epoch
                        (out / name).unlink(missing_ok=True)
            raise
