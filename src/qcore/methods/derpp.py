"""``derpp``: Dark Experience Replay++ (Buzzega et al., 2020).

The reservoir buffer stores each sample with the model's logits at insertion (source
samples: the deployed model's). Each Adam step minimises
``CE(batch) + alpha * MSE(f(x1), z1) + beta * CE(f(x2), y2)`` with ``(x1, z1)`` and
``(x2, y2)`` two independent uniform buffer samples (as many as the batch). After the
step the batch is offered to the reservoir with its current logits. The stored logits
cost ``4 * n_classes`` bytes per sample on top of the shared per-sample budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcore.cloud.train import predict_logits, to_tensor
from qcore.core.types import Batch
from qcore.methods.common import Buffer, source_reservoir
from qcore.methods.registry import Deployment, register
from qcore.methods.torch_common import BufferBaseline, adam_steps, xy_tensors


@register("derpp", backprop=True)
class DERPP(BufferBaseline):
    alpha, beta = 0.1, 0.5  # weights of the logit (MSE) and the label (CE) replay terms

    def first_buffer(self, dep: Deployment, size: int) -> Buffer:
        """The source reservoir, each sample with the deployed model's logits."""
        b = source_reservoir(dep.source_X, dep.source_y, size, self.rng, n_logits=dep.n_classes)
        b.logits[: b.size] = predict_logits(self.model, b.X[: b.size])
        return b

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
        return self.offer(batch)
