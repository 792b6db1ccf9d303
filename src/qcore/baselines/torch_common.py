"""What the back-prop baselines share: a private copy of the deployed model and Adam steps.

Training is straight-through on the latent weights with the quantization parameters
fixed (as :func:`qcore.cloud.calibrate.backprop_calibrate`), so after every step the
deployed model is the new integer codes; BatchNorm runs in training mode while training
so its statistics follow the calibration data. A fresh Adam per stream step, as the
back-prop reference does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from qcore.baselines.common import Baseline, Buffer
from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.export import to_qmodel
from qcore.cloud.train import predict_logits, to_tensor
from qcore.coreset.core import Core


class TorchBaseline(Baseline):
    """A baseline that calibrates a deep copy of the deployed torch model.

    ``steps`` Adam steps at rate ``lr`` per stream step; ``n_steps`` counts stream steps
    and offsets ``seed`` so every step draws its own mini-batch order.
    """

    def __init__(self, qmodel: torch.nn.Module, *, steps: int, lr: float, seed: int) -> None:
        self.model = copy.deepcopy(qmodel).eval()
        self.steps, self.lr, self.seed, self.n_steps = steps, lr, seed, 0

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
    """A :class:`TorchBaseline` whose device also holds a sample buffer (its "core")."""

    buffer: Buffer

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


def budget(dep: Any) -> dict[str, Any]:
    """What every buffer baseline gets from a :class:`qcore.baselines.registry.Deployment`: a
    buffer of as many samples as the core (same bytes), the run's calibration steps,
    learning rate and seed."""
    c = dep.cfg
    return {"size": len(dep.core), "steps": c.calib_steps, "lr": c.calib_lr, "seed": c.seed}
