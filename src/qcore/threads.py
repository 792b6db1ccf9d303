"""One switch for a process's compute threads: PyTorch's and NumPy's BLAS together.

Setting only ``torch.set_num_threads`` leaves NumPy's OpenBLAS at one thread per core, so
two single-threaded bench workers on 2 cores ran four BLAS threads in the NumPy (edge)
methods. Beside one busy process, an edge forward pass of the default model took 1.9x
(HAPT-sized batch) and 3.3x (USC-HAD-sized) longer at 2 BLAS threads than at 1
(``benchmarks/blas_threads.py``; outputs bit-identical on its shapes). Not bit-identical
everywhere: recomputing the 15 HAPT grid cells at 1 BLAS thread changed 2 of their 195
method results (both at 8 bits, one guard decision tipped by float rounding).
Only entry points (the CLI, bench workers) call this.
"""

from __future__ import annotations


def limit_threads(n: int) -> None:
    """Use ``n`` threads for PyTorch's intra-op work and for NumPy's BLAS in this process."""
    import torch
    from threadpoolctl import threadpool_limits

    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")  # stays in force: no context manager
