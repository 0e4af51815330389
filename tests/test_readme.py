"""Every command in the README's shell blocks runs as written, in order, in one temporary folder.

The blocks run through bash. `mitosis` there is a small client that hands its words to this test process,
which runs them with the command line's own `main` (one Python start for the whole tour instead of one
per command: the test takes seconds, not minutes), after appending the documented substitutions of
`SHRINK` (fewer epochs, samples and repeats; `demo` through its `--dry-run`). An install line is CI's own
command (checked against .ci/run) of which only the `mitosis` part runs. Then the SLURM array script the
tour writes runs its first task as SLURM would (SLURM_ARRAY_TASK_ID set, a stub `scontrol`), and the
analysis script after it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from mitosis_cli.cli.app import main

REPO = Path(__file__).resolve().parent.parent
SHRINK = {  # appended to each README command of that sub-command
    "train": ["--epochs", "2", "--train-size", "300"],
    "sweep": ["--epochs", "2", "--train-size", "300", "--clones-arg=--repeats=3", "--clones-arg=--acc-repeats=5",
              "--clones-arg=--ii-points=100", "--ensemble-arg=--repeats=2"],
    "clones": ["--repeats", "3", "--acc-repeats", "5", "--ii-points", "100"],
    "ensemble": ["--repeats", "2"],
    "demo": ["--dry-run"],
}
CLIENT = """import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({address!r})
s.sendall(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}).encode())
s.shutdown(socket.SHUT_WR)
reply = json.loads(b"".join(iter(lambda: s.recv(1 << 16), b"")))
sys.stdout.write(reply["stdout"])
sys.stderr.write(reply["stderr"])
sys.exit(reply["code"])
"""


def shell_blocks(text: str) -> list[str]:
    """The ```bash blocks of a Markdown text."""
    return re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def runnable(block: str) -> str:
    """A block as bash runs it here: an install line (python3 -m venv ...) keeps only its `mitosis` commands."""
    lines = []
    for line in block.splitlines():
        if line.startswith("python3 -m venv"):
            lines += [part.strip().removeprefix(".venv/bin/") for part in line.split("&&")
                      if part.strip().startswith(".venv/bin/mitosis ")]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def receive_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


class Server:
    """Runs the clients' `mitosis` commands here, one at a time, and remembers them."""

    def __init__(self, folder: Path) -> None:
        self.address = str(folder / "mitosis.sock")
        self.socket = socket.socket(socket.AF_UNIX)
        self.socket.bind(self.address)
        self.socket.listen()
        self.socket.settimeout(0.05)
        self.commands: list[list[str]] = []
        self.messages: list[str] = []  # each command's stderr

    def run_until_done(self, process: subprocess.Popen[bytes]) -> int:
        while process.poll() is None:
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(None)
                request = json.loads(receive_all(connection))
                connection.sendall(json.dumps(self.handle(request["argv"], Path(request["cwd"]))).encode())
        return process.wait()

    def handle(self, argv: list[str], cwd: Path) -> dict[str, object]:
        command = next((word for word in argv if not word.startswith("-")), "")
        end = argv.index("--") if "--" in argv else len(argv)  # the options go before the positional paths
        argv = [*argv[:end], *SHRINK.get(command, []), *argv[end:]]
        self.commands.append(argv)
        out, err, here = io.StringIO(), io.StringIO(), Path.cwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
        finally:
            os.chdir(here)
        self.messages.append(err.getvalue())
        return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run_bash(server: Server, script: str, cwd: Path, env: dict[str, str], log: Path) -> int:
    with log.open("a") as sink:
        process = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        return server.run_until_done(process)


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_install_lines_are_what_ci_runs() -> None:
    install = [line for block in shell_blocks((REPO / "README.md").read_text()) for line in block.splitlines()
               if line.startswith("python3 -m venv")]
    assert len(install) == 2
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert install[1] == ci, "the README's test command differs from what CI (.ci/run) runs"


def test_every_readme_command_runs_as_written(tmp_path: Path, restore_torch_threads) -> None:
    work, bin_dir = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    bin_dir.mkdir()
    server = Server(tmp_path)
    _executable(bin_dir / "mitosis", f"#!{sys.executable}\n" + CLIENT.format(address=server.address))
    _executable(bin_dir / "scontrol", f'#!/bin/sh\necho "$@" >> {shlex.quote(str(tmp_path / "scontrol.log"))}\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "bash.log"
    blocks = shell_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2
    for block in blocks:
        code = run_bash(server, "set -e\n" + runnable(block), work, env, log)
        assert code == 0, f"a README block failed (exit {code}):\n{block}\n--- output ---\n{log.read_text()[-6000:]}"
    stages = [next(w for w in argv if not w.startswith("-")) for argv in server.commands]
    assert {"demo", "train", "ensemble", "clones", "report", "sweep"} <= set(stages)
    assert stages.count("train") == 3  # the wide network and the loop over 2 widths (3 seeds each, trained together)

    # what the tour promises to have written
    assert (work / "results" / "report" / "index.html").is_file()
    assert (work / "sweeps" / "mnist" / "mnist5k" / "report" / "index.html").is_file()
    history = pq.read_table(work / "runs" / "w512-s0" / "history.parquet").to_pylist()
    assert {(r["arch"], r["dataset"], r["width"], r["seed"]) for r in history} == {("mlp-2-batchnorm", "mnist5k", 512, 0)}

    # the SLURM array, task 0, as SLURM runs it; then the analysis job
    array, analysis = work / "sweep.sbatch", work / "sweep-analysis.sbatch"
    task_env = {**env, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "77"}
    before = len(server.commands)
    code = run_bash(server, f"bash {shlex.quote(str(array))}", work, task_env, log)
    assert code == 0, log.read_text()[-4000:]
    assert server.commands[before][:1] == ["train"] and "--resume" in server.commands[before]
    assert not (tmp_path / "scontrol.log").exists(), "a finished task must not requeue itself"
    assert run_bash(server, f"bash {shlex.quote(str(analysis))}", work, env, log) == 0, log.read_text()[-4000:]
    assert [argv[0] for argv in server.commands[before + 1:]] == ["ensemble", "clones", "report"]
    assert all("skipped" in message for message in server.messages[before:]), "the sweep had done all of it already"
