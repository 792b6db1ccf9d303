"""The QCore itself: a fixed-size labelled subset with its scores, and its update."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.config import CoreMode
from qcore.core.rng import SeedLike, as_generator
from qcore.core.types import validate_xy
from qcore.coreset.select import select_core
from qcore.errors import QCoreError


@dataclass(frozen=True)
class Core:
    """``X`` float32 ``(size, c, t)``, ``y`` int64, ``score`` int64 misses, ``origin``
    int64 (-1 = source training data, ``s`` = stream step ``s``)."""

    X: np.ndarray
    y: np.ndarray
    score: np.ndarray
    origin: np.ndarray

    def __post_init__(self) -> None:
        validate_xy(self.X, self.y, "core")
        n = len(self.y)
        if self.score.shape != (n,) or self.origin.shape != (n,):
            raise QCoreError("core score and origin need one entry per sample")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        return int(self.X.nbytes + self.y.nbytes)


def build_core(
    X: np.ndarray, y: np.ndarray, scores: np.ndarray, size: int, mode: CoreMode, seed: SeedLike
) -> Core:
    """Select the initial core from the source training set by its training-dynamics scores."""
    idx = select_core(scores, y, size, mode, seed)
    return Core(
        X[idx].astype(np.float32),
        y[idx].astype(np.int64),
        scores[idx].astype(np.int64),
        np.full(len(idx), -1, dtype=np.int64),
    )


def update_core(
    core: Core,
    X_new: np.ndarray,
    y_new: np.ndarray,
    score: np.ndarray,
    step: int,
    seed: SeedLike,
    mode: CoreMode = "proportional",
    old_quota: float | None = None,
) -> Core:
    """Pool the old core and a new batch with fresh scores; keep ``len(core)`` of them.

    ``score``: int ``(len(core) + len(y_new),)``, old core first, then the batch: on the
    device the misses observed over the calibration's passes
    (:func:`qcore.coreset.scores.pass_misses`). Default (the released code's rule): draw
    proportional to them, so samples the model always gets right leave the core.
    ``old_quota`` (0..1) reserves that share of the core for old samples, an option
    against forgetting the source domain.
    """
    validate_xy(X_new, y_new, "stream batch")
    size = len(core)
    rng = as_generator(seed)
    X = np.concatenate([core.X, X_new.astype(np.float32)])
    y = np.concatenate([core.y, y_new.astype(np.int64)])
    score = np.asarray(score, dtype=np.int64)
    if score.shape != (len(y),):
        raise QCoreError(f"need one score per old and new sample ({len(y)}), got {score.shape}")
    origin = np.concatenate([core.origin, np.full(len(y_new), step, dtype=np.int64)])
    if old_quota is None:
        idx = select_core(score, y, size, mode, rng)
    else:
        if not 0.0 <= old_quota <= 1.0:
            raise QCoreError(f"old_quota must be in [0, 1], got {old_quota}")
        n_old = min(int(round(old_quota * size)), size)
        n_new = min(size - n_old, len(y_new))
        n_old = size - n_new
        none = np.zeros(0, dtype=np.int64)
        old = select_core(score[:size], y[:size], n_old, mode, rng) if n_old else none
        new = size + select_core(score[size:], y[size:], n_new, mode, rng) if n_new else none
        idx = np.sort(np.concatenate([old, new]).astype(np.int64))
    return Core(X[idx], y[idx], score[idx], origin[idx])
