"""The skip policy (tests/skip_policy.py) in small pytest sessions of its own: an unexpected skip fails the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.skip_policy import ALLOWED_SKIPS, SkipPolicy

SESSION = """
import re
from pathlib import Path

import pytest

def test_passes():
    assert True

def test_skips():
    pytest.skip({reason!r})

@pytest.mark.skipif(True, reason={reason!r})
def test_marked():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
"""


def _run(pytester: pytest.Pytester, reason: str, allowed: tuple[str, ...] = ALLOWED_SKIPS) -> pytest.RunResult:
    pytester.makepyfile(test_session=SESSION.format(reason=reason))
    return pytester.runpytest("-q", plugins=[SkipPolicy(allowed)])


def test_an_unexpected_skip_fails_the_run_with_one_line_per_test(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "the run finished before the signal")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    lines = [line for line in result.outlines if line.startswith("UNEXPECTED SKIP")]
    assert lines == ["UNEXPECTED SKIP test_session.py::test_skips: the run finished before the signal",
                     "UNEXPECTED SKIP test_session.py::test_marked: the run finished before the signal"]


def test_an_allowed_skip_passes(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "needs a CUDA device")  # on the real list
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert not any("UNEXPECTED" in line for line in result.outlines)


def test_a_pattern_must_match_the_reason_not_merely_appear_near_it(pytester: pytest.Pytester) -> None:
    assert _run(pytester, "CUDA is available here").ret == pytest.ExitCode.TESTS_FAILED
    assert _run(pytester, "CUDA is available here", allowed=(r"^CUDA is available",)).ret == pytest.ExitCode.OK


def test_a_module_skipped_while_collected_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_module="import pytest\npytest.importorskip('no_such_module_here')\n",
                        test_other="def test_passes():\n    assert True\n")
    result = pytester.runpytest("-q", plugins=[SkipPolicy()])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert any(line.startswith("UNEXPECTED SKIP test_module.py: could not import 'no_such_module_here'")
               for line in result.outlines), result.outlines


def test_an_interrupted_run_keeps_its_own_exit_code(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_session="import pytest\ndef test_a():\n    pytest.skip('x')\n"
                                     "def test_b():\n    raise KeyboardInterrupt\n")
    result = pytester.runpytest("-q", plugins=[SkipPolicy()], no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_this_suite_registers_the_policy(request: pytest.FixtureRequest) -> None:
    policy = request.config.pluginmanager.get_plugin("mitosis-skip-policy")
    assert isinstance(policy, SkipPolicy) and [p.pattern for p in policy.allowed] == list(ALLOWED_SKIPS)


def test_docs_list_every_allowed_reason() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "testing.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|", doc, re.MULTILINE)
    assert rows == list(ALLOWED_SKIPS), "docs/testing.md's table of allowed skips differs from tests/skip_policy.py"
