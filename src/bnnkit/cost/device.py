"""What a graph's Cortex-M4 image should take: flash and RAM estimated before it is built.

``bnnkit review --measure`` compares these with the measured image (``bnnkit.review.report``);
``graph_cost.profile`` and ``model_costs`` keep their parameters-only and activations-only
meaning. The model, each term as the C generator (``bnnkit.runtime.c``) lays the image out:

* flash = ``HARNESS_FLASH`` (start-up, semihosting harness, vector table) + ``CALL_BYTES`` times
  the square root of the steps of ``{prefix}_infer`` (an empirical curve: gcc -O2 inlines kernels
  into the calls of a small graph, not of a large one) + the generated constants: every ``static const`` array at its C size (packed weight words,
  thresholds, flip bits, per-channel tables) and ``DESCRIPTOR_BYTES`` per layer descriptor;
* RAM = ``HARNESS_RAM`` + the harness's input and score buffers + the generated static buffers
  (the planned arena, the patch and int8 scratch) + the stack, taken as the deepest frame of a
  used kernel (``KERNEL_STACK``): the frames of main, the inference function and the kernels'
  callees are not counted, which leaves the estimate short on deep graphs (docs/review-protocol.md).

``KERNEL_STACK`` is derived, not guessed: ``kernel_table()`` compiles each kernel section alone
with arm-none-eabi-gcc (``-fkeep-static-functions -fstack-usage``) and takes the deepest frame it
adds to the sections it needs; a slow test recomputes it so the table cannot go stale. (A per-kernel
code table did not fit the builds.) HARNESS_FLASH, CALL_BYTES and DESCRIPTOR_BYTES were fitted on
M4 builds (docs/review-protocol.md section 5 has the tables).
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit.graph import Graph
from bnnkit.runtime.c import generate_c
from bnnkit.runtime.c_library import closure, kernel_sources

TARGET = "cortex-m4"
HARNESS_FLASH = 1431  # start-up, harness, vector table: the intercept of the fit below
HARNESS_RAM = 8  # semihosting arguments
# least squares over 26 builds (ebnn_cnn, graphgen seeds 0-19, five resnet20 x0.25 of docs/review-protocol.md
# section 5): gcc -O2 inlines a kernel into the few calls of a small graph and calls it out of line in a large
# one, so the code grows with the square root of the steps (linear in the steps was +60-120% on resnet20)
CALL_BYTES = 564
DESCRIPTOR_BYTES = 128
KERNEL_STACK = {
    "structs": 0,
    "bit_at": 0,
    "popcount": 0,
    "f32_bits": 8,
    "f32_of": 0,
    "patch": 0,
    "popcount_words": 36,
    "bits_out": 12,
    "binary_patch": 88,
    "binary_dot": 0,
    "byte_sums": 0,
    "input_patch": 24,
    "input_dot": 0,
    "threshold": 56,
    "maxpool_bits": 104,
    "maxpool": 0,
    "maxpool_i32": 96,
    "maxpool_f32": 88,
    "avgpool": 88,
    "add_i32": 4,
    "add_f32": 4,
    "argmax_i32": 12,
    "argmax_f32": 8,
    "affine": 0,
    "affine_u8": 40,
    "affine_i32": 32,
    "affine_f32": 32,
    "conv": 0,
    "conv_sign": 12,
    "input_conv": 104,
    "input_conv_sign": 168,
    "binary_conv": 152,
    "binary_conv_sign": 200,
    "sign_f32": 48,
    "prelu": 0,
    "prelu_i32": 20,
    "prelu_f32": 20,
    "meanpool": 80,
    "fconv": 0,
    "fconv_u8": 168,
    "fconv_f32": 168,
    "int8_mac": 0,
    "int8_requant": 0,
    "int8_conv": 88,
    "int8_dense": 48,
    "requantize": 56,
    "quantize_input": 0,
    "maxpool_i8": 88,
}
# sections whose functions are called from inside another kernel's deepest frame (the carry-save
# popcount of binary_dot): their frames add to it rather than standing beside it
NESTED = ("popcount_words",)
_CTYPE_BYTES = {"uint8_t": 1, "int8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4, "uint32_t": 4, "float": 4}
_ARRAY = re.compile(r"^static (const )?(\w+) \w+\[(\d+)\]", re.M)
_DESCRIPTOR = re.compile(r"^static const struct \w+ \w+ = ", re.M)


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def _arrays(source: str, const: bool) -> int:
    return sum(
        _align4(_CTYPE_BYTES[ctype] * int(n))
        for is_const, ctype, n in _ARRAY.findall(source)
        if bool(is_const) == const and ctype in _CTYPE_BYTES
    )


def used_kernels(source: str) -> list[str]:
    """The kernel sections copied into a generated ``.c`` (with what they need), in file order."""
    from bnnkit.runtime.c_library import kernels

    return [name for name, kernel in kernels().items() if kernel.text and kernel.text in source]


def device_estimate(graph: Graph) -> dict[str, Any]:
    """The estimated Cortex-M4 flash and RAM of ``graph``'s image, with the parts that add up to them."""
    source = generate_c(graph, "bnn")["bnn.c"]
    names = used_kernels(source)
    steps = source.split("int bnn_infer(", 1)[1].count(";")
    code = HARNESS_FLASH + round(CALL_BYTES * math.sqrt(steps))
    constants = _arrays(source, True) + DESCRIPTOR_BYTES * len(_DESCRIPTOR.findall(source))
    buffers = _arrays(source, False)
    harness = HARNESS_RAM + _align4(int(np.prod(graph.input_shape))) + 4 * graph.num_classes
    stack = max((KERNEL_STACK.get(n, 0) for n in names if n not in NESTED), default=0)
    stack += sum(KERNEL_STACK.get(n, 0) for n in names if n in NESTED)
    return {
        "target": TARGET,
        "flash_bytes": code + constants,
        "ram_bytes": harness + buffers + stack,
        "code_bytes": code,
        "constant_bytes": constants,
        "buffer_bytes": buffers + harness,
        "stack_bytes": stack,
    }


def kernel_table(toolchain: str = "arm-none-eabi-") -> dict[str, int]:
    """``KERNEL_STACK`` recomputed: each kernel section compiled for the M4 alone, the deepest
    frame it adds to those of the sections it needs."""
    from bnnkit.runtime.c_library import kernels
    from bnnkit.runtime.cortex_m import TARGETS
    from bnnkit.runtime.toolchain import MCU_CFLAGS

    flags = [*TARGETS[TARGET].cflags, *(f for f in MCU_CFLAGS if f != "-Werror")]
    flags += ["-fkeep-static-functions", "-fstack-usage", "-Wno-unused-function", "-Wno-unused-const-variable"]

    def frames(names: list[str]) -> dict[str, int]:
        if not names:
            return {}
        with tempfile.TemporaryDirectory() as d:
            c = Path(d) / "k.c"
            c.write_text("#include <stddef.h>\n#include <stdint.h>\n" + "\n\n".join(kernel_sources(names)))
            subprocess.run(
                [f"{toolchain}gcc", *flags, "-c", "k.c", "-o", "k.o"], check=True, capture_output=True, cwd=d
            )
            sizes = {}
            for line in (Path(d) / "k.su").read_text().splitlines():
                function, size, _ = line.split("\t")
                sizes[function.rsplit(":", 1)[-1]] = int(size)
            return sizes

    stack = {}
    for name in kernels():
        before = frames([n for n in closure([name]) if n != name])
        stack[name] = max([v for f, v in frames(closure([name])).items() if f not in before] or [0])
    return stack
