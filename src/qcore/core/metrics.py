"""Accuracy as a plain function over label arrays (shared by the device and the runner)."""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``pred == y`` (NaN for an empty set)."""
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.asarray(pred) == np.asarray(y)))
