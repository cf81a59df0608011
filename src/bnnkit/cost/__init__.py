"""Analytic costs: of a graph (``graph_cost``, ``energy``, ``formatting``: NumPy only, what a device user
profiles with) and of a model (``model_cost``, ``summary``: torch).

The model side's names are attributes imported on first use (PEP 562), so that importing the graph side
through this package loads no torch.
"""

import importlib as _importlib

# name -> the module of the model side that defines it
_LAZY = {
    "activation_sizes": "bnnkit.cost.model_cost",
    "method_costs": "bnnkit.cost.model_cost",
    "model_costs": "bnnkit.cost.model_cost",
    "LayerCost": "bnnkit.cost.summary",
    "format_table": "bnnkit.cost.summary",
    "layer_costs": "bnnkit.cost.summary",
    "totals": "bnnkit.cost.summary",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bnnkit.cost' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value
