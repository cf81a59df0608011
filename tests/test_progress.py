"""bnnkit.progress: bars on a terminal, whole lines in a log, nothing when disabled."""

import io
import re

import pytest

from bnnkit.progress import progress, stage, write


class Clock:
    """time.monotonic under the test's control: each loop step takes ``step`` seconds."""

    def __init__(self, step: float):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.step


@pytest.fixture
def clock(monkeypatch):
    c = Clock(step=10.0)
    monkeypatch.setattr("bnnkit.progress.time.monotonic", c)
    return c


def test_a_log_gets_a_line_per_interval_and_one_at_the_end(clock):
    log = io.StringIO()
    bar = progress(range(10), desc="epoch 1/3", unit="batch", stream=log, interval=30, tty=False)
    for i in bar:
        clock.tick()  # 10 s a step: a line after steps 3, 6 and 9, and the last one
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [re.match(r"epoch 1/3: (\d+)/10 batch", line).group(1) for line in lines] == ["3", "6", "9", "10"]
    assert lines[-1] == "epoch 1/3: 10/10 batch (100%) after 1 min 40 s, 0.1 batch/s; loss=0.100"


def test_a_short_loop_leaves_a_log_alone(clock):
    clock.step = 0.01
    log = io.StringIO()
    assert list(progress(range(5), desc="numpy runtime", stream=log, tty=False)) == list(range(5))
    assert log.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar_and_disabled_prints_nothing():
    screen = io.StringIO()
    with progress(total=4, desc="review", unit="run", stream=screen, tty=True) as bar:
        for _ in range(4):
            bar.update()
        bar.set_postfix_str("rsign seed 0: 0.7703")
    assert "\r" in screen.getvalue() and "review" in screen.getvalue()
    quiet = io.StringIO()
    assert sum(progress(range(3), stream=quiet, enabled=False)) == 3
    assert quiet.getvalue() == ""


def test_manual_counting_starts_at_initial(clock):
    log = io.StringIO()
    bar = progress(total=20, initial=15, desc="review", unit="run", stream=log, interval=5, tty=False)
    clock.tick()
    bar.update()
    bar.close()
    assert log.getvalue().splitlines()[0].startswith("review: 16/20 run (80%) after 10.0 s")


def test_stage_and_write(capsys, clock):
    log = io.StringIO()
    with stage("cortex-m4: 100 images in QEMU mps2-an386", stream=log):
        clock.tick()
    assert log.getvalue().splitlines() == [
        "cortex-m4: 100 images in QEMU mps2-an386 ...",
        "cortex-m4: 100 images in QEMU mps2-an386: done in 10.0 s",
    ]
    with stage("quiet", enabled=False, stream=log):
        pass
    assert "quiet" not in log.getvalue()
    write("epoch 1/2: train loss 0.5")
    assert capsys.readouterr().out == "epoch 1/2: train loss 0.5\n"
