"""``joint``: back-prop on all target data seen so far: the upper reference.

After the last batch it has trained on the whole target training set. A device cannot
afford it: it stores every stream sample, and ``device_bytes`` counts them all.
"""

from __future__ import annotations

import numpy as np

from qcore.core.types import Batch
from qcore.methods.registry import Deployment, register
from qcore.methods.torch_common import TorchBaseline


@register("joint", backprop=True)
class Joint(TorchBaseline):
    """``steps`` full-batch Adam steps per stream step on the union of all batches so far.

    ``X`` float32 ``(n_seen, C, T)`` and ``y`` int64 grow by one batch per step.
    """

    def __init__(self, dep: Deployment) -> None:
        super().__init__(dep)
        self.X: np.ndarray | None = None
        self.y = np.zeros(0, dtype=np.int64)

    def step(self, batch: Batch) -> dict[str, float]:
        X = batch.X.astype(np.float32)
        self.X = X if self.X is None else np.concatenate([self.X, X])
        self.y = np.concatenate([self.y, batch.y.astype(np.int64)])
        self.train_full_batch(self.X, self.y)
        self.n_steps += 1
        return {"stored": float(len(self.y))}

    def device_bytes(self) -> int:
        stored = 0 if self.X is None else self.X.nbytes + self.y.nbytes
        return self.model_bytes() + int(stored)
