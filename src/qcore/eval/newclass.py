"""Classes the cloud never saw (``new_classes``): how each method meets them in the stream,
and what the runner records about them."""

from __future__ import annotations

from typing import Any

import numpy as np

from qcore.core.metrics import accuracy as acc_of
from qcore.core.types import Batch, StepReport
from qcore.data.scenario import HeldOut, Scenario
from qcore.errors import QCoreError
from qcore.methods.qcore_method import DeviceCalibrator
from qcore.methods.registry import BACKPROP

NEW_CLASS_RECALL = 0.8  # the recall at which a new class counts as recognised


class _CloudClasses:
    """A method whose model knows the cloud's classes when the cloud held some out:
    labels and predictions are translated between the data's classes and the model's
    outputs (the cloud's classes first, then new ones in order of arrival). With ``grow``
    (back-prop methods) the model's head gains an output when a class's first labelled
    window arrives (:func:`qcore.cloud.model.add_head_rows`), which back-prop then trains
    with the rest; without it (``none``) a new class stays unlabelled to the method."""

    def __init__(self, calibrator: Any, hold: HeldOut, grow: bool) -> None:
        self.calibrator, self.grow = calibrator, grow
        self.order = [int(k) for k in hold.known]  # model output -> data class

    @property
    def core(self) -> Any:
        return getattr(self.calibrator, "core", None)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.array(self.order)[self.calibrator.predict(X)]

    def observe(self, batch: Batch) -> StepReport:
        if self.grow:
            from qcore.cloud.model import add_head_rows

            given = [int(c) for c in np.unique(batch.y[batch.y >= 0])]
            new = [c for c in given if c not in self.order]
            if new:
                add_head_rows(self.calibrator.model, len(new))
                self.order += new
        output = {c: k for k, c in enumerate(self.order)}
        y = np.array([output.get(int(c), -1) for c in batch.y], dtype=np.int64)
        return self.calibrator.observe(Batch(batch.X, y))

    def device_bytes(self) -> int:
        return int(self.calibrator.device_bytes())


def new_class_view(method: str, cal: Any, hold: HeldOut | None) -> Any:
    """``cal`` as the stream sees it when the cloud held classes out: a streaming-head
    device adds them to its statistics, a back-prop method to its model's head; ``none``
    predicts the cloud's classes; other methods cannot learn one."""
    if hold is None:
        return cal
    if isinstance(cal, DeviceCalibrator) and cal.device.head is not None:
        return cal
    if method == "none":
        return _CloudClasses(cal, hold, grow=False)
    if method in BACKPROP and hasattr(cal, "model"):
        return _CloudClasses(cal, hold, grow=True)
    raise QCoreError(
        f"method {method!r} cannot learn a class the cloud never saw: with new_classes use "
        "none, a streaming-head method (slda, slda-bn, slda-flips, qcore-slda) or a "
        "back-prop method"
    )


def new_class_record(calibrator, sc: Scenario, hold: HeldOut, seen_new: int) -> dict:
    """Target test accuracy on the cloud's classes, recall of the held-out ones, and the
    labelled windows of held-out classes given so far."""
    pred = calibrator.predict(sc.target_test.X)
    new = np.isin(sc.target_test.y, hold.held)
    return {
        "old_acc": acc_of(pred[~new], sc.target_test.y[~new]),
        "new_recall": acc_of(pred[new], sc.target_test.y[new]),
        "new_seen": seen_new,
    }
