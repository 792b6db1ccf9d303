"""limit_threads sets PyTorch's and NumPy's BLAS thread counts together."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from qcore.threads import limit_threads


def _blas_threads() -> set[int]:
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def test_limit_threads_sets_torch_and_blas():
    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS is loaded
    before = torch.get_num_threads()
    with threadpool_limits():  # restores the BLAS pools on exit
        try:
            limit_threads(1)
            assert torch.get_num_threads() == 1
            assert _blas_threads() == {1}
        finally:
            torch.set_num_threads(before)


def test_limit_threads_rejects_zero():
    with pytest.raises(ValueError, match="thread count"):
        limit_threads(0)
