"""A training run's directory: what it was trained with, and how to rebuild its model.

    DIR/config.json        model, dataset, recipe, options, seed, epochs, input shape
    DIR/model.safetensors  the weights after the last finished epoch
    DIR/train_state.pt     optimiser state for --resume (weights_only loadable)
    DIR/metrics.jsonl      one JSON line per finished epoch
    DIR/curves.png         loss and accuracy per epoch
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from bnnkit import __version__
from bnnkit.data import get_info
from bnnkit.errors import BnnkitError
from bnnkit.models import create_model
from bnnkit.recipe import Recipe
from bnnkit.files import atomic_write, read_json_lines
from bnnkit.training.checkpoint import load_weights, read_json

CONFIG, WEIGHTS, STATE, METRICS, CURVES = "config.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "curves.png"


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild the model of a run and to continue its training."""

    model: str
    dataset: str
    epochs: int
    seed: int = 0
    recipe: Recipe = field(default_factory=Recipe)
    model_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None

    def build_model(self) -> nn.Module:
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
        # Through JSON once so that a config built in Python (tuples) equals one read back (lists).
        return json.loads(json.dumps(data))

    def same_training(self, other: RunConfig) -> bool:
        """True when ``other`` continues this run: only the epoch count may differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        for d in (mine, theirs):
            d.pop("epochs")
            d.pop("data_dir")
        return mine == theirs

    def save(self, run_dir: str | Path) -> None:
        atomic_write(Path(run_dir) / CONFIG, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> RunConfig:
        path = Path(run_dir) / CONFIG
        data = read_json(path, "run configuration")
        try:
            return cls(
                model=data["model"],
                dataset=data["dataset"],
                epochs=int(data["epochs"]),
                seed=int(data.get("seed", 0)),
                recipe=Recipe.from_dict(data.get("recipe", {}), source=str(path)),
                model_options=dict(data.get("model_options", {})),
                data_dir=data.get("data_dir"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BnnkitError(f"{path}: not a bnnkit run configuration ({type(exc).__name__}: {exc})") from None


def load_run(run_dir: str | Path) -> tuple[nn.Module, RunConfig]:
    """The trained model of a run directory, in eval mode, and its configuration."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BnnkitError(f"{run_dir}: no such run directory (create one with `bnnkit train --out {run_dir}`)")
    config = RunConfig.load(run_dir)
    model = config.build_model()
    load_weights(run_dir / WEIGHTS, model)
    return model.eval(), config


def read_metrics(run_dir: str | Path) -> list[dict]:
    return read_json_lines(Path(run_dir) / METRICS, "an epoch's record", "epoch", " (the file was edited or damaged)")
