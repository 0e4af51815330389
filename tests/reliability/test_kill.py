"""`kill -9` at seeded random moments during every stage: no partial output, and a rerun gives the same bytes.

Each stage runs as the real console script (.venv/bin/mitosis) in a child process that
`faultinject/sitecustomize.py` watches: it logs every file-system write the child makes under the
test folder. Kills alternate between two kinds, both SIGKILL (no handler, no cleanup runs):

* **crash point**: the child kills itself at its n-th write operation, *before* it runs (n uniform over
  the operations of an uninterrupted run): before a temporary file is made, before it is fsynced,
  before it is renamed into place, before the lock or config is opened, ...
* **external**: the test picks a moment uniformly over the span an uninterrupted run spends writing
  (first to last operation, in-process timings), waits until the child reaches the operation before it,
  sleeps the rest and sends `kill -9` from outside: it lands mid-write or mid-computation.

After every kill each output path is either absent or complete and valid (read back with the tool's
own readers). The kills of one stage are chained (a `--resume` is killed again, ...). Then the same
command runs to the end and its outputs are compared with an uninterrupted run's: checkpoint tensors,
HDF5 datasets, Parquet tables and report files bit for bit (only wall-clock columns and creation
times excepted). MITOSIS_KILLS=N raises the kills per stage (default 3) for a longer soak.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from mitosis_cli.cli.app import main
from mitosis_cli.io.activations import ActivationFile
from mitosis_cli.io.checkpoints import load_checkpoint
from mitosis_cli.io.clone_tables import read_clones, read_clones_summary
from mitosis_cli.io.ensemble_tables import read_ensemble_table
from mitosis_cli.io.tables import read_table
from mitosis_cli.training.config import read_config

from .conftest import (
    FAULTINJECT_PATH,
    MITOSIS,
    TINY_CLONES,
    TINY_ENSEMBLE,
    TINY_TRAIN,
    assert_same_h5,
    assert_same_state,
    assert_same_table,
    child_env,
    kills_per_stage,
    planted_acts,
    record,
    trace_writes,
)

SEED = 20260127  # of the kill moments; the stages' own seeds are fixed in their argv
STAGES = ("train", "extract", "clones", "ensemble", "report")


def _check_run_dir(run: Path) -> None:
    if (run / "checkpoint.pt").exists():
        load_checkpoint(run / "checkpoint.pt")
    if (run / "history.parquet").exists():
        read_table(run / "history.parquet", "history", ("epoch", "train_error", "seconds"))
    if (run / "config.json").exists():
        read_config(run / "config.json")


def _check_acts(path: Path) -> None:
    if path.exists():
        file = ActivationFile(path)
        for split in file.header.splits:
            file.split(split)


def _check_clones(folder: Path) -> None:
    if (folder / "clones.parquet").exists():
        read_clones(folder / "clones.parquet")
    if (folder / "clones-summary.parquet").exists():
        read_clones_summary(folder / "clones-summary.parquet")


def _check_ensemble(path: Path) -> None:
    if path.exists():
        read_ensemble_table(path)


def _check_report(folder: Path) -> None:
    if not folder.exists():
        return
    stamp = json.loads((folder / ".mitosis-report.json").read_text())
    for name in ["index.html", "summary.md"] + [f[ext] for f in stamp["figures"] for ext in ("png", "svg")]:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, f"{folder}: {name} missing or empty"
    assert "</html>" in (folder / "index.html").read_text()


@dataclass
class Stage:
    """One stage's kill chain: its command lines, outputs and how to check them."""

    name: str
    first: list[str]  # argv of the first (killed) run
    again: list[str]  # argv of every later run (e.g. with --resume)
    target: Path  # the output path (file or folder) the command names
    check: Callable[[Path], None]
    reference: Path  # the same output from an uninterrupted run
    compare: Callable[[Path, Path], None]
    events: list[tuple[str, float, str]]  # write operations of the uninterrupted run (in-process trace)


@dataclass
class Chain:
    kills: int = 0  # children that died by SIGKILL
    finished: int = 0  # children that ended before their kill came (exit 0)
    attempts: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)


def _compare_run(a: Path, b: Path) -> None:
    assert_same_state(torch.load(a / "checkpoint.pt", weights_only=True), torch.load(b / "checkpoint.pt", weights_only=True),
                      "checkpoint")
    assert_same_table(a / "history.parquet", b / "history.parquet")
    assert (a / "config.json").read_text() == (b / "config.json").read_text()


def _compare_clones(a: Path, b: Path) -> None:
    for name in ("clones.parquet", "clones-summary.parquet"):
        assert_same_table(a / name, b / name)


def _compare_report(a: Path, b: Path) -> None:
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for name in files_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"report file {name} differs"


def _wait_for_events(log: Path, n: int, proc: subprocess.Popen[bytes]) -> bool:
    """Poll the child's write log until it holds n operations; False if the child ended first."""
    while proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= n:
            return True
        time.sleep(0.001)
    return False


def _run_chain(stage: Stage, kills: int, rng: np.random.Generator, root: Path) -> Chain:
    chain = Chain()
    ref_times = np.array([t for _, t, _ in stage.events])
    consumed = 0
    for i in range(kills):
        argv = stage.first if i == 0 else stage.again
        # Later runs of a resumed chain have fewer operations left: draw among those, roughly.
        available = max(1, len(stage.events) - consumed)
        log = root / f"{stage.name}-kill{i}.log"
        env = child_env(PYTHONPATH=FAULTINJECT_PATH, MITOSIS_FI_ROOT=str(root), MITOSIS_FI_LOG=str(log))
        if i % 2 == 0:
            kind, n, delay = "crash point", int(rng.integers(1, available + 1)), 0.0
            env["MITOSIS_FI_DIE_AT"] = str(n)
        else:
            offset = len(stage.events) - available
            t = rng.uniform(ref_times[offset], ref_times[-1]) if available > 1 else ref_times[-1]
            k = int(np.searchsorted(ref_times, t, side="right"))  # operations done by time t
            kind, n, delay = "external", max(1, k - offset), float(t - ref_times[max(k - 1, 0)])
        proc = subprocess.Popen([str(MITOSIS), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kind == "external" and _wait_for_events(log, n, proc):
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
        done = log.read_bytes().count(b"\n") if log.exists() else 0
        attempt = {"kind": kind, "at_operation": n, "delay_s": round(delay, 4), "returncode": proc.returncode, "operations": done}
        chain.attempts.append(attempt)
        if proc.returncode == -signal.SIGKILL:
            chain.kills += 1
            consumed += max(0, done - 4)  # minus the start-up operations (folders, lock, config)
        elif proc.returncode == 0:
            chain.finished += 1
        else:
            chain.problems.append(f"{stage.name} run {i} ({kind}): exit {proc.returncode}: {err.decode()[-500:]}")
        try:
            stage.check(stage.target)
        except Exception as exc:  # noqa: BLE001 - any failure of the check is a finding, collected for the report
            chain.problems.append(f"{stage.name} after kill {i} ({attempt}): {type(exc).__name__}: {exc}")
    # Hidden files a kill left beside or inside the output (each stage writes below its own folder).
    chain.leftovers = sorted(str(p.relative_to(root)) for p in (root / stage.name).rglob(".*") if not p.name.endswith(".lock")
                             and p.name != ".mitosis-report.json"
                             and not any(q.name.startswith(".") for q in p.relative_to(root).parents if q.name))
    return chain


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Stage, Future[Chain]]]:
    """Uninterrupted in-process references for every stage, then the five kill chains, two at a time."""
    ref = tmp_path_factory.mktemp("reference")
    inputs = tmp_path_factory.mktemp("inputs")
    work = tmp_path_factory.mktemp("killed")
    stages: list[Stage] = []

    def traced(argv: list[str], root: Path) -> list[tuple[str, float, str]]:
        with trace_writes(root) as events:
            assert main(argv) == 0, argv
        return list(events)

    run_args = ["train", *TINY_TRAIN, "--seed", "1"]
    events = traced([*run_args, "-o", str(ref / "run")], ref)
    stages.append(Stage("train", [*run_args, "-o", str(work / "train" / "run")],
                        [*run_args, "--resume", "-o", str(work / "train" / "run")],
                        work / "train" / "run", _check_run_dir, ref / "run", _compare_run, events))

    ext_args = ["extract", str(ref / "run"), "--threads", "1", "--quiet", "-o"]
    events = traced([*ext_args, str(ref / "acts.h5")], ref)
    stages.append(Stage("extract", [*ext_args, str(work / "extract" / "acts.h5")], [*ext_args, str(work / "extract" / "acts.h5")],
                        work / "extract" / "acts.h5", _check_acts, ref / "acts.h5", assert_same_h5, events))

    acts = [planted_acts(inputs / f"acts-s{s}.h5", seed=s) for s in range(3)]
    cl_args = ["clones", str(acts[0]), *TINY_CLONES, "-o"]
    events = traced([*cl_args, str(ref / "clones")], ref)
    stages.append(Stage("clones", [*cl_args, str(work / "clones" / "out")], [*cl_args, str(work / "clones" / "out")],
                        work / "clones" / "out", _check_clones, ref / "clones", _compare_clones, events))

    en_args = ["ensemble", *map(str, acts), *TINY_ENSEMBLE, "-o"]
    events = traced([*en_args, str(ref / "ensemble.parquet")], ref)
    stages.append(Stage("ensemble", [*en_args, str(work / "ensemble" / "ensemble.parquet")],
                        [*en_args, str(work / "ensemble" / "ensemble.parquet")],
                        work / "ensemble" / "ensemble.parquet", _check_ensemble, ref / "ensemble.parquet", assert_same_table,
                        events))

    # Two tables, two figures (each ~2 s of matplotlib here): enough for every kind of write of a report.
    tables = [ref / "ensemble.parquet", ref / "run" / "history.parquet"]
    rep_args = ["report", *map(str, tables), "--quiet", "-o"]
    events = traced([*rep_args, str(ref / "report")], ref)
    stages.append(Stage("report", [*rep_args, str(work / "report" / "report")], [*rep_args, str(work / "report" / "report")],
                        work / "report" / "report", _check_report, ref / "report", _compare_report, events))

    kills = kills_per_stage()
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kill-chain")  # 2 cores: two children at a time
    futures = {s.name: (s, pool.submit(_run_chain, s, kills, np.random.default_rng([SEED, i]), work))
               for i, s in enumerate(stages)}
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.parametrize("name", STAGES)
def test_kill_at_random_moments_leaves_no_partial_output_and_rerun_is_identical(
        name: str, chains: dict[str, tuple[Stage, Future[Chain]]]) -> None:
    stage, future = chains[name]
    chain = future.result(timeout=600)
    record(f"kill.{name}.children", len(chain.attempts))
    record(f"kill.{name}.killed", chain.kills)
    record(f"kill.{name}.finished_before_kill", chain.finished)
    record(f"kill.{name}.leftover_hidden_temporaries", len(chain.leftovers))
    record("kill.total_killed", chain.kills)
    assert not chain.problems, "\n".join(chain.problems)
    # Most attempts must really kill the child (a kill that comes after the end proves nothing).
    assert chain.kills >= max(1, (2 * len(chain.attempts)) // 3), chain.attempts
    # Leftovers of a kill are hidden temporaries (".NAME.*.tmp", ".report.tmp-*"), never a visible name.
    assert all(".tmp" in name or ".old-" in name for name in chain.leftovers), chain.leftovers
    # The rerun completes (train: --resume) and gives the uninterrupted run's results.
    assert main(stage.again) == 0
    stage.compare(stage.reference, stage.target)
    if name == "train":  # resuming once more is a no-op that keeps the same checkpoint
        before = (stage.target / "checkpoint.pt").read_bytes()
        assert main(stage.again) == 0 and (stage.target / "checkpoint.pt").read_bytes() == before
