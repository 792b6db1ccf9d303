"""``finetune``: back-prop on each stream batch alone, no buffer (the forgetting baseline)."""

from __future__ import annotations

import torch

from qcore.baselines.torch_common import TorchBaseline
from qcore.cloud.calibrate import backprop_calibrate
from qcore.core.types import Batch
from qcore.eval.methods import Deployment, register


class Finetune(TorchBaseline):
    """``steps`` full-batch Adam steps on the new batch only; the device stores the model."""

    def __init__(self, qmodel: torch.nn.Module, *, steps: int, lr: float, seed: int) -> None:
        super().__init__(qmodel)
        self.steps, self.lr, self.seed, self.n_seen = steps, lr, seed, 0

    def step(self, batch: Batch) -> dict[str, float]:
        backprop_calibrate(
            self.model,
            batch.X,
            batch.y,
            steps=self.steps,
            lr=self.lr,
            batch_size=len(batch),
            seed=self.seed + self.n_seen,
        )
        self.n_seen += 1
        return {}


@register("finetune")
def _finetune(dep: Deployment) -> Finetune:
    c = dep.cfg
    return Finetune(dep.qmodel, steps=c.calib_steps, lr=c.calib_lr, seed=c.seed)
