"""Features that already exist, written by other tools: .npz, .npy, .pt and .safetensors files (`mitosis import`).

The arrays are found by name (`KEYS`)::

    train_features, test_features   float (N, W)   the layer studied; at least one split
    train_labels, test_labels       integer (N,)   with its split's features
    head_weight, head_bias          float (C, W), (C,)   optional, together: the trained last linear layer
    train_logits, test_logits       float (N, C)   optional (computed from the head when it is given)
    class_names                     strings (C,)   optional

- ``.npz``: one member per key (``np.savez``, compressed or not); members are read from the zip
  stream in row blocks, so the file is never loaded whole.
- ``.npy``: one file per key, ``[PREFIX]KEY.npy`` in one folder; pass any of them (or the folder, for
  files named ``KEY.npy``). Read in row blocks.
- ``.pt``: a dict of tensors (and ``class_names``, a list of strings) saved with ``torch.save``; read with
  ``weights_only=True`` and memory-mapped.
- ``.safetensors``: the tensors by key; ``class_names`` as a JSON list in the metadata. Sliced from the
  file (memory-mapped).

Every reader tells each array's shape and kind without reading it and streams row blocks, so N is
bounded by the disk, not the memory (the pages of a memory map count in the resident size, but they
are the kernel's file cache, given back under memory pressure). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mitosis_cli.errors import InputError
from mitosis_cli.io.checks import MAX_CLASSES
from mitosis_cli.io.paths import input_file
from mitosis_cli.io.tables import file_sha256

SPLIT_KEYS = ("features", "labels", "logits")
KEYS = (*(f"{split}_{key}" for split in ("train", "test") for key in SPLIT_KEYS), "head_weight", "head_bias", "class_names")
FORMATS = (".npz", ".npy", ".pt", ".safetensors")


@dataclass(frozen=True)
class ArrayInfo:
    """An array's shape and kind (``f`` float, ``i`` integer, ``U`` strings, anything else refused)."""

    shape: tuple[int, ...]
    kind: str
    dtype: str  # for messages


def _kind(dtype: np.dtype[Any]) -> str:
    return "i" if dtype.kind == "u" else dtype.kind


def _blocks_of(array: Any, rows: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), rows):
        yield np.asarray(array[start : start + rows])


class FeatureDump:
    """The named arrays of one dump; subclasses read one format.

    Attributes
    ----------
    name : str
        The path given, for messages.
    files : list of Path
        The files read (their sha256 is the import's input).
    """

    name: str
    files: list[Path]

    def info(self) -> dict[str, ArrayInfo]:
        """Every known key's shape and kind (an unknown key raises `InputError`)."""
        raise NotImplementedError

    def blocks(self, key: str, rows: int) -> Iterator[np.ndarray]:
        """The array in blocks of `rows` rows, in order."""
        raise NotImplementedError

    def read(self, key: str) -> np.ndarray:
        """A whole (small) array: labels, the head, the class names (one block of all its rows)."""
        return next(self.blocks(key, max(1, self.info()[key].shape[0])))

    def sha256(self) -> str:
        """One digest of every file read: the file's, or for .npy files the digest of ``KEY sha256`` lines."""
        if len(self.files) == 1:
            return file_sha256(self.files[0])
        lines = "".join(f"{path.name}\t{file_sha256(path)}\n" for path in sorted(self.files))
        return hashlib.sha256(lines.encode()).hexdigest()


def _check_keys(name: str, keys: list[str]) -> None:
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise InputError(f"{name}: unknown key {unknown[0]!r}", hint=f"the keys are {', '.join(KEYS)}")


def _npy_header(fh: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype from the header of a .npy stream, leaving it at the data."""
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh)
    except ValueError as err:
        raise InputError(f"{where}: not a .npy array ({err})") from err
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (a pickle); save numbers or strings")
    return tuple(shape), bool(fortran), dtype


def _npy_info(fh: BinaryIO, where: str) -> ArrayInfo:
    shape, _, dtype = _npy_header(fh, where)
    return ArrayInfo(shape, _kind(dtype), str(dtype))


def _npy_blocks(fh: BinaryIO, rows: int, where: str) -> Iterator[np.ndarray]:
    """Row blocks of a .npy stream, read in order: a block in memory at a time, never the whole array.

    (Reads rather than a memory map: the pages of a map count in the process's resident memory.) A
    Fortran-ordered array's bytes are column-major and cannot be cut into rows: it is read whole.
    """
    shape, fortran, dtype = _npy_header(fh, where)
    if fortran:
        yield from _blocks_of(np.frombuffer(fh.read(), dtype=dtype).reshape(shape, order="F"), rows)
        return
    per_row = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    for start in range(0, shape[0], rows):
        count = min(rows, shape[0] - start)
        data = fh.read(count * per_row)
        if len(data) != count * per_row:
            raise InputError(f"{where}: truncated ({start + len(data) // max(per_row, 1)} of {shape[0]} rows)")
        yield np.frombuffer(data, dtype=dtype).reshape((count, *shape[1:]))


class _NpzDump(FeatureDump):
    """An .npz file, each member streamed from the zip archive (stored or deflated)."""

    def __init__(self, path: Path) -> None:
        self.name, self.files = str(path), [path]
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.endswith(".npy")]
                _check_keys(self.name, [m.removesuffix(".npy") for m in members])
                self._info = {}
                for member in members:
                    with archive.open(member) as fh:
                        self._info[member.removesuffix(".npy")] = _npy_info(fh, f"{path}: {member}")
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            detail = (str(err).splitlines() or ["damaged"])[0][:100]
            raise InputError(f"{path}: not a readable .npz file ({detail})") from err

    def info(self) -> dict[str, ArrayInfo]:
        return self._info

    def blocks(self, key: str, rows: int) -> Iterator[np.ndarray]:
        try:  # a damaged member shows only when it is read: a bad CRC, a truncated or corrupt deflate stream
            with zipfile.ZipFile(self.files[0]) as archive, archive.open(key + ".npy") as fh:
                yield from _npy_blocks(fh, rows, f"{self.name}: {key}")
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
            detail = (str(err).splitlines() or [type(err).__name__])[0][:100]
            raise InputError(f"{self.name}: {key} cannot be read ({detail})") from err


class _NpyDump(FeatureDump):
    """``[PREFIX]KEY.npy`` files in one folder, each read in row blocks."""

    def __init__(self, path: Path) -> None:
        folder, prefix = (path, "") if path.is_dir() else (path.parent, "")
        if not path.is_dir():
            key = next((k for k in KEYS if path.name.endswith(f"{k}.npy")), None)
            if key is None:
                raise InputError(f"{path}: a .npy file must be named [PREFIX]KEY.npy", hint=f"KEY is one of {', '.join(KEYS)}")
            prefix = path.name[: -len(key) - 4]
        self.name = str(path)
        self.files = sorted(p for p in (folder / f"{prefix}{k}.npy" for k in KEYS) if p.is_file())
        if not self.files:
            raise InputError(f"{path}: no KEY.npy files in this folder", hint=f"KEY is one of {', '.join(KEYS)}")
        self._paths = {file.name[len(prefix) : -4]: file for file in self.files}
        self._info = {}
        for key, file in self._paths.items():
            try:
                with open(file, "rb") as fh:
                    self._info[key] = _npy_info(fh, str(file))
            except OSError as err:
                raise InputError(f"{file}: not a readable .npy file ({err.strerror or err})") from err

    def info(self) -> dict[str, ArrayInfo]:
        return self._info

    def blocks(self, key: str, rows: int) -> Iterator[np.ndarray]:
        try:
            with open(self._paths[key], "rb") as fh:
                yield from _npy_blocks(fh, rows, str(self._paths[key]))
        except OSError as err:
            raise InputError(f"{self._paths[key]}: cannot be read ({err.strerror or err})") from err


class _TorchDump(FeatureDump):
    """A dict of tensors saved with torch.save, read with weights_only=True and memory-mapped."""

    def __init__(self, path: Path) -> None:
        import torch

        from mitosis_cli.io.checkpoints import load_torch_file

        self.name, self.files = str(path), [path]
        payload = load_torch_file(path, "feature file", mmap=True)
        if not isinstance(payload, dict):
            raise InputError(f"{path}: expected a dict of tensors by key, found a {type(payload).__name__}")
        _check_keys(self.name, [str(k) for k in payload])
        self._arrays: dict[str, Any] = {}
        for key, value in payload.items():
            if key == "class_names" and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                self._arrays[key] = np.asarray(value, dtype=str)
            elif isinstance(value, torch.Tensor):
                self._arrays[key] = value
            else:
                raise InputError(f"{path}: {key} is a {type(value).__name__}, expected a tensor"
                                 + (" or a list of strings" if key == "class_names" else ""))

    def info(self) -> dict[str, ArrayInfo]:
        import torch

        found = {}
        for key, value in self._arrays.items():
            if isinstance(value, torch.Tensor):
                kind = "f" if value.is_floating_point() else "i" if not value.is_complex() and value.dtype != torch.bool else "?"
                found[key] = ArrayInfo(tuple(value.shape), kind, str(value.dtype).removeprefix("torch."))
            else:
                found[key] = ArrayInfo(value.shape, "U", str(value.dtype))
        return found

    def blocks(self, key: str, rows: int) -> Iterator[np.ndarray]:
        import torch

        value = self._arrays[key]
        for start in range(0, len(value), rows):
            block = value[start : start + rows]
            if isinstance(block, torch.Tensor):
                block = block.float() if block.dtype in (torch.bfloat16, torch.float16) else block  # numpy has no bfloat16
                block = block.numpy()
            yield block


_SAFETENSORS_KINDS = {"F16": "f", "BF16": "f", "F32": "f", "F64": "f", "I8": "i", "I16": "i", "I32": "i", "I64": "i", "U8": "i",
                      "U16": "i", "U32": "i", "U64": "i"}


class _SafetensorsDump(FeatureDump):
    """A .safetensors file: tensors sliced from the file; class_names from its metadata (a JSON list)."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open

        self.name, self.files = str(path), [path]
        try:
            with safe_open(path, framework="pt") as fh:
                keys = list(fh.keys())
                _check_keys(self.name, keys)
                slices = {k: fh.get_slice(k) for k in keys}
                self._info = {k: ArrayInfo(tuple(t.get_shape()), _SAFETENSORS_KINDS.get(t.get_dtype(), "?"), t.get_dtype())
                              for k, t in slices.items()}
                metadata = fh.metadata() or {}
        except (SafetensorError, OSError) as err:
            detail = (str(err).splitlines() or [type(err).__name__])[0][:100]
            raise InputError(f"{path}: not a readable .safetensors file ({detail})") from err
        self._names = None
        if "class_names" in metadata:
            try:
                names = json.loads(metadata["class_names"])
            except json.JSONDecodeError:
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise InputError(f"{path}: metadata class_names must be a JSON list of strings")
            self._names = np.asarray(names, dtype=str)
            self._info["class_names"] = ArrayInfo(self._names.shape, "U", "str")

    def info(self) -> dict[str, ArrayInfo]:
        return self._info

    def blocks(self, key: str, rows: int) -> Iterator[np.ndarray]:
        import torch
        from safetensors import safe_open

        if key == "class_names" and self._names is not None:
            yield self._names
            return
        with safe_open(self.files[0], framework="pt") as fh:
            sliced = fh.get_slice(key)
            total = sliced.get_shape()[0]
            for start in range(0, total, rows):
                block = sliced[start : min(total, start + rows)]
                yield (block.float() if block.dtype in (torch.bfloat16, torch.float16) else block).numpy()


@dataclass(frozen=True)
class DumpLayout:
    """What a dump holds, checked: its splits and rows, W, C, whether it has the head and logits, class names."""

    rows: dict[str, int]
    width: int
    num_classes: int
    has_head: bool
    has_logits: bool
    class_names: tuple[str, ...]
    labels: dict[str, np.ndarray]  # read whole (8 bytes a row) to check them against C


def _expect(dump: FeatureDump, key: str, kind: str, shape: tuple[int | None, ...]) -> tuple[int, ...]:
    """The shape of `key`, checked against `kind` and `shape` (None: any size there)."""
    info = dump.info()[key]
    kinds = {"f": "floating point", "i": "integer", "U": "strings"}
    if info.kind != kind:
        raise InputError(f"{dump.name}: {key} has dtype {info.dtype}, expected {kinds[kind]}")
    wanted = "(" + ", ".join("N" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
    if len(info.shape) != len(shape) or any(n is not None and n != m for n, m in zip(shape, info.shape, strict=True)):
        raise InputError(f"{dump.name}: {key} has shape {info.shape}, expected {wanted}")
    return info.shape


def check_dump(dump: FeatureDump, num_classes: int | None = None) -> DumpLayout:
    """Check every key's presence, kind and shape against the others (one `InputError` line at the first problem).

    C is the head's rows, else the logits' columns, else the number of class names, else `num_classes`,
    else the largest label + 1. Labels are read and must lie in [0, C).
    """
    keys = dump.info()
    splits = [s for s in ("train", "test") if any(f"{s}_{k}" in keys for k in SPLIT_KEYS)]
    for split in splits:
        for key in ("features", "labels"):
            if f"{split}_{key}" not in keys:
                raise InputError(f"{dump.name}: {split} has no {split}_{key} (a split needs its features and labels)")
    if not splits:
        raise InputError(f"{dump.name}: no train_features or test_features", hint=f"the keys are {', '.join(KEYS)}")
    rows, width = {}, None
    for split in splits:
        n, width = _expect(dump, f"{split}_features", "f", (None, width))
        if n < 2:
            raise InputError(f"{dump.name}: {split}_features has {n} rows; at least 2 are needed")
        if width < 1:
            raise InputError(f"{dump.name}: {split}_features has no columns")
        rows[split] = n
        _expect(dump, f"{split}_labels", "i", (n,))
    assert width is not None  # at least one split
    if ("head_weight" in keys) != ("head_bias" in keys):
        raise InputError(f"{dump.name}: give head_weight and head_bias together, or neither")
    classes = [num_classes] if num_classes is not None else []
    if "head_weight" in keys:
        classes = [_expect(dump, "head_weight", "f", (None, width))[0]]
        _expect(dump, "head_bias", "f", (classes[0],))
    with_logits = [s for s in splits if f"{s}_logits" in keys]
    if with_logits and len(with_logits) != len(splits):
        missing = next(s for s in splits if s not in with_logits)
        raise InputError(f"{dump.name}: {with_logits[0]}_logits but no {missing}_logits: give logits for every split or none")
    for split in with_logits:
        classes = classes or [_expect(dump, f"{split}_logits", "f", (rows[split], None))[1]]
        _expect(dump, f"{split}_logits", "f", (rows[split], classes[0]))
    names: tuple[str, ...] = ()
    if "class_names" in keys:
        classes = classes or [_expect(dump, "class_names", "U", (None,))[0]]
        _expect(dump, "class_names", "U", (classes[0],))
        names = tuple(str(n) for n in dump.read("class_names"))
    labels = {split: dump.read(f"{split}_labels").astype(np.int64) for split in splits}
    from_labels = not classes
    if from_labels:
        classes = [int(max(int(lab.max()) for lab in labels.values())) + 1]
    if classes[0] < 1:
        raise InputError(f"{dump.name}: the head has no rows (C = 0)")
    if classes[0] > MAX_CLASSES:
        raise InputError(f"{dump.name}: {classes[0]} classes{' (its largest label + 1)' if from_labels else ''}; "
                         f"mitosis reads at most {MAX_CLASSES}")
    for split, lab in labels.items():
        if lab.min() < 0 or lab.max() >= classes[0]:
            raise InputError(f"{dump.name}: {split}_labels outside [0, {classes[0]})")
    return DumpLayout(rows, width, classes[0], "head_weight" in keys, bool(with_logits) or "head_weight" in keys, names, labels)


def open_dump(path: Path) -> FeatureDump:
    """The reader for `path` by its suffix (a folder: its ``KEY.npy`` files)."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not path.is_dir():
        input_file(path, f"a feature dump ({', '.join(FORMATS)})")
    suffix = ".npy" if path.is_dir() else path.suffix.lower()
    readers = {".npz": _NpzDump, ".npy": _NpyDump, ".pt": _TorchDump, ".pth": _TorchDump, ".safetensors": _SafetensorsDump}
    if suffix not in readers:
        raise InputError(f"{path}: unknown format {suffix or '(no suffix)'!r}", hint=f"import one of {', '.join(FORMATS)}")
    return readers[suffix](path)
