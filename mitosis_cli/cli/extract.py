"""`mitosis extract`: write a model's last hidden layer on whole splits to an HDF5 activation file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, pick_device, say, set_threads
from mitosis_cli.cli.train import DataDir


def extract(
    source: Annotated[Path, typer.Argument(help="Run directory (its last checkpoint) or a checkpoint file.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HDF5 file to write (default: SOURCE/acts.h5).")] = None,
    epoch: Annotated[Optional[int], typer.Option("--epoch", help="Use the weights saved at this epoch (train --save-epochs).")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="train and/or test (repeat the option; default both).")] = None,
    untrained: Annotated[bool, typer.Option("--untrained", help="Control: same architecture at its seeded random initialisation.")] = False,
    noise_inputs: Annotated[bool, typer.Option("--noise-inputs", help="Control: standard Gaussian noise as inputs (labels kept).")] = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Write only part K of N (0-based, e.g. 3/8) of each split; join the parts with `mitosis merge`.")] = None,
    force: options.Force = False,
    data_dir: DataDir = None,
    device: options.Device = "auto",
    threads: options.Threads = None,
    quiet: options.Quiet = False,
    json_out: options.Json = False,
) -> None:
    """Extract the last hidden layer, logits and labels (eval mode, no augmentation) with the head weights.

    Example: mitosis extract runs/w512-s1 -o acts-w512-s1.h5
    """
    from mitosis_cli.errors import InputError
    from mitosis_cli.io.activations import SPLITS
    from mitosis_cli.io.atomic import output_lock
    from mitosis_cli.training.extract import extract_activations, extraction_is_current, load_trained_model

    set_threads(threads)
    splits = tuple(dict.fromkeys(split or SPLITS))
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise InputError(f"--split {bad[0]!r}: choose from {', '.join(SPLITS)}")
    dev = pick_device(device)
    part = parse_shard(shard) if shard else None
    target = out or (source / "acts.h5" if source.is_dir() else source.with_suffix(".h5"))
    trained = load_trained_model(source, epoch, untrained=untrained, device=dev)
    with output_lock(target):
        skipped = not force and extraction_is_current(target, trained, splits, untrained, noise_inputs, part)
        if skipped:
            say(f"{target}: already extracted from this checkpoint with these options; skipped (--force to redo)", quiet)
        else:
            extract_activations(trained, target, splits, data_dir=data_dir, noise_inputs=noise_inputs,
                                untrained=untrained, device=dev, shard=part)
            say(f"{trained.config.model_spec.label} epoch {trained.epoch}: {', '.join(splits)} -> {target}", quiet)
    if json_out:
        emit_json({"acts": str(target), "splits": list(splits), "width": trained.config.width, "epoch": trained.epoch,
                   "arch": trained.config.model_spec.family, "checkpoint": str(trained.checkpoint), "skipped": skipped})


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    from mitosis_cli.errors import InputError

    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()) or not 0 <= int(k) < int(n):
        raise InputError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(k), int(n)


def merge(
    parts: Annotated[list[Path], typer.Argument(help="Shard files written by `mitosis extract --shard K/N`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Activation file to write.")] = Path("acts.h5"),
    quiet: options.Quiet = False,
    json_out: options.Json = False,
) -> None:
    """Join the shards of one extraction into one activation file (rows in shard order).

    Example: mitosis merge acts.part-*.h5 -o acts.h5
    """
    from mitosis_cli.io.activations import merge_shards
    from mitosis_cli.io.atomic import output_lock

    with output_lock(out):
        path = merge_shards(parts, out)
    say(f"{len(parts)} shards -> {path}", quiet)
    if json_out:
        emit_json({"acts": str(path), "parts": [str(p) for p in parts]})


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
    app.command("merge")(merge)
