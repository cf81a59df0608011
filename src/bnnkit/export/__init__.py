"""Trained model → integer ``Graph``, and the check of one against the other."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bnnkit.errors import BnnkitError
from bnnkit.export.exporter import Exporter
from bnnkit.export.verify import compare
from bnnkit.graph import Graph


def export_model(model: nn.Module, in_shape: tuple[int, int, int], allow_approx: bool = False) -> Graph:
    """The integer graph of ``model`` (eval mode); raises ``BnnkitError`` naming the first
    layer that has no exact integer form."""
    return Exporter(model, in_shape, allow_approx).export()


def export_run(run_dir: str | Path, allow_approx: bool = False) -> tuple[Graph, nn.Module, RunConfig]:  # noqa: F821
    """Export the model of a ``bnnkit train`` directory; the graph records where it came from."""
    from bnnkit.training.run import load_run

    model, config = load_run(run_dir)
    graph = export_model(model, config.to_dict()["in_shape"], allow_approx)
    graph.meta.update(model=config.model, dataset=config.dataset, recipe=config.recipe.name, run=str(run_dir))
    return graph, model, config


def export_and_check(run_dir, output, check: int = 1000, allow_approx: bool = False, data_dir: str | None = None) -> dict:
    """``bnnkit export``: write the graph of a run, then compare it with the module on the
    first ``check`` test images."""
    from bnnkit.runtime.evaluate import test_images

    if check < 0:
        raise BnnkitError(f"--check must be >= 0, got {check}")
    graph, model, config = export_run(run_dir, allow_approx)
    graph.save(output)
    result = {"output": str(output), "ops": len(graph.ops), "approximations": graph.meta["approximations"]}
    n, top1, signs = 0, 1.0, 1.0
    if check:
        _, x, _ = test_images(graph, None, check, data_dir or config.data_dir)
        cmp = compare(model, graph, x)
        n, top1 = cmp["n"], cmp["top1_agreement"]
        signs = min(cmp["sign_agreement"].values(), default=1.0)
        result["sign_agreement_per_layer"] = cmp["sign_agreement"]
    return {**result, "n": n, "top1_agreement": top1, "sign_agreement": signs}


__all__ = ["Exporter", "compare", "export_and_check", "export_model", "export_run"]
