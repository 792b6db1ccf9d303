"""The qcore file container: named NumPy arrays and a JSON header, checksummed (NumPy only).

The container knows arrays, dtypes and a JSON object, nothing about what they mean: the
artifact (:mod:`qcore.edge.artifact`) decides which header fields and arrays a file holds.

File layout (integers little-endian)::

    offset  bytes  field
    0       6      magic b"QCORE\\0"
    6       2      format version, uint16
    8       32     SHA-256 of every byte from offset 40 to the end of the file
    40      8      header length H, uint64
    48      8      payload length P, uint64
    56      H      JSON header, UTF-8
    56+H    P      raw array bytes, back to back in the header's order, no padding

The JSON header is an object whose last field, ``arrays``, describes the payload: one
entry per array with its ``name``, ``dtype`` (``float32``, ``int32`` or ``uint8``, all
explicitly little-endian so files are portable), ``shape`` (at most 4 dimensions),
``offset`` (within the payload), ``nbytes`` and, for codes packed with
:func:`qcore.core.packing.pack_bits`, ``bits``. The JSON is compact and rejects NaN and
infinities both ways, so the same content always gives the same bytes.

Design decisions:

* **No pickle, ever.** Arrays are read with ``np.frombuffer`` after their dtype, shape,
  offset and size have been validated against the payload, whose length has been
  validated against the real file length: a forged header cannot make the reader
  allocate more than the file's own size.
* **Every byte is accounted for**: the checksum covers lengths, header and payload; the
  arrays must tile the payload exactly, and a reader must take every array it declares
  (:meth:`Reader.finish`), so no unexpected data rides along.
* **Versions**: the fixed header carries the format version; files of every version in
  :data:`READABLE_VERSIONS` share this container and differ only in their header fields.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import numpy as np

from qcore.core.packing import packed_size, unpack_bits
from qcore.errors import QCoreError

MAGIC = b"QCORE\0"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_FIXED = struct.Struct("<6sH32sQQ")  # magic, version, sha256, header length, payload length
FIXED_SIZE = _FIXED.size  # 56
_HASHED_FROM = 40  # the checksum covers the two lengths, the header and the payload

# The only dtypes a file may declare (explicit little-endian, so files are portable).
DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
}
_MAX_NDIM = 4


class FileError(QCoreError):
    """A problem already phrased with the file's name (not re-wrapped by a decoder)."""


def corrupt(source: str, msg: str) -> QCoreError:
    """The error for a file whose content is damaged or forged."""
    return FileError(f"artifact {source} is corrupt: {msg}")


def is_count(v: Any, lo: int = 0) -> bool:
    """Whether ``v`` is a true ``int`` (not a bool) of at least ``lo``."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def get_field(obj: Any, key: str, kind: type | tuple[type, ...], source: str) -> Any:
    """``obj[key]`` if ``obj`` is a dict holding a ``kind`` there (bools are not ints)."""
    if not isinstance(obj, dict) or key not in obj:
        raise corrupt(source, f"header field {key!r} is missing")
    v = obj[key]
    if isinstance(v, bool) and kind is not bool:
        raise corrupt(source, f"header field {key!r} has type bool")
    if not isinstance(v, kind):
        raise corrupt(source, f"header field {key!r} has type {type(v).__name__}")
    return v


# ------------------------------------------------------------------------------ writing


class Writer:
    """Collects arrays in order and builds the ``arrays`` table of the header."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.chunks: list[bytes] = []
        self.offset = 0

    def add(
        self,
        name: str,
        values: np.ndarray,
        dtype: str,
        shape: tuple[int, ...] | None = None,
        bits: int | None = None,
    ) -> None:
        """Append ``values`` as ``dtype``; ``shape``/``bits`` describe packed codes."""
        arr = np.ascontiguousarray(values, dtype=DTYPES[dtype])
        data = arr.tobytes()
        entry: dict[str, Any] = {
            "name": name,
            "dtype": dtype,
            "shape": list(arr.shape if shape is None else shape),
            "offset": self.offset,
            "nbytes": len(data),
        }
        if bits is not None:
            entry["bits"] = int(bits)
        self.entries.append(entry)
        self.chunks.append(data)
        self.offset += len(data)


def encode_container(header: dict[str, Any], w: Writer) -> tuple[bytes, int]:
    """The file bytes of ``header`` plus ``w``'s arrays table and payload, and the JSON
    header's length. Deterministic: the same header and arrays give the same bytes."""
    try:
        head = json.dumps(
            {**header, "arrays": w.entries}, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    except ValueError as exc:  # a non-finite float among the header's values
        raise QCoreError(f"artifact holds a value JSON cannot store: {exc}") from None
    payload = b"".join(w.chunks)
    lengths = struct.pack("<QQ", len(head), len(payload))
    digest = hashlib.sha256()
    for part in (lengths, head, payload):
        digest.update(part)
    fixed = struct.pack("<6sH32s", MAGIC, FORMAT_VERSION, digest.digest())
    return fixed + lengths + head + payload, len(head)


# ------------------------------------------------------------------------------ reading


def _reject_constant(token: str) -> None:
    raise ValueError(f"non-finite number {token} in the header")


class Reader:
    """Validated views into the payload, handed out by name and expected dtype."""

    def __init__(self, payload: memoryview, entries: Any, source: str) -> None:
        self.payload, self.source = payload, source
        self.entries: dict[str, dict[str, Any]] = {}
        self.used: set[str] = set()
        if not isinstance(entries, list):
            raise corrupt(source, "the arrays table is not a list")
        offset = 0
        for e in entries:
            self._check_entry(e, offset)
            self.entries[e["name"]] = e
            offset += e["nbytes"]
        if offset != len(payload):
            raise corrupt(source, f"arrays cover {offset} bytes, the payload has {len(payload)}")

    def _check_entry(self, e: Any, offset: int) -> None:
        """Everything about an entry is checked with Python ints before any allocation."""
        src = self.source
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise corrupt(src, "an array entry has no name")
        name = e["name"]
        if name in self.entries:
            raise corrupt(src, f"array {name} appears twice")
        dtype = e.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise FileError(
                f"artifact {src}: array {name} has unknown dtype {e.get('dtype')!r} "
                f"(allowed: {', '.join(DTYPES)})"
            )
        shape = e.get("shape")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(map(is_count, shape)):
            raise corrupt(src, f"array {name} has an invalid shape {shape!r}")
        if not (is_count(e.get("offset")) and is_count(e.get("nbytes"))):
            raise corrupt(src, f"array {name} has an invalid offset or size")
        if e["offset"] != offset:
            raise corrupt(src, f"array {name} starts at {e['offset']}, expected {offset}")
        if e["nbytes"] > len(self.payload) - offset:
            raise corrupt(
                src,
                f"array {name} claims {e['nbytes']} bytes beyond the file's {len(self.payload)}",
            )
        count = math.prod(shape)
        if "bits" in e:
            bits = e["bits"]
            if e["dtype"] != "uint8" or not is_count(bits) or not 2 <= bits <= 8:
                raise corrupt(src, f"array {name} has invalid packing {bits!r}")
            want = packed_size(count, bits)
        else:
            want = count * DTYPES[e["dtype"]].itemsize
        if e["nbytes"] != want:
            raise corrupt(src, f"array {name} has {e['nbytes']} bytes, its shape needs {want}")

    def take(self, name: str, dtype: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A private copy of array ``name`` (unpacked if packed), checked against expectations."""
        e = self.entries.get(name)
        if e is None:
            raise corrupt(self.source, f"array {name} is missing")
        if e["dtype"] != dtype:
            raise corrupt(self.source, f"array {name} is {e['dtype']}, expected {dtype}")
        got = tuple(e["shape"])
        if shape is not None and got != tuple(shape):
            raise FileError(
                f"artifact {self.source}: array {name} has shape {got}, expected {tuple(shape)}"
            )
        self.used.add(name)
        raw = self.payload[e["offset"] : e["offset"] + e["nbytes"]]
        if "bits" in e:
            flat = unpack_bits(np.frombuffer(raw, dtype=np.uint8), e["bits"], math.prod(got))
            return flat.reshape(got)
        arr = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(got)
        return arr.astype(arr.dtype.newbyteorder("="), copy=True)  # own memory, native order

    def bits_of(self, name: str) -> int | None:
        """The packing bit-width of array ``name`` (``None``: not packed or absent)."""
        e = self.entries.get(name)
        return None if e is None else e.get("bits")

    def finish(self) -> None:
        """Raise unless every declared array has been taken."""
        unused = sorted(set(self.entries) - self.used)
        if unused:
            raise corrupt(self.source, f"unexpected arrays {unused[:3]}")


def parse_fixed(data: bytes | memoryview, source: str) -> tuple[int, int, bytes, int]:
    """Header and payload lengths, the stored digest and the format version; validates
    magic, version and the declared sizes against the real one."""
    n = len(data)
    head = bytes(data[: len(MAGIC)])
    if head != MAGIC[: len(head)]:  # a strict prefix of the magic counts as truncated
        raise QCoreError(f"{source} is not a qcore artifact (bad magic bytes)")
    if n < FIXED_SIZE:
        raise QCoreError(f"artifact {source} is truncated: {n} bytes, shorter than its header")
    _, version, digest, header_len, payload_len = _FIXED.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise QCoreError(
            f"artifact {source} has format version {version}; this qcore reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    # Both lengths come from the file; compare them with its real size before using them.
    expected = FIXED_SIZE + header_len + payload_len
    if n < expected:
        raise QCoreError(f"artifact {source} is truncated: {n} bytes, its header says {expected}")
    if n > expected:
        raise corrupt(source, f"{n - expected} bytes after the declared end")
    return header_len, payload_len, digest, version


def decode_container(data: bytes | memoryview, source: str) -> tuple[dict, Reader, int]:
    """``(header, reader, version)`` of verified file content: fixed header, checksum,
    JSON header and arrays table are checked; the caller takes the arrays it expects
    from ``reader`` and calls :meth:`Reader.finish`."""
    view = memoryview(data)
    header_len, _, digest, version = parse_fixed(view, source)
    if hashlib.sha256(view[_HASHED_FROM:]).digest() != digest:
        raise corrupt(source, "checksum mismatch")
    try:
        text = bytes(view[FIXED_SIZE : FIXED_SIZE + header_len]).decode("utf-8")
        header = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise corrupt(source, "the header is not valid UTF-8 JSON") from None
    entries = get_field(header, "arrays", list, source)
    return header, Reader(view[FIXED_SIZE + header_len :], entries, source), version
