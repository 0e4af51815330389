"""runtime: the default number of torch threads, and $MITOSIS_THREADS refused in one line when it is not a number."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mitosis_cli.errors import InputError
from mitosis_cli.runtime import default_threads
from tests.conftest import write_planted_acts


def test_default_threads_are_the_usable_cpus_at_most_8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MITOSIS_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert default_threads() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert default_threads() == 1


@pytest.mark.parametrize(("value", "want"), [("3", 3), (" 16 ", 16), ("1", 1)])
def test_mitosis_threads_wins_over_the_cpus(monkeypatch: pytest.MonkeyPatch, value: str, want: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("MITOSIS_THREADS", value)
    assert default_threads() == want


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_mitosis_threads_that_is_not_a_count_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MITOSIS_THREADS", value)
    with pytest.raises(InputError, match="MITOSIS_THREADS"):
        default_threads()


def test_a_bad_mitosis_threads_ends_a_command_with_one_error_line_and_exit_2(tmp_path: Path) -> None:
    acts = write_planted_acts(tmp_path / "acts.h5", n=60, width=16)
    env = {**os.environ, "MITOSIS_THREADS": "two"}
    done = subprocess.run([sys.executable, "-m", "mitosis_cli", "clones", str(acts), "-o", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[0] == "mitosis: error: MITOSIS_THREADS='two' is not a positive number of threads"
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
