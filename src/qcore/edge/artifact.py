"""The deployable artifact: one versioned, checksummed binary file with all a device runs.

An :class:`Artifact` is the quantized model, the QCore (labelled samples kept on the
device), the flip network, the input normaliser, the class names, the run's settings and
the device's step counter. The same file format serves as the shipped artifact and as
the device's running state, which is rewritten after every stream step.

File layout (integers little-endian)::

    offset  bytes  field
    0       6      magic b"QCORE\\0"
    6       2      format version, uint16
    8       32     SHA-256 of every byte from offset 40 to the end of the file
    40      8      header length H, uint64
    48      8      payload length P, uint64
    56      H      JSON header, UTF-8
    56+H    P      raw array bytes, back to back in the header's order, no padding

The JSON header holds the scalars (model dimensions, bit-width, kernel sizes, BatchNorm
eps, flip threshold, class names, settings, step) and an ``arrays`` table whose entries
give each array's ``name``, ``dtype`` (``float32``, ``int32`` or ``uint8``), ``shape``,
``offset`` (within the payload), ``nbytes`` and, for packed weight codes, ``bits``.

Design decisions:

* **No pickle, ever.** Arrays are read with ``np.frombuffer`` after their dtype, shape,
  offset and size have been validated against the payload, whose length has been
  validated against the real file length: a forged header cannot make the loader
  allocate more than the file's own size.
* **Weights at their real bit-width**: codes packed with :func:`qcore.core.packing.pack_bits`,
  float32 per-channel scales, one byte per zero point (the accounting of
  :meth:`QuantizedModel.device_bytes`).
* **Activation parameters** are stored as float32 scale + uint8 zero point + uint8 bits:
  float32 is the precision inference computes with, so predictions are unchanged.
* **Core windows are 8-bit quantized** per window and channel (asymmetric, zero exactly
  representable, see :func:`compress_windows`): 1 byte per value plus 5 bytes per
  (window, channel) instead of 4 bytes per value. The error of a value is at most half a
  step, ``(max(x, 0) - min(x, 0)) / 510`` over its window and channel, i.e. 0.2 % of that
  range. A per-window grid (rather than one per channel over the whole core) makes the
  compression idempotent: the state is rewritten after every step, and samples that stay
  in the core are re-encoded to exactly the same codes instead of being re-rounded each
  time the rest of the core changes.
* **Atomic writes** (:func:`write_atomic`): temporary file in the target's folder, flush,
  fsync, ``os.replace``, fsync of the folder; mode 0o600 because the state holds
  training samples.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcore.config import DEVICE_KEYS, DeviceConfig
from qcore.core.fileio import PRIVATE, read_regular_file, write_atomic
from qcore.core.packing import pack_bits, packed_size, unpack_bits
from qcore.core.qmodel import BatchNorm, QLayer, QuantizedModel
from qcore.core.quant import QuantizedTensor
from qcore.coreset.core import Core
from qcore.coreset.storage import compress_windows, decompress_windows
from qcore.edge.flip import N_FEATURES, FlipNet
from qcore.errors import QCoreError

MAGIC = b"QCORE\0"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 kept the device settings inside ``config``
_FIXED = struct.Struct("<6sH32sQQ")  # magic, version, sha256, header length, payload length
FIXED_SIZE = _FIXED.size  # 56
_HASHED_FROM = 40  # the checksum covers the two lengths, the header and the payload

# The only dtypes a file may declare (explicit little-endian, so files are portable).
DTYPES = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4"), "uint8": np.dtype("u1")}
_MAX_NDIM = 4
_PARTS = {
    "weights": "weights",
    "act": "act",
    "norms": "norms",
    "normalizer": "norms",
    "flipnet": "flipnet",
    "core": "core",
}
FILE_MODE = PRIVATE


@dataclass
class Artifact:
    """Everything a device needs, as plain NumPy data.

    ``normalizer_mean``/``normalizer_std``: float32 ``(n_channels,)``, applied by the device
    to raw sensor windows. ``class_names``: one name per class. ``config``: the run's
    settings (JSON-serialisable; tuples come back as lists). The window length the model
    was trained on is ``config["window_length"]`` or, if absent, the core's. ``step``:
    stream batches the device has processed. ``device``: how the device calibrates (its
    own header section). ``runtime``: the device's running state besides model and core
    (JSON-serialisable, e.g. the drift detector's sums).
    """

    model: QuantizedModel
    core: Core | None
    flipnet: FlipNet | None
    normalizer_mean: np.ndarray
    normalizer_std: np.ndarray
    class_names: tuple[str, ...]
    config: dict = field(default_factory=dict)
    step: int = 0
    device: DeviceConfig = field(default_factory=DeviceConfig)
    runtime: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_structure(self.model)
        c = self.model.n_channels
        # Normalise the small arrays to the dtype they are stored and used in, so an
        # in-memory artifact equals the one read back from its file.
        self.normalizer_mean = np.asarray(self.normalizer_mean, dtype=np.float32)
        self.normalizer_std = np.asarray(self.normalizer_std, dtype=np.float32)
        for name, v in (("mean", self.normalizer_mean), ("std", self.normalizer_std)):
            if v.shape != (c,):
                raise QCoreError(f"normalizer {name} has shape {v.shape}, the model needs ({c},)")
            if not np.isfinite(v).all():
                raise QCoreError(f"normalizer {name} is not finite")
        if (self.normalizer_std <= 0).any():
            raise QCoreError("normalizer std must be positive")
        self.class_names = tuple(self.class_names)
        if len(self.class_names) != self.model.n_classes or not all(
            isinstance(n, str) for n in self.class_names
        ):
            raise QCoreError(
                f"need {self.model.n_classes} class names (strings), got {len(self.class_names)}"
            )
        if not isinstance(self.config, dict):
            raise QCoreError("artifact config must be a dict")
        try:
            json.dumps(self.config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise QCoreError(f"artifact config must be JSON-serialisable: {exc}") from None
        if not isinstance(self.device, DeviceConfig):
            raise QCoreError("artifact device settings must be a DeviceConfig")
        if not isinstance(self.runtime, dict):
            raise QCoreError("artifact runtime state must be a dict")
        try:
            json.dumps(self.runtime, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise QCoreError(f"artifact runtime state must be JSON-serialisable: {exc}") from None
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise QCoreError(f"artifact step must be an integer >= 0, got {self.step!r}")
        if self.core is not None:
            self._check_core(self.core)
        _ = self.window_length  # raises when neither the config nor a core defines it
        if self.flipnet is not None:
            self.flipnet = _check_flipnet(self.flipnet, self.model)

    def _check_core(self, core: Core) -> None:
        n, c, _ = core.X.shape
        if c != self.model.n_channels:
            raise QCoreError(f"core has {c} channels, the model {self.model.n_channels}")
        if core.X.dtype != np.float32:
            raise QCoreError(f"core windows must be float32, got {core.X.dtype}")
        if n and (core.y.min() < 0 or core.y.max() >= self.model.n_classes):
            raise QCoreError(f"core labels leave 0..{self.model.n_classes - 1}")

    @property
    def window_length(self) -> int:
        """Time steps per window (int >= 1)."""
        wl = self.config.get("window_length")
        core_t = None if self.core is None else int(self.core.X.shape[2])
        if wl is None:
            if core_t is None:
                raise QCoreError("artifact needs config['window_length'] or a core")
            return core_t
        if isinstance(wl, bool) or not isinstance(wl, int) or wl < 1:
            raise QCoreError(f"config window_length must be an integer >= 1, got {wl!r}")
        if core_t is not None and core_t != wl:
            raise QCoreError(f"core windows have {core_t} time steps, window_length is {wl}")
        return wl


def build_artifact(
    qm: QuantizedModel,
    core: Core | None,
    flipnet: FlipNet | None,
    normalizer: Any,
    class_names: tuple[str, ...] | list[str],
    config: dict,
    window_length: int | None = None,
    device: DeviceConfig | None = None,
) -> Artifact:
    """An :class:`Artifact` at step 0 from the cloud side's pieces.

    ``normalizer``: anything with float ``mean`` and ``std`` of shape ``(n_channels,)``
    (e.g. :class:`qcore.data.scenario.Normalizer`). ``config`` is copied; the window length
    (``window_length``, else the core's) is recorded in it so a device without a core
    can still validate its input. ``device``: the device's settings (default: every
    device setting at its default).
    """
    cfg = dict(config)
    if window_length is not None:
        cfg["window_length"] = int(window_length)
    elif "window_length" not in cfg and core is not None:
        cfg["window_length"] = int(core.X.shape[2])
    if core is not None:
        # The stored core is what the device will really hold: apply the compression now,
        # so the artifact returned here equals the one read back from its file.
        core = Core(
            decompress_windows(*compress_windows(core.X)),
            core.y.astype(np.int64),
            core.score.astype(np.int64),
            core.origin.astype(np.int64),
        )
    return Artifact(
        model=qm,
        core=core,
        flipnet=flipnet,
        normalizer_mean=np.asarray(normalizer.mean, dtype=np.float32),
        normalizer_std=np.asarray(normalizer.std, dtype=np.float32),
        class_names=tuple(class_names),
        config=cfg,
        device=DeviceConfig() if device is None else device,
    )


# --------------------------------------------------------------------------- validation


def check_structure(qm: QuantizedModel) -> None:
    """Raise unless every layer and norm has the shape the model's dimensions imply.

    The edge forward pass derives the network from which keys exist, so this is where a
    description that does not form an InceptionTime is rejected: each block reads
    ``n_channels`` (block 0) or ``4 * filters`` channels; an optional 1x1 bottleneck to
    ``filters``; three odd-kernel convolutions ``convs.0..2`` and a 1x1 ``pool_conv`` of
    ``filters`` outputs each (so the BatchNorm sees ``4 * filters``); shortcuts with a
    1x1 conv exactly when their input width differs; a head ``(n_classes, 4 * filters)``.
    """
    f, width = qm.filters, 4 * qm.filters
    want_layers: dict[str, tuple[int, ...]] = {}
    want_norms: dict[str, int] = {}
    res_in = qm.n_channels
    for d in range(qm.depth):
        p = f"blocks.{d}"
        n_in = qm.n_channels if d == 0 else width
        branch_in = n_in
        if f"{p}.bottleneck" in qm.layers:
            want_layers[f"{p}.bottleneck"] = (f, n_in, 1)
            branch_in = f
        for i in range(3):
            name = f"{p}.convs.{i}"
            k = qm.layers[name].kernel_size if name in qm.layers else 0
            if k % 2 == 0:
                raise QCoreError(f"layer {name} is missing or has an even kernel size")
            want_layers[name] = (f, branch_in, k)
        want_layers[f"{p}.pool_conv"] = (f, n_in, 1)
        want_norms[f"{p}.bn"] = width
        s = f"shortcuts.{d}"
        if f"{s}.bn" in qm.norms:
            want_norms[f"{s}.bn"] = width
            if f"{s}.conv" in qm.layers:
                want_layers[f"{s}.conv"] = (width, res_in, 1)
            elif res_in != width:
                raise QCoreError(f"shortcut {s} joins {res_in} to {width} channels without a conv")
            res_in = width
    want_layers["head"] = (qm.n_classes, width)
    extra = sorted(set(qm.layers) - set(want_layers)) + sorted(set(qm.norms) - set(want_norms))
    missing = sorted(set(want_layers) - set(qm.layers)) + sorted(set(want_norms) - set(qm.norms))
    if extra or missing:
        raise QCoreError(
            f"model layers do not form an InceptionTime: extra {extra}, missing {missing}"
        )
    for name, shape in want_layers.items():
        layer = qm.layers[name]
        if tuple(layer.weight.shape) != shape:
            raise QCoreError(
                f"layer {name} has shape {tuple(layer.weight.shape)}, the model's "
                f"channels/filters imply {shape}"
            )
        if name != "head" and layer.bias is not None:
            raise QCoreError(f"layer {name} is a convolution and must be bias-free")
        wbits = layer.weight.bits if isinstance(layer.weight, QuantizedTensor) else None
        if wbits != qm.bits:
            raise QCoreError(f"layer {name} has bit-width {wbits}, the model {qm.bits}")
    for name, channels in want_norms.items():
        if qm.norms[name].n_channels != channels:
            raise QCoreError(
                f"BatchNorm {name} has {qm.norms[name].n_channels} channels, expected {channels}"
            )


def _check_flipnet(net: FlipNet, qm: QuantizedModel) -> FlipNet:
    """``net`` with float32 arrays, or raise if it does not fit ``qm``."""
    if qm.bits is None:
        raise QCoreError("a flip network needs a quantized model, this one is float")
    unknown = sorted(set(net.feedback) - set(qm.layers))
    if unknown:
        raise QCoreError(f"flip network has feedback for unknown layers {unknown}")
    f32 = {name: np.asarray(b, dtype=np.float32) for name, b in net.feedback.items()}
    for name, b in f32.items():
        want = (qm.n_classes, int(qm.layers[name].weight.shape[0]))
        if b.shape != want:
            raise QCoreError(f"flip feedback {name} has shape {b.shape}, expected {want}")
    w1, b1, w2, b2 = (np.asarray(a, dtype=np.float32) for a in (net.w1, net.b1, net.w2, net.b2))
    hidden = w1.shape[1] if w1.ndim == 2 else -1
    if w1.shape != (N_FEATURES, hidden) or hidden < 1:
        raise QCoreError(f"flip network w1 has shape {w1.shape}, expected ({N_FEATURES}, hidden)")
    if b1.shape != (hidden,) or w2.shape != (hidden, 3) or b2.shape != (3,):
        raise QCoreError("flip network b1/w2/b2 shapes do not match its hidden width")
    if not all(np.isfinite(a).all() for a in (w1, b1, w2, b2, *f32.values())):
        raise QCoreError("flip network arrays must be finite")
    threshold = float(net.threshold)
    if not math.isfinite(threshold):
        raise QCoreError(f"flip threshold must be finite, got {net.threshold}")
    return FlipNet(f32, w1, b1, w2, b2, threshold)


# ------------------------------------------------------------------------------ writing


class _Writer:
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


def _as_uint8(values: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values)
    if v.size and (int(v.min()) < 0 or int(v.max()) > 255):
        raise QCoreError(f"{what} must lie in 0..255 to be stored in one byte")
    return v.astype(np.uint8)


def _as_int32(values: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values)
    info = np.iinfo(np.int32)
    if v.size and (int(v.min()) < info.min or int(v.max()) > info.max):
        raise QCoreError(f"{what} does not fit in int32")
    return v.astype(np.int32)


def _encode(art: Artifact) -> tuple[bytes, list[dict[str, Any]], int]:
    """File bytes, the arrays table and the JSON header length of ``art``."""
    qm = art.model
    w = _Writer()
    layers_meta = []
    act_names, act_scale, act_zp, act_bits = [], [], [], []
    for name, layer in qm.layers.items():
        wt = layer.weight
        if isinstance(wt, QuantizedTensor):
            packed = pack_bits(wt.q, wt.bits)
            w.add(f"weights/{name}/codes", packed, "uint8", shape=wt.shape, bits=wt.bits)
            w.add(f"weights/{name}/scale", wt.scale, "float32")
            w.add(
                f"weights/{name}/zero_point",
                _as_uint8(wt.zero_point, f"{name} zero point"),
                "uint8",
            )
        else:
            w.add(f"weights/{name}/weight", wt, "float32")
        if layer.bias is not None:
            w.add(f"weights/{name}/bias", layer.bias, "float32")
        if layer.act is not None:
            act_names.append(name)
            act_scale.append(layer.act[0])
            act_zp.append(layer.act[1])
            act_bits.append(layer.act[2])
        layers_meta.append(
            {
                "name": name,
                "kernel_size": int(layer.kernel_size),
                "quantized": isinstance(wt, QuantizedTensor),
                "bias": layer.bias is not None,
            }
        )
    if act_names:
        w.add("act/scale", np.asarray(act_scale, dtype=np.float32), "float32")
        w.add("act/zero_point", _as_uint8(np.asarray(act_zp), "activation zero point"), "uint8")
        w.add("act/bits", np.asarray(act_bits, dtype=np.uint8), "uint8")
    for name, bn in qm.norms.items():
        for key in ("weight", "bias", "running_mean", "running_var"):
            w.add(f"norms/{name}/{key}", getattr(bn, key), "float32")
    w.add("normalizer/mean", art.normalizer_mean, "float32")
    w.add("normalizer/std", art.normalizer_std, "float32")
    flip_meta = None
    if art.flipnet is not None:
        net = art.flipnet
        for name, b in net.feedback.items():
            w.add(f"flipnet/feedback/{name}", b, "float32")
        for key in ("w1", "b1", "w2", "b2"):
            w.add(f"flipnet/{key}", getattr(net, key), "float32")
        flip_meta = {"threshold": float(net.threshold), "layers": list(net.feedback)}
    if art.core is not None:
        codes, scale, zp = compress_windows(art.core.X)
        w.add("core/codes", codes, "uint8")
        w.add("core/scale", scale, "float32")
        w.add("core/zero_point", zp, "uint8")
        w.add("core/y", _as_int32(art.core.y, "core labels"), "int32")
        w.add("core/score", _as_int32(art.core.score, "core scores"), "int32")
        w.add("core/origin", _as_int32(art.core.origin, "core origins"), "int32")
    header = {
        "model": {
            "n_channels": qm.n_channels,
            "n_classes": qm.n_classes,
            "filters": qm.filters,
            "depth": qm.depth,
            "bits": qm.bits,
        },
        "layers": layers_meta,
        "act_layers": act_names,
        "norms": [{"name": name, "eps": float(bn.eps)} for name, bn in qm.norms.items()],
        "flipnet": flip_meta,
        "core": art.core is not None,
        "class_names": list(art.class_names),
        "config": art.config,
        "device": art.device.to_dict(),
        "runtime": art.runtime,
        "step": art.step,
        "arrays": w.entries,
    }
    try:
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError as exc:  # a non-finite eps or threshold
        raise QCoreError(f"artifact holds a value JSON cannot store: {exc}") from None
    payload = b"".join(w.chunks)
    lengths = struct.pack("<QQ", len(head), len(payload))
    digest = hashlib.sha256()
    for part in (lengths, head, payload):
        digest.update(part)
    fixed = struct.pack("<6sH32s", MAGIC, FORMAT_VERSION, digest.digest())
    return fixed + lengths + head + payload, w.entries, len(head)


def encode_artifact(art: Artifact) -> bytes:
    """The complete file content of ``art`` (deterministic: same artifact, same bytes)."""
    return _encode(art)[0]


def artifact_sizes(art: Artifact) -> dict[str, int]:
    """Bytes of ``art``'s file per part; they sum to ``total``, the file size.

    ``weights``: packed codes, scales, zero points and the head bias; ``norms``: BatchNorm
    parameters and statistics plus the input normaliser; ``act``: activation parameters;
    ``flipnet``: feedback matrices and MLP; ``core``: compressed windows, labels, scores
    and origins; ``meta``: fixed header and JSON header.
    """
    data, entries, header_len = _encode(art)
    sizes = dict.fromkeys(("weights", "norms", "act", "flipnet", "core"), 0)
    for e in entries:
        sizes[_PARTS[e["name"].split("/", 1)[0]]] += e["nbytes"]
    sizes["meta"] = FIXED_SIZE + header_len
    sizes["total"] = len(data)
    return sizes


def save_artifact(path: str | Path, art: Artifact) -> None:
    """Write ``art`` to ``path`` atomically, mode 0o600."""
    data = encode_artifact(art)
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise QCoreError(f"cannot write artifact {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------------------ reading


class _FileError(QCoreError):
    """A problem already phrased with the file's name (not re-wrapped by the decoder)."""


def _bad(source: str, msg: str) -> QCoreError:
    return _FileError(f"artifact {source} is corrupt: {msg}")


def _reject_constant(token: str) -> None:
    raise ValueError(f"non-finite number {token} in the header")


def _check_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


class _Reader:
    """Validated views into the payload, handed out by name and expected dtype."""

    def __init__(self, payload: memoryview, entries: Any, source: str) -> None:
        self.payload, self.source = payload, source
        self.entries: dict[str, dict[str, Any]] = {}
        self.used: set[str] = set()
        if not isinstance(entries, list):
            raise _bad(source, "the arrays table is not a list")
        offset = 0
        for e in entries:
            self._check_entry(e, offset)
            self.entries[e["name"]] = e
            offset += e["nbytes"]
        if offset != len(payload):
            raise _bad(source, f"arrays cover {offset} bytes, the payload has {len(payload)}")

    def _check_entry(self, e: Any, offset: int) -> None:
        """Everything about an entry is checked with Python ints before any allocation."""
        src = self.source
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise _bad(src, "an array entry has no name")
        name = e["name"]
        if name in self.entries:
            raise _bad(src, f"array {name} appears twice")
        dtype = e.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise _FileError(
                f"artifact {src}: array {name} has unknown dtype {e.get('dtype')!r} "
                f"(allowed: {', '.join(DTYPES)})"
            )
        shape = e.get("shape")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(map(_check_int, shape)):
            raise _bad(src, f"array {name} has an invalid shape {shape!r}")
        if not (_check_int(e.get("offset")) and _check_int(e.get("nbytes"))):
            raise _bad(src, f"array {name} has an invalid offset or size")
        if e["offset"] != offset:
            raise _bad(src, f"array {name} starts at {e['offset']}, expected {offset}")
        if e["nbytes"] > len(self.payload) - offset:
            raise _bad(
                src,
                f"array {name} claims {e['nbytes']} bytes beyond the file's {len(self.payload)}",
            )
        count = math.prod(shape)
        if "bits" in e:
            bits = e["bits"]
            if e["dtype"] != "uint8" or not _check_int(bits) or not 2 <= bits <= 8:
                raise _bad(src, f"array {name} has invalid packing {bits!r}")
            want = packed_size(count, bits)
        else:
            want = count * DTYPES[e["dtype"]].itemsize
        if e["nbytes"] != want:
            raise _bad(src, f"array {name} has {e['nbytes']} bytes, its shape needs {want}")

    def take(self, name: str, dtype: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A private copy of array ``name`` (unpacked if packed), checked against expectations."""
        e = self.entries.get(name)
        if e is None:
            raise _bad(self.source, f"array {name} is missing")
        if e["dtype"] != dtype:
            raise _bad(self.source, f"array {name} is {e['dtype']}, expected {dtype}")
        got = tuple(e["shape"])
        if shape is not None and got != tuple(shape):
            raise _FileError(
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
        e = self.entries.get(name)
        return None if e is None else e.get("bits")

    def finish(self) -> None:
        unused = sorted(set(self.entries) - self.used)
        if unused:
            raise _bad(self.source, f"unexpected arrays {unused[:3]}")


def _get(obj: Any, key: str, kind: type | tuple[type, ...], source: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _bad(source, f"header field {key!r} is missing")
    v = obj[key]
    if isinstance(v, bool) and kind is not bool:
        raise _bad(source, f"header field {key!r} has type bool")
    if not isinstance(v, kind):
        raise _bad(source, f"header field {key!r} has type {type(v).__name__}")
    return v


def _parse_fixed(data: bytes | memoryview, source: str) -> tuple[int, int, bytes, int]:
    """Header and payload lengths and the stored digest; validates magic, version, size."""
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
        raise _bad(source, f"{n - expected} bytes after the declared end")
    return header_len, payload_len, digest, version


def decode_artifact(data: bytes | memoryview, source: str = "<bytes>") -> Artifact:
    """Parse and fully validate file content; raise :class:`QCoreError` naming the problem."""
    view = memoryview(data)
    header_len, _, digest, version = _parse_fixed(view, source)
    if hashlib.sha256(view[_HASHED_FROM:]).digest() != digest:
        raise _bad(source, "checksum mismatch")
    try:
        text = bytes(view[FIXED_SIZE : FIXED_SIZE + header_len]).decode("utf-8")
        header = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(source, "the header is not valid UTF-8 JSON") from None
    reader = _Reader(view[FIXED_SIZE + header_len :], _get(header, "arrays", list, source), source)
    try:
        art = _build(header, reader, source, version)
    except _FileError:
        raise
    except QCoreError as exc:  # a constructor's own check: say which file it was
        raise QCoreError(f"artifact {source} is inconsistent: {exc}") from None
    reader.finish()
    return art


def _build(header: Any, r: _Reader, source: str, version: int = FORMAT_VERSION) -> Artifact:
    """The artifact described by a parsed header (constructors re-check every invariant)."""
    m = _get(header, "model", dict, source)
    dims = [_get(m, k, int, source) for k in ("n_channels", "n_classes", "filters", "depth")]
    if not all(v >= 1 for v in dims):
        raise _bad(source, f"model dimensions {dims} must be positive")
    bits = m.get("bits")
    if bits is not None and not _check_int(bits):
        raise _bad(source, f"model bit-width {bits!r} is not an integer")
    layers: dict[str, QLayer] = {}
    act_names = _get(header, "act_layers", list, source)
    act = _read_act(r, act_names)
    for entry in _get(header, "layers", list, source):
        name = _get(entry, "name", str, source)
        k = _get(entry, "kernel_size", int, source)
        if name in layers:
            raise _bad(source, f"layer {name} appears twice")
        pre = f"weights/{name}"
        weight: QuantizedTensor | np.ndarray
        if _get(entry, "quantized", bool, source):
            codes = _rank23(r.take(f"{pre}/codes", "uint8"), name, source)
            n_out = codes.shape[0]
            if r.bits_of(f"{pre}/codes") is None:
                raise _bad(source, f"codes of layer {name} are not packed")
            weight = QuantizedTensor(
                codes,
                r.take(f"{pre}/scale", "float32", (n_out,)),
                r.take(f"{pre}/zero_point", "uint8", (n_out,)).astype(np.int32),
                int(r.bits_of(f"{pre}/codes")),
            )
        else:
            weight = _rank23(r.take(f"{pre}/weight", "float32"), name, source)
        n_out = weight.shape[0]
        bias = (
            r.take(f"{pre}/bias", "float32", (n_out,))
            if _get(entry, "bias", bool, source)
            else None
        )
        layers[name] = QLayer(weight, act.pop(name, None), bias, k)
    if act:
        raise _bad(source, f"activation parameters for unknown layers {sorted(act)}")
    norms = {}
    for entry in _get(header, "norms", list, source):
        name = _get(entry, "name", str, source)
        eps = float(_get(entry, "eps", (int, float), source))
        if not eps > 0:
            raise _bad(source, f"BatchNorm {name} has eps {eps}, expected > 0")
        weight = r.take(f"norms/{name}/weight", "float32")
        if weight.ndim != 1:
            raise _bad(source, f"BatchNorm {name} has rank {weight.ndim}, expected 1")
        rest = [r.take(f"norms/{name}/{k}", "float32", weight.shape) for k in _BN_STATS]
        norms[name] = BatchNorm(weight, *rest, eps)
    qm = QuantizedModel(*dims, bits, layers, norms)
    check_structure(qm)  # before anything indexes layers by the model's dimensions
    c = qm.n_channels
    mean = r.take("normalizer/mean", "float32", (c,))
    std = r.take("normalizer/std", "float32", (c,))
    flip = header.get("flipnet")
    net = None
    if flip is not None:
        names = _get(flip, "layers", list, source)
        feedback = {}
        for name in names:
            if not isinstance(name, str) or name not in layers:
                raise _bad(source, f"flip feedback for unknown layer {name!r}")
            n_out = int(layers[name].weight.shape[0])
            feedback[name] = r.take(f"flipnet/feedback/{name}", "float32", (qm.n_classes, n_out))
        w1 = r.take("flipnet/w1", "float32")
        net = FlipNet(
            feedback,
            w1,
            r.take("flipnet/b1", "float32"),
            r.take("flipnet/w2", "float32"),
            r.take("flipnet/b2", "float32"),
            float(_get(flip, "threshold", (int, float), source)),
        )
    core = None
    if _get(header, "core", bool, source):
        codes = r.take("core/codes", "uint8")
        if codes.ndim != 3:
            raise _bad(source, f"core windows have rank {codes.ndim}, expected 3")
        n = codes.shape[0]
        X = decompress_windows(
            codes,
            r.take("core/scale", "float32", codes.shape[:2]),
            r.take("core/zero_point", "uint8", codes.shape[:2]),
        )
        core = Core(
            X,
            r.take("core/y", "int32", (n,)).astype(np.int64),
            r.take("core/score", "int32", (n,)).astype(np.int64),
            r.take("core/origin", "int32", (n,)).astype(np.int64),
        )
    names = _get(header, "class_names", list, source)
    step = _get(header, "step", int, source)
    config = _get(header, "config", dict, source)
    if version == 1:
        config, device, runtime = _from_version_1(config)
    else:
        device = DeviceConfig.from_dict(_get(header, "device", dict, source))
        runtime = _get(header, "runtime", dict, source)
    return Artifact(qm, core, net, mean, std, tuple(names), config, step, device, runtime)


def _from_version_1(config: dict) -> tuple[dict, DeviceConfig, dict]:
    """Version 1 kept the device settings among the run's and the detector state under
    ``config["device"]``; a missing flip budget meant no cap."""
    config = dict(config)
    runtime = config.pop("device", {})
    settings = {k: config[k] for k in DEVICE_KEYS if k in config}
    settings.setdefault("flip_budget", None)
    return config, DeviceConfig.from_dict(settings), runtime if isinstance(runtime, dict) else {}


_BN_STATS = ("bias", "running_mean", "running_var")


def _rank23(w: np.ndarray, name: str, source: str) -> np.ndarray:
    if w.ndim not in (2, 3) or w.shape[0] < 1:
        raise _bad(source, f"layer {name} has weight shape {w.shape}, expected rank 2 or 3")
    return w


def _read_act(r: _Reader, names: list) -> dict[str, tuple[float, int, int]]:
    if not names:
        return {}
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise QCoreError("activation layer names must be distinct strings")
    n = len(names)
    scale = r.take("act/scale", "float32", (n,))
    zp = r.take("act/zero_point", "uint8", (n,))
    bits = r.take("act/bits", "uint8", (n,))
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise QCoreError("activation scales must be finite and positive")
    return {
        name: (float(s), int(z), int(b))
        for name, s, z, b in zip(names, scale, zp, bits, strict=True)
    }


def load_artifact(path: str | Path) -> Artifact:
    """Read and verify the artifact at ``path`` (magic, version, sizes, checksum, shapes)."""
    return decode_artifact(read_regular_file(path), str(path))
