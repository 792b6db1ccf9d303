"""Metrics as plain functions over arrays."""

from __future__ import annotations

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, ignoring NaN."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())
