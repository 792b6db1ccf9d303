"""The device's model as portable C99 sources for a microcontroller (``qcore export
--format c``).

:func:`export_c` writes into a folder:

* ``qcore_rt.h`` / ``qcore_rt.c``: the runtime (package data under ``c_runtime/``), with
  this model's dimensions written into the header. It computes what
  :func:`qcore.edge.infer.forward_features` computes, step by step in float32: the
  normaliser, weights dequantized from their packed codes (``(q - zp) * scale``, exact),
  each layer input fake-quantized (``rint`` half to even, clip, dequantize), 'same'
  convolutions, folded BatchNorm (``x * alpha + beta``, two roundings), ReLU, max-pool,
  shortcuts and the mean over time (summed in time order, as NumPy does). Only the order
  of the sums inside a convolution or the head differs from NumPy's BLAS, so results agree
  to float32 rounding. The streaming head (:mod:`qcore.edge.head`) keeps its statistics
  in float32 and updates and solves them in float64 (Cholesky of the shrunk covariance);
* ``qcore_model.c``: the packed codes, scales, zero points, folded BatchNorms, the
  normaliser, the initial head statistics (the scatter as its lower triangle) and the
  model's fingerprint (the SHA-256 of ``model.qcore``) as ``const`` arrays;
* ``model.qcore``: the artifact itself, what a state blob the firmware saves is read back
  against (:mod:`qcore.edge.c_state`);
* ``README.md`` (how firmware calls it), an example ``main.c`` and a ``Makefile``.

Everything mutable lives in one static arena of ``QC_ARENA_BYTES`` (:func:`arena_bytes`):
the runtime computes a block's output one channel (a column over time) at a time and keeps
the activations between blocks as 8-bit codes of the next layers' input quantization.
Refused: a float model, a streaming head whose weights are rounded (``head_bits``), and a
layer that reads a block's output or a bottleneck's output without activation
quantization (only the layers reading the normalised input may take it as float).
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

import numpy as np

from qcore.core.fileio import write_atomic
from qcore.core.packing import pack_bits
from qcore.core.qmodel import BatchNorm, QLayer, QuantizedModel
from qcore.core.quant import QuantizedTensor
from qcore.edge.artifact import Artifact, encode_artifact
from qcore.edge.head import HeadStats, empty_stats
from qcore.errors import QCoreError

RUNTIME_FILES = ("qcore_rt.c", "main.c", "Makefile")
MODEL_FILE = "model.qcore"  # the exported artifact, beside the sources
EXTRA_CLASSES = 4  # classes a device may add beyond those it ships with


def _ident(name: str) -> str:
    return "qc_" + re.sub(r"[^0-9A-Za-z]", "_", name)


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    """``static const ctype name[] = {...};`` (float32 written exactly, 9 digits)."""
    flat = np.asarray(values).reshape(-1)
    if ctype == "float":
        items = [f"{float(v):.9e}f" for v in flat.astype(np.float32)]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i : i + 8]) for i in range(0, len(items), 8)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(items)}] = {{\n    {body}\n}};\n"


def _layer(name: str, layer: QLayer) -> tuple[str, int]:
    """C arrays and the ``qc_layer_t`` of one quantized layer; its constant bytes."""
    w = layer.weight
    assert isinstance(w, QuantizedTensor)  # checked by _check
    c = _ident(name)
    codes = pack_bits(w.q, w.bits)
    text = _array("uint8_t", f"{c}_codes", codes)
    text += _array("float", f"{c}_scale", w.scale)
    text += _array("uint8_t", f"{c}_zero", w.zero_point)
    nbytes = codes.size + 5 * w.scale.size
    bias = "NULL"
    if layer.bias is not None:
        text += _array("float", f"{c}_bias", layer.bias)
        bias, nbytes = f"{c}_bias", nbytes + 4 * layer.bias.size
    c_out, c_in = int(w.shape[0]), int(w.shape[1])
    if layer.act is None:
        act = "0, 0.0f, 0.0f, 0.0f"
    else:
        scale, zero, bits = layer.act
        act = (
            f"1, {float(np.float32(scale)):.9e}f, {float(zero):.1f}f, {float((1 << bits) - 1):.1f}f"
        )
    text += (
        f"static const qc_layer_t {c} = {{{c}_codes, {c}_scale, {c}_zero, {bias}, "
        f"{c_out}, {c_in}, {layer.kernel_size}, {w.bits}, {act}}};\n\n"
    )
    return text, nbytes


def _norm(name: str, bn: BatchNorm) -> tuple[str, int]:
    """The device's folded BatchNorm (``alpha``, ``beta``, computed by NumPy) as C arrays."""
    alpha, beta = bn.affine()
    c = _ident(name)
    return _array("float", f"{c}_alpha", alpha) + _array("float", f"{c}_beta", beta), 8 * alpha.size


def _ref(qm: QuantizedModel, name: str) -> str:
    return f"&{_ident(name)}" if name in qm.layers else "NULL"


def _block(qm: QuantizedModel, d: int) -> str:
    """The ``qc_block_t`` initializer of block ``d`` and the shortcut ending at it."""
    p, s = f"blocks.{d}", f"shortcuts.{d}"
    convs = ", ".join(_ref(qm, f"{p}.convs.{i}") for i in range(3))
    bn = _ident(f"{p}.bn")
    if f"{s}.bn" in qm.norms:
        sc = f"{_ref(qm, f'{s}.conv')}, {_ident(f'{s}.bn')}_alpha, {_ident(f'{s}.bn')}_beta"
    else:
        sc = "NULL, NULL, NULL"
    return (
        f"    {{{_ref(qm, f'{p}.bottleneck')}, {{{convs}}}, {_ref(qm, f'{p}.pool_conv')}, "
        f"{bn}_alpha, {bn}_beta, {sc}}}"
    )


def _check(art: Artifact) -> None:
    qm = art.model
    if qm.bits is None:
        raise QCoreError("the C runtime runs quantized models only; this artifact is float")
    if art.device.head == "slda" and art.device.head_bits is not None:
        raise QCoreError(
            "the C runtime solves the streaming head in float: head_bits must be unset"
        )
    if qm.layers["head"].kernel_size != 1:
        raise QCoreError("the model's head must be a linear layer")
    _check_codes(qm)


def _check_codes(qm: QuantizedModel) -> None:
    """The C runtime keeps what a layer reads from a block's or a bottleneck's output as
    8-bit codes of that layer's input quantization: every such layer needs one."""
    shortcuts = 0
    for d in range(qm.depth):
        p = f"blocks.{d}"
        readers = [f"{p}.convs.{i}" for i in range(3)] if f"{p}.bottleneck" in qm.layers else []
        if d > 0:
            if f"{p}.bottleneck" not in qm.layers:
                raise QCoreError(
                    f"the C runtime needs a bottleneck in every block after the first; {p} has none"
                )
            readers += [f"{p}.bottleneck", f"{p}.pool_conv"]
        for name in readers:
            if qm.layers[name].act is None:
                raise QCoreError(
                    f"the C runtime keeps activations between layers as codes: layer {name} "
                    "has no input quantization (act)"
                )
        if f"shortcuts.{d}.bn" in qm.norms:
            if shortcuts and f"shortcuts.{d}.conv" in qm.layers:
                raise QCoreError(
                    f"the C runtime has no 1x1 convolution on a block output's shortcut "
                    f"(shortcuts.{d}.conv)"
                )
            shortcuts += 1


def _branch_sets(qm: QuantizedModel) -> int:
    """Code sets a bottleneck's output is kept in: the most distinct input quantizations
    among one block's three convolutions (equal parameters share one set)."""
    most = 0
    for d in range(qm.depth):
        if f"blocks.{d}.bottleneck" not in qm.layers:
            continue
        acts = set()
        for i in range(3):
            act = qm.layers[f"blocks.{d}.convs.{i}"].act
            assert act is not None  # checked by _check_codes
            acts.add((float(np.float32(act[0])), float(act[1]), act[2]))
        most = max(most, len(acts))
    return most


def fingerprint(art: Artifact) -> bytes:
    """The model's fingerprint in the C sources and in every state blob: the SHA-256 of
    the artifact's encoding (the bytes of the exported ``model.qcore``)."""
    return hashlib.sha256(encode_artifact(art)).digest()


def head_stats(art: Artifact) -> HeadStats:
    """The statistics the C head starts from: the artifact's, or none yet."""
    if art.head is not None:
        return art.head
    return empty_stats(art.model.n_classes, 4 * art.model.filters)


def lower_triangle(m: np.ndarray) -> np.ndarray:
    """Rows ``i`` of ``m``'s lower triangle, columns ``0..i`` each, one after another."""
    rows, cols = np.tril_indices(m.shape[0])
    return m[rows, cols]


def model_source(art: Artifact, stats: HeadStats, sha: bytes) -> tuple[str, int]:
    """The text of ``qcore_model.c`` and the bytes of its constant arrays (``sha``: the
    model's :func:`fingerprint`)."""
    qm = art.model
    parts = [
        '/* qcore_model.c: written by `qcore export --format c`. */\n#include "qcore_rt.h"\n\n'
    ]
    total = 0
    for name, layer in qm.layers.items():
        text, n = _layer(name, layer)
        parts.append(text)
        total += n
    for name, bn in qm.norms.items():
        text, n = _norm(name, bn)
        parts.append(text + "\n")
        total += n
    blocks = ",\n".join(_block(qm, d) for d in range(qm.depth))
    parts.append(f"static const qc_block_t qc_blocks[QC_DEPTH] = {{\n{blocks}\n}};\n\n")
    arrays = {
        "qc_norm_mean": art.normalizer_mean,
        "qc_norm_std": art.normalizer_std,
        "qc_count0": stats.count,
        "qc_mean0": stats.mean,
        "qc_scatter0": lower_triangle(stats.scatter),
    }
    for name, values in arrays.items():
        parts.append(_array("float", name, values))
        total += 4 * values.size
    parts.append(_array("uint8_t", "qc_fingerprint", np.frombuffer(sha, np.uint8)))
    total += len(sha)
    first = stats.n_classes - stats.n_learnt
    parts.append(
        "\nconst qc_model_t qc_model = {qc_blocks, &qc_head, qc_norm_mean, qc_norm_std, "
        f"qc_count0, qc_mean0, qc_scatter0, {first}, {float(art.device.head_shrinkage)!r}, "
        f"{float(art.device.new_class_min):.1f}f, qc_fingerprint}};\n"
    )
    return "".join(parts), total


def dimensions(art: Artifact, stats: HeadStats, extra_classes: int) -> dict[str, int]:
    """The ``#define``s of ``qcore_rt.h`` (each ``QC_`` + the key)."""
    qm = art.model
    return {
        "CHANNELS": qm.n_channels,
        "WINDOW": int(art.window_length),
        "FILTERS": qm.filters,
        "DEPTH": qm.depth,
        "FEATURES": 4 * qm.filters,
        "CLASSES": qm.n_classes,
        "HEAD_CLASSES": stats.n_classes,
        "MAX_CLASSES": stats.n_classes + extra_classes,
        "MAX_KC": max(int(np.prod(layer.weight.shape[1:])) for layer in qm.layers.values()),
        "USE_HEAD": int(art.device.head == "slda"),
        "KEEP_RES": int(sum(f"shortcuts.{d}.bn" in qm.norms for d in range(qm.depth)) > 1),
        "BRANCH_SETS": _branch_sets(qm),
    }


def arena_bytes(dims: dict[str, int]) -> int:
    """``QC_ARENA_BYTES`` (the formula of ``qcore_rt.h``): a scratch area, the largest of
    one window's inference ``4 [T C + R T D + 2 T + KC + 256] + T D + (5 + S) T F``
    (floats: normalised input, residual when ``R`` = KEEP_RES, two columns, a weight row, a
    dequantization table; bytes: the next block's bottleneck codes, five slots of ``F``
    max-pooled code columns shared by this block and the next, ``S`` sets of bottleneck
    output codes), the float64 solve ``8 [D (D + 1) / 2 +
    D]``, the expanded scatter ``4 D^2`` and a state blob (:func:`state_bytes`), rounded
    up to 8; then the head
    ``4 [2 Kmax + 2 Kmax D + D (D + 1) / 2]`` (counts, biases, means, weights, the
    scatter's lower triangle)."""
    t, d, f = dims["WINDOW"], dims["FEATURES"], dims["FILTERS"]
    k, tri = dims["MAX_CLASSES"], d * (d + 1) // 2
    floats = t * dims["CHANNELS"] + dims["KEEP_RES"] * t * d + 2 * t + dims["MAX_KC"] + 256
    act = 4 * floats + t * d + (5 + dims["BRANCH_SETS"]) * t * f
    scratch = -(-max(act, 8 * (tri + d), 4 * d * d, state_bytes(dims)) // 8) * 8
    return scratch + 4 * (2 * k + 2 * k * d + tri)


STATE_HEADER = 60  # bytes of a state blob before its statistics (qcore.edge.c_state)


def blob_bytes(n_features: int, max_classes: int) -> int:
    """A state blob's size for a head of ``n_features`` with room for ``max_classes``: the
    header, counts, means, the scatter's lower triangle (float32) and a CRC-32."""
    d, k = n_features, max_classes
    return STATE_HEADER + 4 * (k + k * d + d * (d + 1) // 2) + 4


def state_bytes(dims: dict[str, int]) -> int:
    """``QC_STATE_BYTES``: the state blob's size (:mod:`qcore.edge.c_state`)."""
    return blob_bytes(dims["FEATURES"], dims["MAX_CLASSES"])


def _runtime(name: str) -> str:
    return resources.files("qcore.edge").joinpath("c_runtime", name).read_text()


def _readme(art: Artifact, dims: dict[str, int], const: int, source: str) -> str:
    fields = {
        "NAME": f"{dims['CHANNELS']}-channel, {len(art.class_names)}-class InceptionTime",
        "SOURCE": source,
        "CHANNELS": dims["CHANNELS"],
        "WINDOW": dims["WINDOW"],
        "BITS": art.model.bits,
        "FEATURES": dims["FEATURES"],
        "CLASSES": ", ".join(f"`{n}`" for n in art.class_names),
        "PREDICTS": "the streaming head" if dims["USE_HEAD"] else "the model's own head",
        "ARENA": arena_bytes(dims),
        "STATE": state_bytes(dims),
        "MAX_CLASSES": dims["MAX_CLASSES"],
        "CONST": const,
    }
    text = _runtime("README.md")
    for key, value in fields.items():
        text = text.replace(f"@@{key}@@", str(value))
    return text


def export_c(
    art: Artifact, out: str | Path, *, extra_classes: int = EXTRA_CLASSES, source: str = "?"
) -> dict[str, int | str]:
    """Write the C sources of ``art`` and the artifact itself (``model.qcore``) into folder
    ``out`` (created if needed); return the arena bytes, the constant data bytes, the
    state blob's bytes and each file's size."""
    _check(art)
    if extra_classes < 0:
        raise QCoreError(f"extra_classes must be >= 0, got {extra_classes}")
    stats = head_stats(art)
    dims = dimensions(art, stats, extra_classes)
    encoded = encode_artifact(art)
    model_c, const = model_source(art, stats, hashlib.sha256(encoded).digest())
    defines = "\n".join(f"#define QC_{k} {v}" for k, v in dims.items())
    files = {
        "qcore_rt.h": _runtime("qcore_rt.h").replace("@@DEFINES@@", defines).encode(),
        "qcore_model.c": model_c.encode(),
        "README.md": _readme(art, dims, const, source).encode(),
        **{name: _runtime(name).encode() for name in RUNTIME_FILES},
        MODEL_FILE: encoded,
    }
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(folder / name, data, 0o644)
    sizes = {name: len(data) for name, data in files.items()}
    return {
        "format": "c",
        "arena_bytes": arena_bytes(dims),
        "const_bytes": const,
        "state_bytes": state_bytes(dims),
        **sizes,
    }
