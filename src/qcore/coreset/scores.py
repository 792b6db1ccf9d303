"""Quantization-miss scores from training dynamics (docs/method.md).

A *miss* is a correct -> incorrect transition between consecutive observations of one
sample at one bit-width (a forgetting event, Toneva et al. 2019). A sample never
classified correctly at a bit-width gets the largest possible count, the number of
observations, so that it ranks above every forgotten one.
"""

from __future__ import annotations

import numpy as np

from qcore.errors import QCoreError


def miss_counts(correct: np.ndarray) -> np.ndarray:
    """``correct`` bool ``(n_obs, n_bits, n)`` -> int64 miss counts ``(n_bits, n)``."""
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 3 or correct.shape[0] < 1:
        raise QCoreError(f"correctness must be (n_obs, n_bits, n_samples), got {correct.shape}")
    n_obs = correct.shape[0]
    forgot = (correct[:-1] & ~correct[1:]).sum(axis=0)
    never = ~correct.any(axis=0)
    return np.where(never, n_obs, forgot).astype(np.int64)


def pass_misses(correct: np.ndarray) -> np.ndarray:
    """Misses of each sample over the device's calibration passes: ``(n_pass, n)`` -> ``(n,)``."""
    correct = np.asarray(correct, dtype=bool)
    return miss_counts(correct[:, None, :])[0]


def qcore_scores(correct: np.ndarray, bits: tuple[int | None, ...]) -> np.ndarray:
    """Score per sample: misses summed over the *quantized* bit-widths (float excluded).

    The released code mixes one bit-width with the float statistics by an index slip;
    here each bit-width's sequence is counted on its own (docs/method.md).
    """
    counts = miss_counts(correct)
    keep = [i for i, b in enumerate(bits) if b is not None]
    if not keep:
        raise QCoreError("training dynamics hold no quantized bit-width")
    return counts[keep].sum(axis=0)
