"""Backbone calibration: the part of the device step
(:meth:`qcore.edge.device.Device.step`) that changes the feature extractor and the core,
the same code under ``qcore device``, ``qcore run`` and ``qcore bench``.

Given the batch (normalised windows and labels) and whether the current model got each
window right, :func:`calibration_step`

1. calibrates on core plus batch with :func:`qcore.edge.flip_passes.flip_calibrate`
   (BatchNorm mode, guarded flip passes, flip budget, all from :class:`DeviceConfig`);
2. rolls back when the new model's accuracy on the old core or on the batch dropped by
   more than ``guard_margin``, or when the new model holds a non-finite value;
3. otherwise updates the core with the step's :class:`CoreUpdate` (QCore's: scored by
   the misses over the flip passes, drawn with a generator seeded by ``(seed, step)``, so
   a resumed device draws what an uninterrupted one would), and keeps it as the device
   stores it (8-bit windows, :func:`qcore.coreset.storage.roundtrip`).

Pure: nothing is mutated (a :class:`CoreUpdate` may keep its own counters); the caller
commits the returned model and core. NumPy only, forward passes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from qcore.config import CoreMode, DeviceConfig
from qcore.core.qmodel import QuantizedModel
from qcore.core.quant import QuantizedTensor, dequantize, quantize_weight
from qcore.coreset.core import Core, update_core
from qcore.coreset.scores import pass_misses
from qcore.coreset.storage import roundtrip
from qcore.edge.flip import FlipNet
from qcore.edge.flip_passes import flip_calibrate
from qcore.edge.head import UNSEEN, HeadStats, Solved, precision, solve
from qcore.edge.infer import predict
from qcore.errors import QCoreError


class CoreUpdate(Protocol):
    """``(core, X, y, correct, step) -> new core``: how the core follows the stream.

    ``correct``: bool ``(passes, len(core) + len(y))``, old core first, then the batch.
    """

    def __call__(
        self, core: Core, X: np.ndarray, y: np.ndarray, correct: np.ndarray, step: int
    ) -> Core: ...


@dataclass(frozen=True)
class QCoreUpdate:
    """QCore's update: keep ``len(core)`` of old core plus batch, drawn by misses."""

    mode: CoreMode = "proportional"
    old_quota: float | None = None
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: DeviceConfig) -> QCoreUpdate:
        return cls(cfg.core_mode, cfg.old_quota, cfg.seed)

    def __call__(
        self, core: Core, X: np.ndarray, y: np.ndarray, correct: np.ndarray, step: int
    ) -> Core:
        return update_core(
            core,
            X,
            y,
            pass_misses(correct),
            step=step,
            seed=step_rng(self.seed, step),
            mode=self.mode,
            old_quota=self.old_quota,
        )


def moves_backbone(cfg: DeviceConfig) -> bool:
    """Whether a step can change the feature extractor (flips or BatchNorm statistics)."""
    return cfg.flip_steps > 0 or cfg.bn_mode == "reestimate"


def solve_head(stats: HeadStats | None, cfg: DeviceConfig) -> Solved:
    """The streaming head solved from its statistics (``cfg.head_shrinkage``); with
    ``cfg.head_bits`` the weights are rounded to that many bits per class (asymmetric,
    as the model's weights), as a device computing the head in integers would use them.
    A class the device added (:func:`qcore.edge.head.grow`) is predicted only once it has
    ``cfg.new_class_min`` labelled windows: until then its bias is
    :data:`qcore.edge.head.UNSEEN`, as for a class never seen."""
    if stats is None:
        raise QCoreError("the streaming head needs its statistics")
    weight, bias = solve(stats, cfg.head_shrinkage)
    if cfg.head_bits is not None:
        qt = quantize_weight(weight, cfg.head_bits)
        weight = dequantize(qt.q, qt.scale[:, None], qt.zero_point[:, None]).astype(np.float32)
    first = stats.n_classes - stats.n_learnt
    young = np.arange(stats.n_classes) >= first
    young &= stats.count < cfg.new_class_min
    bias = np.where(young, np.float32(UNSEEN), bias).astype(np.float32)
    return Solved(weight, bias, precision(stats, cfg.head_shrinkage).astype(np.float32))


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of stream step ``step`` (1-based): the one RNG rule of the device."""
    return np.random.default_rng([seed, step])


@dataclass(frozen=True)
class StepResult:
    """The model and core to commit, and what the step did."""

    model: QuantizedModel
    core: Core | None
    flips: int
    passes_rejected: int
    rolled_back: bool
    core_acc_before: float | None
    core_acc_after: float | None
    batch_acc_after: float

    def report(self) -> dict[str, Any]:
        return {
            "rolled_back": self.rolled_back,
            "flips": self.flips,
            "passes_rejected": self.passes_rejected,
            "core_acc_before": self.core_acc_before,
            "core_acc_after": self.core_acc_after,
            "batch_acc_after": self.batch_acc_after,
        }


def calibration_step(
    model: QuantizedModel,
    core: Core | None,
    net: FlipNet | None,
    X: np.ndarray,
    y: np.ndarray,
    batch_correct: np.ndarray,
    step: int,
    cfg: DeviceConfig,
    update: CoreUpdate | None = None,
) -> StepResult:
    """Calibrate on ``core`` plus ``(X, y)``, guard, update the core (see module doc).

    ``X``: normalised float32 ``(n, c, t)``; ``y``: int64 ``(n,)``; ``batch_correct``: bool
    ``(n,)``, the current model's (its own head's) correctness on the batch; ``step``: this
    batch's number (1-based); ``update``: default :class:`QCoreUpdate` from ``cfg``;
    ``net`` may be None when ``cfg.flip_steps`` is 0.
    """
    n_core = 0 if core is None else len(core)
    X_cal = X if core is None else np.concatenate([core.X, X])
    y_cal = y if core is None else np.concatenate([core.y, y])
    res = flip_calibrate(
        model,
        X_cal,
        y_cal,
        net,
        steps=cfg.flip_steps,
        guard=cfg.flip_guard,
        bn_mode=cfg.bn_mode,
        budget=cfg.flip_budget,
    )
    # res.correct[-1] is the returned model's correctness on core + batch: the guard's
    # "after" accuracies come for free; "before" on the core costs one small forward.
    after = res.correct[-1]
    core_acc_before = None if core is None else _fraction(predict(model, core.X) == core.y)
    core_acc_after = _fraction(after[:n_core]) if n_core else None
    batch_acc_after = float(after[n_core:].mean())
    drops = [float(batch_correct.mean()) - batch_acc_after]
    if core_acc_before is not None and core_acc_after is not None:
        drops.append(core_acc_before - core_acc_after)
    # A finite but absurd window (e.g. 1e30 from a sensor glitch) can overflow the
    # float32 BatchNorm re-estimate to inf: such a candidate is never committed, or the
    # damaged model and the window (kept in the core) would persist in every state.
    rolled_back = max(drops) > cfg.guard_margin or not finite(res.model)
    new_model, new_core = model, core
    if not rolled_back:
        new_model = res.model
        if core is not None:
            rule = QCoreUpdate.from_config(cfg) if update is None else update
            new_core = roundtrip(rule(core, X, y, res.correct, step))
    return StepResult(
        new_model,
        new_core,
        int(res.flips_applied),
        int(res.passes_rejected),
        rolled_back,
        core_acc_before,
        core_acc_after,
        batch_acc_after,
    )


def finite(model: QuantizedModel) -> bool:
    """Whether every float array of ``model`` (scales, biases, BatchNorm) is finite."""
    arrays: list[np.ndarray] = []
    for layer in model.layers.values():
        w = layer.weight
        arrays.append(w.scale if isinstance(w, QuantizedTensor) else w)
        if layer.bias is not None:
            arrays.append(layer.bias)
    for bn in model.norms.values():
        arrays += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return all(np.isfinite(a).all() for a in arrays)


def _fraction(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None
