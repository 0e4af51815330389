"""Fault injection for the kill tests, loaded by `site` in a child `mitosis` process (PYTHONPATH).

It never changes what the tool does: it only watches, with a `sys.audit` hook, the file-system
operations the child makes under MITOSIS_FI_ROOT (opens for writing, mkstemp/mkdtemp, renames,
removals, chmod, rmtree) and

* appends one line per operation to MITOSIS_FI_LOG ("<index> <event> <monotonic time> <path>"), so the
  test can follow the child's progress and send it `kill -9` from outside at a chosen moment;
* with MITOSIS_FI_DIE_AT=n, sends itself SIGKILL at the n-th operation, *before* the operation runs:
  an exact crash point (e.g. between writing a temporary file and renaming it into place);
* with MITOSIS_FI_HOLD=FLAG, stops at its first temporary file or folder (made after the output lock is
  taken), creates FLAG.held and waits until FLAG exists: the concurrency tests run a second writer of the
  same output while this one holds its lock;
* with MITOSIS_FI_HOLD_AT=EVENT:NAME as well, holds so at the first audit event EVENT naming NAME instead
  (a module, or the base name of a path: ``import:torch``, ``os.rename:history.parquet``), wherever it is:
  a test then signals a child that is known to be at that point, so the signal cannot come too late.

SIGKILL runs no handler, no `finally`, no atexit: the same as `kill -9` from a shell.
"""

from __future__ import annotations

import os
import signal
import sys
import time

_ROOT = os.environ.get("MITOSIS_FI_ROOT", "")
_LOG = os.environ.get("MITOSIS_FI_LOG", "")
_DIE_AT = int(os.environ.get("MITOSIS_FI_DIE_AT", "0") or 0)
_HOLD = os.environ.get("MITOSIS_FI_HOLD", "")
_HOLD_EVENT, _, _HOLD_NAME = os.environ.get("MITOSIS_FI_HOLD_AT", "").partition(":")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WATCHED = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.truncate", "shutil.rmtree",
            "tempfile.mkstemp", "tempfile.mkdtemp", "shutil.move"}
_state = {"n": 0, "busy": False, "held": False}


def _is_write_open(args: tuple) -> bool:
    mode, flags = (args[1], args[2]) if len(args) >= 3 else (None, 0)
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool(isinstance(flags, int) and flags & _WRITE_FLAGS)


def _hold() -> None:
    """Say so (FLAG.held) and wait until the test creates FLAG."""
    _state["held"] = True
    os.close(os.open(_HOLD + ".held", os.O_WRONLY | os.O_CREAT, 0o644))
    deadline = time.monotonic() + 600
    while not os.path.exists(_HOLD) and time.monotonic() < deadline:
        time.sleep(0.01)


def _names(args: tuple, name: str) -> bool:
    return any(isinstance(a, (str, os.PathLike)) and os.path.basename(os.fspath(a)) == name for a in args[:2])


def _hook(event: str, args: tuple) -> None:
    if _state["busy"] or not args:
        return
    if _HOLD_EVENT and not _state["held"] and event == _HOLD_EVENT and _names(args, _HOLD_NAME):
        _state["busy"] = True
        try:
            _hold()
        finally:
            _state["busy"] = False
    if event == "open":
        if not _is_write_open(args):
            return
    elif event not in _WATCHED:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if not isinstance(path, (str, os.PathLike)):
        return
    path = os.fspath(path)
    if not os.path.abspath(path).startswith(_ROOT):
        return
    _state["busy"] = True  # the log write below must not re-enter the hook
    try:
        _state["n"] += 1
        n = _state["n"]
        if _LOG_FD is not None:
            os.write(_LOG_FD, f"{n} {event} {time.monotonic():.6f} {path}\n".encode())
        if n == _DIE_AT:
            os.kill(os.getpid(), signal.SIGKILL)
        if _HOLD and not _HOLD_EVENT and not _state["held"] and event in ("tempfile.mkstemp", "tempfile.mkdtemp"):
            _hold()
    finally:
        _state["busy"] = False


_LOG_FD = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if _LOG else None
if _ROOT or _HOLD_EVENT:
    sys.addaudithook(_hook)
