"""Options shared by the sub-commands, so they are spelled and documented one way, and the parsers of
their values (one per kind of value: `mitosis_cli.values`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mitosis_cli.values import parse_int_list

Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary of what was written on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No messages or progress on stderr.")]
Force = Annotated[bool, typer.Option("--force", help="Redo the work even if the output exists; replace an output made "
                                                     "from other inputs or options.")]
Threads = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="CPU threads for torch (default: the usable CPUs, at most 8)."),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto picks cuda when available).")]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder in torchvision's layout for real data sets (default: $MITOSIS_DATA_DIR)."),
]


def int_list(text: str | None, option: str, minimum: int = 0) -> tuple[int, ...] | None:
    """An integer-list option (``16,64``, ``0-3``, ``8-256:x2``), or None when not given."""
    return None if text is None else parse_int_list(text, option, minimum)
