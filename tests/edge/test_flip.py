"""Flip features, flip application and the back-prop-free device step."""

import dataclasses

import numpy as np
import pytest
import torch

from qcore.cloud.export import to_qmodel
from qcore.cloud.flipnet import agreement_report, collect_rounds, fit_flipnet
from qcore.cloud.quantize import quantize_model
from qcore.core.quant import SUPPORTED_BITS, qrange, quantize_weight
from qcore.edge.flip import apply_flips, error_signal, gradient_proxy, window_sums
from qcore.edge.flip_passes import cross_entropy, flip_calibrate
from qcore.edge.infer import bn_reestimate, forward
from qcore.errors import QCoreError


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_flips_never_leave_the_range(bits):
    rng = np.random.default_rng(bits)
    qt = quantize_weight(rng.normal(size=(5, 4, 3)).astype(np.float32), bits)
    flips = rng.integers(-1, 2, qt.q.size).astype(np.int16)
    out = apply_flips(qt, flips)
    qmin, qmax = qrange(bits)
    assert out.q.min() >= qmin and out.q.max() <= qmax
    expected = np.clip(qt.q.astype(int) + flips.reshape(qt.q.shape), qmin, qmax)
    np.testing.assert_array_equal(out.q, expected)
    np.testing.assert_array_equal(out.scale, qt.scale)  # only the integers change
    with pytest.raises(QCoreError):
        apply_flips(qt, flips[:-1])


def test_window_sums_match_direct_sum():
    x = np.random.default_rng(0).normal(size=(2, 3, 10)).astype(np.float32)
    k = 5
    S = window_sums(x, k)
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2)))
    direct = np.stack([xp[:, :, j : j + 10].sum(axis=2) for j in range(k)], axis=2)
    np.testing.assert_allclose(S, direct, atol=1e-5)


def test_head_proxy_is_the_exact_gradient():
    """With identity feedback, the head's proxy equals the true weight gradient."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(8, 6)).astype(np.float32)
    W = torch.tensor(rng.normal(size=(3, 6)).astype(np.float32), requires_grad=True)
    y = rng.integers(0, 3, 8)
    logits = torch.from_numpy(h) @ W.T
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
    e = error_signal(logits.detach().numpy(), y)
    G = gradient_proxy(window_sums(h, 1), e, np.eye(3, dtype=np.float32))
    np.testing.assert_allclose(G, W.grad.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def trained_flip(tiny_model, tiny_xy):
    X, y = tiny_xy
    qmodel = quantize_model(tiny_model, 4, X)
    rounds = collect_rounds(
        qmodel, X[:10], y[:10], X, y, rounds=4, steps=5, lr=5e-3, batch_len=10, seed=0
    )
    net = fit_flipnet(rounds[:3], 3, iters=40, seed=0)
    return qmodel, rounds, net


def test_flipnet_depends_on_its_seed_alone(trained_flip):
    """Whatever ran before in the process (torch's global generator) must not matter."""
    _, rounds, _ = trained_flip

    def fit(global_seed: int, seed: int):
        torch.manual_seed(global_seed)
        torch.rand(global_seed + 1)  # advance the global state differently each time
        return fit_flipnet(rounds[:3], 3, iters=5, seed=seed)

    a, b, c = fit(1, seed=0), fit(2, seed=0), fit(1, seed=1)
    for field in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for name in a.feedback:
        np.testing.assert_array_equal(a.feedback[name], b.feedback[name])
    assert a.threshold == b.threshold
    assert not np.array_equal(a.w1, c.w1)  # the seed itself still matters


def test_flipnet_is_trained_and_reported(trained_flip):
    """Training moves the network towards the teacher, on its rounds and on a held-out one,
    and its threshold flips as many codes as the teacher moved on the training rounds."""
    _, rounds, net = trained_flip
    untrained = fit_flipnet(rounds[:3], 3, iters=0, seed=0)  # same start, no step taken
    fit = agreement_report(net, rounds[:3], seed=0)
    held = agreement_report(net, rounds[3:], seed=0)
    held_untrained = agreement_report(untrained, rounds[3:], seed=0)["flipnet"]
    assert fit["teacher_flip_rate"] > 0 and held["teacher_flip_rate"] > 0  # codes moved
    assert abs(fit["flipnet"]["flip_rate"] - fit["teacher_flip_rate"]) <= 2 / fit["n_weights"]
    fit_untrained = agreement_report(untrained, rounds[:3], seed=0)["flipnet"]
    for other in (fit_untrained, fit["all_zero"], fit["random"]):
        assert fit["flipnet"]["agreement"] > other["agreement"] + 0.05
    # held out: closer to the teacher than the untrained network and than random moves at
    # the teacher's rate; not closer than moving nothing (this tiny fixture's teacher
    # moves half of the codes; docs/reliability.md, "Mutation testing")
    assert held["flipnet"]["agreement"] > held_untrained["agreement"]
    assert held["flipnet"]["agreement"] > held["random"]["agreement"]
    assert held["flipnet"]["flip_precision"] > held["random"]["flip_precision"]
    assert held["all_zero"]["flip_recall"] == 0.0 and held["flipnet"]["flip_recall"] > 0.25
    assert net.nbytes() > 0 and 0 <= net.threshold <= 1


def test_device_step_runs_without_autograd(trained_flip, tiny_xy, monkeypatch):
    qmodel, _, net = trained_flip
    X, y = tiny_xy
    qm = to_qmodel(qmodel)

    def forbidden(*a, **k):
        raise AssertionError("back-propagation or an optimizer ran on the device")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    monkeypatch.setattr(torch.optim.Optimizer, "step", forbidden)
    for guard in ("pass", "layer", "backtrack", "off"):
        res = flip_calibrate(
            qm, X[:20], y[:20], net, steps=2, guard=guard, bn_mode="reestimate", budget=0.05
        )
        assert res.correct.shape[1] == 20 and res.correct.shape[0] >= 1
        for name, layer in res.model.layers.items():
            qmin, qmax = qrange(layer.weight.bits)
            assert layer.weight.q.min() >= qmin and layer.weight.q.max() <= qmax, name


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_backtracking_keeps_the_most_confident_flips_that_do_not_raise_the_loss(
    trained_flip, tiny_xy, threshold
):
    """A pass that raises the loss is halved by confidence; the loss never rises."""
    qmodel, _, net = trained_flip
    X, y = tiny_xy
    net = dataclasses.replace(net, threshold=threshold)  # 0: propose a flip for every code
    qm = bn_reestimate(to_qmodel(qmodel), X[:20])
    start = cross_entropy(forward(qm, X[:20]), y[:20])
    kw = dict(steps=1, bn_mode="frozen", budget=None)
    full = flip_calibrate(qm, X[:20], y[:20], net, guard="off", **kw)
    res = flip_calibrate(qm, X[:20], y[:20], net, guard="backtrack", **kw)
    end = cross_entropy(forward(res.model, X[:20]), y[:20])
    assert end <= start
    assert res.flips_applied <= full.flips_applied
    moved = sum(
        int(np.count_nonzero(res.model.layers[n].weight.q != qm.layers[n].weight.q))
        for n in qm.layers
        if qm.layers[n].quantized
    )
    assert moved <= res.flips_applied  # a flip at a range end moves nothing
    if res.flips_applied:
        assert res.passes_rejected == 0 and res.correct.shape[0] == 2
    else:  # every share raised the loss: the model is untouched
        assert res.passes_rejected == 1 and moved == 0
    if threshold == 0.0:  # proposing every code cannot be kept whole
        full_loss = cross_entropy(forward(full.model, X[:20]), y[:20])
        assert full_loss > start and res.flips_applied < full.flips_applied


@pytest.mark.parametrize("budget", [0.01, 0.1, 1.0])
def test_flip_budget_keeps_only_the_most_confident_flips(trained_flip, tiny_xy, budget):
    """A budget caps a pass at that share of the codes, taking the most confident flips."""
    qmodel, _, net = trained_flip
    X, y = tiny_xy
    net = dataclasses.replace(net, threshold=0.0)  # propose a flip for every code
    qm = bn_reestimate(to_qmodel(qmodel), X[:20])
    n_codes = sum(qm.layers[n].weight.q.size for n in net.feedback)
    kw = dict(steps=1, guard="off", bn_mode="frozen")
    full = flip_calibrate(qm, X[:20], y[:20], net, budget=None, **kw)
    capped = flip_calibrate(qm, X[:20], y[:20], net, budget=budget, **kw)
    assert full.flips_applied == n_codes
    assert capped.flips_applied <= int(budget * n_codes)
    backtracked = flip_calibrate(
        qm, X[:20], y[:20], net, steps=1, guard="backtrack", bn_mode="frozen", budget=budget
    )
    assert backtracked.flips_applied <= int(budget * n_codes)  # the budget holds there too
    if budget == 1.0:
        assert capped.flips_applied == full.flips_applied
        return
    assert capped.flips_applied >= int(budget * n_codes)
    for name in net.feedback:  # every kept flip is one the uncapped pass made
        a, b = qm.layers[name].weight.q, full.model.layers[name].weight.q
        c = capped.model.layers[name].weight.q
        assert np.array_equal(c[c != a], b[c != a])


def _loss(qm, X, y) -> float:
    return cross_entropy(forward(qm, X), y)


@pytest.fixture
def reckless(trained_flip, tiny_xy):
    """A model and a flip network that proposes to move every code: a pass that raises
    the loss on the calibration samples."""
    qmodel, _, net = trained_flip
    X, y = tiny_xy
    qm = bn_reestimate(to_qmodel(qmodel), X[:20])
    net = dataclasses.replace(net, threshold=0.0)
    full = flip_calibrate(
        qm, X[:20], y[:20], net, steps=1, guard="off", bn_mode="frozen", budget=None
    )
    assert _loss(full.model, X[:20], y[:20]) > _loss(qm, X[:20], y[:20])
    return qm, net, X[:20], y[:20]


def _calibrate(reckless, guard: str, steps: int = 3):
    qm, net, X, y = reckless
    return flip_calibrate(qm, X, y, net, steps=steps, guard=guard, bn_mode="frozen", budget=None)


def test_guard_off_never_rejects_a_pass(reckless):
    res = _calibrate(reckless, "off")
    n_codes = sum(layer.weight.q.size for layer in res.model.layers.values() if layer.quantized)
    assert res.passes_rejected == 0
    assert res.correct.shape[0] == 4  # the start and every one of the 3 passes
    assert res.flips_applied == 3 * n_codes


def test_guard_pass_rejects_a_pass_that_raises_the_loss(reckless):
    qm = reckless[0]
    res = _calibrate(reckless, "pass")
    assert res.passes_rejected == 1 and res.flips_applied == 0
    assert res.correct.shape[0] == 1  # the first rejected pass ends the step
    for name, layer in qm.layers.items():
        np.testing.assert_array_equal(res.model.layers[name].weight.q, layer.weight.q)


def test_guard_backtrack_keeps_a_share_that_does_not_raise_the_loss(reckless):
    qm, _, X, y = reckless
    res = _calibrate(reckless, "backtrack", steps=1)
    assert _loss(res.model, X, y) <= _loss(qm, X, y)
    n_codes = sum(layer.weight.q.size for layer in qm.layers.values() if layer.quantized)
    assert res.flips_applied < n_codes


def test_guard_layer_accepts_layers_on_their_own(reckless):
    qm, net, X, y = reckless
    res = _calibrate(reckless, "layer", steps=1)
    assert _loss(res.model, X, y) <= _loss(qm, X, y)
    changed = [
        n
        for n in net.feedback
        if not np.array_equal(res.model.layers[n].weight.q, qm.layers[n].weight.q)
    ]
    # the whole pass raises the loss, so some layers were refused on their own
    assert len(changed) < len(net.feedback)
    assert res.passes_rejected == 0


def test_unknown_guard_is_refused(reckless):
    with pytest.raises(QCoreError, match="flip_guard"):
        _calibrate(reckless, "sometimes")
