"""A generated corpus of broken inputs for every reader: exit 2, one line naming the file, nothing written.

Every case runs the real command line in-process (`mitosis_cli.cli.app.main`), and a few of them
again through the console script. For each: the exit code is 2 (bad input), stderr has exactly one
``mitosis: error:`` line that names the broken file and the problem, no traceback, and the folder
holds exactly the files it held before (no output, no temporary, no lock).

Activation-file cases run through both readers that take them (`clones`, and `ensemble` beside a
good member); checkpoint cases through `extract`; table cases through `report` and
`clones --ensemble`. Real I/O failures (a full disk, a failing write) are exit 1 with one line:
see `test_full_disk_*` and `test_write_error_*`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mitosis_cli.io.tables import provenance, write_table

from .conftest import (
    MITOSIS,
    TINY_CLONES,
    TINY_ENSEMBLE,
    TINY_TRAIN,
    Result,
    RunCli,
    assert_clean_failure,
    child_env,
    planted_acts,
    record,
    snapshot,
    tmpfs,
)

# ------------------------------------------------------------------------------- activation files (HDF5)


def _edit(path: Path, fn: Callable[[h5py.File], None]) -> Path:
    planted_acts(path, seed=5)  # another seed than the good member, so `ensemble` gets as far as the damage
    with h5py.File(path, "r+") as f:
        fn(f)
    return path


def _replace(name: str, data: np.ndarray) -> Callable[[h5py.File], None]:
    def fn(f: h5py.File) -> None:
        del f[name]
        f.create_dataset(name, data=data)
    return fn


def _set_value(name: str, index: tuple[int, ...], value: float) -> Callable[[h5py.File], None]:
    def fn(f: h5py.File) -> None:
        data = f[name][...]
        data[index] = value
        f[name][...] = data
    return fn


def _truncate(path: Path, keep: float) -> Path:
    planted_acts(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _random_bytes(path: Path, size: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def _hdf5_magic_then_garbage(path: Path) -> Path:
    planted_acts(path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(7)
    for i in rng.integers(64, len(data), 200):  # keep the signature, scramble the rest
        data[i] = int(rng.integers(0, 256))
    path.write_bytes(bytes(data))
    return path


def _labels_shuffled(path: Path) -> Path:
    """A member that saw the same samples in another order (only `ensemble` can tell)."""
    planted_acts(path, seed=5)
    with h5py.File(path, "r+") as f:
        for split in ("train", "test"):
            order = np.random.default_rng(3).permutation(f[f"{split}/labels"].shape[0])
            for key in ("features", "logits", "labels"):
                f[f"{split}/{key}"][...] = f[f"{split}/{key}"][...][order]
    return path


def _foreign_hdf5(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((4, 4)))
    return path


def _attr(key: str, value: object) -> Callable[[h5py.File], None]:
    def fn(f: h5py.File) -> None:
        if value is None:
            del f.attrs[key]
        else:
            f.attrs[key] = value
    return fn


def _delete(name: str) -> Callable[[h5py.File], None]:
    def fn(f: h5py.File) -> None:
        del f[name]
    return fn


def _n_rows(n: int) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        return planted_acts(path, n=n, seed=5) if n > 0 else _empty_split(path)
    return make


def _empty_split(path: Path) -> Path:
    planted_acts(path, n=4, seed=5)
    with h5py.File(path, "r+") as f:
        for split in ("train", "test"):
            for key, shape, dtype in (("features", (0, 16), np.float32), ("logits", (0, 3), np.float32),
                                      ("labels", (0,), np.int64)):
                del f[f"{split}/{key}"]
                f.create_dataset(f"{split}/{key}", shape=shape, dtype=dtype)
    return path


@dataclass(frozen=True)
class ActsCase:
    name: str
    make: Callable[[Path], Path]
    problem: str  # a word the error line must contain
    ensemble_only: bool = False


ACTS_CASES = [
    ActsCase("empty file", lambda p: (p.write_bytes(b""), p)[1], "not a readable HDF5"),
    ActsCase("random bytes", _random_bytes, "not a readable HDF5"),
    ActsCase("truncated to 50%", lambda p: _truncate(p, 0.5), "HDF5"),
    ActsCase("truncated to 95%", lambda p: _truncate(p, 0.95), "HDF5"),
    ActsCase("signature kept, body scrambled", _hdf5_magic_then_garbage, ""),
    ActsCase("a foreign HDF5 file", _foreign_hdf5, "not a mitosis activation file"),
    ActsCase("format attribute wrong", lambda p: _edit(p, _attr("format", "something-else")), "format"),
    ActsCase("format attribute missing", lambda p: _edit(p, _attr("format", None)), "format"),
    ActsCase("format_version 2", lambda p: _edit(p, _attr("format_version", 2)), "format_version"),
    ActsCase("width attribute 0", lambda p: _edit(p, _attr("width", 0)), "width"),
    ActsCase("width attribute a string", lambda p: _edit(p, _attr("width", "16")), "width"),
    ActsCase("num_classes missing", lambda p: _edit(p, _attr("num_classes", None)), "num_classes"),
    ActsCase("config not JSON", lambda p: _edit(p, _attr("config", "{not json")), "config"),
    ActsCase("no split", lambda p: _edit(p, lambda f: (f.__delitem__("train"), f.__delitem__("test"))), "no split"),
    ActsCase("missing /head/weight", lambda p: _edit(p, _delete("head/weight")), "head/weight"),
    ActsCase("missing /head/bias", lambda p: _edit(p, _delete("head/bias")), "head/bias"),
    ActsCase("missing /test/features", lambda p: _edit(p, _delete("test/features")), "features"),
    ActsCase("missing /train/logits", lambda p: _edit(p, _delete("train/logits")), "train/logits"),
    ActsCase("missing /test/labels", lambda p: _edit(p, _delete("test/labels")), "test/labels"),
    ActsCase("features int32", lambda p: _edit(p, _replace("test/features", np.ones((160, 16), np.int32))), "dtype"),
    ActsCase("labels float", lambda p: _edit(p, _replace("test/labels", np.zeros(160, np.float32))), "dtype"),
    ActsCase("features one column short", lambda p: _edit(p, _replace("test/features", np.ones((160, 15), np.float32))), "shape"),
    ActsCase("features 1-D", lambda p: _edit(p, _replace("test/features", np.ones(160, np.float32))), "shape"),
    ActsCase("logits one row short", lambda p: _edit(p, _replace("train/logits", np.ones((159, 3), np.float32))), "shape"),
    ActsCase("head weight transposed", lambda p: _edit(p, _replace("head/weight", np.ones((16, 3), np.float32))), "shape"),
    ActsCase("N = 0", _n_rows(0), "rows"),
    ActsCase("N = 1", _n_rows(1), "rows"),
    ActsCase("NaN in features", lambda p: _edit(p, _set_value("test/features", (5, 3), np.nan)), "NaN"),
    ActsCase("+Inf in features", lambda p: _edit(p, _set_value("train/features", (0, 0), np.inf)), "Inf"),
    # `clones` never reads the logits (it scores chunks with the head), so only `ensemble` must refuse them
    ActsCase("-Inf in logits", lambda p: _edit(p, _set_value("test/logits", (9, 1), -np.inf)), "Inf", ensemble_only=True),
    ActsCase("NaN in head weight", lambda p: _edit(p, _set_value("head/weight", (0, 0), np.nan)), "NaN"),
    ActsCase("Inf in head bias", lambda p: _edit(p, _set_value("head/bias", (1,), np.inf)), "Inf"),
    ActsCase("label = C", lambda p: _edit(p, _set_value("test/labels", (0,), 3)), "labels"),
    ActsCase("label negative", lambda p: _edit(p, _set_value("train/labels", (7,), -1)), "labels"),
    ActsCase("a directory", lambda p: (p.mkdir(), p)[1], "directory"),
    ActsCase("a missing path", lambda p: p, "no such file"),
    ActsCase("samples in another order", _labels_shuffled, "order", ensemble_only=True),
    ActsCase("another number of samples", lambda p: planted_acts(p, n=150, seed=5), "samples", ensemble_only=True),
    ActsCase("another number of classes", lambda p: planted_acts(p, classes=4, seed=5), "classes", ensemble_only=True),
    ActsCase("the same network twice", lambda p: planted_acts(p, seed=0), "seed", ensemble_only=True),
]


def _acts_commands() -> list[tuple[str, ActsCase]]:
    return [(cmd, case) for case in ACTS_CASES for cmd in ("clones", "ensemble") if cmd == "ensemble" or not case.ensemble_only]


@pytest.mark.parametrize("command, case", _acts_commands(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_broken_activation_file(tmp_path: Path, cli: RunCli, command: str, case: ActsCase) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = planted_acts(inputs / "good.h5", seed=0)
    bad = case.make(inputs / "bad.h5")
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    if command == "clones":
        result = cli("clones", bad, *TINY_CLONES, "-o", out)
    else:
        result = cli("ensemble", good, bad, *TINY_ENSEMBLE, "-o", out / "ensemble.parquet")
    assert_clean_failure(result, bad, problem=case.problem)
    assert snapshot(tmp_path) == before and not out.exists()
    record(f"bad_input.{command}")
    record("bad_input.total")


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mitosis_cli.cli.app import main

    run = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *TINY_TRAIN, "-o", str(run)]) == 0
    return run


class _Trap:
    """Unpickling this calls os.system: a checkpoint that runs code if loaded with plain pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _ckpt_edit(run: Path, path: Path, **changes: object) -> Path:
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    payload.update(changes)
    for key, value in list(payload.items()):
        if value is _DROP:
            del payload[key]
    torch.save(payload, path)
    return path


_DROP = object()


def _other_architecture(run: Path, path: Path) -> Path:
    """Weights of a width-16 MLP under a config that says width 24."""
    import json

    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    cfg = json.loads(payload["config"])
    cfg["width"] = 24
    payload["config"] = json.dumps(cfg)
    torch.save(payload, path)
    return path


def _truncated_ckpt(run: Path, path: Path, keep: float) -> Path:
    data = (run / "checkpoint.pt").read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _zip_entry_corrupt(run: Path, path: Path) -> Path:
    """A valid zip container whose data record is flipped: torch's CRC or unpickler must refuse it."""
    import struct

    data = bytearray((run / "checkpoint.pt").read_bytes())
    with zipfile.ZipFile(run / "checkpoint.pt") as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])  # local header
    start = info.header_offset + 30 + name_len + extra_len
    for i in range(start, start + min(info.compress_size, 40)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


CKPT_CASES: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    ("empty file", lambda run, p: (p.write_bytes(b""), p)[1], "checkpoint"),
    ("random bytes", lambda run, p: _random_bytes(p, 1000), "checkpoint"),
    ("plain pickle of a dict", lambda run, p: (p.write_bytes(pickle.dumps({"a": 1})), p)[1], "checkpoint"),
    ("truncated to 50%", lambda run, p: _truncated_ckpt(run, p, 0.5), "checkpoint"),
    ("truncated to 99%", lambda run, p: _truncated_ckpt(run, p, 0.99), "checkpoint"),
    ("data record corrupted", _zip_entry_corrupt, "checkpoint"),
    ("tensors only, not a mitosis checkpoint", lambda run, p: (torch.save({"w": torch.zeros(3)}, p), p)[1],
     "not a mitosis checkpoint"),
    ("format_version 2", lambda run, p: _ckpt_edit(run, p, format_version=2), "format_version"),
    ("no model weights", lambda run, p: _ckpt_edit(run, p, model=_DROP), "model"),
    ("config not JSON", lambda run, p: _ckpt_edit(run, p, config="{oops"), "config"),
    ("config with an unknown option", lambda run, p: _ckpt_edit(run, p, config='{"colour": "red"}'), "colour"),
    ("weights of another architecture", _other_architecture, "do not match"),
    ("a missing path", lambda run, p: p, "no such"),
]


@pytest.mark.parametrize("name, make, problem", CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_broken_checkpoint(
    tmp_path: Path, cli: RunCli, run_dir: Path, name: str, make: Callable[[Path, Path], Path], problem: str
) -> None:
    bad = make(run_dir, tmp_path / "bad.pt")
    before = snapshot(tmp_path)
    result = cli("extract", bad, "-o", tmp_path / "acts.h5", "--threads", "1", "--quiet")
    assert_clean_failure(result, bad, problem=problem)
    assert snapshot(tmp_path) == before
    record("bad_input.extract")
    record("bad_input.total")


# --------------------------------------------------------------------------------------- Parquet tables


def _history_like(path: Path, kind: str = "history", **meta_changes: object) -> Path:
    table = pa.table({"epoch": pa.array([1, 2], pa.int64()), "train_loss": [0.5, 0.2], "train_error": [0.1, 0.0],
                      "test_loss": [0.6, 0.4], "test_error": [0.2, 0.15], "lr": [0.1, 0.1], "seconds": [1.0, 1.0]})
    meta = provenance(kind, [], {"config": {"arch": "mlp", "dataset": "x", "width": 8, "seed": 0}}, "") | meta_changes
    write_table(path, table, meta)
    return path


def _with_metadata(path: Path, raw: bytes) -> Path:
    table = pa.table({"epoch": [1]})
    pq.write_table(table.replace_schema_metadata({b"mitosis": raw}), path)
    return path


def _ensemble_table(
    path: Path, value_type: pa.DataType | None = None, kind_value: str = "error-inf", value: object = 0.1
) -> Path:
    table = pa.table({"kind": [kind_value], "width": pa.array([16], pa.int64()), "members": pa.array([3], pa.int64()),
                      "repeat": pa.array([0], pa.int64()), "split": ["test"], "metric": ["error"],
                      "value": pa.array([value], value_type or pa.float64())})
    write_table(path, table, provenance("ensemble", [], {}, ""))
    return path


TABLE_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("empty file", lambda p: (p.write_bytes(b""), p)[1], "Parquet"),
    ("random bytes", lambda p: _random_bytes(p, 2048), "Parquet"),
    ("truncated", lambda p: (lambda q: (q.write_bytes(q.read_bytes()[:-40]), q)[1])(_history_like(p)), "Parquet"),
    ("foreign Parquet (no mitosis metadata)", lambda p: (pq.write_table(pa.table({"a": [1, 2]}), p), p)[1],
     "not a mitosis table"),
    ("metadata not JSON", lambda p: _with_metadata(p, b"{nope"), "metadata"),
    ("schema_version 99", lambda p: _history_like(p, schema_version=99), "schema_version"),
    ("history without rows", lambda p: (write_table(p, pa.table({c: pa.array([], pa.float64()) for c in
                                         ("epoch", "train_loss", "train_error", "test_loss", "test_error")}),
                                         provenance("history", [], {}, "")), p)[1], "empty"),
    ("history missing a column",
     lambda p: (write_table(p, pa.table({"epoch": [1]}), provenance("history", [], {}, "")), p)[1], "column"),
    ("only a table of an unknown kind", lambda p: _history_like(p, kind="mystery"), "nothing to report"),
    ("a directory without tables", lambda p: (p.mkdir(), p)[1], "no .parquet"),
    ("a missing path", lambda p: p, "no such file"),
]


@pytest.mark.parametrize("name, make, problem", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_broken_table_for_report(tmp_path: Path, cli: RunCli, name: str, make: Callable[[Path], Path], problem: str) -> None:
    bad = make(tmp_path / "bad.parquet")
    before = snapshot(tmp_path)
    result = cli("report", bad, "-o", tmp_path / "report", "--quiet")
    # "nothing to report" names no single file: the line lists what was found instead
    assert_clean_failure(result, "" if problem == "nothing to report" else bad, problem=problem)
    assert snapshot(tmp_path) == before and not (tmp_path / "report").exists()
    record("bad_input.report")
    record("bad_input.total")


ENSEMBLE_INPUT_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("random bytes", lambda p: _random_bytes(p, 512), "Parquet"),
    ("a history table", _history_like, "expected 'ensemble'"),
    ("value column of words", lambda p: _ensemble_table(p, pa.string(), value="n/a"), "value"),
    ("no error-inf row", lambda p: _ensemble_table(p, kind_value="wide"), "error-inf"),
]


@pytest.mark.parametrize("name, make, problem", ENSEMBLE_INPUT_CASES, ids=[c[0] for c in ENSEMBLE_INPUT_CASES])
def test_broken_ensemble_table_for_clones(
    tmp_path: Path, cli: RunCli, name: str, make: Callable[[Path], Path], problem: str
) -> None:
    acts = planted_acts(tmp_path / "acts.h5")
    bad = make(tmp_path / "bad.parquet")
    before = snapshot(tmp_path)
    result = cli("clones", acts, "--ensemble", bad, *TINY_CLONES, "-o", tmp_path / "out")
    assert_clean_failure(result, bad, problem=problem)
    assert snapshot(tmp_path) == before
    record("bad_input.clones_ensemble_table")
    record("bad_input.total")


# ------------------------------------------------------------------------------------------- edge sizes


def test_width_one_and_two_rows_are_measured_not_refused(tmp_path: Path, cli: RunCli) -> None:
    """W = 1 and N = 2 are legal (the smallest layer and split): every stage finishes with finite values."""
    import pyarrow.compute as pc

    from mitosis_cli.io.clone_tables import read_clones
    from mitosis_cli.io.ensemble_tables import read_ensemble_table

    narrow = [planted_acts(tmp_path / f"w1-s{s}.h5", width=1, clone_size=1, seed=s) for s in range(2)]
    tiny = planted_acts(tmp_path / "n2.h5", n=2, width=4, clone_size=2)
    assert cli("clones", narrow[0], *TINY_CLONES, "-o", tmp_path / "c1").code == 0
    assert cli("clones", tiny, "--repeats", "3", "--acc-repeats", "4", "--ii-points", "0", "--device", "cpu", "--quiet",
               "-o", tmp_path / "c2").code == 0
    assert cli("ensemble", *narrow, *TINY_ENSEMBLE, "-o", tmp_path / "e.parquet").code == 0
    for table in (read_clones(tmp_path / "c1" / "clones.parquet")[0], read_ensemble_table(tmp_path / "e.parquet")[0]):
        values = table["value"].to_numpy()
        assert len(values) and np.isfinite(values).all()
    r2 = read_clones(tmp_path / "c1" / "clones.parquet")[0]
    r2 = r2.filter(pc.equal(r2["metric"], "reconstruction_r2"))["value"].to_numpy()
    assert np.allclose(r2, 1.0)  # one neuron reconstructs itself
    record("bad_input.edge_sizes_accepted", 3)


# --------------------------------------------------------------------------- paths: unreadable, not writable


# Root reads a file of mode 000 by its capabilities CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: without them (and
# without a way to get them back) the child is still root, so it reaches every path but not the file's contents.
WITHOUT_READ_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                         "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_input(tmp_path: Path) -> None:
    acts = planted_acts(tmp_path / "acts.h5")
    acts.chmod(0)
    try:
        as_root = os.access(acts, os.R_OK)  # chmod alone blocks a user, not root: drop the capabilities that override it
        result = subprocess.run([*(WITHOUT_READ_OVERRIDE if as_root else []), str(MITOSIS), "clones", str(acts),
                                 *TINY_CLONES, "-o", str(tmp_path / "out")], env=child_env(), capture_output=True, text=True,
                                timeout=300)
        assert_clean_failure(Result(result.returncode, result.stdout, result.stderr), acts, problem="not readable")
        assert not (tmp_path / "out").exists()
        record("bad_input.total")
    finally:
        acts.chmod(0o644)


def test_output_below_a_file_is_refused(tmp_path: Path, cli: RunCli) -> None:
    """-o pointing inside a regular file: one line naming the target, exit 2, nothing written."""
    acts = planted_acts(tmp_path / "acts.h5")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    before = snapshot(tmp_path)
    assert_clean_failure(cli("clones", acts, *TINY_CLONES, "-o", blocker / "out"), blocker / "out", problem="cannot write")
    assert_clean_failure(cli("ensemble", acts, planted_acts(tmp_path / "b.h5", seed=1), *TINY_ENSEMBLE,
                             "-o", blocker / "e.parquet"),
                         blocker / "e.parquet", problem="cannot write")
    before["b.h5"] = snapshot(tmp_path)["b.h5"]
    assert snapshot(tmp_path) == before
    record("bad_input.total", 2)


# ------------------------------------------------------------------------------ real I/O failures: exit 1


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (needs root)."""
    with tmpfs(tmp_path / "full", "64k") as mnt:
        yield mnt


def test_full_disk_extract_fails_with_one_line_and_leaves_nothing(
    tmp_path: Path, tiny_fs: Path, cli: RunCli, run_dir: Path
) -> None:
    target = tiny_fs / "acts.h5"
    # 4 KiB left: HDF5 itself would crash the interpreter on the failed write, so extract must refuse up front
    (tiny_fs / "filler").write_bytes(b"\0" * (60 * 1024))
    result = cli("extract", run_dir, "-o", target, "--threads", "1", "--quiet")
    assert_clean_failure(result, target, code=1, problem="No space left on device")
    assert sorted(p.name for p in tiny_fs.iterdir()) in (["filler"], [".acts.h5.lock", "filler"])
    record("io_failure.total")


@pytest.mark.parametrize("command", ["clones", "ensemble", "report", "train"])
def test_full_disk_every_writer(tmp_path: Path, tiny_fs: Path, cli: RunCli, command: str) -> None:
    (tiny_fs / "filler").write_bytes(b"\0" * (62 * 1024))
    acts = [planted_acts(tmp_path / f"a{s}.h5", seed=s) for s in range(2)]
    if command == "clones":
        target, argv = tiny_fs / "clones", ["clones", acts[0], *TINY_CLONES]
    elif command == "ensemble":
        target, argv = tiny_fs / "e.parquet", ["ensemble", *acts, *TINY_ENSEMBLE]
    elif command == "report":
        target, argv = tiny_fs / "report", ["report", _history_like(tmp_path / "h.parquet"), "--quiet"]
    else:
        target, argv = tiny_fs / "run", ["train", *TINY_TRAIN]
    result = cli(*argv, "-o", target)
    assert_clean_failure(result, target.name, code=1, problem="No space left on device")
    left = sorted(str(p.relative_to(tiny_fs)) for p in tiny_fs.rglob("*") if not p.name.endswith(".lock"))
    assert [p for p in left if p != "filler" and not Path(p).name.startswith(".") and p != target.name] == [], left
    record("io_failure.total")


@pytest.mark.parametrize("writer", ["pyarrow.parquet.write_table", "h5py.File"])
def test_write_error_is_one_line_exit_1(tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    """A device error in the middle of writing (EIO): exit 1, one line, no output and no temporary left."""
    import errno

    import h5py as h5py_module
    import pyarrow.parquet as pq_module

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    acts = [planted_acts(tmp_path / f"a{s}.h5", seed=s) for s in range(2)]
    before = snapshot(tmp_path)
    if writer == "h5py.File":
        real = h5py_module.File

        def file(name: object, mode: str = "r", *args: object, **kwargs: object) -> object:
            if mode == "w":
                fail()
            return real(name, mode, *args, **kwargs)

        monkeypatch.setattr("mitosis_cli.io.activations.h5py.File", file)
        from mitosis_cli.cli.app import main as _main  # noqa: F401 - the same module objects are patched

        run = tmp_path / "run"
        assert cli("train", *TINY_TRAIN, "-o", run).code == 0
        before = snapshot(tmp_path)
        target = tmp_path / "x.h5"
        result = cli("extract", run, "-o", target, "--threads", "1", "--quiet")
    else:
        monkeypatch.setattr(pq_module, "write_table", fail)
        target = tmp_path / "e.parquet"
        result = cli("ensemble", *acts, *TINY_ENSEMBLE, "-o", target)
    assert_clean_failure(result, target, code=1, problem="Input/output error")
    after = snapshot(tmp_path)
    assert {k for k in after if not k.endswith(".lock")} == {k for k in before if not k.endswith(".lock")}
    record("io_failure.total")


# ---------------------------------------------------------------------------------- through the console


def test_console_script_bad_inputs_are_one_line_exit_2(tmp_path: Path) -> None:
    """The same promise through .venv/bin/mitosis: two readers that fail before torch loads, to stay fast
    (a checkpoint through the console script: tests/reliability/test_security.py)."""
    acts = _random_bytes(tmp_path / "bad.h5")
    table = _random_bytes(tmp_path / "bad.parquet", 100)
    before = snapshot(tmp_path)
    for argv, named in ((["clones", acts, "-o", tmp_path / "o"], acts), (["report", table, "-o", tmp_path / "r"], table)):
        proc = subprocess.run([str(MITOSIS), *map(str, argv)], check=False, capture_output=True, text=True,
                              env=child_env(), timeout=300)
        assert_clean_failure(Result(proc.returncode, proc.stdout, proc.stderr), named)
        assert proc.stdout == ""
        record("bad_input.console_script")
        record("bad_input.total")
    assert snapshot(tmp_path) == before
