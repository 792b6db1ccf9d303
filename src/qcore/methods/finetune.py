"""``finetune``: back-prop on each stream batch alone, no buffer (the forgetting baseline)."""

from __future__ import annotations

from qcore.core.types import Batch
from qcore.methods.registry import register
from qcore.methods.torch_common import TorchBaseline


@register("finetune", backprop=True)
class Finetune(TorchBaseline):
    """``steps`` full-batch Adam steps on the new batch only; the device stores the model."""

    def step(self, batch: Batch) -> dict[str, float]:
        self.train_full_batch(batch.X, batch.y)
        self.n_steps += 1
        return {}
