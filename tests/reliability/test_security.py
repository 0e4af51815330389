"""Security: files from others are untrusted; the tool writes only where told and stays off the network.

* A checkpoint never runs code when loaded: crafted pickles (a raw pickle, a torch zip whose data.pkl
  calls os.system, the payload hidden inside the weights or the config, a run directory resumed with
  one) are refused with one line through `extract` and `train --resume`, and the file the payload
  would create never appears.
* Shell text the tool writes quotes paths: the sweep's commands and SLURM scripts are proven in
  tests/cli/test_sweep.py (`HOSTILE`/`DASHED` folder names run as data under bash, with stub programs);
  here, the command line recorded in every table's metadata round-trips through the shell as data.
* Each stage writes only the paths it was given (plus hidden temporaries and `.NAME.lock` files beside
  them): every file-system write of the process is traced (`sys.audit`), with cwd and $HOME elsewhere.
* No stage opens a network connection (sockets refuse to connect during the whole traced pipeline).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shlex
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

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
    trace_writes,
)


class Payload:
    """Unpickling calls os.system(`touch MARKER`): what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mitosis_cli.cli.app import main

    run = tmp_path_factory.mktemp("good") / "run"
    assert main(["train", *TINY_TRAIN, "-o", str(run)]) == 0
    return run


def _legit(run: Path) -> dict[str, object]:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def _raw_pickle(run: Path, path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"format": "mitosis-checkpoint", "payload": Payload(marker)}))


def _torch_zip_top(run: Path, path: Path, marker: Path) -> None:
    torch.save({**_legit(run), "extra": Payload(marker)}, path)


def _in_weights(run: Path, path: Path, marker: Path) -> None:
    payload = _legit(run)
    payload["model"] = {**payload["model"], "trap": Payload(marker)}  # type: ignore[dict-item]
    torch.save(payload, path)


def _as_config(run: Path, path: Path, marker: Path) -> None:
    torch.save({**_legit(run), "config": Payload(marker)}, path)


def _spliced(run: Path, path: Path, marker: Path) -> None:
    """A legitimate checkpoint whose data.pkl record is replaced by a plain pickle that calls os.system."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(run / "checkpoint.pt") as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps(Payload(marker), protocol=2)
            dst.writestr(item, data)
    path.write_bytes(buffer.getvalue())


CRAFTED = {"raw pickle": _raw_pickle, "torch zip, top level": _torch_zip_top, "inside the weights": _in_weights,
           "as the config": _as_config, "spliced data.pkl": _spliced}


@pytest.mark.parametrize("how", list(CRAFTED))
def test_crafted_checkpoint_never_runs_code(tmp_path: Path, cli: RunCli, good_run: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    # the payload is real: full unpickling runs it (our own payload, so harmless here: it touches a file)
    evil = tmp_path / "evil.pt"
    CRAFTED[how](good_run, evil, marker)
    with contextlib.suppress(Exception):  # the payload runs while unpickling, whatever the load does after
        torch.load(evil, weights_only=False)
    assert marker.exists(), "the crafted checkpoint does not run its payload under plain pickle"
    marker.unlink()
    # extract refuses it: one line, exit 2, no marker, no output
    result = cli("extract", evil, "-o", tmp_path / "acts.h5", "--threads", "1", "--quiet")
    assert_clean_failure(result, evil)
    assert "refused" in result.err or "not a" in result.err
    assert not marker.exists() and not (tmp_path / "acts.h5").exists()
    # as a run directory's checkpoint: `extract RUN` and `train --resume` refuse it too
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(evil.read_bytes())
    assert_clean_failure(cli("extract", run, "--threads", "1", "--quiet"), run / "checkpoint.pt")
    assert_clean_failure(cli("train", *TINY_TRAIN, "--resume", "-o", run), run / "checkpoint.pt")
    assert not marker.exists()
    record("security.crafted_checkpoints_refused", 3)


def test_crafted_checkpoint_through_the_console_script(tmp_path: Path, good_run: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    _torch_zip_top(good_run, evil, marker)
    proc = subprocess.run([str(MITOSIS), "extract", str(evil), "-o", str(tmp_path / "a.h5")], capture_output=True, text=True,
                          env=child_env(), timeout=300)
    line = assert_clean_failure(Result(proc.returncode, proc.stdout, proc.stderr), evil, problem="refused")
    assert "run code" in line and not marker.exists() and not (tmp_path / "a.h5").exists()
    record("security.crafted_checkpoints_refused")


# --------------------------------------------------------------------------------- recorded command lines

HOSTILE = "a b;$(touch pwned)'\"-x"


def test_recorded_command_line_is_quoted(tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `command` in a table's metadata, pasted into bash, gives the program the same argv (as data)."""
    folder = tmp_path / HOSTILE
    folder.mkdir()
    acts = [planted_acts(folder / f"-s{s} $(touch pwned).h5", seed=s) for s in range(2)]
    out = folder / "ens; touch pwned.parquet"
    argv = ["ensemble", *map(str, acts), *TINY_ENSEMBLE, "-o", str(out)]
    monkeypatch.setattr(sys, "argv", ["mitosis", *argv])  # what the console script would see
    assert cli(*argv).code == 0
    command = json.loads(pq.read_schema(out).metadata[b"mitosis"])["command"]
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "mitosis").write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    (stub / "mitosis").chmod(0o755)
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path,
                         env={**child_env(), "PATH": f"{stub}:{os.environ['PATH']}"}, timeout=60)
    # the recorded command is the stage's canonical one: the same inputs and output, each one word, as data
    given = json.loads(ran.stdout)
    assert ran.returncode == 0 and given == shlex.split(command)[1:] and given[0] == "ensemble"
    assert given[given.index("--") + 1:] == list(map(str, acts)) and f"--out={out}" in given
    assert not list(tmp_path.rglob("pwned"))
    record("security.quoting_cases")


# ------------------------------------------------------------------------------ writes only where told


def _allowed(path: str, targets: list[Path]) -> bool:
    if path == os.devnull:  # opened for writing to discard output: not a file
        return True
    p = Path(os.path.abspath(path))
    home = Path(os.environ["HOME"])
    if any(p == home / sub or home / sub in p.parents for sub in (".cache/matplotlib", ".config/matplotlib")) or p in (
            home / ".cache", home / ".config"):
        return True  # matplotlib's font cache and config folder (see the report child test below)
    for target in targets:
        if p == target or target in p.parents:  # the output itself, or inside an output folder
            return True
        # .NAME.lock, .NAME.*.tmp, and everything inside .NAME.tmp-*/ (a report being built)
        if any(q.parent == target.parent and q.name.startswith(f".{target.name}") for q in (p, *p.parents)):
            return True
        if p in target.parents:  # creating the output's folders
            return True
    return False


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make every way of opening a connection fail (and remember the attempt)."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted during a test that forbids it")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_each_stage_writes_only_the_paths_it_was_given_and_stays_offline(tmp_path: Path, cli: RunCli,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline with cwd and $HOME in empty folders, every write traced, and sockets that refuse to connect.

    Accepted exception: matplotlib's own font cache and config folder under $HOME/.cache/matplotlib and
    $HOME/.config/matplotlib (its documented locations; MPLCONFIGDIR moves them), written the first time
    matplotlib runs under a $HOME: rebuilding the font list on every report would cost seconds each.
    """
    attempts = _refuse_network(monkeypatch)
    home, cwd, inputs, outs = (tmp_path / name for name in ("home", "cwd", "inputs", "outs"))
    for folder in (home, cwd, inputs, outs):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    acts = [planted_acts(inputs / f"acts-s{s}.h5", seed=s) for s in range(2)]
    run, extracted, clones, ensemble, report = (outs / "run", outs / "x" / "acts.h5", outs / "clones",
                                                outs / "e" / "ensemble.parquet", outs / "report")
    stages = [
        (["train", *TINY_TRAIN, "-o", run], [run]),
        (["extract", run, "-o", extracted, "--threads", "1", "--quiet"], [extracted]),
        (["clones", *acts, *TINY_CLONES, "-o", clones], [clones]),
        (["ensemble", *acts, *TINY_ENSEMBLE, "-o", ensemble], [ensemble]),
        (["report", ensemble, run / "history.parquet", "--quiet", "-o", report], [report]),
    ]
    before_inputs = {p: p.stat().st_mtime_ns for p in inputs.iterdir()}
    for argv, targets in stages:
        with trace_writes(Path("/")) as events:
            assert cli(*argv).code == 0, argv
        stray = sorted({path for _, _, path in events if not _allowed(path, targets)})
        assert not stray, f"{argv[0]} wrote outside its outputs: {stray}"
        record("security.stages_traced")
        record("security.stages_offline")
        record("security.writes_checked", len(events))
    assert attempts == []
    assert list(cwd.iterdir()) == []
    assert all(p.name in (".cache", ".config") for p in home.iterdir())  # matplotlib's, at most
    assert {p: p.stat().st_mtime_ns for p in inputs.iterdir()} == before_inputs
    visible = sorted(str(p.relative_to(outs)) for p in outs.rglob("*")
                     if not any(part.startswith(".") for part in p.relative_to(outs).parts))
    assert all(v.split("/")[0] in {"run", "x", "clones", "e", "report"} for v in visible), visible


# ------------------------------------------------------------------------------------------- no network
