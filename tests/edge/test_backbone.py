"""Backbone calibration's rollback guard: a step is undone when accuracy on the old core
*or* on the batch drops by more than ``guard_margin`` (either one is enough)."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.config import DeviceConfig
from qcore.coreset.core import Core
from qcore.edge import backbone
from qcore.edge.flip_passes import FlipStepResult

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
    result = FlipStepResult(candidate, np.stack([np.ones(2 * N, bool), after]), 7, 0)
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
    assert res.flips == 7  # what the passes did is reported either way


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
