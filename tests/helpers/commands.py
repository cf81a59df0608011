"""Command lines the tests run: `bnnkit train` on the digits, in this process or a child, alone
or under torchrun."""

import sys

# `python -m torch.distributed.run` with 2 processes on this machine, each running `python -m bnnkit`.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bnnkit"]


def train_digits(model: str, *args, **options) -> list[str]:
    """``train --model MODEL --dataset digits``, an ``--option KEY=VALUE`` per keyword, then ``args``, as strings."""
    argv = ["train", "--model", model, "--dataset", "digits"]
    for key, value in options.items():
        argv += ["--option", f"{key}={value}"]
    return [*argv, *map(str, args)]
