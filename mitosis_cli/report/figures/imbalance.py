"""Information Imbalance between a chunk and the whole layer, both ways, against chunk size."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from mitosis_cli.report import style
from mitosis_cli.report.figures.draw import chunk_axis, distinct_colours, errorbar, no_data
from mitosis_cli.report.frame import Curve, Frame
from mitosis_cli.report.select import NetworkKey, metric_curve, network_label, select_network, source_estimate


def information_imbalance(clones: Frame | None, summary: Frame | None, keys: Sequence[NetworkKey]) -> Figure:
    """Delta(chunk -> full layer) and Delta(full layer -> chunk) against chunk size, one line per network.

    Delta ~ 0: the first space predicts the neighbourhoods of the second; ~ 1: it carries no information.
    """
    directions = [("ii_chunk_to_full", r"$\Delta$(chunk $\to$ full layer)"),
                  ("ii_full_to_chunk", r"$\Delta$(full layer $\to$ chunk)")]
    colours = distinct_colours(len(keys))
    with style.report_style():
        fig, axes = plt.subplots(1, 2, figsize=(style.FULL_WIDTH, 2.7), layout="constrained", sharey=True)
        sizes: set[float] = set()
        for ax, (metric, ylabel) in zip(axes, directions, strict=True):
            for key, colour in zip(keys, colours, strict=True):
                rows = select_network(clones, key)
                net_summary = select_network(summary, key)
                curve = metric_curve(rows, net_summary, metric, "test") or _any_split_curve(rows, net_summary, metric)
                if curve is None:
                    continue
                sizes.update(curve.x.tolist())
                errorbar(ax, curve, f"{metric}:{key[0]}:{key[1]}:{key[2]}",
                         f"{network_label(key)}{_points_note(rows, metric)}", colour)
                clone = source_estimate(net_summary, "clone_size")
                if clone is not None:
                    ax.axvline(clone.value, color=colour, ls="--", lw=0.8, gid=f"clone-size:{key[0]}:{key[1]}:{key[2]}")
            ax.set_ylabel(ylabel)
            ax.set_ylim(-0.02, 1.05)
        for ax in axes:
            ax.tick_params(labelleft=True)  # shared y, but each panel is read on its own
            if ax.has_data():
                chunk_axis(ax, sorted(sizes))
            else:
                no_data(ax, "Information Imbalance")
        axes[0].legend(loc="upper right")
        fig.suptitle("Information Imbalance (dashed: clone size $w_c^*$)", fontsize=9)
    return fig


def _any_split_curve(clones: Frame | None, summary: Frame | None, metric: str) -> Curve | None:
    for frame in (clones, summary):
        if frame is not None:
            for split in frame.where(metric=metric).unique("split"):
                curve = metric_curve(clones, summary, metric, split)
                if curve is not None:
                    return curve
    return None


def _points_note(rows: Frame | None, metric: str) -> str:
    """ " (N = 1000, k = 1)": the sample size and neighbour rank the values were computed with."""
    if rows is None or not rows.has("n_points"):
        return ""
    sub = rows.where(metric=metric)
    n_points = [int(v) for v in sub.unique("n_points")]
    ks = [int(v) for v in sub.unique("k")] if sub.has("k") else []
    parts = []
    if n_points:
        parts.append("N = " + "/".join(map(str, n_points)))
    if ks:
        parts.append("k = " + "/".join(map(str, ks)))
    return f" ({', '.join(parts)})" if parts else ""
