"""`mitosis import`: features that already exist (.npz, .npy, .pt, .safetensors) to an HDF5 activation file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say

if TYPE_CHECKING:
    from mitosis_cli.stages.importing import ImportSettings


def import_settings(params: Mapping[str, Any]) -> ImportSettings:
    """The stage settings of the parsed options of `mitosis import`."""
    from mitosis_cli.stages.importing import ImportSettings

    return ImportSettings(arch=params["arch"] or "", dataset=params["dataset"] or "",
                          **{key: params[key] for key in ("source", "out", "seed", "num_classes", "force")})


def import_features(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="A .npz, .pt or .safetensors file, a [PREFIX]KEY.npy file or a folder of KEY.npy files.", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="HDF5 file to write (default: SOURCE with the suffix .h5).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", rich_help_panel=options.DATA, help="What the network is (names it in tables and figures), e.g. resnet50.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", rich_help_panel=options.DATA, help="What it was read on, e.g. imagenet-val (ensembles compare only equal data sets).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", rich_help_panel=options.DATA, help="The seed it was trained with, if known (ensemble members need different seeds).")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", rich_help_panel=options.DATA, help="C when there is no head, logits or class_names (default: largest label + 1).")] = None,
    force: options.Force = False,
    json_out: options.Json = False,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Import features that already exist (.npz, .npy, .pt, .safetensors) into an activation file.

    Keys: train_features, train_labels, test_features, test_labels; optional head_weight and head_bias, train_logits
    and test_logits, class_names (docs/own-network.md). Without a head, clones measures what needs none.

    Example: mitosis import resnet50-imagenet-val.npz --arch resnet50 --dataset imagenet-val -o acts.h5

    Example: mitosis import dumps/features.pt --arch vit-b16 --seed 0 -o acts-s0.h5 --json
    """
    from mitosis_cli.stages.importing import run_import

    with progress(progress_mode, quiet) as on_step:
        result = run_import(import_settings(locals()), on_step)
    if result.skipped:
        say(f"{result.acts}: already imported from this file with these options; skipped (--force to redo)", quiet)
    else:
        rows = ", ".join(f"{split} {n}" for split, n in result.splits.items())
        say(f"{result.label}: {rows} rows{'' if result.has_head else ' (no head)'} -> {result.acts}", quiet)
    if json_out:
        emit_json(result.to_json())


def register(app: typer.Typer) -> None:
    options.register(app, "import", import_features)
