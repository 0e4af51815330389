"""The demo: which networks to train, the pipeline's commands for them, and the paper's claims measured.

`mitosis demo` (mitosis_cli/cli/demo.py) runs what this module plans, using the same sub-commands a
user would; this module knows nothing of processes or terminals. The claims are judged from the
tables the pipeline wrote (`clones-summary.parquet`, `ensemble.parquet`), so anyone can recompute them.

Claims of Doimo et al. (2022), and how each is judged here:

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
from pathlib import Path
from typing import Any

import numpy as np

from mitosis_cli.errors import InputError

# The regime the demo sits in (docs/results.md maps it): an MLP 784-W-W-10 whose last hidden layer
# ends in a BatchNorm without ReLU, as the paper's CNNs do, trained past zero training error with
# weight decay 5e-3.
DEMO_TRAIN = ("--dataset=mnist5k", "--arch=mlp", "--depth=2", "--ending=batchnorm", "--weight-decay=5e-3",
              "--lr=0.05", "--batch-size=128", "--schedule=cosine")


@dataclass(frozen=True)
class DemoPlan:
    """What a demo trains (widths, seeds per width) and with which options per stage."""

    name: str
    widths: tuple[int, ...]
    seeds: Mapping[int, tuple[int, ...]]  # width -> seeds
    epochs: int
    train_args: tuple[str, ...] = DEMO_TRAIN
    clones_args: tuple[str, ...] = ()
    ensemble_args: tuple[str, ...] = ()
    description: str = ""

    def points(self) -> list[tuple[int, int]]:
        """(width, seed) of every training run, narrow first."""
        return [(w, s) for w in self.widths for s in self.seeds[w]]


def _seeds(counts: Mapping[int, int]) -> dict[int, tuple[int, ...]]:
    return {w: tuple(range(n)) for w, n in counts.items()}


# Many seeds of the narrow widths: they are the members of the ensembles that the wide nets face.
PLANS: dict[str, DemoPlan] = {
    "default": DemoPlan(
        "default", (16, 32, 64, 128, 256, 512, 1024),
        _seeds({16: 16, 32: 8, 64: 4, 128: 3, 256: 2, 512: 2, 1024: 2}), epochs=100,
        description="MLPs of 7 widths (16-1024), 37 networks, on the built-in MNIST subset",
    ),
    "quick": DemoPlan(
        "quick", (16, 64, 256), _seeds({16: 4, 64: 2, 256: 2}), epochs=100,
        clones_args=("--repeats=10", "--acc-repeats=20", "--ii-points=500"), ensemble_args=("--repeats=5",),
        description="MLPs of 3 widths (16-256), 8 networks, fewer repeats",
    ),
}

# The paper's GPU setups (Doimo et al. 2022, Sec. 2): SGD momentum 0.9, lr 0.1, weight decay 5e-4,
# batch 128, 200 epochs, cosine to 1e-5, random crop + flip. Wide-ResNet-28-k: W = 64k, k = 0.25..8.
_PAPER = ("--lr=0.1", "--weight-decay=5e-4", "--batch-size=128", "--schedule=cosine", "--lr-min=1e-5",
          "--momentum=0.9", "--optimizer=sgd", "--augment")
for _data in ("cifar10", "cifar100"):
    PLANS[f"wrn28-{_data}"] = DemoPlan(
        f"wrn28-{_data}", (16, 32, 64, 128, 256, 512), _seeds({16: 10, 32: 10, 64: 10, 128: 5, 256: 5, 512: 5}),
        epochs=200, train_args=(f"--dataset={_data}", "--arch=wrn", "--depth=28", "--ending=batchnorm", *_PAPER),
        description=f"Wide-ResNet-28-k (k = 0.25-8, W = 16-512) on {_data}, the paper's hyper-parameters",
    )
    PLANS[f"densenet40-{_data}"] = DemoPlan(
        f"densenet40-{_data}", (44, 88, 176, 352, 528), _seeds({44: 10, 88: 10, 176: 5, 352: 5, 528: 5}),
        epochs=200, train_args=(f"--dataset={_data}", "--arch=densenet", "--depth=40", "--ending=batchnorm", *_PAPER),
        description=f"DenseNet-BC-40 (growth 4-48, W = 11g = 44-528) on {_data}, the paper's hyper-parameters",
    )
PRESETS = tuple(name for name in PLANS if name not in ("default", "quick"))

# Controls the paper uses to argue the mechanism, each on seed 0 of every width.
CONTROLS = {
    "no-weight-decay": ("--weight-decay=0",),
    "early-stop": (),  # trained for CONTROL_EARLY_EPOCHS only: stopped before zero training error
    "untrained": (),  # the seeded initialisation of the same architecture (extract --untrained)
}
CONTROL_EARLY_EPOCHS = 2


@dataclass(frozen=True)
class Layout:
    """Where a demo writes: OUT/runs/w<W>-s<S>/, OUT/ensemble.parquet, OUT/clones/, OUT/report/, ..."""

    out: Path

    def run_dir(self, width: int, seed: int, control: str = "") -> Path:
        base = self.out / "controls" / control / "runs" if control else self.out / "runs"
        return base / f"w{width}-s{seed}"

    def acts(self, width: int, seed: int, control: str = "") -> Path:
        return self.run_dir(width, seed, control) / ("acts-untrained.h5" if control == "untrained" else "acts.h5")

    def clones(self, control: str = "") -> Path:
        return (self.out / "controls" / control if control else self.out) / "clones"

    @property
    def ensemble(self) -> Path:
        return self.out / "ensemble.parquet"

    @property
    def report(self) -> Path:
        return self.out / "report"

    @property
    def summary(self) -> Path:
        return self.out / "demo-summary.json"


def train_commands(plan: DemoPlan, layout: Layout, extra: Sequence[str] = (), controls: bool = False) -> list[list[str]]:
    """`mitosis train` argv lists (program name excluded) of every run, controls last."""
    commands = []
    for width, seed in plan.points():
        commands.append(["train", *plan.train_args, *extra, f"--width={width}", f"--seed={seed}", f"--epochs={plan.epochs}",
                         f"--out={layout.run_dir(width, seed)}", f"--acts={layout.acts(width, seed)}", "--resume"])
    if controls:
        for control, args in CONTROLS.items():
            if control == "untrained":
                continue
            epochs = CONTROL_EARLY_EPOCHS if control == "early-stop" else plan.epochs
            for width in plan.widths:
                commands.append(["train", *plan.train_args, *extra, *args, f"--width={width}", "--seed=0",
                                 f"--epochs={epochs}", f"--out={layout.run_dir(width, 0, control)}",
                                 f"--acts={layout.acts(width, 0, control)}", "--resume"])
    return commands


def analysis_commands(plan: DemoPlan, layout: Layout, controls: bool = False) -> list[list[str]]:
    """The stages after training: ensemble, clones (seed 0 of every width), controls, report."""
    all_acts = [str(layout.acts(w, s)) for w, s in plan.points()]
    seed0 = [str(layout.acts(w, 0)) for w in plan.widths]
    commands = [
        ["ensemble", *plan.ensemble_args, f"--out={layout.ensemble}", "--", *all_acts],
        ["clones", *plan.clones_args, f"--ensemble={layout.ensemble}", f"--out={layout.clones()}", "--", *seed0],
    ]
    if controls:
        for control in CONTROLS:
            if control == "untrained":
                for w in plan.widths:
                    commands.append(["extract", str(layout.run_dir(w, 0)), "--untrained", f"--out={layout.acts(w, 0, control)}"])
            acts = [str(layout.acts(w, 0, control)) for w in plan.widths]
            commands.append(["clones", *plan.clones_args, f"--out={layout.clones(control)}", "--", *acts])
    histories = [str(layout.run_dir(w, 0) / "history.parquet") for w in plan.widths]
    commands.append(["report", f"--out={layout.report}", "--title=mitosis demo: representation mitosis in MLPs on MNIST",
                     "--", str(layout.clones()), str(layout.ensemble), *histories])
    return commands


# --------------------------------------------------------------------------------------------------
# The claims, measured


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
    claims = [_claim_constant(above, crit), _claim_linear(above, crit)]
    claims += [_claim_chunks(summary, ensemble, sizes), _claim_ensemble(ensemble, sizes)]
    return claims


def _claim_constant(above: dict[int, float], crit: float | None) -> Claim:
    statement = "the clone size stays roughly constant across widths above the critical width"
    if len(above) < 3:
        return Claim("a", statement, None, "fewer than three widths above the critical width")
    lo, hi = min(above.values()), max(above.values())
    text = ", ".join(f"W={w}: {c:.1f}" for w, c in above.items())
    return Claim("a", statement, hi / lo <= 1.5, f"w_c* = {text} (max/min {hi / lo:.2f}; critical width {crit})",
                 {"clone_size": above, "ratio": hi / lo, "critical_width": crit})


def _claim_linear(above: dict[int, float], crit: float | None) -> Claim:
    statement = "the number of clones grows linearly with the width above the critical width"
    if len(above) < 3:
        return Claim("b", statement, None, "fewer than three widths above the critical width")
    w = np.array(list(above), dtype=float)
    n = w / np.array(list(above.values()))
    slope, intercept = np.polyfit(w, n, 1)
    resid = n - (slope * w + intercept)
    r2 = 1.0 - float(resid @ resid) / float(((n - n.mean()) ** 2).sum())
    growth = (n[-1] / n[0]) / (w[-1] / w[0])  # 1 when the count is proportional to the width
    text = ", ".join(f"W={int(a)}: {b:.1f}" for a, b in zip(w, n))
    return Claim("b", statement, bool(slope > 0 and r2 >= 0.95 and growth >= 0.5),
                 f"clones {text}; slope {slope * 100:.2f} per 100 neurons, line R^2 {r2:.3f}, "
                 f"count grows {growth:.2f}x as fast as the width",
                 {"n_clones": dict(zip(map(int, w), n.tolist())), "slope": float(slope), "line_r2": r2,
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


def plan_for(name: str) -> DemoPlan:
    if name not in PLANS:
        raise InputError(f"unknown preset {name!r}", hint=f"choose one of: {', '.join(PRESETS)}")
    return PLANS[name]
