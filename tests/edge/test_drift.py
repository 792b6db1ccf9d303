"""The drift detectors: Page-Hinkley on a confidence stream, the novelty trigger."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.config import DeviceConfig
from qcore.edge.drift import NoveltyTrigger, PageHinkley
from qcore.edge.schedule import is_due, make_detector, pseudo_labelled
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


def reference(values, delta, threshold, alpha, min_samples) -> list[bool]:
    """The detector as its module docstring states it, written out again."""
    fired, xs, m, m_min = [], [], 0.0, 0.0
    for x in values:
        xs.append(x)
        mean = sum(xs) / len(xs)
        m = alpha * m + (mean - x - delta)
        m_min = min(m_min, m)
        fire = len(xs) >= min_samples and m - m_min > threshold
        fired.append(fire)
        if fire:
            xs, m, m_min = [], 0.0, 0.0
    return fired


@pytest.mark.parametrize(
    ("delta", "threshold", "alpha", "min_samples"),
    [(0.02, 0.15, 1.0, 5), (0.0, 0.05, 0.7, 1), (0.05, 0.3, 0.9, 3), (0.01, 0.1, 1.0, 0)],
)
def test_decisions_follow_the_stated_recurrence(delta, threshold, alpha, min_samples) -> None:
    rng = np.random.default_rng(11)
    values = np.concatenate([0.9 + rng.normal(0, 0.05, 40), 0.6 + rng.normal(0, 0.05, 40)])
    values = np.concatenate([values, 0.3 + rng.normal(0, 0.05, 40), np.full(20, 0.95)])
    det = PageHinkley(delta=delta, threshold=threshold, alpha=alpha, min_samples=min_samples)
    fired = [det.update(float(v)) for v in values]
    expected = reference(values.tolist(), delta, threshold, alpha, min_samples)
    assert fired == expected and sum(fired) >= 2


def test_the_evidence_must_exceed_the_threshold() -> None:
    # dyadic values, exact in floating point: after 1.0 then 0.0, m_2 - M_2 is exactly 0.5
    at_threshold = PageHinkley(delta=0.0, threshold=0.5, min_samples=2)
    assert [at_threshold.update(v) for v in (1.0, 0.0)] == [False, False]
    assert (at_threshold.n, at_threshold.mean, at_threshold.cum) == (2, 0.5, 0.5)
    assert at_threshold.cum_min == 0.0
    below = PageHinkley(delta=0.0, threshold=0.25, min_samples=2)
    assert [below.update(v) for v in (1.0, 0.0)] == [False, True]


def test_it_fires_as_soon_as_it_has_min_samples() -> None:
    for min_samples in (1, 2, 3):
        det = PageHinkley(delta=0.0, threshold=0.25, min_samples=min_samples)
        # evidence 0.5 from the second value on, never lower: fires at max(2, min_samples)
        values = [1.0, 0.0, 0.0, 0.0]
        fired = [det.update(v) for v in values]
        assert fired.index(True) == max(2, min_samples) - 1


def test_the_running_state_after_each_value() -> None:
    det = PageHinkley(delta=0.125, threshold=100.0, alpha=0.5)
    det.update(1.0)  # mean 1, m = 0.5 * 0 + (1 - 1 - 0.125)
    assert (det.n, det.mean, det.cum, det.cum_min) == (1, 1.0, -0.125, -0.125)
    det.update(0.0)  # mean 0.5, m = 0.5 * -0.125 + (0.5 - 0 - 0.125)
    assert (det.n, det.mean, det.cum, det.cum_min) == (2, 0.5, 0.3125, -0.125)


def test_defaults_are_the_documented_ones() -> None:
    assert PageHinkley().to_dict() == {
        "delta": 0.02,
        "threshold": 0.15,
        "alpha": 1.0,
        "min_samples": 5,
        "n": 0,
        "mean": 0.0,
        "cum": 0.0,
        "cum_min": 0.0,
    }


@pytest.mark.parametrize(
    "kwargs", [{"delta": 0.0}, {"alpha": 1.0}, {"min_samples": 0}, {"threshold": 1e-9}]
)
def test_boundary_parameters_accepted(kwargs: dict) -> None:
    assert PageHinkley(**kwargs).to_dict()[next(iter(kwargs))] == next(iter(kwargs.values()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delta": True}, "delta must be a number, got True"),
        ({"threshold": "0.1"}, "threshold must be a number"),
        ({"alpha": float("inf")}, "alpha must be finite, got inf"),
        ({"cum": float("nan")}, "cum must be finite"),
        ({"threshold": -0.1}, r"^Page-Hinkley needs delta >= 0 and threshold > 0$"),
        ({"delta": -1e-9}, r"delta >= 0 and threshold > 0"),
        ({"alpha": 1.0000001}, r"alpha must lie in \(0, 1\], got 1.0000001"),
        ({"alpha": -0.5}, r"alpha must lie in \(0, 1\]"),
        ({"min_samples": True}, "min_samples must be an integer >= 0, got True"),
        ({"min_samples": 2.0}, "min_samples must be an integer"),
        ({"n": -1}, "n must be an integer >= 0, got -1"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(QCoreError, match=match):
        PageHinkley(**kwargs)


def test_infinite_input_and_a_state_that_is_no_mapping_are_rejected() -> None:
    with pytest.raises(QCoreError, match="input must be finite, got -inf"):
        PageHinkley().update(float("-inf"))
    with pytest.raises(QCoreError, match="^Page-Hinkley state must be a mapping$"):
        PageHinkley.from_dict([("n", 1)])
    with pytest.raises(QCoreError, match="unknown Page-Hinkley fields: bogus, extra$"):
        PageHinkley.from_dict({"extra": 1, "bogus": 2, "n": 0})


# ------------------------------------------------------------------- novelty trigger


def test_the_novelty_trigger_enters_at_its_share_and_leaves_at_its_release() -> None:
    trig = NoveltyTrigger(enter=0.7, leave=0.05)
    shares = [0.1, 0.69, 0.7, 0.3, 0.06, 0.05, 0.5, 0.7, 0.0]
    fired = [trig.update(s) for s in shares]
    assert fired == [False, False, True, True, True, False, False, True, False]
    assert trig.to_dict() == {"active": False}


@pytest.mark.parametrize(("enter", "leave"), [(0.5, 0.5), (0.3, 0.6), (1.2, 0.1), (0.5, -0.1)])
def test_a_trigger_that_leaves_before_it_enters_is_refused(enter, leave) -> None:
    with pytest.raises(
        QCoreError, match=r"drift_release .* must lie below drift_share .*, both in \[0, 1\]$"
    ):
        NoveltyTrigger(enter=enter, leave=leave)


def test_the_trigger_takes_the_ends_of_its_ranges() -> None:
    assert NoveltyTrigger(enter=1.0, leave=0.0).update(1.0)
    with pytest.raises(QCoreError, match="active must be true or false, got 1"):
        NoveltyTrigger(0.5, 0.1, active=1)  # type: ignore[arg-type]


def test_pseudo_labels_go_to_unlabelled_windows_at_or_above_the_threshold() -> None:
    conf = np.array([0.9, 0.5, 0.7, 0.95])
    labels = np.array([-1, -1, -1, 2])
    assert pseudo_labelled(0.7, labels, conf).tolist() == [True, False, True, False]
    assert pseudo_labelled(0.7, None, conf).tolist() == [True, False, True, True]
    assert pseudo_labelled(None, labels, conf) is None
    assert pseudo_labelled(0.96, labels, conf) is None  # none chosen: None


def test_a_novel_share_outside_zero_one_is_refused() -> None:
    with pytest.raises(QCoreError, match="novel share lies in"):
        NoveltyTrigger(0.7, 0.05).update(1.5)


def test_the_detector_is_the_novelty_trigger_only_with_a_head_and_a_threshold() -> None:
    cfg = DeviceConfig(novelty_threshold=50.0, drift_share=0.6, drift_release=0.1)
    trig = make_detector(cfg, True, {"active": True})
    assert trig == NoveltyTrigger(0.6, 0.1, True)  # resumed in drift
    assert make_detector(cfg, True, None) == NoveltyTrigger(0.6, 0.1, False)
    # a Page-Hinkley state saved before the device had novelty starts the trigger afresh
    assert make_detector(cfg, True, PageHinkley(n=3).to_dict()) == NoveltyTrigger(0.6, 0.1)
    saved = PageHinkley(n=3, mean=0.9).to_dict()
    assert make_detector(cfg, False, saved) == PageHinkley(n=3, mean=0.9)
    assert make_detector(DeviceConfig(), True, saved) == PageHinkley(n=3, mean=0.9)
    given = PageHinkley(threshold=0.5)
    got = make_detector(DeviceConfig(), True, None, given)
    assert got == given and got is not given
    assert make_detector(DeviceConfig(), True, {"active": True}) == PageHinkley()


def test_the_drift_policy_asks_the_trigger_with_the_batchs_novel_share() -> None:
    cfg = DeviceConfig(novelty_threshold=1.0, policy="drift")
    trig = NoveltyTrigger(0.5, 0.1)
    conf = np.full(4, 0.99)
    assert is_due(cfg.schedule, cfg, 1, trig, conf, np.array([2.0, 2.0, 0.1, 0.1])) == (True, True)
    assert is_due(cfg.schedule, cfg, 2, trig, conf, np.array([0.1, 0.1, 0.1, 0.1])) == (
        False,
        False,
    )
    every = DeviceConfig(policy="every:2").schedule
    assert is_due(every, cfg, 2, trig, conf, np.full(4, 9.0)) == (True, False)
    assert is_due(every, cfg, 3, trig, conf, np.full(4, 9.0)) == (False, False)
    ph = PageHinkley(min_samples=1, threshold=0.1)
    assert is_due(cfg.schedule, cfg, 1, ph, np.full(4, 0.9), None) == (False, False)
    assert is_due(cfg.schedule, cfg, 2, ph, np.full(4, 0.2), None) == (True, True)
