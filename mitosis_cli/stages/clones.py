"""The clones stage: how the last hidden layer splits into clones (Doimo et al. 2022).

Per network, for random chunks of neurons of each size: the trained head restricted to the chunk
(chunk accuracy and error), a ridge probe fitted on the chunk (train -> test), the ridge
reconstruction R^2 of the whole layer and the correlation and shape of its residuals (from streamed
moments), and the Information Imbalance between chunk and layer. Then the clone size, the number of
clones and, across networks, their growth with the width (`clone_summary`).

`measure_clones` works on activation files or on in-memory `Activations` and returns the tables;
`run_clones` is the command: it reads files, skips or refuses an existing output by its stamp, and
writes clones.parquet and clones-summary.parquet.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mitosis_cli.analysis import accuracy, reconstruction
from mitosis_cli.analysis import chunks as chunking
from mitosis_cli.analysis.collapse import Collapse, collapse_diagnostics
from mitosis_cli.analysis.information_imbalance import chunk_information_imbalances
from mitosis_cli.analysis.reconstruction import RIDGE_ALPHA
from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationFile, ActivationSource, network_labels
from mitosis_cli.io.clone_tables import clones_table, read_clones, read_clones_summary, write_clone_tables
from mitosis_cli.io.ensemble_tables import read_error_inf
from mitosis_cli.io.stamp import Decision, Stamp
from mitosis_cli.io.tables import input_records, provenance, table_stamp
from mitosis_cli.runtime import pick_device, return_freed_memory_to_os, set_threads
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words, paths_after_options
from mitosis_cli.stages.checks import MAX_REPEATS, check_device, check_float, check_int, check_seed, check_threads
from mitosis_cli.stages.clone_summary import (
    MeasuredNetwork,
    NetworkClones,
    error_inf_source,
    network_order,
    networks_from_summary,
    skipped_notes,
    summarize_clones,
)
from mitosis_cli.stages.transaction import OutputTransaction

DIAGNOSTIC_REPEATS = 3  # chunks per size whose residual shape is measured (in one more pass over the data)
DIAGNOSTIC_TARGETS = 128  # neurons outside the chunk whose residuals are tested
BLOCK_BYTES = 8 << 20  # float32 rows streamed at a time
II_MEMORY = 32 << 20  # working memory of the Information Imbalance's passes, which run beside the solves
CLONES_TABLE, SUMMARY_TABLE = "clones.parquet", "clones-summary.parquet"
# What the tables hold: 2 added the paper's residual correlation, collapse diagnostics, regimes and statuses,
# so tables of protocol 1 are not taken for current ones.
PROTOCOL = 2


@dataclass(frozen=True)
class CloneSettings(StageSettings):
    """Options of `mitosis clones` (the defaults are the paper's protocol).

    Attributes
    ----------
    inputs : tuple of Path
        Activation files (for `run_clones`; `measure_clones` takes its sources directly).
    out : Path or None
        Folder for the two tables (default: beside the first input).
    sizes : tuple of int or None
        Chunk sizes (default: powers of two below W, and W).
    repeats, acc_repeats : int
        Random chunks per size for R^2, residuals and Information Imbalance / for chunk and probe accuracy.
    seed : int
        Seed of the chunk draws and subsamples.
    rescale : bool
        Also score the restricted head with its weights times W / chunk size.
    r2_threshold : float
        Mean R^2 that defines the clone size.
    ii_points, ii_k : int
        Rows of the seeded subsample for the Information Imbalance (0 skips it) and its neighbour rank.
    error_inf : float or None
        Test error of a large ensemble, for the excess-error fit.
    ensemble : Path or None
        An ensemble.parquet to read error_inf from (instead of `error_inf`).
    force, device, threads
        Redo existing work; where to compute; CPU threads (None: leave torch's setting).
    """

    stage = "clones"
    inputs: tuple[Path, ...] = ()
    out: Path | None = None
    sizes: tuple[int, ...] | None = None
    repeats: int = 40
    acc_repeats: int = 100
    seed: int = 0
    rescale: bool = False
    r2_threshold: float = 0.99
    ii_points: int = 2000
    ii_k: int = 1
    error_inf: float | None = None
    ensemble: Path | None = None
    force: bool = False
    device: str = "auto"
    threads: int | None = None

    def to_argv(self) -> list[str]:
        default = CloneSettings()
        changed = [(name, getattr(self, key)) for key, name in (
            ("out", "out"), ("ensemble", "ensemble"), ("error_inf", "error-inf"), ("sizes", "sizes"), ("repeats", "repeats"),
            ("acc_repeats", "acc-repeats"), ("seed", "seed"), ("r2_threshold", "r2-threshold"), ("ii_points", "ii-points"),
            ("ii_k", "ii-k"), ("device", "device"), ("threads", "threads"),
        ) if getattr(self, key) != getattr(default, key)]
        flags = [("rescale", self.rescale or None), ("force", self.force or None)]
        return ["clones", *option_words(changed + flags), *paths_after_options(self.inputs)]

    def check(self) -> None:
        """Refuse option values no measurement can use (the chunk sizes and --ii-k against each network: `check_sources`)."""
        for size in self.sizes or ():
            check_int("--sizes", size, 1)
        check_int("--repeats", self.repeats, 1, MAX_REPEATS)
        check_int("--acc-repeats", self.acc_repeats, 1, MAX_REPEATS)
        check_seed(self.seed)
        check_float("--r2-threshold", self.r2_threshold, 0.0, 1.0)
        check_int("--ii-points", self.ii_points, 0)
        check_int("--ii-k", self.ii_k, 1)
        check_float("--error-inf", self.error_inf, 0.0, 1.0)
        check_device(self.device)
        check_threads(self.threads)

    def options(self) -> dict[str, Any]:
        """The options that determine the tables' numbers (with error_inf resolved)."""
        return {"sizes": list(self.sizes) if self.sizes else None, "repeats": self.repeats, "acc_repeats": self.acc_repeats,
                "seed": self.seed, "rescale": self.rescale, "r2_threshold": self.r2_threshold,
                "ii_points": self.ii_points, "ii_k": self.ii_k, "error_inf": self.error_inf, "ridge_alpha": RIDGE_ALPHA,
                "diagnostics": [DIAGNOSTIC_REPEATS, DIAGNOSTIC_TARGETS], "protocol": PROTOCOL}


@dataclass(frozen=True)
class CloneTables:
    """The two tables of a clones measurement (pyarrow; ``.to_pandas()`` for pandas) and their key facts."""

    clones: pa.Table
    summary: pa.Table
    networks: list[NetworkClones]
    growth: dict[str, Any]  # critical_width, clones_per_width_slope (two or more widths), growth_status

    @property
    def notes(self) -> list[str]:
        """What was not measured and why (e.g. a file without the trained head)."""
        return skipped_notes(self.networks)


@dataclass
class _Rows:
    """Rows of the clones table for one network, filled column by column."""

    identity: dict[str, Any]
    columns: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, split: str, metric: str, size: int, values: np.ndarray, n_points: int | None = None,
            k: int | None = None) -> None:
        for repeat, value in enumerate(values.tolist()):
            if math.isnan(value):  # n/a for this chunk (e.g. no neuron left outside it)
                continue
            row = {**self.identity, "split": split, "metric": metric, "chunk_size": size, "repeat": repeat,
                   "value": value, "n_points": n_points, "k": k}
            for key, item in row.items():
                self.columns.setdefault(key, []).append(item)


def _labelled_blocks(source: ActivationSource, split: str) -> Any:
    """(features, labels, first row) blocks of a split, ~BLOCK_BYTES of features each."""
    labels = source.labels(split)
    rows = max(64, BLOCK_BYTES // (4 * source.header.width))
    start = 0
    for block in source.iter_blocks(split, rows=rows):
        yield block, labels[start : start + len(block)], start
        start += len(block)


def _identity(source: ActivationSource) -> dict[str, Any]:
    """What a network is (NETWORK_KEYS), as its rows in the tables carry it."""
    h = source.header
    return {"source": source.name, "arch": h.arch, "dataset": h.dataset, "width": h.width, "seed": h.seed, "epoch": h.epoch}


def _head_readouts(source: ActivationSource, cfg: CloneSettings, chunks: dict[int, np.ndarray],
                   device: Any) -> dict[int, list[accuracy.Readout]]:
    """The trained head restricted to each chunk (with its W / s rescaling), or nothing without a head."""
    if not source.header.has_head:
        return {s: [] for s in chunks}
    weight, bias = source.head()
    readouts = {s: accuracy.head_readouts(weight, bias, c, cfg.rescale) for s, c in chunks.items()}
    return {s: [accuracy.Readout(r.coef.to(device), r.intercept.to(device), r.scales)] for s, r in readouts.items()}


def _measure_network(source: ActivationSource, cfg: CloneSettings, device: Any, on_step: OnStep,
                     task: str) -> tuple[_Rows, MeasuredNetwork]:
    """All per-chunk measurements of one network: two passes over its splits (one more for the residual shape)."""
    import torch

    header = source.header
    width, classes = header.width, header.num_classes
    sizes = list(cfg.sizes or chunking.default_sizes(width))
    draws = {s: chunking.draw_chunks(width, s, max(cfg.repeats, cfg.acc_repeats), cfg.seed) for s in sizes}
    acc_chunks = {s: d[: cfg.acc_repeats] for s, d in draws.items()}
    reg_chunks = {s: d[: cfg.repeats] for s, d in draws.items()}
    splits = [s for s in ("train", "test") if s in header.splits]  # train first: the probe is fitted on it
    main = "test" if "test" in header.splits else "train"
    identity = _identity(source)
    out = _Rows(identity)
    done = 0
    steps = len(splits) + 3  # one pass per split, then R^2, the residual shape, Information Imbalance

    def step(status: str) -> None:
        nonlocal done
        done += 1
        on_step(Progress(task, done, steps, status, unit="phase"))

    head = _head_readouts(source, cfg, acc_chunks, device)
    probes: dict[int, accuracy.Readout] = {}
    moments: dict[str, reconstruction.Moments] = {}
    ii_rows: np.ndarray | None = None
    x_ii: np.ndarray | None = None
    n_main = header.splits[main]
    if cfg.ii_points > 0 and cfg.repeats > 0:
        n_ii = min(cfg.ii_points, n_main)
        ii_rows = np.sort(np.random.default_rng([cfg.seed, n_main]).choice(n_main, n_ii, replace=False))
        x_ii = np.empty((n_ii, width), np.float32)
    for split in splits:
        acc = reconstruction.MomentAccumulator(width + classes, device)
        readouts = {s: head[s] + ([probes[s]] if split == "test" and probes else []) for s in sizes}
        correct = {s: [np.zeros((len(r.scales), cfg.acc_repeats), np.int64) for r in readouts[s]] for s in sizes}
        for block, labels, start in _labelled_blocks(source, split):
            x = torch.from_numpy(block).to(device)
            acc.update(torch.cat([x, accuracy.one_hot(labels, classes).to(device, torch.float32)], dim=1))
            for s in sizes:
                if readouts[s]:
                    for total, count in zip(correct[s], accuracy.count_correct(x, labels, acc_chunks[s], readouts[s]),
                                            strict=True):
                        total += count
            if split == main and ii_rows is not None and x_ii is not None:
                inside = (ii_rows >= start) & (ii_rows < start + len(block))
                x_ii[inside] = block[ii_rows[inside] - start]
        moments[split] = acc.result()
        rows = header.splits[split]
        for s in sizes:
            counts = iter(correct[s])
            if head[s]:
                for scaled, count in zip(("", "_rescaled"), next(counts), strict=False):
                    out.add(split, f"chunk_accuracy{scaled}", s, count / rows)
                    out.add(split, f"chunk_error{scaled}", s, 1.0 - count / rows)
            if split == "test" and probes:
                count = next(counts)[0]
                out.add("train->test", "probe_accuracy", s, count / rows)
                out.add("train->test", "probe_error", s, 1.0 - count / rows)
        if split == "train" and "test" in header.splits:
            probes = {s: accuracy.probe_readouts(moments["train"], width, acc_chunks[s]) for s in sizes}
            probes = {s: accuracy.Readout(p.coef.to(device), p.intercept.to(device)) for s, p in probes.items()}
        return_freed_memory_to_os()  # the phase's temporaries: freed, but kept by the C heap until trimmed
        step(f"{split}: moments, chunk and probe accuracy")

    del head, probes, readouts  # the readouts' (repeats x size x C) weights are done with
    # The Information Imbalance needs only its subsample: it runs in a second thread beside the solves,
    # both keeping the two cores busy where either alone leaves gaps (torch releases the GIL in its ops).
    ii_chunks = [c for s in sizes for c in reg_chunks[s]]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mitosis-ii") as background:
        ii = (background.submit(chunk_information_imbalances, x_ii, ii_chunks, cfg.ii_k, device=str(device),
                                memory_budget=II_MEMORY) if x_ii is not None else None)
        collapse = _solves_and_shape(source, cfg, moments, main, sizes, reg_chunks, out, step)
        del moments
        return_freed_memory_to_os()
        deltas = ii.result() if ii is not None else None
    if deltas is not None and x_ii is not None:  # every chunk of every size in one call: the full space's passes are shared
        start = 0
        for s in sizes:
            part = deltas[start : start + len(reg_chunks[s])]
            start += len(reg_chunks[s])
            out.add(main, "ii_chunk_to_full", s, part[:, 0], n_points=len(x_ii), k=cfg.ii_k)
            out.add(main, "ii_full_to_chunk", s, part[:, 1], n_points=len(x_ii), k=cfg.ii_k)
    step("information imbalance")
    skipped = () if header.has_head else tuple(m + suffix for m in ("chunk_accuracy", "chunk_error")
                                               for suffix in ("", "_rescaled") if suffix == "" or cfg.rescale)
    return out, MeasuredNetwork(identity, main, tuple(sizes), collapse, skipped)


def _solves_and_shape(source: ActivationSource, cfg: CloneSettings, moments: dict[str, reconstruction.Moments], main: str,
                      sizes: list[int], reg_chunks: dict[int, np.ndarray], out: _Rows,
                      step: Callable[[str], None]) -> dict[str, Collapse]:
    """Collapse diagnostics, reconstruction R^2 and residual correlations, and (one more pass) the residuals' shape."""
    import torch

    width = source.header.width
    device = moments[main].scatter.device
    collapse = {split: collapse_diagnostics(m.scatter, m.mean, m.n, width) for split, m in moments.items()}
    layer = moments[main].leading(width)
    fit = moments["train"].leading(width) if main == "test" and "train" in moments else None
    for s in sizes:
        scores = reconstruction.reconstruction_scores(layer, reg_chunks[s], fit=fit)
        out.add(main, "reconstruction_r2", s, scores.r2)
        out.add(main, "residual_abs_corr", s, scores.residual_abs_corr)
        out.add(main, "residual_frob_corr", s, scores.residual_frob_corr)
        out.add(main, "residual_abs_corr_paper", s, scores.residual_abs_corr_paper)
        if scores.r2_out_of_sample is not None:
            out.add("train->test", "reconstruction_r2", s, scores.r2_out_of_sample)
        return_freed_memory_to_os()
    step("reconstruction R^2 and residual correlations")

    # one more pass over the main split: the residuals' shape needs the residuals themselves
    diag_chunks = [(s, r, c) for s in sizes for r, c in enumerate(reg_chunks[s][:DIAGNOSTIC_REPEATS]) if s < width - 1]
    shape = reconstruction.ResidualShape(
        layer, [c for _, _, c in diag_chunks],
        [chunking.sample_outside(width, c, DIAGNOSTIC_TARGETS, cfg.seed + r) for _, r, c in diag_chunks])
    for block in source.iter_blocks(main, rows=max(64, BLOCK_BYTES // (4 * width))):
        shape.update(torch.from_numpy(block).to(device))
    diag = shape.result()
    del shape, layer, fit
    return_freed_memory_to_os()
    for name in ("abs_skew", "abs_excess_kurtosis", "abs_sq_corr"):
        for s in sizes:
            picked = [i for i, (size, _, _) in enumerate(diag_chunks) if size == s]
            out.add(main, f"residual_{name}", s, diag[name][picked])
    step("residual shape")
    return collapse


def check_sources(sources: Sequence[ActivationSource], settings: CloneSettings) -> None:
    """Refuse settings that cannot apply to these networks, before any work (one line naming the network)."""
    settings.check()
    if not sources:
        raise InputError("no activations to measure: give at least one activation file")
    for source in sources:
        too_big = [s for s in settings.sizes or () if s > source.header.width]
        if too_big:
            raise InputError(f"{source.name}: chunk size {too_big[0]} is larger than the layer width W={source.header.width}")
        splits = source.header.splits
        points = min(settings.ii_points, splits["test" if "test" in splits else "train"])
        if settings.ii_points > 0 and settings.repeats > 0 and settings.ii_k >= points:
            raise InputError(f"{source.name}: --ii-k {settings.ii_k} needs more than {settings.ii_k} points, the "
                             f"Information Imbalance subsample has {points} (--ii-points {settings.ii_points})",
                             hint="lower --ii-k, or --ii-points 0 to skip the Information Imbalance")


def measure_clones(sources: Sequence[ActivationSource], settings: CloneSettings = CloneSettings(),
                   on_step: OnStep = no_progress) -> CloneTables:
    """Measure the clones of each network and summarise them.

    Parameters
    ----------
    sources : sequence of ActivationFile or Activations
        The networks (files are streamed, never loaded whole).
    settings : CloneSettings
        The protocol; `settings.inputs`, `out`, `ensemble` and `force` are not used here.
    on_step : callable
        Receives a `Progress` after each phase of each network.

    Returns
    -------
    CloneTables
        clones (one row per chunk and metric) and clones-summary tables, and the per-network facts.
    """
    check_sources(sources, settings)
    device = pick_device(settings.device)
    columns: dict[str, list[Any]] = {}
    measured = []
    ordered = sorted(sources, key=lambda s: network_order(_identity(s)))
    labels = network_labels([_identity(s) for s in ordered])
    for source, label in zip(ordered, labels, strict=True):
        rows, network = _measure_network(source, settings, device, on_step, f"clones {label}")
        for key, column in rows.columns.items():
            columns.setdefault(key, []).extend(column)
        measured.append(network)
    clones = clones_table(columns)
    summary = summarize_clones(clones, measured, settings.r2_threshold, settings.error_inf,
                               error_inf_source(settings.error_inf, settings.ensemble))
    networks, growth = networks_from_summary(summary)
    return CloneTables(clones, summary, networks, growth)


@dataclass(frozen=True)
class CloneResult:
    """What `run_clones` did: the tables it wrote (or found current) and their key facts."""

    outputs: tuple[Path, Path]
    skipped: bool
    networks: list[NetworkClones]
    growth: dict[str, Any]

    @property
    def notes(self) -> list[str]:
        """What was not measured and why (e.g. a file without the trained head)."""
        return skipped_notes(self.networks)

    def to_json(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "outputs": [str(p) for p in self.outputs],
                "files": [n.to_json() for n in self.networks], **self.growth, "notes": self.notes}


def _table_stamp(path: Path) -> Stamp | None:
    """The stamp of one of the two tables; None when it is not a mitosis clones table (or damaged)."""
    reader = read_clones if path.name == CLONES_TABLE else read_clones_summary
    try:
        return table_stamp(reader(path)[1], "clones")
    except InputError:
        return None


def run_clones(settings: CloneSettings, on_step: OnStep = no_progress) -> CloneResult:
    """`mitosis clones`: measure the input files and write clones.parquet and clones-summary.parquet.

    The output folder is skipped when it already holds tables of the same inputs and options, and
    refused when it holds other ones (unless `settings.force`).
    """
    settings.check()
    if settings.error_inf is not None and settings.ensemble is not None:
        raise InputError("give --error-inf or --ensemble, not both")
    sources = [ActivationFile(p) for p in settings.inputs]
    check_sources(sources, settings)
    # error_inf read from the ensemble table; the recorded command keeps --ensemble, as it was given
    resolved = (settings if settings.ensemble is None
                else dataclasses.replace(settings, error_inf=read_error_inf(settings.ensemble)))
    folder = settings.out if settings.out is not None else settings.inputs[0].parent
    targets = (folder / CLONES_TABLE, folder / SUMMARY_TABLE)
    read = [*settings.inputs, *([settings.ensemble] if settings.ensemble else [])]
    tx = OutputTransaction(files=targets, inputs=tuple(read))
    inputs = input_records(read)
    wanted = Stamp.of("clones", [i["sha256"] for i in inputs], resolved.options())
    with tx.locked():
        if tx.decide(wanted, _table_stamp, settings.force) is Decision.SKIP:
            networks, growth = networks_from_summary(read_clones_summary(targets[1])[0])
            return CloneResult(targets, True, networks, growth)
        if settings.threads is not None:
            set_threads(settings.threads)
        return_freed_memory_to_os()
        tables = measure_clones(sources, resolved, on_step)
        meta = provenance("clones", inputs, resolved.options(), settings.command())
        with tx.writing():  # both tables appear together, or neither changes
            written = write_clone_tables(folder, tables.clones, tables.summary, meta)
    return CloneResult(written, False, tables.networks, tables.growth)
