"""Where and how the work runs: the torch device, CPU threads, memory returned to the system, and stopping
cleanly on SIGTERM/SIGINT (torch is imported only when asked)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mitosis_cli.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")  # and cuda:N


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


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a named device is checked (cpu or cuda[:N] only)."""
    import torch

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


def return_freed_memory_to_os() -> None:
    """Give the C heap's free memory back to the system now (glibc's malloc_trim; a no-op elsewhere).

    glibc keeps freed blocks for reuse, which is fast, but after a phase of many large temporaries
    (the clones stage's per-chunk solves) its heap can hold hundreds of MiB that no longer serve
    anything: trimming at the end of such a phase keeps the peak RSS to what is live at once.
    (Serving every allocation of 1 MiB or more with mmap instead kept the heap small too, but cost
    a page fault per page of every temporary: 25 s of system time in a 90 s `clones` run.)
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StopFlag:
    """Set by SIGTERM/SIGINT while training, so the loop can save a checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        def handler(signum: int, _frame: Any) -> None:
            self.signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
