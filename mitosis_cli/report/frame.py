"""A minimal column store over numpy arrays: filter, group, aggregate; enough for the report's tables.

The report reads small long/tidy tables (thousands of rows), so a dict of numpy columns is plenty and
keeps pandas out of the dependencies.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


def _column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    # Numbers become float64 so nulls are NaN; everything else becomes an object array with None for null.
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(column.to_pylist(), dtype=object)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


@dataclass(frozen=True)
class Frame:
    """Named, equally long numpy columns. Numeric columns are float64 with NaN for null."""

    columns: dict[str, np.ndarray]

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Frame:
        return cls({name: _column_to_numpy(table.column(name)) for name in table.column_names})

    @classmethod
    def concat(cls, frames: Sequence[Frame]) -> Frame:
        """Stack frames row-wise; a column missing from one frame is filled with NaN / None there."""
        names: list[str] = []
        for frame in frames:
            names.extend(n for n in frame.columns if n not in names)
        out: dict[str, np.ndarray] = {}
        for name in names:
            numeric = all(f.columns[name].dtype == np.float64 for f in frames if name in f.columns)
            parts = []
            for frame in frames:
                if name in frame.columns:
                    parts.append(frame.columns[name] if numeric else frame.columns[name].astype(object))
                else:
                    parts.append(np.full(len(frame), np.nan) if numeric else np.full(len(frame), None, dtype=object))
            out[name] = np.concatenate(parts) if parts else np.empty(0)
        return cls(out)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def has(self, name: str) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def filter(self, mask: np.ndarray) -> Frame:
        return Frame({name: values[mask] for name, values in self.columns.items()})

    def where(self, **equals: Any) -> Frame:
        """Rows whose columns equal the given values; None matches null; an absent column matches only None."""
        mask = np.ones(len(self), dtype=bool)
        for name, wanted in equals.items():
            if name not in self.columns:
                if wanted is not None:
                    mask[:] = False
                continue
            values = self.columns[name]
            if wanted is None:
                mask &= np.array([_is_missing(v) for v in values], dtype=bool)
            elif values.dtype == np.float64:
                mask &= values == float(wanted)
            else:
                mask &= values == wanted
        return self.filter(mask)

    def unique(self, name: str) -> list[Any]:
        """Distinct non-null values of a column, sorted."""
        if name not in self.columns:
            return []
        return sorted({v for v in self.columns[name].tolist() if not _is_missing(v)})

    def groups(self, keys: Sequence[str]) -> Iterator[tuple[tuple[Hashable, ...], Frame]]:
        """(key values, sub-frame) for each distinct combination of `keys`, in sorted order."""
        if not len(self):
            return
        rows = list(zip(*(self.columns[k].tolist() if k in self.columns else [None] * len(self) for k in keys), strict=True))
        for key in sorted(set(rows), key=lambda r: tuple((v is None, v if v is not None else 0) for v in r)):
            yield key, self.filter(np.array([r == key for r in rows], dtype=bool))


@dataclass(frozen=True)
class Curve:
    """One plotted series: x values with the mean, standard error and count of y at each."""

    x: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    n: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def positive(self) -> Curve:
        """Only the points with mean > 0 (what a log-scaled y axis can show)."""
        keep = self.mean > 0
        return Curve(self.x[keep], self.mean[keep], self.sem[keep], self.n[keep])


def curve_from_values(x: Iterable[float], values: Iterable[float]) -> Curve:
    """Aggregate raw measurements (one per repeat) into mean and standard error at each x."""
    x_arr = np.asarray(list(x), dtype=np.float64)
    v_arr = np.asarray(list(values), dtype=np.float64)
    keep = np.isfinite(x_arr) & np.isfinite(v_arr)
    x_arr, v_arr = x_arr[keep], v_arr[keep]
    xs = np.unique(x_arr)
    means, sems, counts = [], [], []
    for x_value in xs:
        sample = v_arr[x_arr == x_value]
        means.append(sample.mean())
        # Sample standard deviation over the repeats; a single repeat has no error bar.
        sems.append(sample.std(ddof=1) / np.sqrt(len(sample)) if len(sample) > 1 else 0.0)
        counts.append(len(sample))
    return Curve(xs, np.array(means), np.array(sems), np.array(counts, dtype=np.float64))


def curve_from_summaries(x: Iterable[float], means: Iterable[float], sems: Iterable[float], counts: Iterable[float]) -> Curve:
    """Pool pre-aggregated groups (e.g. one summary row per seed) at each x.

    The pooled mean weights each group by its count; its standard error treats the groups as
    independent: sem = sqrt(sum n_i^2 sem_i^2) / sum n_i.
    """
    x_arr = np.asarray(list(x), dtype=np.float64)
    m_arr = np.asarray(list(means), dtype=np.float64)
    s_arr = np.nan_to_num(np.asarray(list(sems), dtype=np.float64))
    n_arr = np.asarray(list(counts), dtype=np.float64)
    n_arr = np.where(np.isfinite(n_arr) & (n_arr > 0), n_arr, 1.0)
    keep = np.isfinite(x_arr) & np.isfinite(m_arr)
    x_arr, m_arr, s_arr, n_arr = x_arr[keep], m_arr[keep], s_arr[keep], n_arr[keep]
    xs = np.unique(x_arr)
    out_mean, out_sem, out_n = [], [], []
    for x_value in xs:
        at = x_arr == x_value
        total = n_arr[at].sum()
        out_mean.append(float((n_arr[at] * m_arr[at]).sum() / total))
        out_sem.append(float(np.sqrt((n_arr[at] ** 2 * s_arr[at] ** 2).sum()) / total))
        out_n.append(total)
    return Curve(xs, np.array(out_mean), np.array(out_sem), np.array(out_n))
