"""What the back-prop baselines share: a private copy of the deployed model and Adam steps.

Training is straight-through on the latent weights with the quantization parameters
fixed (as :func:`qcore.cloud.calibrate.backprop_calibrate`), so after every step the
deployed model is the new integer codes; BatchNorm runs in training mode while training
so its statistics follow the calibration data. A fresh Adam per stream step, as the
back-prop reference does.

Every baseline here is built from a :class:`qcore.methods.registry.Deployment` alone,
so its class is the factory its module registers. A buffer baseline's buffer holds as
many samples as the QCore (the same bytes); the cloud fills it
(:meth:`BufferBaseline.first_buffer`) and a replay step ends with
:meth:`BufferBaseline.offer`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.export import to_qmodel
from qcore.cloud.train import predict_logits, to_tensor
from qcore.core.types import Batch
from qcore.coreset.core import Core
from qcore.methods.common import Buffer, StepMethod, source_reservoir
from qcore.methods.registry import Deployment


class TorchBaseline(StepMethod):
    """A baseline that calibrates a deep copy of the deployed torch model.

    ``steps`` Adam steps at rate ``lr`` per stream step (the run's ``calib_steps`` and
    ``calib_lr``); ``n_steps`` counts stream steps and offsets the run's ``seed`` so
    every step draws its own mini-batch order.
    """

    def __init__(self, dep: Deployment) -> None:
        c = dep.cfg
        self.model = copy.deepcopy(dep.qmodel).eval()
        self.steps, self.lr, self.seed, self.n_steps = c.calib_steps, c.calib_lr, c.seed, 0

    def train_full_batch(self, X: np.ndarray, y: np.ndarray) -> None:
        """``steps`` full-batch Adam steps on ``(X, y)``, seeded by ``seed + n_steps``."""
        backprop_calibrate(
            self.model,
            X,
            y,
            steps=self.steps,
            lr=self.lr,
            batch_size=len(y),
            seed=self.seed + self.n_steps,
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        return predict_logits(self.model, X).argmax(1)

    def model_bytes(self) -> int:
        """Bytes of the deployed (quantized) model the device runs."""
        return to_qmodel(self.model).device_bytes()["total"]

    def device_bytes(self) -> int:
        return self.model_bytes()


class BufferBaseline(TorchBaseline):
    """A :class:`TorchBaseline` whose device also holds a sample buffer (its "core").

    ``rng`` (seeded by ``seed``) first fills the buffer, then draws every step's samples.
    """

    def __init__(self, dep: Deployment) -> None:
        super().__init__(dep)
        self.rng = np.random.default_rng(self.seed)
        self.buffer = self.first_buffer(dep, len(dep.core))

    def first_buffer(self, dep: Deployment, size: int) -> Buffer:
        """The buffer the cloud hands over: ``size`` samples drawn by a reservoir over a
        seeded shuffle of the source training set (a method may choose otherwise)."""
        return source_reservoir(dep.source_X, dep.source_y, size, self.rng)

    def offer(self, batch: Batch) -> dict[str, float]:
        """End a replay step: count it, then offer the batch to the reservoir (with the
        trained model's logits where the buffer stores logits). Returns no extras."""
        self.n_steps += 1
        b = self.buffer
        logits = None if b.logits is None else predict_logits(self.model, batch.X)
        b.add_reservoir(batch.X, batch.y, self.n_steps, self.rng, logits=logits)
        return {}

    @property
    def core(self) -> Core:
        return self.buffer.as_core()

    def device_bytes(self) -> int:
        return self.model_bytes() + self.buffer.nbytes


def adam_steps(
    model: torch.nn.Module, steps: int, lr: float, loss_of: Callable[[int], torch.Tensor]
) -> None:
    """``steps`` Adam steps on the scalar ``loss_of(step)`` (train mode), then eval mode."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for s in range(steps):
        model.train()
        opt.zero_grad()
        loss_of(s).backward()
        opt.step()
    model.eval()


def xy_tensors(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``(n, C, T)`` and int64 ``(n,)`` tensors (no copy where possible)."""
    return to_tensor(X), torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
