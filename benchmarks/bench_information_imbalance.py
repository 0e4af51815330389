"""Side-by-side benchmark: exact Information Imbalance of chunks, mitosis vs DADApy.

Both compute, for every chunk S of a layer X (N x W), Delta(S -> full) and Delta(full -> S)
with exact ranks: mitosis with ``chunk_information_imbalances`` (blocked float32 GEMMs with a
proven error band, comparisons inside the band redone on float64 distances; torch),
DADApy 0.3.4 with ``MetricComparisons(coordinates=X, maxk=N - 1)`` and
``return_inf_imb_full_selected_coords`` (full neighbour tables from scikit-learn, so maxk = N - 1
ranks every point: the exact mode). Each runs in a fresh subprocess with the same thread count;
the child reports its wall time and its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, which
includes the interpreter and imports, reported separately as the baseline). The 1-minute load
average is recorded before and after each worker: on a shared machine it says how much the
wall times are inflated.

The features have planted clones: ``W / clone_size`` noisy linear copies of one latent signal.
Chunks follow the paper's grid (sizes 1, 2, 4, ..., W), ``--repeats`` random chunks per size,
the same chunks for both tools.

DADApy lives in its own virtual environment (it pins numpy < 2 and jax), never in the
project's:

    python3 -m venv benchmarks/.venv-dadapy
    benchmarks/.venv-dadapy/bin/pip install dadapy==0.3.4

(or pass ``--setup-dadapy``). Run from the repository root:

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_information_imbalance.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import describe_machine  # benchmarks/machine.py: the scripts run from this folder

ROOT = Path(__file__).resolve().parent.parent
DADAPY_VENV = ROOT / "benchmarks" / ".venv-dadapy"
OUT = ROOT / "benchmarks" / "out" / "information_imbalance"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_features(n: int, w: int, clone_size: int, latent: int, noise: float, seed: int) -> np.ndarray:
    """N x W float32 layer made of W / clone_size noisy linear copies of one latent signal."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    copies = [z @ rng.normal(size=(latent, clone_size)) / np.sqrt(latent) for _ in range(w // clone_size)]
    x = np.concatenate(copies, axis=1) + noise * rng.normal(size=(n, w))
    return x.astype(np.float32)


def make_chunks(w: int, sizes: list[int] | None, repeats: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    sizes = sizes or [2**i for i in range(int(np.log2(w)) + 1)]
    return [np.sort(rng.choice(w, s, replace=False)) for s in sizes for _ in range(repeats)]


# ------------------------------------------------------------------------------------------
# Workers (run in their own process)


def worker_ours(data: Path, threads: int) -> dict:
    import torch

    from mitosis_cli.analysis.information_imbalance import chunk_information_imbalances

    torch.set_num_threads(threads)
    x = np.load(data / "x.npy")
    chunks = list(np.load(data / "chunks.npz").values())
    base = _rss_mb()
    t0 = time.perf_counter()
    values = chunk_information_imbalances(x, chunks, k=1)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": _rss_mb(), "baseline_rss_mb": base, "values": values.tolist()}


def worker_dadapy(data: Path, threads: int) -> dict:
    import contextlib
    import io

    from dadapy import MetricComparisons

    x = np.load(data / "x.npy")
    chunks = list(np.load(data / "chunks.npz").values())
    n = x.shape[0]
    base = _rss_mb()
    t0 = time.perf_counter()
    mc = MetricComparisons(coordinates=x, maxk=n - 1, n_jobs=1)
    mc.compute_distances()  # full-space neighbour table, N x (N - 1): done once for all chunks
    t_full = time.perf_counter() - t0
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress line
        imb = mc.return_inf_imb_full_selected_coords([c.tolist() for c in chunks], k=1)
    seconds = time.perf_counter() - t0
    # Row 0: full -> chunk, row 1: chunk -> full; ours is column 0: chunk -> full.
    values = np.stack([imb[1], imb[0]], axis=1)
    return {
        "seconds": seconds,
        "seconds_full_space": t_full,
        "peak_rss_mb": _rss_mb(),
        "baseline_rss_mb": base,
        "values": values.tolist(),
        "threads": threads,
    }


# ------------------------------------------------------------------------------------------
# Driver


def run_worker(python: Path, name: str, data: Path, threads: int, timeout: float) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = str(ROOT)
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", name, "--data", str(data), "--threads", str(threads)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_average_before"] = load_before
    result["load_average_after"] = os.getloadavg()[0]
    return result


def setup_dadapy() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(DADAPY_VENV)], check=True)
    subprocess.run([str(DADAPY_VENV / "bin" / "pip"), "install", "dadapy==0.3.4"], check=True)



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="points (default 10000)")
    p.add_argument("--w", type=int, default=2048, help="neurons, a power of two (default 2048)")
    p.add_argument("--clone-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1, help="random chunks per size for the side-by-side run")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], help="chunk sizes (default 1,2,4..W)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-dadapy", action="store_true")
    p.add_argument("--setup-dadapy", action="store_true", help="create benchmarks/.venv-dadapy first")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    p.add_argument("--worker", choices=["ours", "dadapy"], help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        work = worker_ours if args.worker == "ours" else worker_dadapy
        print(json.dumps(work(args.data, args.threads)))
        return

    if args.setup_dadapy:
        setup_dadapy()
    sizes_tag = "grid" if args.sizes is None else "-".join(map(str, args.sizes))
    data = OUT / f"n{args.n}-w{args.w}-{sizes_tag}-r{args.repeats}-s{args.seed}"
    data.mkdir(parents=True, exist_ok=True)
    x = make_features(args.n, args.w, args.clone_size, latent=16, noise=0.3, seed=args.seed)
    chunks = make_chunks(args.w, args.sizes, args.repeats, args.seed)
    np.save(data / "x.npy", x)
    np.savez(data / "chunks.npz", *chunks)

    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": describe_machine(),
        "command": " ".join(sys.argv),
        "n": args.n,
        "w": args.w,
        "chunks": len(chunks),
        "chunk_sizes": sorted({len(c) for c in chunks}),
        "threads": args.threads,
        "features_mb": x.nbytes / 2**20,
    }
    result["ours"] = run_worker(ROOT / ".venv" / "bin" / "python", "ours", data, args.threads, args.timeout)
    print(f"ours:   {result['ours']['seconds']:.1f} s, peak RSS {result['ours']['peak_rss_mb']:.0f} MiB", file=sys.stderr)
    if not args.skip_dadapy:
        if not (DADAPY_VENV / "bin" / "python").exists():
            sys.exit(f"no {DADAPY_VENV}: create it with --setup-dadapy (see the module docstring)")
        d = run_worker(DADAPY_VENV / "bin" / "python", "dadapy", data, args.threads, args.timeout)
        result["dadapy"] = d
        ours_v, theirs_v = np.array(result["ours"]["values"]), np.array(d["values"])
        result["max_abs_difference"] = float(np.abs(ours_v - theirs_v).max())
        result["speedup"] = d["seconds"] / result["ours"]["seconds"]
        result["memory_ratio"] = result["ours"]["peak_rss_mb"] / d["peak_rss_mb"]
        result["working_memory_ratio"] = (result["ours"]["peak_rss_mb"] - result["ours"]["baseline_rss_mb"]) / (
            d["peak_rss_mb"] - d["baseline_rss_mb"]
        )
        print(
            f"dadapy: {d['seconds']:.1f} s (full space {d['seconds_full_space']:.1f} s), "
            f"peak RSS {d['peak_rss_mb']:.0f} MiB; speed-up {result['speedup']:.1f}x, "
            f"memory ratio {result['memory_ratio']:.2f}, max |difference| {result['max_abs_difference']:.2e}",
            file=sys.stderr,
        )
    out = data / "result.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("ours", "dadapy")} | {
        side: {k: v for k, v in result[side].items() if k != "values"} for side in ("ours", "dadapy") if side in result
    }, indent=1))


if __name__ == "__main__":
    main()
