"""Metrics as plain functions over arrays (NumPy only), the grouping of tidy rows they
summarise, and the calibration of a classifier's confidence: the reliability bins, the
expected calibration error and the AUROC of a score telling right predictions from wrong."""

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


ECE_BINS = 10  # equal-width confidence bins of the expected calibration error


def reliability(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """Per non-empty confidence bin, in order: ``(mean confidence, accuracy, count)``.

    The bins split [0, 1] into ``n_bins`` equal widths; bin ``b`` holds the confidences in
    ``[b / n_bins, (b + 1) / n_bins)``, the last one also 1. ``correct``: whether each
    prediction was right."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    if conf.shape != right.shape or conf.ndim != 1:
        raise ValueError(f"confidence {conf.shape} and correct {right.shape} must be (n,)")
    index = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins - 1)
    out = []
    for b in np.unique(index):
        inside = index == b
        out.append((float(conf[inside].mean()), float(right[inside].mean()), int(inside.sum())))
    return out


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float | None:
    """Expected calibration error: the mean over the :func:`reliability` bins of
    ``|accuracy - mean confidence|``, weighted by the bins' counts; None for no window."""
    bins = reliability(confidence, correct, n_bins)
    n = sum(count for _, _, count in bins)
    if n == 0:
        return None
    return float(sum(count * abs(acc - conf) for conf, acc, count in bins) / n)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` telling the ``positive`` windows from the
    others: the chance that a positive scores above a negative, a tie counting half
    (Mann-Whitney U with average ranks); None when every window is positive or none is."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if s.shape != pos.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and positive {pos.shape} must be (n,)")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts  # windows scoring below each distinct value
    ranks = (below + (counts + 1) / 2.0)[inverse]  # average 1-based rank within a tie
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
