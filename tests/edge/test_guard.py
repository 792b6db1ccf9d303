"""The user guard's decision (:func:`qcore.edge.guard.reset_reason`): margin, window, level."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.config import DeviceConfig
from qcore.edge import guard
from qcore.edge.guard import guard_record, reset_reason, sign_test
from qcore.edge.head import Solved
from qcore.edge.runtime import GuardRecord


def window(mine: int, theirs: int, n: int = 100) -> list[GuardRecord]:
    """Two batches, ``n`` windows in all; over them the device is right on ``mine`` and
    the deployed model on ``theirs`` (each right alone as little as that allows)."""
    halves = [(mine // 2, theirs // 2, n // 2)]
    halves.append((mine - mine // 2, theirs - theirs // 2, n - n // 2))
    return [GuardRecord.from_list(list(h)) for h in halves]


def judge(records: list[GuardRecord], margin: float, moved: bool = True, **kw) -> str | None:
    cfg = DeviceConfig(reset_window=len(records), reset_margin=margin, reset_alpha=None, **kw)
    return reset_reason(records, moved, cfg)


@pytest.mark.parametrize("margin", [0.05, 0.1, 0.2])
def test_a_positive_margin_resets_just_past_it_and_not_just_inside(margin: float) -> None:
    """Deployed model right on 60 of 100 windows: the device resets when it is lower by
    more than the margin (2 windows past it), not when it is lower by less (2 inside)."""
    edge = round(60 - 100 * margin)  # the device's count at exactly the margin
    assert judge(window(edge + 2, 60), margin) is None  # inside the margin
    reason = judge(window(edge - 2, 60), margin)  # past it
    assert reason is not None and "returned to the deployed model" in reason
    assert f"accuracy {(edge - 2) / 100:.3f}" in reason and "the deployed model 0.600" in reason


def test_a_device_better_than_the_deployed_model_is_never_reset() -> None:
    for margin in (0.0, 0.05, 0.5):
        assert judge(window(80, 60), margin) is None


def test_equal_accuracy_is_no_reason_at_margin_zero() -> None:
    assert judge(window(60, 60), 0.0) is None
    assert judge(window(58, 60), 0.0) is not None


def test_only_a_full_window_is_judged() -> None:
    records = window(10, 60)
    cfg = DeviceConfig(reset_window=3, reset_margin=0.05, reset_alpha=None)
    assert reset_reason(records, True, cfg) is None  # two batches of three
    assert reset_reason([*records, records[0]], True, cfg) is not None


def test_the_level_applies_only_while_the_backbone_has_not_moved() -> None:
    """4 windows lost, none won (p = 1/16): a strict level keeps a head-only device, a
    moved backbone is reset on the margin alone."""
    records = [GuardRecord(48, 50, 100, 0, 2), GuardRecord(48, 50, 100, 0, 2)]
    strict = DeviceConfig(reset_window=2, reset_margin=0.01, reset_alpha=0.05)
    assert reset_reason(records, False, strict) is None
    assert reset_reason(records, True, strict) is not None
    loose = DeviceConfig(reset_window=2, reset_margin=0.01, reset_alpha=0.1)
    reason = reset_reason(records, False, loose)
    assert reason is not None and "p = 0.0625" in reason


def test_a_record_counts_each_side_alone() -> None:
    right = np.array([1, 1, 0, 0, 1], bool)
    theirs = np.array([1, 0, 1, 0, 0], bool)
    assert guard_record(right, theirs) == GuardRecord(3, 2, 5, 2, 1)


def test_a_record_counts_the_deployed_model_alone_apart_from_both_right() -> None:
    """Both right on three windows, the deployed model alone right on one: its count
    alone is 1, not the 3 they share."""
    right = np.array([1, 1, 1, 0, 1, 0], bool)
    theirs = np.array([1, 1, 1, 1, 0, 0], bool)
    assert guard_record(right, theirs) == GuardRecord(4, 4, 6, 1, 1)


def test_one_window_is_judged_and_an_empty_window_is_not() -> None:
    cfg = DeviceConfig(reset_window=1, reset_margin=0.0, reset_alpha=None)
    reason = reset_reason([GuardRecord(0, 1, 1, 0, 1)], True, cfg)
    assert reason is not None and "accuracy 0.000" in reason
    assert reset_reason([GuardRecord(0, 0, 0, 0, 0)], True, cfg) is None


def test_the_reason_without_a_level_is_the_two_accuracies_alone() -> None:
    records = [GuardRecord(48, 50, 100, 0, 2), GuardRecord(48, 50, 100, 0, 2)]
    cfg = DeviceConfig(reset_window=2, reset_margin=0.01, reset_alpha=0.05)
    expected = (
        "accuracy 0.480 on the last 2 labelled batches, the deployed model 0.500: "
        "returned to the deployed model"
    )
    assert reset_reason(records, True, cfg) == expected  # moved: the margin alone
    assert judge(records, 0.01, moved=False) == expected  # no level


def test_a_p_value_equal_to_the_level_keeps_the_device() -> None:
    """p = 1/16 exactly: the difference must be below the level to count."""
    records = [GuardRecord(48, 50, 100, 0, 2), GuardRecord(48, 50, 100, 0, 2)]
    at = DeviceConfig(reset_window=2, reset_margin=0.01, reset_alpha=1 / 16)
    assert reset_reason(records, False, at) is None
    past = DeviceConfig(reset_window=2, reset_margin=0.01, reset_alpha=1 / 16 + 1e-9)
    assert reset_reason(records, False, past) is not None


def test_the_sign_test_by_hand() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(4, 0) == 1 / 16
    assert sign_test(3, 1) == 5 / 16  # C(4,3) + C(4,4) of 16
    assert sign_test(0, 5) == 1.0


class _Forward:
    """Stand-in for :func:`qcore.edge.infer.forward_features`: fixed logits and features,
    and how often it ran."""

    def __init__(self, logits: np.ndarray, features: np.ndarray) -> None:
        self.out = (logits, features)
        self.calls = 0

    def __call__(self, model: object, Xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return self.out


def test_deployed_right_reuses_the_devices_pass_and_runs_one_when_it_must(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deployed predictions come from the device's own logits and features when it
    passes them, and from one forward pass of the deployed model when it passes none or
    passes no features for a streaming head."""
    labels = np.array([0, 1, 1])
    eye = np.eye(2, dtype=np.float32)
    head = Solved(eye, np.zeros(2, np.float32), eye)  # the head predicts the larger feature
    forward = _Forward(eye[[0, 1, 0]], eye[[1, 1, 1]])  # model: 0 1 0, features: 1 1 1
    monkeypatch.setattr(guard, "forward_features", forward)
    own = (eye[[1, 1, 1]], eye[[0, 0, 1]])  # device: 1 1 1, features: 0 0 1
    X = np.zeros((3, 1, 4), np.float32)

    assert guard.deployed_right("model", None, X, labels, None).tolist() == [1, 1, 0]
    assert forward.calls == 1
    assert guard.deployed_right("model", None, X, labels, own).tolist() == [0, 1, 1]
    assert guard.deployed_right("model", head, X, labels, own).tolist() == [1, 0, 1]
    assert forward.calls == 1  # the device's pass was enough
    got = guard.deployed_right("model", head, X, labels, (own[0], None))
    assert got.tolist() == [0, 1, 1] and forward.calls == 2


def test_the_unguarded_warning_says_how_to_guard_or_to_opt_out() -> None:
    assert str(guard.unguarded(7, 4)) == (
        "the device resumes a state at step 7 without its deployed artifact: the user "
        "guard (reset_window=4) cannot compare with the deployed model and is off; pass "
        "deployed=<the artifact the state grew from> to run it (qcore device does), or set "
        "reset_window=0 to run unguarded knowingly"
    )
