"""Where the C runtime keeps its activations: buffer sizes, fusion, and a liveness-based
arena.

Layout in C (per sample, no batch axis). Every tensor has a *layout shape* (C, H, W):

* ``u8``   the input, CHW, one byte per pixel value;
* ``bits`` HWC in 32-bit words, bit 1 ⇔ +1, pixel ``p``'s channel ``c`` at bit ``p * pb + c``
  (bit ``b`` is bit ``b % 32`` of word ``b // 32``), unused bits 0, in one of two layouts:

  - *word-padded*: ``pb = 32 * ceil(C/32)``, each pixel's channels in whole words of its own;
  - *bit-dense* (eBNN-style rows): ``pb = C``, each pixel's bits right after the previous
    pixel's, the map ``ceil(C*H*W/32)`` words, padded only at its end.

  The rule, per tensor: a map is bit-dense where ``C < 32`` and that takes fewer words than
  one a pixel, ``ceil(C*H*W/32) < H*W`` (where it saves bytes); else word-padded. For ``C`` a
  multiple of 32 the two are the same bytes; above 32 channels dense rows would save less than
  one word a pixel, and the kernels keep whole words there. A ``flatten`` view keeps the layout
  of what it flattens (a dense layer reads a bit-dense map in place); ``MemoryPlan.dense``
  names the tensors stored bit-dense;
* ``i32``, ``f32``, ``q32``  CHW, four bytes per value;
* ``i8``   CHW, one byte per value (the int8 baseline), rounded up to whole words.

A vector ``(F,)`` has layout shape ``(F, 1, 1)``, except the output of a ``flatten`` of
``bits`` or ``u8``: that keeps the layout of what it flattens, because ``flatten`` never
moves data. The dense layer reading it then has its weights permuted at code generation
(it becomes a convolution whose kernel covers the whole map), so the graph's CHW flatten
order holds without a copy. ``flatten`` of ``i32``/``f32``/``q32`` is a view too, since CHW memory
already is the flattened vector.

Fusion (eBNN: every stored intermediate binary). A binary conv/dense producer (one that reads
bits or pixels: those have XOR-popcount kernels that threshold; an int8 or fixed-point layer
does not) whose only consumer is a ``threshold`` runs with it, one accumulator at a time, so its ``i32`` map is
never stored; when that threshold's only consumer is a ``maxpool`` the pool joins too,
and the thresholded map is not stored either. A fused group runs at the position of its
last op.

Placement. Buffers live from the step that writes them to the last step that reads them
(inclusive, so a step's inputs and output never share bytes) and are placed greedily,
largest first, at the lowest free offset. Every arena buffer is a whole number of 32-bit
words, so every offset is word-aligned.

The input has a slot in the arena too, live from the start to its last reader (its bytes
rounded up to a word): a device writes its image there (``{prefix}_input_buffer()``) and
holds no buffer of its own, so ``peak_bytes``, the RAM one inference needs, is the arena. A
caller may still pass an image of its own; the slot then goes unused. Where the first layer
reads the input while it writes a map of its own, the two are live together, and the slot
costs arena bytes only where that step is the arena's peak. ``naive_bytes`` counts the input
and every tensor in a buffer of its own; ``live_bytes`` counts the input while an op still
has to read it. Views (``flatten``) and the label of ``argmax`` take no memory, also in the
naive count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from bnnkit.graph.core import Graph
from bnnkit.graph.ops import OPS, Family


def _family(graph: Graph, i: int) -> Family:
    return OPS[graph.ops[i].kind].family


def _thresholds(graph: Graph, i: int) -> bool:
    """Whether op ``i`` is a producer whose C kernel can run a ``threshold`` fused (the module doc)."""
    return _family(graph, i) is Family.PRODUCER and OPS[graph.ops[i].kind].inputs[0] in (("u8",), ("bits",))


@dataclass(frozen=True)
class Step:
    """One call of the C runtime: graph ops (indices) run together at the last one's
    position, reading buffers ``inputs`` and writing buffer ``output`` (``None`` for
    ``argmax``, which writes the caller's scores)."""

    ops: tuple[int, ...]
    inputs: tuple[str, ...]
    output: str | None

    @property
    def position(self) -> int:
        return self.ops[-1]


@dataclass(frozen=True)
class MemoryPlan:
    """Sizes, fusion and arena placement of one graph's activations (see the module doc)."""

    layout: dict[str, tuple[int, int, int]]  # tensor -> layout shape (C, H, W)
    tensor_bytes: dict[str, int]  # every activation tensor, fused-away ones included
    buffer_of: dict[str, str]  # stored or viewed tensor -> the buffer holding it
    steps: tuple[Step, ...]
    lifetimes: dict[str, tuple[int, int]]  # buffer -> (first, last) op index it is live at; input first = -1
    offsets: dict[str, int]  # arena byte offset of every buffer, the input's slot included
    input_bytes: int
    naive_bytes: int  # input + every tensor in its own buffer, no fusion
    arena_bytes: int  # the static arena of the C runtime, the input's slot included
    peak_bytes: int  # the RAM one inference needs: the arena
    live_bytes: tuple[int, ...]  # per graph op: bytes of the buffers live while its step runs
    dense: frozenset[str]  # bits tensors laid out bit-dense, views and fused-away ones included

    @property
    def materialized(self) -> frozenset[str]:
        """The tensors that have a buffer of their own (the input included)."""
        return frozenset(self.lifetimes)


def bit_dense(shape: tuple[int, int, int]) -> bool:
    """Whether a ``bits`` map of layout shape ``shape`` is stored bit-dense (the module doc's rule)."""
    c, h, w = shape
    return c < 32 and -(-c * h * w // 32) < h * w


def pixel_bits(shape: tuple[int, int, int]) -> int:
    """Bits from one pixel of a ``bits`` map to the next: ``C`` bit-dense, else whole words."""
    return shape[0] if bit_dense(shape) else 32 * -(-shape[0] // 32)


def layout_bytes(kind: str, shape: tuple[int, int, int]) -> int:
    c, h, w = shape
    if kind == "u8":
        return c * h * w
    if kind == "bits":
        return -(-h * w * pixel_bits(shape) // 32) * 4
    if kind == "i8":  # CHW, one byte per value, the buffer rounded up to whole 32-bit words
        return (c * h * w + 3) // 4 * 4
    return 4 * c * h * w


def layouts(graph: Graph) -> dict[str, tuple[int, int, int]]:
    out = {graph.input: graph.input_shape}
    for i, op in enumerate(graph.ops):
        kind, shape = graph.types[op.output]
        if kind == "index":
            continue
        if _family(graph, i) is Family.VIEW and kind in ("u8", "bits"):
            out[op.output] = out[op.inputs[0]]
        else:
            out[op.output] = shape if len(shape) == 3 else (shape[0], 1, 1)
    return out


def fused_groups(graph: Graph) -> list[tuple[int, ...]]:
    """Ops run together, in graph order of their last op; ``flatten`` runs nowhere."""
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, op in enumerate(graph.ops):
        for name in op.inputs:
            consumers[name].append(i)

    def sole(name: str) -> int | None:
        users = consumers[name]
        return users[0] if len(users) == 1 else None

    groups, taken = [], set()
    for i, op in enumerate(graph.ops):
        if i in taken or _family(graph, i) is Family.VIEW:
            continue
        group = [i]
        t = sole(op.output)
        if _thresholds(graph, i) and t is not None and _family(graph, t) is Family.THRESHOLD:
            group.append(t)
            # the C runtime fuses max-pooling (of bits) into its thresholded producers, no other pool
            if (p := sole(graph.ops[t].output)) is not None and graph.ops[p].kind == "maxpool":
                group.append(p)
        taken.update(group)
        groups.append(tuple(group))
    return sorted(groups, key=lambda g: g[-1])


def _place(sizes: dict[str, int], lifetimes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Greedy by size: largest buffers first, each at the lowest offset clear of every
    placed buffer whose lifetime meets its own."""
    offsets: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], lifetimes[n][0], n)):
        lo, hi = lifetimes[name]
        taken = sorted(
            (offsets[o], offsets[o] + sizes[o]) for o in offsets if lifetimes[o][0] <= hi and lo <= lifetimes[o][1]
        )
        at = 0
        for start, end in taken:
            if at + sizes[name] <= start:
                break
            at = max(at, end)
        offsets[name] = at
    return offsets


def plan_memory(graph: Graph) -> MemoryPlan:
    layout = layouts(graph)
    tensor_bytes = {name: layout_bytes(graph.types[name][0], shape) for name, shape in layout.items()}

    groups = fused_groups(graph)
    stored = {graph.ops[g[-1]].output for g in groups if _family(graph, g[-1]) is not Family.HEAD}
    buffer_of = {graph.input: graph.input}
    for i, op in enumerate(graph.ops):  # a view never reads a fused-away tensor: those have one, fused, consumer
        if _family(graph, i) is Family.VIEW:
            buffer_of[op.output] = buffer_of[op.inputs[0]]
        elif op.output in stored:
            buffer_of[op.output] = op.output
    steps = [
        Step(g, tuple(buffer_of[n] for n in graph.ops[g[0]].inputs), buffer_of.get(graph.ops[g[-1]].output))
        for g in groups
    ]

    lifetimes = {graph.input: (-1, -1)}
    for step in steps:
        if step.output is not None:
            lifetimes[step.output] = (step.position, step.position)
        for name in step.inputs:
            lifetimes[name] = (lifetimes[name][0], max(lifetimes[name][1], step.position))

    input_bytes = tensor_bytes[graph.input]
    arena = {name: tensor_bytes[name] for name in lifetimes} | {graph.input: -(-input_bytes // 4) * 4}
    offsets = _place(arena, lifetimes)
    arena_bytes = max((offsets[n] + arena[n] for n in arena), default=0)
    naive = [op.output for i, op in enumerate(graph.ops) if _family(graph, i) not in (Family.VIEW, Family.HEAD)]
    runs_at = {i: step.position for step in steps for i in step.ops}  # a flatten runs nowhere: its own index
    live = tuple(
        sum(tensor_bytes[n] for n, (lo, hi) in lifetimes.items() if lo <= runs_at.get(i, i) <= hi)
        for i in range(len(graph.ops))
    )
    return MemoryPlan(
        layout=layout,
        tensor_bytes=tensor_bytes,
        buffer_of=buffer_of,
        steps=tuple(steps),
        lifetimes=lifetimes,
        offsets=offsets,
        input_bytes=input_bytes,
        naive_bytes=input_bytes + sum(tensor_bytes[n] for n in naive),
        arena_bytes=arena_bytes,
        peak_bytes=arena_bytes,
        live_bytes=live,
        dense=frozenset(n for n, shape in layout.items() if graph.types[n][0] == "bits" and bit_dense(shape)),
    )
