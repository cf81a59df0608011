"""Hostile graph files (issue 15): whatever a ``.bnn`` holds, bnnkit answers with one
``error:`` line and exit status 2, or works. It never runs code the file carries, never
allocates a size the file chose before bounding it, and never shows a traceback.

The files are crafted as an attacker would: the header edited as JSON, the SHA-256
recomputed (``crafted_digest`` below follows the definition in docs/reliability.md, not
bnnkit's code), safetensors written with ``safetensors.numpy``. Every CLI case runs in a
child process under ``RLIMIT_AS`` (``CHILD_MEMORY``), one child for many cases calling
``bnnkit.cli.main`` in-process: a bound that failed shows there as a MemoryError, not as
a machine out of memory. To rerun the fuzz alone: ``pytest tests/test_hostile_graph.py -k fuzz -s``
(``-s`` prints the counts).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.graphgen import SETTINGS, _Builder, _Int8Builder, _Seeded
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from bnnkit import graph as graph_mod
from bnnkit.cli import main
from bnnkit.errors import BnnkitError
from bnnkit.graph import INT32_MIN, MAX_ELEMENTS, Graph, Op, resources
from bnnkit.runtime import numpy_ref
from bnnkit.runtime.c import generate_c

CHILD_MEMORY = 2 << 30  # bytes of address space: numpy, scikit-learn and bnnkit take ~0.9 GiB
FUZZ_CASES = 1300  # drawn; hypothesis repeats some, and at least 1,000 distinct files must remain
COMPILES = 6  # mutated files that load also run as c-portable, the first this many (a compile each)
TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


# --- graphs and crafted files ---------------------------------------------------------------


def digits_graph(seed: int, layout: str) -> Graph:
    """A small graph over 8x8 digits (its meta names the dataset, so ``bnnkit run`` needs no
    flag), with thresholds drawn from the sums it really produces (graphgen's builder)."""
    if layout == "fixed":  # the real layout's q32 twin, as `bnnkit export --real fixed` writes it
        from bnnkit.export.fixed import to_fixed  # imports torch: in the parent only, not the child

        images = np.random.default_rng(seed).integers(0, 256, (64, 1, 8, 8), np.uint8)
        return to_fixed(digits_graph(seed, "real"), images)
    rng = np.random.default_rng(seed)
    builder = _Int8Builder if layout == "int8" else _Builder
    b = builder(_Seeded(rng), rng, rng.integers(0, 256, (8, 1, 8, 8), dtype=np.uint8))
    if layout == "conv":  # conv, threshold, max-pool with min channels, binary conv, residual add, dense, affine
        t = b.threshold(b.conv("input", 6, {"stride": 1, "padding": 1, "k": 3}))
        t = b.op("maxpool", [t], {"kernel": 2, "stride": 2}, {"min_channels": b.bits(6)})
        t = b.residual(b.conv(t, 5, {"stride": 1, "padding": (1, 0), "k": 3}))
        t = b.affine(b.dense(b.threshold(t), 10))
    elif layout == "dense":  # flatten, u8 dense, threshold, binary dense, i32 scores
        t = b.dense(b.threshold(b.dense("input", 16)), 10)
    elif layout == "branches":  # two branches summed, avg-pool, affine of an i32 map, two affines added
        t = b.two_branches(b.threshold(b.conv("input", 4, {"stride": (2, 1), "padding": 0, "k": 1})))
        t = b.op("avgpool", [t], {"kernel": (2, 1), "stride": 2})
        t = b.op("flatten", [b.affine(t)])
        t = b.op("add", [b.affine(t), b.affine(t)])
    elif layout == "real":  # the f32 stream: float conv, PReLU, real residual, mean-pool, float dense
        t = b.prelu(b.fp_conv("input"))
        t = b.real_residual(t)
        t = b.op("meanpool", [t], {"kernel": 2, "stride": 2})
        t = b.fp_dense(t, 10)
    else:  # int8: quantize_input, int8 conv, max-pool on i8, requantized int8 dense, int8 dense scores
        t = b.int8_conv(b.op("quantize_input", ["input"]))
        t = b.op("maxpool", [t], {"kernel": 2, "stride": 2})
        t = b.int8_dense(b.int8_dense(t, 12, requantize=True), 10, requantize=False)
    b.op("argmax", [t])
    return Graph((1, 8, 8), b.ops, meta={"dataset": "digits", "model": layout, "approximations": []})


def read_file(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="numpy") as f:
        header = json.loads(f.metadata()["bnnkit"])
    return header, load_file(path)


def crafted_digest(header: dict, tensors: dict, version: int = 2) -> str:
    """The SHA-256 an attacker writes: version 2 hashes the header's canonical JSON without
    its ``sha256`` field, then each tensor (key, dtype, shape, bytes) in key order."""
    h = hashlib.sha256()
    if version >= 2:
        body = {k: v for k, v in header.items() if k != "sha256"}
        h.update(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())
    for key in sorted(tensors):
        t = np.ascontiguousarray(tensors[key])
        h.update(f"{key}:{t.dtype.str}:{list(t.shape)};".encode() + t.tobytes())
    return h.hexdigest()


def write_crafted(path: Path, header, tensors: dict, digest: str = "fresh", raw: str | None = None) -> Path:
    """A graph file with ``header`` as given (NaN and Infinity as JSON tokens), or the header
    text ``raw``; a header's SHA-256 recomputed (``fresh``) or left as it is (``stale``)."""
    if isinstance(header, dict) and digest == "fresh":
        header = {**header, "sha256": crafted_digest(header, tensors)}
    save_file(tensors, str(path), metadata={"bnnkit": raw if raw is not None else json.dumps(header)})
    return path


# --- the child process ------------------------------------------------------------------------


def _cli(argv: list[str]) -> dict:
    """``bnnkit ARGV`` in this process: its status, stdout and stderr, as a user would see them."""
    import contextlib
    import io
    import traceback

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException:  # noqa: BLE001 - what the user would see as a traceback
            rc = "crash"
            traceback.print_exc(file=err)
    return {"argv": argv, "rc": rc, "stdout": out.getvalue()[-3000:], "stderr": err.getvalue()[-6000:]}


def child(cases_path: str, results_path: str, compiles: int) -> None:
    """Run in the child: each case's ``commands``, then, while fewer than ``compiles`` have,
    its ``when_loaded`` commands if its first command worked."""
    results = []
    for case in json.loads(Path(cases_path).read_text()):
        outcome = [_cli(argv) for argv in case["commands"]]
        if case.get("when_loaded") and outcome[0]["rc"] == 0 and compiles > 0:
            compiles -= 1
            outcome += [_cli(argv) for argv in case["when_loaded"]]
        results.append(outcome)
    Path(results_path).write_text(json.dumps(results))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def run_in_child(cases: list[dict], work: Path, compiles: int = 0) -> list[list[dict]]:
    """Every case's commands in one child process under ``RLIMIT_AS``; per case, one result
    per command run."""
    (work / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    files = str(work / "cases.json"), str(work / "results.json")
    code = f"import test_hostile_graph as t; t.child({files[0]!r}, {files[1]!r}, {compiles})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_memory,
    )
    assert proc.returncode == 0, f"the child process failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads((work / "results.json").read_text())


def problem(result: dict) -> str | None:
    """Why ``result`` is not "works" (status 0, one JSON object, nothing on stderr) nor
    "one error line" (status 2, one ``error:`` line, nothing on stdout); None if it is either."""
    rc, out, err = result["rc"], result["stdout"], result["stderr"]
    if rc == 0 and err == "" and out.count("\n") == 1 and isinstance(json.loads(out), dict):
        return None
    if rc == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"):
        return None
    return f"bnnkit {' '.join(result['argv'])}: status {rc}\nstdout: {out[-500:]}\nstderr: {err[-3000:]}"


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[Path]:
    """Saved graphs of every layout: each op kind is in one of them, so the fuzz edits them all."""
    folder = tmp_path_factory.mktemp("bases")
    paths = []
    for seed, layout in enumerate(("conv", "dense", "branches", "real", "int8", "fixed")):
        digits_graph(seed, layout).save(folder / f"{layout}.bnn")
        paths.append(folder / f"{layout}.bnn")
    return paths


# --- the fuzz -------------------------------------------------------------------------------------

# An op name that bnnkit before issue 15 pasted into a comment inside bnn_infer: `bnnkit run
# --runtime c-portable` compiled it and ran the `touch` (exit 0, the file created).
INJECT = 'x */ int system(const char *); system("touch {}"); /* y'
NASTY_TEXT = [
    "*/",
    "/*",
    "//",
    '"',
    "'",
    "\n",
    "\r\n",
    "#include <stdlib.h>",
    "#define bnn_infer main",
    "\\",
    "\\\n",
    "??/",
    "a*/b",
    "%s%n",
    "\x00",
    "\u2028",
    "\x85",
    "é",
    "x" * 300,
    "../../evil",
    "bnn.c",
    "op000.weight",
    "input",
    "t0",
    "layer0.pool",
    "digits",
    "INFINITY",
    "",
]
SPECIAL = [
    None,
    True,
    False,
    0,
    1,
    2,
    3,
    -1,
    INT32_MIN,
    2**31 - 1,
    2**31,
    2**63,
    10**30,
    -(10**30),
    0.0,
    1.0,
    1.5,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "11",
    [],
    {},
    [True, True],
    [1, 1],
    [2, 1],
    [0, 1],
    [1, 2, 3],
    [[1]],
    [None],
    [float("inf"), 1],
    {"a": 1},
    {"tensor": "op000.weight", "shape": [1]},
    [{"x": []}],
]
KEYS = ["extra", "name", "kind", "stride", "weight", "min_channels", "sha256", "*/", "__proto__"]


def _paths(node, path=()):
    """Every place in a JSON value, the root included."""
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child_node in children:
        yield from _paths(child_node, (*path, key))


def _leaves(node) -> list:
    """Every value in a JSON value, to swap one field's value for another's."""
    out = [node]
    for _key, child_node in (
        node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    ):
        out += _leaves(child_node)
    return out


def _mutate(header, path: tuple, how: str, value, key: str):
    if not path:
        return value if how == "replace" else header
    parent = header
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last][key] = value
    elif isinstance(parent[last], list):
        parent[last].append(value)
    return header


SOFT_VALUES = ["a", "layer_1.x", "digits", "bnn", 7, 0.25, -3, True, None, ["x", 1], 1, 2, [1, 2]]


def mutations(headers: list[dict], canary: Path):
    """(base index, mutated header, "fresh" or "stale" digest): one or two edits, each
    replacing, deleting or adding (a key or an item) at any place of the header."""
    shell = [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}"]
    hostile = [*SPECIAL, *NASTY_TEXT, *shell, INJECT.format(canary)]
    drawn_values = st.one_of(
        st.integers(-(2**70), 2**70), st.text(max_size=12), st.lists(st.integers(-2, 2**33), max_size=5)
    )

    @st.composite
    def mutation(draw):
        base = draw(st.integers(0, len(headers) - 1))
        # places and values come from a Random that hypothesis seeds: hypothesis's own draws favour
        # the simplest choices (the root, the first value), and most mutations would repeat
        rnd = draw(st.randoms(use_true_random=True))
        header = copy.deepcopy(headers[base])
        for _ in range(draw(st.integers(1, 2))):
            paths = list(_paths(header))
            # names and meta are where edits still load, and so reach profile, codegen and the runtimes
            soft = [p for p in paths if p[:1] == ("meta",) or p[-1:] == ("name",)] or paths
            path = rnd.choice(paths if rnd.random() < 0.7 else soft)
            how = rnd.choice(["replace", "replace", "replace", "delete", "add"]) if path else "replace"
            # a value from elsewhere in the header, or a harmless one, keeps many edits loadable
            source = rnd.choice([hostile, hostile, SOFT_VALUES, _leaves(headers[base]), None])
            value = draw(drawn_values) if source is None else rnd.choice(source)
            header = _mutate(header, path, how, copy.deepcopy(value), rnd.choice(KEYS))
        return base, header, draw(st.sampled_from(["fresh"] * 19 + ["stale"]))

    return mutation()


@pytest.mark.slow
def test_fuzz_mutated_headers_work_or_give_one_error_line(bases, tmp_path):
    canary = tmp_path / "pwned"
    headers, tensors = zip(*(read_file(p) for p in bases))
    drawn = []

    @settings(SETTINGS, max_examples=FUZZ_CASES)
    @given(mutations(list(headers), canary))
    def collect(m):
        drawn.append(m)

    collect()

    folder = tmp_path / "fuzz"
    folder.mkdir()
    seen, cases, stale = set(), [], []
    for base, header, digest in drawn:
        text = json.dumps(header, sort_keys=True) + digest + str(base)
        if text in seen:
            continue
        seen.add(text)
        path = write_crafted(folder / f"{len(cases):04d}.bnn", header, tensors[base], digest)
        out = folder / f"{len(cases):04d}_c"
        if digest == "stale" and header != headers[base]:
            stale.append(len(cases))
        cases.append(
            {
                "commands": [
                    ["profile", str(path), "--json"],
                    ["codegen", str(path), "-o", str(out), "--json"],
                    ["run", str(path), "--limit", "4", "--json"],
                ],
                "when_loaded": [["run", str(path), "--runtime", "c-portable", "--limit", "4", "--json"]],
            }
        )
    results = run_in_child(cases, tmp_path, compiles=COMPILES)

    problems = [p for outcome in results for r in outcome if (p := problem(r))]
    loaded = sum(outcome[0]["rc"] == 0 for outcome in results)
    compiled = sum(len(outcome) > 3 for outcome in results)
    ran = sum(outcome[2]["rc"] == 0 for outcome in results)
    print(
        f"\n{len(cases)} mutated headers ({len(stale)} changed with a stale digest): "
        f"{loaded} loaded, {len(cases) - loaded} refused; {ran} ran in numpy, {compiled} in c-portable; "
        f"{sum(len(o) for o in results)} commands"
    )
    assert not problems, f"{len(problems)} commands neither worked nor gave one error line:\n" + "\n".join(problems[:3])
    assert len(cases) >= 1000 and loaded >= 50 and ran >= 20 and compiled == COMPILES
    # the C runtime refuses exactly what the NumPy reference refuses (a header without its dataset, say)
    differ = [
        (o[2], r)
        for o in results
        if len(o) > 3
        for r in o[3:]
        if (r["rc"], r["stderr"]) != (o[2]["rc"], o[2]["stderr"])
    ]
    assert not differ, f"{len(differ)} loaded graphs ran otherwise in c-portable than in numpy, e.g. {differ[0]}"
    assert stale and all(r["rc"] == 2 for i in stale for r in results[i])  # the header is under the digest
    assert not canary.exists()
    generated = [p for p in folder.glob("*_c/*") if p.suffix in (".c", ".h")]
    assert len(generated) == 2 * loaded
    for path in generated:
        text = path.read_text()
        assert "system" not in text and "touch" not in text and "$(" not in text, path


# --- regressions: the attacks of issue 15 ------------------------------------------------------------


def _set(path: tuple, value):
    return lambda h: _mutate(h, path, "replace", value, "")


def _edit(change):
    """A header change made in place, as one that returns the header."""
    return lambda h: (change(h), h)[1]


STRIDE, SHAPE = ("ops", 0, "attrs", "stride"), ("input", "shape", 1)
PAIR = "expected a positive int or 2 positive ints below 2**31, got"
DIM = "expected an int in 1..2147483647, got"
# item 2: header type confusion (on the conv graph: ops[0] is the input conv, ops[2] the max-pool)
TYPE_CASES = {
    "Infinity in a shape": (_set(SHAPE, float("inf")), f"header field input.shape[1]: {DIM} Infinity"),
    "NaN in a shape": (_set(SHAPE, float("nan")), f"header field input.shape[1]: {DIM} NaN"),
    "Infinity in a stride": (_set(STRIDE, float("inf")), f"header field ops[0].attrs.stride: {PAIR} Infinity"),
    "stride as text": (_set(STRIDE, "11"), f'header field ops[0].attrs.stride: {PAIR} "11"'),
    "stride of bools": (_set(STRIDE, [True, True]), f"header field ops[0].attrs.stride: {PAIR} [true, true]"),
    "kernel of a bool": (_set(("ops", 2, "attrs", "kernel"), True), f"header field ops[2].attrs.kernel: {PAIR} true"),
    "params as a list": (
        _edit(lambda h: h["ops"][0].update(params=list(h["ops"][0]["params"].values()))),
        "header field ops[0].params: expected a JSON object, got [{",
    ),
    "attrs as a list": (
        _edit(lambda h: h["ops"][0].update(attrs=list(h["ops"][0]["attrs"].values()))),
        "header field ops[0].attrs: expected a JSON object, got [1, 1]",
    ),
    "meta as a list": (
        _set(("meta",), ["digits"]),
        'header field meta: expected a JSON object of at most 64 keys, got ["d',
    ),
    "dataset as a list": (
        _set(("meta", "dataset"), ["digits"]),
        'header field meta.dataset: expected text, got ["digits"]',
    ),
    "header a list": (_set((), [1, 2]), "header: expected a JSON object, got [1, 2]"),
    "header null": (_set((), None), "header: expected a JSON object, got null"),
    "header a string": (_set((), "bnnkit-graph"), 'header: expected a JSON object, got "bnnkit-graph"'),
    "version true": (_set(("version",), True), "graph format version true, this bnnkit reads versions 1 and 2"),
    "huge weight shape": (
        _set(("ops", 0, "params", "weight", "shape"), [2**31 - 1] * 4),
        f"parameter values: {(2**31 - 1) ** 4:,}"[:40],
    ),
    "unknown op key": (_edit(lambda h: h["ops"][1].update(code="system()")), 'header field ops[1]: unknown key "code"'),
    "word bits 8.0": (_set(("word_bits",), 8.0), "header field word_bits: expected 8, got 8.0"),
    "tensor from elsewhere": (
        _set(("ops", 0, "params", "weight", "tensor"), "op003.weight"),
        "header field ops[0].params.weight: tensor op003.weight is uint8(5, 7), expected uint8(6, 2)",
    ),
    "control character in meta": (
        _set(("meta", "model"), "conv\nerror: fake"),
        "header field meta.model: expected printable text",
    ),
}
# item 3: a consistent header whose sizes explode (8x8 input, conv padding 100,000, the pool
# stride chosen so that the dense layer still gets its 4x4 map): refused before np.pad
BOUND_CASES = {
    "padding 100,000, pool stride 60,000": (
        _edit(lambda h: (h["ops"][0]["attrs"].update(padding=100_000), h["ops"][2]["attrs"].update(stride=60_000))),
        "op 0 (input_conv2d from layer0): padding (100000, 100000) is larger than the kernel (3, 3)",
    ),
}
HEADER_CASES = {**TYPE_CASES, **BOUND_CASES}
# item 1: text that would reach generated C (INJECT, above)
NAME = "expected a name of at most 128 letters, digits, '_' and '.', got"
INJECTION_CASES = {
    "op name": (
        lambda h, text: h["ops"][0].update(name=text),
        f'header field ops[0].name: {NAME} "x */ int system(const',
    ),
    "tensor name": (lambda h, text: h["ops"][0].update(output=text), f"header field ops[0].output: {NAME}"),
    "input name": (lambda h, text: h["input"].update(name=text), f"header field input.name: {NAME}"),
    "param tensor key": (
        lambda h, text: h["ops"][0]["params"]["weight"].update(tensor=text),
        f"header field ops[0].params.weight.tensor: {NAME}",
    ),
    "meta key": (lambda h, text: h["meta"].update({text: "digits"}), f"header field meta key: {NAME}"),
}


@pytest.fixture(scope="module")
def regressions(bases, tmp_path_factory) -> dict[str, list[dict]]:
    """Every regression case's commands, run once in one child process under RLIMIT_AS."""
    work = tmp_path_factory.mktemp("regressions")
    canary = work / "pwned"
    header, tensors = read_file(bases[0])
    cases, names = [], []

    def add(name: str, path: Path, *commands: list[str]) -> None:
        names.append(name)
        cases.append({"commands": [list(map(str, c)) for c in commands]})

    def all_commands(path: Path, out: Path) -> list[list]:
        commands = [
            ["run", path, "--json"],
            ["profile", path, "--json"],
            ["codegen", path, "-o", out, "--json"],
            ["build", path, "--target", "host", "-o", out, "--json"],
            ["run", path, "--runtime", "c-portable", "--json"],
        ]
        return commands + ([["verify", path, "--image", "0", "--json"]] if importlib.util.find_spec("pysat") else [])

    for name, (change, _) in HEADER_CASES.items():
        path = write_crafted(work / f"{len(cases)}.bnn", change(copy.deepcopy(header)), tensors)
        add(name, path, *all_commands(path, work / f"{len(cases)}_out"))
    for name, (edit, _) in INJECTION_CASES.items():
        h = copy.deepcopy(header)
        edit(h, INJECT.format(canary))
        path = write_crafted(work / f"{len(cases)}.bnn", h, tensors)
        add(f"inject {name}", path, *all_commands(path, work / f"{len(cases)}_out"))
    raw = {
        "nested 100,000 deep": "[" * 100_000 + "]" * 100_000,
        "5,000 digits": '{"version": ' + "9" * 5000 + "}",
        "NaN": "NaN",
        "not JSON": "{",
    }
    for name, text in raw.items():
        path = write_crafted(work / f"{len(cases)}.bnn", None, tensors, raw=text)
        add(f"raw {name}", path, ["profile", path, "--json"])
    path = work / "bfloat16.bnn"  # safetensors written by hand: NumPy has no bfloat16 to write it with
    entry = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}, "__metadata__": {"bnnkit": "{}"}})
    path.write_bytes(len(entry).to_bytes(8, "little") + entry.encode() + bytes(6))
    add("raw bfloat16 tensor", path, ["profile", path, "--json"])
    stale = copy.deepcopy(header)
    stale["ops"][0]["name"] = "renamed"  # valid, but the header is under the SHA-256
    path = write_crafted(work / "stale.bnn", stale, tensors, "stale")
    add("stale digest", path, ["profile", path, "--json"])
    for name, (geometry, _, _) in LARGE.items():
        conv_pool_dense(**geometry).save(work / f"{name}.bnn")
        add(
            name,
            work / f"{name}.bnn",
            ["run", work / f"{name}.bnn", "--dataset", "digits", "--limit", "2", "--json"],
            ["profile", work / f"{name}.bnn", "--json"],
            ["profile", work / f"{name}.bnn", "--json", "--allow-large-graph"],
        )
    results = dict(zip(names, run_in_child(cases, work)))
    results["canary"] = canary.exists()
    return results


def _refused_everywhere(outcome: list[dict], fragment: str) -> None:
    for result in outcome:
        assert problem(result) is None, problem(result)
        assert result["rc"] == 2 and fragment in result["stderr"], (result["argv"], result["stderr"])


@pytest.mark.parametrize("name", TYPE_CASES)
def test_header_type_confusion_is_one_error_line(regressions, name):
    _refused_everywhere(regressions[name], TYPE_CASES[name][1])


@pytest.mark.parametrize("name", BOUND_CASES)
def test_padding_bomb_is_refused_before_allocating(regressions, name):
    _refused_everywhere(regressions[name], BOUND_CASES[name][1])


@pytest.mark.parametrize("name", INJECTION_CASES)
def test_text_for_generated_c_is_refused_and_never_runs(regressions, name):
    _refused_everywhere(regressions[f"inject {name}"], INJECTION_CASES[name][1])
    assert regressions["canary"] is False
    for result in regressions[f"inject {name}"]:  # codegen and build wrote nothing at all
        if result["argv"][0] in ("codegen", "build"):
            assert not Path(result["argv"][3]).exists()


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("raw nested 100,000 deep", "the bnnkit graph header is not valid JSON"),
        ("raw 5,000 digits", "the bnnkit graph header is not valid JSON"),
        ("raw NaN", "header: expected a JSON object, got NaN"),
        ("raw not JSON", "the bnnkit graph header is not valid JSON"),
        (
            "raw bfloat16 tensor",
            "not a readable graph file (truncated or not safetensors): data type 'bfloat16' not understood",
        ),
        ("stale digest", "contents do not match the header's SHA-256"),
    ],
)
def test_unreadable_or_altered_headers_are_one_error_line(regressions, name, fragment):
    _refused_everywhere(regressions[name], fragment)


# --- the resource limits ----------------------------------------------------------------------------


def conv_pool_dense(input_shape, kernel, padding, channels, pool_kernel, pool_stride) -> Graph:
    """input conv -> threshold -> max-pool -> flatten -> binary dense (10) -> argmax."""
    rng = np.random.default_rng(0)
    ops = [
        Op(
            "input_conv2d",
            ["input"],
            "c",
            {"stride": 1, "padding": padding},
            {"weight": rng.random((channels, input_shape[0], *kernel)) < 0.5},
        ),
        Op("threshold", ["c"], "s", {}, {"thresh": np.zeros(channels, np.int32), "flip": np.zeros(channels, bool)}),
        Op("maxpool", ["s"], "p", {"kernel": pool_kernel, "stride": pool_stride}),
        Op("flatten", ["p"], "f"),
    ]
    (ph, pw), (pkh, pkw), (psh, psw) = (
        v if isinstance(v, tuple) else (v, v) for v in (padding, pool_kernel, pool_stride)
    )
    rows = ((input_shape[1] + 2 * ph - kernel[0] + 1) - pkh) // psh + 1
    cols = ((input_shape[2] + 2 * pw - kernel[1] + 1) - pkw) // psw + 1
    features = channels * rows * cols
    ops += [Op("binary_dense", ["f"], "d", {}, {"weight": rng.random((10, features)) < 0.5}), Op("argmax", ["d"], "y")]
    return Graph(input_shape, ops, meta={"dataset": "digits"})


# name -> (geometry, the error without --allow-large-graph, whether the flag lets it load)
LIMIT = "per image, over the limit of 16,777,216 (graph.MAX_ELEMENTS)"
LARGE = {
    # padding within the kernel, so the size comes from a crafted 100,001-row weight: 8e10 window values
    "kernel of 100,001 rows": (
        dict(
            input_shape=(1, 8, 8),
            kernel=(100_001, 1),
            padding=(100_000, 0),
            channels=2,
            pool_kernel=1,
            pool_stride=(33_336, 2),
        ),
        f"values in the window matrix of op 0: {100_008 * 8 * 100_001:,} {LIMIT}",
        False,
    ),
    "pool window of 1,024 taps": (
        dict(input_shape=(1, 64, 64), kernel=(1, 1), padding=0, channels=64, pool_kernel=32, pool_stride=1),
        f"values in the window matrix of op 2: {64 * 33 * 33 * 32 * 32:,} {LIMIT}",
        True,
    ),
    "a 64 x 1100 x 1100 map": (
        dict(input_shape=(1, 1100, 1100), kernel=(3, 3), padding=1, channels=64, pool_kernel=1100, pool_stride=1100),
        f"{64 * 1100 * 1100:,} {LIMIT}",
        True,
    ),
    "9.7G multiply-accumulates": (  # conv windows x output channels, pool taps, dense weights
        dict(input_shape=(256, 64, 64), kernel=(3, 3), padding=1, channels=1024, pool_kernel=64, pool_stride=64),
        f"multiply-accumulates: {64 * 64 * 2304 * 1024 + 1024 * 64 * 64 + 10 * 1024:,} per image",
        True,
    ),
}


@pytest.mark.parametrize("name", LARGE)
def test_sizes_are_bounded_before_allocating(regressions, name):
    run, profile, flagged = regressions[name]
    _, fragment, loads_with_flag = LARGE[name]
    for result in (run, profile):
        assert problem(result) is None, problem(result)
        assert result["rc"] == 2 and fragment in result["stderr"], result["stderr"]
        assert "--allow-large-graph" in result["stderr"]
    assert problem(flagged) is None, problem(flagged)
    assert flagged["rc"] == (0 if loads_with_flag else 2), flagged["stderr"]


def resnet18_cifar() -> Graph:
    """The binary ResNet-18 of the CIFAR papers, as a graph: a 3x3 stem of 64, four stages of
    two basic blocks (64, 128, 256, 512 channels; stride 2 and a 1x1 shortcut conv from the
    second on), the i32 sums added across each block, a 4x4 average pool and a dense head."""
    rng = np.random.default_rng(0)
    ops: list[Op] = []

    def op(kind, inputs, attrs=None, params=None):
        ops.append(Op(kind, inputs, f"t{len(ops)}", attrs or {}, params or {}, name=f"layer{len(ops)}"))
        return ops[-1].output

    def sign(x, c):
        return op("threshold", [x], params={"thresh": np.zeros(c, np.int32), "flip": np.zeros(c, bool)})

    def conv(x, cin, cout, k, stride):
        weight = rng.random((cout, cin, k, k)) < 0.5
        return op("binary_conv2d", [x], {"stride": stride, "padding": k // 2, "pad": "zero"}, {"weight": weight})

    x = op("input_conv2d", ["input"], {"stride": 1, "padding": 1}, {"weight": rng.random((64, 3, 3, 3)) < 0.5})
    cin = 64
    for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
        s = sign(x, cin)
        y = conv(sign(conv(s, cin, cout, 3, stride), cout), cout, cout, 3, 1)
        x = op("add", [y, x if stride == 1 else conv(s, cin, cout, 1, stride)])
        cin = cout
    x = sign(op("flatten", [op("avgpool", [x], {"kernel": 4, "stride": 4})]), 512)
    op("argmax", [op("binary_dense", [x], params={"weight": rng.random((10, 512)) < 0.5})])
    return Graph((3, 32, 32), ops, meta={"dataset": "cifar10"})


def test_resnet18_on_cifar_is_well_within_the_limits(tmp_path):
    resnet18_cifar().save(tmp_path / "resnet18.bnn")
    use = resources(Graph.load(tmp_path / "resnet18.bnn"))
    print(f"\nResNet-18 on CIFAR: {use}")
    widths = [64, 64, 64, 128, 128, 256, 256, 512, 512]  # stem, then each block's output
    weights = (
        64 * 3 * 9 + sum(9 * (a * b + b * b) + (a * b if a != b else 0) for a, b in zip(widths, widths[1:])) + 10 * 512
    )
    thresholds = 2 * (sum(widths[:-1]) + sum(widths[1:]) + 512)  # thresh and flip of each sign
    assert use["params"] == weights + thresholds < graph_mod.MAX_PARAMS / 2
    assert use["largest"] < MAX_ELEMENTS / 16 and use["activations"] < graph_mod.MAX_ACTIVATIONS / 16
    assert use["macs"] < graph_mod.MAX_MACS / 4


def test_too_many_ops_are_refused(tmp_path):
    ops = [Op("flatten", ["input" if i == 0 else f"f{i - 1}"], f"f{i}") for i in range(graph_mod.MAX_OPS - 1)]
    dense = Op("input_dense", [ops[-1].output], "d", {}, {"weight": np.ones((2, 4), bool)})
    Graph((1, 2, 2), [*ops, dense, Op("argmax", ["d"], "y")]).save(tmp_path / "long.bnn")
    with pytest.raises(BnnkitError, match=r"long.bnn: header field ops: expected a list of 1..1024 items"):
        Graph.load(tmp_path / "long.bnn")
    assert len(Graph.load(tmp_path / "long.bnn", allow_large=True).ops) == graph_mod.MAX_OPS + 1


def test_batches_never_change_results(bases, monkeypatch):
    graph = Graph.load(bases[0])
    x = np.random.default_rng(1).integers(0, 256, (7, 1, 8, 8), dtype=np.uint8)
    whole = numpy_ref.predict(graph, x)
    monkeypatch.setattr(numpy_ref, "BATCH_BYTES", 1)  # a batch of one image each
    for got, want in zip(numpy_ref.predict(graph, x), whole):
        np.testing.assert_array_equal(got, want)


# --- names, prefixes, versions and the digest, in process ----------------------------------------------


def test_generator_rechecks_names_changed_after_validation(bases):
    graph = Graph.load(bases[0])
    graph.ops[0].name = "x */ int system(const char *); /*"
    with pytest.raises(BnnkitError, match=r"op 0 name: expected a name of at most 128 letters"):
        generate_c(graph)


@pytest.mark.parametrize("prefix", ["bnn;touch x", "../bnn", "_bnn", "9lives", "b" * 65, "bnn\n#define"])
def test_codegen_prefix_must_be_a_c_identifier(bases, tmp_path, capsys, prefix):
    assert main(["codegen", str(bases[0]), "-o", str(tmp_path / "c"), "--prefix", prefix]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prefix ") and "is not a C identifier" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_mcu_prefixes_cannot_overwrite_the_harness(bases, tmp_path):
    from bnnkit.runtime.cortex_m import build_mcus

    with pytest.raises(BnnkitError, match="none of bnnkit_models, mcu, startup, semihost, harness"):
        build_mcus([Graph.load(bases[0])], tmp_path, prefixes=["harness"])


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda ops: ops[0].attrs.update(stride=(True, True)),
            "attribute stride: expected a positive int or 2 positive ints",
        ),
        (lambda ops: ops[0].attrs.update(stride="11"), "attribute stride: expected"),
        (lambda ops: ops[0].attrs.update(padding=-1), "attribute padding: expected a non-negative int"),
        (lambda ops: ops[0].attrs.update(dilation=2), "unexpected \\['dilation'\\]"),
        (lambda ops: setattr(ops[1], "output", "s */"), "tensor name: expected a name"),
    ],
)
def test_graphs_built_in_python_are_held_to_the_same_rules(change, message):
    ops = digits_graph(0, "conv").ops
    change(ops)
    with pytest.raises(BnnkitError, match=message):
        Graph((1, 8, 8), ops)
    with pytest.raises(BnnkitError, match="input shape: expected 3 positive ints, got \\[1, 8.0, 8\\]"):
        Graph((1, 8.0, 8), digits_graph(0, "conv").ops)


def test_the_digest_covers_the_header(bases):
    header, tensors = read_file(bases[0])
    assert header["version"] == graph_mod.FORMAT_VERSION == 2
    assert header["sha256"] == crafted_digest(header, tensors) != crafted_digest(header, tensors, version=1)


def test_version_1_files_still_load_under_the_same_schema(bases, tmp_path):
    header, tensors = read_file(bases[0])
    header["version"] = 1
    header["sha256"] = crafted_digest(header, tensors, version=1)
    old = write_crafted(tmp_path / "v1.bnn", header, tensors, "stale")
    x = np.random.default_rng(2).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    for got, want in zip(numpy_ref.predict(Graph.load(old), x), numpy_ref.predict(Graph.load(bases[0]), x)):
        np.testing.assert_array_equal(got, want)
    header["ops"][1]["name"] = "a */ b"
    header["sha256"] = crafted_digest(header, tensors, version=1)
    with pytest.raises(BnnkitError, match=r"v1.bnn: header field ops\[1\].name: expected a name"):
        Graph.load(write_crafted(tmp_path / "v1.bnn", header, tensors, "stale"))
