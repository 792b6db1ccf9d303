"""Shared fixtures: tiny synthetic data and a tiny trained, quantized model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # robust on a busy 2-core machine

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_xy():
    """Three learnable classes of 3-channel, 32-step windows (seeded)."""
    rng = np.random.default_rng(0)
    n, c, t = 60, 3, 32
    y = np.arange(n) % 3
    tt = np.linspace(0, 1, t)
    X = rng.normal(0, 0.3, (n, c, t)) + np.sin(2 * np.pi * (y[:, None, None] + 1) * tt)
    return X.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_model(tiny_xy):
    from qcore.cloud.model import InceptionTime
    from qcore.cloud.train import train_float

    X, y = tiny_xy
    torch.manual_seed(0)
    model = InceptionTime(3, 3, filters=4, depth=3)
    train_float(model, X, y, epochs=5, lr=0.01, batch_size=16, seed=0)
    return model
