"""A device fed wrong input: every bad batch is reported, skipped and changes nothing.

Runs the real command (``python -m qcore.cli device``) on a stream folder that mixes good
batches with every kind of broken one a field device can meet, and on stdin streams
that end mid-frame or announce an absurd frame length. The state after such a run must
equal, byte for byte, the state after running only the good batches.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import edge_kit as B  # tests/edge/edge_kit.py (tests/edge is on sys.path: see pyproject)
import numpy as np
import pytest
import torch

from qcore.edge.artifact import encode_artifact, save_artifact
from qcore.edge.state import load_state, save_state

torch.set_num_threads(1)


CLI = [sys.executable, "-m", "qcore.cli", "device"]
N_GOOD = 4


@pytest.fixture(scope="module")
def setup(tiny_model, tiny_xy, tmp_path_factory):
    """(artifact path, good batches, reference state bytes after k good batches)."""
    X, y = tiny_xy
    folder = tmp_path_factory.mktemp("bad-stream")
    art_path = folder / "model.qcore"
    save_artifact(art_path, B.small_artifact(tiny_model, X, y))
    good = B.stream_batches(X, y, N_GOOD, seed=5)
    # Same settings as `qcore device` with its defaults on this artifact.
    dev = B.cli_device(art_path)
    refs = [encode_artifact(dev.art)]
    for Xb, yb in good:
        dev.step(Xb, yb)
        refs.append(encode_artifact(dev.art))
    return art_path, good, refs


class _Trap:
    """Unpickling this object would create ``marker``: proof that pickle ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _huge_member_npz(good_y: np.ndarray) -> bytes:
    """An .npz whose X.npy header declares ~400 GB of float32 but holds no data."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zf.open("X.npy", "w") as fh:
            header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 3, 32)}
            np.lib.format.write_array_header_1_0(fh, header)
        with zf.open("y.npy", "w") as fh:
            np.save(fh, good_y)
    return buf.getvalue()


def _bad_batches(good: list, marker: Path) -> dict[str, tuple[bytes | None, str]]:
    """name -> (file content, or None for a non-file entry; expected error substring)."""
    X, y = good[0]
    nan, inf = X.copy(), X.copy()
    nan[1, 2, 3] = np.nan
    inf[0, 0, 0] = np.inf
    rng = np.random.default_rng(7)
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(str(marker))
    npz = B.npz_bytes
    return {
        "nan": (npz(X=nan, y=y), "NaN or infinite"),
        "posinf": (npz(X=inf, y=y), "NaN or infinite"),
        "f64-overflow": (npz(X=np.full(X.shape, 1e39), y=y), "NaN or infinite"),
        "channels": (npz(X=X[:, :2], y=y), "2 channels"),
        "length": (npz(X=X[:, :, :20], y=y), "20 time steps"),
        "label-high": (npz(X=X, y=np.full_like(y, 3)), "nor class indices 0..2"),
        "label-negative": (npz(X=X, y=np.full_like(y, -2)), "nor class indices 0..2"),
        "label-name": (npz(X=X, y=np.array(["low"] * (len(y) - 1) + ["max"])), "max are"),
        "empty": (npz(X=X[:0], y=y[:0]), "empty"),
        "int-x": (npz(X=X.astype(np.int32), y=y), "floating point"),
        "two-d": (npz(X=X[:, 0], y=y), "rank 2"),
        "float-y": (npz(X=X, y=y.astype(np.float32)), "integer or text labels"),
        "y-length": (npz(X=X, y=y[:-1]), "labels"),
        "random-bytes": (b"\x00" + rng.bytes(300), "not an .npz archive"),
        "csv-named-npz": (b"x,y\n1.0,2\n", "a text or CSV file"),
        "bare-pickle": (b"\x80\x04\x95" + rng.bytes(40), "pickled Python data"),
        "zip-not-npz": (b"PK\x03\x04" + rng.bytes(60), "not a readable .npz"),
        "missing-x": (npz(y=y), "no array 'X'"),
        "pickle": (npz(X=trap, y=y), "Python objects"),
        "huge-shape": (_huge_member_npz(y), "exceeds"),
        "directory": (None, "not a regular file"),
    }


def _run(args: list[str], stdin: bytes | None = None) -> tuple[list[dict], dict]:
    """(stdout JSON lines, stderr summary) of one successful `qcore device` run."""
    proc = subprocess.run(args, input=stdin, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    summary = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    return lines, summary


def test_bad_batches_in_a_folder_are_reported_skipped_and_change_nothing(setup, tmp_path):
    art_path, good, refs = setup
    stream, marker = tmp_path / "stream", tmp_path / "pickle-ran"
    stream.mkdir()
    bad = _bad_batches(good, marker)
    names = list(bad)
    # good batches first, last and in between; bad ones around them
    order = ["good0", *names[:5], "good1", *names[5:11], "good2", *names[11:], "good3"]
    assert len(order) < 50  # 50-notes.csv sorts after them
    expected: dict[str, str] = {}
    for k, name in enumerate(order):
        fname = f"{k:02d}-{name}.npz"
        if name.startswith("good"):
            Xb, yb = good[int(name[4:])]
            (stream / fname).write_bytes(B.npz_bytes(X=Xb, y=yb))
        else:
            content, want = bad[name]
            if content is None:
                (stream / fname).mkdir()
            else:
                (stream / fname).write_bytes(content)
            expected[fname] = want
    if hasattr(os, "mkfifo"):  # a FIFO must be refused, not read forever
        os.mkfifo(stream / "99-fifo.npz")
        expected["99-fifo.npz"] = "not a regular file"
    (stream / "50-notes.csv").write_text("x,y\n")  # not a batch: reported, never silent
    expected["50-notes.csv"] = "not an .npz batch"
    (stream / ".hidden").write_text("editor swap file")  # hidden names are not batches

    state = tmp_path / "state.qcore"
    lines, summary = _run([*CLI, str(art_path), "--stream", str(stream), "--state", str(state)])

    by_batch = {r["batch"]: r for r in lines}
    assert len(by_batch) == len(lines) == len(order) + hasattr(os, "mkfifo") + 1
    for fname, want in expected.items():
        row = by_batch[fname]
        assert set(row) == {"batch", "error"}, row
        assert want in row["error"], (fname, row["error"])
    steps = [r["step"] for r in lines if "step" in r]
    assert steps == list(range(1, N_GOOD + 1))
    assert summary["processed"] == N_GOOD
    assert summary["skipped"] == len(expected)
    assert not marker.exists(), "loading a batch executed pickled code"
    assert state.read_bytes() == refs[N_GOOD]
    assert load_state(state).step == N_GOOD


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(8, "little") + payload


def test_stdin_stream_ending_mid_frame(setup, tmp_path):
    art_path, good, refs = setup
    frames = [_frame(B.npz_bytes(X=Xb, y=yb)) for Xb, yb in good[:3]]
    nan = good[0][0].copy()
    nan[0, 0, 0] = np.nan
    bad = _frame(B.npz_bytes(X=nan, y=good[0][1]))
    data = frames[0] + bad + frames[1] + frames[2][: len(frames[2]) // 2]
    state = tmp_path / "state.qcore"
    lines, summary = _run([*CLI, str(art_path), "--stream", "-", "--state", str(state)], data)
    assert [r.get("step") for r in lines] == [1, None, 2, None]
    assert "NaN" in lines[1]["error"] and lines[1]["batch"] == "stdin:2"
    assert "ended inside a frame" in lines[3]["error"]
    assert (summary["processed"], summary["skipped"]) == (2, 2)
    assert state.read_bytes() == refs[2]

    # a stream cut inside the 8-byte length prefix
    state2 = tmp_path / "state2.qcore"
    data = frames[0] + frames[1][:5]
    lines, _ = _run([*CLI, str(art_path), "--stream", "-", "--state", str(state2)], data)
    assert "length prefix" in lines[-1]["error"]
    assert state2.read_bytes() == refs[1]


def test_stdin_absurd_length_prefix(setup, tmp_path):
    art_path, good, refs = setup
    frames = [_frame(B.npz_bytes(X=Xb, y=yb)) for Xb, yb in good[:2]]
    data = frames[0] + frames[1] + (1 << 62).to_bytes(8, "little") + b"\x00" * 1000
    state = tmp_path / "state.qcore"
    lines, summary = _run([*CLI, str(art_path), "--stream", "-", "--state", str(state)], data)
    assert [r.get("step") for r in lines] == [1, 2, None]
    assert lines[-1]["batch"] == "stdin:3" and "bytes" in lines[-1]["error"]
    assert (summary["processed"], summary["skipped"]) == (2, 1)
    assert state.read_bytes() == refs[2]


def test_finite_glitch_cannot_poison_model_or_core(setup, tmp_path):
    """A huge but finite reading (1e30) passes validation; it must not be committed.

    Before the fix its BatchNorm re-estimate overflowed to inf, the damaged model was
    committed, and the window stayed in the core, re-poisoning every later calibration.
    """
    art_path, good, _ = setup
    dev = B.cli_device(art_path)
    X, y = good[0]
    glitch = X.copy()
    glitch[0, 0, :] = 1e30
    with np.errstate(all="ignore"):
        report = dev.step(glitch, y)
    assert report.calibrated and report.rolled_back
    model = dev.art.model
    for bn in model.norms.values():
        for arr in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            assert np.isfinite(arr).all()
    assert np.abs(dev.art.core.X).max() < 1e3
    save_state(tmp_path / "s.qcore", dev.art)
    assert encode_artifact(load_state(tmp_path / "s.qcore")) == encode_artifact(dev.art)
    for Xb, yb in good[1:]:  # and the device carries on normally
        dev.step(Xb, yb)
    assert dev.art.step == len(good)
    assert all(np.isfinite(bn.running_var).all() for bn in dev.art.model.norms.values())


def test_every_batch_skipped_is_an_error_and_a_file_is_not_a_folder(setup, tmp_path):
    art_path, _, _ = setup
    stream = tmp_path / "junk"
    stream.mkdir()
    (stream / "a.npz").write_bytes(b"x,y\n1,2\n")
    state = tmp_path / "state.qcore"
    proc = subprocess.run(
        [*CLI, str(art_path), "--stream", str(stream), "--state", str(state)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "all 1 batch(es) were skipped" in proc.stderr.decode()
    assert not state.exists()
    proc = subprocess.run(
        [*CLI, str(art_path), "--stream", str(stream / "a.npz"), "--state", str(state)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "is a file" in proc.stderr.decode()
