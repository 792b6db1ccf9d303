"""Why bench workers limit NumPy's BLAS threads: edge forward time at 1 and 2 BLAS threads.

The situation of a bench worker on a 2-core machine: ``--busy`` sibling processes keep the
other cores occupied (each spins on single-threaded float32 products, as the other worker
would), and this process times the edge ``forward`` of a quantized default-size
InceptionTime (16 filters, depth 3, 4 bits, seeded random weights) on HAPT-shaped
(44 x 6 x 128) and USC-HAD-shaped (61 x 6 x 500) batches (core of 20 + one stream batch)
with OpenBLAS limited to 1 and to 2 threads, and checks the outputs are bit-identical.

    .venv/bin/python benchmarks/blas_threads.py [--busy 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import numpy as np


def _spin(stop) -> None:
    a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    while not stop.is_set():
        a @ a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", type=int, default=max(os.cpu_count() - 1, 0))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from qcore.cloud.export import to_qmodel
    from qcore.cloud.model import InceptionTime
    from qcore.cloud.quantize import quantize_model
    from qcore.edge.infer import forward

    torch.set_num_threads(1)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    busy = [ctx.Process(target=_spin, args=(stop,)) for _ in range(args.busy)]
    for p in busy:
        p.start()
    time.sleep(1.0)
    print(f"{os.cpu_count()} CPUs, {args.busy} busy sibling process(es)\n")
    print("| batch | 1 BLAS thread (s) | 2 BLAS threads (s) | ratio | bit-identical |")
    print("|---|---|---|---|---|")
    try:
        for n, t in ((44, 128), (61, 500)):
            torch.manual_seed(0)
            X = np.random.default_rng(0).standard_normal((n, 6, t)).astype(np.float32)
            qm = to_qmodel(quantize_model(InceptionTime(6, 6, 16, 3), 4, X, seed=0))
            secs, outs = {}, {}
            for lim in (1, 2):
                with threadpool_limits(lim, user_api="blas"):
                    outs[lim] = forward(qm, X)
                    runs = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        forward(qm, X)
                        runs.append(time.perf_counter() - t0)
                    secs[lim] = statistics.median(runs)
            same = np.array_equal(outs[1], outs[2])
            print(
                f"| {n} x 6 x {t} | {secs[1]:.3f} | {secs[2]:.3f} | "
                f"{secs[2] / secs[1]:.1f}x | {same} |"
            )
    finally:
        stop.set()
        for p in busy:
            p.join()


if __name__ == "__main__":
    main()
