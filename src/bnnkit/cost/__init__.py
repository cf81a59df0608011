"""Analytic costs of a model: parameters, bits, binary and FP operations, memory, energy."""

from bnnkit.cost.model_cost import activation_sizes, method_costs, model_costs
from bnnkit.cost.summary import LayerCost, format_table, layer_costs, totals

__all__ = ["LayerCost", "activation_sizes", "format_table", "layer_costs", "method_costs", "model_costs", "totals"]
