"""Page-Hinkley drift detection on a confidence stream."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.edge.drift import PageHinkley
from qcore.errors import QCoreError


def first_fire(det: PageHinkley, values: np.ndarray) -> int | None:
    for i, v in enumerate(values):
        if det.update(float(v)):
            return i
    return None


@pytest.mark.parametrize("drop", [0.1, 0.2, 0.4])
def test_step_drop_fires_within_a_few_steps(drop: float) -> None:
    rng = np.random.default_rng(0)
    before = 0.9 + rng.normal(0, 0.02, 50)
    after = 0.9 - drop + rng.normal(0, 0.02, 20)
    det = PageHinkley()
    assert first_fire(det, before) is None
    hit = first_fire(det, after)
    assert hit is not None and hit <= 3, hit


@pytest.mark.parametrize("seed", range(5))
def test_stationary_noisy_stream_does_not_fire(seed: int) -> None:
    values = 0.85 + np.random.default_rng(seed).normal(0, 0.02, 1000)
    assert first_fire(PageHinkley(), values) is None


def test_rise_in_confidence_does_not_fire() -> None:
    values = np.concatenate([np.full(30, 0.6), np.full(30, 0.95)])
    assert first_fire(PageHinkley(), values) is None


def test_resets_after_firing_and_respects_min_samples() -> None:
    det = PageHinkley(min_samples=5)
    assert first_fire(det, np.array([0.9, 0.9, 0.1, 0.1])) is None  # only 4 samples so far
    assert det.update(0.1) is True
    assert (det.n, det.mean, det.cum, det.cum_min) == (0, 0.0, 0.0, 0.0)
    # the post-drift level is the new reference: staying there does not fire again
    assert first_fire(det, np.full(50, 0.1)) is None


def test_deterministic_and_state_round_trip() -> None:
    values = 0.9 + np.random.default_rng(3).normal(0, 0.05, 40)
    values[25:] -= 0.3
    a = PageHinkley()
    fired_a = [a.update(v) for v in values]
    b = PageHinkley()
    fired_b = [b.update(v) for v in values[:20]]
    b = PageHinkley.from_dict(b.to_dict())  # what the device persists between runs
    fired_b += [b.update(v) for v in values[20:]]
    assert fired_a == fired_b and any(fired_a)
    assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0}, {"delta": -1}, {"alpha": 0}, {"alpha": 1.5}, {"min_samples": -1}],
)
def test_bad_parameters_rejected(kwargs: dict) -> None:
    with pytest.raises(QCoreError):
        PageHinkley(**kwargs)


def test_bad_input_and_state_rejected() -> None:
    with pytest.raises(QCoreError, match="finite"):
        PageHinkley().update(float("nan"))
    with pytest.raises(QCoreError, match="unknown"):
        PageHinkley.from_dict({"bogus": 1})
    with pytest.raises(QCoreError):
        PageHinkley.from_dict({"mean": "x"})
