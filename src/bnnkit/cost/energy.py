"""Energy per inference: two first-order estimates, not measurements, that answer two
different questions and differ by three orders of magnitude.

* The **45 nm op model** (this module, ``energy_pj``; ``bnnkit profile``, ``bnnkit methods
  --model``, the review's ``energy_pj`` column): every operation and SRAM access priced with
  the energy of that operation alone in 45 nm logic. It is what a custom BNN accelerator
  would spend on arithmetic and on-chip memory, and compares models with each other.
* The **MCU datasheet model** (``bnnkit.runtime.cortex_m.latency_estimate``; ``bnnkit run
  --runtime cortex-m4``, ``bnnkit profile --target``): the instructions counted in QEMU, at
  one cycle each, times the part's datasheet run current per MHz and its supply voltage
  (79 µA/MHz × 3.0 V = 237 pJ per cycle for an STM32L412). It is what the whole chip — core,
  flash reads, clock tree, regulators, leakage — draws while it runs the inference.

An MCU does a binary MAC as a fraction of a 32-bit XOR + popcount + add, several
instructions for 32 MACs (the M4 has no popcount instruction), at ~237 pJ per cycle; the op
model prices the same MAC at 0.022 pJ. ``describe`` prints both with that breakdown.

The op model's constants are the 45 nm, 0.9 V figures of Horowitz, "Computing's energy problem (and what
we can do about it)", ISSCC 2014, Fig. 1.1.9 (the table most BNN cost models cite):

    32-bit int add 0.1 pJ     32-bit int mult 3.1 pJ
    32-bit FP add  0.9 pJ     32-bit FP mult  3.7 pJ
    64-bit SRAM read: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ

Derived classes (the assumptions are ours):

* binary MAC: 32 of them are one 32-bit XNOR, one popcount and one accumulate. The XNOR
  and the accumulate are costed as 32-bit adds; the popcount as log2(32) = 5 adds (an
  adder tree). (1 + 5 + 1) × 0.1 pJ / 32 ≈ 0.022 pJ per binary MAC.
* integer op (8-bit pixel × ±1 accumulation, threshold or pool comparison): a 32-bit add.
* FP MAC: an FP multiply and an FP add; FP op (BN, scale, bias, residual add): an FP
  multiply-or-add, costed as the multiply (the upper bound).
* memory: every weight byte read once and every activation byte written once and read
  once per inference, in 64-bit SRAM accesses priced by the size of the SRAM that holds
  the model (the smallest of 8 KB, 32 KB, 1 MB that fits weights + activations). Reuse in
  registers is assumed, so this is a lower bound on memory energy; off-chip DRAM is not
  modelled (a tiny BNN fits on chip).
"""

from __future__ import annotations

INT_ADD_PJ = 0.1
INT_MULT_PJ = 3.1
FP_ADD_PJ = 0.9
FP_MULT_PJ = 3.7
SRAM_READ_64BIT_PJ = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))

BINARY_MAC_PJ = (1 + 5 + 1) * INT_ADD_PJ / 32
INT_OP_PJ = INT_ADD_PJ
FP_MAC_PJ = FP_MULT_PJ + FP_ADD_PJ
FP_OP_PJ = FP_MULT_PJ

SOURCE = "Horowitz, ISSCC 2014 (45 nm, 0.9 V); binary MAC = (XNOR + 5-add popcount + accumulate) / 32"


def sram_access_pj(resident_bytes: float) -> float:
    """Energy of one 64-bit read from the smallest listed SRAM that holds ``resident_bytes``."""
    for size, pj in SRAM_READ_64BIT_PJ:
        if resident_bytes <= size:
            return pj
    return SRAM_READ_64BIT_PJ[-1][1]


def energy_pj(
    *,
    binary_macs: float = 0,
    int_ops: float = 0,
    fp_macs: float = 0,
    fp_ops: float = 0,
    weight_bytes: float = 0,
    activation_bytes: float = 0,
    resident_bytes: float | None = None,
) -> dict[str, float]:
    """Energy per inference in picojoules, by class, and the total.

    ``activation_bytes`` is the sum of all activations produced (each written and read
    once); ``resident_bytes`` (default: weights + activations) picks the SRAM size."""
    resident = weight_bytes + activation_bytes if resident_bytes is None else resident_bytes
    access = sram_access_pj(resident) / 8  # per byte
    parts = {
        "binary_pj": binary_macs * BINARY_MAC_PJ,
        "int_pj": int_ops * INT_OP_PJ,
        "fp_pj": fp_macs * FP_MAC_PJ + fp_ops * FP_OP_PJ,
        "memory_pj": (weight_bytes + 2 * activation_bytes) * access,
    }
    return {**parts, "total_pj": sum(parts.values())}


OP_MODEL = "45 nm op model"
DEVICE_MODEL = "MCU datasheet model"


def describe(op_energy: dict[str, float], binary_macs: float, device: dict | None = None) -> list[str]:
    """The energy lines of ``bnnkit profile`` and ``bnnkit run``: the op model's estimate
    and, given a Cortex-M report with a datasheet figure, that estimate beside it and
    where the factor between the two comes from."""
    e = op_energy
    lines = [
        f"energy, {OP_MODEL}: {e['total_pj'] / 1e3:,.1f} nJ per inference (binary {e['binary_pj'] / 1e3:,.1f}, "
        f"integer {e['int_pj'] / 1e3:,.1f}, FP {e['fp_pj'] / 1e3:,.1f}, SRAM {e['memory_pj'] / 1e3:,.1f} nJ): "
        f"arithmetic and SRAM reads alone, as a custom accelerator would spend them ({SOURCE})"
    ]
    if not device or "energy_uj_estimate" not in device:
        return lines
    device_pj = device["energy_uj_estimate"] * 1e6
    per_cycle = device_pj / device["cycles_estimate"]
    lines.append(
        f"energy, {DEVICE_MODEL}: {device_pj / 1e6:,.1f} µJ per inference = {device['cycles_estimate']:,.0f} cycles "
        f"(1 per instruction) × {device['energy_model']}; the whole chip (core, flash, clocks) while it runs"
    )
    if binary_macs:
        per_mac = device["instructions_per_inference"] / binary_macs
        lines.append(
            f"the {DEVICE_MODEL} is {device_pj / e['total_pj']:,.0f}x the {OP_MODEL}: {per_cycle:.0f} pJ per "
            f"instruction against {INT_ADD_PJ} pJ per 32-bit add and {BINARY_MAC_PJ:.3f} pJ per binary MAC (the "
            f"datapath alone), and {per_mac:.2f} instructions per binary MAC on the {device['part']} (counting every "
            f"instruction, loops and integer layers included) where the op model counts 1/32 of an XNOR-popcount-add"
        )
    return lines
