"""The device: what a deployed sensor node runs, one batch of windows at a time.

One :meth:`Device.step` is a sequence of named phases, each a short method:

1. **predict** (:meth:`Device._see`): validate the batch (nothing changes when it is
   rejected), normalise it with the artifact's normaliser (unless it already is) and
   predict, with a calibrated confidence and a novelty per window
   (:mod:`qcore.edge.signals`); ``accuracy`` is measured *before* any calibration on this
   batch, as in the stream evaluation. The policy then says whether to calibrate:
   ``every`` batch, ``every:N`` (the N-th, 2N-th, ... batch) or ``drift``: when at least
   ``drift_share`` of the batch's windows are novel, or, for a device without novelty
   (no streaming head or no novelty threshold), when a Page-Hinkley test on the batch's
   mean confidence fires (:mod:`qcore.edge.drift`). With ``ask_fraction`` the device
   also asks labels for some of the batch's windows without one and keeps them until
   :meth:`Device.answer` brings the labels (:mod:`qcore.edge.pending`);
2. **judge** (:meth:`Device._judge`): the user guard (:mod:`qcore.edge.guard`) compares
   the device with the deployed model (the artifact it started from) on the batch's
   labelled windows; when calibration has made the device worse for this user over a
   full window of batches, it returns to the deployed model (backbone, core and head
   statistics), says so in the report (``reset``) and goes on from there;
3. **calibrate** (:meth:`Device._calibrate`): backbone calibration,
   :func:`qcore.edge.backbone.calibration_step` (BatchNorm, flip passes, rollback guard,
   core update) on the labelled windows of the model's own classes;
4. **learn** (:meth:`Device._learn`): with ``head=slda``, the labelled windows (and
   confident unlabelled ones, ``pseudo_threshold``) join the streaming head's statistics
   and the head is solved again (:mod:`qcore.edge.head`); predictions come from it;
5. **record** (:meth:`Device._commit`): the runtime state (:mod:`qcore.edge.runtime`:
   guard records, whether the backbone moved, the drift detector, the consumed batch id,
   the labels received per class) is committed with model, core, head and the windows
   waiting for an answer.

The phases work on a draft (:class:`Draft`) and only the commit, one assignment, touches
the device: an exception anywhere leaves the device exactly as it was. :meth:`answer`
learns the labels of windows asked for, as if they had come in their batch; :meth:`reset`
returns to the deployed model on request (``qcore reset``). NumPy only.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from qcore.config import DeviceConfig
from qcore.edge.artifact import Artifact
from qcore.edge.asking import DENSITY_POWER
from qcore.edge.backbone import (
    CoreUpdate,
    StepResult,
    calibration_step,
    moves_backbone,
    solve_head,
)
from qcore.edge.checks import check_batch, check_deployed, check_settings
from qcore.edge.classes import drop_class
from qcore.edge.draft import Draft, Seen
from qcore.edge.drift import Detector, PageHinkley
from qcore.edge.guard import deployed_right, guard_record, reset_reason, unguarded
from qcore.edge.head import logits as head_logits
from qcore.edge.infer import forward, forward_features, predict
from qcore.edge.pending import Answered, added, asked, batch_key, not_asked, taken, trimmed
from qcore.edge.report import DeviceReport, step_report
from qcore.edge.runtime import Runtime
from qcore.edge.schedule import is_due, make_detector, pseudo_labelled
from qcore.edge.signals import Signals, batch_signals, whitened
from qcore.errors import QCoreError

PREDICT_CHUNK = 256  # windows per streaming-head prediction pass of Device.predict


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
        config = check_settings(art, art.device if config is None else config)
        runtime = Runtime.from_dict(art.runtime, step=art.step)  # refuses a malformed one
        self.config, self.policy, self.update = config, config.schedule, update
        self.allow_new_classes = allow_new_classes
        self.head = None if config.head == "model" else solve_head(art.head, config)
        if deployed is None and art.step == 0:
            deployed = art
        if deployed is not None:
            check_deployed(deployed, art)
        elif config.reset_window > 0:
            warnings.warn(unguarded(art.step, config.reset_window), stacklevel=2)
        self.deployed = deployed
        self.deployed_head = (
            solve_head(deployed.head, config) if deployed is not None and self.head else None
        )
        self.art = replace(
            art,
            device=config,
            runtime=copy.deepcopy(art.runtime),
            pending=trimmed(art.pending, config.ask_keep),  # ask_keep may have shrunk
        )
        self.detector: Detector = PageHinkley()  # the policy's, when it is drift
        if self.policy.kind == "drift":
            self.detector = make_detector(config, self.head is not None, runtime.drift, drift)

    @property
    def runtime(self) -> Runtime:
        """The running state besides model and core (read from :attr:`art`)."""
        return Runtime.from_dict(self.art.runtime, step=self.art.step)

    # -------------------------------------------------------------------- validation

    def validate(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
        """``(X float32 (n, c, t), y int64 (n,) or None, new class names)`` of a batch,
        or a :class:`QCoreError` (see :func:`qcore.edge.checks.check_batch`)."""
        return check_batch(self.art, X, y, self.allow_new_classes, self.head is not None)

    # ------------------------------------------------------------------ outside a step

    def consumed(self, batch_id: str) -> bool:
        """Whether a batch with this id was consumed by one of the last
        :data:`qcore.edge.runtime.CONSUMED_LIMIT` steps given an id (recorded by
        :meth:`step`); an id consumed longer ago is not remembered."""
        return self.runtime.has_consumed(batch_id)

    def normalize(self, X: np.ndarray) -> np.ndarray:
        """Raw sensor windows -> the model's input (the artifact's normaliser)."""
        art = self.art
        mean, std = art.normalizer_mean[None, :, None], art.normalizer_std[None, :, None]
        return ((X - mean) / std).astype(np.float32)

    def predict(self, X: np.ndarray, *, normalized: bool = False) -> np.ndarray:
        """Class indices int64 ``(n,)`` the device predicts for windows ``X``, validated
        as :meth:`step` validates a batch (a :class:`QCoreError` names what is wrong)."""
        X = self.validate(X, None)[0]
        Xn = X if normalized else self.normalize(X)
        if self.head is None:
            return predict(self.art.model, Xn)
        chunks = range(0, len(Xn), PREDICT_CHUNK)
        scores = [self._scores(Xn[i : i + PREDICT_CHUNK])[0].argmax(1) for i in chunks]
        return np.concatenate(scores).astype(np.int64)

    def signals(self, X: np.ndarray, *, normalized: bool = False) -> Signals:
        """The calibrated class probabilities and the novelty the device gives windows
        ``X`` (:mod:`qcore.edge.signals`), validated as :meth:`predict` validates them."""
        X = self.validate(X, None)[0]
        Xn = X if normalized else self.normalize(X)
        chunks = range(0, len(Xn), PREDICT_CHUNK)
        return Signals.join([self._signals(Xn[i : i + PREDICT_CHUNK]) for i in chunks])

    def reset(self, *, keep_classes: bool = False) -> None:
        """Return to the deployed model (backbone, core, head statistics) and to its classes:
        the classes the device learnt are forgotten, unless ``keep_classes`` (they then stay
        known, without samples). The step count, the record of consumed batches and the
        drift detector stay."""
        if self.deployed is None:
            raise QCoreError("cannot reset: the device does not know its deployed artifact")
        draft = self._draft()
        if not keep_classes:
            draft.names = self.deployed.class_names
        self._return_to_deployed(draft)
        self.art, self.head = self._with(draft, self.art.step, draft.runtime), draft.head

    def drop_class(self, name: str) -> None:
        """Forget class ``name``, one this device learnt, as if its windows had never come
        (:func:`qcore.edge.classes.drop_class`)."""
        keep = 0 if self.deployed is None else len(self.deployed.class_names)
        art = drop_class(self.art, name, keep)
        head = None if self.head is None or art.head is None else solve_head(art.head, self.config)
        self.art, self.head = art, head

    # -------------------------------------------------------------------------- step

    def step(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        *,
        normalized: bool = False,
        batch_id: str | None = None,
    ) -> DeviceReport:
        """Predict one batch and, when it carries labels and the policy says so, calibrate
        on it; return the step's :class:`DeviceReport`.

        ``X``: float ``(n, n_channels, window_length)``, raw sensor windows (or, with
        ``normalized=True``, already normalised as the cloud normalised its data);
        ``y``: labels ``(n,)`` (see :meth:`validate`; ``-1`` marks a window without a
        label), or None: the batch is only predicted (and feeds the drift detector); only
        its labelled windows are calibrated on and measured. ``batch_id``: recorded in
        the runtime state as consumed (see :meth:`consumed`); the windows the step asks
        labels for (``ask_fraction``; the report's ``ask``) wait under it, or under the
        step number without one, for :meth:`answer`.
        """
        seen = self._see(X, y, normalized)
        draft = self._draft(seen)
        new_step = self.art.step + 1
        detector = copy.deepcopy(self.detector)  # committed only if the step succeeds
        due, fired = is_due(self.policy, self.config, new_step, detector, seen.probs, seen.novelty)
        counts = draft.runtime.label_counts(draft.names)
        ask = asked(
            self.config, seen.class_probs, seen.novelty, seen.labels, counts, new_step, seen.margin,
            whitened(self.head, seen.features) if self.config.ask_policy in DENSITY_POWER else None,
        )  # fmt: skip
        tau = None if self.head is None else self.config.pseudo_threshold
        pseudo = not_asked(pseudo_labelled(tau, seen.labels, seen.probs), ask) if due else None
        calibrate = due and (seen.mask is not None or pseudo is not None)
        reason = self._judge(seen, draft)
        backbone, learnt, t1 = None, None, time.perf_counter()
        if calibrate:
            backbone = self._calibrate(seen, draft, new_step)
            learnt = self._learn(seen, draft, pseudo)
        calib_ms = (time.perf_counter() - t1) * 1e3 if calibrate else 0.0
        key = batch_key(batch_id, new_step)
        draft.pending = added(draft.pending, key, ask, seen.Xn[ask], self.config.ask_keep)
        self._commit(draft, new_step, detector, batch_id)
        return step_report(
            new_step, seen, draft.names, calibrated=calibrate, drift=fired, calib_ms=calib_ms,
            backbone=backbone, learnt=learnt, reason=reason, ask=ask,
        )  # fmt: skip

    def answer(self, answers: Iterable[tuple[str | int, int, Any]]) -> Answered:
        """Learn the labels of windows the device asked for: ``answers`` ``(batch key,
        window index, label)``, the batch key being the ``batch_id`` the step was given
        (or its step number, for a batch stepped without one) and the label read as a
        batch's (:meth:`validate`). Each window joins the streaming head's statistics as
        if it had come labelled in its batch (whatever the policy) and no longer waits.
        All or nothing: an answer for a window that does not wait (never asked, answered
        already, or dropped: see ``ask_keep``) is a :class:`QCoreError` naming it, and
        the device stays as it was (:mod:`qcore.edge.pending`)."""
        art, cfg = self.art, self.config
        got = taken(art.pending, answers, art.class_names, self.allow_new_classes, cfg.ask_keep)
        if not len(got.labels):
            return Answered(0, [], len(art.pending or ()))
        draft = self._draft()
        draft.runtime = draft.runtime.counted(got.labels, draft.names + got.new)
        draft.add_classes(got.new)
        draft.learn(got.X, np.ones(len(got.labels), dtype=bool), got.labels, cfg)
        draft.pending = got.rest
        self.art, self.head = self._with(draft, art.step, draft.runtime), draft.head
        return Answered(len(got.labels), list(got.new), len(got.rest or ()))

    def _see(self, X: Any, y: Any, normalized: bool) -> Seen:
        """Predict: validate, normalise and predict the batch (timed)."""
        X, labels, new = self.validate(X, y)
        Xn = X if normalized else self.normalize(X)
        t0 = time.perf_counter()
        logits, model_logits, features = self._scores(Xn)
        latency_ms = (time.perf_counter() - t0) * 1e3 / len(X)
        mask = None if labels is None or not (labels >= 0).any() else labels >= 0
        sig = batch_signals(self.head, self.config, logits, features)
        pred = logits.argmax(1)
        return Seen(
            Xn, labels, new, mask, pred, sig.confidence, sig.novelty, latency_ms, model_logits,
            features, sig.probs, sig.margin,
        )  # fmt: skip

    def _draft(self, seen: Seen | None = None) -> Draft:
        """The device's state as a draft; after :meth:`_see`, with the batch's logits and
        features of the current backbone and its labels counted."""
        art, runtime = self.art, self.runtime
        if seen is not None:
            runtime = runtime.counted(seen.labels, art.class_names + seen.new)
        draft = Draft(
            art.model, art.core, art.head, self.head, art.class_names, runtime, art.pending
        )
        if seen is not None:
            draft.model_logits, draft.features = seen.model_logits, seen.features
        return draft

    def _signals(self, Xn: np.ndarray) -> Signals:
        scores, _, features = self._scores(Xn)
        return batch_signals(self.head, self.config, scores, features)

    def _scores(self, Xn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(the device's scores, the model head's logits, pooled features or None)."""
        if self.head is None:
            logits = forward(self.art.model, Xn)
            return logits, logits, None
        model_logits, features = forward_features(self.art.model, Xn)
        return head_logits(self.head.weight, self.head.bias, features), model_logits, features

    def _judge(self, seen: Seen, draft: Draft) -> str | None:
        """Judge: record how the device and the deployed model did on the labelled
        windows and, when the user guard says so (:func:`qcore.edge.guard.reset_reason`),
        return the draft to the deployed model; the reason, or None."""
        if seen.mask is None or self.deployed is None or self.config.reset_window == 0:
            return None
        assert seen.labels is not None
        m, moved = seen.mask, draft.runtime.backbone_moved
        yl = seen.labels[m]
        own = None  # while the backbone is the deployed one, its logits and features
        if not moved and draft.model_logits is not None:
            own = (draft.model_logits[m], None if draft.features is None else draft.features[m])
        theirs = deployed_right(self.deployed.model, self.deployed_head, seen.Xn[m], yl, own)
        mark = guard_record(seen.pred[m] == yl, theirs)
        runtime = draft.runtime.record(mark, self.config.reset_window)
        reason = reset_reason(runtime.recent, moved, self.config)
        if reason is None:
            draft.runtime = runtime
        else:
            self._return_to_deployed(draft)
        return reason

    def _return_to_deployed(self, draft: Draft) -> None:
        """``draft`` back to the deployed model (:meth:`Draft.return_to`)."""
        dep = self.deployed
        assert dep is not None
        draft.return_to(dep.model, dep.core, dep.head, self.config, self.head is not None)

    def _calibrate(self, seen: Seen, draft: Draft, new_step: int) -> StepResult | None:
        """Calibrate: backbone calibration on the labelled windows of the model's own
        classes (a new class is for the streaming head alone); None when there is none,
        or nothing a step could change (no flips, no re-estimation, no core)."""
        if seen.mask is None or not (moves_backbone(self.config) or draft.core is not None):
            return None
        assert seen.labels is not None
        y = seen.labels[seen.mask]
        old = y < draft.model.n_classes
        if not old.any():
            return None
        if draft.model_logits is None:
            draft.model_logits, draft.features = forward_features(draft.model, seen.Xn)
        model_correct = draft.model_logits[seen.mask][old].argmax(1) == y[old]
        Xc, cfg = seen.Xn[seen.mask][old], self.config
        res = calibration_step(
            draft.model, draft.core, self.art.flipnet, Xc, y[old], model_correct, new_step, cfg,
            self.update,
        )  # fmt: skip
        if res.model is not draft.model:
            draft.new_backbone(res.model)
            draft.runtime = replace(draft.runtime, backbone_moved=True)
        draft.core = res.core
        return res

    def _learn(self, seen: Seen, draft: Draft, pseudo: np.ndarray | None) -> tuple[int, int] | None:
        """Learn: add the batch's new classes, then its labelled windows and the confident
        unlabelled ones (``pseudo``, as their predicted class) to the streaming head's
        statistics and solve the head; (labelled windows added, pseudo-labelled windows
        added), or None for a device predicting with the model's own head."""
        draft.add_classes(seen.new)
        if draft.stats is None or draft.head is None:
            return None
        given = np.zeros(len(seen.Xn), dtype=bool) if seen.mask is None else seen.mask
        chosen = given if pseudo is None else given | pseudo
        labels = seen.labels
        as_class = seen.pred if labels is None else np.where(given, labels, seen.pred)
        draft.learn(seen.Xn, chosen, as_class, self.config)
        return int(given.sum()), 0 if pseudo is None else int(pseudo.sum())

    def _commit(
        self, draft: Draft, new_step: int, detector: Detector, batch_id: str | None
    ) -> None:
        """Record: the runtime state (drift detector, consumed id) and the draft become
        the device's, in one assignment."""
        runtime = draft.runtime
        if self.policy.kind == "drift":
            runtime = replace(runtime, drift=detector.to_dict())
        if batch_id is not None:
            runtime = runtime.consume(batch_id)
        self.art, self.detector, self.head = (
            self._with(draft, new_step, runtime),
            detector,
            draft.head,
        )

    def _with(self, draft: Draft, step: int, runtime: Runtime) -> Artifact:
        """:attr:`art` holding the draft's model, core, head statistics, classes and
        windows waiting for an answer."""
        return replace(
            self.art,
            model=draft.model,
            core=draft.core,
            head=draft.stats,
            class_names=draft.names,
            runtime=runtime.to_dict(),
            step=step,
            pending=draft.pending,
        )
