"""The user guard's decision (:func:`qcore.edge.guard.reset_reason`): margin, window, level."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.config import DeviceConfig
from qcore.edge.guard import guard_record, reset_reason
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
