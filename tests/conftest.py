"""Shared fixtures."""

import pytest


@pytest.fixture
def say(request):
    """Write one line on the terminal even under output capture: suites that CI runs
    report their figures this way (faults injected, verdicts, convergence times)."""

    def write(line: str) -> None:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)

    return write
