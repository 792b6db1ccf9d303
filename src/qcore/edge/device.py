"""The device loop: predict each labelled batch, calibrate by policy, guard, report.

One :meth:`Device.step` is what a deployed sensor node does with a batch of raw windows
and their labels:

1. validate the batch (nothing changes when it is rejected);
2. normalise it with the artifact's normaliser and predict: ``accuracy`` is measured
   *before* any calibration on this batch, as in the stream evaluation;
3. decide by policy whether to calibrate: ``every`` batch, ``every:N`` (the N-th, 2N-th,
   ... batch) or ``drift`` (when a Page-Hinkley test on the batch's mean max-softmax
   confidence fires, see :mod:`qcore.edge.drift`);
4. calibrate as :class:`qcore.eval.stream.QCoreCalibrator` does: flip calibration on
   core plus batch, then the core update from the misses over the flip passes;
5. guard: compare the new state with the previous one on the previous core and on the
   batch; if either accuracy dropped by more than ``guard_margin``, or the new model holds
   a non-finite value, roll back model and core to the previous state.

The step works on copies and commits them in one assignment at the end, so an
exception anywhere leaves the device exactly as it was. NumPy only.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qcore.core.qmodel import QuantizedModel
from qcore.core.quant import QuantizedTensor
from qcore.coreset.core import update_core_after_passes
from qcore.edge.artifact import Artifact, compress_windows, decompress_windows
from qcore.edge.calibrate import DEFAULT_FLIP_BUDGET, check_flip_budget, flip_calibrate
from qcore.edge.drift import PageHinkley
from qcore.edge.infer import forward, predict
from qcore.errors import QCoreError

BN_MODES = ("reestimate", "frozen")
_GUARDS = {"pass": True, "off": False}  # the run config's flip_guard names
STATE_KEY = "device"  # artifact.config[STATE_KEY] holds the detector state between runs


@dataclass(frozen=True)
class Policy:
    """When to calibrate: ``kind`` "every" (each ``every``-th batch) or "drift"."""

    kind: str
    every: int = 1

    def __str__(self) -> str:
        if self.kind == "drift":
            return "drift"
        return "every" if self.every == 1 else f"every:{self.every}"


def parse_policy(spec: str) -> Policy:
    """``"every"``, ``"every:N"`` (N >= 1) or ``"drift"`` -> :class:`Policy`."""
    if spec == "every":
        return Policy("every")
    if spec == "drift":
        return Policy("drift")
    if isinstance(spec, str) and spec.startswith("every:"):
        n = spec.split(":", 1)[1]
        if n.isdigit() and int(n) >= 1:
            return Policy("every", int(n))
    raise QCoreError(f"unknown policy {spec!r}: choose every, every:N (N >= 1) or drift")


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux ``/proc/self/statm``), else None."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int | None:
    """Peak resident set size (``VmHWM`` of ``/proc/self/status``), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _confidence(logits: np.ndarray) -> float:
    """Mean max-softmax probability over the batch (float64, stable softmax)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return float((p.max(axis=1) / p.sum(axis=1)).mean())


def _finite(model: QuantizedModel) -> bool:
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


class Device:
    """A deployed model that calibrates itself on the labelled batches it is given.

    ``art``: the artifact to start from (a quantized model with a flip network); the
    device never mutates it and keeps its current state in :attr:`art`. ``steps``,
    ``guard``, ``bn_mode`` and ``budget`` are passed to :func:`flip_calibrate` (``guard``: a
    bool, or the run setting's names "pass" = True, "off" = False, "layer" = per-layer
    guard, "backtrack" = halve a rejected pass by confidence);
    ``guard_margin`` is the accuracy drop (0..1) on core or batch beyond which a
    calibration is rolled back.
    ``seed`` with the step number seeds each core update, so a resumed device draws the
    same cores as an uninterrupted one. ``drift``: detector for the ``drift`` policy
    (default: the one saved in the artifact, else :class:`PageHinkley` defaults).
    """

    def __init__(
        self,
        art: Artifact,
        policy: str = "every",
        guard_margin: float = 0.05,
        steps: int = 3,
        guard: bool | str = True,
        bn_mode: str = "reestimate",
        seed: int = 0,
        drift: PageHinkley | None = None,
        budget: float | None = DEFAULT_FLIP_BUDGET,
    ) -> None:
        self.policy = parse_policy(policy)
        guard = _GUARDS.get(guard, guard) if isinstance(guard, str) else guard
        if guard not in (True, False, "layer", "backtrack"):
            raise QCoreError(f"unknown flip guard {guard!r}: choose pass, backtrack, layer or off")
        if not 0.0 <= guard_margin <= 1.0:
            raise QCoreError(f"guard_margin must lie in [0, 1], got {guard_margin}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise QCoreError(f"steps must be an integer >= 1, got {steps!r}")
        check_flip_budget(budget)
        if bn_mode not in BN_MODES:
            raise QCoreError(f"unknown bn_mode {bn_mode!r}: choose one of {', '.join(BN_MODES)}")
        if art.model.bits is None:
            raise QCoreError(
                "the device calibrates by flipping integer codes: need a quantized model"
            )
        if art.flipnet is None:
            raise QCoreError("the artifact has no flip network: the device cannot calibrate")
        self.guard_margin, self.steps, self.guard, self.bn_mode = (
            guard_margin,
            steps,
            guard,
            bn_mode,
        )
        self.seed, self.budget = int(seed), budget
        self.art = replace(art, config=copy.deepcopy(art.config))
        saved = art.config.get(STATE_KEY, {}).get("drift") if self.policy.kind == "drift" else None
        if drift is not None:
            self.detector = copy.deepcopy(drift)
        elif saved is not None:
            self.detector = PageHinkley.from_dict(saved)
        else:
            self.detector = PageHinkley()

    # -------------------------------------------------------------------- validation

    def validate(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(X float32 (n, c, t), y int64 (n,))`` or raise :class:`QCoreError`."""
        art = self.art
        c, t, k = art.model.n_channels, art.window_length, art.model.n_classes
        if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
            raise QCoreError("batch X and y must be NumPy arrays")
        if not np.issubdtype(X.dtype, np.floating):
            raise QCoreError(f"batch X must be floating point, got {X.dtype}")
        if X.ndim != 3:
            raise QCoreError(f"batch X must have shape (n, {c}, {t}), got rank {X.ndim}")
        if X.shape[0] == 0:
            raise QCoreError("batch is empty")
        if X.shape[1] != c:
            raise QCoreError(f"batch has {X.shape[1]} channels, the model expects {c}")
        if X.shape[2] != t:
            raise QCoreError(f"batch windows have {X.shape[2]} time steps, the model expects {t}")
        if not np.isfinite(X).all():
            raise QCoreError("batch X contains NaN or infinite values")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise QCoreError(f"batch y must be 1-D integer labels, got {y.dtype} of rank {y.ndim}")
        if len(y) != len(X):
            raise QCoreError(f"batch has {len(X)} windows but {len(y)} labels")
        if y.min() < 0 or y.max() >= k:
            raise QCoreError(f"batch labels must lie in 0..{k - 1}, got {y.min()}..{y.max()}")
        return X.astype(np.float32, copy=False), y.astype(np.int64)

    # -------------------------------------------------------------------------- step

    def _due(self, new_step: int, detector: PageHinkley, confidence: float) -> tuple[bool, bool]:
        """(calibrate?, drift fired?) for the batch numbered ``new_step`` (1-based)."""
        if self.policy.kind == "drift":
            fired = detector.update(confidence)
            return fired, fired
        return new_step % self.policy.every == 0, False

    def step(self, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Process one labelled batch of raw windows; return the step's report.

        ``X``: un-normalised float ``(n, n_channels, window_length)``; ``y``: int labels
        ``(n,)``. Report keys: ``step`` (batches processed so far), ``n``, ``accuracy``
        (before calibration), ``confidence``, ``latency_ms`` (inference per window),
        ``calibrated``, ``drift``, ``rolled_back``, ``calib_ms``, ``flips``,
        ``passes_rejected``, ``core_acc_before``/``core_acc_after``/``batch_acc_after``
        (the guard's view; None when not calibrated), ``rss_bytes``, ``peak_rss_bytes``.
        """
        X, y = self.validate(X, y)
        art = self.art
        Xn = ((X - art.normalizer_mean[None, :, None]) / art.normalizer_std[None, :, None]).astype(
            np.float32
        )
        t0 = time.perf_counter()
        logits = forward(art.model, Xn)
        latency_ms = (time.perf_counter() - t0) * 1e3 / len(y)
        batch_before = logits.argmax(1) == y
        confidence = _confidence(logits)
        new_step = art.step + 1
        detector = copy.deepcopy(self.detector)  # committed only if the step succeeds
        calibrate, fired = self._due(new_step, detector, confidence)
        report: dict[str, Any] = {
            "step": new_step,
            "n": int(len(y)),
            "accuracy": float(batch_before.mean()),
            "confidence": confidence,
            "latency_ms": latency_ms,
            "calibrated": calibrate,
            "drift": fired,
            "rolled_back": False,
            "calib_ms": 0.0,
            "flips": 0,
            "passes_rejected": 0,
            "core_acc_before": None,
            "core_acc_after": None,
            "batch_acc_after": None,
        }
        model, core = art.model, art.core
        if calibrate:
            t1 = time.perf_counter()
            model, core, info = self._calibrate(Xn, y, batch_before, new_step)
            report.update(info, calib_ms=(time.perf_counter() - t1) * 1e3)
        config = art.config
        if self.policy.kind == "drift":
            config = {**config, STATE_KEY: {"drift": detector.to_dict()}}
        self.art, self.detector = (
            replace(art, model=model, core=core, config=config, step=new_step),
            detector,
        )
        report["rss_bytes"] = rss_bytes()
        report["peak_rss_bytes"] = peak_rss_bytes()
        return report

    def _calibrate(self, Xn: np.ndarray, y: np.ndarray, batch_before: np.ndarray, new_step: int):
        """New (model, core) and the report fields of one guarded calibration."""
        art = self.art
        core = art.core
        n_core = 0 if core is None else len(core)
        X_cal = Xn if core is None else np.concatenate([core.X, Xn])
        y_cal = y if core is None else np.concatenate([core.y, y])
        res = flip_calibrate(
            art.model,
            X_cal,
            y_cal,
            art.flipnet,
            steps=self.steps,
            guard=self.guard,
            bn_mode=self.bn_mode,
            budget=self.budget,
        )
        # res.correct[-1] is the returned model's correctness on core + batch: the guard's
        # "after" accuracies come for free; "before" on the core costs one small forward.
        after = res.correct[-1]
        core_before = None if core is None else predict(art.model, core.X) == core.y
        core_acc_before = None if core_before is None else _fraction(core_before)
        core_acc_after = _fraction(after[:n_core]) if n_core else None
        batch_acc_after = float(after[n_core:].mean())
        drops = [float(batch_before.mean()) - batch_acc_after]
        if core_acc_before is not None and core_acc_after is not None:
            drops.append(core_acc_before - core_acc_after)
        # A finite but absurd window (e.g. 1e30 from a sensor glitch) can overflow the
        # float32 BatchNorm re-estimate to inf: such a candidate is never committed, or the
        # damaged model and the window (kept in the core) would persist in every state.
        rolled_back = max(drops) > self.guard_margin or not _finite(res.model)
        info = {
            "rolled_back": rolled_back,
            "flips": int(res.flips_applied),
            "passes_rejected": int(res.passes_rejected),
            "core_acc_before": core_acc_before,
            "core_acc_after": core_acc_after,
            "batch_acc_after": batch_acc_after,
        }
        if rolled_back:
            return art.model, art.core, info
        new_core = core
        if core is not None:
            new_core = update_core_after_passes(
                core,
                Xn,
                y,
                res.correct,
                step=new_step,
                # seeded by (seed, step): a resumed device draws what an uninterrupted one would
                seed=np.random.default_rng([self.seed, new_step]),
            )
            # Hold exactly what the state file will hold (the artifact stores core windows
            # 8-bit compressed; idempotent for samples already in the core), so a device
            # resumed from its file continues identically to one that never stopped.
            new_core = replace(new_core, X=decompress_windows(*compress_windows(new_core.X)))
        return res.model, new_core, info
