"""Energy per inference from operation counts: a first-order estimate, not a measurement.

Constants are the 45 nm, 0.9 V figures of Horowitz, "Computing's energy problem (and what
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
    *, binary_macs: float = 0, int_ops: float = 0, fp_macs: float = 0, fp_ops: float = 0,
    weight_bytes: float = 0, activation_bytes: float = 0, resident_bytes: float | None = None,
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
