"""Fixtures shared by test modules; shared helper functions live in tests/helpers/."""

import pytest

from bnnkit.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch embedded ebnn_cnn run on digits and its exported graph, once per module that asks."""
    base = tmp_path_factory.mktemp("trained")
    run, graph = base / "run", base / "model.bnn"
    assert (
        main(
            [
                "train",
                "--model",
                "ebnn_cnn",
                "--option",
                "channels=[8]",
                "--recipe",
                "embedded",
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--limit-train",
                "128",
                "--out",
                str(run),
                "--json",
            ]
        )
        == 0
    )
    assert main(["export", str(run), "-o", str(graph), "--check", "0", "--json"]) == 0
    return run, graph
