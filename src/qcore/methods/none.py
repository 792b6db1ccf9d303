"""``none``: the deployed quantized model as is, never changed."""

from __future__ import annotations

import numpy as np

from qcore.core.qmodel import QuantizedModel
from qcore.core.types import Batch
from qcore.edge.infer import predict as edge_predict
from qcore.methods.common import StepMethod
from qcore.methods.registry import Deployment, register


class NoCalibration(StepMethod):
    """The deployed model; a step changes nothing."""

    def __init__(self, qm: QuantizedModel) -> None:
        self.qm = qm

    def predict(self, X: np.ndarray) -> np.ndarray:
        return edge_predict(self.qm, X)

    def step(self, batch: Batch) -> dict[str, float]:
        return {}

    def device_bytes(self) -> int:
        return self.qm.device_bytes()["total"]


@register("none", unlabelled=True)
def _none(dep: Deployment) -> NoCalibration:
    from qcore.cloud.export import to_qmodel  # cloud side: the hand-over only

    return NoCalibration(to_qmodel(dep.qmodel))
