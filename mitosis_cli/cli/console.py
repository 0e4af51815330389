"""Where output goes: messages and progress to stderr, machine-readable JSON to stdout."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    import torch

stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # long paths stay on one line


def progress_bar(quiet: bool = False) -> Progress:
    """A rich progress bar on stderr, silent when `quiet` or when stderr is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=quiet or not stderr.is_terminal,
        transient=False,
    )


def say(message: str, quiet: bool = False) -> None:
    """A human message on stderr, unless quiet."""
    if not quiet:
        stderr.print(message)


def emit_json(payload: dict[str, Any]) -> None:
    """Print one JSON object on stdout (for `--json`)."""
    sys.stdout.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def default_threads() -> int:
    """CPU threads for torch: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default `default_threads()`); return the number used."""
    import torch

    n = threads or default_threads()
    torch.set_num_threads(n)
    return n


def pick_device(name: str) -> "torch.device":
    """`--device`: ``auto`` -> cuda when available, else cpu; a named device is checked (cpu or cuda only)."""
    import torch

    from mitosis_cli.errors import InputError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine", hint="use --device cpu")
    return device
