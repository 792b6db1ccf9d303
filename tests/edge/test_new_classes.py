"""Few labels and new classes on the device: partially labelled batches, unlabelled
streams, and a class the cloud never saw added by the streaming head."""

from __future__ import annotations

import json
from dataclasses import replace

import edge_kit as B
import numpy as np
import pytest
import torch

from qcore.cli import main
from qcore.cloud import pipeline
from qcore.cloud.model import InceptionTime
from qcore.cloud.train import train_float
from qcore.config import DeviceConfig
from qcore.edge.artifact import encode_artifact, save_artifact
from qcore.edge.backbone import solve_head
from qcore.edge.classes import class_table, drop_class
from qcore.edge.device import Device
from qcore.edge.head import UNSEEN, HeadStats, batch_stats, grow, update
from qcore.edge.state import load_state, save_state
from qcore.errors import QCoreError

NEW = 2  # the class held out of the cloud


@pytest.fixture(scope="module")
def two_class_artifact(tiny_xy):
    """An slda artifact of a model trained on classes 0 and 1 only ("low", "mid"), and
    the tiny data with all three classes (class 2, "high", is the new one)."""
    X, y = tiny_xy
    seen = y != NEW
    torch.manual_seed(0)
    model = InceptionTime(3, 2, filters=4, depth=3)
    train_float(model, X[seen], y[seen], epochs=5, lr=0.01, batch_size=16, seed=0)
    cfg = B.kit_config()
    qmodel = pipeline.quantize(model, 4, X[seen], cfg)
    device = cfg.device.replace(head="slda", flip_steps=0, bn_mode="frozen")
    art = pipeline.device_artifact(
        qmodel, None, None, B.Norm(), ("low", "mid"), cfg, device, (X[seen], y[seen]), X.shape[2]
    )
    return art, X, y


def _names(y: np.ndarray) -> np.ndarray:
    return np.array(["low", "mid", "high"])[y]


def test_partly_labelled_batches_learn_from_their_labelled_windows(two_class_artifact):
    art, X, y = two_class_artifact
    seen = y != NEW
    Xr, ys = B.raw(X[seen]), y[seen]
    part = ys.copy()
    part[::2] = -1  # every other window arrives without its label
    dev, ref = Device(art), Device(art)
    report = dev.step(Xr, part)
    ref.step(Xr[1::2], ys[1::2])  # the same labelled windows alone
    assert report.labelled and report.n_labelled == len(ys) // 2
    pred = np.array(report.predicted_index)
    assert report.accuracy == float(np.mean(pred[1::2] == ys[1::2]))
    assert report.head_samples == len(ys) // 2
    np.testing.assert_array_equal(dev.art.head.count, ref.art.head.count)
    np.testing.assert_allclose(dev.art.head.mean, ref.art.head.mean, rtol=1e-6, atol=1e-6)


def test_an_unlabelled_stream_changes_nothing_the_guards_judge(two_class_artifact):
    art, X, y = two_class_artifact
    dev = Device(art, art.device.replace(reset_window=1, reset_margin=0.0))
    for Xb, yb in B.stream_batches(X, y, 4):
        for labels in (None, np.full_like(yb, -1)):
            report = dev.step(Xb, labels)
            assert not report.labelled and not report.calibrated
            assert report.accuracy is None and not report.reset
    assert dev.art.step == 8
    for a, b in ((dev.art.head, art.head), (dev.art.model, art.model)):
        assert a is b  # the very objects the device started from
    assert "recent" not in dev.art.runtime  # nothing for the user guard to judge


def test_a_held_out_class_is_added_on_the_device_and_then_predicted(two_class_artifact, tmp_path):
    art, X, y = two_class_artifact
    new_X, new_y = X[y == NEW], y[y == NEW]
    with pytest.raises(QCoreError, match="allow_new_classes"):
        Device(art).step(B.raw(new_X[:5]), _names(new_y[:5]))
    dev = Device(art, allow_new_classes=True)
    before = dev.predict(B.raw(new_X))
    assert (before == NEW).sum() == 0  # the deployed head cannot say "high"
    report = dev.step(B.raw(new_X[:5]), _names(new_y[:5]))  # 5 labelled windows of it
    assert report.new_classes == ["high"] and dev.art.class_names == ("low", "mid", "high")
    held = B.raw(new_X[5:])
    recall = float(np.mean(dev.predict(held) == NEW))
    old = y != NEW
    old_acc = float(np.mean(dev.predict(B.raw(X[old])) == y[old]))
    assert recall >= 0.8 and old_acc >= 0.9, (recall, old_acc)
    # the grown state is a state like any other: saved, reloaded, resumed
    save_state(tmp_path / "s.qcore", dev.art)
    again = Device(load_state(tmp_path / "s.qcore"), deployed=art, allow_new_classes=True)
    assert again.art.class_names == dev.art.class_names
    np.testing.assert_array_equal(again.predict(held), dev.predict(held))
    assert encode_artifact(again.art) == encode_artifact(dev.art)
    again.step(B.raw(new_X[:3]), _names(new_y[:3]))  # known now: nothing new
    assert again.art.class_names == ("low", "mid", "high")
    kept = Device(again.art, deployed=art, allow_new_classes=True)
    kept.reset(keep_classes=True)  # back to the deployed statistics; the class stays, unseen
    assert kept.art.class_names == ("low", "mid", "high")
    assert kept.art.head.count[NEW] == 0
    again.reset()  # back to the deployed model and its classes
    assert again.art.class_names == art.class_names
    assert encode_artifact(replace(again.art, runtime=art.runtime, step=0)) == encode_artifact(art)
    assert not (again.predict(held) == NEW).any()


def _one_batch_run(art, X, labels, tmp_path):
    """``art`` saved as ``tmp_path/m.qcore`` and a stream of one batch (``X`` in raw units, text
    ``labels``): (artifact path, state path, the `qcore device` arguments)."""
    art_path, state, stream = tmp_path / "m.qcore", tmp_path / "s.qcore", tmp_path / "in"
    save_artifact(art_path, art)
    stream.mkdir()
    (stream / "b0.npz").write_bytes(B.npz_bytes(X=B.raw(X), y=labels))
    return (
        art_path,
        state,
        ["device", str(art_path), "--stream", str(stream), "--state", str(state)],
    )


def test_device_command_adds_a_class_only_when_allowed(two_class_artifact, tmp_path, capsys):
    art, X, y = two_class_artifact
    pick = np.flatnonzero(y == NEW)[:4]
    art_path, state, run = _one_batch_run(art, X[pick], _names(y[pick]), tmp_path)
    assert main(run) == 2  # every batch refused
    assert "allow_new_classes" in json.loads(capsys.readouterr().out)["error"]
    assert main([*run, "--allow-new-classes"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["new_classes"] == ["high"]
    assert load_state(state).class_names == ("low", "mid", "high")


def test_confident_windows_without_labels_feed_the_head_as_their_prediction(
    two_class_artifact,
):
    art, X, y = two_class_artifact
    Xr = B.raw(X[y != NEW])
    tau = 0.6
    dev = Device(art, art.device.replace(pseudo_threshold=tau))
    report = dev.step(Xr, np.full(len(Xr), -1))
    pred, conf = np.array(report.predicted_index), np.array(report.confidences)
    chosen = conf >= tau
    assert 0 < report.pseudo_labels == int(chosen.sum()) and report.head_samples == 0
    grown = dev.art.head.count - art.head.count
    np.testing.assert_array_equal(grown, np.bincount(pred[chosen], minlength=2))
    ignored = Device(art)  # default: windows without a label are only predicted
    assert ignored.step(Xr, np.full(len(Xr), -1)).pseudo_labels == 0
    assert ignored.art.head is art.head


def test_integer_labels_that_read_as_indices_are_refused_when_classes_may_grow(
    two_class_artifact,
):
    """With new classes allowed labels are names: an integer label 0..K-1 that is no class
    name would mean an index without the flag and a new class with it, so it is refused."""
    art, X, y = two_class_artifact
    dev = Device(art, allow_new_classes=True)
    with pytest.raises(
        QCoreError, match="label 0 is no class name but reads as the index of class .low."
    ):
        dev.step(B.raw(X[:4]), np.array([0, 1, 1, 0]))
    with pytest.raises(QCoreError, match="label 1 is no class name"):  # the last index
        dev.step(B.raw(X[:2]), np.array([1, 1]))
    assert dev.art.class_names == art.class_names and dev.art.step == 0
    # the same batch without the flag: indices of the known classes
    assert Device(art).step(B.raw(X[:4]), np.array([0, 1, 1, 0])).labelled
    # an integer that is no index of a known class is a new class, as are names
    assert dev.step(B.raw(X[:2]), np.array([7, 7])).new_classes == ["7"]


def test_classes_command_lists_names_origin_and_weights(two_class_artifact, tmp_path, capsys):
    art, X, y = two_class_artifact
    dev = Device(art, allow_new_classes=True)
    pick = np.flatnonzero(y == NEW)[:3]
    dev.step(B.raw(X[pick]), _names(y[pick]))
    save_state(tmp_path / "s.qcore", dev.art)
    assert main(["classes", str(tmp_path / "s.qcore"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["origin"]) for r in rows] == [
        ("low", "cloud"),
        ("mid", "cloud"),
        ("high", "device"),
    ]
    assert rows[2]["count"] == 3.0
    assert [r["count"] for r in rows[:2]] == [round(float(c), 3) for c in art.head.count]
    assert main(["classes", str(tmp_path / "s.qcore")]) == 0
    assert "high" in capsys.readouterr().out.splitlines()[2]


def test_reset_command_returns_to_the_deployed_classes_unless_kept(
    two_class_artifact, tmp_path, capsys
):
    art, X, y = two_class_artifact
    pick = np.flatnonzero(y == NEW)[:4]
    art_path, state, run = _one_batch_run(art, X[pick], _names(y[pick]), tmp_path)
    assert main([*run, "--allow-new-classes"]) == 0
    assert main(["reset", str(art_path), "--state", str(state), "--keep-classes"]) == 0
    assert load_state(state).class_names == ("low", "mid", "high")
    assert main(["reset", str(art_path), "--state", str(state)]) == 0
    assert load_state(state).class_names == ("low", "mid")
    capsys.readouterr()


def _stream_with_and_without(X, y):
    """Three batches: windows of the known classes, then known and new ones twice (the
    new class's statistics merge across batches); and the same stream without the new
    class's windows."""
    old, new = np.flatnonzero(y != NEW), np.flatnonzero(y == NEW)
    with_new = [old[:8], np.r_[old[8:12], new[:3]], np.r_[old[12:20], new[3:5]]]
    return with_new, [b[y[b] != NEW] for b in with_new]


def test_dropping_a_learnt_class_is_as_if_its_windows_never_came(two_class_artifact, tmp_path):
    art, X, y = two_class_artifact
    with_new, without = _stream_with_and_without(X, y)
    dev, ref = Device(art, allow_new_classes=True), Device(art)
    for a, b in zip(with_new, without, strict=True):
        dev.step(B.raw(X[a]), _names(y[a]))
        ref.step(B.raw(X[b]), _names(y[b]))
    assert dev.art.class_names == ("low", "mid", "high") and dev.art.head.n_learnt == 1
    # the learnt class's share survives a save and a reload
    save_state(tmp_path / "s.qcore", dev.art)
    dev = Device(load_state(tmp_path / "s.qcore"), deployed=art, allow_new_classes=True)
    dev.drop_class("high")
    assert dev.art.class_names == ref.art.class_names
    for part in ("count", "mean", "scatter"):
        got, want = getattr(dev.art.head, part), getattr(ref.art.head, part)
        assert np.abs(got - want).max() <= 1e-5, part
    assert dev.art.head.n_learnt == 0
    np.testing.assert_array_equal(dev.predict(B.raw(X)), ref.predict(B.raw(X)))
    # and the state after the drop survives a save and a reload like any other
    save_state(tmp_path / "s.qcore", dev.art)
    again = Device(load_state(tmp_path / "s.qcore"), deployed=art, allow_new_classes=True)
    assert again.art.class_names == ref.art.class_names and again.art.head.n_learnt == 0
    np.testing.assert_array_equal(again.art.head.scatter, dev.art.head.scatter)
    np.testing.assert_array_equal(again.predict(B.raw(X)), ref.predict(B.raw(X)))


def test_classes_of_an_artifact_without_head_statistics_have_no_count(two_class_artifact):
    art, _, _ = two_class_artifact
    bare = replace(art, head=None, device=art.device.replace(head="model"))
    assert class_table(bare) == [
        {"index": 0, "name": "low", "origin": "cloud", "count": None},
        {"index": 1, "name": "mid", "origin": "cloud", "count": None},
    ]
    with pytest.raises(QCoreError, match="came with the cloud"):
        drop_class(bare, "mid", 0)


def test_only_a_class_the_device_learnt_can_be_dropped(two_class_artifact):
    art, X, y = two_class_artifact
    dev = Device(art, allow_new_classes=True)
    with pytest.raises(QCoreError, match="came with the cloud"):
        dev.drop_class("low")
    with pytest.raises(QCoreError, match="no class 'hgih'"):
        dev.drop_class("hgih")
    pick = np.flatnonzero(y == NEW)[:2]
    dev.step(B.raw(X[pick]), _names(y[pick]))
    shipped = Device(dev.art, deployed=dev.art)  # a grown state shipped as an artifact
    with pytest.raises(QCoreError, match="came with the deployed artifact"):
        shipped.drop_class("high")


def test_classes_command_drops_a_misspelt_class(two_class_artifact, tmp_path, capsys):
    art, X, y = two_class_artifact
    pick = np.flatnonzero(y != NEW)[:6]
    labels = _names(y[pick]).astype(object)
    labels[0] = "lwo"  # one misspelt label
    art_path, state, run = _one_batch_run(art, X[pick], labels.astype(str), tmp_path)
    assert main([*run, "--allow-new-classes"]) == 0
    assert load_state(state).class_names == ("low", "mid", "lwo")
    capsys.readouterr()
    assert main(["classes", str(state), "--drop", "lwo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["low", "mid"]
    assert load_state(state).class_names == ("low", "mid")
    assert main(run) == 0


# ----------------------------------------------------------------- new_class_min


def _with_min(art, m: int):
    """A device on ``art`` that may learn classes and predicts one only from ``m`` windows."""
    return Device(art, art.device.replace(new_class_min=m), allow_new_classes=True)


def _cloud_stats(per_window: float) -> HeadStats:
    """Statistics of two cloud classes, one window each, shipped at weight ``per_window``
    (counts and scatter scaled, means kept, as the cloud weights its source windows)."""
    features = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]])
    s = batch_stats(features, np.array([0, 1]), 2)
    return HeadStats(s.count * per_window, s.mean, s.scatter * per_window)


@pytest.mark.parametrize("m", [2, 3, 5])
def test_solve_head_holds_a_learnt_class_back_below_new_class_min(m):
    stats = grow(_cloud_stats(0.3), 3)  # cloud counts 0.3 each, far below m
    rng = np.random.default_rng(m)
    cfg = DeviceConfig(head="slda", new_class_min=m)
    for k in range(1, m + 1):
        stats = update(stats, rng.normal(size=(1, 3)) + 2.0, np.array([2]))
        bias = solve_head(stats, cfg).bias
        assert stats.count[2] == k
        assert (bias[:2] > UNSEEN).all(), k  # the cloud's classes are never held back
        assert (bias[2] == np.float32(UNSEEN)) == (k < m), k


def test_the_cloud_s_classes_are_predicted_whatever_their_weighted_count(two_class_artifact):
    """Cloud counts of 0.3 (the artifact's 6 per class scaled by 0.05, the scatter with
    them, so the solved head is the same) are below every new_class_min tried; the cloud's
    classes still predict as they did."""
    art, X, y = two_class_artifact
    h = art.head
    tiny = replace(art, head=HeadStats(h.count * 0.05, h.mean, h.scatter * 0.05, h.learnt))
    np.testing.assert_allclose(tiny.head.count, 0.3)
    Xr = B.raw(X[y != NEW])
    want = Device(art).predict(Xr)
    assert set(want.tolist()) == {0, 1}
    for m in (1, 3, 5):
        np.testing.assert_array_equal(_with_min(tiny, m).predict(Xr), want)


@pytest.mark.parametrize("m", [2, 4])
def test_a_new_class_is_predicted_exactly_from_new_class_min_windows(two_class_artifact, m):
    art, X, y = two_class_artifact
    new = np.flatnonzero(y == NEW)
    dev = _with_min(art, m)
    dev.step(B.raw(X[new[: m - 1]]), _names(y[new[: m - 1]]))  # one window short
    own = B.raw(X[new[:m]])  # the windows it is learnt from
    assert dev.art.head.count[NEW] == m - 1 and dev.head.bias[NEW] == np.float32(UNSEEN)
    assert not (dev.predict(own) == NEW).any()
    dev.step(B.raw(X[new[m - 1 : m]]), _names(y[new[m - 1 : m]]))  # the m-th, a batch later
    assert dev.art.head.count[NEW] == m and dev.head.bias[NEW] > UNSEEN
    assert (dev.predict(own) == NEW).all()


def test_one_misspelt_label_changes_no_prediction_until_new_class_min_is_one(
    two_class_artifact,
):
    """One batch of the known classes with one window labelled "lwo" (a "low" window),
    against the same batch with that window unlabelled (""): the predictions on the held-out
    windows of the known classes are compared (the scores are not: the typo window still
    counts in the shared covariance's denominator)."""
    art, X, y = two_class_artifact
    old = np.flatnonzero(y != NEW)
    batch, held = old[:12], B.raw(X[old[12:]])
    typo, blank = _names(y[batch]).astype(object), _names(y[batch]).astype(object)
    assert typo[0] == "low"
    typo[0], blank[0] = "lwo", ""
    changed = {}
    for m in (3, 2, 1):
        dev, ref = _with_min(art, m), _with_min(art, m)
        assert dev.step(B.raw(X[batch]), typo.astype(str)).new_classes == ["lwo"]
        ref.step(B.raw(X[batch]), blank.astype(str))
        assert dev.art.head.count[2] == 1 and ref.art.class_names == ("low", "mid")
        pred, want = dev.predict(held), ref.predict(held)
        changed[m] = int((pred != want).sum())
        assert changed[m] == int((pred == 2).sum())  # only to the typo class
    assert changed[3] == changed[2] == 0
    assert changed[1] > 0, "with new_class_min=1 the typo takes predictions (the test bites)"


def test_new_class_min_travels_in_the_state_and_is_listed_by_help(
    two_class_artifact, tmp_path, capsys
):
    art, X, y = two_class_artifact
    new = np.flatnonzero(y == NEW)
    dev = _with_min(art, 4)
    dev.step(B.raw(X[new[:3]]), _names(y[new[:3]]))
    save_state(tmp_path / "s.qcore", dev.art)
    state = load_state(tmp_path / "s.qcore")
    assert state.device.new_class_min == 4
    again = Device(state, deployed=art, allow_new_classes=True)  # the state's settings
    assert not (again.predict(B.raw(X[new[:4]])) == NEW).any()  # 3 of 4 windows
    again.step(B.raw(X[new[3:4]]), _names(y[new[3:4]]))
    assert (again.predict(B.raw(X[new[:4]])) == NEW).all()
    path = tmp_path / "a.qcore"
    save_artifact(path, replace(art, device=art.device.replace(new_class_min=4)))
    with pytest.raises(SystemExit) as done:
        main(["device", str(path), "--help"])
    assert done.value.code in (0, None)
    assert "\n  new_class_min = 4\n" in capsys.readouterr().out


def test_dropping_one_of_two_learnt_classes_keeps_the_other_and_its_name(two_class_artifact):
    art, X, y = two_class_artifact
    dev = Device(art, allow_new_classes=True)
    new, old = np.flatnonzero(y == NEW)[:6], np.flatnonzero(y == 0)[:6]
    dev.step(B.raw(X[new]), _names(y[new]))
    dev.step(B.raw(X[old]), np.array(["zzz"] * 6))  # a second learnt class, after "high"
    assert dev.art.class_names == ("low", "mid", "high", "zzz")
    dev.drop_class("high")
    assert dev.art.class_names == ("low", "mid", "zzz")
    table = class_table(dev.art)
    assert [r["name"] for r in table] == ["low", "mid", "zzz"] and table[2]["count"] == 6.0
    assert table[2]["origin"] == "device" and table[0]["origin"] == "cloud"


def test_the_class_table_rounds_weights_to_three_decimals(two_class_artifact):
    art, _, _ = two_class_artifact
    count = np.array([1 / 3, 2.00049], np.float32)
    head = replace(art.head, count=count)
    assert [r["count"] for r in class_table(replace(art, head=head))] == [0.333, 2.0]
