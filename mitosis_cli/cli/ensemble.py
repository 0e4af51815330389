"""`mitosis ensemble`: not built yet."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("ensemble", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def ensemble() -> None:
        """Not available yet in this version."""
        from mitosis_cli.errors import InputError

        raise InputError("`mitosis ensemble` is not available yet in this version")
