"""Flip features, flip application and the back-prop-free device step."""

import dataclasses

import numpy as np
import pytest
import torch

from qcore.cloud.export import to_qmodel
from qcore.cloud.flipnet import agreement_report, collect_rounds, fit_flipnet
from qcore.cloud.quantize import quantize_model
from qcore.core.quant import SUPPORTED_BITS, QuantizedTensor, qrange, quantize_weight
from qcore.edge.flip import (
    N_FEATURES,
    N_STATIC,
    FlipNet,
    apply_flips,
    dynamic_features,
    error_signal,
    gradient_proxy,
    layer_features,
    quantized_weight,
    static_features,
    sums_reducer,
    window_sums,
)
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
    with pytest.raises(QCoreError, match=f"^{qt.q.size - 1} flips for a weight of 60 codes$"):
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


# ------------------------------------------------------------ the flip arithmetic, exactly


def hand_net(threshold: float) -> FlipNet:
    """Scores ``[relu(f0), 0, relu(f1)]`` for the moves -1, 0, +1 of a feature row ``f``."""
    w1 = np.zeros((N_FEATURES, 3), np.float32)
    w1[0, 0] = w1[1, 2] = 1.0
    eye = np.eye(3, dtype=np.float32)
    zeros = np.zeros(3, np.float32)
    return FlipNet({"head": eye}, w1, zeros, eye, zeros, threshold)


def test_flip_probabilities_moves_and_confidence():
    f = np.zeros((5, N_FEATURES), np.float32)
    f[:, :2] = [[2, 2], [3, 0], [0, 0], [-5, 1], [1000, 0]]
    net = hand_net(threshold=float(np.float32(1 / 3)))
    p = net.probabilities(f)
    z = np.maximum(f[:, [0, 2, 1]].astype(np.float64), 0)
    z[:, 1] = 0
    ref = np.exp(z[:4]) / np.exp(z[:4]).sum(1, keepdims=True)
    np.testing.assert_allclose(p[:4], ref, rtol=1e-6)
    np.testing.assert_allclose(p[4], [1, 0, 0], atol=1e-12)  # no overflow at large scores
    flips, conf = net.flips_and_confidence(f)
    assert conf.dtype == np.float32 and flips.dtype == np.int16
    np.testing.assert_allclose(conf, np.maximum(p[:, 0], p[:, 2]), rtol=1e-6)
    # a tie between -1 and +1 moves up; uniform scores sit exactly at the threshold: no flip
    assert flips.tolist() == [1, -1, 0, 1, -1]
    assert net.predict_flips(f).tolist() == flips.tolist()
    assert hand_net(threshold=0.95).predict_flips(f).tolist() == [0, 0, 0, 0, -1]
    assert hand_net(threshold=0.0).predict_flips(f).tolist() == [1, -1, 1, 1, -1]
    assert net.nbytes() == 4 * (9 + 27 + 3 + 9 + 3) + 4


def test_error_signal_is_softmax_minus_onehot():
    logits = np.array([[0.0, np.log(3.0)], [1000.0, 0.0], [5.0, 5.0]])
    e = error_signal(logits, np.array([1, 1, 0]))
    assert e.dtype == np.float32
    np.testing.assert_allclose(e, [[0.25, -0.25], [1.0, -1.0], [-0.5, 0.5]], atol=1e-6)


def test_window_sums_of_a_head_input_and_dtype():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    S = window_sums(x, 7)  # a 2-D input is the head: one tap, whatever the kernel
    assert S.shape == (2, 3, 1) and S.dtype == np.float32
    assert S[..., 0].tolist() == x.tolist()
    S3 = window_sums(np.ones((1, 1, 4)), 3)  # 'same' padding: edge taps see one zero
    assert S3.dtype == np.float32 and S3.tolist() == [[[3.0, 4.0, 3.0]]]


def test_gradient_proxy_and_dynamic_features_by_hand():
    rng = np.random.default_rng(7)
    S = rng.normal(size=(4, 2, 3)).astype(np.float32)  # (n, i, k)
    e = rng.normal(size=(4, 3)).astype(np.float32)  # (n, classes)
    B = rng.normal(size=(3, 5)).astype(np.float32)  # (classes, out)
    G = gradient_proxy(S, e, B)
    delta = e @ B
    ref = np.array(
        [[np.mean(delta[:, o] * S[:, i, j]) for i in range(2) for j in range(3)] for o in range(5)]
    )
    assert G.shape == (5, 6) and G.dtype == np.float32
    np.testing.assert_allclose(G, ref, rtol=1e-5, atol=1e-6)
    d = dynamic_features(np.array([[3.0, -4.0]], np.float32))
    rms = np.sqrt(12.5)
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, [[3 / rms, 3 / rms], [-4 / rms, 4 / rms]], rtol=1e-6)
    assert dynamic_features(np.zeros((2, 2), np.float32)).tolist() == [[0.0, 0.0]] * 4
    # a vanishing proxy stays small and keeps its sign: 1e-13 / (1e-13 + 1e-12)
    tiny = dynamic_features(np.full((1, 2), 1e-13, np.float32))
    np.testing.assert_allclose(tiny, [[1 / 11, 1 / 11]] * 2, rtol=1e-4)


def test_static_features_describe_each_code():
    qt = QuantizedTensor(
        np.array([[0, 1], [2, 3]], np.uint8),
        np.array([0.5, 0.01], np.float32),
        np.array([1, 2], np.int32),
        2,
    )
    f = static_features(qt, is_head=True)
    third = 1 / 3
    expected = [
        # position, at min, at max, signed value, bits/8, is head, log10 scale
        [-0.5, 1, 0, -third, 0.25, 1, np.log10(0.5)],
        [third - 0.5, 0, 0, 0, 0.25, 1, np.log10(0.5)],
        [2 * third - 0.5, 0, 0, 0, 0.25, 1, -2],
        [0.5, 0, 1, third, 0.25, 1, -2],
    ]
    assert f.shape == (4, N_STATIC) and f.dtype == np.float32
    np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-6)
    assert not static_features(qt, is_head=False)[:, 5].any()
    flat = QuantizedTensor(qt.q, np.array([0.0, 1.0], np.float32), qt.zero_point, 2)
    np.testing.assert_allclose(static_features(flat, is_head=False)[:2, 6], -12.0)  # finite


def test_layer_features_mark_the_head_and_refuse_a_float_layer(tiny_model, tiny_xy):
    X, y = tiny_xy
    qm = to_qmodel(quantize_model(tiny_model, 4, X))
    e = error_signal(forward(qm, X[:6]), y[:6])
    trace = forward(qm, X[:6], record=True)
    for name in ("head", next(n for n in qm.layers if n != "head")):
        fb = np.eye(3, dtype=np.float32) if name == "head" else None
        if fb is None:
            fb = np.ones((3, qm.layers[name].weight.q.shape[0]), np.float32)
        x_in = trace.inputs[name]
        feats = layer_features(qm, name, x_in, e, fb)
        S = sums_reducer(qm)(name, x_in)
        np.testing.assert_array_equal(S, window_sums(x_in, qm.layers[name].kernel_size))
        assert feats.shape == (qm.layers[name].weight.q.size, N_FEATURES)
        assert (feats[:, 2 + 5] == float(name == "head")).all()
        np.testing.assert_array_equal(feats[:, :2], dynamic_features(gradient_proxy(S, e, fb)))
    float_qm = to_qmodel(quantize_model(tiny_model, None, X))
    with pytest.raises(QCoreError, match="layer head is float: flips need a quantized model"):
        quantized_weight(float_qm, "head")
