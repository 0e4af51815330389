"""`mitosis demo`: the pipeline on the built-in MNIST subset, with good defaults, cached."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import say, set_threads

DEMO_WIDTHS = (16, 64, 256)


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every run and result.")] = Path("mitosis-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer epochs and widths (under 2 minutes).")] = False,
    threads: options.Threads = None,
    quiet: options.Quiet = False,
) -> None:
    """Train MLPs of several widths on the built-in MNIST subset and extract their last hidden layer."""
    from mitosis_cli.training.config import TrainConfig
    from mitosis_cli.training.extract import extract_activations, load_trained_model
    from mitosis_cli.training.loop import train_run

    set_threads(threads)
    for width in DEMO_WIDTHS[:2] if quick else DEMO_WIDTHS:
        cfg = TrainConfig(width=width, epochs=10 if quick else 60, ending="batchnorm").resolved()
        run_dir = out / f"w{width}-s0"
        result = train_run(cfg, run_dir, resume=True)
        acts = extract_activations(load_trained_model(run_dir), run_dir / "acts.h5")
        say(f"W={width}: test error {result.final['test_error']:.4f} -> {acts}", quiet)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
