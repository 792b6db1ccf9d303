"""Metrics as plain functions over arrays, and the grouping of tidy rows they summarise."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, ignoring NaN."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def groups(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    """``rows`` grouped by their values of ``keys``, in order of first appearance."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return dict(out)
