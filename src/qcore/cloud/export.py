"""Export a (quantized) InceptionTime to a :class:`QuantizedModel` and load one back.

``to_qmodel`` takes what the deployed model really is: the integer codes of the latent
weights under each layer's own fixed ``w_scale``/``w_zero_point``, the input activation
parameters, and BatchNorm parameters and running statistics. ``load_qmodel`` writes such
a description back into a torch model (codes via ``set_codes``), so an edge-side change
(code flips, re-estimated BatchNorm statistics) can be replayed in the cloud simulation
and the two compared.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qcore.cloud.fakequant import QConv1d, QLinear
from qcore.cloud.model import InceptionTime, quant_layers
from qcore.core.qmodel import BatchNorm, QLayer, QuantizedModel
from qcore.core.quant import QuantizedTensor
from qcore.errors import QCoreError


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=True)


def _export_layer(layer: QConv1d | QLinear) -> QLayer:
    if layer.bits is None:
        weight: QuantizedTensor | np.ndarray = _np(layer.weight)
    else:
        q = layer.codes().cpu().numpy().astype(np.uint8)
        scale = _np(layer.w_scale).reshape(-1)
        zero_point = np.rint(_np(layer.w_zero_point).reshape(-1)).astype(np.int32)
        weight = QuantizedTensor(q, scale, zero_point, layer.bits)
    act = None
    if layer.act_bits is not None:
        act = (float(layer.a_scale), int(round(float(layer.a_zero_point))), int(layer.act_bits))
    bias = None if layer.bias is None else _np(layer.bias)
    k = layer.kernel_size[0] if isinstance(layer, QConv1d) else 1
    return QLayer(weight, act, bias, k)


def _norms(model: nn.Module) -> list[tuple[str, nn.BatchNorm1d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm1d)]


def to_qmodel(model: InceptionTime) -> QuantizedModel:
    """The deployed form of ``model`` (float32 weights for a float model, ``bits`` None)."""
    layers = {name: _export_layer(m) for name, m in quant_layers(model)}
    norms = {}
    for name, bn in _norms(model):
        if bn.running_mean is None or bn.running_var is None or not bn.affine:
            raise QCoreError(f"BatchNorm {name} needs running statistics and affine parameters")
        norms[name] = BatchNorm(
            _np(bn.weight), _np(bn.bias), _np(bn.running_mean), _np(bn.running_var), float(bn.eps)
        )
    widths = {m.bits for _, m in quant_layers(model)}
    if len(widths) != 1:
        raise QCoreError(f"mixed weight bit-widths {sorted(map(str, widths))} cannot be exported")
    return QuantizedModel(
        n_channels=model.n_channels,
        n_classes=model.n_classes,
        filters=model.filters,
        depth=model.depth,
        bits=widths.pop(),
        layers=layers,
        norms=norms,
    )


def _load_layer(name: str, m: QConv1d | QLinear, spec: QLayer) -> None:
    if tuple(spec.weight.shape) != tuple(m.weight.shape):
        raise QCoreError(f"{name}: weight shape {spec.weight.shape} != {tuple(m.weight.shape)}")
    with torch.no_grad():
        w = spec.weight
        if isinstance(w, QuantizedTensor):
            m.bits = w.bits
            m.w_scale.copy_(torch.from_numpy(w.scale.astype(np.float32)).reshape(m.w_scale.shape))
            zp = torch.from_numpy(w.zero_point.astype(np.float32)).reshape(m.w_zero_point.shape)
            m.w_zero_point.copy_(zp)
            m.set_codes(torch.from_numpy(w.q.astype(np.int64)))
        else:
            m.bits = None
            m.weight.copy_(torch.from_numpy(w))
        if spec.act is None:
            m.act_bits = None
        else:
            scale, zero_point, bits = spec.act
            m.a_scale.fill_(float(np.float32(scale)))
            m.a_zero_point.fill_(float(zero_point))
            m.act_bits = int(bits)
        if (spec.bias is None) != (m.bias is None):
            raise QCoreError(f"{name}: bias presence differs between model and description")
        if spec.bias is not None:
            m.bias.copy_(torch.from_numpy(spec.bias))


def load_qmodel(model: InceptionTime, qm: QuantizedModel) -> None:
    """Write ``qm`` into ``model`` in place: codes, quantization parameters, head bias,
    BatchNorm parameters and running statistics.

    The architecture must match (same layer and norm names and shapes); anything else
    raises :class:`QCoreError` before the model is touched.
    """
    dims = (model.n_channels, model.n_classes, model.filters, model.depth)
    if dims != (qm.n_channels, qm.n_classes, qm.filters, qm.depth):
        raise QCoreError(f"model dims {dims} differ from the description's")
    layers = dict(quant_layers(model))
    norms = dict(_norms(model))
    if set(layers) != set(qm.layers) or set(norms) != set(qm.norms):
        missing = (set(layers) ^ set(qm.layers)) | (set(norms) ^ set(qm.norms))
        raise QCoreError(f"model and description differ in modules: {sorted(missing)}")
    for name, bn in norms.items():
        if qm.norms[name].n_channels != bn.num_features:
            raise QCoreError(f"{name}: {qm.norms[name].n_channels} != {bn.num_features} channels")
    for name, m in layers.items():
        if tuple(qm.layers[name].weight.shape) != tuple(m.weight.shape):
            raise QCoreError(f"{name}: weight shape mismatch")
    for name, m in layers.items():
        _load_layer(name, m, qm.layers[name])
    with torch.no_grad():
        for name, bn in norms.items():
            spec = qm.norms[name]
            bn.weight.copy_(torch.from_numpy(spec.weight))
            bn.bias.copy_(torch.from_numpy(spec.bias))
            bn.running_mean.copy_(torch.from_numpy(spec.running_mean))
            bn.running_var.copy_(torch.from_numpy(spec.running_var))
            bn.eps = float(spec.eps)
