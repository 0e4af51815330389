"""The summary of a clones table: per chunk size, per network (clone size, number of clones, excess error,
collapse diagnostics and the regime) and across networks (growth of the number of clones with the width).

`summarize_clones` builds clones-summary.parquet from the per-chunk rows; `networks_from_summary`
reads the per-network facts back from it, so a fresh measurement and a skipped one print the same.
Every fitted number carries a `status`: "ok", or what makes it undetermined.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mitosis_cli.analysis.clone_size import Summary, clone_size, fit_clone_growth, fit_excess_error, summarize
from mitosis_cli.analysis.collapse import REGIME_RULE, Collapse, NetworkFacts, regime
from mitosis_cli.io.activations import network_labels
from mitosis_cli.io.clone_tables import SUMMARY_SCHEMA, summary_table
from mitosis_cli.io.tables import read_table

NETWORK_KEYS = ("source", "arch", "dataset", "width", "seed", "epoch")
GROWTH_RULE = "least-squares hinge fit n_clones = max(1, 1 + slope (W - critical_width)) over all files"
EXCESS_RULE = "least squares of chunk_error - error_inf = c * w_c^-1/2 over sizes >= clone_size"
RESIDUAL_RULE = "1 - mean R^2 of the first chunk size at or above the clone size (a whole clone)"
COLLAPSE_RULES = {
    "top_share": "share of the feature variance in the top C-1 principal directions",
    "participation_ratio": "participation ratio (sum lambda)^2 / sum lambda^2 of the covariance: effective dimension",
    "nc1": "NC1 = tr(Sigma_W Sigma_B^+) / C (Papyan et al. 2020): within- over between-class variability",
}
OK = "ok"


@dataclass(frozen=True)
class MeasuredNetwork:
    """What `summarize_clones` needs of one measured network beyond its rows."""

    identity: Mapping[str, Any]  # NETWORK_KEYS -> value
    main: str  # the split the regression metrics were measured on (test when present)
    sizes: tuple[int, ...]
    collapse: Mapping[str, Collapse] = field(default_factory=dict)  # split -> diagnostics
    skipped: tuple[str, ...] = ()  # metrics not measured (e.g. no trained head in the file)


@dataclass(frozen=True)
class NetworkClones:
    """The clone facts of one network, as the summary table holds them."""

    source: str
    width: int
    clone_size: float
    clone_size_lo: float
    clone_size_hi: float
    n_clones: float
    arch: str = ""
    dataset: str = ""
    seed: int | None = None
    epoch: int | None = None
    label: str = ""  # what the network is, e.g. "mlp-2-batchnorm w512 s0 e100" (io.activations.network_labels)
    clone_size_status: str | None = None  # "ok" or why it is undetermined; None in a table without the status column
    r2: dict[int, float] = field(default_factory=dict)  # chunk size -> mean R^2 on the main split
    excess_error_c: float | None = None
    excess_error_status: str | None = None
    residual_at_clone_size: float | None = None
    regime: str | None = None
    collapse: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> top_share, participation_ratio, nc1
    skipped_metrics: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Columns:
    """The summary's columns, filled row by row (missing keys are null)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in SUMMARY_SCHEMA.names}

    def add(self, row: Mapping[str, Any]) -> None:
        for key, column in self.cols.items():
            column.append(row.get(key))


def _residual_at_clone_size(sizes: Sequence[int], stats: Sequence[Summary | None], value: float) -> tuple[int, float] | None:
    """(size, 1 - mean R^2) of the first grid size at or above the clone size."""
    for size, st in sorted(zip(sizes, stats, strict=True)):
        if size >= value * (1 - 1e-9) and st is not None and np.isfinite(st.mean):
            return size, 1.0 - st.mean
    return None


def summarize_clones(clones: pa.Table, networks: Sequence[MeasuredNetwork], r2_threshold: float,
                     error_inf: float | None, error_inf_source: str = "") -> pa.Table:
    """The clones-summary table of a clones table (see io/clone_tables for its columns).

    Per (source, split, metric, chunk size): mean, std, sem and n over repeats. Per source: the clone
    size (`analysis.clone_size.clone_size` on the main split's mean R^2), the number of clones W / w_c*
    with the interval from the clone size's, 1 - R^2 at the clone size, the collapse diagnostics of each
    split, the regime (`analysis.collapse.regime`), and with `error_inf` the excess-error constant c
    (`fit_excess_error`). Across sources with two or more widths: the critical width and slope of the
    growth of the number of clones (`fit_clone_growth`), in rows with source "all".
    """
    out = _Columns()
    keys = clones.select(["source", "split", "metric", "chunk_size"]).to_pylist()
    values = np.asarray(clones["value"].to_numpy(zero_copy_only=False), dtype=np.float64)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault((key["source"], key["split"], key["metric"], key["chunk_size"]), []).append(i)
    identity = {str(net.identity["source"]): net.identity for net in networks}
    stats = {}
    for (source, split, metric, size), rows in groups.items():
        st = stats[(source, split, metric, size)] = summarize(values[rows])
        out.add({**identity[source], "split": split, "metric": metric, "chunk_size": size, "mean": st.mean, "std": st.std,
                 "sem": st.sem, "n": st.n})

    facts: list[NetworkFacts] = []
    regime_rows: list[dict[str, Any]] = []
    n_clones = []
    for net in networks:
        source, width = str(net.identity["source"]), int(net.identity["width"])
        r2 = [stats.get((source, net.main, "reconstruction_r2", s)) for s in net.sizes]
        mean = np.array([st.mean if st else np.nan for st in r2])
        sem = np.array([st.sem if st else np.nan for st in r2])
        cs = clone_size(np.array(net.sizes), mean, sem, r2_threshold)
        repeats = r2[0].n if r2 and r2[0] else 0
        base = {**net.identity, "split": net.main}
        out.add({**base, "metric": "clone_size", "mean": cs.value, "n": repeats, "lo": cs.lo, "hi": cs.hi, "rule": cs.rule,
                 "status": cs.status})
        out.add({**base, "metric": "n_clones", "mean": width / cs.value, "n": repeats, "lo": width / cs.hi,
                 "hi": width / cs.lo, "rule": "W / clone_size; interval from the clone-size interval", "status": cs.status})
        n_clones.append(width / cs.value)
        residual = _residual_at_clone_size(net.sizes, r2, cs.value)
        if residual is not None:
            out.add({**base, "metric": "residual_at_clone_size", "chunk_size": residual[0], "mean": residual[1],
                     "n": repeats, "rule": RESIDUAL_RULE, "status": cs.status})
        for split, diag in net.collapse.items():
            for metric, rule in COLLAPSE_RULES.items():
                value = getattr(diag, metric)
                out.add({**net.identity, "split": split, "metric": metric, "mean": value, "n": diag.classes,
                         "rule": f"{rule} (C = {diag.classes})", "status": OK if np.isfinite(value) else "undetermined"})
        main_collapse = net.collapse.get(net.main)
        if main_collapse is not None and residual is not None:
            facts.append(NetworkFacts(width, cs.value, residual[1], main_collapse.top_share, main_collapse.classes,
                                      f"{net.identity['arch']}|{net.identity['dataset']}"))
            regime_rows.append({**base, "metric": "regime", "n": 1, "rule": REGIME_RULE})
        if net.skipped:
            out.add({**base, "metric": "skipped_metrics", "n": len(net.skipped),
                     "status": ", ".join(net.skipped) + ": the file has no trained head"})
        _excess_rows(out, net, stats, error_inf, error_inf_source, cs.value)
    for row, fact in zip(regime_rows, facts, strict=True):
        out.add({**row, "status": regime(fact, facts)})

    widths = np.array([net.identity["width"] for net in networks], dtype=np.float64)
    if np.unique(widths).size >= 2:
        fit = fit_clone_growth(widths, np.array(n_clones))

        def label(key: str) -> str:
            return ",".join(sorted({str(net.identity[key]) for net in networks}))

        for metric, value in (("critical_width", fit.critical_width), ("clones_per_width_slope", fit.slope)):
            out.add({"source": "all", "arch": label("arch"), "dataset": label("dataset"), "split": networks[0].main,
                     "metric": metric, "mean": value, "n": len(networks), "rule": GROWTH_RULE, "status": fit.status})
    return summary_table(out.cols)


def error_inf_source(error_inf: float | None, ensemble: str | os.PathLike[str] | None) -> str:
    """Where error_inf came from, for the summary's status: given, or the members of the ensemble table's row."""
    if error_inf is None:
        return ""
    if ensemble is None:
        return "given (--error-inf)"
    table, _ = read_table(ensemble, "ensemble", ("kind", "split"))
    members = [r.get("members") for r in table.to_pylist() if r["kind"] == "error-inf" and r["split"] == "test"]
    members = [m for m in members if m is not None]
    if members and max(members) <= 1:
        return f"from one member only ({ensemble}): the error of one network, not of a large ensemble"
    return f"ensemble of {max(members)} networks ({ensemble})" if members else f"from {ensemble}"


def _excess_rows(out: _Columns, net: MeasuredNetwork, stats: Mapping[tuple[Any, ...], Summary], error_inf: float | None,
                 error_inf_source: str, clone: float) -> None:
    """error_inf, the excess-error constant c and the chunks' excess error of one network (with error_inf)."""
    if error_inf is None:
        return
    source = str(net.identity["source"])
    test = {**net.identity, "split": "test"}
    out.add({**test, "metric": "error_inf", "mean": error_inf, "n": 1, "status": error_inf_source or "given"})
    errors = [stats.get((source, "test", "chunk_error", s)) for s in net.sizes]
    if not all(errors):
        out.add({**test, "metric": "excess_error_c", "n": 0, "rule": EXCESS_RULE,
                 "status": "undetermined: no chunk test errors (no test split or no trained head)"})
        return
    mean_err = np.array([st.mean for st in errors if st is not None])
    c = fit_excess_error(np.array(net.sizes), mean_err, error_inf, clone)
    used = int(sum(s >= clone for s in net.sizes))
    status = OK if np.isfinite(c) else "undetermined: no chunk size at or above the clone size"
    if np.isfinite(c) and error_inf_source.startswith("from one member"):
        status = "error_inf from one member only: c measures the distance to one network, not to a large ensemble"
    out.add({**test, "metric": "excess_error_c", "mean": c, "n": used, "rule": EXCESS_RULE, "status": status})
    for s, st in zip(net.sizes, errors, strict=True):
        if st is not None:
            out.add({**test, "metric": "chunk_excess_error", "chunk_size": s, "mean": st.mean - error_inf, "std": st.std,
                     "sem": st.sem, "n": st.n})


def skipped_notes(networks: Sequence[NetworkClones]) -> list[str]:
    """One line per network whose file lacked what some metrics need."""
    return [f"{net.label}: no trained head in {net.source}: {', '.join(net.skipped_metrics)} not measured"
            for net in networks if net.skipped_metrics]


def network_order(identity: Mapping[str, Any]) -> tuple[Any, ...]:
    """How tables and printouts list networks: by data set, architecture, width, seed, epoch (then file), never by file
    name alone. `identity` maps NETWORK_KEYS to values, as a summary row or `MeasuredNetwork.identity` holds them."""
    def number(key: str) -> int:
        value = identity.get(key)
        return -1 if value is None or value != value else int(value)  # unknown (None, or NaN read back) first

    return (str(identity.get("dataset") or ""), str(identity.get("arch") or ""), int(identity["width"]), number("seed"),
            number("epoch"), str(identity.get("source") or ""))


def networks_from_summary(summary: pa.Table) -> tuple[list[NetworkClones], dict[str, Any]]:
    """Per-network clone facts (in `network_order`, labelled by what each network is: `io.activations.network_labels`)
    and the across-network growth fit (with its ``growth_status`` when the table records one), read back from a
    clones-summary table."""
    facts: dict[str, dict[str, Any]] = {}
    growth: dict[str, Any] = {}
    for row in summary.to_pylist():
        if row["source"] == "all":
            growth[row["metric"]] = row["mean"]
            if row.get("status"):  # tables written before the status column have none
                growth.setdefault("growth_status", row["status"])
            continue
        fact = facts.setdefault(row["source"], {"r2": {}, "collapse": {}, **{key: row.get(key) for key in NETWORK_KEYS}})
        metric, status = row["metric"], row.get("status")
        if metric == "clone_size":
            fact.update(clone_size=row["mean"], clone_size_lo=row["lo"], clone_size_hi=row["hi"], clone_size_status=status)
        elif metric == "n_clones":
            fact["n_clones"] = row["mean"]
        elif metric == "excess_error_c":
            fact.update(excess_error_c=row["mean"], excess_error_status=status)
        elif metric == "residual_at_clone_size":
            fact["residual_at_clone_size"] = row["mean"]
        elif metric == "regime":
            fact["regime"] = status
        elif metric in COLLAPSE_RULES:
            fact["collapse"].setdefault(row["split"], {})[metric] = row["mean"]
        elif metric == "skipped_metrics" and status:
            fact["skipped_metrics"] = status.split(": ")[0].split(", ")
        elif metric == "reconstruction_r2" and row["split"] in ("test", "train") and row["chunk_size"] is not None:
            fact["r2"][row["chunk_size"]] = row["mean"]
    order = sorted(facts.values(), key=network_order)
    networks = [NetworkClones(**{**fact, "label": label}) for fact, label in zip(order, network_labels(order), strict=True)]
    return networks, growth
