"""``bnnkit review --measure TARGET``: each finished run's graph built for a device and run there.

Done in the review's driver process after the training (never inside a worker), one run at a
time: export the run's model, cross-compile its graph, run the first ``IMAGES`` test images
in the emulator, and store the device's report (flash, RAM and its parts, instructions per
inference, the datasheet energy estimate) with ``bnnkit.cost.device``'s estimate of the same
graph's flash and RAM (``estimated_flash_bytes``, ``estimated_ram_bytes``), which the report
compares with the measured figures. A run whose
recipe has no integer graph stores the exporter's one-line refusal instead. Only runs without
a measurement on that target are measured, so a rerun measures what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bnnkit.cost.device import device_estimate
from bnnkit.errors import BnnkitError
from bnnkit.export import export_run
from bnnkit.progress import Progress
from bnnkit.review.store import Store
from bnnkit.runtime.evaluate import test_images
from bnnkit.runtime.registry import get_runtime

IMAGES = 5  # instructions are the mean over these; sizes and stack do not depend on the image


def check_target(target: str) -> str | None:
    """None when ``target`` can be measured on here, else why not (the cross toolchain or QEMU
    missing); an unknown target name is an error."""
    runtime = get_runtime(target, device=True)
    try:
        runtime.require()
    except BnnkitError as exc:
        return str(exc)
    return None


def measure_run(directory: str | Path, target: str, images: int = IMAGES) -> dict[str, Any]:
    """The device report of the graph of the run in ``directory``, with the estimate of that graph. Raises ``Refused`` when the
    run's model does not export, ``BnnkitError`` when the build or the emulator fails."""
    try:
        graph, _, config = export_run(directory)
    except BnnkitError as exc:
        raise Refused(_first_line(exc)) from None
    _, x, _ = test_images(graph, None, images, config.data_dir)
    with get_runtime(target, device=True).prepare(graph) as device:
        report = device.predict(x).measured()
    estimate = device_estimate(graph)
    return {**report, "estimated_flash_bytes": estimate["flash_bytes"], "estimated_ram_bytes": estimate["ram_bytes"]}


def _first_line(exc: Exception) -> str:
    return str(exc).partition("\n")[0]


class Refused(BnnkitError):
    """The run's recipe has no integer graph: one line naming the layer and why."""


def measure_missing(
    store: Store, runs: Iterable[tuple[str, Path]], target: str, progress: bool = True
) -> dict[str, int]:
    """Measure the runs ``(key, directory)`` that are done and not yet measured on ``target``.
    A refusal is final for that target; a failed build or emulation is recorded without the
    target, so the next review tries it again."""
    directories = dict(runs)
    todo = store.unmeasured(directories, target)
    counts = {"measured": 0, "refused": 0, "failed": 0}
    with Progress(total=len(todo), enabled=progress, unit="run", desc=f"measure {target}") as bar:
        for key in todo:
            try:
                store.record_measurement(key, target, measure_run(directories[key], target), None)
                counts["measured"] += 1
            except Refused as exc:
                store.record_measurement(key, target, None, str(exc))
                counts["refused"] += 1
            except BnnkitError as exc:
                store.record_measurement(key, None, None, "measuring failed: " + _first_line(exc))
                counts["failed"] += 1
            bar.update()
    return counts
