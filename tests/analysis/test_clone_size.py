"""Clone size rule, growth of the number of clones with the width, excess error fit."""

import math
import statistics

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


def test_crossing_is_computed_in_float64_for_float32_sizes() -> None:
    sizes = np.array([3, 6, 12, 24], dtype=np.float32)  # not powers of two: log2 is rounded in float32
    curve = np.array([0.5, 0.9, 0.98, 1.0])
    want = 2 ** (math.log2(12) + (0.99 - 0.98) / (1.0 - 0.98) * (math.log2(24) - math.log2(12)))
    assert crossing_size(sizes, curve, 0.99) == pytest.approx(want, rel=1e-14)


def test_clone_size_status_for_each_kind_of_curve() -> None:
    sizes = np.array([1, 2, 4, 8])
    sem = np.zeros(4)
    between = clone_size(sizes, np.array([0.3, 0.6, 0.95, 0.995]), sem)
    assert between.status == "ok" and between.value == pytest.approx(2 ** (2 + 0.04 / 0.045))
    never = clone_size(sizes, np.array([0.3, 0.6, 0.95, 0.98]), sem)
    assert never.status.startswith("undetermined: mean R^2 stays below 0.99") and never.value == 8.0
    first = clone_size(sizes, np.array([0.995, 0.996, 0.997, 0.998]), sem)
    assert first.status.startswith("at most the smallest size") and (first.value, first.lo, first.hi) == (1.0, 1.0, 1.0)


def test_growth_status_says_when_the_fit_is_undetermined() -> None:
    widths = np.array([32.0, 64.0, 128.0, 256.0])
    assert fit_clone_growth(widths, np.array([1.0, 1.0, 2.0, 4.0])).status.startswith("undetermined: fewer than three")
    flat = fit_clone_growth(widths, np.ones(4))
    assert flat.slope == 0.0 and flat.status.startswith("undetermined: the number of clones does not grow")
    assert fit_clone_growth(widths, np.array([1.0, 2.0, 3.0, 5.0])).status == "ok"


def test_growth_fit_of_float32_or_integer_widths_is_the_float64_fit() -> None:
    """Widths beyond 2^12 whose grid of critical widths float32 cannot hold exactly; the planted one is on the grid."""
    widths = np.array([300, 1000, 3000, 5000, 7000, 9001])
    critical = np.linspace(0.0, 9001.0, 4097)[300]
    n_clones = np.maximum(1.0, 1.0 + (widths - critical) / 500.0)
    for given in (widths.astype(np.float32), widths.tolist()):
        fit = fit_clone_growth(given, n_clones)
        assert fit.critical_width == pytest.approx(critical, rel=1e-12) and fit.slope == pytest.approx(1 / 500, rel=1e-9)


def test_excess_error_is_the_least_squares_fit_from_the_clone_size_up() -> None:
    sizes = np.array([3, 6, 12, 24, 48], dtype=np.float32)  # float32 sizes: the fit still runs in float64
    errors = np.array([0.5, 0.3, 0.21, 0.17, 0.12])
    use = [(float(w), e - 0.1) for w, e in zip(sizes, errors, strict=True) if w >= 12]  # the clone size itself counts
    want = sum(e * w**-0.5 for w, e in use) / sum(1 / w for w, _ in use)
    assert fit_excess_error(sizes, errors, 0.1, 12.0) == pytest.approx(want, rel=1e-14)


def test_summary_of_two_values_and_of_float32_values() -> None:
    two = summarize(np.array([1.0, 3.0]))
    assert (two.mean, two.std, two.sem, two.n) == (2.0, pytest.approx(math.sqrt(2)), pytest.approx(1.0), 2)
    one = summarize(np.array([5.0, np.inf]))
    assert one.mean == 5.0 and one.n == 1 and math.isnan(one.std) and math.isnan(one.sem)
    empty = summarize(np.array([np.nan]))
    assert all(math.isnan(v) for v in (empty.mean, empty.std, empty.sem))
    values = np.array([0.1, 0.2, 0.7], dtype=np.float32)
    exact = [float(v) for v in values]
    got = summarize(values)
    assert got.mean == pytest.approx(statistics.fmean(exact), rel=1e-15)
    assert got.std == pytest.approx(statistics.stdev(exact), rel=1e-14)
