"""One forward pass of a :class:`QuantizedModel` over a channels-last batch, in NumPy.

The arithmetic mirrors ``qcore.cloud`` step by step in float32: weights are the
dequantized codes ``(q - zp) * scale``; each layer input is fake-quantized exactly as
torch does it (``rint(x / scale) + zp``, clipped, ``(q - zp) * scale``); convolutions are
bias-free, stride 1, 'same' zero padding; BatchNorm is whatever ``norm`` the pass is
given (eval-mode affine, or re-estimation); ReLU; residual shortcuts; global average
pooling; the linear head. Only the summation order inside convolutions and means differs
from torch, so outputs agree to float32 rounding except where a value lands within
rounding error of an activation quantization boundary (rare "ties").

Activations are kept channels-last, ``(n, t, c)``, so a convolution is one im2col copy
and a single matrix product per kernel; the three kernels of an inception module
(39/19/9, same input) share one im2col of the largest kernel when their input
quantization parameters are equal. The entry points (chunking, torch layout, BatchNorm
re-estimation) are in :mod:`qcore.edge.infer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qcore.core.qmodel import ActParams, QuantizedModel

# Windows per internal pass are chosen so the largest im2col buffer stays near this size:
# cache-resident passes beat one big pass (measured ~1.5-2x on 2 cores at 32 filters).
IM2COL_TARGET_BYTES = 8 << 20

# norm(BatchNorm name, channels-last input): the normalised input, computed in place
NormFn = Callable[[str, np.ndarray], np.ndarray]


@dataclass
class Trace:
    """What a forward pass saw, for flip features and diagnostics (torch layout).

    ``inputs[name]``: the input a layer really consumes (after its activation
    quantization), float32 ``(n, c_in, t)`` for a convolution, ``(n, 4f)`` for the head.
    ``outputs[name]``: the layer's raw output before any BatchNorm, ``(n, c_out, t)``, or
    the logits ``(n, n_classes)`` for the head. ``norm_inputs[name]``: each BatchNorm's
    input ``(n, C, t)``. ``features``: pooled features ``(n, 4f)`` before the head's input
    quantization; ``logits``: ``(n, n_classes)``. Arrays may be non-contiguous views.
    ``reduced[name]``: only from :func:`qcore.edge.infer.forward_reduced`, which records
    nothing else but the logits: ``reduce(name, input)`` of each layer's input, per chunk
    of windows.
    """

    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    norm_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    features: np.ndarray | None = None
    logits: np.ndarray | None = None
    reduced: dict[str, np.ndarray] = field(default_factory=dict)


# reduce(layer name, the layer's input in torch layout (n, c, t) or (n, f)) -> per window
Reduce = Callable[[str, np.ndarray], np.ndarray]


def fake_quant_act(x: np.ndarray, act: ActParams, *, inplace: bool = False) -> np.ndarray:
    """Per-tensor quantize-dequantize of float32 ``x`` (a new array, or ``x`` itself
    with ``inplace``).

    Same float32 operations, in the same order, as the cloud's ``fake_quant_ste`` forward
    value, so identical inputs give bit-identical outputs.
    """
    scale, zero_point, bits = act
    s, z = np.float32(scale), np.float32(zero_point)
    q = np.divide(x, s, dtype=np.float32, out=x if inplace else None)
    np.rint(q, out=q)
    q += z
    np.clip(q, np.float32(0), np.float32((1 << bits) - 1), out=q)
    q -= z
    q *= s
    return q


def _im2col(x: np.ndarray, k: int) -> np.ndarray:
    """``(n, t, c)`` -> ``(n*t, k*c)`` rows of 'same'-padded windows, tap-major columns.

    Column ``j*c + i`` holds channel ``i`` at time offset ``j - k//2``; tap-major order
    makes the centred window of any smaller odd kernel a contiguous column range.
    """
    n, t, c = x.shape
    if k == 1:
        return x.reshape(n * t, c)
    p = k // 2
    padded = np.zeros((n, t + 2 * p, c), dtype=np.float32)
    padded[:, p : p + t] = x
    windows = sliding_window_view(padded, k, axis=1)  # (n, t, c, k) view, no copy
    return np.ascontiguousarray(windows.transpose(0, 1, 3, 2)).reshape(n * t, k * c)


def _maxpool3(x: np.ndarray) -> np.ndarray:
    """Max-pool over time, kernel 3, stride 1, padding 1 (padding acts as -inf)."""
    out = x.copy()
    np.maximum(out[:, 1:], x[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], x[:, 1:], out=out[:, :-1])
    return out


def weight_matrix(w: np.ndarray) -> np.ndarray:
    """Float32 weight as the right operand of a product with im2col rows.

    Conv ``(c_out, c_in, k)`` -> ``(k*c_in, c_out)`` (tap-major rows); head
    ``(n_classes, features)`` -> ``(features, n_classes)``.
    """
    if w.ndim == 3:
        return np.ascontiguousarray(w.transpose(2, 1, 0).reshape(-1, w.shape[0]))
    return np.ascontiguousarray(w.T)


def affine_(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``x * alpha + beta`` over channels-last ``x``, in place (returns ``x``)."""
    x *= alpha
    x += beta
    return x


class Runner:
    """One forward pass over a channels-last batch; holds no state beyond the pass.

    With a ``trace`` it records what :class:`Trace` describes; with ``reduce`` too, only
    the reduced layer inputs, the features and the logits."""

    def __init__(
        self,
        qm: QuantizedModel,
        mats: dict[str, np.ndarray],
        norm: NormFn,
        trace: Trace | None,
        reduce: Reduce | None = None,
    ) -> None:
        self.qm, self.mats, self.norm, self.trace = qm, mats, norm, trace
        self.reduce = reduce
        self.full = trace is not None and reduce is None  # record every array
        self.features: np.ndarray | None = None  # pooled features of the last run

    def _record_input(self, name: str, x: np.ndarray) -> None:
        """Layer ``name``'s input ``x`` (channels-last, or 2-D for the head)."""
        if self.trace is None:
            return
        if self.reduce is None:
            self.trace.inputs[name] = x
        else:
            self.trace.reduced[name] = self.reduce(name, x.transpose(0, 2, 1) if x.ndim == 3 else x)

    def convs(self, names: list[str], x: np.ndarray, owned: bool = False) -> list[np.ndarray]:
        """Outputs ``(n, t, c_out)`` of the convolutions ``names`` that all read ``x``
        (``owned``: a temporary of the pass, which a single convolution without a full
        trace may quantize in place).

        The im2col buffer is built for at most as many windows as keep it near
        ``IM2COL_TARGET_BYTES`` at a time, so a long batch (BatchNorm re-estimation on
        core plus batch) costs its activations, not its im2col. A window's output does
        not depend on the others, but the BLAS may round its product differently for
        another block size (last float32 bit; none seen at the default model's sizes)."""
        n, t, c = x.shape
        groups: dict[ActParams | None, list[str]] = {}
        for name in names:
            groups.setdefault(self.qm.layers[name].act, []).append(name)
        outs: dict[str, np.ndarray] = {}
        for act, group in groups.items():
            inplace = owned and len(groups) == 1 and not self.full
            xq = x if act is None else fake_quant_act(x, act, inplace=inplace)
            k_max = max(self.qm.layers[name].kernel_size for name in group)
            step = max(1, IM2COL_TARGET_BYTES // (4 * t * k_max * c))
            for name in group:
                outs[name] = np.empty((n, t, self.mats[name].shape[1]), dtype=np.float32)
            for start in range(0, n, step):
                cols = _im2col(xq[start : start + step], k_max)
                m = min(step, n - start)
                for name in group:
                    k = self.qm.layers[name].kernel_size
                    lo = (k_max - k) // 2 * c
                    product = cols[:, lo : lo + k * c] @ self.mats[name]
                    outs[name][start : start + m] = product.reshape(m, t, -1)
                del cols
            for name in group:
                self._record_input(name, xq)
        return [outs[name] for name in names]

    def bn(self, name: str, x: np.ndarray) -> np.ndarray:
        """BatchNorm ``name`` of ``x``: in place, unless the trace keeps ``x``."""
        if self.full:
            assert self.trace is not None
            self.trace.norm_inputs[name] = x
            x = x.copy()
        return self.norm(name, x)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(n, n_classes)`` of channels-last input ``x`` ``(n, t, n_channels)``."""
        layers, norms, f = self.qm.layers, self.qm.norms, self.qm.filters
        res = x
        for d in range(self.qm.depth):
            p = f"blocks.{d}"
            if f"{p}.bottleneck" in layers:
                (b,) = self.convs([f"{p}.bottleneck"], x)
            else:
                b = x
            conv_names = sorted(
                (name for name in layers if name.startswith(f"{p}.convs.")),
                key=lambda name: int(name.rsplit(".", 1)[1]),
            )
            branches = self.convs(conv_names, b)
            branches += self.convs([f"{p}.pool_conv"], _maxpool3(x), owned=True)
            cat = np.concatenate(branches, axis=2)
            del branches  # (views of cat are what a trace keeps)
            if self.full:
                assert self.trace is not None
                names = [*conv_names, f"{p}.pool_conv"]
                if f"{p}.bottleneck" in layers:
                    self.trace.outputs[f"{p}.bottleneck"] = b
                for i, name in enumerate(names):
                    self.trace.outputs[name] = cat[:, :, i * f : (i + 1) * f]
            y = self.bn(f"{p}.bn", cat)
            np.maximum(y, 0, out=y)
            s = f"shortcuts.{d}"
            if f"{s}.bn" in norms:
                if f"{s}.conv" in layers:
                    (r,) = self.convs([f"{s}.conv"], res)
                    if self.full:
                        assert self.trace is not None
                        self.trace.outputs[f"{s}.conv"] = r
                else:
                    r = res
                y += self.bn(f"{s}.bn", r)
                np.maximum(y, 0, out=y)
                res = y
            x = y
        features = x.mean(axis=1, dtype=np.float32)
        self.features = features
        head = layers["head"]
        fq = features if head.act is None else fake_quant_act(features, head.act)
        logits = fq @ self.mats["head"]
        if head.bias is not None:
            logits += head.bias
        self._record_input("head", fq)
        if self.trace is not None:
            if self.full:
                self.trace.outputs["head"] = logits
            self.trace.features = features
            self.trace.logits = logits
        return logits
