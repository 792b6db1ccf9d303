"""A means-only share in whitened coordinates (docs/fleet-privacy.md, the third rule).

A device maps each labelled window to ``p = Uᵀ Σ^(-1/2) (x - μ_y)`` of a public subspace
(:func:`qcore.edge.share_forms.discriminant_subspace`: ``U`` all ``D`` whitened directions
with ``rank = D``, or the deployed head's ``K - 1`` discriminant ones), clips ``p`` to
``clip`` and shares the counts and class sums of the clipped ``p``, nothing else
(:func:`means_share`): two parts in units of the clip, ``Δ = sqrt(2)``, one window
protected, the noise of :func:`qcore.edge.share.make_share`.

The server adds the fleet's shares first, forms the class offsets ``a_c`` (a class whose
pooled count is below 0.5 is empty) and lifts them (:func:`means_stats`): class means ``μ_c
+ Σ^(1/2) U a_c`` and the scatter ``n Σ`` for the fleet's pooled count ``n``, the deployed
within-class covariance for every fleet window (in whitened coordinates it is the identity,
so this is :func:`qcore.edge.share_forms.lift` of the subspace's scatter ``n I``). With ``U``
of full rank, no clip and no noise the class means are the fleet's own. NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qcore.edge.head import HeadStats
from qcore.edge.share import Share, make_share, pooled_stats
from qcore.edge.share_forms import Subspace, clipped_stats, lift
from qcore.errors import QCoreError


def means_share(
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
    """The means-only share of a device's labelled windows: ``p`` clipped to ``privacy``'s
    clip (without privacy: to ``clip``, None for none), counts and class sums of ``p``,
    noise as :func:`qcore.edge.share.make_share` adds it to a two-part release."""
    part = clipped_stats(features, labels, deployed, sub, classes, privacy, clip)
    return make_share(part, classes, sha, privacy, seed, second=False)


def means_stats(
    shares: Sequence[Share], deployed: HeadStats, sub: Subspace, classes: Sequence[str]
) -> HeadStats:
    """The fleet's ``D``-dimensional statistics from means-only ``shares`` over the
    deployed ``classes``: pooled in the subspace (noise and all), then lifted with the
    deployed within-class covariance."""
    k, r = deployed.n_classes, sub.rank
    if len(classes) != k:
        raise QCoreError("a means-only merge covers exactly the deployed classes")
    if any(s.sums.shape[1:] != (r,) or s.centred or s.second.size for s in shares):
        raise QCoreError(f"means-only shares must carry {r}-dimensional sums and no second moment")
    unit = HeadStats(np.ones(k), np.zeros((k, r)), k * np.eye(r))  # whitened: the identity
    pooled = pooled_stats(shares, unit, classes)
    return lift(pooled, deployed, sub)
