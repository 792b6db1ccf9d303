"""``random-core-bp``: a uniform random core instead of the QCore, back-prop on core + batch.

Isolates what QCore's selection buys: the core is a seeded uniform sample of the source
training set of the same size, kept uniform over everything seen by reservoir sampling
(instead of QCore's miss-driven update); the calibration is the back-prop reference's.
"""

from __future__ import annotations

import numpy as np
import torch

from qcore.baselines.common import source_reservoir
from qcore.baselines.registry import Deployment, register
from qcore.baselines.torch_common import BufferBaseline, budget
from qcore.core.types import Batch


class RandomCoreBP(BufferBaseline):
    """``steps`` full-batch Adam steps on core + batch, then reservoir-insert the batch."""

    def __init__(
        self,
        qmodel: torch.nn.Module,
        source_X: np.ndarray,
        source_y: np.ndarray,
        *,
        size: int,
        steps: int,
        lr: float,
        seed: int,
    ) -> None:
        super().__init__(qmodel, steps=steps, lr=lr, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.buffer = source_reservoir(source_X, source_y, size, self.rng)

    def step(self, batch: Batch) -> dict[str, float]:
        b = self.buffer
        X = np.concatenate([b.X[: b.size], batch.X])
        y = np.concatenate([b.y[: b.size], batch.y])
        self.train_full_batch(X, y)
        self.n_steps += 1
        b.add_reservoir(batch.X, batch.y, self.n_steps, self.rng)
        return {}


@register("random-core-bp")
def _random_core_bp(dep: Deployment) -> RandomCoreBP:
    return RandomCoreBP(
        dep.qmodel,
        dep.source_X,
        dep.source_y,
        **budget(dep),
    )
