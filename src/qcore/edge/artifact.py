"""The deployable artifact: one versioned, checksummed binary file with all a device runs.

An :class:`Artifact` is the quantized model, the QCore (labelled samples kept on the
device), the flip network, the input normaliser, the class names, the run's settings, the
device's settings and running state, and its step counter. The same file format serves
as the shipped artifact and as the device's running state (:mod:`qcore.edge.state`),
which is rewritten after every stream step.

The file is a :mod:`qcore.edge.container` (magic, version, SHA-256, JSON header, arrays;
no pickle). Its JSON header holds, in this order:

* ``model``, ``layers``, ``act_layers``, ``norms``: the model's dimensions, bit-width,
  kernel sizes and BatchNorm eps (:func:`qcore.edge.parts.encode_model`);
* ``flipnet``: threshold and feedback layers, or ``null``; ``core``: whether one is stored;
* ``class_names``; ``config``: the run's settings (JSON, tuples come back as lists);
* ``device``: the device's settings, :meth:`qcore.config.DeviceConfig.to_dict`;
* ``runtime``: the device's running state besides model and core (e.g. the drift
  detector's sums), JSON;
* ``step``: stream batches processed;
* ``pending``: the keys of the windows the device asked labels for and awaits answers
  to, when there are any (:func:`qcore.edge.pending.encode_pending`; at most the device
  setting ``ask_keep``); and the container's ``arrays`` table.

Design decisions:

* **One artifact, every check.** :class:`Artifact` validates itself on construction
  (structure, shapes, JSON-serialisable settings), and a decoded file is built through
  the same constructors, so whatever is read back is as valid as what was written.
* **Version 1 files are still read**: they kept the device settings inside ``config`` and
  the detector state under ``config["device"]``; :func:`decode_artifact` moves them to
  ``device`` and ``runtime``. Files are always written as version
  :data:`~qcore.edge.container.FORMAT_VERSION`.
* **Atomic writes** (:func:`qcore.core.fileio.write_atomic`): temporary file in the
  target's folder, flush, fsync, ``os.replace``, fsync of the folder; mode 0o600 because
  the state holds training samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcore.config import DEVICE_KEYS, DeviceConfig
from qcore.core.fileio import read_regular_file, write_atomic
from qcore.core.qmodel import QuantizedModel, check_structure
from qcore.coreset.core import Core
from qcore.coreset.storage import compress_windows, decompress_windows
from qcore.edge.container import (
    FIXED_SIZE,
    FileError,
    Writer,
    decode_container,
    encode_container,
    get_field,
)
from qcore.edge.flip import FlipNet
from qcore.edge.head import HeadStats
from qcore.edge.parts import (
    SIZE_GROUP,
    check_flipnet,
    decode_core,
    decode_flipnet,
    decode_head,
    decode_model,
    decode_normalizer,
    encode_core,
    encode_flipnet,
    encode_head,
    encode_model,
    encode_normalizer,
)
from qcore.edge.pending import Pending, decode_pending, encode_pending
from qcore.errors import QCoreError


@dataclass
class Artifact:
    """Everything a device needs, as plain NumPy data.

    ``normalizer_mean``/``normalizer_std``: float32 ``(n_channels,)``, applied by the device
    to raw sensor windows. ``class_names``: one name per class. ``config``: the run's
    settings (JSON-serialisable; tuples come back as lists). The window length the model
    was trained on is ``config["window_length"]`` or, if absent, the core's. ``step``:
    stream batches the device has processed. ``device``: how the device calibrates (its
    own header section). ``runtime``: the device's running state besides model and core
    (JSON-serialisable, e.g. the drift detector's sums). ``head``: the streaming head's
    statistics over the model's pooled features, when the device has one. ``pending``:
    the windows the device asked labels for and awaits answers to (None: none), at most
    ``device.ask_keep``.
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
    head: HeadStats | None = None
    pending: Pending | None = None

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
        k = self.model.n_classes if self.head is None else self.head.n_classes
        if (
            len(self.class_names) != k
            or k < self.model.n_classes
            or not all(isinstance(n, str) and n for n in self.class_names)
            or len(set(self.class_names)) != k
        ):
            raise QCoreError(
                f"need {k} distinct, non-empty class names, the model's {self.model.n_classes} "
                f"first, got {len(self.class_names)}"
            )
        _check_json_dict(self.config, "artifact config")
        if not isinstance(self.device, DeviceConfig):
            raise QCoreError("artifact device settings must be a DeviceConfig")
        _check_json_dict(self.runtime, "artifact runtime state")
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise QCoreError(f"artifact step must be an integer >= 0, got {self.step!r}")
        if self.core is not None:
            self._check_core(self.core)
        _ = self.window_length  # raises when neither the config nor a core defines it
        if self.flipnet is not None:
            self.flipnet = check_flipnet(self.flipnet, self.model)
        if self.head is not None:  # the head may know classes the model's head does not
            want = (len(self.class_names), 4 * self.model.filters)
            if not isinstance(self.head, HeadStats) or self.head.mean.shape != want:
                raise QCoreError(f"head statistics must be HeadStats for {want} classes x features")
        if self.pending is not None:
            self._check_pending(self.pending)

    def _check_core(self, core: Core) -> None:
        n, c, _ = core.X.shape
        if c != self.model.n_channels:
            raise QCoreError(f"core has {c} channels, the model {self.model.n_channels}")
        if core.X.dtype != np.float32:
            raise QCoreError(f"core windows must be float32, got {core.X.dtype}")
        if n and (core.y.min() < 0 or core.y.max() >= self.model.n_classes):
            raise QCoreError(f"core labels leave 0..{self.model.n_classes - 1}")

    def _check_pending(self, pending: Pending) -> None:
        want = (self.model.n_channels, self.window_length)
        if not isinstance(pending, Pending) or pending.windows.shape[1:] != want:
            raise QCoreError(f"pending windows must be a Pending of {want} windows")
        if len(pending) > self.device.ask_keep:
            raise QCoreError(
                f"{len(pending)} windows wait for an answer, the device keeps at most "
                f"{self.device.ask_keep} (ask_keep)"
            )

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


def _check_json_dict(value: object, what: str) -> None:
    if not isinstance(value, dict):
        raise QCoreError(f"{what} must be a dict")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise QCoreError(f"{what} must be JSON-serialisable: {exc}") from None


def build_artifact(
    qm: QuantizedModel,
    core: Core | None,
    flipnet: FlipNet | None,
    normalizer: Any,
    class_names: tuple[str, ...] | list[str],
    config: dict,
    window_length: int | None = None,
    device: DeviceConfig | None = None,
    head: HeadStats | None = None,
) -> Artifact:
    """An :class:`Artifact` at step 0 from the cloud side's pieces.

    ``normalizer``: anything with float ``mean`` and ``std`` of shape ``(n_channels,)``
    (e.g. :class:`qcore.data.scenario.Normalizer`). ``config`` is copied; the window length
    (``window_length``, else the core's) is recorded in it so a device without a core
    can still validate its input. ``device``: the device's settings (default: every
    device setting at its default); ``head``: the streaming head's initial statistics.
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
        head=head,
    )


# ------------------------------------------------------------------------------ writing


def _encode(art: Artifact) -> tuple[bytes, list[dict[str, Any]], int]:
    """File bytes, the arrays table and the JSON header length of ``art``."""
    w = Writer()
    header = {
        **encode_model(w, art.model),
        **encode_normalizer(w, art.normalizer_mean, art.normalizer_std),
        **encode_flipnet(w, art.flipnet),
        **encode_core(w, art.core),
        **encode_head(w, art.head),
        "class_names": list(art.class_names),
        "config": art.config,
        "device": art.device.to_dict(),
        "runtime": art.runtime,
        "step": art.step,
        **encode_pending(w, art.pending),
    }
    data, header_len = encode_container(header, w)
    return data, w.entries, header_len


def encode_artifact(art: Artifact) -> bytes:
    """The complete file content of ``art`` (deterministic: same artifact, same bytes)."""
    return _encode(art)[0]


def artifact_sizes(art: Artifact) -> dict[str, int]:
    """Bytes of ``art``'s file per part; they sum to ``total``, the file size.

    ``weights``: packed codes, scales, zero points and the head bias; ``norms``: BatchNorm
    parameters and statistics plus the input normaliser; ``act``: activation parameters;
    ``flipnet``: feedback matrices and MLP; ``core``: compressed windows, labels, scores
    and origins; ``head``: the streaming head's statistics; ``pending``: the windows
    waiting for their labels (float32); ``meta``: fixed header and JSON header.
    """
    data, entries, header_len = _encode(art)
    parts = ("weights", "norms", "act", "flipnet", "core", "head", "pending")
    sizes = dict.fromkeys(parts, 0)
    for e in entries:
        sizes[SIZE_GROUP[e["name"].split("/", 1)[0]]] += e["nbytes"]
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


def decode_artifact(data: bytes | memoryview, source: str = "<bytes>") -> Artifact:
    """Parse and fully validate file content; raise :class:`QCoreError` naming the problem."""
    header, reader, version = decode_container(data, source)
    try:
        qm = decode_model(header, reader, source)
        mean, std = decode_normalizer(reader, qm.n_channels)
        net = decode_flipnet(header, reader, qm, source)
        core = decode_core(header, reader, source)
        names = get_field(header, "class_names", list, source)
        head = decode_head(header, reader, qm, len(names), source) if version > 1 else None
        step = get_field(header, "step", int, source)
        config = get_field(header, "config", dict, source)
        if version == 1:
            config, device, runtime = _from_version_1(config)
        else:
            device = DeviceConfig.from_dict(get_field(header, "device", dict, source))
            runtime = get_field(header, "runtime", dict, source)
        pending = decode_pending(header, reader, source)
        art = Artifact(
            qm, core, net, mean, std, tuple(names), config, step, device, runtime, head, pending
        )
    except FileError:
        raise
    except QCoreError as exc:  # a constructor's own check: say which file it was
        raise QCoreError(f"artifact {source} is inconsistent: {exc}") from None
    reader.finish()
    return art


def _from_version_1(config: dict) -> tuple[dict, DeviceConfig, dict]:
    """Version 1 kept the device settings among the run's and the detector state under
    ``config["device"]``; a missing flip budget meant no cap."""
    config = dict(config)
    runtime = config.pop("device", {})
    settings = {k: config[k] for k in DEVICE_KEYS if k in config}
    settings.setdefault("flip_budget", None)
    return config, DeviceConfig.from_dict(settings), runtime if isinstance(runtime, dict) else {}


def load_artifact(path: str | Path) -> Artifact:
    """Read and verify the artifact at ``path`` (magic, version, sizes, checksum, shapes)."""
    return decode_artifact(read_regular_file(path), str(path))
