"""``bn-stats``: re-estimate BatchNorm statistics on every new batch; weights never change.

Back-prop free and NumPy only on the device: one forward pass over the batch replaces
each BatchNorm's running mean and variance by the batch's (:func:`bn_reestimate`). The
device stores the model alone.
"""

from __future__ import annotations

import numpy as np

from qcore.core.qmodel import QuantizedModel
from qcore.core.types import Batch
from qcore.edge.infer import bn_reestimate
from qcore.edge.infer import predict as edge_predict
from qcore.methods.common import StepMethod
from qcore.methods.registry import Deployment, register


class BNStats(StepMethod):
    """The deployed model whose BatchNorm statistics follow the latest batch."""

    def __init__(self, qm: QuantizedModel) -> None:
        self.qm = qm

    def predict(self, X: np.ndarray) -> np.ndarray:
        return edge_predict(self.qm, X)

    def step(self, batch: Batch) -> dict[str, float]:
        self.qm = bn_reestimate(self.qm, batch.X)
        return {}

    def device_bytes(self) -> int:
        return self.qm.device_bytes()["total"]


@register("bn-stats", unlabelled=True)
def _bn_stats(dep: Deployment) -> BNStats:
    from qcore.cloud.export import to_qmodel  # cloud side: the hand-over only

    return BNStats(to_qmodel(dep.qmodel))
