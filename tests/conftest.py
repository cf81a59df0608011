"""Fixtures shared by test modules; shared helper functions live in tests/helpers/."""

import pytest
from helpers.cputime import CpuDurations
from hypothesis import settings

from bnnkit.cli import main

# The fast tier (`make test-fast`, i.e. `-m "not slow"`) caps every property test at FAST_EXAMPLES
# examples (helpers.graphgen.examples); the whole suite keeps each test's own count.
FAST_EXAMPLES = 30
settings.register_profile("fast", max_examples=FAST_EXAMPLES)


def pytest_addoption(parser):
    parser.addoption("--cpu-durations", type=int, metavar="N", help="show the N test phases that cost most CPU")


def pytest_configure(config):
    """Select the fast hypothesis profile for a run that leaves the slow tests out, unless the
    command line names a profile itself (``--hypothesis-profile``)."""
    if "not slow" in (config.getoption("markexpr") or "") and not config.getoption("--hypothesis-profile", None):
        settings.load_profile("fast")
    if config.getoption("cpu_durations") is not None:
        config.pluginmanager.register(CpuDurations(config.getoption("cpu_durations")), "cpu-durations")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A one-epoch embedded ebnn_cnn run on digits and its exported graph, once per session; tests only read it."""
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
