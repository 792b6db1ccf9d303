"""The device's model as a standard ONNX graph, for runtimes users already ship.

:func:`to_onnx` writes what :func:`qcore.edge.infer.forward` computes, from raw sensor
windows ``X`` float32 ``(n, n_channels, window_length)`` to logits ``(n, n_classes)``:

* the artifact's input normalisation (``Sub``, ``Div``);
* every quantized weight as its integer codes in a ``uint8`` initializer, with a
  ``DequantizeLinear`` node carrying the per-output-channel scales and zero points
  (``axis=0``). Codes of 2-4 (and 5-7) bits are stored one per byte: their values lie in
  ``0 .. 2**bits - 1`` and the zero point in the same range, so the dequantized weights
  equal the device's exactly; ONNX has no sub-byte type in the opsets ORT runs widely;
* each activation quantization as ``Div``, ``Round`` (half to even, like NumPy's
  ``rint``), ``Add``, ``Clip`` to ``0 .. 2**bits - 1``, ``Sub``, ``Mul``: the same float
  operations in the same order as the device, so any bit-width is exact (a
  ``QuantizeLinear`` would saturate at 8 bits, not at the layer's own width);
* BatchNorm folded to ``Mul``/``Add`` with the device's own folding; ``Conv`` with
  symmetric 'same' padding, ``MaxPool`` (kernel 3, stride 1, padding 1), ``Concat``,
  ``Relu``, residual ``Add``, ``ReduceMean`` over time and ``Gemm`` for the head;
* with a streaming head (``head=slda``), its solved weights and bias as a float ``Gemm``
  on the pooled features (the head's statistics stay on the device), one row per class it
  knows, classes learnt on the device included.

The model's ``metadata_props`` carry ``class_names`` (a JSON list: logit ``k`` is class
``class_names[k]``) and ``window_length`` (the time steps of a window, as the device takes
them). The contract is written out in docs/api.md.

Convolution sums run in another order than the device's im2col products, so logits agree
up to float32 rounding (a test checks predictions agree on at least 99.5% of windows).
``onnx`` is an optional dependency (``pip install 'qcore[onnx]'``), imported only here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from qcore.core.fileio import write_atomic
from qcore.core.qmodel import QLayer
from qcore.core.quant import QuantizedTensor
from qcore.edge.artifact import Artifact
from qcore.edge.backbone import solve_head
from qcore.errors import QCoreError

OPSET = 17


class _Graph:
    """Nodes and initializers of one graph, with fresh names."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(self.helper.make_node(kind, inputs, [out], **attrs))
        return out


def _weight(g: _Graph, name: str, layer: QLayer) -> str:
    w = layer.weight
    if not isinstance(w, QuantizedTensor):
        return g.const(w.astype(np.float32), f"{name}.weight")
    codes = g.const(w.q.astype(np.uint8), f"{name}.codes")
    scale = g.const(w.scale.astype(np.float32), f"{name}.scale")
    zero = g.const(w.zero_point.astype(np.uint8), f"{name}.zero_point")
    return g.op("DequantizeLinear", [codes, scale, zero], f"{name}.weight", axis=0)


def _act(g: _Graph, x: str, layer: QLayer, name: str) -> str:
    if layer.act is None:
        return x
    scale, zero_point, bits = layer.act
    s = g.const(np.array(scale, np.float32), f"{name}.act_scale")
    z = g.const(np.array(zero_point, np.float32), f"{name}.act_zero")
    lo = g.const(np.array(0.0, np.float32), f"{name}.act_min")
    hi = g.const(np.array((1 << bits) - 1, np.float32), f"{name}.act_max")
    q = g.op("Round", [g.op("Div", [x, s], f"{name}.div")], f"{name}.round")
    q = g.op("Clip", [g.op("Add", [q, z], f"{name}.add"), lo, hi], f"{name}.clip")
    return g.op("Mul", [g.op("Sub", [q, z], f"{name}.sub"), s], f"{name}.act")


def _conv(g: _Graph, art: Artifact, name: str, x: str) -> str:
    layer = art.model.layers[name]
    pad = layer.kernel_size // 2
    inputs = [_act(g, x, layer, name), _weight(g, name, layer)]
    return g.op("Conv", inputs, name, pads=[pad, pad], strides=[1], dilations=[1])


def _norm(g: _Graph, art: Artifact, name: str, x: str) -> str:
    alpha, beta = art.model.norms[name].affine()
    a = g.const(alpha.reshape(1, -1, 1), f"{name}.alpha")
    b = g.const(beta.reshape(1, -1, 1), f"{name}.beta")
    return g.op("Add", [g.op("Mul", [x, a], f"{name}.mul"), b], name)


def build_onnx(art: Artifact) -> Any:
    """The ``onnx.ModelProto`` of ``art``'s model as the device runs it (see module doc)."""
    try:
        from onnx import TensorProto, checker, helper, numpy_helper
    except ImportError:
        raise QCoreError("ONNX export needs the onnx package: pip install 'qcore[onnx]'") from None
    qm = art.model
    g = _Graph(helper, numpy_helper)
    mean = g.const(art.normalizer_mean.reshape(1, -1, 1), "normalizer.mean")
    std = g.const(art.normalizer_std.reshape(1, -1, 1), "normalizer.std")
    x = g.op("Div", [g.op("Sub", ["X", mean], "centre"), std], "input")
    res = x
    for d in range(qm.depth):
        p = f"blocks.{d}"
        b = _conv(g, art, f"{p}.bottleneck", x) if f"{p}.bottleneck" in qm.layers else x
        branches = [_conv(g, art, f"{p}.convs.{i}", b) for i in range(3)]
        pooled = g.op("MaxPool", [x], f"{p}.maxpool", kernel_shape=[3], strides=[1], pads=[1, 1])
        branches.append(_conv(g, art, f"{p}.pool_conv", pooled))
        y = g.op("Concat", branches, f"{p}.concat", axis=1)
        y = g.op("Relu", [_norm(g, art, f"{p}.bn", y)], f"{p}.relu")
        s = f"shortcuts.{d}"
        if f"{s}.bn" in qm.norms:
            r = _conv(g, art, f"{s}.conv", res) if f"{s}.conv" in qm.layers else res
            y = g.op("Add", [y, _norm(g, art, f"{s}.bn", r)], f"{s}.add")
            y = g.op("Relu", [y], f"{s}.relu")
            res = y
        x = y
    features = g.op("ReduceMean", [x], "features", axes=[2], keepdims=0)
    if art.device.head == "slda" and art.head is not None:
        weight, bias, _ = solve_head(art.head, art.device)  # (n_classes, n_features), (n_classes,)
        w, bias_name = g.const(weight, "slda.weight"), g.const(bias, "slda.bias")
        logits = g.op("Gemm", [features, w, bias_name], "slda", transB=1)
        n_out = int(weight.shape[0])  # every class the head knows, grown ones included
    else:
        head = qm.layers["head"]
        inputs = [_act(g, features, head, "head"), _weight(g, "head", head)]
        if head.bias is not None:
            inputs.append(g.const(head.bias.astype(np.float32), "head.bias"))
        logits = g.op("Gemm", inputs, "head", transB=1)
        n_out = qm.n_classes
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    graph = helper.make_graph(
        g.nodes,
        "qcore",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", qm.n_channels, "t"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", n_out])],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qcore"
    )
    model.ir_version = 8  # readable by every ONNX Runtime that runs opset 17
    helper.set_model_props(model, _metadata(art, n_out))
    checker.check_model(model)
    return model


def _metadata(art: Artifact, n_out: int) -> dict[str, str]:
    """The model's ``metadata_props``: the names of its ``n_out`` logits in order (JSON)
    and the window length the device takes."""
    names = json.dumps(list(art.class_names[:n_out]))
    return {"class_names": names, "window_length": str(art.window_length)}


def to_onnx(art: Artifact, path: str | Path) -> int:
    """Write ``art``'s model to ``path`` as ONNX (atomically); return the file's bytes."""
    data = build_onnx(art).SerializeToString()
    write_atomic(path, data, 0o644)
    return len(data)
