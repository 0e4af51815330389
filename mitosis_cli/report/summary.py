"""The headline numbers of a report, as small tables (rendered to both HTML and Markdown)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mitosis_cli.analysis.claims import PAPER, PAPER_R2, PAPER_VALUES
from mitosis_cli.analysis.collapse import REGIME_RULE
from mitosis_cli.report.frame import Curve, Frame
from mitosis_cli.report.inputs import ReportInputs
from mitosis_cli.report.select import (
    Estimate,
    chunk_error_curve,
    error_inf_for,
    metric_curve,
    network_keys,
    select_network,
    source_estimate,
    source_status,
)


@dataclass(frozen=True)
class SummaryTable:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str = ""


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def _at(curve: Curve | None, size: float) -> float | None:
    if curve is None:
        return None
    hit = np.flatnonzero(curve.x == size)
    return float(curve.mean[hit[0]]) if len(hit) else None


def network_table(inputs: ReportInputs) -> SummaryTable | None:
    keys = network_keys(inputs.clones, inputs.summary)
    if not keys:
        return None
    rows = []
    rules: list[str] = []
    for key in keys:
        clones = select_network(inputs.clones, key)
        summary = select_network(inputs.summary, key)
        sources = set()
        for frame in (clones, summary):
            if frame is not None:
                sources.update(frame.unique("source"))
        clone = source_estimate(summary, "clone_size")
        n_clones = source_estimate(summary, "n_clones")
        clone_text = "–"
        if clone is not None:
            clone_text = _fmt(clone.value)
            if np.isfinite(clone.lo) and np.isfinite(clone.hi):
                clone_text += f" [{_fmt(clone.lo)}, {_fmt(clone.hi)}]"
            if clone.rule and clone.rule not in rules:
                rules.append(clone.rule)
        epochs = [e for frame in (clones, summary) if frame is not None and frame.has("epoch") for e in frame.unique("epoch")]
        residual = source_estimate(summary, "residual_at_clone_size") if summary is not None else None
        residual = residual or _per_size(summary, "residual_at_clone_size")
        rows.append((
            key[0], key[1], str(key[2]), str(len(sources)),
            _fmt(max(epochs), 6) if epochs else "final",
            clone_text, _fmt(n_clones.value if n_clones is not None else None),
            _fmt(_at(chunk_error_curve(clones, summary, "test"), key[2]), 4),
            _fmt(error_inf_for(summary, inputs.ensemble, key[2]), 4),
            _fmt(residual.value if residual is not None else None, 2),
            _fmt(_diagnostic(summary, "top_share"), 5), _fmt(_diagnostic(summary, "participation_ratio")),
            _fmt(_diagnostic(summary, "nc1"), 2), source_status(summary, "regime") or "–",
        ))
    note = ("Clone size and number of clones from the clones summary (mean over sources, widest interval); "
            "test error is that of the chunk of size W, the whole layer. 1 - R² at w_c*: of the first chunk size at "
            "or above the clone size. Top C-1 share, participation ratio and NC1 on the test split: a layer "
            "collapsed onto its class means has a share near 1, a participation ratio near C-1 and NC1 near 0.")
    if rules:
        note += " Clone size rule: " + "; ".join(rules) + "."
    note += f" Regime: {REGIME_RULE}."
    return SummaryTable(
        "Clones per network",
        ("arch", "dataset", "W", "sources", "epoch", "clone size w_c* [interval]", "clones", "test error (whole layer)",
         "error_∞", "1 - R² at w_c*", "top C-1 share", "participation ratio", "NC1", "regime"),
        rows, note,
    )


def _per_size(summary: Frame | None, metric: str) -> Estimate | None:
    """A per-source metric that carries a chunk size (e.g. the residual at the clone size): mean over sources."""
    if summary is None:
        return None
    rows = summary.where(metric=metric)
    values = rows["mean"][np.isfinite(rows["mean"])] if len(rows) else []
    return Estimate(float(np.mean(values)), float("nan"), float("nan")) if len(values) else None


def _diagnostic(summary: Frame | None, metric: str) -> float | None:
    """A collapse diagnostic on the test split (the paper's), else on the train split."""
    found = source_estimate(summary, metric, split="test") or source_estimate(summary, metric, split="train")
    return None if found is None else found.value


def paper_table(inputs: ReportInputs) -> SummaryTable | None:
    """This run's networks beside the paper's published numbers (WRN-28-8 on CIFAR-10), each with its source."""
    keys = network_keys(inputs.clones, inputs.summary)
    if not keys:
        return None
    rows = [("paper: " + PAPER, *(v.value for v in PAPER_VALUES),
             "not published (no top C-1 share); its residuals are clearly above rounding")]
    for key in keys:
        clones, summary = select_network(inputs.clones, key), select_network(inputs.summary, key)
        r2 = metric_curve(clones, summary, "reconstruction_r2", "test")
        corr = metric_curve(clones, summary, "residual_abs_corr_paper", "test")
        clone = source_estimate(summary, "clone_size")
        c = source_estimate(summary, "excess_error_c")
        corr_text = "–"
        if corr is not None and clone is not None and len(corr):
            at = corr.x >= clone.value * (1 - 1e-9)
            whole = corr.mean[at & (corr.x < key[2])]
            corr_text = f"{_fmt(corr.mean[0], 2)} at {corr.x[0]:g} -> " + (
                f"{_fmt(whole[0], 2)} at {corr.x[at & (corr.x < key[2])][0]:g}" if len(whole) else "–")
        rows.append((
            f"this run: {key[0]} on {key[1]}, W = {key[2]}",
            " / ".join(_fmt(_at(r2, s), 4) for s in PAPER_R2),
            _fmt(clone.value if clone is not None else None), corr_text,
            _fmt(c.value if c is not None else None), source_status(summary, "regime") or "–",
        ))
    sources = "; ".join(f"{v.quantity}: {v.source}" for v in PAPER_VALUES)
    return SummaryTable(
        "Comparison with the paper",
        ("network", "R² at 16 / 32 / 64", "clone size w_c*", "residual correlation (paper's definition)", "c of c·w^-1/2",
         "regime"),
        rows,
        f"Sources of the paper's numbers: {sources}. This run's: its clones tables. The residual correlation is the "
        "paper's definition (residuals of all W neurons, regularised by 1e-8), not ours (outside the chunk only); "
        "c needs error_∞ (clones --error-inf or --ensemble).",
    )


def critical_width_table(inputs: ReportInputs) -> SummaryTable | None:
    if inputs.summary is None:
        return None
    cross = inputs.summary.where(source="all")
    rows = []
    for (arch, dataset), family in cross.groups(["arch", "dataset"]):
        critical = family.where(metric="critical_width")
        slope = family.where(metric="clones_per_width_slope")
        if not len(critical) and not len(slope):
            continue
        interval = ""
        if len(critical) and np.isfinite(critical["lo"][0]) and np.isfinite(critical["hi"][0]):
            interval = f" [{_fmt(critical['lo'][0])}, {_fmt(critical['hi'][0])}]"
        status = critical["status"][0] if len(critical) and critical.has("status") else None
        rows.append((str(arch or "all"), str(dataset or "all"),
                     (_fmt(critical["mean"][0]) + interval) if len(critical) else "–",
                     _fmt(slope["mean"][0] * 1000) if len(slope) else "–", status if isinstance(status, str) else "–"))
    if not rows:
        return None
    return SummaryTable("Mitosis across widths", ("arch", "dataset", "critical width (neurons)", "clones per 1000 neurons",
                                                  "status"), rows)


def ensemble_table(inputs: ReportInputs) -> SummaryTable | None:
    ensemble = inputs.ensemble
    if ensemble is None:
        return None
    rows = []
    for (kind, width), group in ensemble.where(split="test", metric="accuracy").groups(["kind", "width"]):
        if kind not in ("ensemble", "wide") or width is None:
            continue
        members = group["members"]
        most = np.nanmax(members) if np.isfinite(members).any() else float("nan")
        at_most = group.filter(members == most) if np.isfinite(most) else group
        values = at_most["value"]
        sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        spread = f" ± {_fmt(sem, 2)}" if np.isfinite(sem) else ""  # one draw: no standard error
        rows.append((str(kind), _fmt(width, 6), _fmt(most, 6), f"{_fmt(values.mean(), 4)}{spread}"))
    if not rows:
        return None
    return SummaryTable("Ensembles", ("kind", "W", "members", "test accuracy (± sem)"), rows,
                        "At the largest number of members measured.")


def training_table(inputs: ReportInputs) -> SummaryTable | None:
    if not inputs.histories:
        return None
    rows = []
    for run in sorted(inputs.histories, key=lambda r: (r.network, r.seed if r.seed is not None else -1, str(r.path))):
        last = int(np.argmax(run.frame["epoch"]))
        zero = np.flatnonzero(run.frame["train_error"] == 0)
        first_zero = _fmt(float(np.min(run.frame["epoch"][zero])), 6) if len(zero) else "never"
        arch, dataset, width = run.network
        seed = str(run.seed if run.seed is not None else "–")
        rows.append((str(run.path.parent.name or run.path.name), arch, dataset, str(width), seed,
                     _fmt(run.frame["epoch"][last], 6), _fmt(run.frame["train_error"][last], 4),
                     _fmt(run.frame["test_error"][last], 4), first_zero))
    return SummaryTable("Training runs", ("run", "arch", "dataset", "W", "seed", "epochs", "train error", "test error",
                                          "zero train error at epoch"), rows)


def summary_tables(inputs: ReportInputs) -> list[SummaryTable]:
    tables = [network_table(inputs), paper_table(inputs), critical_width_table(inputs), ensemble_table(inputs),
              training_table(inputs)]
    return [t for t in tables if t is not None]
