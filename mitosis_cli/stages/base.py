"""What every stage shares: progress events, and settings that know their own command line.

A stage is a plain function ``run_<stage>(settings, on_step=...) -> result``. It reports progress by
calling `on_step` with a `Progress` event (the command line draws them as a bar on a terminal, or
as plain lines in a log); it never prints. Its settings render the equivalent `mitosis` command
(`StageSettings.command`), which is what the tables record as their command, whoever ran the stage:
the command line, a sweep, the demo or a notebook.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class Progress:
    """One step of a stage's work.

    Attributes
    ----------
    task : str
        What is being worked on (``train``, a network's name, ``ensemble``).
    done, total : int
        Steps done of the task's total (0 when the total is not known in advance).
    status : str
        What the step was, in a few words.
    values : mapping
        Numbers of the step, e.g. a training epoch's losses and errors.
    unit : str
        What a step is (``epoch``, ``phase``), for a log line: ``epoch 3/100``.
    """

    task: str
    done: int
    total: int
    status: str = ""
    values: Mapping[str, float] = field(default_factory=dict)
    unit: str = ""


OnStep = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default `on_step`: ignore progress."""


def option_words(options: Iterable[tuple[str, Any]]) -> list[str]:
    """``[("epochs", 3), ("resume", True), ("augment", False), ("sizes", (1, 2))]`` -> command-line words.

    None leaves an option out; True gives the bare flag; False gives ``--no-NAME``, so a plain flag that
    is off is passed as None, and only on/off pairs (``--augment/--no-augment``) as False; a sequence is
    written comma-separated.
    """
    words: list[str] = []
    for name, value in options:
        if value is None:
            continue
        if value is True:
            words.append(f"--{name}")
        elif value is False:
            words.append(f"--no-{name}")
        elif isinstance(value, (list, tuple)):
            words.append(f"--{name}={','.join(str(v) for v in value)}")
        else:
            words.append(f"--{name}={value}")
    return words


class StageSettings(ABC):
    """Base of every stage's settings dataclass: the equivalent command line."""

    stage: ClassVar[str]

    @abstractmethod
    def to_argv(self) -> list[str]:
        """The `mitosis` arguments (program name excluded) that run the stage with these settings."""

    def command(self) -> str:
        """`to_argv` as one line of shell text, every word quoted."""
        return shlex.join(["mitosis", *self.to_argv()])

    def check(self) -> None:  # noqa: B027 - a stage whose options have no range to check keeps this one
        """Refuse option values no run of the stage can use (one `InputError` line naming the option), before
        any input is read or output touched; a sweep checks every step's settings before it runs the first."""


def paths_after_options(paths: Iterable[Path]) -> list[str]:
    """Positional paths after ``--``, so a path that starts with '-' never reads as an option."""
    return ["--", *(str(p) for p in paths)]
