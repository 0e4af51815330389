"""SLURM job scripts for a sweep: a job array with one task per training step (a data set and width, its seeds
trained together), and the analysis after it.

The array task runs its command in the background and forwards SIGTERM/SIGINT to it (sbatch
--signal=B:TERM@120 signals the batch shell before the time limit), so training checkpoints and exits
with the preempted exit code; the task then requeues itself and the rerun continues with --resume.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mitosis_cli.errors import PREEMPTED_EXIT_CODE, InputError
from mitosis_cli.io.atomic import atomic_path
from mitosis_cli.stages.sweep import Grid, plan
from mitosis_cli.stages.transaction import OutputTransaction


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

    array: str  # one array task per training step
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
    sbatch: Sequence[str] = (), setup: Sequence[str] = (),
) -> SlurmScripts:
    """A job-array script (task i = training step i of `plan`) and a dependent analysis script.

    The array task runs its command in the background and forwards SIGTERM/SIGINT to it (sbatch
    --signal=B:TERM@120 signals the batch shell before the time limit), so training checkpoints and exits
    with `PREEMPTED_EXIT_CODE`; the task then requeues itself with `scontrol requeue` and the rerun
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
        f"mitosis sweep: {len(steps)} training commands, one per array task; afterwards the analysis script "
        "(sbatch --dependency=afterok:<job id of this array>).",
    )
    array_lines += ["", "# One quoted command per training step; eval reads each back as exactly its words.", "commands=("]
    array_lines += [f"  {shlex.quote(step.shell())}" for step in steps]
    array_lines += [
        ")",
        'task="${SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is a job array}"',
        'command="${commands[$task]:?no training step for array task $task}"',
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
        f'if [ "$status" -eq {PREEMPTED_EXIT_CODE} ]; then',
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


@dataclass(frozen=True)
class SlurmResult:
    """The scripts `write_slurm_scripts` wrote and the command that submits them."""

    array_script: Path
    analysis_script: Path
    array_tasks: int
    submit: str


def write_slurm_scripts(grid: Grid, array_path: Path, *, throttle: int | None = None, sbatch: Sequence[str] = (),
                        setup: Sequence[str] = (), inputs: Sequence[Path] = ()) -> SlurmResult:
    """Write the array script to `array_path` and NAME-analysis.EXT beside it (both executable, appearing
    together), and create OUT/logs, which SLURM does not create. `inputs` (the grid file) are never overwritten."""
    analysis_path = array_path.with_name(f"{array_path.stem}-analysis{array_path.suffix}")
    scripts = slurm_scripts(grid, array_path, analysis_path, throttle=throttle, sbatch=sbatch, setup=setup)
    for step in plan(grid, "all"):
        step.settings.check()
    tx = OutputTransaction(files=(array_path, analysis_path), inputs=tuple(inputs))
    with tx.locked():
        try:
            (grid.out / "logs").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create {grid.out / 'logs'}: {err.strerror or err}") from None
        with tx.writing():
            for path, text in ((array_path, scripts.array), (analysis_path, scripts.analysis)):
                with atomic_path(path, mode=0o777) as tmp:
                    tmp.write_text(text)
    return SlurmResult(array_path, analysis_path, len(plan(grid, "train")), scripts.submit)
