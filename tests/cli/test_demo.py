"""`mitosis demo --quick` end to end: its summary must be what its own tables say."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mitosis_cli.cli.app import main
from mitosis_cli.demo import PLANS, evaluate_claims


def test_quick_demo_summary_matches_its_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out), "--json", "--jobs", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "demo-summary.json").read_text())
    plan = PLANS["quick"]
    assert {p.name for p in (out / "runs").iterdir()} == {f"w{w}-s{s}" for w, s in plan.points()}
    assert (out / "report" / "index.html").is_file()

    # recompute the claims from the tables the demo wrote, independently of what it printed
    clone_rows = pq.read_table(out / "clones" / "clones-summary.parquet").to_pylist()
    ensemble_rows = pq.read_table(out / "ensemble.parquet").to_pylist()
    again = evaluate_claims(clone_rows, ensemble_rows)
    assert [c["verdict"] for c in summary["claims"]] == [c.verdict for c in again]
    sizes = {r["width"]: r["mean"] for r in clone_rows if r["metric"] == "clone_size"}
    assert set(sizes) == set(plan.widths)
    claim_b = summary["claims"][1]
    if claim_b["numbers"]:
        for width, count in claim_b["numbers"]["n_clones"].items():
            assert count == pytest.approx(int(width) / sizes[int(width)])
    wide = [r["value"] for r in ensemble_rows if r["kind"] == "wide" and r["width"] == max(plan.widths)
            and r["split"] == "test" and r["metric"] == "accuracy"]
    claim_d = summary["claims"][3]
    if claim_d["numbers"]:
        assert claim_d["numbers"]["wide"] == pytest.approx(sum(wide) / len(wide))

    # a second run reuses everything
    assert main(["demo", "--quick", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "already made from these inputs" in err and "already measured" in err and "already up to date" in err


def test_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--preset", "wrn28-cifar10", "--data-dir", "/data/cifar", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([l for l in lines if l.startswith("mitosis train")]) == len(PLANS["wrn28-cifar10"].points())
    assert lines[-1].startswith("mitosis report")
    assert main(["demo", "--preset", "resnet-imagenet"]) == 2
