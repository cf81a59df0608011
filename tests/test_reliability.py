"""Reliability: kill -9 then resume, malformed input at the command line, no unsafe loading.

kill -9 is covered for ``train`` and ``fit`` here, and for ``review`` in
test_review.py::test_kill_9_then_rerun_keeps_finished_runs_and_resumes_the_rest.
"""

import ast
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import bnnkit
import bnnkit.fit as fitmod
from bnnkit.cli import main
from bnnkit.graph import Graph
from bnnkit.training import read_metrics
from bnnkit.files import atomic_write
from bnnkit.training.checkpoint import load_state, read_json
from bnnkit.training.run import CONFIG, CURVES, METRICS, STATE, WEIGHTS, load_run
from test_data import cifar_images, make_idx_dir, write_cifar_bin, write_cifar_py
from test_graph import _rewrite

# small enough that an epoch takes milliseconds, so that the kill tests can afford many
TINY_TRAIN = ["--model", "binarynet_mlp", "--option", "width=32", "--dataset", "digits", "--batch-size", "64",
              "--limit-train", "256"]
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
    proc = subprocess.Popen([sys.executable, "-m", "bnnkit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
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
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue
        assert path.name in (CONFIG, WEIGHTS, STATE, METRICS, CURVES), f"unexpected file {path}"
    read_json(run / CONFIG, "run configuration")
    load_run(run)  # config + weights, every tensor checked against the model
    state = load_state(run / STATE)
    assert [m["epoch"] for m in read_metrics(run)][: state["epoch"]] == list(range(1, state["epoch"] + 1))
    if (run / CURVES).exists():
        assert (run / CURVES).read_bytes().endswith(PNG_END)


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


def test_fit_killed_mid_candidate_keeps_the_finished_ones(tmp_path, monkeypatch, capsys, one_thread):
    out = tmp_path / "fit"
    args = ["fit", "--ram", "200", "--flash", "320", "--dataset", "digits", "--epochs", "30", "--limit-train", "256",
            "--out", str(out), "--json"]
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


# --- malformed input -------------------------------------------------------------------------


@dataclass
class Bad:
    args: list[str]
    names: str  # the file (or tool) the message must name
    problem: str  # and a word of what is wrong with it
    outputs: list[Path] = field(default_factory=list)  # must not appear, or stay byte for byte as they were


@dataclass
class Ctx:
    tmp: Path
    run: Path  # a trained run, and its exported graph: copied before any change
    graph: Path
    monkeypatch: pytest.MonkeyPatch

    def copy(self, src: Path, name: str) -> Path:
        dst = self.tmp / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
        return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("trained")
    run, graph = base / "run", base / "model.bnn"
    assert main(["train", "--model", "ebnn_cnn", "--option", "channels=[8]", "--recipe", "embedded", "--dataset",
                 "digits", "--epochs", "1", "--limit-train", "128", "--out", str(run), "--json"]) == 0
    assert main(["export", str(run), "-o", str(graph), "--check", "0", "--json"]) == 0
    return run, graph


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
    _rewrite(path, header_change=header_change)
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
    return Bad(["export", str(run), "-o", str(c.tmp / "out.bnn"), "--json"], str(run / WEIGHTS), problem, [c.tmp / "out.bnn"])


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
    args = ["train", "--model", "ebnn_cnn", "--dataset", dataset, "--data-dir", str(data_dir), "--out", str(out), "--json"]
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


def resume_from_truncated_state(c: Ctx) -> Bad:
    run = c.copy(c.run, "run")
    (run / STATE).write_bytes((run / STATE).read_bytes()[:1000])
    args = ["train", "--model", "ebnn_cnn", "--option", "channels=[8]", "--recipe", "embedded", "--dataset", "digits",
            "--epochs", "2", "--out", str(run), "--resume", "--json"]
    return Bad(args, str(run / STATE), "unreadable training state", [run])


def resume_from_damaged_metrics(c: Ctx) -> Bad:
    run = c.copy(c.run, "run")
    (run / METRICS).write_text('{"epoch": 1, "test_a\n')
    args = ["train", "--model", "ebnn_cnn", "--option", "channels=[8]", "--recipe", "embedded", "--dataset", "digits",
            "--epochs", "2", "--out", str(run), "--resume", "--json"]
    return Bad(args, str(run / METRICS), "line 1", [run])


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
    c.monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name.startswith("arm-none-eabi") else which(name, *a, **k))
    return Bad(["run", str(c.graph), "--runtime", "cortex-m4", "--limit", "4", "--json"], "arm-none-eabi-gcc", "install")


def below_a_file(c: Ctx, command: list[str], option: str, problem: str) -> Bad:
    """``command`` with its output ``option`` pointing below a regular file: unwritable even for root."""
    (c.tmp / "file").write_text("a regular file, not a directory")
    target = c.tmp / "file" / "out"
    return Bad([*command, option, str(target), "--json"], str(target), problem, [c.tmp / "file"])


CASES: dict[str, Callable[[Ctx], Bad]] = {
    "graph truncated": lambda c: codegen(c, changed_bytes(c, lambda b: b[: len(b) // 2]), "truncated"),
    "graph tensor bit flipped": lambda c: codegen(c, changed_bytes(c, flip_tensor_byte), "SHA-256"),
    "graph header bit flipped": lambda c: codegen(c, changed_bytes(c, flip_header_byte), "not a readable graph file"),
    "graph header length forged": lambda c: codegen(c, changed_bytes(c, lambda b: struct.pack("<Q", 1 << 40) + b[8:]), "header"),
    "graph header hash mismatch": lambda c: codegen(c, rewritten_graph(c, lambda h: h.update(sha256="0" * 64)), "SHA-256"),
    "graph format version": lambda c: codegen(c, rewritten_graph(c, lambda h: h.update(version=99)), "version 99"),
    "graph unknown op": lambda c: codegen(c, rewritten_graph(c, lambda h: h["ops"][2].update(kind="softmax")), "unknown op"),
    "weights file as graph": lambda c: codegen(c, c.run / WEIGHTS, "without a bnnkit graph header"),
    "graph shape mismatch": lambda c: codegen(
        c, forged_graph(c, lambda g: g.ops[4].params.update(weight=np.ones((10, 64), bool))), "does not match input"),
    "graph NaN weight": lambda c: codegen(
        c, forged_graph(c, lambda g: set_first(g.ops[5].params["scale"], np.nan)), "non-finite"),
    "weights truncated": lambda c: export_of(c, lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable safetensors"),
    "weights shape mismatch": lambda c: export_of(c, change_weights(drop_rows), "the model expects"),
    "weights Inf": lambda c: export_of(c, change_weights(lambda t, k: set_first(t[k], np.inf)), "non-finite"),
    "training state truncated": resume_from_truncated_state,
    "metrics log damaged": resume_from_damaged_metrics,
    "IDX wrong magic": bad_idx("train-images-idx3-ubyte", struct.pack(">HBB", 0, 0x0D, 3) + bytes(12), "magic"),
    "IDX wrong dims": bad_idx("train-images-idx3-ubyte", struct.pack(">HBBIII", 0, 8, 3, 6, 10, 10) + bytes(600), "28x28"),
    "IDX label out of range": bad_idx("train-labels-idx1-ubyte", struct.pack(">HBBI", 0, 8, 1, 6) + bytes([1, 2, 3, 12, 0, 0]),
                                      "label 12 out of range"),
    "CIFAR batch wrong size": lambda c: train_on(
        c, "cifar10", *cifar_dir(c, lambda p: p.write_bytes(bytes(3000)), binary=True), "3073-byte records"),
    "CIFAR pickle with a foreign class": foreign_pickle,
    "missing data directory": lambda c: train_on(c, "mnist", c.tmp / "nowhere", c.tmp / "nowhere", "no such directory"),
    "unknown recipe key": lambda c: recipe_file(c, "learning_rate = 0.1\n", "unknown recipe key(s) learning_rate"),
    "incompatible methods in a recipe": lambda c: recipe_file(
        c, "learnable_threshold = true\nactivation_bits = 2\n", "each replace the activation binarizer"),
    "incompatible methods by name": lambda c: Bad(
        ["train", *TINY_TRAIN, "--recipe", "rsign+dorefa_2bit", "--out", str(c.tmp / "out"), "--json"],
        "rsign+dorefa_2bit", "each replace the activation binarizer", [c.tmp / "out"]),
    "impossible fit budget": impossible_fit,
    "zero fit budget": lambda c: Bad(fit_args(c, "0", "4K"), "--ram", "must be > 0", [c.tmp / "fit"]),
    "damaged fit record": fit_with_damaged_record,
    "export into an unwritable place": lambda c: below_a_file(c, ["export", str(c.run)], "-o", "cannot write"),
    "codegen into an unwritable place": lambda c: below_a_file(c, ["codegen", str(c.graph)], "-o", "cannot create"),
    "train into an unwritable place": lambda c: below_a_file(c, ["train", *TINY_TRAIN], "--out", "cannot create"),
    "cross-compiler not installed": without_cross_compiler,
}


def snapshot(path: Path):
    """What is at ``path``: None, a file's bytes, or a directory's files and their bytes."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("name", CASES)
def test_malformed_input_is_one_clear_line_and_writes_nothing(name, trained, tmp_path, monkeypatch, capsys):
    bad = CASES[name](Ctx(tmp_path, *trained, monkeypatch))
    before = {p: snapshot(p) for p in bad.outputs}
    capsys.readouterr()
    assert main(bad.args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert bad.names in err and bad.problem.lower() in err.lower(), err
    assert "Traceback" not in out + err and out == ""
    for path, was in before.items():
        assert snapshot(path) == was, f"{path} was written"
    assert not list(tmp_path.rglob(".*.tmp")), "a temporary file was left behind"


def test_a_real_process_gets_the_one_line_and_status_2(trained, tmp_path, monkeypatch):
    bad = CASES["graph truncated"](Ctx(tmp_path, *trained, monkeypatch))
    proc = subprocess.run([sys.executable, "-m", "bnnkit", *bad.args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and bad.names in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "c").exists()


# --- no unsafe loading --------------------------------------------------------------------------

# Calls that run code from the file they read, unless made safe as the rule says.
FORBIDDEN = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load", "shelve.open",
             "marshal.load", "marshal.loads", "pandas.read_pickle"}
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
            elif (name == "numpy.load" and any(k.arg == "allow_pickle" for k in node.keywords)
                  and not _keyword_is(node, "allow_pickle", False)):
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
