"""Which windows a device asks labels for (qcore.edge.asking)."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.edge.asking import LABEL_POLICIES, ask, budget, dense_order, density
from qcore.errors import QCoreError

# five windows, three classes: predicted 0, 0, 1, 2, 1; margins 0.8, 0.1, 0.3, 0.05, 0.5
PROBS = np.array(
    [
        [0.9, 0.1, 0.0],
        [0.5, 0.4, 0.1],
        [0.2, 0.5, 0.3],
        [0.3, 0.325, 0.375],
        [0.0, 0.75, 0.25],
    ]
)
NOVELTY = np.array([0.5, 3.0, 1.0, 2.0, 4.0])
# their distance margins: order 3, 0, 2 (0.4, tied: by index), 4, 1
DMARGIN = np.array([0.4, 5.0, 0.4, 0.1, 2.0])
# their whitened features: windows 0, 1, 2 and 4 close together, window 3 (the least sure
# by margin) far from all of them
WHITE = np.array([[0.0, 0.0], [0.2, 0.0], [0.0, 0.2], [6.0, 6.0], [0.2, 0.2]])


def test_margin_asks_for_the_windows_the_head_is_least_sure_between() -> None:
    assert ask("margin", 2, PROBS, None).tolist() == [1, 3]
    assert ask("margin", 0, PROBS, None).tolist() == []


def test_novel_asks_for_the_windows_furthest_from_what_the_device_knows() -> None:
    assert ask("novel", 2, PROBS, NOVELTY).tolist() == [1, 4]
    with pytest.raises(QCoreError, match="needs the device's novelty"):
        ask("novel", 2, PROBS, None)


def test_cover_asks_first_for_the_classes_with_the_fewest_labels() -> None:
    # margin order 3, 1, 2, 4, 0; the best window per predicted class: class 0 window 1,
    # class 1 window 2, class 2 window 3; the classes with the fewest labels first
    assert ask("margin-cover", 2, PROBS, None, np.array([0, 0, 0])).tolist() == [1, 2]
    assert ask("margin-cover", 2, PROBS, None, np.array([9, 5, 0])).tolist() == [2, 3]
    assert ask("margin", 2, PROBS, None).tolist() == [1, 3]  # without cover: by margin only
    # novel order 4, 1, 3, 2, 0: class 1 (window 4), class 0 (window 1), class 2 (window 3)
    assert ask("novel-cover", 1, PROBS, NOVELTY, np.array([3, 3, 0])).tolist() == [3]
    assert ask("novel-cover", 4, PROBS, NOVELTY, None).tolist() == [1, 2, 3, 4]
    # by the novel order the best windows per class are 1, 4 and 3 (by margin: 1, 2, 3)
    assert ask("novel-cover", 3, PROBS, NOVELTY, None).tolist() == [1, 3, 4]
    with pytest.raises(QCoreError, match="one count per class"):
        ask("margin-cover", 1, PROBS, None, np.zeros(2))


def test_random_draws_from_its_generator_and_every_policy_keeps_the_budget() -> None:
    a = ask("random", 3, PROBS, None, rng=np.random.default_rng(0))
    b = ask("random", 3, PROBS, None, rng=np.random.default_rng(0))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 3
    for policy in LABEL_POLICIES:
        rng = np.random.default_rng(1)
        got = ask(policy, 3, PROBS, NOVELTY, np.zeros(3), rng, margin=DMARGIN, whitened=WHITE)
        assert len(got) == 3 and got.dtype == np.int64 and (np.diff(got) > 0).all()
    with pytest.raises(QCoreError, match="needs a random generator"):
        ask("random", 1, PROBS, None)


def test_ties_go_to_the_first_windows_and_a_whole_batch_can_be_asked() -> None:
    flat = np.full((100, 3), 1 / 3)
    assert ask("margin", 5, flat, None).tolist() == [0, 1, 2, 3, 4]
    assert ask("novel", 5, flat, np.ones(100)).tolist() == [0, 1, 2, 3, 4]
    assert ask("margin", 5, PROBS, None).tolist() == [0, 1, 2, 3, 4]
    one_class = np.ones((4, 1))  # a head of one class: every margin is 1
    assert ask("margin", 2, one_class, None).tolist() == [0, 1]


def test_a_budget_is_the_nearest_count_and_bad_requests_are_refused() -> None:
    assert [budget(23, f) for f in (0.0, 0.05, 0.1, 1.0)] == [0, 1, 2, 23]
    with pytest.raises(QCoreError, match="share in"):
        budget(10, 1.5)
    with pytest.raises(QCoreError, match="unknown label_policy 'smart': choose random, margin, "):
        ask("smart", 1, PROBS, None)
    with pytest.raises(QCoreError, match="cannot ask for 6 labels in a batch of 5"):
        ask("margin", 6, PROBS, None)


def test_ties_among_many_windows_keep_the_window_order() -> None:
    # 60 windows of three margins (0.0, 0.5, 1.0) and three novelties, mixed: a sort that is
    # not stable returns the equal ones out of index order on such sizes
    rng = np.random.default_rng(0)
    level = rng.integers(0, 3, 60)
    top = 0.5 + level / 4  # margins 2 top - 1 = 0.0, 0.5, 1.0
    probs = np.stack([top, 1 - top], axis=1)
    want = [int(i) for i in np.flatnonzero(level == 0)[:12]]
    assert ask("margin", 12, probs, None).tolist() == want
    assert ask("novel", 12, probs, (2 - level).astype(float)).tolist() == want


def test_margins_of_float32_probabilities_are_taken_in_float64() -> None:
    # window 1's margin, 1 - 2**-25, rounds to 1.0 in float32: the same as window 0's
    probs = np.array([[1.0, 0.0, 0.0], [1.0, 2**-25, 0.0]], np.float32)
    assert ask("margin", 1, probs, None).tolist() == [1]


def test_the_margin_is_top_1_minus_top_2_not_the_top_alone() -> None:
    # window 0: top 0.5, margin 0 (a tie between two classes); window 1: top 0.4, margin 0.1
    probs = np.array([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05]])
    assert ask("margin", 1, probs, None).tolist() == [0]
    assert ask("margin", 2, probs, None).tolist() == [0, 1]


def test_a_policy_missing_what_it_needs_says_what() -> None:
    with pytest.raises(QCoreError, match=r"^label_policy random needs a random generator$"):
        ask("random", 1, PROBS, None)
    message = r"^label_policy novel needs the device's novelty \(a novelty threshold\)$"
    with pytest.raises(QCoreError, match=message):
        ask("novel-cover", 1, PROBS, None)


# four windows, three classes: margins 0.05, 0.06, 0.5, 0.3; top-2 pairs (0, 1), (0, 1),
# (1, 2), (0, 2); predicted 0, 1, 2, 0
SPREAD = np.array([[0.5, 0.45, 0.05], [0.44, 0.5, 0.06], [0.1, 0.2, 0.7], [0.6, 0.1, 0.3]])


def test_pairs_and_top_spread_the_labels_over_the_batch_s_confusions() -> None:
    assert ask("margin", 2, SPREAD, None).tolist() == [0, 1]  # both confuse classes 0 and 1
    assert ask("margin-pairs", 2, SPREAD, None).tolist() == [0, 3]  # (0, 1) asked: then (0, 2)
    assert ask("margin-pairs", 3, SPREAD, None).tolist() == [0, 2, 3]
    assert ask("margin", 3, SPREAD, None).tolist() == [0, 1, 3]
    assert ask("margin-top", 3, SPREAD, None).tolist() == [0, 1, 2]  # class 0 asked: not 3
    assert ask("margin-top", 4, SPREAD, None).tolist() == [0, 1, 2, 3]
    one_class = np.ones((3, 1))
    assert ask("margin-pairs", 2, one_class, None).tolist() == [0, 1]


def test_margin_random_asks_half_by_margin_and_draws_the_rest() -> None:
    picks = set()
    for seed in range(20):
        got = ask("margin-random", 3, PROBS, None, rng=np.random.default_rng(seed)).tolist()
        assert {1, 3} <= set(got) and len(got) == 3  # ceil(3 / 2) = 2 by margin
        again = ask("margin-random", 3, PROBS, None, rng=np.random.default_rng(seed)).tolist()
        assert got == again
        picks |= set(got) - {1, 3}
    assert picks == {0, 2, 4}  # the third is drawn from the rest of the batch
    assert ask("margin-random", 1, PROBS, None, rng=np.random.default_rng(0)).tolist() == [3]
    with pytest.raises(QCoreError, match="margin-random needs a random generator"):
        ask("margin-random", 1, PROBS, None)


def test_margin_pairs_with_two_classes_is_margin_and_random_follows_its_generator() -> None:
    two = np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8], [0.4, 0.6]])  # margins .8 .1 .6 .2
    # one pair, (0, 1), for every window: the margin order; grouping by the predicted
    # class instead puts window 0, the only one of class 0, before window 3
    assert (
        ask("margin-pairs", 2, two, None).tolist() == [1, 3] == ask("margin", 2, two, None).tolist()
    )
    assert ask("margin-top", 2, two, None).tolist() == [0, 1]
    draws = {tuple(ask("random", 2, PROBS, None, rng=np.random.default_rng(s))) for s in range(20)}
    assert len(draws) > 3  # the generator draws, not an order
    # k = 2: one window by margin (window 3), the other drawn from the rest
    second = set()
    for seed in range(20):
        got = ask("margin-random", 2, PROBS, None, rng=np.random.default_rng(seed)).tolist()
        assert 3 in got
        second |= set(got) - {3}
    assert second == {0, 1, 2, 4}


def test_dmargin_asks_for_the_smallest_distance_margins_ties_by_index() -> None:
    assert ask("dmargin", 1, PROBS, None, margin=DMARGIN).tolist() == [3]
    assert ask("dmargin", 2, PROBS, None, margin=DMARGIN).tolist() == [0, 3]  # 0 before 2
    assert ask("dmargin", 3, PROBS, None, margin=DMARGIN).tolist() == [0, 2, 3]
    assert ask("dmargin", 0, PROBS, None, margin=DMARGIN).tolist() == []
    # not the calibrated margin's order (3, 1, 2, 4, 0) nor the novelty's
    assert ask("margin", 2, PROBS, None, margin=DMARGIN).tolist() == [1, 3]
    # many ties keep the window order; a head of one class has every margin infinite
    rng = np.random.default_rng(0)
    level = rng.integers(0, 3, 60).astype(float)
    want = [int(i) for i in np.flatnonzero(level == 0)[:12]]
    assert ask("dmargin", 12, np.full((60, 2), 0.5), None, margin=level).tolist() == want
    assert ask("dmargin", 2, np.ones((4, 1)), None, margin=np.full(4, np.inf)).tolist() == [0, 1]


def test_dmargin_keeps_the_budget_and_says_what_it_misses() -> None:
    for k in range(6):
        got = ask(
            "dmargin", k, PROBS, NOVELTY, np.zeros(3), np.random.default_rng(0), margin=DMARGIN
        )
        assert len(got) == k and got.dtype == np.int64 and (np.diff(got) > 0).all()
    message = r"^label_policy dmargin needs the device's distance margin \(a streaming head\)$"
    with pytest.raises(QCoreError, match=message):
        ask("dmargin", 1, PROBS, NOVELTY)
    with pytest.raises(QCoreError, match=r"one per window \(5\), got \(4,\)"):
        ask("dmargin", 1, PROBS, None, margin=DMARGIN[:4])
    with pytest.raises(QCoreError, match="cannot ask for 6 labels in a batch of 5"):
        ask("dmargin", 6, PROBS, None, margin=DMARGIN)


def _density_by_hand(z: np.ndarray) -> np.ndarray:
    n = len(z)
    d2 = np.array([[float(((z[i] - z[j]) ** 2).sum()) for j in range(n)] for i in range(n)])
    h2 = float(np.median([d2[i, j] for i in range(n) for j in range(n) if i != j]))
    return np.array(
        [np.mean([np.exp(-d2[i, j] / h2) for j in range(n) if j != i]) for i in range(n)]
    )


def test_density_is_the_mean_kernel_to_the_other_windows_at_the_median_bandwidth() -> None:
    z = np.random.default_rng(4).normal(size=(9, 3))
    np.testing.assert_allclose(density(z, 9), _density_by_hand(z), rtol=1e-10)
    np.testing.assert_allclose(density(WHITE, 5), _density_by_hand(WHITE), rtol=1e-10)
    assert density(WHITE, 5).argmin() == 3  # the far window is the least dense
    assert density(np.ones((4, 2)), 4).tolist() == [1.0] * 4  # all alike: bandwidth 0


def test_margin_dense_asks_inside_the_cluster_before_an_isolated_uncertain_window() -> None:
    # margin's order 3, 1, 2, 4, 0; window 3 lies alone, so the density policies ask for
    # window 1 (uncertainty 0.9 in the cluster) before it (0.95, isolated)
    assert ask("margin", 1, PROBS, None, whitened=WHITE).tolist() == [3]
    for policy in ("margin-dense", "margin-dense2"):
        assert ask(policy, 1, PROBS, None, whitened=WHITE).tolist() == [1]
        assert ask(policy, 2, PROBS, None, whitened=WHITE).tolist() == [1, 2]
    rho = _density_by_hand(WHITE)
    u = 1.0 - np.array([0.8, 0.1, 0.3, 0.05, 0.5])
    for power, policy in ((1, "margin-dense"), (2, "margin-dense2")):
        want = np.argsort(-(u * rho**power), kind="stable")
        np.testing.assert_array_equal(dense_order(PROBS, WHITE, power), want)
        for k in range(6):
            assert ask(policy, k, PROBS, None, whitened=WHITE).tolist() == sorted(want[:k])


def test_the_density_power_tells_the_two_policies_apart() -> None:
    # seven windows on a line; window 0 (uncertainty 1) one step from its end, window 1
    # (uncertainty 0.75) at its centre, the others sure (uncertainty 0)
    probs = np.array([[0.4, 0.4, 0.2], [0.5, 0.25, 0.25]] + [[1.0, 0.0, 0.0]] * 5)
    z = np.array([[1.0], [3.0], [0.0], [2.0], [4.0], [5.0], [6.0]])
    rho = _density_by_hand(z)
    assert rho[0] > 0.75 * rho[1] and rho[0] ** 2 < 0.75 * rho[1] ** 2
    assert ask("margin-dense", 1, probs, None, whitened=z).tolist() == [0]
    assert ask("margin-dense2", 1, probs, None, whitened=z).tolist() == [1]


def test_without_density_it_is_margin_and_ties_go_to_the_first_windows() -> None:
    np.testing.assert_array_equal(dense_order(PROBS, WHITE, 0.0), [3, 1, 2, 4, 0])
    flat = np.full((40, 3), 1 / 3)
    alike = np.zeros((40, 4))
    for policy in ("margin-dense", "margin-dense2"):
        assert ask(policy, 5, flat, None, whitened=alike).tolist() == [0, 1, 2, 3, 4]
        # two mirror-image clusters: equal scores, the first windows first
        z = np.repeat([[1.0, 0.0], [-1.0, 0.0]], 20, axis=0)
        assert ask(policy, 3, flat, None, whitened=z).tolist() == [0, 1, 2]
        # ties among many windows between other scores: still the first ones (NumPy's
        # default sort keeps the order of runs of equal keys, not of interleaved ones)
        mixed = np.where(np.arange(40)[:, None] % 2 == 0, flat, [[0.8, 0.1, 0.1]])
        assert ask(policy, 5, mixed, None, whitened=alike).tolist() == [0, 2, 4, 6, 8]
        # one window: by margin
        assert ask(policy, 1, PROBS[:1], None, whitened=WHITE[:1]).tolist() == [0]
        assert ask(policy, 0, PROBS[:0], None, whitened=WHITE[:0]).tolist() == []


def test_the_density_policies_keep_the_budget_and_say_what_they_miss() -> None:
    for policy in ("margin-dense", "margin-dense2"):
        for k in range(6):
            got = ask(policy, k, PROBS, NOVELTY, np.zeros(3), margin=DMARGIN, whitened=WHITE)
            assert len(got) == k and got.dtype == np.int64 and (np.diff(got) > 0).all()
        message = (
            rf"^label_policy {policy} needs the head's whitened features \(a streaming head\)$"
        )
        with pytest.raises(QCoreError, match=message):
            ask(policy, 1, PROBS, NOVELTY, margin=DMARGIN)
        with pytest.raises(QCoreError, match=r"one row per window \(5\), got \(4, 2\)"):
            ask(policy, 1, PROBS, None, whitened=WHITE[:4])
        with pytest.raises(QCoreError, match=r"one row per window \(5\), got \(5,\)"):
            ask(policy, 1, PROBS, None, whitened=WHITE[:, 0])
        with pytest.raises(QCoreError, match="whitened features must be finite"):
            ask(policy, 1, PROBS, None, whitened=np.where(WHITE == 6.0, np.nan, WHITE))
        with pytest.raises(QCoreError, match="cannot ask for 6 labels in a batch of 5"):
            ask(policy, 6, PROBS, None, whitened=WHITE)
