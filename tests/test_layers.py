"""The layers of DESIGN.md hold: import-linter's contracts (pyproject.toml) pass, and the graph side runs
where torch cannot be imported at all."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.docblocks import ROOT, SRC

from bnnkit.apps.fit import Candidate, candidate_graph
from bnnkit.cost.graph_cost import profile
from bnnkit.review import Store, expand, write_report
from bnnkit.runtime.evaluate import run_graph

# Imported before anything else in the child: `import torch` (or any submodule) raises, as on a device
# with no PyTorch installed.
NO_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is not installed here")

    sys.meta_path.insert(0, NoTorch())
    from bnnkit.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (make test installs it with the dev extra)")
    proc = subprocess.run([lint], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def _without_torch(*args) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, args), "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def digits_graph(tmp_path_factory):
    """An untrained MLP for digits, exported (the child only loads the file)."""
    graph = candidate_graph(Candidate("binarynet_mlp", {"width": 32, "depth": 1}), (1, 8, 8), 10)
    path = tmp_path_factory.mktemp("layers") / "m.bnn"
    graph.save(path)
    return graph, path


def test_run_and_profile_work_without_torch(digits_graph):
    graph, path = digits_graph
    ran = _without_torch("run", path, "--runtime", "numpy", "--dataset", "digits", "--limit", "50")
    expected = run_graph(graph, "numpy", "digits", 50).to_dict()
    del ran["seconds"], expected["seconds"]
    assert ran == expected
    assert _without_torch("profile", path) == json.loads(json.dumps(profile(graph)))


def test_report_works_without_torch(tmp_path):
    """`bnnkit report` reads the store (SQLite) and draws: a review made elsewhere reports where torch is absent."""
    grid = expand({"model": "binarynet_mlp", "dataset": "digits", "epochs": 1, "seeds": [0, 1], "methods": ["rsign"]})
    with Store(tmp_path) as store:
        store.add(grid.runs)
        for i, spec in enumerate(grid.runs):
            store.finish(
                spec.key,
                {
                    "status": "done",
                    "top1_final": 0.8 + i / 100,
                    "top1_best": 0.9,
                    "train_seconds": 1.0,
                    "costs": {"params": 1000 + i},
                },
            )
    reported = _without_torch("report", tmp_path)
    assert reported == json.loads(json.dumps(write_report(tmp_path)))
    assert [r["label"] for r in reported["rows"]] == ["baseline", "rsign"]


def test_the_graph_side_imports_without_torch():
    """What the contracts leave out: a package's __init__ that imports its torch side eagerly."""
    prelude = NO_TORCH.split("from bnnkit.cli")[0]
    packages = (
        "bnnkit, bnnkit.api, bnnkit.cli, bnnkit.cost, bnnkit.cost.graph_cost, bnnkit.data, bnnkit.graph, "
        "bnnkit.recipe, bnnkit.review, bnnkit.review.report, bnnkit.runtime, bnnkit.runtime.evaluate, "
        "bnnkit.training, bnnkit.training.plots"
    )
    proc = subprocess.run(
        [sys.executable, "-c", prelude + f"import {packages}"], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr  # any `import torch` on the way raised


def test_the_child_really_has_no_torch():
    """The prelude works: a command that needs torch fails on the import, naming it."""
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "summary", "--model", "binarynet_mlp", "--dataset", "digits"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "torch is not installed here" in proc.stderr
