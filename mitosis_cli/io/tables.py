"""Parquet tables (long/tidy, one row per measured value) with provenance in the schema metadata."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mitosis_cli import __version__
from mitosis_cli.errors import InputError
from mitosis_cli.io.atomic import atomic_path
from mitosis_cli.io.paths import input_file
from mitosis_cli.io.stamp import Stamp

SCHEMA_VERSION = 1
_META_KEY = b"mitosis"


def file_sha256(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(input_file(path), "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def input_records(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, str]]:
    """[{path, sha256}] of input files, in the order given (tables list their inputs this way)."""
    return [{"path": str(p), "sha256": file_sha256(p)} for p in paths]


def provenance(kind: str, inputs: Sequence[Mapping[str, str]], options: Mapping[str, Any], command: str) -> dict[str, Any]:
    """The metadata every table carries.

    Parameters
    ----------
    kind : str
        The table's kind (``clones``, ``clones-summary``, ``ensemble``, ``history``).
    inputs : sequence of {path, sha256}
        The input files (see `input_records`).
    options : mapping
        The options that determine the table's numbers (they and the inputs make its `Stamp`).
    command : str
        The stage's own command line (`StageSettings.command`), also when a sweep or the demo ran it.
    """
    return {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "mitosis_version": __version__,
        "command": command,
        "inputs": [dict(item) for item in inputs],
        "options": dict(options),
    }


def table_stamp(meta: Mapping[str, Any], stage: str) -> Stamp | None:
    """The `Stamp` a table's metadata records (None when the metadata is not a mitosis table's)."""
    inputs, options = meta.get("inputs"), meta.get("options")
    if not isinstance(inputs, list) or not isinstance(options, dict) or not all(isinstance(i, dict) for i in inputs):
        return None
    return Stamp.of(stage, [str(i.get("sha256", "")) for i in inputs], options)


def write_table(path: str | os.PathLike[str], table: pa.Table, meta: dict[str, Any]) -> Path:
    """Write `table` to Parquet atomically, with `meta` (see `provenance`) as JSON in the schema metadata."""
    path = Path(path)
    merged = dict(table.schema.metadata or {})
    merged[_META_KEY] = json.dumps(meta, sort_keys=True).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(merged), tmp)
    return path


def _family(data_type: pa.DataType) -> str:
    """What a column holds, for the type check: integers, numbers (floats), text, nothing (all null), or other."""
    if pa.types.is_dictionary(data_type):  # a categorical column (pandas) holds its dictionary's type
        data_type = data_type.value_type
    for family, test in (("integers", pa.types.is_integer), ("numbers", pa.types.is_floating),
                         ("text", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)), ("nothing", pa.types.is_null)):
        if test(data_type):
            return family
    return str(data_type)


_ACCEPTS = {"integers": {"integers", "nothing"}, "numbers": {"numbers", "integers", "nothing"}, "text": {"text", "nothing"}}


def check_column_types(path: str | os.PathLike[str], table: pa.Table, schema: pa.Schema,
                       columns: Sequence[str] | None = None) -> None:
    """Refuse a column whose values are of another kind than `schema` says (words where numbers belong).

    Integer columns accept integers, float columns integers or floats, text columns text; a column of
    nulls only is accepted everywhere. Only `columns` (default: every field of `schema`) present in the
    table are checked.
    """
    for name in columns if columns is not None else schema.names:
        if name not in table.column_names or name not in schema.names:
            continue
        want, have = _family(schema.field(name).type), _family(table.schema.field(name).type)
        if have not in _ACCEPTS.get(want, {want}):
            raise InputError(f"{path}: column {name!r} holds {have} ({table.schema.field(name).type}), expected {want}")


def read_table(
    path: str | os.PathLike[str], kind: str | None = None, columns: Sequence[str] = (), schema: pa.Schema | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Read a mitosis Parquet table and its metadata, checking its kind, required columns and (with `schema`)
    the type of each column the schema names."""
    path = input_file(path, "a Parquet table")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0][:120]})") from err
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise InputError(f"{path}: not a mitosis table (no 'mitosis' schema metadata)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):  # damaged bytes need not even be UTF-8
        raise InputError(f"{path}: corrupt mitosis metadata") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: corrupt mitosis metadata (not a JSON object)")
    inputs, options = meta.get("inputs", []), meta.get("options", {})
    if not (isinstance(inputs, list) and all(isinstance(i, dict) for i in inputs)) or not isinstance(options, dict):
        raise InputError(f"{path}: corrupt mitosis metadata ('inputs' must be a list of objects, 'options' an object)")
    if kind is not None and meta.get("kind") != kind:
        raise InputError(f"{path}: is a {meta.get('kind')!r} table, expected {kind!r}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path}: schema_version {meta.get('schema_version')!r} is not supported "
                         f"(this mitosis reads {SCHEMA_VERSION})")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    if schema is not None:
        check_column_types(path, table, schema)
    return table, meta
