"""Training curves as a PNG: what people would rather look at than read."""

from __future__ import annotations

import io
from pathlib import Path

from bnnkit.files import atomic_write


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    # Imported here: matplotlib costs a second of start-up that most commands never need.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(epochs, [m[f"{split}_loss"] for m in history], style, marker="o", label=split)
        ax_acc.plot(epochs, [100 * m[f"{split}_acc"] for m in history], style, marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path, dpi=100)


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically (an interrupted run leaves no half
    image), then free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
