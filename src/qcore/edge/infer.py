"""Inference of a :class:`QuantizedModel` in NumPy, matching the cloud simulation.

The arithmetic mirrors ``qcore.cloud`` step by step in float32: weights are the
dequantized codes ``(q - zp) * scale``; each layer input is fake-quantized exactly as
torch does it (``rint(x / scale) + zp``, clipped, ``(q - zp) * scale``); convolutions are
bias-free, stride 1, 'same' zero padding; eval-mode BatchNorm; ReLU; residual shortcuts;
global average pooling; the linear head. Only the summation order inside convolutions
and means differs from torch, so outputs agree to float32 rounding except where a value
lands within rounding error of an activation quantization boundary (rare "ties").

Internally activations are kept channels-last, ``(n, t, c)``, so a convolution is one
im2col copy and a single matrix product per kernel; the three kernels of an inception
module (39/19/9, same input) share one im2col of the largest kernel when their input
quantization parameters are equal. Everything returned uses the torch layout
``(n, c, t)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qcore.core.qmodel import ActParams, BatchNorm, QuantizedModel
from qcore.core.types import validate_xy
from qcore.errors import QCoreError

# Windows per internal pass are chosen so the largest im2col buffer stays near this size:
# cache-resident passes beat one big pass (measured ~1.5-2x on 2 cores at 32 filters).
_IM2COL_TARGET_BYTES = 8 << 20

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
    """

    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    norm_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    features: np.ndarray | None = None
    logits: np.ndarray | None = None


def fake_quant_act(x: np.ndarray, act: ActParams) -> np.ndarray:
    """Per-tensor quantize-dequantize of float32 ``x`` (new array, same shape).

    Same float32 operations, in the same order, as the cloud's ``fake_quant_ste`` forward
    value, so identical inputs give bit-identical outputs.
    """
    scale, zero_point, bits = act
    s, z = np.float32(scale), np.float32(zero_point)
    q = np.divide(x, s, dtype=np.float32)
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


def _weight_matrix(w: np.ndarray) -> np.ndarray:
    """Float32 weight as the right operand of a product with im2col rows.

    Conv ``(c_out, c_in, k)`` -> ``(k*c_in, c_out)`` (tap-major rows); head
    ``(n_classes, features)`` -> ``(features, n_classes)``.
    """
    if w.ndim == 3:
        return np.ascontiguousarray(w.transpose(2, 1, 0).reshape(-1, w.shape[0]))
    return np.ascontiguousarray(w.T)


def eval_norm(bn: BatchNorm, x: np.ndarray) -> np.ndarray:
    """Eval-mode BatchNorm of channels-last ``x`` ``(..., C)`` as a new float32 array."""
    alpha, beta = bn.affine()
    y = x * alpha
    y += beta
    return y


class _Runner:
    """One forward pass over a channels-last batch; holds no state beyond the pass."""

    def __init__(
        self,
        qm: QuantizedModel,
        mats: dict[str, np.ndarray],
        norm: NormFn,
        trace: Trace | None,
    ) -> None:
        self.qm, self.mats, self.norm, self.trace = qm, mats, norm, trace
        self.features: np.ndarray | None = None  # pooled features of the last run

    def convs(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        """Outputs ``(n, t, c_out)`` of the convolutions ``names`` that all read ``x``."""
        n, t, _ = x.shape
        groups: dict[ActParams | None, list[str]] = {}
        for name in names:
            groups.setdefault(self.qm.layers[name].act, []).append(name)
        outs: dict[str, np.ndarray] = {}
        for act, group in groups.items():
            xq = x if act is None else fake_quant_act(x, act)
            k_max = max(self.qm.layers[name].kernel_size for name in group)
            cols = _im2col(xq, k_max)
            c = x.shape[2]
            for name in group:
                k = self.qm.layers[name].kernel_size
                lo = (k_max - k) // 2 * c
                outs[name] = (cols[:, lo : lo + k * c] @ self.mats[name]).reshape(n, t, -1)
                if self.trace is not None:
                    self.trace.inputs[name] = xq
        return [outs[name] for name in names]

    def bn(self, name: str, x: np.ndarray) -> np.ndarray:
        if self.trace is not None:
            self.trace.norm_inputs[name] = x
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
            branches += self.convs([f"{p}.pool_conv"], _maxpool3(x))
            cat = np.concatenate(branches, axis=2)
            if self.trace is not None:
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
                    if self.trace is not None:
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
        if self.trace is not None:
            self.trace.inputs["head"] = fq
            self.trace.outputs["head"] = logits
            self.trace.features = features
            self.trace.logits = logits
        return logits


def _check_input(qm: QuantizedModel, X: np.ndarray) -> np.ndarray:
    """Validated float32 ``(n, c, t)`` input, transposed to channels-last ``(n, t, c)``."""
    validate_xy(X, what="edge input")
    if X.shape[1] != qm.n_channels:
        raise QCoreError(f"edge input has {X.shape[1]} channels, the model expects {qm.n_channels}")
    return np.ascontiguousarray(np.asarray(X, dtype=np.float32).transpose(0, 2, 1))


def auto_chunk_size(qm: QuantizedModel, n_timepoints: int) -> int:
    """Windows per pass that keep the largest im2col buffer near 8 MiB (at least 1)."""
    widest = max(
        layer.kernel_size * int(layer.weight.shape[1])
        for layer in qm.layers.values()
        if len(layer.weight.shape) == 3
    )
    return max(1, _IM2COL_TARGET_BYTES // (4 * widest * n_timepoints))


def _prepare(qm: QuantizedModel) -> dict[str, np.ndarray]:
    """Dequantize every weight once per call into its matrix form (float32)."""
    return {name: _weight_matrix(layer.float_weight()) for name, layer in qm.layers.items()}


def _to_torch_layout(trace: Trace) -> Trace:
    """Channels-last ``(n, t, c)`` trace arrays -> ``(n, c, t)`` views (2-D ones unchanged)."""

    def swap(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: (v.transpose(0, 2, 1) if v.ndim == 3 else v) for k, v in d.items()}

    return Trace(
        swap(trace.inputs),
        swap(trace.outputs),
        swap(trace.norm_inputs),
        trace.features,
        trace.logits,
    )


def _merge(traces: list[Trace]) -> Trace:
    if len(traces) == 1:
        return traces[0]

    def cat(key: str) -> dict[str, np.ndarray]:
        first = getattr(traces[0], key)
        return {k: np.concatenate([getattr(t, key)[k] for t in traces]) for k in first}

    return Trace(
        cat("inputs"),
        cat("outputs"),
        cat("norm_inputs"),
        np.concatenate([t.features for t in traces]),
        np.concatenate([t.logits for t in traces]),
    )


@overload
def forward(
    qm: QuantizedModel, X: np.ndarray, record: Literal[False] = ..., *, chunk_size: int | None = ...
) -> np.ndarray: ...


@overload
def forward(
    qm: QuantizedModel, X: np.ndarray, record: Literal[True], *, chunk_size: int | None = ...
) -> Trace: ...


def forward(
    qm: QuantizedModel,
    X: np.ndarray,
    record: bool = False,
    *,
    chunk_size: int | None = None,
) -> np.ndarray | Trace:
    """Logits float32 ``(n, n_classes)`` of windows ``X`` float32 ``(n, n_channels, t)``.

    With ``record=True`` returns a :class:`Trace` instead (its ``logits`` are the same
    array). ``X`` is processed ``chunk_size`` windows at a time (default: as many as keep
    the largest im2col buffer near 8 MiB); results agree across chunk sizes up to float32
    summation order.
    """
    logits, features, traces = _passes(qm, X, record, chunk_size)
    if not record:
        return np.concatenate(logits) if len(logits) > 1 else logits[0]
    return _to_torch_layout(_merge(traces))


def forward_features(
    qm: QuantizedModel, X: np.ndarray, *, chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Logits float32 ``(n, n_classes)`` and pooled features float32 ``(n, 4 * filters)``
    (before the head's input quantization) of windows ``X``, from one forward pass."""
    logits, features, _ = _passes(qm, X, False, chunk_size)
    return np.concatenate(logits), np.concatenate(features)


def _passes(
    qm: QuantizedModel, X: np.ndarray, record: bool, chunk_size: int | None
) -> tuple[list[np.ndarray], list[np.ndarray], list[Trace]]:
    """Per chunk of windows: logits, pooled features and (when ``record``) the trace."""
    x = _check_input(qm, X)
    if chunk_size is None:
        chunk_size = auto_chunk_size(qm, x.shape[1])
    if chunk_size < 1:
        raise QCoreError(f"chunk_size must be >= 1, got {chunk_size}")
    mats = _prepare(qm)
    folded = {name: bn.affine() for name, bn in qm.norms.items()}

    def norm(name: str, v: np.ndarray) -> np.ndarray:
        alpha, beta = folded[name]
        y = v * alpha
        y += beta
        return y

    logits, features, traces = [], [], []
    for start in range(0, x.shape[0], chunk_size):
        trace = Trace() if record else None
        runner = _Runner(qm, mats, norm, trace)
        logits.append(runner.run(x[start : start + chunk_size]))
        assert runner.features is not None  # set by every run
        features.append(runner.features)
        if trace is not None:
            traces.append(trace)
    return logits, features, traces


def predict(qm: QuantizedModel, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted labels int64 ``(n,)``: argmax of the logits.

    ``batch_size`` windows are run per :func:`forward` call (which may split them further).
    """
    if batch_size < 1:
        raise QCoreError(f"batch_size must be >= 1, got {batch_size}")
    validate_xy(X, what="edge input")
    labels = [
        np.argmax(forward(qm, X[i : i + batch_size]), axis=1)
        for i in range(0, X.shape[0], batch_size)
    ]
    return np.concatenate(labels).astype(np.int64)


def bn_reestimate(qm: QuantizedModel, X: np.ndarray) -> QuantizedModel:
    """A copy of ``qm`` whose BatchNorm statistics are the batch statistics of ``X``.

    A back-prop-free baseline (no weight changes): each BatchNorm's running mean and
    biased variance become the per-channel mean and variance over ``(n, t)`` of its input,
    computed in forward order, so a later BatchNorm sees the earlier ones already
    re-normalised. Statistics are accumulated in float64 and stored as float32. ``X`` is
    processed in one pass (memory grows with ``len(X)``; calibration batches are small).
    """
    x = _check_input(qm, X)
    new = qm.copy()
    mats = _prepare(new)

    def norm(name: str, v: np.ndarray) -> np.ndarray:
        flat = v.reshape(-1, v.shape[-1])
        mean = flat.mean(axis=0, dtype=np.float64)
        var = flat.var(axis=0, dtype=np.float64)
        bn = new.norms[name]
        bn.running_mean = mean.astype(np.float32)
        bn.running_var = var.astype(np.float32)
        return eval_norm(bn, v)

    _Runner(new, mats, norm, None).run(x)
    return new
