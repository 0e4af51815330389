"""Clone size rule, growth of the number of clones with the width, excess error fit."""

import numpy as np
import pytest

from mitosis_cli.analysis.clone_size import clone_size, crossing_size, fit_clone_growth, fit_excess_error, summarize


def test_crossing_is_log2_interpolated() -> None:
    sizes = np.array([8, 16, 32, 64])
    curve = np.array([0.5, 0.9, 0.98, 1.0])
    # between 32 (0.98) and 64 (1.0): halfway for 0.99 -> 2 ** 5.5
    assert crossing_size(sizes, curve, 0.99) == pytest.approx(2**5.5)
    assert crossing_size(sizes, curve, 0.4) == 8.0
    assert np.isnan(crossing_size(sizes, curve, 1.5))
    assert crossing_size(sizes[::-1], curve[::-1], 0.99) == pytest.approx(2**5.5)  # order does not matter


def test_clone_size_interval_brackets_the_estimate() -> None:
    sizes = np.array([1, 2, 4, 8, 16])
    mean = np.array([0.2, 0.5, 0.9, 0.985, 1.0])
    sem = np.array([0.01, 0.01, 0.01, 0.01, 0.0])
    cs = clone_size(sizes, mean, sem, threshold=0.99)
    assert cs.lo <= cs.value <= cs.hi
    assert cs.value == pytest.approx(2 ** (3 + 0.005 / 0.015))
    assert cs.lo == pytest.approx(2 ** (2 + 0.08 / 0.085))  # mean + sem: 0.91 at 4, 0.995 at 8
    assert "0.99" in cs.rule
    never = clone_size(sizes, mean * 0.5, sem, threshold=0.99)
    assert never.value == 16.0  # clamped to the largest size


def test_growth_fit_recovers_a_hinge() -> None:
    widths = np.array([32, 64, 128, 256, 512, 1024], dtype=float)
    n_clones = np.maximum(1.0, 1.0 + (widths - 100.0) / 64.0)
    fit = fit_clone_growth(widths, n_clones)
    assert fit.critical_width == pytest.approx(100.0, abs=0.5)
    assert fit.slope == pytest.approx(1 / 64, rel=1e-3)
    # proportional growth n = W / w*: slope 1 / w*, critical width w*
    fit = fit_clone_growth(widths[2:], widths[2:] / 64.0)
    assert fit.slope == pytest.approx(1 / 64, rel=1e-6) and fit.critical_width == pytest.approx(64.0, abs=0.3)
    with pytest.raises(ValueError, match="two distinct widths"):
        fit_clone_growth(np.array([64.0, 64.0]), np.array([1.0, 2.0]))


def test_excess_error_fit() -> None:
    sizes = np.array([4, 8, 16, 32, 64, 128], dtype=float)
    errors = 0.05 + 0.3 * sizes**-0.5
    errors[:2] += 0.2  # below the clone size the law does not hold and must be ignored
    assert fit_excess_error(sizes, errors, 0.05, 16.0) == pytest.approx(0.3)
    assert np.isnan(fit_excess_error(sizes, errors, 0.05, 1000.0))


def test_summarize() -> None:
    v = np.array([1.0, 2.0, 4.0, np.nan])
    s = summarize(v)
    assert (s.mean, s.n) == (pytest.approx(7 / 3), 3)
    assert s.std == pytest.approx(np.std([1, 2, 4], ddof=1)) and s.sem == pytest.approx(s.std / np.sqrt(3))
    assert summarize(np.array([np.nan])).n == 0
