"""`mitosis ensemble`: wide networks against deep ensembles of narrower ones, and against their own chunks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress_bar, say, stderr

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from mitosis_cli.io.activations import ActivationInfo
    from mitosis_cli.io.ensemble_tables import EnsembleRows, MemberSet

# Stream tags keep the random draws of ensembles and of chunks independent of each other and of other options.
_ENSEMBLE_STREAM, _CHUNK_STREAM = 0, 1


def _int_list(text: Optional[str], option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        from mitosis_cli.errors import InputError

        raise InputError(f"{option} {text!r}: expected comma-separated positive integers, e.g. 1,2,4,8")
    return sorted(set(values))


def _member_params(info: ActivationInfo, params_per_width: float | None) -> float | None:
    """Parameters of one member: `--params-per-width` x W when given, else counted from the training config."""
    if params_per_width is not None:
        return params_per_width * info.width
    cfg = info.config
    if not all(cfg.get(key) is not None for key in ("dataset", "arch", "width", "depth")):
        return None
    from mitosis_cli.data.registry import dataset_input_shape
    from mitosis_cli.errors import InputError
    from mitosis_cli.models.registry import DEFAULT_ENDING, ModelSpec, count_parameters

    spec = ModelSpec(cfg["arch"], int(cfg["width"]), int(cfg["depth"]), cfg.get("ending") or DEFAULT_ENDING.get(cfg["arch"], "relu"))
    try:
        return float(count_parameters(spec, dataset_input_shape(str(cfg["dataset"])), info.num_classes))
    except InputError:
        return None


def _measure(
    found: MemberSet, rows: EnsembleRows, sizes: list[int] | None, repeats: int, seed: int, combine: str,
    chunk_sizes: list[int] | None, params_per_width: float | None, quiet: bool,
) -> list[str]:
    """Fill `rows` with every kind of the table; return notes on what was skipped and why."""
    import numpy as np

    from mitosis_cli.analysis import ensembles as ens
    from mitosis_cli.io.activations import read_head, read_split

    notes: list[str] = []
    pools = found.pools()
    widest = max(pools)
    params = {w: _member_params(found.members[pool[0]].info, params_per_width) for w, pool in pools.items()}
    if any(p is None for p in params.values()):
        notes.append("same-params skipped: parameter counts unknown (no arch/width/depth/dataset in the files' config); "
                     "give --params-per-width")
    chunk_list = chunk_sizes or [2**i for i in range(widest.bit_length()) if 2**i < widest]
    with progress_bar(quiet) as bar:
        task = bar.add_task("ensemble", total=len(pools) + len(pools[widest]), status="")
        for width, pool in pools.items():
            bar.update(task, status=f"width {width}")
            pool_logits = {split: logits[pool] for split, logits in found.logits.items()}
            wanted = ens.ensemble_sizes(len(pool), sizes)
            if sizes is not None and max(sizes) > len(pool):
                notes.append(f"width {width}: pool of {len(pool)} networks; sizes above {len(pool)} skipped")
            compare: dict[str, int] = {}
            if width < widest:
                if widest % width == 0:
                    compare["same-total-width"] = widest // width
                else:
                    notes.append(f"same-total-width: width {width} does not divide the widest width {widest}; skipped")
                if params[width] is not None and params[widest] is not None:
                    compare["same-params"] = ens.same_params_members(params[widest], params[width])
            for kind, size in list(compare.items()):
                if size > len(pool):
                    notes.append(f"{kind}: width {width} needs {size} networks, the pool has {len(pool)}; skipped")
                    del compare[kind]
            for size in sorted(set(wanted) | set(compare.values())):
                rng = np.random.default_rng([seed, _ENSEMBLE_STREAM, width, size])
                for m in ens.ensemble_curve(pool_logits, found.labels, [size], repeats, rng, combine):
                    kinds = (["ensemble"] if size in wanted else []) + [k for k, s in compare.items() if s == size]
                    for kind in kinds:
                        rows.add(kind, width, m.members, m.repeat, m.split, m.values)
            for split, logits in pool_logits.items():
                for member, member_logits in zip(pool, logits):
                    values = ens.classification_metrics(ens.log_softmax(member_logits), found.labels[split])
                    rows.add("wide", width, 1, found.members[member].seed, split, values)
                if len(pool) >= 2:
                    rows.add("bias-variance", width, len(pool), 0, split, ens.bias_variance(logits, found.labels[split]))
            if width == widest and "test" in pool_logits:
                log_p = ens.combine_members(pool_logits["test"], combine)
                error = ens.classification_metrics(log_p, found.labels["test"])["error"]
                rows.add("error-inf", width, len(pool), 0, "test", {"error": error})
            bar.advance(task)
        if "test" not in found.logits:
            notes.append("error-inf not written: the inputs have no test split")
        for position, member in enumerate(pools[widest]):
            path = found.members[member].path
            bar.update(task, status=f"chunks of {path.name}")
            weight, bias = read_head(path)
            features = {split: read_split(path, split).features for split in found.splits}
            for chunk in chunk_list:
                rng = np.random.default_rng([seed, _CHUNK_STREAM, position, chunk])
                counts = ens.ensemble_sizes(widest // chunk)
                for draw in range(repeats):
                    partition = ens.random_partition(widest, chunk, rng)  # the same chunks on every split
                    for split, feats in features.items():
                        by_count = ens.chunk_ensemble_metrics(feats, weight, bias, found.labels[split], partition, counts, combine)
                        for count, values in by_count.items():
                            rows.add("chunk-average", chunk, count, position * repeats + draw, split, values)
            bar.advance(task)
    return notes


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    import numpy as np

    return {name: np.asarray(table.column(name).to_pylist()) for name in table.column_names}


def summarise(table: pa.Table) -> dict[str, Any]:
    """Key numbers of an ensemble table, on the test split when there is one (else train)."""
    cols = _columns(table)
    split = "test" if "test" in set(cols["split"].tolist()) else "train"

    def mean(kind: str, metric: str = "error", **where: int) -> float | None:
        mask = (cols["kind"] == kind) & (cols["split"] == split) & (cols["metric"] == metric)
        for name, value in where.items():
            mask &= cols[name] == value
        return float(cols["value"][mask].mean()) if mask.any() else None

    def members_of(kind: str, width: int) -> list[int]:
        return sorted(set(cols["members"][(cols["kind"] == kind) & (cols["width"] == width)].tolist()))

    error_inf = mean("error-inf")
    widths: dict[str, Any] = {}
    wide_widths = sorted(set(cols["width"][cols["kind"] == "wide"].tolist()))
    for width in wide_widths:
        largest = max(members_of("ensemble", width), default=1)
        networks = int(((cols["kind"] == "wide") & (cols["width"] == width) & (cols["split"] == split) & (cols["metric"] == "error")).sum())
        widths[str(width)] = {
            "networks": networks, "single_error": mean("wide", width=width),
            "ensemble_members": largest, "ensemble_error": mean("ensemble", width=width, members=largest),
            **{name: mean("bias-variance", name, width=width) for name in ("loss", "bias", "variance")},
        }
    comparisons = []
    widest = max(wide_widths, default=0)
    for kind in ("same-total-width", "same-params"):
        for width in sorted(set(cols["width"][cols["kind"] == kind].tolist())):
            for members in members_of(kind, width):
                comparisons.append({"kind": kind, "width": width, "members": members, "error": mean(kind, width=width, members=members),
                                    "wide_width": widest, "wide_error": mean("wide", width=widest)})
    internal = []
    for chunk in sorted(set(cols["width"][cols["kind"] == "chunk-average"].tolist())):
        count = max(members_of("chunk-average", chunk))
        networks = [mean(kind, width=chunk, members=count) for kind in ("ensemble", "same-total-width", "same-params")]
        internal.append({"chunk_size": chunk, "chunks": count, "one_chunk_error": mean("chunk-average", width=chunk, members=1),
                         "error": mean("chunk-average", width=chunk, members=count),
                         "networks_error": next((e for e in networks if e is not None), None)})
    return {"split": split, "error_inf": error_inf, "widths": widths, "comparisons": comparisons, "internal": internal}


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    split = summary["split"]
    table = Table(title=f"{split} error: single networks vs ensembles (bias-variance of the {split} cross-entropy)")
    for name in ("width", "networks", "single", "ensemble (K)", "loss", "bias", "variance"):
        table.add_column(name, justify="right")
    for width, row in summary["widths"].items():
        table.add_row(width, str(row["networks"]), _fmt(row["single_error"]), f"{_fmt(row['ensemble_error'])} ({row['ensemble_members']})",
                      _fmt(row["loss"]), _fmt(row["bias"]), _fmt(row["variance"]))
    stderr.print(table)
    if summary["error_inf"] is not None:
        stderr.print(f"error_inf (largest ensemble of the widest networks, test): {summary['error_inf']:.4f}")
    for item in summary["comparisons"]:
        stderr.print(f"{item['kind']}: {item['members']} x width {item['width']}: {_fmt(item['error'])}  vs  "
                     f"one width-{item['wide_width']} network: {_fmt(item['wide_error'])}")
    for item in summary["internal"]:
        stderr.print(f"internal ensemble, {item['chunk_size']}-neuron chunks: one {_fmt(item['one_chunk_error'])}, "
                     f"{item['chunks']} together {_fmt(item['error'])}"
                     + (f"  vs  {item['chunks']} networks of width {item['chunk_size']}: {_fmt(item['networks_error'])}"
                        if item["networks_error"] is not None else ""))


def ensemble(
    inputs: Annotated[list[Path], typer.Argument(help="Activation files of networks trained with different seeds (one or several widths).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Table to write (default: ensemble.parquet in the current directory).")] = Path("ensemble.parquet"),
    sizes: Annotated[Optional[str], typer.Option("--sizes", help="Ensemble sizes K, e.g. 1,2,4 (default: 1, 2, 4, ... and the pool size).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Random subsets per ensemble size, and random chunk draws per chunk size.")] = 10,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the subset and chunk draws.")] = 0,
    combine: Annotated[str, typer.Option("--combine", help="logits: sum the members' logits (the paper); probs: average their probabilities.")] = "logits",
    chunk_size: Annotated[Optional[str], typer.Option("--chunk-size", help="Chunk sizes of the internal ensemble, e.g. 16,32,64 (default: powers of two below the widest W).")] = None,
    params_per_width: Annotated[Optional[float], typer.Option("--params-per-width", help="Parameters per last-layer unit, for same-params ensembles (default: counted from the files' training config).")] = None,
    force: options.Force = False,
    quiet: options.Quiet = False,
    json_out: options.Json = False,
) -> None:
    """Compare wide networks with deep ensembles and with their own chunks; write ensemble.parquet.

    Writes ensemble curves per width, error_inf (for `mitosis clones --ensemble`), same-total-width and
    same-params comparisons, the internal ensemble of the widest networks and a bias-variance
    decomposition of the cross-entropy per width.

    Example: mitosis ensemble runs/w64-s*/acts.h5 runs/w512-s*/acts.h5 -o ensemble.parquet
    """
    from mitosis_cli.analysis.ensembles import COMBINES
    from mitosis_cli.errors import InputError
    from mitosis_cli.io.activations import read_info
    from mitosis_cli.io.ensemble_tables import EnsembleRows, load_members, matches_request, read_ensemble_table, write_ensemble_table
    from mitosis_cli.io.tables import provenance

    if combine not in COMBINES:
        raise InputError(f"--combine {combine!r}: choose {' or '.join(COMBINES)}")
    if params_per_width is not None and params_per_width <= 0:
        raise InputError(f"--params-per-width must be positive, got {params_per_width:g}")
    size_list = _int_list(sizes, "--sizes")
    chunk_list = _int_list(chunk_size, "--chunk-size")
    if len(inputs) < 2:
        raise InputError(f"an ensemble needs at least 2 activation files (networks trained with different seeds), got {len(inputs)}")
    widest = max(read_info(path).width for path in inputs)  # a missing or malformed file fails here, before hashing
    if chunk_list is not None and max(chunk_list) >= widest:
        raise InputError(f"--chunk-size {max(chunk_list)}: chunks must be narrower than the widest networks (W = {widest})")
    opts = {"sizes": size_list, "repeats": repeats, "seed": seed, "combine": combine, "chunk_sizes": chunk_list,
            "params_per_width": params_per_width}
    meta = provenance("ensemble", inputs, opts)
    skipped = not force and matches_request(out, meta)
    notes: list[str] = []
    if skipped:
        say(f"{out}: already made from these inputs and options; skipped (--force to redo)", quiet)
    else:
        found = load_members(inputs)
        pools = found.pools()
        if max(len(pool) for pool in pools.values()) < 2:
            raise InputError("every width has a single network: an ensemble needs at least 2 seeds of one width",
                             hint="train more seeds, e.g. mitosis train --seed 1 ...")
        say(f"{len(found.members)} networks ({', '.join(f'{len(p)} of width {w}' for w, p in pools.items())}), "
            f"splits {', '.join(found.splits)}, combining {combine}", quiet)
        rows = EnsembleRows()
        notes = _measure(found, rows, size_list, repeats, seed, combine, chunk_list, params_per_width, quiet)
        for note in notes:
            say(f"note: {note}", quiet)
        write_ensemble_table(out, rows, meta)
        say(f"{len(rows)} rows -> {out}", quiet)
    table, _ = read_ensemble_table(out)
    summary = summarise(table)
    if not quiet:
        _print_summary(summary)
    if json_out:
        emit_json({"output": str(out), "skipped": skipped, "rows": table.num_rows, "notes": notes, **summary})


def register(app: typer.Typer) -> None:
    app.command("ensemble")(ensemble)
