"""Cut long recordings into fixed-length windows (pure functions; results never alias input).

Signals are time-major ``(n_timepoints, n_channels)`` because that is how every raw
recording is stored on disk (one row per sample); windows come out channel-major
``(n_windows, n_channels, length)``, the layout of :class:`qcore.data.dataset.Dataset`.
"""

from __future__ import annotations

import numpy as np

from qcore.errors import QCoreError


def _check_length_step(length: int, step: int) -> None:
    if int(length) < 1 or int(step) < 1:
        raise QCoreError(f"window length and step must be >= 1, got length={length} step={step}")


def window_starts(n_timepoints: int, length: int, step: int) -> np.ndarray:
    """Start indices (int64) of every full window; a trailing partial window is dropped."""
    _check_length_step(length, step)
    if n_timepoints < length:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_timepoints - length + 1, step, dtype=np.int64)


def sliding_windows(signal: np.ndarray, length: int, step: int) -> np.ndarray:
    """Windows of a ``(T, C)`` signal as a new ``(n, C, length)`` array of the same dtype.

    ``n = (T - length) // step + 1`` (0 when ``T < length``): the remainder is dropped.
    """
    signal = np.asarray(signal)
    if signal.ndim != 2:
        raise QCoreError(
            f"signal must have shape (n_timepoints, n_channels), got rank {signal.ndim}"
        )
    starts = window_starts(signal.shape[0], length, step)
    if starts.size == 0:
        return np.zeros((0, signal.shape[1], length), dtype=signal.dtype)
    # view (T - length + 1, C, length); take every step-th start, then copy once.
    view = np.lib.stride_tricks.sliding_window_view(signal, length, axis=0)
    return np.ascontiguousarray(view[starts])


def window_labels(labels: np.ndarray, length: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-window label and whether it is constant, for a per-sample ``(T,)`` label array.

    Returns ``(label, constant)``: ``label`` int64 ``(n,)`` is the window's first sample label,
    ``constant`` bool ``(n,)`` is True where all ``length`` samples share it (the windows to
    keep when a window must show a single activity).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise QCoreError(f"labels must be 1-D (one per sample), got rank {labels.ndim}")
    starts = window_starts(labels.shape[0], length, step)
    if starts.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    view = np.lib.stride_tricks.sliding_window_view(labels, length)[starts]
    first = view[:, 0]
    constant = (view == first[:, None]).all(axis=1)
    return first.astype(np.int64), constant
