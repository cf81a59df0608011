"""Every repair method of the catalogue changes the network the way it says, exports bit
for bit where the catalogue claims it does, and is refused by name where not.

A check compares a model built with the method against its baseline twin (same seed,
shared weights copied over), so it fails if the method were a no-op."""

import pytest
import torch
from helpers.exactness import DIGITS, EMBEDDED, calibrated, check_exact
from torch import nn

from bnnkit.analysis.agreement import compare
from bnnkit.errors import BnnkitError
from bnnkit.export import export_model
from bnnkit.models import create_model, model_features, model_names
from bnnkit.nn import (
    BatchNorm2d,
    BinaryConv2d,
    BinaryLinear,
    LearnableThreshold,
    Prequantized,
    RPReLU,
    StandardizedWeights,
)
from bnnkit.quant import MultiBaseActivations, MultiBaseWeights, Quantizer, get_quantizer
from bnnkit.recipe import BASELINE, METHODS, apply_methods

# Trained, not built: tests/test_train.py checks them.
TRAINING_SIDE = {"bop", "sgd_step", "step_schedule", "distillation", "two_stage"}

TINY = {
    "small_cnn": ((1, 8, 8), {"width": 4, "hidden": 8}),
    "ebnn_cnn": ((1, 8, 8), {"channels": [4, 6]}),
    "binarynet_mlp": ((1, 8, 8), {"width": 12, "depth": 2}),
    "resnet20": ((3, 8, 8), {"width_mult": 0.25}),
}


def build(model: str, recipe=BASELINE) -> nn.Module:
    torch.manual_seed(0)
    shape, options = TINY[model]
    return create_model(model, 10, shape, recipe, **options)


def twins(method: str, model: str = "small_cnn") -> tuple[nn.Module, nn.Module]:
    """The baseline and the method's model, the latter holding the former's weights
    wherever their names and shapes agree."""
    base, changed = build(model), build(model, BASELINE.with_(**METHODS[method].changes))
    own = changed.state_dict()
    changed.load_state_dict(
        {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False
    )
    return base, changed


def example(model: str = "small_cnn") -> torch.Tensor:
    return torch.rand(6, *TINY[model][0], generator=torch.Generator().manual_seed(1))


def output(net: nn.Module, model: str = "small_cnn") -> torch.Tensor:
    with torch.no_grad():
        return net.train()(example(model))  # batch statistics: a BN acts on a fresh model


def gradients(net: nn.Module, model: str = "small_cnn") -> dict[str, torch.Tensor]:
    net.train().zero_grad()
    upstream = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    (net(example(model)) * upstream).sum().backward()
    return {name: p.grad for name, p in net.named_parameters() if p.grad is not None}


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def binary(net: nn.Module, with_input: bool = True) -> list[nn.Module]:
    layers = [m for m in net.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    return [m for m in layers if m.input_quantizer is not None] if with_input else layers


def count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def changes_output(method: str, model: str = "small_cnn") -> None:
    base, changed = twins(method, model)
    assert not torch.equal(output(base, model), output(changed, model))


# --- the checks, one per method ------------------------------------------------------


def check_binarizer(method: str, quantizer: str) -> None:
    """Same forward sign as the baseline, another gradient."""
    base, changed = twins(method)
    assert all(m.input_quantizer.registered_name == quantizer for m in binary(changed))
    assert torch.equal(output(base), output(changed))
    before, after = gradients(base), gradients(changed)
    assert not torch.equal(before["0.weight"], after["0.weight"])


def check_rsign() -> None:
    base, changed = twins("rsign")
    layers = binary(changed)
    assert all(isinstance(m.input_quantizer, LearnableThreshold) for m in layers)
    # one threshold per input channel; after a Flatten per channel of the feature map
    assert n_params(changed) - n_params(base) == 4 + 4 + 8 + 8
    assert torch.equal(output(base), output(changed))  # initialised to 0: the plain sign
    with torch.no_grad():
        for m in layers:
            m.input_quantizer.shift.fill_(0.7)
    assert not torch.equal(output(base), output(changed))
    gradients(changed)
    assert all(m.input_quantizer.shift.grad.abs().sum() > 0 for m in layers)


def check_weight_scale(method: str, added: int) -> None:
    base, changed = twins(method)
    assert n_params(changed) - n_params(base) == added
    assert all(m.weight_scale == METHODS[method].changes["weight_scale"] for m in binary(changed, with_input=False))
    assert not torch.allclose(output(base), output(changed))


def check_xnor_activation_scale() -> None:
    base, changed = twins("xnor_activation_scale")
    assert [m.activation_scale for m in binary(changed)] == ["xnor"] * 4
    assert n_params(changed) == n_params(base)
    assert not torch.allclose(output(base), output(changed))


def check_feature_norm() -> None:
    base, changed = twins("feature_norm", "resnet20")
    convs = binary(changed)
    assert count(changed, nn.BatchNorm2d) - count(base, nn.BatchNorm2d) == len(convs) == 20
    assert n_params(changed) - n_params(base) == 2 * sum(m.in_channels for m in convs)
    assert not torch.allclose(output(base, "resnet20"), output(changed, "resnet20"))


def check_weight_standardization() -> None:
    base, changed = twins("weight_standardization")
    assert all(isinstance(m.kernel_quantizer, StandardizedWeights) for m in binary(changed, with_input=False))
    before, after = gradients(base), gradients(changed)
    assert not torch.allclose(before["2.weight"], after["2.weight"])


def check_double_residual() -> None:
    base, changed = twins("double_residual", "resnet20")
    assert n_params(changed) == n_params(base)
    assert not torch.allclose(output(base, "resnet20"), output(changed, "resnet20"))


def check_fp_downsample() -> None:
    base, changed = twins("fp_downsample", "resnet20")
    shortcuts = [
        b.shortcut for b in changed.modules() if hasattr(b, "shortcut") and isinstance(b.shortcut, nn.Sequential)
    ]
    assert len(shortcuts) == 2
    assert all([type(m) for m in s] == [nn.AvgPool2d, nn.Conv2d, BatchNorm2d] for s in shortcuts)
    assert len(binary(base)) - len(binary(changed)) == 2
    assert not torch.allclose(output(base, "resnet20"), output(changed, "resnet20"))


def check_activation(method: str, kind: type, per_channel: int) -> None:
    for model in ("small_cnn", "resnet20"):
        base, changed = twins(method, model)
        # after every BN but the classifier's and the shortcuts'
        bns = [
            m for n, m in base.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and "shortcut" not in n
        ]
        assert count(changed, kind) == len(bns)
        assert n_params(changed) - n_params(base) == per_channel * sum(bn.num_features for bn in bns)
        with torch.no_grad():
            for m in changed.modules():
                if isinstance(m, kind):
                    next(m.parameters()).add_(0.3)
        assert not torch.allclose(output(base, model), output(changed, model))


def check_pool_after_sign() -> None:
    for model in ("small_cnn", "ebnn_cnn"):
        base, changed = twins("pool_after_sign", model)
        flat = list(changed)
        pools = [i for i, m in enumerate(flat) if isinstance(m, nn.MaxPool2d)]
        assert pools and all(
            isinstance(flat[i - 1], Quantizer) and isinstance(flat[i - 2], nn.BatchNorm2d) for i in pools
        )
        # a binary layer after a pool takes its signs as they are
        after = [flat[i + 1 + isinstance(flat[i + 1], nn.Flatten)] for i in pools]
        binary_after = [m for m in after if isinstance(m, (BinaryConv2d, BinaryLinear))]
        assert binary_after and all(isinstance(m.input_quantizer, Prequantized) for m in binary_after)
        assert n_params(changed) == n_params(base)
        assert not torch.equal(output(base, model), output(changed, model))


def test_pool_after_sign_applies_the_surrogate_gradient_once():
    """ApproxSign's gradient is 0 at ±1: a second sign after the pool would cut it off."""
    net = build("small_cnn", BASELINE.with_(pool_order="bn_sign_pool", input_quantizer="approx_sign"))
    assert gradients(net)["0.weight"].abs().sum() > 0
    for m in binary(net):
        if isinstance(m.input_quantizer, Prequantized):
            m.input_quantizer = get_quantizer("approx_sign")
    assert gradients(net)["0.weight"].abs().sum() == 0


def check_width_x2() -> None:
    for model in ("small_cnn", "ebnn_cnn", "binarynet_mlp", "resnet20"):
        base, changed = twins("width_x2", model)
        assert [m.weight.shape[0] for m in binary(changed)] == [2 * m.weight.shape[0] for m in binary(base)]
        assert n_params(changed) > 2 * n_params(base)


def check_binary_first_last() -> None:
    base, changed = twins("binary_first_last")
    first, last = binary(changed, with_input=False)[0], binary(changed, with_input=False)[-1]
    assert isinstance(first, BinaryConv2d) and first.input_quantizer is None
    assert isinstance(last, BinaryLinear) and last.input_quantizer is not None
    assert len(binary(changed, with_input=False)) == len(binary(base, with_input=False)) + 2


def check_dorefa() -> None:
    base, changed = twins("dorefa_2bit")
    assert all(type(m.input_quantizer).__name__ == "DoReFa" and m.input_quantizer.k_bit == 2 for m in binary(changed))
    assert not torch.equal(output(base), output(changed))


def check_abc_weight_bases() -> None:
    base, changed = twins("abc_weight_bases")
    layers = binary(changed, with_input=False)
    assert all(isinstance(m.kernel_quantizer, MultiBaseWeights) for m in layers)
    assert n_params(changed) - n_params(base) == 3 * sum(m.weight.shape[0] for m in layers)
    for m in layers:  # three fitted bases approximate the latent weights better than one
        w = m.weight.detach()
        one = torch.sign(w) * w.abs().flatten(1).mean(1).view(-1, *(1,) * (w.ndim - 1))
        assert (m.kernel_quantizer(w) - w).norm() < (one - w).norm()
    assert not torch.allclose(output(base), output(changed))


def check_abc_activation_bases() -> None:
    base, changed = twins("abc_activation_bases")
    layers = binary(changed)
    assert all(isinstance(m.input_quantizer, MultiBaseActivations) for m in layers)
    assert n_params(changed) - n_params(base) == 6 * len(layers)
    assert not torch.allclose(output(base), output(changed))


CHECKS = {
    "ste": lambda: check_binarizer("ste", "ste_sign"),
    "approx_sign": lambda: check_binarizer("approx_sign", "approx_sign"),
    "swish_sign": lambda: check_binarizer("swish_sign", "swish_sign"),
    "ede": lambda: check_binarizer("ede", "ede_sign"),
    "rsign": check_rsign,
    "xnor_weight_scale": lambda: check_weight_scale("xnor_weight_scale", 0),
    "xnor_activation_scale": check_xnor_activation_scale,
    "learned_weight_scale": lambda: check_weight_scale("learned_weight_scale", 4 + 8 + 8 + 8),
    "feature_norm": check_feature_norm,
    "weight_standardization": check_weight_standardization,
    "double_residual": check_double_residual,
    "fp_downsample": check_fp_downsample,
    "prelu": lambda: check_activation("prelu", nn.PReLU, 1),
    "rprelu": lambda: check_activation("rprelu", RPReLU, 3),
    "pool_after_sign": check_pool_after_sign,
    "width_x2": check_width_x2,
    "pad_minus_one": lambda: changes_output("pad_minus_one"),
    "pad_plus_one": lambda: changes_output("pad_plus_one"),
    "binary_first_last": check_binary_first_last,
    "dorefa_2bit": check_dorefa,
    "abc_weight_bases": check_abc_weight_bases,
    "abc_activation_bases": check_abc_activation_bases,
}


def test_every_method_has_a_check():
    assert set(CHECKS) == set(METHODS) - TRAINING_SIDE


@pytest.mark.parametrize("method", sorted(CHECKS))
def test_method_changes_the_network(method):
    CHECKS[method]()


# --- export -------------------------------------------------------------------------


def perturbed(model: nn.Module) -> nn.Module:
    """Parameters the methods add moved off their neutral start: thresholds off zero,
    some learned weight scales negative (which flips the comparison, as γ < 0 does)."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LearnableThreshold):
                m.shift.copy_(torch.randn(m.shift.shape, generator=g))
            if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.weight_scale == "learned":
                m.scale.mul_(torch.where(torch.rand(m.scale.shape, generator=g) < 0.3, -1.0, 1.0))
    return model


def _exportable_cases():
    for name, method in METHODS.items():
        # a training-side method builds the embedded model itself: one family shows it
        families = ("ebnn_cnn",) if name in TRAINING_SIDE else ("ebnn_cnn", "small_cnn", "binarynet_mlp")
        if method.exportable:
            for model in families:
                if method.needs is None or method.needs in model_features(model):
                    yield name, model


@pytest.mark.parametrize("method, model", list(_exportable_cases()))
def test_exportable_method_exports_bit_exactly(method, model):
    torch.manual_seed(0)
    recipe = EMBEDDED.with_(**METHODS[method].changes)
    x = DIGITS.x[:150]
    net = perturbed(calibrated(create_model(model, 10, DIGITS.info.in_shape, recipe, **TINY[model][1]), x))
    if method not in SUMMED:
        check_exact(net, x)
        return
    result = compare(net, export_model(net, x.shape[1:]), x)
    assert result["top1_agreement"] == 1.0 and all(v == 1.0 for v in result["sign_agreement"].values())


# ABC-Net's bases: a layer's product is a float32 sum of binary products (bnnkit.export.residual),
# which agrees with the module in top-1 and in the signs of layers with one set of input signs
SUMMED = {"abc_weight_bases", "abc_activation_bases"}


@pytest.mark.parametrize("method", [m.name for m in METHODS.values() if not m.exportable])
def test_non_exportable_method_is_refused_by_name(method):
    model = "resnet20" if METHODS[method].needs == "residual" else "ebnn_cnn"
    net = build(model, EMBEDDED.with_(**METHODS[method].changes))
    with pytest.raises(BnnkitError, match=rf"repair method\(s\) {method} have no exact integer form"):
        export_model(net, TINY[model][0])
    # without the recipe, the walk itself refuses what it cannot express
    del net.recipe
    with pytest.raises(BnnkitError, match="cannot export layer"):
        export_model(net, TINY[model][0])


def test_rsign_threshold_folds_into_the_integer_threshold():
    net = calibrated(build("binarynet_mlp", EMBEDDED.with_(learnable_threshold=True)), DIGITS.x)
    plain = export_model(net, (1, 8, 8)).ops
    layer = binary(net)[0]
    with torch.no_grad():
        layer.input_quantizer.shift.fill_(3.0)
    shifted = check_exact(net, DIGITS.x).ops
    assert [op.kind for op in plain] == [op.kind for op in shifted]  # no op of its own
    thresholds = [(a, b) for a, b in zip(plain, shifted) if a.kind == "threshold"]
    assert not (thresholds[0][0].params["thresh"] == thresholds[0][1].params["thresh"]).all()


# --- model features -----------------------------------------------------------------


@pytest.mark.parametrize("method", [m.name for m in METHODS.values() if m.needs])
def test_create_model_refuses_methods_the_model_lacks(method):
    needs = METHODS[method].needs
    lacking = [name for name in model_names() if needs not in model_features(name)]
    having = [name for name in model_names() if needs in model_features(name)]
    assert lacking and having
    recipe = BASELINE.with_(**METHODS[method].changes)
    for name in lacking:
        with pytest.raises(BnnkitError, match=rf"^{method} needs a {needs} model; {name} has none$"):
            create_model(name, 10, (3, 32, 32), recipe)


def test_model_features():
    assert model_features("resnet20") == model_features("resnet18") == {"residual"}
    assert model_features("ebnn_cnn") == model_features("small_cnn") == model_features("vgg_small") == {"pooling"}
    assert model_features("binarynet_mlp") == set()


# --- composition ---------------------------------------------------------------------

# Methods that set the same field are alternatives; one of each goes into a combination.
ALTERNATIVES = [
    ("ste", "approx_sign", "swish_sign", "ede"),
    ("rsign", "dorefa_2bit", "abc_activation_bases"),
    ("xnor_weight_scale", "learned_weight_scale"),
    ("prelu", "rprelu"),
    ("pad_minus_one", "pad_plus_one"),
]
ALONE = [m for m in CHECKS if not any(m in group for group in ALTERNATIVES)]


@pytest.mark.parametrize("choice", range(4))
@pytest.mark.parametrize("model", ["binarynet_mlp", "ebnn_cnn", "small_cnn", "vgg_small", "resnet20"])
def test_model_side_methods_compose_on_every_model(model, choice):
    shape, options = {"vgg_small": ((3, 16, 16), {"width_mult": 0.03})}.get(model, TINY.get(model))
    names = [group[choice % len(group)] for group in ALTERNATIVES] + ALONE
    usable = [m for m in names if METHODS[m].needs is None or METHODS[m].needs in model_features(model)]
    torch.manual_seed(0)
    net = create_model(model, 5, shape, apply_methods(BASELINE, usable), **options)
    out = net(torch.rand(3, *shape))
    (out * torch.randn_like(out)).sum().backward()
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
