"""The paper's claims about representation mitosis, judged from the tables the pipeline writes.

The rows are those of clones-summary.parquet and ensemble.parquet (as dicts), so anyone can recompute a
verdict from the files. Claims of Doimo et al. (2022), and how each is judged here:

(a) the clone size w_c* stays roughly constant across widths above the critical width:
    at least three such widths, and max / min of their w_c* at most 1.5 (half a step of the grid);
(b) the number of clones W / w_c* grows linearly with W above the critical width:
    a least-squares line through (W, n_clones) has R^2 >= 0.95, and the count grows at least half
    as fast as the width (n(W_max) / n(W_min) >= 0.5 W_max / W_min: a flat line that merely has a
    positive slope, as in untrained networks, does not count);
(c) chunks of the wide network classify like narrow networks of the chunk's width:
    for each trained width w < W at or above w_c*, the test accuracy of random w-neuron chunks of the
    widest network (its trained head restricted to the chunk) is within 1.5 points of the mean test
    accuracy of independently trained networks of width w;
(d) the wide network matches or beats the ensemble of clone-sized networks:
    test accuracy of the widest networks >= that of the ensemble of the most networks of the clone
    size (the smallest trained width >= w_c*) the pool allows, up to W / w_c*, minus 0.5 points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims as measured here: `holds` is None when the data cannot tell."""

    key: str
    statement: str
    holds: bool | None
    evidence: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "cannot tell"}[self.holds]


def _rows(table: Sequence[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    return [r for r in table if all(r.get(k) == v for k, v in match.items())]


def clone_sizes(summary: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Width -> clone size w_c* from the per-source rows of clones-summary (mean over sources of a width)."""
    by_width: dict[int, list[float]] = {}
    for r in _rows(summary, metric="clone_size"):
        if r["mean"] is not None and math.isfinite(r["mean"]):
            by_width.setdefault(int(r["width"]), []).append(float(r["mean"]))
    return {w: float(np.mean(v)) for w, v in sorted(by_width.items())}


def critical_width(summary: Sequence[Mapping[str, Any]]) -> float | None:
    rows = _rows(summary, metric="critical_width")
    return float(rows[0]["mean"]) if rows and rows[0]["mean"] is not None else None


def evaluate_claims(summary: Sequence[Mapping[str, Any]], ensemble: Sequence[Mapping[str, Any]]) -> list[Claim]:
    """Judge claims (a)-(d) (see the module docstring) from the rows of clones-summary and ensemble tables."""
    sizes = clone_sizes(summary)
    crit = critical_width(summary)
    above = {w: c for w, c in sizes.items() if crit is None or w > crit}
    claims = [_claim_constant(above, crit), _claim_linear(above)]
    claims += [_claim_chunks(summary, ensemble, sizes), _claim_ensemble(ensemble, sizes)]
    return claims


def _claim_constant(above: dict[int, float], crit: float | None) -> Claim:
    statement = "the clone size stays roughly constant across widths above the critical width"
    if len(above) < 3:
        return Claim("a", statement, None, "fewer than three widths above the critical width")
    lo, hi = min(above.values()), max(above.values())
    text = ", ".join(f"W={w}: {c:.1f}" for w, c in above.items())
    where = "not fitted" if crit is None else f"{crit:.1f}"
    return Claim("a", statement, hi / lo <= 1.5, f"w_c* = {text} (max/min {hi / lo:.2f}; critical width {where})",
                 {"clone_size": above, "ratio": hi / lo, "critical_width": crit})


def _claim_linear(above: dict[int, float]) -> Claim:
    statement = "the number of clones grows linearly with the width above the critical width"
    if len(above) < 3:
        return Claim("b", statement, None, "fewer than three widths above the critical width")
    w = np.array(list(above), dtype=float)
    n = w / np.array(list(above.values()))
    slope, intercept = np.polyfit(w, n, 1)
    resid = n - (slope * w + intercept)
    r2 = 1.0 - float(resid @ resid) / float(((n - n.mean()) ** 2).sum())
    growth = (n[-1] / n[0]) / (w[-1] / w[0])  # 1 when the count is proportional to the width
    text = ", ".join(f"W={int(a)}: {b:.1f}" for a, b in zip(w, n, strict=True))
    return Claim("b", statement, bool(slope > 0 and r2 >= 0.95 and growth >= 0.5),
                 f"clones {text}; slope {slope * 100:.2f} per 100 neurons, line R^2 {r2:.3f}, "
                 f"count grows {growth:.2f}x as fast as the width",
                 {"n_clones": dict(zip(map(int, w), n.tolist(), strict=True)), "slope": float(slope), "line_r2": r2,
                  "growth_ratio": growth})


def _wide_accuracy(ensemble: Sequence[Mapping[str, Any]], width: int) -> float | None:
    values = [r["value"] for r in _rows(ensemble, kind="wide", width=width, split="test", metric="accuracy")]
    return float(np.mean(values)) if values else None


def _claim_chunks(summary: Sequence[Mapping[str, Any]], ensemble: Sequence[Mapping[str, Any]],
                  sizes: dict[int, float]) -> Claim:
    statement = "chunks of the wide network classify like narrow networks of the chunk's width"
    if not sizes:
        return Claim("c", statement, None, "no clone size measured")
    widest = max(sizes)
    chunk_acc = {int(r["chunk_size"]): float(r["mean"])
                 for r in _rows(summary, metric="chunk_accuracy", split="test", width=widest)}
    narrow = {w: _wide_accuracy(ensemble, w) for w in sizes if w < widest}
    compared = {w: (chunk_acc[w], acc) for w, acc in narrow.items() if acc is not None and w in chunk_acc}
    pairs = {w: pair for w, pair in compared.items() if w >= sizes[widest]}  # the claim is about whole clones
    below = ", ".join(f"w={w}: chunk {100 * c:.1f}% vs network {100 * a:.1f}%"
                      for w, (c, a) in compared.items() if w not in pairs)
    if not pairs:
        return Claim("c", statement, None, "no trained width at or above the clone size to compare chunks with"
                     + (f" (below it: {below})" if below else ""))
    gaps = {w: 100 * (c - a) for w, (c, a) in pairs.items()}
    text = "; ".join(f"w={w}: chunk {100 * c:.1f}% vs network {100 * a:.1f}%" for w, (c, a) in pairs.items())
    if below:
        text += f" (below the clone size, not judged: {below})"
    holds = all(abs(g) <= 1.5 for g in gaps.values())
    if not holds:  # say which way it fails: better chunks and worse chunks mean different things
        worst = max(gaps.values(), key=abs)
        text += f"; chunks are {'better' if worst > 0 else 'worse'} by up to {abs(worst):.1f} points"
    return Claim("c", statement, holds, f"{text} (chunks of the W={widest} network)",
                 {"pairs": pairs, "gap_points": gaps, "widest": widest})


def _claim_ensemble(ensemble: Sequence[Mapping[str, Any]], sizes: dict[int, float]) -> Claim:
    statement = "the wide network matches or beats the ensemble of clone-sized networks"
    if not sizes:
        return Claim("d", statement, None, "no clone size measured")
    widest = max(sizes)
    pools = sorted({int(r["width"]) for r in _rows(ensemble, kind="ensemble")})
    candidates = [w for w in pools if w >= sizes[widest] and w < widest]
    wide = _wide_accuracy(ensemble, widest)
    if not candidates or wide is None:
        return Claim("d", statement, None, "no ensemble of networks of the clone size in the table")
    member = candidates[0]
    rows = _rows(ensemble, kind="ensemble", width=member, split="test", metric="accuracy")
    target = widest // member
    k = max((int(r["members"]) for r in rows if int(r["members"]) <= target), default=0)
    if k < 2:
        return Claim("d", statement, None, f"fewer than two networks of width {member}")
    ens = float(np.mean([r["value"] for r in rows if int(r["members"]) == k]))
    gap = 100 * (wide - ens)
    return Claim("d", statement, gap >= -0.5,
                 f"W={widest}: {100 * wide:.1f}% vs ensemble of {k} networks of width {member}: {100 * ens:.1f}% "
                 f"({gap:+.1f} points; W/w_c* = {widest / sizes[widest]:.0f} members would match its width)",
                 {"wide": wide, "ensemble": ens, "members": k, "member_width": member, "gap_points": gap})


def residual_noise(summary: Sequence[Mapping[str, Any]], width: int, chunk: int) -> float | None:
    """1 - test R^2 of `chunk`-neuron chunks of the width-`width` network: the variance left as noise."""
    rows = _rows(summary, metric="reconstruction_r2", split="test", width=width, chunk_size=chunk)
    return 1.0 - float(rows[0]["mean"]) if rows else None


@dataclass(frozen=True)
class PublishedValue:
    """A number the paper published, with where it comes from."""

    quantity: str
    value: str
    source: str


# Doimo, Glielmo, Goldt, Laio (NeurIPS 2022), WRN-28-8 on CIFAR-10 (last hidden layer W = 512): the numbers this
# tool's results are compared with. R^2 and the residual correlation are read off the paper's Fig. 4 (its
# R^2 / mean-correlation panel), the constant c from the authors' plotting script.
PAPER = "Doimo et al. 2022 (NeurIPS), WRN-28-8 on CIFAR-10, W = 512"
PAPER_VALUES = (
    PublishedValue("R^2 at 16 / 32 / 64 neurons", "0.54 / 0.87 / 0.99", "the paper, Sec. 4 and Fig. 4 (R^2 panel)"),
    PublishedValue("clone size w_c*", "~64 (DenseNet-40: ~88)", "the paper, Sec. 4 (where R^2 reaches ~0.99)"),
    PublishedValue("residual correlation, the paper's definition", "0.06 at the smallest chunks -> 0.004 at w_c* and above",
                   "the paper, Fig. 4 (mean-correlation panel); definition: the authors' analysis_repr.py"),
    PublishedValue("excess-error constant c in c w^-1/2", "0.12",
                   "the guide line of the authors' plot_results.py (github.com/diegodoimo/redundant_representation)"),
)
PAPER_R2 = {16: 0.54, 32: 0.87, 64: 0.99}
