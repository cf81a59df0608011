"""Resource limits: per image, checked by ``Graph.load`` before anything is allocated.

A binary ResNet-18 on 32x32 CIFAR (tests/test_hostile_graph.py builds one) needs 11.2M parameter
values, 0.59M values in its largest array, 1.4M activation values and 0.56G MACs: 3x, 28x, 24x
and 7.7x below the limits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bnnkit.errors import BnnkitError
from bnnkit.graph.ops import OPS

if TYPE_CHECKING:
    from bnnkit.graph.core import Graph

MAX_OPS = 1024
"""Ops in a graph (the memory planner's placement is quadratic in them)."""
MAX_PARAMS = 2**25
"""Parameter values of all ops together (a packed bit counts as one): at most 32 MiB as bools,
256 MiB for the float64 copy of the largest weight the NumPy reference makes."""
MAX_ELEMENTS = 2**24
"""Values of the largest array the NumPy reference makes for one image: a tensor, the padded
input of a convolution (``np.pad``), or the window matrix of a convolution or pool (one row per
output pixel, one column per tap). ``numpy_ref.predict`` sizes its batches by it."""
MAX_ACTIVATIONS = 2**25
"""Values of all activation tensors of one image together. Each takes at most 4 bytes in the C
runtime, so this also bounds its planned arena (and naive footprint) to 128 MiB."""
MAX_MACS = 2**32
"""Multiply-accumulates (and window taps of pools) for one image: bounds the time per image."""
LARGE_GRAPH_FACTOR = 64
"""``Graph.load(..., allow_large=True)`` (the CLI's ``--allow-large-graph``) multiplies every
limit above by this, for genuinely large graphs."""


def resources(graph: Graph) -> dict[str, Any]:
    """What one image costs in ``graph``, in Python ints: ``params`` (parameter values),
    ``largest`` (values of the largest array the NumPy reference makes) and ``largest_what``,
    ``activations`` (values of all activation tensors) and ``macs`` (multiply-accumulates and
    pool window taps). The limits ``MAX_*`` above bound each. Per op, its ``OpDef.work``."""
    arrays = [(math.prod(shape), f"tensor {name}") for name, (_, shape) in graph.types.items()]
    macs = 0
    for i, op in enumerate(graph.ops):
        work = OPS[op.kind].work(op, [graph.types[n] for n in op.inputs], graph.types[op.output])
        arrays += [(values, f"{what} of op {i}") for values, what in work.arrays]
        macs += work.macs
    largest, what = max(arrays)
    return {
        "params": sum(v.size for op in graph.ops for v in op.params.values()),
        "largest": largest,
        "largest_what": what,
        "activations": sum(math.prod(shape) for _, shape in graph.types.values()),
        "macs": macs,
    }


def within(value: int, limit: int, name: str, what: str, scale: int) -> None:
    if value > limit * scale:
        hint = (
            ""
            if scale > 1
            else "; if the graph is genuine, --allow-large-graph (Graph.load(allow_large=True)) raises it"
        )
        raise BnnkitError(f"{what}: {value:,} per image, over the limit of {limit * scale:,} (graph.{name}){hint}")


def check_resources(graph: Graph, scale: int = 1) -> None:
    """Refuse a graph that needs more than the ``MAX_*`` limits times ``scale`` for one image."""
    use = resources(graph)
    within(len(graph.ops), MAX_OPS, "MAX_OPS", "ops", scale)
    within(use["params"], MAX_PARAMS, "MAX_PARAMS", "parameter values", scale)
    within(use["largest"], MAX_ELEMENTS, "MAX_ELEMENTS", f"values in the {use['largest_what']}", scale)
    within(use["activations"], MAX_ACTIVATIONS, "MAX_ACTIVATIONS", "activation values", scale)
    within(use["macs"], MAX_MACS, "MAX_MACS", "multiply-accumulates", scale)
