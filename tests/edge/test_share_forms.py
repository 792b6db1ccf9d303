"""The projected share (qcore.edge.share_forms): its public subspace, the server's lift back
to the head's dimensions, its clip and noise, its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcore.edge.head import batch_stats
from qcore.edge.share import noise_multiplier
from qcore.edge.share_forms import (
    discriminant_subspace,
    lift,
    project,
    projected_share,
    projected_stats,
)
from qcore.errors import QCoreError

K, D = 4, 10
NAMES = ("a", "b", "c", "d")


def deployed_and_fleet(seed: int = 0):
    """Deployed statistics from one subject's windows; a fleet's windows, shifted and
    spread otherwise, split over three devices."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (K, D))
    y0 = np.arange(80) % K
    x0 = centres[y0] + rng.normal(0, 1, (80, D)) @ rng.normal(0, 0.5, (D, D))
    y = rng.integers(0, K, 150)
    x = centres[y] + 1.5 + rng.normal(0, 2, (150, D))
    return batch_stats(x0, y0, K), x, y


def test_the_subspace_is_whitened_and_holds_the_deployed_heads_discriminants() -> None:
    deployed, _, _ = deployed_and_fleet()
    sub = discriminant_subspace(deployed, 1e-3)
    assert sub.to.shape == (K - 1, D) and sub.back.shape == (D, K - 1)
    assert np.allclose(sub.to @ sub.cov @ sub.to.T, np.eye(K - 1), atol=1e-9)
    assert np.allclose(sub.to @ sub.back, np.eye(K - 1), atol=1e-9)
    # the deployed head's discriminants Λ (μ_c - μ_0) lie in the span of A's rows
    mean = deployed.mean.astype(np.float64)
    disc = np.linalg.solve(sub.cov, (mean[1:] - mean[0]).T)
    coef = np.linalg.lstsq(sub.to.T, disc, rcond=None)[0]
    assert np.abs(sub.to.T @ coef - disc).max() < 1e-8 * np.abs(disc).max()


def test_the_full_rank_lift_without_clip_or_noise_is_the_fleets_statistics() -> None:
    deployed, x, y = deployed_and_fleet(1)
    sub = discriminant_subspace(deployed, 1e-3, rank=D)
    shares = [projected_share(x[i::3], y[i::3], deployed, sub, NAMES) for i in range(3)]
    got, want = projected_stats(shares, deployed, sub, NAMES), batch_stats(x, y, K)
    assert np.array_equal(got.count, want.count)
    assert np.abs(got.mean - want.mean).max() <= 1e-5 * np.abs(want.mean).max()
    assert np.abs(got.scatter - want.scatter).max() <= 1e-5 * np.abs(want.scatter).max()


def test_a_low_rank_lift_keeps_the_fleet_inside_and_the_deployed_outside() -> None:
    deployed, x, y = deployed_and_fleet(2)
    sub = discriminant_subspace(deployed, 1e-3)
    shares = [projected_share(x[i::2], y[i::2], deployed, sub, NAMES) for i in range(2)]
    got = projected_stats(shares, deployed, sub, NAMES)
    p = project(x, y, deployed, sub)
    inside = batch_stats(p, y, K)  # the fleet's statistics of p
    a = sub.to
    offsets = (got.mean.astype(np.float64) - deployed.mean.astype(np.float64)) @ a.T
    assert np.abs(offsets - inside.mean).max() <= 1e-4 * np.abs(inside.mean).max()
    scatter = got.scatter.astype(np.float64)
    assert np.abs(a @ scatter @ a.T - inside.scatter).max() <= 1e-4 * inside.scatter.max()
    # in the whitened complement: the deployed covariance for every fleet window, no cross term
    values, vectors = np.linalg.eigh(sub.cov)
    root, inv_root = (
        (vectors * np.sqrt(values)) @ vectors.T,
        (vectors / np.sqrt(values)) @ vectors.T,
    )
    perp = np.linalg.svd((a @ root).T, full_matrices=True)[0][:, K - 1 :]  # whitened complement
    comp = perp.T @ inv_root
    n = float(len(y))
    assert np.allclose(comp @ scatter @ comp.T, n * np.eye(D - K + 1), rtol=1e-4, atol=1e-3 * n)
    assert np.abs(comp @ scatter @ a.T).max() <= 1e-4 * n


def test_a_private_projected_share_clips_and_has_the_accountants_scale() -> None:
    deployed, x, y = deployed_and_fleet(3)
    sub = discriminant_subspace(deployed, 1e-3, rank=D)
    clip = 0.5
    one = projected_share(x[:1], y[:1], deployed, sub, NAMES, clip=clip)
    assert np.linalg.norm(one.sums) <= clip * (1 + 1e-6)
    clean = projected_share(x, y, deployed, sub, NAMES, clip=clip)
    sigma = noise_multiplier(2.0, 1e-5) * math.sqrt(3.0)
    upper, second, sums = np.triu_indices(D), [], []
    for seed in range(20):
        noisy = projected_share(x, y, deployed, sub, NAMES, "", (2.0, 1e-5, clip), seed)
        assert noisy.privacy == pytest.approx((2.0, 1e-5, clip, sigma))
        second.append((noisy.second - clean.second)[upper] / clip**2)
        sums.append((noisy.sums - clean.sums) / clip)
    assert np.std(second) == pytest.approx(sigma, rel=0.1)  # 1,100 entries
    assert np.std(sums) == pytest.approx(sigma, rel=0.1)  # 800 entries


def test_projected_shares_refuse_what_they_cannot_stand_for() -> None:
    deployed, x, y = deployed_and_fleet(4)
    with pytest.raises(QCoreError, match="rank"):
        discriminant_subspace(deployed, 1e-3, rank=D + 1)
    with pytest.raises(QCoreError, match="shrinkage"):
        discriminant_subspace(deployed, 0.0)
    sub = discriminant_subspace(deployed, 1e-3)
    with pytest.raises(QCoreError, match="deployed classes only"):
        project(x[:3], np.array([0, 1, K]), deployed, sub)
    with pytest.raises(QCoreError, match="exactly the deployed classes"):
        projected_share(x, y, deployed, sub, NAMES[:3])
    wide = projected_share(x, y, deployed, discriminant_subspace(deployed, 1e-3, rank=D), NAMES)
    with pytest.raises(QCoreError, match="3-dimensional sums"):
        projected_stats([wide], deployed, sub, NAMES)
    with pytest.raises(QCoreError, match="subspace"):
        lift(batch_stats(x, y, K), deployed, sub)
