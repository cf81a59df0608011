"""A few training steps of a model on random 28×28 images, for tests that compare two ways of
running the same steps bit for bit."""

import torch
import torch.nn.functional as F

from bnnkit.nn import clip_weights_, latent_weights
from bnnkit.recipe import load_recipe
from bnnkit.training.batching import in_memory_format
from bnnkit.training.optim import make_optimizer


def trained_state(net: torch.nn.Module, layout: torch.memory_format, steps: int = 3) -> dict[str, torch.Tensor]:
    """``net``'s state_dict after ``steps`` steps of the ``embedded`` recipe's optimiser and latent
    clipping on batches of 16 random images (the same batches on every call)."""
    optimizer, latent = make_optimizer(net, load_recipe("embedded")), latent_weights(net)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = in_memory_format(torch.rand(16, 1, 28, 28, generator=gen), layout)  # as the training loop lays it out
        y = torch.randint(0, 10, (16,), generator=gen)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clip_weights_(latent, 1.0)
    return net.state_dict()
