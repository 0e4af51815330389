"""`mitosis sweep`: a widths x seeds x data sets grid as the pipeline's stages: run here, printed, or a SLURM array."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say
from mitosis_cli.cli.stage_options import sweep_grid
from mitosis_cli.errors import PREEMPTED_EXIT_CODE, InputError

# Options of `mitosis train` the sweep takes directly (any other through --train-arg or the grid file's [train]).
TRAIN_OPTIONS = ("arch", "depth", "ending", "train_size", "data_dir", "optimizer", "lr", "weight_decay", "batch_size",
                 "augment", "epochs", "schedule", "lr_min", "until_zero_error", "max_epochs")
OTHERS = "Options of the other stages"


def sweep(
    ctx: typer.Context,
    widths: Annotated[str | None, typer.Option("--widths", rich_help_panel=options.DATA, help="Widths W of the last hidden layer, e.g. 16,64,256 or 16-1024:x2.")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", rich_help_panel=options.DATA, help="Seeds, e.g. 0-3 or 0,1,2 (default 0).")] = None,
    datasets: Annotated[list[str] | None, typer.Option("--dataset", "-d", rich_help_panel=options.DATA, **options.choices(options.DATASETS, open_set=True), help="Data set (repeat the option for several; default mnist5k).")] = None,
    grid_file: Annotated[Path | None, typer.Option("--grid", rich_help_panel=options.DATA, help="TOML or JSON grid file: out, datasets, widths, seeds, and tables train, clones, ensemble, report of option = value. Command-line options override it.")] = None,
    arch: Annotated[str | None, typer.Option("--arch", "-a", rich_help_panel=options.MODEL, **options.choices(options.ARCHS), help="mlp, wrn or densenet.")] = None,
    depth: Annotated[int | None, typer.Option("--depth", rich_help_panel=options.MODEL, help="Hidden layers (mlp) or network depth (wrn, densenet).")] = None,
    ending: Annotated[str | None, typer.Option("--ending", rich_help_panel=options.MODEL, **options.choices(options.ENDINGS), help="Last hidden layer ends with relu or batchnorm (no ReLU).")] = None,
    train_size: Annotated[int | None, typer.Option("--train-size", rich_help_panel=options.DATA, help="Use only the first N training samples.")] = None,
    data_dir: options.DataDir = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", rich_help_panel=options.OPTIMISATION, **options.choices(options.OPTIMIZERS), help="sgd (with momentum) or adam.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", rich_help_panel=options.OPTIMISATION, help="Peak learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", rich_help_panel=options.OPTIMISATION, help="Weight decay.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", rich_help_panel=options.OPTIMISATION, help="Mini-batch size.")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", rich_help_panel=options.OPTIMISATION, help="Random crop + flip (default on for CIFAR).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", rich_help_panel=options.SCHEDULE, help="Epochs of the schedule.")] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", rich_help_panel=options.SCHEDULE, **options.choices(options.SCHEDULES), help="cosine (to --lr-min) or constant.")] = None,
    lr_min: Annotated[float | None, typer.Option("--lr-min", rich_help_panel=options.SCHEDULE, help="Floor of the cosine schedule.")] = None,
    until_zero_error: Annotated[bool, typer.Option("--until-zero-error", rich_help_panel=options.SCHEDULE, help="Never stops early: after the schedule, keep training until the training error is 0, up to --max-epochs.")] = False,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", rich_help_panel=options.SCHEDULE, help="Cap for --until-zero-error.")] = None,
    train_arg: Annotated[list[str] | None, typer.Option("--train-arg", rich_help_panel=OTHERS, help="Any other train option, verbatim, e.g. --train-arg=--momentum=0.8 (repeatable).")] = None,
    clones_arg: Annotated[list[str] | None, typer.Option("--clones-arg", rich_help_panel=OTHERS, help="A clones option, e.g. --clones-arg=--repeats=10 (repeatable).")] = None,
    ensemble_arg: Annotated[list[str] | None, typer.Option("--ensemble-arg", rich_help_panel=OTHERS, help="An ensemble option, e.g. --ensemble-arg=--repeats=20 (repeatable).")] = None,
    report_arg: Annotated[list[str] | None, typer.Option("--report-arg", rich_help_panel=OTHERS, help="A report option, e.g. --report-arg=--title=Widths (repeatable).")] = None,
    run: Annotated[bool, typer.Option("--run", rich_help_panel=options.MODE, help="Run the commands here, one after another (the default); stop at the first failure with its exit code.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", rich_help_panel=options.MODE, help="Print one quoted command per line instead of running them.")] = False,
    print_: Annotated[bool, typer.Option("--print", hidden=True, help="Deprecated old name of --dry-run.")] = False,
    phase: Annotated[str, typer.Option("--phase", rich_help_panel=options.MODE, **options.choices(options.PHASES), help="all, train (the grid points) or analysis (ensemble, clones, report per data set): which commands --run runs or --dry-run prints.")] = "all",
    slurm: Annotated[Path | None, typer.Option("--slurm", rich_help_panel=options.MODE, help="Write a SLURM job-array script to this file (one task per data set and width, its seeds trained together), and NAME-analysis.EXT beside it for the per-data-set stages.")] = None,
    throttle: Annotated[int | None, typer.Option("--throttle", min=1, rich_help_panel=options.MODE, help="SLURM: at most this many array tasks at once (--array=0-N%THROTTLE).")] = None,
    sbatch: Annotated[list[str] | None, typer.Option("--sbatch", rich_help_panel=options.MODE, help="SLURM: an extra #SBATCH directive, e.g. --sbatch=--gres=gpu:1 or --sbatch=--time=12:00:00 (repeatable).")] = None,
    setup: Annotated[list[str] | None, typer.Option("--setup", rich_help_panel=options.MODE, help="SLURM: a shell line the scripts run first, verbatim, e.g. 'source .venv/bin/activate' (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="Sweep folder: OUT/<dataset>/w<W>-s<S>/ per grid point (default: sweep).")] = None,
    json_out: options.Json = False,
    device: Annotated[str | None, typer.Option("--device", rich_help_panel=options.RUNTIME, **options.choices(options.DEVICES, open_set=True), help="Passed to train and clones: auto, cpu, cuda or cuda:N.")] = None,
    threads: options.Threads = None,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Expand a grid of widths x seeds x data sets into the pipeline's commands, and run, print or submit them.

    Per data set and width, its seeds trained together as one batched model: mitosis train --dataset D --width W --seeds 0-3 -o 'OUT/D/wW-s{seed}' --acts 'OUT/D/wW-s{seed}/acts.h5' --resume (one seed: --seed S). Then per data set: mitosis ensemble (with 2 or more seeds), mitosis clones and mitosis report under OUT/D/. Reruns are cheap: finished runs and results are reused, interrupted runs resume. The train options above apply to every grid point.

    --dry-run writes the training commands first, then the analysis; the training commands are independent, the analysis needs all of them. To run in parallel, print the two phases separately: first --phase train through xargs or GNU parallel, then --phase analysis in order.

    Example: mitosis sweep --widths 32,128,512 --seeds 0-2 --ending batchnorm -o sweeps/mnist

    Example: mitosis sweep --widths 16,64,256 --seeds 0-3 -o sweeps/mnist --dry-run --phase train | xargs -d '\\n' -n 1 -P 4 bash -c

    Example: mitosis sweep --widths 16,64,256 --seeds 0-3 -o sweeps/mnist --dry-run --phase analysis | bash -e

    Example: mitosis sweep --grid grid.toml --slurm sweep.sbatch --throttle 8 --sbatch=--gres=gpu:1
    """
    from mitosis_cli.stages.slurm import shell_word, write_slurm_scripts
    from mitosis_cli.stages.sweep import plan, run_steps

    given = locals()
    if print_:
        say("note: --print is deprecated and will be removed in the next release; use --dry-run", quiet)
    dry_run = dry_run or print_
    if sum([run, dry_run, slurm is not None]) > 1:
        raise InputError("choose one of --run, --dry-run and --slurm")
    if slurm is not None and phase != "all":
        raise InputError("--phase applies to --run and --dry-run; --slurm writes both phases (the array and the analysis script)")
    if slurm is None and (throttle is not None or sbatch or setup):
        raise InputError("--throttle, --sbatch and --setup apply to --slurm only")
    shortcuts = [(name.replace("_", "-"), None if given[name] is False and name != "augment" else given[name]) for name in TRAIN_OPTIONS]
    raw = {"train": train_arg or [], "clones": clones_arg or [], "ensemble": ensemble_arg or [], "report": report_arg or []}
    grid = sweep_grid(ctx, grid_file, out if slurm is None or out is None else out.absolute(), datasets, widths, seeds, shortcuts,
                      [("device", device), ("threads", threads)], raw)
    steps = plan(grid, phase)
    summary: dict[str, Any] = {"out": str(grid.out), "datasets": list(grid.datasets), "widths": list(grid.widths),
                               "seeds": sorted({s for seeds_of in grid.seeds.values() for s in seeds_of}),
                               "grid_points": len(grid.points())}
    if dry_run:
        if json_out:  # one JSON object instead of the lines (it holds each command's argv and shell text)
            emit_json({**summary, "mode": "dry-run", "phase": phase, "commands": [s.describe() for s in steps]})
        else:
            for step in steps:
                typer.echo(step.shell())
        return
    if slurm is not None:
        written = write_slurm_scripts(grid, slurm, throttle=throttle, sbatch=sbatch or [], setup=setup or [],
                                      inputs=[grid_file] if grid_file is not None else [])
        say(f"wrote {slurm} ({written.array_tasks} array tasks) and {written.analysis_script}; submit both with:", quiet)
        say(f"  {written.submit}", quiet)
        if json_out:
            emit_json({**summary, "mode": "slurm", "array_script": str(slurm), "analysis_script": str(written.analysis_script),
                       "array_tasks": written.array_tasks, "submit": written.submit,
                       "commands": [s.describe() for s in plan(grid, "all")]})
        return
    say(f"sweep: {len(steps)} commands ({len(grid.points())} grid points) under {shell_word(grid.out)}", quiet)
    with progress(progress_mode, quiet) as on_step:
        done = run_steps(steps, lambda number, total, step: say(f"[{number}/{total}] {step.shell()}", quiet), on_step)
    skipped = sum(bool(record["skipped"]) for record in done.records)
    say(f"sweep: {len(done.records)} of {len(steps)} steps run, {skipped} of them already current (skipped)", quiet)
    if json_out:
        emit_json({**summary, "mode": "run", "phase": phase, "exit_code": done.exit_code, "commands": done.records})
    if done.error is not None:
        reason = "preempted: rerun the sweep to resume" if done.exit_code == PREEMPTED_EXIT_CODE else "stopped"
        say(f"sweep {reason} at step {len(done.records)}/{len(steps)} ({done.records[-1]['stage']}, exit code "
            f"{done.exit_code})", quiet)
        raise done.error


def register(app: typer.Typer) -> None:
    options.register(app, "sweep", sweep)
