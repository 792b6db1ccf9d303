"""``gdumb``: greedy class-balanced sampler + retraining on the buffer alone (Prabhu et al., 2020).

The buffer starts empty (the deployed model carries the source) and takes stream samples
greedily: while it has room every sample enters; once full, a sample enters only if its
class holds fewer than ``capacity / n_classes_seen`` slots, evicting a random sample of
the currently largest class. At every step the learner restarts from the deployed model
and trains on the buffer only ("dumb learner"; from the deployed model rather than from
scratch, since the device has no source data to retrain on). The device therefore keeps
the deployed model next to the one it trains: ``device_bytes`` counts the model twice.
"""

from __future__ import annotations

import copy

import numpy as np

from qcore.core.types import Batch
from qcore.methods.common import Buffer
from qcore.methods.registry import Deployment, register
from qcore.methods.torch_common import BufferBaseline


def gdumb_add(buf: Buffer, x: np.ndarray, y: int, origin: int, seen: set[int], rng) -> bool:
    """Offer one sample to the greedy balanced buffer; ``seen`` (classes so far) is updated.

    Returns whether the sample was stored.
    """
    seen.add(int(y))
    if buf.size < buf.capacity:
        buf.put(buf.size, x, y, origin)
        return True
    counts = np.bincount(buf.y[: buf.size], minlength=max(seen) + 1)
    if counts[y] >= buf.capacity / len(seen):
        return False
    largest = np.flatnonzero(counts == counts.max())
    victim_class = rng.choice(largest)
    slot = rng.choice(np.flatnonzero(buf.y[: buf.size] == victim_class))
    buf.put(int(slot), x, y, origin)
    return True


@register("gdumb", backprop=True)
class GDumb(BufferBaseline):
    def __init__(self, dep: Deployment) -> None:
        super().__init__(dep)
        self.deployed = copy.deepcopy(self.model)
        self.seen: set[int] = set()

    def first_buffer(self, dep: Deployment, size: int) -> Buffer:
        """An empty buffer: only stream samples enter."""
        return Buffer(size, dep.source_X.shape[1:])

    def step(self, batch: Batch) -> dict[str, float]:
        self.n_steps += 1
        b = self.buffer
        for x, y in zip(batch.X, batch.y, strict=True):
            gdumb_add(b, x, int(y), self.n_steps, self.seen, self.rng)
        b.n_seen += len(batch)
        self.model = copy.deepcopy(self.deployed)
        if b.size >= 2:  # BatchNorm needs two samples
            self.train_full_batch(b.X[: b.size], b.y[: b.size])
        return {}

    def device_bytes(self) -> int:
        return 2 * self.model_bytes() + self.buffer.nbytes  # restart point + learner
