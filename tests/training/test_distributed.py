"""Scale-out and preemption through the real console script in subprocesses."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from mitosis_cli.errors import PREEMPTED_EXIT_CODE
from mitosis_cli.io.checkpoints import load_checkpoint

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
FAULTINJECT = REPO / "tests" / "reliability" / "faultinject"  # holds a child at a chosen point (its docstring)
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
TINY = ["--train-size", "256", "--width", "32", "--batch-size", "32", "--threads", "1", "--quiet"]


def _losses(run: Path) -> list[float]:
    return pq.read_table(run / "history.parquet").column("train_loss").to_pylist()


def test_torchrun_two_processes_matches_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([str(BIN / "mitosis"), "train", *TINY, "--epochs", "3", "-o", str(one)], env=ENV, check=True)
    subprocess.run([str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", "29533", str(BIN / "mitosis"), "train",
                    *TINY, "--epochs", "3", "-o", str(two)], env=ENV, check=True, capture_output=True)
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-5)
    a, b = load_checkpoint(one / "checkpoint.pt")["model"], load_checkpoint(two / "checkpoint.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_sigterm_saves_checkpoint_and_resume_matches(tmp_path: Path) -> None:
    args = [str(BIN / "mitosis"), "train", "--train-size", "1500", "--width", "256", "--threads", "1", "--quiet",
            "--epochs", "4", "--seed", "5"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([*args, "-o", str(full)], env=ENV, check=True)
    # The child waits where it writes the first epoch's history until the signal is on its way: mid-training for sure.
    flag = tmp_path / "go"
    held = {**ENV, "PYTHONPATH": os.pathsep.join([str(FAULTINJECT), str(REPO)]), "MITOSIS_FI_HOLD": str(flag),
            "MITOSIS_FI_HOLD_AT": "os.rename:history.parquet"}
    proc = subprocess.Popen([*args, "-o", str(cut)], env=held, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not Path(f"{flag}.held").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    flag.touch()  # release the hold: the signal is already pending
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE and "--resume" in err and "Traceback" not in err
    assert not load_checkpoint(cut / "checkpoint.pt")["finished"]
    subprocess.run([*args, "-o", str(cut), "--resume"], env=ENV, check=True)
    a, b = load_checkpoint(full / "checkpoint.pt")["model"], load_checkpoint(cut / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(full) == _losses(cut)
