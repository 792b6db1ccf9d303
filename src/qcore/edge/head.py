"""A streaming closed-form head: class means and a shared covariance of pooled features.

Deep Streaming LDA (Hayes & Kanan, CVPR Workshops 2020) on the frozen quantized feature
extractor. The device keeps, for its ``K`` classes and ``D`` pooled features,

* ``count`` ``(K,)``: labelled samples seen per class;
* ``mean`` ``(K, D)``: each class's mean feature vector;
* ``scatter`` ``(D, D)``: the within-class scatter, the sum over every sample of
  ``(x - mean[y]) (x - mean[y])^T`` about its class's *current* mean,

and the head ``W = Λ mean^T``, ``b_c = -mean_c^T Λ mean_c / 2`` with
``Λ = ((1 - ε) Σ + ε I)^-1`` and ``Σ = scatter / N``, recomputed once per batch (one
``D x D`` solve). A batch is merged per class with Chan's parallel update, so the
statistics after any sequence of batches equal those of one batch computation over all
the samples, up to float rounding, whatever the batching. No gradient, no optimizer, no
stored samples. The statistics are kept in float32 (``4 (K + K D + D^2)`` bytes: 17,944
bytes for 6 classes and 64 features) and every update and solve computes in float64. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from qcore.errors import QCoreError


@dataclass(frozen=True)
class HeadStats:
    """Per-class counts and means, within-class scatter (float32); and, for the last
    ``L`` classes (those a device added, :func:`grow`), each one's own share of the scatter,
    so that such a class can be removed exactly (:func:`drop`)."""

    count: np.ndarray  # float32 (K,)
    mean: np.ndarray  # float32 (K, D)
    scatter: np.ndarray  # float32 (D, D)
    learnt: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))  # (L, D, D)

    def __post_init__(self) -> None:
        for name in ("count", "mean", "scatter"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float32))
        k, d = self.mean.shape if self.mean.ndim == 2 else (-1, -1)
        if k < 1 or d < 1:
            raise QCoreError(
                f"head means must have shape (classes, features), got {self.mean.shape}"
            )
        learnt = np.asarray(self.learnt, dtype=np.float32)  # float32 (L, D, D), L <= K
        object.__setattr__(
            self, "learnt", learnt if learnt.size else np.zeros((0, d, d), np.float32)
        )
        if (
            self.count.shape != (k,)
            or self.scatter.shape != (d, d)
            or self.learnt.ndim != 3
            or self.learnt.shape[1:] != (d, d)
            or len(self.learnt) > k
        ):
            raise QCoreError(
                f"head statistics disagree: count {self.count.shape}, mean {self.mean.shape}, "
                f"scatter {self.scatter.shape}, learnt classes' scatter {self.learnt.shape}"
            )
        arrays = (self.count, self.mean, self.scatter, self.learnt)
        if not all(np.isfinite(a).all() for a in arrays) or (self.count < 0).any():
            raise QCoreError("head statistics must be finite, with counts >= 0")

    @property
    def n_classes(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[1])

    @property
    def nbytes(self) -> int:
        """Device bytes of the statistics."""
        return int(self.count.nbytes + self.mean.nbytes + self.scatter.nbytes + self.learnt.nbytes)

    @property
    def n_learnt(self) -> int:
        """How many of the last classes keep their own scatter (added by :func:`grow`)."""
        return len(self.learnt)


UNSEEN = -1e30


class Solved(NamedTuple):
    """A solved head: ``weight`` float32 ``(K, D)``, ``bias`` float32 ``(K,)`` and the
    ``precision`` float32 ``(D, D)`` they came from (for :mod:`qcore.edge.signals`)."""

    weight: np.ndarray
    bias: np.ndarray
    precision: np.ndarray


def empty_stats(n_classes: int, n_features: int) -> HeadStats:
    return HeadStats(
        np.zeros(n_classes), np.zeros((n_classes, n_features)), np.zeros((n_features, n_features))
    )


def grow(stats: HeadStats, n_classes: int) -> HeadStats:
    """``stats`` with classes added (no samples yet) up to ``n_classes`` in all."""
    extra = n_classes - stats.n_classes
    if extra < 0:
        raise QCoreError(f"cannot shrink the head from {stats.n_classes} to {n_classes} classes")
    if extra == 0:
        return stats
    d = stats.n_features
    return HeadStats(
        np.concatenate([stats.count, np.zeros(extra, np.float32)]),
        np.concatenate([stats.mean, np.zeros((extra, d), np.float32)]),
        stats.scatter,
        np.concatenate([stats.learnt, np.zeros((extra, d, d), np.float32)]),
    )


def drop(stats: HeadStats, k: int) -> HeadStats:
    """``stats`` without class ``k``, one of the classes added by :func:`grow`: its count
    and mean removed and its share taken out of the scatter, as if its windows had never
    come (up to float32 rounding)."""
    first = stats.n_classes - stats.n_learnt
    if not first <= k < stats.n_classes:
        raise QCoreError(
            f"class {k} has no scatter of its own (only classes added by the device since "
            f"the statistics kept them, {first}..{stats.n_classes - 1}, can be dropped)"
        )
    keep = np.arange(stats.n_classes) != k
    scatter = stats.scatter.astype(np.float64) - stats.learnt[k - first].astype(np.float64)
    return HeadStats(
        stats.count[keep],
        stats.mean[keep],
        scatter,
        np.delete(stats.learnt, k - first, axis=0),
    )


def batch_stats(features: np.ndarray, y: np.ndarray, n_classes: int) -> HeadStats:
    """The statistics of ``features`` float ``(n, D)`` with labels ``y`` in one computation."""
    count, mean, scatter = _moments(features, y, n_classes)
    return HeadStats(count, mean, scatter)


def _moments(
    features: np.ndarray, y: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, class means and within-class scatter of one batch, in float64."""
    x = np.asarray(features, dtype=np.float64)
    count = np.bincount(y, minlength=n_classes).astype(np.float64)
    mean = np.zeros((n_classes, x.shape[1]))
    np.add.at(mean, y, x)
    seen = count > 0
    mean[seen] /= count[seen, None]
    centred = x - mean[y]
    return count, mean, centred.T @ centred


def update(stats: HeadStats, features: np.ndarray, y: np.ndarray) -> HeadStats:
    """``stats`` with one labelled batch merged in (Chan et al.'s pairwise update per class)."""
    if features.ndim != 2 or features.shape[1] != stats.n_features or len(y) != len(features):
        raise QCoreError(
            f"head update needs features (n, {stats.n_features}) and n labels, got "
            f"{features.shape} and {len(y)}"
        )
    if len(y) == 0:
        return stats
    if y.min() < 0 or y.max() >= stats.n_classes:
        raise QCoreError(f"head labels must lie in 0..{stats.n_classes - 1}")
    n_b, mean_b, scatter_b = _moments(features, y, stats.n_classes)
    return _merge(stats, n_b, mean_b, scatter_b, _learnt_moments(stats, features, y, mean_b))


def _learnt_moments(
    stats: HeadStats, features: np.ndarray, y: np.ndarray, mean_b: np.ndarray
) -> np.ndarray:
    """Each learnt class's own scatter within one batch (about the batch's class mean),
    float64 ``(L, D, D)``."""
    first = stats.n_classes - stats.n_learnt
    learnt = np.zeros(stats.learnt.shape)
    x = np.asarray(features, dtype=np.float64)
    for c in np.unique(y[y >= first]):
        centred = x[y == c] - mean_b[c]
        learnt[c - first] = centred.T @ centred
    return learnt


def combine(a: HeadStats, b: HeadStats) -> HeadStats:
    """The statistics of the samples of ``a`` and of ``b`` together (Chan et al.'s
    pairwise merge per class, in float64): what one device that saw both would hold,
    whatever the order. The two must have the same classes; a class's own scatter
    (:attr:`HeadStats.learnt`) is kept when both keep it."""
    _check_same_shape(a, b)
    return _merge(a, b.count, b.mean, b.scatter, b.learnt)


def _merge(
    a: HeadStats,
    n_b: np.ndarray,
    mean_b: np.ndarray,
    scatter_b: np.ndarray,
    learnt_b: np.ndarray,
) -> HeadStats:
    """``a`` merged with the statistics ``n_b``, ``mean_b``, ``scatter_b`` and
    ``learnt_b`` of other samples of the same classes (Chan et al.'s pairwise update per
    class, in float64): the one merge behind :func:`update` and :func:`combine`."""
    n_a, n_b = a.count.astype(np.float64), np.asarray(n_b, dtype=np.float64)
    mean_a, mean_b = a.mean.astype(np.float64), np.asarray(mean_b, dtype=np.float64)
    total = n_a + n_b
    safe = np.where(total > 0, total, 1.0)
    delta = mean_b - mean_a  # (K, D)
    weight = n_a * n_b / safe  # 0 where either side is empty
    scatter = a.scatter.astype(np.float64) + scatter_b + (delta * weight[:, None]).T @ delta
    mean = mean_a + delta * (n_b / safe)[:, None]
    first = a.n_classes - a.n_learnt
    cross = np.einsum("k,kd,ke->kde", weight[first:], delta[first:], delta[first:])
    learnt = a.learnt.astype(np.float64) + learnt_b + cross
    return HeadStats(total, mean, scatter, learnt)


def subtract(total: HeadStats, part: HeadStats) -> HeadStats:
    """The statistics of the samples of ``total`` that are not in ``part`` (the inverse of
    :func:`combine`, ``combine(part, subtract(total, part)) == total`` up to rounding): what
    a device learnt beyond the statistics it was deployed with. Every class must hold at
    least as many samples in ``total`` as in ``part``."""
    _check_same_shape(total, part)
    n, n_a = total.count.astype(np.float64), part.count.astype(np.float64)
    n_b = n - n_a
    if (n_b < -1e-3 * np.maximum(n, 1.0)).any():
        raise QCoreError("these statistics do not contain the part to take out")
    n_b = np.maximum(n_b, 0.0)
    safe_b = np.where(n_b > 0, n_b, 1.0)
    mean, mean_a = total.mean.astype(np.float64), part.mean.astype(np.float64)
    mean_b = np.where(
        (n_b > 0)[:, None], (n[:, None] * mean - n_a[:, None] * mean_a) / safe_b[:, None], 0.0
    )
    delta = mean_b - mean_a
    weight = n_a * n_b / np.where(n > 0, n, 1.0)
    scatter = total.scatter.astype(np.float64) - part.scatter - (delta * weight[:, None]).T @ delta
    first = total.n_classes - total.n_learnt
    cross = np.einsum("k,kd,ke->kde", weight[first:], delta[first:], delta[first:])
    learnt = total.learnt.astype(np.float64) - part.learnt - cross
    return HeadStats(n_b, mean_b, scatter, learnt)


def _check_same_shape(a: HeadStats, b: HeadStats) -> None:
    if a.mean.shape != b.mean.shape or a.n_learnt != b.n_learnt:
        raise QCoreError(
            f"head statistics of different classes cannot be combined: {a.mean.shape} with "
            f"{a.n_learnt} learnt against {b.mean.shape} with {b.n_learnt}"
        )


def solve(stats: HeadStats, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """The closed-form head: weights float32 ``(K, D)`` and bias float32 ``(K,)``.

    ``shrinkage`` ``ε`` in (0, 1] pulls the covariance towards the identity.
    A class never seen gets bias :data:`UNSEEN` (finite, far below any score), so it is
    never predicted.
    """
    mean = stats.mean.astype(np.float64)
    precision_times_mean = np.linalg.solve(_covariance(stats, shrinkage), mean.T)
    weight = precision_times_mean.T  # (K, D): row c is Λ mean_c
    bias = -0.5 * np.einsum("kd,kd->k", weight, mean)
    bias = np.where(stats.count > 0, bias, UNSEEN)
    return weight.astype(np.float32), bias.astype(np.float32)


def precision(stats: HeadStats, shrinkage: float) -> np.ndarray:
    """The head's precision ``Λ`` float64 ``(D, D)``, the inverse of its shrunk covariance."""
    return np.linalg.inv(_covariance(stats, shrinkage))


def _covariance(stats: HeadStats, shrinkage: float) -> np.ndarray:
    """``(1 - ε) Σ + ε I`` in float64, ``Σ = scatter / N`` (zero before any sample)."""
    if not 0.0 < shrinkage <= 1.0:
        raise QCoreError(f"head shrinkage must lie in (0, 1], got {shrinkage}")
    n = float(stats.count.sum())
    d = stats.n_features
    sigma = stats.scatter.astype(np.float64) / n if n > 0 else np.zeros((d, d))
    return (1.0 - shrinkage) * sigma + shrinkage * np.eye(d)


def logits(weight: np.ndarray, bias: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Scores float32 ``(n, K)`` of pooled ``features`` ``(n, D)``."""
    return (np.asarray(features, dtype=np.float32) @ weight.T + bias).astype(np.float32)
