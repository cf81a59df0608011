"""Reliability: kill -9 then resume, malformed input at the command line, no unsafe loading.

kill -9 is covered for ``train`` and ``fit`` here, and for ``review`` in
test_review.py::test_kill_9_then_rerun_keeps_finished_runs_and_resumes_the_rest.
"""

import ast
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli_errors import Bad, Ctx, assert_one_clear_line
from helpers.datafiles import cifar_images, make_idx_dir, write_cifar_bin, write_cifar_py
from helpers.graphfiles import rewrite_graph
from helpers.graphgen import case_from_seed
from safetensors.numpy import load_file, save_file

import bnnkit
import bnnkit.apps.fit as fitmod
import bnnkit.errors
from bnnkit.cli import main
from bnnkit.files import LOCK, STALE_SECONDS, atomic_write, exclusive, remove_stale_temporaries
from bnnkit.graph import Graph
from bnnkit.training import read_metrics
from bnnkit.training.checkpoint import load_state, read_json
from bnnkit.training.run import CONFIG, CURVES, METRICS, STATE, WEIGHTS, load_run

# small enough that an epoch takes milliseconds, so that the kill tests can afford many
TINY_TRAIN = [
    "--model",
    "binarynet_mlp",
    "--option",
    "width=32",
    "--dataset",
    "digits",
    "--batch-size",
    "64",
    "--limit-train",
    "256",
]
PNG_END = b"IEND\xaeB`\x82"


# --- kill -9 -------------------------------------------------------------------------------


@pytest.fixture
def one_thread(monkeypatch):
    """Torch on one thread, here and in the processes that kill_when starts: runs compared
    bit for bit must use the same thread count, and tiny models train fastest on one.
    (The trainer sets its own count, from OMP_NUM_THREADS where that is set.)"""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kill_when(args: list[str], ready: Callable[[], bool], deadline: float = 120) -> None:
    """Start ``bnnkit ARGS`` in a process of its own and SIGKILL it once ``ready()``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnnkit", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    end = time.monotonic() + deadline
    while not ready():
        assert proc.poll() is None, f"bnnkit exited ({proc.returncode}) before the kill: {proc.stderr.read().decode()}"
        assert time.monotonic() < end, "bnnkit did not get far enough before the deadline"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "bnnkit finished before the kill; give it more work"


def assert_run_files_valid(run: Path) -> None:
    """Every file of a run directory reads back whole; the only extra files allowed are
    the hidden temporaries of a write the kill interrupted (never read by anything)."""
    for path in run.iterdir():
        if path.name.startswith(".") and path.name.endswith(".tmp") or path.name == LOCK:  # what a kill leaves
            continue
        assert path.name in (CONFIG, WEIGHTS, STATE, METRICS, CURVES), f"unexpected file {path}"
    read_json(run / CONFIG, "run configuration")
    load_run(run)  # config + weights, every tensor checked against the model
    state = load_state(run / STATE)
    assert [m["epoch"] for m in read_metrics(run)][: state["epoch"]] == list(range(1, state["epoch"] + 1))
    if (run / CURVES).exists():
        assert (run / CURVES).read_bytes().endswith(PNG_END)


@pytest.mark.slow
def test_train_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path, one_thread):
    run, straight = tmp_path / "killed", tmp_path / "straight"
    epochs = ["--epochs", "30"]
    kill_when(["train", *TINY_TRAIN, *epochs, "--out", str(run), "--json"], lambda: (run / STATE).exists())
    assert_run_files_valid(run)
    finished = load_state(run / STATE)["epoch"]
    assert 1 <= finished < 30
    kept = read_metrics(run)[:finished]

    assert main(["train", *TINY_TRAIN, *epochs, "--out", str(run), "--resume", "--json"]) == 0
    assert main(["train", *TINY_TRAIN, *epochs, "--out", str(straight), "--json"]) == 0
    after = read_metrics(run)
    assert after[:finished] == kept  # finished epochs are neither lost nor retrained
    assert [m["epoch"] for m in after] == list(range(1, 31))
    # the loop is deterministic on a CPU: the killed-and-resumed run ends bit for bit where the straight one does
    resumed, reference = load_file(run / WEIGHTS), load_file(straight / WEIGHTS)
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    assert after[-1]["test_acc"] == read_metrics(straight)[-1]["test_acc"]


@pytest.mark.slow
def test_fit_killed_mid_candidate_keeps_the_finished_ones(tmp_path, monkeypatch, capsys, one_thread):
    out = tmp_path / "fit"
    args = [
        "fit",
        "--ram",
        "200",
        "--flash",
        "320",
        "--dataset",
        "digits",
        "--epochs",
        "30",
        "--limit-train",
        "256",
        "--out",
        str(out),
        "--json",
    ]
    kill_when(args, lambda: (out / fitmod.RESULTS).exists())
    recorded = [json.loads(line) for line in (out / fitmod.RESULTS).read_text().splitlines()]
    assert len(recorded) == 1
    kept = {}  # the finished epochs of every candidate, the one killed mid-training included
    for run in (out / "runs").iterdir():
        if (run / STATE).exists():  # a candidate killed before its first epoch has nothing to check yet
            assert_run_files_valid(run)
            kept[run] = read_metrics(run)[: load_state(run / STATE)["epoch"]]

    import bnnkit.training as train_pkg  # fit imports train when it runs: patch it at the source

    trained, original = [], train_pkg.train

    def record(config, run_dir, options):
        trained.append(Path(run_dir).name)
        return original(config, run_dir, options)

    monkeypatch.setattr(train_pkg, "train", record)
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert recorded[0]["name"] not in trained and len(trained) == len(result["fitting"]) - 1 >= 1
    assert result["trained"][0] == recorded[0] and result["remaining"] == 0
    again = [json.loads(line) for line in (out / fitmod.RESULTS).read_text().splitlines()]
    assert again[0] == recorded[0] and [r["name"] for r in again] == [r["name"] for r in result["trained"]]
    for run, epochs in kept.items():
        assert read_metrics(run)[: len(epochs)] == epochs


def test_atomic_write_gives_the_mode_a_plain_write_would(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write(tmp_path / "new.txt", "one")
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    (tmp_path / "new.txt").chmod(0o640)
    atomic_write(tmp_path / "new.txt", "two")
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640 and (tmp_path / "new.txt").read_text() == "two"


def start_bnnkit_on_signal(args: list[str], go: Path) -> subprocess.Popen:
    """A ``bnnkit ARGS`` process with bnnkit and torch already imported, that runs the
    command once file ``go`` exists: it reaches the run directory within a moment."""
    code = (
        "import sys, time, pathlib\nfrom bnnkit.cli import main\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        f"sys.exit(main({args!r}))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True])
def test_two_trains_on_one_out_the_second_is_refused_and_the_first_finishes_intact(tmp_path, resume, one_thread):
    run, go = tmp_path / "run", tmp_path / "go"
    # enough epochs to outlast the second process's start (importing scikit-learn for digits alone takes
    # seconds): about 15 s of training here, against 3-5 s for the second to be refused
    epochs = 600
    args = ["train", *TINY_TRAIN, "--epochs", str(epochs), "--out", str(run), "--json"]
    second = start_bnnkit_on_signal(args + ["--resume"] * resume + ["--seed", "1"], go)
    first = subprocess.Popen(
        [sys.executable, "-m", "bnnkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not ((run / STATE).exists() and (run / LOCK).exists()):  # holding the lock, an epoch on disk
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.01)
        assert (run / LOCK).read_text() == f"{first.pid}\n"
        go.touch()
        out, err = second.communicate(timeout=120)
        assert first.poll() is None, "the first run finished before the second came: give it more epochs"
    finally:
        go.touch()
        first_out, first_err = first.communicate(timeout=300)
    assert second.returncode == 2 and out == ""
    assert err == (
        f"error: {run}: another bnnkit process (PID {first.pid}) is writing this run directory; "
        "wait for it to finish or choose another directory\n"
    )
    assert first.returncode == 0, first_err
    assert json.loads(first_out)["epoch"] == epochs
    assert_run_files_valid(run)
    assert sorted(p.name for p in run.iterdir()) == sorted([CONFIG, WEIGHTS, STATE, METRICS, CURVES])  # lock removed
    assert json.loads((run / CONFIG).read_text())["seed"] == 0  # the first run's, not the second's
    assert [m["epoch"] for m in read_metrics(run)] == list(range(1, epochs + 1))
    assert load_state(run / STATE)["epoch"] == epochs


def test_a_lock_names_its_holder_and_outlives_no_process(tmp_path):
    with exclusive(tmp_path, "thing"):
        assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
        with (
            pytest.raises(
                bnnkit.errors.BnnkitError, match=rf"another bnnkit process \(PID {os.getpid()}\) is writing this thing"
            ),
            exclusive(tmp_path, "thing"),
        ):
            pass
        assert (tmp_path / LOCK).exists()  # the refused one did not remove the holder's lock
    assert not (tmp_path / LOCK).exists()
    # a holder killed with -9 leaves its lock file, and the kernel its lock: the next one takes it
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom bnnkit.files import exclusive\n"
            f"with exclusive({str(tmp_path)!r}, 'x'):\n    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(bnnkit.errors.BnnkitError, match=f"PID {holder.pid}"), exclusive(tmp_path, "x"):
        pass
    holder.kill()
    holder.wait()
    assert (tmp_path / LOCK).read_text() == f"{holder.pid}\n"
    with exclusive(tmp_path, "x"):
        assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: no process has this PID now (until the system reuses it)
    return proc.pid


def age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def left_file(path: Path, seconds_old: float) -> Path:
    path.write_bytes(b"half a file")
    return age(path, seconds_old)


def test_stale_temporaries_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    live = subprocess.Popen(["sleep", "60"])
    old = STALE_SECONDS + 5
    try:
        stale = [
            left_file(tmp_path / f".model.safetensors.{dead_pid()}.a1b2c3d4.tmp", old),
            left_file(tmp_path / ".config.json.x9_y8z7w.tmp", old),
        ]  # the form before PIDs were in the name
        kept = [
            left_file(tmp_path / f".config.json.{live.pid}.a1b2c3d4.tmp", old),  # its writer is still at work
            left_file(tmp_path / f".metrics.jsonl.{dead_pid()}.a1b2c3d4.tmp", 0),  # young: its writer may be elsewhere
            left_file(tmp_path / "notes.tmp", old),
            left_file(tmp_path / ".notes.tmp", old),  # not bnnkit's names
            left_file(tmp_path / ".config.json.a1b2c3d4.tmp.bak", old),
        ]
        atomic_write(tmp_path / "result.json", "{}")  # the next write to the directory tidies it
        assert not any(p.exists() for p in stale)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(p.name for p in kept), "result.json"])
        assert remove_stale_temporaries(tmp_path) == []
    finally:
        live.kill()
        live.wait()


def test_kill_9_in_the_middle_of_a_write_leaves_a_temporary_the_next_write_removes(tmp_path):
    # The writer kills itself between writing its temporary and renaming it: the worst instant.
    code = (
        "import os, signal\nimport bnnkit.files as files\n"
        "files.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"files.atomic_write({str(tmp_path / 'config.json')!r}, 'new')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    assert proc.wait(timeout=60) == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert (
        left.name.startswith(f".config.json.{proc.pid}.") and left.name.endswith(".tmp") and left.read_text() == "new"
    )
    atomic_write(tmp_path / "other.json", "{}")
    assert left.exists()  # too young to be judged: a writer in another PID namespace might still be at work
    age(left, STALE_SECONDS + 1)
    atomic_write(tmp_path / "other.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


@pytest.mark.slow
@pytest.mark.parametrize("limit, failing", [(100, CONFIG), (4096, WEIGHTS)])
def test_train_on_a_full_disk_is_one_line_and_leaves_no_directory(tmp_path, limit, failing):
    """A file-size limit stands for a full disk: every write beyond ``limit`` bytes fails
    (EFBIG; Python ignores SIGXFSZ), so config.json (1 KB) or the weights (20 KB) cannot
    be written. The run directory and its parent, which train created, are gone."""
    out = tmp_path / "new" / "run"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", "train", *TINY_TRAIN, "--epochs", "1", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.endswith(f"error: {out / failing}: cannot write (File too large)\n"), proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_codegen_on_a_full_disk_is_one_line_and_leaves_no_directory(tmp_path):
    """As for train: the generated sources cannot be written, and the directories codegen
    created for them are removed again."""
    graph = tmp_path / "g.bnn"
    case_from_seed(0).graph.save(graph)
    out = tmp_path / "new" / "src"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", "codegen", str(graph), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {out / 'bnn.'}") and proc.stderr.endswith(
        ": cannot write (File too large)\n"
    )
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.bnn"]


# --- malformed input -------------------------------------------------------------------------


def codegen(c: Ctx, graph: Path, problem: str) -> Bad:
    return Bad(["codegen", str(graph), "-o", str(c.tmp / "c"), "--json"], str(graph), problem, [c.tmp / "c"])


def changed_bytes(c: Ctx, change: Callable[[bytes], bytes]) -> Path:
    path = c.copy(c.graph, "bad.bnn")
    path.write_bytes(change(path.read_bytes()))
    return path


def forged_graph(c: Ctx, change: Callable[[Graph], None]) -> Path:
    """A graph file whose header digest matches its tensors, but whose content is invalid."""
    graph = Graph.load(c.graph)
    change(graph)
    graph.save(c.tmp / "forged.bnn")  # save writes what it is given; load validates
    return c.tmp / "forged.bnn"


def rewritten_graph(c: Ctx, header_change: Callable[[dict], None]) -> Path:
    path = c.copy(c.graph, "rewritten.bnn")
    rewrite_graph(path, header_change=header_change)
    return path


def flip_tensor_byte(data: bytes) -> bytes:
    i = len(data) - 3  # the tensor bytes follow the header
    return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]


def flip_header_byte(data: bytes) -> bytes:
    i = 8 + 2  # inside the JSON header, after its 8-byte length
    return data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :]


def export_of(c: Ctx, change: Callable[[Path], None], problem: str) -> Bad:
    run = c.copy(c.run, "run")
    change(run / WEIGHTS)
    return Bad(
        ["export", str(run), "-o", str(c.tmp / "out.bnn"), "--json"], str(run / WEIGHTS), problem, [c.tmp / "out.bnn"]
    )


def change_weights(change: Callable[[dict, str], None]) -> Callable[[Path], None]:
    """Rewrite a weights file with ``change(tensors, key)`` applied to its first weight matrix."""

    def apply(path: Path) -> None:
        tensors = load_file(path)
        change(tensors, next(k for k, v in sorted(tensors.items()) if v.dtype == np.float32 and v.ndim > 1))
        save_file(tensors, path)

    return apply


def drop_rows(tensors: dict, key: str) -> None:
    tensors[key] = tensors[key][:1]


def set_first(array: np.ndarray, value) -> None:
    array.flat[0] = value


def train_on(c: Ctx, dataset: str, data_dir: Path, names: Path, problem: str, *extra: Path) -> Bad:
    out = c.tmp / "out"
    args = [
        "train",
        "--model",
        "ebnn_cnn",
        "--dataset",
        dataset,
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--json",
    ]
    return Bad(args, str(names), problem, [out, *extra])


def idx_dir(c: Ctx, name: str, data: bytes) -> tuple[Path, Path]:
    make_idx_dir(c.tmp / "mnist", gz=False)
    (c.tmp / "mnist" / name).write_bytes(data)
    return c.tmp / "mnist", c.tmp / "mnist" / name


def bad_idx(name: str, data: bytes, problem: str) -> Callable[[Ctx], Bad]:
    return lambda c: train_on(c, "mnist", *idx_dir(c, name, data), problem)


def cifar_dir(c: Ctx, test_batch: Callable[[Path], None], binary: bool) -> tuple[Path, Path]:
    folder = c.tmp / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    folder.mkdir()
    for i in range(1, 6):
        if binary:
            write_cifar_bin(folder / f"data_batch_{i}.bin", cifar_images(1), [1])
        else:
            write_cifar_py(folder / f"data_batch_{i}", cifar_images(1), [1])
    test = folder / ("test_batch.bin" if binary else "test_batch")
    test_batch(test)
    return c.tmp, test


class Remove:
    """What a forged pickle would do when loaded by ``pickle.load``: delete a file."""

    def __init__(self, victim: Path):
        self.victim = victim

    def __reduce__(self):
        return os.remove, (str(self.victim),)


def foreign_pickle(c: Ctx) -> Bad:
    victim = c.tmp / "victim.txt"
    victim.write_text("still here")
    batch = {b"data": Remove(victim), b"labels": [1]}
    data_dir, test = cifar_dir(c, lambda p: p.write_bytes(pickle.dumps(batch, protocol=2)), binary=False)
    return train_on(c, "cifar10", data_dir, test, "refuses to unpickle", victim)  # and the victim is still there


def recipe_file(c: Ctx, text: str, problem: str) -> Bad:
    path = c.tmp / "recipe.toml"
    path.write_text(text)
    out = c.tmp / "out"
    return Bad(["train", *TINY_TRAIN, "--recipe", str(path), "--out", str(out), "--json"], str(path), problem, [out])


def resume_args(run: Path, *changed: str) -> list[str]:
    """Resume the trained run (see ``trained``), with ``changed`` settings appended."""
    return [
        "train",
        "--model",
        "ebnn_cnn",
        "--option",
        "channels=[8]",
        "--recipe",
        "embedded",
        "--dataset",
        "digits",
        "--limit-train",
        "128",
        "--epochs",
        "2",
        "--out",
        str(run),
        "--resume",
        "--json",
        *changed,
    ]


def resume_from_truncated_state(c: Ctx) -> Bad:
    run = c.copy(c.run, "run")
    (run / STATE).write_bytes((run / STATE).read_bytes()[:1000])
    return Bad(resume_args(run), str(run / STATE), "unreadable training state", [run])


def resume_from_damaged_metrics(c: Ctx) -> Bad:
    run = c.copy(c.run, "run")
    (run / METRICS).write_text('{"epoch": 1, "test_a\n')
    return Bad(resume_args(run), str(run / METRICS), "line 1", [run])


def resume_another_run(c: Ctx, *changed: str, problem: str) -> Bad:
    run = c.copy(c.run, "run")
    return Bad(resume_args(run, *changed), str(run / CONFIG), f"describes a different run: {problem}", [run])


def train_tiny(c: Ctx, *args: str, names: str, problem: str) -> Bad:
    return Bad(["train", *TINY_TRAIN, *args, "--out", str(c.tmp / "out"), "--json"], names, problem, [c.tmp / "out"])


def fit_args(c: Ctx, ram: str, flash: str) -> list[str]:
    return ["fit", "--ram", ram, "--flash", flash, "--dataset", "digits", "--out", str(c.tmp / "fit"), "--json"]


def impossible_fit(c: Ctx) -> Bad:
    space = fitmod.search_space()[:3]  # sizing all of it would only take longer
    c.monkeypatch.setattr(fitmod, "search_space", lambda: space)
    return Bad(fit_args(c, "64", "64"), "RAM 64 B", "no architecture fits", [c.tmp / "fit"])


def fit_with_damaged_record(c: Ctx) -> Bad:
    (c.tmp / "fit").mkdir()
    (c.tmp / "fit" / fitmod.RESULTS).write_text('{"name": "ebnn_cnn-channels=8-kernel=3", "accur')
    return Bad(fit_args(c, "4K", "4K"), str(c.tmp / "fit" / fitmod.RESULTS), "line 1", [c.tmp / "fit"])


def without_cross_compiler(c: Ctx) -> Bad:
    which = shutil.which
    c.monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name.startswith("arm-none-eabi") else which(name, *a, **k)
    )
    return Bad(
        ["run", str(c.graph), "--runtime", "cortex-m4", "--limit", "4", "--json"], "arm-none-eabi-gcc", "install"
    )


def below_a_file(c: Ctx, command: list[str], option: str, problem: str) -> Bad:
    """``command`` with its output ``option`` pointing below a regular file: unwritable even for root."""
    (c.tmp / "file").write_text("a regular file, not a directory")
    target = c.tmp / "file" / "out"
    return Bad([*command, option, str(target), "--json"], str(target), problem, [c.tmp / "file"])


CASES: dict[str, Callable[[Ctx], Bad]] = {
    "graph truncated": lambda c: codegen(c, changed_bytes(c, lambda b: b[: len(b) // 2]), "truncated"),
    "graph tensor bit flipped": lambda c: codegen(c, changed_bytes(c, flip_tensor_byte), "SHA-256"),
    "graph header bit flipped": lambda c: codegen(c, changed_bytes(c, flip_header_byte), "not a readable graph file"),
    "graph header length forged": lambda c: codegen(
        c, changed_bytes(c, lambda b: struct.pack("<Q", 1 << 40) + b[8:]), "header"
    ),
    "graph header hash mismatch": lambda c: codegen(
        c, rewritten_graph(c, lambda h: h.update(sha256="0" * 64)), "SHA-256"
    ),
    "graph format version": lambda c: codegen(c, rewritten_graph(c, lambda h: h.update(version=99)), "version 99"),
    "graph unknown op": lambda c: codegen(
        c, rewritten_graph(c, lambda h: h["ops"][2].update(kind="softmax")), "unknown op"
    ),
    "weights file as graph": lambda c: codegen(c, c.run / WEIGHTS, "without a bnnkit graph header"),
    "graph shape mismatch": lambda c: codegen(
        c, forged_graph(c, lambda g: g.ops[4].params.update(weight=np.ones((10, 64), bool))), "does not match input"
    ),
    "graph NaN weight": lambda c: codegen(
        c, forged_graph(c, lambda g: set_first(g.ops[5].params["scale"], np.nan)), "non-finite"
    ),
    "weights truncated": lambda c: export_of(
        c, lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable safetensors"
    ),
    "weights shape mismatch": lambda c: export_of(c, change_weights(drop_rows), "the model expects"),
    "weights Inf": lambda c: export_of(c, change_weights(lambda t, k: set_first(t[k], np.inf)), "non-finite"),
    "training state truncated": resume_from_truncated_state,
    "metrics log damaged": resume_from_damaged_metrics,
    "IDX wrong magic": bad_idx("train-images-idx3-ubyte", struct.pack(">HBB", 0, 0x0D, 3) + bytes(12), "magic"),
    "IDX wrong dims": bad_idx(
        "train-images-idx3-ubyte", struct.pack(">HBBIII", 0, 8, 3, 6, 10, 10) + bytes(600), "28x28"
    ),
    "IDX label out of range": bad_idx(
        "train-labels-idx1-ubyte",
        struct.pack(">HBBI", 0, 8, 1, 6) + bytes([1, 2, 3, 12, 0, 0]),
        "label 12 out of range",
    ),
    "CIFAR batch wrong size": lambda c: train_on(
        c, "cifar10", *cifar_dir(c, lambda p: p.write_bytes(bytes(3000)), binary=True), "3073-byte records"
    ),
    "CIFAR pickle with a foreign class": foreign_pickle,
    "missing data directory": lambda c: train_on(c, "mnist", c.tmp / "nowhere", c.tmp / "nowhere", "no such directory"),
    "unknown recipe key": lambda c: recipe_file(c, "learning_rate = 0.1\n", "unknown recipe key(s) learning_rate"),
    "incompatible methods in a recipe": lambda c: recipe_file(
        c, "learnable_threshold = true\nactivation_bits = 2\n", "each replace the activation binarizer"
    ),
    "incompatible methods by name": lambda c: Bad(
        ["train", *TINY_TRAIN, "--recipe", "rsign+dorefa_2bit", "--out", str(c.tmp / "out"), "--json"],
        "rsign+dorefa_2bit",
        "each replace the activation binarizer",
        [c.tmp / "out"],
    ),
    "infinite learning rate in a recipe": lambda c: recipe_file(c, "lr = inf\n", "lr must be a finite number"),
    "infinite width in a recipe": lambda c: recipe_file(c, "width_mult = inf\n", "width_mult must be a finite number"),
    "boolean batch size in a recipe": lambda c: recipe_file(c, "batch_size = true\n", "batch_size must be an int"),
    "infinite --lr": lambda c: train_tiny(c, "--lr", "inf", names="lr", problem="must be a finite number"),
    "--limit-train 0": lambda c: train_tiny(
        c, "--limit-train", "0", names="limit_train", problem="must be an integer >= 1"
    ),
    "negative --seed": lambda c: train_tiny(c, "--seed", "-1", names="seed", problem="must be an integer in 0.."),
    "Bop without binary weights": lambda c: train_tiny(
        c, "--option", "depth=1", "--recipe", "bop", names="Bop", problem="the model has no binary layer"
    ),
    "model option of the wrong type": lambda c: train_tiny(
        c, "--option", "depth=three", names="option depth", problem="expected an int like depth=3, got 'three'"
    ),
    "list option given a number": lambda c: Bad(
        ["train", "--model", "ebnn_cnn", "--option", "channels=16", "--dataset", "digits", "--out", str(c.tmp / "out")],
        "option channels",
        "expected a list of ints like channels=[16,32], got 16",
        [c.tmp / "out"],
    ),
    "resume on another data subset": lambda c: resume_another_run(
        c, "--limit-train", "64", problem="limit_train 128 (stored) vs 64 (now)"
    ),
    "resume with another seed and test subset": lambda c: resume_another_run(
        c, "--seed", "1", "--limit-test", "50", problem="seed 0 (stored) vs 1 (now); limit_test None vs 50"
    ),
    "impossible fit budget": impossible_fit,
    "zero fit budget": lambda c: Bad(fit_args(c, "0", "4K"), "--ram", "must be > 0", [c.tmp / "fit"]),
    "damaged fit record": fit_with_damaged_record,
    "export into an unwritable place": lambda c: below_a_file(c, ["export", str(c.run)], "-o", "cannot write"),
    "codegen into an unwritable place": lambda c: below_a_file(c, ["codegen", str(c.graph)], "-o", "cannot create"),
    "train into an unwritable place": lambda c: below_a_file(c, ["train", *TINY_TRAIN], "--out", "cannot create"),
    "cross-compiler not installed": without_cross_compiler,
}


@pytest.mark.parametrize("name", CASES)
def test_malformed_input_is_one_clear_line_and_writes_nothing(name, trained, tmp_path, monkeypatch, capsys):
    assert_one_clear_line(CASES[name](Ctx(tmp_path, *trained, monkeypatch)), tmp_path, capsys)


def test_a_real_process_gets_the_one_line_and_status_2(trained, tmp_path, monkeypatch):
    bad = CASES["graph truncated"](Ctx(tmp_path, *trained, monkeypatch))
    proc = subprocess.run([sys.executable, "-m", "bnnkit", *bad.args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and bad.names in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "c").exists()


# --- no unsafe loading --------------------------------------------------------------------------

# Calls that run code from the file they read, unless made safe as the rule says.
FORBIDDEN = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "shelve.open",
    "marshal.load",
    "marshal.loads",
    "pandas.read_pickle",
}
RESTRICTED_UNPICKLERS = {("data/cifar.py", "_BatchUnpickler")}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_uses(source: str, where: str) -> list[str]:
    """Every deserialisation in ``source`` that could run code from a user's file."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func, aliases)
            if name in FORBIDDEN:
                found.append(f"{where}:{node.lineno}: {name}")
            elif name == "torch.load" and not _keyword_is(node, "weights_only", True):
                found.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            elif (
                name == "numpy.load"
                and any(k.arg == "allow_pickle" for k in node.keywords)
                and not _keyword_is(node, "allow_pickle", False)
            ):
                found.append(f"{where}:{node.lineno}: numpy.load with allow_pickle")
        elif isinstance(node, ast.ClassDef) and any(_dotted(b, aliases) == "pickle.Unpickler" for b in node.bases):
            overrides = any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body)
            if (where, node.name) not in RESTRICTED_UNPICKLERS or not overrides:
                found.append(f"{where}:{node.lineno}: unpickler {node.name} (only the restricted CIFAR one may exist)")
    return found


@pytest.mark.parametrize(
    "source, unsafe",
    [
        ("import pickle\npickle.load(f)", True),
        ("from pickle import loads as l\nl(b)", True),
        ("import torch\ntorch.load(p)", True),
        ("import torch\ntorch.load(p, weights_only=False)", True),
        ("import torch as t\nt.load(p, map_location='cpu', weights_only=True)", False),
        ("import numpy as np\nnp.load(p, allow_pickle=True)", True),
        ("import numpy as np\nnp.load(p)", False),
        ("import pickle\nclass U(pickle.Unpickler):\n    pass", True),
        ("import pickle\npickle.dumps(x)", False),
    ],
)
def test_the_unsafe_loading_check_catches(source, unsafe):
    assert bool(unsafe_uses(source, "snippet.py")) == unsafe


def test_no_unsafe_loading_in_the_source():
    root = Path(bnnkit.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        found += unsafe_uses(path.read_text(), path.relative_to(root).as_posix())
    assert found == []
