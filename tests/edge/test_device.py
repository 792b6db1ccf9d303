"""The device loop (validation, policies, guard and rollback) and the edge CLI end to end."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import stat
import struct
import subprocess
import sys
import warnings
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qcore.cli import main
from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.config import DeviceConfig, parse_policy
from qcore.coreset.core import Core
from qcore.edge import device as device_module
from qcore.edge import runtime as runtime_module
from qcore.edge.artifact import (
    Artifact,
    build_artifact,
    encode_artifact,
    load_artifact,
    save_artifact,
)
from qcore.edge.backbone import solve_head
from qcore.edge.batches import load_batch, read_frames
from qcore.edge.cli import PREDICTIONS_HEADER, add_commands
from qcore.edge.device import Device
from qcore.edge.drift import PageHinkley
from qcore.edge.flip import N_FEATURES, FlipNet
from qcore.edge.guard import UnguardedWarning, reset_reason, sign_test
from qcore.edge.head import batch_stats
from qcore.edge.infer import forward, forward_features
from qcore.edge.report import DeviceReport
from qcore.edge.runtime import GuardRecord, Runtime
from qcore.edge.state import load_state, save_state
from qcore.errors import QCoreError

torch.set_num_threads(1)

MEAN = np.array([0.5, -1.0, 2.0], dtype=np.float32)
STD = np.array([2.0, 0.5, 1.5], dtype=np.float32)
BATCH = 12


class Norm:
    mean, std = MEAN, STD


_NAMES = {"steps": "flip_steps", "guard": "flip_guard", "budget": "flip_budget"}
_GUARDS = {True: "pass", False: "off"}


def make_device(
    art: Artifact,
    drift: PageHinkley | None = None,
    deployed: Artifact | None = None,
    **settings,
) -> Device:
    """A device on ``art`` with some of its device settings replaced (short names)."""
    renamed = {_NAMES.get(k, k): v for k, v in settings.items()}
    if isinstance(renamed.get("flip_guard"), bool):
        renamed["flip_guard"] = _GUARDS[renamed["flip_guard"]]
    return Device(art, art.device.replace(**renamed), drift=drift, deployed=deployed)


def flipnet(qm, seed: int = 0, hidden: int = 8, threshold: float = 0.9, harmful: bool = False):
    rng = np.random.default_rng(seed)
    feedback = {
        name: rng.standard_normal((qm.n_classes, layer.weight.shape[0])).astype(np.float32)
        for name, layer in qm.layers.items()
    }
    if harmful:  # every code moves +1 on every pass, whatever the data says
        w1 = np.zeros((N_FEATURES, hidden), np.float32)
        w2 = np.zeros((hidden, 3), np.float32)
        b2 = np.array([0.0, 0.0, 50.0], np.float32)
        return FlipNet(feedback, w1, np.zeros(hidden, np.float32), w2, b2, 0.0)
    return FlipNet(
        feedback,
        rng.standard_normal((N_FEATURES, hidden)).astype(np.float32),
        rng.standard_normal(hidden).astype(np.float32),
        rng.standard_normal((hidden, 3)).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
        threshold,
    )


@pytest.fixture(scope="module")
def parts(tiny_model, tiny_xy):
    X, y = tiny_xy
    qm = to_qmodel(quantize_model(tiny_model, 4, X, 0))
    return qm, X, y


def make_art(parts, harmful: bool = False) -> Artifact:
    qm, X, y = parts
    core = Core(X[:12], y[:12], np.ones(12, np.int64), np.full(12, -1, np.int64))
    net = flipnet(qm, harmful=harmful)
    device = DeviceConfig(flip_steps=2)
    return build_artifact(qm, core, net, Norm(), ("a", "b", "c"), {}, device=device)


def raw(X: np.ndarray) -> np.ndarray:
    """Un-normalised sensor windows: what the device receives."""
    return (X * STD[None, :, None] + MEAN[None, :, None]).astype(np.float32)


def batches(parts, n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    _, X, y = parts
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        idx = rng.choice(np.arange(12, len(y)), BATCH, replace=False)
        out.append((raw(X[idx]), y[idx]))
    return out


# --------------------------------------------------------------------------------- step


def test_step_predicts_on_normalised_input_and_changes_state(parts) -> None:
    art = make_art(parts)
    dev = make_device(art, guard_margin=1.0, steps=2)
    Xr, y = batches(parts, 1)[0]
    Xn = (Xr - MEAN[None, :, None]) / STD[None, :, None]
    expected = float((forward(art.model, Xn.astype(np.float32)).argmax(1) == y).mean())
    before = encode_artifact(dev.art)
    report = dev.step(Xr, y)
    assert report.accuracy == pytest.approx(expected)
    assert report.step == 1 and dev.art.step == 1 and art.step == 0  # input not mutated
    assert report.calibrated and not report.rolled_back
    for key in ("latency_ms", "calib_ms", "confidence"):
        assert getattr(report, key) > 0
    assert report.rss_bytes > 0 and report.peak_rss_bytes >= report.rss_bytes
    assert encode_artifact(dev.art) != before
    assert len(dev.art.core) == len(art.core)
    json.dumps(report.to_dict(), allow_nan=False)  # one JSON line per step


BAD = {
    "nan": lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y),
    "inf": lambda X, y: (X * np.inf, y),
    "channels": lambda X, y: (X[:, :2], y),
    "length": lambda X, y: (X[:, :, :-1], y),
    "label_high": lambda X, y: (X, np.where(np.arange(len(y)) == 0, 3, y)),
    "label_negative": lambda X, y: (X, np.full_like(y, -2)),
    "empty": lambda X, y: (X[:0], y[:0]),
    "int_X": lambda X, y: (X.astype(np.int32), y),
    "float_y": lambda X, y: (X, y.astype(np.float32)),
    "rank": lambda X, y: (X[0], y),
    "count": lambda X, y: (X, y[:-1]),
    "list": lambda X, y: (X.tolist(), y),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_rejected_batch_leaves_state_byte_identical(parts, kind: str) -> None:
    dev = make_device(make_art(parts), policy="drift")
    Xr, y = batches(parts, 1)[0]
    dev.step(Xr, y)
    before, detector = encode_artifact(dev.art), dev.detector.to_dict()
    with pytest.raises(QCoreError):
        dev.step(*BAD[kind](Xr, y))
    assert encode_artifact(dev.art) == before and dev.detector.to_dict() == detector


def test_harmful_flipnet_is_rolled_back(parts) -> None:
    art = make_art(parts, harmful=True)
    Xr, y = batches(parts, 1)[0]
    unbudgeted = {"guard": False, "bn_mode": "frozen", "steps": 3, "budget": None}
    dev = make_device(art, guard_margin=0.05, **unbudgeted)
    report = dev.step(Xr, y)
    assert report.calibrated and report.rolled_back and report.flips > 0
    assert report.core_acc_after < report.core_acc_before - 0.05
    assert dev.art.model is art.model and dev.art.core is art.core
    assert dev.art.step == 1
    # same batch without a guard margin: the damage is kept (the guard made the difference)
    reckless = make_device(art, guard_margin=1.0, **unbudgeted)
    assert not reckless.step(Xr, y).rolled_back
    q_old = art.model.layers["head"].weight.q
    assert not np.array_equal(reckless.art.model.layers["head"].weight.q, q_old)


RECKLESS = {"guard": False, "bn_mode": "frozen", "steps": 3, "budget": None, "guard_margin": 1.0}


def _codes(art: Artifact) -> list[np.ndarray]:
    return [layer.weight.q for layer in art.model.layers.values()]


def test_user_guard_returns_to_the_deployed_model(parts) -> None:
    """With the step guard off, a harmful flip network damages the model; once the device
    predicted worse than the deployed model over a full window of labelled batches, it
    returns to the deployed model and says so, then calibrates on from there."""
    art = make_art(parts, harmful=True)
    data = batches(parts, 5)
    unguarded = make_device(art, reset_window=0, **RECKLESS)
    plain = [unguarded.step(X, y) for X, y in data]
    assert not any(r.reset for r in plain)
    deployed_right = [(Device(art).predict(X) == y).mean() for X, y in data]
    assert np.mean([r.accuracy for r in plain[1:]]) < np.mean(deployed_right[1:]) - 0.2
    guarded = make_device(art, reset_window=2, reset_margin=0.0, **RECKLESS)
    reports = [guarded.step(X, y) for X, y in data]
    fired = [k for k, r in enumerate(reports) if r.reset]
    assert fired and fired[0] >= 1  # a full window of two batches first
    k = fired[0]
    assert "returned to the deployed model" in reports[k].reset_reason
    assert reports[k].accuracy == plain[k].accuracy  # same damage up to there
    # the step that fired calibrated the deployed model on its batch, like a fresh device
    fresh = make_device(art, reset_window=0, **RECKLESS)
    fresh.step(*data[k])
    after_k = make_device(art, reset_window=2, reset_margin=0.0, **RECKLESS)
    for X, y in data[: k + 1]:
        after_k.step(X, y)
    for a, b in zip(_codes(after_k.art), _codes(fresh.art), strict=True):
        np.testing.assert_array_equal(a, b)
    assert guarded.art.runtime["resets"] == len(fired)
    assert guarded.art.step == len(data)


def test_sign_test_is_the_binomial_tail() -> None:
    """p = the share of the 2^n equally likely ways n disagreements can split in which
    the device loses at least ``losses`` (counted by brute force)."""
    for n in range(0, 9):
        for losses in range(0, n + 1):
            splits = itertools.product((0, 1), repeat=n)
            tail = sum(sum(s) >= losses for s in splits) / 2**n
            assert sign_test(losses, n - losses) == pytest.approx(tail, abs=1e-12)
    assert sign_test(0, 0) == 1.0 and sign_test(5, 0) == 1 / 32


def test_user_guard_undoes_a_moved_backbone_on_the_margin_alone(parts) -> None:
    """``reset_alpha`` judges a device whose backbone has not moved; one the flips moved
    (here a harmful flip network) is reset on the margin alone, whatever the level."""
    art = make_art(parts, harmful=True)
    data = batches(parts, 5)

    def resets(**kw) -> list[DeviceReport]:
        dev = make_device(art, reset_window=2, reset_margin=0.0, **RECKLESS, **kw)
        return [dev.step(X, y) for X, y in data]

    margin_only = [r.reset for r in resets()]
    assert any(margin_only)
    n = sum(len(y) for _, y in data[:2])
    tiny = resets(reset_alpha=0.5**n)
    assert [r.reset for r in tiny] == margin_only
    assert "p = " not in next(r for r in tiny if r.reset).reset_reason


def test_user_guard_reads_records_without_disagreement_counts() -> None:
    """Records of [device right, deployed right, windows] (states kept before the
    disagreement counts) count the least disagreement they allow."""
    cfg = DeviceConfig(reset_window=2, reset_margin=0.0, reset_alpha=0.05)

    def judge(records: list[list[int]], moved: bool) -> str | None:
        return reset_reason([GuardRecord.from_list(r) for r in records], moved, cfg)

    reason = judge([[10, 13, 20], [10, 13, 20]], moved=False)  # 0 wins, 6 losses
    assert reason is not None and "p = " in reason and "alone wrong on 6" in reason
    assert judge([[12, 13, 20], [12, 13, 20]], moved=False) is None  # p = 0.25
    eight_of_ten = [[10, 13, 20, 1, 4], [10, 13, 20, 1, 4]]  # p = 0.055
    assert judge(eight_of_ten, moved=False) is None
    assert judge(eight_of_ten, moved=True) is not None


def test_reset_restores_the_deployed_model_and_keeps_the_record(parts, tmp_path) -> None:
    art = make_art(parts, harmful=True)
    dev = make_device(art, reset_window=0, **RECKLESS)
    for i, (X, y) in enumerate(batches(parts, 2)):
        dev.step(X, y, batch_id=f"b{i}")
    assert any(not np.array_equal(a, b) for a, b in zip(_codes(dev.art), _codes(art), strict=True))
    dev.reset()
    for a, b in zip(_codes(dev.art), _codes(art), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dev.art.core.X, art.core.X)
    assert dev.art.step == 2 and dev.consumed("b0") and dev.art.runtime["resets"] == 1
    # a resumed state knows its deployed model only when given it
    save_state(tmp_path / "s.qcore", dev.art)
    with pytest.raises(QCoreError, match="deployed artifact"):
        make_device(load_state(tmp_path / "s.qcore")).reset()


def test_reset_command(parts, tmp_path, capsys) -> None:
    art_path, state = tmp_path / "model.qcore", tmp_path / "state.qcore"
    art = make_art(parts, harmful=True)
    save_artifact(art_path, art)
    write_stream(parts, tmp_path / "s", 3)
    off = ["--set", "flip_guard=off", "--set", "guard_margin=1", "--set", "reset_window=0"]
    run = ["device", str(art_path), "--stream", str(tmp_path / "s"), "--state", str(state)]
    assert main([*run, *off]) == 0
    moved = zip(_codes(load_state(state)), _codes(art), strict=True)
    assert any(not np.array_equal(a, b) for a, b in moved)
    capsys.readouterr()
    assert main(["reset", str(art_path), "--state", str(state)]) == 0
    assert json.loads(capsys.readouterr().out)["reset"] is True
    after = load_state(state)
    for a, b in zip(_codes(after), _codes(art), strict=True):
        np.testing.assert_array_equal(a, b)
    assert after.step == 3 and after.runtime["resets"] == 1
    assert main(["reset", str(art_path), "--state", str(tmp_path / "none.qcore")]) == 2
    assert "nothing to reset" in capsys.readouterr().err


class _Writes(io.StringIO):
    """A text stream that keeps every ``write`` call's text."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_device_lines_are_written_whole(parts, tmp_path, monkeypatch) -> None:
    """Every JSON line of ``qcore device`` (a step, a bad batch, a batch already consumed,
    the summary on stderr) reaches its stream in one write with its newline: a kill can
    land between two writes, and with unbuffered output ``print`` writes the newline
    apart."""
    art_path, state = tmp_path / "model.qcore", tmp_path / "state.qcore"
    save_artifact(art_path, make_art(parts))
    write_stream(parts, tmp_path / "s", 2)
    (tmp_path / "s" / "999.npz").write_bytes(b"not a batch")
    run = ["device", str(art_path), "--stream", str(tmp_path / "s"), "--state", str(state)]
    for again in (False, True):  # the second run finds its batches already consumed
        if again:
            (tmp_path / "s" / "999.npz").unlink()
        out, err = _Writes(), _Writes()
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        assert main(run) == 0
        monkeypatch.undo()
        for calls in (out.calls, err.calls):
            assert calls and all(c.endswith("\n") and c.count("\n") == 1 for c in calls)
        kinds = {
            next(k for k in ("step", "error", "skipped") if k in json.loads(c)) for c in out.calls
        }
        assert kinds == ({"skipped"} if again else {"error", "step"})
        assert "processed" in json.loads(err.calls[-1])


@pytest.mark.parametrize("guard", ["pass", "layer", "off"])
def test_run_config_guard_names_accepted(parts, guard: str) -> None:
    dev = make_device(make_art(parts), guard=guard, guard_margin=1.0)
    X, y = batches(parts, 1)[0]
    assert dev.step(X, y).calibrated


def test_policy_every_2_calibrates_every_second_batch(parts) -> None:
    dev = make_device(make_art(parts), policy="every:2", guard_margin=1.0)
    flags = [dev.step(X, y).calibrated for X, y in batches(parts, 4)]
    assert flags == [False, True, False, True]
    assert dev.art.step == 4


class Scripted(PageHinkley):
    """A detector that fires on chosen update numbers (wiring test)."""

    def __init__(self, fire_on: set[int]) -> None:
        super().__init__()
        self.fire_on, self.calls = fire_on, 0

    def update(self, x: float) -> bool:
        self.calls += 1
        return self.calls in self.fire_on


def test_drift_policy_calibrates_only_when_detector_fires(parts) -> None:
    dev = make_device(make_art(parts), policy="drift", guard_margin=1.0, drift=Scripted({2, 3}))
    reports = [dev.step(X, y) for X, y in batches(parts, 4)]
    assert [r.calibrated for r in reports] == [False, True, True, False]
    assert [r.drift for r in reports] == [False, True, True, False]


def test_drift_state_is_persisted_and_resumed(parts, tmp_path: Path) -> None:
    dev = make_device(make_art(parts), policy="drift")
    data = batches(parts, 3)
    for X, y in data[:2]:
        dev.step(X, y)
    saved = dev.art.runtime["drift"]
    assert saved["n"] == 2  # two confidences seen, no firing with the defaults
    save_state(tmp_path / "s.qcore", dev.art)
    with pytest.warns(UnguardedWarning):  # no deployed artifact given: no user guard
        resumed = make_device(load_state(tmp_path / "s.qcore"), policy="drift")
    assert resumed.detector.to_dict() == dev.detector.to_dict()


def test_resumed_device_continues_exactly_like_an_uninterrupted_one(parts, tmp_path) -> None:
    data = batches(parts, 4)
    straight = make_device(make_art(parts), guard_margin=1.0, steps=2, seed=3)
    for X, y in data:
        straight.step(X, y)
    first = make_device(make_art(parts), guard_margin=1.0, steps=2, seed=3)
    for X, y in data[:2]:
        first.step(X, y)
    save_state(tmp_path / "s.qcore", first.art)
    second = make_device(
        load_state(tmp_path / "s.qcore"), deployed=first.deployed, guard_margin=1.0, steps=2, seed=3
    )
    for X, y in data[2:]:
        second.step(X, y)
    assert encode_artifact(second.art) == encode_artifact(straight.art)


def test_bad_settings_rejected(parts) -> None:
    art = make_art(parts)
    for kwargs in ({"policy": "sometimes"}, {"policy": "every:0"}, {"guard_margin": -0.1}):
        with pytest.raises(QCoreError):
            make_device(art, **kwargs)
    with pytest.raises(QCoreError, match="bn_mode"):
        make_device(art, bn_mode="train")
    with pytest.raises(QCoreError, match="steps"):
        make_device(art, steps=-1)
    with pytest.raises(QCoreError, match="flip_guard"):
        make_device(art, guard="sometimes")
    for budget in (0.0, 1.5, -0.1):
        with pytest.raises(QCoreError, match="flip budget"):
            make_device(art, budget=budget)
    no_net = Artifact(art.model, art.core, None, MEAN, STD, art.class_names, art.config)
    with pytest.raises(QCoreError, match="no flip network"):
        Device(no_net)
    assert str(parse_policy("every:3")) == "every:3"


def _guarded_run(art: Artifact, data, margin: float) -> tuple[Device, list[DeviceReport]]:
    dev = make_device(art, reset_window=2, reset_margin=margin, **RECKLESS)
    return dev, [dev.step(X, y) for X, y in data]


def test_user_guard_with_a_positive_margin_fires_just_past_it(parts) -> None:
    """The same damaged stream under margins just inside and just past the gap between
    the deployed model's accuracy and the device's over the first full window."""
    art, data = make_art(parts, harmful=True), batches(parts, 3)
    dev, reports = _guarded_run(art, data[:2], 1.0)  # a margin no gap exceeds
    assert not any(r.reset for r in reports)
    recent = dev.runtime.recent
    n = sum(r.n for r in recent)
    gap = (sum(r.deployed_right for r in recent) - sum(r.device_right for r in recent)) / n
    assert gap > 0.1  # the harmful flips made the device worse
    _, inside = _guarded_run(art, data, gap + 0.5 / n)
    assert not inside[1].reset
    past_dev, past = _guarded_run(art, data, gap - 0.5 / n)
    assert past[1].reset and not past[0].reset


def test_a_reset_restarts_the_guards_record(parts) -> None:
    """After a return to the deployed model the window fills again from nothing: the
    next batch alone is no full window, and no record from before the reset remains."""
    art, data = make_art(parts, harmful=True), batches(parts, 4)
    dev = make_device(art, reset_window=2, reset_margin=0.0, **RECKLESS)
    reports = []
    for X, y in data:
        reports.append(dev.step(X, y))
        if reports[-1].reset:
            assert dev.runtime.recent == () and "recent" not in dev.art.runtime
            assert dev.runtime.resets == 1 and dev.runtime.backbone_moved is True
            break
    k = len(reports) - 1
    assert reports[k].reset and k + 1 < len(data)
    after = dev.step(*data[k + 1])
    assert not after.reset and len(dev.runtime.recent) == 1


def test_the_report_names_its_predictions(parts) -> None:
    art = make_art(parts)
    X, y = batches(parts, 1)[0]
    dev = make_device(art, guard_margin=1.0)
    report = dev.step(X, y)
    assert report.predicted == [art.class_names[k] for k in report.predicted_index]
    assert report.predicted_index == Device(art).predict(X).tolist()
    line = report.to_dict()
    assert "predicted_index" not in line and line["predicted"] == report.predicted
    assert set(line) == {f.name for f in fields(DeviceReport)} - {"predicted_index"}


def test_predict_validates_like_step(parts) -> None:
    dev = make_device(make_art(parts))
    X, _ = batches(parts, 1)[0]
    five = np.concatenate([X, X[:, :2]], axis=1)
    with pytest.raises(QCoreError, match="5 channels, the model expects 3"):
        dev.predict(five)
    with pytest.raises(QCoreError, match="time steps"):
        dev.predict(X[:, :, :-2])
    with pytest.raises(QCoreError, match="NaN"):
        dev.predict(np.full_like(X, np.nan))


def test_a_resumed_state_without_its_deployed_artifact_warns(parts, tmp_path) -> None:
    art = make_art(parts)
    dev = make_device(art, guard_margin=1.0)
    dev.step(*batches(parts, 1)[0])
    save_state(tmp_path / "s.qcore", dev.art)
    state = load_state(tmp_path / "s.qcore")
    with pytest.warns(UnguardedWarning, match="deployed="):
        unguarded = Device(state)
    assert unguarded.deployed is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Device(state, deployed=art).deployed is art
        Device(state, state.device.replace(reset_window=0))  # unguarded on purpose
        Device(art)  # a fresh artifact is its own deployed model


@pytest.mark.parametrize(
    ("phase", "target"),
    [
        ("judge", "deployed_right"),
        ("calibrate", "calibration_step"),
        ("record", "Runtime.consume"),
    ],
)
def test_an_exception_in_any_phase_leaves_the_device_as_it_was(
    parts, monkeypatch, phase: str, target: str
) -> None:
    art, data = make_art(parts), batches(parts, 2)
    dev = make_device(art, reset_window=2, reset_margin=1.0, policy="drift", drift=Scripted({2}))
    dev.step(*data[0], batch_id="b0")
    before, detector, head = encode_artifact(dev.art), dev.detector.to_dict(), dev.head

    def boom(*args, **kwargs):
        raise RuntimeError(phase)

    owner, name = (Runtime, "consume") if "." in target else (device_module, target)
    monkeypatch.setattr(owner, name, boom)
    with pytest.raises(RuntimeError, match=phase):
        dev.step(*data[1], batch_id="b1")
    assert encode_artifact(dev.art) == before and dev.detector.to_dict() == detector
    assert dev.head is head and not dev.consumed("b1")
    monkeypatch.undo()
    assert dev.step(*data[1], batch_id="b1").calibrated  # the same step, now whole


def test_consumed_ids_are_bounded_and_an_old_state_still_loads(parts, monkeypatch) -> None:
    """An old state (records of three, every consumed id) steps on and is written in the
    new form; a replay is refused while its id is among the last CONSUMED_LIMIT."""
    monkeypatch.setattr(runtime_module, "CONSUMED_LIMIT", 3)
    art = make_art(parts)
    old = {"recent": [[5, 6, 12]], "consumed": [f"old{i}" for i in range(10)], "resets": 1}
    state = replace(art, step=10, runtime=old)
    dev = Device(state, state.device.replace(guard_margin=1.0), deployed=art)
    assert dev.consumed("old9") and not dev.consumed("old6")
    for i, (X, y) in enumerate(batches(parts, 4)):
        dev.step(X, y, batch_id=f"b{i}")
        assert len(dev.art.runtime["consumed"]) == 3
    assert [dev.consumed(f"b{i}") for i in range(4)] == [False, True, True, True]
    assert all(len(r) == 5 for r in dev.art.runtime["recent"]) and dev.runtime.resets == 1


# ---------------------------------------------------------------------------------- CLI


def npz_bytes(X, y) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=X, y=y)
    return buf.getvalue()


def write_stream(parts, folder: Path, n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    folder.mkdir()
    data = batches(parts, n)
    for i, (X, y) in enumerate(data):
        (folder / f"b{i:02d}.npz").write_bytes(npz_bytes(X, y))
    return data


def qcore_cli() -> list[str]:
    """The ``qcore`` command as a fresh interpreter runs it."""
    return [sys.executable, "-m", "qcore.cli"]


def test_device_command_end_to_end(parts, tmp_path: Path) -> None:
    art_path, state = tmp_path / "model.qcore", tmp_path / "state.qcore"
    save_artifact(art_path, make_art(parts))
    write_stream(parts, tmp_path / "stream")
    cmd = [*qcore_cli(), "device", str(art_path), "--stream", str(tmp_path / "stream")]
    cmd += ["--state", str(state), "--set", "policy=every:2", "--set", "guard_margin=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 3
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert [r["calibrated"] for r in lines] == [False, True, False]
    for r in lines:
        assert {"accuracy", "latency_ms", "rolled_back", "calib_ms", "peak_rss_bytes"} <= set(r)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert load_state(state).step == 3
    assert json.loads(proc.stderr.strip().splitlines()[-1])["processed"] == 3


def test_device_command_skips_bad_batches_and_resumes(parts, tmp_path, capsys) -> None:
    art_path, state = tmp_path / "model.qcore", tmp_path / "state.qcore"
    save_artifact(art_path, make_art(parts))
    data = write_stream(parts, tmp_path / "s", 2)
    X, y = data[0]
    (tmp_path / "s" / "b00a.npz").write_bytes(npz_bytes(X[:, :2], y))  # wrong channels
    (tmp_path / "s" / "b00b.npz").write_bytes(b"not a zip")
    args = ["device", str(art_path), "--stream", str(tmp_path / "s"), "--state", str(state)]
    assert main(args) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("error" in r) for r in out] == [False, True, True, False]
    assert "2 channels" in out[1]["error"] and out[1]["batch"] == "b00a.npz"
    assert load_state(state).step == 2
    # resumed: the consumed batches are skipped, only new ones are processed
    for bad in ("b00a.npz", "b00b.npz"):
        (tmp_path / "s" / bad).unlink()
    X2, y2 = batches(parts, 3)[2]
    (tmp_path / "s" / "b02.npz").write_bytes(npz_bytes(X2, y2))
    assert main(args) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("step") for r in out] == [None, None, 3]
    assert [r.get("skipped") for r in out[:2]] == ["already consumed"] * 2
    assert main([*args, "--again"]) == 0  # asked for: every batch again
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("step") for r in out] == [4, 5, 6]


def test_stdin_framing(parts, tmp_path: Path) -> None:
    art_path, state = tmp_path / "model.qcore", tmp_path / "state.qcore"
    save_artifact(art_path, make_art(parts))
    frames = b""
    for X, y in batches(parts, 2):
        payload = npz_bytes(X, y)
        frames += struct.pack("<Q", len(payload)) + payload
    cmd = [*qcore_cli(), "device", str(art_path), "--stream", "-", "--state", str(state)]
    proc = subprocess.run(cmd, input=frames, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["batch"] for line in proc.stdout.splitlines()] == [
        "stdin:1",
        "stdin:2",
    ]


def test_read_frames_errors() -> None:
    payload = npz_bytes(np.zeros((1, 3, 32), np.float32), np.zeros(1, np.int64))
    ok = struct.pack("<Q", len(payload)) + payload
    got = list(read_frames(io.BytesIO(ok + ok[:20])))
    assert got[0] == ("stdin:1", payload)
    assert isinstance(got[1][1], QCoreError) and "inside a frame" in str(got[1][1])
    got = list(read_frames(io.BytesIO(struct.pack("<Q", 1 << 62))))  # absurd length, no data
    assert len(got) == 1 and isinstance(got[0][1], QCoreError)
    assert list(read_frames(io.BytesIO(b""))) == []


def test_load_batch_rejects_pickles_and_missing_keys() -> None:
    buf = io.BytesIO()
    np.savez(buf, X=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(QCoreError, match="Python objects"):
        load_batch(buf.getvalue(), "obj")
    only_x = io.BytesIO()
    np.savez(only_x, X=np.zeros((1, 3, 4), np.float32))
    X, y = load_batch(only_x.getvalue(), "x")  # no labels: a batch to predict only
    assert X.shape == (1, 3, 4) and y is None
    only_y = io.BytesIO()
    np.savez(only_y, y=np.zeros(1, np.int64))
    with pytest.raises(QCoreError, match="no array 'X'"):
        load_batch(only_y.getvalue(), "y")
    with pytest.raises(QCoreError, match="single .npy"):
        npy = io.BytesIO()
        np.save(npy, np.zeros(3))
        load_batch(npy.getvalue(), "npy")


def test_export_command(parts, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    art = make_art(parts)
    save_artifact(run / "deployed-4bit.qcore", art)
    save_artifact(run / "deployed-8bit.qcore", art)
    out = tmp_path / "ship.qcore"
    assert main(["export", str(run), "--bits", "4", "--out", str(out)]) == 0
    sizes = json.loads(capsys.readouterr().out)
    assert sizes["total"] == out.stat().st_size
    assert encode_artifact(load_artifact(out)) == encode_artifact(art)
    assert main(["export", str(run), "--bits", "2", "--out", str(out)]) == 2
    assert "bit-widths found: 4, 8" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--bits", "4", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    args = ["device", str(out), "--stream", str(tmp_path), "--state", str(tmp_path / "x" / "s")]
    assert main(args) == 2
    assert "folder of state file" in capsys.readouterr().err
    # an artifact a device cannot run (no flip network for its flip passes) is not shipped
    save_artifact(run / "deployed-2bit.qcore", replace(art, flipnet=None))
    other = tmp_path / "other.qcore"
    assert main(["export", str(run), "--bits", "2", "--out", str(other)]) == 2
    assert "cannot run on a device" in capsys.readouterr().err and not other.exists()


def test_add_commands_on_a_parser() -> None:
    parser = argparse.ArgumentParser(prog="qcore")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["device", "m.qcore", "--stream", "d", "--state", "s"])
    assert args.set is None and callable(args.func)
    args = parser.parse_args(["device", "m", "--stream", "d", "--state", "s", "--set", "a=b"])
    assert args.set == ["a=b"]


def test_flip_budget_caps_the_flips_of_a_device_step(parts) -> None:
    art = make_art(parts)
    n_codes = sum(layer.weight.q.size for layer in art.model.layers.values() if layer.quantized)
    X, y = batches(parts, 1)[0]
    free = make_device(art, guard="off", guard_margin=1.0, steps=1, budget=None).step(X, y)
    capped = make_device(art, guard="off", guard_margin=1.0, steps=1, budget=0.001).step(X, y)
    assert capped.flips <= int(0.001 * n_codes)
    assert capped.flips <= free.flips


# ------------------------------------------------------- the device as a user meets it


def test_unlabelled_batches_are_predicted_and_change_nothing(parts, tmp_path, capsys) -> None:
    art_path, state = tmp_path / "model.qcore", tmp_path / "state.qcore"
    art = make_art(parts)
    save_artifact(art_path, art)
    (tmp_path / "s").mkdir()
    X, y = batches(parts, 1)[0]
    buf = io.BytesIO()
    np.savez(buf, X=X)  # no labels: the field's usual batch
    (tmp_path / "s" / "b00.npz").write_bytes(buf.getvalue())
    args = ["device", str(art_path), "--stream", str(tmp_path / "s"), "--state", str(state)]
    assert main(args) == 0
    (line,) = [json.loads(row) for row in capsys.readouterr().out.splitlines()]
    assert line["labelled"] is False and line["calibrated"] is False
    assert line["accuracy"] is None and len(line["predicted"]) == len(X)
    assert set(line["predicted"]) <= {"a", "b", "c"}
    assert all(0.0 < p <= 1.0 for p in line["confidences"])
    saved = load_state(state)
    assert saved.step == 1
    for name, layer in art.model.layers.items():  # nothing calibrated
        np.testing.assert_array_equal(saved.model.layers[name].weight.q, layer.weight.q)
    expected = Device(art).predict(X)
    assert line["predicted"] == [art.class_names[k] for k in expected]


def test_labels_in_the_form_training_saw_them(parts) -> None:
    from qcore.edge.labels import read_labels

    def read(y, names, allow_new=False):
        return read_labels(np.array(y), names, allow_new)

    names = ("-1", "1")
    np.testing.assert_array_equal(read([-1, 1, 1], names)[0], [0, 1, 1])  # "-1" is a class
    np.testing.assert_array_equal(read(["1", "-1"], names)[0], [1, 0])
    np.testing.assert_array_equal(read([0, 1], ("x", "y"))[0], [0, 1])
    np.testing.assert_array_equal(read([0, -1, 1], ("x", "y"))[0], [0, -1, 1])  # unlabelled
    np.testing.assert_array_equal(read(["y", "", "x"], ("x", "y"))[0], [1, -1, 0])
    with pytest.raises(QCoreError, match="neither class names"):
        read([2], names)
    with pytest.raises(QCoreError, match="allow_new_classes"):
        read(["x", "z"], ("x", "y"))
    labels, new = read(["z", "x", "", "w", "z"], ("x", "y"), allow_new=True)
    np.testing.assert_array_equal(labels, [2, 0, -1, 3, 2])
    assert new == ("z", "w")
    assert read([7, 1], names, allow_new=True)[1] == ("7",)  # names only: 7 is a new name
    # through the device: text labels of the artifact's classes calibrate like indices
    art = make_art(parts)
    X, y = batches(parts, 1)[0]
    by_name = np.array([art.class_names[k] for k in y])
    a = make_device(art, guard_margin=1.0).step(X, by_name)
    b = make_device(art, guard_margin=1.0).step(X, y)
    assert a.accuracy == b.accuracy and a.flips == b.flips


def test_a_state_is_bound_to_its_artifact(parts, tmp_path, capsys) -> None:
    art_path, other, state = tmp_path / "a.qcore", tmp_path / "b.qcore", tmp_path / "s.qcore"
    save_artifact(art_path, make_art(parts))
    save_artifact(other, make_art(parts, harmful=True))  # another model
    write_stream(parts, tmp_path / "s", 1)
    run = ["device", "--stream", str(tmp_path / "s"), "--state", str(state)]
    assert main([run[0], str(art_path), *run[1:]]) == 0
    capsys.readouterr()
    assert main([run[0], str(other), *run[1:]]) == 2
    err = capsys.readouterr().err
    assert "grew from another artifact" in err and str(other) in err
    assert main([run[0], str(tmp_path / "gone.qcore"), *run[1:]]) == 2  # even with a state
    assert "does not exist" in capsys.readouterr().err
    assert load_state(state).step == 1  # untouched by the refused runs


def test_predictions_file_has_a_row_per_window(parts, tmp_path, capsys) -> None:
    import csv

    art_path, state = tmp_path / "model.qcore", tmp_path / "state.qcore"
    save_artifact(art_path, make_art(parts))
    data = write_stream(parts, tmp_path / "s", 2)
    out = tmp_path / "pred.csv"
    args = ["device", str(art_path), "--stream", str(tmp_path / "s"), "--state", str(state)]
    assert main([*args, "--predictions", str(out)]) == 0
    lines = [json.loads(row) for row in capsys.readouterr().out.splitlines()]
    header, *rows = list(csv.reader(out.open()))
    assert tuple(header) == PREDICTIONS_HEADER
    assert len(rows) == sum(len(X) for X, _ in data)
    first = [r for r in rows if r[0] == "b00.npz"]
    assert [r[3] for r in first] == lines[0]["predicted"]
    assert [float(r[4]) for r in first] == lines[0]["confidences"]
    assert [r[5] for r in first] == [""] * len(first)  # no novelty threshold: no novelty
    if lines[0]["margin"] is None:  # no streaming head: no margin
        assert [r[6] for r in first] == [""] * len(first)
    else:
        assert [float(r[6]) for r in first] == lines[0]["margin"]
    assert {r[1] for r in first} == {"1"}
    out.write_text("batch,step,window,predicted,confidence\n")  # an older qcore's file
    assert main([*args, "--predictions", str(out)]) == 2
    assert "has the columns batch,step,window,predicted,confidence" in capsys.readouterr().err
    assert out.read_text() == "batch,step,window,predicted,confidence\n"


# ------------------------------------------------------- decisions (mutation survivors)


def head_device(parts, **settings) -> tuple[Device, Artifact]:
    """A device with a streaming head (statistics of the deployed model's features of
    the tiny data), its backbone fixed: no flips, frozen BatchNorm."""
    _, X, y = parts
    art = make_art(parts)
    art = replace(art, head=batch_stats(forward_features(art.model, X)[1], y, 3))
    cfg = art.device.replace(head="slda", flip_steps=0, bn_mode="frozen", **settings)
    return Device(art, cfg), art


def test_a_device_with_a_fixed_backbone_still_updates_its_core(parts) -> None:
    dev = make_device(make_art(parts), steps=0, bn_mode="frozen", guard_margin=1.0)
    report = dev.step(*batches(parts, 1)[0])
    assert report.calibrated and report.core_acc_before is not None
    assert report.flips == 0 and not dev.runtime.backbone_moved


def test_backbone_calibration_is_given_the_current_models_correctness(parts, monkeypatch):
    dev = make_device(make_art(parts), guard_margin=1.0)
    X, y = batches(parts, 1)[0]
    y = y.copy()
    y[:4] = (y[:4] + 1) % 3  # some windows the model gets wrong
    expected = forward(dev.art.model, dev.normalize(X)).argmax(1) == y
    assert expected.any() and not expected.all()
    seen = []
    real = device_module.calibration_step

    def spy(model, core, net, X, y, batch_correct, *args):
        seen.append(batch_correct)
        return real(model, core, net, X, y, batch_correct, *args)

    monkeypatch.setattr(device_module, "calibration_step", spy)
    dev.step(X, y)
    np.testing.assert_array_equal(seen[0], expected)


def test_predict_takes_normalised_windows_as_they_are(parts) -> None:
    dev = make_device(make_art(parts))
    X = batches(parts, 1)[0][0]
    Xn = dev.normalize(X)
    np.testing.assert_array_equal(dev.predict(Xn, normalized=True), dev.predict(X))
    assert not np.array_equal(dev.predict(Xn), dev.predict(X))  # normalising twice differs


def test_a_device_without_its_deployed_artifact_cannot_reset(parts, tmp_path) -> None:
    dev = make_device(make_art(parts), guard_margin=1.0)
    dev.step(*batches(parts, 1)[0])
    save_state(tmp_path / "s.qcore", dev.art)
    state = load_state(tmp_path / "s.qcore")
    resumed = Device(state, state.device.replace(reset_window=0))
    with pytest.raises(QCoreError, match="^cannot reset: the device does not know its deployed"):
        resumed.reset()


def test_pseudo_labels_alone_feed_the_head_and_leave_the_backbone(parts) -> None:
    dev, art = head_device(parts, pseudo_threshold=0.01)
    X, _ = batches(parts, 1)[0]
    report = dev.step(X)  # no labels: every window is confident enough
    assert report.calibrated and report.pseudo_labels == len(X) and report.head_samples == 0
    assert dev.art.model is art.model and dev.art.core is art.core


def test_a_reset_streaming_head_is_solved_from_the_deployed_statistics(parts) -> None:
    dev, art = head_device(parts, guard_margin=1.0)
    for X, y in batches(parts, 2):
        dev.step(X, y)
    assert dev.predict(X).dtype == np.int64
    moved = dev.head
    dev.reset()
    assert dev.head is not None and moved is not None
    want = solve_head(art.head, dev.config)
    np.testing.assert_array_equal(dev.head[0], want[0])
    assert not np.array_equal(moved[0], want[0])  # the steps had moved it


def test_the_core_follows_the_update_rule_given(parts) -> None:
    art = make_art(parts)
    _, X, y = parts

    def rule(core, Xb, yb, correct, step):
        return Core(X[:2], y[:2], np.zeros(2, np.int64), np.full(2, step, np.int64))

    dev = Device(art, art.device.replace(guard_margin=1.0), update=rule)
    dev.step(*batches(parts, 1)[0])
    assert dev.art.core is not None and len(dev.art.core) == 2
    assert dev.art.core.origin.tolist() == [1, 1]


def test_pseudo_labels_go_to_unlabelled_windows_at_or_above_the_threshold(parts) -> None:
    plain, art = head_device(parts)
    X, y = batches(parts, 1)[0]
    assert plain.head is not None
    probs = plain.signals(X).confidence
    y = y.copy()
    y[::2] = -1  # every second window unlabelled
    tau = float(probs[::2].min())  # (on this tiny data the head is sure: 1.0)
    dev = Device(art, plain.config.replace(pseudo_threshold=tau))
    report = dev.step(X, y)
    assert report.head_samples == 6
    assert report.pseudo_labels == 6  # the unlabelled ones, the least sure included
    labelled = Device(art, plain.config)
    assert labelled.step(X, y).pseudo_labels == 0  # no threshold: no pseudo labels


def test_normalised_windows_are_float32_and_taken_as_they_are_by_step(parts) -> None:
    art = make_art(parts)
    X, y = batches(parts, 1)[0]
    one, other = make_device(art), make_device(art)
    Xn = one.normalize(X)
    assert Xn.dtype == np.float32
    assert one.step(Xn, y, normalized=True).predicted == other.step(X, y).predicted


def test_the_calibration_time_is_reported_in_milliseconds_and_zero_without_one(
    parts, monkeypatch
) -> None:
    clock = itertools.count(10)  # one second per reading
    monkeypatch.setattr(device_module.time, "perf_counter", lambda: float(next(clock)))
    dev = make_device(make_art(parts), guard_margin=1.0)
    X, y = batches(parts, 1)[0]
    unlabelled = dev.step(X)
    assert unlabelled.calib_ms == 0.0 and not unlabelled.calibrated  # no labels
    assert unlabelled.latency_ms == 1000.0 / len(X)  # per window
    assert (unlabelled.n, unlabelled.n_labelled) == (len(X), 0)
    report = dev.step(X, y)  # the readings: predict 13 and 14, calibrate 15 and 16
    assert report.calibrated and report.calib_ms == 1000.0


def test_confidences_are_reported_to_four_digits(parts) -> None:
    dev = make_device(make_art(parts))
    X, _ = batches(parts, 1)[0]
    probs = dev.signals(X).confidence
    confidences = dev.step(X).confidences
    assert confidences == [round(float(p), 4) for p in probs]
    assert confidences != [round(float(p), 5) for p in probs]


def test_windows_of_a_new_class_stay_out_of_the_backbones_core(parts) -> None:
    """A class the device learns is for the streaming head alone: the core, which
    calibrates the model's own classes, never takes its windows."""
    plain, art = head_device(parts, guard_margin=1.0)
    dev = Device(art, plain.config, allow_new_classes=True)
    X, y = batches(parts, 1)[0]
    names = np.array(["a", "b", "c"])[y]
    names[:6] = "d"  # half the batch of a class the model does not have
    report = dev.step(X, names)
    assert report.new_classes == ["d"] and report.calibrated
    assert dev.art.core is not None and (dev.art.core.y < 3).all()
    assert (dev.art.core.origin == 1).any()  # the batch's other windows could enter


def test_a_batch_of_class_0_alone_is_labelled_and_judged_at_window_1(parts) -> None:
    dev = make_device(make_art(parts), reset_window=1, guard_margin=1.0)
    X, y = batches(parts, 1)[0]
    report = dev.step(X, np.zeros_like(y))
    assert report.labelled and report.n_labelled == len(X) and not report.drift
    assert report.head_samples == 0 and not report.head_solved  # the model's own head
    assert len(dev.runtime.recent) == 1 and dev.runtime.recent[0].n == len(X)


def test_an_unguarded_device_steps_on_labels_without_judging(parts, tmp_path) -> None:
    dev = make_device(make_art(parts), guard_margin=1.0)
    dev.step(*batches(parts, 1)[0])
    save_state(tmp_path / "s.qcore", dev.art)
    with pytest.warns(UnguardedWarning):
        unguarded = Device(load_state(tmp_path / "s.qcore"))
    report = unguarded.step(*batches(parts, 2)[1])
    assert report.calibrated and not report.reset
    assert unguarded.runtime.recent == dev.runtime.recent  # nothing judged, nothing added


def test_the_unguarded_warning_names_step_and_window(parts, tmp_path) -> None:
    art = make_art(parts)
    dev = make_device(art, guard_margin=1.0)
    dev.step(*batches(parts, 1)[0])
    save_state(tmp_path / "s.qcore", dev.art)
    state = load_state(tmp_path / "s.qcore")
    cfg = state.device.replace(reset_window=1)
    with pytest.warns(UnguardedWarning, match=r"step 1 .*\(reset_window=1\)"):
        resumed = Device(state, cfg)
    assert resumed.art.device == cfg  # the settings given are the ones recorded
