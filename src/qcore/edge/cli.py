"""``qcore export`` and ``qcore device``: ship an artifact, run a device on a batch stream.

:func:`add_commands` registers both on the ``qcore`` parser (``qcore.cli``); this module
also runs on its own (``python -m qcore.edge.cli ...``) with the same two commands, so
a device needs nothing beyond NumPy and ``qcore.edge``.

``qcore device`` reads labelled batches of *un-normalised* windows, either the ``*.npz``
files of a folder in sorted name order, or ``--stream -``: consecutive frames on stdin,
each an 8-byte little-endian unsigned length followed by that many bytes of one ``.npz``
archive (what ``np.savez`` writes); the stream ends at EOF on a frame boundary. Each
archive holds ``X`` float ``(n, channels, window_length)`` and ``y`` int ``(n,)``. After
every step the state is saved atomically and one JSON line is printed; a bad batch
prints ``{"batch": ..., "error": ...}`` instead, is skipped and changes nothing. A final
summary goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from qcore.config import DeviceConfig, override_device, settings_help
from qcore.edge.artifact import (
    artifact_sizes,
    build_artifact,
    load_artifact,
    read_regular_file,
    save_artifact,
)
from qcore.edge.device import Device
from qcore.edge.state import resume_or_start, save_state
from qcore.errors import QCoreError

__all__ = ["add_commands", "build_artifact", "load_batch", "read_frames", "main"]

FRAME_PREFIX = struct.Struct("<Q")
MAX_BATCH_BYTES = 256 << 20  # per archive and per array: a bound on what one batch allocates
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------ batches


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
        raise QCoreError(f"batch {name}: array {key} holds Python objects")
    if math.prod(shape) * dtype.itemsize > MAX_BATCH_BYTES:
        raise QCoreError(
            f"batch {name}: array {key} of shape {shape} exceeds {MAX_BATCH_BYTES} bytes"
        )


def load_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` from the bytes of one ``.npz`` archive (no pickle, bounded allocation)."""
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise QCoreError(f"batch {name} is not a readable .npz archive: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise QCoreError(f"batch {name} is a single .npy array, not an .npz with X and y")
    with npz:
        for key in ("X", "y"):
            if key not in npz.files:
                raise QCoreError(f"batch {name} has no array {key!r} (found {npz.files})")
        try:
            for key in ("X", "y"):
                _check_member(npz, key, name)
            return npz["X"], npz["y"]
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


def _folder_batches(folder: Path) -> Iterator[tuple[str, bytes | QCoreError]]:
    if not folder.is_dir():
        raise QCoreError(f"stream folder {folder} does not exist")
    for path in sorted(folder.glob("*.npz")):
        try:
            if path.stat().st_size > MAX_BATCH_BYTES:
                raise QCoreError(f"batch file exceeds {MAX_BATCH_BYTES} bytes")
            yield path.name, read_regular_file(path, "batch")
        except (QCoreError, OSError) as exc:
            yield path.name, QCoreError(str(exc))


# ----------------------------------------------------------------------------- commands


def _cmd_export(args: argparse.Namespace) -> None:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise QCoreError(f"run directory {run_dir} does not exist")
    src = run_dir / f"deployed-{args.bits}bit.qcore"
    if not src.exists():
        found = sorted(
            int(p.name[len("deployed-") : -len("bit.qcore")])
            for p in run_dir.glob("deployed-*bit.qcore")
            if p.name[len("deployed-") : -len("bit.qcore")].isdigit()
        )
        listed = ", ".join(map(str, found)) if found else "none"
        raise QCoreError(f"no {args.bits}-bit artifact in {run_dir}; bit-widths found: {listed}")
    art = load_artifact(src)  # verifies magic, version, checksum and shapes
    save_artifact(args.out, art)
    print(json.dumps(artifact_sizes(art)))


def _cmd_device(args: argparse.Namespace) -> None:
    if not Path(args.state).resolve().parent.is_dir():  # fail before the first step, not after
        raise QCoreError(f"folder of state file {args.state} does not exist")
    art, resumed = resume_or_start(args.state, args.artifact)
    # the artifact's (or the state's) device settings, with this run's overrides
    device = Device(art, override_device(art.device, args.set or []))
    if args.stream == "-":
        batches = read_frames(sys.stdin.buffer)
    else:
        batches = _folder_batches(Path(args.stream))
    processed = skipped = 0
    for name, payload in batches:
        try:
            if isinstance(payload, QCoreError):
                raise payload
            report = device.step(*load_batch(payload, name))
        except QCoreError as exc:
            skipped += 1
            print(json.dumps({"batch": name, "error": str(exc)}), flush=True)
            continue
        save_state(args.state, device.art)
        processed += 1
        print(json.dumps({"batch": name, **report}), flush=True)
    summary = {"processed": processed, "skipped": skipped, "resumed": resumed, "state": args.state}
    print(json.dumps(summary), file=sys.stderr, flush=True)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` and ``device`` on a subparsers object (``func`` set on each)."""
    exp = sub.add_parser("export", help="verify a run's deployed artifact and write it out")
    exp.add_argument("run_dir", metavar="RUN_DIR", help="output folder of `qcore run`")
    exp.add_argument("--bits", type=int, required=True, help="bit-width of the deployed model")
    exp.add_argument("--out", required=True, metavar="FILE", help="artifact file to write")
    exp.set_defaults(func=_cmd_export)

    dev = sub.add_parser(
        "device",
        help="run a device on a stream of labelled batches",
        description="Predict each batch, calibrate by policy with the one device step, save "
        "the state after every batch. Settings come from the artifact's device section (or "
        "the resumed state's) and --set overrides, which the state then records.",
        epilog=settings_help(DeviceConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev.add_argument("artifact", metavar="FILE", help="artifact to start from")
    dev.add_argument(
        "--stream", required=True, metavar="DIR", help="folder of *.npz batches, or - for stdin"
    )
    dev.add_argument("--state", required=True, help="state file: resumed if it exists")
    dev.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a device setting"
    )
    dev.set_defaults(func=_cmd_device)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point with the two edge commands (errors: one line, exit 2)."""
    parser = argparse.ArgumentParser(prog="qcore-edge", description=__doc__.split("\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except QCoreError as exc:
        print(f"qcore: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
