"""``random-core-bp``: a uniform random core instead of the QCore, back-prop on core + batch.

Isolates what QCore's selection buys: the core is a seeded uniform sample of the source
training set of the same size, kept uniform over everything seen by reservoir sampling
(instead of QCore's miss-driven update); the calibration is the back-prop reference's.
"""

from __future__ import annotations

import numpy as np

from qcore.core.types import Batch
from qcore.methods.registry import register
from qcore.methods.torch_common import BufferBaseline


@register("random-core-bp", backprop=True)
class RandomCoreBP(BufferBaseline):
    """``steps`` full-batch Adam steps on core + batch, then reservoir-insert the batch."""

    def step(self, batch: Batch) -> dict[str, float]:
        b = self.buffer
        X = np.concatenate([b.X[: b.size], batch.X])
        y = np.concatenate([b.y[: b.size], batch.y])
        self.train_full_batch(X, y)
        return self.offer(batch)
