"""The paper's claims judged from hand-made clones-summary and ensemble rows (analysis/claims.py)."""

import pytest
import scipy.stats

from mitosis_cli.analysis.claims import Claim, evaluate_claims, residual_noise


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


def test_a_flat_clone_count_is_not_linear_growth() -> None:
    # untrained networks: w_c* grows with W, so the count barely rises although its line fits well
    summary = _summary({32: 31.0, 128: 119.0, 512: 436.0}, {}, 512, 0.0)
    a, b, _, _ = evaluate_claims(summary, [])
    assert a.holds is False
    assert b.holds is False and b.numbers["slope"] > 0 and b.numbers["growth_ratio"] < 0.1


# ----------------------------------------------------------------------------------------------------------------------
# every field of every claim on planted rows, the expected values worked out here from the planted numbers

STATEMENTS = {
    "a": "the clone size stays roughly constant across widths above the critical width",
    "b": "the number of clones grows linearly with the width above the critical width",
    "c": "chunks of the wide network classify like narrow networks of the chunk's width",
    "d": "the wide network matches or beats the ensemble of clone-sized networks",
}


def _check(claim: Claim, key: str, holds: bool | None, evidence: str, numbers: dict) -> None:
    assert (claim.key, claim.statement, claim.holds, claim.evidence) == (key, STATEMENTS[key], holds, evidence)
    assert claim.verdict == {True: "holds", False: "does not hold", None: "cannot tell"}[holds]
    assert set(claim.numbers) == set(numbers)
    for name, want in numbers.items():  # ... : checked by the caller
        if want is not ...:
            assert claim.numbers[name] == (pytest.approx(want, rel=1e-12) if want is not None else None), name


def _line(widths: list[int], counts: list[float]) -> tuple[float, float]:
    """Slope and R^2 of the least-squares line, from scipy."""
    fit = scipy.stats.linregress(widths, counts)
    return fit.slope, fit.rvalue**2


def _noise_rows(ensemble: list[dict]) -> list[dict]:
    """Rows a claim must not read: train accuracies and test errors far from the test accuracies."""
    return ensemble + [{**r, "split": "train", "value": 1.0} for r in ensemble] + [
        {**r, "metric": "error", "value": 1.0 - r["value"]} for r in ensemble]


def _other_chunk_rows(summary: list[dict]) -> list[dict]:
    """Rows a claim must not read, after the ones it must: train chunk accuracies, and those of another width."""
    chunks = [r for r in summary if r["metric"] == "chunk_accuracy"]
    return summary + [{**r, "split": "train", "mean": 1.0} for r in chunks] + [{**r, "width": 1, "mean": 0.0} for r in chunks]


def test_every_field_of_the_claims_on_a_planted_sweep() -> None:
    # the critical width 16 leaves W = 32, 64, 128 above it (16 itself is not above); W = 64 has two sources (15
    # and 17: mean 16) and two unusable ones; the clone size of the widest, 16, is a trained width
    summary = _summary({4: 3.5, 8: 7.0, 12: 11.0, 16: 14.0, 32: 15.0, 128: 16.0},
                       {8: 0.80, 12: 0.85, 16: 0.905, 32: 0.93, 64: 0.96, 128: 0.95}, 128, 16.0)
    summary += [{"metric": "clone_size", "width": 64, "mean": m, "split": "test", "chunk_size": None}
                for m in (15.0, float("nan"), None, 17.0)]
    ensemble = _ensemble({4: [0.7], 8: [0.81, 0.83], 12: [0.86, 0.88], 16: [0.90, 0.91], 32: [0.925, 0.935],
                          64: [0.935, 0.945], 128: [0.950, 0.946]},
                         {(16, 2): [0.90], (16, 4): [0.92, 0.94], (16, 8): [0.951, 0.9535], (16, 16): [0.99],
                          (8, 8): [0.5], (8, 16): [0.99]})
    # rows of another kind with the member width and count: a reading that forgets the kind mixes them in
    ensemble += [{**r, "kind": "same-total-width", "value": 0.5} for r in ensemble if (r["width"], r["members"]) == (16, 8)]
    a, b, c, d = evaluate_claims(_other_chunk_rows(summary), _noise_rows(ensemble))

    above = {32: 15.0, 64: 16.0, 128: 16.0}
    _check(a, "a", True, "w_c* = W=32: 15.0, W=64: 16.0, W=128: 16.0 (max/min 1.07; critical width 16.0)",
           {"clone_size": above, "ratio": 16.0 / 15.0, "critical_width": 16.0})
    assert a.numbers["clone_size"] == above

    counts = [32 / 15.0, 64 / 16.0, 128 / 16.0]
    slope, r2 = _line([32, 64, 128], counts)
    growth = (counts[-1] / counts[0]) / (128 / 32)
    assert slope > 0 and r2 >= 0.95 and growth == pytest.approx(0.9375)
    _check(b, "b", True, f"clones W=32: 2.1, W=64: 4.0, W=128: 8.0; slope {slope * 100:.2f} per 100 neurons, "
           f"line R^2 {r2:.3f}, count grows 0.94x as fast as the width",
           {"n_clones": ..., "slope": slope, "line_r2": r2, "growth_ratio": growth})
    assert b.numbers["n_clones"] == pytest.approx(dict(zip([32, 64, 128], counts, strict=True)), rel=1e-12)

    # chunks of W = 128 against the mean of two networks per narrower width (W itself is no narrow network);
    # w = 8 and 12 are below the clone size (16), w = 4 has no chunk accuracy
    pairs = {16: (0.905, 0.905), 32: (0.93, 0.93), 64: (0.96, 0.94)}
    _check(c, "c", False, "w=16: chunk 90.5% vs network 90.5%; w=32: chunk 93.0% vs network 93.0%; "
           "w=64: chunk 96.0% vs network 94.0% (below the clone size, not judged: w=8: chunk 80.0% vs network 82.0%, "
           "w=12: chunk 85.0% vs network 87.0%); chunks are better by up to 2.0 points (chunks of the W=128 network)",
           {"pairs": ..., "gap_points": ..., "widest": 128})
    assert c.numbers["pairs"].keys() == pairs.keys()
    for w, (chunk, network) in pairs.items():
        assert c.numbers["pairs"][w] == pytest.approx((chunk, network))
        assert c.numbers["gap_points"][w] == pytest.approx(100 * (chunk - network), abs=1e-9)

    # the clone-sized member is w = 16 (the smallest trained width >= 16); W/w = 8 members at most
    wide, ens = (0.950 + 0.946) / 2, (0.951 + 0.9535) / 2
    _check(d, "d", True, "W=128: 94.8% vs ensemble of 8 networks of width 16: 95.2% (-0.4 points; "
           "W/w_c* = 8 members would match its width)",
           {"wide": wide, "ensemble": ens, "members": 8, "member_width": 16, "gap_points": 100 * (wide - ens)})


def test_every_field_when_the_size_varies_and_no_critical_width_was_fitted() -> None:
    summary = [r for r in _summary({32: 10.0, 64: 15.0, 128: 21.0}, {32: 0.92, 64: 0.90}, 128, 0.0)
               if r["metric"] != "critical_width"]
    # the only ensembles are of width 64; 32 has single networks only
    ensemble = _ensemble({32: [0.91], 64: [0.92, 0.93], 128: [0.95]}, {(64, 2): [0.96]})
    a, b, c, d = evaluate_claims(summary, _noise_rows(ensemble))
    _check(a, "a", False, "w_c* = W=32: 10.0, W=64: 15.0, W=128: 21.0 (max/min 2.10; critical width not fitted)",
           {"clone_size": {32: 10.0, 64: 15.0, 128: 21.0}, "ratio": 2.1, "critical_width": None})
    counts = [3.2, 64 / 15.0, 128 / 21.0]
    slope, r2 = _line([32, 64, 128], counts)
    growth = (counts[-1] / counts[0]) / 4
    assert growth < 0.5
    _check(b, "b", False, f"clones W=32: 3.2, W=64: 4.3, W=128: 6.1; slope {slope * 100:.2f} per 100 neurons, "
           f"line R^2 {r2:.3f}, count grows {growth:.2f}x as fast as the width",
           {"n_clones": ..., "slope": slope, "line_r2": r2, "growth_ratio": growth})
    assert b.numbers["n_clones"] == pytest.approx(dict(zip([32, 64, 128], counts, strict=True)), rel=1e-12)
    # the largest gap in size is the negative one, though the other is larger
    _check(c, "c", False, "w=32: chunk 92.0% vs network 91.0%; w=64: chunk 90.0% vs network 92.5%; "
           "chunks are worse by up to 2.5 points (chunks of the W=128 network)",
           {"pairs": ..., "gap_points": ..., "widest": 128})
    assert c.numbers["gap_points"] == pytest.approx({32: 1.0, 64: -2.5})
    _check(d, "d", False, "W=128: 95.0% vs ensemble of 2 networks of width 64: 96.0% (-1.0 points; "
           "W/w_c* = 6 members would match its width)",
           {"wide": 0.95, "ensemble": 0.96, "members": 2, "member_width": 64, "gap_points": 100 * (0.95 - 0.96)})


def test_each_tolerance_is_inclusive() -> None:
    # max/min exactly 1.5; chunks 1.5 points better; the ensemble 0.5 points better (accuracies chosen so that the
    # differences are exact in floating point)
    summary = _summary({32: 10.0, 64: 12.0, 128: 15.0}, {32: 0.015}, 128, 0.0)
    a, _, c, d = evaluate_claims(summary, _ensemble({32: [0.0], 128: [0.005]}, {(32, 4): [0.01]}))
    assert 100 * (0.015 - 0.0) == 1.5 and 100 * (0.005 - 0.01) == -0.5
    assert (a.numbers["ratio"], a.holds) == (1.5, True)
    assert (c.numbers["gap_points"], c.holds) == ({32: 1.5}, True)
    assert (d.numbers["gap_points"], d.holds) == (-0.5, True)
    # the count grows exactly half as fast as the width: 128/20 clones against 32/10
    _, b, _, _ = evaluate_claims(_summary({32: 10.0, 64: 15.0, 128: 20.0}, {}, 128, 0.0), [])
    assert (b.numbers["growth_ratio"], b.holds) == (0.5, True)


def test_what_each_claim_says_when_it_cannot_tell() -> None:
    a, b, c, d = evaluate_claims([], [])
    _check(a, "a", None, "fewer than three widths above the critical width", {})
    _check(b, "b", None, "fewer than three widths above the critical width", {})
    _check(c, "c", None, "no clone size measured", {})
    _check(d, "d", None, "no clone size measured", {})
    # clone sizes at two widths, the only narrow network below the clone size, no ensembles
    summary = _summary({8: 7.0, 64: 16.0}, {8: 0.80}, 64, 4.0)
    a, b, c, d = evaluate_claims(summary, _ensemble({8: [0.82], 64: [0.95]}, {}))
    _check(a, "a", None, "fewer than three widths above the critical width", {})
    _check(c, "c", None, "no trained width at or above the clone size to compare chunks with "
           "(below it: w=8: chunk 80.0% vs network 82.0%)", {})
    _check(d, "d", None, "no ensemble of networks of the clone size in the table", {})
    # no narrower width at all
    _, _, c, _ = evaluate_claims(_summary({64: 16.0}, {}, 64, 4.0), [])
    _check(c, "c", None, "no trained width at or above the clone size to compare chunks with", {})
    summary = _summary({32: 10.0, 128: 21.0}, {}, 128, 0.0)
    cases = [  # ensemble rows -> what claim (d) says
        (_ensemble({32: [0.9], 128: [0.95]}, {(32, 8): [0.97]}), "fewer than two networks of width 32"),  # W/w = 4
        (_ensemble({32: [0.9]}, {(32, 2): [0.97]}), "no ensemble of networks of the clone size in the table"),  # no W
        (_ensemble({32: [0.9], 128: [0.95]}, {(128, 2): [0.97]}),  # ensembles of the widest only
         "no ensemble of networks of the clone size in the table"),
    ]
    for ensemble, evidence in cases:
        _check(evaluate_claims(summary, ensemble)[3], "d", None, evidence, {})


def test_residual_noise_is_one_minus_the_test_r2_of_that_chunk() -> None:
    summary = [{"metric": m, "split": s, "width": w, "chunk_size": k, "mean": v}
               for m, s, w, k, v in [("reconstruction_r2", "train", 64, 16, 0.9), ("reconstruction_r2", "test", 32, 16, 0.8),
                                     ("reconstruction_r2", "test", 64, 8, 0.7), ("chunk_accuracy", "test", 64, 16, 0.95),
                                     ("reconstruction_r2", "test", 64, 16, 0.75)]]
    assert residual_noise(summary, 64, 16) == pytest.approx(0.25)
    assert residual_noise(summary, 32, 8) is None
