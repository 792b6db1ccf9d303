"""``camel``: coreset training and a coreset buffer by facility location (Li et al., 2022).

Camel trains on a small representative subset of each batch and keeps a representative
buffer. Both are chosen by greedy maximisation of the submodular facility-location
objective ``F(S) = sum_i max_{j in S} sim(i, j)`` over penultimate features
(``model.features``, pooled, current model), with ``sim = d_max - d`` for Euclidean
distances ``d`` (non-negative, so greedy is within ``1 - 1/e`` of the optimum). Each step:
pick ``batch_fraction`` of the batch, train on buffer + picked samples, then merge the
picked samples into the buffer by the same objective over buffer + picked. The first
buffer is picked from the source training set in the cloud (from at most
``MAX_POOL`` seeded random source samples, which bounds the ``(n, n)`` similarity).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qcore.cloud.train import to_tensor
from qcore.core.types import Batch
from qcore.methods.common import Buffer
from qcore.methods.registry import Deployment, register
from qcore.methods.torch_common import BufferBaseline

MAX_POOL = 2000


def facility_location_greedy(sim: np.ndarray, k: int) -> np.ndarray:
    """Greedy ``argmax F`` of size ``k`` for a non-negative ``sim`` ``(n, n)``: int64 indices,
    in pick order. Ties go to the lowest index."""
    n = sim.shape[0]
    cover = np.zeros(n)  # max similarity of each point to the chosen set so far
    chosen: list[int] = []
    for _ in range(min(k, n)):
        gains = np.maximum(sim, cover[:, None]).sum(axis=0) - cover.sum()
        gains[chosen] = -np.inf
        j = int(np.argmax(gains))
        chosen.append(j)
        cover = np.maximum(cover, sim[:, j])
    return np.asarray(chosen, dtype=np.int64)


def similarity(features: np.ndarray) -> np.ndarray:
    """``d_max - d`` for pairwise Euclidean distances of ``features`` ``(n, f)``: ``(n, n)``."""
    f = features.astype(np.float64)
    sq = (f * f).sum(axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0))
    return d.max() - d


@torch.no_grad()
def features_of(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    """Pooled penultimate features float32 ``(n, 4 * filters)`` in eval mode."""
    model.eval()
    return torch.cat(
        [model.features(to_tensor(X[i : i + 256])) for i in range(0, len(X), 256)]
    ).numpy()


@register("camel", backprop=True)
class Camel(BufferBaseline):
    batch_fraction = 0.5  # of each batch trained on and offered to the buffer

    def first_buffer(self, dep: Deployment, size: int) -> Buffer:
        """The facility-location pick of ``size`` among at most ``MAX_POOL`` source samples."""
        X, y = dep.source_X, dep.source_y
        buf = Buffer(size, X.shape[1:])
        pool = self.rng.permutation(len(y))[:MAX_POOL]
        pick = pool[facility_location_greedy(similarity(features_of(self.model, X[pool])), size)]
        for slot, i in enumerate(pick):
            buf.put(slot, X[i], int(y[i]), -1)
        buf.n_seen = len(y)
        return buf

    def step(self, batch: Batch) -> dict[str, float]:
        b = self.buffer
        m = max(1, math.ceil(self.batch_fraction * len(batch)))
        pick = facility_location_greedy(similarity(features_of(self.model, batch.X)), m)
        X = np.concatenate([b.X[: b.size], batch.X[pick]])
        y = np.concatenate([b.y[: b.size], batch.y[pick]])
        origin = np.concatenate([b.origin[: b.size], np.full(len(pick), self.n_steps + 1)])
        self.train_full_batch(X, y)
        self.n_steps += 1
        keep = facility_location_greedy(similarity(features_of(self.model, X)), b.capacity)
        for slot, i in enumerate(keep):
            b.put(slot, X[i], int(y[i]), int(origin[i]))
        b.n_seen += len(batch)
        return {"trained_on": float(len(y))}
