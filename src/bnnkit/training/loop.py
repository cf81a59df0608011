"""The training loop. One function, read top to bottom, in the spirit of nanoGPT's train.py.

Determinism: the model is initialised from ``seed``; each epoch's batch order and
augmentation come from a generator seeded by ``(seed, epoch)``; the learning rate and the
quantizers' schedules are functions of the global step. A run therefore needs nothing but
the weights and the optimiser state to resume, and 2 epochs straight equal 1 + resume 1
bit for bit on a CPU.

Under ``torchrun`` the same loop runs in every process (see ``distributed.py``): each
trains on its slice of every global batch through DistributedDataParallel, the metrics
are summed over the processes, and rank 0 alone writes the run directory and prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.data import ArrayDataset, load_dataset
from bnnkit.errors import BnnkitError
from bnnkit.files import atomic_write
from bnnkit.nn import bf16, clip_weights_, latent_weights, set_weight_binarization
from bnnkit.nn.batchnorm import link_bfloat16_maps
from bnnkit.progress import progress, write
from bnnkit.quant import scheduled_quantizers
from bnnkit.recipe import Recipe
from bnnkit.training import distributed
from bnnkit.training.allocator import keep_freed_memory
from bnnkit.training.batching import augmentation_for, batches, in_memory_format
from bnnkit.training.checkpoint import load_state, save_state, save_weights
from bnnkit.training.optim import lr_factor, make_optimizer, set_lr
from bnnkit.training.plots import plot_curves
from bnnkit.training.run import (
    CURVES,
    METRICS,
    STATE,
    WEIGHTS,
    ModelArg,
    RunConfig,
    check_continues,
    load_run,
    read_metrics,
    run_directory,
    the_model,
)
from bnnkit.training.threads import choose_threads, use_threads

EVAL_BATCH = 1000
# A convolution net on a CPU evaluates 1.5-2.5x faster in batches of 128 than of 1000 (2
# cores, docs/performance.md): its feature maps then stay in cache. MLPs and GPUs take 1000.
CPU_CONV_EVAL_BATCH = 128
# The validation split does not depend on the run's seed: every run of a review holds out the same images.
VALIDATION_SEED = 0


@dataclass
class TrainOptions:
    """How to run a training, as opposed to what to train (RunConfig)."""

    resume: bool = False
    device: str = "auto"
    progress: bool = True
    limit_train: int | None = None  # first N training images only: quick checks and tests
    limit_test: int | None = None
    # Hold out this many training images (``validation_split``), evaluated after every epoch as val_acc.
    validation: int | None = None
    # Intra-op threads of this process. None: $OMP_NUM_THREADS, else the count a resumed run
    # recorded, else the free cores split between `processes` trainings (training.threads).
    threads: int | None = None
    processes: int | None = None  # None: the processes of this torchrun job on this node, else 1
    # Precision of the binary layers' gradients (bnnkit.nn.bf16): "float32" or "bfloat16". None: the one a
    # resumed run recorded, else bfloat16 on a CPU that computes it natively (0.6x float32's backward), else float32.
    grad_precision: str | None = None
    # Printed on stderr ("warning: ...") once the run is set up, just before it trains: a
    # word about the run (the CLI's that it will not export) that an earlier error makes moot.
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("limit_train", "limit_test", "validation"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise BnnkitError(f"{name} must be an integer >= 1 (or None for all images), got {value!r}")
        if self.grad_precision not in (None, *bf16.GRADIENT_PRECISIONS):
            raise BnnkitError(
                f"grad_precision must be one of {', '.join(bf16.GRADIENT_PRECISIONS)}, got {self.grad_precision!r}"
            )

    @property
    def limits(self) -> dict[str, int | None]:
        return {"limit_train": self.limit_train, "limit_test": self.limit_test, "validation": self.validation}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BnnkitError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BnnkitError(f"device {name!r} requested but no CUDA GPU is available")
    return device


def _autocast(device: torch.device):
    # bf16 autocast on GPUs only: CPU float32 keeps runs bit-reproducible.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last for a network with convolutions: PyTorch's CPU convolutions, max-pools
    and BatchNorms run 2-6x faster on it than on NCHW (docs/performance.md), GPUs' too."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if has_conv else torch.contiguous_format


def _outputs(model: nn.Module, ds: ArrayDataset, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, labels) of ``ds`` in order, batch by batch, in the batch size and layout that
    evaluate fastest; call under ``torch.inference_mode``."""
    model.eval()
    layout = memory_format(model)
    batch = CPU_CONV_EVAL_BATCH if device.type == "cpu" and layout == torch.channels_last else EVAL_BATCH
    for x, y in batches(ds, batch, shuffle=False):
        with _autocast(device):
            logits = model(in_memory_format(x.to(device), layout))
        yield logits, y.to(device)


@torch.inference_mode()
def _evaluation_sums(model: nn.Module, ds: ArrayDataset, device: torch.device) -> tuple[float, int]:
    # Summed as tensors (float64, as Python would) and read once: no wait on the device per batch.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for logits, y in _outputs(model, ds, device):
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item(), int(correct.item())


def evaluate(model: nn.Module, ds: ArrayDataset, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (a fraction) over the whole dataset."""
    loss_sum, correct = _evaluation_sums(model, ds, torch.device(device))
    n = len(ds.y)
    return loss_sum / n, correct / n


@torch.inference_mode()
def predict_labels(model: nn.Module, ds: ArrayDataset, device: torch.device | str = "cpu") -> np.ndarray:
    """Top-1 labels of every image of ``ds``, in order. Puts the model's weights in the layout
    its evaluation is fastest in: a model loaded from its files is NCHW, and small_cnn in NCHW
    batches of 500 took 1.5-1.7x as long."""
    model.to(memory_format=memory_format(model))  # type: ignore[call-overload]  # the stubs omit memory_format
    labels = [logits.argmax(1).cpu() for logits, _ in _outputs(model, ds, torch.device(device))]
    return torch.cat([torch.empty(0, dtype=torch.int64), *labels]).numpy()


def _subset(ds: ArrayDataset, limit: int | None) -> ArrayDataset:
    return ds if limit is None else ds.part(slice(0, limit))


def validation_split(n: int, size: int, seed: int = VALIDATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices into a training set of ``n`` images: the validation
    images are the last ``size`` of ``np.random.default_rng(seed).permutation(n)``; both
    parts are returned in file order. Carved before ``limit_train``, so a shortened run
    holds out the same images as a full one."""
    if not 0 < size < n:
        raise BnnkitError(f"validation must be 1..{n - 1} images (the training set has {n}), got {size}")
    held = np.sort(np.random.default_rng(seed).permutation(n)[n - size :])
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep), held


def _take(ds: ArrayDataset, index: np.ndarray) -> ArrayDataset:
    return ArrayDataset(x=ds.x[index], y=ds.y[index], info=ds.info)


def _shard(ds: ArrayDataset) -> ArrayDataset:
    return ArrayDataset(x=distributed.shard(ds.x), y=distributed.shard(ds.y), info=ds.info)


def full_precision_recipe(recipe: Recipe, name: str) -> Recipe:
    """``recipe`` with every quantizer an identity and every binarizer-replacing field off: the
    full-precision twin of the same architecture and training (distillation's teacher, and the
    float model that bnnkit.export.int8 quantizes to int8)."""
    return recipe.with_(
        name=name,
        input_quantizer="identity",
        kernel_quantizer="identity",
        learnable_threshold=False,
        activation_bases=1,
        weight_bases=1,
        activation_bits=1,
        distill=False,
        two_stage=False,
        optimizer="adam" if recipe.optimizer == "bop" else recipe.optimizer,
    )


def teacher_config(config: RunConfig) -> RunConfig:
    """The full-precision twin that distillation learns from: the same architecture and
    training, every quantizer an identity and every binarizer-replacing field off."""
    recipe = full_precision_recipe(config.recipe, f"{config.recipe.name}-teacher")
    return dataclasses.replace(config, recipe=recipe)


def distribution_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """ReActNet's distribution loss: KL(teacher ‖ student) of the softmax outputs, the
    only loss term (no cross-entropy with the labels)."""
    return F.kl_div(
        F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), log_target=True, reduction="batchmean"
    )


def train(
    config: RunConfig, out: str | Path, options: TrainOptions | None = None, model: ModelArg | None = None
) -> dict:
    """Train ``config`` into directory ``out``; returns the last epoch's metrics.

    ``model`` trains a model of your own instead of the registry's ``config.model``: an
    ``nn.Module`` (trained in place) or a function of no arguments that builds one (called
    after seeding, so its initialisation follows ``config.seed``). The run records its
    class; ``--resume`` and `load_run` need the model given again.

    Anything wrong with the inputs (data, model, options, recipe, optimiser) is an error
    before ``out`` is touched; a run that fails before its first epoch is on disk leaves
    nothing behind; a second process training into ``out`` meanwhile is an error."""
    with contextlib.ExitStack() as held:  # the run directory's lock, until the last epoch is written
        return _train(config, Path(out), options or TrainOptions(), model, held)


def _train(
    config: RunConfig, out: Path, options: TrainOptions, model: ModelArg | None, held: contextlib.ExitStack
) -> dict:
    device = distributed.init(pick_device(options.device))
    main = distributed.is_main()  # the one process that writes files and prints

    # --- data, model, optimiser: every input checked before the run directory is touched --
    train_ds = load_dataset(config.dataset, "train", config.data_dir)
    val_ds, val_digest = None, None
    if options.validation is not None:
        keep, held_out = validation_split(len(train_ds.y), options.validation)
        train_ds, val_ds = _take(train_ds, keep), _take(train_ds, held_out)
        val_digest = hashlib.sha256(held_out.astype("<i8").tobytes()).hexdigest()
    train_ds = _subset(train_ds, options.limit_train)
    test_ds = _subset(load_dataset(config.dataset, "test", config.data_dir), options.limit_test)
    recipe = config.recipe
    batch_size = min(recipe.batch_size, len(train_ds.y))
    distributed.check_batch_size(batch_size)
    steps_per_epoch = len(train_ds.y) // batch_size
    total_steps = steps_per_epoch * config.epochs
    augment = augmentation_for(config.dataset) != "none"

    torch.manual_seed(config.seed)
    config, model = the_model(config, model, out)
    layout = memory_format(model)
    model.to(device, memory_format=layout)  # type: ignore[call-overload]  # in place; the stubs omit memory_format
    link_bfloat16_maps(model)  # the same bits, fewer passes over the maps (bnnkit.nn.bf16)
    optimizer = make_optimizer(model, recipe)
    if recipe.distill and config.user_model:
        raise BnnkitError(
            f"distillation trains a full-precision twin of a registry model; {config.model_class} is your own"
        )

    # --- the run directory: fresh, or one to continue ---------------------------------
    held.enter_context(run_directory(out, writer=main))
    start_epoch, history, state = 0, [], None
    if (out / STATE).exists():
        if not options.resume:
            raise BnnkitError(
                f"{out} already holds a training run: pass --resume to continue it, or choose another --out"
            )
        check_continues(out, config, options.limits)
        state = load_state(out / STATE)
        start_epoch = int(state["epoch"])
        history = [m for m in read_metrics(out) if m["epoch"] <= start_epoch]
    if main:
        config.save(out, options.limits)
        for warning in options.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    teacher = None
    if recipe.distill:  # trained first, into its own resumable run directory
        train(teacher_config(config), out / "teacher", dataclasses.replace(options, resume=True, warnings=()))
        teacher = load_run(out / "teacher")[0].to(device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    net = distributed.wrap(model, device)  # trains through DDP; `model` is evaluated and saved
    threads = choose_threads(options.threads, state.get("threads") if state else None, options.processes)
    use_threads(threads)
    keep_freed_memory()
    precision = _grad_precision(options.grad_precision, state, device)
    held.enter_context(bf16.gradient_precision(precision))
    latent = latent_weights(model) if recipe.latent_clip > 0 else []
    scheduled = scheduled_quantizers(model)

    # --- the loop ----------------------------------------------------------------------
    for epoch in range(start_epoch, config.epochs):
        net.train()
        # Two-stage training: real-valued weights in the first half, binary afterwards.
        set_weight_binarization(model, not (recipe.two_stage and epoch < config.epochs // 2))
        t0 = time.perf_counter()
        show = options.progress and main
        # Sums stay tensors, read once an epoch (and by the progress bar every 10 steps):
        # reading them every step would make the host wait for the device.
        seen = 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        bar = progress(
            batches(train_ds, batch_size, shuffle=True, seed=config.seed, epoch=epoch, augment=augment, drop_last=True),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            enabled=options.progress and main,
            unit="batch",
        )
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            set_lr(optimizer, recipe.lr, lr_factor(recipe, step, steps_per_epoch, config.epochs))
            for quantizer in scheduled:
                quantizer.set_progress(step / max(1, total_steps - 1))
            x, y = distributed.shard(x), distributed.shard(y)
            x, y = in_memory_format(x.to(device, non_blocking=True), layout), y.to(device, non_blocking=True)
            with _autocast(device):
                logits = net(x)
                if teacher is None:
                    loss = F.cross_entropy(logits.float(), y)
                else:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = distribution_loss(logits.float(), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if latent:
                clip_weights_(latent, recipe.latent_clip)

            seen += len(y)
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            if show and i % 10 == 0:
                rate = seen / (time.perf_counter() - t0)
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:.0f}"
                )
        train_loss, train_correct, train_seen = distributed.sum_over_ranks(loss_sum.item(), int(correct.item()), seen)
        if not math.isfinite(train_loss):
            raise BnnkitError(f"training diverged in epoch {epoch + 1} (loss is {train_loss}); lower the learning rate")
        train_time = time.perf_counter() - t0
        distributed.broadcast_buffers(model)
        distributed.check_in_sync(model)
        tested = _tests_after(epoch + 1, config.epochs, validated=val_ds is not None)
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss / train_seen,
            "train_acc": train_correct / train_seen,
            **(_split_metrics("test", model, test_ds, device) if tested else {}),
            **(_split_metrics("val", model, val_ds, device) if val_ds is not None else {}),
            "epoch_seconds": train_time,
            "images_per_second": train_seen / train_time,
            "threads": threads,
            "grad_precision": precision,
        }
        history.append(record)

        # The training state is written last: it is the commit point. A resume trusts its
        # epoch, retrains anything after it and drops metrics lines beyond it.
        if main:
            save_weights(out / WEIGHTS, model, metadata={"epoch": str(epoch + 1)})
            atomic_write(out / METRICS, "".join(json.dumps(m) + "\n" for m in history))
            save_state(
                out / STATE,
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "threads": threads,
                    "grad_precision": precision,
                },
            )
        distributed.barrier()  # no rank goes on (or returns) before the epoch is on disk
        if options.progress and main:
            evaluated = "".join(
                f" | {split} loss {record[f'{split}_loss']:.4f} acc {record[f'{split}_acc']:.4f}"
                for split in ("val", "test")
                if f"{split}_acc" in record
            )
            write(
                f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}"
                f"{evaluated} | {record['images_per_second']:.0f} img/s"
            )

    if history and main:
        plot_curves(history, out / CURVES, title=f"{config.model} on {config.dataset} ({recipe.name})")
    final = history[-1] if history else {}
    best = max((m["test_acc"] for m in history if "test_acc" in m), default=float("nan"))
    validation = {} if val_digest is None else {"validation_sha256": val_digest}
    return {**final, "best_test_acc": best, "epochs": config.epochs, "out": str(out), **validation}


def _grad_precision(asked: str | None, state: dict | None, device: torch.device) -> str:
    if asked is not None:
        return asked
    if state is not None:  # a resume continues in its recorded precision (runs before the choice: float32)
        return state.get("grad_precision", "float32")
    return "bfloat16" if device.type == "cpu" and bf16.cpu_has_fast_bf16() else "float32"


def _tests_after(epoch: int, epochs: int, validated: bool) -> bool:
    """Whether the test set is evaluated after ``epoch`` (1-based). With a validation split
    every choice is read on it, so the test set is read once, for the final model: evaluating
    it every epoch was 6% of a review run's time, spent on numbers nobody may look at.
    Evaluation changes no training state, so a run is the same bits either way."""
    return not validated or epoch == epochs


def _split_metrics(split: str, model: nn.Module, ds: ArrayDataset, device: torch.device) -> dict[str, float]:
    """``{split}_loss`` and ``{split}_acc`` over all of ``ds``: each rank evaluates every N-th
    image, and the sums over the ranks are the whole set's."""
    loss, correct = distributed.sum_over_ranks(*_evaluation_sums(model, _shard(ds), device))
    return {f"{split}_loss": loss / len(ds.y), f"{split}_acc": correct / len(ds.y)}
