"""Mitosis across widths: the number of clones W / w_c* against W, with the hinge line of its growth."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mitosis_cli.analysis.clone_size import fit_clone_growth
from mitosis_cli.report import style
from mitosis_cli.report.figures.draw import WIDTH_AXIS, no_data
from mitosis_cli.report.frame import Frame, curve_from_values


@dataclass(frozen=True)
class GrowthLine:
    """n_clones = max(1, 1 + slope (W - critical_width)), the critical width's interval, and where it comes from."""

    slope: float
    critical_width: float
    lo: float
    hi: float
    origin: str
    status: str = "ok"


def _summary_growth(summary: Frame, arch: str, dataset: str) -> GrowthLine | None:
    """The summary's across-file fit (rows of source "all") that covers this arch and data set."""
    rows = summary.where(source="all")
    if not len(rows):
        return None

    def covers(label: object, name: str) -> bool:  # "mlp" or "mlp,wrn" (a fit over several) or null
        return label is None or label == "all" or name in str(label).split(",")

    family = rows.filter(np.array([covers(a, arch) and covers(d, dataset)
                                   for a, d in zip(rows["arch"], rows["dataset"], strict=True)],
                                  dtype=bool))
    critical = family.where(metric="critical_width")
    slope = family.where(metric="clones_per_width_slope")
    if not len(critical) or not len(slope):
        return None
    status = critical["status"][0] if critical.has("status") and isinstance(critical["status"][0], str) else "ok"
    return GrowthLine(float(slope["mean"][0]), float(critical["mean"][0]), float(critical["lo"][0]), float(critical["hi"][0]),
                      "from summary", status)


def clone_growth(summary: Frame, arch: str, dataset: str, n_clones: Frame) -> GrowthLine | None:
    """The growth line of one (arch, dataset): the summary's across-file fit when it holds one.

    Otherwise (e.g. tables of separate `mitosis clones` runs, one width each) the clones stage's own
    estimator, `analysis.clone_size.fit_clone_growth`, on the family's per-source `n_clones` rows.
    None when neither exists (fewer than two widths).
    """
    from_summary = _summary_growth(summary, arch, dataset)
    if from_summary is not None:
        return from_summary
    try:
        fit = fit_clone_growth(n_clones["width"], n_clones["mean"])
    except ValueError:  # fewer than two distinct widths
        return None
    return GrowthLine(fit.slope, fit.critical_width, float("nan"), float("nan"), "fitted to these networks", fit.status)


def draw_clone_growth(ax: Axes, summary: Frame, arch: str, dataset: str, colour: str, label: bool = True) -> bool:
    """Points n_clones = W / w_c* of one (arch, dataset) with the growth line and critical width; False without points.

    `label`: name the points after the family in the legend (not needed when a figure holds one family).
    """
    rows = summary.where(metric="n_clones", chunk_size=None, arch=arch, dataset=dataset)
    rows = rows.filter(np.array([s != "all" for s in rows["source"]], dtype=bool)) if len(rows) else rows
    if not len(rows):
        return False
    points = curve_from_values(rows["width"], rows["mean"])  # sem over seeds at each width
    container = ax.errorbar(points.x, points.mean, yerr=points.sem, marker="o", ls="none", color=colour,
                            label=f"{arch} on {dataset}" if label else None, elinewidth=0.8)
    container.lines[0].set_gid(f"n_clones:{arch}:{dataset}")
    fit = clone_growth(summary, arch, dataset, rows)
    if fit is None:
        ax.plot([], [], ls="none", gid=f"fit-missing:{arch}:{dataset}", label="no growth line: fewer than two widths")
    else:
        right = max(points.x.max(), fit.critical_width) * 1.05
        # One clone (no mitosis) below the critical width, then the linear growth.
        ax.plot([0, fit.critical_width, right], [1, 1, 1 + fit.slope * (right - fit.critical_width)], color=colour,
                lw=1.0, gid=f"fit:{arch}:{dataset}", label=f"fit: {fit.slope * 1000:.3g} clones per 1000 neurons")
        if np.isfinite(fit.lo) and np.isfinite(fit.hi) and fit.hi > fit.lo:
            ax.axvspan(fit.lo, fit.hi, color=colour, alpha=0.12, lw=0)
        undetermined = fit.status.startswith("undetermined")
        origin = f" ({fit.origin})" if label else ""
        ax.axvline(fit.critical_width, color=colour, ls="--", lw=0.8, gid=f"critical-width:{arch}:{dataset}",
                   label=f"critical width {fit.critical_width:.0f}{origin}{', undetermined' if undetermined else ''}")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return True


def clones_vs_width(summary: Frame) -> Figure:
    """Number of clones W / w_c* against W, one colour per (arch, dataset), with the linear fit and the
    critical width above which the layer splits into clones."""
    rows = summary.where(metric="n_clones", chunk_size=None)
    rows = rows.filter(np.array([s != "all" for s in rows["source"]], dtype=bool)) if len(rows) else rows
    with style.report_style():
        fig, ax = plt.subplots(figsize=(style.COLUMN_WIDTH, 2.6), layout="constrained")
        if not len(rows):
            no_data(ax, "number of clones")
            return fig
        for index, ((arch, dataset), _) in enumerate(rows.groups(["arch", "dataset"])):
            draw_clone_growth(ax, summary, str(arch), str(dataset), style.colour(index))
        ax.set_xlabel(WIDTH_AXIS)
        ax.set_ylabel("number of clones $W / w_c^*$")
        ax.legend(loc="upper left")
    return fig
