"""Determinism: the same command twice gives identical outputs, on 1 and on 2 threads.

Compared bit for bit (only wall-clock columns, creation times and the command line excepted):
train (checkpoint tensors, history), extract (HDF5 datasets), clones, ensemble (Parquet values) and
report (every file's bytes). Between `--threads 1` and `--threads 2` the same holds bit for bit for
these sizes; where a BLAS reduction could legitimately reorder sums, the comparison below says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mitosis_cli.io.tables import file_sha256

from .conftest import (
    TINY_CLONES,
    TINY_ENSEMBLE,
    TINY_TRAIN,
    RunCli,
    assert_same_h5,
    assert_same_state,
    assert_same_table,
    planted_acts,
    record,
)


@pytest.fixture(autouse=True)
def _one_thread_after() -> None:
    yield
    torch.set_num_threads(1)  # `--threads 2` in-process changes this process's setting; the suite runs on 1


def _train_args(threads: int) -> list[str]:
    args = list(TINY_TRAIN)
    args[args.index("--threads") + 1] = str(threads)
    return args


def test_train_and_extract_twice_and_on_two_threads(tmp_path: Path, cli: RunCli) -> None:
    runs = {}
    for name, threads in (("a", 1), ("b", 1), ("c", 2)):
        run = tmp_path / name
        assert cli("train", *_train_args(threads), "--seed", "2", "--save-epochs", "0,2", "-o", run).code == 0
        assert cli("extract", run, "-o", run / "acts.h5", "--threads", str(threads), "--quiet").code == 0
        runs[name] = run
    for other in ("b", "c"):
        assert_same_state(torch.load(runs["a"] / "checkpoint.pt", weights_only=True),
                          torch.load(runs[other] / "checkpoint.pt", weights_only=True), f"checkpoint {other}")
        assert_same_table(runs["a"] / "history.parquet", runs[other] / "history.parquet")
        # checkpoint.pt records wall-clock seconds (history, seconds_in_epoch), so its sha256 - which the acts
        # file quotes as source_sha256 - differs between two runs; every array and other attribute is identical.
        assert_same_h5(runs["a"] / "acts.h5", runs[other] / "acts.h5", ignore=("source_sha256",))
        # snapshots hold no timings: the same weights give the same bytes (their sha256 identifies them)
        for epoch in ("0000", "0002"):
            snap = f"checkpoints/epoch-{epoch}.pt"
            assert (runs["a"] / snap).read_bytes() == (runs[other] / snap).read_bytes(), snap
    record("determinism.commands_compared", 4)


def test_clones_ensemble_report_twice_and_on_two_threads(tmp_path: Path, cli: RunCli) -> None:
    acts = [planted_acts(tmp_path / f"acts-s{s}.h5", seed=s, n=200) for s in range(3)]
    outs = {}
    for name, threads in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / name
        clones_args = list(TINY_CLONES)
        clones_args[clones_args.index("--threads") + 1] = str(threads)
        assert cli("clones", *acts[:2], *clones_args, "-o", out / "clones").code == 0
        assert cli("ensemble", *acts, *TINY_ENSEMBLE, "-o", out / "ensemble.parquet").code == 0
        if threads == 1:  # `report` has no thread option; one figure (~4 s each here) keeps the suite short
            assert cli("report", out / "ensemble.parquet", "--quiet", "-o", out / "report").code == 0
        outs[name] = out
    for other in ("b", "c"):
        for table in ("clones/clones.parquet", "clones/clones-summary.parquet", "ensemble.parquet"):
            assert_same_table(outs["a"] / table, outs[other] / table)
        if other == "c":
            continue
        files = sorted(p.relative_to(outs["a"] / "report") for p in (outs["a"] / "report").rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(outs[other] / "report") for p in (outs[other] / "report").rglob("*") if p.is_file())
        for name in files:
            if name.name == ".mitosis-report.json":
                # the stamp holds the sha256 of the input tables, which record their own command (with their
                # output path, in different folders here): compare everything else
                stamps = [json.loads((out / "report" / name).read_text()) for out in (outs["a"], outs[other])]
                for stamp in stamps:
                    stamp["stamp"]["inputs"] = len(stamp["stamp"]["inputs"])
                assert stamps[0] == stamps[1]
            elif name.suffix in (".html", ".md"):
                # these name their input tables (path and sha256), which live in different folders here: compare
                # with the folder and the table's digest swapped
                texts = []
                for out in (outs["a"], outs[other]):
                    digest = file_sha256(out / "ensemble.parquet")
                    text = (out / "report" / name).read_text().replace(str(out), "OUT").replace(digest, "SHA")
                    texts.append(text.replace(digest[:12], "SHA"))
                text_a, text_b = texts
                assert text_a == text_b, name
            else:
                assert (outs["a"] / "report" / name).read_bytes() == (outs[other] / "report" / name).read_bytes(), name
    record("determinism.commands_compared", 5)
