"""``none``: the deployed quantized model as is, never changed."""

from __future__ import annotations

import time

import numpy as np

from qcore.core.metrics import accuracy
from qcore.core.qmodel import QuantizedModel
from qcore.core.types import Batch, StepReport
from qcore.edge.infer import predict as edge_predict
from qcore.methods.registry import Deployment, register


class NoCalibration:
    """The deployed model; a step only predicts the batch."""

    def __init__(self, qm: QuantizedModel) -> None:
        self.qm = qm

    def predict(self, X: np.ndarray) -> np.ndarray:
        return edge_predict(self.qm, X)

    def observe(self, batch: Batch) -> StepReport:
        t0 = time.perf_counter()
        acc = accuracy(self.predict(batch.X), batch.y)
        return StepReport(task_acc=acc, seconds=time.perf_counter() - t0)

    def device_bytes(self) -> int:
        return self.qm.device_bytes()["total"]


@register("none", unlabelled=True)
def _none(dep: Deployment) -> NoCalibration:
    from qcore.cloud.export import to_qmodel  # cloud side: the hand-over only

    return NoCalibration(to_qmodel(dep.qmodel))
