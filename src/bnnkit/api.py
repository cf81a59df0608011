"""The Python API in a user's terms: ``bnnkit.train``, ``bnnkit.export_model``, ``bnnkit.predict``, ...

``import bnnkit`` re-exports these lazily (``bnnkit/__init__.py``), and this module imports
the torch side (training, export, models, model costs) inside the functions that need it: the
graph side — ``load_graph``, ``predict`` and ``evaluate`` on a graph, ``summary`` of a graph —
runs on a device without PyTorch.
Each function takes what a user has at hand: a registry name or an ``nn.Module``, a run
directory, a ``Graph`` or its file. The page docs/python-api.md walks through them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bnnkit.cost.graph_cost import format_profile, profile
from bnnkit.data import DatasetInfo, canonical_name, get_info, load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.graph import Graph
from bnnkit.recipe import Recipe, load_recipe
from bnnkit.runtime.evaluate import run_graph
from bnnkit.runtime.registry import REFERENCE, get_runtime

if TYPE_CHECKING:
    from torch import nn
    from typing_extensions import TypeIs  # typing has it from Python 3.13

PathLike = str | Path
TORCH_BATCH = 1000


def train(
    model: str | nn.Module | Callable[[], nn.Module],
    dataset: str,
    out: PathLike,
    *,
    recipe: str | Recipe = "baseline",
    epochs: int = 10,
    seed: int = 0,
    model_options: dict | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    data_dir: str | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    resume: bool = False,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` on ``dataset`` into the run directory ``out`` (what ``bnnkit train``
    does); returns the last epoch's metrics (``test_acc``, ``best_test_acc``, ...).

    ``model`` is a registry name (see ``bnnkit models``; ``model_options`` are its keyword
    options), an ``nn.Module`` or a zero-argument function that builds one. ``recipe`` is
    a name, methods joined by ``+``, a .toml/.json file or a ``Recipe``; ``lr`` and
    ``batch_size`` override the recipe's. ``threads`` is ``--threads``: None chooses from
    the free cores, and the count changes the rounding, so pin it where two runs must
    agree bit for bit."""
    from bnnkit.training import RunConfig, TrainOptions
    from bnnkit.training import train as train_run

    resolved = load_recipe(recipe)
    overrides = {k: v for k, v in (("lr", lr), ("batch_size", batch_size)) if v is not None}
    if overrides:
        resolved = resolved.with_(**overrides)
    user_model = None if isinstance(model, str) else model
    if user_model is not None and model_options:
        raise BnnkitError("model_options are for a registry model; build your own model with its options instead")
    config = RunConfig(
        model=model if user_model is None else _import_path(user_model),
        dataset=canonical_name(dataset),
        epochs=epochs,
        seed=seed,
        recipe=resolved,
        model_options=dict(model_options or {}),
        data_dir=data_dir,
    )
    options = TrainOptions(
        resume=resume,
        device=device,
        threads=threads,
        progress=progress,
        limit_train=limit_train,
        limit_test=limit_test,
    )
    if user_model is None:
        return train_run(config, out, options)
    return train_run(config, out, options, model=user_model)


def _import_path(model: Any) -> str:
    """What a run records for a user's model: where its class (or factory) is defined."""
    owner = type(model) if _is_module(model) else model
    return f"{owner.__module__}.{owner.__qualname__}"


# What to do with a graph file given to a command that takes a run directory.
_GRAPH_TAKEN_BY = {
    "eval": "`bnnkit run {path}` evaluates a graph",
    "export": "it is exported already: `bnnkit run`, `profile`, `codegen` and `build` take it",
    "quantize": "it is a graph already: `bnnkit run`, `profile`, `codegen` and `build` take it",
}


def expect_run_dir(path: PathLike, command: str = "eval") -> Path:
    """``path`` as a run directory for ``command``; a graph file or another file given
    instead is one error that names the command that takes it."""
    path = Path(path)
    if path.is_dir():
        return path
    written_by = "a run directory is what `bnnkit train --out DIR` writes"
    if path.suffix == ".bnn":
        state = "a graph file" if path.is_file() else "no such run directory, and .bnn names a graph file"
        taken_by = _GRAPH_TAKEN_BY[command].format(path=path)
        raise BnnkitError(f"{path}: {state}, not a run directory; {taken_by} ({written_by})")
    if path.exists():
        raise BnnkitError(f"{path}: a file, not a run directory ({written_by})")
    raise BnnkitError(f"{path}: no such run directory (create one with `bnnkit train --out {path}`)")


def load_graph(path: PathLike, allow_large: bool = False) -> Graph:
    """The graph in a ``.bnn`` file; a run directory given instead is one error naming the
    command that takes it. ``allow_large`` raises the resource limits (``Graph.load``)."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            raise BnnkitError(
                f"{path}: a run directory, not a graph file; `bnnkit eval {path}` evaluates it, "
                f"`bnnkit export {path} -o {path.name}.bnn` makes its graph"
            )
        raise BnnkitError(f"{path}: a directory, not a graph file (make one with `bnnkit export RUN_DIR -o model.bnn`)")
    return Graph.load(path, allow_large=allow_large)


def _graph(source: Graph | PathLike) -> Graph:
    return source if isinstance(source, Graph) else load_graph(source)


def export_model(
    source: PathLike | nn.Module,
    output: PathLike | None = None,
    *,
    dataset: str | None = None,
    in_shape: tuple[int, int, int] | None = None,
    allow_approx: bool = False,
) -> Graph:
    """The integer graph of a run directory, or of a trained ``nn.Module`` whose input is
    ``in_shape`` or ``dataset``'s images; written to ``output`` (a ``.bnn``) when given.
    A graph made from a module records ``dataset``, so ``evaluate`` finds its test set."""
    from bnnkit import export

    if _is_module(source):
        if dataset is not None and in_shape is None:
            info = _info(dataset)
            shape, recorded = info.in_shape, {"dataset": info.name}
        elif in_shape is not None and dataset is None:
            shape, recorded = in_shape, {}
        else:
            raise BnnkitError("export_model of a module needs its input: dataset= or in_shape= (one of them)")
        graph = export.export_model(source, shape, allow_approx)
        recipe = getattr(source, "recipe", None)
        graph.meta.update(recipe=getattr(recipe, "name", None), **recorded)
    else:
        graph, _, _ = export.export_run(expect_run_dir(source, "export"), allow_approx)
    if output is not None:
        graph.save(output)
    return graph


def predict(
    model: Graph | PathLike | nn.Module, x: np.ndarray, *, runtime: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(N, classes)`` and labels ``(N,)`` of uint8 images ``x`` ``(N, C, H, W)``.

    A graph (or its file) runs in ``runtime``: ``numpy`` (the reference, default), ``c``
    (the host kernels), ``c-portable`` (the generated C, compiled here) or a Cortex-M core
    in QEMU; every one gives bit-identical scores. An ``nn.Module`` runs in PyTorch
    (``runtime="torch"``), in eval mode, on the pixels scaled to [0, 1] as in training."""
    if _is_module(model):
        if runtime not in (None, "torch"):
            raise BnnkitError(f"a PyTorch module runs in torch; export it (bnnkit.export_model) to run it in {runtime}")
        return _predict_torch(model, x)
    chosen = get_runtime(runtime or REFERENCE)
    with chosen.prepare(_graph(model)) as predictor:
        result = predictor.predict(x)
    return result.scores, result.labels


def _is_module(obj: object) -> TypeIs[nn.Module]:
    # Without importing torch: a graph user may not have it, and a module implies it is loaded.
    torch_nn = sys.modules.get("torch.nn")
    return torch_nn is not None and isinstance(obj, torch_nn.Module)


def _predict_torch(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise BnnkitError(f"predict takes uint8 images (N, C, H, W), got {x.dtype} {x.shape}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            images = torch.from_numpy(np.ascontiguousarray(x))
            scores = [model(images[i : i + TORCH_BATCH].float().div_(255)) for i in range(0, len(x), TORCH_BATCH)]
    finally:
        model.train(was_training)
    out = torch.cat(scores).float().numpy() if scores else np.zeros((0, 0), np.float32)
    return out, out.argmax(1).astype(np.int64)


def evaluate(
    source: Graph | PathLike | nn.Module,
    dataset: str | None = None,
    *,
    runtime: str = "numpy",
    limit: int | None = None,
    data_dir: str | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """Test accuracy of a graph (or ``.bnn`` file) in ``runtime``, of a run directory, or of
    an ``nn.Module`` on ``dataset``'s test split (the first ``limit`` images). A graph or a
    run defaults to the dataset it was trained on. ``model``: a run's own model, as given
    to ``train`` (see ``bnnkit.load_run``)."""
    if _is_module(source):
        if dataset is None:
            raise BnnkitError("evaluate of a module needs dataset=")
        return _evaluate_module(source, type(source).__name__, dataset, data_dir, limit)
    path = None if not isinstance(source, (str, Path)) else Path(source)
    if path is not None and path.is_dir():  # a run directory (load_run says what is wrong with one)
        from bnnkit.training import load_run

        loaded, config = load_run(path) if model is None else load_run(path, model=model)
        return _evaluate_module(
            loaded,
            config.model,
            dataset or config.dataset,
            data_dir or config.data_dir,
            limit,
            (tuple(config.to_dict()["in_shape"]), f"{path} was trained on {config.dataset}"),
        )
    return run_graph(_graph(source), runtime, dataset, limit, data_dir).to_dict()


def _evaluate_module(
    module: nn.Module,
    name: str,
    dataset: str,
    data_dir: str | None,
    limit: int | None,
    trained_for: tuple[tuple[int, ...], str] | None = None,
) -> dict[str, Any]:
    from bnnkit.training import evaluate as evaluate_module

    ds = load_dataset(dataset, "test", data_dir)
    if trained_for is not None and ds.info.in_shape != trained_for[0]:
        raise BnnkitError(f"{trained_for[1]}; {ds.info.name} images have another shape")
    if limit is not None:
        if limit < 1:
            raise BnnkitError(f"limit must be >= 1, got {limit}")
        ds = type(ds)(x=ds.x[:limit], y=ds.y[:limit], info=ds.info)
    loss, acc = evaluate_module(module, ds)
    return {"accuracy": acc, "loss": loss, "n": int(len(ds.y)), "dataset": ds.info.name, "model": name}


def summary(
    model: str | nn.Module | Graph | PathLike,
    dataset: str | None = None,
    *,
    in_shape: tuple[int, int, int] | None = None,
    recipe: str | Recipe = "baseline",
    **options: Any,
) -> str:
    """A table to read: per layer of a model (a registry name built for ``dataset`` with
    ``recipe`` and ``options``, or an ``nn.Module`` given ``in_shape`` or ``dataset``) its
    parameters, bits, binary and FP MACs and memory; of a graph (or a ``.bnn`` file) the
    device profile — flash, RAM, operations and the energy estimate."""
    if isinstance(model, str) and not model.endswith(".bnn"):
        from bnnkit.models import create_model

        info = _need_info(dataset, "summary of a registry model")
        model = create_model(model, info.num_classes, info.in_shape, recipe, **options)
    if _is_module(model):
        from bnnkit.cost import format_table, layer_costs

        shape = in_shape or _need_info(dataset, "summary of a module (or in_shape=)").in_shape
        return format_table(layer_costs(model, shape))
    return format_profile(profile(_graph(model)))


def _info(dataset: str) -> DatasetInfo:
    return get_info(dataset)


def _need_info(dataset: str | None, what: str) -> DatasetInfo:
    if dataset is None:
        raise BnnkitError(f"{what} needs dataset=")
    return _info(dataset)
