"""Training: the loop, optimisers and schedules, checkpoints and run directories."""

from bnnkit.training.loop import TrainOptions, evaluate, pick_device, train
from bnnkit.training.run import RunConfig, load_run, read_metrics

__all__ = ["RunConfig", "TrainOptions", "evaluate", "load_run", "pick_device", "read_metrics", "train"]
