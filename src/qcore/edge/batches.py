"""Stream batches for ``qcore device``: ``.npz`` archives from a folder or from stdin frames.

A batch is one ``.npz`` archive (what ``np.savez`` writes) holding ``X`` float
``(n, channels, window_length)`` and ``y`` int ``(n,)``. Batches come either from the
``*.npz`` files of a folder, in sorted name order (:func:`folder_batches`), or from
consecutive frames on a byte stream (:func:`read_frames`): each an 8-byte little-endian
unsigned length (:data:`FRAME_PREFIX`) followed by that many bytes of one archive; the
stream ends at EOF on a frame boundary.

Both sources yield ``(name, payload or error)``, so a bad batch is reported and skipped
instead of stopping the device. Nothing here trusts the input: frames and files larger
than :data:`MAX_BATCH_BYTES` are skipped without being held in memory, archives are read
without pickle, and each array's declared size is checked against the same cap before
NumPy allocates it. NumPy only.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from qcore.core.fileio import read_regular_file
from qcore.errors import QCoreError

FRAME_PREFIX = struct.Struct("<Q")
MAX_BATCH_BYTES = 256 << 20  # per archive and per array: a bound on what one batch allocates
_CHUNK = 1 << 20


def _check_member(npz: Any, key: str, name: str) -> None:
    """Reject an array whose declared size exceeds the cap *before* NumPy allocates it."""
    with npz.zip.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise QCoreError(f"batch {name}: array {key} uses unsupported .npy format {version}")
    if dtype.hasobject:
        raise QCoreError(
            f"batch {name}: array {key} holds Python objects (pickled data, which qcore "
            "refuses to load)"
        )
    if math.prod(shape) * dtype.itemsize > MAX_BATCH_BYTES:
        raise QCoreError(
            f"batch {name}: array {key} of shape {shape} exceeds {MAX_BATCH_BYTES} bytes"
        )


def _not_npz(data: bytes) -> str | None:
    """Why ``data`` cannot be an ``.npz`` archive, judged by its first bytes, or None."""
    if data.startswith((b"PK", b"\x93NUMPY")):
        return None
    if data[:1] == b"\x80":
        return "holds pickled Python data, which qcore refuses to load"
    return "is not an .npz archive (a text or CSV file? qcore reads .npz batches only)"


def load_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(X, y or None)`` from the bytes of one ``.npz`` archive (no pickle, bounded
    allocation). A batch without ``y`` carries no labels: the device only predicts it."""
    why = _not_npz(data)
    if why is not None:
        raise QCoreError(f"batch {name} {why}")
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise QCoreError(f"batch {name} is not a readable .npz archive: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise QCoreError(f"batch {name} is a single .npy array, not an .npz with X (and y)")
    with npz:
        if "X" not in npz.files:
            raise QCoreError(f"batch {name} has no array 'X' (found {npz.files})")
        keys = [k for k in ("X", "y") if k in npz.files]
        try:
            for key in keys:
                _check_member(npz, key, name)
            return npz["X"], (npz["y"] if "y" in keys else None)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
            raise QCoreError(f"batch {name} is damaged: {exc}") from None


def _read_exact(stream: IO[bytes], n: int, keep: bool = True) -> tuple[bytes, int]:
    """Up to ``n`` bytes (fewer only at EOF), read in chunks so memory follows real data.

    With ``keep=False`` the bytes are discarded (skipping an oversized frame).
    Returns ``(data, count)``.
    """
    out = bytearray()
    count = 0
    while count < n:
        chunk = stream.read(min(_CHUNK, n - count))
        if not chunk:
            break
        count += len(chunk)
        if keep:
            out += chunk
    return bytes(out), count


def read_frames(stream: IO[bytes]) -> Iterator[tuple[str, bytes | QCoreError]]:
    """``(name, payload or error)`` per length-prefixed frame of ``stream``.

    An oversized frame is skipped (read and discarded) and reported as an error; a
    stream that ends inside a frame reports an error and stops.
    """
    i = 0
    while True:
        head, got = _read_exact(stream, FRAME_PREFIX.size)
        if got == 0:
            return
        i += 1
        name = f"stdin:{i}"
        if got < FRAME_PREFIX.size:
            yield name, QCoreError("stdin ended inside a frame's length prefix")
            return
        (length,) = FRAME_PREFIX.unpack(head)
        too_big = length > MAX_BATCH_BYTES
        payload, got = _read_exact(stream, length, keep=not too_big)
        if got < length:
            yield name, QCoreError(f"stdin ended inside a frame: {got} of {length} bytes")
            return
        if too_big:
            yield name, QCoreError(f"frame of {length} bytes exceeds {MAX_BATCH_BYTES} bytes")
        else:
            yield name, payload


def folder_batches(folder: Path) -> Iterator[tuple[str, bytes | QCoreError]]:
    """``(name, payload or error)`` per file of ``folder``, in sorted name order: the
    ``*.npz`` batches, and an error for every other visible file (nothing is skipped
    silently; names starting with ``.`` are ignored)."""
    if folder.is_file():
        raise QCoreError(
            f"stream {folder} is a file: give a folder of .npz batches, or - for stdin"
        )
    if not folder.is_dir():
        raise QCoreError(f"stream folder {folder} does not exist")
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if path.suffix != ".npz":
            yield path.name, QCoreError(f"{path.name} is not an .npz batch: not read")
            continue
        try:
            if path.stat().st_size > MAX_BATCH_BYTES:
                raise QCoreError(f"batch file exceeds {MAX_BATCH_BYTES} bytes")
            yield path.name, read_regular_file(path, "batch")
        except (QCoreError, OSError) as exc:
            yield path.name, QCoreError(str(exc))
