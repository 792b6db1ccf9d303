"""The flip passes of backbone calibration: BatchNorm statistics, then guarded passes
of the flip network's proposals (:func:`flip_calibrate`), under a flip budget.

:func:`qcore.edge.backbone.calibration_step` runs them on core plus batch inside the
device step (:meth:`qcore.edge.device.Device.step`). Forward passes only: no gradient,
no optimizer. The correctness of every calibration sample in every pass is returned,
because the QCore update scores samples by the misses observed over these passes
(docs/method.md). A pass keeps of each layer's input only its window sums
(:func:`qcore.edge.flip.sums_reducer`), computed chunk by chunk, so memory does not grow
with the windows' length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.config import BN_MODES, FLIP_GUARDS, BnMode, FlipGuard, check_choice
from qcore.core.qmodel import QuantizedModel
from qcore.edge.flip import (
    FlipNet,
    apply_flips,
    error_signal,
    quantized_weight,
    sums_features,
    sums_reducer,
)
from qcore.edge.infer import bn_reestimate, forward, forward_reduced
from qcore.edge.runner import Trace
from qcore.errors import QCoreError


@dataclass(frozen=True)
class FlipStepResult:
    model: QuantizedModel
    correct: np.ndarray  # bool (n_passes, n_samples)
    flips_applied: int
    passes_rejected: int


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _logits(trace: Trace) -> np.ndarray:
    """The logits of a trace recorded by :func:`_trace`."""
    # Every trace here comes from ``forward_reduced``, which never returns one without
    # logits: ``Runner.run`` sets them on each chunk's trace and ``_merge`` concatenates
    # them (inputs are never empty). Only an unfilled ``Trace()`` has None.
    assert trace.logits is not None
    return trace.logits


def _trace(qm: QuantizedModel, X: np.ndarray) -> Trace:
    """Logits and each layer input's window sums (``trace.reduced``) of ``X``."""
    return forward_reduced(qm, X, sums_reducer(qm))


def propose_flips(
    qm: QuantizedModel,
    net: FlipNet,
    sums: dict[str, np.ndarray],
    e: np.ndarray,
    budget: float | None = None,
) -> tuple[QuantizedModel, int]:
    """A copy of ``qm`` with every layer's predicted flips applied, and the flip count;
    ``sums``: each layer input's window sums (``trace.reduced``).

    With ``budget`` only the most confident flips are kept, at most ``budget`` times the
    model's number of quantized codes.
    """
    flips, conf = _flips_and_confidence(qm, net, sums, e)
    if budget is not None:
        flips = _most_confident(flips, conf, _budget_count(qm, flips, budget))
    return _with_flips(qm, flips)


def _budget_count(qm: QuantizedModel, flips: dict[str, np.ndarray], budget: float) -> int:
    """How many flips ``budget`` allows: that share of the flippable layers' codes."""
    return int(budget * sum(quantized_weight(qm, n).q.size for n in flips))


def _flips_and_confidence(
    qm: QuantizedModel, net: FlipNet, sums: dict[str, np.ndarray], e: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per layer: the network's flips and each code's confidence ``max(p(-1), p(+1))``."""
    flips: dict[str, np.ndarray] = {}
    conf: dict[str, np.ndarray] = {}
    for name, feedback in net.feedback.items():
        flips[name], conf[name] = net.flips_and_confidence(
            sums_features(qm, name, sums[name], e, feedback)
        )
    return flips, conf


def _most_confident(
    flips: dict[str, np.ndarray], conf: dict[str, np.ndarray], keep: int
) -> dict[str, np.ndarray]:
    """The ``keep`` most confident of ``flips`` over all layers; ties go to the earlier
    layer and code, so exactly ``min(keep, proposed)`` flips survive."""
    moving = {n: np.flatnonzero(f) for n, f in flips.items()}
    ranked = np.concatenate([conf[n].reshape(-1)[i] for n, i in moving.items()])
    if keep >= len(ranked):
        return flips
    kept = np.zeros(len(ranked), dtype=bool)
    kept[np.argsort(-ranked, kind="stable")[: max(keep, 0)]] = True
    out: dict[str, np.ndarray] = {}
    start = 0
    for n, i in moving.items():
        sel = i[kept[start : start + len(i)]]
        f = np.zeros(flips[n].size, dtype=np.int16)
        f[sel] = flips[n].reshape(-1)[sel]
        out[n] = f.reshape(flips[n].shape)
        start += len(i)
    return out


def _with_flips(qm: QuantizedModel, flips: dict[str, np.ndarray]) -> tuple[QuantizedModel, int]:
    out = qm.copy()
    for name, f in flips.items():
        out.layers[name].weight = apply_flips(quantized_weight(qm, name), f)
    return out, int(sum(np.count_nonzero(f) for f in flips.values()))


BACKTRACK_HALVINGS = 4


def _backtracked_pass(
    qm: QuantizedModel,
    net: FlipNet,
    trace: Trace,
    X: np.ndarray,
    y: np.ndarray,
    loss: float,
    budget: float | None,
) -> tuple[QuantizedModel, Trace, float, int, int]:
    """The pass's flips (at most ``budget`` of the codes), or if they raise the loss its
    most confident half, quarter, ... (up to ``BACKTRACK_HALVINGS`` halvings, one forward
    pass each): the largest share whose loss does not rise. Returns (model, trace, loss,
    flips applied, flips proposed)."""
    flips, conf = _flips_and_confidence(qm, net, trace.reduced, error_signal(_logits(trace), y))
    proposed = int(sum(np.count_nonzero(f) for f in flips.values()))
    keep = proposed if budget is None else min(proposed, _budget_count(qm, flips, budget))
    for _ in range(BACKTRACK_HALVINGS + 1):
        if keep == 0:
            break
        candidate, n_flips = _with_flips(qm, _most_confident(flips, conf, keep))
        cand_trace = _trace(candidate, X)
        cand_loss = cross_entropy(_logits(cand_trace), y)
        if cand_loss <= loss:
            return candidate, cand_trace, cand_loss, n_flips, proposed
        keep //= 2
    return qm, trace, loss, 0, proposed


def _layer_guarded_pass(
    qm: QuantizedModel, net: FlipNet, trace: Trace, X: np.ndarray, y: np.ndarray, loss: float
) -> tuple[QuantizedModel, int]:
    """Accept each layer's flips only if the calibration loss does not rise (one forward
    pass per layer with flips)."""
    e = error_signal(_logits(trace), y)
    applied = 0
    for name, feedback in net.feedback.items():
        flips = net.predict_flips(sums_features(qm, name, trace.reduced[name], e, feedback))
        if not np.any(flips):
            continue
        candidate = qm.copy()
        candidate.layers[name].weight = apply_flips(quantized_weight(qm, name), flips)
        cand_logits = forward(candidate, X)
        cand_loss = cross_entropy(cand_logits, y)
        if cand_loss <= loss:
            qm, loss = candidate, cand_loss
            applied += int(np.count_nonzero(flips))
    return qm, applied


def flip_calibrate(
    qm: QuantizedModel,
    X: np.ndarray,
    y: np.ndarray,
    net: FlipNet | None,
    *,
    steps: int,
    guard: FlipGuard,
    bn_mode: BnMode,
    budget: float | None,
) -> FlipStepResult:
    """Calibrate ``qm`` on ``(X, y)`` (core plus batch) without back-propagation.

    ``bn_mode='reestimate'`` first replaces BatchNorm statistics by those of ``X``;
    ``'frozen'`` keeps them. Each of ``steps`` passes proposes flips for every layer;
    with ``guard="pass"`` a pass is kept only if the loss on ``(X, y)`` does not rise
    (one extra forward pass), and the first rejected pass ends the step; ``"off"``
    applies every pass; with ``"layer"`` each layer's flips are accepted or refused on
    their own; with ``"backtrack"`` a pass that raises the loss is retried with only its
    most confident half of flips, then a quarter, ... (:data:`BACKTRACK_HALVINGS`).
    ``budget`` caps each pass (with ``"pass"``, ``"off"`` or ``"backtrack"``) at its
    most confident flips, at most that fraction of the model's codes (None: no cap); the
    per-layer guard, which weighs each layer's flips on their own, does not use it.
    """
    check_choice("flip_guard", guard, FLIP_GUARDS)
    check_choice("bn_mode", bn_mode, BN_MODES)
    if steps > 0 and net is None:
        raise QCoreError("flip passes need a flip network")
    if bn_mode == "reestimate":
        qm = bn_reestimate(qm, X)
    trace = _trace(qm, X)
    state = _Passes(qm, trace, cross_entropy(_logits(trace), y), [_logits(trace).argmax(1) == y])
    for _ in range(steps):
        assert net is not None  # checked above
        if not _next_pass(state, net, X, y, guard, budget):
            break
    return FlipStepResult(state.qm, np.stack(state.correct), state.applied, state.rejected)


@dataclass
class _Passes:
    """The passes so far: the model, its trace and loss on ``(X, y)``, the correctness
    after each kept pass, the flips applied and the passes rejected."""

    qm: QuantizedModel
    trace: Trace
    loss: float
    correct: list[np.ndarray]
    applied: int = 0
    rejected: int = 0

    def keep(
        self, qm: QuantizedModel, trace: Trace, loss: float, n_flips: int, y: np.ndarray
    ) -> None:
        """Make ``qm`` (with its trace and loss) the current model after a kept pass."""
        self.qm, self.trace, self.loss = qm, trace, loss
        self.applied += n_flips
        self.correct.append(_logits(trace).argmax(1) == y)


def _next_pass(
    s: _Passes, net: FlipNet, X: np.ndarray, y: np.ndarray, guard: FlipGuard, budget: float | None
) -> bool:
    """Run one pass under ``guard`` and record it in ``s``; False when the passes end
    (nothing flipped, or a pass rejected under ``"pass"`` or ``"backtrack"``)."""
    if guard == "backtrack":
        qm, trace, loss, n_flips, n_proposed = _backtracked_pass(
            s.qm, net, s.trace, X, y, s.loss, budget
        )
        if n_flips == 0:
            s.rejected += int(n_proposed > 0)
            return False
        s.keep(qm, trace, loss, n_flips, y)
        return True
    if guard == "layer":
        qm, n_flips = _layer_guarded_pass(s.qm, net, s.trace, X, y, s.loss)
        if n_flips == 0:
            return False
        trace = _trace(qm, X)
        s.keep(qm, trace, cross_entropy(_logits(trace), y), n_flips, y)
        return True
    e = error_signal(_logits(s.trace), y)
    candidate, n_flips = propose_flips(s.qm, net, s.trace.reduced, e, budget)
    if n_flips == 0:
        return False
    cand_trace = _trace(candidate, X)
    cand_loss = cross_entropy(_logits(cand_trace), y)
    if guard == "pass" and cand_loss > s.loss:
        s.rejected += 1
        return False
    s.keep(candidate, cand_trace, cand_loss, n_flips, y)
    return True
