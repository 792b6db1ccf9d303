"""Explicit randomness: every stochastic function takes a seed or a Generator."""

from __future__ import annotations

import numpy as np

SeedLike = int | np.random.Generator | None


def as_generator(seed: SeedLike) -> np.random.Generator:
    """A ``numpy.random.Generator`` from an int seed, or the generator itself."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("pass an explicit seed: qcore never draws from global state")
    return np.random.default_rng(int(seed))
