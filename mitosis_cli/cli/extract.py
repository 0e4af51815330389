"""`mitosis extract` and `mitosis merge`: a network's last hidden layer on whole splits, to an HDF5 activation file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say
from mitosis_cli.io.activations import SPLITS
from mitosis_cli.runtime import set_threads
from mitosis_cli.stages.extract import ExtractSettings, MergeSettings
from mitosis_cli.values import parse_float_list, parse_shard

OWN = "Your own network (docs/own-network.md)"


def extract_settings(params: Mapping[str, Any]) -> ExtractSettings:
    """The stage settings of the parsed options of `mitosis extract`."""
    floats = {key: parse_float_list(params[key], f"--{key}") if params[key] is not None else None for key in ("mean", "std")}
    return ExtractSettings(
        splits=tuple(params["split"] or SPLITS), shard=parse_shard(params["shard"]) if params["shard"] else None, **floats,
        **{key: params[key] for key in ("source", "out", "epoch", "untrained", "noise_inputs", "data_dir", "device", "threads",
                                        "force", "model", "weights", "images", "dataset", "num_classes", "strict", "layer",
                                        "image_size", "resize", "seed", "batch_size", "workers")})


def extract(
    source: Annotated[Path | None, typer.Argument(metavar="[SOURCE]", help="Run directory (its last checkpoint) or a checkpoint file; none with --model.", show_default=False)] = None,
    epoch: Annotated[int | None, typer.Option("--epoch", rich_help_panel=options.DATA, help="Use the weights saved at this epoch (train --save-epochs).")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", rich_help_panel=options.DATA, **options.choices(SPLITS), help="train and/or test (repeat the option; default both, or those there are).")] = None,
    untrained: Annotated[bool, typer.Option("--untrained", rich_help_panel=options.DATA, help="Control: same architecture at its seeded random initialisation.")] = False,
    noise_inputs: Annotated[bool, typer.Option("--noise-inputs", rich_help_panel=options.DATA, help="Control: standard Gaussian noise as inputs (labels kept).")] = False,
    data_dir: options.DataDir = None,
    model: Annotated[str | None, typer.Option("--model", rich_help_panel=OWN, help="A network mitosis did not train: torchvision:NAME (built offline) or module:PKG.MOD:FACTORY (imports your code).")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", rich_help_panel=OWN, help="Its weights: a state dict (plain or under state_dict/model/...) in a torch file, or .safetensors; never unpickled.")] = None,
    images: Annotated[Path | None, typer.Option("--images", rich_help_panel=OWN, help="Image folder DIR/train/CLASS/* and/or DIR/test/CLASS/* (labels: sorted class names).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", rich_help_panel=OWN, **options.choices(options.DATASETS, open_set=True), help="Or a registered data set (mnist5k, cifar10, ...) as mitosis trains on it.")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", rich_help_panel=OWN, help="Outputs of the head, when not the constructor's default (1000 for torchvision).")] = None,
    strict: Annotated[bool, typer.Option("--strict/--no-strict", rich_help_panel=OWN, help="The weights' keys must be the model's (module./_orig_mod. prefixes are removed); --no-strict loads what matches.")] = True,
    layer: Annotated[str | None, typer.Option("--layer", rich_help_panel=OWN, help="Read this module instead of the head's input (a Linear head: its input; else its output).")] = None,
    image_size: Annotated[int, typer.Option("--image-size", rich_help_panel=OWN, help="Side of the centre crop fed to the model.")] = 224,
    resize: Annotated[int | None, typer.Option("--resize", rich_help_panel=OWN, help="Shorter side before the crop (default: image size x 256/224).")] = None,
    mean: Annotated[str | None, typer.Option("--mean", rich_help_panel=OWN, help="Per-channel mean (default ImageNet's 0.485,0.456,0.406; one value: greyscale).")] = None,
    std: Annotated[str | None, typer.Option("--std", rich_help_panel=OWN, help="Per-channel std (default ImageNet's 0.229,0.224,0.225).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", rich_help_panel=OWN, help="The seed the network was trained with, if known (names it in tables and ensembles).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=OWN, help="Inputs per forward pass (with --model).")] = 64,
    workers: Annotated[int, typer.Option("--workers", rich_help_panel=OWN, help="Processes decoding images (with --images).")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="HDF5 file to write (default: SOURCE/acts.h5; required with --model).")] = None,
    shard: Annotated[str | None, typer.Option("--shard", rich_help_panel=options.OUTPUTS, help="Write only part K of N (0-based, e.g. 3/8) of each split; join the parts with `mitosis merge`.")] = None,
    force: options.Force = False,
    json_out: options.Json = False,
    device: options.Device = "auto",
    threads: options.Threads = None,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Extract the last hidden layer, logits and labels (eval mode, no augmentation) with the head weights.

    Of a run of `mitosis train` (SOURCE), or of a network mitosis did not train: --model with its --weights,
    read on --images or a --dataset (docs/own-network.md).

    Example: mitosis extract runs/w512-s1 -o acts-w512-s1.h5

    Example: mitosis extract runs/w512-s1 --epoch 10 --split test -o runs/w512-s1/acts-e10.h5

    Example: mitosis extract --model torchvision:resnet50 --weights resnet50.pth --images imagenet/ -o acts.h5
    """
    from mitosis_cli.stages.extract import run_extract

    settings = extract_settings(locals())
    set_threads(threads)
    with progress(progress_mode, quiet) as on_step:
        result = run_extract(settings, on_step)
    if result.skipped:
        say(f"{result.acts}: already extracted from these weights with these options; skipped (--force to redo)", quiet)
    else:
        epoch_text = f" epoch {result.epoch}" if result.epoch >= 0 else ""
        say(f"{result.label}{epoch_text}: {', '.join(result.splits)} -> {result.acts}", quiet)
    for note in result.notes:
        say(f"note: {note}", quiet)
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
