"""The benchmark: a reduced quick preset run for real (tidy CSV, resume, plots), the
presets' grids, and the report's tables, flip tables included, on hand-made rows and cells."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import torch

from qcore.cloud.pipeline import FlipTraining
from qcore.config import RunConfig
from qcore.errors import QCoreError
from qcore.eval import grid as grid_module
from qcore.eval.bench import _is_done, run_bench
from qcore.eval.bench_cli import add_command
from qcore.eval.flip_tables import flip_activity_table, flipnet_table
from qcore.eval.grid import cell_dir, make_grid
from qcore.eval.report import (
    CALIBRATION,
    CSV_COLUMNS,
    STREAM_COLUMNS,
    collect,
    markdown_table,
    summary_table,
    write_report,
)

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
        for key in ("target_ece_before", "target_ece", "source_ece", "target_auroc_before"):
            assert 0.0 <= float(r[key]) <= 1.0, key
    for png in ("stream.png", "bits.png", "cost.png"):
        assert (tmp_path / png).stat().st_size > 1000
    table = (tmp_path / "results.md").read_text()
    assert "| synthetic | 0->1 | 4 | finetune | 1 |" in table
    assert "| finetune | " in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "flips.md").exists()  # no qcore rows
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


@pytest.mark.parametrize("uschad_found", [False, True])
def test_presets(monkeypatch, uschad_found):
    monkeypatch.setattr(grid_module, "_uschad_found", lambda: uschad_found)
    uschad = (("usc-had", 1, 11),) if uschad_found else ()
    quick = make_grid("quick")
    assert len(quick.cells()) == 12 and quick.base.bits == (2, 4, 8)  # pairs x seeds x bits
    assert quick.pairs == (("synthetic", 0, 1), ("synthetic", 2, 3)) and quick.seeds == (0, 1)
    assert {c.bits for c in quick.cells()} == {(2,), (4,), (8,)}
    assert {"none", "backprop", "qcore", "zo-spsa", "er", "joint"} <= set(quick.base.methods)
    full = make_grid("full")
    assert full.base.bits == (2, 3, 4, 5, 8) and full.seeds == (0, 1, 2)
    assert full.pairs == (("hapt", 1, 4), *uschad)
    assert full.base.methods == quick.base.methods  # every method
    method = make_grid("method")
    assert method.pairs == (("hapt", 1, 4), ("hapt", 1, 25), *uschad)
    assert method.base.bits == (2, 4, 8) and method.seeds == (0, 1, 2)
    assert method.base.methods == ("none", "backprop", "qcore")
    default = RunConfig()
    for key in ("filters", "depth", "epochs", "core_size"):
        assert getattr(method.base, key) == getattr(default, key), key  # the default model
    assert method.base.device == default.device
    cells = method.cells()
    assert len(cells) == 9 * len(method.pairs)
    # with every window labelled the policy chooses nothing: a cell says random, as ever
    first = method.base.replace(dataset="hapt", source=1, target=4, seed=0, bits=(2,))
    assert cells[0].to_dict() == first.replace(label_policy="random").to_dict()
    assert {(c.dataset, c.source, c.target, c.seed, c.bits) for c in cells} == {
        (*p, seed, (b,)) for p in method.pairs for seed in (0, 1, 2) for b in (2, 4, 8)
    }
    assert cell_dir(Path("o"), cells[-1]) == Path("o/cells") / (
        "usc-had-1-11-s2-b8" if uschad_found else "hapt-1-25-s2-b8"
    )


@pytest.mark.parametrize("uschad_found", [False, True])
def test_the_wide_labels_and_newclass_presets(monkeypatch, uschad_found):
    monkeypatch.setattr(grid_module, "_uschad_found", lambda: uschad_found)
    wide = make_grid("wide")
    targets = [p for p in wide.pairs if p[0] == "hapt"]
    assert targets == [("hapt", 1, t) for t in range(2, 31)]
    assert len(wide.pairs) == 29 + 13 * uschad_found
    assert wide.base.bits == (4,) and wide.seeds == (0,)
    assert wide.base.methods == ("none", "bn-stats", "qcore", "backprop", "slda")
    labels = make_grid("labels", ["label_fractions=1,0.1"])
    cells = labels.cells()
    # pairs x seeds x bits x (every label, 10% at random, 10% as the device asks: margin)
    assert labels.label_policies == ("random", "margin")
    assert len(cells) == len(labels.pairs) * 3 * 3 * 3
    assert {c.label_fraction for c in cells} == {1.0, 0.1}
    names = {cell_dir(Path("o"), c).name for c in cells}
    assert {"hapt-1-4-s0-b2", "hapt-1-4-s0-b2-l0.1", "hapt-1-4-s0-b2-l0.1-pmargin"} <= names
    assert len(names) == len(cells)
    newclass = make_grid("newclass", ["held_out=SITTING,LAYING", "bits=4"])
    assert [c.new_classes for c in newclass.cells()][:2] == ["SITTING", "LAYING"]
    assert cell_dir(Path("o"), newclass.cells()[0]).name == "hapt-1-4-s0-b4-new-SITTING"
    with pytest.raises(QCoreError, match="label_fractions"):
        make_grid("labels", ["label_fractions=half"])


def test_bad_settings():
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
    for name in ("quick", "full", "method"):
        assert parser.parse_args(["bench", "--preset", name]).preset == name
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--preset", "huge"])


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


def _row(method: str, seed: int, bits: int = 4, **extra) -> dict:
    """A tidy row of dataset d, scenario 1->2 (what :func:`collect` makes of a result)."""
    return {
        "dataset": "d",
        "scenario": "1->2",
        "source": 1,
        "target": 2,
        "bits": bits,
        "method": method,
        "seed": seed,
        "target_acc": 0.5 + 0.1 * seed,
        "source_acc": 0.9,
        "target_acc_before": 0.4,
        "source_acc_before": 1.0,
        "step_seconds": 0.25,
        "cloud_seconds": 2.0,
        "device_bytes": 1000 + seed,
        **extra,
    }


def test_markdown_table_is_mean_and_std_over_seeds():
    """Calibration cells: mean ± std over the seeds that measured it, "-" where none did
    (rows of results.json files from before it was measured)."""
    calib = {"target_ece_before": 0.1, "target_ece": 0.3, "source_ece": 0.2}
    rows = [
        _row("qcore", 0, **calib, target_auroc_before=0.6, target_auroc_margin_before=0.7),
        _row("qcore", 1, **calib, target_auroc_before=None),
        _row("none", 0, bits=2),
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[0].startswith("| dataset | scenario | bits | method | seeds | target before ")
    assert lines[0].endswith(
        "| target ECE before | target ECE after | source ECE after | target AUROC before "
        "| margin AUROC before | s / step | device bytes |"
    )
    assert lines[1] == "|" + "---|" * 16
    assert lines[2] == (
        "| d | 1->2 | 2 | none | 1 | 0.400 ± 0.000 | 0.500 ± 0.000 | 1.000 ± 0.000 "
        "| 0.900 ± 0.000 | - | - | - | - | - | 0.250 ± 0.000 | 1000 |"
    )
    assert lines[3] == (
        "| d | 1->2 | 4 | qcore | 2 | 0.400 ± 0.000 | 0.550 ± 0.050 | 1.000 ± 0.000 "
        "| 0.900 ± 0.000 | 0.100 ± 0.000 | 0.300 ± 0.000 | 0.200 ± 0.000 | 0.600 ± 0.000 "
        "| 0.700 ± 0.000 | 0.250 ± 0.000 | 1000 |"
    )
    assert len(lines) == 4


def _flipnet(rate: float, agreement: float, n_codes: int) -> dict:
    """A flip network's agreement report (see :func:`qcore.cloud.flipnet.agreement_report`)
    on ``FlipTraining().held_out`` rounds of a model with ``n_codes`` flippable codes."""

    def stats(a: float) -> dict:
        return {"agreement": a, "flip_recall": a - 0.3, "flip_precision": a - 0.4}

    return {
        "teacher_flip_rate": rate,
        "n_weights": n_codes * FlipTraining().held_out,
        "flipnet": stats(agreement),
        "all_zero": stats(1 - rate),
        "random": stats(agreement - 0.2),
    }


def _steps(method: str, seed: int, per_step: list[dict], bits: int = 4) -> list[dict]:
    key = {"dataset": "d", "scenario": "1->2", "bits": bits, "method": method, "seed": seed}
    return [{**key, "step": i + 1, "target_acc": 0.5, **s} for i, s in enumerate(per_step)]


def test_flip_tables_from_hand_made_rows():
    rows = [
        _row("qcore", 0, flipnet=_flipnet(0.2, 0.7, 200)),
        _row("qcore", 1, flipnet=_flipnet(0.3, 0.8, 200)),
        _row("none", 0),
        _row("random-core-flip", 0, flipnet=_flipnet(0.9, 0.1, 200)),  # not QCore's
    ]
    assert flipnet_table(rows).splitlines()[2:] == [
        "| d | 1->2 | 4 | 25.0% | 0.750 / 0.450 / 0.350 | 0.750 | 0.550 / 0.250 / 0.150 |"
    ]
    steps = _steps("qcore", 0, [{"flips": 0}, {"flips": 20}, {"flips": 50, "rolled_back": False}])
    steps += _steps(
        "qcore",
        1,
        [{"flips": 10, "rolled_back": True}, {"flips": 100, "passes_rejected": 1}, {}],
    )  # a rolled-back step's flips were discarded; the step without "flips" is not counted
    steps += _steps("random-core-flip", 0, [{"flips": 200}])
    # accepted: 20, 50 and 100 of 200 codes in 3 of the 5 steps reporting flips
    assert flip_activity_table(rows, steps).splitlines()[2:] == [
        "| d | 1->2 | 4 | 3 / 5 | 28% (10-50%) |"
    ]
    idle = _steps("qcore", 0, [{"flips": 0}] * 4)
    assert flip_activity_table(rows, idle).splitlines()[2:] == ["| d | 1->2 | 4 | 0 / 4 | - |"]
    # nothing to report: no qcore row with a flip-network report, or no step with flips
    assert flipnet_table(rows[2:3]) == "" and flip_activity_table(rows[2:3], steps) == ""
    assert flip_activity_table(rows, _steps("qcore", 0, [{}, {}])) == ""


def _fake_cell(out_dir: Path, cfg: RunConfig, flips: list[int]) -> None:
    """A finished cell's ``results.json`` without training: a non-streamed row and one
    streamed row per method of ``cfg`` (``qcore`` with its flip report and step flips)."""
    b = cfg.bits[0]
    results: list[dict] = [{"method": "ptq", "bits": b, "target_acc": 0.3, "source_acc": 0.9}]
    for m in cfg.methods:
        qcore = m == "qcore"
        steps = [
            {
                "step": i + 1,
                "task_acc": 0.5,
                "source_acc": 0.9,
                "target_acc": 0.4 + 0.1 * i,
                "core_acc": 0.8,
                "seconds": 0.01,
                "device_bytes": 900,
                **({"flips": f, "passes_rejected": 0, "rolled_back": False} if qcore else {}),
            }
            for i, f in enumerate(flips)
        ]
        results.append(
            {
                "method": m,
                "bits": b,
                "source_acc_before": 1.0,
                "target_acc_before": 0.3,
                "cloud_seconds": 1.5,
                **({"flipnet": _flipnet(0.2, 0.7, 100)} if qcore else {}),
                "source_acc": steps[-1]["source_acc"],
                "target_acc": steps[-1]["target_acc"],
                "device_bytes": 900,
                "seconds": 0.01,
                "steps": steps,
            }
        )
    folder = cell_dir(out_dir, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    res = {"config": cfg.to_dict(), "results": results, "scenario": {"n_batches": len(flips)}}
    (folder / "results.json").write_text(json.dumps(res))


def test_finished_cells_are_reused_and_reported_with_flips(tmp_path):
    sets = ["pairs=synthetic:0:1", "seeds=0,1", "bits=4", "method=none,qcore", "epochs=2"]
    grid = make_grid("quick", sets)
    for cfg in grid.cells():
        _fake_cell(tmp_path, cfg, [0, 10, 30])
    res = run_bench(grid, tmp_path, workers=1, progress=False)  # nothing left to compute
    assert (res.n_cells, res.n_computed, res.failed) == (2, 0, ())
    assert sorted((r["method"], r["seed"]) for r in res.rows) == [
        ("none", 0),
        ("none", 1),
        ("qcore", 0),
        ("qcore", 1),
    ]
    with (tmp_path / "results.csv").open() as f:
        assert next(csv.reader(f)) == list(CSV_COLUMNS)  # the flip report stays out
    with (tmp_path / "stream.csv").open() as f:
        lines = list(csv.reader(f))
    assert lines[0] == list(STREAM_COLUMNS) and len(lines) == 1 + 4 * 3
    flips = (tmp_path / "flips.md").read_text()
    assert "| synthetic | 0->1 | 4 | 20.0% | 0.700 / 0.400 / 0.300 | 0.800 |" in flips
    assert "| synthetic | 0->1 | 4 | 4 / 6 | 20% (10-30%) |" in flips
    for png in ("stream.png", "bits.png", "cost.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # a cell made with other settings is not reused, so the report leaves it out
    stale = cell_dir(tmp_path, grid.cells()[1]) / "results.json"
    data = json.loads(stale.read_text())
    stale.write_text(json.dumps({**data, "config": {**data["config"], "epochs": 3}}))
    report = run_bench(grid, tmp_path, workers=1, progress=False, compute=False)
    assert report.n_computed == 0 and {r["seed"] for r in report.rows} == {0}
    assert "| 2 / 3 |" in (tmp_path / "flips.md").read_text()
    # without qcore rows the flip tables are gone
    none_only = make_grid("quick", [*sets[:3], "method=none", *sets[4:]])
    for cfg in none_only.cells():
        _fake_cell(tmp_path, cfg, [0, 10, 30])
    assert run_bench(none_only, tmp_path, workers=1, progress=False).n_computed == 0
    assert not (tmp_path / "flips.md").exists()


def test_a_dask_cluster_computes_the_same_cells(tmp_path):
    """The same tiny grid through a real LocalCluster (2 worker processes on loopback) and
    through local processes: identical accuracies, every cell once."""
    from distributed import LocalCluster

    overrides = [
        "pairs=synthetic:0:1",
        "seeds=0",
        "bits=2,4",
        "method=none,slda",
        "epochs=2",
        "filters=4",
        "depth=3",
    ]
    grid = make_grid("quick", overrides)
    local = run_bench(grid, tmp_path / "local", workers=2, progress=False)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        remote = run_bench(
            grid, tmp_path / "dask", progress=False, scheduler=cluster.scheduler_address
        )

    def accuracies(res):
        return sorted(
            (r["scenario"], r["bits"], r["method"], r["target_acc"], r["source_acc"])
            for r in res.rows
        )

    assert remote.n_computed == local.n_computed == 2
    assert accuracies(remote) == accuracies(local)
    assert sorted(p.name for p in (tmp_path / "dask" / "cells").iterdir()) == sorted(
        p.name for p in (tmp_path / "local" / "cells").iterdir()
    )


def test_an_unreachable_scheduler_is_one_clear_error(tmp_path, monkeypatch):
    from qcore.eval import bench

    monkeypatch.setattr(bench, "CONNECT_SECONDS", 2)  # the default 30 s wait, shortened
    grid = make_grid("quick", ["pairs=synthetic:0:1", "seeds=0", "bits=4", "method=none"])
    with pytest.raises(QCoreError, match="cannot reach the scheduler"):
        run_bench(grid, tmp_path, progress=False, scheduler="tcp://127.0.0.1:9")


def test_a_killed_worker_loses_no_cell(tmp_path):
    """SIGKILL the worker process running a cell: the scheduler runs that cell again on a
    worker that lives, the grid completes, and every cell is there exactly once."""
    import os
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster

    grid = make_grid(
        "quick",
        ["pairs=synthetic:0:1", "seeds=0", "bits=2,3,4", "method=none,slda", "epochs=2"],
    )
    out, result = tmp_path / "dask", {}
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        address = cluster.scheduler_address

        def submit() -> None:
            result["res"] = run_bench(grid, out, progress=False, scheduler=address)

        runner = threading.Thread(target=submit)
        runner.start()
        busy: list[str] = []
        deadline = time.monotonic() + 120
        while not busy and time.monotonic() < deadline:
            busy = [w for w, tasks in client.processing().items() if tasks]
            time.sleep(0.05)
        assert busy, "no cell started"
        pids = client.run(os.getpid, workers=busy[:1])
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        runner.join(timeout=600)
    res = result["res"]
    assert not res.failed and len(res.rows) == 3 * 2  # 3 cells x 2 methods
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == sorted(cell_dir(out, c).name for c in grid.cells())
    for name in cells:
        assert "scenario" in json.loads((out / "cells" / name / "results.json").read_text())


def test_preset_help_lists_every_preset(capsys):
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, preset in grid_module.PRESETS.items():
        assert f"{name}: {preset.summary}" in text, name
    assert len(grid_module.PRESETS) == 7


def test_stream_plot_shows_step_zero(tmp_path):
    """The y-axis of ``stream.png`` covers the accuracies before the first batch."""
    from qcore.eval.plots import plot_stream

    steps = [{"step": k, "target_acc": 0.9, "source_acc": 0.85} for k in (1, 2)]
    row = {"method": "slda", "bits": 4, "target_acc_before": 0.2, "source_acc_before": 0.3}
    fig = plot_stream([{**row, "steps": steps}], tmp_path / "stream.png")
    (ax,) = fig.axes[:1]
    low, high = ax.get_ylim()
    assert low <= 0.2 and high >= 0.9
    assert (tmp_path / "stream.png").stat().st_size > 1000


def test_reliability_diagram_draws_the_chosen_method_before_and_after(tmp_path):
    """One panel per bit-width, for the method the runner names (the device it saved),
    else the first streamed method with bins: four curves (target/source, before/after)
    from the bins' mean confidence and accuracy, labelled with their ECE."""
    from qcore.eval.plots import plot_reliability

    def row(method: str, bits: int, shift: float) -> dict:
        bins = {f"{n}_reliability{s}": [[0.35 + shift, 0.2, 3], [0.85, 0.9 - shift, 5]]
                for n in ("source", "target") for s in ("_before", "")}  # fmt: skip
        eces = {f"{n}_ece{s}": 0.1 for n in ("source", "target") for s in ("_before", "")}
        return {"method": method, "bits": bits, "steps": [], **bins, **eces}

    rows = [{"method": "ptq", "bits": 4}, row("none", 4, 0.0), row("slda", 4, 0.1)]
    rows += [row("none", 8, 0.0), {"method": "old", "bits": 8, "steps": []}]
    rows[2]["target_reliability"] = [[0.95, 0.5, 8]]  # slda after the stream
    rows[2]["target_ece"] = 0.45
    fig = plot_reliability(rows, tmp_path / "reliability.png", "d 1 -> 2", {4: "slda"})
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    four, eight = fig.axes
    assert four.get_title() == "d 1 -> 2, slda, 4 bits"
    assert eight.get_title() == "d 1 -> 2, none, 8 bits"
    curves = {line.get_label(): line for line in four.get_lines()}
    after = curves["target after (ECE 0.450)"]
    assert list(after.get_xdata()) == [0.95] and list(after.get_ydata()) == [0.5]
    before = curves["target before (ECE 0.100)"]
    assert list(before.get_xdata()) == pytest.approx([0.45, 0.85])
    assert list(before.get_ydata()) == pytest.approx([0.2, 0.8])
    assert {"source before (ECE 0.100)", "source after (ECE 0.100)"} <= set(curves)


COMMITTED = Path(__file__).parents[2] / "docs" / "bench-labels-guard" / "cells" / "hapt-1-25-s0-b8"


def test_committed_results_with_nan_still_load(tmp_path):
    """A results.json written before strict JSON (``NaN``, ``seconds``) is still a finished
    cell, and its rows read as before."""
    text = (COMMITTED / "results.json").read_text()
    assert "NaN" in text
    res = json.loads(text)
    cfg = RunConfig.from_dict(res["config"])
    cell = cell_dir(tmp_path, cfg)
    cell.mkdir(parents=True)
    (cell / "results.json").write_text(text)
    assert _is_done(cell / "results.json", cfg)  # the grid reuses it
    rows, steps = collect(tmp_path, [cfg])
    write_report(tmp_path, rows, steps)
    assert len(rows) == len(cfg.methods) and (tmp_path / "summary.md").is_file()
    by = {r["method"]: r for r in rows}
    for r in res["results"][3:]:
        assert by[r["method"]]["step_seconds"] == r["seconds"]
        assert by[r["method"]]["cloud_seconds"] == r["cloud_seconds"]
        assert by[r["method"]]["target_acc_before"] == r["target_acc_before"]
        assert "target_ece" not in r  # written before calibration was measured
        assert all(by[r["method"]][k] is None for k in CALIBRATION)
    with (tmp_path / "results.csv").open() as f:
        for line in csv.DictReader(f):
            assert [line[k] for k in CALIBRATION] == [""] * len(CALIBRATION)
    table = (tmp_path / "results.md").read_text()
    assert table.count("| - | - | - | - |") == len(cfg.methods)
