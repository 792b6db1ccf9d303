"""``derpp``: Dark Experience Replay++ (Buzzega et al., 2020).

The reservoir buffer stores each sample with the model's logits at insertion (source
samples: the deployed model's). Each Adam step minimises
``CE(batch) + alpha * MSE(f(x1), z1) + beta * CE(f(x2), y2)`` with ``(x1, z1)`` and
``(x2, y2)`` two independent uniform buffer samples (as many as the batch). After the
step the batch is offered to the reservoir with its current logits. The stored logits
cost ``4 * n_classes`` bytes per sample on top of the shared per-sample budget.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qcore.baselines.common import source_reservoir
from qcore.baselines.registry import Deployment, register
from qcore.baselines.torch_common import BufferBaseline, adam_steps, budget, xy_tensors
from qcore.cloud.train import predict_logits, to_tensor
from qcore.core.types import Batch


class DERPP(BufferBaseline):
    def __init__(
        self,
        qmodel: torch.nn.Module,
        source_X: np.ndarray,
        source_y: np.ndarray,
        n_classes: int,
        *,
        size: int,
        steps: int,
        lr: float,
        seed: int,
        alpha: float = 0.1,
        beta: float = 0.5,
    ) -> None:
        super().__init__(qmodel, steps=steps, lr=lr, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.buffer = source_reservoir(source_X, source_y, size, self.rng, n_logits=n_classes)
        b = self.buffer
        b.logits[: b.size] = predict_logits(self.model, b.X[: b.size])
        self.alpha, self.beta = alpha, beta

    def step(self, batch: Batch) -> dict[str, float]:
        b, k = self.buffer, len(batch)

        def loss(_: int) -> torch.Tensor:
            X, y = xy_tensors(batch.X, batch.y)
            i1, i2 = b.sample(k, self.rng), b.sample(k, self.rng)
            total = F.cross_entropy(self.model(X), y)
            z = torch.from_numpy(b.logits[i1])
            total = total + self.alpha * F.mse_loss(self.model(to_tensor(b.X[i1])), z)
            X2, y2 = xy_tensors(b.X[i2], b.y[i2])
            return total + self.beta * F.cross_entropy(self.model(X2), y2)

        adam_steps(self.model, self.steps, self.lr, loss)
        self.n_steps += 1
        logits = predict_logits(self.model, batch.X)
        b.add_reservoir(batch.X, batch.y, self.n_steps, self.rng, logits=logits)
        return {}


@register("derpp")
def _derpp(dep: Deployment) -> DERPP:
    return DERPP(
        dep.qmodel,
        dep.source_X,
        dep.source_y,
        dep.n_classes,
        **budget(dep),
    )
