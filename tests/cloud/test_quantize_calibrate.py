import copy

import numpy as np
import pytest
import torch

from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.fakequant import fake_quant_ste
from qcore.cloud.model import quant_layers
from qcore.cloud.quantize import HEAD_ACT_BITS, choose_act_range, quantize_model
from qcore.cloud.train import accuracy, predict_logits, train_float
from qcore.core.quant import SUPPORTED_BITS, choose_qparams, qrange, quantize


def test_ste_matches_numpy_and_passes_gradient():
    x = torch.linspace(-2, 3, 101, requires_grad=True)
    scale, zp = choose_qparams(-1.0, 2.0, 3)
    y = fake_quant_ste(x, torch.tensor(scale), torch.tensor(float(zp)), 3)
    q = quantize(x.detach().numpy(), scale, zp, 3)
    np.testing.assert_allclose(y.detach().numpy(), (q - zp) * scale, atol=1e-6)
    y.sum().backward()
    lo, hi = (0 - float(zp)) * float(scale), (7 - float(zp)) * float(scale)
    inside = (x.detach() >= lo) & (x.detach() <= hi)
    assert torch.all(x.grad[inside] == 1) and torch.all(x.grad[~inside] == 0)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_quantized_model_codes_in_range(tiny_model, tiny_xy, bits):
    X, y = tiny_xy
    qm = quantize_model(tiny_model, bits, X)
    qmin, qmax = qrange(bits)
    for name, layer in quant_layers(qm):
        codes = layer.codes()
        assert codes.min() >= qmin and codes.max() <= qmax
        w = layer.quant_weight().detach()
        assert torch.allclose(w, (codes - layer.w_zero_point) * layer.w_scale, atol=1e-6)
        if name == "head":
            assert layer.act_bits == HEAD_ACT_BITS
    assert tiny_model.head.bits is None  # the float model is untouched


def test_accuracy_degrades_gracefully_with_bits(tiny_model, tiny_xy):
    """Fewer bits, a larger error in the logits, yet 2 bits still keep the classes apart."""
    X, y = tiny_xy
    float_acc = accuracy(tiny_model, X, y)
    float_logits = predict_logits(tiny_model, X)
    accs, errors = {}, {}
    for b in (2, 4, 8):
        qm = quantize_model(tiny_model, b, X)
        accs[b] = accuracy(qm, X, y)
        err = np.abs(predict_logits(qm, X) - float_logits).mean()
        errors[b] = err / np.abs(float_logits).mean()
    assert float_acc > 0.6
    assert abs(accs[8] - float_acc) <= 0.05
    assert accs[2] >= float_acc - 0.15 and accs[2] > 0.6  # three classes: chance is 1/3
    assert errors[2] > errors[4] > errors[8]
    assert errors[8] < 0.02 and errors[2] < 1.0


def test_act_range_clips_outliers_for_low_bits():
    v = np.concatenate([np.random.default_rng(0).normal(size=10_000), [80.0]])
    lo, hi = choose_act_range(v, 2)
    assert hi < 80.0 and lo < 0


def test_backprop_calibration_moves_integer_codes(tiny_model, tiny_xy):
    X, y = tiny_xy
    qm = quantize_model(tiny_model, 8, X)
    before = {n: m.codes().clone() for n, m in quant_layers(qm)}
    scales = {n: m.w_scale.clone() for n, m in quant_layers(qm)}
    backprop_calibrate(qm, X, y, steps=5, lr=1e-2, batch_size=32, seed=0)
    changed = sum(int((m.codes() != before[n]).sum()) for n, m in quant_layers(qm))
    assert changed > 0  # straight-through: the latent weights really train
    for n, m in quant_layers(qm):  # but the scales are fixed
        assert torch.equal(m.w_scale, scales[n])


def test_training_dynamics_shape_and_seed(tiny_xy):
    from qcore.cloud.model import InceptionTime

    X, y = tiny_xy
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = InceptionTime(3, 3, filters=4, depth=3)
        dyn = train_float(
            m, X, y, epochs=4, batch_size=16, seed=0, dynamics_bits=(2, 4), record_every=2
        )
        runs.append((dyn, copy.deepcopy(m.state_dict())))
    dyn = runs[0][0]
    assert dyn.correct.shape == (2, 3, len(y)) and dyn.bits == (None, 2, 4)
    np.testing.assert_array_equal(dyn.correct, runs[1][0].correct)
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k
