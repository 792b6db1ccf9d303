"""The head's own signals: distances, calibrated confidence, novelty and its threshold."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.config import DeviceConfig
from qcore.edge.head import Solved, batch_stats, logits, precision, solve
from qcore.edge.signals import (
    NOVELTY_QUANTILE,
    Signals,
    batch_signals,
    calibrated_probs,
    distance_margin,
    fit_novelty_threshold,
    head_signals,
    novel_share,
    sq_distances,
    whiten,
    whitened,
)
from qcore.errors import QCoreError


def gaussian_classes(n: int, seed: int, d: int = 4, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windows' features of ``k`` classes: unit Gaussians around means 4 apart."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    means = 4.0 * np.eye(k, d)
    return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def head():
    x, y = gaussian_classes(300, 0)
    stats = batch_stats(x, y, 3)
    weight, bias = solve(stats, 0.01)
    return stats, Solved(weight, bias, precision(stats, 0.01).astype(np.float32))


def test_distances_come_from_the_scores_and_one_quadratic_form(head) -> None:
    stats, solved = head
    x, _ = gaussian_classes(20, 1)
    got = sq_distances(logits(solved.weight, solved.bias, x), x, solved.precision)
    diff = x[:, None, :].astype(np.float64) - stats.mean[None].astype(np.float64)
    want = np.einsum("nkd,de,nke->nk", diff, precision(stats, 0.01), diff)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert (sq_distances(np.full((1, 2), 5.0), np.zeros((1, 3)), np.eye(3)) == 0).all()  # clip


def test_distances_are_computed_in_float64_whatever_the_inputs() -> None:
    """Far from the origin, x Λ x - 2 score cancels: float32 would lose the distance."""
    mean = np.full((1, 8), 1000.0)
    x = (mean + np.linspace(-1, 1, 8)).astype(np.float32)
    scores = x.astype(np.float64) @ mean.T - 0.5 * (mean * mean).sum(1)  # precision I
    got = sq_distances(scores, x, np.eye(8, dtype=np.float32))
    want = ((x.astype(np.float64) - mean) ** 2).sum(1, keepdims=True)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_confidence_is_a_tempered_student_t_posterior_by_hand() -> None:
    d2 = np.array([[1.0, 4.0]])
    # dof 2, 2 features, temperature 1: scores -2 log(1 + d2 / 2) = -2 log 1.5, -2 log 3
    p = calibrated_probs(d2, 2, 2.0, 1.0)
    want = 1 / (1 + (1.5 / 3.0) ** 2)
    np.testing.assert_allclose(p[0], [want, 1 - want], rtol=1e-12)
    # temperature 2 halves the scores: the ratio's square root
    np.testing.assert_allclose(calibrated_probs(d2, 2, 2.0, 2.0)[0, 0], 1 / 1.5, rtol=1e-12)
    # per-window temperatures: each row its own
    both = calibrated_probs(np.vstack([d2, d2]), 2, 2.0, np.array([1.0, 2.0]))
    np.testing.assert_allclose(both[:, 0], [want, 1 / 1.5], rtol=1e-12)


def test_many_degrees_of_freedom_give_the_gaussian_posterior() -> None:
    d2 = np.random.default_rng(0).uniform(0, 20, (50, 4))
    gauss = np.exp(-d2 / 2 / 3.0)
    gauss /= gauss.sum(1, keepdims=True)
    np.testing.assert_allclose(calibrated_probs(d2, 8, 1e9, 3.0), gauss, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(("dof", "temperature"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 2.0)])
def test_a_confidence_without_positive_settings_is_refused(dof, temperature) -> None:
    with pytest.raises(QCoreError, match="dof > 0 and temperatures > 0"):
        calibrated_probs(np.ones((1, 2)), 2, dof, temperature)


@pytest.mark.parametrize("power", [0.0, 1.0, 2.0])
@pytest.mark.parametrize(("dof", "temperature"), [(1.0, 1.0), (30.0, 2.0), (1e4, 50.0)])
def test_calibration_changes_no_prediction(head, dof, temperature, power) -> None:
    _, solved = head
    x, _ = gaussian_classes(60, 2)
    x[::3] *= 5.0  # some windows far from every class
    scores = logits(solved.weight, solved.bias, x)
    sig = head_signals(scores, x, solved.precision, dof, temperature, 10.0, power)
    np.testing.assert_array_equal(sig.probs.argmax(1), scores.argmax(1))
    np.testing.assert_allclose(sig.probs.sum(1), 1.0)
    assert sig.probs.dtype == np.float64


def test_a_novel_window_is_less_sure_with_a_novelty_power(head) -> None:
    _, solved = head
    x, _ = gaussian_classes(30, 3)
    x[:10] *= 4.0  # novel
    scores = logits(solved.weight, solved.bias, x)
    plain = head_signals(scores, x, solved.precision, 30.0, 2.0, 20.0, 0.0)
    powered = head_signals(scores, x, solved.precision, 30.0, 2.0, 20.0, 1.0)
    assert plain.novelty is not None
    novel = plain.novelty > 1
    assert novel[:10].all() and not novel[10:].any()
    assert (powered.confidence[novel] < plain.confidence[novel]).all()
    np.testing.assert_array_equal(powered.confidence[~novel], plain.confidence[~novel])


def test_novelty_is_the_smallest_distance_over_the_threshold(head) -> None:
    _, solved = head
    x, _ = gaussian_classes(10, 4)
    scores = logits(solved.weight, solved.bias, x)
    sig = head_signals(scores, x, solved.precision, 30.0, 2.0, 7.0, 0.0)
    d2 = sq_distances(scores, x, solved.precision)
    np.testing.assert_allclose(sig.novelty, d2.min(1) / 7.0)
    np.testing.assert_array_equal(sig.probs, calibrated_probs(d2, 4, 30.0, 2.0))
    # without a threshold there is no novelty, and no novelty temperature either
    blind = head_signals(scores, x, solved.precision, 30.0, 2.0, None, 2.0)
    assert blind.novelty is None
    np.testing.assert_array_equal(blind.probs, sig.probs)


def test_a_novel_windows_temperature_is_its_novelty_to_the_power(head) -> None:
    _, solved = head
    x, _ = gaussian_classes(10, 4)
    x[:4] *= 3.0
    scores = logits(solved.weight, solved.bias, x)
    d2 = sq_distances(scores, x, solved.precision)
    novelty = d2.min(1) / 7.0
    sig = head_signals(scores, x, solved.precision, 30.0, 2.0, 7.0, 2.0)
    want = calibrated_probs(d2, 4, 30.0, 2.0 * np.maximum(novelty, 1.0) ** 2)
    np.testing.assert_allclose(sig.probs, want, rtol=1e-12)


def test_the_novel_share_counts_windows_strictly_beyond_the_threshold() -> None:
    assert novel_share(np.array([0.5, 1.0, 1.01, 3.0])) == 0.5
    assert novel_share(None) is None and novel_share(np.zeros(0)) is None


def test_the_cloud_threshold_leaves_about_five_percent_of_new_windows_beyond_it() -> None:
    x, y = gaussian_classes(600, 5)
    limit = fit_novelty_threshold(x, y, 3, 0.01, seed=0)
    assert limit == fit_novelty_threshold(x, y, 3, 0.01, seed=0)  # seeded
    assert limit != fit_novelty_threshold(x, y, 3, 0.01, seed=1)
    stats = batch_stats(x, y, 3)
    fresh, _ = gaussian_classes(4000, 6)
    weight, bias = solve(stats, 0.01)
    d2 = sq_distances(logits(weight, bias, fresh), fresh, precision(stats, 0.01))
    beyond = float((d2.min(1) > limit).mean())
    assert abs(beyond - (1 - NOVELTY_QUANTILE)) < 0.02, beyond
    # in-sample distances would be smaller: the out-of-fold threshold is the larger one
    assert limit > float(np.quantile(_in_sample(x, y), NOVELTY_QUANTILE))
    with pytest.raises(QCoreError, match="at least 5 windows"):
        fit_novelty_threshold(x[:4], y[:4], 3, 0.01, seed=0)
    assert np.isfinite(fit_novelty_threshold(x[:5], y[:5], 3, 0.01, seed=0))  # one per fold


def test_the_cloud_threshold_by_hand() -> None:
    """Five folds drawn from the seed, each window scored by a head fitted on the other
    four, and the 95th percentile of the smallest distances."""
    x, y = gaussian_classes(50, 7)
    fold = np.random.default_rng([3, 0x40E1]).permutation(50) % 5
    smallest = np.empty(50)
    for k in range(5):
        stats = batch_stats(x[fold != k], y[fold != k], 3)
        weight, bias = solve(stats, 0.1)
        held = x[fold == k]
        d2 = sq_distances(logits(weight, bias, held), held, precision(stats, 0.1))
        smallest[fold == k] = d2.min(1)
    want = float(np.quantile(smallest, 0.95))
    assert fit_novelty_threshold(x, y, 3, 0.1, seed=3) == pytest.approx(want, rel=1e-12)


def _in_sample(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    stats = batch_stats(x, y, 3)
    weight, bias = solve(stats, 0.01)
    return sq_distances(logits(weight, bias, x), x, precision(stats, 0.01)).min(1)


def test_signals_of_chunks_join_into_one() -> None:
    a = Signals(np.full((2, 3), 1 / 3), np.array([0.5, 2.0]))
    b = Signals(np.eye(3)[:1], np.array([1.5]))
    joined = Signals.join([a, b])
    np.testing.assert_array_equal(joined.novelty, [0.5, 2.0, 1.5])
    np.testing.assert_array_equal(joined.confidence, [1 / 3, 1 / 3, 1.0])
    assert Signals.join([a, Signals(np.eye(3)[:1], None)]).novelty is None
    assert joined.margin is None  # neither part has a margin
    c, d = Signals(a.probs, None, np.array([0.0, 3.0])), Signals(b.probs, None, np.array([1.0]))
    np.testing.assert_array_equal(Signals.join([c, d]).margin, [0.0, 3.0, 1.0])
    assert Signals.join([c, b]).margin is None
    assert joined.whitened is None
    lam = np.array([[4.0, 0.0], [0.0, 9.0]])  # L = diag(2, 3)
    e = Signals(a.probs, None, None, np.array([[1.0, 2.0], [3.0, 4.0]]), lam)
    f = Signals(b.probs, None, None, np.array([[5.0, 6.0]]), lam)
    np.testing.assert_array_equal(Signals.join([e, f]).features, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(Signals.join([e, f]).whitened, [[2, 6], [6, 12], [10, 18]])
    assert Signals.join([e, b]).whitened is None and Signals.join([e, b]).precision is None
    assert Signals(a.probs, None, None, e.features).whitened is None  # no precision


def test_the_margin_is_the_second_distance_minus_the_first_by_hand() -> None:
    d2 = np.array([[9.0, 1.0, 25.0], [16.0, 16.0, 0.0], [4.0, 100.0, 64.0]])
    np.testing.assert_allclose(distance_margin(d2), [3.0 - 1.0, 4.0 - 0.0, 8.0 - 2.0])
    assert distance_margin(d2).dtype == np.float64
    assert np.isinf(distance_margin(np.array([[4.0], [0.0]]))).all()  # one class: no rival


def test_the_head_reports_the_margin_of_its_distances(head) -> None:
    """Brute force: sorted Mahalanobis distances to the class means, second minus first;
    a window midway between two class means has margin 0, one on a mean the largest."""
    stats, solved = head
    mean = stats.mean.astype(np.float64)
    x = np.vstack([gaussian_classes(20, 2)[0], (mean[:1] + mean[1:2]) / 2, mean[:1]])
    scores = logits(solved.weight, solved.bias, x)
    sig = head_signals(scores, x, solved.precision, 30.0, 2.0, 7.0, 1.0)
    diff = x[:, None, :].astype(np.float64) - mean[None]
    dist = np.sort(np.sqrt(np.einsum("nkd,de,nke->nk", diff, precision(stats, 0.01), diff)), 1)
    assert sig.margin is not None and sig.margin.shape == (22,)
    np.testing.assert_allclose(sig.margin, dist[:, 1] - dist[:, 0], rtol=1e-3, atol=1e-2)
    assert sig.margin[20] < 0.05 and sig.margin[21] == sig.margin.max()
    assert (sig.margin >= 0).all()


def test_a_device_without_a_streaming_head_reports_the_softmax() -> None:
    scores = np.array([[0.0, np.log(3.0)], [5.0, 5.0], [1000.0, 0.0]], np.float32)
    sig = batch_signals(None, DeviceConfig(), scores, None)
    np.testing.assert_allclose(sig.confidence, [0.75, 0.5, 1.0], rtol=1e-6)
    assert sig.novelty is None and sig.margin is None and sig.probs.dtype == np.float64


def test_a_streaming_head_without_features_reports_the_softmax(head) -> None:
    _, solved = head
    scores = np.array([[0.0, np.log(3.0), -np.inf]], np.float32)
    sig = batch_signals(solved, DeviceConfig(novelty_threshold=5.0), scores, None)
    np.testing.assert_allclose(sig.probs, [[0.25, 0.75, 0.0]], rtol=1e-6)
    assert sig.novelty is None


def test_distance_margin_with_two_classes_and_float32_distances() -> None:
    got = distance_margin(np.array([[4.0, 9.0], [25.0, 16.0]], dtype=np.float32))
    assert got.dtype == np.float64 and got.tolist() == [1.0, 1.0]  # 3 - 2, 5 - 4


def test_whitened_distances_are_the_head_s_mahalanobis_distances(head) -> None:
    stats, solved = head
    x = gaussian_classes(12, 5)[0]
    z = whiten(x, solved.precision)
    assert z.shape == (12, 4) and z.dtype == np.float64
    lam = solved.precision.astype(np.float64)
    diff = x[:, None, :].astype(np.float64) - x[None].astype(np.float64)
    by_hand = np.einsum("ijd,de,ije->ij", diff, lam, diff)
    np.testing.assert_allclose(((z[:, None] - z[None]) ** 2).sum(-1), by_hand, rtol=1e-9)
    sig = head_signals(logits(solved.weight, solved.bias, x), x, solved.precision, 30, 2, 7, 1)
    assert sig.whitened is not None
    np.testing.assert_array_equal(sig.whitened, z)
    np.testing.assert_array_equal(whitened(solved, x), z)
    assert whitened(None, x) is None and whitened(solved, None) is None
    scores = logits(solved.weight, solved.bias, x)
    assert batch_signals(None, DeviceConfig(), scores, x).whitened is None
    with pytest.raises(QCoreError, match="precision is not positive definite"):
        whiten(x, -np.eye(4))
