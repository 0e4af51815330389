"""The report's figures: each function takes tables (Frames) and returns a matplotlib Figure.

Nothing here reads or writes files. Data artists carry a `gid` naming what they show
("chunk_error:test", "clone-size", ...) so tests, and anyone post-editing an SVG, can find them.

Notation follows Doimo et al. (NeurIPS 2022): W is the width of the last hidden layer, w_c the size of
a chunk of its neurons, w_c* the clone size, error_inf the test error of a large ensemble of full
networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mitosis_cli.report import style
from mitosis_cli.report.frame import Curve, Frame, curve_from_summaries, curve_from_values

import matplotlib.pyplot as plt  # noqa: E402 - after `style`, which selects the Agg backend
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

NetworkKey = tuple[str, str, int]  # (arch, dataset, width W)

CHUNK_AXIS = "chunk size $w_c$ (neurons)"
WIDTH_AXIS = "width $W$ of the last hidden layer (neurons)"
EPOCH_AXIS = "epoch"


def network_label(key: NetworkKey) -> str:
    arch, dataset, width = key
    return f"{arch} on {dataset}, W = {width}"


# --------------------------------------------------------------------------------------------------
# Selecting and aggregating rows


def network_keys(*frames: Frame | None) -> list[NetworkKey]:
    """The distinct (arch, dataset, width) networks in the clones / summary tables (per-source rows only)."""
    keys: set[NetworkKey] = set()
    for frame in frames:
        if frame is None:
            continue
        rows = frame.filter(np.array([s != "all" for s in frame["source"]], dtype=bool))
        for (arch, dataset, width), _ in rows.groups(["arch", "dataset", "width"]):
            if arch is not None and dataset is not None and width is not None and np.isfinite(width):
                keys.add((str(arch), str(dataset), int(width)))
    return sorted(keys)


def select_network(frame: Frame | None, key: NetworkKey, epoch: float | None = None) -> Frame | None:
    """Rows of one network: at `epoch` when given; otherwise the trained networks' rows.

    Rows of unknown epoch come from the final activation files (acts.h5) and are preferred; a network
    analysed only at named epochs is shown at its latest one.
    """
    if frame is None:
        return None
    arch, dataset, width = key
    rows = frame.where(arch=arch, dataset=dataset, width=width)
    if not rows.has("epoch") or not len(rows):
        return rows
    epochs = rows["epoch"]
    if epoch is not None:
        return rows.filter(epochs == epoch)
    known = np.isfinite(epochs)
    if known.all():  # each seed's latest epoch: seeds may stop at different epochs (--until-zero-error)
        seeds = _seed_keys(rows)
        latest = {s: epochs[seeds == s].max() for s in set(seeds.tolist())}
        return rows.filter(epochs == np.array([latest[s] for s in seeds.tolist()]))
    return rows.filter(~known)


def _seed_keys(rows: Frame) -> np.ndarray:
    """Each row's seed as a string key (one group when the table has no seed column)."""
    if not rows.has("seed"):
        return np.zeros(len(rows), dtype=object).astype(str)
    return np.array([str(s) for s in rows["seed"]])


def network_epochs(frame: Frame | None, key: NetworkKey) -> list[float]:
    """The epochs at which a network's activations were analysed (empty when unknown)."""
    if frame is None or not frame.has("epoch"):
        return []
    arch, dataset, width = key
    rows = frame.where(arch=arch, dataset=dataset, width=width)
    if not len(rows):
        return []
    seeds = _seed_keys(rows)  # one run analysed at several epochs, not several seeds' final epochs
    epochs = np.asarray(rows["epoch"], dtype=np.float64)
    per_seed = [sorted({float(e) for e in epochs[(seeds == s) & np.isfinite(epochs)]}) for s in set(seeds.tolist())]
    return max(per_seed, key=len)


def metric_curve(clones: Frame | None, summary: Frame | None, metric: str, split: str) -> Curve | None:
    """Mean and standard error of a chunk metric against chunk size.

    From the raw rows when there are any (sem over repeats and seeds), else pooled from the summary.
    """
    if clones is not None:
        rows = clones.where(metric=metric, split=split)
        rows = rows.filter(np.isfinite(rows["chunk_size"])) if len(rows) else rows
        if len(rows):
            return curve_from_values(rows["chunk_size"], rows["value"])
    if summary is not None:
        rows = summary.where(metric=metric, split=split)
        rows = rows.filter(np.isfinite(rows["chunk_size"])) if len(rows) else rows
        if len(rows):
            return curve_from_summaries(rows["chunk_size"], rows["mean"], rows["sem"], rows["n"])
    return None


def chunk_error_curve(clones: Frame | None, summary: Frame | None, split: str) -> Curve | None:
    """Chunk error on a split; from chunk accuracy (error = 1 - accuracy) when only that was measured."""
    curve = metric_curve(clones, summary, "chunk_error", split)
    if curve is not None:
        return curve
    accuracy = metric_curve(clones, summary, "chunk_accuracy", split)
    if accuracy is None:
        return None
    return Curve(accuracy.x, 1.0 - accuracy.mean, accuracy.sem, accuracy.n)


@dataclass(frozen=True)
class Estimate:
    """A per-network number from the summary (mean over the network's sources) with its interval."""

    value: float
    lo: float
    hi: float
    rule: str | None = None
    sources: int = 1


def source_estimate(summary: Frame | None, metric: str) -> Estimate | None:
    """Pool the per-source rows (chunk_size null) of `metric`: mean of means, widest interval."""
    if summary is None:
        return None
    rows = summary.where(metric=metric, chunk_size=None)
    rows = rows.filter(np.isfinite(rows["mean"])) if len(rows) else rows
    if not len(rows):
        return None
    lo, hi = rows["lo"], rows["hi"]
    rules = [r for r in (rows["rule"].tolist() if rows.has("rule") else []) if r]
    return Estimate(
        value=float(np.mean(rows["mean"])),
        lo=float(np.nanmin(lo)) if np.isfinite(lo).any() else float("nan"),
        hi=float(np.nanmax(hi)) if np.isfinite(hi).any() else float("nan"),
        rule=str(rules[0]) if rules else None,
        sources=len(set(rows["source"].tolist())),
    )


def error_inf_for(summary: Frame | None, ensemble: Frame | None, width: int) -> float | None:
    """error_inf for a network of width W: the summary's per-source value, else the ensemble table's."""
    estimate = source_estimate(summary, "error_inf")
    if estimate is not None:
        return estimate.value
    if ensemble is None:
        return None
    rows = ensemble.where(kind="error-inf", metric="error", split="test")
    if not len(rows):
        return None
    matching = rows.filter(rows["width"] == width)
    if len(matching):
        return float(np.mean(matching["value"]))
    # `mitosis ensemble` writes one error_inf, from the widest networks: the limit of the task, used for every width.
    values = np.unique(rows["value"][np.isfinite(rows["value"])])
    return float(values[0]) if len(values) == 1 else None


def excess_constant(summary: Frame | None, excess: Curve, clone_size: float | None) -> tuple[float, str] | None:
    """The c of the c * w_c^-1/2 guide: the summary's `excess_error_c`, else fitted here.

    The fit is the geometric mean of excess * sqrt(w_c) over chunk sizes at or above the clone size
    (all sizes when there is none), i.e. least squares for log(excess) with the slope fixed at -1/2.
    """
    estimate = source_estimate(summary, "excess_error_c")
    if estimate is not None and estimate.value > 0:
        return estimate.value, "from summary"
    points = excess.positive()
    origin = "fitted over all sizes"
    if clone_size is not None:
        above = points.x >= clone_size
        if above.any():
            points = Curve(points.x[above], points.mean[above], points.sem[above], points.n[above])
            origin = "fitted above $w_c^*$"
    if not len(points):
        return None
    return float(np.exp(np.mean(np.log(points.mean) + 0.5 * np.log(points.x)))), origin


# --------------------------------------------------------------------------------------------------
# Drawing helpers


def _errorbar(ax: Axes, curve: Curve, gid: str, label: str, colour: str, **kwargs: object) -> None:
    container = ax.errorbar(curve.x, curve.mean, yerr=curve.sem, marker="o", color=colour, label=label,
                            elinewidth=0.8, **kwargs)
    container.lines[0].set_gid(gid)


def _mark_clone_size(ax: Axes, clone: Estimate | None, label: bool = False) -> None:
    if clone is None:
        return
    if np.isfinite(clone.lo) and np.isfinite(clone.hi) and clone.hi > clone.lo:
        ax.axvspan(clone.lo, clone.hi, color=style.SHADE, alpha=0.35, lw=0, gid="clone-size-interval")
    ax.axvline(clone.value, color=style.NEUTRAL, ls="--", lw=0.9, gid="clone-size",
               label=f"clone size $w_c^*$ = {clone.value:.3g}" if label else None)


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}\nin the tables", transform=ax.transAxes, ha="center", va="center",
            color=style.NEUTRAL, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _chunk_axis(ax: Axes, sizes: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    style.power_of_two_ticks(ax.xaxis, sizes)
    ax.set_xlabel(CHUNK_AXIS)


# --------------------------------------------------------------------------------------------------
# (1) The paper's panel set for one network


def network_panels(key: NetworkKey, clones: Frame | None, summary: Frame | None, ensemble: Frame | None) -> Figure:
    """Four panels against chunk size: test error - error_inf (log-log, with the c w^-1/2 guide),
    training error, reconstruction R^2 and residual correlation; the clone size marked in each.

    `clones` and `summary` hold this network's rows only (see `select_network`).
    """
    clone = source_estimate(summary, "clone_size")
    clone_value = clone.value if clone is not None else None
    sizes = sorted({float(s) for f in (clones, summary) if f is not None for s in f["chunk_size"] if np.isfinite(s)})

    with style.report_style():
        fig, axes = plt.subplots(2, 2, figsize=(style.FULL_WIDTH, 4.6), layout="constrained")
        ax_excess, ax_train, ax_r2, ax_resid = axes.ravel()
        _excess_panel(ax_excess, key, clones, summary, ensemble, clone)
        _training_error_panel(ax_train, clones, summary, clone)
        _reconstruction_panel(ax_r2, clones, summary, clone)
        _residual_panel(ax_resid, clones, summary, clone)
        for ax, letter in zip(axes.ravel(), "abcd"):
            if ax.has_data():
                _chunk_axis(ax, sizes)
            ax.set_title(f"({letter})", loc="left", fontweight="bold")
        title = network_label(key)
        if clone_value is not None:
            spread = f" [{clone.lo:.3g}, {clone.hi:.3g}]" if np.isfinite(clone.lo) and np.isfinite(clone.hi) else ""
            title += f"  —  clone size $w_c^*$ = {clone_value:.3g}{spread}, {key[2] / clone_value:.3g} clones"
        fig.suptitle(title, fontsize=9)
    return fig


def _excess_panel(ax: Axes, key: NetworkKey, clones: Frame | None, summary: Frame | None, ensemble: Frame | None,
                  clone: Estimate | None) -> None:
    test_error = chunk_error_curve(clones, summary, "test")
    if test_error is None:
        _no_data(ax, "chunk test error")
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
    _mark_clone_size(ax, clone, label=True)
    if len(curve):
        _errorbar(ax, curve, gid, "chunks", style.ROLE_COLOURS["test"])
        if error_inf is not None:
            fit = excess_constant(summary, curve, clone.value if clone else None)
            if fit is not None:
                c, origin = fit
                lo = clone.value if clone is not None and clone.value <= curve.x.max() else curve.x.min()
                guide_x = np.geomspace(max(lo, curve.x.min()), curve.x.max(), 50)
                # A broad pale band under the data: visible even where the points sit exactly on it.
                ax.plot(guide_x, c / np.sqrt(guide_x), color=style.SHADE, lw=4, alpha=0.8, zorder=1, solid_capstyle="round",
                        gid="guide", label=f"$c\\,w_c^{{-1/2}}$, c = {c:.3g} ({origin})")
    ax.set_yscale("log")
    style.plain_log_ticks(ax.yaxis)
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower left")


def _training_error_panel(ax: Axes, clones: Frame | None, summary: Frame | None, clone: Estimate | None) -> None:
    train_error = chunk_error_curve(clones, summary, "train")
    if train_error is None:
        _no_data(ax, "chunk training error")
        return
    _mark_clone_size(ax, clone)
    _errorbar(ax, train_error, "chunk_error:train", "training set", style.ROLE_COLOURS["train"])
    ax.set_ylim(bottom=min(0.0, float(np.min(train_error.mean))))
    ax.set_ylabel("chunk training error (fraction)")


def _reconstruction_panel(ax: Axes, clones: Frame | None, summary: Frame | None, clone: Estimate | None) -> None:
    variants = [("test", "fit and scored on test (paper)"), ("train->test", "fit on train, scored on test")]
    curves = [(split, label, metric_curve(clones, summary, "reconstruction_r2", split)) for split, label in variants]
    curves = [(split, label, c) for split, label, c in curves if c is not None]
    if not curves:
        _no_data(ax, "reconstruction $R^2$")
        return
    _mark_clone_size(ax, clone)
    for split, label, curve in curves:
        _errorbar(ax, curve, f"reconstruction_r2:{split}", label, style.ROLE_COLOURS[split])
    ax.axhline(0.99, color=style.NEUTRAL, lw=0.7, ls=":", gid="r2-threshold", label="$R^2$ = 0.99")
    lowest = min(float(np.min(c.mean)) for _, _, c in curves)
    ax.set_ylim(max(min(lowest, 0.9) - 0.05, -0.05), 1.02)
    ax.set_ylabel("$R^2$ of reconstruction")
    ax.legend(loc="lower right")


def _residual_panel(ax: Axes, clones: Frame | None, summary: Frame | None, clone: Estimate | None) -> None:
    variants = [("residual_abs_corr", "mean |off-diagonal corr.|"), ("residual_frob_corr", "Frobenius norm / size")]
    curves = []
    for metric, label in variants:
        for split in ("test", "train->test", "train"):  # the paper's in-sample test residuals first
            curve = metric_curve(clones, summary, metric, split)
            if curve is not None:
                curves.append((f"{metric}:{split}", label, curve))
                break
    if not curves:
        _no_data(ax, "residual correlation")
        return
    _mark_clone_size(ax, clone)
    for i, (gid, label, curve) in enumerate(curves):
        _errorbar(ax, curve, gid, label, style.colour(2 + i))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("correlation of residuals")
    ax.legend(loc="upper right")


# --------------------------------------------------------------------------------------------------
# (2) Number of clones against width


@dataclass(frozen=True)
class CloneFit:
    """n_clones = 1 + slope * (W - critical_width) above the critical width, one clone below it."""

    slope: float
    critical_width: float
    lo: float
    hi: float
    origin: str


def _cross_file_fit(summary: Frame, arch: str, dataset: str) -> CloneFit | None:
    rows = summary.where(source="all")
    if not len(rows):
        return None
    def covers(label: object, name: str) -> bool:  # "mlp" or "mlp,wrn" (a fit over several) or null
        return label is None or label == "all" or name in str(label).split(",")

    family = rows.filter(np.array([covers(a, arch) and covers(d, dataset) for a, d in zip(rows["arch"], rows["dataset"])],
                                  dtype=bool))
    critical = family.where(metric="critical_width")
    slope = family.where(metric="clones_per_width_slope")
    if not len(critical) or not len(slope):
        return None
    return CloneFit(float(slope["mean"][0]), float(critical["mean"][0]), float(critical["lo"][0]), float(critical["hi"][0]),
                    "from summary")


def _least_squares_fit(widths: np.ndarray, clones: np.ndarray) -> CloneFit | None:
    # Only widths that have split (more than one clone) lie on the line; fewer than two say nothing.
    split = clones > 1
    if len(np.unique(widths[split])) < 2:
        return None
    slope, intercept = np.polyfit(widths[split], clones[split], 1)
    if slope <= 0:
        return None
    return CloneFit(float(slope), float((1 - intercept) / slope), float("nan"), float("nan"), "least squares")


def clones_vs_width(summary: Frame) -> Figure:
    """Number of clones W / w_c* against W, one colour per (arch, dataset), with the linear fit and the
    critical width above which the layer splits into clones."""
    rows = summary.where(metric="n_clones", chunk_size=None)
    rows = rows.filter(np.array([s != "all" for s in rows["source"]], dtype=bool)) if len(rows) else rows
    with style.report_style():
        fig, ax = plt.subplots(figsize=(style.COLUMN_WIDTH, 2.6), layout="constrained")
        if not len(rows):
            _no_data(ax, "number of clones")
            return fig
        for index, ((arch, dataset), family) in enumerate(rows.groups(["arch", "dataset"])):
            colour = style.colour(index)
            points = curve_from_values(family["width"], family["mean"])  # sem over seeds at each width
            container = ax.errorbar(points.x, points.mean, yerr=points.sem, marker="o", ls="none", color=colour,
                                    label=f"{arch} on {dataset}", elinewidth=0.8)
            container.lines[0].set_gid(f"n_clones:{arch}:{dataset}")
            fit = _cross_file_fit(summary, str(arch), str(dataset)) or _least_squares_fit(points.x, points.mean)
            if fit is None:
                continue
            right = max(points.x.max(), fit.critical_width) * 1.05
            # One clone (no mitosis) below the critical width, then the linear growth.
            ax.plot([0, fit.critical_width, right], [1, 1, 1 + fit.slope * (right - fit.critical_width)], color=colour,
                    lw=1.0, gid=f"fit:{arch}:{dataset}", label=f"linear fit, {fit.slope * 1000:.3g} per 1000 neurons")
            if np.isfinite(fit.lo) and np.isfinite(fit.hi) and fit.hi > fit.lo:
                ax.axvspan(fit.lo, fit.hi, color=colour, alpha=0.12, lw=0)
            ax.axvline(fit.critical_width, color=colour, ls="--", lw=0.8, gid=f"critical-width:{arch}:{dataset}",
                       label=f"critical width {fit.critical_width:.0f} ({fit.origin})")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(WIDTH_AXIS)
        ax.set_ylabel("number of clones $W / w_c^*$")
        ax.legend(loc="lower right")
    return fig


# --------------------------------------------------------------------------------------------------
# (3) Information Imbalance


def information_imbalance(clones: Frame, summary: Frame | None, keys: Sequence[NetworkKey]) -> Figure:
    """Delta(chunk -> full layer) and Delta(full layer -> chunk) against chunk size, one line per network.

    Delta ~ 0: the first space predicts the neighbourhoods of the second; ~ 1: it carries no information.
    """
    directions = [("ii_chunk_to_full", r"$\Delta$(chunk $\to$ full layer)"), ("ii_full_to_chunk", r"$\Delta$(full layer $\to$ chunk)")]
    colours = style.sequential(len(keys)) if len(keys) > len(style.PALETTE) else [style.colour(i) for i in range(len(keys))]
    with style.report_style():
        fig, axes = plt.subplots(1, 2, figsize=(style.FULL_WIDTH, 2.7), layout="constrained", sharey=True)
        sizes: set[float] = set()
        for ax, (metric, ylabel) in zip(axes, directions):
            for key, colour in zip(keys, colours):
                rows = select_network(clones, key)
                net_summary = select_network(summary, key)
                curve = metric_curve(rows, net_summary, metric, "test") or _any_split_curve(rows, net_summary, metric)
                if curve is None:
                    continue
                sizes.update(curve.x.tolist())
                _errorbar(ax, curve, f"{metric}:{key[0]}:{key[1]}:{key[2]}", f"{network_label(key)}{_points_note(rows, metric)}", colour)
                clone = source_estimate(net_summary, "clone_size")
                if clone is not None:
                    ax.axvline(clone.value, color=colour, ls="--", lw=0.8, gid=f"clone-size:{key[0]}:{key[1]}:{key[2]}")
            ax.set_ylabel(ylabel)
            ax.set_ylim(-0.02, 1.05)
        for ax in axes:
            ax.tick_params(labelleft=True)  # shared y, but each panel is read on its own
            if ax.has_data():
                _chunk_axis(ax, sorted(sizes))
            else:
                _no_data(ax, "Information Imbalance")
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


# --------------------------------------------------------------------------------------------------
# (4) Ensembles


def _accuracy_rows(ensemble: Frame, kind: str) -> tuple[Frame, bool]:
    """Test-accuracy rows of a kind; from error rows (accuracy = 1 - error) when accuracy is absent."""
    rows = ensemble.where(kind=kind, metric="accuracy", split="test")
    if len(rows):
        return rows, False
    return ensemble.where(kind=kind, metric="error", split="test"), True


def _accuracy_curve(rows: Frame, x: np.ndarray, from_error: bool) -> Curve:
    curve = curve_from_values(x, rows["value"])
    return Curve(curve.x, 1.0 - curve.mean, curve.sem, curve.n) if from_error else curve


def _width_colours(widths: Sequence[float]) -> dict[float, str]:
    ordered = sorted(widths)
    colours = style.sequential(len(ordered)) if len(ordered) > len(style.PALETTE) else [style.colour(i) for i in range(len(ordered))]
    return dict(zip(ordered, colours))


def _log2_axis(ax: Axes, seen: set[float], xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log", base=2)
    style.power_of_two_ticks(ax.xaxis, sorted(seen))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


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
        colour_of = _width_colours(ensembles.unique("width"))
        members_seen: set[float] = set()
        totals_seen: set[float] = set()
        for (width,), group in ensembles.groups(["width"]):
            if width is None:
                continue
            curve = _accuracy_curve(group, group["members"], ensemble_from_error)
            _errorbar(ax_members, curve, f"ensemble:{width:g}", f"ensemble of W = {width:g}", colour_of[width])
            total = Curve(curve.x * width, curve.mean, curve.sem, curve.n)
            _errorbar(ax_total, total, f"ensemble-total:{width:g}", f"ensemble of W = {width:g}", colour_of[width])
            members_seen.update(curve.x.tolist())
            totals_seen.update(total.x.tolist())
        chunk_sizes = chunks.unique("width")
        chunk_colour = dict(zip(chunk_sizes, style.sequential(len(chunk_sizes))))
        for index, ((width,), group) in enumerate(chunks.groups(["width"])):
            curve = _accuracy_curve(group, group["members"], chunks_from_error)
            total = Curve(curve.x * width, curve.mean, curve.sem, curve.n)
            # One legend entry for the whole family: the lines differ only by chunk size, shown in (c).
            _errorbar(ax_total, total, f"chunk-average-total:{width:g}",
                      "chunks of the widest network, averaged" if index == 0 else "", chunk_colour[width],
                      ls=":", lw=0.9, ms=2.5, alpha=0.8)
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
            for ax in (ax_members, ax_total):
                ax.axhline(1 - float(np.mean(error_inf["value"])), color=style.NEUTRAL, lw=0.8, ls=":", gid="accuracy-inf",
                           label=r"1 $-$ error$_\infty$")
        for ax, seen, xlabel, title in (
                (ax_members, members_seen, "members in the ensemble", "(a) accuracy against ensemble size"),
                (ax_total, totals_seen, "total width: members $\\times$ W (neurons)", "(b) ensembles beside single networks")):
            ax.set_title(title, loc="left", fontsize=8)
            if not ax.has_data():
                _no_data(ax, "ensemble accuracy")
                continue
            _log2_axis(ax, seen, xlabel, accuracy_label)
        # (b) repeats (a)'s colours: its legend names only what (a) does not show.
        shown = set(ax_members.get_legend_handles_labels()[1])
        for ax, keep in ((ax_members, None), (ax_total, shown)):
            handles, labels = ax.get_legend_handles_labels()
            pairs = [(h, lab) for h, lab in zip(handles, labels) if keep is None or lab not in keep]
            if pairs:
                ax.legend(*zip(*pairs), loc="lower right")
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
        _errorbar(ax, curve, f"chunk-average:{width:g}", f"$w_c$ = {width:g}", colour_of[width], ms=2.5)
        seen.update(curve.x.tolist())
    _log2_axis(ax, seen, "chunks averaged", "test accuracy (fraction)")
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
        _errorbar(ax, curve, f"bias-variance:{metric}", metric, style.colour(index), ls=linestyle, ms=2.5)
    if not ax.has_data():
        _no_data(ax, "bias-variance decomposition")
        return
    ax.set_xscale("log", base=2)
    style.power_of_two_ticks(ax.xaxis, sorted(widths_seen))
    ax.set_xlabel("width $W$ of the networks (neurons)")
    ax.set_ylabel("test cross-entropy (nats)")
    ax.set_title(f"{letter} loss = bias + variance", loc="left", fontsize=8)
    ax.legend(loc="best")


# --------------------------------------------------------------------------------------------------
# (5) Training


def training_curves(runs: Sequence[tuple[NetworkKey, int | None, Frame]]) -> Figure:
    """Loss and error per epoch, train (solid) and test (dashed), one colour per network; seeds share it."""
    networks = sorted({key for key, _, _ in runs})
    colours = style.sequential(len(networks)) if len(networks) > len(style.PALETTE) else [style.colour(i) for i in range(len(networks))]
    colour_of = dict(zip(networks, colours))
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
        for ax, (ylabel, curve_of, gid) in zip(axes, panels):
            by_size: dict[float, list[tuple[float, float, float]]] = {}
            for epoch in epochs:
                curve = curve_of(select_network(clones, key, epoch), select_network(summary, key, epoch))
                if curve is None:
                    continue
                for x, mean, sem in zip(curve.x, curve.mean, curve.sem):
                    by_size.setdefault(float(x), []).append((epoch, mean, sem))
            if not by_size:
                _no_data(ax, ylabel.split(" (")[0])
                continue
            for size, colour in zip(sorted(by_size), style.sequential(len(by_size))):
                e, m, s = (np.array(v) for v in zip(*by_size[size]))
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
