"""Collapse diagnostics against numpy on the raw features, and the regime rule on its thresholds."""

import warnings

import numpy as np
import pytest

from mitosis_cli.analysis.accuracy import one_hot
from mitosis_cli.analysis.collapse import (
    COLLAPSED_SHARE,
    MIN_RESIDUAL,
    NetworkFacts,
    collapse_diagnostics,
    regime,
)
from mitosis_cli.analysis.reconstruction import Moments


def _diagnostics(x: np.ndarray, labels: np.ndarray, classes: int):
    m = Moments.of(np.concatenate([x, one_hot(labels, classes).numpy()], axis=1))
    return collapse_diagnostics(m.scatter, m.mean, m.n, x.shape[1])


def _reference(x: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Top-(C-1) share, participation ratio and NC1 (Papyan et al.) straight from the definitions."""
    present = np.unique(labels)
    c = len(present)
    lam = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)))[::-1]
    mu = x.mean(0)
    within = sum((x[labels == k] - x[labels == k].mean(0)).T @ (x[labels == k] - x[labels == k].mean(0))
                 for k in present) / len(x)
    between = sum(np.outer(x[labels == k].mean(0) - mu, x[labels == k].mean(0) - mu) for k in present) / c
    return lam[: c - 1].sum() / lam.sum(), lam.sum() ** 2 / (lam**2).sum(), np.trace(within @ np.linalg.pinv(between)) / c


def _assert_matches_the_definitions(x: np.ndarray, labels: np.ndarray, one_hot_classes: int, present: int) -> None:
    """The diagnostics from the moments (labels one-hot over `one_hot_classes`) equal `_reference` on the raw
    features, with `present` classes counted."""
    got = _diagnostics(x, labels, one_hot_classes)
    share, participation, nc1 = _reference(x, labels)
    assert got.classes == present
    assert got.top_share == pytest.approx(share, rel=1e-9)
    assert got.participation_ratio == pytest.approx(participation, rel=1e-9)
    assert got.nc1 == pytest.approx(nc1, rel=1e-6)

@pytest.mark.parametrize("noise", [1e-4, 0.5])
@pytest.mark.parametrize("width", [40, 200])  # the full spectrum, and Lanczos for the leading eigenvalues
def test_diagnostics_match_the_definitions(noise: float, width: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 800)
    labels[labels == 5] = 4  # a class that never occurs: C counts the classes present
    x = 3 * rng.standard_normal((6, width))[labels] + noise * rng.standard_normal((800, width)) + 2.0
    _assert_matches_the_definitions(x, labels, one_hot_classes=6, present=5)


def test_a_16_dimensional_latent_has_16_dimensions_and_is_not_collapsed() -> None:
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((3000, 16))
    x = latent[:, np.arange(256) % 16] + 0.05 * rng.standard_normal((3000, 256))
    labels = np.argmax(latent[:, :10], axis=1)
    got = _diagnostics(x, labels, 10)
    assert got.participation_ratio == pytest.approx(16, rel=0.1)
    assert got.top_share < COLLAPSED_SHARE and got.nc1 > 0.5


def test_class_means_with_tiny_noise_are_collapsed() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 2000)
    x = rng.standard_normal((10, 128))[labels] + 1e-4 * rng.standard_normal((2000, 128))
    got = _diagnostics(x, labels, 10)
    assert got.top_share > 0.99999 and got.nc1 < 1e-6 and got.participation_ratio < 9


def _facts(width: int, clone_size: float, residual: float = 1e-3, share: float = 0.9, family: str = "mlp|d") -> NetworkFacts:
    return NetworkFacts(width, clone_size, residual, share, 10, family)


def test_regime_rule_at_its_thresholds() -> None:
    assert regime(_facts(64, 15.0, share=COLLAPSED_SHARE)) == "collapsed"  # 15 <= 2 (C - 1) = 18
    assert regime(_facts(64, 18.0, share=COLLAPSED_SHARE)) == "collapsed"  # exactly one doubling above C - 1
    assert regime(_facts(64, 19.0, share=COLLAPSED_SHARE)) == "noisy-clones"  # more than a doubling above C - 1
    assert regime(_facts(64, 15.0, share=0.998)) == "noisy-clones"
    assert regime(_facts(64, 33.0)) == "no-clones"  # fewer than two clones
    assert regime(_facts(64, 32.0)) == "noisy-clones"
    assert regime(_facts(64, 32.0, residual=MIN_RESIDUAL / 2)) == "no-clones"  # residuals at rounding level


def test_regime_needs_the_clone_size_constant_across_widths() -> None:
    constant = [_facts(w, 30.0 + w / 100) for w in (64, 128, 256, 512)]
    assert {regime(f, constant) for f in constant} == {"noisy-clones"}
    growing = [_facts(w, w / 2.5) for w in (64, 128, 256, 512)]  # 2.5 clones at every width: w_c* grows with W
    assert {regime(f, growing) for f in growing} == {"no-clones"}
    other_family = [_facts(512, 200.0, family="wrn|d")]
    assert regime(constant[0], [*constant, *other_family]) == "noisy-clones"
    exactly_two = _facts(128, 64.0)  # W / w_c* = 2: it holds two clones, so its w_c* counts
    assert regime(_facts(64, 10.0), [exactly_two]) == "no-clones"


def test_nc1_of_a_perfectly_separated_split_stays_finite() -> None:
    """Class means of rank C - 1 in a narrow layer, no spread: the rounding-level C-th direction is dropped."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, 4000)
    # float32 features far from the origin, as a BatchNorm-ended layer's: the moments' rounding leaves the
    # (rank-deficient) class-mean directions a C-th singular value of ~5e-15 of the largest
    x = (rng.standard_normal((10, 16))[labels] + 1e-6 * rng.standard_normal((4000, 16)) + 100).astype(np.float32)
    got = _diagnostics(x.astype(np.float64), labels, 10)
    assert got.nc1 == pytest.approx(_reference(x.astype(np.float64), labels)[2], rel=1e-2) and got.nc1 < 1e-6


def test_small_scale_features_and_a_class_of_one_sample() -> None:
    """Variance far below 1 (the shares are scale-free) and a class present once: it counts as present."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, 60)
    labels[labels == 3] = 2
    labels[17] = 3  # one sample of class 3
    x = 1e-3 * (rng.standard_normal((5, 12))[labels] + 0.3 * rng.standard_normal((60, 12)))
    _assert_matches_the_definitions(x, labels, one_hot_classes=5, present=4)


def test_one_class_or_none_leaves_nc1_undefined() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 6)) + 2.0
    for targets, classes in ((one_hot(np.zeros(40, np.int64), 3).numpy(), 1), (np.zeros((40, 3)), 0)):
        m = Moments.of(np.concatenate([x, targets], axis=1))
        got = collapse_diagnostics(m.scatter, m.mean, m.n, 6)
        assert got.classes == classes and np.isnan(got.nc1) and got.top_share == 0.0  # C - 1 <= 0 directions
        assert got.participation_ratio == pytest.approx(_reference(x, np.zeros(40, np.int64))[1], rel=1e-9)


def test_more_classes_than_neurons_share_all_the_variance_without_warnings() -> None:
    rng = np.random.default_rng(8)
    labels = np.arange(300) % 70  # C - 1 = 69 >= W = 64: the top-(C-1) directions are all of them
    x = rng.standard_normal((300, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _diagnostics(x, labels, 70)
    assert got.classes == 70 and got.top_share == pytest.approx(1.0, rel=1e-12)


def test_the_pinv_cut_is_relative_to_the_largest_between_class_eigenvalue() -> None:
    """Class means 1e4 apart along e0 and 1e-4 along e1: Sigma_B's second eigenvalue is 1e-16 of the first,
    below numpy pinv's cut (W eps relative to the largest), so NC1 is that of the means without the e1 offset."""
    rng = np.random.default_rng(9)
    labels = np.arange(600) % 3
    means = np.zeros((3, 16))
    means[1, 0], means[2, 0] = 1e4, 5e3
    noise = rng.standard_normal((600, 16))
    for k in range(3):  # centred within each class: the class means are exactly `means`
        noise[labels == k] -= noise[labels == k].mean(0)
    offset = means.copy()
    offset[2, 1] = 1e-4
    got = _diagnostics(offset[labels] + noise, labels, 3).nc1
    assert got == pytest.approx(_reference(means[labels] + noise, labels)[2], rel=1e-3)
