"""`mitosis report`: figures and a one-file HTML report from the clones, ensemble and history tables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, progress, say

if TYPE_CHECKING:
    from mitosis_cli.stages.report import ReportSettings


def report_settings(params: Mapping[str, Any]) -> ReportSettings:
    """The stage settings of the parsed options of `mitosis report` (the sweep parses its options so too)."""
    from mitosis_cli.stages.report import ReportSettings

    return ReportSettings(tables=tuple(params["tables"] or ()), out=params["out"], title=params["title"], force=params["force"])


def report(
    tables: Annotated[list[Path] | None, typer.Argument(metavar="TABLES...", help="Parquet tables (clones, clones-summary, ensemble, history) or folders holding them.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", rich_help_panel=options.OUTPUTS, help="Report folder to write (index.html, summary.md, figures/).")] = Path("report"),
    title: Annotated[str, typer.Option("--title", rich_help_panel=options.OUTPUTS, help="Title of the report.")] = "Representation mitosis report",
    force: options.Force = False,
    json_out: options.Json = False,
    progress_mode: options.Progress = "auto",
    quiet: options.Quiet = False,
) -> None:
    """Draw the paper's figures from the tables and write REPORT/index.html (self-contained), summary.md and
    figures/*.png|svg. Any subset of tables works; figures whose table is missing are skipped.

    Example: mitosis report results/clones results/ensemble.parquet runs/*/history.parquet -o results/report

    Example: mitosis report sweeps/mnist/mnist5k/clones --title 'MLPs on MNIST' -o report --json
    """
    from mitosis_cli.stages.report import run_report

    with progress(progress_mode, quiet) as on_step:
        result = run_report(report_settings(locals()), on_step)
    for note in result.notes:
        say(f"note: {note}", quiet)
    if result.skipped:
        say(f"{out}: report already up to date for these tables and options; skipped (--force to redo)", quiet)
    else:
        say(f"report -> {out / 'index.html'} ({len(result.figures)} figures, summary.md, figures/)", quiet)
    if json_out:
        emit_json(result.to_json())


def register(app: typer.Typer) -> None:
    options.register(app, "report", report)
