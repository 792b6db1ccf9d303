"""The ``qcore bench`` subcommand (wired into :mod:`qcore.cli` by ``add_command``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qcore.errors import QCoreError
from qcore.eval.grid import PRESETS, Grid, make_grid, presets_help


def _cmd_bench(args: argparse.Namespace) -> None:
    from qcore.eval.bench import run_bench

    if args.workers is not None and args.workers < 1:
        raise QCoreError(f"--workers must be >= 1, got {args.workers}")
    grid = make_grid(args.preset, args.set or [])
    out = Path(args.out or f"runs/bench-{args.preset}")
    workers = args.workers or max(1, os.cpu_count() or 1)
    if args.preset == "fleet":
        _fleet(grid, out, workers, args)
        return
    n = len(grid.cells())
    print(
        f"bench {args.preset}: {n} cells ({len(grid.pairs)} pairs x {len(grid.seeds)} seeds x "
        f"bits {','.join(map(str, grid.base.bits))}), {len(grid.base.methods)} methods, "
        f"{workers} worker(s) -> {out}"
    )
    res = run_bench(
        grid,
        out,
        workers=workers,
        progress=not args.quiet,
        compute=not args.report,
        scheduler=args.scheduler,
    )
    print(
        f"{res.n_computed} cell(s) computed, {res.n_cells - res.n_computed} reused, "
        f"{res.seconds:.0f} s"
    )
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'} and plots")


def _fleet(grid: Grid, out: Path, workers: int, args: argparse.Namespace) -> None:
    """The fleet preset: one task per device, then the merge report (fleet_bench)."""
    from qcore.eval.fleet_bench import run_fleet

    print(f"bench fleet: {len(grid.pairs)} deployed model(s), {workers} worker(s) -> {out}")
    res = run_fleet(
        grid,
        out,
        workers=workers,
        progress=not args.quiet,
        compute=not args.report,
        scheduler=args.scheduler,
    )
    print(
        f"{res.n_computed} device(s) computed, {res.n_devices - res.n_computed} reused, "
        f"{len(res.rows)} site rows, {res.seconds:.0f} s"
    )
    print(f"wrote {out / 'sites.csv'}, {out / 'fleet.md'} and {out / 'fleet.png'}")


def add_command(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``qcore`` subcommands."""
    p = sub.add_parser(
        "bench",
        help="run the benchmark grid (datasets x scenarios x bits x methods x seeds)",
        description="Run every (dataset, source->target, seed, bit-width) cell with all "
        "methods in parallel worker processes; finished cells are reused. Writes "
        "results.csv, stream.csv, results.md, summary.md, stream.png, bits.png and cost.png, "
        "and flips.md where qcore rows report their flips. The fleet preset runs one task per "
        "device instead and writes sites.csv, fleet.md and fleet.png.",
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="quick",
        help=presets_help(),
    )
    p.add_argument("--out", default=None, help="output folder (default runs/bench-PRESET)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel worker processes (default: number of CPUs)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a RunConfig setting for every cell, or pairs=ds:src:tgt,... / seeds=0,1",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the cells on a dask.distributed cluster (e.g. tcp://10.0.0.5:8786) "
        "instead of local worker processes; needs qcore[cluster]",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--report",
        action="store_true",
        help="compute nothing: write the tables and plots from the cells already finished",
    )
    p.set_defaults(func=_cmd_bench)
