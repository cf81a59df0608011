"""bnnkit: train binarized neural networks and deploy them on embedded devices.

The essentials are attributes of the package, imported on first use (PEP 562), so that
``import bnnkit`` stays free of PyTorch and a device that only runs graphs needs none::

    import bnnkit
    bnnkit.train("small_cnn", "fashion_mnist", out="runs/cnn", recipe="embedded", epochs=5)
    graph = bnnkit.export_model("runs/cnn", "cnn.bnn")
    scores, labels = bnnkit.predict(graph, images, runtime="c")

docs/python-api.md walks through all of them.
"""

import importlib as _importlib
import sys as _sys

from bnnkit.errors import BnnkitError

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "train": "bnnkit.api",
    "export_model": "bnnkit.api",
    "predict": "bnnkit.api",
    "evaluate": "bnnkit.api",
    "summary": "bnnkit.api",
    "load_graph": "bnnkit.api",
    "load_run": "bnnkit.training",
    "create_model": "bnnkit.models",
    "register_model": "bnnkit.models",
    "Recipe": "bnnkit.recipe",
    "load_recipe": "bnnkit.recipe",
    "load_dataset": "bnnkit.data",
    "Graph": "bnnkit.graph",
    "clip_latent_weights_": "bnnkit.nn",
}

__all__ = ["BnnkitError", "__version__", *_LAZY]


def _lazy_attributes(package: str, names: dict[str, str]):
    """A module ``__getattr__`` (PEP 562) for ``package``: each of ``names`` (name -> the module that defines
    it) imported on first access; bnnkit.cost uses it too, to keep its torch side off the graph side's path."""
    namespace = _sys.modules[package].__dict__

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(_importlib.import_module(module), name)
        namespace[name] = value  # the next access is a plain attribute
        return value

    return __getattr__


__getattr__ = _lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted({*(n for n in globals() if not n.startswith("_")), *_LAZY, "__version__"})
