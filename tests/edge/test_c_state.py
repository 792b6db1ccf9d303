"""The C runtime's state blob: saved by the compiled runtime, read back by
:mod:`qcore.edge.c_state` into a device state the NumPy device continues from with the
same predictions; written by Python, loaded by the C; refused by both when corrupted,
truncated or of another model."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import replace
from pathlib import Path

import edge_kit as B
import numpy as np
import pytest

from qcore.cli import main
from qcore.edge import head as H
from qcore.edge.artifact import save_artifact
from qcore.edge.c_export import export_c, fingerprint
from qcore.edge.c_state import blob_bytes, decode_state, encode_state, import_state
from qcore.edge.device import Device
from qcore.edge.infer import forward_features
from qcore.edge.state import ARTIFACT_KEY, load_state
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


def test_the_blob_follows_its_layout_and_encode_state_refuses_what_does_not_fit(kit) -> None:
    art = kit[0]
    k0, d = len(B.CLASSES), 4 * art.model.filters
    size = blob_bytes(3, 2)  # 60 + 4 (2 counts + 2 x 3 means + 6 scatter values) + 4
    assert size == 120 and isinstance(size, int)
    # a head with room for one class more than it ships with, full, at the last 32-bit step
    full = H.grow(art.head, k0 + 1)
    blob = encode_state(art, full, 2**32 - 1, max_classes=k0 + 1)
    assert len(blob) == blob_bytes(d, k0 + 1)
    assert struct.unpack_from("<4sI", blob) == (b"QCST", 1) and blob[8:40] == fingerprint(art)
    assert struct.unpack_from("<IIII4x", blob, 40) == (d, k0 + 1, k0 + 1, 2**32 - 1)
    got = decode_state(blob, art)
    assert (got.step, got.max_classes, got.stats.n_classes) == (2**32 - 1, k0 + 1, k0 + 1)
    for step in (2**32, -1):
        with pytest.raises(QCoreError, match=rf"^the step must fit 32 bits, got {step}$"):
            encode_state(art, art.head, step)
    narrow = H.HeadStats(art.head.count, art.head.mean[:, 1:], art.head.scatter[1:, 1:])
    message = (
        f"a state of {k0} classes and {d - 1} features does not fit this model's C head "
        f"({k0}..{k0 + 4} classes, {d} features)"
    )
    with pytest.raises(QCoreError, match=f"^{re.escape(message)}$"):
        encode_state(art, narrow, 0)
    with pytest.raises(QCoreError, match=re.escape(f"({k0}..{k0 + 1} classes")):
        encode_state(art, H.grow(art.head, k0 + 2), 0, max_classes=k0 + 1)


def test_qcore_import_state_reports_names_binds_and_checks_what_it_reads(
    kit, learnt, tmp_path, capsys
) -> None:
    art, out_dir, _, _, _, _ = kit
    model = out_dir / "model.qcore"
    stats = learnt[1]
    count = stats.count.copy()
    count[0] += np.float32(2**-11)  # a count of 3 decimals and more: reported to 3
    blob, state = tmp_path / "state.bin", tmp_path / "state.qcore"
    blob.write_bytes(encode_state(art, replace(stats, count=count), 5))
    assert main(["import-state", str(blob), "--artifact", str(model), "--out", str(state)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "state": str(state),
        "classes": [*B.CLASSES, "mcu-1"],
        "added": ["mcu-1"],
        "count": [round(float(c), 3) for c in count],
        "windows": 5,
    }
    assert report["count"][0] != round(float(count[0]), 4)
    assert all(type(c) is float for c in report["count"])
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert load_state(state).runtime[ARTIFACT_KEY] == sha  # bound to the artifact's file
    # what is missing or damaged is named
    cases = {
        "state blob": (tmp_path / "none.bin", model),
        "artifact": (blob, tmp_path / "none.qcore"),
    }
    for what, (blob_path, model_path) in cases.items():
        out = ["--out", str(tmp_path / "x.qcore")]
        assert main(["import-state", str(blob_path), "--artifact", str(model_path), *out]) == 2
        missing = blob_path if what == "state blob" else model_path
        assert f"{what} {missing} does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.qcore"
    garbage.write_bytes(b"not an artifact at all")
    assert main(["import-state", str(blob), "--artifact", str(garbage), *out]) == 2
    assert str(garbage) in capsys.readouterr().err
    # an artifact without head statistics: `qcore device` would refuse the state, so no state
    bare = replace(art, head=None, step=0)
    save_artifact(tmp_path / "bare.qcore", bare)
    blob.write_bytes(encode_state(bare, art.head, 0))
    args = ["import-state", str(blob), "--artifact", str(tmp_path / "bare.qcore"), *out]
    assert main(args) == 2
    assert "no streaming head statistics" in capsys.readouterr().err
    assert not (tmp_path / "x.qcore").exists()


def test_decode_state_names_each_refusal_at_its_bound(kit) -> None:
    art = kit[0]
    blob = encode_state(art, art.head, 0)

    def refused(data: bytes, message: str) -> None:
        with pytest.raises(QCoreError, match=f"^{re.escape(message)}"):
            decode_state(data, art)

    # 64 bytes (header and CRC) are not too short; 63 are, whatever they hold
    refused(blob[:64], "the state blob is 64 bytes, its header says")
    refused(blob[:63], "the state blob is too short")
    refused(b"QCSX" + blob[4:63], "the state blob is too short")
    refused(b"QCSX" + blob[4:64], "the state blob is no qcore state (wrong magic)")
    refused(blob[:4] + struct.pack("<I", 2) + blob[8:], "the state blob has format version 2, "
            "this qcore reads 1")  # fmt: skip
    # room for 65536 classes is read; 65537 is refused, whatever the size says
    assert decode_state(encode_state(art, art.head, 0, max_classes=1 << 16), art).max_classes == (
        1 << 16
    )
    big = encode_state(art, art.head, 0, max_classes=(1 << 16) + 1)
    refused(big, f"the state blob is {len(big)} bytes, its header says {len(big)}")


def test_added_classes_get_free_names_and_a_wrong_count_of_names_is_refused(kit) -> None:
    art = kit[0]
    taken = replace(art, class_names=("mcu-1", "mcu-2", *B.CLASSES[2:]))
    blob = encode_state(taken, H.grow(taken.head, len(B.CLASSES) + 2), 3)
    state = import_state(blob, taken)
    assert state.class_names[len(B.CLASSES) :] == ("mcu-3", "mcu-4")
    assert ARTIFACT_KEY not in state.runtime  # bound only to a file it was given
    with pytest.raises(QCoreError, match=r"2 class\(es\), 0 name\(s\) given: none$"):
        import_state(blob, taken, names=[])
    with pytest.raises(QCoreError, match=r"2 class\(es\), 3 name\(s\) given: a, b, c$"):
        import_state(blob, taken, names=["a", "b", "c"])


def _crc(blob: bytes | bytearray) -> bytes:
    """``blob`` with its CRC-32 made right again."""
    return bytes(blob[:-4]) + struct.pack("<I", zlib.crc32(blob[:-4]))


def test_decode_state_refuses_wrong_statistics_with_their_own_message(kit) -> None:
    art = kit[0]
    k0, d = len(B.CLASSES), 4 * art.model.filters
    blob = encode_state(art, art.head, 0)

    def refused(data: bytes, message: str) -> None:
        with pytest.raises(QCoreError, match=f"^{re.escape(message)}$"):
            decode_state(data, art)

    refused(blob + b"\0", f"the state blob is {len(blob) + 1} bytes, its header says "
            f"{len(blob)}: truncated or padded")  # fmt: skip
    refused(blob[:-1] + bytes([blob[-1] ^ 1]), "the state blob's CRC-32 does not match: it is "
            "corrupted")  # fmt: skip
    other = replace(art, normalizer_mean=art.normalizer_mean + np.float32(1))
    refused(encode_state(other, art.head, 0), "the state blob belongs to another model: its "
            "fingerprint is not this artifact's (give the artifact the C sources were exported "
            "from, model.qcore)")  # fmt: skip
    fewer = bytearray(blob)
    fewer[48:52] = struct.pack("<I", k0 - 1)
    refused(_crc(fewer), f"the state blob holds {k0 - 1} classes, outside {k0}..{k0 + 4}")
    # each of: a negative count, a value not finite, a count in a slot past K (HeadStats
    # refuses the first two, so they are written into the bytes)
    bad = []
    for offset, value in ((60, -1.0), (60 + 4 * (k0 + 4), np.nan), (60 + 4 * k0, 1.0)):
        wrong = bytearray(blob)
        wrong[offset : offset + 4] = struct.pack("<f", value)
        bad.append(_crc(wrong))
    for data in bad:
        refused(data, "the state blob holds statistics out of range")
    assert len(blob) == blob_bytes(d, k0 + 4)


def test_qcore_import_state_needs_its_artifact_and_output_and_says_so(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["import-state", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    usage = "usage: qcore import-state [-h] --artifact ARTIFACT --out STATE [--names A,B,...] BLOB"
    assert text.startswith(usage)
    for line in (
        "BLOB the state blob",
        "--artifact ARTIFACT the artifact the C sources were exported from (the export's "
        "model.qcore)",
        "--out STATE device state file to write",
        "--names A,B,... names of the classes the firmware added, in order (default mcu-1, "
        "mcu-2, ...)",
    ):
        assert line in text
    for missing, argv in (("--artifact", ["--out", "s"]), ("--out", ["--artifact", "m"])):
        with pytest.raises(SystemExit):
            main(["import-state", "blob", *argv])
        assert f"required: {missing}" in capsys.readouterr().err


def test_an_artifact_without_head_statistics_starts_the_c_head_empty(kit) -> None:
    art = kit[0]
    bare = replace(art, head=None)
    k0, d = len(B.CLASSES), 4 * art.model.filters
    blob = encode_state(bare, art.head, 9)  # the head the firmware learnt from nothing
    assert len(blob) == blob_bytes(d, k0 + 4)
    got = decode_state(blob, bare)
    assert (got.stats.n_classes, got.stats.n_features, got.max_classes) == (k0, d, k0 + 4)
    state = import_state(blob, bare)
    assert state.head is not None and state.head.learnt.shape == (0, d, d)
    np.testing.assert_array_equal(state.head.count, art.head.count)


def test_the_export_reports_the_size_of_the_blob_the_c_saves(kit, learnt, tmp_path) -> None:
    art = kit[0]
    report = export_c(art, tmp_path)
    assert report["state_bytes"] == len(learnt[0]) == blob_bytes(4 * art.model.filters, 7)
    assert type(report["state_bytes"]) is int
