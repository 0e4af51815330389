"""Every width of one architecture and data set on shared axes, as Doimo et al. (2022) draw them, plus the
collapse diagnostics that tell noisy clones from a layer collapsed onto its class means.

(a) reconstruction R^2 against chunk size; (b) chunk test error minus error_inf against chunk size,
log-log, with each width's fitted c w^-1/2 from the clone size on; (c) residual correlation (the
paper's definition) against chunk size; (d) number of clones against width with the growth line and the
critical width; (e) variance outside the top C-1 principal directions against width, with each
network's regime word; (f) participation ratio (effective dimension) against width. One legend, outside
the panels, names the widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mitosis_cli.analysis.collapse import COLLAPSED_SHARE
from mitosis_cli.report import style
from mitosis_cli.report.figures.draw import chunk_axis, errorbar, no_data
from mitosis_cli.report.figures.widths import draw_clone_growth
from mitosis_cli.report.frame import Curve, Frame
from mitosis_cli.report.select import (
    DEFAULT_R2_THRESHOLD,
    NetworkKey,
    chunk_error_curve,
    error_inf_for,
    metric_curve,
    r2_thresholds,
    select_network,
    source_estimate,
    source_status,
)


def across_widths(keys: Sequence[NetworkKey], clones: Frame | None, summary: Frame | None, ensemble: Frame | None) -> Figure:
    """The six panels for the networks `keys` (one architecture and data set, several widths)."""
    keys = sorted(keys, key=lambda k: k[2])
    colours = dict(zip(keys, style.sequential(len(keys)), strict=True))
    nets = [(key, select_network(clones, key), select_network(summary, key)) for key in keys]
    sizes = sorted({float(s) for _, c, m in nets for f in (c, m) if f is not None for s in f["chunk_size"] if np.isfinite(s)})
    with style.report_style():
        fig, axes = plt.subplots(2, 3, figsize=(style.FULL_WIDTH, 4.9), layout="constrained")
        ax_r2, ax_err, ax_corr, ax_clones, ax_share, ax_pr = axes.ravel()
        _r2_panel(ax_r2, nets, colours, clones, summary)
        _excess_panel(ax_err, nets, colours, ensemble)
        _correlation_panel(ax_corr, nets, colours)
        _clones_panel(ax_clones, keys, summary)
        _collapse_panels(ax_share, ax_pr, nets, colours)
        for ax in (ax_r2, ax_err, ax_corr):
            if ax.has_data():
                chunk_axis(ax, sizes)
                _thin_ticks(ax)
        titles = ("(a) reconstruction $R^2$", "(b) excess test error of chunks", "(c) residual correlation",
                  "(d) number of clones", "(e) variance off the top C$-$1 PCs", "(f) effective dimension")
        for ax, title in zip(axes.ravel(), titles, strict=True):
            ax.set_title(title, loc="left", fontsize=8)
        handles = [Line2D([], [], color=colours[k], marker="o", label=f"W = {k[2]}") for k in keys]
        fig.legend(handles=handles, loc="outside right upper", title="network", title_fontsize=7)
        fig.suptitle(f"{keys[0][0]} on {keys[0][1]}: every width", fontsize=9)
    return fig


def _thin_ticks(ax: Axes, most: int = 6) -> None:
    """At most `most` labelled ticks: a third of the page's width has no room for 1 2 4 ... 1024."""
    ticks = list(ax.get_xticks())
    if len(ticks) > most:
        step = -(-len(ticks) // most)
        kept = ticks[::-1][::step][::-1]  # always keep the largest (W)
        ax.set_xticks(kept, [f"{t:g}" for t in kept])


def _r2_panel(ax: Axes, nets: list, colours: dict, clones: Frame | None, summary: Frame | None) -> None:
    drawn = False
    for key, rows, summ in nets:
        curve = metric_curve(rows, summ, "reconstruction_r2", "test") or metric_curve(rows, summ, "reconstruction_r2", "train")
        if curve is not None:
            errorbar(ax, curve, f"across-r2:{key[2]}", "", colours[key], ms=2.5)
            drawn = True
    if not drawn:
        no_data(ax, "reconstruction $R^2$")
        return
    for threshold in r2_thresholds(clones, summary) or [DEFAULT_R2_THRESHOLD]:
        ax.axhline(threshold, color=style.NEUTRAL, lw=0.7, ls=":", gid="r2-threshold")
        ax.annotate(f"$R^2$ = {threshold:g}", (0.02, threshold), xycoords=("axes fraction", "data"), va="bottom",
                    fontsize=6, color=style.NEUTRAL)
    ax.set_ylabel("$R^2$ (fit and scored on test)")


def _excess_panel(ax: Axes, nets: list, colours: dict, ensemble: Frame | None) -> None:
    drawn, raw = False, False
    for key, rows, summ in nets:
        error = chunk_error_curve(rows, summ, "test")
        if error is None:
            continue
        error_inf = error_inf_for(summ, ensemble, key[2])
        if error_inf is None:
            curve, raw = error.positive(), True
        else:
            curve = Curve(error.x, error.mean - error_inf, error.sem, error.n).positive()
        if not len(curve):
            continue
        errorbar(ax, curve, f"across-excess:{key[2]}", "", colours[key], ms=2.5)
        drawn = True
        c = source_estimate(summ, "excess_error_c")
        clone = source_estimate(summ, "clone_size")
        if error_inf is not None and c is not None and np.isfinite(c.value) and c.value > 0:
            start = clone.value if clone is not None and clone.value <= curve.x.max() else curve.x.min()
            x = np.geomspace(max(start, curve.x.min()), curve.x.max(), 30)
            ax.plot(x, c.value / np.sqrt(x), color=colours[key], ls="--", lw=0.8, gid=f"across-guide:{key[2]}")
    if not drawn:
        no_data(ax, "chunk test error")
        return
    ax.set_yscale("log")
    style.plain_log_ticks(ax.yaxis)
    ax.set_ylabel("chunk test error" if raw else r"test error $-$ error$_\infty$")
    ax.plot([], [], color=style.NEUTRAL, ls="--", lw=0.8, label=r"$c\,w_c^{-1/2}$ fitted from $w_c^*$ on")
    if raw:
        ax.plot([], [], ls="none", label=r"error$_\infty$ unknown: raw error")
    ax.legend(loc="lower left")


def _correlation_panel(ax: Axes, nets: list, colours: dict) -> None:
    drawn, ours = False, False
    for key, rows, summ in nets:
        curve = metric_curve(rows, summ, "residual_abs_corr_paper", "test")
        if curve is None:  # tables from before the paper's definition: ours, said so in the legend
            curve, ours = metric_curve(rows, summ, "residual_abs_corr", "test"), True
        if curve is None:
            continue
        # the whole layer as a chunk leaves only O(alpha) residuals: nothing to show on a log axis
        inside = curve.x < key[2]
        curve = Curve(curve.x[inside], curve.mean[inside], curve.sem[inside], curve.n[inside]).positive()
        if not len(curve):
            continue
        errorbar(ax, curve, f"across-corr:{key[2]}", "", colours[key], ms=2.5)
        drawn = True
    if not drawn:
        no_data(ax, "residual correlation")
        return
    ax.set_yscale("log")
    style.plain_log_ticks(ax.yaxis)
    ax.set_ylabel("mean |corr.| of residuals" + (" (ours)" if ours else " (paper's)"))


def _clones_panel(ax: Axes, keys: Sequence[NetworkKey], summary: Frame | None) -> None:
    if summary is None or not draw_clone_growth(ax, summary, keys[0][0], keys[0][1], colour=style.NEUTRAL, label=False):
        no_data(ax, "number of clones")
        return
    ax.set_xlabel(SHORT_WIDTH_AXIS)
    ax.set_ylabel("clones $W / w_c^*$")
    ax.legend(loc="lower right")  # the points rise from the origin to the upper right


REGIME_MARKERS = {"collapsed": "s", "noisy-clones": "o", "no-clones": "X"}
SHORT_WIDTH_AXIS = "width $W$ (neurons)"


def _split_estimate(summ: Frame | None, metric: str) -> float | None:
    """A per-source diagnostic on the test split (the paper's), else on the train split."""
    found = source_estimate(summ, metric, split="test") or source_estimate(summ, metric, split="train")
    return None if found is None else found.value


def _collapse_panels(ax_share: Axes, ax_pr: Axes, nets: list, colours: dict) -> None:
    """1 - top-(C-1) share (log) with the collapse threshold, the marker saying each network's regime;
    the participation ratio beside C - 1."""
    classes: set[int] = set()
    regimes: set[str] = set()
    for key, _, summ in nets:
        share, pr = _split_estimate(summ, "top_share"), _split_estimate(summ, "participation_ratio")
        word = source_status(summ, "regime") or ""
        marker = REGIME_MARKERS.get(word, "o")
        if share is not None:
            ax_share.plot([key[2]], [max(1.0 - share, 1e-12)], marker=marker, ms=5, color=colours[key], ls="none",
                          gid=f"top-share:{key[2]}:{word}")
            regimes.add(word)
            rows = summ.where(metric="top_share") if summ is not None else None
            if rows is not None and len(rows):
                classes.update(int(c) for c in rows["n"] if np.isfinite(c))
        if pr is not None:
            ax_pr.plot([key[2]], [pr], marker=marker, ms=5, color=colours[key], ls="none", gid=f"participation:{key[2]}")
    for ax, what in ((ax_share, "collapse diagnostics"), (ax_pr, "participation ratio")):
        if not ax.has_data():
            no_data(ax, what)
            continue
        ax.set_xscale("log", base=2)
        style.power_of_two_ticks(ax.xaxis, [k[2] for k, _, _ in nets])
        _thin_ticks(ax, most=5)
        ax.set_xlabel(SHORT_WIDTH_AXIS)
    c_minus_1 = max(classes) - 1 if classes else None
    if ax_share.has_data():
        ax_share.set_yscale("log")
        ax_share.axhline(1 - COLLAPSED_SHARE, color=style.NEUTRAL, ls=":", lw=0.7, gid="collapse-threshold")
        handles = [Line2D([], [], color=style.NEUTRAL, ls=":", lw=0.7, label=f"collapsed below {1 - COLLAPSED_SHARE:g}")]
        handles += [Line2D([], [], color=style.NEUTRAL, marker=REGIME_MARKERS[w], ls="none", label=w)
                    for w in REGIME_MARKERS if w in regimes]
        ax_share.legend(handles=handles, loc="best")
        ax_share.set_ylabel(f"1 $-$ share of the top {c_minus_1 if c_minus_1 else 'C$-$1'} PCs")
        ax_share.margins(y=0.3)
    if ax_pr.has_data():
        values = [float(np.asarray(ln.get_ydata())[0]) for ln in ax_pr.get_lines()]
        if c_minus_1:
            ax_pr.axhline(c_minus_1, color=style.NEUTRAL, ls=":", lw=0.7, gid="c-minus-1", label=f"C $-$ 1 = {c_minus_1}")
            values.append(float(c_minus_1))
            ax_pr.legend(loc="best")
        if max(values) / max(min(values), 1e-12) > 10:
            ax_pr.set_yscale("log")
            style.plain_log_ticks(ax_pr.yaxis)
        ax_pr.set_ylabel("participation ratio")
