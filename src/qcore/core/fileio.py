"""Files written whole or not at all, and files read only when they are regular files.

:func:`write_atomic` is the project's one way to replace a file (artifacts, device
states, results), so a crash or a full disk leaves the old content or the new one, never
a mixture.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path

from qcore.errors import QCoreError

PRIVATE = 0o600


def write_atomic(path: str | Path, data: bytes, mode: int = PRIVATE) -> None:
    """Replace ``path`` by ``data`` so that it always holds the old or the new content.

    Writes a temporary file ``.NAME.*.tmp`` in the same folder (same file system, so
    ``os.replace`` is atomic), flushes and fsyncs it, renames it over ``path`` and fsyncs
    the folder so the rename itself survives a power cut. The file gets ``mode``
    (default 0o600: device states hold training samples). On
    any failure the temporary file is removed and the old ``path`` is untouched.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise QCoreError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:  # platforms without directory handles (Windows): nothing to sync
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def finite_json(data: object) -> object:
    """``data`` with every non-finite float (NaN, infinities, also NumPy's) replaced by
    None, so that it is strict JSON (``null``) once dumped; lists and tuples become lists."""
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_json_atomic(path: str | Path, data: object, mode: int = 0o644) -> None:
    """:func:`write_atomic` of ``data`` as indented strict JSON (non-finite floats written
    as ``null``, see :func:`finite_json`), creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite_json(data), indent=2, allow_nan=False)
    write_atomic(path, text.encode("utf-8"), mode)


def read_regular_file(path: str | Path, what: str = "artifact") -> bytes:
    """All bytes of a regular file (never a FIFO or device, whose reads need not end)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise QCoreError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise QCoreError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise QCoreError(f"{what} {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise QCoreError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
