"""Property-based fuzzing (hypothesis) of the readers and of the analysis functions.

Readers: on random bytes and on valid files with random bytes overwritten, every reader either
returns validated data (finite arrays of the declared shapes, a checked dict) or raises `InputError`:
never another exception, never a crash. Analysis: on random data, results are finite and within
their mathematical ranges, and agree with independent brute-force float64 references.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mitosis_cli.analysis import ensembles as ens
from mitosis_cli.analysis.accuracy import count_correct, head_readouts
from mitosis_cli.analysis.chunks import draw_chunks
from mitosis_cli.analysis.information_imbalance import (
    chunk_information_imbalances,
    information_imbalance,
)
from mitosis_cli.analysis.reconstruction import Moments, reconstruction_scores
from mitosis_cli.errors import InputError
from mitosis_cli.io.activations import ActivationFile
from mitosis_cli.io.checkpoints import load_checkpoint, save_checkpoint
from mitosis_cli.io.tables import provenance, read_table, write_table

from .conftest import planted_acts, record

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ANALYSIS = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bytes of one valid activation file, table and checkpoint, to mutate."""
    folder = tmp_path_factory.mktemp("valid")
    acts = planted_acts(folder / "a.h5", n=40, width=8, clone_size=2)
    table = write_table(folder / "t.parquet", pa.table({"epoch": [1, 2], "value": [0.5, 0.25]}),
                        provenance("history", [], {}, ""))
    ckpt = save_checkpoint(folder / "c.pt", {"config": "{}", "epoch": 1, "model": {"w": torch.arange(6.0)}})
    return {"h5": acts.read_bytes(), "parquet": table.read_bytes(), "pt": ckpt.read_bytes()}


def _mutate(data: bytes, edits: list[tuple[float, int]]) -> bytes:
    out = bytearray(data)
    for where, value in edits:
        out[int(where * (len(out) - 1))] = value
    return bytes(out)


EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=24)


def _read_activations(path: Path) -> None:
    file = ActivationFile(path)
    info = file.header
    weight, bias = file.head()
    assert weight.shape == (info.num_classes, info.width) and np.isfinite(weight).all() and np.isfinite(bias).all()
    for split, n in info.splits.items():
        arrays = file.split(split)
        assert arrays.features.shape == (n, info.width) and arrays.features.dtype == np.float32
        assert np.isfinite(arrays.features).all() and np.isfinite(arrays.logits).all()
        assert arrays.labels.min() >= 0 and arrays.labels.max() < info.num_classes


def run_isolated(read: Callable[[Path], object], path: Path, timeout: float = 10.0) -> tuple[str, str]:
    """Call read(path) in a forked child; return (outcome, detail).

    Outcomes: "accepted", "refused" (InputError naming the file), "escaped" (any other exception: a
    defect), "crash" (killed by a signal) or "hang" (still running after `timeout` s). Fork isolation is
    needed because libhdf5 itself can segfault or loop forever on mangled metadata.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(r)
        try:
            read(path)
            outcome, detail = "accepted", ""
        except InputError as err:
            outcome, detail = ("refused" if str(path) in str(err) else "escaped"), str(err)
        except BaseException as err:  # noqa: BLE001 - anything else escaped the reader: that is the finding
            outcome, detail = "escaped", f"{type(err).__name__}: {err}"
        os.write(w, f"{outcome}\t{detail}"[:4000].encode(errors="replace"))
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", ""
        time.sleep(0.001)
    data = os.read(r, 8192).decode(errors="replace")
    os.close(r)
    if os.WIFSIGNALED(status):
        return "crash", signal.Signals(os.WTERMSIG(status)).name
    outcome, _, detail = data.partition("\t")
    return outcome, detail


def _only_input_errors(read: Callable[[Path], object], path: Path, kind: str) -> None:
    outcome, detail = run_isolated(read, path)
    record(f"fuzz.{kind}.{outcome}")
    assert outcome != "escaped", detail  # an exception other than one clear InputError line
    if kind != "h5":  # pyarrow and torch's unpickler must never crash or hang on any bytes
        assert outcome in ("accepted", "refused"), (outcome, detail)
    # libhdf5 is not hardened against mangled metadata: a crash or hang inside the C library is counted
    # (docs/reliability.md, "known limits") but cannot be turned into an error line by a Python program.


@FUZZ
@given(data=st.binary(min_size=0, max_size=3000))
def test_readers_on_random_bytes(tmp_path: Path, data: bytes) -> None:
    for kind, read in (("h5", _read_activations), ("parquet", read_table), ("pt", load_checkpoint)):
        path = tmp_path / f"random.{kind}"
        path.write_bytes(data)
        with pytest.raises(InputError):
            read(path)
        record(f"fuzz.{kind}.random_bytes")


@FUZZ
@given(edits=EDITS, kind=st.sampled_from(["h5", "parquet", "pt"]))
def test_readers_on_mutated_valid_files(
    tmp_path: Path, valid_files: dict[str, bytes], edits: list[tuple[float, int]], kind: str
) -> None:
    path = tmp_path / f"mutated.{kind}"
    path.write_bytes(_mutate(valid_files[kind], edits))
    read = {"h5": _read_activations, "parquet": read_table, "pt": load_checkpoint}[kind]
    _only_input_errors(read, path, kind)
    record(f"fuzz.{kind}.mutated")


@FUZZ
@given(keep=st.floats(0.0, 0.999), kind=st.sampled_from(["h5", "parquet", "pt"]))
def test_readers_on_truncated_files(tmp_path: Path, valid_files: dict[str, bytes], keep: float, kind: str) -> None:
    path = tmp_path / f"truncated.{kind}"
    path.write_bytes(valid_files[kind][: int(keep * len(valid_files[kind]))])
    read = {"h5": _read_activations, "parquet": read_table, "pt": load_checkpoint}[kind]
    _only_input_errors(read, path, kind)
    record(f"fuzz.{kind}.truncated")


# ------------------------------------------------------------------------------------------- analysis


def _points(draw: st.DrawFn, n_min: int = 4, n_max: int = 24, d_max: int = 6) -> np.ndarray:
    n = draw(st.integers(n_min, n_max))
    d = draw(st.integers(1, d_max))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    if draw(st.booleans()):  # integer grid: many exact ties and duplicated points
        x = np.round(x)
    # Powers of two keep grid distances exact in float64, so an exact tie stays a tie in every formula
    # (a decimal scale such as 1e-3 would round equal distances apart, differently per formula).
    return x * draw(st.sampled_from([2.0**-10, 1.0, 2.0**10]))


@st.composite
def point_clouds(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    a = _points(draw)
    b = draw(st.sampled_from(["same", "noisy", "independent"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if b == "same":
        xb = a.copy()
    elif b == "noisy":
        xb = a + 0.3 * rng.standard_normal(a.shape)
    else:
        xb = rng.standard_normal((a.shape[0], draw(st.integers(1, 5))))
    k = draw(st.integers(1, min(3, a.shape[0] - 1)))
    return a, xb, k


def brute_information_imbalance(xa: np.ndarray, xb: np.ndarray, k: int) -> float:
    """The definition, written out: k nearest in A (ties by lowest index), rank in B (ties share the lowest)."""
    n = len(xa)
    da = ((xa[:, None, :] - xa[None, :, :]) ** 2).sum(-1)
    db = ((xb[:, None, :] - xb[None, :, :]) ** 2).sum(-1)
    total = 0
    for i in range(n):
        others = [m for m in range(n) if m != i]
        nearest = sorted(others, key=lambda m: (da[i, m], m))[:k]
        for j in nearest:
            total += 1 + sum(1 for m in others if db[i, m] < db[i, j])
    return 2.0 * total / (n * n * k)


@ANALYSIS
@given(cloud=point_clouds())
def test_information_imbalance_matches_definition_and_range(cloud: tuple[np.ndarray, np.ndarray, int]) -> None:
    xa, xb, k = cloud
    n = len(xa)
    got = information_imbalance(xa, xb, k)
    # float64 distances of exactly representable data: the values agree exactly with the definition
    assert got == pytest.approx(brute_information_imbalance(xa, xb, k), abs=1e-12)
    # mean rank between 1 (tied points share the lowest rank) and N - 1
    assert 2 / n - 1e-12 <= got <= 2 * (n - 1) / n + 1e-12
    if np.array_equal(xa, xb) and k == 1:  # B = A: the nearest neighbour has rank 1 (ties included): 2/N
        assert got == pytest.approx(2 / n, abs=1e-12)
    record("fuzz.information_imbalance")


@ANALYSIS
@given(cloud=point_clouds(), seed=st.integers(0, 1000))
def test_chunk_information_imbalances_agree_with_the_pairwise_function(
    cloud: tuple[np.ndarray, np.ndarray, int], seed: int
) -> None:
    x, _, k = cloud
    width = x.shape[1]
    chunks = [c for size in sorted({1, max(1, width // 2), width}) for c in draw_chunks(width, size, 2, seed)]
    both = chunk_information_imbalances(x, chunks, k)
    for c, chunk in enumerate(chunks):
        assert both[c, 0] == pytest.approx(brute_information_imbalance(x[:, chunk], x, k), abs=1e-12)
        assert both[c, 1] == pytest.approx(brute_information_imbalance(x, x[:, chunk], k), abs=1e-12)
    record("fuzz.chunk_information_imbalance")


def ridge_r2_reference(x: np.ndarray, chunk: np.ndarray, alpha: float) -> float:
    """Ridge with intercept as an augmented least-squares problem (SVD in float64): no normal equations."""
    xc = x - x.mean(0)
    s = xc[:, chunk]
    design = np.vstack([s, np.sqrt(alpha) * np.eye(len(chunk))])
    target = np.vstack([xc, np.zeros((len(chunk), x.shape[1]))])
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    total = (xc**2).sum()
    return 1.0 - ((xc - s @ coef) ** 2).sum() / total


@st.composite
def layers(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(8, 40))
    w = draw(st.integers(2, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    latent = draw(st.integers(1, w))
    x = (rng.standard_normal((n, latent)) @ rng.standard_normal((latent, w))
         + draw(st.sampled_from([0.0, 0.01, 0.5])) * rng.standard_normal((n, w)))
    if draw(st.booleans()):
        x[:, rng.integers(0, w)] = 0.0  # a dead ReLU
    if w > 2 and draw(st.booleans()):
        x[:, 1] = x[:, 0]  # a duplicated neuron
    if not np.isfinite(x).all() or (x - x.mean(0)).std() == 0:
        x[:, 0] += rng.standard_normal(n)
    return x


@ANALYSIS
@given(x=layers(), seed=st.integers(0, 1000))
def test_reconstruction_r2_is_at_most_one_and_matches_a_least_squares_reference(x: np.ndarray, seed: int) -> None:
    width = x.shape[1]
    chunks = np.concatenate([draw_chunks(width, max(1, width // 2), 3, seed),
                             draw_chunks(width, width, 1, seed)[:, :max(1, width // 2)]])
    scores = reconstruction_scores(Moments.of(x), chunks)
    assert np.isfinite(scores.r2).all() and (scores.r2 <= 1 + 1e-9).all() and (scores.r2 >= -1e-9).all()
    for r2, chunk in zip(scores.r2, chunks, strict=True):
        assert r2 == pytest.approx(ridge_r2_reference(x, chunk, 1e-8), abs=1e-6)
    full = reconstruction_scores(Moments.of(x), [np.arange(width)])
    assert full.r2[0] == pytest.approx(1.0, abs=1e-6)  # the whole layer reconstructs itself
    record("fuzz.reconstruction")


@ANALYSIS
@given(n=st.integers(2, 30), w=st.integers(1, 12), c=st.integers(2, 5), seed=st.integers(0, 2**31), rescale=st.booleans())
def test_chunk_accuracy_counts_match_numpy(n: int, w: int, c: int, seed: int, rescale: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, w)).astype(np.float32)
    weight = rng.standard_normal((c, w)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    labels = rng.integers(0, c, n)
    size = int(rng.integers(1, w + 1))
    chunks = draw_chunks(w, size, 3, seed % 1000)
    got = count_correct(x, labels, chunks, [head_readouts(weight, bias, chunks, rescale)])[0][-1]
    scale = w / size if rescale else 1.0
    for r, chunk in enumerate(chunks):
        logits = scale * x[:, chunk].astype(np.float64) @ weight[:, chunk].T.astype(np.float64) + bias
        margin = np.sort(logits, 1)
        clear = margin[:, -1] - margin[:, -2] > 1e-4  # float32 vs float64 can only differ on near-ties
        want = (logits.argmax(1) == labels)
        assert abs(int(got[r]) - int(want.sum())) <= int((~clear).sum())
    record("fuzz.chunk_accuracy")


@ANALYSIS
@given(p=st.integers(1, 5), n=st.integers(1, 30), c=st.integers(2, 6), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]), combine=st.sampled_from(["logits", "probs"]))
def test_ensemble_metrics_are_finite_and_in_range(p: int, n: int, c: int, seed: int, scale: float, combine: str) -> None:
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((p, n, c))).astype(np.float32)
    labels = rng.integers(0, c, n)
    log_p = ens.combine_members(logits, combine)
    assert np.isfinite(log_p).all() and np.allclose(np.exp(log_p).sum(1), 1.0, atol=1e-5)
    metrics = ens.classification_metrics(log_p, labels)
    assert 0 <= metrics["error"] <= 1 and metrics["accuracy"] == pytest.approx(1 - metrics["error"])
    assert np.isfinite(metrics["cross_entropy"]) and metrics["cross_entropy"] >= 0
    if p >= 2:
        bv = ens.bias_variance(logits, labels)
        assert all(np.isfinite(v) for v in bv.values()) and bv["variance"] >= -1e-9
    record("fuzz.ensemble_metrics")
