"""The summary of a clones table: per chunk size, per network (clone size, number of clones, excess error)
and across networks (growth of the number of clones with the width).

`summarize_clones` builds clones-summary.parquet from the per-chunk rows; `networks_from_summary`
reads the per-network facts back from it, so a fresh measurement and a skipped one print the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mitosis_cli.analysis.clone_size import clone_size, fit_clone_growth, fit_excess_error, summarize
from mitosis_cli.io.activations import network_labels
from mitosis_cli.io.clone_tables import SUMMARY_SCHEMA, summary_table

NETWORK_KEYS = ("source", "arch", "dataset", "width", "seed", "epoch")
GROWTH_RULE = "least-squares hinge fit n_clones = max(1, 1 + slope (W - critical_width)) over all files"
EXCESS_RULE = "least squares of chunk_error - error_inf = c * w_c^-1/2 over sizes >= clone_size"


@dataclass(frozen=True)
class MeasuredNetwork:
    """What `summarize_clones` needs of one measured network: its identity, main split and chunk sizes."""

    identity: Mapping[str, Any]  # NETWORK_KEYS -> value
    main: str  # the split the regression metrics were measured on (test when present)
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class NetworkClones:
    """The clone facts of one network, as the summary table holds them."""

    source: str
    width: int
    clone_size: float
    clone_size_lo: float
    clone_size_hi: float
    n_clones: float
    r2: dict[int, float] = field(default_factory=dict)  # chunk size -> mean R^2 on the main split
    excess_error_c: float | None = None
    arch: str = ""
    dataset: str = ""
    seed: int | None = None
    epoch: int | None = None
    label: str = ""  # what the network is, e.g. "mlp-2-batchnorm w512 s0 e100" (io.activations.network_labels)
    status: str | None = None  # the clone size's validity, from the summary's status column when it has one

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize_clones(clones: pa.Table, networks: Sequence[MeasuredNetwork], r2_threshold: float,
                     error_inf: float | None) -> pa.Table:
    """The clones-summary table of a clones table (see io/clone_tables for its columns).

    Per (source, split, metric, chunk size): mean, std, sem and n over repeats. Per source: the clone
    size (`analysis.clone_size.clone_size` on the main split's mean R^2), the number of clones W / w_c*
    with the interval from the clone size's, and with `error_inf` the excess-error constant c
    (`fit_excess_error`). Across sources with two or more widths: the critical width and slope of the
    growth of the number of clones (`fit_clone_growth`), in rows with source "all".
    """
    cols: dict[str, list[Any]] = {name: [] for name in SUMMARY_SCHEMA.names}

    def add(row: Mapping[str, Any]) -> None:
        for key in cols:
            cols[key].append(row.get(key))

    keys = clones.select(["source", "split", "metric", "chunk_size"]).to_pylist()
    values = np.asarray(clones["value"].to_numpy(zero_copy_only=False), dtype=np.float64)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault((key["source"], key["split"], key["metric"], key["chunk_size"]), []).append(i)
    identity = {str(net.identity["source"]): net.identity for net in networks}
    stats = {}
    for (source, split, metric, size), rows in groups.items():
        st = stats[(source, split, metric, size)] = summarize(values[rows])
        add({**identity[source], "split": split, "metric": metric, "chunk_size": size, "mean": st.mean, "std": st.std,
             "sem": st.sem, "n": st.n})

    n_clones = []
    for net in networks:
        source, width = str(net.identity["source"]), int(net.identity["width"])
        r2 = [stats.get((source, net.main, "reconstruction_r2", s)) for s in net.sizes]
        mean = np.array([st.mean if st else np.nan for st in r2])
        sem = np.array([st.sem if st else np.nan for st in r2])
        cs = clone_size(np.array(net.sizes), mean, sem, r2_threshold)
        repeats = r2[0].n if r2 and r2[0] else 0
        add({**net.identity, "split": net.main, "metric": "clone_size", "mean": cs.value, "n": repeats, "lo": cs.lo,
             "hi": cs.hi, "rule": cs.rule})
        add({**net.identity, "split": net.main, "metric": "n_clones", "mean": width / cs.value, "n": repeats,
             "lo": width / cs.hi, "hi": width / cs.lo, "rule": "W / clone_size; interval from the clone-size interval"})
        n_clones.append(width / cs.value)
        errors = [stats.get((source, "test", "chunk_error", s)) for s in net.sizes]
        if error_inf is not None and all(errors):
            mean_err = np.array([st.mean for st in errors])
            c = fit_excess_error(np.array(net.sizes), mean_err, error_inf, cs.value)
            add({**net.identity, "split": "test", "metric": "error_inf", "mean": error_inf, "n": 1})
            add({**net.identity, "split": "test", "metric": "excess_error_c", "mean": c,
                 "n": int(sum(s >= cs.value for s in net.sizes)), "rule": EXCESS_RULE})
            for s, st in zip(net.sizes, errors, strict=True):
                add({**net.identity, "split": "test", "metric": "chunk_excess_error", "chunk_size": s,
                     "mean": st.mean - error_inf, "std": st.std, "sem": st.sem, "n": st.n})

    widths = np.array([net.identity["width"] for net in networks], dtype=np.float64)
    if np.unique(widths).size >= 2:
        fit = fit_clone_growth(widths, np.array(n_clones))

        def label(key: str) -> str:
            return ",".join(sorted({str(net.identity[key]) for net in networks}))

        for metric, value in (("critical_width", fit.critical_width), ("clones_per_width_slope", fit.slope)):
            add({"source": "all", "arch": label("arch"), "dataset": label("dataset"), "split": networks[0].main,
                 "metric": metric, "mean": value, "n": len(networks), "rule": GROWTH_RULE})
    return summary_table(cols)


def networks_from_summary(summary: pa.Table) -> tuple[list[NetworkClones], dict[str, Any]]:
    """Per-network clone facts (ordered by data set, arch, width, seed; labelled by what each network is)
    and the across-network growth fit (with its ``growth_status`` when the table records one), read back from a
    clones-summary table."""
    facts: dict[str, dict[str, Any]] = {}
    growth: dict[str, Any] = {}
    for row in summary.to_pylist():
        if row["source"] == "all":
            growth[row["metric"]] = row["mean"]
            if row.get("status"):
                growth.setdefault("growth_status", row["status"])
            continue
        fact = facts.setdefault(row["source"], {"r2": {}, **{key: row.get(key) for key in NETWORK_KEYS}})
        if row["metric"] == "clone_size":
            fact.update(clone_size=row["mean"], clone_size_lo=row["lo"], clone_size_hi=row["hi"], status=row.get("status"))
        elif row["metric"] == "n_clones":
            fact["n_clones"] = row["mean"]
        elif row["metric"] == "excess_error_c":
            fact["excess_error_c"] = row["mean"]
        elif row["metric"] == "reconstruction_r2" and row["split"] in ("test", "train") and row["chunk_size"] is not None:
            fact["r2"][row["chunk_size"]] = row["mean"]
    order = sorted(facts.values(), key=lambda f: (str(f["dataset"] or ""), str(f["arch"] or ""), f["width"], f["seed"] or 0))
    networks = [NetworkClones(**{**fact, "label": label}) for fact, label in zip(order, network_labels(order), strict=True)]
    return networks, growth
