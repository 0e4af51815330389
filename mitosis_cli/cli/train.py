"""`mitosis train`: train a network of a chosen last-layer width, to zero training error if asked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say
from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import network_label
from mitosis_cli.runtime import StopFlag, pick_device, set_threads
from mitosis_cli.stages.train import SeedsOutcome, TrainOutcome, TrainSettings, seed_list
from mitosis_cli.training.config import TrainConfig
from mitosis_cli.values import parse_int_list


def train_settings(params: Mapping[str, Any]) -> TrainSettings:
    """The stage settings of the parsed options of `mitosis train` (the sweep parses its train options so too)."""
    save = parse_int_list(params["save_epochs"], "--save-epochs") if params["save_epochs"] else ()
    seeds = parse_int_list(params["seeds"], "--seeds") if params["seeds"] is not None else ()
    if seeds and params["seed"] is not None:
        raise InputError("--seed and --seeds exclude each other", hint="one run: --seed S; several trained together: --seeds 0-15")
    config = TrainConfig(**{key: params[key] for key in (
        "dataset", "train_size", "arch", "width", "depth", "ending", "epochs", "batch_size", "optimizer", "lr", "momentum",
        "weight_decay", "schedule", "lr_min", "label_smoothing", "augment", "until_zero_error", "max_epochs")},
        seed=params["seed"] or 0, save_epochs=list(save))
    return TrainSettings(config=config, seeds=seeds, **{key: params[key] for key in (
        "out", "acts", "data_dir", "download", "resume", "force", "device", "threads")})


def train(
    dataset: Annotated[str, typer.Option("--dataset", "-d", rich_help_panel=options.DATA, **options.choices(options.DATASETS, open_set=True), help="mnist5k (built-in), synthetic[:opts], mnist, fashion-mnist, kmnist, cifar10, cifar100.")] = "mnist5k",
    data_dir: options.DataDir = None,
    download: Annotated[bool, typer.Option("--download", rich_help_panel=options.DATA, help="Let torchvision download a missing real data set.")] = False,
    train_size: Annotated[int | None, typer.Option("--train-size", rich_help_panel=options.DATA, help="Use only the first N training samples.")] = None,
    arch: Annotated[str, typer.Option("--arch", "-a", rich_help_panel=options.MODEL, **options.choices(options.ARCHS), help="mlp, wrn (Wide-ResNet) or densenet (DenseNet-BC).")] = "mlp",
    width: Annotated[int, typer.Option("--width", "-w", rich_help_panel=options.MODEL, help="Width W of the last hidden layer (wrn: W = 64k; densenet-40: W = 11g).")] = 256,
    depth: Annotated[int | None, typer.Option("--depth", rich_help_panel=options.MODEL, help="Hidden layers (mlp, default 2) or network depth (wrn 28, densenet 40).")] = None,
    ending: Annotated[str | None, typer.Option("--ending", rich_help_panel=options.MODEL, **options.choices(options.ENDINGS), help="Last hidden layer ends with relu or batchnorm (no ReLU); default relu for mlp, batchnorm for wrn/densenet.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", rich_help_panel=options.MODEL, help="Seed of initialisation, shuffling and augmentation (default 0).")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", rich_help_panel=options.MODEL, help="Train these seeds together as one batched model, e.g. 0-15, one run per seed: -o DIR writes DIR-s0, DIR-s1, ...; '{seed}' in -o/--acts is replaced by the seed instead (--acts a.h5 without it: a-s0.h5, ...). Excludes --seed.")] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", rich_help_panel=options.OPTIMISATION, **options.choices(options.OPTIMIZERS), help="sgd (with momentum) or adam.")] = "sgd",
    lr: Annotated[float | None, typer.Option("--lr", rich_help_panel=options.OPTIMISATION, help="Peak learning rate (default 0.05; CIFAR 0.1).")] = None,
    momentum: Annotated[float, typer.Option("--momentum", rich_help_panel=options.OPTIMISATION, help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", rich_help_panel=options.OPTIMISATION, help="Weight decay (default 5e-3; CIFAR 5e-4).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", rich_help_panel=options.OPTIMISATION, help="Mini-batch size (default 128).")] = None,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", rich_help_panel=options.OPTIMISATION, help="Label smoothing of the cross-entropy.")] = 0.0,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", rich_help_panel=options.OPTIMISATION, help="Random crop (4 px reflect) + flip; default on for CIFAR.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", rich_help_panel=options.SCHEDULE, help="Epochs of the schedule (default 100; CIFAR 200).")] = None,
    schedule: Annotated[str, typer.Option("--schedule", rich_help_panel=options.SCHEDULE, **options.choices(options.SCHEDULES), help="cosine (to --lr-min) or constant.")] = "cosine",
    lr_min: Annotated[float | None, typer.Option("--lr-min", rich_help_panel=options.SCHEDULE, help="Floor of the cosine schedule (default 0; CIFAR 1e-5).")] = None,
    until_zero_error: Annotated[bool, typer.Option("--until-zero-error", rich_help_panel=options.SCHEDULE, help="Never stops early: after the whole schedule, if the training error (eval mode) is not yet 0, keep training at a constant lr (10% of --lr, or --lr-min if higher) until it is, up to --max-epochs.")] = False,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", rich_help_panel=options.SCHEDULE, help="Cap for --until-zero-error (default 2 x epochs).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="Run directory to write.")] = Path("runs/run"),
    acts: Annotated[Path | None, typer.Option("--acts", rich_help_panel=options.OUTPUTS, help="Extract activations to this HDF5 file at the end.")] = None,
    save_epochs: Annotated[str | None, typer.Option("--save-epochs", rich_help_panel=options.OUTPUTS, help="Also keep the weights at these epochs, e.g. 0,10,50 or 0-100:10 (0 = initialisation).")] = None,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=options.OUTPUTS, help="Continue an interrupted run from its last checkpoint.")] = False,
    force: options.Force = False,
    json_out: options.Json = False,
    device: options.Device = "auto",
    threads: options.Threads = None,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Train a network and write RUN_DIR/{config.json, checkpoint.pt, history.parquet}.

    history.parquet is rewritten after every epoch; progress goes to stderr, one timestamped line per epoch
    when stderr is a file (a SLURM log).

    Example: mitosis train --width 512 --seed 1 -o runs/w512-s1 --acts runs/w512-s1/acts.h5

    Example: mitosis train --width 512 --ending batchnorm --until-zero-error -o runs/w512-bn 2> runs/w512-bn.log

    Example: mitosis train --dataset cifar10 --arch wrn --width 512 --data-dir ~/data -o runs/wrn28-8 --resume

    Example: mitosis train --width 16 --seeds 0-15 -o 'runs/w16-s{seed}' --acts 'runs/w16-s{seed}/acts.h5'
    """
    from mitosis_cli.stages.train import run_train

    settings = train_settings(locals())
    set_threads(threads)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 speaks
        quiet, json_out = True, False
    cfg = settings.config.resolved()
    which = f"s{seed_list(settings.seeds)}, trained together" if settings.seeds else f"s{cfg.seed}"
    target = f"{settings.for_seed(settings.seeds[0]).out} ... {settings.for_seed(settings.seeds[-1]).out}" if settings.seeds else out
    say(f"training {network_label(cfg.model_spec.family, cfg.width, dataset=cfg.dataset)} {which} ({cfg.epochs} epochs, "
        f"{pick_device(device)}) -> {target}", quiet)
    with progress(progress_mode, quiet) as on_step:
        outcome = run_train(settings, on_step, stop=StopFlag())
    several = isinstance(outcome, SeedsOutcome)
    for one in outcome.runs if several else (outcome,):
        _report(one, f"done (seed {one.config.seed})" if several else "done", quiet)
    if json_out:
        emit_json(outcome.to_json())


def _report(outcome: TrainOutcome, done: str, quiet: bool) -> None:
    result, final = outcome.result, outcome.result.final
    if result.skipped:
        say(f"{result.run_dir}: already trained with these options ({result.epochs} epochs); skipped (--force to retrain)", quiet)
    zero = f"zero training error at epoch {result.zero_error_epoch}" if result.zero_error_epoch else "training error never reached 0"
    say(f"{done}: {result.epochs} epochs, "
        f"train error {final.get('train_error', float('nan')):.4f}, test error {final.get('test_error', float('nan')):.4f}; {zero}",
        quiet)
    if outcome.acts is not None:
        say(f"{outcome.acts.acts}: already extracted from this checkpoint; skipped" if outcome.acts.skipped
            else f"activations -> {outcome.acts.acts}", quiet)


def register(app: typer.Typer) -> None:
    options.register(app, "train", train)
