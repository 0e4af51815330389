"""The committed completions/ and man/ match the code, and offer every option of every command.

The option lists are read here from the Typer app's Click objects, and the completion scripts are run in
real shells (bash always; fish and zsh where installed), so a generator that drops options fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from mitosis_cli.cli.app import app

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "generate_completions_and_man.py"
REFRESH = "run `python scripts/generate_completions_and_man.py` (from the repository root) and commit completions/ and man/"
SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO")


def _generator():
    spec = importlib.util.spec_from_file_location("generate_completions_and_man", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def _options() -> dict[str, set[str]]:
    """Every option name of the root ('') and of each sub-command, with -h/--help, from the Click objects.

    Hidden options (deprecated old names, e.g. ensemble's --sizes) are left out of help, man pages and
    completion on purpose.
    """
    root = typer.main.get_command(app)
    root_ctx = root.make_context("mitosis", [], resilient_parsing=True)
    names = {"": {n for p in root.get_params(root_ctx) for n in (*p.opts, *p.secondary_opts) if n.startswith("-")}}
    for name, command in root.commands.items():
        ctx = command.make_context(name, [], parent=root_ctx, resilient_parsing=True)
        names[name] = {n for p in command.get_params(ctx) if p.param_type_name == "option" and not p.hidden
                       for n in (*p.opts, *p.secondary_opts)}
    return names


OPTIONS = _options()
COMMANDS = sorted(c for c in OPTIONS if c)


def test_committed_files_are_what_the_generator_makes_now(tmp_path: Path) -> None:
    assert _generator().main(["--out-dir", str(tmp_path)]) == 0
    fresh = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(REPO).as_posix() for folder in ("completions", "man") for p in (REPO / folder).glob("*")}
    assert committed == fresh, f"generated files differ in name from the committed ones: {REFRESH}"
    for name in sorted(fresh):
        assert (REPO / name).read_text() == (tmp_path / name).read_text(), f"{name} is out of date: {REFRESH}"
    assert fresh >= {"man/mitosis.1", *(f"man/mitosis-{c}.1" for c in COMMANDS),
                     "completions/mitosis.bash", "completions/_mitosis", "completions/mitosis.fish"}


def test_generation_does_not_depend_on_the_process() -> None:
    """Same files whatever the hash seed (set/dict orders inside Click), and no dates."""
    for seed in ("0", "12345"):
        result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.returncode == 0, f"PYTHONHASHSEED={seed}: {result.stderr}"
    assert not any(re.search(r"20\d\d-\d\d-\d\d", p.read_text()) for p in (REPO / "man").glob("*.1"))


def _man_text(page: Path) -> str:
    """The page as a reader sees it (ASCII hyphens, no bold/underline), via groff, else the roff source unescaped."""
    if shutil.which("groff"):
        return subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", str(page)],
                              capture_output=True, text=True, check=True).stdout
    return page.read_text().replace("\\-", "-").replace("\\fB", "").replace("\\fR", "").replace("\\fI", "")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_man_page_has_every_option_and_section(command: str) -> None:
    page = REPO / "man" / (f"mitosis-{command}.1" if command else "mitosis.1")
    text = _man_text(page)
    options_section = text.split("\nOPTIONS\n", 1)[1].split("\nEXIT STATUS\n", 1)[0]
    for name in OPTIONS[command]:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", options_section), f"{page.name} lacks {name}: {REFRESH}"
    for section in SECTIONS:
        assert re.search(rf"^{section}$", text, re.MULTILINE), f"{page.name} has no {section} section"
    exit_status = text.split("\nEXIT STATUS\n", 1)[1].split("\nFILES\n", 1)[0]
    assert all(re.search(rf"^\s+{code}\s", exit_status, re.MULTILINE) for code in ("0", "1", "2", "75"))


@pytest.mark.skipif(not shutil.which("groff"), reason="groff not installed (.ci/system-deps installs it)")
def test_man_pages_render_without_warnings() -> None:
    for page in sorted((REPO / "man").glob("*.1")):
        result = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True)
        assert result.returncode == 0 and result.stderr == "", f"{page.name}: {result.stderr}"
    files = _man_text(REPO / "man" / "mitosis.1").split("\nFILES\n", 1)[1]
    assert "/head/weight" in files and "clones-summary.parquet" in files and "ensemble.parquet" in files


def _bash_complete(*words: str) -> list[str]:
    """COMPREPLY of the committed bash completion for `mitosis WORDS...` (the last word is the one being completed)."""
    script = (f"source {REPO / 'completions' / 'mitosis.bash'}\n"
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _mitosis; printf "%s\\n" "${COMPREPLY[@]}"')
    result = subprocess.run(["bash", "-c", script, "bash", "mitosis", *words], capture_output=True, text=True, check=True,
                            cwd=REPO)
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_commands_options_and_paths() -> None:
    assert _bash_complete("tr") == ["train"]
    assert _bash_complete("sw") == ["sweep"]
    assert sorted(_bash_complete("")) == COMMANDS
    assert _bash_complete("train", "--wi") == ["--width"]
    assert _bash_complete("--debug", "train", "--no-") == ["--no-augment"]
    assert _bash_complete("train", "--width", "") == []  # a number: nothing to offer
    assert _bash_complete("train", "--out", "scr") == ["scripts"]  # a path option completes files
    assert _bash_complete("clones", "--out", "x", "complet") == ["completions"]  # positional files
    assert "--debug" in _bash_complete("--")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_bash_offers_every_option(command: str) -> None:
    offered = set(_bash_complete(*([command] if command else []), "-"))
    assert offered >= OPTIONS[command], f"bash completion lacks {sorted(OPTIONS[command] - offered)}: {REFRESH}"


@pytest.mark.skipif(not shutil.which("fish"), reason="fish not installed (.ci/system-deps installs it)")
def test_fish_offers_every_option() -> None:
    script = f"source {REPO / 'completions' / 'mitosis.fish'}\n"
    script += "".join(f"echo '## {c}'; complete -C 'mitosis {c} -'; complete -C 'mitosis {c} --'\n" for c in ["", *COMMANDS])
    out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
    blocks = dict(re.findall(r"^## ?(\S*)\n(.*?)(?=^## |\Z)", out, re.MULTILINE | re.DOTALL))
    for command in ["", *COMMANDS]:
        offered = {line.split("\t")[0] for line in blocks[command].splitlines()}
        assert offered >= OPTIONS[command], f"fish completion of '{command}' lacks {sorted(OPTIONS[command] - offered)}"
    first = subprocess.run(["fish", "--no-config", "-c", script.splitlines()[0] + "\ncomplete -C 'mitosis tr'"],
                           capture_output=True, text=True, check=True).stdout
    assert first.split("\t")[0] == "train"


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh not installed (.ci/system-deps installs it)")
def test_zsh_script_loads_and_names_every_option() -> None:
    path = REPO / "completions" / "_mitosis"
    loaded = subprocess.run(["zsh", "-fc",
                             f"autoload -U compinit && compinit -u -D; source {path}; print -r -- $_comps[mitosis]"],
                            capture_output=True, text=True)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "_mitosis", loaded.stderr
    text = path.read_text()
    for command in ["", *COMMANDS]:
        if command:
            block = text.split(f"\n        {command})\n", 1)[1].split(";;", 1)[0]
        else:
            block = text.split("_arguments -C", 1)[1].split("'1: ", 1)[0]
        specs = set(re.findall(r"'(?:\([^)]*\)|\*)?(--?[\w-]+)=?\[", block))
        assert specs >= OPTIONS[command], f"zsh completion of '{command}' lacks {sorted(OPTIONS[command] - specs)}"
