"""A device's own signals in its step: calibrated confidence, novelty, the drift trigger."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import edge_kit as B
import numpy as np
import pytest

from qcore.cloud import pipeline
from qcore.edge.artifact import decode_artifact, encode_artifact
from qcore.edge.csvfiles import write_rows
from qcore.edge.device import Device
from qcore.edge.head import batch_stats
from qcore.edge.infer import forward_features
from qcore.edge.signals import fit_novelty_threshold


@pytest.fixture(scope="module")
def known(tiny_model, tiny_xy):
    """An artifact with head statistics and the cloud's novelty threshold, its device a
    streaming head on a fixed backbone; and the normalised windows it was fitted on."""
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X, y)
    features = forward_features(art.model, X)[1]
    limit = fit_novelty_threshold(features, y, 3, 1e-3, seed=0)
    device = art.device.replace(
        head="slda", flip_steps=0, bn_mode="frozen", novelty_threshold=limit, reset_window=0
    )
    return replace(art, head=batch_stats(features, y, 3), device=device), X, y


def far(X: np.ndarray) -> np.ndarray:
    """Windows of another world: the same shapes, scaled and shifted."""
    return (3.0 * X + 2.0).astype(np.float32)


def test_the_cloud_fits_the_novelty_threshold_unless_it_is_set(tiny_model, tiny_xy) -> None:
    X, y = tiny_xy
    cfg = B.kit_config()
    qmodel = pipeline.quantize(tiny_model, 4, X, cfg)
    art = pipeline.device_artifact(qmodel, None, None, B.Norm(), B.CLASSES, cfg, None, (X, y), 32)
    features = forward_features(art.model, X)[1]
    want = fit_novelty_threshold(features, y, 3, cfg.device.head_shrinkage, cfg.seed)
    assert art.device.novelty_threshold == pytest.approx(want)
    mine = cfg.device.replace(novelty_threshold=123.0)
    art = pipeline.device_artifact(qmodel, None, None, B.Norm(), B.CLASSES, cfg, mine, (X, y), 32)
    assert art.device.novelty_threshold == 123.0
    bare = pipeline.device_artifact(qmodel, None, None, B.Norm(), B.CLASSES, cfg, None, None, 32)
    assert bare.device.novelty_threshold is None  # no head statistics, no threshold


def test_a_step_reports_the_calibrated_confidence_and_the_novelty(known) -> None:
    art, X, _ = known
    dev = Device(art)
    batch = np.concatenate([X[:6], far(X[6:10])])
    sig = dev.signals(batch, normalized=True)
    report = dev.step(batch, normalized=True)
    assert report.confidences == [round(float(c), 4) for c in sig.confidence]
    assert sig.novelty is not None and report.novelty is not None
    assert report.novelty == [round(float(v), 3) for v in sig.novelty]
    assert report.novel_share == float((sig.novelty > 1).mean())
    assert (sig.novelty[6:] > 1).all() and report.novel_share >= 0.4
    assert report.confidence == pytest.approx(float(sig.confidence.mean()))
    assert sig.margin is not None and report.margin is not None
    assert report.margin == [round(float(v), 3) for v in sig.margin]
    assert min(report.margin) >= 0.0
    line = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert line["novelty"] == report.novelty and line["novel_share"] == report.novel_share
    assert line["margin"] == report.margin
    predictions = io.StringIO()
    write_rows((predictions, None), "b.npz", "b", report)
    rows = list(csv.reader(io.StringIO(predictions.getvalue())))
    assert [float(r[5]) for r in rows] == report.novelty
    assert [float(r[6]) for r in rows] == report.margin


def test_the_confidence_settings_change_no_prediction(known) -> None:
    art, X, _ = known
    batch = np.concatenate([X, far(X[:20])])
    base = Device(art).predict(batch, normalized=True)
    for dof, temperature, power in [(1.0, 1.0, 0.0), (100.0, 50.0, 2.0)]:
        cfg = art.device.replace(
            confidence_dof=dof, confidence_temperature=temperature, confidence_novelty_power=power
        )
        dev = Device(art, cfg)
        np.testing.assert_array_equal(dev.predict(batch, normalized=True), base)
        assert (dev.signals(batch, normalized=True).probs.argmax(1) == base).all()
    hot = Device(art, art.device.replace(confidence_temperature=50.0)).signals(X, normalized=True)
    cold = Device(art).signals(X, normalized=True)
    assert hot.confidence.mean() < cold.confidence.mean()


def test_the_drift_policy_calibrates_on_a_new_world_until_it_is_learnt(known) -> None:
    art, X, y = known
    cfg = art.device.replace(policy="drift", drift_share=0.5, drift_release=0.05)
    dev = Device(art, cfg)
    home = dev.step(X[:12], y[:12], normalized=True)  # the world it knows: quiet
    assert not home.calibrated and not home.drift and home.head_samples == 0
    assert home.novel_share is not None and home.novel_share < 0.5
    away = far(X)
    first = dev.step(away[:12], y[:12], normalized=True)
    assert first.drift and first.calibrated and first.head_samples == 12
    assert dev.runtime.drift == {"active": True}
    # killed and restarted from its state: it goes on as the uninterrupted device does
    again = Device(decode_artifact(encode_artifact(dev.art)), deployed=art)
    shares = []
    for i in range(12, 60, 12):
        a = dev.step(away[i : i + 12], y[i : i + 12], normalized=True)
        b = again.step(away[i : i + 12], y[i : i + 12], normalized=True)
        assert (a.calibrated, a.drift, a.novel_share) == (b.calibrated, b.drift, b.novel_share)
        shares.append((a.novel_share, a.calibrated))
    assert all(c for _, c in shares) and shares[-1][0] > 0.05  # still in drift: calibrating
    back = dev.step(X[12:24], y[12:24], normalized=True)  # home again: the share falls
    assert back.novel_share == 0.0 and not back.calibrated and not back.drift
    assert dev.runtime.drift == {"active": False}
    # out of drift, a batch less novel than drift_share does not bring it back
    some = np.concatenate([X[24:32], -4.0 * X[32:36] - 3.0])  # a third world, in part
    report = dev.step(some, y[24:36], normalized=True)
    assert report.novel_share is not None and 0.05 < report.novel_share < 0.5
    assert not report.calibrated
    assert dev.art.head is not None and dev.art.head.count.sum() > art.head.count.sum()
