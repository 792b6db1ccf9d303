"""On-device flip calibration: the bit-flipping network replaces back-propagation.

NumPy only. For every quantized layer the device computes, from forward passes on
labelled calibration samples (core plus batch), one small feature vector per integer
weight; the flip network maps it to a move of -1, 0 or +1 on the integer code, and
``q <- clip(q + flip, qmin, qmax)``; scales and zero points never change
(docs/method.md).

Features of weight ``(o, i, j)`` of a layer with input ``x`` (n, i, T):

* an error-driven correlation ``G[o,i,j] = mean_n delta[n,o] * S[n,i,j]``, where
  ``e = softmax(logits) - onehot(y)`` is the output error (no backward pass needed),
  ``delta = e @ B`` projects it onto the layer's output channels through a feedback
  matrix ``B`` *learned in the cloud* (identity-initialised for the head, where ``G``
  is then the exact gradient), and ``S[n,i,j] = sum_t x_pad[n,i,t+j]`` are window sums
  of the layer input at tap ``j``; normalised by its RMS over the layer;
* the code's position in its range, whether it sits at either end, the signed
  dequantized weight relative to the range, the bit-width, and the channel's scale
  (how far one integer step is, relative to the step a gradient method would take).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcore.core.qmodel import QuantizedModel
from qcore.core.quant import QuantizedTensor, qrange
from qcore.errors import QCoreError

N_STATIC = 7  # position, at-min, at-max, signed value, bits/8, is-head, log10 scale
N_FEATURES = 2 + N_STATIC
FLIP_VALUES = np.array([-1, 0, 1], dtype=np.int16)


@dataclass(frozen=True)
class FlipNet:
    """Learned feedback matrices ``(n_classes, n_out)`` per layer and a tiny MLP."""

    feedback: dict[str, np.ndarray]
    w1: np.ndarray  # (N_FEATURES, hidden)
    b1: np.ndarray  # (hidden,)
    w2: np.ndarray  # (hidden, 3)
    b2: np.ndarray  # (3,)
    threshold: float  # a flip is applied when its class probability exceeds this

    def nbytes(self) -> int:
        arrays = [*self.feedback.values(), self.w1, self.b1, self.w2, self.b2]
        return int(sum(a.size * 4 for a in arrays)) + 4

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(n_weights, N_FEATURES)`` -> class probabilities ``(n_weights, 3)``."""
        h = np.maximum(features @ self.w1 + self.b1, 0.0)
        z = h @ self.w2 + self.b2
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict_flips(self, features: np.ndarray) -> np.ndarray:
        """int16 flips in {-1, 0, +1}, one per feature row."""
        return self.flips_and_confidence(features)[0]

    def flips_and_confidence(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_flips` and each row's confidence ``max(p(-1), p(+1))`` (float32)."""
        p = self.probabilities(features)
        move = np.where(p[:, 2] >= p[:, 0], 1, -1).astype(np.int16)
        conf = np.maximum(p[:, 0], p[:, 2]).astype(np.float32)
        return np.where(conf > self.threshold, move, 0).astype(np.int16), conf


def error_signal(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``softmax(logits) - onehot(y)``: float32 ``(n, n_classes)``, forward pass only."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.astype(np.float32)


def window_sums(x: np.ndarray, kernel_size: int) -> np.ndarray:
    """``S[n,i,j] = sum_t x_pad[n,i,t+j]`` for a 'same'-padded conv input ``(n, i, T)``.

    A 2-D input ``(n, i)`` (the head) is treated as ``T = 1``, ``kernel_size = 1``.
    """
    if x.ndim == 2:
        return x[:, :, None].astype(np.float32)
    n, c, t = x.shape
    pad = kernel_size // 2
    csum = np.zeros((n, c, t + 2 * pad + 1), dtype=np.float64)
    csum[:, :, pad + 1 : pad + 1 + t] = x
    csum = np.cumsum(csum, axis=2)
    j = np.arange(kernel_size)
    return (csum[:, :, j + t] - csum[:, :, j]).astype(np.float32)


def static_features(qt: QuantizedTensor, is_head: bool) -> np.ndarray:
    """Features of each code that depend on the code alone: ``(n_weights, N_STATIC)``."""
    qmin, qmax = qrange(qt.bits)
    q = qt.q.reshape(qt.q.shape[0], -1).astype(np.float32)
    zp = qt.zero_point.reshape(-1, 1).astype(np.float32)
    span = float(qmax - qmin)
    cols = [
        q / span - 0.5,
        (q == qmin).astype(np.float32),
        (q == qmax).astype(np.float32),
        (q - zp) / span,
        np.full_like(q, qt.bits / 8.0),
        np.full_like(q, float(is_head)),
        np.broadcast_to(np.log10(qt.scale.reshape(-1, 1) + 1e-12), q.shape),
    ]
    return np.stack([c.reshape(-1) for c in cols], axis=1)


def gradient_proxy(S: np.ndarray, e: np.ndarray, feedback: np.ndarray) -> np.ndarray:
    """``G[o,i,j] = mean_n (e @ B)[n,o] * S[n,i,j]`` as ``(n_out, n_in * k)`` float32."""
    delta = e @ feedback  # (n, o)
    G = np.einsum("no,nik->oik", delta, S, optimize=True) / len(e)
    return G.reshape(G.shape[0], -1).astype(np.float32)


def dynamic_features(G: np.ndarray) -> np.ndarray:
    """RMS-normalised proxy and its magnitude: ``(n_weights, 2)``."""
    g = G.reshape(-1) / (np.sqrt(np.mean(G * G)) + 1e-12)
    return np.stack([g, np.abs(g)], axis=1).astype(np.float32)


def quantized_weight(qm: QuantizedModel, name: str) -> QuantizedTensor:
    """Layer ``name``'s integer codes, or raise if the layer is float (nothing to flip)."""
    weight = qm.layers[name].weight
    if not isinstance(weight, QuantizedTensor):
        raise QCoreError(f"layer {name} is float: flips need a quantized model")
    return weight


def layer_features(
    qm: QuantizedModel, name: str, x_in: np.ndarray, e: np.ndarray, feedback: np.ndarray
) -> np.ndarray:
    """All features of layer ``name``'s weights: ``(n_weights, N_FEATURES)`` float32."""
    return sums_features(qm, name, window_sums(x_in, qm.layers[name].kernel_size), e, feedback)


def sums_features(
    qm: QuantizedModel, name: str, S: np.ndarray, e: np.ndarray, feedback: np.ndarray
) -> np.ndarray:
    """:func:`layer_features` from the layer input's window sums ``S`` ``(n, i, k)``."""
    weight = quantized_weight(qm, name)
    G = gradient_proxy(S, e, feedback)
    return np.concatenate([dynamic_features(G), static_features(weight, name == "head")], axis=1)


def sums_reducer(qm: QuantizedModel):
    """``reduce`` for :func:`qcore.edge.infer.forward_reduced`: each layer input's window
    sums, all the flip features need of it (``(n, i, k)`` instead of ``(n, i, T)``)."""

    def reduce(name: str, x: np.ndarray) -> np.ndarray:
        return window_sums(x, qm.layers[name].kernel_size)

    return reduce


def apply_flips(qt: QuantizedTensor, flips: np.ndarray) -> QuantizedTensor:
    """``clip(q + flip, qmin, qmax)``; scale and zero point unchanged."""
    qmin, qmax = qrange(qt.bits)
    if flips.size != qt.q.size:
        raise QCoreError(f"{flips.size} flips for a weight of {qt.q.size} codes")
    q = qt.q.astype(np.int16) + flips.reshape(qt.q.shape).astype(np.int16)
    return qt.with_codes(np.clip(q, qmin, qmax).astype(np.uint8))
