"""Help a person can scan: panels, plain value types, each default once, examples, one dry-run name,
and completion lists that match what the stages accept."""

from __future__ import annotations

import re

import pytest
import typer.main

from mitosis_cli.cli import options
from mitosis_cli.cli.app import app, main
from mitosis_cli.errors import InputError

COMMANDS = sorted(name for name, command in typer.main.get_command(app).commands.items() if not command.hidden)
# a Click type dump (<int>, {source}); {seed}, the per-seed path placeholder of train --seeds, is text
TYPE_DUMPS = re.compile(r"<(bool|int|float|str|path|list\[[^\]]*\])[^>]*>|\{(?!seed\})\w+\}")


def help_text(command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TERMINAL_WIDTH", "400")  # one row per option: no wrapping
    monkeypatch.setenv("COLUMNS", "400")
    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


def option_rows(text: str) -> dict[str, str]:
    """Each option's row of the rendered help: long name -> the row's text."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^│\s+(--[\w-]+)", line)
        if match:
            rows[match.group(1)] = line
    return rows


def test_train_help_has_option_panels_and_no_bool(capsys, monkeypatch) -> None:
    text = help_text("train", capsys, monkeypatch)
    panels = re.findall(r"^╭─ (.+?) ─", text, re.MULTILINE)
    assert panels == ["Data", "Model", "Optimisation", "Schedule", "Outputs", "Runtime"]
    assert "<bool>" not in text
    assert re.search(r"--until-zero-error\s+Never stops early", text), "its help line must say what it does"
    assert main(["--help"]) == 0
    assert "<bool>" not in capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_reads_plainly(command: str, capsys, monkeypatch) -> None:
    text = help_text(command, capsys, monkeypatch)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert not TYPE_DUMPS.search(text), f"mitosis {command} --help shows {TYPE_DUMPS.search(text).group(0)}"
    assert "{" not in usage and "[OPTIONS]" in usage
    examples = re.findall(r"^\s*Example: mitosis " + command + r"\b", text, re.MULTILINE)
    assert 2 <= len(examples) <= 4, f"mitosis {command}: {len(examples)} examples"
    for name, row in option_rows(text).items():
        assert len(re.findall(r"default", row, re.IGNORECASE)) <= 1, f"mitosis {command} {name} states its default twice"
    if command in ("train", "clones", "ensemble", "sweep", "demo"):
        assert len(re.findall(r"^╭─ ", text, re.MULTILINE)) >= 4, f"mitosis {command}: options not grouped"


def test_one_name_for_a_dry_run(capsys, monkeypatch) -> None:
    for command in ("sweep", "demo"):
        assert "--dry-run" in option_rows(help_text(command, capsys, monkeypatch))
    assert "--print" not in option_rows(help_text("sweep", capsys, monkeypatch))  # the old name: hidden, for one release
    assert main(["sweep", "--widths", "8", "-o", "x", "--print"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("mitosis train ") and "--print is deprecated" in captured.err
    assert main(["sweep", "--widths", "8", "--dry-run", "--slurm", "x.sh"]) == 2
    assert "choose one of --run, --dry-run and --slurm" in capsys.readouterr().err


def test_choices_are_what_the_stages_accept() -> None:
    from mitosis_cli.analysis.ensembles import COMBINES
    from mitosis_cli.cli.console import use_lines
    from mitosis_cli.data.registry import DATASETS
    from mitosis_cli.models.spec import ARCHS, ENDINGS
    from mitosis_cli.runtime import pick_device
    from mitosis_cli.stages.demo import PRESETS
    from mitosis_cli.stages.sweep import PHASES
    from mitosis_cli.training.config import TrainConfig

    assert set(options.DATASETS) == set(DATASETS)
    assert (options.ARCHS, options.ENDINGS, options.COMBINES, options.PHASES) == (ARCHS, ENDINGS, COMBINES, PHASES)
    assert set(options.PRESETS) == set(PRESETS)
    for optimizer in options.OPTIMIZERS:
        TrainConfig(optimizer=optimizer).validate()
    for schedule in options.SCHEDULES:
        TrainConfig(schedule=schedule).validate()
    with pytest.raises(InputError):
        TrainConfig(optimizer="lbfgs").validate()
    assert pick_device(options.DEVICES[0]).type in ("cpu", "cuda") and pick_device("cpu").type == "cpu"
    assert [use_lines(mode) for mode in ("lines", "bar", "none")] == [True, False, False]
    with pytest.raises(InputError, match="--progress 'fancy'"):
        use_lines("fancy")


def test_choice_options_complete_their_values() -> None:
    """Typer's own completion (the generated shell scripts read the same lists: tests/test_generated_docs.py)."""
    root = typer.main.get_command(app)
    ctx = root.make_context("mitosis", [], resilient_parsing=True)
    wanted = {("train", "arch"): "wrn", ("train", "ending"): "batchnorm", ("train", "dataset"): "cifar10",
              ("train", "device"): "cuda", ("train", "optimizer"): "adam", ("train", "schedule"): "constant",
              ("ensemble", "combine"): "probs", ("sweep", "phase"): "analysis", ("sweep", "arch"): "densenet",
              ("demo", "preset"): "wrn28-cifar10", ("clones", "progress_mode"): "lines", ("extract", "split"): "test"}
    for (command, name), value in wanted.items():
        param = next(p for p in root.commands[command].params if p.name == name)
        assert value in [item.value for item in param.shell_complete(ctx, value[:2])], (command, name)
