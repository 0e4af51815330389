"""`mitosis sweep`: a widths x seeds x data sets grid as the pipeline's commands: run here, printed, or a SLURM array."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, say
from mitosis_cli.errors import PREEMPTED_EXIT_CODE, InputError
from mitosis_cli.sweeps import (
    PHASES, STAGES, Grid, Step, check_dataset_name, int_values, load_grid_file, normalise_option, option_argv, parse_int_list,
    plan, shell_word, slurm_scripts,
)

# Train options the sweep offers as its own options (same names as in `mitosis train`); any other goes in
# --train-arg or the grid file's [train] table.
_TRAIN_SHORTCUTS = ("arch", "epochs", "train-size", "batch-size", "lr", "weight-decay", "until-zero-error", "max-epochs")


def _stage_switches(ctx: typer.Context, stage: str) -> set[str]:
    """Names of the stage's on/off options (--augment/--no-augment), which accept `false` in a grid file."""
    command = ctx.find_root().command.get_command(ctx, stage)  # type: ignore[attr-defined]
    return {opt[2:] for param in command.params for opt in getattr(param, "opts", []) if getattr(param, "secondary_opts", [])
            and opt.startswith("--")}


def _validate(ctx: typer.Context, step: Step) -> None:
    """Parse a planned command with the stage's own parser, so a typo fails now, not in array task 37."""
    root = ctx.find_root()
    command = root.command.get_command(ctx, step.stage)  # type: ignore[attr-defined]
    try:
        command.make_context(step.stage, list(step.argv[1:]), parent=root)
    except typer.Exit:
        raise InputError(f"{step.stage} options of the sweep: --help is not an option to sweep with") from None
    except Exception as err:  # click's UsageError/BadParameter, from the vendored click
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        raise InputError(f"{step.stage} options of the sweep: {message}",
                         hint=f"see 'mitosis {step.stage} --help' for its options") from None


def _grid(
    ctx: typer.Context, grid_file: Optional[Path], out: Optional[Path], datasets: Optional[list[str]],
    widths: Optional[str], seeds: Optional[str], shortcuts: dict[str, Any], device: Optional[str],
    threads: Optional[int], raw: dict[str, list[str]],
) -> Grid:
    """Merge the grid file with the command line (the command line wins) into a Grid."""
    data = load_grid_file(grid_file) if grid_file is not None else {}
    where = str(grid_file) if grid_file is not None else "grid"
    out_dir = out if out is not None else Path(str(data.get("out", "sweep")))
    if datasets:
        dataset_list = datasets
    elif "datasets" in data or "dataset" in data:
        value = data.get("datasets", data.get("dataset"))
        dataset_list = [value] if isinstance(value, str) else value
        if not isinstance(dataset_list, list) or not all(isinstance(d, str) for d in dataset_list):
            raise InputError(f"{where}: datasets must be a list of names, got {value!r}")
    else:
        dataset_list = ["mnist5k"]
    if widths is not None:
        width_list = parse_int_list(widths, "--widths", ranges=False)
    elif "widths" in data:
        width_list = int_values(data["widths"], f"{where}: widths", ranges=False)
    else:
        raise InputError("no widths: give --widths, e.g. --widths 16,64,256, or widths in the --grid file")
    if min(width_list) < 1:
        raise InputError(f"widths must be positive, got {min(width_list)}")
    if seeds is not None:
        seed_list = parse_int_list(seeds, "--seeds", ranges=True)
    elif "seeds" in data:
        seed_list = int_values(data["seeds"], f"{where}: seeds", ranges=True)
    else:
        seed_list = (0,)
    stage_options: dict[str, dict[str, Any]] = {stage: {normalise_option(k): v for k, v in data.get(stage, {}).items()}
                                                for stage in STAGES}
    for stage in ("train", "clones"):  # the stages that compute with torch
        if device is not None:
            stage_options[stage]["device"] = device
        if threads is not None:
            stage_options[stage]["threads"] = threads
    for name, value in shortcuts.items():
        if value is not None and value is not False:
            stage_options["train"][name] = value
    for stage, reserved in (("train", {"dataset", "width", "seed", "out", "acts", "resume"}),
                            ("clones", {"out"}), ("ensemble", {"out"}), ("report", {"out"})):
        clash = sorted(reserved & (set(stage_options[stage]) | {normalise_option(a.partition("=")[0]) for a in raw[stage]}))
        if clash:
            raise InputError(f"{stage} option --{clash[0]} is set by the sweep itself (per grid point or per data set)")
    stage_args = {stage: (*option_argv(stage_options[stage], _stage_switches(ctx, stage)), *raw[stage]) for stage in STAGES}
    return Grid(out_dir, tuple(dict.fromkeys(check_dataset_name(d) for d in dataset_list)), width_list, seed_list, stage_args)


def _run(steps: list[Step], quiet: bool) -> tuple[list[dict[str, Any]], int]:
    """Run the steps here, in order, through the real entry point; stop at the first failure."""
    from mitosis_cli.cli.app import main  # the app imports this module: import it when running

    records: list[dict[str, Any]] = []
    for number, step in enumerate(steps, 1):
        say(f"[{number}/{len(steps)}] {step.shell()}", quiet)
        started = time.perf_counter()
        code = main([*step.argv[:1], *(["--quiet"] if quiet else []), *step.argv[1:]])
        records.append({**_describe(step), "exit_code": code, "seconds": round(time.perf_counter() - started, 3)})
        if code != 0:
            reason = "preempted: rerun the sweep to resume" if code == PREEMPTED_EXIT_CODE else "stopped"
            say(f"sweep {reason} at step {number}/{len(steps)} ({step.stage}, exit code {code})", quiet)
            return records, code
    return records, 0


def _describe(step: Step) -> dict[str, Any]:
    return {"phase": step.phase, "stage": step.stage, "dataset": step.dataset,
            "width": step.point.width if step.point else None, "seed": step.point.seed if step.point else None,
            "argv": ["mitosis", *step.argv], "command": step.shell()}


def sweep(
    ctx: typer.Context,
    grid_file: Annotated[Optional[Path], typer.Option("--grid", help="TOML or JSON grid file: out, datasets, widths, seeds, and tables train, clones, ensemble, report of option = value. Command-line options override it.")] = None,
    widths: Annotated[Optional[str], typer.Option("--widths", help="Widths W of the last hidden layer, e.g. 16,64,256.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seeds, e.g. 0-3 or 0,1,2 (default 0).")] = None,
    datasets: Annotated[Optional[list[str]], typer.Option("--dataset", "-d", help="Data set (repeat the option for several; default mnist5k).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Sweep folder: OUT/<dataset>/w<W>-s<S>/ per grid point (default: sweep).")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="Train option: mlp, wrn or densenet.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Train option: epochs of the schedule.")] = None,
    train_size: Annotated[Optional[int], typer.Option("--train-size", help="Train option: use only the first N training samples.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Train option: mini-batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Train option: peak learning rate.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="Train option: weight decay.")] = None,
    until_zero_error: Annotated[bool, typer.Option("--until-zero-error", help="Train option: keep training until the training error is 0.")] = False,
    max_epochs: Annotated[Optional[int], typer.Option("--max-epochs", help="Train option: cap for --until-zero-error.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Passed to train and clones: auto, cpu, cuda or cuda:N.")] = None,
    threads: options.Threads = None,
    train_arg: Annotated[Optional[list[str]], typer.Option("--train-arg", help="Any other train option, verbatim, e.g. --train-arg=--ending=batchnorm (repeatable).")] = None,
    clones_arg: Annotated[Optional[list[str]], typer.Option("--clones-arg", help="A clones option, e.g. --clones-arg=--repeats=10 (repeatable).")] = None,
    ensemble_arg: Annotated[Optional[list[str]], typer.Option("--ensemble-arg", help="An ensemble option, e.g. --ensemble-arg=--repeats=20 (repeatable).")] = None,
    report_arg: Annotated[Optional[list[str]], typer.Option("--report-arg", help="A report option, e.g. --report-arg=--title=Widths (repeatable).")] = None,
    phase: Annotated[str, typer.Option("--phase", help="all, train (the grid points) or analysis (ensemble, clones, report per data set): which commands --run runs or --print prints.")] = "all",
    run: Annotated[bool, typer.Option("--run", help="Run the commands here, one after another (the default mode); stop at the first failure with its exit code.")] = False,
    print_: Annotated[bool, typer.Option("--print", help="Print one quoted command per line instead of running them.")] = False,
    slurm: Annotated[Optional[Path], typer.Option("--slurm", help="Write a SLURM job-array script to this file (one task per grid point), and NAME-analysis.EXT beside it for the per-data-set stages.")] = None,
    throttle: Annotated[Optional[int], typer.Option("--throttle", min=1, help="SLURM: at most this many array tasks at once (--array=0-N%THROTTLE).")] = None,
    sbatch: Annotated[Optional[list[str]], typer.Option("--sbatch", help="SLURM: an extra #SBATCH directive, e.g. --sbatch=--gres=gpu:1 or --sbatch=--time=12:00:00 (repeatable).")] = None,
    setup: Annotated[Optional[list[str]], typer.Option("--setup", help="SLURM: a shell line the scripts run first, verbatim, e.g. 'source .venv/bin/activate' (repeatable).")] = None,
    quiet: options.Quiet = False,
    json_out: options.Json = False,
) -> None:
    """Expand a grid of widths x seeds x data sets into the pipeline's commands, and run, print or submit them.

    Per grid point: mitosis train --dataset D --width W --seed S -o OUT/D/wW-sS --acts OUT/D/wW-sS/acts.h5 --resume. Then per data set: mitosis ensemble (with 2 or more seeds), mitosis clones and mitosis report under OUT/D/. Reruns are cheap: finished runs and results are reused, interrupted runs resume.

    --print writes the training commands first, then the analysis; the training commands are independent, the analysis needs all of them. To run in parallel, print the two phases separately: first --phase train through xargs or GNU parallel, then --phase analysis in order.

    Example: mitosis sweep --widths 16,64,256 --seeds 0-3 -o sweeps/mnist --print --phase train | xargs -d '\\n' -n 1 -P 4 bash -c

    Example: mitosis sweep --widths 16,64,256 --seeds 0-3 -o sweeps/mnist --print --phase analysis | bash -e

    Example: mitosis sweep --grid grid.toml --slurm sweep.sbatch --throttle 8 --sbatch=--gres=gpu:1
    """
    if phase not in PHASES:
        raise InputError(f"--phase {phase!r}: choose from {', '.join(PHASES)}")
    if sum([run, print_, slurm is not None]) > 1:
        raise InputError("choose one of --run, --print and --slurm")
    if slurm is not None and phase != "all":
        raise InputError("--phase applies to --run and --print; --slurm writes both phases (the array and the analysis script)")
    if slurm is None and (throttle is not None or sbatch or setup):
        raise InputError("--throttle, --sbatch and --setup apply to --slurm only")
    shortcuts = dict(zip(_TRAIN_SHORTCUTS, (arch, epochs, train_size, batch_size, lr, weight_decay, until_zero_error, max_epochs)))
    raw = {"train": train_arg or [], "clones": clones_arg or [], "ensemble": ensemble_arg or [], "report": report_arg or []}
    grid = _grid(ctx, grid_file, out, datasets, widths, seeds, shortcuts, device, threads, raw)
    if slurm is not None:
        grid = Grid(grid.out.absolute(), grid.datasets, grid.widths, grid.seeds, grid.stage_args)  # jobs may start elsewhere
    steps = plan(grid, phase)
    for step in plan(grid, "all"):
        _validate(ctx, step)
    summary: dict[str, Any] = {"out": str(grid.out), "datasets": list(grid.datasets), "widths": list(grid.widths),
                               "seeds": list(grid.seeds), "grid_points": len(grid.points())}

    if print_:
        if json_out:  # one JSON object instead of the lines (it holds each command's argv and shell text)
            emit_json({**summary, "mode": "print", "phase": phase, "commands": [_describe(s) for s in steps]})
        else:
            for step in steps:
                typer.echo(step.shell())
        return

    if slurm is not None:
        from mitosis_cli.io.atomic import atomic_path

        analysis_path = slurm.with_name(f"{slurm.stem}-analysis{slurm.suffix}")
        scripts = slurm_scripts(grid, slurm, analysis_path, throttle=throttle, sbatch=sbatch or [], setup=setup or [],
                                preempted_exit_code=PREEMPTED_EXIT_CODE)
        try:
            (grid.out / "logs").mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder
        except OSError as err:
            raise InputError(f"cannot create {grid.out / 'logs'}: {err.strerror or err}") from None
        for path, text in ((slurm, scripts.array), (analysis_path, scripts.analysis)):
            with atomic_path(path) as tmp:
                tmp.write_text(text)
                tmp.chmod(0o755)
        say(f"wrote {slurm} ({len(grid.points())} array tasks) and {analysis_path}; submit both with:", quiet)
        say(f"  {scripts.submit}", quiet)
        if json_out:
            emit_json({**summary, "mode": "slurm", "array_script": str(slurm), "analysis_script": str(analysis_path),
                       "array_tasks": len(grid.points()), "submit": scripts.submit,
                       "commands": [_describe(s) for s in plan(grid, "all")]})
        return

    say(f"sweep: {len(steps)} commands ({len(grid.points())} grid points) under {shell_word(grid.out)}", quiet)
    records, code = _run(steps, quiet)
    if json_out:
        emit_json({**summary, "mode": "run", "phase": phase, "exit_code": code, "commands": records})
    if code != 0:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
