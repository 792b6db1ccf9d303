"""Calibration metrics on small cases computed by hand: reliability bins, expected
calibration error and AUROC (ties counted half)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qcore.eval.metrics import auroc, ece, reliability

# bins 3, 6 and 9 of 10; 1.0 belongs to the last bin, not to an eleventh
CONF = np.array([0.95, 0.95, 1.0, 0.65, 0.62, 0.35])
RIGHT = np.array([True, True, False, True, True, False])


def test_reliability_bins_by_hand():
    bins = reliability(CONF, RIGHT)
    assert [b[2] for b in bins] == [1, 2, 3]
    assert bins[0] == pytest.approx((0.35, 0.0, 1))
    assert bins[1] == pytest.approx((0.635, 1.0, 2))
    assert bins[2] == pytest.approx((2.9 / 3, 2 / 3, 3))
    assert all(isinstance(v, float) for b in bins for v in b[:2])
    assert all(isinstance(b[2], int) for b in bins)  # plain Python: strict JSON as is


def test_ece_by_hand():
    # |acc - conf| per bin, weighted by count: (1 * 0.35 + 2 * 0.365 + 3 * 0.3) / 6
    assert ece(CONF, RIGHT) == pytest.approx(0.33)
    # 1.0 in a bin of its own would give (0.35 + 0.73 + 2 * 0.05 + 1.0) / 6
    assert ece(CONF, RIGHT) != pytest.approx((0.35 + 0.73 + 0.1 + 1.0) / 6)
    # a calibrated bin: confidence 0.8, 8 of 10 right
    assert ece(np.full(10, 0.8), np.arange(10) < 8) == pytest.approx(0.0)
    # fewer bins merge: one bin of everything, |4/6 - mean confidence|
    assert ece(CONF, RIGHT, n_bins=1) == pytest.approx(abs(4 / 6 - CONF.mean()))
    assert ece(np.array([]), np.array([], dtype=bool)) is None
    with pytest.raises(ValueError):
        ece(CONF, RIGHT[:-1])


def test_auroc_by_hand_with_ties():
    # pairs (right, wrong): 0.9>0.8, 0.9>0.3, 0.8=0.8 (half), 0.8>0.3: 3.5 of 4
    assert auroc(np.array([0.9, 0.8, 0.8, 0.3]), np.array([1, 1, 0, 0], bool)) == 0.875
    # right {1, 0} against wrong {1, 1, 0}: 0.5 + 0.5 + 1 + 0 + 0 + 0.5 of 6
    assert auroc(np.array([1.0, 1, 1, 0, 0]), np.array([1, 0, 0, 1, 0], bool)) == pytest.approx(
        2.5 / 6
    )
    assert auroc(np.full(4, 0.7), np.array([1, 0, 1, 0], bool)) == 0.5  # all tied
    assert auroc(np.array([0.1, 0.2, 0.9]), np.array([0, 0, 1], bool)) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9]), np.array([1, 1, 0], bool)) == 0.0


def test_auroc_is_none_when_every_prediction_is_right_or_none_is():
    assert auroc(np.array([0.9, 0.5]), np.array([True, True])) is None
    assert auroc(np.array([0.9, 0.5]), np.array([False, False])) is None


def test_auroc_matches_counting_every_pair():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 4, 15).astype(float)  # many ties
        pos = rng.random(15) < 0.5
        if pos.all() or not pos.any():
            continue
        pairs = list(itertools.product(s[pos], s[~pos]))
        want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
        assert auroc(s, pos) == pytest.approx(want)
