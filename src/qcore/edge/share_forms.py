"""A projected share: a fleet share made in a public low-dimensional subspace.

The deployed head is a linear discriminant on the shrunk covariance ``Σ = (1 - ε) S / N +
ε I`` (``S``, ``N`` its scatter and total count, ``ε`` the device's ``head_shrinkage``). In
whitened coordinates ``Σ^(-1/2) x`` its class means differ only within the span of the top
``K - 1`` eigenvectors ``U`` of ``Σ^(-1/2) B Σ^(-1/2)`` (``B`` the between-class covariance
of the deployed means): the discriminant subspace, public since it is computed from the
deployed artifact alone (:func:`discriminant_subspace`).

A device maps each labelled window to ``p = A (x - μ_y)``, ``A = Uᵀ Σ^(-1/2)`` (``r`` rows,
``μ_y`` the deployed mean of its class), clips ``p`` to ``clip`` and shares counts, the
``r``-dimensional class sums and the ``r x r`` second moment of ``p``
(:func:`projected_share`): a share as in :mod:`qcore.edge.share`, with the same privacy
(``Δ = sqrt(3)`` in units of the clip, one window protected), on ``r`` coordinates instead
of ``D``. The server pools the shares (:func:`qcore.edge.share.pooled_stats` in ``r``
dimensions) and lifts the result to ``D`` dimensions (:func:`lift`): class means ``μ_c +
Σ^(1/2) U a_c``, scatter ``Σ^(1/2) U M Uᵀ Σ^(1/2) + n (Σ - Σ^(1/2) U Uᵀ Σ^(1/2))`` (the
fleet's within-class scatter ``M`` in the subspace, the deployed covariance in its
complement for the fleet's ``n`` windows, no cross term). With ``r = D``, no clip and no
noise the lift returns the fleet's statistics exactly. NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcore.edge.head import HeadStats, batch_stats, empty_stats
from qcore.edge.share import Share, clip_norms, make_share, pooled_stats
from qcore.errors import QCoreError


@dataclass(frozen=True)
class Subspace:
    """``to`` ``(r, D)``: ``p = to @ (x - μ_y)``; ``back`` ``(D, r)``: ``Σ^(1/2) U``;
    ``cov`` ``(D, D)``: the deployed shrunk covariance ``Σ``; all float64."""

    to: np.ndarray
    back: np.ndarray
    cov: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.to.shape[0])


def discriminant_subspace(
    deployed: HeadStats, shrinkage: float, rank: int | None = None
) -> Subspace:
    """The top ``rank`` (default ``K - 1``) discriminant directions of the ``deployed``
    statistics in the whitened coordinates of their covariance shrunk by ``shrinkage``."""
    k, d = deployed.n_classes, deployed.n_features
    r = k - 1 if rank is None else rank
    n = deployed.count.astype(np.float64)
    if not (1 <= r <= d and n.sum() > 0 and 0.0 < shrinkage <= 1.0):
        raise QCoreError(
            f"a projected share needs deployed statistics with windows, 0 < shrinkage <= 1 "
            f"and 1 <= rank <= {d} features, got rank {r}, shrinkage {shrinkage}"
        )
    cov = (1.0 - shrinkage) * deployed.scatter.astype(np.float64) / n.sum()
    cov = (cov + cov.T) / 2 + shrinkage * np.eye(d)
    values, vectors = np.linalg.eigh(cov)
    root = (vectors * np.sqrt(values)) @ vectors.T
    inv_root = (vectors / np.sqrt(values)) @ vectors.T
    dev = deployed.mean.astype(np.float64) - n @ deployed.mean.astype(np.float64) / n.sum()
    white = inv_root @ ((dev * n[:, None]).T @ dev / n.sum()) @ inv_root
    u = np.linalg.eigh((white + white.T) / 2)[1][:, ::-1][:, :r]
    return Subspace(u.T @ inv_root, root @ u, cov)


def project(
    features: np.ndarray, labels: np.ndarray, deployed: HeadStats, sub: Subspace
) -> np.ndarray:
    """``p = A (x - μ_y)`` ``(n, r)`` float64 of windows ``features`` ``(n, D)`` labelled
    ``labels`` (deployed classes only)."""
    y = np.asarray(labels)
    if y.size and (y.min() < 0 or y.max() >= deployed.n_classes):
        raise QCoreError("a projected share covers the deployed classes only")
    centred = np.asarray(features, dtype=np.float64) - deployed.mean.astype(np.float64)[y]
    return centred @ sub.to.T


def projected_share(
    features: np.ndarray,
    labels: np.ndarray,
    deployed: HeadStats,
    sub: Subspace,
    classes: tuple[str, ...],
    sha: str = "",
    privacy: tuple[float, float, float] | None = None,
    seed: int = 0,
    clip: float | None = None,
) -> Share:
    """The projected share of a device's labelled windows: ``p`` clipped to ``privacy``'s
    clip (without privacy: to ``clip``, None for none), counts, sums and second moment,
    noise as :func:`qcore.edge.share.make_share` adds it."""
    part = clipped_stats(features, labels, deployed, sub, classes, privacy, clip)
    return make_share(part, classes, sha, privacy, seed)


def clipped_stats(
    features: np.ndarray,
    labels: np.ndarray,
    deployed: HeadStats,
    sub: Subspace,
    classes: tuple[str, ...],
    privacy: tuple[float, float, float] | None,
    clip: float | None,
) -> HeadStats:
    """The statistics of a device's ``p`` (:func:`project`) clipped to ``privacy``'s clip
    (without privacy: to ``clip``, None for none), over exactly the deployed classes."""
    if len(classes) != deployed.n_classes:
        raise QCoreError("a share in a subspace covers exactly the deployed classes")
    p = clip_norms(
        project(features, labels, deployed, sub), clip if privacy is None else privacy[2]
    )
    return batch_stats(p, np.asarray(labels), deployed.n_classes)


def lift(stats: HeadStats, deployed: HeadStats, sub: Subspace) -> HeadStats:
    """``D``-dimensional statistics from pooled ``r``-dimensional ones (class offsets and
    within scatter of ``p``): the module docstring's lift."""
    if stats.n_features != sub.rank or stats.n_classes != deployed.n_classes:
        raise QCoreError("projected statistics disagree with the deployed head's subspace")
    n = stats.count.astype(np.float64)
    seen = n > 0
    mean = deployed.mean.astype(np.float64) + stats.mean.astype(np.float64) @ sub.back.T
    inside = sub.back @ stats.scatter.astype(np.float64) @ sub.back.T
    scatter = inside + n.sum() * (sub.cov - sub.back @ sub.back.T)
    return HeadStats(n, np.where(seen[:, None], mean, 0.0), (scatter + scatter.T) / 2)


def projected_stats(
    shares: Sequence[Share], deployed: HeadStats, sub: Subspace, classes: Sequence[str]
) -> HeadStats:
    """The fleet's ``D``-dimensional statistics from projected ``shares`` over the deployed
    ``classes``: pooled in the subspace (noise and all), then lifted."""
    if any(s.sums.shape[1:] != (sub.rank,) or s.centred for s in shares):
        raise QCoreError(f"projected shares must carry {sub.rank}-dimensional sums")
    pooled = pooled_stats(shares, empty_stats(deployed.n_classes, sub.rank), classes)
    return lift(pooled, deployed, sub)
