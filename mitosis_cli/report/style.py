"""One look for every figure: the Agg backend, a colour-blind-safe palette, sizes for a paper column.

Importing this module selects matplotlib's non-interactive Agg backend before pyplot is loaded, so a
report never tries to open a window (cron jobs, SLURM nodes and CI have no display).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np

matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt

# Okabe & Ito's palette: distinguishable with the common colour-vision deficiencies and in greyscale
# print. Every categorical colour in the report comes from this list, in this order.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow (last: weak on white)
)
NEUTRAL = "#4D4D4D"  # guides, reference lines, the clone-size marker
SHADE = "#BBBBBB"  # intervals drawn as bands

# Fixed roles so that "train" and "test" mean the same colour in every figure.
ROLE_COLOURS: dict[str, str] = {
    "train": PALETTE[0],
    "test": PALETTE[1],
    "train->test": PALETTE[2],
    "wide": PALETTE[1],
    "chunk-average": PALETTE[2],
}

# Figure sizes in inches: a single column of a two-column paper is about 3.4 in, a full width 7 in.
COLUMN_WIDTH = 3.4
FULL_WIDTH = 7.0

_RC: dict[str, object] = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6.5,
    # A white, slightly transparent box: a curve or a marker line running behind a legend never strikes through
    # its text (legends are placed where they cover the least, "best", or outside the axes).
    "legend.frameon": True,
    "legend.framealpha": 0.85,
    "legend.edgecolor": "none",
    "legend.fancybox": False,
    "legend.borderpad": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.5,
    "axes.axisbelow": True,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "errorbar.capsize": 1.5,
    "axes.prop_cycle": matplotlib.cycler(color=list(PALETTE)),
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    # Reproducible files: the same tables give byte-identical SVGs (no random ids, no dates).
    "svg.hashsalt": "mitosis",
    "svg.fonttype": "path",
}


@contextmanager
def report_style() -> Iterator[None]:
    """Apply the report's rcParams for the duration of a block (figures keep them once built)."""
    with plt.rc_context(_RC):
        yield


def colour(index: int) -> str:
    """The `index`-th palette colour, cycling."""
    return PALETTE[index % len(PALETTE)]


def sequential(count: int) -> list[str]:
    """`count` ordered colours (for chunk sizes or widths, where order means something): viridis, minus its pale end."""
    cmap = matplotlib.colormaps["viridis"]
    if count <= 1:
        return [matplotlib.colors.to_hex(cmap(0.35))] * count
    return [matplotlib.colors.to_hex(cmap(0.05 + 0.8 * i / (count - 1))) for i in range(count)]


def plain_log_ticks(axis: matplotlib.axis.Axis) -> None:
    """Label a log10 axis 0.02, 0.05, 0.1... instead of 2x10^-2: readable at column width."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def power_of_two_ticks(axis: matplotlib.axis.Axis, values: Sequence[float]) -> None:
    """Label a log2 axis at the given values with plain integers (16, 32, 64...) rather than 2^k."""
    candidates = sorted({float(v) for v in values if v > 0})
    powers = [v for v in candidates if float(np.log2(v)).is_integer()]
    ticks = list(powers)
    for value in candidates:
        # Labels closer than half an octave collide at column width (3 beside 4, 96 beside 128):
        # powers of two win, other values are labelled only where there is room.
        if value not in ticks and all(abs(np.log2(value) - np.log2(t)) >= 0.5 for t in ticks):
            ticks.append(value)
    ticks.sort()
    if len(ticks) > 9:  # keep at most ~9 labels: every other one
        ticks = ticks[::2]
    axis.set_ticks(ticks)
    axis.set_ticklabels([f"{t:g}" for t in ticks])
    axis.set_minor_locator(matplotlib.ticker.NullLocator())
