"""`qcore data batches`: one subject of a dataset as the .npz batches `qcore device` reads."""

from __future__ import annotations

import json
from pathlib import Path

import edge_kit as B  # tests/edge/edge_kit.py (on sys.path: see pyproject)
import numpy as np
import pytest

from qcore.cli import main
from qcore.data.batches import subject_batches, write_batches
from qcore.data.registry import load_dataset
from qcore.data.synthetic import make_synthetic
from qcore.edge.artifact import save_artifact
from qcore.edge.batches import folder_batches, load_batch
from qcore.errors import QCoreError


def _read(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, X, y)`` per batch, as `qcore device` reads the folder (name order)."""
    out = []
    for name, payload in folder_batches(folder):
        assert isinstance(payload, bytes), payload
        X, y = load_batch(payload, name)
        out.append((name, X, y))
    return out


def test_a_subject_is_cut_in_a_seeded_order_of_raw_windows() -> None:
    ds = make_synthetic(n_domains=3, n_per_class=5, n_channels=2, n_timepoints=16, seed=1)
    batches = subject_batches(ds, 1, batch_size=6, seed=3)
    assert [len(y) for _, y in batches] == [6, 6, 6, 2]  # 20 windows, the last batch short
    X = np.concatenate([x for x, _ in batches])
    y = np.concatenate([yb for _, yb in batches])
    mine = np.flatnonzero(ds.domain == 1)
    order = np.random.default_rng(3).permutation(mine)
    np.testing.assert_array_equal(X, ds.X[order])  # the dataset's own units, not normalised
    assert y.tolist() == [ds.class_names[k] for k in ds.y[order]]
    again = subject_batches(ds, 1, batch_size=6, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    other = np.concatenate([x for x, _ in subject_batches(ds, 1, batch_size=6, seed=4)])
    assert not np.array_equal(other, X)
    with pytest.raises(QCoreError, match=r"subject 7 is not in .* available: \[0, 1, 2\]"):
        subject_batches(ds, 7, batch_size=6, seed=3)
    with pytest.raises(QCoreError, match="batch size"):
        subject_batches(ds, 1, batch_size=0, seed=3)


def test_file_names_sort_in_stream_order(tmp_path) -> None:
    ds = make_synthetic(n_domains=2, n_per_class=3, n_channels=1, n_timepoints=8, seed=0)
    batches = subject_batches(ds, 0, batch_size=1, seed=0)  # 12 files: names must not sort
    summary = write_batches(tmp_path / "out", batches)  # as 0, 1, 10, 11, 2, ...
    read = _read(tmp_path / "out")
    assert summary["files"] == len(read) == 12 and summary["windows"] == 12
    assert summary["classes"] == {name: 3 for name in ds.class_names}
    for (_, X, y), (Xb, yb) in zip(read, batches, strict=True):
        np.testing.assert_array_equal(X, Xb)
        assert y.tolist() == yb.tolist()
    with pytest.raises(QCoreError, match="already holds .npz"):
        write_batches(tmp_path / "out", batches)  # would mix two streams


def test_round_trip_through_the_device_command(tiny_model, tiny_xy, tmp_path, capsys) -> None:
    """A user's own .npz (text labels, two subjects) -> batches -> `qcore device`."""
    X, y = tiny_xy
    raw = B.raw(X)
    domain = np.arange(len(y)) % 2
    data = tmp_path / "mine.npz"
    np.savez(data, X=raw, y=np.array(B.CLASSES)[y], domain=domain)
    out = tmp_path / "batches"
    args = ["data", "batches", "npz", "--path", str(data), "--subject", "1", "--out", str(out)]
    assert main([*args, "--batch-size", "8", "--seed", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 4 and summary["windows"] == 30  # 8 + 8 + 8 + 6
    assert summary["classes"] == {name: 10 for name in sorted(B.CLASSES)}
    read = _read(out)
    ds = load_dataset("npz", data)
    order = np.random.default_rng(5).permutation(np.flatnonzero(ds.domain == 1))
    np.testing.assert_array_equal(np.concatenate([x for _, x, _ in read]), raw[order])
    assert np.concatenate([yb for _, _, yb in read]).tolist() == [B.CLASSES[k] for k in y[order]]

    art = tmp_path / "model.qcore"
    save_artifact(art, B.small_artifact(tiny_model, X, y))
    state = tmp_path / "state.qcore"
    assert main(["device", str(art), "--stream", str(out), "--state", str(state)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["batch"] for line in lines] == [name for name, _, _ in read]
    assert all("error" not in line for line in lines)
    assert sum(len(line["predicted"]) for line in lines) == 30
    assert np.mean([line["accuracy"] for line in lines]) > 0.5  # the names were understood
