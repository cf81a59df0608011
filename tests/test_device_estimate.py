"""bnnkit.cost.device: the estimated Cortex-M4 flash and RAM against a real build of the same graph."""

import shutil

import numpy as np
import pytest
from helpers.graphgen import case_from_seed, ebnn16, ebnn_cnn

from bnnkit.cost.device import HARNESS_STACK, device_estimate, harness_stack
from bnnkit.runtime.cortex_m import build_mcu

# the estimate compiles the generated C for the stack; the measurement runs it in QEMU too
needs_gcc = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed")


def _graph(which: str):
    if which.startswith("rand"):
        return case_from_seed(int(which[4:])).graph
    return {"ebnn_cnn": ebnn_cnn, "ebnn16": ebnn16}[which](np.random.default_rng(0))


def _measured(graph, tmp_path):
    image = build_mcu(graph, tmp_path, "cortex-m4")
    run = image.run(np.zeros((1, *graph.input_shape), dtype=np.uint8))
    return image.size.flash, run.ram_bytes


# graphgen seeds 20-29 were built after the earlier flash model was fitted (docs/review-protocol.md section 5)
HELD_OUT = [f"rand{seed}" for seed in range(20, 30)]


@pytest.mark.slow
@needs_gcc
@needs_qemu
@pytest.mark.parametrize("which", ["ebnn_cnn", "ebnn16", "rand0", "rand2", "rand4", "rand7", *HELD_OUT])
def test_estimate_is_within_ten_percent_of_the_m4_build(which, tmp_path):
    graph = _graph(which)
    flash, ram = _measured(graph, tmp_path)
    estimate = device_estimate(graph)
    assert abs(estimate["ram_bytes"] - ram) / ram <= 0.10, (estimate, ram)
    assert abs(estimate["flash_bytes"] - flash) / flash <= 0.10, (estimate, flash)


@pytest.mark.slow
@needs_gcc
@pytest.mark.parametrize("which", ["ebnn16", "rand3"])
def test_flash_is_the_linked_image_but_for_the_harness_constant(which, tmp_path):
    # seed 3's object carries two popcount kernels no call is left to, which the linker drops
    graph = _graph(which)
    assert abs(device_estimate(graph)["flash_bytes"] - build_mcu(graph, tmp_path, "cortex-m4").size.flash) <= 16


@needs_gcc
def test_parts_add_up():
    e = device_estimate(case_from_seed(2).graph)
    assert e["flash_bytes"] == e["code_bytes"] + e["constant_bytes"]
    assert e["ram_bytes"] == e["buffer_bytes"] + e["stack_bytes"]
    assert e["stack_bytes"] > HARNESS_STACK  # the inference's call chain on top of the harness's frames


@pytest.mark.slow
@needs_gcc
def test_the_harness_stack_is_what_the_harness_compiles_to():
    # the start-up and main compiled for the M4: a harness edit that changes a frame fails here
    assert harness_stack(_graph("ebnn16")) == HARNESS_STACK
