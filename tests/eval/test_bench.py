"""The benchmark grid: a reduced quick preset, its tidy CSV, resumability and plots."""

from __future__ import annotations

import argparse
import csv

import pytest
import torch

from qcore.errors import QCoreError
from qcore.eval.bench import CSV_COLUMNS, make_grid, run_bench, summary_table
from qcore.eval.bench_cli import add_command

torch.set_num_threads(1)

REDUCED = ["pairs=synthetic:0:1", "seeds=0", "bits=4", "method=none,bn-stats,finetune", "epochs=2"]


def test_reduced_quick_grid_writes_tidy_results_and_resumes(tmp_path):
    grid = make_grid("quick", REDUCED)
    assert grid.base.filters == 4 and grid.base.core_size == 10  # the quick preset's model
    first = run_bench(grid, tmp_path, workers=1, progress=False)
    assert (first.n_cells, first.n_computed, first.failed) == (1, 1, ())
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert set(CSV_COLUMNS) <= set(rows[0])
    assert {(r["method"], r["bits"], r["scenario"], r["seed"]) for r in rows} == {
        (m, "4", "0->1", "0") for m in ("none", "bn-stats", "finetune")
    }
    for r in rows:
        assert 0.0 <= float(r["target_acc"]) <= 1.0 and int(r["device_bytes"]) > 0
    for png in ("stream.png", "bits.png", "cost.png"):
        assert (tmp_path / png).stat().st_size > 1000
    table = (tmp_path / "results.md").read_text()
    assert "| synthetic | 0->1 | 4 | finetune | 1 |" in table
    assert "| finetune | " in (tmp_path / "summary.md").read_text()
    cell = next((tmp_path / "cells").iterdir()) / "results.json"
    stamp = cell.stat().st_mtime_ns
    again = run_bench(grid, tmp_path, workers=1, progress=False)
    assert again.n_computed == 0 and cell.stat().st_mtime_ns == stamp  # nothing recomputed
    assert again.rows == first.rows
    (tmp_path / "results.csv").unlink()
    bigger = make_grid("quick", [*REDUCED[:2], "bits=4,8", *REDUCED[3:]])
    report = run_bench(bigger, tmp_path, workers=1, progress=False, compute=False)
    assert report.n_computed == 0 and report.rows == first.rows  # the 8-bit cell is not run
    assert (tmp_path / "results.csv").is_file()


def test_presets_and_bad_settings():
    quick = make_grid("quick")
    assert len(quick.cells()) == 12 and quick.base.bits == (2, 4, 8)  # pairs x seeds x bits
    assert {c.bits for c in quick.cells()} == {(2,), (4,), (8,)}
    assert {"qcore", "zo-spsa", "er", "joint"} <= set(quick.base.methods)
    full = make_grid("full")
    assert full.base.bits == (2, 3, 4, 5, 8) and full.seeds == (0, 1, 2)
    assert full.pairs[0] == ("hapt", 1, 4) and len(full.pairs) <= 2  # + USC-HAD where found
    for bad in (["seed=3"], ["pairs=synthetic:0"], ["pairs=synthetic:1:1"], ["nope=1"]):
        with pytest.raises(QCoreError):
            make_grid("quick", bad)
    with pytest.raises(QCoreError):
        make_grid("huge")


def test_cli_command_parses():
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--workers", "2", "--set", "seeds=0", "--out", "x"])
    assert (args.preset, args.workers, args.set, args.out) == ("quick", 2, ["seeds=0"], "x")
    assert callable(args.func)


def test_summary_table_is_one_row_per_method_and_a_column_per_bit_width():
    rows = [
        {
            "dataset": "d",
            "scenario": "1->2",
            "bits": b,
            "method": m,
            "seed": seed,
            "target_acc": t,
            "source_acc": 1.0,
            "step_seconds": 0.5 * b,
            "device_bytes": 100 * b,
        }
        for m, t0 in (("none", 0.2), ("qcore", 0.6))
        for b in (2, 4)
        for seed, t in ((0, t0), (1, t0 + 0.2))
    ]
    lines = summary_table(rows).splitlines()
    assert lines[0].startswith("**d 1->2** (seeds 0, 1;")
    assert lines[2] == "| method | 2 bits | 4 bits | s / step | device bytes |"
    assert lines[4] == (
        "| none | 0.30 ± 0.10 / 1.00 ± 0.00 | 0.30 ± 0.10 / 1.00 ± 0.00 | 1.500 | 200-400 |"
    )
    assert lines[5].startswith("| qcore | 0.70 ± 0.10 / 1.00 ± 0.00 |")
