"""The streaming closed-form head: statistics, the solve, and the device step with it."""

from __future__ import annotations

import json
from dataclasses import replace

import edge_kit as B
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcore.config import DeviceConfig
from qcore.edge.artifact import decode_artifact, encode_artifact
from qcore.edge.device import Device
from qcore.edge.head import (
    UNSEEN,
    HeadStats,
    batch_stats,
    drop,
    empty_stats,
    grow,
    logits,
    solve,
    update,
)
from qcore.edge.infer import forward_features
from qcore.errors import QCoreError


def _data(seed: int, n: int = 90, k: int = 4, d: int = 12):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = (rng.normal(size=(n, d)) + 3.0 * rng.normal(size=(k, d))[y]).astype(np.float32)
    return X, y


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 30), min_size=1, max_size=8))
def test_streaming_update_equals_the_batch_computation(seed, sizes):
    X, y = _data(seed, n=sum(sizes))
    stats = empty_stats(4, X.shape[1])
    start = 0
    for size in sizes:
        stats = update(stats, X[start : start + size], y[start : start + size])
        start += size
    ref = batch_stats(X, y, 4)
    np.testing.assert_array_equal(stats.count, ref.count)
    np.testing.assert_allclose(stats.mean, ref.mean, rtol=1e-5, atol=1e-5)
    scale = float(np.abs(ref.scatter).max()) or 1.0
    np.testing.assert_allclose(stats.scatter, ref.scatter, rtol=1e-5, atol=1e-5 * scale)


def test_batch_statistics_are_means_and_within_class_scatter():
    X, y = _data(1)
    stats = batch_stats(X, y, 4)
    for c in range(4):
        np.testing.assert_allclose(stats.mean[c], X[y == c].mean(0), rtol=1e-5, atol=1e-5)
    centred = X - stats.mean[y]
    np.testing.assert_allclose(stats.scatter, centred.T @ centred, rtol=1e-4, atol=1e-3)
    assert stats.nbytes == 4 * (4 + 4 * 12 + 12 * 12)


def test_solve_is_the_shrunk_lda_closed_form():
    X, y = _data(2)
    stats = batch_stats(X, y, 4)
    eps = 0.1
    W, b = solve(stats, eps)
    sigma = stats.scatter.astype(np.float64) / len(y)
    lam = np.linalg.inv((1 - eps) * sigma + eps * np.eye(12))
    mu = stats.mean.astype(np.float64)
    np.testing.assert_allclose(W, mu @ lam, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, -0.5 * np.einsum("kd,de,ke->k", mu, lam, mu), rtol=1e-4)
    assert (logits(W, b, X).argmax(1) == y).mean() > 0.9  # separable classes


def test_unseen_classes_are_never_predicted_and_bad_input_is_refused():
    X, y = _data(3)
    stats = batch_stats(X[y < 3], y[y < 3], 4)
    W, b = solve(stats, 1e-2)
    assert (logits(W, b, X).argmax(1) < 3).all()
    with pytest.raises(QCoreError, match="shrinkage"):
        solve(stats, 0.0)
    with pytest.raises(QCoreError, match="labels"):
        update(stats, X[:2], np.array([0, 4]))
    with pytest.raises(QCoreError, match="features"):
        update(stats, X[:2, :5], y[:2])
    with pytest.raises(QCoreError, match="finite"):
        HeadStats(stats.count, stats.mean * np.nan, stats.scatter)


# ------------------------------------------------------------------------ on the device


@pytest.fixture(scope="module")
def head_artifact(tiny_model, tiny_xy):
    """The kit's artifact with head statistics from the deployed model's source features."""
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X, y)
    stats = batch_stats(forward_features(art.model, X)[1], y, art.model.n_classes)
    return replace(art, head=stats), X, y


def _slda(art, **changes) -> Device:
    cfg = art.device.replace(head="slda", flip_steps=0, bn_mode="frozen", **changes)
    return Device(art, cfg)


def test_the_head_equals_the_closed_form_after_every_step(head_artifact):
    art, X, y = head_artifact
    dev = _slda(art, head_shrinkage=0.05)
    seen_f, seen_y = [forward_features(art.model, X)[1]], [y]
    for Xb, yb in B.stream_batches(X, y, 4):
        report = dev.step(Xb, yb)
        assert report.head_samples == len(yb) and report.head_solved
        assert report.flips == 0 and not report.rolled_back
        seen_f.append(forward_features(art.model, dev.normalize(Xb))[1])
        seen_y.append(yb)
        ref = batch_stats(np.concatenate(seen_f), np.concatenate(seen_y), 3)
        W, b = solve(ref, 0.05)
        assert dev.head is not None
        np.testing.assert_allclose(dev.head[0], W, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dev.head[1], b, rtol=1e-4, atol=1e-4)
        json.dumps(report.to_dict(), allow_nan=False)
    # the backbone never moved: only statistics changed
    for name, layer in art.model.layers.items():
        np.testing.assert_array_equal(dev.art.model.layers[name].weight.q, layer.weight.q)


def test_predictions_come_from_the_head_and_survive_a_restart(head_artifact):
    art, X, y = head_artifact
    dev = _slda(art)
    for Xb, yb in B.stream_batches(X, y, 3):
        dev.step(Xb, yb)
    Xr = B.raw(X)
    feats = forward_features(dev.art.model, dev.normalize(Xr))[1]
    assert dev.head is not None
    np.testing.assert_array_equal(
        dev.predict(Xr), logits(dev.head.weight, dev.head.bias, feats).argmax(1)
    )
    again = Device(decode_artifact(encode_artifact(dev.art)), deployed=dev.deployed)
    np.testing.assert_array_equal(again.predict(Xr), dev.predict(Xr))
    assert again.art.head is not None
    np.testing.assert_array_equal(again.art.head.scatter, dev.art.head.scatter)


def test_head_with_flips_and_batchnorm_updates_from_the_moved_backbone(head_artifact):
    art, X, y = head_artifact
    cfg = art.device.replace(head="slda", flip_guard="off", guard_margin=1.0, flip_budget=0.2)
    dev = Device(art, cfg)
    Xb, yb = B.stream_batches(X, y, 1)[0]
    report = dev.step(Xb, yb)
    assert report.flips > 0 and report.head_samples == len(yb)
    # the statistics took the batch's features from the backbone after the step
    moved = forward_features(dev.art.model, dev.normalize(Xb))[1]
    start = art.head
    assert start is not None and dev.art.head is not None
    want = update(start, moved, yb)
    np.testing.assert_allclose(dev.art.head.scatter, want.scatter, rtol=1e-5, atol=1e-4)


def test_a_device_without_head_statistics_refuses_the_slda_head(tiny_model, tiny_xy):
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X, y)
    with pytest.raises(QCoreError, match="streaming head"):
        Device(art, art.device.replace(head="slda"))
    no_net = replace(art, flipnet=None)
    with pytest.raises(QCoreError, match="flip network"):
        Device(no_net)
    Device(no_net, no_net.device.replace(flip_steps=0))  # no flips, no network needed


def test_head_step_needs_no_autograd(head_artifact, monkeypatch):
    art, X, y = head_artifact

    def forbidden(*a, **k):
        raise AssertionError("back-propagation or an optimizer ran on the device")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    monkeypatch.setattr(torch.optim.Optimizer, "step", forbidden)
    dev = Device(art, art.device.replace(head="slda", guard_margin=1.0))
    for Xb, yb in B.stream_batches(X, y, 2):
        assert dev.step(Xb, yb).head_solved


def test_device_config_defaults_name_the_head():
    assert DeviceConfig().head in ("model", "slda")


@pytest.mark.parametrize("bits", [2, 8])
def test_a_low_bit_head_rounds_each_class_row(head_artifact, bits):
    from qcore.edge.backbone import solve_head

    art, _, _ = head_artifact
    cfg = art.device.replace(head="slda", head_bits=bits)
    W, b, _ = solve_head(art.head, cfg)
    W_float, b_float, _ = solve_head(art.head, cfg.replace(head_bits=None))
    np.testing.assert_array_equal(b, b_float)
    for row, ref in zip(W, W_float, strict=True):
        assert len(np.unique(row)) <= 2**bits
        step = (max(ref.max(), 0) - min(ref.min(), 0)) / (2**bits - 1)
        assert np.abs(row - ref).max() <= step / 2 + 1e-6


@pytest.mark.parametrize("moves", [False, True])
def test_the_user_guard_counts_what_the_deployed_model_predicts(head_artifact, moves):
    """The guard's record holds, per labelled batch, the windows the device and the
    deployed model (deployed backbone and head statistics) predicted right, and those only
    one of them predicted right; with a frozen backbone the deployed model's features are
    the device's own. The labels are shifted by one class, so that the device learns to
    predict otherwise than the deployed model."""
    art, X, y = head_artifact
    changes = {"flip_guard": "off", "guard_margin": 1.0, "flip_budget": 0.2} if moves else {}
    cfg = art.device.replace(
        head="slda", flip_steps=2 if moves else 0, bn_mode="frozen", reset_window=3, **changes
    )
    dev, deployed = Device(art, cfg), Device(art, cfg)
    differed = 0
    for Xb, yb in B.stream_batches(X, (y + 1) % 3, 6, batch=12):
        before = dev.predict(Xb)
        dev.step(Xb, yb)
        right, dep_right, n, alone, dep_alone = dev.art.runtime["recent"][-1]
        mine, theirs = before == yb, deployed.predict(Xb) == yb
        assert (right, n) == (int(mine.sum()), len(yb))
        assert dep_right == int(theirs.sum())
        assert (alone, dep_alone) == (int((mine & ~theirs).sum()), int((theirs & ~mine).sum()))
        differed += right != dep_right
    assert differed and dev.art.runtime["backbone_moved"] is moves


def test_the_sign_test_judges_a_device_that_learns_only_its_head(head_artifact):
    """With a frozen backbone, ``reset_alpha`` also asks the disagreements to be one-sided
    beyond chance: at 1 the guard fires exactly where the margin alone does, at a level no
    window of these batches can reach it never fires. The user first labels every window
    one class off, then truly: the device learnt the shift and now loses to the deployed
    model."""
    art, X, y = head_artifact
    shifted = B.stream_batches(X, (y + 1) % 3, 4, batch=12)
    data = shifted + B.stream_batches(X, y, 4, batch=12, seed=2)

    def resets(**kw) -> list[bool]:
        dev = _slda(art, reset_window=2, reset_margin=0.0, **kw)
        reports = [dev.step(Xb, yb) for Xb, yb in data]
        assert dev.art.runtime["backbone_moved"] is False
        return [r.reset for r in reports]

    margin_only = resets(reset_alpha=None)
    assert any(margin_only[4:])
    assert resets(reset_alpha=1.0) == margin_only
    assert not any(resets(reset_alpha=0.5 ** (2 * 12)))


def test_the_source_weight_scales_what_the_cloud_ships(tiny_model, tiny_xy):
    """head_source_weight: each source window counts as that share of a target window
    (counts and scatter scaled, means kept), so target labels move the means sooner."""
    from qcore.cloud import pipeline

    X, y = tiny_xy
    cfg = B.kit_config()
    qmodel = pipeline.quantize(tiny_model, 4, X, cfg)
    device = cfg.device.replace(head="slda", flip_steps=0, bn_mode="frozen")
    arts = [
        pipeline.device_artifact(
            qmodel,
            None,
            None,
            B.Norm(),
            B.CLASSES,
            cfg.replace(head_source_weight=w),
            device,
            (X, y),
            X.shape[2],
        )  # fmt: skip
        for w in (1.0, 0.1)
    ]
    full, light = (a.head for a in arts)
    np.testing.assert_allclose(light.count, 0.1 * full.count, rtol=1e-6)
    np.testing.assert_allclose(light.scatter, 0.1 * full.scatter, rtol=1e-5)
    np.testing.assert_array_equal(light.mean, full.mean)
    Xb, yb = B.stream_batches(X, (y + 1) % 3, 1, batch=12)[0]  # target labels that disagree
    after = []
    for a in arts:
        dev = Device(a)
        dev.step(Xb, yb)
        after.append(np.abs(dev.art.head.mean - a.head.mean).max())
    assert after[1] > after[0]  # the lighter source lets the same labels move the means more


def test_a_reset_keeps_a_model_head_device_on_its_model_head(head_artifact):
    """reset() returns to the deployed statistics but never switches a device that
    predicts with the model's own head (head=model) over to the streaming head."""
    art, X, y = head_artifact
    dev = Device(art, art.device.replace(head="model", flip_steps=0, bn_mode="frozen"))
    dev.step(*B.stream_batches(X, y, 1)[0])
    dev.reset()
    assert dev.head is None
    np.testing.assert_array_equal(dev.predict(B.raw(X)), Device(art).predict(B.raw(X)))


# ------------------------------------------------------------------ statistics, exactly


def test_growing_adds_empty_classes_and_keeps_the_rest():
    X, y = _data(4, k=3)
    stats = batch_stats(X, y, 3)
    grown = grow(stats, 5)
    assert grown.n_classes == 5 and grown.n_features == 12
    np.testing.assert_array_equal(grown.count, np.r_[stats.count, 0, 0])
    np.testing.assert_array_equal(grown.mean[:3], stats.mean)
    assert not grown.mean[3:].any()
    np.testing.assert_array_equal(grown.scatter, stats.scatter)
    assert grow(stats, 3) is stats
    with pytest.raises(QCoreError, match="cannot shrink the head from 3 to 2 classes"):
        grow(stats, 2)
    # a grown class is learnt from its first samples on, the others stay as they were
    X4 = X[:5] + 10.0
    after = update(grown, X4, np.full(5, 4))
    np.testing.assert_allclose(after.mean[4], X4.mean(0), rtol=1e-5)
    np.testing.assert_array_equal(after.mean[:4], grown.mean[:4])
    assert after.count.tolist() == [*stats.count.tolist(), 0.0, 5.0]


def test_empty_statistics_and_an_empty_batch():
    stats = empty_stats(3, 4)
    assert stats.count.shape == (3,) and stats.mean.shape == (3, 4)
    assert stats.scatter.shape == (4, 4) and stats.count.dtype == np.float32
    assert not (stats.count.any() or stats.mean.any() or stats.scatter.any())
    assert update(stats, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)) is stats
    W, b = solve(stats, 0.5)  # nothing seen: no class can be predicted, nothing breaks
    assert np.isfinite(W).all() and not W.any() and (b == UNSEEN).all()


def test_one_class_seen_with_no_scatter_solves_to_the_identity_prior():
    X = np.tile(np.array([[1.0, 2.0, -1.0]], np.float32), (4, 1))  # one point, four times
    stats = update(empty_stats(2, 3), X, np.zeros(4, np.int64))
    assert stats.count.tolist() == [4.0, 0.0] and not stats.scatter.any()
    W, b = solve(stats, 1.0)  # full shrinkage: the covariance is the identity
    np.testing.assert_allclose(W[0], X[0], rtol=1e-6)
    np.testing.assert_allclose(b[0], -0.5 * float(X[0] @ X[0]), rtol=1e-6)
    assert b[1] == np.float32(UNSEEN) and W.dtype == b.dtype == np.float32
    scores = logits(W, b, X[:1])
    assert scores.dtype == np.float32 and scores.shape == (1, 2)
    np.testing.assert_allclose(scores, X[:1] @ W.T + b, rtol=1e-6)


@pytest.mark.parametrize("shrinkage", [0.0, -0.1, 1.0000001, float("nan")])
def test_shrinkage_outside_the_open_closed_unit_interval_is_refused(shrinkage):
    stats = batch_stats(*_data(5), 4)
    with pytest.raises(QCoreError, match=r"shrinkage must lie in \(0, 1\]"):
        solve(stats, shrinkage)


@pytest.mark.parametrize(
    ("count", "mean", "scatter", "match"),
    [
        (np.zeros(2), np.zeros(2), np.zeros((2, 2)), r"shape \(classes, features\), got \(2,\)"),
        (np.zeros(0), np.zeros((0, 3)), np.zeros((3, 3)), r"got \(0, 3\)"),
        (np.zeros(2), np.zeros((2, 0)), np.zeros((0, 0)), r"got \(2, 0\)"),
        (np.zeros(3), np.zeros((2, 3)), np.zeros((3, 3)), r"count \(3,\), mean \(2, 3\)"),
        (np.zeros(2), np.zeros((2, 3)), np.zeros((3, 2)), r"scatter \(3, 2\)"),
        (np.array([1.0, -1.0]), np.zeros((2, 3)), np.zeros((3, 3)), "counts >= 0"),
        (
            np.zeros(2),
            np.zeros((2, 3)),
            np.full((3, 3), np.inf),
            "^head statistics must be finite, with counts >= 0$",
        ),
        (np.array([np.nan, 1]), np.zeros((2, 3)), np.zeros((3, 3)), "finite"),
    ],
)
def test_inconsistent_statistics_are_refused(count, mean, scatter, match):
    with pytest.raises(QCoreError, match=match):
        HeadStats(count, mean, scatter)


def test_the_smallest_head_is_one_class_of_one_feature():
    stats = update(empty_stats(1, 1), np.array([[2.0], [4.0]], np.float32), np.array([0, 0]))
    assert stats.n_classes == 1 and stats.n_features == 1
    assert stats.mean.tolist() == [[3.0]] and stats.scatter.tolist() == [[2.0]]


def test_labels_and_features_must_fit_the_head():
    stats = empty_stats(3, 4)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(QCoreError, match=r"labels must lie in 0\.\.2"):
        update(stats, x, np.array([0, -1]))
    with pytest.raises(QCoreError, match=r"labels must lie in 0\.\.2"):
        update(stats, x, np.array([3, 0]))
    with pytest.raises(QCoreError, match=r"features \(n, 4\) and n labels, got \(2, 4\) and 3"):
        update(stats, x, np.array([0, 1, 2]))
    with pytest.raises(QCoreError, match="features"):
        update(stats, x.reshape(-1), np.array([0]))
    edges = update(stats, x, np.array([0, 2]))  # the first and the last class are valid
    assert edges.count.tolist() == [1.0, 0.0, 1.0]


def test_scores_are_float32_arithmetic_whatever_the_features_dtype():
    X, y = _data(6)
    W, b = solve(batch_stats(X, y, 4), 0.1)
    x64 = np.random.default_rng(6).normal(size=(50, 12))  # float64 features
    scores = logits(W, b, x64)
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, x64.astype(np.float32) @ W.T + b)


def test_a_class_seen_once_can_be_predicted():
    X, y = _data(7, k=3)
    stats = update(batch_stats(X, y, 3), X[:0], y[:0])
    one = np.full((1, 12), 40.0, np.float32)  # far from the three classes
    stats = update(grow(stats, 4), one, np.array([3]))
    W, b = solve(stats, 0.1)
    assert stats.count[3] == 1 and b[3] > UNSEEN
    assert logits(W, b, one).argmax() == 3


@pytest.mark.parametrize("eps", [0.5, 1e-3])
def test_the_solve_computes_in_float64(eps):
    """Stored in float32, solved in float64: the head equals the float64 closed form
    rounded once to float32 (a float32 covariance moves some weights by a step)."""
    X, y = _data(8)
    stats = batch_stats(X, y, 4)
    sigma = stats.scatter.astype(np.float64) / float(stats.count.sum())
    mean = stats.mean.astype(np.float64)
    lam_mean = np.linalg.solve((1 - eps) * sigma + eps * np.eye(12), mean.T).T
    W, b = solve(stats, eps)
    np.testing.assert_array_equal(W, lam_mean.astype(np.float32))
    np.testing.assert_array_equal(b, (-0.5 * (lam_mean * mean).sum(1)).astype(np.float32))


def test_drop_keeps_the_other_learnt_classes_share_and_refuses_the_rest():
    """Two classes grown and fed; dropping the first leaves the second's own scatter, and
    the statistics equal those of the second alone; no class outside the learnt ones can go."""
    rng = np.random.default_rng(3)
    base = batch_stats(rng.normal(size=(12, 4)), np.repeat([0, 1], 6), 2)
    fa, fb = rng.normal(size=(5, 4)) + 2.0, rng.normal(size=(7, 4)) - 1.0
    both = update(update(grow(base, 4), fa, np.full(5, 2)), fb, np.full(7, 3))
    only_b = update(grow(base, 3), fb, np.full(7, 2))
    dropped = drop(both, 2)
    assert dropped.n_learnt == 1
    np.testing.assert_allclose(dropped.learnt, only_b.learnt, atol=1e-5)
    for part in ("count", "mean", "scatter"):
        np.testing.assert_allclose(getattr(dropped, part), getattr(only_b, part), atol=1e-5)
    for k in (1, 4):  # the cloud's class, past the end
        with pytest.raises(QCoreError, match="has no scatter of its own"):
            drop(both, k)
