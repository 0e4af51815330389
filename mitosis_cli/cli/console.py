"""Where output goes: messages and progress to stderr, machine-readable JSON to stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from mitosis_cli.stages.base import OnStep, Progress

stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # long paths stay on one line


@contextmanager
def progress(quiet: bool = False) -> Iterator[OnStep]:
    """An `on_step` for a stage that draws its `Progress` events as bars on stderr (one per task).

    Silent when `quiet` or when stderr is not a terminal.
    """
    bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
              TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, disable=quiet or not stderr.is_terminal)
    tasks: dict[str, TaskID] = {}

    def on_step(event: Progress) -> None:
        total = event.total or None
        if event.task not in tasks:
            tasks[event.task] = bar.add_task(event.task, total=total, status="")
        bar.update(tasks[event.task], completed=event.done, total=total, status=event.status)

    with bar:
        yield on_step


def say(message: str, quiet: bool = False) -> None:
    """A human message on stderr, unless quiet."""
    if not quiet:
        stderr.print(message)


def emit_json(payload: dict[str, Any]) -> None:
    """Print one JSON object on stdout (for `--json`)."""
    sys.stdout.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
