"""``er``: experience replay with a reservoir buffer (Chaudhry et al., 2019).

The buffer (``core_size`` samples) is filled in the cloud by reservoir sampling over a
seeded shuffle of the source training set. Each Adam step trains on the whole new batch
plus a fresh uniform sample of the buffer (as many as the batch); afterwards the batch
is offered to the reservoir, which keeps a uniform sample of everything seen.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qcore.core.types import Batch
from qcore.methods.registry import register
from qcore.methods.torch_common import BufferBaseline, adam_steps, xy_tensors


@register("er", backprop=True)
class ExperienceReplay(BufferBaseline):
    def step(self, batch: Batch) -> dict[str, float]:
        b = self.buffer

        def loss(_: int) -> torch.Tensor:
            idx = b.sample(len(batch), self.rng)
            X, y = xy_tensors(
                np.concatenate([batch.X, b.X[idx]]), np.concatenate([batch.y, b.y[idx]])
            )
            return F.cross_entropy(self.model(X), y)

        adam_steps(self.model, self.steps, self.lr, loss)
        return self.offer(batch)
