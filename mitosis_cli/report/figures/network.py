"""The paper's panel set for one network: excess test error, training error, reconstruction R^2 and
residual correlation against chunk size, the clone size marked in each."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mitosis_cli.analysis.clone_size import fit_excess_error
from mitosis_cli.report import style
from mitosis_cli.report.figures.draw import chunk_axis, errorbar, mark_clone_size, no_data
from mitosis_cli.report.frame import Curve, Frame
from mitosis_cli.report.select import (
    DEFAULT_R2_THRESHOLD,
    Estimate,
    NetworkKey,
    chunk_error_curve,
    error_inf_for,
    metric_curve,
    network_label,
    r2_thresholds,
    source_estimate,
)


def network_panels(key: NetworkKey, clones: Frame | None, summary: Frame | None, ensemble: Frame | None) -> Figure:
    """Four panels against chunk size: test error - error_inf (log-log, with the c w^-1/2 guide),
    training error, reconstruction R^2 and residual correlation; the clone size marked in each.

    `clones` and `summary` hold this network's rows only (see `select.select_network`).
    """
    clone = source_estimate(summary, "clone_size")
    n_clones = source_estimate(summary, "n_clones")
    sizes = sorted({float(s) for f in (clones, summary) if f is not None for s in f["chunk_size"] if np.isfinite(s)})

    with style.report_style():
        fig, axes = plt.subplots(2, 2, figsize=(style.FULL_WIDTH, 4.6), layout="constrained")
        ax_excess, ax_train, ax_r2, ax_resid = axes.ravel()
        _excess_panel(ax_excess, key, clones, summary, ensemble, clone)
        _training_error_panel(ax_train, clones, summary, clone)
        _reconstruction_panel(ax_r2, clones, summary, clone)
        _residual_panel(ax_resid, clones, summary, clone)
        for ax, letter in zip(axes.ravel(), "abcd", strict=True):
            if ax.has_data():
                chunk_axis(ax, sizes)
            ax.set_title(f"({letter})", loc="left", fontweight="bold")
        title = network_label(key)
        if clone is not None:
            spread = f" [{clone.lo:.3g}, {clone.hi:.3g}]" if np.isfinite(clone.lo) and np.isfinite(clone.hi) else ""
            title += f"  —  clone size $w_c^*$ = {clone.value:.3g}{spread}"
            if n_clones is not None:
                title += f", {n_clones.value:.3g} clones"
        fig.suptitle(title, fontsize=9)
    return fig


def excess_error_constant(summary: Frame | None, test_error: Curve, error_inf: float,
                          clone: Estimate | None) -> tuple[float, str]:
    """The c of error(w_c) - error_inf = c w_c^-1/2, and where it comes from.

    The summary's `excess_error_c` (mean over the network's sources) when it holds one; otherwise the
    clones stage's own estimator, `analysis.clone_size.fit_excess_error`, applied to the plotted chunk
    errors, error_inf and clone size. Returns (NaN, why) when neither is possible.
    """
    estimate = source_estimate(summary, "excess_error_c")
    if estimate is not None:
        return estimate.value, "from summary"
    if clone is None:
        return float("nan"), "no clone size in the tables"
    c = fit_excess_error(test_error.x, test_error.mean, error_inf, clone.value)
    if not np.isfinite(c):
        return c, "no chunk size at or above $w_c^*$"
    return c, "fitted over $w_c \\geq w_c^*$"


def _excess_panel(ax: Axes, key: NetworkKey, clones: Frame | None, summary: Frame | None, ensemble: Frame | None,
                  clone: Estimate | None) -> None:
    test_error = chunk_error_curve(clones, summary, "test")
    if test_error is None:
        no_data(ax, "chunk test error")
        return
    error_inf = error_inf_for(summary, ensemble, key[2])
    if error_inf is None:  # without error_inf only the raw error can be shown, still on log-log axes
        curve, ylabel, gid = test_error.positive(), "chunk test error (fraction)", "chunk_error:test"
        ax.set_title("error_inf not in the tables: raw test error", fontsize=7, loc="right", color=style.NEUTRAL)
    else:
        excess = Curve(test_error.x, test_error.mean - error_inf, test_error.sem, test_error.n)
        curve, ylabel, gid = excess.positive(), r"test error $-$ error$_\infty$ (fraction)", "excess_error:test"
        if len(curve) < len(excess):
            ax.set_title(f"{len(excess) - len(curve)} size(s) at or below error$_\\infty$ not shown",
                         fontsize=7, loc="right", color=style.NEUTRAL)
    mark_clone_size(ax, clone, label=True)
    if len(curve):
        errorbar(ax, curve, gid, "chunks", style.ROLE_COLOURS["test"])
        if error_inf is not None:
            _excess_guide(ax, curve, *excess_error_constant(summary, test_error, error_inf, clone), clone)
    ax.set_yscale("log")
    style.plain_log_ticks(ax.yaxis)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best")


def _excess_guide(ax: Axes, excess: Curve, c: float, origin: str, clone: Estimate | None) -> None:
    """The c w_c^-1/2 line from the clone size on; a legend line instead when c is unknown or not positive."""
    if not (np.isfinite(c) and c > 0):  # a log axis cannot show c <= 0, and no other c is put in its place
        why = f"c = {c:.3g} ({origin})" if np.isfinite(c) else origin
        ax.plot([], [], ls="none", gid="guide-missing", label=f"no $c\\,w_c^{{-1/2}}$ guide: {why}")
        return
    lo = clone.value if clone is not None and clone.value <= excess.x.max() else excess.x.min()
    guide_x = np.geomspace(max(lo, excess.x.min()), excess.x.max(), 50)
    # A broad pale band under the data: visible even where the points sit exactly on it.
    ax.plot(guide_x, c / np.sqrt(guide_x), color=style.SHADE, lw=4, alpha=0.8, zorder=1, solid_capstyle="round",
            gid="guide", label=f"$c\\,w_c^{{-1/2}}$, c = {c:.3g} ({origin})")


def _training_error_panel(ax: Axes, clones: Frame | None, summary: Frame | None, clone: Estimate | None) -> None:
    train_error = chunk_error_curve(clones, summary, "train")
    if train_error is None:
        no_data(ax, "chunk training error")
        return
    mark_clone_size(ax, clone)
    errorbar(ax, train_error, "chunk_error:train", "training set", style.ROLE_COLOURS["train"])
    ax.set_ylim(bottom=min(0.0, float(np.min(train_error.mean))))
    ax.set_ylabel("chunk training error (fraction)")


def _reconstruction_panel(ax: Axes, clones: Frame | None, summary: Frame | None, clone: Estimate | None) -> None:
    variants = [("test", "fit and scored on test (paper)"), ("train->test", "fit on train, scored on test")]
    curves = [(split, label, curve) for split, label in variants
              if (curve := metric_curve(clones, summary, "reconstruction_r2", split)) is not None]
    if not curves:
        no_data(ax, "reconstruction $R^2$")
        return
    mark_clone_size(ax, clone)
    for split, label, curve in curves:
        errorbar(ax, curve, f"reconstruction_r2:{split}", label, style.ROLE_COLOURS[split])
    # The threshold the clone size was estimated with (`mitosis clones --r2-threshold`).
    thresholds = r2_thresholds(clones, summary)
    for threshold in thresholds or [DEFAULT_R2_THRESHOLD]:
        note = "threshold of $w_c^*$" if thresholds else "assumed threshold of $w_c^*$"
        ax.axhline(threshold, color=style.NEUTRAL, lw=0.7, ls=":", gid="r2-threshold",
                   label=f"$R^2$ = {threshold:g}, {note}")
    lowest = min(float(np.min(c.mean)) for _, _, c in curves)
    ax.set_ylim(max(min(lowest, 0.9, *thresholds) - 0.05, -0.05), 1.02)
    ax.set_ylabel("$R^2$ of reconstruction")
    ax.legend(loc="best")


def _residual_panel(ax: Axes, clones: Frame | None, summary: Frame | None, clone: Estimate | None) -> None:
    variants = [("residual_abs_corr", "ours: mean |corr.|"), ("residual_frob_corr", "ours: RMS corr."),
                ("residual_abs_corr_paper", "paper's: mean |corr.|")]
    curves = []
    for metric, label in variants:
        for split in ("test", "train->test", "train"):  # the paper's in-sample test residuals first
            curve = metric_curve(clones, summary, metric, split)
            if curve is not None:
                curves.append((f"{metric}:{split}", label, curve))
                break
    if not curves:
        no_data(ax, "residual correlation")
        return
    mark_clone_size(ax, clone)
    for i, (gid, label, curve) in enumerate(curves):
        errorbar(ax, curve, gid, label, style.colour(2 + i))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("correlation of residuals")
    ax.legend(loc="upper right")
