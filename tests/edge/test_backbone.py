"""Backbone calibration's rollback guard: a step is undone when accuracy on the old core
*or* on the batch drops by more than ``guard_margin`` (either one is enough)."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.config import DeviceConfig
from qcore.coreset.core import Core, update_core
from qcore.coreset.scores import pass_misses
from qcore.edge import backbone
from qcore.edge.flip_passes import FlipStepResult
from qcore.edge.head import empty_stats
from qcore.errors import QCoreError

N = 20  # windows in the core and in the batch: one window is 0.05 of accuracy


@pytest.fixture(scope="module")
def setup(tiny_model, tiny_xy):
    X, y = tiny_xy
    qm = to_qmodel(quantize_model(tiny_model, 4, X, 0))
    core = Core(X[:N], y[:N], np.ones(N, np.int64), np.full(N, -1, np.int64))
    return qm, core, X[N : 2 * N], y[N : 2 * N]


def step_with(
    setup, monkeypatch, core_right: int, batch_right: int, candidate=None, margin: float = 0.1
):
    """A calibration step whose flip passes give a new model right on ``core_right`` of the
    core's windows and ``batch_right`` of the batch's, where the old model was right on
    every window of both (``candidate``: the new model, default a copy of the old)."""
    qm, core, Xb, yb = setup
    candidate = qm.copy() if candidate is None else candidate
    after = np.zeros(2 * N, bool)
    after[:core_right] = True
    after[N : N + batch_right] = True
    result = FlipStepResult(candidate, np.stack([np.ones(2 * N, bool), after]), 7, 2)
    monkeypatch.setattr(backbone, "flip_calibrate", lambda *a, **k: result)
    monkeypatch.setattr(backbone, "predict", lambda model, X: core.y.copy())  # all right
    cfg = DeviceConfig(guard_margin=margin, flip_steps=1)
    res = backbone.calibration_step(qm, core, None, Xb, yb, np.ones(N, bool), 1, cfg)
    assert (res.core_acc_before, res.core_acc_after) == (1.0, core_right / N)
    assert res.batch_acc_after == batch_right / N
    return res, candidate


@pytest.mark.parametrize(
    ("core_right", "batch_right", "rolled_back"),
    [
        (N, N, False),  # nothing dropped
        (N - 1, N - 1, False),  # both dropped by 0.05, inside the margin
        (N - 3, N, True),  # the core alone dropped past the margin
        (N, N - 3, True),  # the batch alone dropped past the margin
        (N - 3, N - 3, True),
    ],
)
def test_either_drop_past_the_margin_rolls_back(
    setup, monkeypatch, core_right, batch_right, rolled_back
) -> None:
    qm, core = setup[0], setup[1]
    res, candidate = step_with(setup, monkeypatch, core_right, batch_right)
    assert res.rolled_back is rolled_back
    if rolled_back:
        assert res.model is qm and res.core is core  # nothing of the step is kept
    else:
        assert res.model is candidate and res.core is not core
    assert (res.flips, res.passes_rejected) == (7, 2)  # reported either way


def test_a_drop_of_exactly_the_margin_is_kept(setup, monkeypatch) -> None:
    """ "More than the margin": 5 of 20 windows (0.25, exact in binary) at margin 0.25."""
    for right, rolled_back in ((N - 5, False), (N - 6, True)):
        for core_right, batch_right in ((right, N), (N, right)):
            res, _ = step_with(setup, monkeypatch, core_right, batch_right, margin=0.25)
            assert res.rolled_back is rolled_back


def test_a_non_finite_candidate_is_rolled_back(setup, monkeypatch) -> None:
    qm = setup[0]
    broken = qm.copy()
    name = next(iter(broken.norms))
    broken.norms[name].running_var = np.full_like(broken.norms[name].running_var, np.inf)
    res, _ = step_with(setup, monkeypatch, N, N, candidate=broken)
    assert res.rolled_back and res.model is qm


def test_a_step_without_a_core_calibrates_on_the_batch_alone(setup, monkeypatch) -> None:
    qm, _, Xb, yb = setup
    after = np.arange(N) % 4 != 0  # the candidate is right on 15 of the 20 windows
    seen = []

    def passes(model, X, y, net, **kw):
        seen.append((X, y))
        return FlipStepResult(model.copy(), np.stack([np.ones(N, bool), after]), 3, 1)

    monkeypatch.setattr(backbone, "flip_calibrate", passes)
    cfg = DeviceConfig(guard_margin=0.5, flip_steps=1)
    res = backbone.calibration_step(qm, None, None, Xb, yb, np.ones(N, bool), 1, cfg)
    assert seen[0][0] is Xb and seen[0][1] is yb
    assert res.core is None and not res.rolled_back and res.model is not qm
    assert (res.core_acc_before, res.core_acc_after, res.batch_acc_after) == (None, None, 0.75)


def test_a_kept_step_updates_the_core_with_the_rule_given(setup, monkeypatch) -> None:
    qm, core, Xb, yb = setup
    calls = []

    def rule(old, X, y, correct, step):
        calls.append(step)
        return Core(X[:3], y[:3], np.zeros(3, np.int64), np.full(3, step, np.int64))

    flips = FlipStepResult(qm.copy(), np.ones((2, 2 * N), bool), 0, 0)
    monkeypatch.setattr(backbone, "flip_calibrate", lambda *a, **k: flips)
    cfg = DeviceConfig(flip_steps=1)
    res = backbone.calibration_step(qm, core, None, Xb, yb, np.ones(N, bool), 5, cfg, rule)
    assert calls == [5] and res.core is not None
    assert len(res.core) == 3 and (res.core.origin == 5).all()


def test_qcore_update_draws_with_the_configured_mode_quota_and_seed(setup) -> None:
    """The default rule is :func:`update_core` with the settings of ``DeviceConfig``:
    with ``old_quota=1`` the whole core stays old although only the batch was missed."""
    _, core, Xb, yb = setup
    correct = np.ones((2, 2 * N), bool)
    correct[:, N:] = False  # every batch window missed, every core window right
    cfg = DeviceConfig(core_mode="balanced", old_quota=1.0, seed=3)
    rule = backbone.QCoreUpdate.from_config(cfg)
    assert rule == backbone.QCoreUpdate("balanced", 1.0, 3)
    kept = rule(core, Xb, yb, correct, 4)
    direct = update_core(
        core, Xb, yb, pass_misses(correct), 4, backbone.step_rng(3, 4), "balanced", 1.0
    )
    np.testing.assert_array_equal(kept.X, direct.X)
    np.testing.assert_array_equal(kept.origin, direct.origin)
    assert (kept.origin == -1).all()  # the quota: old windows only
    mixed = np.random.default_rng(0).random((2, 2 * N)) < 0.5
    balanced = backbone.QCoreUpdate("balanced", None, 3)(core, Xb, yb, mixed, 4)
    direct = update_core(core, Xb, yb, pass_misses(mixed), 4, backbone.step_rng(3, 4), "balanced")
    np.testing.assert_array_equal(balanced.X, direct.X)
    proportional = backbone.QCoreUpdate(seed=3)(core, Xb, yb, mixed, 4)
    assert not np.array_equal(balanced.X, proportional.X)  # the mode matters here
    for other in (backbone.QCoreUpdate("balanced", None, 3), backbone.QCoreUpdate(seed=3)):
        assert (other(core, Xb, yb, correct, 4).origin == 4).any()


def test_moves_backbone() -> None:
    assert not backbone.moves_backbone(DeviceConfig(flip_steps=0, bn_mode="frozen"))
    assert backbone.moves_backbone(DeviceConfig(flip_steps=1, bn_mode="frozen"))
    assert backbone.moves_backbone(DeviceConfig(flip_steps=0, bn_mode="reestimate"))


def test_the_head_rounded_to_bits_is_float32_and_per_class(monkeypatch) -> None:
    """2 bits, each class on its own grid: steps of 1/3 from 0, steps of 1 from -1."""
    weight = np.array([[0.0, 0.1, 0.35, 1.0], [-1.0, -0.4, 0.6, 2.0]], np.float32)
    bias = np.zeros(2, np.float32)
    monkeypatch.setattr(backbone, "solve", lambda stats, shrinkage: (weight, bias))
    w, b, _ = backbone.solve_head(empty_stats(2, 4), DeviceConfig(head_bits=2))
    assert w.dtype == np.float32 and b.dtype == np.float32
    np.testing.assert_array_equal(b, bias)
    np.testing.assert_allclose(w, [[0.0, 0.0, 1 / 3, 1.0], [-1.0, 0.0, 1.0, 2.0]], atol=1e-6)
    with pytest.raises(QCoreError, match="^the streaming head needs its statistics$"):
        backbone.solve_head(None, DeviceConfig())


def test_finiteness_covers_float_layers(setup) -> None:
    qm = setup[0].copy()
    name = next(iter(qm.layers))
    layer = qm.layers[name]
    layer.weight = np.zeros(layer.weight.q.shape, np.float32)  # a layer kept in float
    assert backbone.finite(qm)
    layer.weight[(0,) * layer.weight.ndim] = np.nan
    assert not backbone.finite(qm)
