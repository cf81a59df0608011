"""Several training processes under ``torchrun``: the few process-group helpers the loop uses.

``torchrun --nproc_per_node=N -m bnnkit train ...`` starts N copies of the same command;
torchrun tells each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT). Without those variables every helper here is the identity or a
no-op, so the single-process path runs exactly as before.

How the work is split: every rank draws the same seeded global batch and keeps its
1/N slice of it, DistributedDataParallel averages the gradients, so one step sees the
same images as one process with the same ``--batch-size``. BatchNorm's batch statistics
are per process (over the slice); its running statistics are rank 0's, which DDP
broadcasts before each forward pass. Rank 0 alone writes files and prints.
"""

from __future__ import annotations

import atexit
import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bnnkit.errors import BnnkitError


def launched() -> bool:
    """True in a process started by torchrun (or anything that sets its variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun (once per process, so a nested
    ``train`` — distillation's teacher — reuses it); returns the device this rank uses:
    its own GPU under nccl, the CPU under gloo."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)  # an error path; a finished command calls shutdown()
    return device


def shutdown() -> None:
    """Leave the process group together, once the command's work is done. Leaving it
    while a peer still works, or at interpreter exit with gloo's threads still holding
    tensors, can abort the process (SIGABRT, "terminate called without an active
    exception")."""
    if active():
        dist.barrier()
        _destroy()


def _destroy() -> None:
    if active():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel when there are several ranks, else itself.
    Train through the wrapper; evaluate, save and load the model itself."""
    if not active():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_batch_size(batch_size: int) -> None:
    if batch_size % world_size():
        raise BnnkitError(f"batch size {batch_size} does not split evenly over {world_size()} processes")


def shard(items):
    """This rank's share of a batch or a dataset array (every N-th item from its rank on)."""
    return items[rank() :: world_size()] if active() else items


def barrier() -> None:
    if active():
        dist.barrier()


def sum_over_ranks(*values: float) -> list[float]:
    """Each value summed over all ranks (in float64), e.g. a loss sum and an image count."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: after the last
    training step each rank has updated its own copy with its own slice."""
    if active():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def check_in_sync(model: nn.Module) -> None:
    """Raise unless every rank holds bit-identical parameters and buffers: DDP averages
    gradients, but anything a rank does on its own (the Bop flips, latent-weight clipping)
    must give the same result everywhere, and this is where it would show."""
    if not active():
        return
    digest = hashlib.sha256()
    for t in model.state_dict().values():
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    mine = int.from_bytes(digest.digest()[:7], "little")  # fits an int64 exactly
    lo = torch.tensor([mine], dtype=torch.int64, device=_collective_device())
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if lo.item() != hi.item():
        raise BnnkitError(
            f"the weights of the {world_size()} training processes differ (rank {rank()}); please report this"
        )


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
