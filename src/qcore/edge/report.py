"""What one device step did: :class:`DeviceReport` (made by :func:`step_report`), and its
JSON line (``to_dict``); the process's memory the report ends with (:func:`rss_bytes`,
:func:`peak_rss_bytes`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qcore.core.fileio import finite_json
from qcore.edge.signals import novel_share

if TYPE_CHECKING:
    from qcore.edge.backbone import StepResult
    from qcore.edge.draft import Seen


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


@dataclass(frozen=True)
class DeviceReport:
    """The report of :meth:`qcore.edge.device.Device.step`.

    Prediction (before any calibration on the batch, as in the stream evaluation):
    ``step`` (batches processed so far, this one included), ``n`` (windows),
    ``labelled`` (any window labelled) and ``n_labelled``, ``predicted`` (class names)
    and ``predicted_index`` (their indices into the device's class names, int),
    ``confidences`` (the calibrated probability of the predicted class per window, 4
    decimals; :mod:`qcore.edge.signals`), ``confidence`` (the batch mean), ``novelty``
    (per window, 3 decimals; above 1: novel; None without a novelty threshold),
    ``novel_share`` (the share of novel windows) and ``margin`` (per window, 3 decimals:
    the Mahalanobis distance to the second-nearest class mean minus the nearest; small:
    likely wrong; None without a streaming head),
    ``accuracy`` (on the labelled windows; None without labels), ``latency_ms``
    (inference per window).

    Schedule and user guard: ``calibrated``, ``drift`` (the drift detector fired),
    ``reset`` (the user guard returned to the deployed model before this batch's
    calibration) and ``reset_reason``.

    Backbone calibration (:func:`qcore.edge.backbone.calibration_step`): ``rolled_back``,
    ``flips``, ``passes_rejected``, ``core_acc_before``/``core_acc_after``/
    ``batch_acc_after`` (the rollback guard's view of the model's own head; None when
    the backbone was not calibrated); ``calib_ms`` (backbone and head, milliseconds).

    Streaming head: ``new_classes`` (names this step added), ``head_samples`` (labelled
    windows added to its statistics), ``pseudo_labels`` (windows without a label added as
    their predicted class), ``head_solved`` (its weights recomputed).

    Labels asked for (``ask_fraction``, :mod:`qcore.edge.pending`): ``ask``, the indices
    of the windows whose labels the device asks for (empty without a budget).

    Memory: ``rss_bytes`` and ``peak_rss_bytes`` after the step (None where unknown).
    """

    step: int
    n: int
    labelled: bool
    n_labelled: int
    predicted: list[str]
    predicted_index: list[int]
    confidences: list[float]
    novelty: list[float] | None
    novel_share: float | None
    accuracy: float | None
    new_classes: list[str]
    confidence: float
    latency_ms: float
    calibrated: bool
    drift: bool
    rolled_back: bool = False
    calib_ms: float = 0.0
    flips: int = 0
    passes_rejected: int = 0
    core_acc_before: float | None = None
    core_acc_after: float | None = None
    batch_acc_after: float | None = None
    head_samples: int = 0
    pseudo_labels: int = 0
    head_solved: bool = False
    reset: bool = False
    reset_reason: str | None = None
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    ask: list[int] = field(default_factory=list)
    margin: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The step's JSON line (``qcore device`` prints it after the batch name): every
        field but ``predicted_index`` (``predicted`` names the same classes), strict JSON:
        a non-finite number is None (``null``)."""
        out = dataclasses.asdict(self)
        del out["predicted_index"]
        return finite_json(out)  # type: ignore[return-value]


def step_report(
    step: int,
    seen: Seen,
    names: tuple[str, ...],
    *,
    calibrated: bool,
    drift: bool,
    calib_ms: float,
    backbone: StepResult | None,
    learnt: tuple[int, int] | None,
    reason: str | None,
    ask: np.ndarray,
) -> DeviceReport:
    """The report of step ``step`` on the batch ``seen``, the device's classes ``names``
    after it: whether it ``calibrated``, the ``drift`` detector fired, what the backbone
    calibration did (``backbone``, None: not calibrated), what the head learnt
    (``learnt``: labelled and pseudo-labelled windows, None: no head update), why the
    guard reset (``reason``) and the windows it asks labels for (``ask``)."""
    return DeviceReport(
        step=step,
        n=len(seen.pred),
        labelled=seen.mask is not None,
        n_labelled=0 if seen.mask is None else int(seen.mask.sum()),
        predicted=[names[k] for k in seen.pred],
        predicted_index=seen.pred.tolist(),
        confidences=[round(float(p), 4) for p in seen.probs],
        novelty=None if seen.novelty is None else [round(float(v), 3) for v in seen.novelty],
        novel_share=novel_share(seen.novelty),
        accuracy=_accuracy(seen),
        new_classes=list(seen.new) if calibrated else [],
        confidence=float(seen.probs.mean()),
        latency_ms=seen.latency_ms,
        calibrated=calibrated,
        drift=drift,
        calib_ms=calib_ms,
        **({} if backbone is None else backbone.report()),
        head_samples=0 if learnt is None else learnt[0],
        pseudo_labels=0 if learnt is None else learnt[1],
        head_solved=learnt is not None,
        reset=reason is not None,
        reset_reason=reason,
        rss_bytes=rss_bytes(),
        peak_rss_bytes=peak_rss_bytes(),
        margin=None if seen.margin is None else [round(float(v), 3) for v in seen.margin],
        ask=[int(i) for i in ask],
    )


def _accuracy(seen: Seen) -> float | None:
    """Accuracy on the labelled windows, None without any."""
    if seen.mask is None or seen.labels is None:
        return None
    return float((seen.pred[seen.mask] == seen.labels[seen.mask]).mean())
