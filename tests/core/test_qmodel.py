"""QuantizedModel bookkeeping: device bytes and deep copies (NumPy only, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from qcore.core.qmodel import BatchNorm, QLayer, QuantizedModel
from qcore.core.quant import QuantizedTensor, quantize_weight
from qcore.errors import QCoreError

KERNELS = (39, 19, 9)


def build_qmodel(
    n_channels: int, n_classes: int, filters: int, depth: int, bits: int | None, seed: int
) -> QuantizedModel:
    """A random QuantizedModel with InceptionTime's structure, built without torch."""
    rng = np.random.default_rng(seed)
    width = 4 * filters

    def layer(c_out: int, c_in: int, k: int, act: bool) -> QLayer:
        w = (rng.standard_normal((c_out, c_in, k)) * 0.2).astype(np.float32)
        weight = w if bits is None else quantize_weight(w, bits)
        a = (0.05, 3, bits) if (act and bits is not None) else None
        return QLayer(weight, a, None, k)

    def bn(c: int) -> BatchNorm:
        return BatchNorm(
            rng.uniform(0.5, 1.5, c).astype(np.float32),
            (rng.standard_normal(c) * 0.1).astype(np.float32),
            (rng.standard_normal(c) * 0.1).astype(np.float32),
            rng.uniform(0.5, 2.0, c).astype(np.float32),
            1e-5,
        )

    layers: dict[str, QLayer] = {}
    norms: dict[str, BatchNorm] = {}
    for d in range(depth):
        c_in = n_channels if d == 0 else width
        if c_in > 1:
            layers[f"blocks.{d}.bottleneck"] = layer(filters, c_in, 1, d > 0)
        for i, k in enumerate(KERNELS):
            layers[f"blocks.{d}.convs.{i}"] = layer(filters, filters if c_in > 1 else 1, k, True)
        layers[f"blocks.{d}.pool_conv"] = layer(filters, c_in, 1, d > 0)
        norms[f"blocks.{d}.bn"] = bn(width)
    res_in = n_channels
    for d in range(depth):
        if d % 3 == 2:
            if res_in != width:
                layers[f"shortcuts.{d}.conv"] = layer(width, res_in, 1, d > 2)
            norms[f"shortcuts.{d}.bn"] = bn(width)
            res_in = width
    hw = (rng.standard_normal((n_classes, width)) * 0.2).astype(np.float32)
    head_w = hw if bits is None else quantize_weight(hw, bits)
    head_act = None if bits is None else (0.02, 0, 8)
    layers["head"] = QLayer(head_w, head_act, np.zeros(n_classes, np.float32), 1)
    return QuantizedModel(n_channels, n_classes, filters, depth, bits, layers, norms)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_device_bytes_per_layer_is_packed_codes_plus_params(bits: int) -> None:
    qm = build_qmodel(3, 4, 8, 6, bits, seed=0)
    expected = 0
    for name, layer in qm.layers.items():
        assert isinstance(layer.weight, QuantizedTensor), name
        n, n_out = layer.weight.q.size, layer.weight.shape[0]
        per_layer = -(-n * bits // 8) + 4 * n_out + n_out
        assert layer.weight_nbytes() == per_layer, name
        expected += per_layer
    parts = qm.device_bytes()
    assert parts["weights"] == expected
    assert parts["norms"] == 16 * sum(bn.n_channels for bn in qm.norms.values())
    assert parts["act"] == 5 * sum(layer.act is not None for layer in qm.layers.values())
    assert parts["head_bias"] == 4 * qm.n_classes
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_device_bytes_decrease_with_bits_and_float_is_4_per_value() -> None:
    totals = [build_qmodel(3, 4, 8, 6, b, seed=0).device_bytes() for b in range(2, 9)]
    weights = [t["weights"] for t in totals]
    assert all(a < b for a, b in zip(weights, weights[1:], strict=False)), weights
    fm = build_qmodel(3, 4, 8, 6, None, seed=0)
    n_weights = sum(layer.weight.size for layer in fm.layers.values())
    parts = fm.device_bytes()
    assert parts["weights"] == 4 * n_weights
    assert parts["act"] == 0
    assert parts["total"] > totals[-1]["total"]


def test_copy_is_deep() -> None:
    qm = build_qmodel(3, 4, 4, 3, 4, seed=1)
    cp = qm.copy()
    w = cp.layers["blocks.1.convs.0"].weight
    assert isinstance(w, QuantizedTensor)
    w.q[0, 0, 0] = (w.q[0, 0, 0] + 1) % 16
    cp.norms["blocks.0.bn"].running_mean[:] = 7.0
    orig = qm.layers["blocks.1.convs.0"].weight
    assert isinstance(orig, QuantizedTensor)
    assert orig.q[0, 0, 0] != w.q[0, 0, 0]
    assert not np.any(qm.norms["blocks.0.bn"].running_mean == 7.0)
    assert cp.device_bytes() == qm.device_bytes()


def test_bad_descriptions_raise() -> None:
    with pytest.raises(QCoreError):
        QLayer(np.zeros((2, 3, 5), np.float32), None, None, 3)
    with pytest.raises(QCoreError):
        QLayer(np.zeros((2, 3), np.float64), None, None, 1)
    qm = build_qmodel(3, 4, 4, 3, None, seed=0)
    with pytest.raises(QCoreError):
        QuantizedModel(3, 4, 4, 3, None, {}, qm.norms)
