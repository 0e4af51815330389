"""`mitosis report`: not built yet."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("report", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def report() -> None:
        """Not available yet in this version."""
        from mitosis_cli.errors import InputError

        raise InputError("`mitosis report` is not available yet in this version")
