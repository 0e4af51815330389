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
* No stage opens a network connection (sockets refuse to connect during the whole pipeline).
"""

from __future__ import annotations

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

from .conftest import (MITOSIS, TINY_CLONES, TINY_ENSEMBLE, TINY_TRAIN, Result, RunCli, assert_clean_failure, child_env,
                       planted_acts, record, trace_writes)


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
    try:
        torch.load(evil, weights_only=False)
    except Exception:  # noqa: BLE001 - the spliced record breaks the rest of the load, after the payload ran
        pass
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
    assert ran.returncode == 0 and json.loads(ran.stdout) == argv
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


def test_each_stage_writes_only_the_paths_it_was_given(tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    home, cwd, inputs, outs = (tmp_path / name for name in ("home", "cwd", "inputs", "outs"))
    for folder in (home, cwd, inputs, outs):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    acts = [planted_acts(inputs / f"acts-s{s}.h5", seed=s) for s in range(2)]
    run, extracted, clones, ensemble, report = (outs / "run", outs / "x" / "acts.h5", outs / "clones", outs / "e" / "ensemble.parquet",
                                                outs / "report")
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
        record("security.writes_checked", len(events))
    assert list(cwd.iterdir()) == []
    assert all(p.name in (".cache", ".config") for p in home.iterdir())  # matplotlib's, at most
    assert {p: p.stat().st_mtime_ns for p in inputs.iterdir()} == before_inputs
    visible = sorted(str(p.relative_to(outs)) for p in outs.rglob("*") if not any(part.startswith(".") for part in p.relative_to(outs).parts))
    assert all(v.split("/")[0] in {"run", "x", "clones", "e", "report"} for v in visible), visible


def test_report_child_writes_nothing_in_home_or_cwd_but_matplotlibs_cache(tmp_path: Path) -> None:
    """Through the console script with a fresh $HOME and cwd: nothing lands in cwd, and in $HOME only
    matplotlib's own font cache and config folder (its documented locations; MPLCONFIGDIR moves them).
    Known and accepted: rebuilding the font list on every run instead would cost seconds per report."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    from mitosis_cli.io.tables import provenance, write_table
    import pyarrow as pa

    table = write_table(tmp_path / "h.parquet", pa.table({c: [1.0, 0.5] for c in ("epoch", "train_loss", "train_error", "test_loss", "test_error")}),
                        provenance("history", [], {"config": {"arch": "mlp", "dataset": "x", "width": 8, "seed": 0}}))
    env = child_env(HOME=str(home))
    for key in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        env.pop(key, None)
    proc = subprocess.run([str(MITOSIS), "report", str(table), "-o", str(tmp_path / "report"), "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list(cwd.iterdir()) == []
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert all(w.startswith((".cache/matplotlib/", ".config/matplotlib/")) for w in written), written
    record("security.stages_traced")


# ------------------------------------------------------------------------------------------- no network


def test_no_stage_touches_the_network(tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted during a test that forbids it")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    acts = [planted_acts(tmp_path / f"a{s}.h5", seed=s) for s in range(2)]
    run = tmp_path / "run"
    for argv in (["train", *TINY_TRAIN, "-o", run], ["extract", run, "-o", tmp_path / "x.h5", "--threads", "1", "--quiet"],
                 ["clones", acts[0], *TINY_CLONES, "-o", tmp_path / "c"], ["ensemble", *acts, *TINY_ENSEMBLE, "-o", tmp_path / "e.parquet"],
                 ["report", tmp_path / "e.parquet", "--quiet", "-o", tmp_path / "r"]):
        assert cli(*argv).code == 0, argv
        record("security.stages_offline")
    assert attempts == []
