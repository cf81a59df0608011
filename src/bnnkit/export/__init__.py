"""Trained model → integer ``Graph`` (the check of one against the other is ``bnnkit.analysis.agreement``)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bnnkit.export.exporter import Exporter
from bnnkit.export.residual import ResidualExporter, needs_real_path
from bnnkit.graph import Graph
from bnnkit.training.run import RunConfig, load_run


def export_model(model: nn.Module, in_shape: tuple[int, int, int], allow_approx: bool = False) -> Graph:
    """The integer graph of ``model`` (eval mode); raises ``BnnkitError`` naming the first
    layer that has no exact integer form. A residual network's graph has a float32 path
    (``bnnkit.export.residual``)."""
    exporter = ResidualExporter if needs_real_path(model) else Exporter
    return exporter(model, in_shape, allow_approx).export()


def export_run(run_dir: str | Path, allow_approx: bool = False) -> tuple[Graph, nn.Module, RunConfig]:
    """Export the model of a ``bnnkit train`` directory; the graph records where it came from."""
    model, config = load_run(run_dir)
    graph = export_model(model, config.to_dict()["in_shape"], allow_approx)
    graph.meta.update(model=config.model, dataset=config.dataset, recipe=config.recipe.name, run=str(run_dir))
    return graph, model, config


__all__ = ["Exporter", "ResidualExporter", "export_model", "export_run"]
