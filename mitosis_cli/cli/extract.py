"""`mitosis extract` and `mitosis merge`: a model's last hidden layer on whole splits, to an HDF5 activation file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say
from mitosis_cli.io.activations import SPLITS
from mitosis_cli.runtime import set_threads
from mitosis_cli.stages.extract import ExtractSettings, MergeSettings
from mitosis_cli.values import parse_shard


def extract(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="Run directory (its last checkpoint) or a checkpoint file.")],
    epoch: Annotated[int | None, typer.Option("--epoch", rich_help_panel=options.DATA, help="Use the weights saved at this epoch (train --save-epochs).")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", rich_help_panel=options.DATA, **options.choices(SPLITS), help="train and/or test (repeat the option; default both).")] = None,
    untrained: Annotated[bool, typer.Option("--untrained", rich_help_panel=options.DATA, help="Control: same architecture at its seeded random initialisation.")] = False,
    noise_inputs: Annotated[bool, typer.Option("--noise-inputs", rich_help_panel=options.DATA, help="Control: standard Gaussian noise as inputs (labels kept).")] = False,
    data_dir: options.DataDir = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="HDF5 file to write (default: SOURCE/acts.h5).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", rich_help_panel=options.OUTPUTS, help="Write only part K of N (0-based, e.g. 3/8) of each split; join the parts with `mitosis merge`.")] = None,
    force: options.Force = False,
    json_out: options.Json = False,
    device: options.Device = "auto",
    threads: options.Threads = None,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Extract the last hidden layer, logits and labels (eval mode, no augmentation) with the head weights.

    Example: mitosis extract runs/w512-s1 -o acts-w512-s1.h5

    Example: mitosis extract runs/w512-s1 --epoch 10 --split test -o runs/w512-s1/acts-e10.h5

    Example: mitosis extract runs/w512-s1 --shard 0/2 -o runs/w512-s1/acts.part-0.h5
    """
    from mitosis_cli.stages.extract import run_extract

    settings = ExtractSettings(source=source, out=out, epoch=epoch, splits=tuple(split or SPLITS), untrained=untrained,
                               noise_inputs=noise_inputs, shard=parse_shard(shard) if shard else None, data_dir=data_dir,
                               device=device, threads=threads, force=force)
    set_threads(threads)
    with progress(progress_mode, quiet) as on_step:
        result = run_extract(settings, on_step)
    if result.skipped:
        say(f"{result.acts}: already extracted from this checkpoint with these options; skipped (--force to redo)", quiet)
    else:
        say(f"{result.label} epoch {result.epoch}: {', '.join(result.splits)} -> {result.acts}", quiet)
    if json_out:
        emit_json(result.to_json())


def merge(
    parts: Annotated[list[Path], typer.Argument(metavar="PARTS...", help="Shard files written by `mitosis extract --shard K/N`.")],
    out: Annotated[Path, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="Activation file to write.")] = Path("acts.h5"),
    force: options.Force = False,
    json_out: options.Json = False,
    quiet: options.Quiet = False,
) -> None:
    """Join the shards of one extraction into one activation file (rows in shard order).

    Example: mitosis merge acts.part-*.h5 -o acts.h5

    Example: mitosis merge runs/w512-s0/acts.part-0.h5 runs/w512-s0/acts.part-1.h5 -o runs/w512-s0/acts.h5 --json
    """
    from mitosis_cli.stages.extract import run_merge

    result = run_merge(MergeSettings(parts=tuple(parts), out=out, force=force))
    say(f"{out}: already merged from these shards; skipped" if result.skipped else f"{len(parts)} shards -> {out}", quiet)
    if json_out:
        emit_json(result.to_json())


def register(app: typer.Typer) -> None:
    options.register(app, "extract", extract)
    options.register(app, "merge", merge)
