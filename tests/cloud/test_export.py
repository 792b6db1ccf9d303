"""to_qmodel / load_qmodel: the deployed description round-trips through the torch model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from edge_kit import random_bn_model

from qcore.cloud.export import load_qmodel, to_qmodel
from qcore.cloud.model import InceptionTime, count_params
from qcore.cloud.quantize import quantize_model
from qcore.core.quant import QuantizedTensor
from qcore.errors import QCoreError

torch.set_num_threads(2)


def quantized(bits: int | None, seed: int = 0) -> tuple[InceptionTime, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((48, 3, 40)).astype(np.float32)
    return quantize_model(random_bn_model(3, 4, 4, 6, seed), bits, X, seed=seed), X


def logits(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("bits", [None, 2, 5, 8])
def test_round_trip_into_a_fresh_model_reproduces_outputs(bits: int | None) -> None:
    model, X = quantized(bits)
    qm = to_qmodel(model)
    assert qm.bits == bits
    fresh = random_bn_model(3, 4, 4, 6, seed=99)  # different weights and statistics
    load_qmodel(fresh, qm)
    np.testing.assert_array_equal(logits(fresh, X), logits(model, X))
    same = copy.deepcopy(model)
    load_qmodel(same, qm)
    np.testing.assert_array_equal(logits(same, X), logits(model, X))


def test_export_float_model_has_float_weights() -> None:
    model, _ = quantized(None)
    qm = to_qmodel(model)
    for name, layer in qm.layers.items():
        assert isinstance(layer.weight, np.ndarray) and layer.weight.dtype == np.float32, name
        assert layer.act is None, name
    n_running = sum(2 * bn.n_channels for bn in qm.norms.values())
    assert qm.device_bytes()["total"] == 4 * (count_params(model) + n_running)


def test_one_code_change_moves_exactly_one_weight_by_one_step() -> None:
    model, X = quantized(3)
    qm = to_qmodel(model).copy()
    name = "blocks.1.convs.1"
    w = qm.layers[name].weight
    assert isinstance(w, QuantizedTensor)
    idx = tuple(int(i) for i in np.argwhere(w.q < 7)[0])
    before_codes = model.get_submodule(name).codes().numpy()
    before_w = model.get_submodule(name).quant_weight().detach().numpy()
    w.q[idx] += 1
    load_qmodel(model, qm)
    layer = model.get_submodule(name)
    diff = layer.codes().numpy() - before_codes
    assert np.count_nonzero(diff) == 1 and diff[idx] == 1
    wdiff = layer.quant_weight().detach().numpy() - before_w
    assert np.count_nonzero(wdiff) == 1
    assert wdiff[idx] == pytest.approx(float(w.scale[idx[0]]), rel=1e-5)
    other = to_qmodel(model)
    for key, lay in other.layers.items():
        if key != name:
            ref = qm.layers[key].weight
            assert isinstance(lay.weight, QuantizedTensor) and isinstance(ref, QuantizedTensor)
            np.testing.assert_array_equal(lay.weight.q, ref.q)


def test_bn_statistics_are_written_back() -> None:
    model, _ = quantized(4)
    qm = to_qmodel(model)
    qm.norms["blocks.2.bn"].running_mean += 1.5
    qm.norms["shortcuts.5.bn"].running_var *= 2.0
    load_qmodel(model, qm)
    bn = model.get_submodule("blocks.2.bn")
    np.testing.assert_array_equal(bn.running_mean.numpy(), qm.norms["blocks.2.bn"].running_mean)
    sc = model.get_submodule("shortcuts.5.bn")
    np.testing.assert_array_equal(sc.running_var.numpy(), qm.norms["shortcuts.5.bn"].running_var)


def test_architecture_mismatch_raises() -> None:
    model, _ = quantized(4)
    qm = to_qmodel(model)
    with pytest.raises(QCoreError):
        load_qmodel(InceptionTime(3, 4, 4, 3), qm)
    with pytest.raises(QCoreError):
        load_qmodel(InceptionTime(3, 4, 8, 6), qm)
