"""Benchmark: reconstruction R^2 + residual correlations of `mitosis clones` vs scikit-learn on the same chunks.

Ours: one streamed float64 scatter matrix, then per chunk a Cholesky solve and a Schur complement
(mitosis_cli.analysis.reconstruction). Reference: the paper's path, per chunk
``Ridge(alpha=1e-8).fit(X_S, X)``, ``r2_score(X, pred, multioutput="variance_weighted")`` and the
correlation matrix of the residuals of the neurons outside the chunk (np.corrcoef). The reference is
timed on `--sklearn-repeats` chunks per size and extrapolated to `--repeats` chunks per size (its cost
per chunk depends only on the size); the agreement of the two on those chunks is reported.

Optionally (`--command`) runs `mitosis clones` on the same data written to HDF5, in a subprocess, and
reports its peak resident memory above that of a process that only imports the same modules.

Example (the issue's target; ~5 min on 2 cores):
    python benchmarks/bench_clones_r2.py --n 10000 --width 2048 --repeats 40 --command
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe_machine  # benchmarks/machine.py: the scripts run from this folder


def _features(n: int, width: int, clone_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, clone_size))
    mix = rng.standard_normal((clone_size, width)) / np.sqrt(clone_size)
    return (signal @ mix + 0.1 * rng.standard_normal((n, width))).astype(np.float32)


def _sklearn_chunk(x: np.ndarray, chunk: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    pred = Ridge(alpha=1e-8).fit(x[:, chunk], x).predict(x[:, chunk])
    r2 = r2_score(x, pred, multioutput="variance_weighted")
    rest = np.setdiff1d(np.arange(x.shape[1]), chunk)
    if rest.size < 2:
        return float(r2), float("nan")
    corr = np.corrcoef(x[:, rest] - pred[:, rest], rowvar=False)
    return float(r2), float((np.abs(corr).sum() - np.trace(np.abs(corr))) / (rest.size * (rest.size - 1)))



def _peak_rss_mib(code: str) -> float:
    """Peak RSS (MiB) of a fresh Python process running `code`, read from its own VmHWM at exit.

    (getrusage's ru_maxrss would include the RSS of this forked parent before the exec.)
    """
    wrapped = ("import atexit\n"
               "def _hwm():\n"
               "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
               "    print('VMHWM', int(line.split()[1]), flush=True)\n"
               "atexit.register(_hwm)\n" + code)
    out = subprocess.run([sys.executable, "-c", wrapped], check=False, capture_output=True, text=True).stdout
    kib = next(int(line.split()[1]) for line in out.splitlines() if line.startswith("VMHWM"))
    return kib / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--sklearn-repeats", type=int, default=1, help="chunks per size timed with scikit-learn")
    ap.add_argument("--max-size", type=int, default=None, help="largest chunk size (default W)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--command", action="store_true", help="also run `mitosis clones` and measure its peak memory")
    ap.add_argument("--only-command", action="store_true", help="skip the R^2 comparison; just the --command part")
    args = ap.parse_args()

    import torch

    from mitosis_cli.analysis.chunks import default_sizes, draw_chunks
    from mitosis_cli.analysis.reconstruction import MomentAccumulator, reconstruction_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    x = _features(args.n, args.width, 64, seed=0)
    if args.only_command:
        print(_command_line(x, args.repeats))
        return
    sizes = [s for s in default_sizes(args.width) if s <= (args.max_size or args.width)]
    chunks = {s: draw_chunks(args.width, s, args.repeats, seed=0) for s in sizes}

    t0 = time.perf_counter()
    acc = MomentAccumulator(args.width)
    for start in range(0, args.n, 2048):
        acc.update(x[start : start + 2048])
    moments = acc.result()
    t_moments = time.perf_counter() - t0
    ours: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}
    for s in sizes:
        t = time.perf_counter()
        sc = reconstruction_scores(moments, chunks[s])
        ours[s] = (time.perf_counter() - t, sc.r2, sc.residual_abs_corr)
    t_ours = t_moments + sum(v[0] for v in ours.values())

    _sklearn_chunk(x[:200, :16], np.arange(2))  # warm-up: imports are not the reference's per-chunk cost
    t_sk_total, max_dr2, max_dcorr = 0.0, 0.0, 0.0
    print(f"{'size':>6} {'ours s/chunk':>13} {'sklearn s/chunk':>16}")
    for s in sizes:
        k = min(args.sklearn_repeats, args.repeats)
        t = time.perf_counter()
        refs = [_sklearn_chunk(x, c) for c in chunks[s][:k]]
        per_chunk = (time.perf_counter() - t) / k
        t_sk_total += per_chunk * args.repeats
        for r, (r2, corr) in enumerate(refs):
            max_dr2 = max(max_dr2, abs(r2 - ours[s][1][r]))
            if np.isfinite(corr):
                max_dcorr = max(max_dcorr, abs(corr - ours[s][2][r]))
        print(f"{s:>6} {ours[s][0] / args.repeats:>13.4f} {per_chunk:>16.4f}", flush=True)
    lines = [
        f"- date: {dt.date.today().isoformat()}; machine: {describe_machine()}; torch threads {torch.get_num_threads()}",
        f"- data: N = {args.n}, W = {args.width} (float32, {x.nbytes / 2**20:.0f} MiB), sizes {sizes[0]}..{sizes[-1]} "
        f"(powers of two), {args.repeats} chunks per size",
        f"- ours (moments {t_moments:.1f} s + all chunks): {t_ours:.1f} s",
        f"- scikit-learn Ridge + r2_score + np.corrcoef of residuals: {t_sk_total:.1f} s "
        f"(extrapolated from {args.sklearn_repeats} chunk(s) per size x {args.repeats})",
        f"- speed-up: {t_sk_total / t_ours:.1f}x; max |R^2 difference| {max_dr2:.1e}, "
        f"max |mean abs corr difference| {max_dcorr:.1e} on the timed chunks",
    ]
    if args.command:
        lines.append(_command_line(x, args.repeats))
    print("\n".join(lines))


def _command_line(x: np.ndarray, repeats: int) -> str:
    """Run `mitosis clones` on `x` written as a test split; its time and peak memory above its imports."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.h5"
        _write_acts(path, x)
        imports = ("import torch, h5py, pyarrow, numpy, mitosis_cli.cli.app, mitosis_cli.analysis.reconstruction, "
                   "mitosis_cli.analysis.accuracy, mitosis_cli.analysis.information_imbalance, mitosis_cli.io.clone_tables")
        base = _peak_rss_mib(imports)
        t = time.perf_counter()
        cmd = ("import sys; from mitosis_cli.cli.app import main; "
               f"code = main(['clones', {str(path)!r}, '-q', '--device', 'cpu', '--repeats', '{repeats}', '--ii-points', '0'])")
        peak = _peak_rss_mib(cmd)
        t_cmd = time.perf_counter() - t
    feat = x.nbytes / 2**20
    return (f"- `mitosis clones` (test split only, --ii-points 0, every other measurement on): {t_cmd:.0f} s, "
            f"peak RSS {peak:.0f} MiB, {peak - base:.0f} MiB above the {base:.0f} MiB of its imports "
            f"= {(peak - base) / feat:.2f}x the {feat:.0f} MiB feature matrix")


def _write_acts(path: Path, x: np.ndarray) -> None:
    from mitosis_cli.io.activations import ActivationHeader, write_activations

    n, width = x.shape
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((10, width)) / np.sqrt(width)).astype(np.float32)
    bias = np.zeros(10, np.float32)
    logits = x @ weight.T
    labels = logits.argmax(1).astype(np.int64)
    meta = ActivationHeader(width=width, num_classes=10, dataset="bench", arch="bench", seed=0, epoch=0, layer="bench")
    write_activations(path, meta, weight, bias, {"test": (n, iter([(x, logits, labels)]))})


if __name__ == "__main__":
    main()
