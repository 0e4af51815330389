"""Shared machinery of the reliability suite: running the CLI, small inputs, exact comparisons, counts.

Counts (cases tried, kills delivered) are gathered with `record` and printed at the end of the run;
with MITOSIS_RELIABILITY_COUNTS=FILE they are also written there as JSON. docs/reliability.md quotes
them, and `test_docs.py` checks the enumerated ones against the document.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mitosis_cli.cli.app import main

from ..conftest import write_planted_acts

MITOSIS = Path(sys.executable).with_name("mitosis")
FAULTINJECT = Path(__file__).with_name("faultinject")
REPO = Path(__file__).resolve().parents[2]
# PYTHONPATH of a watched child: the fault-injection hook, then this checkout (the code under test, also where
# the console script was installed from another checkout)
FAULTINJECT_PATH = os.pathsep.join([str(FAULTINJECT), str(REPO)])
# Tiny settings: a run is a few seconds, so the suite stays within its time budget on 2 shared cores.
# The generated data set (no CSV to parse) keeps a child's work well under a second beside its torch import.
TINY_DATA = "synthetic:n=200,test=100,d=32,latent=4,classes=4,seed=0"
TINY_TRAIN = ["--dataset", TINY_DATA, "--width", "16", "--epochs", "4", "--batch-size", "64", "--threads", "1", "--quiet"]
# Clones on the planted files: few repeats, but every metric (accuracy, probe, R^2, residuals, II).
TINY_CLONES = ["--repeats", "3", "--acc-repeats", "4", "--ii-points", "120", "--device", "cpu", "--threads", "1", "--quiet"]
TINY_ENSEMBLE = ["--repeats", "2", "--params-per-width", "100", "--quiet"]
# Metadata that legitimately differs between two runs of the same command: when and how it was typed.
VOLATILE_META = ("command",)
VOLATILE_COLUMNS = ("seconds",)  # wall-clock time per epoch in history.parquet
VOLATILE_ATTRS = ("created_utc",)

# ---------------------------------------------------------------------------------------------- counts

COUNTS: dict[str, Any] = defaultdict(int)


def record(key: str, amount: int = 1) -> None:
    """Add `amount` to the named count (reported at the end of the session)."""
    COUNTS[key] += amount


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not COUNTS:
        return
    terminalreporter.write_sep("-", "reliability counts")
    for key in sorted(COUNTS):
        terminalreporter.write_line(f"{key}: {COUNTS[key]}")
    target = os.environ.get("MITOSIS_RELIABILITY_COUNTS")
    if target:
        Path(target).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=1) + "\n")


def kills_per_stage() -> int:
    """Kills per stage: 3 by default (CI); MITOSIS_KILLS=N for a longer local soak."""
    return max(1, int(os.environ.get("MITOSIS_KILLS", "3")))


# ------------------------------------------------------------------------------------- running the CLI


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("mitosis:")]


RunCli = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run `mitosis ARGV` in this process (`mitosis_cli.cli.app.main`); return code, stdout, stderr."""

    def run(*argv: str | os.PathLike[str]) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child `mitosis`: quiet OpenMP threads, no debug tracebacks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MITOSIS_FI_", "MITOSIS_DEBUG"))}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.update(extra)
    return env


def assert_clean_failure(result: Result, names: str | os.PathLike[str], code: int = 2, problem: str = "") -> str:
    """Exit `code`, exactly one 'mitosis: error' line naming `names` (and `problem`), no traceback."""
    assert result.code == code, f"exit {result.code} (expected {code}); stderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    lines = result.error_lines
    assert len(lines) == 1, f"expected one error line, got:\n{result.err}"
    line = lines[0]
    assert str(names) in line, f"{names} not named in: {line}"
    assert problem.lower() in line.lower(), f"{problem!r} not in: {line}"
    return line


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below `folder` (hidden ones too) with its size and mtime: to prove nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def watchdog(fifo: Path | None, seconds: float = 30.0) -> Iterator[dict[str, bool]]:
    """Unblock a read hung on `fifo` after `seconds` (by opening its other end) and report that it hung."""
    state = {"hung": False}
    done = threading.Event()

    def unblock() -> None:
        if done.wait(seconds) or fifo is None:
            return
        state["hung"] = True
        while not done.is_set():
            with suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            done.wait(0.1)

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        done.set()
        thread.join()


@contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A real full disk: a tmpfs of `size` (``64k``) mounted on `mnt` (made here) while the block runs.

    Mounting needs root: a user's run skips the test (an allowed skip, docs/testing.md); root that cannot mount
    (a container without CAP_SYS_ADMIN) fails it.
    """
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (a real full disk)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f"root cannot mount a tmpfs here: {' '.join(proc.stderr.split())[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ----------------------------------------------------------------------------------- audit-hook tracer

_TRACE: dict[str, Any] = {"root": None, "events": None}


def _trace_hook(event: str, args: tuple) -> None:
    # Installed once for the session (audit hooks cannot be removed); costs a dict lookup when idle.
    root, events = _TRACE["root"], _TRACE["events"]
    if root is None or not args or event not in ("open", "os.rename", "tempfile.mkstemp", "tempfile.mkdtemp", "os.mkdir",
                                                  "os.remove", "os.rmdir", "os.chmod", "shutil.rmtree"):
        return
    if event == "open":
        mode, flags = (args[1], args[2]) if len(args) >= 3 else (None, 0)
        write = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        if not write:
            return
    path = args[0]
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root):
        events.append((event, time.monotonic(), os.fspath(path)))


sys.addaudithook(_trace_hook)


@contextmanager
def trace_writes(root: Path) -> Iterator[list[tuple[str, float, str]]]:
    """Record (event, monotonic time, path) of every file-system write this process makes under `root`.

    The same events, in the same order, that `faultinject/sitecustomize.py` counts in a child process.
    """
    events: list[tuple[str, float, str]] = []
    _TRACE.update(root=str(root), events=events)
    try:
        yield events
    finally:
        _TRACE.update(root=None, events=None)


# ------------------------------------------------------------------------------------------ comparisons


def table_payload(path: Path) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """A Parquet table's columns (minus timing columns) and its mitosis metadata (minus the command line)."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {})[b"mitosis"])
    for key in VOLATILE_META:
        meta.pop(key, None)
    cols = {name: table.column(name).to_pylist() for name in table.column_names if name not in VOLATILE_COLUMNS}
    return cols, meta


def assert_same_table(a: Path, b: Path) -> None:
    cols_a, meta_a = table_payload(a)
    cols_b, meta_b = table_payload(b)
    assert list(cols_a) == list(cols_b), f"{a} vs {b}: columns differ"
    for name in cols_a:  # exact: NaN == NaN here because to_pylist gives the same float object pattern
        va, vb = np.asarray(cols_a[name], dtype=object), np.asarray(cols_b[name], dtype=object)
        same = [(x == y) or (isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y))
                for x, y in zip(va, vb, strict=True)]
        assert len(va) == len(vb) and all(same), f"{a} vs {b}: column {name!r} differs"
    assert meta_a == meta_b, f"{a} vs {b}: metadata differs"


def h5_payload(path: Path, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every dataset (as arrays) and every attribute (minus the creation time and `ignore`) of an HDF5 file."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: v for k, v in f.attrs.items() if k not in VOLATILE_ATTRS + ignore}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj[...])

        f.visititems(visit)
    return out


def assert_same_h5(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> None:
    pa_, pb = h5_payload(a, ignore), h5_payload(b, ignore)
    assert sorted(pa_) == sorted(pb), f"{a} vs {b}: different datasets"
    for key in pa_:
        if key == "attrs":
            assert pa_[key].keys() == pb[key].keys()
            for name in pa_[key]:
                assert np.array_equal(pa_[key][name], pb[key][name]), f"attribute {name} differs"
        else:
            assert pa_[key][0] == pb[key][0], f"/{key}: dtype differs"
            assert np.array_equal(pa_[key][1], pb[key][1]), f"/{key}: values differ (bit-for-bit)"


def assert_same_state(a: Any, b: Any, where: str = "") -> None:
    """Nested checkpoint payloads equal: tensors bit-for-bit, everything else ==, history minus seconds."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            if key == "history":
                def strip(text: str) -> list[dict]:
                    return [{k: v for k, v in row.items() if k not in VOLATILE_COLUMNS} for row in json.loads(text)]

                assert strip(a[key]) == strip(b[key]), f"{where}/history differs"
            elif key != "seconds_in_epoch":
                assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# --------------------------------------------------------------------------------------- small inputs


def planted_acts(path: Path, n: int = 160, width: int = 16, clone_size: int = 4, noise: float = 0.05, classes: int = 3,
                 seed: int = 0, splits: tuple[str, ...] = ("train", "test"), dtype: str = "float32") -> Path:
    """A small valid activation file with planted clones (tests/conftest.py's writer), optionally in another float type."""
    write_planted_acts(path, n, width, clone_size, noise, classes, seed, splits)
    if dtype != "float32":  # re-store the arrays in another float type (readers must cast)
        with h5py.File(path, "r+") as f:
            for name in [f"{s}/{k}" for s in splits for k in ("features", "logits")] + ["head/weight", "head/bias"]:
                data = f[name][...]
                del f[name]
                f.create_dataset(name, data=data.astype(dtype))
    return path


TINYNET = '''from torch import nn


def net(num_classes=2):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, num_classes))
'''
OWN_IMAGES = ["--image-size", "8", "--resize", "8", "--threads", "1", "--quiet"]


@pytest.fixture(scope="session")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A network mitosis did not train (``module:reliability_tinynet:net``, importable while the session runs) with
    its weights and an image folder of two classes (10x10 PNGs), and a feature dump (.npz) for `mitosis import`."""
    from PIL import Image

    root = tmp_path_factory.mktemp("own")
    (root / "reliability_tinynet.py").write_text(TINYNET)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("ant", "bee"):
            (root / "images" / split / name).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / split / name / f"{i}.png")
    torch.manual_seed(0)
    torch.save({"1.weight": torch.randn(16, 192) * 0.1, "1.bias": torch.zeros(16), "3.weight": torch.randn(2, 16),
                "3.bias": torch.zeros(2)}, root / "w.pt")  # the state dict of reliability_tinynet.net()
    np.savez(root / "dump.npz", train_features=rng.normal(size=(40, 6)).astype(np.float32),
             train_labels=rng.integers(0, 3, 40), test_features=rng.normal(size=(20, 6)).astype(np.float32),
             test_labels=rng.integers(0, 3, 20))
    sys.path.insert(0, str(root))
    yield {"root": root, "weights": root / "w.pt", "images": root / "images", "dump": root / "dump.npz"}
    sys.path.remove(str(root))


def own_extract(own: dict[str, Path], *extra: str | os.PathLike[str]) -> list[str]:
    """argv of `extract --model` of the own network on its image folder."""
    return ["extract", "--model", "module:reliability_tinynet:net", "--weights", str(own["weights"]), "--images",
            str(own["images"]), *OWN_IMAGES, *map(str, extra)]
