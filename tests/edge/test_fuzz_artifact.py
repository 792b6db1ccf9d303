"""Fuzzing the artifact loader (hypothesis, bounded and derandomised for CI).

Whatever bytes it is given, :func:`decode_artifact` either returns a valid artifact or
raises :class:`QCoreError`; it never raises anything else, never runs code from the file
(no pickle path exists: arrays come from ``np.frombuffer``) and never allocates much more
than the file's own size, even for forged headers that pass the checksum.

Three generators: arbitrary bytes; byte-level mutations of a real artifact (flips,
truncation, insertion), checked both as they are and with the checksum recomputed so the
parser behind it is reached; and JSON-level forgeries that replace one value anywhere in
the header by an arbitrary JSON value, re-checksummed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.coreset.core import Core
from qcore.edge.artifact import Artifact, build_artifact, decode_artifact, encode_artifact
from qcore.edge.container import FIXED_SIZE
from qcore.edge.flip import N_FEATURES, FlipNet
from qcore.edge.head import batch_stats
from qcore.edge.infer import forward_features
from qcore.errors import QCoreError

torch.set_num_threads(1)

# The suite runs a fixed, bounded set of examples (same ones every run: CI never flakes on a
# new one). QCORE_FUZZ_EXAMPLES=N runs N fresh random examples per test instead, for a
# longer hunt: QCORE_FUZZ_EXAMPLES=5000 pytest tests/edge/test_fuzz_artifact.py
_HUNT = int(os.environ.get("QCORE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_HUNT or 150,
    deadline=None,
    derandomize=not _HUNT,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class _Norm:
    mean = np.zeros(3, np.float32)
    std = np.ones(3, np.float32)


class _File(bytes):
    """Artifact bytes with a short repr (hypothesis prints fixtures of failing examples)."""

    def __repr__(self) -> str:
        return f"<valid artifact, {len(self)} bytes>"


@pytest.fixture(scope="module")
def valid(tiny_model, tiny_xy) -> bytes:
    """The bytes of a real 3-bit artifact with a core, a flip network and head statistics."""
    X, y = tiny_xy
    qm = to_qmodel(quantize_model(tiny_model, 3, X, 0))
    rng = np.random.default_rng(0)
    net = FlipNet(
        {
            n: rng.standard_normal((3, l.weight.shape[0])).astype(np.float32)
            for n, l in qm.layers.items()
        },
        rng.standard_normal((N_FEATURES, 4)).astype(np.float32),
        np.zeros(4, np.float32),
        rng.standard_normal((4, 3)).astype(np.float32),
        np.zeros(3, np.float32),
        0.5,
    )
    core = Core(X[:6], y[:6], np.arange(6) % 3, np.full(6, -1))
    head = batch_stats(forward_features(qm, X)[1], y, 3)
    art = build_artifact(qm, core, net, _Norm(), ("a", "b", "c"), {"bits": 3}, head=head)
    return _File(encode_artifact(art))


def _rechecksum(data: bytes) -> bytes:
    """``data`` with its SHA-256 field set to the digest of its bytes from offset 40."""
    if len(data) < FIXED_SIZE:
        return data
    return data[:8] + hashlib.sha256(data[40:]).digest() + data[40:]


def _decode_bounded(data: bytes) -> Artifact | None:
    """Decode ``data``; None on QCoreError. Fails if decoding allocates far beyond its size."""
    tracemalloc.start()
    try:
        try:
            art = decode_artifact(data, "fuzz")
        except QCoreError as exc:
            assert str(exc), "an error must say what is wrong"
            art = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(data) + (2 << 20), (peak, len(data))
    return art


def _still_valid(art: Artifact) -> None:
    """An accepted file is a real artifact: it re-encodes and decodes to the same bytes."""
    again = encode_artifact(art)
    assert encode_artifact(decode_artifact(again)) == again


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_rejected_cleanly(data: bytes) -> None:
    assert _decode_bounded(data) is None
    assert _decode_bounded(b"QCORE\0\x01\x00" + data) is None


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, 255)),
)


def _mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, value in ops:
        if not buf:
            break
        i = where % len(buf)
        if kind == "flip":
            buf[i] ^= value
        elif kind == "cut":
            del buf[i:]
        else:
            buf.insert(i, value)
    return bytes(buf)


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_file_fails_the_checksum_or_loads(valid: bytes, ops) -> None:
    data = _mutate(valid, ops)
    art = _decode_bounded(data)
    assert (art is None) == (data != valid)


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_file_with_forged_checksum_is_rejected_or_valid(valid: bytes, ops) -> None:
    art = _decode_bounded(_rechecksum(_mutate(valid, ops)))
    if art is not None:
        _still_valid(art)


json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) to a value inside a parsed JSON document."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _forge(valid: bytes, edit) -> bytes:
    header_len, payload_len = struct.unpack_from("<QQ", valid, 40)
    header = json.loads(valid[FIXED_SIZE : FIXED_SIZE + header_len])
    edit(header)
    head = json.dumps(header).encode()
    return _rechecksum(
        valid[:8]
        + bytes(32)
        + struct.pack("<QQ", len(head), payload_len)
        + head
        + valid[FIXED_SIZE + header_len :]
    )


@FUZZ
@given(where=st.integers(0, 1 << 30), value=json_value, drop=st.booleans())
def test_forged_header_values_are_rejected_or_valid(valid: bytes, where, value, drop) -> None:
    header_len = struct.unpack_from("<Q", valid, 40)[0]
    paths = _paths(json.loads(valid[FIXED_SIZE : FIXED_SIZE + header_len]))
    path = paths[where % len(paths)]

    def edit(header: dict) -> None:
        parent = header
        for key in path[:-1]:
            parent = parent[key]
        if drop:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value

    art = _decode_bounded(_forge(valid, edit))
    if art is not None:
        _still_valid(art)


def test_the_fuzzed_file_itself_is_valid(valid: bytes) -> None:
    """The generators start from a file the loader accepts (or the fuzzing proves nothing)."""
    art = _decode_bounded(valid)
    assert art is not None and art.flipnet is not None and art.core is not None
    _still_valid(art)
    assert _decode_bounded(_rechecksum(valid)) is not None
    assert _decode_bounded(_forge(valid, lambda h: None)) is not None
