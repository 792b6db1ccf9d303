"""One switch for a process's compute threads: PyTorch's and NumPy's BLAS together.

Setting only ``torch.set_num_threads`` leaves NumPy's OpenBLAS at one thread per core, so
two single-threaded bench workers on 2 cores run four BLAS threads in the NumPy (edge)
methods. Measured on this machine kind with both cores busy: one edge forward pass of
the default model on 44 HAPT windows took 0.33 s with 2 BLAS threads and 0.067 s with 1,
bit-identical outputs (``OpenBLAS`` splits a product by output blocks, not by the summed
dimension). Only entry points (the CLI, bench workers, benchmark scripts) call this.
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
