"""The paper's claims judged from hand-made clones-summary and ensemble rows (analysis/claims.py)."""

from mitosis_cli.analysis.claims import evaluate_claims


def _summary(clone_size: dict[int, float], chunk_acc: dict[int, float], widest: int, crit: float) -> list[dict]:
    rows = [{"metric": "clone_size", "width": w, "mean": c, "split": "test", "chunk_size": None} for w, c in clone_size.items()]
    rows += [{"metric": "chunk_accuracy", "split": "test", "width": widest, "chunk_size": w, "mean": a}
             for w, a in chunk_acc.items()]
    rows.append({"metric": "critical_width", "width": None, "mean": crit, "split": "test", "chunk_size": None})
    return rows


def _ensemble(wide: dict[int, list[float]], ens: dict[tuple[int, int], list[float]]) -> list[dict]:
    rows = [{"kind": "wide", "width": w, "members": 1, "repeat": i, "split": "test", "metric": "accuracy", "value": v}
            for w, vs in wide.items() for i, v in enumerate(vs)]
    rows += [{"kind": "ensemble", "width": w, "members": k, "repeat": i, "split": "test", "metric": "accuracy", "value": v}
             for (w, k), vs in ens.items() for i, v in enumerate(vs)]
    return rows


def test_claims_hold_on_an_ideal_sweep() -> None:
    summary = _summary({16: 15.0, 64: 16.0, 256: 15.5, 1024: 15.2}, {16: 0.930, 64: 0.952}, 1024, 15.0)
    ensemble = _ensemble({16: [0.925, 0.935], 64: [0.95, 0.956], 1024: [0.97]},
                         {(16, 2): [0.94], (16, 4): [0.95, 0.952], (16, 8): [0.96]})
    a, b, c, d = evaluate_claims(summary, ensemble)
    assert (a.holds, b.holds, c.holds, d.holds) == (True, True, True, True)
    assert a.numbers["ratio"] == 16.0 / 15.0
    assert b.numbers["n_clones"][1024] == 1024 / 15.2
    assert c.numbers["gap_points"][16] == 100 * (0.930 - 0.930)
    assert (d.numbers["members"], d.numbers["member_width"]) == (8, 16) and abs(d.numbers["ensemble"] - 0.96) < 1e-12


def test_claims_fail_and_say_why() -> None:
    summary = _summary({64: 16.0, 256: 64.0, 1024: 50.0}, {64: 0.70}, 1024, 0.0)
    ensemble = _ensemble({64: [0.95], 1024: [0.90]}, {(64, 2): [0.96]})
    a, b, c, d = evaluate_claims(summary, ensemble)
    assert a.holds is False and "max/min 4.00" in a.evidence
    assert c.holds is False and "worse by up to 25.0 points" in c.evidence
    assert d.holds is False and d.numbers["gap_points"] < -5
    assert b.holds is False and b.numbers["growth_ratio"] < 0.5  # 1024/50 clones vs 64/16: the count barely grows


def test_claims_cannot_tell_without_data() -> None:
    claims = evaluate_claims([], [])
    assert [c.holds for c in claims] == [None, None, None, None]
    assert all(c.evidence for c in claims)


def test_a_flat_clone_count_is_not_linear_growth() -> None:
    # untrained networks: w_c* grows with W, so the count barely rises although its line fits well
    summary = _summary({32: 31.0, 128: 119.0, 512: 436.0}, {}, 512, 0.0)
    a, b, _, _ = evaluate_claims(summary, [])
    assert a.holds is False
    assert b.holds is False and b.numbers["slope"] > 0 and b.numbers["growth_ratio"] < 0.1
