"""Where and how the work runs: the torch device, CPU threads, memory returned to the system, and stopping
cleanly on SIGTERM/SIGINT from the first instant (torch is imported only when asked).

Signals, in the order a command meets them:

* `stop_before_start` (installed before the heavy imports): nothing is written yet, so a SIGTERM exits at
  once with `PREEMPTED_EXIT_CODE` (a job array requeues the task) and a SIGINT with 130, each with one line;
* `stop_on_signals` (while a command runs): SIGTERM raises `Preempted` and SIGINT `KeyboardInterrupt`
  where the program is, so temporaries and locks are removed on the way out; inside
  `signals_deferred` (an output's files being renamed into place) the signal waits for the block's end,
  and while a module is imported it is delivered again every 50 ms until the import is over (a
  `StopFlag` raises it at once: it came before the work);
* `StopFlag` (the training loop): the signal only sets a flag, and the loop saves a checkpoint first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mitosis_cli.errors import PREEMPTED_EXIT_CODE, InputError, Preempted

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")  # and cuda:N


def default_threads() -> int:
    """CPU threads for torch when `--threads` is not given: $MITOSIS_THREADS (a job script's or a test
    harness's choice for every command), else the CPUs this process may use, at most 8."""
    chosen = os.environ.get("MITOSIS_THREADS", "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise InputError(f"MITOSIS_THREADS={chosen!r} is not a positive number of threads",
                             hint="unset it, or give a whole number such as 1")
        return int(chosen)
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


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_deferral: dict[str, Any] = {"depth": 0, "pending": None, "importing": None}


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_now(signum: int, _frame: Any) -> None:
    """Before the command starts nothing is written: one line and the exit code, without unwinding imports."""
    code, what = (130, "interrupted") if signum == signal.SIGINT else (PREEMPTED_EXIT_CODE, "stopped by SIGTERM")
    os.write(2, f"mitosis: {what} before starting; nothing was written\n".encode())
    os._exit(code)


def stop_before_start() -> None:
    """Exit cleanly on SIGTERM/SIGINT until `stop_on_signals` takes over (call it before importing torch & co.).

    Only where the signals still have their default handling (a program that set its own keeps it).
    """
    if not _in_main_thread():
        return
    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signum, _exit_now)


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Preempted(f"stopped by {signal.Signals(signum).name}: no output was left half-written; "
                    "rerun the same command to continue (train: with --resume)")


_RETRY_SECONDS = 0.05


def _importing(frame: Any) -> bool:
    """Whether a module is being imported: its code may run inside a C++ call (torch's c10d set-up) that cannot
    unwind a Python exception and aborts the process instead (exit 134)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _deliver_again(signum: int) -> None:
    if _deferral["importing"] == signum:  # not raised meanwhile (`raise_held_signal`)
        os.kill(os.getpid(), signum)


def _raise_or_defer(signum: int, frame: Any) -> None:
    if _deferral["depth"]:
        _deferral["pending"] = signum
        return
    if _importing(frame):  # delivered again shortly, until the import is over
        _deferral["importing"] = signum
        retry = threading.Timer(_RETRY_SECONDS, _deliver_again, (signum,))
        retry.daemon = True
        retry.start()
        return
    _deferral["importing"] = None
    _raise_for(signum)


def raise_held_signal() -> None:
    """Raise now a signal held back because it came while a module was imported (before a `StopFlag` would
    turn it into a checkpoint: it came before the work)."""
    signum, _deferral["importing"] = _deferral["importing"], None
    if signum is not None:
        _raise_for(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While a command runs: SIGTERM raises `Preempted` (exit code 75), SIGINT `KeyboardInterrupt` (130).

    Raised where the program is, so every `with` on the way out removes its temporaries and locks. The
    previous handlers come back at the end. Outside the main thread (where Python cannot set handlers)
    nothing changes.
    """
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_or_defer) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT (as `stop_on_signals` handles them) until the block ends: for steps that must
    not be cut in two, such as renaming the files of one output into place."""
    _deferral["depth"] += 1
    try:
        yield
    except BaseException:
        _deferral["depth"] -= 1
        if not _deferral["depth"]:
            _deferral["pending"] = None  # the error on its way out ends the command anyway
        raise
    _deferral["depth"] -= 1
    pending = _deferral["pending"]
    if not _deferral["depth"] and pending is not None:
        _deferral["pending"] = None
        _raise_for(pending)


class StopFlag:
    """Set by SIGTERM/SIGINT while training, so the loop can save a checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        raise_held_signal()

        def handler(signum: int, _frame: Any) -> None:
            self.signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
