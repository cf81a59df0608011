"""Costs of an exported graph on a device: flash for parameters, RAM for activations (from
the C runtime's memory plan), and operations by class.

Operation classes, per inference:

* binary MACs: XNOR-popcount multiply-accumulates (``binary_conv2d``, ``binary_dense``),
  counted over every kernel tap;
* integer ops: 8-bit × ±1 accumulations of the first layer, threshold comparisons, pool
  comparisons, integer additions;
* FP ops: multiplies and adds of ``affine`` and of the real-valued path (``conv2d_f32`` and
  ``dense_f32``: a multiply and an add per tap and the bias; ``meanpool``: the adds and one
  division per output; ``sign``, ``prelu``: one comparison or multiply per value).

The energy estimate prices these classes and the SRAM traffic with the constants of
``bnnkit.cost.energy`` (Horowitz, ISSCC 2014): its 45 nm op model, not the MCU datasheet
model of ``bnnkit run --runtime cortex-m4`` (that module's docstring compares the two).

Flash counts parameters as the graph file stores them: binary weights packed 8 per byte per
output channel, thresholds 4 bytes + 1 flip bit, affine 8 bytes per channel, float32
parameters (full-precision weights, ``sign`` thresholds, ``prelu`` slopes) 4 bytes each.

The operation counts of each op are its ``OpDef.cost`` rule in the op table (``bnnkit.graph.ops``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NotRequired, TypedDict

from bnnkit.cost import energy
from bnnkit.cost.formatting import kib, render_table
from bnnkit.errors import BnnkitError
from bnnkit.graph import OPS, Graph, Op, plan_memory


class LayerProfile(TypedDict):
    op: int
    kind: str
    name: str
    output: str  # its type and shape, e.g. "bits 16x14x14"
    weight_bytes: int
    activation_bytes: int
    storage: str  # stored | fused (never materialized) | view (of its input) | -
    live_bytes: int
    binary_macs: int
    int_ops: int
    fp_ops: int


class ProfileTotals(TypedDict):
    weight_bytes: int
    binary_macs: int
    int_ops: int
    fp_ops: int
    energy: dict[str, float]  # energy.energy_pj


class ProfileMemory(TypedDict):
    input_bytes: int
    naive_bytes: int
    arena_bytes: int
    planned_peak_bytes: int


class Profile(TypedDict):
    """What ``profile`` returns and ``bnnkit profile --json`` prints."""

    layers: list[LayerProfile]
    totals: ProfileTotals
    memory: ProfileMemory
    meta: dict[str, Any]
    device: NotRequired[dict[str, Any] | None]  # bnnkit profile --target: what the device measured


def _flash_bytes(op: Op) -> int:
    total = 0
    for name, value in op.params.items():
        if OPS[op.kind].param_type(name) == "bits":
            total += (
                value.shape[0] * math.ceil(math.prod(value.shape[1:]) / 8)
                if value.ndim > 1
                else math.ceil(value.size / 8)
            )
        else:
            total += value.nbytes
    return total


def _ops(graph: Graph, op: Op) -> tuple[int, int, int]:
    """(binary MACs, integer ops, FP ops) of one op."""
    cost = OPS[op.kind].cost
    if cost is None:
        raise BnnkitError(
            f"op {op.kind}: no cost rule in the op table (bnnkit.graph.conformance() lists what it lacks)"
        )
    return cost(op, [graph.types[name] for name in op.inputs], graph.types[op.output])


def profile(graph: Graph) -> Profile:
    plan = plan_memory(graph)
    layers: list[LayerProfile] = []
    for i, op in enumerate(graph.ops):
        kind, shape = graph.types[op.output]
        binary, integer, fp = _ops(graph, op)
        buffer = plan.buffer_of.get(op.output)
        storage = "-" if kind == "index" else "fused" if buffer is None else "stored" if buffer == op.output else "view"
        layers.append(
            LayerProfile(
                op=i,
                kind=op.kind,
                name=op.name,
                output=f"{kind} {'x'.join(map(str, shape)) or 'scalar'}",
                weight_bytes=_flash_bytes(op),
                activation_bytes=plan.tensor_bytes.get(op.output, 0),
                storage=storage,
                live_bytes=plan.live_bytes[i],
                binary_macs=binary,
                int_ops=integer,
                fp_ops=fp,
            )
        )
    weight_bytes, binary_macs, int_ops, fp_ops = (
        sum(layer[k] for layer in layers) for k in ("weight_bytes", "binary_macs", "int_ops", "fp_ops")
    )
    # Each op's output written and read once: fused ones are never materialised.
    produced = sum(layer["activation_bytes"] for layer in layers if layer["storage"] == "stored")
    op_energy = energy.energy_pj(
        binary_macs=binary_macs,
        int_ops=int_ops,
        fp_ops=fp_ops,
        weight_bytes=weight_bytes,
        activation_bytes=plan.input_bytes + produced,
    )
    totals = ProfileTotals(
        weight_bytes=weight_bytes, binary_macs=binary_macs, int_ops=int_ops, fp_ops=fp_ops, energy=op_energy
    )
    memory: ProfileMemory = {
        "input_bytes": plan.input_bytes,
        "naive_bytes": plan.naive_bytes,
        "arena_bytes": plan.arena_bytes,
        "planned_peak_bytes": plan.peak_bytes,
    }
    return {"layers": layers, "totals": totals, "memory": memory, "meta": graph.meta}


def device_layers(graph: Graph, result: Profile, per_step: Sequence[float], whole: float) -> dict:
    """Per step of the C runtime (a layer, with the threshold and pool fused into it): the
    instructions measured on a device (``McuImage.layer_instructions``) beside ``result``'s
    binary MACs (``profile(graph)``), and ``harness_instructions``, what the whole inference
    of the same image (``whole``) counts on top of the steps: the harness's read and write of
    one image. The build with marks runs a few instructions per step more than the plain
    build whose count ``result["device"]`` reports."""
    steps = plan_memory(graph).steps
    if len(per_step) != len(steps):
        raise ValueError(f"{len(per_step)} counts for {len(steps)} steps")
    layers = []
    for step, count in zip(steps, per_step):
        macs = sum(result["layers"][i]["binary_macs"] for i in step.ops)
        layers.append(
            {
                "ops": list(step.ops),
                "kinds": " + ".join(graph.ops[i].kind for i in step.ops),
                "name": graph.ops[step.ops[0]].name,
                "instructions": float(count),
                "binary_macs": macs,
                "instructions_per_binary_mac": float(count) / macs if macs else None,
            }
        )
    return {"layers": layers, "harness_instructions": whole - float(sum(per_step))}


def _format_device_layers(d: dict) -> list[str]:
    lines = [("ops", "layer", "name", "instructions", "binary MACs", "per MAC")]
    for r in d["layers"]:
        ops = f"{r['ops'][0]}" if len(r["ops"]) == 1 else f"{r['ops'][0]}-{r['ops'][-1]}"
        per_mac = "-" if r["instructions_per_binary_mac"] is None else f"{r['instructions_per_binary_mac']:.3f}"
        lines.append((ops, r["kinds"], r["name"], f"{r['instructions']:,.0f}", f"{r['binary_macs']:,}", per_mac))
    text = render_table(lines, left=3, total=False)
    text.append(f"harness (image in, scores out, between the marks): {d['harness_instructions']:,.0f} instructions")
    return text


def format_profile(result: Profile) -> str:
    header = ("#", "op", "layer", "output", "flash", "RAM (output)", "binary MACs", "int ops", "FP ops")
    lines = [header]
    for r in result["layers"]:
        ram = kib(r["activation_bytes"]) if r["storage"] == "stored" else r["storage"]
        lines.append(
            (
                str(r["op"]),
                r["kind"],
                r["name"],
                r["output"],
                kib(r["weight_bytes"]),
                ram,
                f"{r['binary_macs']:,}",
                f"{r['int_ops']:,}",
                f"{r['fp_ops']:,}",
            )
        )
    t, m = result["totals"], result["memory"]
    lines.append(
        (
            "total",
            "",
            "",
            "",
            kib(t["weight_bytes"]),
            "",
            f"{t['binary_macs']:,}",
            f"{t['int_ops']:,}",
            f"{t['fp_ops']:,}",
        )
    )
    text = render_table(lines, left=4)
    text.append(
        f"RAM: naive {kib(m['naive_bytes'])} (every tensor its own buffer) vs planned {kib(m['planned_peak_bytes'])} "
        f"(one arena, the {kib(m['input_bytes'])} input's slot included); "
        f"{m['naive_bytes'] / m['planned_peak_bytes']:.1f}x less"
    )
    d = result.get("device")
    if d is not None:
        text.append(
            f"measured on {d['target']} (QEMU {d['board']}): flash {kib(d['flash_bytes'])} (code {kib(d['text'])} + "
            f"constants {kib(d['rodata'])} + data {kib(d['data'])}) vs {kib(t['weight_bytes'])} packed parameters; "
            f"RAM {kib(d['ram_bytes'])} (bss {kib(d['bss'])} + stack {kib(d['stack_bytes_used'])}) vs "
            f"{kib(m['planned_peak_bytes'])} planned; {d['instructions_per_inference']:,.0f} instructions per "
            f"inference for {t['binary_macs']:,} binary MACs, ~{d['latency_ms_estimate']:.1f} ms at "
            f"{d['clock_hz'] / 1e6:g} MHz ({d['latency_model']})"
        )
        if "layers" in d:
            text.append(f"measured per layer on {d['target']}:")
            text += _format_device_layers(d)
    text += energy.describe(t["energy"], t["binary_macs"], result.get("device"))
    return "\n".join(text)
