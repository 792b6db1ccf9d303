"""Exact packing of 2..8-bit codes into bytes: what a device stores (NumPy only).

Codes are laid out little-endian bit by bit: code ``i`` occupies bits
``[i*bits, (i+1)*bits)`` of the stream, so ``n`` codes take ``ceil(n*bits/8)`` bytes.
"""

from __future__ import annotations

import numpy as np

from qcore.core.quant import check_bits, qrange
from qcore.errors import QCoreError


def packed_size(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits."""
    return -(-n * check_bits(bits) // 8)


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes (any shape, values in the ``bits`` range) into a flat uint8 array."""
    bits = check_bits(bits)
    flat = np.asarray(q).reshape(-1)
    qmin, qmax = qrange(bits)
    if flat.size and (int(flat.min()) < qmin or int(flat.max()) > qmax):
        raise QCoreError(f"codes outside [{qmin}, {qmax}] cannot be packed at {bits} bits")
    if bits == 8:
        return flat.astype(np.uint8).copy()
    shifts = np.arange(bits, dtype=np.uint8)
    bit_matrix = (flat.astype(np.uint8)[:, None] >> shifts) & 1  # (n, bits)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``n`` uint8 codes from the packed bytes."""
    bits = check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != packed_size(n, bits):
        raise QCoreError(
            f"packed buffer has {packed.size} bytes, expected {packed_size(n, bits)} "
            f"for {n} codes of {bits} bits"
        )
    if bits == 8:
        return packed.copy()
    stream = np.unpackbits(packed, count=n * bits, bitorder="little").reshape(n, bits)
    weights = (1 << np.arange(bits)).astype(np.uint16)
    return (stream.astype(np.uint16) @ weights).astype(np.uint8)
