"""`mitosis sweep`: a widths x seeds x data sets grid as the pipeline's stages: run here, printed, or a SLURM array."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say
from mitosis_cli.cli.stage_options import parse_stage_options, table_argv
from mitosis_cli.errors import PREEMPTED_EXIT_CODE, InputError
from mitosis_cli.stages.base import option_words
from mitosis_cli.values import int_list_value, parse_int_list

if TYPE_CHECKING:
    from mitosis_cli.stages.sweep import Grid

RESERVED = {"train": ("dataset", "width", "seed", "seeds", "out", "acts", "resume"), "clones": ("out",), "ensemble": ("out",),
            "report": ("out",)}


def _grid(ctx: typer.Context, grid_file: Path | None, out: Path | None, datasets: list[str] | None, widths: str | None,
          seeds: str | None, shortcuts: list[tuple[str, Any]], runtime: list[tuple[str, Any]], raw: dict[str, list[str]]) -> Grid:
    """Merge the grid file with the command line (the command line wins) into a Grid."""
    from mitosis_cli.stages.sweep import STAGES, Grid, check_dataset_name, load_grid_file

    data = load_grid_file(grid_file) if grid_file is not None else {}
    where = str(grid_file) if grid_file is not None else "grid"
    listed = data.get("datasets", data.get("dataset", ["mnist5k"]))
    names = datasets or ([listed] if isinstance(listed, str) else listed)
    if not isinstance(names, list) or not all(isinstance(d, str) for d in names):
        raise InputError(f"{where}: datasets must be a list of names, got {listed!r}")
    if widths is not None:
        width_list = parse_int_list(widths, "--widths", minimum=1)
    elif "widths" in data:
        width_list = int_list_value(data["widths"], f"{where}: widths", minimum=1)
    else:
        raise InputError("no widths: give --widths, e.g. --widths 16,64,256, or widths in the --grid file")
    seed_list = (parse_int_list(seeds, "--seeds") if seeds is not None
                 else int_list_value(data["seeds"], f"{where}: seeds") if "seeds" in data else (0,))
    templates = {}
    for stage in STAGES:
        argv = [*table_argv(ctx, stage, data.get(stage, {}), where), *option_words(shortcuts if stage == "train" else []),
                *option_words(runtime if stage in ("train", "clones") else []), *raw[stage]]
        templates[stage] = parse_stage_options(ctx, stage, argv, RESERVED[stage])
    return Grid(out or Path(str(data.get("out", "sweep"))), tuple(dict.fromkeys(check_dataset_name(d) for d in names)),
                dict.fromkeys(width_list, seed_list), **templates)


def sweep(
    ctx: typer.Context,
    grid_file: Annotated[Path | None, typer.Option("--grid", help="TOML or JSON grid file: out, datasets, widths, seeds, and tables train, clones, ensemble, report of option = value. Command-line options override it.")] = None,
    widths: Annotated[str | None, typer.Option("--widths", help="Widths W of the last hidden layer, e.g. 16,64,256 or 16-1024:x2.")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seeds, e.g. 0-3 or 0,1,2 (default 0).")] = None,
    datasets: Annotated[list[str] | None, typer.Option("--dataset", "-d", help="Data set (repeat the option for several; default mnist5k).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Sweep folder: OUT/<dataset>/w<W>-s<S>/ per grid point (default: sweep).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", "-a", help="Train option: mlp, wrn or densenet.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Train option: epochs of the schedule.")] = None,
    train_size: Annotated[int | None, typer.Option("--train-size", help="Train option: use only the first N training samples.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Train option: mini-batch size.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Train option: peak learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="Train option: weight decay.")] = None,
    until_zero_error: Annotated[bool, typer.Option("--until-zero-error", help="Train option: keep training until the training error is 0.")] = False,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", help="Train option: cap for --until-zero-error.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Passed to train and clones: auto, cpu, cuda or cuda:N.")] = None,
    threads: options.Threads = None,
    train_arg: Annotated[list[str] | None, typer.Option("--train-arg", help="Any other train option, verbatim, e.g. --train-arg=--ending=batchnorm (repeatable).")] = None,
    clones_arg: Annotated[list[str] | None, typer.Option("--clones-arg", help="A clones option, e.g. --clones-arg=--repeats=10 (repeatable).")] = None,
    ensemble_arg: Annotated[list[str] | None, typer.Option("--ensemble-arg", help="An ensemble option, e.g. --ensemble-arg=--repeats=20 (repeatable).")] = None,
    report_arg: Annotated[list[str] | None, typer.Option("--report-arg", help="A report option, e.g. --report-arg=--title=Widths (repeatable).")] = None,
    phase: Annotated[str, typer.Option("--phase", help="all, train (the grid points) or analysis (ensemble, clones, report per data set): which commands --run runs or --print prints.")] = "all",
    run: Annotated[bool, typer.Option("--run", help="Run the commands here, one after another (the default mode); stop at the first failure with its exit code.")] = False,
    print_: Annotated[bool, typer.Option("--print", help="Print one quoted command per line instead of running them.")] = False,
    slurm: Annotated[Path | None, typer.Option("--slurm", help="Write a SLURM job-array script to this file (one task per data set and width, its seeds trained together), and NAME-analysis.EXT beside it for the per-data-set stages.")] = None,
    throttle: Annotated[int | None, typer.Option("--throttle", min=1, help="SLURM: at most this many array tasks at once (--array=0-N%THROTTLE).")] = None,
    sbatch: Annotated[list[str] | None, typer.Option("--sbatch", help="SLURM: an extra #SBATCH directive, e.g. --sbatch=--gres=gpu:1 or --sbatch=--time=12:00:00 (repeatable).")] = None,
    setup: Annotated[list[str] | None, typer.Option("--setup", help="SLURM: a shell line the scripts run first, verbatim, e.g. 'source .venv/bin/activate' (repeatable).")] = None,
    quiet: options.Quiet = False,
    json_out: options.Json = False,
) -> None:
    """Expand a grid of widths x seeds x data sets into the pipeline's commands, and run, print or submit them.

    Per data set and width, its seeds trained together as one batched model: mitosis train --dataset D --width W --seeds 0-3 -o 'OUT/D/wW-s{seed}' --acts 'OUT/D/wW-s{seed}/acts.h5' --resume (one seed: --seed S). Then per data set: mitosis ensemble (with 2 or more seeds), mitosis clones and mitosis report under OUT/D/. Reruns are cheap: finished runs and results are reused, interrupted runs resume.

    --print writes the training commands first, then the analysis; the training commands are independent, the analysis needs all of them. To run in parallel, print the two phases separately: first --phase train through xargs or GNU parallel, then --phase analysis in order.

    Example: mitosis sweep --widths 16,64,256 --seeds 0-3 -o sweeps/mnist --print --phase train | xargs -d '\\n' -n 1 -P 4 bash -c

    Example: mitosis sweep --widths 16,64,256 --seeds 0-3 -o sweeps/mnist --print --phase analysis | bash -e

    Example: mitosis sweep --grid grid.toml --slurm sweep.sbatch --throttle 8 --sbatch=--gres=gpu:1
    """
    from mitosis_cli.stages.slurm import shell_word, write_slurm_scripts
    from mitosis_cli.stages.sweep import plan, run_steps

    if sum([run, print_, slurm is not None]) > 1:
        raise InputError("choose one of --run, --print and --slurm")
    if slurm is not None and phase != "all":
        raise InputError("--phase applies to --run and --print; --slurm writes both phases (the array and the analysis script)")
    if slurm is None and (throttle is not None or sbatch or setup):
        raise InputError("--throttle, --sbatch and --setup apply to --slurm only")
    shortcuts = [("arch", arch), ("epochs", epochs), ("train-size", train_size), ("batch-size", batch_size), ("lr", lr),
                 ("weight-decay", weight_decay), ("until-zero-error", until_zero_error or None), ("max-epochs", max_epochs)]
    raw = {"train": train_arg or [], "clones": clones_arg or [], "ensemble": ensemble_arg or [], "report": report_arg or []}
    grid = _grid(ctx, grid_file, out if slurm is None or out is None else out.absolute(), datasets, widths, seeds, shortcuts,
                 [("device", device), ("threads", threads)], raw)
    steps = plan(grid, phase)
    summary: dict[str, Any] = {"out": str(grid.out), "datasets": list(grid.datasets), "widths": list(grid.widths),
                               "seeds": sorted({s for seeds_of in grid.seeds.values() for s in seeds_of}),
                               "grid_points": len(grid.points())}
    if print_:
        if json_out:  # one JSON object instead of the lines (it holds each command's argv and shell text)
            emit_json({**summary, "mode": "print", "phase": phase, "commands": [s.describe() for s in steps]})
        else:
            for step in steps:
                typer.echo(step.shell())
        return
    if slurm is not None:
        written = write_slurm_scripts(grid, slurm, throttle=throttle, sbatch=sbatch or [], setup=setup or [])
        say(f"wrote {slurm} ({written.array_tasks} array tasks) and {written.analysis_script}; submit both with:", quiet)
        say(f"  {written.submit}", quiet)
        if json_out:
            emit_json({**summary, "mode": "slurm", "array_script": str(slurm), "analysis_script": str(written.analysis_script),
                       "array_tasks": written.array_tasks, "submit": written.submit,
                       "commands": [s.describe() for s in plan(grid, "all")]})
        return
    say(f"sweep: {len(steps)} commands ({len(grid.points())} grid points) under {shell_word(grid.out)}", quiet)
    with progress(quiet) as on_step:
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
    app.command("sweep")(sweep)
