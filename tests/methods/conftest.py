"""Fixtures for the baselines: a tiny 4-bit deployment and a shifted target stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcore.config import RunConfig
from qcore.core.types import Batch
from qcore.coreset.core import build_core
from qcore.methods.registry import Deployment

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def deployed(tiny_model, tiny_xy):
    """The tiny model quantized to 4 bits (never changed by a test: methods copy it)."""
    from qcore.cloud.quantize import quantize_model

    return quantize_model(tiny_model, 4, tiny_xy[0], seed=0)


@pytest.fixture
def make_dep(deployed, tiny_xy):
    """``make_dep(core_size=6, n_source=None, **cfg)`` -> a fresh :class:`Deployment`."""

    def make(core_size: int = 6, n_source: int | None = None, **cfg) -> Deployment:
        X, y = tiny_xy
        X, y = X[:n_source], y[:n_source]
        c = RunConfig(dataset="synthetic", core_size=core_size, **{"calib_steps": 2, **cfg})
        core = build_core(X, y, np.ones(len(y), dtype=np.int64), core_size, "proportional", 0)
        return Deployment(c, 4, deployed, core, X, y, n_classes=3, batch_len=12)

    return make


@pytest.fixture
def target_batches(tiny_xy):
    """``target_batches(n, size=12, seed=1)``: batches of the tiny data under a drift."""

    def make(n: int, size: int = 12, seed: int = 1) -> list[Batch]:
        X, y = tiny_xy
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            idx = rng.choice(len(y), size, replace=False)
            Xb = 1.3 * X[idx] + 0.4 + rng.normal(0, 0.1, X[idx].shape)
            out.append(Batch(Xb.astype(np.float32), y[idx]))
        return out

    return make
