"""Progress for jobs nobody watches: timestamped lines in a log, bars on a terminal, silence with --quiet."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console
from rich.progress import Progress as Bar

from mitosis_cli.cli import console
from mitosis_cli.cli.app import main
from mitosis_cli.stages.base import Progress
from mitosis_cli.training import loop

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
EPOCH_LINE = re.compile(rf"^{STAMP} train mnist5k mlp-2-relu w16 s0 epoch (\d+)/3 train loss (\S+) error (\S+), "
                        r"test error (\S+), lr (\S+), (\S+) s \(elapsed \d+:\d\d:\d\d\)$")
SMALL = ["--width", "16", "--train-size", "200", "--batch-size", "50"]


def test_train_writes_one_line_per_epoch_to_a_log(tmp_path: Path) -> None:
    """`mitosis train --width 16 --epochs 3 -o r 2> log`: the log holds each epoch's numbers, as history.parquet has them."""
    with (tmp_path / "log").open("w") as log:
        subprocess.run([sys.executable, "-m", "mitosis_cli", "train", "--width", "16", "--epochs", "3", "-o", "r"],
                       cwd=tmp_path, stderr=log, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, timeout=300)
    lines = (tmp_path / "log").read_text().splitlines()
    epochs = [EPOCH_LINE.match(line) for line in lines if " epoch " in line]
    assert all(epochs) and [int(m.group(1)) for m in epochs] == [1, 2, 3], lines
    assert all(re.match(STAMP, line) for line in lines), "every line of a log is timestamped"
    history = pq.read_table(tmp_path / "r" / "history.parquet").to_pylist()
    for match, row in zip(epochs, history, strict=True):
        assert float(match.group(2)) == pytest.approx(row["train_loss"], rel=1e-3)
        assert float(match.group(3)) == pytest.approx(row["train_error"], abs=1e-4)
        assert float(match.group(4)) == pytest.approx(row["test_error"], abs=1e-4)
        assert float(match.group(5)) == pytest.approx(row["lr"], rel=1e-2, abs=1e-9)
    # every row says which network it is, so stacked histories keep apart
    assert {(r["arch"], r["dataset"], r["width"], r["seed"]) for r in history} == {("mlp-2-relu", "mnist5k", 16, 0)}


def test_long_epochs_are_heard_from(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(loop, "HEARTBEAT_SECONDS", 0.0)  # every step counts as "long"
    assert main(["train", *SMALL, "--epochs", "1", "-o", str(tmp_path / "r"), "--progress", "lines"]) == 0
    lines = capsys.readouterr().err.splitlines()
    steps = [re.search(r"epoch 0/1 done; epoch 1 at step (\d)/4", line) for line in lines]
    assert [int(m.group(1)) for m in steps if m] == [1, 2, 3, 4]
    assert re.search(rf"^{STAMP} train .* epoch 1/1 train loss", lines[-2]), lines


def test_quiet_is_silent_and_none_keeps_only_messages(tmp_path: Path, capsys) -> None:
    assert main(["train", *SMALL, "--epochs", "2", "-o", str(tmp_path / "a"), "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["train", *SMALL, "--epochs", "2", "-o", str(tmp_path / "b"), "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert " epoch " not in err and "done: 2 epochs" in err
    assert main(["train", *SMALL, "-o", str(tmp_path / "c"), "--progress", "loud"]) == 2
    assert "--progress 'loud': choose from auto, bar, lines, none" in capsys.readouterr().err


def test_bar_never_shows_more_done_than_its_total(monkeypatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(console, "stderr", Console(file=screen, force_terminal=True, width=120))
    with console.progress("bar") as on_step:
        for done in range(1, 6):  # a stage that announced 4 steps and took 5
            on_step(Progress("clones mlp-2-relu w16 s0 e3", done, 4, f"phase {done}"))
    text = screen.getvalue()
    assert "5/5" in text and "5/4" not in text


def test_remaining_time_follows_the_average_pace() -> None:
    """Two fast steps after a slow one: rich's windowed estimate would say seconds; the average says the truth."""
    clock = [0.0]
    bar = Bar(get_time=lambda: clock[0])
    task = bar.add_task("demo", total=4)
    clock[0] = 36.0
    bar.update(task, completed=1)
    clock[0] = 40.0
    bar.update(task, completed=3)
    assert str(console._Remaining().render(bar.tasks[0])) == "~0:00:13 left"  # 40 s for 3 steps: 13 s for the last


def test_a_task_is_timed_from_when_it_began_not_from_its_first_report(monkeypatch) -> None:
    """The demo's first training run reports after a minute: that minute counts in the estimate."""
    clock, bars = [0.0], []

    def timed_bar(*columns, **settings) -> Bar:
        bars.append(Bar(*columns, get_time=lambda: clock[0], **settings))
        return bars[-1]

    monkeypatch.setattr(console, "stderr", Console(file=io.StringIO(), force_terminal=True, width=120))
    monkeypatch.setattr(console, "Bar", timed_bar)
    with console.progress("bar") as on_step:
        clock[0] = 60.0
        on_step(Progress("train", 1, 4, "w16-s0 trained"))
        assert str(console._Remaining().render(bars[0].tasks[0])) == "~0:03:00 left"
