"""Analytic costs: of a graph (``graph_cost``, ``energy``, ``formatting``: NumPy only, what a device user
profiles with) and of a model (``model_cost``, ``summary``: torch).

The model side's names are attributes imported on first use (PEP 562), so that importing the graph side
through this package loads no torch.
"""

from bnnkit import _lazy_attributes

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

__getattr__ = _lazy_attributes(__name__, _LAZY)
