"""The flip budget of the flip passes keeps the most confident flips, and exactly as many
as it allows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.edge import flip_passes
from qcore.edge.flip import N_FEATURES, FlipNet, error_signal, sums_reducer
from qcore.edge.flip_passes import _flips_and_confidence, _most_confident, propose_flips
from qcore.edge.infer import forward, forward_reduced
from qcore.errors import QCoreError


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


def test_ties_among_many_flips_keep_the_earliest() -> None:
    """Stable ranking also where a sort of many equal confidences need not be stable."""
    rng = np.random.default_rng(1)
    conf = {"a": rng.choice([0.5, 0.7, 0.9], 300), "b": rng.choice([0.5, 0.7, 0.9], 300)}
    flips = {n: np.ones(300, np.int16) for n in conf}
    kept = _most_confident(flips, conf, 250)
    everything = np.concatenate([conf["a"], conf["b"]])
    order = sorted(range(600), key=lambda i: -everything[i])  # Python's sort is stable
    expected = np.zeros(600, np.int16)
    expected[order[:250]] = 1
    np.testing.assert_array_equal(np.concatenate([kept["a"], kept["b"]]), expected)


class _Model:
    """A stand-in model: named layers of integer codes; its loss is ``1 + `` the cost of
    each layer whose codes moved."""

    def __init__(self, codes: dict[str, np.ndarray]) -> None:
        self.layers = {n: SimpleNamespace(weight=c) for n, c in codes.items()}

    def copy(self) -> _Model:
        return _Model({n: layer.weight.copy() for n, layer in self.layers.items()})


def _stand_ins(monkeypatch, loss_of) -> None:
    """Flip passes on :class:`_Model` with ``loss_of(model)`` as the calibration loss."""
    monkeypatch.setattr(flip_passes, "error_signal", lambda logits, y: None)
    monkeypatch.setattr(flip_passes, "sums_features", lambda qm, name, *a: name)
    monkeypatch.setattr(flip_passes, "quantized_weight", lambda qm, name: qm.layers[name].weight)
    monkeypatch.setattr(flip_passes, "apply_flips", lambda w, f: w + f)
    monkeypatch.setattr(flip_passes, "forward", lambda model, X: model)
    monkeypatch.setattr(flip_passes, "cross_entropy", lambda model, y: loss_of(model))


def test_the_layer_guard_weighs_each_layer_on_its_own(monkeypatch) -> None:
    """No flips for a: skipped, and b, c, d still weighed; b leaves the loss as it is
    (kept), c raises it (refused), d lowers it (kept): 2 + 3 flips applied."""
    start = {n: np.zeros(4, np.int64) for n in "abcd"}
    cost = {"a": 9.0, "b": 0.0, "c": 0.5, "d": -0.25}
    proposals = {
        "a": np.zeros(4, np.int64),
        "b": np.array([1, 0, 1, 0]),
        "c": np.array([1, 1, 0, 0]),
        "d": np.array([0, 1, 1, 1]),
    }

    def loss_of(model: _Model) -> float:
        return 1.0 + sum(cost[n] for n, layer in model.layers.items() if layer.weight.any())

    _stand_ins(monkeypatch, loss_of)
    net = SimpleNamespace(feedback=dict.fromkeys("abcd"), predict_flips=proposals.__getitem__)
    trace = SimpleNamespace(logits=np.zeros((1, 2)), reduced=dict.fromkeys("abcd"))
    qm, applied = flip_passes._layer_guarded_pass(_Model(start), net, trace, None, None, 1.0)
    assert applied == 5
    assert [bool(qm.layers[n].weight.any()) for n in "abcd"] == [False, True, False, True]


def _backtrack(monkeypatch, proposed: int, accepted: set[int], budget=None):
    """A backtracked pass over ``proposed`` flips whose loss does not rise (it stays at
    1.0) only when exactly a count in ``accepted`` is applied; returns the pass's result
    and the counts tried."""
    tried: list[int] = []
    flips = {"a": np.ones(proposed, np.int16)}
    conf = {"a": np.linspace(1.0, 0.5, proposed)}
    monkeypatch.setattr(flip_passes, "error_signal", lambda logits, y: None)
    monkeypatch.setattr(flip_passes, "_flips_and_confidence", lambda *a: (flips, conf))

    def with_flips(qm, chosen):
        n = int(np.count_nonzero(chosen["a"]))
        tried.append(n)
        return ("model", n), n

    monkeypatch.setattr(flip_passes, "_with_flips", with_flips)
    monkeypatch.setattr(flip_passes, "_trace", lambda model, X: SimpleNamespace(logits=model))
    monkeypatch.setattr(flip_passes, "cross_entropy", lambda m, y: 1.0 if m[1] in accepted else 2.0)
    trace = SimpleNamespace(logits=np.zeros((1, 2)), reduced=None)
    out = flip_passes._backtracked_pass("qm", None, trace, None, None, 1.0, budget)
    return out, tried


def test_backtracking_halves_four_times_at_most(monkeypatch) -> None:
    # the fifth try, after four halvings, is the last; a loss that stays is no rise
    (model, _, loss, applied, proposed), tried = _backtrack(monkeypatch, 16, {1})
    assert tried == [16, 8, 4, 2, 1] and model == ("model", 1) and (applied, proposed) == (1, 16)
    assert loss == 1.0
    (model, trace, loss, applied, proposed), tried = _backtrack(monkeypatch, 64, {2})
    assert tried == [64, 32, 16, 8, 4] and model == "qm" and (applied, proposed) == (0, 64)
    (model, _, _, applied, _), tried = _backtrack(monkeypatch, 40, {40})
    assert tried == [40] and applied == 40


def test_backtracking_stops_when_nothing_is_left_to_try(monkeypatch) -> None:
    (model, _, loss, applied, proposed), tried = _backtrack(monkeypatch, 2, set())
    assert tried == [2, 1] and (model, loss, applied, proposed) == ("qm", 1.0, 0, 2)
    (model, _, _, applied, proposed), tried = _backtrack(monkeypatch, 0, {0})
    assert tried == [] and (model, applied, proposed) == ("qm", 0, 0)


def test_each_kept_pass_records_which_windows_the_model_gets_right(proposal, tiny_xy) -> None:
    qm, net, _, _ = proposal
    X, y = tiny_xy[0][:20], tiny_xy[1][:20]
    res = flip_passes.flip_calibrate(
        qm, X, y, net, steps=2, guard="off", bn_mode="frozen", budget=0.05
    )
    assert res.flips_applied > 0 and res.correct.shape == (3, 20)
    np.testing.assert_array_equal(res.correct[0], forward(qm, X).argmax(1) == y)
    np.testing.assert_array_equal(res.correct[-1], forward(res.model, X).argmax(1) == y)
    assert res.correct[-1].any()


def _calibrate_backtracking(monkeypatch, passes: list[tuple], steps: int = 5):
    """``flip_calibrate`` with ``guard="backtrack"`` whose passes return, in turn,
    ``(model, logits, flips applied, flips proposed)`` from ``passes``."""
    y = np.array([0, 1, 1])
    start = SimpleNamespace(logits=np.eye(2)[[0, 0, 0]], reduced=None)  # right on window 0
    monkeypatch.setattr(flip_passes, "_trace", lambda qm, X: start)
    monkeypatch.setattr(flip_passes, "cross_entropy", lambda logits, y: 1.0)
    queue = iter(passes)

    def backtracked(qm, net, trace, X, y, loss, budget):
        model, logits, applied, proposed = next(queue)
        return model, SimpleNamespace(logits=logits, reduced=None), loss, applied, proposed

    monkeypatch.setattr(flip_passes, "_backtracked_pass", backtracked)
    res = flip_passes.flip_calibrate(
        "qm", None, y, object(), steps=steps, guard="backtrack", bn_mode="frozen", budget=None
    )
    return res, list(queue)


def test_backtracking_passes_go_on_until_one_keeps_nothing(monkeypatch) -> None:
    eye = np.eye(2)
    passes = [
        ("m1", eye[[0, 1, 0]], 3, 5),
        ("m2", eye[[1, 1, 1]], 1, 4),
        ("unused", None, 0, 1),  # one flip proposed, none kept: a rejected pass
        ("never", None, 2, 2),
    ]
    res, left = _calibrate_backtracking(monkeypatch, passes)
    assert res.model == "m2" and (res.flips_applied, res.passes_rejected) == (4, 1)
    assert res.correct.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert [p[0] for p in left] == ["never"]  # the rejected pass ended the step
    res, left = _calibrate_backtracking(monkeypatch, [("unused", None, 0, 0), passes[3]])
    assert (res.model, res.flips_applied, res.passes_rejected) == ("qm", 0, 0)  # none proposed
    assert len(left) == 1 and res.correct.shape == (1, 3)


def test_layer_guarded_passes_go_on_until_one_flips_nothing(monkeypatch) -> None:
    eye = np.eye(2)
    logits = {"qm": eye[[0, 0, 0]], "m1": eye[[0, 1, 0]], "m2": eye[[1, 1, 1]]}
    monkeypatch.setattr(
        flip_passes, "_trace", lambda qm, X: SimpleNamespace(logits=logits[qm], reduced=None)
    )
    monkeypatch.setattr(flip_passes, "cross_entropy", lambda logits, y: 1.0)
    queue = iter([("m1", 3), ("m2", 1), ("qm", 0), ("never", 2)])
    monkeypatch.setattr(flip_passes, "_layer_guarded_pass", lambda *a: next(queue))
    res = flip_passes.flip_calibrate(
        "qm",
        None,
        np.array([0, 1, 1]),
        object(),
        steps=5,
        guard="layer",
        bn_mode="frozen",
        budget=None,
    )
    assert res.model == "m2" and (res.flips_applied, res.passes_rejected) == (4, 0)
    assert res.correct.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert next(queue) == ("never", 2)  # the pass that flipped nothing ended the step


def _calibrate_scripted(monkeypatch, guard: str, passes: list[tuple], steps: int = 5):
    """``flip_calibrate`` under ``guard`` (``"pass"`` or ``"off"``) whose proposals are,
    in turn, ``(model, flips, loss, logits)`` from ``passes``; the model it starts from
    has loss 1.0 and is right on window 0 of 3."""
    y = np.array([0, 1, 1])
    loss_of = {"qm": 1.0}
    logits_of = {"qm": np.eye(2)[[0, 0, 0]]}
    for model, _, loss, logits in passes:
        loss_of[model], logits_of[model] = loss, logits
    loss_by_logits = {id(logits_of[m]): loss for m, loss in loss_of.items()}
    monkeypatch.setattr(
        flip_passes, "_trace", lambda qm, X: SimpleNamespace(logits=logits_of[qm], reduced=None)
    )
    monkeypatch.setattr(flip_passes, "cross_entropy", lambda lg, y: loss_by_logits[id(lg)])
    monkeypatch.setattr(flip_passes, "error_signal", lambda logits, y: None)
    queue = iter([(model, flips) for model, flips, _, _ in passes])
    monkeypatch.setattr(flip_passes, "propose_flips", lambda *a: next(queue))
    return flip_passes.flip_calibrate(
        "qm", None, y, object(), steps=steps, guard=guard, bn_mode="frozen", budget=None
    ), list(queue)


def test_the_pass_guard_keeps_a_pass_whose_loss_does_not_rise(monkeypatch) -> None:
    eye = np.eye(2)
    passes = [
        ("m1", 2, 1.0, eye[[0, 1, 0]]),  # the loss stays: kept
        ("m2", 1, 0.5, eye[[1, 1, 1]]),  # one flip, the loss falls: kept
        ("m3", 3, 0.7, eye[[0, 1, 1]]),  # the loss rises: rejected, the step ends
        ("never", 1, 0.1, eye[[0, 1, 1]]),
    ]
    res, left = _calibrate_scripted(monkeypatch, "pass", passes)
    assert res.model == "m2" and (res.flips_applied, res.passes_rejected) == (3, 1)
    assert res.correct.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert [p[0] for p in left] == ["never"]


def test_without_a_guard_passes_go_on_until_one_flips_nothing(monkeypatch) -> None:
    eye = np.eye(2)
    passes = [
        ("m1", 2, 3.0, eye[[0, 1, 0]]),  # the loss rises: kept all the same
        ("qm", 0, 1.0, eye[[0, 0, 0]]),  # nothing flipped: the step ends
        ("never", 1, 0.1, eye[[0, 1, 1]]),
    ]
    res, left = _calibrate_scripted(monkeypatch, "off", passes)
    assert res.model == "m1" and (res.flips_applied, res.passes_rejected) == (2, 0)
    assert res.correct.tolist() == [[1, 0, 0], [1, 1, 0]]
    assert [p[0] for p in left] == ["never"]


def test_no_flip_network_is_needed_for_no_passes(monkeypatch) -> None:
    _calibrate_scripted(monkeypatch, "pass", [], steps=0)  # the stand-ins
    res = flip_passes.flip_calibrate(
        "qm", None, np.array([0, 1, 1]), None, steps=0, guard="pass", bn_mode="frozen", budget=None
    )
    assert res.model == "qm" and res.correct.shape == (1, 3)
    with pytest.raises(QCoreError, match="^flip passes need a flip network$"):
        flip_passes.flip_calibrate(
            "qm", None, None, None, steps=1, guard="pass", bn_mode="frozen", budget=None
        )
    for key, guard, bn_mode in (("flip_guard", "none", "frozen"), ("bn_mode", "off", "keep")):
        with pytest.raises(QCoreError, match=rf"^unknown {key} '"):
            flip_passes.flip_calibrate(
                "qm", None, None, None, steps=0, guard=guard, bn_mode=bn_mode, budget=None
            )


def test_cross_entropy_is_stable_per_window() -> None:
    """Each window's log-softmax shifted by its own maximum: a large logit in one window
    neither overflows nor drowns another window."""
    logits = np.array([[1000.0, 0.0], [0.0, 5.0], [-3.0, -3.0]])
    expected = (0.0 + np.log1p(np.exp(-5.0)) + np.log(2.0)) / 3
    assert flip_passes.cross_entropy(logits, np.array([0, 1, 0])) == pytest.approx(expected)
    assert flip_passes.cross_entropy(logits, np.array([1, 0, 1])) == pytest.approx(
        (1000.0 + 5.0 + np.log1p(np.exp(-5.0)) + np.log(2.0)) / 3
    )
