"""``qcore bench``: run the missing cells of a benchmark grid, then write its report.

The grid, its presets and its cells are in :mod:`qcore.eval.grid`. The float training is
deterministic, so it is repeated per bit-width rather than shared: a few minutes more per
grid, and cells small enough (tens of minutes on HAPT, longer on USC-HAD) that a grid of
many hours resumes across interrupted sessions. Cells run in parallel worker processes
(``spawn``: a script calling :func:`run_bench` needs the ``if __name__ == "__main__":``
guard; each worker runs one thread in torch and in NumPy's BLAS, see
:mod:`qcore.threads`), each writing ``results.json`` into its cell's folder
(:func:`qcore.eval.grid.cell_dir`). A cell whose results are complete and were made with
the same settings is never recomputed, so an interrupted grid resumes where it stopped.
From the finished cells :func:`run_bench` writes the tables of :mod:`qcore.eval.report`
and the plots of :mod:`qcore.eval.plots`.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcore.config import RunConfig
from qcore.errors import QCoreError
from qcore.eval.grid import Grid, cell_dir
from qcore.eval.plots import write_plots
from qcore.eval.report import collect, write_report


def _is_done(path: Path, cfg: RunConfig) -> bool:
    """Complete results (``scenario`` is written last) made with ``cfg``'s settings
    (:meth:`RunConfig.made_with`)."""
    if not path.is_file():
        return False
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    stored = res.get("config")
    return "scenario" in res and isinstance(stored, dict) and cfg.made_with(stored)


def _init_worker() -> None:
    """One thread per worker; Ctrl-C is the parent's to handle (it stops the grid, a
    cell's results are written atomically, so an interrupted cell is simply redone)."""
    from qcore.threads import limit_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads(1)


def _run_cell(cfg_dict: dict, out: str) -> float:
    """Worker entry point: run one cell, return its wall time in seconds. The grid's cells
    share one training cache (``DIR/.cache``): the cells of one pair and seed differ only
    in bit-width, so their float model is trained once."""
    from qcore.eval.runner import run
    from qcore.threads import limit_threads

    limit_threads(1)  # also on cluster workers, which run no initializer of ours
    t0 = time.perf_counter()
    run(RunConfig.from_dict(cfg_dict), out, cache=Path(out).parents[1] / ".cache")
    return time.perf_counter() - t0


@dataclass(frozen=True)
class BenchResult:
    """Cells in the grid, cells computed by this call, wall seconds, the report's tidy
    rows and one line per failed cell."""

    n_cells: int
    n_computed: int
    seconds: float
    rows: list[dict]
    failed: tuple[str, ...]


Job = tuple[str, Callable[..., Any], tuple]  # (name, function, its arguments)


def task_results(jobs: list[Job], workers: int, scheduler: str | None) -> Iterator[tuple]:
    """``(name, result or exception)`` as ``jobs`` finish: in ``workers`` local processes
    (:func:`_local_results`), or with ``scheduler`` one task per job on that
    ``dask.distributed`` cluster (:func:`_dask_results`). ``qcore bench``'s cells and the
    fleet preset's devices (:mod:`qcore.eval.fleet_bench`) both run through it."""
    if scheduler is None:
        return _local_results(jobs, workers)
    return _dask_results(jobs, scheduler)


def _local_results(jobs: list[Job], workers: int) -> Iterator[tuple]:
    """``(name, result or exception)`` as jobs finish in a local process pool."""
    ctx = multiprocessing.get_context("spawn")  # no forked torch thread state
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker
    ) as pool:
        futures = {pool.submit(fn, *args): name for name, fn, args in jobs}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except Exception as exc:  # reported by the caller; the other jobs go on
                yield futures[fut], exc


CONNECT_SECONDS = 30  # how long a run waits for the scheduler before it gives up


def _dask_results(jobs: list[Job], scheduler: str) -> Iterator[tuple]:
    """``(name, result or exception)`` as jobs finish on a ``dask.distributed`` cluster.

    A job whose worker dies is run again on another (the scheduler's own rule); a job
    that raises is reported and the others go on. Output paths must be ones the workers
    can write (a shared file system on a real cluster); the data is loaded on the worker.
    """
    try:
        from distributed import Client
        from distributed import as_completed as completed
    except ImportError:
        raise QCoreError(
            "--scheduler needs the distributed package: pip install 'qcore[cluster]'"
        ) from None
    try:
        client = Client(scheduler, timeout=CONNECT_SECONDS)
    except OSError as exc:
        raise QCoreError(f"cannot reach the scheduler at {scheduler}: {exc}") from None
    with client:
        futures = {
            client.submit(fn, *args, key=f"qcore-{name}", pure=False): name
            for name, fn, args in jobs
        }
        for fut in completed(futures):
            try:
                yield futures[fut], fut.result()
            except Exception as exc:
                yield futures[fut], exc


def run_bench(
    grid: Grid,
    out_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
    compute: bool = True,
    scheduler: str | None = None,
) -> BenchResult:
    """Run the missing cells of ``grid`` under ``out_dir``, then write tables and plots.

    Cells run in ``workers`` local processes, or with ``scheduler`` (an address such as
    ``tcp://10.0.0.5:8786``) on that ``dask.distributed`` cluster. A failing cell does not
    stop the others; the outputs cover the finished cells and a :class:`QCoreError`
    naming the failures is raised at the end. With ``compute=False`` nothing runs: the
    outputs cover the cells already finished.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise QCoreError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    cells = grid.cells()
    todo = [c for c in cells if not _is_done(cell_dir(out_dir, c) / "results.json", c)]
    if not compute:
        todo = []
    failed: list[str] = []
    if todo:
        by_name = {cell_dir(out_dir, c).name: c for c in todo}
        jobs = [
            (name, _run_cell, (c.to_dict(), str(cell_dir(out_dir, c))))
            for name, c in by_name.items()
        ]
        results = (
            (by_name[name], outcome) for name, outcome in task_results(jobs, workers, scheduler)
        )
        bar = tqdm(
            total=len(cells), initial=len(cells) - len(todo), desc="cells", disable=not progress
        )
        with bar:
            for c, outcome in results:
                name = cell_dir(out_dir, c).name
                if isinstance(outcome, Exception):
                    failed.append(f"{name}: {type(outcome).__name__}: {outcome}")
                    remote = str(outcome.__cause__ or "")  # the worker's traceback
                    bar.write(f"cell {name} failed: {type(outcome).__name__}: {outcome}{remote}")
                else:
                    bar.set_postfix_str(f"{name} {outcome:.0f}s")
                bar.update()
    done = [c for c in cells if _is_done(cell_dir(out_dir, c) / "results.json", c)]
    rows, steps = collect(out_dir, done)
    write_report(out_dir, rows, steps)
    write_plots(out_dir, rows, steps)
    result = BenchResult(
        len(cells), len(todo) - len(failed), time.perf_counter() - t0, rows, tuple(failed)
    )
    if failed:
        raise QCoreError(f"{len(failed)} cell(s) failed: " + "; ".join(failed))
    return result
