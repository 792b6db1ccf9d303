"""``random-core-flip``: QCore's device step (flip network) on a uniform random core.

The same seeded random core as ``random-core-bp`` (reservoir over the source, kept
uniform by reservoir sampling); the flip network is trained in the cloud for this core
exactly as for the QCore (:func:`qcore.eval.stream.train_flipnet`). Comparing it with
``qcore`` isolates the core selection under back-prop-free calibration.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qcore.baselines.common import Baseline, Buffer, source_reservoir
from qcore.core.qmodel import QuantizedModel
from qcore.core.types import Batch
from qcore.coreset.core import Core
from qcore.edge.calibrate import flip_calibrate
from qcore.edge.flip import FlipNet
from qcore.edge.infer import predict as edge_predict
from qcore.eval.methods import Deployment, register


class RandomCoreFlip(Baseline):
    """Flip calibration on core + batch, then reservoir-insert the batch (NumPy only)."""

    def __init__(
        self,
        qm: QuantizedModel,
        buffer: Buffer,
        net: FlipNet,
        rng: np.random.Generator,
        *,
        steps: int,
        guard: bool | str,
        bn_mode: str,
        budget: float | None = None,
    ) -> None:
        self.qm, self.buffer, self.net, self.rng = qm, buffer, net, rng
        self.steps, self.guard, self.bn_mode, self.n_steps = steps, guard, bn_mode, 0
        self.budget = budget

    @property
    def core(self) -> Core:
        return self.buffer.as_core()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return edge_predict(self.qm, X)

    def step(self, batch: Batch) -> dict[str, float]:
        b = self.buffer
        X = np.concatenate([b.X[: b.size], batch.X])
        y = np.concatenate([b.y[: b.size], batch.y])
        res = flip_calibrate(
            self.qm,
            X,
            y,
            self.net,
            steps=self.steps,
            guard=self.guard,
            bn_mode=self.bn_mode,
            budget=self.budget,
        )
        self.qm = res.model
        self.n_steps += 1
        b.add_reservoir(batch.X, batch.y, self.n_steps, self.rng)
        return {"flips": float(res.flips_applied), "rejected": float(res.passes_rejected)}

    def device_bytes(self) -> int:
        return self.qm.device_bytes()["total"] + self.buffer.nbytes + self.net.nbytes()


@register("random-core-flip")
def _random_core_flip(dep: Deployment) -> RandomCoreFlip:
    from qcore.cloud.export import to_qmodel
    from qcore.eval.stream import train_flipnet

    c = dep.cfg
    rng = np.random.default_rng(c.seed)
    buffer = source_reservoir(dep.source_X, dep.source_y, len(dep.core), rng)  # QCore's size
    net = train_flipnet(dataclasses.replace(dep, core=buffer.as_core()))  # extras shared
    return RandomCoreFlip(
        to_qmodel(dep.qmodel),
        buffer,
        net,
        rng,
        steps=c.flip_steps,
        guard={"off": False, "pass": True}.get(c.flip_guard, c.flip_guard),
        bn_mode=c.bn_mode,
        budget=c.flip_budget,
    )
