"""Analytic costs of a model: parameters, bits, binary and FP operations, memory."""

from bnnkit.cost.summary import LayerCost, format_table, layer_costs, totals

__all__ = ["LayerCost", "format_table", "layer_costs", "totals"]
