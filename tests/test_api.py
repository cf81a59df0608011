"""The Python API (``import bnnkit``): lazy, torch-free on the graph side, and the same
runs as the command line."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.commands import train_digits
from helpers.docblocks import ROOT, blocks, run_shell, user_env
from helpers.graphgen import case_from_seed

import bnnkit
from bnnkit import api
from bnnkit.runtime.numpy_ref import predict as reference_predict


def python(code: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_import_bnnkit_loads_no_torch_and_every_export_resolves():
    out = python("""
        import sys
        import bnnkit
        assert "torch" not in sys.modules, "import bnnkit loaded torch"
        names = sorted(n for n in bnnkit.__all__ if n not in ("BnnkitError", "__version__"))
        for n in names:
            getattr(bnnkit, n)
        print(" ".join(names))
    """).stdout.split()
    assert {"train", "export_model", "predict", "summary", "create_model", "Recipe", "load_recipe"} <= set(out)


def test_lazy_names_are_the_library_functions():
    from bnnkit import models, nn, recipe, training

    assert bnnkit.train is api.train and bnnkit.predict is api.predict
    assert bnnkit.create_model is models.create_model and bnnkit.register_model is models.register_model
    assert bnnkit.Recipe is recipe.Recipe and bnnkit.load_run is training.load_run
    assert bnnkit.clip_latent_weights_ is nn.clip_latent_weights_
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        bnnkit.trian  # noqa: B018


def test_predict_on_a_graph_needs_no_torch(tmp_path):
    case = case_from_seed(3)
    case.graph.save(tmp_path / "g.bnn")
    np.save(tmp_path / "x.npy", case.x)
    python(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        import bnnkit
        graph = bnnkit.load_graph("{tmp_path / "g.bnn"}")
        x = np.load("{tmp_path / "x.npy"}")
        for runtime in ("numpy", "c", "c-portable"):
            scores, labels = bnnkit.predict(graph, x, runtime=runtime)
            np.save(f"{tmp_path}/{{runtime}}.npy", scores)
    """)
    expected, _ = reference_predict(case.graph, case.x)
    for runtime in ("numpy", "c", "c-portable"):
        assert np.array_equal(np.load(tmp_path / f"{runtime}.npy"), expected), runtime


def test_predict_errors_name_the_choice():
    graph = case_from_seed(1).graph
    with pytest.raises(bnnkit.BnnkitError, match="unknown runtime 'gpu'; use one of numpy, c, c-portable"):
        bnnkit.predict(graph, case_from_seed(1).x, runtime="gpu")


@pytest.mark.slow
def test_train_wrapper_makes_the_same_run_as_the_cli(tmp_path):
    """bnnkit.train maps its keywords exactly as `bnnkit train` maps its flags: on a CPU
    the two runs are bit-identical, down to the weights file. The thread count is pinned:
    chosen from the free cores, it may differ between the two runs and round differently."""
    kwargs = dict(
        recipe="embedded",
        epochs=1,
        seed=3,
        lr=2e-3,
        batch_size=32,
        model_options={"width": 32, "depth": 1},
        limit_train=400,
        threads=1,
        progress=False,
    )
    ours = bnnkit.train("binarynet_mlp", "digits", out=tmp_path / "api", **kwargs)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnnkit",
            *train_digits(
                "binarynet_mlp",
                *("--recipe", "embedded", "--epochs", 1, "--seed", 3, "--lr", "2e-3", "--batch-size", 32),
                *("--limit-train", 400, "--threads", 1, "--out", tmp_path / "cli", "--json"),
                width=32,
                depth=1,
            ),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stderr
    theirs = json.loads(cli.stdout)
    assert ours["test_acc"] == theirs["test_acc"] and ours["train_loss"] == theirs["train_loss"]
    assert (tmp_path / "api/model.safetensors").read_bytes() == (tmp_path / "cli/model.safetensors").read_bytes()
    # and the rest of the API agrees with itself on that run
    graph = bnnkit.export_model(tmp_path / "api", tmp_path / "m.bnn")
    model, _ = bnnkit.load_run(tmp_path / "api")
    test = bnnkit.load_dataset("digits", "test")
    _, torch_labels = bnnkit.predict(model, test.x)
    _, graph_labels = bnnkit.predict(tmp_path / "m.bnn", test.x)
    assert np.array_equal(torch_labels, graph_labels)
    assert bnnkit.evaluate(tmp_path / "api")["accuracy"] == ours["test_acc"] == bnnkit.evaluate(graph)["accuracy"]


def test_swapped_paths_name_the_right_command(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.json").write_text("{}")
    (tmp_path / "m.bnn").write_bytes(b"")
    with pytest.raises(bnnkit.BnnkitError) as err:
        bnnkit.load_graph(tmp_path / "run")
    assert str(err.value) == (
        f"{tmp_path}/run: a run directory, not a graph file; `bnnkit eval {tmp_path}/run` "
        f"evaluates it, `bnnkit export {tmp_path}/run -o run.bnn` makes its graph"
    )
    with pytest.raises(bnnkit.BnnkitError, match="m.bnn: a graph file, not a run directory; it is exported already"):
        bnnkit.export_model(tmp_path / "m.bnn")
    with pytest.raises(bnnkit.BnnkitError, match="needs its input: dataset= or in_shape="):
        bnnkit.export_model(bnnkit.create_model("binarynet_mlp", 10, (1, 8, 8), "embedded"))


def test_train_takes_a_module_and_load_run_rebuilds_it(tmp_path):
    def build():
        return bnnkit.create_model("binarynet_mlp", 10, (1, 8, 8), "embedded", width=32, depth=1)

    result = bnnkit.train(build(), "digits", out=tmp_path / "run", recipe="embedded", epochs=1, progress=False)
    model, _ = bnnkit.load_run(tmp_path / "run", model=build)
    assert bnnkit.evaluate(model, "digits")["accuracy"] == result["test_acc"]
    assert bnnkit.evaluate(tmp_path / "run", model=build)["accuracy"] == result["test_acc"]


@pytest.mark.slow
def test_python_api_page_runs_as_written(tmp_path):
    """docs/python-api.md: its python blocks in one script, a block marked `file: NAME`
    written to that file instead, then its bash blocks, in an empty directory."""
    script = []
    shell = []
    for block in blocks(ROOT / "docs/python-api.md"):
        if block.marker and block.marker.startswith("file: "):
            (tmp_path / block.marker.removeprefix("file: ")).write_text(block.code)
        elif block.lang == "python":
            script.append(block.code)
        elif block.lang == "bash":
            shell.append(block.code)
    assert len(script) >= 4 and shell
    (tmp_path / "example.py").write_text("\n".join(script))
    env = user_env(tmp_path)
    out = run_shell(f"{sys.executable} example.py", tmp_path, env).stdout
    accuracy = float(out.split("test accuracy after one epoch: ")[1].split()[0])
    assert accuracy > 0.8, out  # it learned (chance is 0.1): one epoch of a binary MLP on 4,000 MNIST images
    assert "PyTorch and the graph agree on 100.00% of the labels" in out
    run_shell("\n".join(shell), tmp_path, env)
    assert (tmp_path / "runs/tiny-cli/model.safetensors").is_file()
