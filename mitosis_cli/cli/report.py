"""`mitosis report`: figures and a one-file HTML report from the clones, ensemble and history tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitosis_cli.cli import options
from mitosis_cli.cli.console import emit_json, say


def report(
    tables: Annotated[list[Path], typer.Argument(help="Parquet tables (clones, clones-summary, ensemble, history) or folders holding them.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write (index.html, summary.md, figures/).")] = Path("report"),
    title: Annotated[str, typer.Option("--title", help="Title of the report.")] = "Representation mitosis report",
    force: options.Force = False,
    quiet: options.Quiet = False,
    json_out: options.Json = False,
) -> None:
    """Draw the paper's figures from the tables and write REPORT/index.html (self-contained), summary.md and
    figures/*.png|svg. Any subset of tables works; figures whose table is missing are skipped.

    Example: mitosis report clones.parquet clones-summary.parquet ensemble.parquet runs/*/history.parquet -o report/
    """
    from mitosis_cli.report.build import build_report  # matplotlib is heavy: load it only for this command

    result = build_report(tables, out, title=title, force=force,
                          on_figure=lambda name: say(f"  figure {name}", quiet))
    for note in result.notes:
        say(f"note: {note}", quiet)
    if result.skipped:
        say(f"{out}: report already up to date for these tables and options; skipped (--force to redo)", quiet)
    else:
        say(f"report -> {out / 'index.html'} ({len(result.figures)} figures, summary.md, figures/)", quiet)
    if json_out:
        emit_json(result.to_json())


def register(app: typer.Typer) -> None:
    app.command("report")(report)
