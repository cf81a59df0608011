"""The integer graph: the contract between training (``bnnkit.export``) and deployment
(``bnnkit.runtime``).

A ``Graph`` is a list of ``Op`` over named tensors. Every activation has one of four
types, per sample (no batch axis):

* ``u8``   the input image, pixel values 0..255, shape (C, H, W);
* ``bits`` binary activations, ``True`` ⇔ +1 and ``False`` ⇔ −1;
* ``i32``  integer accumulators (popcount sums, pooled sums);
* ``f32``  float scores (only after an ``affine``).

The package, bottom up:

* ``ops``    the op table: one ``OpDef`` per op kind (inputs, attributes, parameters, family,
  shape rule, cost rule), pad modes, and the ``OpTable`` every backend registers in;
* ``core``   ``Graph``, ``Op`` and ``Graph.validate``;
* ``limits`` the resource bounds an untrusted graph must stay within;
* ``file``   the graph file (safetensors plus a JSON header): save, load, header schema, digest;
* ``plan``   where the C runtime keeps the activations: layouts, fusion, the arena.

``bnnkit.runtime.numpy_ref`` executes the ops and is the specification of what they mean.
"""

from bnnkit.graph.core import INT32_MAX, INT32_MIN, NAME, Graph, Op, check_attr, check_name
from bnnkit.graph.file import CONVENTIONS, FORMAT_VERSION, READ_VERSIONS
from bnnkit.graph.limits import (
    LARGE_GRAPH_FACTOR,
    MAX_ACTIVATIONS,
    MAX_ELEMENTS,
    MAX_MACS,
    MAX_OPS,
    MAX_PARAMS,
    check_resources,
    resources,
)
from bnnkit.graph.ops import (
    DTYPES,
    OPS,
    PAD_MODES,
    Q32_MAX,
    TYPES,
    Cost,
    Family,
    OpDef,
    OpTable,
    PadMode,
    Refusal,
    Work,
    conformance,
    out_size,
    pad_of,
    pair,
)
from bnnkit.graph.plan import MemoryPlan, Step, plan_memory

__all__ = [
    "CONVENTIONS",
    "DTYPES",
    "FORMAT_VERSION",
    "INT32_MAX",
    "INT32_MIN",
    "LARGE_GRAPH_FACTOR",
    "MAX_ACTIVATIONS",
    "MAX_ELEMENTS",
    "MAX_MACS",
    "MAX_OPS",
    "MAX_PARAMS",
    "NAME",
    "OPS",
    "PAD_MODES",
    "Q32_MAX",
    "READ_VERSIONS",
    "TYPES",
    "Cost",
    "Family",
    "Graph",
    "MemoryPlan",
    "Op",
    "OpDef",
    "OpTable",
    "PadMode",
    "Refusal",
    "Step",
    "Work",
    "check_attr",
    "check_name",
    "check_resources",
    "conformance",
    "out_size",
    "pad_of",
    "pair",
    "plan_memory",
    "resources",
]
