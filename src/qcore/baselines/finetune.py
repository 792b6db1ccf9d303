"""``finetune``: back-prop on each stream batch alone, no buffer (the forgetting baseline)."""

from __future__ import annotations

import torch

from qcore.baselines.registry import Deployment, register
from qcore.baselines.torch_common import TorchBaseline
from qcore.core.types import Batch


class Finetune(TorchBaseline):
    """``steps`` full-batch Adam steps on the new batch only; the device stores the model."""

    def __init__(self, qmodel: torch.nn.Module, *, steps: int, lr: float, seed: int) -> None:
        super().__init__(qmodel, steps=steps, lr=lr, seed=seed)

    def step(self, batch: Batch) -> dict[str, float]:
        self.train_full_batch(batch.X, batch.y)
        self.n_steps += 1
        return {}


@register("finetune")
def _finetune(dep: Deployment) -> Finetune:
    c = dep.cfg
    return Finetune(dep.qmodel, steps=c.calib_steps, lr=c.calib_lr, seed=c.seed)
