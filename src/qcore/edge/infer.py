"""Inference of a :class:`QuantizedModel` in NumPy, matching the cloud simulation: the
entry points (:func:`forward`, :func:`forward_features`, :func:`forward_reduced`,
:func:`predict`) and BatchNorm re-estimation (:func:`bn_reestimate`).

Each validates its input ``(n, c, t)``, runs it a chunk of windows at a time through a
:class:`qcore.edge.runner.Runner` (the layer arithmetic, channels-last), and returns
results in the torch layout ``(n, c, t)``. Outputs agree with torch to float32 rounding
(see :mod:`qcore.edge.runner`).
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np

from qcore.core.qmodel import QuantizedModel
from qcore.core.types import validate_xy
from qcore.edge import runner as _runner
from qcore.edge.runner import Reduce, Runner, Trace, affine_, weight_matrix
from qcore.errors import QCoreError

_MOMENT_BLOCK_BYTES = 1 << 20  # float64 rows per block of channel_moments


def _check_input(qm: QuantizedModel, X: np.ndarray) -> np.ndarray:
    """Validated float32 ``(n, c, t)`` input, transposed to channels-last ``(n, t, c)``: a
    new array (a pass may normalise what it holds in place, never the caller's ``X``)."""
    validate_xy(X, what="edge input")
    if X.shape[1] != qm.n_channels:
        raise QCoreError(f"edge input has {X.shape[1]} channels, the model expects {qm.n_channels}")
    return np.asarray(X, dtype=np.float32).transpose(0, 2, 1).copy()


def auto_chunk_size(qm: QuantizedModel, n_timepoints: int) -> int:
    """Windows per pass that keep the largest im2col buffer near 8 MiB (at least 1)."""
    widest = max(
        layer.kernel_size * int(layer.weight.shape[1])
        for layer in qm.layers.values()
        if len(layer.weight.shape) == 3
    )
    return max(1, _runner.IM2COL_TARGET_BYTES // (4 * widest * n_timepoints))


def _prepare(qm: QuantizedModel) -> dict[str, np.ndarray]:
    """Dequantize every weight once per call into its matrix form (float32)."""
    return {name: weight_matrix(layer.float_weight()) for name, layer in qm.layers.items()}


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
        trace.reduced,
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
        cat("reduced"),
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


def forward_reduced(
    qm: QuantizedModel, X: np.ndarray, reduce: Reduce, *, chunk_size: int | None = None
) -> Trace:
    """A :class:`Trace` holding only the logits, the pooled features and, per layer,
    ``reduce(name, input)`` computed chunk by chunk: memory grows with what ``reduce``
    keeps per window (e.g. the flip features' window sums), not with the activations."""
    _, _, traces = _passes(qm, X, True, chunk_size, reduce)
    return _merge(traces)


def forward_features(
    qm: QuantizedModel, X: np.ndarray, *, chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Logits float32 ``(n, n_classes)`` and pooled features float32 ``(n, 4 * filters)``
    (before the head's input quantization) of windows ``X``, from one forward pass."""
    logits, features, _ = _passes(qm, X, False, chunk_size)
    return np.concatenate(logits), np.concatenate(features)


def _passes(
    qm: QuantizedModel,
    X: np.ndarray,
    record: bool,
    chunk_size: int | None,
    reduce: Reduce | None = None,
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
        return affine_(v, *folded[name])

    logits, features, traces = [], [], []
    for start in range(0, x.shape[0], chunk_size):
        trace = Trace() if record else None
        runner = Runner(qm, mats, norm, trace, reduce)
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


def channel_moments(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and biased variance (float64) of float32 ``flat`` ``(rows, C)``,
    bit-identical to ``flat.mean(axis=0, dtype=np.float64)`` and ``flat.var(...)``.

    NumPy reduces over axis 0 by adding the rows in order into one accumulator; this does
    the same a block of rows at a time, so the float64 temporaries are a block's, not the
    whole array's (the largest allocation of a re-estimation on long windows).
    """
    rows = max(1, _MOMENT_BLOCK_BYTES // (8 * flat.shape[1]))

    def column_sums(blocks) -> np.ndarray:
        acc = np.zeros(flat.shape[1])
        for block in blocks:
            acc = np.add.reduce(np.concatenate([acc[None], block]), axis=0)
        return acc

    starts = range(0, len(flat), rows)
    mean = column_sums(flat[a : a + rows].astype(np.float64) for a in starts) / len(flat)

    def squares(a: int) -> np.ndarray:
        d = flat[a : a + rows] - mean
        d *= d
        return d

    return mean, column_sums(squares(a) for a in starts) / len(flat)


def bn_reestimate(qm: QuantizedModel, X: np.ndarray) -> QuantizedModel:
    """A copy of ``qm`` whose BatchNorm statistics are the batch statistics of ``X``.

    A back-prop-free baseline (no weight changes): each BatchNorm's running mean and
    biased variance become the per-channel mean and variance over ``(n, t)`` of its input,
    computed in forward order, so a later BatchNorm sees the earlier ones already
    re-normalised. Statistics are accumulated in float64 (:func:`channel_moments`) and
    stored as float32. ``X`` goes through in one pass, so memory grows with its
    activations ``len(X) x t x channels``; im2col buffers and float64 temporaries are
    bounded by blocks.
    """
    x = _check_input(qm, X)
    new = qm.copy()
    mats = _prepare(new)

    def norm(name: str, v: np.ndarray) -> np.ndarray:
        mean, var = channel_moments(v.reshape(-1, v.shape[-1]))
        bn = new.norms[name]
        bn.running_mean = mean.astype(np.float32)
        bn.running_var = var.astype(np.float32)
        return affine_(v, *bn.affine())

    Runner(new, mats, norm, None).run(x)
    return new
