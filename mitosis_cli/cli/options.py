"""Options shared by every sub-command, so they are spelled and documented one way."""

from typing import Annotated, Optional

import typer

Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary of what was written on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No messages or progress on stderr.")]
Force = Annotated[bool, typer.Option("--force", help="Redo the work even if the output exists for the same inputs.")]
Threads = Annotated[
    Optional[int],
    typer.Option("--threads", min=1, help="CPU threads for torch (default: the usable CPUs, at most 8)."),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto picks cuda when available).")]
