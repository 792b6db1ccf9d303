"""How each part of an artifact is stored in the container (:mod:`qcore.edge.container`).

One encoder and one decoder per part: the model (weights, activation parameters,
BatchNorm), the input normaliser, the flip network, the core and the streaming head's
statistics. An encoder appends the
part's arrays to a :class:`Writer`, named ``PREFIX/...`` with the prefixes of
:data:`SIZE_GROUP`, and returns the part's JSON header fields; the decoder reads them
back, checks them against the header and the model, and names the file in every error.
Constructors (``QLayer``, ``BatchNorm``, ``FlipNet``, ``Core``, ...) re-check their own
invariants on top.

Design decisions:

* **Weights at their real bit-width**: codes packed with :func:`qcore.core.packing.pack_bits`,
  float32 per-channel scales, one byte per zero point (the accounting of
  :meth:`QuantizedModel.device_bytes`). A float model stores float32 weights.
* **Activation parameters** are stored as float32 scale + uint8 zero point + uint8 bits:
  float32 is the precision inference computes with, so predictions are unchanged.
* **BatchNorm unfolded**: weight, bias, running mean and variance as float32, because
  on-device calibration rewrites the statistics.
* **Core windows are 8-bit quantized** per window and channel
  (:func:`qcore.coreset.storage.compress_windows`): 1 byte per value plus 5 bytes per
  (window, channel) instead of 4 bytes per value, at most half a step of error (0.2 % of
  the window and channel's range), and idempotent, so the state rewritten after every
  step re-encodes the samples that stay in the core to exactly the same codes. Labels,
  scores and origins are int32.
* **Streaming head**: its statistics (class counts, class means, within-class scatter)
  as float32; the head's weights are derived from them (one solve) and never stored.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qcore.core.packing import pack_bits
from qcore.core.qmodel import BatchNorm, QLayer, QuantizedModel, check_structure
from qcore.core.quant import QuantizedTensor
from qcore.coreset.core import Core
from qcore.coreset.storage import compress_windows, decompress_windows
from qcore.edge.container import Reader, Writer, corrupt, get_field, is_count
from qcore.edge.flip import N_FEATURES, FlipNet
from qcore.edge.head import HeadStats
from qcore.errors import QCoreError

# array name prefix -> part it is counted in by ``artifact_sizes``
SIZE_GROUP = {
    "weights": "weights",
    "act": "act",
    "norms": "norms",
    "normalizer": "norms",
    "flipnet": "flipnet",
    "core": "core",
    "head": "head",
    "pending": "pending",  # qcore.edge.pending
}
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


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


# -------------------------------------------------------------------------------- model


def encode_model(w: Writer, qm: QuantizedModel) -> dict[str, Any]:
    """Append the weights, activation parameters and BatchNorms of ``qm``; return the
    header fields ``model``, ``layers``, ``act_layers`` and ``norms``."""
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
        for key in _BN_KEYS:
            w.add(f"norms/{name}/{key}", getattr(bn, key), "float32")
    return {
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
    }


def decode_model(header: Any, r: Reader, source: str) -> QuantizedModel:
    """The model :func:`encode_model` stored, checked to form an InceptionTime."""
    m = get_field(header, "model", dict, source)
    dims: list[int] = [
        get_field(m, k, int, source) for k in ("n_channels", "n_classes", "filters", "depth")
    ]
    if not all(v >= 1 for v in dims):
        raise corrupt(source, f"model dimensions {dims} must be positive")
    bits = m.get("bits")
    if bits is not None and not is_count(bits):
        raise corrupt(source, f"model bit-width {bits!r} is not an integer")
    layers = _decode_layers(header, r, source)
    norms = _decode_norms(header, r, source)
    n_channels, n_classes, filters, depth = dims
    qm = QuantizedModel(n_channels, n_classes, filters, depth, bits, layers, norms)
    check_structure(qm)  # before anything indexes layers by the model's dimensions
    return qm


def _decode_layers(header: Any, r: Reader, source: str) -> dict[str, QLayer]:
    """The header's ``layers`` with their weights (codes or float) and activation
    parameters; every ``act_layers`` entry must name one of them."""
    layers: dict[str, QLayer] = {}
    act = _decode_act(r, get_field(header, "act_layers", list, source))
    for entry in get_field(header, "layers", list, source):
        name = get_field(entry, "name", str, source)
        k = get_field(entry, "kernel_size", int, source)
        if name in layers:
            raise corrupt(source, f"layer {name} appears twice")
        pre = f"weights/{name}"
        weight: QuantizedTensor | np.ndarray
        if get_field(entry, "quantized", bool, source):
            codes = _rank23(r.take(f"{pre}/codes", "uint8"), name, source)
            n_out = codes.shape[0]
            code_bits = r.bits_of(f"{pre}/codes")
            if code_bits is None:
                raise corrupt(source, f"codes of layer {name} are not packed")
            weight = QuantizedTensor(
                codes,
                r.take(f"{pre}/scale", "float32", (n_out,)),
                r.take(f"{pre}/zero_point", "uint8", (n_out,)).astype(np.int32),
                int(code_bits),
            )
        else:
            weight = _rank23(r.take(f"{pre}/weight", "float32"), name, source)
        n_out = weight.shape[0]
        bias = (
            r.take(f"{pre}/bias", "float32", (n_out,))
            if get_field(entry, "bias", bool, source)
            else None
        )
        layers[name] = QLayer(weight, act.pop(name, None), bias, k)
    if act:
        raise corrupt(source, f"activation parameters for unknown layers {sorted(act)}")
    return layers


def _decode_norms(header: Any, r: Reader, source: str) -> dict[str, BatchNorm]:
    """The header's BatchNorms, each with a positive ``eps`` and 1-D parameters."""
    norms: dict[str, BatchNorm] = {}
    for entry in get_field(header, "norms", list, source):
        name = get_field(entry, "name", str, source)
        eps = float(get_field(entry, "eps", (int, float), source))
        if not eps > 0:
            raise corrupt(source, f"BatchNorm {name} has eps {eps}, expected > 0")
        gamma = r.take(f"norms/{name}/weight", "float32")
        if gamma.ndim != 1:
            raise corrupt(source, f"BatchNorm {name} has rank {gamma.ndim}, expected 1")
        norms[name] = BatchNorm(
            gamma,
            r.take(f"norms/{name}/bias", "float32", gamma.shape),
            r.take(f"norms/{name}/running_mean", "float32", gamma.shape),
            r.take(f"norms/{name}/running_var", "float32", gamma.shape),
            eps,
        )
    return norms


def _rank23(w: np.ndarray, name: str, source: str) -> np.ndarray:
    if w.ndim not in (2, 3) or w.shape[0] < 1:
        raise corrupt(source, f"layer {name} has weight shape {w.shape}, expected rank 2 or 3")
    return w


def _decode_act(r: Reader, names: list) -> dict[str, tuple[float, int, int]]:
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


# --------------------------------------------------------------------------- normaliser


def encode_normalizer(w: Writer, mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """Append the input normaliser's float32 mean and std (no header fields)."""
    w.add("normalizer/mean", mean, "float32")
    w.add("normalizer/std", std, "float32")
    return {}


def decode_normalizer(r: Reader, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` as stored by :func:`encode_normalizer`."""
    c = (n_channels,)
    return r.take("normalizer/mean", "float32", c), r.take("normalizer/std", "float32", c)


# ------------------------------------------------------------------------- flip network


def check_flipnet(net: FlipNet, qm: QuantizedModel) -> FlipNet:
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


def encode_flipnet(w: Writer, net: FlipNet | None) -> dict[str, Any]:
    """Append the feedback matrices and the MLP of ``net``; return the header field
    ``flipnet`` (its threshold and feedback layers, or ``None`` without a network)."""
    if net is None:
        return {"flipnet": None}
    for name, b in net.feedback.items():
        w.add(f"flipnet/feedback/{name}", b, "float32")
    for key in ("w1", "b1", "w2", "b2"):
        w.add(f"flipnet/{key}", getattr(net, key), "float32")
    return {"flipnet": {"threshold": float(net.threshold), "layers": list(net.feedback)}}


def decode_flipnet(header: Any, r: Reader, qm: QuantizedModel, source: str) -> FlipNet | None:
    """The flip network :func:`encode_flipnet` stored for ``qm``, or ``None``."""
    flip = header.get("flipnet")
    if flip is None:
        return None
    feedback = {}
    for name in get_field(flip, "layers", list, source):
        if not isinstance(name, str) or name not in qm.layers:
            raise corrupt(source, f"flip feedback for unknown layer {name!r}")
        n_out = int(qm.layers[name].weight.shape[0])
        feedback[name] = r.take(f"flipnet/feedback/{name}", "float32", (qm.n_classes, n_out))
    w1 = r.take("flipnet/w1", "float32")
    return FlipNet(
        feedback,
        w1,
        r.take("flipnet/b1", "float32"),
        r.take("flipnet/w2", "float32"),
        r.take("flipnet/b2", "float32"),
        float(get_field(flip, "threshold", (int, float), source)),
    )


# --------------------------------------------------------------------------------- core


def encode_core(w: Writer, core: Core | None) -> dict[str, Any]:
    """Append the compressed windows, labels, scores and origins of ``core``; return the
    header field ``core`` (whether there is one)."""
    if core is not None:
        codes, scale, zp = compress_windows(core.X)
        w.add("core/codes", codes, "uint8")
        w.add("core/scale", scale, "float32")
        w.add("core/zero_point", zp, "uint8")
        w.add("core/y", _as_int32(core.y, "core labels"), "int32")
        w.add("core/score", _as_int32(core.score, "core scores"), "int32")
        w.add("core/origin", _as_int32(core.origin, "core origins"), "int32")
    return {"core": core is not None}


def decode_core(header: Any, r: Reader, source: str) -> Core | None:
    """The core :func:`encode_core` stored (windows decompressed), or ``None``."""
    if not get_field(header, "core", bool, source):
        return None
    codes = r.take("core/codes", "uint8")
    if codes.ndim != 3:
        raise corrupt(source, f"core windows have rank {codes.ndim}, expected 3")
    n = codes.shape[0]
    X = decompress_windows(
        codes,
        r.take("core/scale", "float32", codes.shape[:2]),
        r.take("core/zero_point", "uint8", codes.shape[:2]),
    )
    return Core(
        X,
        r.take("core/y", "int32", (n,)).astype(np.int64),
        r.take("core/score", "int32", (n,)).astype(np.int64),
        r.take("core/origin", "int32", (n,)).astype(np.int64),
    )


# --------------------------------------------------------------------------------- head


def encode_head(w: Writer, head: HeadStats | None) -> dict[str, Any]:
    """Append the streaming head's statistics; return the header field ``head``."""
    if head is not None:
        w.add("head/count", head.count, "float32")
        w.add("head/mean", head.mean, "float32")
        w.add("head/scatter", head.scatter, "float32")
        if head.n_learnt:
            w.add("head/learnt", head.learnt, "float32")
            return {"head": True, "head_learnt": head.n_learnt}
    return {"head": head is not None}


def decode_head(
    header: Any, r: Reader, qm: QuantizedModel, n_classes: int, source: str
) -> HeadStats | None:
    """The statistics :func:`encode_head` stored for ``n_classes`` classes (the model's
    and any a device added) and ``qm``'s features (a header without the field has no
    head)."""
    if "head" not in header or not get_field(header, "head", bool, source):
        return None
    if n_classes < qm.n_classes:
        raise corrupt(source, f"{n_classes} class names for a {qm.n_classes}-class model")
    k, d = n_classes, 4 * qm.filters
    n_learnt = header.get("head_learnt", 0)
    if not is_count(n_learnt) or n_learnt > k - qm.n_classes:
        raise corrupt(source, f"head_learnt {n_learnt!r} is not a count of added classes")
    return HeadStats(
        r.take("head/count", "float32", (k,)),
        r.take("head/mean", "float32", (k, d)),
        r.take("head/scatter", "float32", (d, d)),
        r.take("head/learnt", "float32", (n_learnt, d, d)) if n_learnt else np.zeros((0, d, d)),
    )
