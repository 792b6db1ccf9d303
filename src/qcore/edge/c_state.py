"""The C runtime's state blob (``qc_state_save`` / ``qc_state_load``) on the Python side:
read one back into a device state, or write one (NumPy only); and ``qcore import-state``
(:func:`add_command`), registered by :mod:`qcore.edge.cli`.

A firmware persists the streaming head it learnt as one blob of ``QC_STATE_BYTES``
(:func:`qcore.edge.c_export.blob_bytes`), all little-endian:

====== ============================ =====================================================
offset field                        meaning
====== ============================ =====================================================
0      ``b"QCST"``                  magic
4      u32 version                  :data:`VERSION`
8      32 bytes fingerprint         the SHA-256 of the exported ``model.qcore``
                                    (:func:`qcore.edge.c_export.fingerprint`)
40     u32 ``D``                    pooled features
44     u32 ``Kmax``                 classes the head has room for (``QC_MAX_CLASSES``)
48     u32 ``K``                    classes the head knows (``Kshipped <= K <= Kmax``)
52     u32 step                     windows learnt on the device
56     4 bytes                      reserved, zero
60     f32 ``count[Kmax]``          per class (slots from ``K`` on: zero)
       f32 ``mean[Kmax][D]``
       f32 scatter lower triangle   row ``i``: columns ``0..i``, ``D (D + 1) / 2`` values
end-4  u32 CRC-32                   of every byte before it (IEEE, as :func:`zlib.crc32`)
====== ============================ =====================================================

:func:`import_state` reads a blob against the artifact it was exported from and returns
that artifact with the blob's head statistics: a device state ``qcore device`` continues
from. Classes the firmware added get names (the caller's, or ``mcu-1``, ``mcu-2``, ...).
The C runtime keeps no scatter of a class's own (what :func:`qcore.edge.head.drop` takes
out), so the state keeps the artifact's for the classes it shipped with and zero for the
classes added on the microcontroller: dropping one of those later leaves its windows'
share in the shared scatter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from qcore.core.fileio import read_regular_file
from qcore.edge.artifact import Artifact, decode_artifact
from qcore.edge.c_export import (
    EXTRA_CLASSES,
    STATE_HEADER,
    blob_bytes,
    fingerprint,
    head_stats,
    lower_triangle,
)
from qcore.edge.device import Device
from qcore.edge.head import HeadStats
from qcore.edge.state import ARTIFACT_KEY, save_state
from qcore.errors import QCoreError

MAGIC = b"QCST"
VERSION = 1
_HEAD = struct.Struct("<4sI32sIIII4x")  # magic, version, fingerprint, D, Kmax, K, step
MCU_KEY = "mcu"  # runtime: what the state blob said beyond the statistics


@dataclass(frozen=True)
class CState:
    """A decoded blob: the head statistics (``K`` classes, no class's own scatter), the
    windows learnt and the head's room ``Kmax``."""

    stats: HeadStats
    step: int
    max_classes: int


def encode_state(
    art: Artifact, stats: HeadStats, step: int, *, max_classes: int | None = None
) -> bytes:
    """The blob the C runtime exported from ``art`` saves when its head holds ``stats``
    after ``step`` windows (``max_classes``: its ``QC_MAX_CLASSES``, by default the
    exporter's, the shipped classes + :data:`~qcore.edge.c_export.EXTRA_CLASSES`)."""
    k0, d = head_stats(art).n_classes, stats.n_features
    kmax = k0 + EXTRA_CLASSES if max_classes is None else max_classes
    if not k0 <= stats.n_classes <= kmax or d != 4 * art.model.filters:
        raise QCoreError(
            f"a state of {stats.n_classes} classes and {d} features does not fit this "
            f"model's C head ({k0}..{kmax} classes, {4 * art.model.filters} features)"
        )
    if not 0 <= step < 1 << 32:
        raise QCoreError(f"the step must fit 32 bits, got {step}")
    count = np.zeros(kmax, "<f4")
    mean = np.zeros((kmax, d), "<f4")
    count[: stats.n_classes], mean[: stats.n_classes] = stats.count, stats.mean
    head = _HEAD.pack(MAGIC, VERSION, fingerprint(art), d, kmax, stats.n_classes, step)
    body = head + count.tobytes() + mean.tobytes()
    body += lower_triangle(stats.scatter).astype("<f4").tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def decode_state(blob: bytes, art: Artifact) -> CState:
    """The statistics in ``blob``, refused with a :class:`QCoreError` unless it is a whole,
    uncorrupted state of the C runtime exported from ``art``."""
    if len(blob) < STATE_HEADER + 4 or blob[:4] != MAGIC:
        what = "too short" if len(blob) < STATE_HEADER + 4 else "no qcore state (wrong magic)"
        raise QCoreError(f"the state blob is {what}")
    magic, version, sha, d, kmax, k, step = _HEAD.unpack_from(blob)
    if version != VERSION:
        raise QCoreError(f"the state blob has format version {version}, this qcore reads {VERSION}")
    if d > 1 << 16 or kmax > 1 << 16 or len(blob) != blob_bytes(d, kmax):
        raise QCoreError(
            f"the state blob is {len(blob)} bytes, its header says {blob_bytes(d, kmax)}: "
            "truncated or padded"
        )
    crc = struct.unpack_from("<I", blob, len(blob) - 4)[0]
    if zlib.crc32(blob[:-4]) != crc:
        raise QCoreError("the state blob's CRC-32 does not match: it is corrupted")
    k0 = head_stats(art).n_classes
    if sha != fingerprint(art) or d != 4 * art.model.filters:
        raise QCoreError(
            "the state blob belongs to another model: its fingerprint is not this "
            "artifact's (give the artifact the C sources were exported from, model.qcore)"
        )
    if not k0 <= k <= kmax:
        raise QCoreError(f"the state blob holds {k} classes, outside {k0}..{kmax}")
    n_values = (len(blob) - STATE_HEADER - 4) // 4
    values = np.frombuffer(blob, "<f4", offset=STATE_HEADER, count=n_values)
    count, mean = values[:kmax], values[kmax : kmax + kmax * d].reshape(kmax, d)
    tri = values[kmax + kmax * d :]
    if not np.isfinite(values).all() or (count < 0).any() or count[k:].any():
        raise QCoreError("the state blob holds statistics out of range")
    scatter = np.zeros((d, d), np.float32)
    rows, cols = np.tril_indices(d)
    scatter[rows, cols] = tri
    scatter[cols, rows] = tri
    stats = HeadStats(count[:k].copy(), mean[:k].copy(), scatter)
    return CState(stats, int(step), int(kmax))


def import_state(
    blob: bytes,
    art: Artifact,
    *,
    names: Sequence[str] | None = None,
    artifact_sha256: str | None = None,
) -> Artifact:
    """``art`` (the artifact the C sources were exported from) with the head the blob
    holds: a device state. ``names``: the names of the classes the firmware added, in
    order (default ``mcu-1``, ``mcu-2``, ...); ``artifact_sha256``: the SHA-256 of
    ``art``'s file, which binds the state to it as ``qcore device`` does."""
    got = decode_state(blob, art)
    shipped = head_stats(art)
    added = got.stats.n_classes - shipped.n_classes
    if names is None:
        free = (f"mcu-{i}" for i in range(1, added + len(art.class_names) + 2))
        names = [n for n in free if n not in art.class_names][:added]
    names = list(names)
    if len(names) != added:
        raise QCoreError(
            f"the firmware added {added} class(es), {len(names)} name(s) given: "
            f"{', '.join(names) or 'none'}"
        )
    d = got.stats.n_features
    learnt = np.concatenate([shipped.learnt, np.zeros((added, d, d), np.float32)])
    stats = replace(got.stats, learnt=learnt)
    runtime = {**art.runtime, MCU_KEY: {"windows": got.step, "classes_added": added}}
    if artifact_sha256 is not None:
        runtime[ARTIFACT_KEY] = artifact_sha256
    return replace(art, head=stats, class_names=(*art.class_names, *names), runtime=runtime)


def _cmd_import_state(args: argparse.Namespace) -> None:
    blob = read_regular_file(args.blob, "state blob")
    shipped = read_regular_file(args.artifact, "artifact")
    art = decode_artifact(shipped, str(args.artifact))
    names = None if args.names is None else [n.strip() for n in args.names.split(",")]
    sha = hashlib.sha256(shipped).hexdigest()
    state = import_state(blob, art, names=names, artifact_sha256=sha)
    Device(state, deployed=art)  # what `qcore device` will do with it: refuse it now
    save_state(args.out, state)  # atomic: the old file or the whole new one
    assert state.head is not None  # set by import_state
    report = {
        "state": args.out,
        "classes": list(state.class_names),
        "added": list(state.class_names[len(art.class_names) :]),
        "count": [round(float(c), 3) for c in state.head.count],
        "windows": state.runtime[MCU_KEY]["windows"],
    }
    print(json.dumps(report))


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``qcore import-state`` on a subparsers object."""
    imp = sub.add_parser(
        "import-state",
        help="read a state blob saved by the exported C runtime back into a device state",
        description="BLOB: the bytes qc_state_save wrote on the microcontroller (docs/mcu.md). "
        "It is checked (magic, version, size, CRC-32) and must come from the C sources "
        "exported from ARTIFACT (their model.qcore); the result, written atomically, is "
        "ARTIFACT with the blob's streaming head: a state `qcore device ARTIFACT --state "
        "STATE` continues.",
    )
    imp.add_argument("blob", metavar="BLOB", help="the state blob")
    imp.add_argument(
        "--artifact",
        required=True,
        metavar="ARTIFACT",
        help="the artifact the C sources were exported from (the export's model.qcore)",
    )
    imp.add_argument("--out", required=True, metavar="STATE", help="device state file to write")
    imp.add_argument(
        "--names",
        metavar="A,B,...",
        help="names of the classes the firmware added, in order (default mcu-1, mcu-2, ...)",
    )
    imp.set_defaults(func=_cmd_import_state)
