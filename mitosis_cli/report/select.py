"""Selecting the report's rows: networks, their rows at an epoch, curves against chunk size, and the
per-source numbers of the clones summary (clone size, error_inf, ...) pooled per network.

Nothing here draws or fits: figures and summary tables read their numbers through these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mitosis_cli.io.activations import network_label as io_network_label
from mitosis_cli.report.frame import Curve, Frame, curve_from_summaries, curve_from_values

NetworkKey = tuple[str, str, int]  # (arch, dataset, width W)

# The R^2 threshold of `mitosis clones --r2-threshold`, assumed where a table does not record it.
DEFAULT_R2_THRESHOLD = 0.99


def network_label(key: NetworkKey) -> str:
    """A figure's name for a network (its seeds pooled): `io.activations.network_label`, e.g. ``mnist5k mlp-2-relu w64``."""
    arch, dataset, width = key
    return io_network_label(arch, width, dataset=dataset)


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


def source_estimate(summary: Frame | None, metric: str, split: str | None = None) -> Estimate | None:
    """Pool the per-source rows (chunk_size null) of `metric` (of one split if given): mean of means, widest interval."""
    if summary is None:
        return None
    rows = summary.where(metric=metric, chunk_size=None)
    if split is not None and len(rows):
        rows = rows.where(split=split)
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


def source_status(summary: Frame | None, metric: str) -> str | None:
    """The `status` of a per-source row (e.g. a network's regime word): the most common among its sources."""
    if summary is None or not summary.has("status"):
        return None
    words = [w for w in summary.where(metric=metric)["status"].tolist() if isinstance(w, str) and w]
    return max(sorted(set(words)), key=words.count) if words else None


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


def r2_thresholds(*frames: Frame | None) -> list[float]:
    """The distinct `--r2-threshold`s the rows' clones tables were made with (empty when none is recorded).

    `inputs.load_inputs` copies each table's option into an `r2_threshold` column of its rows.
    """
    found: set[float] = set()
    for frame in frames:
        if frame is not None and frame.has("r2_threshold"):
            found.update(float(t) for t in frame["r2_threshold"] if np.isfinite(t))
    return sorted(found)
