"""The clones stage on in-memory activations: regimes of planted layers, files without a head, network order."""

from __future__ import annotations

import numpy as np
import pytest

from mitosis_cli.analysis.chunks import draw_chunks
from mitosis_cli.io.activation_arrays import Activations
from mitosis_cli.stages.clones import CloneSettings, measure_clones

FAST = CloneSettings(repeats=8, acc_repeats=8, ii_points=0)


def _acts(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], head: bool = True, width: int = 0,
          seed: int = 0, classes: int = 10) -> Activations:
    w = width or next(iter(features.values())).shape[1]
    rng = np.random.default_rng(99)
    weight, bias = (rng.standard_normal((classes, w)), np.zeros(classes)) if head else (None, None)
    pairs = {split: (features[split], labels[split]) for split in features}
    return Activations.from_arrays(weight, bias, num_classes=classes, arch="planted", dataset="toy", seed=seed,
                                   name=f"planted w{w} s{seed}", **pairs)


def _latent_layer(width: int, latent: int, noise: float, n: int = 1500) -> Activations:
    """Noisy copies of a `latent`-dimensional signal; labels from the first 10 signal coordinates."""
    rng = np.random.default_rng(width)
    features, labels = {}, {}
    for split in ("train", "test"):
        signal = rng.standard_normal((n, latent))
        features[split] = signal[:, np.arange(width) % latent] + noise * rng.standard_normal((n, width))
        labels[split] = np.argmax(signal[:, :10], axis=1)
    return _acts(features, labels)


def _class_means(width: int, noise: float, n: int = 1500) -> Activations:
    rng = np.random.default_rng(7)
    means = rng.standard_normal((10, width))
    features, labels = {}, {}
    for split in ("train", "test"):
        labels[split] = rng.integers(0, 10, n)
        features[split] = means[labels[split]] + noise * rng.standard_normal((n, width))
    return _acts(features, labels)


def _network(tables, **facts):
    [net] = [n for n in tables.networks if all(getattr(n, k) == v for k, v in facts.items())]
    return net


def test_a_noisy_16_dimensional_latent_is_noisy_clones_not_collapsed() -> None:
    tables = measure_clones([_latent_layer(256, 16, 0.1)], FAST)
    net = tables.networks[0]
    assert net.collapse["test"]["participation_ratio"] == pytest.approx(16, rel=0.05)
    assert net.collapse["test"]["top_share"] < 0.999
    assert net.regime == "noisy-clones" and net.n_clones >= 2


def test_class_means_with_tiny_noise_are_collapsed() -> None:
    tables = measure_clones([_class_means(128, 1e-4)], FAST)
    net = tables.networks[0]
    assert net.collapse["test"]["top_share"] > 0.99999 and net.collapse["test"]["nc1"] < 1e-6
    assert net.clone_size <= 18 and net.regime == "collapsed"


def test_full_rank_gaussian_features_have_no_clones() -> None:
    rng = np.random.default_rng(3)
    features = {s: rng.standard_normal((1500, 64)) for s in ("train", "test")}
    labels = {s: rng.integers(0, 10, 1500) for s in ("train", "test")}
    net = measure_clones([_acts(features, labels)], FAST).networks[0]
    assert net.n_clones < 2 and net.regime == "no-clones"


def test_without_a_head_everything_else_is_measured_and_the_skip_is_said() -> None:
    acts = _latent_layer(64, 8, 0.1)
    headless = Activations.from_arrays(None, None, train=(acts.features("train"), acts.labels("train")),
                                       test=(acts.features("test"), acts.labels("test")), num_classes=10,
                                       arch="planted", dataset="toy", name="imported")
    full, bare = measure_clones([acts], FAST), measure_clones([headless], FAST)
    metrics = set(bare.clones["metric"].to_pylist())
    assert "chunk_accuracy" not in metrics and "chunk_error" not in metrics
    assert {"reconstruction_r2", "probe_accuracy", "residual_abs_corr", "residual_abs_corr_paper"} <= metrics
    # what does not need the head is the same with or without it
    for metric in ("reconstruction_r2", "probe_accuracy", "residual_abs_corr_paper"):
        pick = lambda t, m=metric: sorted(r["value"] for r in t.clones.to_pylist() if r["metric"] == m)  # noqa: E731
        assert pick(bare) == pick(full)
    assert bare.networks[0].skipped_metrics == ["chunk_accuracy", "chunk_error"]
    assert bare.notes == ["planted w64: no trained head in imported: chunk_accuracy, chunk_error not measured"]
    assert full.notes == [] and bare.networks[0].regime == full.networks[0].regime


def test_networks_are_ordered_by_what_they_are_not_by_name() -> None:
    layers = [_latent_layer(w, 8, 0.1, n=300) for w in (64, 16, 32)]
    named = [Activations(a.header, a.head_weight, a.head_bias, a.splits, name=f"{'zyx'[i]}.h5") for i, a in enumerate(layers)]
    tables = measure_clones(named, FAST)
    assert [n.width for n in tables.networks] == [16, 32, 64]
    widths = tables.clones["width"].to_pylist()
    assert widths == sorted(widths)


def test_stage_uses_the_chunks_it_draws() -> None:
    """The R^2 of repeat r is the chunk draw_chunks gives (same seed, width, size)."""
    acts = _latent_layer(32, 4, 0.1, n=400)
    tables = measure_clones([acts], CloneSettings(repeats=3, acc_repeats=3, ii_points=0, sizes=(4,)))
    from mitosis_cli.analysis.reconstruction import Moments, reconstruction_scores

    expected = reconstruction_scores(Moments.of(acts.features("test").astype(np.float64)), draw_chunks(32, 4, 3, 0)).r2
    got = [r["value"] for r in tables.clones.to_pylist() if r["metric"] == "reconstruction_r2" and r["split"] == "test"]
    np.testing.assert_allclose(got, expected, atol=1e-10)
