"""Width x seed x data-set sweeps: grid expansion, the pipeline's commands, and shell / SLURM text.

Pure logic, no CLI: `mitosis sweep` (mitosis_cli/cli/sweep.py) parses options and runs or writes what
this module plans. Every command is an argv list (program name excluded); the shell text made from it
quotes every word with `shlex.quote`, passes values as ``--option=VALUE`` and puts positional paths
after ``--``, so a path with spaces, quotes, ``;``, ``$(...)`` or a leading ``-`` stays data.

Layout of a sweep folder OUT::

    OUT/<dataset>/w<W>-s<S>/          one training run per grid point (config.json, checkpoint.pt, ...)
    OUT/<dataset>/w<W>-s<S>/acts.h5   its last hidden layer
    OUT/<dataset>/ensemble.parquet    mitosis ensemble (when the grid has at least 2 seeds)
    OUT/<dataset>/clones/             mitosis clones
    OUT/<dataset>/report/             mitosis report
    OUT/logs/%A_%a.out                SLURM logs, one per array task
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from mitosis_cli.errors import InputError

PROGRAM = "mitosis"
STAGES = ("train", "clones", "ensemble", "report")
PHASES = ("all", "train", "analysis")
GRID_KEYS = {"out", "dataset", "datasets", "widths", "seeds", *STAGES}
OptionValue = Union[str, int, float, bool, list[Any]]


@dataclass(frozen=True)
class GridPoint:
    """One training run of the sweep."""

    dataset: str
    width: int
    seed: int

    @property
    def name(self) -> str:
        return f"w{self.width}-s{self.seed}"


@dataclass(frozen=True)
class Step:
    """One command of the sweep: `argv` excludes the program name."""

    phase: str  # "train" (one per grid point, independent) or "analysis" (per data set, after all training)
    stage: str  # train, ensemble, clones or report
    dataset: str
    argv: tuple[str, ...]
    point: GridPoint | None = None

    def shell(self) -> str:
        """The command as one line of shell text, every word quoted."""
        return shlex.join([PROGRAM, *self.argv])


@dataclass(frozen=True)
class Grid:
    """What a sweep covers: data sets x widths x seeds, written under `out`, with extra options per stage."""

    out: Path
    datasets: tuple[str, ...]
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    stage_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> argv fragment

    def points(self) -> list[GridPoint]:
        return [GridPoint(d, w, s) for d in self.datasets for w in self.widths for s in self.seeds]

    def run_dir(self, point: GridPoint) -> Path:
        return self.out / point.dataset / point.name

    def acts(self, point: GridPoint) -> Path:
        return self.run_dir(point) / "acts.h5"


# ---------------------------------------------------------------------------------------------------
# Parsing the grid


def parse_int_list(text: str, what: str, ranges: bool) -> tuple[int, ...]:
    """'16,64,256' (and with `ranges`, '0-3' or '0-3,8') -> sorted unique non-negative integers."""
    values: set[int] = set()
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        low, dash, high = item.partition("-")
        try:
            if dash and ranges and low:
                start, stop = int(low), int(high)
                if stop < start:
                    raise ValueError
                values.update(range(start, stop + 1))
            else:
                values.add(int(item))
        except ValueError:
            example = "0-3 or 0,1,2" if ranges else "16,64,256"
            raise InputError(f"{what} {text!r}: expected comma-separated integers{' or ranges' if ranges else ''}, e.g. {example}") from None
    if not values:
        raise InputError(f"{what} {text!r}: no values")
    if min(values) < 0:
        raise InputError(f"{what} {text!r}: values must not be negative")
    return tuple(sorted(values))


def int_values(value: Any, what: str, ranges: bool) -> tuple[int, ...]:
    """A grid file's widths/seeds: a list of integers or the same text as on the command line."""
    if isinstance(value, str):
        return parse_int_list(value, what, ranges)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return parse_int_list(",".join(str(v) for v in value), what, ranges)
    raise InputError(f"{what}: expected a list of integers or a text like {'0-3' if ranges else '16,64,256'}, got {value!r}")


def check_dataset_name(name: str) -> str:
    """A data set name becomes a folder name: refuse those that would escape or nest folders."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InputError(f"data set {name!r}: cannot be used as a folder name under the sweep's output")
    return name


def load_grid_file(path: Path) -> dict[str, Any]:
    """Read a TOML (.toml) or JSON grid file into a dict, checking its keys."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the grid file: {err.strerror or err}") from None
    try:
        if path.suffix.lower() == ".toml":
            if sys.version_info < (3, 11):
                raise InputError(f"{path}: TOML grid files need Python 3.11 (tomllib); use a .json grid file")
            import tomllib

            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except InputError:
        raise
    except (ValueError, UnicodeDecodeError) as err:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise InputError(f"{path}: not a valid {kind} grid file: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a grid file holds a table/object at the top level")
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(GRID_KEYS))})")
    for stage in STAGES:
        if stage in data and not isinstance(data[stage], dict):
            raise InputError(f"{path}: [{stage}] must be a table of option = value")
    return data


def option_argv(options: Mapping[str, OptionValue], switches: Iterable[str] = ()) -> list[str]:
    """{'epochs': 2, 'until-zero-error': True, 'augment': False} -> ['--epochs=2', '--until-zero-error', '--no-augment'].

    Keys may be spelled with '_' or a leading '--'. True gives the bare flag; False gives --no-KEY for
    the on/off `switches` and is left out for plain flags (off is their default); a list repeats the option.
    """
    negatable = set(switches)
    argv: list[str] = []
    for key, value in options.items():
        name = normalise_option(key)
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                argv.append(f"--{name}")
            elif item is False:
                if name in negatable:
                    argv.append(f"--no-{name}")
            elif isinstance(item, (str, int, float)):
                argv.append(f"--{name}={item}")
            else:
                raise InputError(f"option {key!r}: value {item!r} is not text, a number or true/false")
    return argv


def normalise_option(key: str) -> str:
    return key.strip().lstrip("-").replace("_", "-")


def option_names(argv: Sequence[str]) -> set[str]:
    """The option names present in an argv fragment ('--epochs=2' and '--epochs 2' both give 'epochs')."""
    return {word[2:].partition("=")[0] for word in argv if word.startswith("--") and len(word) > 2}


# ---------------------------------------------------------------------------------------------------
# Planning the commands


def train_step(grid: Grid, point: GridPoint) -> Step:
    """`mitosis train` of one grid point; --resume continues an interrupted run and skips a finished one."""
    argv = ("train", f"--dataset={point.dataset}", f"--width={point.width}", f"--seed={point.seed}",
            f"--out={grid.run_dir(point)}", f"--acts={grid.acts(point)}", "--resume", *grid.stage_args.get("train", ()))
    return Step("train", "train", point.dataset, argv, point)


def analysis_steps(grid: Grid, dataset: str) -> list[Step]:
    """The per-data-set stages, in order, once every grid point of `dataset` is trained.

    ensemble runs first so that clones can read error_inf from its table (--ensemble) for the excess
    error fit; it needs at least 2 seeds, so a one-seed grid has no ensemble stage.
    """
    points = [p for p in grid.points() if p.dataset == dataset]
    acts = [str(grid.acts(p)) for p in points]
    folder = grid.out / dataset
    ensemble_table = folder / "ensemble.parquet"
    with_ensemble = len(grid.seeds) >= 2
    extra = {stage: tuple(grid.stage_args.get(stage, ())) for stage in STAGES}
    steps = []
    if with_ensemble:
        steps.append(Step("analysis", "ensemble", dataset,
                          ("ensemble", f"--out={ensemble_table}", *extra["ensemble"], "--", *acts)))
    clones_opts = [f"--out={folder / 'clones'}"]
    if with_ensemble and not option_names(extra["clones"]) & {"error-inf", "ensemble"}:
        clones_opts.append(f"--ensemble={ensemble_table}")
    steps.append(Step("analysis", "clones", dataset, ("clones", *clones_opts, *extra["clones"], "--", *acts)))
    report_opts = [f"--out={folder / 'report'}"]
    if "title" not in option_names(extra["report"]):
        report_opts.append(f"--title=Representation mitosis: {dataset}")
    tables = [str(folder / "clones"), *([str(ensemble_table)] if with_ensemble else []),
              *(str(grid.run_dir(p) / "history.parquet") for p in points)]
    steps.append(Step("analysis", "report", dataset, ("report", *report_opts, *extra["report"], "--", *tables)))
    return steps


def plan(grid: Grid, phase: str = "all") -> list[Step]:
    """Every command of the sweep: the independent training runs first, then each data set's analysis."""
    steps: list[Step] = []
    if phase in ("all", "train"):
        steps += [train_step(grid, p) for p in grid.points()]
    if phase in ("all", "analysis"):
        for dataset in grid.datasets:
            steps += analysis_steps(grid, dataset)
    return steps


# ---------------------------------------------------------------------------------------------------
# Shell text


def shell_word(path: str | Path) -> str:
    """A path as one quoted shell word; './' keeps a leading '-' from reading as an option."""
    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def sbatch_word(text: str) -> str:
    """A value for an `#SBATCH` line: sbatch reads a backslash as 'next character literally'.

    Escaping everything but plain characters keeps spaces, quotes and '#' (which starts a comment
    there) inside the value. bash never reads these lines: they are comments to it.
    """
    if any(c in text for c in "\n\r\0"):
        raise InputError(f"{text!r}: a line break cannot appear in a SLURM script directive")
    return "".join(c if c.isalnum() or c in "/._-=+,:@%" else "\\" + c for c in text)


@dataclass(frozen=True)
class SlurmScripts:
    """The two job scripts of a SLURM sweep and the command that submits them."""

    array: str  # one array task per grid point
    analysis: str  # the per-data-set stages, to run after every array task succeeded
    submit: str  # shell line: submit the array, then the analysis with afterok on it


def _header(job_name: str, directives: Sequence[str], sbatch: Sequence[str], setup: Sequence[str], note: str) -> list[str]:
    lines = ["#!/bin/bash", f"# {note}", f"#SBATCH --job-name={sbatch_word(job_name)}", *(f"#SBATCH {d}" for d in directives)]
    for extra in sbatch:
        if any(c in extra for c in "\n\r\0"):
            raise InputError(f"--sbatch {extra!r}: a line break cannot appear in a SLURM script directive")
        lines.append(f"#SBATCH {extra}")
    lines += list(setup)  # the user's own shell lines (module load, source .venv/bin/activate), verbatim
    lines.append("set -u")  # after the setup: some activation scripts read unset variables
    return lines


def slurm_scripts(
    grid: Grid, array_path: Path, analysis_path: Path, *, throttle: int | None = None,
    sbatch: Sequence[str] = (), setup: Sequence[str] = (), preempted_exit_code: int = 75,
) -> SlurmScripts:
    """A job-array script (task i = grid point i) and a dependent analysis script.

    The array task runs its command in the background and forwards SIGTERM/SIGINT to it (sbatch
    --signal=B:TERM@120 signals the batch shell before the time limit), so training checkpoints and exits
    with `preempted_exit_code`; the task then requeues itself with `scontrol requeue` and the rerun
    continues with --resume.
    """
    steps = plan(grid, "train")
    logs = grid.out / "logs"
    array = f"0-{len(steps) - 1}" + (f"%{throttle}" if throttle else "")
    log_pattern = sbatch_word(str(logs).replace("%", "%%")) + "/%A_%a.out"  # '%' is sbatch's pattern character
    array_lines = _header(
        "mitosis-sweep",
        [f"--array={array}", f"--output={log_pattern}", "--open-mode=append", "--requeue", "--signal=B:TERM@120"],
        sbatch, setup,
        f"mitosis sweep: {len(steps)} training runs, one per array task; afterwards the analysis script "
        "(sbatch --dependency=afterok:<job id of this array>).",
    )
    array_lines += ["", "# One quoted command per grid point; eval reads each back as exactly its words.", "commands=("]
    array_lines += [f"  {shlex.quote(step.shell())}" for step in steps]
    array_lines += [
        ")",
        'task="${SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is a job array}"',
        'command="${commands[$task]:?no grid point for array task $task}"',
        'echo "mitosis sweep task $task: $command" >&2',
        'eval "exec $command" &  # exec: $! is the mitosis process itself, so the signal reaches it',
        "child=$!",
        "forwarded=0",
        "trap 'forwarded=1; kill -TERM \"$child\" 2>/dev/null' TERM INT",
        'wait "$child"',
        "status=$?",
        "# a trapped signal interrupts wait (status > 128) while the child is still saving its checkpoint",
        'if [ "$forwarded" = 1 ] && [ "$status" -gt 128 ]; then',
        '  wait "$child"',
        "  again=$?",
        '  [ "$again" -ne 127 ] && status=$again',
        "fi",
        f'if [ "$status" -eq {preempted_exit_code} ]; then',
        '  echo "mitosis sweep task $task: preempted; requeueing ${SLURM_ARRAY_JOB_ID}_${task}" >&2',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${task}"',
        "fi",
        'exit "$status"',
    ]
    analysis_commands = plan(grid, "analysis")
    analysis_lines = _header(
        "mitosis-sweep-analysis", [f"--output={sbatch_word(str(logs).replace('%', '%%'))}/%j-analysis.out"], sbatch, setup,
        "mitosis sweep: per-data-set analysis; submit with --dependency=afterok:<job id of the array>.",
    )
    analysis_lines += [""] + [f"{step.shell()} || exit $?" for step in analysis_commands]
    submit = (f"jobid=$(sbatch --parsable {shell_word(array_path)}) && "
              f"sbatch --dependency=afterok:\"${{jobid%%;*}}\" {shell_word(analysis_path)}")
    return SlurmScripts("\n".join(array_lines) + "\n", "\n".join(analysis_lines) + "\n", submit)
