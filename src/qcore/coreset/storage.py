"""The core's storage on a device: windows as 8-bit codes, one grid per window and channel.

1 byte per value plus 5 bytes per (window, channel) instead of 4 bytes per value. The
grid spans ``[min(x, 0), max(x, 0)]`` of its window and channel (zero exactly
representable), so the error of a value is at most half a step, 0.2 % of that range. A
per-window grid (rather than one per channel over the whole core) makes the compression
idempotent: a device rewrites its state after every step, and samples that stay in the
core re-encode to exactly the same codes instead of being re-rounded each time the rest
of the core changes. The device step stores its core through :func:`roundtrip`, so what
it holds in memory equals what its state file holds. NumPy only.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qcore.core.quant import choose_qparams, dequantize, quantize
from qcore.coreset.core import Core


def compress_windows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-bit codes of windows, one asymmetric grid per window and channel.

    ``X`` float32 ``(n, c, t)`` -> codes uint8 ``(n, c, t)``, scale float32 ``(n, c)``,
    zero point uint8 ``(n, c)``. The grid spans ``[min(x, 0), max(x, 0)]`` of its window
    and channel, so ``|x - decompress(compress(x))| <= scale / 2``; re-compressing the
    decompressed windows reproduces the same codes.
    """
    X = np.asarray(X, dtype=np.float32)
    scale, zp = choose_qparams(X.min(axis=2), X.max(axis=2), 8)
    codes = quantize(X, scale[:, :, None], zp[:, :, None], 8)
    return codes, scale, zp.astype(np.uint8)


def decompress_windows(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Float32 windows ``(n, c, t)`` back from :func:`compress_windows`' output."""
    return dequantize(codes, scale[:, :, None], zero_point[:, :, None]).astype(np.float32)


def roundtrip(core: Core) -> Core:
    """``core`` with its windows as the device stores them (compressed, then decompressed)."""
    return replace(core, X=decompress_windows(*compress_windows(core.X)))
