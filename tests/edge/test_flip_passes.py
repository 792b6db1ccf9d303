"""The flip budget of the flip passes keeps the most confident flips, and exactly as many
as it allows."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.edge.flip import N_FEATURES, FlipNet, error_signal, sums_reducer
from qcore.edge.flip_passes import _flips_and_confidence, _most_confident, propose_flips
from qcore.edge.infer import forward_reduced


def test_the_budget_keeps_the_most_confident_flips_over_all_layers() -> None:
    flips = {
        "a": np.array([[1, -1, 0], [1, 0, -1]], np.int16),
        "b": np.array([-1, 1, 1, 0], np.int16),
    }
    conf = {
        "a": np.array([[0.9, 0.2, 0.99], [0.6, 0.1, 0.8]]),  # 0.99 and 0.1: no flip there
        "b": np.array([0.3, 0.95, 0.7, 0.5]),
    }
    kept = _most_confident(flips, conf, 3)  # 0.95 (b), 0.9 (a), 0.8 (a)
    np.testing.assert_array_equal(kept["a"], [[1, 0, 0], [0, 0, -1]])
    np.testing.assert_array_equal(kept["b"], [0, 1, 0, 0])
    assert _most_confident(flips, conf, 0)["b"].sum() == 0
    assert _most_confident(flips, conf, 10) is flips  # fewer proposed than allowed


def test_ties_go_to_the_earlier_layer_and_code() -> None:
    flips = {"a": np.array([1, 1], np.int16), "b": np.array([1, 1], np.int16)}
    conf = {"a": np.array([0.5, 0.5]), "b": np.array([0.5, 0.5])}
    kept = _most_confident(flips, conf, 3)
    np.testing.assert_array_equal(kept["a"], [1, 1])
    np.testing.assert_array_equal(kept["b"], [1, 0])


@pytest.fixture(scope="module")
def proposal(tiny_model, tiny_xy):
    """A 4-bit model, a random flip network proposing a flip for most codes, and what a
    pass sees of 20 windows."""
    X, y = tiny_xy
    qm = to_qmodel(quantize_model(tiny_model, 4, X, 0))
    rng = np.random.default_rng(0)
    feedback = {
        name: rng.standard_normal((qm.n_classes, layer.weight.shape[0])).astype(np.float32)
        for name, layer in qm.layers.items()
    }
    net = FlipNet(
        feedback,
        rng.standard_normal((N_FEATURES, 8)).astype(np.float32),
        rng.standard_normal(8).astype(np.float32),
        rng.standard_normal((8, 3)).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
        0.0,
    )
    trace = forward_reduced(qm, X[:20], sums_reducer(qm))
    assert trace.logits is not None
    return qm, net, trace.reduced, error_signal(trace.logits, y[:20])


@pytest.mark.parametrize("budget", [0.01, 0.1])
def test_a_budgeted_pass_keeps_the_most_confident_of_its_proposals(proposal, budget) -> None:
    qm, net, sums, e = proposal
    flips, conf = _flips_and_confidence(qm, net, sums, e)
    n_codes = sum(qm.layers[n].weight.q.size for n in flips)
    model, n_flips = propose_flips(qm, net, sums, e, budget)
    assert n_flips == int(budget * n_codes) > 0
    proposed = np.concatenate([conf[n].reshape(-1)[f.reshape(-1) != 0] for n, f in flips.items()])
    cutoff = np.sort(proposed)[::-1][n_flips - 1]  # the least confidence a kept flip may have
    moved = [
        conf[name].reshape(-1)[(model.layers[name].weight.q != qm.layers[name].weight.q).ravel()]
        for name in flips
    ]
    kept = np.concatenate(moved)  # (a flip clipped at the range's end moves nothing)
    assert len(kept) > 0 and kept.min() >= cutoff
    assert cutoff > np.median(proposed)  # a real choice: most proposals were not kept
