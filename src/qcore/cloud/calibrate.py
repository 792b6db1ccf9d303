"""Back-prop calibration of a quantized model: the reference every method is measured against.

Adam on the latent weights through straight-through rounding, plus BatchNorm affine
parameters and the head bias; BatchNorm runs in training mode so its statistics follow
the calibration data. Quantization parameters stay fixed, so after each step the
deployed model is simply the new integer codes (docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from qcore.cloud.model import quant_layers
from qcore.cloud.train import to_tensor
from qcore.core.types import validate_xy

StepHook = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], None]


def _param_groups(model: torch.nn.Module, lr: float, step_relative_lr: float | None):
    if step_relative_lr is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    groups, seen = [], set()
    for _, layer in quant_layers(model):
        if layer.bits is not None:
            rate = step_relative_lr * float(layer.w_scale.mean())
            groups.append({"params": [layer.weight], "lr": rate})
            seen.add(id(layer.weight))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return [*groups, {"params": rest, "lr": lr}]


def backprop_calibrate(
    model: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    before_step: StepHook | None = None,
    after_step: StepHook | None = None,
    step_relative_lr: float | None = None,
) -> None:
    """Run ``steps`` Adam steps on mini-batches of ``(X, y)`` in place.

    ``before_step``/``after_step`` see the model and the mini-batch around every step
    (the flip network's teacher records weight changes through them).
    ``step_relative_lr`` gives each quantized layer's weights the learning rate
    ``step_relative_lr * mean(scale)``: movement measured in integer steps, the same at
    every bit-width (the flip network's teacher uses it; otherwise 2-bit codes never move
    and 8-bit codes all move within a few steps).
    """
    validate_xy(X, y, "calibration data")
    if len(y) < 2:
        raise ValueError("calibration needs at least 2 samples (BatchNorm)")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(_param_groups(model, lr, step_relative_lr), lr=lr)
    Xt, yt = to_tensor(X), torch.from_numpy(y.astype(np.int64))
    order = torch.randperm(len(yt), generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + min(batch_size, len(yt)) > len(yt):
            order, pos = torch.randperm(len(yt), generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += len(idx)
        xb, yb = Xt[idx], yt[idx]
        model.train()
        if before_step is not None:
            before_step(model, xb, yb)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        if after_step is not None:
            after_step(model, xb, yb)
    model.eval()
