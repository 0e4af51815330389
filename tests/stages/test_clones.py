"""The clones stage on in-memory activations: regimes of planted layers, files without a head, network order, its
progress; the summary of hand-made clones tables (undetermined cases), error_inf's source and the order of networks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mitosis_cli.analysis.chunks import draw_chunks
from mitosis_cli.analysis.collapse import Collapse
from mitosis_cli.io.activation_arrays import Activations
from mitosis_cli.io.clone_tables import CLONES_SCHEMA, clones_table
from mitosis_cli.io.tables import provenance, write_table
from mitosis_cli.stages.clone_summary import MeasuredNetwork, error_inf_source, network_order, summarize_clones
from mitosis_cli.stages.clones import CloneSettings, _Rows, measure_clones

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


def test_progress_counts_the_phases_of_each_network() -> None:
    """One step per split's pass, then R^2, the residual shape and the Information Imbalance: done runs 1..total."""
    seen = []
    measure_clones([_latent_layer(16, 4, 0.1, n=100)], CloneSettings(repeats=2, acc_repeats=2, ii_points=20, sizes=(4,)),
                   on_step=seen.append)
    phases = ["train: moments, chunk and probe accuracy", "test: moments, chunk and probe accuracy",
              "reconstruction R^2 and residual correlations", "residual shape", "information imbalance"]
    assert [(p.done, p.total, p.status, p.unit) for p in seen] == [(i + 1, 5, phase, "phase") for i, phase in enumerate(phases)]
    assert len({p.task for p in seen}) == 1 and seen[0].task.startswith("clones planted w16")


def test_rows_skip_values_that_do_not_apply_and_keep_each_repeat_number() -> None:
    rows = _Rows({"source": "x", "width": 8})
    rows.add("test", "m", 4, np.array([math.nan, 0.5, math.nan, 0.7]), n_points=10, k=2)
    assert rows.columns == {"source": ["x", "x"], "width": [8, 8], "split": ["test"] * 2, "metric": ["m"] * 2,
                            "chunk_size": [4, 4], "repeat": [1, 3], "value": [0.5, 0.7], "n_points": [10, 10], "k": [2, 2]}


def _clones_rows(identity: dict, rows: list[tuple[str, str, int, list[float]]]) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in CLONES_SCHEMA.names}
    for split, metric, size, values in rows:
        for repeat, value in enumerate(values):
            row = {**identity, "split": split, "metric": metric, "chunk_size": size, "repeat": repeat, "value": value}
            for name in columns:
                columns[name].append(row.get(name))
    return columns


def test_summary_of_networks_whose_facts_are_undetermined() -> None:
    """Hand-made rows. Network a: R^2 0.5, 0.7 at size 2 and 1, 1 at size 8 crosses 0.9 at 2^(1 + 0.75 * 2); no collapse
    diagnostics (so no regime); error_inf of one member: c = (0.1 - 0.05) 8^-1/2 / 8^-1 with that caveat. Network b: no
    R^2 (clone size undetermined, n 0), NaN diagnostics, NaN chunk errors (c undetermined), no trained head."""
    ids = {name: {"source": name, "arch": name + "-arch", "dataset": "toy", "width": w, "seed": 0, "epoch": 1}
           for name, w in (("a", 8), ("b", 4))}
    a = _clones_rows(ids["a"], [("test", "reconstruction_r2", 2, [0.5, 0.7]), ("test", "reconstruction_r2", 8, [1.0, 1.0]),
                                ("test", "chunk_error", 2, [0.3, 0.4]), ("test", "chunk_error", 8, [0.1, 0.1])])
    b = _clones_rows(ids["b"], [("test", "chunk_error", 1, [math.nan]), ("test", "chunk_error", 4, [math.nan])])
    table = clones_table({name: a[name] + b[name] for name in a})
    nan = Collapse(math.nan, math.nan, math.nan, 1)
    networks = [MeasuredNetwork(ids["a"], "test", (2, 8)),
                MeasuredNetwork(ids["b"], "test", (1, 4), {"test": nan}, ("chunk_accuracy", "chunk_error"))]
    one = "from one member only (e.parquet): the error of one network, not of a large ensemble"
    rows = summarize_clones(table, networks, 0.9, 0.05, one).to_pylist()
    facts = {(r["source"], r["metric"]): r for r in rows if r["chunk_size"] is None or r["metric"] == "residual_at_clone_size"}
    assert (facts[("a", "clone_size")]["mean"], facts[("a", "clone_size")]["n"]) == (pytest.approx(2**2.5), 2)
    assert (facts[("a", "residual_at_clone_size")]["chunk_size"], facts[("a", "residual_at_clone_size")]["mean"]) == (8, 0)
    excess = facts[("a", "excess_error_c")]
    assert (excess["mean"], excess["n"]) == (pytest.approx(0.05 * math.sqrt(8)), 1)
    assert excess["status"] == "error_inf from one member only: c measures the distance to one network, not to a large ensemble"
    assert facts[("a", "error_inf")]["status"] == one
    assert not {("a", "regime"), ("b", "regime"), ("b", "residual_at_clone_size")} & set(facts)
    size_b = facts[("b", "clone_size")]
    assert (size_b["mean"], size_b["n"]) == (4.0, 0) and size_b["status"].startswith("undetermined")
    assert [facts[("b", m)]["status"] for m in ("top_share", "participation_ratio", "nc1")] == ["undetermined"] * 3
    assert facts[("b", "excess_error_c")]["status"] == "undetermined: no chunk size at or above the clone size"
    assert facts[("b", "skipped_metrics")]["status"] == "chunk_accuracy, chunk_error: the file has no trained head"
    across = [r for r in rows if r["source"] == "all"]
    assert [(r["arch"], r["dataset"], r["n"]) for r in across] == [("a-arch,b-arch", "toy", 2)] * 2


def test_error_inf_source_names_where_error_inf_came_from(tmp_path: Path) -> None:
    """The members of the ensemble table's error-inf row on the test split (rows of other kinds or splits do not count)."""
    def ensemble(name: str, rows: list[tuple[str, str, int]]) -> Path:
        kinds, splits, members = zip(*rows, strict=True)
        table = pa.table({"kind": list(kinds), "metric": ["error"] * len(rows), "split": list(splits),
                          "members": list(members), "value": [0.02] * len(rows)})
        return write_table(tmp_path / name, table, provenance("ensemble", [], {}, ""))

    one = ensemble("one.parquet", [("error-inf", "test", 1), ("error-inf", "train", 9), ("ensemble", "test", 7)])
    many = ensemble("many.parquet", [("error-inf", "test", 5), ("wide", "test", 1)])
    none = ensemble("none.parquet", [("error-inf", "train", 1), ("ensemble", "test", 1)])
    assert error_inf_source(None, one) == ""
    assert error_inf_source(0.02, None) == "given (--error-inf)"
    assert error_inf_source(0.02, one) == f"from one member only ({one}): the error of one network, not of a large ensemble"
    assert error_inf_source(0.02, many) == f"ensemble of 5 networks ({many})"
    assert error_inf_source(0.02, none) == f"from {none}"


def test_network_order_is_data_set_arch_width_seed_epoch_then_file() -> None:
    """Each key decides only between networks equal in the keys before it; an unknown seed or epoch (None, or NaN as
    a table reads it back) and an unknown file come first."""
    def net(dataset: str, arch: str, width: int, seed: float | None, epoch: float | None, source: str | None) -> dict:
        return {"dataset": dataset, "arch": arch, "width": width, "seed": seed, "epoch": epoch, "source": source}

    ordered = [net("a-data", "z-arch", 512, 9, 9, "zz"), net("b-data", "a-arch", 8, 0, 0, "aa"),
               net("b-data", "b-arch", 4, 9, 9, "aa"), net("b-data", "b-arch", 16, None, 5, "x"),
               net("b-data", "b-arch", 16, math.nan, 6, "x"), net("b-data", "b-arch", 16, 1, 5, "a"),
               net("b-data", "b-arch", 16, 2, None, "a"), net("b-data", "b-arch", 16, 2, 0, None),
               net("b-data", "b-arch", 16, 2, 0, "A"), net("b-data", "b-arch", 16, 2, 0, "B")]
    for shuffled in (ordered[::-1], ordered[1::2] + ordered[::2]):
        assert sorted(shuffled, key=network_order) == ordered
