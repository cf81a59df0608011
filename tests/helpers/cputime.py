"""``pytest --cpu-durations N`` (registered in tests/conftest.py): the N test phases that cost most
CPU, this process's and that of the children it waited for, and the CPU per file. On a machine
shared with other work a wall-clock ``--durations`` measures the load as much as the tests."""

import resource
from collections import Counter

import pytest


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuDurations:
    def __init__(self, count: int):
        self.count = count
        self.phases: list[tuple[float, str, str]] = []  # (CPU seconds, phase, node id)

    def _measure(self, phase: str, item: pytest.Item):
        start = cpu_seconds()
        yield
        self.phases.append((cpu_seconds() - start, phase, item.nodeid))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        yield from self._measure("setup", item)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        yield from self._measure("call", item)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item):
        yield from self._measure("teardown", item)

    def pytest_terminal_summary(self, terminalreporter):
        write = terminalreporter.write_line
        write(f"CPU seconds: {cpu_seconds():.1f} in all, {sum(p[0] for p in self.phases):.1f} in test phases")
        for seconds, phase, nodeid in sorted(self.phases, reverse=True)[: self.count]:
            write(f"{seconds:7.2f}s {phase:8} {nodeid}")
        files: Counter[str] = Counter()
        for seconds, _, nodeid in self.phases:
            files[nodeid.split("::")[0]] += seconds
        write("CPU seconds per file:")
        for name, seconds in files.most_common():
            write(f"{seconds:7.2f}s {name}")
