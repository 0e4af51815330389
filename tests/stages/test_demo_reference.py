"""`demo` end to end on a tiny plan: its verdict on the paper's claims, recomputed here from the tables the
demo wrote with the rules of analysis/claims.py's docstring implemented independently, through the
Python API and the command line.

The tiny plan (monkeypatched in place of the quick one): MLPs of widths 8, 16 and 32 (3, 2 and 2 seeds)
on a small synthetic task for 10 epochs. The API runs the whole pipeline; the command line then runs
the same demo in the same folder, where every step is current (skipped), and must give the same verdict.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import mitosis_cli as mitosis
from mitosis_cli.cli.app import main
from mitosis_cli.stages import demo as demo_stage
from mitosis_cli.training.config import TrainConfig

SEEDS = {8: (0, 1, 2), 16: (0, 1), 32: (0, 1)}
TINY = demo_stage.DemoPlan(
    "quick", SEEDS, TrainConfig(dataset="synthetic:n=400,test=200,d=20,latent=4,classes=3,seed=1", arch="mlp", depth=2,
                                ending="batchnorm", epochs=10, batch_size=50),
    "tiny test plan", mitosis.CloneSettings(repeats=4, acc_repeats=6, ii_points=0), mitosis.EnsembleSettings(repeats=3))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """The API's result, then the command line's JSON on the same folder, and the folder of the results."""
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(demo_stage.PLANS, "quick", TINY)
        result = mitosis.run_demo(mitosis.DemoSettings(out=out, quick=True, jobs=1, device="cpu"))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["demo", "--quick", "-o", str(out), "--jobs", "1", "--device", "cpu", "--json", "-q"]) == 0
    return result.to_json(), json.loads(printed.getvalue()), out / TINY.train.dataset / "quick"


# ----------------------------------------------------------------------------------------------------------------------
# the claims, from the docstring of analysis/claims.py


def clone_sizes(summary: list[dict]) -> dict[int, float]:
    """Width -> mean over that width's sources of the clone size."""
    by_width: dict[int, list[float]] = {}
    for row in summary:
        if row["metric"] == "clone_size" and row["mean"] is not None and math.isfinite(row["mean"]):
            by_width.setdefault(row["width"], []).append(row["mean"])
    return {w: float(np.mean(v)) for w, v in sorted(by_width.items())}


def accuracy_rows(ensemble: list[dict], kind: str, width: int) -> list[dict]:
    return [r for r in ensemble if (r["kind"], r["width"], r["split"], r["metric"]) == (kind, width, "test", "accuracy")]


def wide_accuracy(ensemble: list[dict], width: int) -> float | None:
    values = [r["value"] for r in accuracy_rows(ensemble, "wide", width)]
    return float(np.mean(values)) if values else None


def verdicts(summary: list[dict], ensemble: list[dict]) -> dict[str, tuple[bool | None, dict[str, Any]]]:
    """(holds, numbers) of claims a-d."""
    sizes = clone_sizes(summary)
    critical = next((r["mean"] for r in summary if r["metric"] == "critical_width"), None)
    above = {w: c for w, c in sizes.items() if critical is None or w > critical}
    out: dict[str, tuple[bool | None, dict[str, Any]]] = {}
    # (a) at least three widths above the critical width; max / min clone size <= 1.5
    if len(above) >= 3:
        ratio = max(above.values()) / min(above.values())
        out["a"] = (ratio <= 1.5, {"ratio": ratio, "clone_size": above, "critical_width": critical})
    else:
        out["a"] = (None, {})
    # (b) the line through (W, W / w_c*) has R^2 >= 0.95 and n grows at least half as fast as W
    if len(above) >= 3:
        w = np.array(sorted(above), float)
        n = w / np.array([above[int(x)] for x in w])
        design = np.stack([w, np.ones_like(w)], axis=1)
        (slope, intercept), *_ = np.linalg.lstsq(design, n, rcond=None)
        line_r2 = 1 - float(((n - design @ [slope, intercept]) ** 2).sum()) / float(((n - n.mean()) ** 2).sum())
        growth = (n[-1] / n[0]) / (w[-1] / w[0])
        out["b"] = (bool(slope > 0 and line_r2 >= 0.95 and growth >= 0.5),
                    {"slope": slope, "line_r2": line_r2, "growth_ratio": growth,
                     "n_clones": dict(zip(w.astype(int), n, strict=True))})
    else:
        out["b"] = (None, {})
    widest = max(sizes)
    # (c) chunks of the widest network at trained widths w >= its clone size: within 1.5 points of networks of width w
    chunk_accuracy = {r["chunk_size"]: r["mean"] for r in summary
                      if (r["metric"], r["split"], r["width"]) == ("chunk_accuracy", "test", widest)}
    gaps = {w: 100 * (chunk_accuracy[w] - wide_accuracy(ensemble, w)) for w in SEEDS
            if w < widest and w >= sizes[widest] and w in chunk_accuracy and wide_accuracy(ensemble, w) is not None}
    out["c"] = (all(abs(g) <= 1.5 for g in gaps.values()), {"gap_points": gaps}) if gaps else (None, {})
    # (d) the widest networks against the ensemble of the most (<= W / w) networks of the smallest trained width w >= w_c*
    members = [w for w in sorted(SEEDS) if sizes[widest] <= w < widest]
    wide = wide_accuracy(ensemble, widest)
    if not members or wide is None:
        out["d"] = (None, {})
    else:
        member = members[0]
        rows = accuracy_rows(ensemble, "ensemble", member)
        k = max((r["members"] for r in rows if r["members"] <= widest // member), default=0)
        if k < 2:
            out["d"] = (None, {})
        else:
            ens = float(np.mean([r["value"] for r in rows if r["members"] == k]))
            gap = 100 * (wide - ens)
            out["d"] = (gap >= -0.5, {"wide": wide, "ensemble": ens, "members": k, "member_width": member, "gap_points": gap})
    return out


def regimes(summary: list[dict]) -> dict[int, str]:
    """Width -> regime word by the rule of docs/regime.md, from each network's clone size, 1 - R^2 at the clone size
    and top-(C-1) share on the main split (C: the `n` of that row, the classes present)."""
    nets: dict[str, dict[str, Any]] = {}
    for row in summary:
        if row["source"] != "all" and row["split"] == "test" and row["metric"] in (
                "clone_size", "residual_at_clone_size", "top_share"):
            net = nets.setdefault(row["source"], {"width": row["width"], "family": (row["arch"], row["dataset"])})
            net[row["metric"]] = row["mean"]
            if row["metric"] == "top_share":
                net["classes"] = row["n"]
    words = {}
    for net in nets.values():
        clone, width = net["clone_size"], net["width"]
        holding = [o["clone_size"] for o in nets.values() if o["family"] == net["family"] and o["width"] / o["clone_size"] >= 2]
        if net["top_share"] >= 0.999 and clone <= 2 * max(net["classes"] - 1, 1) * (1 + 1e-12):
            words[width] = "collapsed"
        elif width / clone < 2 or net["residual_at_clone_size"] < 1e-5 or max(holding) / min(holding) > 2:
            words[width] = "no-clones"
        else:
            words[width] = "noisy-clones"
    return dict(sorted(words.items()))


def close(got: Any, want: Any) -> bool:
    """Numbers equal to 1e-9 relative, through dicts (JSON keys are strings) and lists."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return False
        got, want = ({str(k): v for k, v in d.items()} for d in (got, want))
        return set(got) == set(want) and all(close(got[k], want[k]) for k in want)
    if want is None or isinstance(want, (bool, str)):
        return got == want
    return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("how", ["api", "cli"])
def test_verdicts_are_recomputed_from_the_demos_tables(how: str, demo) -> None:
    api, cli, folder = demo
    result = api if how == "api" else cli
    summary = pq.read_table(folder / "clones" / "clones-summary.parquet").to_pylist()
    ensemble = pq.read_table(folder / "ensemble.parquet").to_pylist()
    want = verdicts(summary, ensemble)
    assert [c["key"] for c in result["claims"]] == ["a", "b", "c", "d"]
    for claim in result["claims"]:
        holds, numbers = want[claim["key"]]
        assert claim["holds"] is holds, (claim["key"], claim["evidence"])
        assert claim["verdict"] == {True: "holds", False: "does not hold", None: "cannot tell"}[holds]
        for name, value in numbers.items():
            assert close(claim["numbers"][name], value), (claim["key"], name, claim["numbers"][name], value)
    # the tiny plan reaches a verdict on every claim (here: (d) holds, (a)-(c) do not), so every rule above is exercised
    assert all(c["holds"] is not None for c in result["claims"])
    assert close(result["clone_size"], clone_sizes(summary)) and set(map(int, result["clone_size"])) == set(SEEDS)
    # the regime word of each width (one measured network per width), by the rule from the table's numbers
    assert close(result["regimes"], regimes(summary)) and set(map(int, result["regimes"])) == set(SEEDS)

    # the noise left by chunks twice the clone size of the widest network (when such a chunk is narrower than it)
    sizes = clone_sizes(summary)
    widest = max(sizes)
    chunk = next((c for c in (16, 32, 64, 128, 256, 512) if c >= 2 * sizes[widest]), None)
    r2 = [r["mean"] for r in summary if (r["metric"], r["split"], r["width"], r["chunk_size"]) == (
        "reconstruction_r2", "test", widest, chunk)]
    noise = {"widest": widest, "chunk": chunk, "one_minus_r2": 1 - r2[0]} if chunk and chunk < widest and r2 else {}
    assert close(result["noise"], noise)


def test_the_command_line_reuses_the_runs_and_says_the_same(demo) -> None:
    api, cli, folder = demo
    assert json.loads((folder / "demo-summary.json").read_text()) == cli
    assert all(step["skipped"] for step in cli["steps"]) and not any(step["skipped"] for step in api["steps"])
    # one training step per width: its seeds trained together
    assert [s["stage"] for s in cli["steps"]] == ["train"] * len(SEEDS) + ["ensemble", "clones", "report"]
    assert cli["claims"] == json.loads(json.dumps(api["claims"], default=str))
