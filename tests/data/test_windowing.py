"""Windowing: counts, contents, layout and the constant-label mask."""

import numpy as np
import pytest

from qcore.data.windowing import sliding_windows, window_labels, window_starts
from qcore.errors import QCoreError


def test_counts_and_remainder_dropped():
    assert window_starts(10, 4, 2).tolist() == [0, 2, 4, 6]
    assert window_starts(3, 4, 2).size == 0
    assert window_starts(1000, 500, 500).tolist() == [0, 500]


def test_windows_are_channel_major_copies():
    T, C = 11, 3
    signal = np.arange(T * C, dtype=np.float64).reshape(T, C)
    w = sliding_windows(signal, 4, 3)
    assert w.shape == (3, C, 4)
    assert w.dtype == signal.dtype
    for i, start in enumerate((0, 3, 6)):
        np.testing.assert_array_equal(w[i], signal[start : start + 4].T)
    w[0, 0, 0] = -1.0
    assert signal[0, 0] == 0.0  # a copy, never a view of the input


def test_short_signal_gives_no_windows():
    assert sliding_windows(np.zeros((5, 2)), 8, 4).shape == (0, 2, 8)


def test_window_labels_constant_mask():
    labels = np.array([1, 1, 1, 1, 2, 2, 2, 2, 2])
    first, constant = window_labels(labels, 4, 2)
    assert first.tolist() == [1, 1, 2]
    assert constant.tolist() == [True, False, True]


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 3, 4))])
def test_rank_errors(bad):
    with pytest.raises(QCoreError, match="rank"):
        sliding_windows(bad, 2, 1)


def test_bad_length_step():
    with pytest.raises(QCoreError, match="length and step"):
        sliding_windows(np.zeros((5, 2)), 0, 1)
    with pytest.raises(QCoreError, match="rank"):
        window_labels(np.zeros((3, 3)), 2, 1)
