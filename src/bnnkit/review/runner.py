"""Running a grid: every run not yet done, on this machine or on a Ray cluster.

Each run trains into ``DIR/runs/<key[:16]>/`` with ``resume=True``. The training loop
commits after every epoch, so a run killed at any instant (kill -9 included) continues at
its last finished epoch on the next ``bnnkit review``, and a run whose training finished
but whose row was never written costs only a re-read of its metrics. Rows marked
'running' at start-up belong to a review that died (a lock file keeps two reviews off
one DIR), so they are simply run again.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import socket
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from bnnkit.cost import model_costs
from bnnkit.data import get_info
from bnnkit.errors import BnnkitError
from bnnkit.files import exclusive, make_dir
from bnnkit.progress import Progress
from bnnkit.review.grid import STAGES, Grid, RunSpec, half_widths
from bnnkit.review.measure import check_target, measure_missing
from bnnkit.review.store import Store
from bnnkit.training import TrainOptions, read_metrics, train
from bnnkit.training.loop import VALIDATION_SEED
from bnnkit.training.threads import check_threads

EXECUTORS = ("local", "ray")

Outcome = dict[str, Any]


def run_dir(out: str | Path, spec: RunSpec) -> Path:
    return Path(out) / "runs" / spec.key[:16]


def execute(spec: RunSpec, out: str, threads: int | None = None, processes: int = 1) -> Outcome:
    """Train one run (continuing its directory) and measure its costs. Never raises for a
    failed run: one bad method must not stop a grid, so the error is the outcome.

    ``threads=None``: the count the run recorded, else the free cores split between the
    ``processes`` runs that train at the same time (``TrainOptions``)."""
    host = socket.gethostname()
    directory = run_dir(out, spec)
    try:
        options = TrainOptions(
            resume=True,
            progress=False,
            limit_train=spec.limit_train,
            limit_test=spec.limit_test,
            validation=spec.validation,
            threads=threads,
            processes=processes,
        )
        result = train(spec.config, directory, options)
        costs = model_costs(spec.config.build_model(), get_info(spec.config.dataset).in_shape)
    except Exception as exc:
        detail = "" if isinstance(exc, BnnkitError) else "\n" + traceback.format_exc()
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}{detail}", "host": host}
    metrics = read_metrics(directory)
    return {
        "status": "done",
        "top1_final": result["test_acc"],
        "top1_best": result["best_test_acc"],
        **_validation(metrics),
        "validation_sha256": result.get("validation_sha256"),
        "train_seconds": sum(m["epoch_seconds"] for m in metrics),
        "costs": costs,
        "host": host,
    }


def _validation(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    curve = [m["val_acc"] for m in metrics if "val_acc" in m]
    if len(curve) != len(metrics) or not curve:
        return {}
    best = max(range(len(curve)), key=curve.__getitem__)  # the first of equal bests
    return {"val_final": curve[-1], "val_best": curve[best], "val_best_epoch": best + 1, "val_curve": curve}


def _bounded(
    specs: Iterable[RunSpec],
    width: int,
    on_start: Callable[[RunSpec], None],
    submit: Callable[[RunSpec], Any],
    wait_one: Callable[[list], tuple[Any, Outcome]],
) -> Iterator[tuple[RunSpec, Outcome]]:
    """Keep ``width`` runs in flight and yield each as it finishes. Submitting no more
    than can start keeps the store's 'running' rows the ones really running."""
    queue = iter(specs)
    running: dict[Any, RunSpec] = {}  # submit's handle -> its run
    while True:
        for spec in islice(queue, width - len(running)):
            on_start(spec)
            running[submit(spec)] = spec
        if not running:
            return
        handle, outcome = wait_one(list(running))
        yield running.pop(handle), outcome


def run_local(
    specs: list[RunSpec], out: Path, workers: int, on_start, threads: int | None = None
) -> Iterator[tuple[RunSpec, Outcome]]:
    if workers == 1:
        for spec in specs:
            on_start(spec)
            yield spec, execute(spec, str(out), threads)
        return
    # spawn, not fork: the driver has already used PyTorch's thread pools (building every
    # model of the grid), which a forked child may inherit in a locked state.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:

        def wait_one(futures):
            done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            future = next(iter(done))
            return future, future.result()

        # The workers split the cores: N workers each using every core would oversubscribe them.
        yield from _bounded(
            specs, workers, on_start, lambda s: pool.submit(execute, s, str(out), threads, workers), wait_one
        )


def run_ray(
    specs: list[RunSpec],
    out: Path,
    workers: int,
    on_start,
    address: str | None = None,
    gpus_per_run: float = 0,
    threads: int | None = None,
) -> Iterator[tuple[RunSpec, Outcome]]:
    """Runs as Ray tasks of ``threads`` CPUs (default 1), at most ``workers`` at a time: on
    a local cluster of ``workers × threads`` CPUs by default, or on the cluster at ``address``.

    Tasks return their outcome and the driver writes the store: SQLite's locking is not
    to be trusted across hosts on a network file system, and a single writer needs none.
    The run directories are written by the tasks, so on a multi-host cluster DIR must be
    on a file system every node mounts at the same path (for resume and checkpoints)."""
    try:
        import ray
    except ImportError:
        raise BnnkitError('the Ray executor needs Ray: pip install "bnnkit[ray]"') from None

    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ray.init(
            num_cpus=workers * (threads or 1), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
        )
    try:
        task = ray.remote(execute).options(num_cpus=threads or 1, num_gpus=gpus_per_run, max_retries=0)

        def wait_one(refs):
            (ref,), _ = ray.wait(refs, num_returns=1)
            try:
                return ref, ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died (out of memory, node lost)
                return ref, {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "host": None}

        # As many threads as the CPUs the task asked Ray for: more would oversubscribe the node.
        # ray's overloads of remote() type a function with defaults by its one-argument form (call-arg)
        yield from _bounded(specs, workers, on_start, lambda s: task.remote(s, str(out), threads or 1), wait_one)  # type: ignore[call-arg]
    finally:
        ray.shutdown()


def run_review(
    grid: Grid,
    out: str | Path,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    gpus_per_run: float = 0,
    retry_failed: bool = False,
    progress: bool = True,
    threads: int | None = None,
    stage: str = "screen",
    measure: str | None = None,
) -> dict[str, Any]:
    """Run every run of ``grid`` that is not done yet (and the failed ones with
    ``retry_failed``) into ``out``; returns counts over the grid's runs. ``threads``: per
    run (default: local, the free cores split between the workers; Ray, 1 per task).

    ``stage``: "screen" runs the grid; "confirm" runs the confirmation chosen from the
    finished screen (``Grid.confirmation``); "all" runs both, one after the other.

    ``measure`` (or the grid's ``measure`` key): a device runtime (e.g. "cortex-m4") on which
    each finished run's graph is then measured (``bnnkit.review.measure``), in this process;
    without its toolchain the measuring is skipped and the result says why."""
    if executor not in EXECUTORS:
        raise BnnkitError(f"unknown executor {executor!r}; use {' or '.join(EXECUTORS)}")
    if stage not in (*STAGES, "all"):
        raise BnnkitError(f"unknown stage {stage!r}; use screen, confirm or all")
    if workers < 1:
        raise BnnkitError(f"--workers must be >= 1, got {workers}")
    if stage != "screen" and "confirm" not in grid.raw:
        raise BnnkitError(f"{grid.source}: no [review.confirm] table: nothing to confirm")
    check_threads(threads)
    target = measure or grid.raw.get("measure")
    try:
        unavailable = check_target(target) if target else None
    except BnnkitError as exc:
        raise BnnkitError(f"{'--measure' if measure else f'{grid.source}: measure'}: {exc}") from None
    out = make_dir(out, "review directory")

    def run(store: Store, runs: Grid) -> dict[str, Any]:
        counts = _run_grid(store, runs, out, executor, workers, address, gpus_per_run, retry_failed, progress, threads)
        if target and unavailable:
            counts["measure"] = {"target": target, "skipped": unavailable}
        elif target:
            done = [(s.key, run_dir(out, s)) for s in runs.runs]
            counts["measure"] = {"target": target, **measure_missing(store, done, target, progress)}
        return counts

    # Held for the whole review: a second one on DIR would take the first one's 'running'
    # rows for leftovers of a dead process.
    with exclusive(out, "review directory"), Store(out) as store:
        result: dict[str, Any] = {"stage": stage}
        if stage in ("screen", "all"):
            result |= run(store, grid)
        if stage in ("confirm", "all"):
            screen = _finished_screen(store, grid)
            confirmation, ranking = grid.confirmation(screen)
            result["screen_ranking"] = ranking
            result["confirm"] = _confirm(store, confirmation, run)
            if stage == "confirm":
                result |= result.pop("confirm")
    return result


def _confirm(store: Store, confirmation: Grid, run: Callable[[Store, Grid], dict[str, Any]]) -> dict[str, Any]:
    """Run the confirmation, then a seed more at a time where its target half-width asks
    (``Grid.with_more_seeds``); the counts are over every run it ended with."""
    ran = 0
    while True:
        counts = run(store, confirmation)
        ran += counts["ran"]
        wider = confirmation.with_more_seeds(store.rows())
        if wider is None:
            break
        confirmation = wider
    seeds = dict(Counter(spec.label for spec in confirmation.runs))
    return counts | {"ran": ran, "seeds": seeds, "half_width_val": half_widths(confirmation, store.rows())}


def _finished_screen(store: Store, grid: Grid) -> list[dict[str, Any]]:
    rows = {r["key"]: r for r in store.rows()}
    screen = [rows.get(s.key) for s in grid.runs]
    unfinished = sum(r is None or r["status"] != "done" for r in screen)
    if unfinished:
        raise BnnkitError(
            f"{grid.source}: {unfinished} of the screen's {len(screen)} runs are not done; "
            "run --stage screen first (--retry-failed for failed ones)"
        )
    missing = sum(r["val_final"] is None for r in screen)  # type: ignore[index]
    if missing:
        raise BnnkitError(f"{grid.source}: {missing} screen runs have no validation accuracy to rank them by")
    return screen  # type: ignore[return-value]


def _run_grid(
    store: Store,
    grid: Grid,
    out: Path,
    executor: str,
    workers: int,
    address: str | None,
    gpus_per_run: float,
    retry_failed: bool,
    progress: bool,
    threads: int | None,
) -> dict[str, Any]:
    host = socket.gethostname()
    store.add(grid.runs)
    status = store.statuses()
    again = ("pending", "running", "failed") if retry_failed else ("pending", "running")
    # Seed by seed: a review stopped part way (the runs span sittings) then holds whole paired
    # seeds, every entry and the baseline with the same seed, which the statistics can use.
    todo = sorted((s for s in grid.runs if status[s.key] in again), key=lambda s: s.config.seed)
    bar = Progress(
        total=len(grid.runs), initial=len(grid.runs) - len(todo), enabled=progress, unit="run", desc="review"
    )
    if executor == "ray":
        finished = run_ray(todo, out, workers, lambda s: store.start(s.key, host), address, gpus_per_run, threads)
    else:
        finished = run_local(todo, out, workers, lambda s: store.start(s.key, host), threads)
    with bar:
        for spec, outcome in finished:
            store.finish(spec.key, _check_split(store, spec, outcome))
            result = f"{outcome['top1_final']:.4f}" if outcome["status"] == "done" else "failed"
            bar.set_postfix_str(f"{spec.label} seed {spec.config.seed}: {result}")
            bar.update()
    status = store.statuses()
    keys = [s.key for s in grid.runs]
    counts = {name: sum(status[k] == name for k in keys) for name in ("done", "failed")}
    return {
        "runs": len(keys),
        **counts,
        "ran": len(todo),
        "skipped": [{"label": label, "reason": reason} for label, reason in grid.skipped],
        "store": str(store.path),
        "failed_runs": [{"label": s.label, "seed": s.config.seed} for s in grid.runs if status[s.key] == "failed"],
    }


def _check_split(store: Store, spec: RunSpec, outcome: Outcome) -> Outcome:
    """The outcome, or a failure where the run held out other images than the store's
    earlier runs of the same size (a changed dataset file, or another NumPy permutation)."""
    digest = outcome.get("validation_sha256")
    if outcome["status"] != "done" or digest is None:
        return outcome
    key = f"validation/{spec.config.dataset}/{spec.validation}"
    recorded = store.meta(key)
    split: dict[str, object] = {
        "rule": f"last {spec.validation} images of numpy default_rng({VALIDATION_SEED}).permutation(n_train)",
        "images": spec.validation,
        "sha256": digest,
    }
    if recorded is None:
        store.set_meta(key, split)
    elif recorded["sha256"] != digest:
        return {
            "status": "failed",
            "error": f"BnnkitError: validation split differs from the store's ({key}: {digest[:12]} vs "
            f"{recorded['sha256'][:12]}): the training data changed",
            "host": outcome.get("host"),
        }
    return outcome
