"""Drawing helpers shared by the figures: error-bar series, the clone-size marker, empty panels, axes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from mitosis_cli.report import style
from mitosis_cli.report.frame import Curve
from mitosis_cli.report.select import Estimate

CHUNK_AXIS = "chunk size $w_c$ (neurons)"
WIDTH_AXIS = "width $W$ of the last hidden layer (neurons)"
EPOCH_AXIS = "epoch"


def distinct_colours(count: int) -> list[str]:
    """One colour per series: the categorical palette while it lasts, a sequential map beyond it."""
    return style.sequential(count) if count > len(style.PALETTE) else [style.colour(i) for i in range(count)]


def errorbar(ax: Axes, curve: Curve, gid: str, label: str, colour: str, **kwargs: Any) -> None:
    """Mean +- standard error against x, markers joined; the data line carries `gid`."""
    container = ax.errorbar(curve.x, curve.mean, yerr=curve.sem, marker="o", color=colour, label=label,
                            elinewidth=0.8, **kwargs)
    container.lines[0].set_gid(gid)


def mark_clone_size(ax: Axes, clone: Estimate | None, label: bool = False) -> None:
    """The clone size w_c* as a dashed vertical line over the grey band of its interval."""
    if clone is None:
        return
    if np.isfinite(clone.lo) and np.isfinite(clone.hi) and clone.hi > clone.lo:
        ax.axvspan(clone.lo, clone.hi, color=style.SHADE, alpha=0.35, lw=0, gid="clone-size-interval")
    ax.axvline(clone.value, color=style.NEUTRAL, ls="--", lw=0.9, gid="clone-size",
               label=f"clone size $w_c^*$ = {clone.value:.3g}" if label else None)


def no_data(ax: Axes, what: str) -> None:
    """Say in the panel that the tables hold no `what`, instead of leaving empty axes."""
    ax.text(0.5, 0.5, f"no {what}\nin the tables", transform=ax.transAxes, ha="center", va="center",
            color=style.NEUTRAL, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def chunk_axis(ax: Axes, sizes: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    style.power_of_two_ticks(ax.xaxis, sizes)
    ax.set_xlabel(CHUNK_AXIS)


def log2_axis(ax: Axes, seen: set[float], xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    style.power_of_two_ticks(ax.xaxis, sorted(seen))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
