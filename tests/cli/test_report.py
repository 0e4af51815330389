"""`mitosis report` from the command line: outputs, --json, caching, --force, --quiet, bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mitosis_cli.cli.app import main
from mitosis_cli.io.tables import provenance, write_table
from tests.report import tables as T


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return T.write_all(tmp_path_factory.mktemp("tables"), widths=(32,), seeds=(0, 1))  # one network keeps it fast


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_writes_html_markdown_and_every_figure_as_png_and_svg(tables, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    code, stdout, stderr = run(capsys, *map(str, tables.values()), "-o", str(out), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["skipped"] is False and summary["index"] == str(out / "index.html")
    names = [f["name"] for f in summary["figures"]]
    assert names == ["clones-mlp-mnist5k-32", "across-widths-mlp-mnist5k", "information-imbalance", "ensemble-accuracy",
                     "training-curves"]
    for figure in summary["figures"]:
        assert Path(figure["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in Path(figure["svg"]).read_bytes()[:2000]
    html = (out / "index.html").read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) == len(names) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html, "no external resources"
    markdown = (out / "summary.md").read_text()
    assert all(f"figures/{n}.png" in markdown for n in names) and "| 32 |" in markdown
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    assert "report ->" in stderr


def test_rerun_skips_force_redoes_and_changed_inputs_rebuild(tables, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    args = [str(tables["history0"]), "-o", str(out)]  # one table, one figure: the caching is what is tested
    assert run(capsys, *args)[0] == 0
    before = (out / "index.html").stat().st_mtime_ns
    code, stdout, stderr = run(capsys, *args, "--json")
    assert code == 0 and json.loads(stdout)["skipped"] is True and "skipped" in stderr
    assert [f["name"] for f in json.loads(stdout)["figures"]] == ["training-curves"]
    assert (out / "index.html").stat().st_mtime_ns == before
    code, stdout, _ = run(capsys, *args, "--json", "--force")
    assert code == 0 and json.loads(stdout)["skipped"] is False
    code, stdout, stderr = run(capsys, *args, "--json", "--title", "Another title")
    assert code == 2 and "other options (title)" in stderr, "a changed option is a different report: refused"
    code, stdout, _ = run(capsys, *args, "--json", "--title", "Another title", "--force")
    assert json.loads(stdout)["skipped"] is False and "Another title" in (out / "index.html").read_text()
    changed = T.write_history(tmp_path / "history.parquet", 64, 0, epochs=5)
    code, stdout, stderr = run(capsys, str(changed), "-o", str(out), "--json")
    assert code == 2 and "other input files" in stderr
    code, stdout, _ = run(capsys, str(changed), "-o", str(out), "--json", "--force")
    assert json.loads(stdout)["skipped"] is False and "Another title" not in (out / "index.html").read_text()


def test_missing_tables_are_said_once_each_and_quiet_says_nothing(tables, tmp_path: Path, capsys) -> None:
    code, _, stderr = run(capsys, str(tables["history0"]), "-o", str(tmp_path / "a"))
    assert code == 0
    for kind in ("clones", "clones-summary", "ensemble"):
        assert stderr.count(f"no {kind} table") == 1
    code, stdout, stderr = run(capsys, str(tables["history0"]), "-o", str(tmp_path / "b"), "--quiet")
    assert code == 0 and stdout == "" and stderr == ""


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not parquet"), "not a readable Parquet file"),
    (lambda p: pq.write_table(pa.table({"x": [1]}), p), "not a mitosis table"),
    (lambda p: write_table(p, pa.Table.from_pylist([], schema=T.CLONES_SCHEMA), provenance("clones", [], {}, "")), "empty"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys, make, message: str) -> None:
    bad = tmp_path / "bad.parquet"
    make(bad)
    code, stdout, stderr = run(capsys, str(bad), "-o", str(tmp_path / "report"))
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and str(bad) in stderr and message in stderr
    assert not (tmp_path / "report").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_report(tables, tmp_path: Path, capsys) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    code, _, stderr = run(capsys, str(tables["history0"]), "-o", str(precious))
    assert code == 2 and "not written by mitosis" in stderr
    assert (precious / "chapter1.tex").read_text() == "..."
