"""`mitosis sweep`: the planned commands, their shell quoting, the SLURM scripts, and a tiny run end to end.

The expected commands are written out by hand here (not taken from the planner, mitosis_cli.stages.sweep), and the
generated shell text is checked by running it with bash against stub `mitosis` / `scontrol` programs
that only record their argv.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mitosis_cli.cli.app import main

# A folder name that is code if any quoting is missing: spaces, quotes, ';', $(...).
HOSTILE = "a b;$(touch pwned)'\"-x"
# ... and one that is an option if it reaches a parser unprotected.
DASHED = "-rf $(touch pwned) `touch pwned2`"
QUICK_TRAIN = ["--train-size", "200", "--epochs", "2", "--threads", "1"]
QUICK_ANALYSIS = ["--clones-arg=--repeats=2", "--clones-arg=--acc-repeats=2", "--clones-arg=--ii-points=0",
                  "--ensemble-arg=--repeats=2"]


def expected_commands(
    out: str, widths: list[int], seeds: list[int], train_extra: list[str], dataset: str = "mnist5k"
) -> list[list[str]]:
    """The sweep's commands for one data set, spelled out independently of the planner.

    One training command per width: its seeds together (`--seeds`, consecutive here) with '{seed}' in the paths.
    """
    runs = [f"{out}/{dataset}/w{w}-s{s}" for w in widths for s in seeds]
    assert seeds == list(range(seeds[0], seeds[-1] + 1))
    which = [f"--seeds={seeds[0]}-{seeds[-1]}"] if len(seeds) > 1 else [f"--seed={seeds[0]}"]
    run = "s{seed}" if len(seeds) > 1 else f"s{seeds[0]}"
    train = [["mitosis", "train", f"--dataset={dataset}", f"--width={w}", *which, f"--out={out}/{dataset}/w{w}-{run}",
              f"--acts={out}/{dataset}/w{w}-{run}/acts.h5", "--resume", *train_extra] for w in widths]
    acts = [f"{run}/acts.h5" for run in runs]
    folder = f"{out}/{dataset}"
    analysis = []
    if len(seeds) >= 2:
        analysis.append(["mitosis", "ensemble", f"--out={folder}/ensemble.parquet", "--", *acts])
    analysis.append(["mitosis", "clones", f"--out={folder}/clones",
                     *([f"--ensemble={folder}/ensemble.parquet"] if len(seeds) >= 2 else []), "--", *acts])
    analysis.append(["mitosis", "report", f"--out={folder}/report", f"--title=Representation mitosis: {dataset}", "--",
                     f"{folder}/clones", *([f"{folder}/ensemble.parquet"] if len(seeds) >= 2 else []),
                     *(f"{run}/history.parquet" for run in runs)])
    return train + analysis


def _stubs(folder: Path) -> tuple[dict[str, str], Path]:
    """A bin/ folder with `mitosis` and `scontrol` stubs that append their argv (JSON) to a log.

    STUB_EXIT sets mitosis's exit code; STUB_WAIT=1 makes it wait for SIGTERM, then exit 75 like a
    preempted training run.
    """
    bin_dir, log = folder / "bin", folder / "calls.jsonl"
    bin_dir.mkdir()
    for name in ("mitosis", "scontrol"):
        script = bin_dir / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, os, signal, sys, time\n"
            f"with open({str(log)!r}, 'a') as fh:\n"
            f"    fh.write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n"
            "if os.environ.get('STUB_WAIT') and sys.argv[0].endswith('mitosis'):\n"
            "    signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))\n"
            "    open(os.environ['STUB_WAIT'], 'w').close()\n"
            "    time.sleep(60)\n"
            "sys.exit(int(os.environ.get('STUB_EXIT', '0')) if sys.argv[0].endswith('mitosis') else 0)\n"
        )
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return env, log


def _calls(log: Path) -> list[list[str]]:
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def _no_pwned(*roots: Path) -> None:
    for root in roots:
        assert not list(root.rglob("pwned*")), f"a quoted path ran as code under {root}"


@pytest.mark.parametrize("out", [HOSTILE, DASHED])
def test_dry_run_parses_back_to_the_planned_commands_and_runs_as_data(
    out: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--widths", "8,16", "--seeds", "0,1", "-o", out, "--epochs", "2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = expected_commands(out, [8, 16], [0, 1], ["--epochs=2"])
    assert [shlex.split(line) for line in lines] == expected
    assert not (tmp_path / out).exists()  # printing writes nothing

    # every line through bash, with `mitosis` replaced by a recorder: each runs with exactly its words
    env, log = _stubs(tmp_path)
    script = tmp_path / "commands.sh"
    script.write_text("\n".join(lines) + "\n")
    subprocess.run(["bash", "-e", str(script)], env=env, cwd=tmp_path, check=True)
    assert _calls(log) == expected
    _no_pwned(tmp_path)

    # the documented parallel form: the train phase through xargs -P, one line per bash -c
    assert main(["sweep", "--widths", "8,16", "--seeds", "0,1", "-o", out, "--epochs", "2", "--dry-run", "--phase", "train"]) == 0
    train_lines = capsys.readouterr().out
    subprocess.run(["xargs", "-d", "\n", "-n", "1", "-P", "2", "bash", "-c"], input=train_lines, text=True,
                   env=env, cwd=tmp_path, check=True)
    assert sorted(_calls(log)) == sorted(expected[:2])  # one per width
    _no_pwned(tmp_path)


def test_dry_run_json_lists_the_argv_of_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--widths", "32", "--seeds", "3", "-o", HOSTILE, "--dry-run", "--json", "--phase", "analysis"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "dry-run" and summary["grid_points"] == 1
    assert [c["argv"] for c in summary["commands"]] == expected_commands(HOSTILE, [32], [3], [])[1:]
    assert all(shlex.split(c["command"]) == c["argv"] for c in summary["commands"])


def _sbatch_value(line: str) -> str:
    """What sbatch reads from '#SBATCH --opt=VALUE': a backslash takes the next character literally."""
    value, escaped = [], False
    for char in line.split("=", 1)[1]:
        if escaped or char != "\\":
            value.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(value)


def test_slurm_array_names_every_grid_point_once_and_requeues_on_preemption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / HOSTILE
    job = tmp_path / "my job.sbatch"
    assert main(["sweep", "--widths", "8,16", "--seeds", "0-2", "-o", str(out), "--epochs", "2", "--slurm", str(job),
                 "--throttle", "2", "--sbatch=--time=01:00:00", "--setup", "echo setup-ran >&2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    analysis = tmp_path / "my job-analysis.sbatch"
    assert summary["array_script"] == str(job) and summary["analysis_script"] == str(analysis)
    assert summary["array_tasks"] == 2  # one per width, its three seeds together
    for script in (job, analysis):
        subprocess.run(["bash", "-n", str(script)], check=True)
    text = job.read_text()
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --array=0-1%2" in directives and "#SBATCH --time=01:00:00" in directives
    assert "#SBATCH --requeue" in directives
    output = next(line for line in directives if line.startswith("#SBATCH --output="))
    assert _sbatch_value(output) == f"{out}/logs/%A_%a.out"
    assert (out / "logs").is_dir()  # SLURM does not create it
    for w in (8, 16):
        assert text.count(f"/w{w}-s{{seed}}/acts.h5") == 1, f"width {w} is not named exactly once"

    expected = expected_commands(str(out), [8, 16], [0, 1, 2], ["--epochs=2"])
    env, log = _stubs(tmp_path)
    env.update(SLURM_ARRAY_JOB_ID="42")
    for task in range(2):
        result = subprocess.run(["bash", str(job)], env={**env, "SLURM_ARRAY_TASK_ID": str(task)}, cwd=tmp_path,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "setup-ran" in result.stderr
        assert _calls(log) == [expected[task]]
    # no training step beyond the array
    assert subprocess.run(["bash", str(job)], env={**env, "SLURM_ARRAY_TASK_ID": "2"}, cwd=tmp_path,
                          capture_output=True).returncode != 0
    assert _calls(log) == []
    # a preempted task (exit code 75) requeues itself and keeps the exit code
    result = subprocess.run(["bash", str(job)], env={**env, "SLURM_ARRAY_TASK_ID": "1", "STUB_EXIT": "75"}, cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 75
    assert _calls(log) == [expected[1], ["scontrol", "requeue", "42_1"]]
    # a failing task is not requeued
    result = subprocess.run(["bash", str(job)], env={**env, "SLURM_ARRAY_TASK_ID": "0", "STUB_EXIT": "2"}, cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2 and _calls(log) == [expected[0]]

    # the analysis job runs the per-data-set stages in order
    subprocess.run(["bash", str(analysis)], env=env, cwd=tmp_path, check=True, capture_output=True)
    assert _calls(log) == expected[2:]
    _no_pwned(tmp_path)
    assert "sbatch --dependency=afterok:" in summary["submit"]


def test_slurm_task_forwards_sigterm_to_training_and_requeues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.sh"
    assert main(["sweep", "--widths", "8", "-o", str(tmp_path / "out"), "--slurm", str(job), "--quiet"]) == 0
    env, log = _stubs(tmp_path)
    ready = tmp_path / "ready"
    task = subprocess.Popen(["bash", str(job)], env={**env, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "7",
                                                      "STUB_WAIT": str(ready)}, cwd=tmp_path)
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the stub never started"
    task.send_signal(signal.SIGTERM)  # what sbatch --signal=B:TERM@120 sends to the batch shell
    assert task.wait(timeout=20) == 75
    assert _calls(log)[-1] == ["scontrol", "requeue", "7_0"]


def test_grid_files_plan_the_same_commands_as_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "grid.toml"
    toml.write_text('out = "runs"\ndatasets = ["mnist5k"]\nwidths = [16, 8]\nseeds = "0-1"\n'
                    "[train]\nepochs = 2\nuntil_zero_error = true\naugment = false\n[clones]\nrepeats = 5\n")
    js = tmp_path / "grid.json"
    js.write_text(json.dumps({"out": "runs", "dataset": "mnist5k", "widths": "8,16", "seeds": [0, 1],
                              "train": {"--epochs": 2, "until-zero-error": True, "augment": False}, "clones": {"repeats": 5}}))
    printed = []
    for args in (["--grid", str(toml)], ["--grid", str(js)],
                 ["-o", "runs", "--widths", "8,16", "--seeds", "0,1", "--epochs", "2", "--until-zero-error",
                  "--train-arg=--no-augment", "--clones-arg=--repeats=5"]):
        assert main(["sweep", *args, "--dry-run"]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] == printed[2]
    commands = [shlex.split(line) for line in printed[0].splitlines()]
    assert set(commands[0][-3:]) == {"--epochs=2", "--until-zero-error", "--no-augment"}
    assert "--repeats=5" in next(c for c in commands if c[1] == "clones")
    # the command line overrides the file
    assert main(["sweep", "--grid", str(toml), "--widths", "32", "--seeds", "4", "--dry-run", "--phase", "train"]) == 0
    assert [shlex.split(line)[3:5] for line in capsys.readouterr().out.splitlines()] == [["--width=32", "--seed=4"]]


@pytest.mark.parametrize(("args", "message"), [
    (["--widths", "8,x"], "--widths '8,x'"),
    (["--seeds", "3-1"], "--seeds '3-1'"),
    (["--train-arg=--no-such-option"], "No such option"),
    (["--epochs", "2", "--train-arg=--width=4"], "--width is set by the sweep"),
    (["--clones-arg=--repeats=many"], "clones options of the sweep"),
    (["--dry-run", "--slurm", "x.sh"], "choose one of"),
    (["--throttle", "3"], "--slurm only"),
    (["--dataset", "../up"], "folder name"),
    (["--phase", "later"], "--phase 'later'"),
])
def test_bad_sweeps_fail_with_one_line_before_doing_anything(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--widths", "8", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_grid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, text, message in (("g.toml", "widths = [8]\nwidht = 3\n", "unknown key 'widht'"),
                                ("g.toml", "widths = [8\n", "not a valid TOML"),
                                ("g.json", '{"widths": [8.5]}', "list of integers"),
                                ("g.json", '{"train": 3, "widths": [8]}', "[train] must be a table")):
        (tmp_path / name).write_text(text)
        assert main(["sweep", "--grid", str(tmp_path / name), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert message in err and str(tmp_path / name) in err
    assert main(["sweep", "--grid", str(tmp_path / "missing.toml"), "--dry-run"]) == 2
    assert "cannot read the grid file" in capsys.readouterr().err


def test_run_stops_at_the_first_failure_with_its_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", "--widths", "8,16", "--dataset", "no-such-set", "-o", str(tmp_path / "s"), "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 2 and summary["exit_code"] == 2
    assert [c["exit_code"] for c in summary["commands"]] == [2]  # the second width never ran


@pytest.mark.slow
def test_sweep_runs_end_to_end_and_a_rerun_reuses_the_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep out"
    args = ["sweep", "--widths", "8", "--seeds", "0,1", "-o", str(out), *QUICK_TRAIN, *QUICK_ANALYSIS, "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(c["stage"], c["exit_code"]) for c in summary["commands"]] == [
        ("train", 0), ("ensemble", 0), ("clones", 0), ("report", 0)]  # the two seeds of w8 trained together
    folder = out / "mnist5k"
    for seed in (0, 1):
        assert {"history.parquet", "acts.h5", "checkpoint.pt"} <= {p.name for p in (folder / f"w8-s{seed}").iterdir()}
    assert (folder / "ensemble.parquet").is_file() and (folder / "clones" / "clones-summary.parquet").is_file()
    assert (folder / "report" / "index.html").is_file()
    history = (folder / "w8-s0" / "history.parquet").read_bytes()
    # every table records the command of the stage that wrote it, not the sweep's
    commands = {c["stage"]: c["command"] for c in summary["commands"]}
    for table, stage in (("clones/clones.parquet", "clones"), ("ensemble.parquet", "ensemble"),
                         ("w8-s1/history.parquet", "train")):
        recorded = json.loads(pq.read_schema(folder / table).metadata[b"mitosis"])["command"]
        assert shlex.split(recorded)[:2] == ["mitosis", stage] and "mitosis sweep" not in recorded
        if stage != "train":
            assert recorded == commands[stage]
    recorded = json.loads(pq.read_schema(folder / "w8-s1/history.parquet").metadata[b"mitosis"])["command"]
    assert "--seeds=0-1" in shlex.split(recorded)

    assert main([*args, "--phase", "train"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [(c["stage"], c["skipped"]) for c in again["commands"]] == [("train", True)]
    assert (folder / "w8-s0" / "history.parquet").read_bytes() == history


def test_rerun_keeps_the_activation_files(tmp_path: Path) -> None:
    args = ["sweep", "--widths", "8", "-o", str(tmp_path / "s"), *QUICK_TRAIN, "--phase", "train", "--quiet"]
    assert main(args) == 0
    acts = tmp_path / "s" / "mnist5k" / "w8-s0" / "acts.h5"
    before = acts.read_bytes()
    assert main(args) == 0
    assert acts.read_bytes() == before


def test_common_train_options_are_taken_directly(capsys: pytest.CaptureFixture[str]) -> None:
    """`--ending batchnorm` and friends reach every grid point's train command, as `--train-arg` sends them."""
    import typer.main

    from mitosis_cli.cli.app import app
    from mitosis_cli.cli.train import train_settings

    pairs = [("--ending", "batchnorm"), ("--depth", "3"), ("--optimizer", "adam"), ("--schedule", "constant"),
             ("--lr-min", "0.001")]
    direct = [word for pair in pairs for word in pair] + ["--no-augment"]
    via_arg = [f"--train-arg={name}={value}" for name, value in pairs] + ["--train-arg=--no-augment"]
    printed = []
    for options in (direct, via_arg):
        assert main(["sweep", "--widths", "8,16", "-o", "s", "--dry-run", "--phase", "train", *options]) == 0
        printed.append(capsys.readouterr().out.splitlines())
    assert printed[0] == printed[1]
    command = typer.main.get_command(app).get_command(None, "train")
    parsed = [train_settings(command.make_context("train", shlex.split(line)[2:]).params).config for line in printed[0]]
    assert [(c.width, c.ending, c.depth, c.optimizer, c.augment, c.schedule, c.lr_min) for c in parsed] == [
        (w, "batchnorm", 3, "adam", False, "constant", 0.001) for w in (8, 16)]
