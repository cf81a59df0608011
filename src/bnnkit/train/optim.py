"""Optimisers and learning-rate schedules named by a recipe."""

from __future__ import annotations

import math

import torch
from torch import nn

from bnnkit.nn import binary_layers
from bnnkit.recipe import Recipe


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Latent binary weights and BN/bias parameters get no weight decay.

    Decay on a latent weight only drags it towards the sign flip; it regularises nothing
    the binary network computes with.
    """
    latent = {id(m.weight) for m in binary_layers(model)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 and id(p) not in latent else no_decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}]
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)
    # Adam with decoupled decay: the decay rate does not interact with Adam's scaling.
    return torch.optim.AdamW(groups, lr=recipe.lr)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_epochs``, then cosine to zero, step decay (÷10 at 50% and
    75% of training) or constant.
    """
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, round(recipe.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.schedule == "step":
        return 0.1 ** sum(progress >= m for m in (0.5, 0.75))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor
