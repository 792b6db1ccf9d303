"""The projected share (qcore.edge.share_forms) and the means-only share
(qcore.edge.share_means): the public subspace, the server's lift back to the head's
dimensions, their clip and noise, their refusals."""

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
from qcore.edge.share_means import means_share, means_stats
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


def test_a_full_rank_means_only_merge_has_the_fleets_means_and_the_deployed_covariance() -> None:
    deployed, x, y = deployed_and_fleet(5)
    sub = discriminant_subspace(deployed, 1e-3, rank=D)
    shares = [means_share(x[i::3], y[i::3], deployed, sub, NAMES) for i in range(3)]
    assert all(s.second.shape == (0, 0) for s in shares)
    got, want = means_stats(shares, deployed, sub, NAMES), batch_stats(x, y, K)
    assert np.array_equal(got.count, want.count)
    assert np.abs(got.mean - want.mean).max() <= 1e-5 * np.abs(want.mean).max()
    shape = len(y) * sub.cov  # the deployed shrunk covariance for each of the fleet's windows
    assert np.abs(got.scatter - shape).max() <= 1e-5 * np.abs(shape).max()


def test_a_projected_means_only_merge_moves_the_means_inside_the_subspace_only() -> None:
    deployed, x, y = deployed_and_fleet(6)
    sub = discriminant_subspace(deployed, 1e-3)
    shares = [means_share(x[i::2], y[i::2], deployed, sub, NAMES) for i in range(2)]
    got = means_stats(shares, deployed, sub, NAMES)
    offsets = got.mean.astype(np.float64) - deployed.mean.astype(np.float64)
    inside = batch_stats(project(x, y, deployed, sub), y, K).mean.astype(np.float64)
    assert np.abs(offsets @ sub.to.T - inside).max() <= 1e-4 * np.abs(inside).max()
    assert np.abs(offsets - inside @ sub.back.T).max() <= 1e-4 * np.abs(offsets).max()
    shape = len(y) * sub.cov
    assert np.abs(got.scatter - shape).max() <= 1e-5 * np.abs(shape).max()


def test_a_private_means_only_share_clips_and_has_the_two_part_scale() -> None:
    deployed, x, y = deployed_and_fleet(7)
    sub = discriminant_subspace(deployed, 1e-3, rank=D)
    clip = 0.5
    clean = means_share(x, y, deployed, sub, NAMES, clip=clip)
    for i in range(5):  # one window more or less moves the sums by at most the clip
        fewer = means_share(np.delete(x, i, 0), np.delete(y, i), deployed, sub, NAMES, clip=clip)
        assert np.linalg.norm(clean.sums - fewer.sums) <= clip * (1 + 1e-6)
    sigma = noise_multiplier(4.0, 1e-5) * math.sqrt(2.0)
    counts, sums = [], []
    for seed in range(40):
        noisy = means_share(x, y, deployed, sub, NAMES, "", (4.0, 1e-5, clip), seed)
        assert noisy.privacy == pytest.approx((4.0, 1e-5, clip, sigma))
        assert noisy.second.shape == (0, 0)
        counts.append(noisy.count - clean.count)
        sums.append((noisy.sums - clean.sums) / clip)
    assert np.std(sums) == pytest.approx(sigma, rel=0.1)  # 1,600 entries
    assert np.std(counts) == pytest.approx(sigma, rel=0.2)  # 160 counts


def test_means_only_shares_refuse_what_they_cannot_stand_for() -> None:
    deployed, x, y = deployed_and_fleet(8)
    sub = discriminant_subspace(deployed, 1e-3)
    with pytest.raises(QCoreError, match="exactly the deployed classes"):
        means_share(x, y, deployed, sub, NAMES[:3])
    share = means_share(x, y, deployed, sub, NAMES)
    with pytest.raises(QCoreError, match="exactly the deployed classes"):
        means_stats([share], deployed, sub, NAMES[:3])
    projected = projected_share(x, y, deployed, sub, NAMES)
    with pytest.raises(QCoreError, match="no second moment"):
        means_stats([projected], deployed, sub, NAMES)
    wide = means_share(x, y, deployed, discriminant_subspace(deployed, 1e-3, rank=D), NAMES)
    with pytest.raises(QCoreError, match="3-dimensional sums"):
        means_stats([wide], deployed, sub, NAMES)


def test_the_subspace_is_that_of_the_heads_shrunk_covariance() -> None:
    """``cov`` is the head's ``(1 - ε) S / N + ε I``; a subspace of one direction is the top
    generalised eigenvector of the count-weighted between-class covariance against it."""
    rng = np.random.default_rng(9)
    y0 = rng.choice(K, 120, p=[0.55, 0.25, 0.15, 0.05])  # unequal counts weigh the classes
    x0 = rng.normal(0, 3, (K, D))[y0] + rng.normal(0, 1, (120, D)) * rng.uniform(0.2, 2, D)
    deployed, eps = batch_stats(x0, y0, K), 0.05
    n = deployed.count.astype(np.float64)
    cov = (1 - eps) * deployed.scatter.astype(np.float64) / n.sum() + eps * np.eye(D)
    sub = discriminant_subspace(deployed, eps, rank=1)
    assert np.allclose(sub.cov, cov, rtol=1e-10, atol=1e-12)
    mean = deployed.mean.astype(np.float64)
    dev = mean - n @ mean / n.sum()
    between = (dev * n[:, None]).T @ dev / n.sum()
    root_inv = np.linalg.inv(np.linalg.cholesky(cov))
    values, vectors = np.linalg.eigh(root_inv @ between @ root_inv.T)
    top = root_inv.T @ vectors[:, -1]  # B v = λ Σ v, the largest λ
    cosine = abs(top @ sub.to[0]) / (np.linalg.norm(top) * np.linalg.norm(sub.to[0]))
    assert cosine == pytest.approx(1.0, abs=1e-9)


def test_the_subspace_takes_its_edges_and_refuses_past_them() -> None:
    deployed, _, _ = deployed_and_fleet(10)
    assert discriminant_subspace(deployed, 1.0).to.shape == (K - 1, D)  # shrinkage 1: I
    assert discriminant_subspace(deployed, 1e-3, rank=1).to.shape == (1, D)
    one = type(deployed)(np.eye(K)[0], deployed.mean, deployed.scatter)  # one window
    assert discriminant_subspace(one, 1e-3).to.shape == (K - 1, D)
    for bad in ({"shrinkage": 1.5}, {"rank": 0}):
        with pytest.raises(QCoreError, match="projected share needs"):
            discriminant_subspace(deployed, **{"shrinkage": 1e-3, **bad})
    empty = type(deployed)(np.zeros(K), deployed.mean, deployed.scatter)
    with pytest.raises(QCoreError, match="with windows"):
        discriminant_subspace(empty, 1e-3)


def test_the_lift_keeps_a_class_the_fleet_never_saw_empty() -> None:
    """A class with no pooled window has mean 0 (no statistics); one with a single
    window is lifted like any other."""
    deployed, x, y = deployed_and_fleet(11)
    sub = discriminant_subspace(deployed, 1e-3)
    keep = (y != 2) & ~((y == 3) & (np.cumsum(y == 3) > 1))  # no class 2, one window of 3
    got = projected_stats(
        [projected_share(x[keep], y[keep], deployed, sub, NAMES)], deployed, sub, NAMES
    )
    assert got.count[2] == 0 and np.array_equal(got.mean[2], np.zeros(D))
    assert got.count[3] == 1
    p = project(x[keep & (y == 3)], y[keep & (y == 3)], deployed, sub)[0]
    want = deployed.mean[3].astype(np.float64) + sub.back @ p
    assert np.abs(got.mean[3] - want).max() <= 1e-5 * np.abs(want).max()


def test_shares_in_a_subspace_carry_their_artifact_and_their_seed() -> None:
    deployed, x, y = deployed_and_fleet(12)
    sub = discriminant_subspace(deployed, 1e-3)
    private = (4.0, 1e-5, 1.0)
    for make in (projected_share, means_share):
        assert make(x, y, deployed, sub, NAMES, "abc123").deployed == "abc123"
        assert make(x, y, deployed, sub, NAMES).deployed == ""  # unknown by default
        by_default = make(x, y, deployed, sub, NAMES, "", private)
        assert np.array_equal(
            by_default.sums, make(x, y, deployed, sub, NAMES, "", private, 0).sums
        )
        a, b = (make(x, y, deployed, sub, NAMES, "", private, seed) for seed in (3, 4))
        assert not np.array_equal(a.sums, b.sums)
        again = make(x, y, deployed, sub, NAMES, "", private, 3)
        assert np.array_equal(a.sums, again.sums)
