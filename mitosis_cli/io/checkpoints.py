"""Checkpoints: tensors, numbers and strings only, loaded with `weights_only=True` so a file never runs code.

Every field a mitosis checkpoint may hold is checked for its type and range when it is loaded
(`FIELDS`), and `check_resume` checks that an unfinished run holds everything a resume needs, so a
damaged or hand-edited checkpoint is one line naming the file and the field, never a failure deep in torch.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mitosis_cli.errors import InputError
from mitosis_cli.io.atomic import atomic_path
from mitosis_cli.io.paths import input_file

FORMAT = "mitosis-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "config", "epoch", "model")
RESUME = ("optimizer", "step_in_epoch", "order_rng", "aug_rng", "history")  # an unfinished run's state


def _integer(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _rng_state(value: Any) -> bool:
    want = torch.Generator().get_state()
    return isinstance(value, torch.Tensor) and value.dtype == want.dtype and value.shape == want.shape


def _optimizer_state(value: Any) -> bool:
    groups = value.get("param_groups") if isinstance(value, dict) else None
    return (isinstance(value.get("state") if isinstance(value, dict) else None, dict) and isinstance(groups, list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups))


def _json_object(value: Any) -> bool:
    try:
        return isinstance(value, str) and isinstance(json.loads(value), dict)
    except json.JSONDecodeError:
        return False


def _history(value: Any) -> bool:
    try:
        rows = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        return False
    return isinstance(rows, list) and all(
        isinstance(row, dict) and {"epoch", "train_error"} <= set(row)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values()) for row in rows)


# field -> (check, what it must be)
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "config": (_json_object, "a JSON object (the training configuration)"),
    "epoch": (lambda v: _integer(v, 0), "a non-negative integer"),
    "model": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()),
              "a mapping of parameter names to tensors"),
    "num_classes": (lambda v: _integer(v, 1), "a positive integer"),
    "input_shape": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_integer(d, 1) for d in v),
                    "a list of positive integers"),
    "finished": (lambda v: isinstance(v, bool), "true or false"),
    "step_in_epoch": (lambda v: _integer(v, 0), "a non-negative integer"),
    "seconds_in_epoch": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                         "a non-negative number"),
    "zero_error_epoch": (lambda v: _integer(v, -1), "an integer >= -1"),
    "optimizer": (_optimizer_state, "an optimizer state (state and param_groups)"),
    "order_rng": (_rng_state, "a random-generator state (a uint8 tensor)"),
    "aug_rng": (_rng_state, "a random-generator state (a uint8 tensor)"),
    "history": (_history, "a JSON list of per-epoch rows (epoch, train_error, ...)"),
}


class _WriteRecorder:
    """A file object that remembers the system's error of a failed write: torch.save turns it into a
    RuntimeError ("unexpected pos ...") that names neither the file nor the reason."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as err:
            self.error = self.error or err
            raise


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write `payload` (plus format tags) atomically with `torch.save`.

    A failed write (full disk, file-size limit) raises the system's `OSError`, which `atomic_path` reports
    as one line naming `path` and the reason.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # To a file object, not a path: torch names the zip's records after the path (here a random temporary
        # name), which made the same weights give different bytes (and sha256) on every save.
        recorder = _WriteRecorder(fh)
        try:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, recorder)  # type: ignore[arg-type]
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise
    return path


def load_torch_file(path: str | os.PathLike[str], what: str = "checkpoint", map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> Any:
    """`torch.load` with `weights_only=True`: tensors, numbers, strings and containers of them, never code.

    Parameters
    ----------
    path : path-like
        The file (a checkpoint, someone's weights, a feature dump).
    what : str
        What the file is, for the messages ("checkpoint", "weights file").
    mmap : bool
        Map the tensors' storage from the file instead of reading it (files in torch's zip format; older
        files are read whole), so a large file costs address space, not memory.

    Raises
    ------
    InputError
        Missing file, not a torch file, truncated, or a pickle that holds code (a class or function).
    """
    path = input_file(path, f"a {what}")
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if not mmap or "mmap" not in str(err):
                raise
            return torch.load(path, map_location=map_location, weights_only=True)  # the legacy format cannot be mapped
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():  # a pickled class or function, not data
            raise InputError(f"{path}: refused: the {what} holds objects other than tensors and plain values "
                             f"(it could run code when loaded)") from err
        raise InputError(f"{path}: not a readable {what} (not a torch file, or corrupt)") from err
    except Exception as err:
        # torch's weights-only unpickler fails on garbage with any error (IndexError, KeyError, struct.error, ...
        # besides RuntimeError/EOFError/BadZipFile): all of them mean an unreadable file.
        detail = (str(err).splitlines() or [type(err).__name__])[0][:100]  # an empty file raises EOFError("")
        raise InputError(f"{path}: not a readable {what} (truncated or corrupt: {detail})") from err


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a mitosis checkpoint; anything else (or a file that tries to run code) is refused.

    Raises
    ------
    InputError
        Missing file, not a checkpoint, an unsafe pickle, or a checkpoint of another format.
    """
    path = input_file(path, "a checkpoint file")
    payload = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a mitosis checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format_version {payload.get('format_version')!r} is not supported")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise InputError(f"{path}: checkpoint lacks {', '.join(missing)}")
    for key, (ok, what) in FIELDS.items():
        if key in payload and not ok(payload[key]):
            raise InputError(f"{path}: checkpoint field {key!r} must be {what}, found {_short(payload[key])}")
    return payload


def check_resume(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Refuse a checkpoint that lacks what continuing its run needs (an unfinished run: the optimizer and
    random states, the step and the history; a finished one: its history)."""
    needed = ("history",) if payload.get("finished") else RESUME
    missing = [key for key in needed if key not in payload]
    if missing:
        raise InputError(f"{path}: checkpoint lacks {', '.join(missing)}, needed to continue its run",
                         hint="use --force to start the run over")


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
