"""Float training, recording per-sample correctness of quantized copies along the way.

Every ``record_every`` epochs the model is copied, quantized to each of ``dynamics_bits``
(and kept float) and run on the whole training set; the per-sample correct/incorrect
sequences are the training dynamics QCore selection scores (docs/method.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qcore.cloud.model import InceptionTime
from qcore.cloud.quantize import quantize_model
from qcore.core.types import validate_xy

CALIB_WINDOWS = 256  # source windows that fix activation ranges


@dataclass(frozen=True)
class Dynamics:
    """``correct[o, b, i]``: observation ``o``, bit-width ``bits[b]`` (None = float), sample i."""

    bits: tuple[int | None, ...]
    epochs: tuple[int, ...]
    correct: np.ndarray  # bool (n_observations, n_bits, n_samples)


def to_tensor(X: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits (float32 ``(n_cases, n_classes)``), in chunks."""
    model.eval()
    outs = [model(to_tensor(X[i : i + batch_size])) for i in range(0, len(X), batch_size)]
    return torch.cat(outs).numpy()


def accuracy(model: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float((predict_logits(model, X).argmax(1) == y).mean())


def train_float(
    model: InceptionTime,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    dynamics_bits: Sequence[int] = (),
    record_every: int = 5,
    progress: bool = False,
) -> Dynamics | None:
    """Train ``model`` in place with Adam; return training dynamics if ``dynamics_bits``."""
    validate_xy(X, y, "training data")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout-free model: only the shuffles and init use it
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    Xt, yt = to_tensor(X), torch.from_numpy(y.astype(np.int64))
    bits_all: tuple[int | None, ...] = (None, *dynamics_bits)
    observed, obs_epochs = [], []
    for epoch in tqdm(range(1, epochs + 1), desc="train float", disable=not progress):
        model.train()
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # a 1-sample batch breaks BatchNorm
                continue
            opt.zero_grad()
            F.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            opt.step()
        if dynamics_bits and (epoch % record_every == 0 or epoch == epochs):
            X_calib = X[:CALIB_WINDOWS]
            row = [
                predict_logits(quantize_model(model, b, X_calib, seed), X).argmax(1) == y
                for b in bits_all
            ]
            observed.append(np.stack(row))
            obs_epochs.append(epoch)
    model.eval()
    if not dynamics_bits:
        return None
    return Dynamics(bits_all, tuple(obs_epochs), np.stack(observed))
