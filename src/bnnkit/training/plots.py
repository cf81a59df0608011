"""Figures as PNG: training curves, and the helpers the review's and fit's plots share
(labels that do not overprint, an atomic save)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from bnnkit.files import atomic_write

DOT = 4.0  # half a marker, in pixels
LABEL_PADDING = 1.15  # a label's box in text heights: room for descenders and a later tight_layout


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend. Imported on demand: matplotlib costs
    a second of start-up that most commands never need."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(history: list[dict], title: str = ""):
    """Loss and accuracy per epoch: train, validation where held out, and test at the epochs
    it was read (every epoch, or with a validation split the last one only)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_acc) = pyplot().subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("val", ":"), ("test", "--")):
        points = [m for m in history if f"{split}_acc" in m]
        if points:
            label = {"val": "validation"}.get(split, split)
            at = [m["epoch"] for m in points]
            ax_loss.plot(at, [m[f"{split}_loss"] for m in points], style, marker="o", label=label)
            ax_acc.plot(at, [100 * m[f"{split}_acc"] for m in points], style, marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (nats per image)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        # Epochs are whole: no 1.5 tick, and a one-epoch run is not drawn on a 0.945..1.05 axis.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    save_figure(curves_figure(history, title), path, dpi=100)


def label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: float = 7) -> list:
    """Name every point without overprinting, working in pixels. A stack of points at one
    x (methods that cost the same) gets one column of labels beside it, in the points'
    order, spread just enough not to touch (``spread``). Every other label takes the first
    free spot beside its point — right, left, then a text line further up or down at a
    time — that overlaps no label, no point and no edge of the axes. A label away from its
    point gets a thin line to it. Call once the data and the figure size are final (it
    freezes the axis limits); returns the text artists."""
    fig = ax.figure
    fig.tight_layout()
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    widths = []
    for label in labels:
        probe = ax.text(0, 0, label, fontsize=fontsize)
        widths.append(probe.get_window_extent(renderer).width)
        pitch = LABEL_PADDING * probe.get_window_extent(renderer).height
        probe.remove()
    px = [(a, b) for a, b in map(ax.transData.transform, zip(xs, ys))]
    taken = [(x - DOT, y - DOT, x + DOT, y + DOT) for x, y in px]
    spots: dict[int, tuple[tuple, bool]] = {}  # index -> (box, needs a line)
    for stack in _stacks(px):
        top = max(px[i][0] for i in stack) + 4 * DOT
        order = sorted(stack, key=lambda i: px[i][1])
        heights = spread([px[i][1] for i in order], pitch)
        inside = max(0.0, frame.y0 + pitch / 2 - heights[0]) - max(0.0, heights[-1] - (frame.y1 - pitch / 2))
        for i, h in zip(order, heights):
            spots[i] = (top, h + inside - pitch / 2, top + widths[i], h + inside + pitch / 2), True
            taken.append(spots[i][0])
    for i in sorted(set(range(len(px))) - set(spots), key=lambda i: -px[i][1]):
        box, lines = _free_spot(*px[i], widths[i], pitch, taken, frame)
        spots[i] = box, lines > 0
        taken.append(box)
    to_axes = ax.transAxes.inverted()
    line = {"arrowstyle": "-", "lw": 0.4, "color": "0.55", "shrinkA": 0, "shrinkB": 3}
    return [
        ax.annotate(
            labels[i],
            (xs[i], ys[i]),
            xytext=tuple(to_axes.transform((box[0], (box[1] + box[3]) / 2))),
            textcoords="axes fraction",
            fontsize=fontsize,
            va="center",
            ha="left",
            arrowprops=line if needs_line else None,
        )
        for i, (box, needs_line) in sorted(spots.items())
    ]


def spread(wanted: Sequence[float], pitch: float) -> list[float]:
    """Positions as near as they can be to ``wanted`` (ascending) while ``pitch`` apart:
    neighbours that would overlap merge into a block centred on the mean of their wishes
    (which minimises the squared displacement), until no two blocks overlap."""
    blocks: list[list[float]] = []  # [members, centre]
    for w in wanted:
        blocks.append([1, w])
        while len(blocks) > 1:
            (n_a, c_a), (n_b, c_b) = blocks[-2], blocks[-1]
            if (c_b - (n_b - 1) * pitch / 2) - (c_a + (n_a - 1) * pitch / 2) >= pitch:
                break
            blocks[-2:] = [[n_a + n_b, (n_a * c_a + n_b * c_b) / (n_a + n_b)]]
    return [centre + (k - (n - 1) / 2) * pitch for n, centre in blocks for k in range(int(n))]


def _stacks(px: list[tuple[float, float]], least: int = 4) -> list[list[int]]:
    """Indices of points that share an x (within a marker), in groups of ``least`` or more."""
    groups: list[list[int]] = []
    for i in sorted(range(len(px)), key=lambda i: px[i][0]):
        if groups and px[i][0] - px[groups[-1][-1]][0] <= DOT:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [g for g in groups if len(g) >= least]


def _free_spot(x: float, y: float, w: float, pitch: float, taken: list, frame) -> tuple[tuple, int]:
    """The nearest box of width ``w`` and height ``pitch`` beside point (x, y) that
    overlaps nothing in ``taken`` and stays inside ``frame``, and how many lines it is
    from the point; the least crowded spot when none is free."""
    gap = 1.5 * DOT
    best, best_overlap = None, None
    reach = int(frame.height // max(pitch, 1))
    for lines in range(reach + 1):
        for dy in (0,) if lines == 0 else (lines, -lines):
            for left in (x + gap, x - gap - w):
                box = (left, y + dy * pitch - pitch / 2, left + w, y + dy * pitch + pitch / 2)
                if box[0] < frame.x0 or box[2] > frame.x1 or box[1] < frame.y0 or box[3] > frame.y1:
                    continue
                overlap = sum(_overlap(box, other) for other in taken)
                if overlap == 0:
                    return box, lines
                if best_overlap is None or overlap < best_overlap:
                    best, best_overlap = (box, lines), overlap
    return best or ((x + gap, y - pitch / 2, x + gap + w, y + pitch / 2), 0)


def _overlap(a: tuple, b: tuple) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def max_column(xs: Sequence[float], fraction: float = 0.08) -> int:
    """The most points within ``fraction`` of the x range of each other: how many labels
    one column may have to hold (to size a figure before plotting)."""
    if not xs:
        return 0
    lo, hi = min(xs), max(xs)
    scaled = sorted((x - lo) / ((hi - lo) or 1) for x in xs)
    return max(sum(1 for y in scaled if x <= y <= x + fraction) for x in scaled)


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically (an interrupted run leaves no half
    image), then free it."""
    plt = pyplot()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
