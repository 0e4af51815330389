"""Benchmark: `mitosis clones` (default settings) and `mitosis import` at ImageNet-validation scale.

Writes a synthetic activation file of the issue's shape, N = 50,000 rows (one split, `test`, as an
ImageNet validation set) x W = 2,048 neurons (400 MB of float32), C = 1,000 classes, streamed in
blocks so that making it never holds it in memory: 32 planted clones of 64 neurons (each neuron a
noisy linear read-out of one 64-dimensional latent signal), a random head, labels its argmax. Then
runs, each in a fresh subprocess under ``/usr/bin/time -v`` (wall time, peak resident memory):

- ``mitosis clones FILE -o OUT`` with the default settings (the paper's protocol);
- with ``--import``: the same features written as ``.npy`` files and ``mitosis import`` of them (the
  features are memory-mapped and streamed, so its peak memory should not grow with N);
- a process that only imports what the commands import (the memory every run starts from).

The machine, the date, the load average before and after each command and the results go to stdout
as JSON and to benchmarks/out/clones_scale/<run>/result.json. Example (the issue's measurement):

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_clones_scale.py --import
    # smaller, for a try: --n 5000 --width 512
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from machine import describe_machine  # benchmarks/machine.py: the scripts run from this folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mitosis_cli.io.activations import ActivationHeader, write_activations  # noqa: E402 - after the path above

BLOCK_ROWS = 5000



def _planted(n: int, width: int, classes: int, clone_size: int, seed: int):
    """(features, logits, labels) row blocks of a layer with width / clone_size planted clones, and the head."""
    rng = np.random.default_rng(seed)
    mix = (rng.standard_normal((clone_size, width)) / np.sqrt(clone_size)).astype(np.float32)
    weight = (rng.standard_normal((classes, width)) / np.sqrt(width)).astype(np.float32)
    bias = np.zeros(classes, np.float32)

    def blocks():
        for start in range(0, n, BLOCK_ROWS):
            block = np.random.default_rng([seed, start])
            rows = min(BLOCK_ROWS, n - start)
            signal = block.standard_normal((rows, clone_size), dtype=np.float32)
            features = signal @ mix + np.float32(0.1) * block.standard_normal((rows, width), dtype=np.float32)
            logits = features @ weight.T + bias
            yield features, logits, logits.argmax(1).astype(np.int64)

    return weight, bias, blocks


def _timed(argv: list[str], env: dict[str, str]) -> dict[str, float | int | str]:
    """Run `argv` under /usr/bin/time -v: wall seconds, peak RSS (MiB), exit code, load average before/after."""
    before = os.getloadavg()[0]
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    after = os.getloadavg()[0]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    cpu = {key: float(re.search(rf"{label} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
           for key, label in (("user_seconds", "User"), ("system_seconds", "System"))}
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(clock.split(":"))))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
    return {"seconds": round(seconds, 1), **cpu, "peak_rss_mib": round(rss), "exit_code": proc.returncode,
            "load_before": round(before, 2), "load_after": round(after, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows (one split, test)")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--clone-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--import", dest="import_too", action="store_true", help="also time `mitosis import` of .npy files")
    parser.add_argument("--clones-args", default="", help="extra options of `mitosis clones`, e.g. '--acc-repeats 1'")
    parser.add_argument("--no-clones", dest="clones", action="store_false", help="skip `mitosis clones` (e.g. with --import)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    run = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "benchmarks" / "out" / "clones_scale" / run
    out.mkdir(parents=True)
    acts = out / "acts.h5"
    weight, bias, blocks = _planted(args.n, args.width, args.classes, args.clone_size, args.seed)
    header = ActivationHeader(width=args.width, num_classes=args.classes, dataset="synthetic-imagenet-val", arch="planted",
                              seed=args.seed, layer="planted", config={"clone_size": args.clone_size, "noise": 0.1})
    write_activations(acts, header, weight, bias, {"test": (args.n, blocks())})

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    python = sys.executable
    result: dict[str, object] = {
        "machine": describe_machine(), "date_utc": run, "python": platform.python_version(), "n": args.n, "width": args.width,
        "classes": args.classes, "clone_size": args.clone_size, "threads": args.threads, "clones_args": args.clones_args,
        "features_mib": round(args.n * args.width * 4 / 2**20),
    }
    import torch

    result["torch"] = torch.__version__
    result["imports_only"] = _timed([python, "-c", "import mitosis_cli.stages.clones, mitosis_cli.stages.importing, "
                                     "mitosis_cli.io.feature_dumps, torch, h5py"], env)
    if args.clones:
        command = [python, "-m", "mitosis_cli", "clones", str(acts), "-o", str(out / "clones"), "--threads", str(args.threads),
                   "--quiet", *args.clones_args.split()]
        result["clones" if args.clones_args else "clones_defaults"] = _timed(command, env)
    if args.import_too:
        dump = out / "npy"
        dump.mkdir()
        features = np.lib.format.open_memmap(dump / "test_features.npy", mode="w+", dtype=np.float32,
                                             shape=(args.n, args.width))
        labels = np.empty(args.n, np.int64)
        start = 0
        for block, _, block_labels in blocks():
            features[start : start + len(block)] = block
            labels[start : start + len(block)] = block_labels
            start += len(block)
        features.flush()
        del features
        np.save(dump / "test_labels.npy", labels)
        np.save(dump / "head_weight.npy", weight)
        np.save(dump / "head_bias.npy", bias)
        result["import_npy"] = _timed([python, "-m", "mitosis_cli", "import", str(dump), "-o", str(out / "imported.h5"),
                                       "--quiet"], env)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not args.keep:
        for path in (acts, out / "npy", out / "imported.h5"):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
