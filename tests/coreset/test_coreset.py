import numpy as np
import pytest

from qcore.coreset.core import Core, build_core, update_core
from qcore.coreset.scores import miss_counts, pass_misses, qcore_scores
from qcore.coreset.select import core_size_from, select_core
from qcore.errors import QCoreError


def test_miss_counts_forgetting_and_never_learned():
    # 4 observations, 1 bit-width, 4 samples
    seq = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=bool)
    counts = miss_counts(seq[:, None, :])[0]
    # sample 0 forgets twice; 1 never; 2 never learned -> n_obs; 3 learned then forgotten once
    assert counts.tolist() == [2, 0, 4, 1]
    assert pass_misses(seq).tolist() == [2, 0, 4, 1]


def test_scores_sum_quantized_bitwidths_only():
    correct = np.zeros((3, 3, 2), dtype=bool)
    correct[:, 0, :] = True  # float: always right
    correct[:, 1, 0] = [True, False, True]  # 2 bits: one miss for sample 0
    score = qcore_scores(correct, (None, 2, 4))
    assert score.tolist() == [1 + 3, 3 + 3]  # 4 bits never learned: 3 observations
    with pytest.raises(QCoreError):
        qcore_scores(correct[:, :1], (None,))


@pytest.mark.parametrize("mode", ["proportional", "stratified", "balanced"])
def test_selection_size_unique_seeded(mode):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200)
    y = rng.integers(0, 4, 200)
    a = select_core(scores, y, 20, mode, seed=1)
    assert len(a) == len(np.unique(a)) == 20
    np.testing.assert_array_equal(a, select_core(scores, y, 20, mode, seed=1))


def test_proportional_prefers_high_scores_and_fills():
    scores = np.array([0] * 90 + [10] * 10)
    idx = select_core(scores, np.zeros(100, int), 10, seed=0)
    assert set(idx) == set(range(90, 100))  # zero-score samples never drawn
    idx = select_core(scores, np.zeros(100, int), 15, seed=0)
    assert set(range(90, 100)) <= set(idx) and len(idx) == 15  # filled from zero scores


def test_balanced_mode_is_class_balanced():
    y = np.array([0] * 150 + [1] * 30 + [2] * 20)
    scores = np.ones(200)
    idx = select_core(scores, y, 12, "balanced", seed=0)
    assert np.bincount(y[idx]).tolist() == [4, 4, 4]


def test_core_size_spec():
    assert core_size_from(20, 500) == 20 and core_size_from(0.1, 500) == 50
    with pytest.raises(QCoreError):
        core_size_from(2.5, 10)
    with pytest.raises(QCoreError):
        select_core(np.ones(5), np.zeros(5, int), 6)


def _core(n=6):
    X = np.zeros((n, 2, 4), np.float32)
    return Core(X, np.arange(n) % 2, np.ones(n, np.int64), np.full(n, -1))


def test_update_keeps_size_and_tracks_hard_samples():
    core = _core()
    X_new = np.ones((10, 2, 4), np.float32)
    y_new = np.arange(10) % 2
    score = np.r_[np.zeros(6, int), np.ones(10, int)]
    new = update_core(core, X_new, y_new, score, step=1, seed=0)
    assert len(new) == 6 and np.all(new.origin == 1)  # old samples were all right: dropped
    kept = update_core(core, X_new, y_new, score, step=1, seed=0, old_quota=0.5)
    assert len(kept) == 6 and np.sum(kept.origin == -1) == 3


def test_build_core_validates():
    X = np.random.default_rng(0).normal(size=(30, 2, 4)).astype(np.float32)
    y = np.arange(30) % 3
    core = build_core(X, y, np.arange(30), 5, "proportional", seed=0)
    assert len(core) == 5 and core.nbytes == 5 * 2 * 4 * 4 + 5 * 8
    with pytest.raises(QCoreError, match="NaN"):
        update_core(
            core,
            np.full((2, 2, 4), np.nan, np.float32),
            np.zeros(2, int),
            np.zeros(7),
            step=1,
            seed=0,
        )
