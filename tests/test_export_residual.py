"""Residual networks through the exporter and the runtimes: ResNet-20/18 with the baseline
recipe and each topology method, the graph against the module (top-1 and every sign of a
binary layer), and NumPy == fast == generated C99 (== Cortex-M4) bit for bit; the real-valued
ops of the random graphs across the host runtimes."""

import shutil
import tempfile

import numpy as np
import pytest
import torch
from helpers.exactness import DIGITS, EMBEDDED, calibrated
from helpers.graphgen import case_from_seed
from torch import nn

from bnnkit.analysis.agreement import compare
from bnnkit.errors import BnnkitError
from bnnkit.export import export_model
from bnnkit.graph import Graph
from bnnkit.models import create_model
from bnnkit.nn import LearnableThreshold, RPReLU
from bnnkit.recipe import BASELINE, METHODS
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.fast import FastModel
from bnnkit.runtime.host import build_host

# the methods whose modules only a residual model has, or that change its real-valued path
TOPOLOGY = ["double_residual", "fp_downsample", "prelu", "rprelu", "feature_norm", "rsign", "learned_weight_scale"]
TOPOLOGY += ["abc_weight_bases", "abc_activation_bases", "pad_minus_one", "xnor_weight_scale"]


def perturbed(model: nn.Module, seed: int = 5) -> nn.Module:
    """Learned parameters off their neutral start: RSign thresholds off 0, PReLU slopes of both
    signs (a negative slope makes the chain before a sign non-monotone: the float path takes
    over), RPReLU shifts off 0, some learned weight scales negative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LearnableThreshold):
                m.shift.copy_(torch.randn(m.shift.shape, generator=g) * 0.5)
            if isinstance(m, nn.PReLU):
                m.weight.copy_(0.25 + torch.randn(m.weight.shape, generator=g) * 0.4)
            if isinstance(m, RPReLU):
                for p in (m.shift_in, m.slope, m.shift_out):
                    p.add_(torch.randn(p.shape, generator=g) * 0.3)
            if getattr(m, "weight_scale", None) == "learned":
                m.scale.mul_(torch.where(torch.rand(m.scale.shape, generator=g) < 0.3, -1.0, 1.0))
    return model


def resnet(recipe, shape=(1, 8, 8), model="resnet20", width_mult=0.25, x=DIGITS.x) -> nn.Module:
    torch.manual_seed(0)
    return perturbed(calibrated(create_model(model, 10, shape, recipe, width_mult=width_mult), x))


def assert_runtimes_agree(graph: Graph, x: np.ndarray) -> np.ndarray:
    """numpy == fast == c-portable, scores bit for bit; returns the reference labels."""
    scores, labels = numpy_ref.predict(graph, x)
    fast_scores, fast_labels = FastModel(graph).predict(x)
    with tempfile.TemporaryDirectory() as work:
        c_scores, c_labels = build_host(graph, work).predict(x)
    bits = np.asarray(scores, np.float32).view(np.uint32)
    assert np.array_equal(bits, np.asarray(fast_scores, np.float32).view(np.uint32))
    assert np.array_equal(bits, np.asarray(c_scores, np.float32).view(np.uint32))
    assert np.array_equal(labels, fast_labels) and np.array_equal(labels, c_labels)
    return labels


def _kinds(graph: Graph) -> set[str]:
    return {op.kind for op in graph.ops}


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    ["embedded", "baseline"]
    + [f"embedded+{m}" for m in TOPOLOGY]
    + ["baseline+double_residual+fp_downsample+rprelu+rsign+feature_norm"],
)
def test_resnet20_exports_and_every_runtime_agrees(recipe):
    model = resnet(recipe)
    graph = export_model(model, (1, 8, 8))
    x = DIGITS.x[:120]
    result = compare(model, graph, x)
    # every sign a binary layer reads is the module's (but under activation bases: several sets of
    # signs per layer, which the check does not capture), and so is every label
    signs = result["sign_agreement"]
    assert all(v == 1.0 for v in signs.values()) and (signs or "abc_activation" in recipe), signs
    assert result["top1_agreement"] == 1.0
    with torch.no_grad():
        logits = model(torch.from_numpy(x).float() / 255).numpy()
    # the float32 path differs from PyTorch's by roundings only
    np.testing.assert_allclose(result["graph_scores"], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    assert_runtimes_agree(graph, x)
    assert {"add", "binary_conv2d", "meanpool"} <= _kinds(graph)


@pytest.mark.slow
def test_each_method_puts_its_ops_in_the_graph():
    """What each method adds to ResNet-20's graph, against the embedded baseline."""
    plain = export_model(resnet("embedded"), (1, 8, 8))
    counts = {kind: sum(op.kind == kind for op in plain.ops) for kind in _kinds(plain)}
    for method, kind, more in [
        ("double_residual", "add", 9),  # one more shortcut per block
        ("fp_downsample", "conv2d_f32", 2),  # the two strided shortcuts
        ("prelu", "prelu", 1),  # at least: the stem's and every block's
        ("rprelu", "prelu", 1),
        ("feature_norm", "sign", 1),  # BN before a sign of the stream: no integer threshold
    ]:
        graph = export_model(resnet(f"embedded+{method}"), (1, 8, 8))
        n = sum(op.kind == kind for op in graph.ops)
        assert n >= counts.get(kind, 0) + more, (method, kind, n)
    baseline = export_model(resnet(BASELINE), (1, 8, 8))
    first, last = baseline.ops[0], baseline.ops[-2]
    assert (first.kind, first.inputs, last.kind) == ("conv2d_f32", ["input"], "dense_f32")


@pytest.mark.slow
def test_negative_prelu_slope_falls_back_to_the_float_sign():
    """A chain made non-monotone by a negative slope (sign(prelu(z) - v) with v > 0 is +1 at both
    ends) is signed on the float32 stream (``sign``); with positive slopes the same block's inner
    sign is an integer threshold."""
    model = resnet("embedded+prelu+rsign")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.fill_(0.25)
        model.net.blocks[0].conv2.input_quantizer.shift.fill_(0.3)
    inner = [op for op in export_model(model, (1, 8, 8)).ops if op.name == "net.blocks.0.conv2.input_quantizer"]
    assert [op.kind for op in inner] == ["threshold"]
    with torch.no_grad():
        model.net.blocks[0].bn1[1].weight.fill_(-0.5)
    graph = export_model(model, (1, 8, 8))
    inner = [op for op in graph.ops if op.name == "net.blocks.0.conv2.input_quantizer"]
    assert [(op.kind, op.inputs[0].endswith("_prelu")) for op in inner] == [("sign", True)]
    result = compare(model, graph, DIGITS.x)
    assert result["top1_agreement"] == 1.0 and result["sign_agreement"]["net.blocks.0.conv2"] == 1.0


def test_rsign_threshold_is_the_learned_shift_on_the_stream():
    model = resnet("embedded+rsign")
    graph = export_model(model, (1, 8, 8))
    sign = next(op for op in graph.ops if op.name == "net.blocks.1.conv1.input_quantizer")
    shift = model.net.blocks[1].conv1.input_quantizer.shift.detach().numpy()
    assert sign.kind == "sign" and np.array_equal(sign.params["thresh"], shift)


@pytest.mark.parametrize("method", [m for m, d in METHODS.items() if not d.exportable])
def test_remaining_methods_are_refused_by_name_on_resnet(method):
    model = create_model("resnet20", 10, (1, 8, 8), EMBEDDED.with_(**METHODS[method].changes), width_mult=0.25)
    with pytest.raises(BnnkitError, match=rf"repair method\(s\) {method} have no exact integer form"):
        export_model(model, (1, 8, 8))


def test_unknown_module_is_refused_naming_it():
    model = create_model("resnet20", 10, (1, 8, 8), EMBEDDED, width_mult=0.25)
    model.net.pool[0] = nn.ReLU()
    with pytest.raises(BnnkitError, match="cannot export layer 'net.pool.0': ReLU has no graph form"):
        export_model(model, (1, 8, 8))


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, recipe, width_mult",
    [("resnet20", "embedded+fp_downsample", 0.5), ("resnet20", "baseline", 1.0), ("resnet18", "embedded", 0.125)],
)
def test_cifar_shaped_resnets_build_and_run(model, recipe, width_mult):
    """The CIFAR 32×32 shapes (random weights, BN statistics from random images)."""
    x = np.random.default_rng(1).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    net = resnet(recipe, (3, 32, 32), model, width_mult, x)
    graph = export_model(net, (3, 32, 32))
    assert compare(net, graph, x)["top1_agreement"] == 1.0
    assert_runtimes_agree(graph, x[:8])


@pytest.mark.slow
def test_random_graphs_with_real_valued_ops_are_bit_exact_on_the_host():
    """The seeded random graphs (tests/helpers/graphgen.py) that hold the real-valued ops:
    numpy == fast == c-portable bit for bit (test_runtime_c.py and test_cortex_m.py run more)."""
    real = {"sign", "prelu", "meanpool", "conv2d_f32", "dense_f32"}
    cases = [c for c in map(case_from_seed, range(60)) if _kinds(c.graph) & real]
    assert real <= set().union(*map(_kinds, (c.graph for c in cases)))
    for case in cases[:25]:
        assert_runtimes_agree(case.graph, case.x)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="gcc-arm-none-eabi and qemu-system-arm not installed",
)
def test_resnet20_fashion_shape_on_cortex_m4(tmp_path):
    """ResNet-20, width 0.5, on the 28×28 Fashion-MNIST shape: bit-exact in QEMU, measured."""
    from bnnkit.runtime.cortex_m import build_mcu

    x = np.random.default_rng(2).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    net = resnet("embedded+double_residual", (1, 28, 28), "resnet20", 0.5, x)
    graph = export_model(net, (1, 28, 28))
    image = build_mcu(graph, tmp_path, "cortex-m4")
    run = image.run(x[:4], count_instructions=True)
    scores, labels = numpy_ref.predict(graph, x[:4])
    assert np.array_equal(run.scores, scores) and np.array_equal(run.labels, labels)
    size = image.size
    weight_bits = sum(op.params["weight"].size for op in graph.ops if op.params.get("weight") is not None)
    assert weight_bits // 8 <= size.rodata and 0 < run.stack_bytes_used < size.stack
    per_image = image.instructions_per_inference(x[:2])
    assert per_image > 1e5
    print(f"resnet20 w0.5 28x28 on M4: flash {size.flash} B, RAM {run.ram_bytes} B, {per_image:.0f} instructions")
