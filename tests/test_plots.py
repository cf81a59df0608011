"""Plots a reader can read: whole epochs, labels that do not overprint, one 2-D front per
panel, and no warnings."""

import csv
import itertools
import random
import warnings

import pytest
from helpers.docblocks import ROOT

from bnnkit.training import plots


@pytest.fixture(autouse=True)
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def visible_ticks(ax, axis="x"):
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    return [t for t in getattr(ax, f"get_{axis}ticks")() if lo <= t <= hi]


@pytest.mark.parametrize("epochs", [1, 3, 30])
def test_curves_tick_whole_epochs(epochs):
    history = [
        {"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_acc": 0.5, "test_acc": 0.4}
        for e in range(1, epochs + 1)
    ]
    fig = plots.curves_figure(history)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = visible_ticks(ax)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert 1 in ticks or epochs > 10
    plots.pyplot().close(fig)


def test_curves_draw_validation_and_a_test_point_read_once():
    history = [
        {"epoch": e, "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 1.1 / e, "val_acc": 0.45} for e in (1, 2, 3)
    ]
    history[-1] |= {"test_loss": 0.5, "test_acc": 0.44}
    fig = plots.curves_figure(history)
    ax_loss, ax_acc = fig.axes
    lines = {line.get_label(): line for line in ax_acc.get_lines()}
    assert sorted(lines) == ["test", "train", "validation"]
    assert list(lines["test"].get_xdata()) == [3] and list(lines["test"].get_ydata()) == [44.0]
    assert list(lines["validation"].get_ydata()) == [45.0, 45.0, 45.0]
    plots.pyplot().close(fig)


def boxes(fig, texts):
    """The boxes of the words alone (an annotation's own extent includes its leader line)."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in texts]


def assert_readable(fig, ax, texts):
    fig.canvas.draw()
    frame = ax.get_window_extent()
    extents = boxes(fig, texts)
    for a, b in itertools.combinations(extents, 2):
        assert not a.overlaps(b) or min(a.y1, b.y1) - max(a.y0, b.y0) < 1, (a, b)  # touching edges are fine
    for box in extents:
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1


def test_review_labels_do_not_overprint_on_the_committed_study():
    """The fashion-mnist review: 22 of 28 methods have the baseline's binary MACs, the pile
    that made acc_vs_binary_macs.png unreadable."""
    with open(ROOT / "docs/review-fashion-mnist/report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for cost in ("binary_macs", "fp_macs", "model_bytes", "energy_pj"):
        fig, ax = plots.pyplot().subplots(figsize=(9, 5.5))
        xs, ys = [float(r[cost]) for r in rows], [100 * float(r["top1_mean"]) for r in rows]
        ax.scatter(xs, ys)
        texts = plots.label_points(ax, xs, ys, [r["label"] for r in rows])
        assert sorted(t.get_text() for t in texts) == sorted(r["label"] for r in rows)
        assert all(t.xy == (x, y) for t, x, y in zip(texts, xs, ys))  # each label points at its own point
        assert_readable(fig, ax, texts)
        plots.pyplot().close(fig)


def test_labels_of_a_random_scatter_do_not_overprint():
    rng = random.Random(7)
    xs = [rng.lognormvariate(0, 1) for _ in range(30)]
    ys = [rng.gauss(80, 3) for _ in range(30)]
    fig, ax = plots.pyplot().subplots(figsize=(8, 5))
    ax.scatter(xs, ys)
    assert_readable(fig, ax, plots.label_points(ax, xs, ys, [f"method_{i}" for i in range(30)]))
    plots.pyplot().close(fig)


def test_spread_keeps_order_and_pitch_and_moves_no_more_than_needed():
    assert plots.spread([0, 10, 20], 5) == [0, 10, 20]  # already apart: untouched
    assert plots.spread([0, 0, 0], 2) == [-2, 0, 2]  # a pile opens around its centre
    got = plots.spread([0, 1, 10, 10.5], 2)
    assert got == pytest.approx([-0.5, 1.5, 9.25, 11.25])
    assert all(b - a >= 2 - 1e-9 for a, b in zip(got, got[1:]))


def test_fit_plot_has_one_2d_front_per_panel_and_readable_ticks(monkeypatch):
    from bnnkit.apps import fit

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=100: figures.append(fig))
    rng = random.Random(0)
    sized = [
        {"name": f"net{i}", "ram": rng.choice([900, 1700, 3100, 4000]), "flash": rng.randint(2000, 30000)}
        for i in range(12)
    ]
    trained = [{**r, "accuracy": rng.uniform(0.8, 0.9), "binary_macs": rng.randint(10**5, 10**7)} for r in sized[:8]]
    fit._plot(sized, trained, fit.pareto(trained), 4096, 32768, None)
    (fig,) = figures
    fig.canvas.draw()
    for ax, key in zip(fig.axes[:2], ("ram", "flash")):
        # the staircase is exactly the rows no other row beats on accuracy and this cost
        front = [
            r
            for r in trained
            if not any(
                o[key] <= r[key] and o["accuracy"] > r["accuracy"] or o[key] < r[key] and o["accuracy"] >= r["accuracy"]
                for o in trained
            )
        ]
        (line,) = [ln for ln in ax.get_lines() if ln.get_drawstyle() == "steps-post"]
        assert sorted(zip(*line.get_data())) == sorted((r[key] / 1024, 100 * r["accuracy"]) for r in front)
        assert "(KiB)" in ax.get_xlabel() and "%" in ax.get_ylabel()
        assert len(visible_ticks(ax)) >= 3
        assert_readable(fig, ax, [t for t in ax.texts])
