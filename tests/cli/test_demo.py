"""`mitosis demo --quick` end to end: its summary must be what its own tables say."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mitosis_cli.analysis.claims import evaluate_claims
from mitosis_cli.cli.app import main
from mitosis_cli.stages.demo import PLANS


def test_quick_demo_summary_matches_its_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out), "--json", "--jobs", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    results = out / "mnist5k" / "quick"
    assert summary == json.loads((results / "demo-summary.json").read_text())
    plan = PLANS["quick"]
    runs = {p.name for p in (out / "mnist5k").iterdir() if p.name.startswith("w")}
    assert runs == {f"w{w}-s{s}" for w, seeds in plan.seeds.items() for s in seeds}
    assert (results / "report" / "index.html").is_file()
    # every width on shared axes, with the collapse panel, and the regime of each width in the summary
    assert len(list((results / "report" / "figures").glob("across-widths-*.png"))) == 1
    regimes = {str(r["width"]): r["status"] for r in pq.read_table(results / "clones" / "clones-summary.parquet").to_pylist()
               if r["metric"] == "regime"}
    assert summary["regimes"] == regimes and set(regimes) == {str(w) for w in PLANS["quick"].seeds}

    # recompute the claims from the tables the demo wrote, independently of what it printed
    clone_rows = pq.read_table(results / "clones" / "clones-summary.parquet").to_pylist()
    ensemble_rows = pq.read_table(results / "ensemble.parquet").to_pylist()
    again = evaluate_claims(clone_rows, ensemble_rows)
    assert [c["verdict"] for c in summary["claims"]] == [c.verdict for c in again]
    sizes = {r["width"]: r["mean"] for r in clone_rows if r["metric"] == "clone_size"}
    assert set(sizes) == set(plan.seeds)
    claim_b = summary["claims"][1]
    if claim_b["numbers"]:
        for width, count in claim_b["numbers"]["n_clones"].items():
            assert count == pytest.approx(int(width) / sizes[int(width)])
    wide = [r["value"] for r in ensemble_rows if r["kind"] == "wide" and r["width"] == max(plan.seeds)
            and r["split"] == "test" and r["metric"] == "accuracy"]
    claim_d = summary["claims"][3]
    if claim_d["numbers"]:
        assert claim_d["numbers"]["wide"] == pytest.approx(sum(wide) / len(wide))

    assert not any(step["skipped"] for step in summary["steps"])
    recorded = json.loads(pq.read_schema(results / "clones" / "clones.parquet").metadata[b"mitosis"])["command"]
    clones_step = next(step for step in summary["steps"] if step["stage"] == "clones")
    assert recorded == clones_step["command"] and recorded.startswith("mitosis clones ")  # the stage's, not "mitosis demo"
    # a second run reuses everything
    assert main(["demo", "--quick", "-o", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in again["steps"]] == ["train"] * len(plan.seeds) + ["ensemble", "clones", "report"]
    assert all(step["skipped"] for step in again["steps"])


def test_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--preset", "wrn28-cifar10", "--data-dir", "/data/cifar", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    widths = PLANS["wrn28-cifar10"].seeds
    train = [line for line in lines if line.startswith("mitosis train")]
    assert len(train) == len(widths)  # one per width, its seeds trained together
    assert all("--seeds=" in line for line in train) and "--seeds=0-9" in train[0]
    assert lines[-1].startswith("mitosis report")
    assert main(["demo", "--preset", "resnet-imagenet"]) == 2
