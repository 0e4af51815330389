"""`mitosis demo`: the whole pipeline on the built-in MNIST subset (or a paper preset), and its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say, stderr
from mitosis_cli.runtime import set_threads

if TYPE_CHECKING:
    from mitosis_cli.stages.demo import DemoResult


def show_verdict(result: DemoResult) -> None:
    """The clone sizes, the residual noise and the paper's claims with their evidence, on stderr."""
    stderr.print("\n[bold]Representation mitosis, measured[/]")
    if result.clone_sizes:
        stderr.print("  clone size w_c*: " + ", ".join(f"W={w}: {c:.1f}" for w, c in result.clone_sizes.items()))
    if result.regimes:
        stderr.print("  regime: " + ", ".join(f"W={w}: {word}" for w, word in result.regimes.items()), markup=False)
    if result.noise:
        noise = result.noise["one_minus_r2"]
        stderr.print(f"  noise left by {result.noise['chunk']}-neuron chunks of W={result.noise['widest']}: "
                     f"1 - R^2 = {noise:.1e}", markup=False)
    for claim in result.claims:
        colour = {True: "green", False: "red", None: "yellow"}[claim.holds]
        stderr.print(f"  ({claim.key}) {claim.statement}: [{colour}]{claim.verdict}[/]")
        stderr.print(f"      {claim.evidence}", markup=False)
    for name, info in result.controls.items():
        stderr.print(f"  control {name}: {info['text']}", markup=False)
    stderr.print(f"  report: {result.report / 'index.html'}   summary: {result.summary}", markup=False)


def demo(
    quick: Annotated[bool, typer.Option("--quick", rich_help_panel=options.MODEL, help="3 widths, 8 networks, fewer repeats (under 2 minutes on 2 cores).")] = False,
    preset: Annotated[str | None, typer.Option("--preset", rich_help_panel=options.MODEL, **options.choices(options.PRESETS), help="The paper's GPU setups (need --data-dir).")] = None,
    controls: Annotated[bool, typer.Option("--controls", rich_help_panel=options.MODEL, help="Add the paper's controls: no weight decay, stopped before zero training error, untrained networks.")] = False,
    data_dir: options.DataDir = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, rich_help_panel=options.SCHEDULE, help="Override the plan's epochs (e.g. a few epochs to check a preset).")] = None,
    dry_run: options.DryRun = False,
    out: Annotated[Path, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="Folder for every run and result.")] = Path("mitosis-demo"),
    json_out: options.Json = False,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, rich_help_panel=options.RUNTIME, help="Training steps at once (one per width: its seeds train together), sharing the CPUs as threads (default: the usable CPUs; 1 on a GPU).")] = None,
    device: options.Device = "auto",
    threads: options.Threads = None,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Show representation mitosis: train MLPs of widths 16-1024 to zero training error, measure their
    clones and ensembles, write a report, and say which of the paper's claims hold.

    Example: mitosis demo --quick

    Example: mitosis demo --controls -o mitosis-demo 2> demo.log

    Example: mitosis demo --preset wrn28-cifar10 --data-dir ~/data --epochs 2 --dry-run
    """
    from mitosis_cli.stages.demo import DemoSettings, demo_steps, run_demo

    settings = DemoSettings(out=out, quick=quick, preset=preset, data_dir=data_dir, controls=controls, epochs=epochs,
                            jobs=jobs, device=device, threads=threads)
    steps = demo_steps(settings)
    if dry_run:
        for step in [*steps.train, *steps.analysis]:
            typer.echo(step.shell())
        return
    networks = sum(max(1, len(step.points)) for step in steps.train)
    say(f"mitosis demo ({steps.plan.name}): {steps.plan.description}; {networks} networks in {len(steps.train)} training "
        f"steps (the seeds of a width together) -> {out}", quiet)
    set_threads(threads)
    with progress(progress_mode, quiet) as on_step:
        result = run_demo(settings, on_step, lambda number, total, step: say(f"$ mitosis {step.stage} ...", quiet))
    if not quiet:
        show_verdict(result)
    if json_out:
        emit_json(result.to_json())


def register(app: typer.Typer) -> None:
    options.register(app, "demo", demo)
