"""Synthetic tables in the exact shape the clones, ensemble and train stages write (kind metadata included).

The numbers follow the paper's picture: below the clone size chunks are poor (low R^2, high error),
above it the test error decays like error_inf + c w^-1/2 and R^2 approaches 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mitosis_cli.io.tables import provenance, write_table

CLONES_SCHEMA = pa.schema([
    ("source", pa.string()), ("arch", pa.string()), ("dataset", pa.string()), ("width", pa.int64()), ("seed", pa.int64()),
    ("split", pa.string()), ("metric", pa.string()), ("chunk_size", pa.int64()), ("repeat", pa.int64()),
    ("value", pa.float64()), ("n_points", pa.int64()), ("k", pa.int64()),
])
SUMMARY_SCHEMA = pa.schema([
    ("source", pa.string()), ("arch", pa.string()), ("dataset", pa.string()), ("width", pa.int64()), ("seed", pa.int64()),
    ("split", pa.string()), ("metric", pa.string()), ("chunk_size", pa.int64()), ("mean", pa.float64()), ("std", pa.float64()),
    ("sem", pa.float64()), ("n", pa.int64()), ("lo", pa.float64()), ("hi", pa.float64()), ("rule", pa.string()),
])
ENSEMBLE_SCHEMA = pa.schema([
    ("kind", pa.string()), ("width", pa.int64()), ("members", pa.int64()), ("repeat", pa.int64()),
    ("split", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
])

ERROR_INF = 0.02
EXCESS_C = 0.4


def chunk_sizes(width: int, smallest: int = 4) -> list[int]:
    sizes, size = [], width
    while size >= smallest:
        sizes.append(size)
        size //= 2
    return sorted(sizes)


def _clone_values(size: int, clone_size: int, rng: np.random.Generator) -> dict[tuple[str, str], float]:
    """One repeat's metrics for a chunk of `size` neurons of a layer whose clones have `clone_size` neurons."""
    coverage = min(1.0, size / clone_size)
    noise = lambda scale: float(rng.normal(0, scale))  # noqa: E731
    test_error = ERROR_INF + EXCESS_C / np.sqrt(size) + 0.5 * (1 - coverage) ** 2 + noise(0.003)
    return {
        ("test", "chunk_error"): test_error,
        ("test", "chunk_accuracy"): 1 - test_error,
        ("train", "chunk_error"): max(0.0, 0.6 * (1 - coverage) ** 2 + noise(0.002)),
        ("test", "reconstruction_r2"): 1 - 0.9 * (1 - coverage) ** 1.5 - 0.004 + noise(0.002),
        ("train->test", "reconstruction_r2"): 1 - 0.95 * (1 - coverage) ** 1.5 - 0.01 + noise(0.002),
        ("test", "residual_abs_corr"): 0.05 + 0.3 * (1 - coverage) + abs(noise(0.005)),
        ("test", "ii_chunk_to_full"): 0.02 + 0.8 * (1 - coverage) + abs(noise(0.01)),
        ("test", "ii_full_to_chunk"): 0.01 + 0.05 * (1 - coverage) + abs(noise(0.005)),
    }


def clones_rows(width: int, clone_size: int, seed: int = 0, repeats: int = 4, arch: str = "mlp", dataset: str = "mnist5k",
                source: str | None = None) -> list[dict]:
    rng = np.random.default_rng(seed * 1000 + width)
    source = source or f"acts-w{width}-s{seed}.h5"
    rows = []
    for size in chunk_sizes(width):
        for repeat in range(repeats):
            for (split, metric), value in _clone_values(size, clone_size, rng).items():
                ii = metric.startswith("ii_")
                rows.append({"source": source, "arch": arch, "dataset": dataset, "width": width, "seed": seed, "split": split,
                             "metric": metric, "chunk_size": size, "repeat": repeat, "value": value,
                             "n_points": 500 if ii else None, "k": 1 if ii else None})
    return rows


def summary_rows(clone_rows: list[dict], clone_size: float, lo: float, hi: float) -> list[dict]:
    """Per chunk size aggregates of `clone_rows` plus the per-source clone size and number of clones."""
    out = []
    groups: dict[tuple, list[float]] = {}
    for row in clone_rows:
        key = (row["source"], row["arch"], row["dataset"], row["width"], row["seed"], row["split"], row["metric"],
               row["chunk_size"])
        groups.setdefault(key, []).append(row["value"])
    for (source, arch, dataset, width, seed, split, metric, size), values in groups.items():
        v = np.array(values)
        out.append({"source": source, "arch": arch, "dataset": dataset, "width": width, "seed": seed, "split": split,
                    "metric": metric, "chunk_size": size, "mean": v.mean(), "std": v.std(ddof=1),
                    "sem": v.std(ddof=1) / np.sqrt(len(v)), "n": len(v), "lo": v.min(), "hi": v.max(), "rule": None})
    first = clone_rows[0]
    base = {k: first[k] for k in ("source", "arch", "dataset", "width", "seed")}
    out.append({**base, "split": "test", "metric": "clone_size", "chunk_size": None, "mean": clone_size, "std": None, "sem": None,
                "n": 1, "lo": lo, "hi": hi, "rule": "r2>=0.99"})
    out.append({**base, "split": "test", "metric": "n_clones", "chunk_size": None, "mean": first["width"] / clone_size,
                "std": None, "sem": None, "n": 1, "lo": first["width"] / hi, "hi": first["width"] / lo, "rule": "r2>=0.99"})
    out.append({**base, "split": "test", "metric": "error_inf", "chunk_size": None, "mean": ERROR_INF, "std": None, "sem": None,
                "n": 1, "lo": None, "hi": None, "rule": None})
    return out


def cross_rows(critical_width: float, slope: float, arch: str = "mlp", dataset: str = "mnist5k") -> list[dict]:
    base = {"source": "all", "arch": arch, "dataset": dataset, "width": None, "seed": None, "split": "test", "chunk_size": None,
            "std": None, "sem": None, "n": 3, "rule": "linear fit"}
    return [{**base, "metric": "critical_width", "mean": critical_width, "lo": critical_width - 20, "hi": critical_width + 20},
            {**base, "metric": "clones_per_width_slope", "mean": slope, "lo": None, "hi": None}]


def ensemble_rows(widths: tuple[int, ...] = (64, 128), members: tuple[int, ...] = (1, 2, 4, 8), repeats: int = 3) -> list[dict]:
    rng = np.random.default_rng(7)
    rows = []
    for width in widths:
        for m in members:
            for repeat in range(repeats):
                accuracy = 0.97 - 0.05 / np.sqrt(m * width / 64) + rng.normal(0, 0.002)
                for metric, value in (("accuracy", accuracy), ("error", 1 - accuracy), ("cross_entropy", 0.1 + 0.2 / m)):
                    rows.append({"kind": "ensemble", "width": width, "members": m, "repeat": repeat, "split": "test",
                                 "metric": metric, "value": value})
        # `mitosis ensemble` decomposes the loss of the whole pool once per width and split.
        for metric, value in (("loss", 0.1 + 20 / width), ("bias", 0.1), ("variance", 20 / width)):
            rows.append({"kind": "bias-variance", "width": width, "members": max(members), "repeat": 0, "split": "test",
                         "metric": metric, "value": value})
    for width in (256, 512):
        for repeat in range(repeats):
            rows.append({"kind": "wide", "width": width, "members": 1, "repeat": repeat, "split": "test", "metric": "accuracy",
                         "value": 0.965 + rng.normal(0, 0.002)})
    rows.append({"kind": "error-inf", "width": 64, "members": 32, "repeat": 0, "split": "test", "metric": "error",
                 "value": ERROR_INF})
    rows.append({"kind": "some-future-kind", "width": 64, "members": 1, "repeat": 0, "split": "test", "metric": "accuracy",
                 "value": 0.5})
    return rows


def write_rows(path: Path, rows: list[dict], schema: pa.Schema, kind: str, options: dict | None = None) -> Path:
    """Write `rows` as a table of `kind`, with `options` as the command's options in its metadata."""
    table = pa.Table.from_pylist(rows, schema=schema)
    return write_table(path, table, provenance(kind, [], options or {}, ""))


def write_history(path: Path, width: int, seed: int, epochs: int = 12, arch: str = "mlp", dataset: str = "mnist5k") -> Path:
    epoch = np.arange(1, epochs + 1)
    speed = 3.0 * (64 / width) ** 0.25  # wider networks fit faster
    train_loss = 2.0 * np.exp(-epoch / speed)
    table = pa.table({
        "epoch": pa.array(epoch, pa.int64()), "lr": 0.05 * np.cos(np.pi * epoch / (2 * epochs)),
        "train_loss": train_loss, "train_error": np.maximum(0.0, 0.5 - epoch / (2 * speed)), "test_loss": train_loss + 0.1,
        "test_error": 0.05 + 0.4 * np.exp(-epoch / speed), "seconds": np.full(epochs, 1.5),
    })
    config = {"arch": arch, "dataset": dataset, "width": width, "seed": seed, "epochs": epochs}
    return write_table(path, table, provenance("history", [], {"config": config, "zero_error_epoch": 4}, ""))


def write_all(folder: Path, widths: tuple[int, ...] = (64, 256), seeds: tuple[int, ...] = (0, 1)) -> dict[str, Path]:
    """A full set of tables: clones, clones-summary, ensemble and two histories. Clone size 16 at every width."""
    clone_rows, summary = [], []
    for width in widths:
        for seed in seeds:
            rows = clones_rows(width, clone_size=16, seed=seed)
            clone_rows += rows
            summary += summary_rows(rows, 16, 8, 32)
    summary += cross_rows(critical_width=16.0, slope=1 / 16)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "clones": write_rows(folder / "clones.parquet", clone_rows, CLONES_SCHEMA, "clones"),
        "summary": write_rows(folder / "clones-summary.parquet", summary, SUMMARY_SCHEMA, "clones-summary"),
        "ensemble": write_rows(folder / "ensemble.parquet", ensemble_rows(), ENSEMBLE_SCHEMA, "ensemble"),
        "history0": write_history(folder / "run-w64" / "history.parquet", 64, 0),
        "history1": write_history(folder / "run-w256" / "history.parquet", 256, 0),
    }
