"""Training: loss and error per epoch, and chunk metrics at the checkpoints analysed during training."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mitosis_cli.report import style
from mitosis_cli.report.figures.draw import EPOCH_AXIS, distinct_colours, no_data
from mitosis_cli.report.frame import Frame
from mitosis_cli.report.select import NetworkKey, chunk_error_curve, metric_curve, network_epochs, network_label, select_network


def training_curves(runs: Sequence[tuple[NetworkKey, int | None, Frame]]) -> Figure:
    """Loss and error per epoch, train (solid) and test (dashed), one colour per network; seeds share it."""
    networks = sorted({key for key, _, _ in runs})
    colour_of = dict(zip(networks, distinct_colours(len(networks)), strict=True))
    with style.report_style():
        fig, (ax_loss, ax_error) = plt.subplots(1, 2, figsize=(style.FULL_WIDTH, 2.7), layout="constrained")
        labelled: set[NetworkKey] = set()
        for key, seed, frame in runs:
            order = np.argsort(frame["epoch"])
            epochs = frame["epoch"][order]
            label = network_label(key) if key not in labelled else None
            labelled.add(key)
            for ax, column in ((ax_loss, "loss"), (ax_error, "error")):
                for split, linestyle in (("train", "-"), ("test", "--")):
                    values = frame[f"{split}_{column}"][order]
                    (line,) = ax.plot(epochs, values, color=colour_of[key], ls=linestyle, lw=1.0,
                                      label=label if split == "train" else None)
                    line.set_gid(f"{split}_{column}:{key[0]}:{key[1]}:{key[2]}:{seed}")
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel("cross-entropy loss (nats)")
        ax_error.set_ylabel("error (fraction)")
        ax_error.set_ylim(bottom=0)
        for ax in (ax_loss, ax_error):
            ax.set_xlabel(EPOCH_AXIS)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_loss.plot([], [], color=style.NEUTRAL, ls="-", label="train")
        ax_loss.plot([], [], color=style.NEUTRAL, ls="--", label="test")
        ax_loss.legend(loc="upper right", ncol=2 if len(networks) > 3 else 1)
    return fig


def metrics_over_training(key: NetworkKey, clones: Frame | None, summary: Frame | None) -> Figure:
    """Chunk test error and reconstruction R^2 against the epoch of the analysed checkpoint, one line
    per chunk size: how the clones form during training."""
    epochs = sorted(set(network_epochs(clones, key)) | set(network_epochs(summary, key)))
    panels = [("chunk test error (fraction)", lambda c, s: chunk_error_curve(c, s, "test"), "chunk_error:test"),
              ("$R^2$ of reconstruction", lambda c, s: metric_curve(c, s, "reconstruction_r2", "test"), "reconstruction_r2:test")]
    with style.report_style():
        fig, axes = plt.subplots(1, 2, figsize=(style.FULL_WIDTH, 2.7), layout="constrained")
        for ax, (ylabel, curve_of, gid) in zip(axes, panels, strict=True):
            by_size: dict[float, list[tuple[float, float, float]]] = {}
            for epoch in epochs:
                curve = curve_of(select_network(clones, key, epoch), select_network(summary, key, epoch))
                if curve is None:
                    continue
                for x, mean, sem in zip(curve.x, curve.mean, curve.sem, strict=True):
                    by_size.setdefault(float(x), []).append((epoch, mean, sem))
            if not by_size:
                no_data(ax, ylabel.split(" (")[0])
                continue
            for size, colour in zip(sorted(by_size), style.sequential(len(by_size)), strict=True):
                e, m, s = (np.array(v) for v in zip(*by_size[size], strict=True))
                container = ax.errorbar(e, m, yerr=s, marker="o", color=colour, label=f"{size:g}", elinewidth=0.8)
                container.lines[0].set_gid(f"{gid}:{size:g}")
            ax.set_xlabel("epoch of the analysed checkpoint")
            ax.set_ylabel(ylabel)
        for ax in axes:
            if ax.has_data() and len(epochs) <= 10:
                ax.set_xticks(epochs)  # the analysed checkpoints themselves
        handles, labels = axes[0].get_legend_handles_labels() if axes[0].has_data() else axes[1].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right upper", title="$w_c$ (neurons)", title_fontsize=6.5)
        fig.suptitle(f"{network_label(key)}: chunks during training", fontsize=9)
    return fig
