"""The artifact file: exact round trip, rejection of bad files, atomic 0o600 writes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.core.qmodel import QuantizedModel
from qcore.core.quant import QuantizedTensor
from qcore.coreset.core import Core
from qcore.coreset.storage import compress_windows, decompress_windows
from qcore.edge.artifact import (
    Artifact,
    artifact_sizes,
    build_artifact,
    decode_artifact,
    encode_artifact,
    load_artifact,
    save_artifact,
)
from qcore.edge.container import FIXED_SIZE
from qcore.edge.flip import N_FEATURES, FlipNet
from qcore.edge.head import batch_stats
from qcore.edge.infer import forward, forward_features
from qcore.errors import QCoreError

torch.set_num_threads(1)

CLASSES = ("low", "mid", "high")


class Norm:
    """Stand-in for qcore.data.scenario.Normalizer (anything with mean and std)."""

    mean = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    std = np.array([2.0, 0.5, 1.5], dtype=np.float32)


def random_flipnet(qm: QuantizedModel, seed: int = 0, hidden: int = 8) -> FlipNet:
    rng = np.random.default_rng(seed)
    feedback = {
        name: rng.standard_normal((qm.n_classes, layer.weight.shape[0])).astype(np.float32)
        for name, layer in qm.layers.items()
    }
    return FlipNet(
        feedback,
        rng.standard_normal((N_FEATURES, hidden)).astype(np.float32),
        rng.standard_normal(hidden).astype(np.float32),
        rng.standard_normal((hidden, 3)).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
        0.7,
    )


def make_artifact(tiny_model, tiny_xy, bits: int | None = 4, core_size: int = 12) -> Artifact:
    X, y = tiny_xy
    qm = to_qmodel(quantize_model(tiny_model, bits, X, 0))
    core = Core(
        X[:core_size],
        y[:core_size],
        np.arange(core_size, dtype=np.int64) % 4,
        np.full(core_size, -1, dtype=np.int64),
    )
    net = None if bits is None else random_flipnet(qm)
    config = {"bits": bits, "core_size": core_size, "tags": ["a", "b"]}
    head = batch_stats(forward_features(qm, X)[1], y, qm.n_classes)
    return build_artifact(qm, core, net, Norm(), CLASSES, config, head=head)


@pytest.fixture
def art(tiny_model, tiny_xy) -> Artifact:
    return make_artifact(tiny_model, tiny_xy)


def reforge(data: bytes, mutate: Callable[[dict], None]) -> bytes:
    """Rewrite the JSON header and recompute lengths and checksum: a *valid-looking* forgery."""
    header_len, payload_len = struct.unpack_from("<QQ", data, 40)
    header = json.loads(data[FIXED_SIZE : FIXED_SIZE + header_len])
    mutate(header)
    head = json.dumps(header).encode()
    payload = data[FIXED_SIZE + header_len :]
    lengths = struct.pack("<QQ", len(head), payload_len)
    digest = hashlib.sha256(lengths + head + payload).digest()
    return data[:8] + digest + lengths + head + payload


def entry(header: dict, name: str) -> dict:
    return next(e for e in header["arrays"] if e["name"] == name)


# ------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, None])
def test_round_trip_is_exact(tiny_model, tiny_xy, bits: int | None, tmp_path: Path) -> None:
    art = make_artifact(tiny_model, tiny_xy, bits)
    art.step = 7
    path = tmp_path / "a.qcore"
    save_artifact(path, art)
    back = load_artifact(path)
    assert back.model.bits == bits and back.step == 7
    assert back.class_names == CLASSES and back.config == art.config
    for name, layer in art.model.layers.items():
        got = back.model.layers[name]
        assert got.act == layer.act and got.kernel_size == layer.kernel_size
        if bits is None:
            assert np.array_equal(got.weight, layer.weight)
        else:
            assert isinstance(got.weight, QuantizedTensor)
            assert got.weight.bits == bits and got.weight.q.dtype == np.uint8
            assert np.array_equal(got.weight.q, layer.weight.q)
            assert np.array_equal(got.weight.scale, layer.weight.scale)
            assert np.array_equal(got.weight.zero_point, layer.weight.zero_point)
        assert (got.bias is None) == (layer.bias is None)
        if layer.bias is not None:
            assert np.array_equal(got.bias, layer.bias)
    for name, bn in art.model.norms.items():
        got = back.model.norms[name]
        assert got.eps == bn.eps
        for key in ("weight", "bias", "running_mean", "running_var"):
            assert np.array_equal(getattr(got, key), getattr(bn, key))
    assert np.array_equal(back.normalizer_mean, Norm.mean)
    assert np.array_equal(back.normalizer_std, Norm.std)
    if bits is not None:
        net, got = art.flipnet, back.flipnet
        assert got.threshold == net.threshold and list(got.feedback) == list(net.feedback)
        for name in net.feedback:
            assert np.array_equal(got.feedback[name], net.feedback[name])
        for key in ("w1", "b1", "w2", "b2"):
            assert np.array_equal(getattr(got, key), getattr(net, key))
    else:
        assert back.flipnet is None
    # build_artifact already applied the core compression: the core comes back exactly
    for key in ("X", "y", "score", "origin"):
        assert np.array_equal(getattr(back.core, key), getattr(art.core, key))
    X = tiny_xy[0]
    assert np.array_equal(forward(back.model, X), forward(art.model, X))
    assert encode_artifact(back) == path.read_bytes()  # deterministic and idempotent


def test_core_compression_error_bound_and_idempotence(tiny_xy) -> None:
    rng = np.random.default_rng(1)
    X = np.concatenate([tiny_xy[0], 5 * rng.standard_normal((4, 3, 32)).astype(np.float32)])
    X[0, 1] = np.abs(X[0, 1])  # an all-positive channel (grid starts at 0)
    X[1, 2] = 0.0  # a flat zero channel
    codes, scale, zp = compress_windows(X)
    assert codes.dtype == zp.dtype == np.uint8 and scale.shape == zp.shape == X.shape[:2]
    back = decompress_windows(codes, scale, zp)
    span = np.maximum(X.max(axis=2), 0) - np.minimum(X.min(axis=2), 0)
    # documented bound: half a step of the window/channel grid, (max - min) / 510
    assert np.all(np.abs(back - X) <= (span / 510 * (1 + 1e-5) + 1e-7)[:, :, None])
    again = compress_windows(back)
    for a, b in zip(again, (codes, scale, zp), strict=True):
        assert np.array_equal(a, b)


def test_sizes_add_up_and_match_device_accounting(art: Artifact) -> None:
    sizes = artifact_sizes(art)
    data = encode_artifact(art)
    assert sizes["total"] == len(data)
    assert sum(v for k, v in sizes.items() if k != "total") == len(data)
    db = art.model.device_bytes()
    assert sizes["weights"] == db["weights"] + db["head_bias"]  # packed at the real bit-width
    c = art.model.n_channels
    assert sizes["norms"] == db["norms"] + 2 * 4 * c  # plus the input normaliser
    n_act = sum(layer.act is not None for layer in art.model.layers.values())
    assert sizes["act"] == 6 * n_act
    assert sizes["flipnet"] == art.flipnet.nbytes() - 4  # threshold lives in the header
    n, c, t = art.core.X.shape
    assert sizes["core"] == n * c * t + 5 * n * c + 3 * 4 * n


def test_weights_shrink_with_bits(tiny_model, tiny_xy) -> None:
    w = [artifact_sizes(make_artifact(tiny_model, tiny_xy, b))["weights"] for b in (2, 4, 8)]
    assert w[0] < w[1] < w[2]


# ---------------------------------------------------------------------------- rejection


def test_wrong_magic(art: Artifact) -> None:
    data = encode_artifact(art)
    with pytest.raises(QCoreError, match="not a qcore artifact"):
        decode_artifact(b"PK\x03\x04" + data[4:])
    with pytest.raises(QCoreError, match="not a qcore artifact"):
        decode_artifact(b"hello")


def test_unsupported_version_names_both(art: Artifact) -> None:
    data = bytearray(encode_artifact(art))
    data[6:8] = struct.pack("<H", 9)
    with pytest.raises(QCoreError, match=r"version 9.*versions 1, 2"):
        decode_artifact(bytes(data))


@pytest.mark.parametrize("where", [FIXED_SIZE + 3, -1, 45])
def test_any_changed_byte_is_corrupt(art: Artifact, where: int) -> None:
    data = bytearray(encode_artifact(art))
    data[where] ^= 0x01
    with pytest.raises(QCoreError, match="corrupt|truncated"):
        decode_artifact(bytes(data))


def test_checksum_mismatch(art: Artifact) -> None:
    data = bytearray(encode_artifact(art))
    data[-5] ^= 0xFF  # inside the payload (core origins)
    with pytest.raises(QCoreError, match="corrupt: checksum mismatch"):
        decode_artifact(bytes(data))


@pytest.mark.parametrize("keep", [0, 3, 20, FIXED_SIZE, FIXED_SIZE + 10, -1])
def test_truncated_file(art: Artifact, keep: int, tmp_path: Path) -> None:
    data = encode_artifact(art)
    path = tmp_path / "t.qcore"
    path.write_bytes(data[:keep])
    with pytest.raises(QCoreError, match="truncated"):
        load_artifact(path)


def test_trailing_bytes_rejected(art: Artifact) -> None:
    with pytest.raises(QCoreError, match="corrupt"):
        decode_artifact(encode_artifact(art) + b"\0")


def test_forged_lengths_rejected_before_reading(art: Artifact) -> None:
    data = bytearray(encode_artifact(art))
    data[40:48] = struct.pack("<Q", 1 << 60)  # header length far beyond the file
    with pytest.raises(QCoreError, match="truncated"):
        decode_artifact(bytes(data))


def test_forged_huge_array_rejected_without_allocating(art: Artifact, tmp_path: Path) -> None:
    def huge(header: dict) -> None:
        e = entry(header, "weights/head/scale")
        e["shape"] = [1 << 40, 1 << 20]
        e["nbytes"] = (1 << 60) * 4

    path = tmp_path / "forged.qcore"
    path.write_bytes(reforge(encode_artifact(art), huge))
    tracemalloc.start()
    try:
        with pytest.raises(QCoreError, match="corrupt: array weights/head/scale claims"):
            load_artifact(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # the file is ~17 kB: nothing near the forged size


def test_forged_shape_inconsistent_with_size(art: Artifact) -> None:
    def grow(header: dict) -> None:
        entry(header, "weights/head/scale")["shape"] = [1000]

    with pytest.raises(QCoreError, match="shape needs"):
        decode_artifact(reforge(encode_artifact(art), grow))


def test_unknown_dtype_rejected(art: Artifact) -> None:
    def f64(header: dict) -> None:
        entry(header, "normalizer/mean")["dtype"] = "float64"

    with pytest.raises(QCoreError, match="unknown dtype 'float64'"):
        decode_artifact(reforge(encode_artifact(art), f64))


def test_object_dtype_rejected(art: Artifact) -> None:
    def obj(header: dict) -> None:
        entry(header, "normalizer/mean")["dtype"] = "object"

    with pytest.raises(QCoreError, match="unknown dtype"):
        decode_artifact(reforge(encode_artifact(art), obj))


def test_layer_shape_inconsistent_with_model_dims(art: Artifact) -> None:
    def channels(header: dict) -> None:
        header["model"]["n_channels"] = 5

    with pytest.raises(QCoreError, match="inconsistent: layer .* channels/filters imply"):
        decode_artifact(reforge(encode_artifact(art), channels))

    def filters(header: dict) -> None:
        header["model"]["filters"] = 8

    with pytest.raises(QCoreError, match="channels/filters imply"):
        decode_artifact(reforge(encode_artifact(art), filters))


def test_unexpected_and_missing_arrays_rejected(art: Artifact) -> None:
    def rename(header: dict) -> None:
        entry(header, "normalizer/std")["name"] = "normalizer/extra"

    with pytest.raises(QCoreError, match="normalizer/std is missing"):
        decode_artifact(reforge(encode_artifact(art), rename))


def test_non_finite_header_value_rejected(art: Artifact) -> None:
    def nan_eps(header: dict) -> None:
        header["norms"][0]["eps"] = float("nan")

    with pytest.raises(QCoreError, match="not valid UTF-8 JSON"):
        decode_artifact(reforge(encode_artifact(art), nan_eps))


def test_constructor_rejects_inconsistent_pieces(art: Artifact) -> None:
    with pytest.raises(QCoreError, match="class names"):
        Artifact(art.model, art.core, art.flipnet, Norm.mean, Norm.std, ("a", "b"), {})
    with pytest.raises(QCoreError, match="normalizer mean"):
        Artifact(art.model, art.core, art.flipnet, np.zeros(2), Norm.std, CLASSES, {})
    with pytest.raises(QCoreError, match="window_length"):
        Artifact(art.model, None, None, Norm.mean, Norm.std, CLASSES, {})
    with pytest.raises(QCoreError, match="JSON"):
        Artifact(art.model, art.core, None, Norm.mean, Norm.std, CLASSES, {"x": {1, 2}})
    net = art.flipnet
    bad = FlipNet({"head": np.zeros((3, 7), np.float32)}, net.w1, net.b1, net.w2, net.b2, 0.5)
    with pytest.raises(QCoreError, match="feedback head"):
        Artifact(art.model, art.core, bad, Norm.mean, Norm.std, CLASSES, {})


# ------------------------------------------------------------------------------ writing


def test_file_mode_is_0600_even_over_a_public_file(art: Artifact, tmp_path: Path) -> None:
    path = tmp_path / "a.qcore"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    old_umask = os.umask(0)
    try:
        save_artifact(path, art)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_failed_replace_keeps_old_file_and_leaves_no_temp(
    art: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.qcore"
    save_artifact(path, art)
    before = path.read_bytes()
    newer = Artifact(
        art.model, art.core, art.flipnet, Norm.mean, Norm.std, CLASSES, art.config, step=99
    )

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(QCoreError, match="cannot write artifact"):
        save_artifact(path, newer)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_artifact(path).step == art.step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.qcore"]


def test_interrupt_mid_write_leaves_no_temp(
    art: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.qcore"

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(path, art)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_and_missing_file(art: Artifact, tmp_path: Path) -> None:
    with pytest.raises(QCoreError, match="does not exist"):
        save_artifact(tmp_path / "no" / "a.qcore", art)
    with pytest.raises(QCoreError, match="does not exist"):
        load_artifact(tmp_path / "missing.qcore")
    with pytest.raises(QCoreError, match="not a regular file"):
        load_artifact(tmp_path)


def test_edge_modules_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import qcore.edge.artifact, qcore.edge.state, qcore.edge.drift\n"
        "import qcore.edge.device, qcore.edge.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
