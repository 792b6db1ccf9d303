"""The fleet preset of `qcore bench` end to end on tiny synthetic data: locally, resumed,
and once on a Dask LocalCluster with the same rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qcore.cli import main
from qcore.errors import QCoreError
from qcore.eval.fleet_bench import run_fleet
from qcore.eval.fleet_sites import FIELDS
from qcore.eval.grid import make_grid

TINY = ["pairs=synthetic:0:1", "epochs=2", "filters=4", "depth=3"]


@pytest.fixture(scope="module")
def local_fleet(tmp_path_factory):
    """The preset run once locally on two workers: its folder and its result."""
    out = tmp_path_factory.mktemp("fleet")
    return out, run_fleet(make_grid("fleet", TINY), out, workers=2, progress=False)


def test_the_fleet_preset_runs_resumes_and_reports(local_fleet, capsys) -> None:
    grid = make_grid("fleet", TINY)
    tmp_path, res = local_fleet
    assert res.n_devices == 3 and res.n_computed == 3 and not res.failed
    assert [r["site"] for r in res.rows] == [1, 2, 3]
    assert set(res.rows[0]) == set(FIELDS)
    for r in res.rows:
        assert r["fleet_before"] == pytest.approx(r["central"], abs=0.02)  # the merge is exact
        assert r["pred_diff"] <= 1 and r["stats_diff"] < 1e-4
        for key in (
            "fleet_eps4",
            "centred_eps1",
            "means-whitened-4_eps4",
            "fedavg_m100_r20",
            "own",
        ):
            assert 0.0 <= r[key] <= 1.0
        assert r["clip_means"] > 0.0
    for name in ("sites.csv", "fleet.md", "fleet.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "## synthetic: 3 sites" in (tmp_path / "fleet.md").read_text()
    device = tmp_path / "synthetic-0" / "devices" / "2" / "device.json"
    stamp = device.stat().st_mtime_ns
    # a second call computes no device again and gives the same rows
    assert main(["bench", "--preset", "fleet", "--out", str(tmp_path), "--quiet",
                 *sum((["--set", s] for s in TINY), [])]) == 0  # fmt: skip
    assert "0 device(s) computed, 3 reused, 3 site rows" in capsys.readouterr().out
    assert device.stat().st_mtime_ns == stamp
    cached = json.loads((tmp_path / "synthetic-0" / "sites.json").read_text())["rows"]
    assert cached == res.rows
    # a device whose record is gone (an interrupted task) is the only one computed again
    device.unlink()
    again = run_fleet(grid, tmp_path, workers=1, progress=False)
    assert again.n_computed == 1 and again.rows == res.rows
    assert run_fleet(grid, tmp_path / "none", compute=False, progress=False).rows == []


def test_the_fleet_preset_on_dask_gives_the_local_rows(local_fleet, tmp_path) -> None:
    from distributed import LocalCluster

    grid = make_grid("fleet", TINY)
    local = local_fleet[1]
    # the trained float model is reused (the training cache); deploy and devices run on Dask
    shutil.copytree(local_fleet[0] / ".cache", tmp_path / "dask" / ".cache")
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        remote = run_fleet(
            grid, tmp_path / "dask", progress=False, scheduler=cluster.scheduler_address
        )
    assert remote.n_computed == 3
    for a, b in zip(local.rows, remote.rows, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert np.isclose(a[k], b[k]) if isinstance(a[k], float) else a[k] == b[k], k


@pytest.mark.parametrize("uschad_found", [False, True])
def test_the_fleet_preset_deploys_hapt_and_uschad_from_subject_1(monkeypatch, uschad_found):
    from qcore.eval import grid as grid_module

    monkeypatch.setattr(grid_module, "_uschad_found", lambda: uschad_found)
    grid = make_grid("fleet")
    assert grid.pairs == (("hapt", 1, 2), *((("usc-had", 1, 2),) if uschad_found else ()))
    assert grid.base.bits == (4,) and grid.seeds == (0,) and grid.base.methods == ("slda",)
    for extra in ("bits=2,4", "seeds=0,1", "label_fractions=1,0.1"):
        with pytest.raises(QCoreError, match="one model per pair"):
            run_fleet(make_grid("fleet", [extra]), "unused", progress=False)
