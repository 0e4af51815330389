"""Crashes, hangs and the smaller breaks: never a hang, a segfault or a traceback, one line each time.

* **Inputs that are not regular files** (a FIFO would block the first read forever, a device never ends):
  through every reader (`extract --model`'s weights and images and `import`'s dumps included), each case
  under a watchdog that unblocks a hung read and fails the test.
* **Writes the system refuses**: the file-size limit (``ulimit -f``, EFBIG) during extract (refused up
  front, and, with that check switched off, failing inside libhdf5 without the segfault it used to
  cause), a training checkpoint and the clones tables; exit 1, one line naming the output and the
  reason, no temporary left.
* **Signals from the first instant**: SIGTERM at moments across a training run's start-up and its
  loop exits 75 (never 143), with nothing half-written, and the run resumes; the same for seeds trained
  together, where every seed has its checkpoint or none has; SIGTERM while a module is imported waits
  for the import's end; SIGTERM while a table is written removes the temporaries; SIGINT before the work
  is exit 130 with one line.
* **Smaller breaks**: a line break or a control character in a path stays on the one error line;
  MITOSIS_DEBUG=false/0/no/off means no debugging; no folder is made for an output when the input is
  bad; library warnings do not surround the error line (they show with --debug).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mitosis_cli.cli.app import one_line
from mitosis_cli.errors import InputError
from mitosis_cli.io.checkpoints import load_checkpoint
from mitosis_cli.io.tables import read_table

from .conftest import (
    FAULTINJECT_PATH,
    MITOSIS,
    REPO,
    TINY_CLONES,
    TINY_DATA,
    TINY_ENSEMBLE,
    TINY_TRAIN,
    Result,
    RunCli,
    assert_clean_failure,
    child_env,
    own_extract,
    planted_acts,
    record,
    snapshot,
    watchdog,
)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, own: dict[str, Path]) -> dict[str, Path]:
    from mitosis_cli.cli.app import main

    root = tmp_path_factory.mktemp("made")
    run = root / "run"
    assert main(["train", *TINY_TRAIN, "-o", str(run)]) == 0
    acts = [planted_acts(root / f"p{s}.h5", seed=s) for s in range(2)]
    assert main(["ensemble", *map(str, acts), *TINY_ENSEMBLE, "-o", str(root / "e.parquet")]) == 0
    assert main(["extract", str(run), "--shard", "0/2", "--quiet", "-o", str(root / "part0.h5")]) == 0
    return {**own, "run": run, "p0": acts[0], "p1": acts[1], "ensemble": root / "e.parquet", "part0": root / "part0.h5"}


# --------------------------------------------------------------------------------- not regular files


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _run_with_fifo_checkpoint(made: dict[str, Path], tmp: Path) -> tuple[list[str], Path]:
    run = tmp / "run"
    run.mkdir()
    _fifo(run / "checkpoint.pt")
    return ["train", *TINY_TRAIN, "--resume", "-o", str(run)], run / "checkpoint.pt"


def _images_with_fifo(made: dict[str, Path], tmp: Path) -> tuple[list[str], Path]:
    images = shutil.copytree(made["images"], tmp / "images")
    return own_extract({**made, "images": images}, "-o", tmp / "a.h5"), _fifo(images / "test" / "ant" / "9.png")


# (what, (made, tmp) -> (argv, the path the error names), the word it holds)
NOT_REGULAR: list[tuple[str, Callable[[dict[str, Path], Path], tuple[list[str], Path]], str]] = [
    ("clones: a FIFO", lambda m, t: (["clones", str(_fifo(t / "a.h5")), *TINY_CLONES, "-o", str(t / "c")], t / "a.h5"), "FIFO"),
    ("ensemble: a FIFO member", lambda m, t: (["ensemble", str(m["p0"]), str(_fifo(t / "b.h5")), *TINY_ENSEMBLE, "-o",
                                               str(t / "e.parquet")], t / "b.h5"), "FIFO"),
    ("extract: a FIFO checkpoint", lambda m, t: (["extract", str(_fifo(t / "c.pt")), "--quiet", "-o", str(t / "a.h5")],
                                                 t / "c.pt"), "FIFO"),
    ("train --resume: a FIFO checkpoint", _run_with_fifo_checkpoint, "FIFO"),
    ("merge: a FIFO shard", lambda m, t: (["merge", str(m["part0"]), str(_fifo(t / "p1.h5")), "-o", str(t / "m.h5")],
                                          t / "p1.h5"), "FIFO"),
    ("report: a FIFO table", lambda m, t: (["report", str(_fifo(t / "t.parquet")), "--quiet", "-o", str(t / "r")],
                                           t / "t.parquet"), "FIFO"),
    ("clones --ensemble: a FIFO table", lambda m, t: (["clones", str(m["p0"]), "--ensemble", str(_fifo(t / "e.parquet")),
                                                       *TINY_CLONES, "-o", str(t / "c")], t / "e.parquet"), "FIFO"),
    ("sweep --grid: a FIFO", lambda m, t: (["sweep", "--grid", str(_fifo(t / "g.toml")), "--print"], t / "g.toml"), "FIFO"),
    ("clones: /dev/zero", lambda m, t: (["clones", "/dev/zero", *TINY_CLONES, "-o", str(t / "c")], Path("/dev/zero")),
     "character device"),
    ("extract: /dev/urandom", lambda m, t: (["extract", "/dev/urandom", "--quiet", "-o", str(t / "a.h5")],
                                            Path("/dev/urandom")), "character device"),
    ("report: /dev/null", lambda m, t: (["report", "/dev/null", "--quiet", "-o", str(t / "r")], Path("/dev/null")),
     "character device"),
    ("ensemble: a directory member", lambda m, t: (["ensemble", str(m["p0"]), str(t), *TINY_ENSEMBLE, "-o",
                                                                str(t / "e.parquet")], t), "directory"),
    ("extract --model: FIFO weights", lambda m, t: (own_extract({**m, "weights": _fifo(t / "w.pt")}, "-o", t / "a.h5"),
                                                    t / "w.pt"), "FIFO"),
    ("extract --model: a directory as weights", lambda m, t: (own_extract({**m, "weights": t}, "-o", t / "a.h5"), t),
     "directory"),
    ("extract --model: a FIFO among the images", _images_with_fifo, "FIFO"),
    ("extract --model: a file as the image folder", lambda m, t: (own_extract({**m, "images": m["weights"]}, "-o", t / "a.h5"),
                                                                  m["weights"]), "not a folder"),
    ("import: a FIFO dump", lambda m, t: (["import", str(_fifo(t / "d.npz")), "-o", str(t / "a.h5")], t / "d.npz"), "FIFO"),
    ("import: /dev/zero", lambda m, t: (["import", "/dev/zero", "-o", str(t / "a.h5")], Path("/dev/zero")),
     "character device"),
]


@pytest.mark.parametrize("name, make, problem", NOT_REGULAR, ids=[c[0] for c in NOT_REGULAR])
def test_an_input_that_is_not_a_regular_file_never_hangs(
        tmp_path: Path, cli: RunCli, made: dict[str, Path], name: str,
        make: Callable[[dict[str, Path], Path], tuple[list[str], Path]], problem: str) -> None:
    argv, named = make(made, tmp_path)
    fifo = named if stat.S_ISFIFO(os.stat(named).st_mode) else None
    before = snapshot(tmp_path)
    with watchdog(fifo) as state:
        result = cli(*argv)
    assert not state["hung"], f"{name}: the read blocked on the FIFO"
    assert_clean_failure(result, named, problem=problem)
    assert snapshot(tmp_path) == before
    record("crashes.not_regular_inputs")


# -------------------------------------------------------------------------------- writes the system refuses


def _limited(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return preexec


def _child(argv: list[str], limit: int, cwd: Path | None = None) -> Result:
    proc = subprocess.run(argv, env=child_env(PYTHONPATH=FAULTINJECT_PATH), capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(limit), cwd=cwd)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_file_size_limit_during_extract_is_one_line_not_a_segfault(tmp_path: Path, made: dict[str, Path]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = _child([str(MITOSIS), "extract", str(made["run"]), "--quiet", "-o", str(out / "a.h5")], 64 * 1024)
    assert_clean_failure(result, out / "a.h5", code=1, problem="File too large")
    assert _left(out) == []
    record("crashes.refused_writes")


def test_a_write_failing_inside_libhdf5_does_not_crash_the_process(tmp_path: Path, made: dict[str, Path]) -> None:
    """With the up-front check switched off, the file-size limit strikes in the middle of the HDF5 writes."""
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "extract_unchecked.py"
    script.write_text("import sys\nimport mitosis_cli.io.activations as a\na.check_room = lambda *args: None\n"
                      "from mitosis_cli.cli.app import main\nsys.exit(main(sys.argv[1:]))\n")
    result = _child([sys.executable, str(script), "extract", str(made["run"]), "--quiet", "-o", str(out / "a.h5")], 20 * 1024)
    assert result.code != -signal.SIGSEGV and result.code != 139, result.err
    assert_clean_failure(result, out / "a.h5", code=1, problem="File too large")
    assert _left(out) == []
    record("crashes.refused_writes")


def test_file_size_limit_at_a_checkpoint_names_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _child([str(MITOSIS), "train", *TINY_TRAIN, "-o", str(run)], 8 * 1024)  # config.json fits, the checkpoint not
    assert_clean_failure(result, run / "checkpoint.pt", code=1, problem="File too large")
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    record("crashes.refused_writes")


def test_file_size_limit_on_import_keeps_the_earlier_file(tmp_path: Path, made: dict[str, Path]) -> None:
    out = tmp_path / "a.h5"
    out.write_bytes(b"an earlier output")
    result = _child([str(MITOSIS), "import", str(made["dump"]), "--quiet", "--force", "-o", str(out)], 16 * 1024)
    assert_clean_failure(result, out, code=1, problem="File too large")
    assert _left(tmp_path) == ["a.h5"] and out.read_bytes() == b"an earlier output"
    record("crashes.refused_writes")


def test_file_size_limit_on_the_clones_tables(tmp_path: Path, made: dict[str, Path]) -> None:
    out = tmp_path / "c"
    result = _child([str(MITOSIS), "clones", str(made["p0"]), *TINY_CLONES, "-o", str(out)], 2 * 1024)
    assert_clean_failure(result, "clones", code=1, problem="File too large")
    assert not out.exists() or _left(out) == []
    record("crashes.refused_writes")


# ----------------------------------------------------------------------------------------------- signals


def _start(argv: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(MITOSIS), *argv], env=child_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _check_run(run: Path) -> None:
    """Every file of the run that exists is complete (the tool's readers accept it), and none is a temporary."""
    if not run.exists():
        return
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    if (run / "checkpoint.pt").exists():
        load_checkpoint(run / "checkpoint.pt")
    if (run / "history.parquet").exists():
        read_table(run / "history.parquet", "history")


# Long enough (about 3 s of epochs on an idle core) that the last moment below falls inside the loop, not in the
# interpreter's shutdown after a finished run, where Python has put back the default action (exit 143).
LONG_TRAIN = ["train", "--dataset", TINY_DATA, "--width", "16", "--epochs", "600", "--batch-size", "64", "--threads", "1",
              "--quiet"]


SIGTERM_DELAYS = [0.15, 0.6, 1.5, 3.0]  # seconds after the start: interpreter, imports, data, the first epochs


@pytest.mark.parametrize("delay", SIGTERM_DELAYS)
def test_sigterm_from_the_first_instant_exits_75_with_nothing_half_written(tmp_path: Path, delay: float) -> None:
    run = tmp_path / "run"
    proc = _start([*LONG_TRAIN, "-o", str(run)])
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (75, 0), f"exit {proc.returncode}: {err}"  # 0: it finished before the signal came
    assert "Traceback" not in err
    if proc.returncode == 75:
        assert [line for line in err.splitlines() if line.startswith("mitosis:")][-1].startswith("mitosis: stopped by SIGTERM")
    _check_run(run)
    record("crashes.sigterm")


def test_sigterm_during_training_saves_a_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start([*LONG_TRAIN, "-o", str(run)])
    deadline = time.monotonic() + 300
    while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert "checkpoint saved" in err and "--resume" in err
    _check_run(run)
    assert not load_checkpoint(run / "checkpoint.pt").get("finished")
    proc = _start([*LONG_TRAIN, "--resume", "-o", str(run)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert load_checkpoint(run / "checkpoint.pt")["finished"]
    record("crashes.sigterm")


LONG_SEEDS = [*LONG_TRAIN, "--seeds", "0-2"]
SEEDS_SIGTERM_DELAYS = [0.3, 1.5]  # seconds after the start: imports, data and the stacked model's set-up


def _check_seed_runs(out: Path, seeds: range) -> list[dict[str, object] | None]:
    """Every seed's run is complete where it exists; the checkpoints of the seeds (None where there is none)."""
    for seed in seeds:
        _check_run(out.with_name(f"{out.name}-s{seed}"))
    return [load_checkpoint(p) if (p := out.with_name(f"{out.name}-s{seed}") / "checkpoint.pt").exists() else None
            for seed in seeds]


@pytest.mark.parametrize("delay", SEEDS_SIGTERM_DELAYS)
def test_sigterm_with_seeds_exits_75_with_every_seeds_checkpoint_or_none(tmp_path: Path, delay: float) -> None:
    out = tmp_path / "run"
    proc = _start([*LONG_SEEDS, "-o", str(out)])
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, f"exit {proc.returncode}: {err}"
    assert "Traceback" not in err
    checkpoints = _check_seed_runs(out, range(3))
    assert all(c is None for c in checkpoints) or len({(c["epoch"], c["step_in_epoch"]) for c in checkpoints}) == 1
    record("crashes.sigterm")


def test_sigterm_with_seeds_saves_every_seeds_checkpoint_and_they_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start([*LONG_SEEDS, "-o", str(out)])
    deadline = time.monotonic() + 300
    while not (tmp_path / "run-s2" / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert "checkpoints saved in 3 run folders" in err and "--resume" in err
    checkpoints = _check_seed_runs(out, range(3))
    assert all(c is not None and not c["finished"] for c in checkpoints)
    assert len({(c["epoch"], c["step_in_epoch"]) for c in checkpoints}) == 1  # one stack, one point
    proc = _start([*LONG_SEEDS, "--resume", "-o", str(out)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert all(c["finished"] for c in _check_seed_runs(out, range(3)))
    record("crashes.sigterm")


def test_sigterm_while_a_table_is_written_leaves_no_temporary(tmp_path: Path, made: dict[str, Path]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    flag = tmp_path / "go"  # never created: the child waits at its first temporary until the signal
    proc = _start(["clones", str(made["p0"]), *TINY_CLONES, "-o", str(out / "c")], PYTHONPATH=FAULTINJECT_PATH,
                  MITOSIS_FI_ROOT=str(out), MITOSIS_FI_HOLD=str(flag))
    deadline = time.monotonic() + 300
    while not Path(f"{flag}.held").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert list(out.rglob("*")) in ([], [out / "c"])  # no table, temporary or lock; at most the empty folder
    assert not (out / "c").exists() or _left(out / "c") == []
    record("crashes.sigterm")


SLOW_MODULE = """import os, signal, time
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.3)  # the signal arrives while this module is being imported
print("imported", flush=True)
"""
IMPORTER = """import sys, time
from mitosis_cli.errors import PREEMPTED_EXIT_CODE, Preempted
from mitosis_cli.runtime import stop_on_signals
with stop_on_signals():
    try:
        import slow_module
        time.sleep(30)
    except Preempted:
        print("preempted", flush=True)
        sys.exit(PREEMPTED_EXIT_CODE)
"""


def test_sigterm_while_a_module_is_imported_waits_for_the_import(tmp_path: Path) -> None:
    """A module's code can run inside a C++ call (torch's c10d set-up at import) that cannot unwind a Python
    exception: raised there, `Preempted` aborted the process (exit 134). The signal now comes back once the
    import is over."""
    (tmp_path / "slow_module.py").write_text(SLOW_MODULE)
    (tmp_path / "importer.py").write_text(IMPORTER)
    proc = subprocess.run([sys.executable, str(tmp_path / "importer.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=child_env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)])))
    assert proc.returncode == 75, proc.stderr
    assert proc.stdout.split() == ["imported", "preempted"], proc.stdout
    record("crashes.sigterm")


# Where the child waits for the SIGINT (faultinject's MITOSIS_FI_HOLD_AT): while the libraries load, before `main`
# (`stop_before_start`), and at the command's first import of torch, before any training (`stop_on_signals`).
SIGINT_POINTS = ["import:typer", "import:torch"]


@pytest.mark.parametrize("point", SIGINT_POINTS)
def test_sigint_before_the_work_is_130_and_one_line(tmp_path: Path, point: str) -> None:
    """The child is held at `point` until the signal is on its way, so it cannot finish or start training first."""
    run, flag = tmp_path / "run", tmp_path / "go"
    proc = _start([*LONG_TRAIN, "-o", str(run)], PYTHONPATH=FAULTINJECT_PATH, MITOSIS_FI_HOLD=str(flag),
                  MITOSIS_FI_HOLD_AT=point)
    deadline = time.monotonic() + 300
    while not Path(f"{flag}.held").exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"never reached {point}: {proc.communicate()[1]}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    flag.touch()  # release the hold: the signal is already pending
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("mitosis:")]) == 1, err
    assert not run.exists() or _left(run) == []
    record("crashes.sigint")


# ------------------------------------------------------------------------------------------ smaller breaks


CONTROL_NAMES = ["line\nbreak.h5", "carriage\rreturn.h5", "escape\x1b[31mred.h5", "tab\tand\vvertical.h5"]


@pytest.mark.parametrize("name", CONTROL_NAMES)
def test_a_control_character_in_a_path_stays_on_the_one_error_line(tmp_path: Path, cli: RunCli, name: str) -> None:
    bad = tmp_path / name
    bad.write_bytes(b"not an activation file")
    result = cli("clones", bad, *TINY_CLONES, "-o", tmp_path / "c")
    assert_clean_failure(result, one_line(str(bad)))
    assert len(result.err.rstrip("\n").split("\n")) == 1 and "\r" not in result.err and "\x1b" not in result.err
    out = tmp_path / f"out {name}"
    out.mkdir()
    result = cli("ensemble", planted_acts(tmp_path / "a.h5"), planted_acts(tmp_path / "b.h5", seed=1), *TINY_ENSEMBLE,
                 "-o", out)
    assert_clean_failure(result, one_line(str(out)))
    record("smaller.control_characters")


DEBUG_VALUES = [("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False), ("", False), ("1", True),
                ("true", True), ("yes", True)]


@pytest.mark.parametrize("value, debugging", DEBUG_VALUES)
def test_mitosis_debug_means_what_it_says(tmp_path: Path, cli: RunCli, monkeypatch: pytest.MonkeyPatch, value: str,
                                          debugging: bool) -> None:
    monkeypatch.setenv("MITOSIS_DEBUG", value)
    result = cli("clones", tmp_path / "missing.h5", "-o", tmp_path / "c")
    assert result.code == 2
    assert ("Traceback" in result.err) is debugging, result.err
    record("smaller.debug_values")


PARENTLESS: list[tuple[str, Callable[[Path], list[str]]]] = [
    ("clones", lambda t: ["clones", str(t / "missing.h5"), "-o", str(t / "new" / "deep" / "c")]),
    ("ensemble", lambda t: ["ensemble", str(t / "a.h5"), str(t / "b.h5"), "-o", str(t / "new" / "deep" / "e.parquet")]),
    ("report", lambda t: ["report", str(t / "missing.parquet"), "-o", str(t / "new" / "deep" / "r")]),
    ("extract", lambda t: ["extract", str(t / "missing.pt"), "-o", str(t / "new" / "deep" / "a.h5")]),
    ("merge", lambda t: ["merge", str(t / "missing.h5"), "-o", str(t / "new" / "deep" / "m.h5")]),
    ("train", lambda t: ["train", "--dataset", "no-such-set", "-o", str(t / "new" / "deep" / "run")]),
    ("train --acts", lambda t: ["train", *TINY_TRAIN, "--momentum", "2", "-o", str(t / "new" / "run"), "--acts",
                                str(t / "new" / "acts.h5")]),
]


@pytest.mark.parametrize("name, argv", PARENTLESS, ids=[c[0] for c in PARENTLESS])
def test_no_folder_is_made_for_an_output_when_the_input_is_bad(tmp_path: Path, cli: RunCli, name: str,
                                                               argv: Callable[[Path], list[str]]) -> None:
    result = cli(*argv(tmp_path))
    assert result.code == 2, result.err
    assert not (tmp_path / "new").exists()
    record("smaller.no_parent_folders")


NOISY = """import sys, warnings
import mitosis_cli.stages.clones as stage
real = stage.check_sources
def noisy(sources, settings):
    warnings.warn("a library's deprecation notice", DeprecationWarning, stacklevel=1)
    warnings.warn("a library's user warning", UserWarning, stacklevel=1)
    real(sources, settings)
stage.check_sources = noisy
from mitosis_cli.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def test_library_warnings_do_not_surround_the_error_line(tmp_path: Path) -> None:
    """In a real process (pytest would catch the warnings itself): a stage that meets library warnings."""
    script = tmp_path / "noisy.py"
    script.write_text(NOISY)
    acts = planted_acts(tmp_path / "a.h5")

    def run(*argv: str) -> Result:
        proc = subprocess.run([sys.executable, "-W", "default", str(script), *argv], env=child_env(), capture_output=True,
                              text=True, timeout=300)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    failed = run("clones", str(acts), *TINY_CLONES, "--ii-k", "1000", "-o", str(tmp_path / "c"))
    assert_clean_failure(failed, acts, problem="--ii-k")
    assert failed.err.count("\n") == 2, failed.err  # the error line and its hint, nothing else
    assert run("clones", str(acts), *TINY_CLONES, "-o", str(tmp_path / "c")).err == ""  # --quiet success: silent
    debug = run("--debug", "clones", str(acts), *TINY_CLONES, "--ii-k", "1000", "-o", str(tmp_path / "c2"))
    assert "a library's user warning" in debug.err and "a library's deprecation notice" in debug.err
    record("smaller.warnings_hidden", 2)


def test_input_error_is_not_an_unexpected_error(cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The funnel: an InputError from any layer is exit 2 with its hint, even after a warning was raised as an error."""
    import mitosis_cli.stages.clones as clones_stage

    def refuse(sources: object, settings: object) -> None:
        raise InputError("refused\nwith a line break", hint="a hint\nwith one too")

    monkeypatch.setattr(clones_stage, "check_sources", refuse)
    result = cli("clones", planted_acts(tmp_path / "a.h5"), *TINY_CLONES, "-o", tmp_path / "c")
    assert_clean_failure(result, "", problem="refused\\nwith a line break")
    assert "  hint: a hint\\nwith one too" in result.err and result.err.count("\n") == 2
    record("smaller.control_characters")
