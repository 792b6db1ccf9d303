"""A seeded end-to-end run on tiny synthetic data, through the library and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from qcore.config import RunConfig
from qcore.edge.artifact import load_artifact
from qcore.eval.runner import run

TINY = dict(
    dataset="synthetic",
    source=0,
    target=1,
    filters=4,
    depth=3,
    epochs=3,
    bits=(2, 4),
    core_size=8,
    n_batches=4,
    record_every=1,
    calib_steps=3,
    source_calib_epochs=1,
    flip_steps=2,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(**TINY, method="none,backprop,qcore")
    return out, run(cfg, out)


def test_results_contract(result):
    out, res = result
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["config"]["method"] == "none,backprop,qcore"
    rows = on_disk["results"]
    for r in rows:
        assert {"method", "bits", "source_acc", "target_acc", "device_bytes", "seconds"} <= set(r)
    qrows = [r for r in rows if r["method"] == "qcore"]
    assert [r["bits"] for r in qrows] == [2, 4]
    for r in qrows:
        assert {"target_acc_before", "source_acc_before", "flipnet"} <= set(r)
        assert len(r["steps"]) == 4
        for s in r["steps"]:
            assert {"task_acc", "source_acc", "target_acc", "core_acc", "seconds"} <= set(s)
    assert (out / "stream.png").stat().st_size > 1000
    by = {(r["method"], r["bits"]): r["device_bytes"] for r in rows}
    assert by[("ptq", 2)] < by[("ptq", 4)] < by[("float", None)]
    assert by[("qcore", 4)] > by[("none", 4)]  # core and flip network cost bytes


def test_same_seed_same_numbers(result, tmp_path):
    """Same seed and inputs: the same numbers, and bit-identical weights and core after the
    simulated stream (``calibrated-*.qcore`` holds the final model, core and step)."""
    out, res = result
    again = run(RunConfig(**TINY, method="none,backprop,qcore"), tmp_path)

    def strip(rows):
        return [
            {k: v for k, v in r.items() if "seconds" not in k and k != "steps"}
            | {
                "steps": [
                    {k: v for k, v in s.items() if k != "seconds"} for s in r.get("steps", [])
                ]
            }
            for r in rows
        ]

    assert json.dumps(strip(res["results"])) == json.dumps(strip(again["results"]))
    files = sorted(p.name for p in out.glob("*.qcore"))
    assert files == [f"{k}-{b}bit.qcore" for k in ("calibrated", "deployed") for b in (2, 4)]
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name
    final, start = load_artifact(out / files[0]), load_artifact(out / files[2])
    assert final.step == 4 and start.step == 0
    assert len(final.core) == len(start.core)
    with np.load(out / "core.npz") as a, np.load(tmp_path / "core.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_cli_errors_are_one_clear_line(tmp_path):
    cases = [
        (["run", "--out", str(tmp_path), "--set", "bits=9"], "bit-width 9"),
        (["run", "--out", str(tmp_path), "--set", "dataset=nope"], "nope"),
        (
            [
                "run",
                "--out",
                str(tmp_path),
                "--set",
                "method=magic",
                "--set",
                "dataset=synthetic",
                "--set",
                "source=0",
                "--set",
                "target=1",
            ],
            "unknown method",
        ),
        (["data", "info", "dsads", "--path", str(tmp_path / "missing")], "missing"),
        (["model", "info", "--channels", "0", "--classes", "3"], "n_channels"),
    ]
    for args, needle in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "qcore.cli", *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode != 0, args
        assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_info_json():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "qcore.cli",
            "model",
            "info",
            "--channels",
            "6",
            "--classes",
            "6",
            "--filters",
            "16",
            "--depth",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout)["n_params"] == 57_030
    out = subprocess.run(
        [sys.executable, "-m", "qcore.cli", "data", "info", "synthetic", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    info = json.loads(out.stdout)
    assert {"n_cases", "n_channels", "n_timepoints", "n_classes", "n_domains"} <= set(info)
    assert np.isfinite(info["n_cases"])


def test_export_then_device_end_to_end(result, tmp_path):
    from qcore.data.registry import load_dataset

    out, _ = result
    art = tmp_path / "model.qcore"
    cli = [sys.executable, "-m", "qcore.cli"]
    exp = subprocess.run(
        [*cli, "export", str(out), "--bits", "4", "--out", str(art)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["total"] == art.stat().st_size
    missing = subprocess.run(
        [*cli, "export", str(out), "--bits", "8", "--out", str(art)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and "8" in missing.stderr
    ds = load_dataset("synthetic")
    raw = ds.X[ds.domain == 1]
    labels = ds.y[ds.domain == 1]
    stream = tmp_path / "stream"
    stream.mkdir()
    for i in range(3):
        np.savez(stream / f"b{i}.npz", X=raw[i * 8 : (i + 1) * 8], y=labels[i * 8 : (i + 1) * 8])
    dev = subprocess.run(
        [
            *cli,
            "device",
            str(art),
            "--stream",
            str(stream),
            "--state",
            str(tmp_path / "state.qcore"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dev.returncode == 0, dev.stderr
    lines = [json.loads(line) for line in dev.stdout.strip().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert {"step", "accuracy", "latency_ms", "rss_bytes"} <= set(line)


def test_a_bit_width_does_not_depend_on_the_others(result, tmp_path):
    """The bench runs one bit-width per cell: its rows must equal those of a joint run."""
    _, res = result
    alone = run(RunConfig(**{**TINY, "bits": (4,)}, method="none,backprop,qcore"), tmp_path)

    def rows(r):
        return {
            (x["method"], x["bits"]): (x["target_acc"], x["source_acc"], x["device_bytes"])
            for x in r["results"]
            if x["bits"] == 4
        }

    assert rows(alone) == rows(res) and len(rows(res)) == 5
