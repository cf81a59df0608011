"""Training: the loop, optimisers and schedules, checkpoints and run directories.

The names below are imported on first use, so that ``bnnkit.training.plots`` (matplotlib only) serves
``bnnkit report`` without torch."""

from bnnkit import _lazy_attributes

_LAZY = {
    "TrainOptions": "bnnkit.training.loop",
    "evaluate": "bnnkit.training.loop",
    "pick_device": "bnnkit.training.loop",
    "train": "bnnkit.training.loop",
    "RunConfig": "bnnkit.training.run",
    "load_run": "bnnkit.training.run",
    "read_metrics": "bnnkit.training.run",
}

__all__ = [*_LAZY]

__getattr__ = _lazy_attributes(__name__, _LAZY)
