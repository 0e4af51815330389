"""The report stage: figures and a one-file HTML report from the clones, ensemble and history tables.

The report folder is one output: built complete in a staged folder beside the target and swapped in
(`io.atomic.staged_folder`), with a stamp file recording the tables (sha256) and options, so a rerun
with the same ones skips and a folder of other ones is refused unless `force`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitosis_cli.errors import InputError
from mitosis_cli.io.atomic import staged_folder
from mitosis_cli.io.stamp import Decision, Stamp
from mitosis_cli.stages.base import OnStep, Progress, StageSettings, no_progress, option_words, paths_after_options
from mitosis_cli.stages.transaction import OutputTransaction

STAMP_FILE = ".mitosis-report.json"
DEFAULT_TITLE = "Representation mitosis report"


@dataclass(frozen=True)
class ReportSettings(StageSettings):
    """Options of `mitosis report`: the tables (or folders holding them), the report folder and its title."""

    stage = "report"
    tables: tuple[Path, ...] = ()
    out: Path = Path("report")
    title: str = DEFAULT_TITLE
    force: bool = False

    def to_argv(self) -> list[str]:
        title = None if self.title == DEFAULT_TITLE else self.title
        words = option_words([("out", self.out), ("title", title), ("force", self.force or None)])
        return ["report", *words, *paths_after_options(self.tables)]

    def check(self) -> None:
        """Refuse option values no report can use."""
        if not isinstance(self.title, str):
            raise InputError(f"--title must be text, got {self.title!r}")


@dataclass
class ReportResult:
    """What `run_report` did: the folder, its figures (paths relative to it), the inputs and notes."""

    out: Path
    skipped: bool
    figures: list[dict[str, str]]
    inputs: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        figures = [{**f, "png": str(self.out / f["png"]), "svg": str(self.out / f["svg"])} for f in self.figures]
        return {"out": str(self.out), "index": str(self.out / "index.html"), "summary": str(self.out / "summary.md"),
                "skipped": self.skipped, "figures": figures, "inputs": self.inputs, "notes": self.notes}


def _read_stamp(out: Path) -> tuple[Stamp | None, dict[str, Any]]:
    """The stamp of an existing report folder and its stamp file's content; (None, {}) when not a whole report."""
    try:
        content = json.loads((out / STAMP_FILE).read_text())
        if "stamp" in content:
            stamp = Stamp(**{**content["stamp"], "inputs": tuple(content["stamp"]["inputs"])})
        else:  # the stamp file of mitosis 0.1.0 reports: {"key": {"inputs": [{path, sha256}], "options": ...}}
            stamp = Stamp.of("report", [i["sha256"] for i in content["key"]["inputs"]], content["key"]["options"])
        listed = content["figures"]
        files = [out / "index.html", out / "summary.md"] + [out / f[ext] for f in listed for ext in ("png", "svg")]
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}
    return (stamp, content) if all(p.is_file() for p in files) else (None, {})


def run_report(settings: ReportSettings, on_step: OnStep = no_progress) -> ReportResult:
    """`mitosis report`: read the tables, draw every figure they support, write the report folder."""
    from mitosis_cli.report.build import write_report_files  # matplotlib is heavy: load it only for a report
    from mitosis_cli.report.inputs import load_inputs

    settings.check()
    inputs = load_inputs(list(settings.tables))
    out = settings.out
    tx = OutputTransaction(folders=(out,), inputs=(*(f.path for f in inputs.files), *(path for path, _ in inputs.ignored)))
    wanted = Stamp.of("report", [f.sha256 for f in inputs.files], {"title": settings.title})
    input_list = [{"path": str(f.path), "kind": f.kind, "rows": f.rows, "sha256": f.sha256} for f in inputs.files]
    with tx.locked():
        if tx.decide(wanted, lambda folder: _read_stamp(folder)[0], settings.force) is Decision.SKIP:
            previous = _read_stamp(out)[1]
            return ReportResult(out, True, previous["figures"], input_list, previous.get("notes", []))
        done = 0

        def on_figure(name: str) -> None:
            nonlocal done
            done += 1
            on_step(Progress("report", done, 0, name, unit="figure"))

        with staged_folder(out) as folder:
            listed, notes = write_report_files(inputs, folder, settings.title, on_figure)
            stamp = {"kind": wanted.kind, "inputs": list(wanted.inputs), "options": wanted.options}
            (folder / STAMP_FILE).write_text(json.dumps({"stamp": stamp, "figures": listed, "notes": notes},
                                                        indent=1, sort_keys=True))
    return ReportResult(out, False, listed, input_list, notes)
