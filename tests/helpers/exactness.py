"""Exporter checks shared by the export tests: BN statistics that make thresholds flip, and bit-exactness."""

import numpy as np
import torch
from torch import nn

from bnnkit.analysis.agreement import compare
from bnnkit.data import load_dataset
from bnnkit.export import export_model
from bnnkit.recipe import RECIPES

EMBEDDED = RECIPES["embedded"]
DIGITS = load_dataset("digits", "test")


def calibrated(model: nn.Module, x: np.ndarray, seed: int = 0) -> nn.Module:
    """Running statistics from real inputs, then random affine BN parameters including
    negative and zero γ, so thresholds flip and channels go constant."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x).float() / 255)
        for bn in bns:
            c = bn.num_features
            bn.weight.copy_(torch.randn(c, generator=g))
            bn.weight[torch.rand(c, generator=g) < 0.1] = 0.0
            bn.bias.copy_(torch.randn(c, generator=g) * 0.5)
    return model.eval()


def check_exact(model, x):
    graph = export_model(model, x.shape[1:])
    result = compare(model, graph, x)
    assert result["sign_agreement"] and all(v == 1.0 for v in result["sign_agreement"].values()), result[
        "sign_agreement"
    ]
    assert result["top1_agreement"] == 1.0
    return graph
