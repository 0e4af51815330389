"""`mitosis ensemble`: wide networks against deep ensembles of narrower ones, and against their own chunks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say, stderr
from mitosis_cli.errors import InputError

if TYPE_CHECKING:
    from mitosis_cli.stages.ensemble import EnsembleSettings


def ensemble_settings(params: Mapping[str, Any]) -> EnsembleSettings:
    """The stage settings of the parsed options of `mitosis ensemble` (the sweep parses its options so too)."""
    from mitosis_cli.stages.ensemble import EnsembleSettings

    if params["members"] is not None and params["sizes"] is not None:
        raise InputError("give --members or its old name --sizes, not both")
    given = "--sizes" if params["sizes"] is not None else "--members"
    members = params["members"] if params["members"] is not None else params["sizes"]
    return EnsembleSettings(
        inputs=tuple(params["inputs"] or ()), members=options.int_list(members, given, minimum=1),
        chunk_sizes=options.int_list(params["chunk_size"], "--chunk-size", minimum=1),
        **{key: params[key] for key in ("out", "repeats", "seed", "combine", "params_per_width", "force")})


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def show_ensemble(summary: dict[str, Any]) -> None:
    """Single networks against ensembles per width, error_inf, and the comparisons, on stderr."""
    from rich.table import Table

    split = summary["split"]
    table = Table(title=f"{split} error: single networks vs ensembles (bias-variance of the {split} cross-entropy)")
    for name in ("width", "networks", "single", "ensemble (K)", "loss", "bias", "variance"):
        table.add_column(name, justify="right")
    for width, row in summary["widths"].items():
        table.add_row(width, str(row["networks"]), _fmt(row["single_error"]),
                      f"{_fmt(row['ensemble_error'])} ({row['ensemble_members']})", _fmt(row["loss"]), _fmt(row["bias"]),
                      _fmt(row["variance"]))
    stderr.print(table)
    status = summary["error_inf_status"]
    if summary["error_inf"] is not None:
        what = f"ensemble of {summary['error_inf_members']} networks of width {summary['error_inf_width']}, test"
        stderr.print(f"error_inf ({what}): {summary['error_inf']:.4f}" + ("" if status == "ok" else f"  [{status}]"), markup=False)
    else:
        stderr.print(f"error_inf: {status}", markup=False)
    for item in summary["comparisons"]:
        stderr.print(f"{item['kind']}: {item['members']} x width {item['width']}: {_fmt(item['error'])}  vs  "
                     f"one width-{item['wide_width']} network: {_fmt(item['wide_error'])}")
    for item in summary["internal"]:
        networks = (f"  vs  {item['chunks']} networks of width {item['chunk_size']}: {_fmt(item['networks_error'])}"
                    if item["networks_error"] is not None else "")
        stderr.print(f"internal ensemble, {item['chunk_size']}-neuron chunks: one {_fmt(item['one_chunk_error'])}, "
                     f"{item['chunks']} together {_fmt(item['error'])}{networks}")


def ensemble(
    inputs: Annotated[list[Path] | None, typer.Argument(metavar="ACTS...", help="Activation files of networks trained with different seeds (one or several widths).", show_default=False)] = None,
    members: Annotated[str | None, typer.Option("--members", rich_help_panel=options.MEASURE, help="Ensemble sizes K, e.g. 1,2,4 or 1-16:x2 (default: 1, 2, 4, ... and the pool size).")] = None,
    sizes: Annotated[str | None, typer.Option("--sizes", hidden=True, help="Deprecated old name of --members.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, rich_help_panel=options.MEASURE, help="Random subsets per ensemble size, and random chunk draws per chunk size.")] = 10,
    seed: Annotated[int, typer.Option("--seed", min=0, rich_help_panel=options.MEASURE, help="Seed of the subset and chunk draws.")] = 0,
    combine: Annotated[str, typer.Option("--combine", rich_help_panel=options.MEASURE, **options.choices(options.COMBINES), help="logits: sum the members' logits (the paper); probs: average their probabilities.")] = "logits",
    chunk_size: Annotated[str | None, typer.Option("--chunk-size", rich_help_panel=options.MEASURE, help="Chunk sizes of the internal ensemble, e.g. 16,32,64 (default: powers of two below the widest W).")] = None,
    params_per_width: Annotated[float | None, typer.Option("--params-per-width", rich_help_panel=options.MEASURE, help="Parameters per last-layer unit, for same-params ensembles (default: counted from the files' training config).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="Table to write.")] = Path("ensemble.parquet"),
    force: options.Force = False,
    json_out: options.Json = False,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Compare wide networks with deep ensembles and with their own chunks; write ensemble.parquet.

    Writes ensemble curves per width, error_inf (for `mitosis clones --ensemble`; its status says when it
    rests on too few networks), same-total-width and same-params comparisons, the internal ensemble of
    the widest networks and a bias-variance decomposition of the cross-entropy per width.

    Example: mitosis ensemble runs/w64-s*/acts.h5 runs/w512-s*/acts.h5 -o results/ensemble.parquet

    Example: mitosis ensemble runs/*/acts.h5 --members 1-16:x2 --repeats 20 --combine probs --json
    """
    from mitosis_cli.stages.ensemble import run_ensemble

    settings = ensemble_settings(locals())
    if sizes is not None:
        say("note: --sizes is deprecated and will be removed in the next release; use --members", quiet)
    with progress(progress_mode, quiet) as on_step:
        result = run_ensemble(settings, on_step)
    if result.skipped:
        say(f"{out}: already made from these inputs and options; skipped (--force to redo)", quiet)
    else:
        say(f"{len(settings.inputs)} networks ({result.networks}), combining {combine}", quiet)
        for note in result.notes:
            say(f"note: {note}", quiet)
        say(f"{result.rows} rows -> {out}", quiet)
    if not quiet:
        show_ensemble(result.summary)
    if json_out:
        emit_json(result.to_json())


def register(app: typer.Typer) -> None:
    options.register(app, "ensemble", ensemble)
