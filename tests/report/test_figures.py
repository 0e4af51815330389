"""Each figure shows the table it was given: positions, counts and values read back from the Axes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon

from mitosis_cli.analysis.clone_size import fit_clone_growth, fit_excess_error
from mitosis_cli.report import figures as F
from mitosis_cli.report.figures.draw import CHUNK_AXIS
from mitosis_cli.report.frame import Frame
from mitosis_cli.report.inputs import load_inputs
from mitosis_cli.report.select import error_inf_for, network_epochs, select_network
from tests.report import tables as T


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")  # pyplot keeps every figure a test drew until it is closed


def frame(rows: list[dict], schema: pa.Schema) -> Frame:
    return Frame.from_arrow(pa.Table.from_pylist(rows, schema=schema))


def line(fig: Figure, gid: str) -> Line2D:
    found = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == gid]
    assert len(found) == 1, f"expected one line {gid!r}, found {[ln.get_gid() for ax in fig.axes for ln in ax.get_lines()]}"
    return found[0]


def lines(fig: Figure, prefix: str) -> list[Line2D]:
    return [ln for ax in fig.axes for ln in ax.get_lines() if (ln.get_gid() or "").startswith(prefix)]


def raw_mean(rows: list[dict], metric: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk sizes, mean and sem over repeats, computed independently of the report code."""
    sizes = sorted({r["chunk_size"] for r in rows if r["metric"] == metric and r["split"] == split})
    values = [np.array([r["value"] for r in rows if r["metric"] == metric and r["split"] == split and r["chunk_size"] == s])
              for s in sizes]
    return (np.array(sizes, float), np.array([v.mean() for v in values]),
            np.array([v.std(ddof=1) / np.sqrt(len(v)) for v in values]))


@pytest.fixture(scope="module")
def network() -> dict:
    rows = T.clones_rows(width=128, clone_size=8, seed=3, repeats=3)
    summary = T.summary_rows(rows, clone_size=8, lo=4, hi=16)
    return {"key": ("mlp", "mnist5k", 128), "rows": rows, "clones": frame(rows, T.CLONES_SCHEMA),
            "summary": frame(summary, T.SUMMARY_SCHEMA), "summary_rows": summary}


def test_panels_mark_the_tables_clone_size_and_interval(network) -> None:
    fig = F.network_panels(network["key"], network["clones"], network["summary"], None)
    markers = lines(fig, "clone-size")
    assert len(markers) == 4, "the clone size is marked in every panel"
    assert all(np.allclose(ln.get_xdata(), 8.0) for ln in markers)
    bands = [p for ax in fig.axes for p in ax.patches if p.get_gid() == "clone-size-interval"]
    assert len(bands) == 4
    xs = bands[0].get_xy()[:, 0] if isinstance(bands[0], Polygon) else [bands[0].get_x(), bands[0].get_x() + bands[0].get_width()]
    assert (min(xs), max(xs)) == (4.0, 16.0)
    assert "$w_c^*$ = 8" in fig._suptitle.get_text() and "16 clones" in fig._suptitle.get_text()


def test_panels_plot_every_chunk_size_with_the_tables_values(network) -> None:
    fig = F.network_panels(network["key"], network["clones"], network["summary"], None)
    sizes, mean, sem = raw_mean(network["rows"], "chunk_error", "test")
    excess = line(fig, "excess_error:test")
    np.testing.assert_allclose(excess.get_xdata(), sizes)
    np.testing.assert_allclose(excess.get_ydata(), mean - T.ERROR_INF)  # error_inf from the summary
    for gid, metric, split in (("chunk_error:train", "chunk_error", "train"),
                               ("reconstruction_r2:test", "reconstruction_r2", "test"),
                               ("reconstruction_r2:train->test", "reconstruction_r2", "train->test"),
                               ("residual_abs_corr:test", "residual_abs_corr", "test")):
        _, y, _ = raw_mean(network["rows"], metric, split)
        plotted = line(fig, gid)
        assert len(plotted.get_xdata()) == len(sizes) == 6  # 4, 8, ..., 128
        np.testing.assert_allclose(plotted.get_ydata(), y)
    # Error bars are the standard error over repeats: the bar of the first point spans mean +- sem.
    ax = excess.axes
    bars = [c for c in ax.collections if c.get_segments() and len(c.get_segments()) == len(sizes)]
    first = bars[0].get_segments()[0]
    np.testing.assert_allclose(sorted(first[:, 1]), [mean[0] - T.ERROR_INF - sem[0], mean[0] - T.ERROR_INF + sem[0]])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == CHUNK_AXIS and "error" in ax.get_ylabel() and "infty" in ax.get_ylabel()


def test_guide_decays_as_inverse_square_root_from_the_clone_size(network) -> None:
    fig = F.network_panels(network["key"], network["clones"], network["summary"], None)
    guide = line(fig, "guide")
    x, y = np.asarray(guide.get_xdata()), np.asarray(guide.get_ydata())
    assert x.min() == pytest.approx(8.0) and x.max() == pytest.approx(128.0)
    np.testing.assert_allclose(y * np.sqrt(x), y[0] * np.sqrt(x[0]))  # c * w^-1/2, constant c
    assert y[0] * np.sqrt(x[0]) == pytest.approx(T.EXCESS_C, rel=0.1)  # the c the synthetic errors were made with


def test_without_error_inf_the_raw_test_error_is_shown(network) -> None:
    summary = frame([r for r in network["summary_rows"] if r["metric"] != "error_inf"], T.SUMMARY_SCHEMA)
    fig = F.network_panels(network["key"], network["clones"], summary, None)
    _, mean, _ = raw_mean(network["rows"], "chunk_error", "test")
    np.testing.assert_allclose(line(fig, "chunk_error:test").get_ydata(), mean)
    assert not lines(fig, "excess_error")


def test_error_inf_from_the_ensemble_table_of_the_same_width(network) -> None:
    summary = frame([r for r in network["summary_rows"] if r["metric"] != "error_inf"], T.SUMMARY_SCHEMA)
    ensemble = frame([{"kind": "error-inf", "width": 128, "members": 16, "repeat": 0, "split": "test", "metric": "error",
                       "value": 0.01},
                      {"kind": "error-inf", "width": 64, "members": 16, "repeat": 0, "split": "test", "metric": "error",
                       "value": 0.3}],
                     T.ENSEMBLE_SCHEMA)
    fig = F.network_panels(network["key"], network["clones"], summary, ensemble)
    _, mean, _ = raw_mean(network["rows"], "chunk_error", "test")
    np.testing.assert_allclose(line(fig, "excess_error:test").get_ydata(), mean - 0.01)


def test_summary_alone_is_enough_for_the_panels(network) -> None:
    fig = F.network_panels(network["key"], None, network["summary"], None)
    r2 = [r for r in network["summary_rows"] if r["metric"] == "reconstruction_r2" and r["split"] == "test"]
    plotted = line(fig, "reconstruction_r2:test")
    np.testing.assert_allclose(plotted.get_xdata(), sorted(r["chunk_size"] for r in r2))
    np.testing.assert_allclose(plotted.get_ydata(), [r["mean"] for r in sorted(r2, key=lambda r: r["chunk_size"])])


def test_missing_metrics_leave_a_labelled_empty_panel() -> None:
    rows = [r for r in T.clones_rows(width=32, clone_size=8) if r["metric"] == "reconstruction_r2"]
    fig = F.network_panels(("mlp", "mnist5k", 32), frame(rows, T.CLONES_SCHEMA), None, None)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum("no " in t for t in texts) == 3
    assert len(line(fig, "reconstruction_r2:test").get_xdata()) == 4  # 4, 8, 16, 32


def test_clones_against_width_shows_points_fit_and_critical_width() -> None:
    rows = []
    for width in (64, 128, 256):
        for seed in (0, 1):
            rows += T.summary_rows(T.clones_rows(width, clone_size=16, seed=seed, repeats=2), 16, 8, 32)
    rows += T.cross_rows(critical_width=40.0, slope=0.05)
    fig = F.clones_vs_width(frame(rows, T.SUMMARY_SCHEMA))
    points = line(fig, "n_clones:mlp:mnist5k")
    np.testing.assert_allclose(points.get_xdata(), [64, 128, 256])
    np.testing.assert_allclose(points.get_ydata(), [4, 8, 16])
    np.testing.assert_allclose(line(fig, "critical-width:mlp:mnist5k").get_xdata(), 40.0)
    fit = line(fig, "fit:mlp:mnist5k")
    x, y = np.asarray(fit.get_xdata(), float), np.asarray(fit.get_ydata(), float)
    assert (x[1], y[1]) == (40.0, 1.0)
    assert (y[2] - y[1]) / (x[2] - x[1]) == pytest.approx(0.05)
    assert "width" in fig.axes[0].get_xlabel() and "(neurons)" in fig.axes[0].get_xlabel()


def test_clones_against_width_fits_itself_without_cross_file_rows() -> None:
    rows = []
    for width in (64, 128, 256):
        rows += T.summary_rows(T.clones_rows(width, clone_size=16, repeats=2), 16, 8, 32)
    fig = F.clones_vs_width(frame(rows, T.SUMMARY_SCHEMA))
    # n = W / 16 is the line through (16, 1) with slope 1/16.
    np.testing.assert_allclose(line(fig, "critical-width:mlp:mnist5k").get_xdata(), 16.0)
    assert "fitted to these networks" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_information_imbalance_both_ways_per_network() -> None:
    rows = T.clones_rows(64, clone_size=8) + T.clones_rows(256, clone_size=32)
    summary = T.summary_rows(rows[: len(rows) // 2], 8, 4, 16) + T.summary_rows(rows[len(rows) // 2:], 32, 16, 64)
    keys = [("mlp", "mnist5k", 64), ("mlp", "mnist5k", 256)]
    fig = F.information_imbalance(frame(rows, T.CLONES_SCHEMA), frame(summary, T.SUMMARY_SCHEMA), keys)
    for metric in ("ii_chunk_to_full", "ii_full_to_chunk"):
        for (_, _, width), sizes in zip(keys, (5, 7), strict=True):
            plotted = line(fig, f"{metric}:mlp:mnist5k:{width}")
            assert len(plotted.get_xdata()) == sizes  # 4..64 and 4..256
            _, mean, _ = raw_mean([r for r in rows if r["width"] == width], metric, "test")
            np.testing.assert_allclose(plotted.get_ydata(), mean)
    np.testing.assert_allclose(lines(fig, "clone-size:mlp:mnist5k:256")[0].get_xdata(), 32.0)
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "N = 500" in legend and "k = 1" in legend


def test_ensemble_curves_wide_networks_and_error_inf() -> None:
    rows = T.ensemble_rows(widths=(64,), members=(1, 2, 4), repeats=3)
    fig = F.ensemble_accuracy(frame(rows, T.ENSEMBLE_SCHEMA))
    curve = line(fig, "ensemble:64")
    np.testing.assert_allclose(curve.get_xdata(), [1, 2, 4])
    expected = [np.mean([r["value"] for r in rows if r["kind"] == "ensemble" and r["metric"] == "accuracy" and r["members"] == m])
                for m in (1, 2, 4)]
    np.testing.assert_allclose(curve.get_ydata(), expected)
    np.testing.assert_allclose(line(fig, "ensemble-total:64").get_xdata(), [64, 128, 256])
    wide = line(fig, "wide")
    np.testing.assert_allclose(wide.get_xdata(), [256, 512])
    assert [ln.get_gid() for ln in lines(fig, "wide-reference")] == ["wide-reference:512"]  # the widest single network
    assert all(np.allclose(ln.get_ydata(), 1 - T.ERROR_INF) for ln in lines(fig, "accuracy-inf"))
    assert len(fig.axes) == 3 and len(lines(fig, "bias-variance")) == 3  # loss, bias, variance
    np.testing.assert_allclose(line(fig, "bias-variance:variance").get_xdata(), [64])
    assert not lines(fig, "some-future-kind")


def test_ensemble_accuracy_from_error_rows_only() -> None:
    rows = [r for r in T.ensemble_rows(widths=(32,), members=(1, 2), repeats=2)
            if r["metric"] == "error" and r["kind"] == "ensemble"]
    fig = F.ensemble_accuracy(frame(rows, T.ENSEMBLE_SCHEMA))
    expected = [1 - np.mean([r["value"] for r in rows if r["members"] == m]) for m in (1, 2)]
    np.testing.assert_allclose(line(fig, "ensemble:32").get_ydata(), expected)
    assert len(fig.axes) == 2


def test_training_curves_one_line_per_run_split_and_quantity() -> None:
    epochs = np.arange(1, 6)
    runs = []
    for width, seed in ((64, 0), (64, 1), (256, 0)):
        runs.append((("mlp", "mnist5k", width), seed, Frame({
            "epoch": epochs.astype(float), "train_loss": 1 / epochs, "test_loss": 1.5 / epochs,
            "train_error": 0.5 / epochs, "test_error": 0.6 / epochs})))
    fig = F.training_curves(runs)
    assert len(lines(fig, "train_loss")) == len(lines(fig, "test_error")) == 3
    plotted = line(fig, "test_error:mlp:mnist5k:256:0")
    np.testing.assert_allclose(plotted.get_ydata(), 0.6 / epochs)
    assert fig.axes[0].get_xlabel() == "epoch" and "(nats)" in fig.axes[0].get_ylabel()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels.count("mnist5k mlp w64") == 1, "seeds of one network share one legend entry"


def test_chunk_metrics_over_training_one_point_per_epoch(tmp_path) -> None:
    rows = []
    for epoch, clone_size in ((1, 32), (10, 16), (50, 8)):
        rows += T.clones_rows(32, clone_size=clone_size, source=f"runs/w32/acts-epoch-{epoch:04d}.h5", repeats=2)
    path = T.write_rows(tmp_path / "clones.parquet", rows, T.CLONES_SCHEMA, "clones")
    clones = load_inputs([path]).clones  # the epoch is read from the activation file's name
    key = ("mlp", "mnist5k", 32)
    assert network_epochs(clones, key) == [1.0, 10.0, 50.0]
    fig = F.metrics_over_training(key, clones, None)
    per_size = lines(fig, "chunk_error:test:")
    assert len(per_size) == 4  # chunk sizes 4, 8, 16, 32
    np.testing.assert_allclose(per_size[0].get_xdata(), [1, 10, 50])
    # The panel set of the network uses the latest epoch only.
    latest = select_network(clones, key)
    assert latest.unique("epoch") == [50.0]


def test_fit_rows_over_several_architectures_apply_to_each() -> None:
    # `mitosis clones` labels a fit over several files "mlp,wrn"; each family's points get that fit.
    rows = T.summary_rows(T.clones_rows(64, clone_size=16, repeats=2), 16, 8, 32)
    rows += T.cross_rows(critical_width=24.0, slope=0.05, arch="mlp,wrn")
    fig = F.clones_vs_width(frame(rows, T.SUMMARY_SCHEMA))
    np.testing.assert_allclose(line(fig, "critical-width:mlp:mnist5k").get_xdata(), 24.0)


def test_the_single_error_inf_of_the_widest_networks_serves_every_width() -> None:
    ensemble = frame([{"kind": "error-inf", "width": 1024, "members": 8, "repeat": 0, "split": "test", "metric": "error",
                       "value": 0.03}], T.ENSEMBLE_SCHEMA)
    assert error_inf_for(None, ensemble, 64) == 0.03


def test_final_networks_are_preferred_to_intermediate_epochs(tmp_path) -> None:
    rows = T.clones_rows(32, clone_size=8, source="runs/w32/acts.h5", repeats=2)
    rows += T.clones_rows(32, clone_size=16, source="runs/w32/acts-epoch-0005.h5", repeats=2)
    clones = load_inputs([T.write_rows(tmp_path / "clones.parquet", rows, T.CLONES_SCHEMA, "clones")]).clones
    assert select_network(clones, ("mlp", "mnist5k", 32)).unique("source") == ["runs/w32/acts.h5"]


def test_chunk_average_rows_get_their_own_panel() -> None:
    rows = T.ensemble_rows(widths=(64,), members=(1, 2), repeats=2)
    rows += [{"kind": "chunk-average", "width": w, "members": k, "repeat": 0, "split": "test", "metric": "accuracy",
              "value": 0.5 + 0.01 * k}
             for w in (8, 16) for k in (1, 2, 4)]
    fig = F.ensemble_accuracy(frame(rows, T.ENSEMBLE_SCHEMA))
    assert len(fig.axes) == 4
    np.testing.assert_allclose(line(fig, "chunk-average:16").get_xdata(), [1, 2, 4])
    np.testing.assert_allclose(line(fig, "chunk-average-total:16").get_xdata(), [16, 32, 64])


# --------------------------------------------------------------------------------------------------
# The figures draw the tables' numbers: one estimator per quantity, the clones stage's


def per_source_row(summary_rows: list[dict], metric: str, value: float) -> dict:
    """A per-source summary row (chunk_size null) of `metric`, for the source of `summary_rows`."""
    first = summary_rows[0]
    return {**{k: first[k] for k in ("source", "arch", "dataset", "width", "seed")}, "split": "test", "metric": metric,
            "chunk_size": None, "mean": value, "std": None, "sem": None, "n": 1, "lo": None, "hi": None, "rule": "planted"}


def legend_text(ax) -> str:
    return " ".join(t.get_text() for t in ax.get_legend().get_texts())


def test_guide_shows_the_summarys_c_and_no_other(network) -> None:
    planted = frame(network["summary_rows"] + [per_source_row(network["summary_rows"], "excess_error_c", 0.25)], T.SUMMARY_SCHEMA)
    guide = line(F.network_panels(network["key"], network["clones"], planted, None), "guide")
    x, y = np.asarray(guide.get_xdata()), np.asarray(guide.get_ydata())
    np.testing.assert_allclose(y * np.sqrt(x), 0.25, rtol=1e-12)  # the data would give c = 0.4
    assert "c = 0.25 (from summary)" in guide.get_label()
    # A c that a log axis cannot show is said in the legend, not replaced by a c fitted here.
    negative = frame(network["summary_rows"] + [per_source_row(network["summary_rows"], "excess_error_c", -0.05)],
                     T.SUMMARY_SCHEMA)
    fig = F.network_panels(network["key"], network["clones"], negative, None)
    assert [ln.get_gid() for ln in lines(fig, "guide")] == ["guide-missing"]
    assert "no $c\\,w_c^{-1/2}$ guide: c = -0.05 (from summary)" in legend_text(line(fig, "guide-missing").axes)


def test_without_c_in_the_table_the_guide_is_the_clones_stage_fit(network) -> None:
    fig = F.network_panels(network["key"], network["clones"], network["summary"], None)  # error_inf, no excess_error_c
    sizes, mean, _ = raw_mean(network["rows"], "chunk_error", "test")
    expected = fit_excess_error(sizes, mean, T.ERROR_INF, 8.0)  # least squares through the origin over w_c >= w_c*
    guide = line(fig, "guide")
    x, y = np.asarray(guide.get_xdata()), np.asarray(guide.get_ydata())
    np.testing.assert_allclose(y * np.sqrt(x), expected, rtol=1e-12)
    assert f"c = {expected:.3g} (fitted over" in guide.get_label()


def test_title_gives_the_tables_number_of_clones() -> None:
    # Two seeds with clone sizes 8 and 16: the table's mean of W / w_c* is 12, while W / mean(w_c*) would be 10.7.
    rows = [r for seed, clone_size in ((0, 8), (1, 16))
            for r in T.summary_rows(T.clones_rows(128, clone_size=clone_size, seed=seed, repeats=2),
                                    clone_size, clone_size / 2, clone_size * 2)]
    fig = F.network_panels(("mlp", "mnist5k", 128), None, frame(rows, T.SUMMARY_SCHEMA), None)
    assert "12 clones" in fig._suptitle.get_text()


def test_clones_against_width_draws_the_tables_growth_line_else_the_clones_stage_fit() -> None:
    n_clones = {(64, 0): 1.0, (64, 1): 1.3, (128, 0): 2.6, (128, 1): 3.4, (256, 0): 8.2, (256, 1): 7.5}
    rows = []
    for (width, seed), count in n_clones.items():
        per_source = T.summary_rows(T.clones_rows(width, clone_size=16, seed=seed, repeats=2), 16, 8, 32)
        rows += [r for r in per_source if r["metric"] != "n_clones"] + [per_source_row(per_source, "n_clones", count)]
    with_fit = frame(rows + T.cross_rows(critical_width=52.0, slope=0.031), T.SUMMARY_SCHEMA)
    fig = F.clones_vs_width(with_fit)
    fit = line(fig, "fit:mlp:mnist5k")
    right = 256 * 1.05
    np.testing.assert_allclose(fit.get_xdata(), [0, 52.0, right])
    np.testing.assert_allclose(fit.get_ydata(), [1, 1, 1 + 0.031 * (right - 52.0)])
    np.testing.assert_allclose(line(fig, "critical-width:mlp:mnist5k").get_xdata(), 52.0)
    assert "critical width 52 (from summary)" in legend_text(fig.axes[0])
    # Without the table's fit: the clones stage's hinge fit over the per-source numbers, not a line of its own.
    expected = fit_clone_growth(np.array([w for w, _ in n_clones]), np.array(list(n_clones.values())))
    fit = line(F.clones_vs_width(frame(rows, T.SUMMARY_SCHEMA)), "fit:mlp:mnist5k")
    x, y = np.asarray(fit.get_xdata(), float), np.asarray(fit.get_ydata(), float)
    assert x[1] == pytest.approx(expected.critical_width, abs=1e-9) and y[1] == 1.0
    assert (y[2] - y[1]) / (x[2] - x[1]) == pytest.approx(expected.slope, rel=1e-9)


def test_r2_threshold_line_is_the_one_the_clones_tables_were_made_with(tmp_path) -> None:
    rows = T.clones_rows(64, clone_size=8, repeats=2)
    summary = T.summary_rows(rows, 8, 4, 16)
    for options, value, note in (({"r2_threshold": 0.95}, 0.95, "threshold of $w_c^*$"), ({}, 0.99, "assumed threshold")):
        folder = tmp_path / str(value)
        inputs = load_inputs([T.write_rows(folder / "clones.parquet", rows, T.CLONES_SCHEMA, "clones", options),
                              T.write_rows(folder / "clones-summary.parquet", summary, T.SUMMARY_SCHEMA, "clones-summary",
                                           options)])
        threshold = line(F.network_panels(("mlp", "mnist5k", 64), inputs.clones, inputs.summary, None), "r2-threshold")
        np.testing.assert_allclose(threshold.get_ydata(), value)
        assert f"$R^2$ = {value:g}" in threshold.get_label() and note in threshold.get_label()


def _family_summary(widths=(64, 128, 256), clone_size: float = 16.0) -> tuple[list[dict], list[dict]]:
    """Clones rows of several widths and their summary, with collapse diagnostics, regimes and excess-error c."""
    rows, summary = [], []
    for i, width in enumerate(widths):
        net = T.clones_rows(width, clone_size=int(clone_size), repeats=2)
        net += [{**r, "metric": "residual_abs_corr_paper", "value": r["value"] / 2} for r in net
                if r["metric"] == "residual_abs_corr"]
        rows += net
        summary += T.summary_rows(net, clone_size, clone_size / 2, clone_size * 2)
        base = {k: net[0][k] for k in ("source", "arch", "dataset", "width", "seed")}
        extra = {"chunk_size": None, "std": None, "sem": None, "lo": None, "hi": None, "rule": None}
        summary += [{**base, **extra, "split": "test", "metric": "top_share", "mean": 1 - 10.0 ** -(i + 2), "n": 10},
                    {**base, **extra, "split": "train", "metric": "top_share", "mean": 0.5, "n": 10},
                    {**base, **extra, "split": "test", "metric": "participation_ratio", "mean": 9.0 + i, "n": 10},
                    {**base, **extra, "split": "test", "metric": "excess_error_c", "mean": 0.3 + 0.1 * i, "n": 3}]
    schema = T.SUMMARY_SCHEMA.append(pa.field("status", pa.string()))
    regimes = {64: "no-clones", 128: "noisy-clones", 256: "collapsed"}
    summary = [{**r, "status": "ok" if r["chunk_size"] is None else None} for r in summary]
    for width, word in regimes.items():
        summary.append({"source": f"acts-w{width}-s0.h5", "arch": "mlp", "dataset": "mnist5k", "width": width, "seed": 0,
                        "split": "test", "metric": "regime", "chunk_size": None, "mean": None, "std": None, "sem": None,
                        "n": 1, "lo": None, "hi": None, "rule": "r", "status": word})
    return rows, [dict(r) for r in pa.Table.from_pylist(summary, schema=schema).to_pylist()]


def test_across_widths_puts_every_width_on_shared_axes_with_the_tables_numbers() -> None:
    rows, summary_rows = _family_summary()
    clones = frame(rows, T.CLONES_SCHEMA)
    summary = frame(summary_rows, T.SUMMARY_SCHEMA.append(pa.field("status", pa.string())))
    keys = [("mlp", "mnist5k", w) for w in (256, 64, 128)]
    fig = F.across_widths(keys, clones, summary, None)
    for width in (64, 128, 256):
        own = [r for r in rows if r["width"] == width]
        sizes, mean, _ = raw_mean(own, "reconstruction_r2", "test")
        np.testing.assert_allclose(line(fig, f"across-r2:{width}").get_ydata(), mean)
        np.testing.assert_allclose(line(fig, f"across-r2:{width}").get_xdata(), sizes)
        sizes, corr, _ = raw_mean(own, "residual_abs_corr_paper", "test")  # the paper's definition, not ours
        np.testing.assert_allclose(line(fig, f"across-corr:{width}").get_ydata(), corr[sizes < width])  # not W itself
        _, err, _ = raw_mean(own, "chunk_error", "test")
        excess = line(fig, f"across-excess:{width}")
        np.testing.assert_allclose(excess.get_ydata(), (err - T.ERROR_INF)[err - T.ERROR_INF > 0])
        guide = line(fig, f"across-guide:{width}")  # the summary's c for this width, from the clone size on
        c = 0.3 + 0.1 * (64, 128, 256).index(width)
        np.testing.assert_allclose(guide.get_ydata() * np.sqrt(guide.get_xdata()), c)
        assert guide.get_xdata()[0] == pytest.approx(16.0)
    # (e): 1 - top-(C-1) share of the test split, the marker naming the regime; (f): participation ratio
    for i, (width, word) in enumerate(((64, "no-clones"), (128, "noisy-clones"), (256, "collapsed"))):
        point = line(fig, f"top-share:{width}:{word}")
        assert point.get_ydata()[0] == pytest.approx(10.0 ** -(i + 2))
        assert line(fig, f"participation:{width}").get_ydata()[0] == pytest.approx(9.0 + i)
    assert line(fig, "c-minus-1").get_ydata()[0] == 9
    assert line(fig, "collapse-threshold").get_ydata()[0] == pytest.approx(1e-3)
    legend = fig.legends[0]  # one legend for the widths, outside the panels
    assert [t.get_text() for t in legend.get_texts()] == ["W = 64", "W = 128", "W = 256"]


def test_single_network_and_error_inf_of_one_member_are_one_line() -> None:
    rows = [r for r in T.ensemble_rows(widths=(64,), members=(1, 2), repeats=2) if r["kind"] != "error-inf"]
    widest = np.mean([r["value"] for r in rows if r["kind"] == "wide" and r["width"] == 512])
    rows.append({"kind": "error-inf", "width": 512, "members": 1, "repeat": 0, "split": "test", "metric": "error",
                 "value": 1 - widest})
    fig = F.ensemble_accuracy(frame(rows, T.ENSEMBLE_SCHEMA))
    reference = line(fig, "wide-reference:512")
    assert "error" in reference.get_label() and "one member" in reference.get_label()
    assert [ln.get_gid() for ln in fig.axes[0].get_lines()].count("accuracy-inf") == 0  # not drawn twice


def test_chunk_average_lines_are_named_by_chunk_size() -> None:
    rows = T.ensemble_rows(widths=(64,), members=(1, 2), repeats=2)
    for size in (8, 16):
        for members in (1, 2, 4):
            rows.append({"kind": "chunk-average", "width": size, "members": members, "repeat": 0, "split": "test",
                         "metric": "accuracy", "value": 0.5 + 0.01 * members})
    fig = F.ensemble_accuracy(frame(rows, T.ENSEMBLE_SCHEMA))
    names = sorted(t.get_text() for t in fig.axes[1].texts if (t.get_gid() or "").startswith("chunk-average-name"))
    assert names == ["16", "8"]
