"""`mitosis demo`: the whole pipeline on the built-in MNIST subset (or a paper preset), and its verdict.

It is a sweep with good defaults that runs the same sub-commands a user would (`train`, `extract`,
`ensemble`, `clones`, `report`), training runs in parallel worker processes; every stage is cached,
so a second run reuses what is done.
"""

from __future__ import annotations

import json
import shlex
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import default_threads, emit_json, pick_device, progress_bar, say, stderr


def _with_options(argv: list[str], extra: list[str]) -> list[str]:
    """`extra` options added before a `--` that ends the options (paths after it stay paths)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    return [*argv[:cut], *extra, *argv[cut:]]


def _run_quietly(argv: list[str]) -> int:
    """One sub-command in a worker process (one torch thread, no progress output)."""
    from mitosis_cli.cli.app import main

    return main(_with_options(argv, ["--threads=1", "--quiet"]))


def _run_stage(argv: list[str], quiet: bool) -> None:
    from mitosis_cli.cli.app import main
    from mitosis_cli.errors import InputError

    code = main(_with_options(argv, ["--quiet"] if quiet else []))
    if code != 0:
        raise InputError(f"the demo's step `mitosis {shlex.join(argv[:1])} ...` failed (exit code {code})",
                         hint=f"rerun it alone to see why: mitosis {shlex.join(argv)}")


def _train_all(commands: list[list[str]], jobs: int, quiet: bool) -> None:
    """Run the training commands on `jobs` worker processes (spawned: no OpenMP state is inherited)."""
    from mitosis_cli.errors import InputError

    with progress_bar(quiet) as bar, ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        task = bar.add_task("train", total=len(commands), status=f"{jobs} worker(s)")
        futures = {pool.submit(_run_quietly, argv): argv for argv in commands}
        for future in as_completed(futures):
            code = future.result()
            if code != 0:
                for other in futures:
                    other.cancel()
                argv = futures[future]
                raise InputError(f"training failed (exit code {code}): mitosis {shlex.join(argv)}",
                                 hint="rerun that command alone to see why; the demo resumes what is done")
            bar.advance(task)


def _print_summary(claims: list[Any], layout: Any, summary_rows: list[dict[str, Any]], controls: dict[str, Any]) -> None:
    from mitosis_cli.demo import clone_sizes, residual_noise

    sizes = clone_sizes(summary_rows)
    stderr.print("\n[bold]Representation mitosis, measured[/]")
    if sizes:
        stderr.print("  clone size w_c*: " + ", ".join(f"W={w}: {c:.1f}" for w, c in sizes.items()))
    if sizes:  # how much of the layer a clone-sized chunk leaves unexplained: independent noise, or none
        widest = max(sizes)
        chunk = next((c for c in (16, 32, 64, 128, 256, 512) if c >= 2 * sizes[widest]), None)
        noise = residual_noise(summary_rows, widest, chunk) if chunk and chunk < widest else None
        if noise is not None:
            kind = ("near-collapse: the layer is almost exactly low-rank, chunks differ by almost no noise"
                    if noise < 1e-3 else "chunks differ by noise")
            stderr.print(f"  noise left by {chunk}-neuron chunks of W={widest}: 1 - R^2 = {noise:.1e} ({kind})", markup=False)
    for claim in claims:
        colour = {True: "green", False: "red", None: "yellow"}[claim.holds]
        stderr.print(f"  ({claim.key}) {claim.statement}: [{colour}]{claim.verdict}[/]")
        stderr.print(f"      {claim.evidence}", markup=False)
    for name, info in controls.items():
        stderr.print(f"  control {name}: {info['text']}", markup=False)
    stderr.print(f"  report: {layout.report / 'index.html'}   summary: {layout.summary}", markup=False)


def _control_text(folder: Path) -> dict[str, Any]:
    from mitosis_cli.demo import clone_sizes, critical_width
    from mitosis_cli.io.clone_tables import read_clones_summary

    rows = read_clones_summary(folder / "clones-summary.parquet")[0].to_pylist()
    sizes = clone_sizes(rows)
    text = "w_c* " + ", ".join(f"W={w}: {c:.0f}" for w, c in sizes.items())
    return {"clone_size": sizes, "critical_width": critical_width(rows), "text": text}


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every run and result.")] = Path("mitosis-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="3 widths, 8 networks, fewer repeats (under 2 minutes on 2 cores).")] = False,
    preset: Annotated[Optional[str], typer.Option("--preset", help="The paper's GPU setups: wrn28-cifar10, wrn28-cifar100, densenet40-cifar10, densenet40-cifar100 (need --data-dir).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder in torchvision's layout, for the presets (default: $MITOSIS_DATA_DIR).")] = None,
    controls: Annotated[bool, typer.Option("--controls", help="Add the paper's controls: no weight decay, stopped before zero training error, untrained networks.")] = False,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Override the plan's epochs (e.g. a few epochs to check a preset).")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, help="Training runs at once, one thread each (default: the usable CPUs; 1 on a GPU).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands the demo would run, one per line, and exit.")] = False,
    device: options.Device = "auto",
    threads: options.Threads = None,
    quiet: options.Quiet = False,
    json_out: options.Json = False,
) -> None:
    """Show representation mitosis: train MLPs of widths 16-1024 to zero training error, measure their
    clones and ensembles, write a report, and say which of the paper's claims hold.

    Example: mitosis demo --quick
    """
    import dataclasses

    from mitosis_cli.demo import PLANS, Layout, analysis_commands, evaluate_claims, plan_for, train_commands
    from mitosis_cli.errors import InputError

    if quick and preset:
        raise InputError("--quick and --preset exclude each other")
    plan = plan_for(preset) if preset else PLANS["quick" if quick else "default"]
    if epochs is not None:
        plan = dataclasses.replace(plan, epochs=epochs)
    layout = Layout(out)
    extra = [f"--device={device}"]
    if data_dir is not None:
        extra.append(f"--data-dir={data_dir}")
    trains = train_commands(plan, layout, extra, controls)
    analyses = analysis_commands(plan, layout, controls)
    if dry_run:
        for argv in trains + analyses:
            print(shlex.join(["mitosis", *argv]))
        return

    on_gpu = pick_device(device).type == "cuda"
    workers = 1 if on_gpu else (jobs or default_threads())
    say(f"mitosis demo ({plan.name}): {plan.description}; {len(trains)} training runs on {workers} worker(s) -> {out}", quiet)
    if workers == 1:
        with progress_bar(quiet) as bar:
            task = bar.add_task("train", total=len(trains), status="")
            for argv in trains:
                _run_stage(_with_options(argv, [f"--threads={threads}"] if threads else []), quiet=True)
                bar.advance(task)
    else:
        _train_all(trains, workers, quiet)
    for argv in analyses:
        say(f"$ mitosis {shlex.join(argv[:1])} ...", quiet)
        _run_stage(argv, quiet)

    import pyarrow.parquet as pq

    from mitosis_cli.io.atomic import atomic_path

    summary_rows = pq.read_table(layout.clones() / "clones-summary.parquet").to_pylist()
    ensemble_rows = pq.read_table(layout.ensemble).to_pylist()
    claims = evaluate_claims(summary_rows, ensemble_rows)
    control_results = {name: _control_text(layout.clones(name)) for name in ("no-weight-decay", "early-stop", "untrained")} if controls else {}
    result = {
        "plan": plan.name,
        "out": str(out),
        "report": str(layout.report / "index.html"),
        "claims": [{"key": c.key, "statement": c.statement, "verdict": c.verdict, "holds": c.holds,
                    "evidence": c.evidence, "numbers": c.numbers} for c in claims],
        "controls": control_results,
    }
    with atomic_path(layout.summary) as tmp:
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    if not quiet:
        _print_summary(claims, layout, summary_rows, control_results)
    if json_out:
        emit_json(result)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
