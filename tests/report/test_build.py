"""The report's plan: which figures the tables support, their captions, and each section's intro said once."""

from pathlib import Path

from mitosis_cli.report.build import SECTION_CLONES, SECTION_INTROS, SECTION_WIDTH, plan_figures, write_report_files
from mitosis_cli.report.inputs import load_inputs
from tests.report import tables as T


def _inputs(tmp_path: Path):
    rows, summary = [], []
    for width in (64, 128):
        net = T.clones_rows(width, clone_size=16, repeats=2)
        rows += net
        summary += T.summary_rows(net, 16, 8, 32)
    T.write_rows(tmp_path / "clones.parquet", rows, T.CLONES_SCHEMA, "clones")
    T.write_rows(tmp_path / "summary.parquet", summary, T.SUMMARY_SCHEMA, "clones-summary")
    return load_inputs([tmp_path / "clones.parquet", tmp_path / "summary.parquet"])


def test_one_cross_width_figure_per_family_and_short_per_network_captions(tmp_path: Path) -> None:
    plans, _ = plan_figures(_inputs(tmp_path))
    assert [p.name for p in plans][:3] == ["clones-mlp-mnist5k-64", "clones-mlp-mnist5k-128", "across-widths-mlp-mnist5k"]
    network_captions = [p.caption for p in plans if p.section == SECTION_CLONES]
    assert network_captions == ["w_c* = 16; 4 clones.", "w_c* = 16; 8 clones."]  # each network's own numbers
    assert "64, 128" in plans[2].caption and plans[2].section == SECTION_WIDTH


def test_each_section_intro_appears_once(tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    write_report_files(_inputs(tmp_path), out, "t")
    html, markdown = (out / "index.html").read_text(), (out / "summary.md").read_text()
    for section in (SECTION_CLONES, SECTION_WIDTH):
        first_words = SECTION_INTROS[section][:40]
        assert html.count(first_words) == 1 and markdown.count(first_words) == 1


def test_the_paper_comparison_gives_each_published_number_its_source_beside_this_runs(tmp_path: Path) -> None:
    from mitosis_cli.analysis.claims import PAPER_VALUES
    from mitosis_cli.report.summary import summary_tables

    inputs = _inputs(tmp_path)
    [table] = [t for t in summary_tables(inputs) if t.title == "Comparison with the paper"]
    paper, *ours = table.rows
    assert list(paper[1:5]) == [v.value for v in PAPER_VALUES]
    assert all(v.source in table.note for v in PAPER_VALUES)
    assert [row[0] for row in ours] == ["this run: mlp on mnist5k, W = 64", "this run: mlp on mnist5k, W = 128"]
    r2 = inputs.summary.where(metric="reconstruction_r2", split="test", width=64)
    expected = [float(r2.where(chunk_size=s)["mean"][0]) for s in (16, 32, 64)]
    assert ours[0][1] == " / ".join(f"{v:.4g}" for v in expected)
