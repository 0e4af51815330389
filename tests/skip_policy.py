"""No silent skips: a test run that skips a test for a reason not on `ALLOWED_SKIPS` fails.

A skip hides a test that did not run, and `pytest -q` still ends green. Only a few reasons are about the
machine rather than the code (docs/testing.md): every other skip is listed at the end of the run, one line
each, and turns exit code 0 into 1. Registered by tests/conftest.py,
so it holds for any subset of the suite; a test left out with ``-k`` or ``--deselect`` is not a skip.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

# Regular expressions searched in a skip's reason. Each one is about the machine, never about the code.
ALLOWED_SKIPS: tuple[str, ...] = (
    # No GPU: the CUDA paths are compared with the CPU ones where there is one (tests/analysis).
    r"^needs a CUDA device$",
    # Not root: only root mounts the small tmpfs of the full-disk tests (tests/reliability/conftest.py `tmpfs`);
    # CI runs as root, where a mount that fails fails the test.
    r"^needs root to mount a tmpfs",
)

_PREFIX = "Skipped: "  # what pytest.skip() puts before its message


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The message of a skip report (a `pytest.skip` call, a skipif mark or an importorskip)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix(_PREFIX)


class SkipPolicy:
    """Collects the skips whose reason no pattern matches, reports them and fails the run."""

    def __init__(self, allowed: Sequence[str] = ALLOWED_SKIPS) -> None:
        self.allowed = [re.compile(pattern) for pattern in allowed]
        self.unexpected: list[tuple[str, str]] = []  # (test id, reason)

    def _check(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):  # an expected failure is not a skip
            return
        reason = skip_reason(report)
        if not any(pattern.search(reason) for pattern in self.allowed):
            self.unexpected.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._check(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:  # a whole module skipped while collected
        self._check(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.unexpected:
            return
        terminalreporter.write_sep("=", "unexpected skips (not allowed in tests/skip_policy.py, see docs/testing.md)",
                                   red=True)
        for nodeid, reason in self.unexpected:
            terminalreporter.write_line(f"UNEXPECTED SKIP {nodeid}: {reason}")


def register(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(), "mitosis-skip-policy")
