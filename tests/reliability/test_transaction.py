"""The output transaction: nothing earlier is lost, outputs never destroy inputs, files of one output appear
together, and two writers of one output never both win.

* **--force replaces only a complete result**: `train --force` over a run that then fails (a data set that
  cannot load, an out-of-range --train-size, an error mid-training, a full disk at a later checkpoint, a
  SIGTERM) leaves the previous run byte for byte; when it succeeds, the run's own files are replaced
  and every other file in the folder is kept. The same for `train --seeds --force`, every seed's run, and
  for `extract --model` and `import` over an earlier file (an image that does not decode, NaN or a bad
  CRC in a dump, found while streaming).
* **An output is never an input**: the same path, a symbolic link or a hard link to an input, a report
  folder holding one of its tables, an output inside an image folder, through every stage that writes,
  with and without --force.
* **The wrong kind of output path** (a directory where a file goes and the reverse, a device, a FIFO)
  is refused before any work.
* **The two clones tables appear together**: a write that fails (full disk on either table, a failing
  rename, a real 64 KiB tmpfs) leaves both earlier tables exactly as they were; an interrupted pair of
  this very measurement is completed by the rerun, a mixed pair is refused (also by `report`).
* **Concurrency**: for every stage, a second writer of an output held by a running one fails at once
  with exit 2 naming the lock, writes nothing, and the first one finishes with a complete output.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mitosis_cli.io.checkpoints import load_checkpoint

from .conftest import (
    FAULTINJECT_PATH,
    MITOSIS,
    TINY_CLONES,
    TINY_DATA,
    TINY_ENSEMBLE,
    TINY_TRAIN,
    RunCli,
    assert_clean_failure,
    assert_same_h5,
    assert_same_state,
    assert_same_table,
    child_env,
    own_extract,
    planted_acts,
    record,
    snapshot,
    tmpfs,
    watchdog,
)

# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, own: dict[str, Path]) -> dict[str, Path]:
    """A finished run, two seeds trained together, its activations and two shards, three planted activation files,
    their tables; the own network's inputs and the import of its dump."""
    from mitosis_cli.cli.app import main

    root = tmp_path_factory.mktemp("made")
    run = root / "run"
    assert main(["train", *TINY_TRAIN, "-o", str(run)]) == 0
    assert main(["train", *TINY_TRAIN, "--seeds", "0-1", "-o", str(root / "seeds")]) == 0
    assert main(["import", str(own["dump"]), "--quiet", "-o", str(root / "dump.h5")]) == 0
    assert main(["extract", str(run), "-o", str(root / "acts.h5"), "--threads", "1", "--quiet"]) == 0
    for k in range(2):
        assert main(["extract", str(run), "--shard", f"{k}/2", "-o", str(root / f"part{k}.h5"), "--threads", "1",
                     "--quiet"]) == 0
    acts = [planted_acts(root / f"p{s}.h5", seed=s) for s in range(3)]
    assert main(["clones", str(acts[0]), *TINY_CLONES, "-o", str(root / "clones")]) == 0
    assert main(["ensemble", *map(str, acts), *TINY_ENSEMBLE, "-o", str(root / "ensemble.parquet")]) == 0
    return {**own, "root": root, "run": run, "acts": root / "acts.h5", "part0": root / "part0.h5", "part1": root / "part1.h5",
            "p0": acts[0], "p1": acts[1], "p2": acts[2], "clones": root / "clones", "ensemble": root / "ensemble.parquet",
            "seeds": root / "seeds", "imported": root / "dump.h5"}


def _copy_run(made: dict[str, Path], where: Path) -> Path:
    run = where / "run"
    shutil.copytree(made["run"], run)
    return run


# ------------------------------------------------------------------------- --force keeps the old result


BATCHED = "mitosis_cli.training.batched"  # the loop of seeds trained together (train --seeds)


def _fail_at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, action: Callable[[], None],
                   loop_module: str = "mitosis_cli.training.loop") -> None:
    """Run `action` when a training loop (`loop_module`: one seed, or `training.batched` for seeds trained
    together) writes the history of `epoch`, after that epoch's evaluation."""
    import importlib

    loop = importlib.import_module(loop_module)
    real = loop._write_history

    def write_history(run_dir: Path, cfg: object, history: list[dict[str, float]], *args: object) -> None:
        if len(history) == epoch:
            action()
        real(run_dir, cfg, history, *args)

    monkeypatch.setattr(loop, "_write_history", write_history)


def _raise(err: BaseException) -> Callable[[], None]:
    def action() -> None:
        raise err
    return action


def _fail_save(monkeypatch: pytest.MonkeyPatch, n: int, number: int = errno.ENOSPC) -> None:
    """The n-th checkpoint the loop saves fails while torch writes it (as on a full disk)."""
    import mitosis_cli.io.checkpoints as checkpoints

    real_write, real_save = checkpoints._WriteRecorder.write, checkpoints.save_checkpoint
    saves = {"n": 0}

    def write(self: object, data: bytes) -> int:
        if saves["n"] >= n:
            raise OSError(number, os.strerror(number))
        return real_write(self, data)  # type: ignore[arg-type]

    def save(path: Path, payload: dict[str, object]) -> Path:
        saves["n"] += 1
        return real_save(path, payload)

    monkeypatch.setattr(checkpoints._WriteRecorder, "write", write)
    monkeypatch.setattr("mitosis_cli.training.loop.save_checkpoint", save)


FORCE_FAILURES: list[tuple[str, list[str], int, str, Callable[[pytest.MonkeyPatch], None] | None]] = [
    ("a data set that does not exist", ["--dataset", "no-such-set"], 2, "no-such-set", None),
    ("a data set option out of range", ["--dataset", "synthetic:n=0"], 2, "synthetic", None),
    ("--train-size beyond the data", ["--train-size", "100000"], 2, "--train-size", None),
    ("--momentum out of range", ["--momentum", "-1"], 2, "--momentum", None),
    ("an error in the middle of training", [], 1, "RuntimeError",
     lambda mp: _fail_at_epoch(mp, 2, _raise(RuntimeError("simulated failure")))),
    ("a full disk at a later checkpoint", [], 1, "checkpoint.pt: No space left on device", lambda mp: _fail_save(mp, 3)),
    ("the file-size limit at the first checkpoint", [], 1, "checkpoint.pt: File too large",
     lambda mp: _fail_save(mp, 1, errno.EFBIG)),
    ("SIGTERM during training", [], 75, "still holds the previous run",
     lambda mp: _fail_at_epoch(mp, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))),
]


@pytest.mark.parametrize("name, argv, code, problem, inject", FORCE_FAILURES, ids=[c[0] for c in FORCE_FAILURES])
def test_force_replaces_a_run_only_once_the_new_one_is_complete(
        tmp_path: Path, cli: RunCli, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        name: str, argv: list[str], code: int, problem: str, inject: Callable[[pytest.MonkeyPatch], None] | None) -> None:
    run = _copy_run(made, tmp_path)
    (run / "notes.txt").write_text("the user's own file")
    before = snapshot(tmp_path)
    if inject is not None:
        inject(monkeypatch)
    result = cli("train", *TINY_TRAIN, "--seed", "7", *argv, "--force", "-o", run)
    assert result.code == code, result.err
    assert "Traceback" not in result.err and problem in result.err, result.err
    assert snapshot(tmp_path) == before  # the old run byte for byte, no staging folder left
    record("transaction.force_kept_old_run")


def test_force_success_replaces_the_runs_files_and_keeps_the_others(tmp_path: Path, cli: RunCli, made: dict[str, Path]) -> None:
    run = _copy_run(made, tmp_path)
    (run / "notes.txt").write_text("the user's own file")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "epoch-0009.pt").write_bytes(b"an old snapshot")
    assert cli("train", *TINY_TRAIN, "--seed", "7", "--force", "-o", run).code == 0
    assert load_checkpoint(run / "checkpoint.pt")["finished"]
    assert '"seed": 7' in (run / "config.json").read_text()
    assert not (run / "checkpoints").exists()  # the new run saved no snapshots: the old ones went with the old run
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left beside it
    record("transaction.force_replaced")


def _copy_seed_runs(made: dict[str, Path], where: Path) -> Path:
    """Copies of the two seeds' runs as WHERE/runs-s0 and WHERE/runs-s1; returns WHERE/runs (their -o)."""
    for seed in (0, 1):
        shutil.copytree(made["root"] / f"seeds-s{seed}", where / f"runs-s{seed}")
        (where / f"runs-s{seed}" / "notes.txt").write_text("the user's own file")
    return where / "runs"


SEEDS_FORCE_FAILURES: list[tuple[str, list[str], int, str, Callable[[pytest.MonkeyPatch], None] | None]] = [
    ("a data set that does not exist", ["--dataset", "no-such-set"], 2, "no-such-set", None),
    ("a seed beyond 64 bits", ["--seeds", f"0,{1 << 64}"], 2, "--seeds", None),
    ("an error in the middle of training", [], 1, "RuntimeError",
     lambda mp: _fail_at_epoch(mp, 2, _raise(RuntimeError("simulated failure")), BATCHED)),
    ("a full disk at a later checkpoint", [], 1, "runs-s0/checkpoint.pt: No space left on device", lambda mp: _fail_save(mp, 3)),
    ("SIGTERM during training", [], 75, "still hold the previous run",
     lambda mp: _fail_at_epoch(mp, 2, lambda: os.kill(os.getpid(), signal.SIGTERM), BATCHED)),
]


@pytest.mark.parametrize("name, argv, code, problem, inject", SEEDS_FORCE_FAILURES, ids=[c[0] for c in SEEDS_FORCE_FAILURES])
def test_force_with_seeds_replaces_every_run_only_once_the_new_ones_are_complete(
        tmp_path: Path, cli: RunCli, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        name: str, argv: list[str], code: int, problem: str, inject: Callable[[pytest.MonkeyPatch], None] | None) -> None:
    runs = _copy_seed_runs(made, tmp_path)
    before = snapshot(tmp_path)
    if inject is not None:
        inject(monkeypatch)
    result = cli("train", *TINY_TRAIN, "--momentum", "0.5", "--seeds", "0-1", *argv, "--force", "-o", runs)
    assert result.code == code, result.err
    assert "Traceback" not in result.err and problem in result.err, result.err
    assert snapshot(tmp_path) == before  # both old runs byte for byte, no staging folder left
    record("transaction.force_kept_old_run")


def test_force_with_seeds_replaces_each_runs_files_and_keeps_the_others(tmp_path: Path, cli: RunCli,
                                                                        made: dict[str, Path]) -> None:
    runs = _copy_seed_runs(made, tmp_path)
    assert cli("train", *TINY_TRAIN, "--momentum", "0.5", "--seeds", "0-1", "--force", "-o", runs).code == 0
    for seed in (0, 1):
        run = tmp_path / f"runs-s{seed}"
        assert load_checkpoint(run / "checkpoint.pt")["finished"] and '"momentum": 0.5' in (run / "config.json").read_text()
        assert (run / "notes.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs-s0", "runs-s1"]  # no staging folder left beside them
    record("transaction.force_replaced")


def _undecodable(made: dict[str, Path], tmp: Path, cli: RunCli) -> tuple[list[str], Path]:
    """extract --model of a copy of the image folder, then again (--force) after an image is made undecodable."""
    images = tmp / "images"
    shutil.copytree(made["images"], images)
    argv = own_extract({**made, "images": images}, "-o", tmp / "a.h5")
    assert cli(*argv).code == 0
    (images / "test" / "bee" / "1.png").write_bytes(b"not an image at all")
    return [*argv, "--force"], images / "test" / "bee" / "1.png"


def _dump_rewrite(make: Callable[[Path], Path]) -> Callable[[dict[str, Path], Path, RunCli], tuple[list[str], Path]]:
    """import of the good dump, then --force from a dump `make` writes (its fault found while streaming)."""
    def cases(made: dict[str, Path], tmp: Path, cli: RunCli) -> tuple[list[str], Path]:
        assert cli("import", made["dump"], "--quiet", "-o", tmp / "a.h5").code == 0
        bad = make(tmp)
        return ["import", str(bad), "--quiet", "--force", "-o", str(tmp / "a.h5")], bad
    return cases


def _nan_dump(tmp: Path) -> Path:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 6)).astype(np.float32)
    features[37, 2] = np.nan
    np.savez(tmp / "nan.npz", train_features=features, train_labels=rng.integers(0, 3, 40))
    return tmp / "nan.npz"


def _bad_crc_dump(tmp: Path) -> Path:
    rng = np.random.default_rng(2)
    np.savez(tmp / "crc.npz", train_features=rng.normal(size=(200, 6)).astype(np.float32), train_labels=rng.integers(0, 3, 200))
    data = bytearray((tmp / "crc.npz").read_bytes())
    with zipfile.ZipFile(tmp / "crc.npz") as archive:
        info = archive.getinfo("train_features.npy")
    start = info.header_offset + 30 + len(info.filename) + 400  # inside the member's data, past its .npy header
    data[start : start + 64] = bytes(b ^ 0x5A for b in data[start : start + 64])
    (tmp / "crc.npz").write_bytes(bytes(data))
    return tmp / "crc.npz"


REWRITE_FAILURES = [
    ("extract --model: an image that does not decode", _undecodable, "not a readable image"),
    ("import: NaN in the features", _dump_rewrite(_nan_dump), "NaN"),
    ("import: a member with a bad CRC", _dump_rewrite(_bad_crc_dump), "Bad CRC-32"),
]


@pytest.mark.parametrize("name, make, problem", REWRITE_FAILURES, ids=[c[0] for c in REWRITE_FAILURES])
def test_a_failed_rewrite_keeps_the_earlier_activation_file(
        tmp_path: Path, cli: RunCli, made: dict[str, Path], name: str,
        make: Callable[[dict[str, Path], Path, RunCli], tuple[list[str], Path]], problem: str) -> None:
    again, named = make(made, tmp_path, cli)
    before = snapshot(tmp_path)
    assert_clean_failure(cli(*again), named, problem=problem)
    assert snapshot(tmp_path) == before  # the earlier file byte for byte, no temporary or lock left
    record("transaction.rewrite_kept")


def test_full_disk_at_a_later_checkpoint_names_it_and_the_run_resumes(
        tmp_path: Path, cli: RunCli, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Not --force: the checkpoint of epoch 2 is intact, the failed save of epoch 3 named, and --resume finishes
    the run with the weights of an uninterrupted one."""
    _fail_save(monkeypatch, 3)  # epochs 1 and 2 are saved, the save of epoch 3 fails
    run = tmp_path / "run"
    result = cli("train", *TINY_TRAIN, "-o", run)
    assert_clean_failure(result, run / "checkpoint.pt", code=1, problem="No space left on device")
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert cli("train", *TINY_TRAIN, "--resume", "-o", run).code == 0
    assert_same_state(torch.load(run / "checkpoint.pt", weights_only=True)["model"],
                      torch.load(made["run"] / "checkpoint.pt", weights_only=True)["model"], "model")
    record("transaction.later_checkpoint_full_disk")


# ------------------------------------------------------------------------------ an output is never an input


def _hard_link(source: Path, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, link)
    return link


def _symlink(source: Path, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(source.resolve())
    return link


@dataclass(frozen=True)
class Clash:
    name: str
    argv: Callable[[dict[str, Path], Path], list[str]]  # (made inputs copied under tmp, tmp) -> argv
    named: Callable[[dict[str, Path], Path], Path]  # what the error line must name


def _report_in(made: dict[str, Path], tmp: Path) -> list[str]:
    out = tmp / "out"
    shutil.copytree(made["clones"], out)
    return ["report", str(out / "clones.parquet"), "--quiet", "-o", str(out), "--force"]


def _report_linked(made: dict[str, Path], tmp: Path) -> list[str]:
    tables = tmp / "tables"
    shutil.copytree(made["clones"], tables)
    return ["report", str(tables / "clones.parquet"), "--quiet", "-o", str(_symlink(tables, tmp / "alias")), "--force"]


def _clones_named_like_its_output(made: dict[str, Path], tmp: Path) -> list[str]:
    shutil.copy(made["p0"], tmp / "clones.parquet")  # an activation file with a table's name
    return ["clones", str(tmp / "clones.parquet"), *TINY_CLONES, "--force"]


def _clones_summary_linked_to_ensemble(made: dict[str, Path], tmp: Path) -> list[str]:
    shutil.copy(made["ensemble"], tmp / "e.parquet")
    _symlink(tmp / "e.parquet", tmp / "c" / "clones-summary.parquet")
    return ["clones", str(made["p0"]), "--ensemble", str(tmp / "e.parquet"), *TINY_CLONES, "-o", str(tmp / "c"), "--force"]


CLASHES = [
    Clash("extract: a checkpoint named .h5 without -o", lambda m, t: ["extract", str(shutil.copy(m["run"] / "checkpoint.pt",
          t / "model.h5")), "--quiet", "--force"], lambda m, t: t / "model.h5"),
    Clash("extract: -o the run's own checkpoint", lambda m, t: ["extract", str(_copy_run(m, t)), "-o",
          str(t / "run" / "checkpoint.pt"), "--quiet", "--force"], lambda m, t: t / "run" / "checkpoint.pt"),
    Clash("extract: -o a hard link of the checkpoint", lambda m, t: ["extract", str(shutil.copy(m["run"] / "checkpoint.pt",
          t / "c.pt")), "-o", str(_hard_link(t / "c.pt", t / "acts.h5")), "--quiet", "--force"], lambda m, t: t / "acts.h5"),
    Clash("merge: -o one of the shards", lambda m, t: ["merge", str(shutil.copy(m["part0"], t / "a.h5")),
          str(shutil.copy(m["part1"], t / "b.h5")), "-o", str(t / "a.h5"), "--force"], lambda m, t: t / "a.h5"),
    Clash("merge: -o a symbolic link to a shard", lambda m, t: ["merge", str(shutil.copy(m["part0"], t / "a.h5")),
          str(shutil.copy(m["part1"], t / "b.h5")), "-o", str(_symlink(t / "b.h5", t / "m.h5")), "--force"],
          lambda m, t: t / "m.h5"),
    Clash("clones: an input named clones.parquet in the output folder", _clones_named_like_its_output,
          lambda m, t: t / "clones.parquet"),
    Clash("clones: the summary is a link to --ensemble", _clones_summary_linked_to_ensemble,
          lambda m, t: t / "c" / "clones-summary.parquet"),
    Clash("ensemble: -o one of its members", lambda m, t: ["ensemble", str(shutil.copy(m["p0"], t / "a.h5")), str(m["p1"]),
          *TINY_ENSEMBLE, "-o", str(t / "a.h5"), "--force"], lambda m, t: t / "a.h5"),
    Clash("ensemble: -o a hard link of a member", lambda m, t: ["ensemble", str(shutil.copy(m["p0"], t / "a.h5")),
          str(m["p1"]), *TINY_ENSEMBLE, "-o", str(_hard_link(t / "a.h5", t / "e.parquet")), "--force"],
          lambda m, t: t / "e.parquet"),
    Clash("report: -o the folder holding its table", _report_in, lambda m, t: t / "out"),
    Clash("report: -o a link to the folder holding its table", _report_linked, lambda m, t: t / "alias"),
    Clash("train: --acts onto the run's checkpoint", lambda m, t: ["train", *TINY_TRAIN, "-o", str(t / "run"), "--acts",
          str(t / "run" / "checkpoint.pt")], lambda m, t: t / "run" / "checkpoint.pt"),
    Clash("sweep: --slurm onto its own grid file", lambda m, t: ["sweep", "--grid", str(_grid_file(t)), "--slurm",
          str(t / "grid.json"), "-o", str(t / "s")], lambda m, t: t / "grid.json"),
    Clash("train --seeds: --acts onto a seed's checkpoint", lambda m, t: ["train", *TINY_TRAIN, "--seeds", "0-1", "-o",
          str(t / "r"), "--acts", str(t / "r-s{seed}" / "checkpoint.pt")], lambda m, t: t / "r-s0" / "checkpoint.pt"),
    Clash("extract --model: -o its weights file", lambda m, t: own_extract({**m, "weights": shutil.copy(m["weights"], t)},
          "--force", "-o", t / "w.pt"), lambda m, t: t / "w.pt"),
    Clash("extract --model: -o a hard link of its weights", lambda m, t: own_extract(
          {**m, "weights": shutil.copy(m["weights"], t)}, "--force", "-o", _hard_link(t / "w.pt", t / "a.h5")),
          lambda m, t: t / "a.h5"),
    Clash("extract --model: -o inside its image folder", lambda m, t: own_extract(
          {**m, "images": shutil.copytree(m["images"], t / "images")}, "-o", t / "images" / "train" / "ant" / "a.h5"),
          lambda m, t: t / "images" / "train" / "ant" / "a.h5"),
    Clash("import: -o the dump itself", lambda m, t: ["import", str(shutil.copy(m["dump"], t)), "--force", "-o",
          str(t / "dump.npz")], lambda m, t: t / "dump.npz"),
    Clash("import: -o a symbolic link to the dump", lambda m, t: ["import", str(shutil.copy(m["dump"], t)), "--force", "-o",
          str(_symlink(t / "dump.npz", t / "a.h5"))], lambda m, t: t / "a.h5"),
    Clash("import: -o one of a folder's KEY.npy files", lambda m, t: ["import", str(_npy_folder(m, t)), "--force", "-o",
          str(t / "f" / "train_labels.npy")], lambda m, t: t / "f" / "train_labels.npy"),
]


def _npy_folder(made: dict[str, Path], tmp: Path) -> Path:
    """The dump's arrays as KEY.npy files in TMP/f."""
    (tmp / "f").mkdir()
    with np.load(made["dump"]) as arrays:
        for key in arrays.files:
            np.save(tmp / "f" / f"{key}.npy", arrays[key])
    return tmp / "f"


def _grid_file(tmp: Path) -> Path:
    (tmp / "grid.json").write_text('{"widths": [8], "seeds": [0]}')
    return tmp / "grid.json"


@pytest.mark.parametrize("clash", CLASHES, ids=[c.name for c in CLASHES])
def test_an_output_that_is_an_input_is_refused(tmp_path: Path, cli: RunCli, made: dict[str, Path], clash: Clash) -> None:
    argv = clash.argv(made, tmp_path)
    before = snapshot(tmp_path)
    assert_clean_failure(cli(*argv), clash.named(made, tmp_path))
    assert snapshot(tmp_path) == before
    record("transaction.output_is_input")


# ------------------------------------------------------------------------------ outputs of the wrong kind


KINDS: list[tuple[str, Callable[[dict[str, Path], Path], tuple[list[str], Path]]]] = [
    ("ensemble -o an existing directory", lambda m, t: (["ensemble", str(m["p0"]), str(m["p1"]), *TINY_ENSEMBLE, "--force",
                                                          "-o", str(_mkdir(t / "e"))], t / "e")),
    ("clones -o an existing file", lambda m, t: (["clones", str(m["p0"]), *TINY_CLONES, "--force", "-o",
                                                   str(_touch(t / "c"))], t / "c")),
    ("clones: a directory where a table goes", lambda m, t: (["clones", str(m["p0"]), *TINY_CLONES, "--force", "-o", str(t),
                                                             ], _mkdir(t / "clones.parquet"))),
    ("extract -o an existing directory", lambda m, t: (["extract", str(m["run"]), "--quiet", "--force", "-o",
                                                          str(_mkdir(t / "a.h5"))], t / "a.h5")),
    ("merge -o a FIFO", lambda m, t: (["merge", str(m["part0"]), str(m["part1"]), "--force", "-o", str(_fifo(t / "m.h5"))],
                                      t / "m.h5")),
    ("ensemble -o /dev/null", lambda m, t: (["ensemble", str(m["p0"]), str(m["p1"]), *TINY_ENSEMBLE, "--force", "-o",
                                              "/dev/null"], Path("/dev/null"))),
    ("report -o an existing file", lambda m, t: (["report", str(m["ensemble"]), "--quiet", "--force", "-o",
                                                   str(_touch(t / "r"))], t / "r")),
    ("train -o an existing file", lambda m, t: (["train", *TINY_TRAIN, "-o", str(_touch(t / "run"))], t / "run")),
    ("train: a directory where the run's checkpoint goes", lambda m, t: (["train", *TINY_TRAIN, "-o", str(t / "run")],
                                                                        _mkdir(t / "run" / "checkpoint.pt"))),
    ("train --acts an existing directory", lambda m, t: (["train", *TINY_TRAIN, "-o", str(t / "run"), "--acts",
                                                           str(_mkdir(t / "acts"))], t / "acts")),
    ("sweep --slurm an existing directory", lambda m, t: (["sweep", "--widths", "8", "-o", str(t / "s"), "--slurm",
                                                            str(_mkdir(t / "job.sh"))], t / "job.sh")),
    ("ensemble -o a name too long for its temporary", lambda m, t: (["ensemble", str(m["p0"]), str(m["p1"]), *TINY_ENSEMBLE,
                                                                     "-o", str(t / ("e" * 240))], t / ("e" * 240))),
    ("clones -o a folder name too long", lambda m, t: (["clones", str(m["p0"]), *TINY_CLONES, "-o", str(t / ("c" * 250))],
                                                       t / ("c" * 250))),
    ("train --seeds: a directory where a seed's checkpoint goes", lambda m, t: (
        ["train", *TINY_TRAIN, "--seeds", "0-1", "-o", str(t / "r")], _mkdir(t / "r-s1" / "checkpoint.pt"))),
    ("train --seeds: a file where a seed's run goes", lambda m, t: (
        ["train", *TINY_TRAIN, "--seeds", "0-2", "-o", str(t / "r")], _touch(t / "r-s2"))),
    ("extract --model -o a FIFO", lambda m, t: (own_extract(m, "--force", "-o", _fifo(t / "a.h5")), t / "a.h5")),
    ("import -o an existing directory", lambda m, t: (["import", str(m["dump"]), "--force", "-o", str(_mkdir(t / "a.h5"))],
                                                       t / "a.h5")),
]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


@pytest.mark.parametrize("name, make", KINDS, ids=[k[0] for k in KINDS])
def test_an_output_path_of_the_wrong_kind_is_refused_before_any_work(
        tmp_path: Path, cli: RunCli, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        name: str, make: Callable[[dict[str, Path], Path], tuple[list[str], Path]]) -> None:
    import mitosis_cli.stages.clones as clones_stage
    import mitosis_cli.stages.ensemble as ensemble_stage
    import mitosis_cli.stages.importing as importing_stage
    import mitosis_cli.training.batched as batched
    import mitosis_cli.training.external as external
    import mitosis_cli.training.loop as loop

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the stage started its work before refusing its output path")

    for module, function in ((clones_stage, "measure_clones"), (ensemble_stage, "measure_ensemble"), (loop, "_train"),
                             (batched, "_train_seeds"), (external, "load_external_model"),
                             (importing_stage, "write_activations")):
        monkeypatch.setattr(module, function, no_work)
    argv, named = make(made, tmp_path)
    before = snapshot(tmp_path)
    with watchdog(named if _is_fifo(named) else None) as state:  # reading the FIFO would block
        result = cli(*argv)
    assert not state["hung"]
    assert_clean_failure(result, named)
    assert snapshot(tmp_path) == before
    record("transaction.wrong_output_kind")


@pytest.mark.parametrize("out", [".", "..", "inner/.."], ids=["the current directory", "its parent", "a path to it"])
def test_a_report_never_replaces_the_current_directory(tmp_path: Path, cli: RunCli, made: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch, out: str) -> None:
    work = tmp_path / "work"
    (work / "inner").mkdir(parents=True)
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    assert_clean_failure(cli("report", made["ensemble"], "--quiet", "--force", "-o", out), out, problem="current directory")
    assert snapshot(tmp_path) == before
    record("transaction.wrong_output_kind")


# ------------------------------------------------------------------------ the two clones tables together


def _clones(cli: RunCli, acts: Path, out: Path, *extra: str) -> int:
    return cli("clones", acts, *TINY_CLONES, *extra, "-o", out).code


@pytest.fixture
def old_pair(tmp_path: Path, cli: RunCli, made: dict[str, Path]) -> Path:
    """A folder holding the two tables of one measurement (seed 0), to be replaced by another (--seed 1 --force)."""
    out = tmp_path / "c"
    shutil.copytree(made["clones"], out)
    return out


def _fail_nth_table_write(monkeypatch: pytest.MonkeyPatch, n: int, number: int) -> None:
    import mitosis_cli.io.tables as tables

    real = tables.pq.write_table
    calls = {"n": 0}

    def write_table(table: object, where: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(number, os.strerror(number))
        real(table, where, *args, **kwargs)

    monkeypatch.setattr(tables.pq, "write_table", write_table)


TABLE_FAILURES = [(1, errno.ENOSPC), (2, errno.ENOSPC), (2, errno.EFBIG), (2, errno.EIO)]  # (which table write, errno)


@pytest.mark.parametrize("n, number", TABLE_FAILURES, ids=["first table, full disk", "second table, full disk",
                                                           "second table, file-size limit", "second table, device error"])
def test_a_failed_table_write_leaves_both_earlier_tables(
        old_pair: Path, cli: RunCli, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, n: int, number: int) -> None:
    before = snapshot(old_pair.parent)
    _fail_nth_table_write(monkeypatch, n, number)
    result = cli("clones", made["p0"], *TINY_CLONES, "--seed", "1", "--force", "-o", old_pair)
    named = old_pair / ("clones.parquet" if n == 1 else "clones-summary.parquet")
    assert_clean_failure(result, named, code=1, problem=os.strerror(number))
    assert snapshot(old_pair.parent) == before
    record("transaction.clones_pair_kept")


def test_a_failed_rename_puts_the_earlier_tables_back(
        old_pair: Path, cli: RunCli, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The second table's rename into place fails (EIO): the first new table is taken back, the old pair restored."""
    real = os.replace

    def replace(src: object, dst: object) -> None:
        if str(dst).endswith("clones-summary.parquet") and ".tmp" in str(src):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real(src, dst)

    before = {name: (old_pair / name).read_bytes() for name in ("clones.parquet", "clones-summary.parquet")}
    monkeypatch.setattr(os, "replace", replace)
    result = cli("clones", made["p0"], *TINY_CLONES, "--seed", "1", "--force", "-o", old_pair)
    monkeypatch.undo()
    assert_clean_failure(result, old_pair / "clones-summary.parquet", code=1, problem="Input/output error")
    assert {name: (old_pair / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in old_pair.iterdir()) == sorted(before)
    record("transaction.clones_pair_kept")


def test_a_full_tmpfs_between_the_two_tables_keeps_both(tmp_path: Path, cli: RunCli, made: dict[str, Path]) -> None:
    """A real full disk: a small tmpfs with room for the first new table but not the second."""
    with tmpfs(tmp_path / "disk", "256k") as mnt:
        out = mnt / "c"
        assert _clones(cli, made["p0"], out) == 0
        before = {name: (out / name).read_bytes() for name in ("clones.parquet", "clones-summary.parquet")}
        page = 4096
        first_pages = -(-len(before["clones.parquet"]) // page)
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        (mnt / "filler").write_bytes(b"\0" * (free - (first_pages + 1) * page))  # room for the first table only
        result = cli("clones", made["p0"], *TINY_CLONES, "--seed", "1", "--force", "-o", out)
        assert_clean_failure(result, "clones", code=1, problem="No space left on device")
        assert {name: (out / name).read_bytes() for name in before} == before
        assert sorted(p.name for p in out.iterdir()) == sorted(before)
        record("transaction.clones_pair_kept")


def test_an_interrupted_pair_of_this_measurement_is_completed(tmp_path: Path, cli: RunCli, made: dict[str, Path]) -> None:
    """A kill between the two renames leaves one table: the same command completes it; another is refused."""
    for kept in ("clones.parquet", "clones-summary.parquet"):
        out = tmp_path / kept
        shutil.copytree(made["clones"], out)
        (out / ("clones-summary.parquet" if kept == "clones.parquet" else "clones.parquet")).unlink()
        before = snapshot(out)
        other = cli("clones", made["p0"], *TINY_CLONES, "--seed", "1", "-o", out)
        assert_clean_failure(other, out, problem="without")
        assert snapshot(out) == before
        assert _clones(cli, made["p0"], out) == 0
        for name in ("clones.parquet", "clones-summary.parquet"):
            assert_same_table(made["clones"] / name, out / name)
    record("transaction.clones_pair_completed", 2)


def test_a_mixed_pair_is_refused_by_clones_and_by_report(tmp_path: Path, cli: RunCli, made: dict[str, Path]) -> None:
    other = tmp_path / "other"
    assert _clones(cli, made["p0"], other, "--seed", "1") == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(made["clones"], mixed)
    shutil.copy(other / "clones-summary.parquet", mixed / "clones-summary.parquet")
    before = snapshot(tmp_path)
    assert_clean_failure(cli("clones", made["p0"], *TINY_CLONES, "-o", mixed), mixed, problem="different inputs or options")
    assert_clean_failure(cli("report", mixed, "--quiet", "-o", tmp_path / "r"), mixed / "clones.parquet",
                         problem="not from one clones run")
    assert snapshot(tmp_path) == before
    record("transaction.clones_pair_mixed", 2)


def test_slurm_scripts_appear_together_and_stay_executable(tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "job.sh"
    assert cli("sweep", "--widths", "8", "-o", tmp_path / "s", "--slurm", script, "--quiet").code == 0
    for path in (script, tmp_path / "job-analysis.sh"):
        assert path.stat().st_mode & 0o111 == 0o111 & ~_umask(), oct(path.stat().st_mode)
    before = snapshot(tmp_path)
    _fail_nth_write_text(monkeypatch, 2)
    assert cli("sweep", "--widths", "16", "-o", tmp_path / "s", "--slurm", script, "--quiet").code == 1
    assert snapshot(tmp_path) == before  # the first new script did not appear without the second
    record("transaction.slurm_scripts", 2)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fail_nth_write_text(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    real = Path.write_text
    calls = {"n": 0}

    def write_text(self: Path, *args: object, **kwargs: object) -> int:
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", write_text)


# ---------------------------------------------------------------------------------------- concurrency


@dataclass(frozen=True)
class Writer:
    name: str
    argv: Callable[[dict[str, Path], Path], list[str]]  # (made, out folder) -> argv of both writers
    check: Callable[[dict[str, Path], Path], None]  # the first writer's output is complete (and as an uninterrupted one)


def _same_run(made: dict[str, Path], out: Path) -> None:
    assert_same_state(torch.load(out / "run" / "checkpoint.pt", weights_only=True)["model"],
                      torch.load(made["run"] / "checkpoint.pt", weights_only=True)["model"], "model")


def _same_clones(made: dict[str, Path], out: Path) -> None:
    for name in ("clones.parquet", "clones-summary.parquet"):
        assert_same_table(made["clones"] / name, out / "c" / name)


def _same_report(made: dict[str, Path], out: Path) -> None:
    import json

    listed = json.loads((out / "r" / ".mitosis-report.json").read_text())["figures"]
    assert listed and all((out / "r" / f["png"]).is_file() for f in listed)


def _same_seed_runs(made: dict[str, Path], out: Path) -> None:
    for seed in (0, 1):
        assert_same_state(torch.load(out / f"run-s{seed}" / "checkpoint.pt", weights_only=True)["model"],
                          torch.load(made["root"] / f"seeds-s{seed}" / "checkpoint.pt", weights_only=True)["model"], "model")


def _sweep_done(made: dict[str, Path], out: Path) -> None:
    assert load_checkpoint(out / "s" / TINY_DATA / "w8-s0" / "checkpoint.pt")["finished"]


SWEEP = ["sweep", "--dataset", TINY_DATA, "--widths", "8", "--seeds", "0", "--epochs", "2", "--batch-size", "64",
         "--threads", "1", "--phase", "train", "--quiet"]
WRITERS = [
    Writer("train", lambda m, o: ["train", *TINY_TRAIN, "-o", str(o / "run")], _same_run),
    Writer("extract", lambda m, o: ["extract", str(m["run"]), "--threads", "1", "--quiet", "-o", str(o / "a.h5")],
           lambda m, o: assert_same_h5(m["acts"], o / "a.h5")),
    Writer("merge", lambda m, o: ["merge", str(m["part0"]), str(m["part1"]), "--quiet", "-o", str(o / "a.h5")],
           lambda m, o: assert_same_h5(m["acts"], o / "a.h5", ignore=("created_utc",))),
    Writer("clones", lambda m, o: ["clones", str(m["p0"]), *TINY_CLONES, "-o", str(o / "c")], _same_clones),
    Writer("ensemble", lambda m, o: ["ensemble", str(m["p0"]), str(m["p1"]), str(m["p2"]), *TINY_ENSEMBLE, "-o",
                                     str(o / "e.parquet")], lambda m, o: assert_same_table(m["ensemble"], o / "e.parquet")),
    Writer("report", lambda m, o: ["report", str(m["ensemble"]), "--quiet", "-o", str(o / "r")], _same_report),
    Writer("sweep", lambda m, o: [*SWEEP, "-o", str(o / "s")], _sweep_done),
    Writer("train --seeds", lambda m, o: ["train", *TINY_TRAIN, "--seeds", "0-1", "-o", str(o / "run")], _same_seed_runs),
    Writer("import", lambda m, o: ["import", str(m["dump"]), "--quiet", "-o", str(o / "a.h5")],
           lambda m, o: assert_same_h5(m["imported"], o / "a.h5", ignore=("created_utc",))),
]


@pytest.mark.parametrize("writer", WRITERS, ids=[w.name for w in WRITERS])
def test_two_writers_of_one_output_one_wins_the_other_says_why(
        tmp_path: Path, cli: RunCli, made: dict[str, Path], writer: Writer) -> None:
    """The first writer (a child process) is held once it has its lock and its first temporary; the second
    (this process) must fail at once with exit 2 naming the lock and write nothing; the first then finishes."""
    out = tmp_path / "out"
    out.mkdir()
    flag = tmp_path / "go"
    argv = writer.argv(made, out)
    env = child_env(PYTHONPATH=FAULTINJECT_PATH, MITOSIS_FI_ROOT=str(out), MITOSIS_FI_HOLD=str(flag))
    first = subprocess.Popen([str(MITOSIS), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not Path(f"{flag}.held").exists():
            assert first.poll() is None, f"the first writer ended before holding its output: {first.stderr.read()}"
            assert time.monotonic() < deadline, "the first writer never reached its output"
            time.sleep(0.02)
        before = snapshot(out)
        second = cli(*argv)
        assert_clean_failure(second, "", problem="is being written by another mitosis process")
        assert snapshot(out) == before
    finally:
        flag.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    writer.check(made, out)
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name or ".old-" in p.name or p.name.endswith(".lock")]
    record("transaction.concurrent_writers_refused")
