"""Where output goes: messages and progress to stderr, machine-readable JSON to stdout.

Progress is drawn as bars on a terminal and as plain timestamped lines when stderr is a file (a SLURM or
cron log), one line per event: ``2025-05-01 10:08:11 TASK DONE/TOTAL STATUS (elapsed H:MM:SS)``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar
from rich.text import Text

from mitosis_cli.cli.options import PROGRESS_MODES
from mitosis_cli.errors import InputError
from mitosis_cli.stages.base import OnStep, Progress, no_progress

# Long paths stay on one line; tables in a log get room (rich would wrap them at 80 columns there).
stderr = Console(stderr=True, highlight=False, soft_wrap=True, width=None if os.isatty(2) else 140)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class _Remaining(ProgressColumn):
    """Time left at the task's average pace so far (rich's own estimate follows the last few steps, which
    misleads when steps differ in length, e.g. a demo's training runs and then its analysis)."""

    def render(self, task: Task) -> Text:
        if not task.total or not task.completed or task.finished or task.elapsed is None:
            return Text("")
        left = task.elapsed * (task.total - task.completed) / task.completed
        return Text(f"~{timedelta(seconds=round(left))} left", style="progress.remaining")


class _Lines:
    """Progress events as plain lines on stderr, each with the time and the time since its task began (a
    task begins when the one before it last reported: stages run their tasks one after another)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.last = time.monotonic()

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        start = self.started.setdefault(event.task, self.last)
        self.last = now
        step = " ".join(filter(None, [event.unit, f"{event.done}/{event.total}" if event.total else str(event.done)]))
        elapsed = timedelta(seconds=round(now - start))
        print(" ".join(filter(None, [_now(), event.task, step, event.status, f"(elapsed {elapsed})"])), file=sys.stderr, flush=True)


def use_lines(mode: str) -> bool:
    """Whether `--progress MODE` draws lines (auto: when stderr is not a terminal); refuse an unknown mode."""
    if mode not in PROGRESS_MODES:
        raise InputError(f"--progress {mode!r}: choose from {', '.join(PROGRESS_MODES)}")
    return mode == "lines" or (mode == "auto" and not stderr.is_terminal)


@contextmanager
def progress(mode: str = "auto", quiet: bool = False) -> Iterator[OnStep]:
    """An `on_step` for a stage that draws its `Progress` events on stderr (`--progress`): a bar per task,
    or a line per event; nothing when `quiet` or ``none``."""
    lines = use_lines(mode)
    if quiet or mode == "none":
        yield no_progress
        return
    if lines:
        yield _Lines()
        return
    bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
              TimeElapsedColumn(), _Remaining(), console=stderr)
    tasks: dict[str, TaskID] = {}
    last = [bar.get_time()]  # when the latest event came: a new task began then (its first event marks a step done)

    def on_step(event: Progress) -> None:
        total = max(event.total, event.done) or None  # a stage that does more than it announced never shows 5/4
        if event.task not in tasks:
            tasks[event.task] = bar.add_task(event.task, total=total, status="")
            next(t for t in bar.tasks if t.id == tasks[event.task]).start_time = last[0]
        bar.update(tasks[event.task], completed=event.done, total=total, status=event.status)
        last[0] = bar.get_time()

    with bar:
        yield on_step


def say(message: str, quiet: bool = False) -> None:
    """A human message on stderr, unless quiet; timestamped when stderr is a log rather than a terminal."""
    if quiet:
        return
    if stderr.is_terminal:
        stderr.print(message, markup=False)
    else:
        print(f"{_now()} {message}", file=sys.stderr, flush=True)


def emit_json(payload: dict[str, Any]) -> None:
    """Print one JSON object on stdout (for `--json`)."""
    sys.stdout.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
