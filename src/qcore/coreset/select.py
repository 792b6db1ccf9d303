"""Fixed-size core selection by score, seeded (docs/method.md).

``proportional`` (default, as the released code): draw without replacement with
probability proportional to the score. Zero-score samples are never drawn while others
remain; if fewer than ``size`` samples have a positive score, the rest is filled
uniformly from the zero-score ones (the released code would fail there).
``stratified``: pick a miss count from its empirical probability mass function, then a
sample uniformly within that count (the paper's PMF, which the released code computes
but never uses). ``balanced``: proportional within each class, equal quota per class.
"""

from __future__ import annotations

import numpy as np

from qcore.config import CORE_MODES, CoreMode
from qcore.core.rng import SeedLike, as_generator
from qcore.errors import QCoreError


def _proportional(scores: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    scores = scores.astype(np.float64)
    pos = np.flatnonzero(scores > 0)
    if len(pos) >= size:
        return rng.choice(pos, size, replace=False, p=scores[pos] / scores[pos].sum())
    zero = np.flatnonzero(scores <= 0)
    fill = rng.choice(zero, size - len(pos), replace=False)
    return np.concatenate([pos, fill])


def _stratified(scores: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    remaining = list(range(len(scores)))
    chosen: list[int] = []
    while len(chosen) < size:
        values, counts = np.unique(scores[remaining], return_counts=True)
        value = rng.choice(values, p=counts / counts.sum())
        members = [i for i in remaining if scores[i] == value]
        pick = int(rng.choice(members))
        chosen.append(pick)
        remaining.remove(pick)
    return np.asarray(chosen)


def _balanced(scores: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(y)
    quota = np.full(len(classes), size // len(classes))
    quota[rng.permutation(len(classes))[: size % len(classes)]] += 1
    chosen: list[np.ndarray] = []
    spare = 0
    for c, k in zip(classes, quota, strict=True):
        members = np.flatnonzero(y == c)
        k = k + spare
        take = min(k, len(members))
        spare = k - take
        if take:
            chosen.append(members[_proportional(scores[members], take, rng)])
    out = np.concatenate(chosen)
    if len(out) < size:  # a class ran short: fill from the rest by score
        rest = np.setdiff1d(np.arange(len(y)), out)
        out = np.concatenate([out, rest[_proportional(scores[rest], size - len(out), rng)]])
    return out


def select_core(
    scores: np.ndarray,
    y: np.ndarray,
    size: int,
    mode: CoreMode = "proportional",
    seed: SeedLike = 0,
) -> np.ndarray:
    """Indices (int64, sorted) of a core of ``size`` samples chosen by ``scores``."""
    scores = np.asarray(scores)
    if scores.ndim != 1 or len(scores) != len(y):
        raise QCoreError("scores and labels must be 1-D and of equal length")
    if np.any(scores < 0) or not np.all(np.isfinite(scores)):
        raise QCoreError("scores must be finite and non-negative")
    if not 1 <= size <= len(scores):
        raise QCoreError(f"core size {size} must be between 1 and the pool size {len(scores)}")
    rng = as_generator(seed)
    if mode == "proportional":
        idx = _proportional(scores, size, rng)
    elif mode == "stratified":
        idx = _stratified(scores, size, rng)
    elif mode == "balanced":
        idx = _balanced(scores, np.asarray(y), size, rng)
    else:
        raise QCoreError(f"unknown core mode {mode!r}: choose one of {', '.join(CORE_MODES)}")
    return np.sort(idx.astype(np.int64))


def core_size_from(spec: float, n_pool: int) -> int:
    """A size given in samples (>= 1) or as a fraction of the pool (0 < spec < 1)."""
    if 0 < spec < 1:
        return max(1, int(round(spec * n_pool)))
    if spec >= 1 and float(spec).is_integer():
        return int(spec)
    raise QCoreError(f"core size must be a count >= 1 or a fraction in (0, 1), got {spec}")
