"""`mitosis clones`: measure how the last hidden layer splits into clones; write clones(.summary).parquet.

Per activation file, for chunks of random neurons of each size: the trained head restricted to the
chunk (accuracy, error), a ridge probe fitted on the chunk (train -> test), the ridge reconstruction R^2
of the whole layer and the correlation and shape of its residuals (from streamed moments), and the
Information Imbalance between chunk and layer. Then the clone size, the number of clones and, across
files, their growth with the width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, pick_device, progress_bar, say, set_threads, stderr

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    import torch

    from mitosis_cli.io.activations import ActivationInfo

DIAGNOSTIC_REPEATS = 3  # chunks per size whose residual shape is measured (a pass over the data each)
DIAGNOSTIC_TARGETS = 128  # neurons outside the chunk whose residuals are tested
BLOCK_BYTES = 8 << 20  # float32 rows streamed from HDF5 at a time


@dataclass
class Measurements:
    """Rows of the clones table for one file, filled column by column."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in (
        "source", "arch", "dataset", "width", "seed", "epoch", "split", "metric", "chunk_size", "repeat", "value",
        "n_points", "k")})

    def add(self, base: dict[str, Any], split: str, metric: str, size: int, values: "np.ndarray",
            n_points: int | None = None, k: int | None = None) -> None:
        for repeat, value in enumerate(values.tolist()):
            if math.isnan(value):  # n/a for this chunk (e.g. no neuron left outside it)
                continue
            for key, item in base.items():
                self.columns[key].append(item)
            for key, item in (("split", split), ("metric", metric), ("chunk_size", size), ("repeat", repeat),
                              ("value", value), ("n_points", n_points), ("k", k)):
                self.columns[key].append(item)


def _read_labels(path: Path, split: str) -> "np.ndarray":
    from mitosis_cli.errors import InputError
    from mitosis_cli.io.activations import open_activations

    with open_activations(path) as (h5, info):
        labels = h5[f"{split}/labels"][...]
        if labels.min() < 0 or labels.max() >= info.num_classes:
            raise InputError(f"{path}: /{split}/labels outside [0, {info.num_classes})")
        return labels.astype("int64")


def _blocks(path: Path, split: str, width: int) -> "Iterator[tuple[np.ndarray, np.ndarray, int]]":
    """(features, labels, first row) blocks of a split, ~BLOCK_BYTES of features each."""
    from mitosis_cli.io.activations import iter_feature_blocks

    labels = _read_labels(path, split)
    rows = max(64, BLOCK_BYTES // (4 * width))
    start = 0
    for block in iter_feature_blocks(path, split, rows=rows):
        yield block, labels[start : start + len(block)], start
        start += len(block)


@dataclass(frozen=True)
class Settings:
    sizes: list[int] | None
    repeats: int
    acc_repeats: int
    seed: int
    rescale: bool
    r2_threshold: float
    ii_points: int
    ii_k: int
    error_inf: float | None


def _information_imbalance(x_sub: "np.ndarray", chunks: list["np.ndarray"], k: int, device: "torch.device") -> "np.ndarray":
    from mitosis_cli.analysis import information_imbalance as ii

    return ii.chunk_information_imbalances(x_sub, chunks, k, device=str(device))


def _measure_file(path: Path, info: "ActivationInfo", cfg: Settings, device: "torch.device",
                  advance: Any) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """All per-chunk measurements of one file; returns the clones-table columns and per-file facts."""
    import numpy as np
    import torch

    from mitosis_cli.analysis import accuracy, chunks as chunking, reconstruction
    from mitosis_cli.io.activations import read_head

    width, classes = info.width, info.num_classes
    sizes = cfg.sizes or chunking.default_sizes(width)
    weight, bias = read_head(path)
    draws = {s: chunking.draw_chunks(width, s, max(cfg.repeats, cfg.acc_repeats), cfg.seed) for s in sizes}
    acc_chunks = {s: d[: cfg.acc_repeats] for s, d in draws.items()}
    reg_chunks = {s: d[: cfg.repeats] for s, d in draws.items()}
    main = "test" if "test" in info.splits else "train"
    out = Measurements()
    base = {"source": str(path), "arch": info.arch, "dataset": info.dataset, "width": width, "seed": info.seed,
            "epoch": info.epoch}

    scalings = [False, True] if cfg.rescale else [False]
    readouts = {(s, rescaled): tuple(t.to(device) for t in accuracy.head_readouts(weight, bias, acc_chunks[s], rescaled))
                for s in sizes for rescaled in scalings}
    moments: dict[str, reconstruction.Moments] = {}
    ii_rows: np.ndarray | None = None
    x_ii: np.ndarray | None = None
    n_main = info.splits[main]
    if cfg.ii_points > 0 and cfg.repeats > 0:
        n_ii = min(cfg.ii_points, n_main)
        ii_rows = np.sort(np.random.default_rng([cfg.seed, n_main]).choice(n_main, n_ii, replace=False))
        x_ii = np.empty((n_ii, width), np.float32)
    for split in [s for s in ("train", "test") if s in info.splits]:
        acc = reconstruction.MomentAccumulator(width + classes, device)
        correct = {key: np.zeros(cfg.acc_repeats, np.int64) for key in readouts}
        for block, labels, start in _blocks(path, split, width):
            x = torch.from_numpy(block).to(device)
            acc.update(torch.cat([x, accuracy.one_hot(labels, classes).to(device, torch.float32)], dim=1))
            for (s, rescaled), (coef, intercept) in readouts.items():
                correct[(s, rescaled)] += accuracy.count_correct(x, labels, acc_chunks[s], coef, intercept)
            if split == main and ii_rows is not None and x_ii is not None:
                inside = (ii_rows >= start) & (ii_rows < start + len(block))
                x_ii[inside] = block[ii_rows[inside] - start]
        moments[split] = acc.result()
        for (s, rescaled), count in correct.items():
            frac = count / info.splits[split]
            suffix = "_rescaled" if rescaled else ""
            out.add(base, split, f"chunk_accuracy{suffix}", s, frac)
            out.add(base, split, f"chunk_error{suffix}", s, 1.0 - frac)
        advance(f"{split}: moments and chunk accuracy")

    layer = moments[main].leading(width)
    fit = moments["train"].leading(width) if main == "test" and "train" in moments else None
    for s in sizes:
        scores = reconstruction.reconstruction_scores(layer, reg_chunks[s], fit=fit)
        out.add(base, main, "reconstruction_r2", s, scores.r2)
        out.add(base, main, "residual_abs_corr", s, scores.residual_abs_corr)
        out.add(base, main, "residual_frob_corr", s, scores.residual_frob_corr)
        if scores.r2_out_of_sample is not None:
            out.add(base, "train->test", "reconstruction_r2", s, scores.r2_out_of_sample)
    advance("reconstruction R^2 and residual correlations")

    # second pass over the main split: probe accuracy (fitted on train) and the residuals' shape
    probes = {s: accuracy.probe_readouts(moments["train"], width, acc_chunks[s]) for s in sizes} if fit is not None else {}
    diag_chunks = [(s, r, c) for s in sizes for r, c in enumerate(reg_chunks[s][:DIAGNOSTIC_REPEATS]) if s < width - 1]
    shape = reconstruction.ResidualShape(
        layer, [c for _, _, c in diag_chunks],
        [chunking.sample_outside(width, c, DIAGNOSTIC_TARGETS, cfg.seed + r) for _, r, c in diag_chunks])
    probe_correct = {s: np.zeros(cfg.acc_repeats, np.int64) for s in probes}
    for block, labels, _ in _blocks(path, main, width):
        x = torch.from_numpy(block).to(device)
        shape.update(x)
        for s, (coef, intercept) in probes.items():
            probe_correct[s] += accuracy.count_correct(x, labels, acc_chunks[s], coef, intercept)
    for s, count in probe_correct.items():
        frac = count / n_main
        out.add(base, "train->test", "probe_accuracy", s, frac)
        out.add(base, "train->test", "probe_error", s, 1.0 - frac)
    diag = shape.result()
    for name in ("abs_skew", "abs_excess_kurtosis", "abs_sq_corr"):
        for s in sizes:
            picked = [i for i, (size, _, _) in enumerate(diag_chunks) if size == s]
            out.add(base, main, f"residual_{name}", s, diag[name][picked])
    advance("probe accuracy and residual shape")

    if x_ii is not None:
        for s in sizes:
            deltas = _information_imbalance(x_ii, list(reg_chunks[s]), cfg.ii_k, device)
            out.add(base, main, "ii_chunk_to_full", s, deltas[:, 0], n_points=len(x_ii), k=cfg.ii_k)
            out.add(base, main, "ii_full_to_chunk", s, deltas[:, 1], n_points=len(x_ii), k=cfg.ii_k)
    advance("information imbalance")
    return out.columns, {"main": main, "sizes": sizes, **base}


def _summarize(clone_cols: dict[str, list[Any]], files: list[dict[str, Any]], cfg: Settings) -> tuple[dict[str, list[Any]], list[dict[str, Any]], dict[str, float]]:
    """The summary table's columns, per-file clone facts and the across-file growth fit."""
    import numpy as np
    import pyarrow as pa

    from mitosis_cli.analysis.clone_size import clone_size, fit_clone_growth, fit_excess_error, summarize

    names = ("source", "arch", "dataset", "width", "seed", "epoch", "split", "metric", "chunk_size",
             "mean", "std", "sem", "n", "lo", "hi", "rule")
    cols: dict[str, list[Any]] = {k: [] for k in names}

    def add(row: dict[str, Any]) -> None:
        for key in names:
            cols[key].append(row.get(key))

    table = pa.table(clone_cols)
    keys = table.select(["source", "split", "metric", "chunk_size"]).to_pylist()
    values = np.asarray(table["value"].to_numpy(zero_copy_only=False), dtype=np.float64)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault((key["source"], key["split"], key["metric"], key["chunk_size"]), []).append(i)
    by_file = {f["source"]: f for f in files}
    stats: dict[tuple[Any, ...], Any] = {}
    for (source, split, metric, size), rows in groups.items():
        st = summarize(values[rows])
        stats[(source, split, metric, size)] = st
        f = by_file[source]
        add({**{k: f[k] for k in ("source", "arch", "dataset", "width", "seed", "epoch")}, "split": split, "metric": metric,
             "chunk_size": size, "mean": st.mean, "std": st.std, "sem": st.sem, "n": st.n})

    facts = []
    for f in files:
        base = {k: f[k] for k in ("source", "arch", "dataset", "width", "seed", "epoch")}
        main, sizes = f["main"], f["sizes"]
        r2 = [stats.get((f["source"], main, "reconstruction_r2", s)) for s in sizes]
        mean = np.array([st.mean if st else np.nan for st in r2])
        sem = np.array([st.sem if st else np.nan for st in r2])
        cs = clone_size(np.array(sizes), mean, sem, cfg.r2_threshold)
        width = f["width"]
        add({**base, "split": main, "metric": "clone_size", "mean": cs.value, "n": r2[0].n if r2 and r2[0] else 0,
             "lo": cs.lo, "hi": cs.hi, "rule": cs.rule})
        add({**base, "split": main, "metric": "n_clones", "mean": width / cs.value, "n": r2[0].n if r2 and r2[0] else 0,
             "lo": width / cs.hi, "hi": width / cs.lo, "rule": "W / clone_size; interval from the clone-size interval"})
        fact = {"source": f["source"], "width": width, "clone_size": cs.value, "clone_size_lo": cs.lo,
                "clone_size_hi": cs.hi, "n_clones": width / cs.value,
                "r2": {s: (st.mean if st else None) for s, st in zip(sizes, r2)}}
        if cfg.error_inf is not None:
            errors = [stats.get((f["source"], "test", "chunk_error", s)) for s in sizes]
            if all(errors):
                mean_err = np.array([st.mean for st in errors])
                c = fit_excess_error(np.array(sizes), mean_err, cfg.error_inf, cs.value)
                add({**base, "split": "test", "metric": "error_inf", "mean": cfg.error_inf, "n": 1})
                add({**base, "split": "test", "metric": "excess_error_c", "mean": c,
                     "n": int(sum(s >= cs.value for s in sizes)),
                     "rule": "least squares of chunk_error - error_inf = c * w_c^-1/2 over sizes >= clone_size"})
                for s, st in zip(sizes, errors):
                    add({**base, "split": "test", "metric": "chunk_excess_error", "chunk_size": s,
                         "mean": st.mean - cfg.error_inf, "std": st.std, "sem": st.sem, "n": st.n})
                fact["excess_error_c"] = c
        facts.append(fact)

    growth: dict[str, float] = {}
    widths = np.array([f["width"] for f in facts], dtype=np.float64)
    if np.unique(widths).size >= 2:
        fit = fit_clone_growth(widths, np.array([f["n_clones"] for f in facts]))
        growth = {"critical_width": fit.critical_width, "clones_per_width_slope": fit.slope}
        label = lambda key: ",".join(sorted({str(f[key]) for f in files}))  # noqa: E731
        rule = "least-squares hinge fit n_clones = max(1, 1 + slope (W - critical_width)) over all files"
        for metric, value in growth.items():
            add({"source": "all", "arch": label("arch"), "dataset": label("dataset"), "split": files[0]["main"],
                 "metric": metric, "mean": value, "n": len(facts), "rule": rule})
    return cols, facts, growth


def _show(facts: list[dict[str, Any]], growth: dict[str, float]) -> None:
    from rich.table import Table

    table = Table(title="mitosis clones", title_justify="left")
    for name in ("file", "W", "clone size", "interval", "clones", "R^2 by chunk size"):
        table.add_column(name, justify="left" if name in ("file", "R^2 by chunk size") else "right")
    for f in facts:
        sizes = sorted(s for s, v in f["r2"].items() if v is not None)
        near = [s for s in sizes if f["clone_size"] / 4 <= s <= 2 * f["clone_size"]] or sizes[-3:]
        r2 = "  ".join(f"{s}: {f['r2'][s]:.3f}" for s in near)
        table.add_row(Path(f["source"]).name, str(f["width"]), f"{f['clone_size']:.1f}",
                      f"[{f['clone_size_lo']:.1f}, {f['clone_size_hi']:.1f}]", f"{f['n_clones']:.2f}", r2)
    stderr.print(table)
    if growth:
        stderr.print(f"clones grow above a critical width of {growth['critical_width']:.0f} neurons, "
                     f"{growth['clones_per_width_slope']:.4g} clones per neuron of width")


def _facts_from_summary(path: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-file clone facts from an existing summary table (for the skip path's messages and JSON)."""
    from mitosis_cli.io.clone_tables import read_clones_summary

    table, _ = read_clones_summary(path)
    rows = table.to_pylist()
    facts: dict[str, dict[str, Any]] = {}
    growth: dict[str, float] = {}
    for row in rows:
        if row["source"] == "all":
            growth[row["metric"]] = row["mean"]
            continue
        fact = facts.setdefault(row["source"], {"source": row["source"], "width": row["width"], "r2": {}})
        if row["metric"] == "clone_size":
            fact.update(clone_size=row["mean"], clone_size_lo=row["lo"], clone_size_hi=row["hi"])
        elif row["metric"] == "n_clones":
            fact["n_clones"] = row["mean"]
        elif row["metric"] == "excess_error_c":
            fact["excess_error_c"] = row["mean"]
        elif row["metric"] == "reconstruction_r2" and row["split"] in ("test", "train") and row["chunk_size"] is not None:
            fact["r2"][row["chunk_size"]] = row["mean"]
    return list(facts.values()), growth


def _return_freed_buffers_to_os() -> None:
    """Serve allocations of 1 MiB and more with mmap (glibc), so freed blocks leave the process at once.

    glibc otherwise raises its mmap threshold after the first large free and keeps later freed
    row blocks and (s x W) solves in the heap: measured +110 MiB of peak RSS at N=10,000, W=2,048.
    No effect (and no error) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _unchanged(folder: Path, inputs: list[dict[str, str]], opts: dict[str, Any]) -> bool:
    from mitosis_cli.errors import InputError
    from mitosis_cli.io.clone_tables import read_clones, read_clones_summary

    try:
        metas = [read_clones(folder / "clones.parquet")[1], read_clones_summary(folder / "clones-summary.parquet")[1]]
    except InputError:
        return False
    return all(m.get("inputs") == inputs and m.get("options") == opts for m in metas)


def clones(
    inputs: Annotated[list[Path], typer.Argument(help="Activation files (.h5) from `mitosis extract`.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for clones.parquet and clones-summary.parquet (default: beside the first input).")] = None,
    sizes: Annotated[Optional[str], typer.Option("--sizes", help="Chunk sizes, e.g. 1,2,4 or 8-256 (powers of two in the range); default: powers of two up to W, and W.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Random chunks per size for R^2, residuals and Information Imbalance.")] = 40,
    acc_repeats: Annotated[int, typer.Option("--acc-repeats", min=1, help="Random chunks per size for chunk and probe accuracy.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the chunk draws and subsamples.")] = 0,
    rescale: Annotated[bool, typer.Option("--rescale", help="Also score the restricted head with its weights times W / chunk size.")] = False,
    r2_threshold: Annotated[float, typer.Option("--r2-threshold", min=0.0, max=1.0, help="Mean R^2 that defines the clone size.")] = 0.99,
    ii_points: Annotated[int, typer.Option("--ii-points", min=0, help="Rows (seeded subsample) for the Information Imbalance; 0 skips it.")] = 2000,
    ii_k: Annotated[int, typer.Option("--ii-k", min=1, help="Nearest neighbours for the Information Imbalance.")] = 1,
    error_inf: Annotated[Optional[float], typer.Option("--error-inf", help="Test error of a large ensemble, for the excess error fit.")] = None,
    ensemble: Annotated[Optional[Path], typer.Option("--ensemble", help="ensemble.parquet holding error_inf (instead of --error-inf).")] = None,
    force: options.Force = False,
    device: options.Device = "auto",
    threads: options.Threads = None,
    quiet: options.Quiet = False,
    json_out: options.Json = False,
) -> None:
    """Measure the clones of the last hidden layer: chunk accuracy, probe, R^2, residual noise, Information Imbalance.

    Example: mitosis clones runs/w*/acts.h5 -o results/ --error-inf 0.043
    """
    from mitosis_cli.analysis.chunks import parse_sizes
    from mitosis_cli.errors import InputError
    from mitosis_cli.io.activations import read_info
    from mitosis_cli.io.clone_tables import clones_table, summary_table, write_clone_tables
    from mitosis_cli.io.ensemble_tables import read_error_inf
    from mitosis_cli.io.tables import file_sha256, provenance

    if error_inf is not None and ensemble is not None:
        raise InputError("give --error-inf or --ensemble, not both")
    try:
        size_list = parse_sizes(sizes) if sizes is not None else None
    except ValueError as err:
        raise InputError(f"--sizes {sizes!r}: {err}") from None
    infos = [read_info(p) for p in inputs]
    for info in infos:
        too_big = [s for s in size_list or [] if s > info.width]
        if too_big:
            raise InputError(f"{info.path}: chunk size {too_big[0]} is larger than the layer width W={info.width}")
    if error_inf is None and ensemble is not None:
        error_inf = read_error_inf(ensemble)
    cfg = Settings(size_list, repeats, acc_repeats, seed, rescale, r2_threshold, ii_points, ii_k, error_inf)
    opts = {"sizes": size_list, "repeats": repeats, "acc_repeats": acc_repeats, "seed": seed, "rescale": rescale,
            "r2_threshold": r2_threshold, "ii_points": ii_points, "ii_k": ii_k, "error_inf": error_inf,
            "ridge_alpha": 1e-8, "diagnostics": [DIAGNOSTIC_REPEATS, DIAGNOSTIC_TARGETS]}
    folder = out if out is not None else inputs[0].parent
    sources = [*inputs, *([ensemble] if ensemble is not None else [])]
    hashes = [{"path": str(p), "sha256": file_sha256(p)} for p in sources]
    targets = [folder / "clones.parquet", folder / "clones-summary.parquet"]
    if not force and _unchanged(folder, hashes, opts):
        say(f"{folder}: clones tables already measured from these inputs with these options; skipped (--force to redo)", quiet)
        facts, growth = _facts_from_summary(targets[1])
        if not quiet:
            _show(facts, growth)
        if json_out:
            emit_json({"skipped": True, "outputs": [str(t) for t in targets], "files": facts, **growth})
        return

    set_threads(threads)
    _return_freed_buffers_to_os()
    dev = pick_device(device)
    all_cols: dict[str, list[Any]] = {}
    files = []
    steps = 4
    with progress_bar(quiet) as bar:
        for info in infos:
            task = bar.add_task(info.path.name, total=steps, status="")

            def advance(status: str, task: Any = task) -> None:
                bar.update(task, advance=1, status=status)

            cols, file_facts = _measure_file(info.path, info, cfg, dev, advance)
            for key, column in cols.items():
                all_cols.setdefault(key, []).extend(column)
            files.append(file_facts)
    summary_cols, facts, growth = _summarize(all_cols, files, cfg)
    meta = provenance("clones", [], opts)
    meta["inputs"] = hashes  # hashed once, above
    written = write_clone_tables(folder, clones_table(all_cols), summary_table(summary_cols), meta)
    if not quiet:
        _show(facts, growth)
    say(f"wrote {written[0]} and {written[1]}", quiet)
    if json_out:
        emit_json({"skipped": False, "outputs": [str(t) for t in written], "files": facts, **growth})


def register(app: typer.Typer) -> None:
    app.command("clones")(clones)
