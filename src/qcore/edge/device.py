"""The device loop: predict each labelled batch, calibrate by policy, report.

One :meth:`Device.step` is what a deployed sensor node does with a batch of windows and
their labels:

1. validate the batch (nothing changes when it is rejected);
2. normalise it with the artifact's normaliser (unless it already is) and predict:
   ``accuracy`` is measured *before* any calibration on this batch, as in the stream
   evaluation;
3. decide by policy whether to calibrate: ``every`` batch, ``every:N`` (the N-th, 2N-th,
   ... batch) or ``drift`` (when a Page-Hinkley test on the batch's mean max-softmax
   confidence fires, see :mod:`qcore.edge.drift`);
4. run the one calibration step, :func:`qcore.edge.backbone.calibration_step` (BatchNorm,
   flip passes, rollback guard, core update), configured by the artifact's
   :class:`DeviceConfig`, then, with ``head=slda``, add the batch to the streaming head's
   statistics (reusing the prediction's features when the backbone did not move) and
   recompute the head (:mod:`qcore.edge.head`). Predictions come from that head.

Before calibrating on a labelled batch the device also guards its user: it keeps, for
its last ``reset_window`` labelled batches, how many windows it predicted right and how
many the deployed model (the artifact it started from) would have. When the device's
share over a full window is lower by more than ``reset_margin`` (and, while the backbone
has not moved, an exact sign test on the windows where the two disagree says at level
``reset_alpha`` that the difference is more than chance), calibration has made it worse
for this user: it returns to the deployed model (backbone, core and head statistics),
says so in the report (``reset``), and goes on from there. :meth:`reset` does the same on request
(``qcore reset``).

The step works on copies and commits them in one assignment at the end, so an
exception anywhere leaves the device exactly as it was. NumPy only.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np

from qcore.config import DeviceConfig
from qcore.core.qmodel import QuantizedModel
from qcore.coreset.core import Core
from qcore.edge.artifact import Artifact
from qcore.edge.backbone import CoreUpdate, calibration_step, moves_backbone, solve_head
from qcore.edge.drift import PageHinkley
from qcore.edge.head import HeadStats
from qcore.edge.head import grow as grow_head
from qcore.edge.head import logits as head_logits
from qcore.edge.head import update as update_head
from qcore.edge.infer import forward, forward_features, predict
from qcore.edge.labels import read_labels
from qcore.errors import QCoreError

DRIFT_KEY = "drift"  # artifact.runtime[DRIFT_KEY]: the detector's state between runs
CONSUMED_KEY = "consumed"  # artifact.runtime[CONSUMED_KEY]: ids of the batches consumed
# artifact.runtime[RECENT_KEY]: [device right, deployed right, windows, device alone right,
# deployed alone right] per recent labelled batch (a record of the first three alone, as
# states kept them before, counts the least disagreement they allow); RESETS_KEY: how
# often the device returned to the deployed model; MOVED_KEY: whether the backbone differs
# from the deployed one (else the deployed model's features are the device's own and cost
# nothing)
RECENT_KEY, RESETS_KEY, MOVED_KEY = "recent", "resets", "backbone_moved"
Head = tuple[np.ndarray, np.ndarray]  # the solved streaming head: weights, bias


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


def sign_test(losses: int, wins: int) -> float:
    """One-sided exact sign test: the chance of at least ``losses`` of the
    ``losses + wins`` disagreements going against the device if each went either way
    with probability 1/2 (McNemar's exact test for paired predictions)."""
    n = losses + wins
    return sum(math.comb(n, k) for k in range(losses, n + 1)) / 2**n


def _softmax_max(logits: np.ndarray) -> np.ndarray:
    """Max-softmax probability per window (float64, stable softmax)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p.max(axis=1) / p.sum(axis=1)


def _check_deployed(deployed: Artifact, art: Artifact) -> None:
    """The deployed artifact must be the model ``art`` grew from (same shapes, classes)."""
    a, b = deployed.model, art.model
    known = art.class_names[: len(deployed.class_names)]  # a device may add classes
    same = (a.n_channels, a.n_classes, a.filters, a.depth, a.bits) == (
        b.n_channels,
        b.n_classes,
        b.filters,
        b.depth,
        b.bits,
    ) and (deployed.class_names, deployed.window_length) == (known, art.window_length)
    if not same:
        raise QCoreError("the deployed artifact is not the model this state grew from")
    if art.head is not None and deployed.head is None:
        raise QCoreError("the deployed artifact has no streaming head statistics")


class Device:
    """A deployed model that calibrates itself on the labelled batches it is given.

    ``art``: the artifact to start from (a quantized model with a flip network); the
    device never mutates it and keeps its current state in :attr:`art`. ``config``: the
    device settings (default: the artifact's own ``device`` section); they are recorded
    in the state. ``deployed``: the artifact the device started from, what the user guard
    compares with and :meth:`reset` returns to (default: ``art`` itself when it is a
    fresh artifact, step 0; a resumed state without it runs unguarded). ``drift``:
    detector for the ``drift`` policy (default: the one saved in the artifact's runtime
    state, else :class:`PageHinkley` defaults). ``update``: how the core follows the
    stream (default: QCore's update from ``config``). ``allow_new_classes``: a labelled
    window of a class the device does not know adds that class to the streaming head
    (labels are then read as names, :mod:`qcore.edge.labels`); otherwise it is an error.
    """

    def __init__(
        self,
        art: Artifact,
        config: DeviceConfig | None = None,
        *,
        deployed: Artifact | None = None,
        drift: PageHinkley | None = None,
        update: CoreUpdate | None = None,
        allow_new_classes: bool = False,
    ) -> None:
        config = art.device if config is None else config
        if not isinstance(config, DeviceConfig):
            raise QCoreError("device settings must be a DeviceConfig")
        if art.model.bits is None:
            raise QCoreError(
                "the device calibrates by flipping integer codes: need a quantized model"
            )
        if art.flipnet is None and config.flip_steps > 0:
            raise QCoreError(
                "the artifact has no flip network: the device cannot flip (set flip_steps=0)"
            )
        if config.head == "slda" and art.head is None:
            raise QCoreError("the artifact has no streaming head statistics: set head=model")
        self.config, self.policy, self.update = config, config.schedule, update
        self.allow_new_classes = allow_new_classes
        self.head = None if config.head == "model" else solve_head(art.head, config)
        if deployed is None and art.step == 0:
            deployed = art
        if deployed is not None:
            _check_deployed(deployed, art)
        self.deployed = deployed
        self.deployed_head = (
            solve_head(deployed.head, config) if deployed is not None and self.head else None
        )
        self.art = replace(art, device=config, runtime=copy.deepcopy(art.runtime))
        saved = art.runtime.get(DRIFT_KEY) if self.policy.kind == "drift" else None
        if drift is not None:
            self.detector = copy.deepcopy(drift)
        elif saved is not None:
            self.detector = PageHinkley.from_dict(saved)
        else:
            self.detector = PageHinkley()

    # -------------------------------------------------------------------- validation

    def validate(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
        """``(X float32 (n, c, t), y int64 (n,) or None, new class names)`` or raise
        :class:`QCoreError`.

        ``y`` may be class indices or labels in the form training saw (the artifact's
        class names, or raw values whose string form is a class name), with ``-1`` (or
        ``""``) for a window without a label, see :func:`qcore.edge.labels.read_labels`;
        ``None`` for a batch without labels. New class names only with
        ``allow_new_classes`` and a streaming head.
        """
        art = self.art
        c, t = art.model.n_channels, art.window_length
        if not isinstance(X, np.ndarray) or not (y is None or isinstance(y, np.ndarray)):
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
        if y is None:
            return X.astype(np.float32, copy=False), None, ()
        if y.ndim != 1:
            raise QCoreError(f"batch y must be 1-D labels, got rank {y.ndim}")
        if len(y) != len(X):
            raise QCoreError(f"batch has {len(X)} windows but {len(y)} labels")
        labels, new = read_labels(y, art.class_names, self.allow_new_classes)
        if new and self.head is None:
            raise QCoreError(
                f"label {new[0]!r} is a new class: only the streaming head (head=slda) can add one"
            )
        return X.astype(np.float32, copy=False), labels, new

    # -------------------------------------------------------------------------- step

    def _due(self, new_step: int, detector: PageHinkley, confidence: float) -> tuple[bool, bool]:
        """(calibrate?, drift fired?) for the batch numbered ``new_step`` (1-based)."""
        if self.policy.kind == "drift":
            fired = detector.update(confidence)
            return fired, fired
        return new_step % self.policy.every == 0, False

    def consumed(self, batch_id: str) -> bool:
        """Whether a batch with this id was already consumed (recorded by :meth:`step`)."""
        return batch_id in self.art.runtime.get(CONSUMED_KEY, [])

    def predict(self, X: np.ndarray, *, normalized: bool = False) -> np.ndarray:
        """Class indices int64 ``(n,)`` the device predicts for windows ``X``."""
        Xn = X if normalized else self.normalize(X)
        if self.head is None:
            return predict(self.art.model, Xn)
        return np.concatenate(
            [self._scores(Xn[i : i + 256])[0].argmax(1) for i in range(0, len(Xn), 256)]
        ).astype(np.int64)

    def _scores(self, Xn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(the device's scores, the model head's logits, pooled features or None)."""
        if self.head is None:
            logits = forward(self.art.model, Xn)
            return logits, logits, None
        model_logits, features = forward_features(self.art.model, Xn)
        return head_logits(*self.head, features), model_logits, features

    def _deployed_right(
        self,
        Xn: np.ndarray,
        labels: np.ndarray,
        model_logits: np.ndarray,
        features: np.ndarray | None,
        moved: bool,
    ) -> np.ndarray:
        """Which windows of the batch the deployed model predicts right. While the backbone is
        the deployed one, its logits and features are the device's own: only the deployed
        head (if any) is evaluated; otherwise one forward pass of the deployed model."""
        assert self.deployed is not None
        if moved or (self.deployed_head is not None and features is None):
            model_logits, features = forward_features(self.deployed.model, Xn)
        if self.deployed_head is None:
            scores = model_logits
        else:
            assert features is not None
            scores = head_logits(*self.deployed_head, features)
        return scores.argmax(1) == labels

    def _pseudo_labelled(self, labels: np.ndarray | None, probs: np.ndarray) -> np.ndarray | None:
        """Windows without a label confident enough to feed the streaming head as their
        predicted class (``pseudo_threshold``), or None when there are none."""
        tau = self.config.pseudo_threshold
        if tau is None or self.head is None:
            return None
        chosen = probs >= tau
        if labels is not None:
            chosen &= labels < 0
        return chosen if chosen.any() else None

    def _reset_reason(self, recent: list[list[int]], moved: bool) -> str | None:
        """Why the device must return to the deployed model, or None: a full window of
        recent labelled batches on which it was less accurate by more than the margin
        (and, with ``reset_alpha`` while the backbone has not ``moved``, by more than
        chance: a device that learns only its head from labels is undone on evidence, a
        damaged backbone on the margin alone)."""
        cfg = self.config
        if len(recent) < cfg.reset_window:
            return None
        mine, theirs, n = (sum(r[k] for r in recent) for k in range(3))
        if mine / n >= theirs / n - cfg.reset_margin:
            return None
        why = ""
        if cfg.reset_alpha is not None and not moved:
            wins = sum(r[3] if len(r) > 3 else max(r[0] - r[1], 0) for r in recent)
            losses = sum(r[4] if len(r) > 3 else max(r[1] - r[0], 0) for r in recent)
            p = sign_test(losses, wins)
            if p >= cfg.reset_alpha:
                return None
            why = f" (it alone wrong on {losses} windows, alone right on {wins}: p = {p:.3g})"
        return (
            f"accuracy {mine / n:.3f} on the last {len(recent)} labelled batches, the deployed "
            f"model {theirs / n:.3f}{why}: returned to the deployed model"
        )

    def _deployed_parts(
        self, n_classes: int, runtime: dict
    ) -> tuple[QuantizedModel, Core | None, HeadStats | None, Head | None, dict]:
        """What returning to the deployed model gives: its backbone and core, its head
        statistics grown to ``n_classes`` (classes the device learnt stay known, without
        samples), the streaming head solved from them (None for a device predicting with
        the model's own head), and ``runtime`` with the guard's record restarted and the
        return counted."""
        dep = self.deployed
        assert dep is not None
        stats = None if dep.head is None else grow_head(dep.head, n_classes)
        head = None if self.head is None or stats is None else solve_head(stats, self.config)
        runtime = {
            **runtime,
            RECENT_KEY: [],
            MOVED_KEY: False,
            RESETS_KEY: int(runtime.get(RESETS_KEY, 0)) + 1,
        }
        return dep.model, dep.core, stats, head, runtime

    def reset(self) -> None:
        """Return to the deployed model (backbone, core, head statistics); the step count,
        the record of consumed batches and the drift detector stay."""
        if self.deployed is None:
            raise QCoreError("cannot reset: the device does not know its deployed artifact")
        art = self.art
        model, core, stats, head, runtime = self._deployed_parts(len(art.class_names), art.runtime)
        self.art = replace(art, model=model, core=core, head=stats, runtime=runtime)
        self.head = head

    def normalize(self, X: np.ndarray) -> np.ndarray:
        """Raw sensor windows -> the model's input (the artifact's normaliser)."""
        art = self.art
        mean, std = art.normalizer_mean[None, :, None], art.normalizer_std[None, :, None]
        return ((X - mean) / std).astype(np.float32)

    def step(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        *,
        normalized: bool = False,
        batch_id: str | None = None,
    ) -> dict[str, Any]:
        """Predict one batch and, when it carries labels and the policy says so, calibrate
        on it; return the step's report.

        ``X``: float ``(n, n_channels, window_length)``, raw sensor windows (or, with
        ``normalized=True``, already normalised as the cloud normalised its data);
        ``y``: labels ``(n,)`` (see :meth:`validate`; ``-1`` marks a window without a
        label), or None: the batch is only predicted (and feeds the drift detector); only
        its labelled windows are calibrated on and measured. ``batch_id``: recorded in the runtime
        state as consumed (see :meth:`consumed`). Report keys: ``step`` (batches processed
        so far), ``n``, ``labelled`` (any window labelled), ``n_labelled``,
        ``predicted`` (class indices) and ``confidences`` (max-softmax per window),
        ``accuracy`` (on the labelled windows, before calibration; None without labels),
        ``new_classes`` (names this step added),
        ``confidence`` (the batch mean), ``latency_ms``
        (inference per window), ``calibrated``, ``drift``, ``rolled_back``, ``calib_ms``,
        ``flips``, ``passes_rejected``, ``core_acc_before``/``core_acc_after``/
        ``batch_acc_after`` (the guard's view of the model's own head; None when not
        calibrated), ``head_samples`` (labelled windows added to the streaming head's
        statistics) and ``head_solved`` (its weights recomputed), ``reset`` (the user guard
        returned to the deployed model before this batch's calibration) and
        ``reset_reason``, ``rss_bytes``, ``peak_rss_bytes``.
        """
        X, labels, new = self.validate(X, y)
        art = self.art
        Xn = X if normalized else self.normalize(X)
        t0 = time.perf_counter()
        model_logits: np.ndarray | None
        logits, model_logits, features = self._scores(Xn)
        latency_ms = (time.perf_counter() - t0) * 1e3 / len(X)
        probs = _softmax_max(logits)
        confidence = float(probs.mean())
        new_step = art.step + 1
        detector = copy.deepcopy(self.detector)  # committed only if the step succeeds
        due, fired = self._due(new_step, detector, confidence)
        pred = logits.argmax(1)
        mask = None if labels is None or not (labels >= 0).any() else labels >= 0
        pseudo = self._pseudo_labelled(labels, probs) if due else None
        calibrate = due and (mask is not None or pseudo is not None)
        report: dict[str, Any] = {
            "step": new_step,
            "n": int(len(X)),
            "labelled": mask is not None,
            "n_labelled": 0 if mask is None else int(mask.sum()),
            "predicted": pred.tolist(),
            "confidences": [round(float(p), 4) for p in probs],
            "accuracy": None
            if mask is None or labels is None
            else float((pred[mask] == labels[mask]).mean()),
            "new_classes": [],
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
            "head_samples": 0,
            "pseudo_labels": 0,
            "head_solved": False,
            "reset": False,
            "reset_reason": None,
        }
        model, core, stats, head = art.model, art.core, art.head, self.head
        names, runtime = art.class_names, art.runtime
        moved = bool(runtime.get(MOVED_KEY, art.step > 0))
        if mask is not None and self.deployed is not None and self.config.reset_window > 0:
            assert labels is not None
            yl, fl = labels[mask], None if features is None else features[mask]
            right = pred[mask] == yl
            theirs = self._deployed_right(Xn[mask], yl, model_logits[mask], fl, moved)
            mark = [int(right.sum()), int(theirs.sum()), len(yl)]
            mark += [int((right & ~theirs).sum()), int((theirs & ~right).sum())]
            recent = [*runtime.get(RECENT_KEY, []), mark]
            recent = recent[-self.config.reset_window :]
            reason = self._reset_reason(recent, moved)
            if reason is None:
                runtime = {**runtime, RECENT_KEY: recent}
            else:
                model, core, stats, head, runtime = self._deployed_parts(len(names), runtime)
                model_logits = features = None
                moved = False
                report.update(reset=True, reset_reason=reason)
        if calibrate:
            t1 = time.perf_counter()
            given = np.zeros(len(Xn), dtype=bool) if mask is None else mask
            if mask is not None:
                assert labels is not None
                y = labels[mask]
                if new:  # validated: there is a streaming head
                    assert stats is not None
                    names, stats = names + new, grow_head(stats, len(names) + len(new))
                    report["new_classes"] = list(new)
                old = y < model.n_classes  # the backbone calibrates on the model's own classes
                if (moves_backbone(self.config) or core is not None) and old.any():
                    if model_logits is None:
                        model_logits, features = forward_features(model, Xn)
                    model_correct = model_logits[mask][old].argmax(1) == y[old]
                    res = calibration_step(
                        model,
                        core,
                        art.flipnet,
                        Xn[mask][old],
                        y[old],
                        model_correct,
                        new_step,
                        self.config,
                        self.update,
                    )
                    moved = moved or res.model is not model
                    model, core = res.model, res.core
                    report.update(res.report())
            if stats is not None and head is not None:
                if model is not art.model or features is None:  # the backbone moved
                    features = forward_features(model, Xn)[1]
                # the labelled windows, plus the confident ones without a label as predicted
                chosen = given if pseudo is None else given | pseudo
                as_class = pred if labels is None else np.where(given, labels, pred)
                stats = update_head(stats, features[chosen], as_class[chosen])
                head = solve_head(stats, self.config)
                report.update(
                    head_samples=int(given.sum()),
                    pseudo_labels=0 if pseudo is None else int(pseudo.sum()),
                    head_solved=True,
                )
            report["calib_ms"] = (time.perf_counter() - t1) * 1e3
        runtime = {**runtime, MOVED_KEY: moved}
        if self.policy.kind == "drift":
            runtime = {**runtime, DRIFT_KEY: detector.to_dict()}
        if batch_id is not None:
            runtime = {**runtime, CONSUMED_KEY: [*runtime.get(CONSUMED_KEY, []), batch_id]}
        self.art, self.detector, self.head = (
            replace(
                art,
                model=model,
                core=core,
                runtime=runtime,
                step=new_step,
                head=stats,
                class_names=names,
            ),
            detector,
            head,
        )
        report["rss_bytes"] = rss_bytes()
        report["peak_rss_bytes"] = peak_rss_bytes()
        return report
