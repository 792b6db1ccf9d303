"""Uniform asymmetric quantization primitives (NumPy only, side-effect free).

Vocabulary: ``bits`` in 2..8, integer codes ``q`` in ``[qmin, qmax] = [0, 2**bits - 1]``,
``x ~= (q - zero_point) * scale``. Weights use one (scale, zero_point) per output
channel (axis 0); activations one per tensor (docs/method.md).
Rounding is round-half-to-even on both sides (``np.rint`` and ``torch.round`` agree),
which the edge/cloud parity tests rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.errors import QCoreError

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
_EPS = 1e-8


def check_bits(bits: object) -> int:
    """Return ``bits`` as an int, or raise naming the unsupported value."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise QCoreError(f"bit-width must be an integer in 2..8, got {bits!r}")
    if int(bits) not in SUPPORTED_BITS:
        raise QCoreError(f"unsupported bit-width {bits}: choose one of 2..8 (or float)")
    return int(bits)


def qrange(bits: int) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of unsigned ``bits``-bit codes."""
    bits = check_bits(bits)
    return 0, (1 << bits) - 1


def choose_qparams(
    x_min: np.ndarray | float, x_max: np.ndarray | float, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (int32) mapping ``[x_min, x_max]`` onto the code range.

    The range is widened to contain 0 so that zero is exactly representable
    (zero padding and ReLU outputs stay exact).
    """
    qmin, qmax = qrange(bits)
    lo = np.minimum(np.asarray(x_min, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(x_max, dtype=np.float64), 0.0)
    scale = np.maximum((hi - lo) / (qmax - qmin), _EPS)
    zero_point = np.clip(np.rint(qmin - lo / scale), qmin, qmax)
    return scale.astype(np.float32), zero_point.astype(np.int32)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: int) -> np.ndarray:
    """Codes ``clip(rint(x / scale) + zero_point, qmin, qmax)`` as uint8 (broadcasting)."""
    qmin, qmax = qrange(bits)
    x32 = np.asarray(x, dtype=np.float32)
    q = np.rint(x32 / np.asarray(scale, dtype=np.float32)) + np.asarray(zero_point, np.float32)
    return np.clip(q, qmin, qmax).astype(np.uint8)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Float32 values ``(q - zero_point) * scale`` (broadcasting)."""
    diff = np.asarray(q, dtype=np.float32) - np.asarray(zero_point, dtype=np.float32)
    return diff * np.asarray(scale, dtype=np.float32)


def fake_quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: int
) -> np.ndarray:
    """``dequantize(quantize(x))`` in one call: the value a quantized tensor really carries."""
    return dequantize(quantize(x, scale, zero_point, bits), scale, zero_point)


def _channel_shape(ndim: int) -> tuple[int, ...]:
    return (-1,) + (1,) * (ndim - 1)


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight tensor stored as integers: ``q`` (uint8 codes), per-output-channel params.

    ``q`` has the weight's shape; ``scale`` and ``zero_point`` have shape ``(shape[0],)``.
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int

    def __post_init__(self) -> None:
        check_bits(self.bits)
        qmin, qmax = qrange(self.bits)
        if self.q.dtype != np.uint8:
            raise QCoreError(f"integer codes must be uint8, got {self.q.dtype}")
        if self.q.size and (int(self.q.min()) < qmin or int(self.q.max()) > qmax):
            raise QCoreError(f"codes leave [{qmin}, {qmax}] for {self.bits} bits")
        n_out = self.q.shape[0]
        if self.scale.shape != (n_out,) or self.zero_point.shape != (n_out,):
            raise QCoreError("scale and zero_point need one entry per output channel")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    def dequantize(self) -> np.ndarray:
        """Float32 weight of shape ``self.shape``."""
        cs = _channel_shape(self.q.ndim)
        return dequantize(self.q, self.scale.reshape(cs), self.zero_point.reshape(cs))

    def with_codes(self, q: np.ndarray) -> QuantizedTensor:
        """Same scales and zero points, new codes (a flip changes the integers and nothing else)."""
        return QuantizedTensor(q.astype(np.uint8), self.scale, self.zero_point, self.bits)

    def packed_nbytes(self) -> int:
        """Bytes a device stores: packed codes, float32 scales, int8-sized zero points."""
        code_bytes = -(-self.q.size * self.bits // 8)
        return code_bytes + 4 * self.scale.size + self.zero_point.size


def quantize_weight(w: np.ndarray, bits: int) -> QuantizedTensor:
    """Per-output-channel asymmetric round-to-nearest quantization of a weight tensor."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim < 2:
        raise QCoreError(f"a weight needs at least 2 dimensions, got shape {w.shape}")
    flat = w.reshape(w.shape[0], -1)
    scale, zero_point = choose_qparams(flat.min(axis=1), flat.max(axis=1), bits)
    cs = _channel_shape(w.ndim)
    q = quantize(w, scale.reshape(cs), zero_point.reshape(cs), bits)
    return QuantizedTensor(q, scale, zero_point, bits)
