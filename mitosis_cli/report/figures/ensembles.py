"""Ensembles of networks (logits summed) against single wide networks, from the ensemble table."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mitosis_cli.report import style
from mitosis_cli.report.figures.draw import distinct_colours, errorbar, log2_axis, no_data
from mitosis_cli.report.frame import Curve, Frame, curve_from_values


def _accuracy_rows(ensemble: Frame, kind: str) -> tuple[Frame, bool]:
    """Test-accuracy rows of a kind; from error rows (accuracy = 1 - error) when accuracy is absent."""
    rows = ensemble.where(kind=kind, metric="accuracy", split="test")
    if len(rows):
        return rows, False
    return ensemble.where(kind=kind, metric="error", split="test"), True


def _accuracy_curve(rows: Frame, x: np.ndarray, from_error: bool) -> Curve:
    curve = curve_from_values(x, rows["value"])
    return Curve(curve.x, 1.0 - curve.mean, curve.sem, curve.n) if from_error else curve


def ensemble_accuracy(ensemble: Frame) -> Figure:
    """Ensembles of networks (logits summed) against single wide networks.

    (a) Test accuracy against the number of members, one line per member width, with the widest single
    network and 1 - error_inf as references; (b) the same against the total width members x W, with
    every single network at its own width and the averaged chunks of the widest network; (c) the
    chunks' internal ensemble against the number of chunks, one line per chunk size; (d) the loss of
    the pool split into bias and variance, against width. (c) and (d) appear when their rows exist.
    """
    ensembles, ensemble_from_error = _accuracy_rows(ensemble, "ensemble")
    chunks, chunks_from_error = _accuracy_rows(ensemble, "chunk-average")
    wide, wide_from_error = _accuracy_rows(ensemble, "wide")
    bias_variance = ensemble.where(kind="bias-variance", split="test")
    error_inf = ensemble.where(kind="error-inf", metric="error", split="test")
    extra = [p for p, rows in (("chunks", chunks), ("bias-variance", bias_variance)) if len(rows)]
    accuracy_label = "test accuracy (fraction)"
    with style.report_style():
        if extra:
            fig, grid = plt.subplots(2, 2, figsize=(style.FULL_WIDTH, 5.2), layout="constrained")
            axes = list(grid.ravel())
            if len(extra) == 1:
                axes[3].remove()
                axes = axes[:3]
        else:
            fig, grid = plt.subplots(1, 2, figsize=(style.FULL_WIDTH, 2.7), layout="constrained")
            axes = list(grid)
        ax_members, ax_total = axes[0], axes[1]
        member_widths = ensembles.unique("width")  # sorted
        colour_of = dict(zip(member_widths, distinct_colours(len(member_widths)), strict=True))
        members_seen: set[float] = set()
        totals_seen: set[float] = set()
        for (width,), group in ensembles.groups(["width"]):
            if width is None:
                continue
            curve = _accuracy_curve(group, group["members"], ensemble_from_error)
            errorbar(ax_members, curve, f"ensemble:{width:g}", f"ensemble of W = {width:g}", colour_of[width])
            total = Curve(curve.x * width, curve.mean, curve.sem, curve.n)
            errorbar(ax_total, total, f"ensemble-total:{width:g}", f"ensemble of W = {width:g}", colour_of[width])
            members_seen.update(curve.x.tolist())
            totals_seen.update(total.x.tolist())
        chunk_sizes = chunks.unique("width")
        chunk_colour = dict(zip(chunk_sizes, style.sequential(len(chunk_sizes)), strict=True))
        for index, ((width,), group) in enumerate(chunks.groups(["width"])):
            curve = _accuracy_curve(group, group["members"], chunks_from_error)
            total = Curve(curve.x * width, curve.mean, curve.sem, curve.n)
            # One legend entry for the family; each line is named at its first point by its chunk size.
            name = "chunks of the widest network, averaged\n(labelled by $w_c$ at their first point)"
            errorbar(ax_total, total, f"chunk-average-total:{width:g}", name if index == 0 else "", chunk_colour[width],
                     ls=":", lw=0.9, ms=2.5, alpha=0.8)
            ax_total.annotate(f"{width:g}", (total.x[0], total.mean[0]), textcoords="offset points", xytext=(-3, 2),
                              ha="right", fontsize=5.5, color=chunk_colour[width], gid=f"chunk-average-name:{width:g}")
            totals_seen.update(total.x.tolist())
        if len(wide):
            points = _accuracy_curve(wide, wide["width"], wide_from_error)
            container = ax_total.errorbar(points.x, points.mean, yerr=points.sem, marker="D", ms=4.5, ls="none",
                                          color=style.NEUTRAL, label="single network", elinewidth=0.8, zorder=3)
            container.lines[0].set_gid("wide")
            totals_seen.update(points.x.tolist())
            # Panel (a) gets the widest single network as its reference line; (b) places every width.
            ax_members.axhline(points.mean[-1], color=style.NEUTRAL, lw=0.8, ls="--", gid=f"wide-reference:{points.x[-1]:g}",
                               label=f"single network, W = {points.x[-1]:g}")
        if len(error_inf):
            accuracy_inf = 1 - float(np.mean(error_inf["value"]))
            # error_inf of a pool of one network is that network's error: one line, said so, not two on top of each other
            same = len(wide) and abs(accuracy_inf - float(points.mean[-1])) < 1e-12
            for ax in (ax_members, ax_total):
                if same and ax is ax_members:
                    ax.lines[-1].set_label(f"single network, W = {points.x[-1]:g} = 1 $-$ error$_\\infty$ (one member)")
                    continue
                ax.axhline(accuracy_inf, color=style.NEUTRAL, lw=0.8, ls=":", gid="accuracy-inf",
                           label=r"1 $-$ error$_\infty$")
        for ax, seen, xlabel, title in (
                (ax_members, members_seen, "members in the ensemble", "(a) accuracy against ensemble size"),
                (ax_total, totals_seen, "total width: members $\\times$ W (neurons)", "(b) ensembles beside single networks")):
            ax.set_title(title, loc="left", fontsize=8)
            if not ax.has_data():
                no_data(ax, "ensemble accuracy")
                continue
            log2_axis(ax, seen, xlabel, accuracy_label)
        # (b) repeats (a)'s colours: its legend names only what (a) does not show.
        shown = set(ax_members.get_legend_handles_labels()[1])
        for ax, keep in ((ax_members, None), (ax_total, shown)):
            handles, labels = ax.get_legend_handles_labels()
            pairs = [(h, lab) for h, lab in zip(handles, labels, strict=True) if keep is None or lab not in keep]
            if pairs and ax is ax_members:  # one entry per member width: beside the panel, never over its lines
                ax.legend(*zip(*pairs, strict=True), loc="center left", bbox_to_anchor=(1.0, 0.5))
            elif pairs:  # (b) rises from the lower left and saturates at the top: its lower right is free
                ax.legend(*zip(*pairs, strict=True), loc="lower right")
        panel = iter(axes[2:])
        if len(chunks):
            _chunk_average_panel(next(panel), chunks, chunks_from_error, chunk_colour)
        if len(bias_variance):
            _bias_variance_panel(next(panel), bias_variance, "(d)" if len(chunks) else "(c)")
    return fig


def _chunk_average_panel(ax: Axes, chunks: Frame, from_error: bool, colour_of: dict[float, str]) -> None:
    """Accuracy of the internal ensemble: K disjoint chunks of one network, logits summed."""
    seen: set[float] = set()
    for (width,), group in chunks.groups(["width"]):
        curve = _accuracy_curve(group, group["members"], from_error)
        errorbar(ax, curve, f"chunk-average:{width:g}", f"$w_c$ = {width:g}", colour_of[width], ms=2.5)
        seen.update(curve.x.tolist())
    log2_axis(ax, seen, "chunks averaged", "test accuracy (fraction)")
    ax.set_title("(c) chunks of the widest network as an ensemble", loc="left", fontsize=8)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="chunk size", title_fontsize=6.5)


def _bias_variance_panel(ax: Axes, rows: Frame, letter: str) -> None:
    """Loss, bias and variance of the whole pool of networks against their width (one value per width)."""
    widths_seen: set[float] = set()
    for index, (metric, linestyle) in enumerate((("loss", "-"), ("bias", "--"), ("variance", ":"))):
        group = rows.where(metric=metric)
        if not len(group):
            continue
        curve = curve_from_values(group["width"], group["value"])
        widths_seen.update(curve.x.tolist())
        errorbar(ax, curve, f"bias-variance:{metric}", metric, style.colour(index), ls=linestyle, ms=2.5)
    if not ax.has_data():
        no_data(ax, "bias-variance decomposition")
        return
    ax.set_xscale("log", base=2)
    style.power_of_two_ticks(ax.xaxis, sorted(widths_seen))
    ax.set_xlabel("width $W$ of the networks (neurons)")
    ax.set_ylabel("test cross-entropy (nats)")
    ax.set_title(f"{letter} loss = bias + variance", loc="left", fontsize=8)
    ax.legend(loc="best")
