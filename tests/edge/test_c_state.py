"""The C runtime's state blob: saved by the compiled runtime, read back by
:mod:`qcore.edge.c_state` into a device state the NumPy device continues from with the
same predictions; written by Python, loaded by the C; refused by both when corrupted,
truncated or of another model."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import edge_kit as B
import numpy as np
import pytest

from qcore.cli import main
from qcore.edge import head as H
from qcore.edge.c_export import export_c, fingerprint
from qcore.edge.c_state import blob_bytes, decode_state, encode_state, import_state
from qcore.edge.device import Device
from qcore.edge.infer import forward_features
from qcore.edge.state import load_state
from qcore.errors import QCoreError

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="gcc is not installed: the exported C cannot be compiled"
)
CFLAGS = "-std=c99 -O2 -Wall -Wextra -Werror"
N_FIT = 30  # windows the shipped head statistics are fitted on
N_NEW = 8  # windows of a class the firmware adds (sine waves upside down)

# Saves the fresh state, refuses the blob on stdin, saves again: both saves must be equal.
UNCHANGED_C = r"""
#include <stdio.h>
#include <string.h>
#include "qcore_rt.h"
static uint8_t a[QC_STATE_BYTES], b[QC_STATE_BYTES], in[QC_STATE_BYTES + 1];
int main(void) {
    size_t n = fread(in, 1, sizeof in, stdin);
    int rc;
    if (qc_init() != 0) return 1;
    qc_state_save(a, sizeof a);
    rc = qc_state_load(in, n);
    qc_state_save(b, sizeof b);
    printf("%d %d\n", rc, memcmp(a, b, sizeof a) == 0);
    return 0;
}
"""


def _run(
    program: Path, windows: np.ndarray, labels: list[int], *args: str, check: bool = True
) -> tuple[int, dict[str, list[np.ndarray]], str]:
    """Exit status, the example's output by line tag, and its stderr."""
    pairs = zip(labels, windows, strict=True)
    data = b"".join(np.int32(label).tobytes() + w.astype("<f4").tobytes() for label, w in pairs)
    done = subprocess.run([str(program), *args], input=data, capture_output=True, check=check)
    out: dict[str, list[np.ndarray]] = {}
    for line in done.stdout.decode().splitlines():
        tag, *values = line.split()
        out.setdefault(tag, []).append(np.array([float(v) for v in values]))
    return done.returncode, out, done.stderr.decode()


@pytest.fixture(scope="module")
def kit(tiny_model, tiny_xy, tmp_path_factory):
    """(artifact with a streaming head, its export folder, compiled example, raw windows,
    labels, NumPy features), 4 bits."""
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X, y, bits=4)
    raw = B.raw(np.concatenate([X, -X[y == 0][:N_NEW]]))
    y = np.concatenate([y, np.full(N_NEW, len(B.CLASSES))])
    _, feats = forward_features(art.model, Device(art).normalize(raw))
    stats = H.batch_stats(feats[:N_FIT], y[:N_FIT], len(B.CLASSES))
    device = art.device.replace(head="slda", flip_steps=0, new_class_min=3)
    art = replace(art, head=stats, device=device)
    out = tmp_path_factory.mktemp("cstate")
    export_c(art, out)
    subprocess.run(["make", "-s", "-C", str(out), "CC=gcc", f"CFLAGS={CFLAGS}"], check=True)
    return art, out, out / "qcore_example", raw, y, feats


def _labels(y: np.ndarray) -> list[int]:
    """Labels of the windows the C learns: N_FIT.. (the new class's last)."""
    return [int(v) for v in y[N_FIT:]]


@pytest.fixture(scope="module")
def learnt(kit, tmp_path_factory):
    """The blob the C saves after learning windows N_FIT.. (the last ones as a class it
    adds), and the statistics NumPy's head learns from the same windows."""
    art, _, program, raw, y, feats = kit
    path = tmp_path_factory.mktemp("blob") / "state.bin"
    _run(program, raw[N_FIT:], _labels(y), "--save", str(path))
    stats = art.head
    for i, label in enumerate(_labels(y), start=N_FIT):
        stats = H.grow(stats, max(stats.n_classes, label + 1))
        stats = H.update(stats, feats[i : i + 1], np.array([label]))
    return path.read_bytes(), stats


def test_a_c_state_reads_back_and_the_numpy_device_predicts_as_the_c(kit, learnt):
    art, _, program, raw, _, _ = kit
    blob, want = learnt
    assert len(blob) == blob_bytes(4 * art.model.filters, len(B.CLASSES) + 4)
    state = import_state(blob, art)
    assert state.class_names == (*B.CLASSES, "mcu-1")
    assert state.runtime["mcu"] == {"windows": len(raw) - N_FIT, "classes_added": 1}
    assert state.head is not None and state.head.n_learnt == 1  # the added class is young
    for got, exp in ((state.head.count, want.count), (state.head.mean, want.mean)):
        np.testing.assert_allclose(got, exp, rtol=0, atol=1e-4 * np.abs(exp).max())
    scale = np.abs(want.scatter).max()
    np.testing.assert_allclose(state.head.scatter, want.scatter, rtol=0, atol=1e-4 * scale)
    # the C, resumed from its blob, and the NumPy device from the imported state
    path = Path(program.parent / "learnt.bin")
    path.write_bytes(blob)
    _, out, _ = _run(program, raw, [-1] * len(raw), "--load", str(path))
    c_pred = np.array(out["P"])[:, 0].astype(np.int64)
    numpy_pred = Device(state, deployed=art).predict(raw)
    assert np.array_equal(c_pred, numpy_pred)
    assert (c_pred == len(B.CLASSES)).any()  # the class added on the C side is predicted
    assert out["W"][0][0] == len(raw) - N_FIT


def test_a_python_blob_loads_into_the_c(kit, learnt, tmp_path):
    art, _, program, raw, _, _ = kit
    want = learnt[1]
    path = tmp_path / "py.bin"
    path.write_bytes(encode_state(art, want, 7))
    assert path.read_bytes() == encode_state(art, decode_state(path.read_bytes(), art).stats, 7)
    _, out, _ = _run(program, raw[:1], [-1], "--load", str(path))
    for tag, exp in (("N", want.count), ("U", want.mean), ("S", want.scatter)):
        np.testing.assert_allclose(out[tag][0].reshape(exp.shape), exp, rtol=0, atol=1e-6)
    assert out["W"][0][0] == 7


def _broken(blob: bytes, art) -> dict[str, tuple[bytes, int, str]]:
    """Bad blobs: (bytes, the C's refusal code, Python's message)."""
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x10
    other = replace(art, normalizer_mean=art.normalizer_mean + np.float32(1))
    assert fingerprint(other) != fingerprint(art)
    magic = bytearray(blob)
    magic[0:4] = b"QCSX"
    return {
        "flipped": (bytes(flipped), -4, "CRC-32"),
        "truncated": (blob[:-9], -1, "truncated"),
        "too short": (blob[:20], -1, "too short"),
        "padded": (blob + b"\0", -1, "truncated or padded"),
        "magic": (bytes(magic), -2, "magic"),
        "other model": (encode_state(other, art.head, 0), -5, "another model"),
    }


@pytest.mark.parametrize(
    "case", ["flipped", "truncated", "too short", "padded", "magic", "other model"]
)
def test_a_bad_blob_is_refused_by_the_c_and_by_python(kit, learnt, tmp_path, case):
    art, out_dir, program, raw, _, _ = kit
    data, code, message = _broken(learnt[0], art)[case]
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    rc, _, err = _run(program, raw[:1], [-1], "--load", str(path), check=False)
    assert rc == 2 and f"refused: {code}" in err
    with pytest.raises(QCoreError, match=message):
        import_state(data, art)
    unchanged = tmp_path / "unchanged"
    (tmp_path / "unchanged.c").write_text(UNCHANGED_C)
    subprocess.run(
        ["gcc", *CFLAGS.split(), "-ffp-contract=off", f"-I{out_dir}", "-o", str(unchanged)]
        + [str(tmp_path / "unchanged.c"), str(out_dir / "qcore_rt.c")]
        + [str(out_dir / "qcore_model.c"), "-lm"],
        check=True,
    )
    done = subprocess.run([str(unchanged)], input=data, capture_output=True, check=True)
    assert done.stdout.decode().split() == [str(code), "1"]  # refused, state unchanged


def test_qcore_import_state_writes_a_state_qcore_device_continues(kit, learnt, tmp_path, capsys):
    art, out_dir, _, raw, _, _ = kit
    blob = tmp_path / "state.bin"
    blob.write_bytes(learnt[0])
    model = out_dir / "model.qcore"
    state = tmp_path / "state.qcore"
    argv = ["import-state", str(blob), "--artifact", str(model), "--out", str(state)]
    assert main([*argv, "--names", "jump"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == ["jump"] and report["windows"] == len(raw) - N_FIT
    resumed = load_state(state)
    assert resumed.class_names == (*B.CLASSES, "jump")
    expected = Device(import_state(learnt[0], art), deployed=art).predict(raw)
    assert np.array_equal(Device(resumed, deployed=art).predict(raw), expected)
    stream, predictions = tmp_path / "stream", tmp_path / "predictions.csv"
    stream.mkdir()
    np.savez(stream / "b0.npz", X=raw)
    device = ["device", str(model), "--state", str(state), "--stream", str(stream)]
    assert main([*device, "--predictions", str(predictions)]) == 0
    capsys.readouterr()
    got = [row["predicted"] for row in csv.DictReader(predictions.open())]
    assert got in ([resumed.class_names[k] for k in expected], [str(k) for k in expected])
    # a corrupted blob: an error, and no state file written
    blob.write_bytes(learnt[0][:-1] + bytes([learnt[0][-1] ^ 1]))
    fresh = tmp_path / "fresh.qcore"
    assert main(["import-state", str(blob), "--artifact", str(model), "--out", str(fresh)]) == 2
    assert "CRC-32" in capsys.readouterr().err
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.qcore.*"))
    # wrong number of names
    blob.write_bytes(learnt[0])
    assert main([*argv, "--names", "a,b"]) == 2
    assert "1 class(es), 2 name(s)" in capsys.readouterr().err
