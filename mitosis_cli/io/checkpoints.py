"""Checkpoints: tensors, numbers and strings only, loaded with `weights_only=True` so a file never runs code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from mitosis_cli.errors import InputError
from mitosis_cli.io.atomic import atomic_path

FORMAT = "mitosis-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "config", "epoch", "model")


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write `payload` (plus format tags) atomically with `torch.save`."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # To a file object, not a path: torch names the zip's records after the path (here a random temporary
        # name), which made the same weights give different bytes (and sha256) on every save.
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, fh)
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
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
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
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    payload = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a mitosis checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format_version {payload.get('format_version')!r} is not supported")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise InputError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload
