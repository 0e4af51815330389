"""Benchmark: the whole default `mitosis clones` protocol against the machine's arithmetic limit and the paper's path.

1. Builds (once, then reuses) a planted activation file: N train + N test rows, W neurons that are noisy
   copies of a `--latent`-dimensional signal, 10 classes, and a head that reads the signal.
2. Measures the machine: float64 and float32 GEMM rates (torch, the benchmark's threads) and memory
   bandwidth (a large copy).
3. Runs the command, `python -m mitosis_cli clones FILE -o OUT` with the defaults (the paper's grid of
   chunk sizes, 40 repeats for R^2 / residuals / Information Imbalance, 100 for accuracies, the probe,
   residual shape, collapse diagnostics) in a subprocess: wall time and peak RSS (its own VmHWM, above
   that of a process that only imports the same modules).
4. Times each metric in this process with the same functions the stage calls, on the same chunks, and
   counts the arithmetic it needs (multiply-adds of the cheapest known algorithm, e.g. a Cholesky
   factor s^3/3, a solve s^2 m, a symmetric rank-s update m^2 s / 2, a GEMM of the chunk's n x s x C):
   the "flop limit" of a metric is that work at the measured GEMM rate of its precision, or the bytes
   it must stream at the measured bandwidth, whichever is longer. Prints seconds, limit and the fraction.
5. Runs the paper's path on the test split, one repeat of the grid (their analysis_repr.py: scikit-learn
   ``Ridge(1e-8).fit(X_S, X)``, ``r2_score(..., multioutput="variance_weighted")``, ``np.cov`` of the
   residuals of all W neurons, |cov| / (sqrt(var_i var_j) + 1e-8) averaged over the lower triangle),
   reports its agreement with ours on the same chunks, and the speed-up over 40 repeats of it.

Example (the issue's target; about 2 minutes for us and 20 s per paper repeat on 2 idle cores):
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_clones_full.py
    # smaller, for a quick look: --n 2000 --width 512
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from machine import describe_machine  # benchmarks/machine.py: the scripts run from this folder

OUT = Path(__file__).resolve().parent / "out"


def build(path: Path, n: int, width: int, latent: int, noise: float, classes: int = 10) -> Path:
    """The planted activation file (reused when one with these parameters exists)."""
    from mitosis_cli.io.activations import ActivationFile, ActivationHeader, write_activations

    config = {"latent": latent, "noise": noise, "n": n}
    if path.exists():
        try:
            header = ActivationFile(path).header
            if header.width == width and dict(header.config) == config:
                return path
        except Exception:  # noqa: BLE001 - a damaged or foreign file is rebuilt
            pass
    rng = np.random.default_rng(0)
    readout = np.random.default_rng(1000).standard_normal((classes, latent))
    copy_of = np.arange(width) % latent
    weight = (readout[:, copy_of] / np.bincount(copy_of)[copy_of]).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    streams = {}
    for i, split in enumerate(("train", "test")):
        signal = np.random.default_rng(2000 + i).standard_normal((n, latent))
        feats = (signal[:, copy_of] + noise * rng.standard_normal((n, width))).astype(np.float32)
        labels = np.argmax(signal @ readout.T, axis=1).astype(np.int64)
        streams[split] = (n, iter([(feats, feats @ weight.T, labels)]))
    header = ActivationHeader(width=width, num_classes=classes, dataset="planted", arch="planted", seed=0, epoch=0,
                              layer="planted", config=config)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_activations(path, header, weight, bias, streams)


def machine_rates() -> dict[str, float]:
    """GEMM rates (flop/s) in float64 and float32 at 2048^2, and copy bandwidth (bytes/s), with torch's threads."""
    import torch

    rates = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        best = min(_seconds(lambda a=a, b=b: a @ b) for _ in range(3))
        rates[name] = 2 * 2048**3 / best
    src = torch.randn(32 << 20, dtype=torch.float32)  # 128 MiB: far beyond the caches
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_seconds(lambda: dst.copy_(src)) for _ in range(3))
    rates["bandwidth"] = 2 * src.numel() * 4 / best  # read + write
    return rates


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _peak_rss_mib(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a fresh Python process running `code` (its own VmHWM at exit)."""
    wrapped = ("import atexit\n"
               "def _hwm():\n"
               "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
               "    print('VMHWM', int(line.split()[1]), flush=True)\n"
               "atexit.register(_hwm)\n" + code)
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapped], check=False, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"the command failed:\n{done.stderr}")
    kib = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("VMHWM"))
    return seconds, kib / 1024


def run_command(path: Path, out: Path) -> tuple[float, float, float]:
    """`mitosis clones FILE -o OUT --force` with the defaults: (seconds, peak RSS MiB, RSS MiB after imports)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_WAIT_POLICY": "PASSIVE"}
    imports = ("import torch, h5py, pyarrow, numpy, mitosis_cli.cli.app, mitosis_cli.stages.clones, "
               "mitosis_cli.analysis.information_imbalance")
    _, base = _peak_rss_mib(imports, env)
    code = ("import sys; from mitosis_cli.cli.app import main; "
            f"sys.exit(main(['clones', {str(path)!r}, '-o', {str(out)!r}, '--force', '-q']))")
    seconds, peak = _peak_rss_mib(code, env)
    return seconds, peak, base


class Metric:
    """One metric's measured seconds (wall and CPU) and its arithmetic (flops by precision) and streamed bytes."""

    def __init__(self, name: str) -> None:
        self.name, self.seconds, self.cpu, self.flops64, self.flops32, self.bytes = name, 0.0, 0.0, 0.0, 0.0, 0.0

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def limit(self, rates: dict[str, float]) -> float:
        return max(self.flops64 / rates["float64"] + self.flops32 / rates["float32"], self.bytes / rates["bandwidth"])


def per_metric(path: Path) -> list[Metric]:
    """Each metric of the default protocol, timed in this process with the stage's own functions."""
    import torch

    from mitosis_cli.analysis import accuracy, reconstruction
    from mitosis_cli.analysis import chunks as chunking
    from mitosis_cli.analysis.chunk_regression import ChunkRegression, OutOfSample
    from mitosis_cli.analysis.collapse import collapse_diagnostics
    from mitosis_cli.analysis.information_imbalance import chunk_information_imbalances
    from mitosis_cli.io.activations import ActivationFile
    from mitosis_cli.stages.clones import BLOCK_BYTES, DIAGNOSTIC_REPEATS, DIAGNOSTIC_TARGETS, CloneSettings

    cfg = CloneSettings()
    source = ActivationFile(path)
    width, classes = source.header.width, source.header.num_classes
    sizes = chunking.default_sizes(width)
    draws = {s: chunking.draw_chunks(width, s, max(cfg.repeats, cfg.acc_repeats), cfg.seed) for s in sizes}
    acc_chunks = {s: d[: cfg.acc_repeats] for s, d in draws.items()}
    reg_chunks = {s: d[: cfg.repeats] for s, d in draws.items()}
    distinct = {s: (1 if s == width else cfg.acc_repeats) for s in sizes}  # chunks of size W are one set
    distinct_reg = {s: (1 if s == width else cfg.repeats) for s in sizes}
    rows = max(64, BLOCK_BYTES // (4 * width))
    m_moments, m_acc, m_probe, m_in, m_oos, m_shape, m_ii, m_collapse = (
        Metric(n) for n in ("moments (train + test)", "chunk accuracy (head, train + test)", "probe (fit + score)",
                            "R^2 in-sample + residual correlations", "R^2 out of sample", "residual shape",
                            "Information Imbalance", "collapse diagnostics"))
    weight, bias = source.head()
    head = {s: [accuracy.head_readouts(weight, bias, acc_chunks[s])] for s in sizes}
    moments = {}
    blocks = {split: list(source.iter_blocks(split, rows=rows)) for split in ("train", "test")}  # read once, untimed
    labels = {split: source.labels(split) for split in ("train", "test")}
    for split in ("train", "test"):
        n = source.header.splits[split]
        with m_moments.timed():
            acc = reconstruction.MomentAccumulator(width + classes)
            start = 0
            for block in blocks[split]:
                lab = labels[split][start : start + len(block)]
                acc.update(torch.cat([torch.from_numpy(block), accuracy.one_hot(lab, classes).float()], dim=1))
                start += len(block)
            moments[split] = acc.result()
        m_moments.flops64 += n * (width + classes) ** 2  # the symmetric product: N D^2 / 2 multiply-adds
        m_moments.bytes += n * width * 4
        with m_acc.timed():
            start = 0
            for block in blocks[split]:
                lab = labels[split][start : start + len(block)]
                for s in sizes:
                    accuracy.count_correct(block, lab, acc_chunks[s], head[s])
                start += len(block)
        m_acc.flops32 += 2 * n * classes * sum(s * distinct[s] for s in sizes)
    with m_probe.timed():
        probes = {s: [accuracy.probe_readouts(moments["train"], width, acc_chunks[s])] for s in sizes}
        start = 0
        for block in blocks["test"]:
            lab = labels["test"][start : start + len(block)]
            for s in sizes:
                accuracy.count_correct(block, lab, acc_chunks[s], probes[s])
            start += len(block)
    n_test = source.header.splits["test"]
    m_probe.flops64 = 2 * sum(distinct[s] * (s**3 / 3 + s * s * classes) for s in sizes)
    m_probe.flops32 = 2 * n_test * classes * sum(s * distinct[s] for s in sizes)

    layer, fit = moments["test"].leading(width), moments["train"].leading(width)
    engine = ChunkRegression(layer.scatter, layer.n, reconstruction.RIDGE_ALPHA)
    oos = OutOfSample(fit.scatter, fit.mean, layer.scatter, layer.mean, layer.n, reconstruction.RIDGE_ALPHA)
    for s in sizes:
        chunks = [torch.as_tensor(c) for c in reg_chunks[s][: distinct_reg[s]]]
        with m_in.timed():
            for c in chunks:
                engine.scores(c)
        with m_oos.timed():
            for c in chunks:
                oos.rss(c)
        m = width - s
        m_in.flops64 += 2 * distinct_reg[s] * (s**3 / 3 + s * s * m + m * m * s / 2)
        m_in.bytes += distinct_reg[s] * m * m * 8 / 2  # the lower triangle of S_cc, read once
        m_oos.flops64 += 2 * distinct_reg[s] * (s**3 / 3 + 2 * s * s * m)
    with m_shape.timed():
        diag = [(c, chunking.sample_outside(width, c, DIAGNOSTIC_TARGETS, cfg.seed + r)) for s in sizes
                for r, c in enumerate(reg_chunks[s][:DIAGNOSTIC_REPEATS]) if s < width - 1]
        shape = reconstruction.ResidualShape(layer, [c for c, _ in diag], [g for _, g in diag])
        for block in blocks["test"]:
            shape.update(torch.from_numpy(block))
        shape.result()
    m_shape.flops64 = 2 * n_test * sum(len(c) * len(g) + len(g) ** 2 for c, g in diag)
    rng_rows = np.sort(np.random.default_rng([cfg.seed, n_test]).choice(n_test, min(cfg.ii_points, n_test), replace=False))
    x_ii = np.concatenate(blocks["test"])[rng_rows]
    with m_ii.timed():
        chunk_information_imbalances(x_ii, [c for s in sizes for c in reg_chunks[s]], cfg.ii_k)
    n_ii = len(x_ii)
    # distances of each distinct chunk (symmetric: N^2 s / 2 multiply-adds) and two passes in the full space
    m_ii.flops32 = 2 * (n_ii**2 / 2) * (sum(s * distinct_reg[s] for s in sizes if s < width) + 2 * width)
    with m_collapse.timed():
        for split in ("train", "test"):
            collapse_diagnostics(moments[split].scatter, moments[split].mean, moments[split].n, width)
    m_collapse.flops64 = 2 * (4 / 3 * width**3)  # a symmetric eigenvalue problem: the tridiagonal reduction
    return [m_moments, m_acc, m_probe, m_in, m_oos, m_shape, m_ii, m_collapse]


def paper_path(path: Path, repeats: int) -> tuple[float, float, float]:
    """The paper's R^2 and mean correlation on the test split, `repeats` chunk per size of the grid.

    Returns (seconds per repeat of the grid, max |R^2 - ours|, max |mean corr - ours (paper's definition)|).
    """
    import warnings

    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    from mitosis_cli.analysis import chunks as chunking
    from mitosis_cli.analysis.reconstruction import Moments, reconstruction_scores
    from mitosis_cli.io.activations import ActivationFile

    x = ActivationFile(path).features("test")  # float32, as the paper's torch features
    width = x.shape[1]
    sizes = chunking.default_sizes(width)
    moments = Moments.of(x)
    seconds, d_r2, d_corr = 0.0, 0.0, 0.0
    for s in sizes:
        chunks = chunking.draw_chunks(width, s, repeats, seed=0)
        ours = reconstruction_scores(moments, chunks)
        for r, chunk in enumerate(chunks):
            t = time.perf_counter()
            reg = Ridge(1e-8).fit(x[:, chunk], x)
            r2 = r2_score(x, x[:, chunk] @ reg.coef_.T + reg.intercept_, multioutput="variance_weighted")
            res = x - reg.predict(x[:, chunk])
            cov = np.cov(res.T)
            var = np.diag(cov)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                corr = cov / (np.sqrt(np.outer(var, var)) + 1e-8)
            mean_corr = float(np.mean(np.abs(corr[np.tril_indices_from(corr, k=-1)])))
            seconds += time.perf_counter() - t
            d_r2 = max(d_r2, abs(r2 - ours.r2[r]))
            d_corr = max(d_corr, abs(mean_corr - ours.residual_abs_corr_paper[r]))
    return seconds / repeats, d_r2, d_corr



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="rows per split")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--latent", type=int, default=64, help="dimension of the planted signal")
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--paper-repeats", type=int, default=1, help="chunks per size for the paper's path (0 skips it)")
    ap.add_argument("--skip-command", action="store_true", help="only the per-metric timings (and the paper's path)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: torch's)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path = build(OUT / f"planted-n{args.n}-w{args.width}.h5", args.n, args.width, args.latent, args.noise)
    load = os.getloadavg()[0]
    print(f"date {dt.datetime.now().isoformat(timespec='minutes')}; {describe_machine()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average {load:.1f}", flush=True)
    print(f"data: {path} (N = {args.n} + {args.n}, W = {args.width}, {path.stat().st_size / 1e6:.0f} MB)", flush=True)
    rates = machine_rates()
    print(f"machine: float64 GEMM {rates['float64'] / 1e9:.1f} GFLOP/s, float32 GEMM {rates['float32'] / 1e9:.1f} "
          f"GFLOP/s, copy {rates['bandwidth'] / 1e9:.1f} GB/s", flush=True)
    total = None
    if not args.skip_command:
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            total, peak, base = run_command(path, Path(tmp) / "clones")
        feature_mib = 2 * args.n * args.width * 4 / 2**20
        moments_mib = args.width**2 * 8 / 2**20
        print(f"command: mitosis clones FILE -o OUT (defaults): {total:.1f} s, peak RSS {peak:.0f} MiB = "
              f"{peak - base:.0f} MiB above its imports ({base:.0f} MiB); budget 2 x {feature_mib:.0f} MiB features + "
              f"W x W moments ({moments_mib:.0f} MiB each)", flush=True)
    metrics = per_metric(path)
    print(f"{'metric':<40} {'seconds':>8} {'CPU s':>8} {'limit s':>8} {'fraction':>9}")
    for metric in metrics:
        limit = metric.limit(rates)
        print(f"{metric.name:<40} {metric.seconds:>8.2f} {metric.cpu:>8.2f} {limit:>8.2f} {limit / metric.seconds:>9.2f}",
              flush=True)
    spent, cpu = sum(m.seconds for m in metrics), sum(m.cpu for m in metrics)
    limit = sum(m.limit(rates) for m in metrics)
    print(f"{'all metrics':<40} {spent:>8.2f} {cpu:>8.2f} {limit:>8.2f} {limit / spent:>9.2f}")
    if args.paper_repeats > 0:
        per_repeat, d_r2, d_corr = paper_path(path, args.paper_repeats)
        ours = total if total is not None else spent
        print(f"paper's path (Ridge + r2_score + np.cov residual correlation), test split: {per_repeat:.1f} s per repeat "
              f"of the grid, {40 * per_repeat:.0f} s for 40; ours, everything: {ours:.1f} s -> {40 * per_repeat / ours:.1f}x; "
              f"max |R^2 difference| {d_r2:.1e}, max |paper mean corr difference| {d_corr:.1e}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
