"""``backprop``: straight-through back-prop on core plus batch, QCore's core update.

The cost reference QCore's device step is measured against: the same core and update
rule, but ``calib_steps`` Adam steps (PyTorch) instead of flip passes.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.export import to_qmodel
from qcore.cloud.train import predict_logits
from qcore.coreset.core import Core
from qcore.methods.common import CoreCalibrator, core_loop
from qcore.methods.registry import CORE_LOOP, Deployment, register


class BackpropCalibrator(CoreCalibrator):
    """Back-prop (straight-through) on core plus batch, then the core update."""

    def __init__(
        self, model: torch.nn.Module, core: Core, *, steps: int, lr: float, **loop: Any
    ) -> None:
        """``loop``: :class:`CoreCalibrator`'s ``seed``, ``core_mode`` and ``old_quota``."""
        super().__init__(core, **loop)
        self.model = copy.deepcopy(model)
        self.steps, self.lr = steps, lr

    def predict(self, X: np.ndarray) -> np.ndarray:
        return predict_logits(self.model, X).argmax(1)

    def calibrate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        before = self.predict(X) == y
        backprop_calibrate(
            self.model,
            X,
            y,
            steps=self.steps,
            lr=self.lr,
            batch_size=len(y),
            seed=self.seed + self.n_steps - 1,
        )
        return np.stack([before, self.predict(X) == y]), {}

    def device_bytes(self) -> int:
        return to_qmodel(self.model).device_bytes()["total"] + self.core.nbytes


@register("backprop", uses_qcore=True, backprop=True, reads=CORE_LOOP)
def _backprop(dep: Deployment) -> BackpropCalibrator:
    c = dep.cfg
    return BackpropCalibrator(
        dep.qmodel, dep.core, steps=c.calib_steps, lr=c.calib_lr, **core_loop(dep.device)
    )
