"""Edge against cloud: predictions on real test sets, and one calibration step."""

import numpy as np
import pytest
import torch

from qcore.cloud.export import to_qmodel
from qcore.cloud.flipnet import collect_rounds, fit_flipnet
from qcore.cloud.model import InceptionTime
from qcore.cloud.quantize import quantize_model
from qcore.cloud.train import predict_logits, train_float
from qcore.coreset.core import build_core
from qcore.data.registry import load_dataset
from qcore.data.scenario import make_scenario
from qcore.edge.artifact import build_artifact
from qcore.edge.device import Device
from qcore.edge.infer import forward
from qcore.eval.stream import QCoreCalibrator


@pytest.fixture(scope="module")
def hapt_model():
    sc = make_scenario(load_dataset("hapt"), 1, 4, n_batches=10, seed=0)
    torch.manual_seed(0)
    model = InceptionTime(6, 6, filters=8, depth=3)
    train_float(model, sc.source_train.X, sc.source_train.y, epochs=3, batch_size=64, seed=0)
    return sc, model


@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_edge_predicts_what_torch_predicts_on_hapt(hapt_model, bits):
    sc, model = hapt_model
    qmodel = quantize_model(model, bits, sc.source_train.X[:256])
    qm = to_qmodel(qmodel)
    for split in (sc.source_test, sc.target_test):
        ref = predict_logits(qmodel, split.X)
        got = forward(qm, split.X)
        agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
        gap = float(np.abs(ref - got).max())
        assert agree >= 0.995, f"{bits} bits: agreement {agree:.4f}, max logit diff {gap:.2e}"
        assert gap < 1e-3, f"{bits} bits: max logit diff {gap:.2e}"


@pytest.mark.slow
def test_device_step_equals_cloud_simulation(hapt_model):
    sc, model = hapt_model
    X, y = sc.source_train.X, sc.source_train.y
    qmodel = quantize_model(model, 4, X[:256])
    core = build_core(X, y, np.ones(len(y), int), 10, "proportional", seed=0)
    rounds = collect_rounds(
        qmodel,
        core.X,
        core.y,
        X,
        y,
        rounds=3,
        steps=3,
        lr=1e-3,
        batch_len=10,
        seed=0,
        step_relative_lr=0.05,
    )
    net = fit_flipnet(rounds, 6, iters=20, seed=0)
    art = build_artifact(to_qmodel(qmodel), core, net, sc.normalizer, sc.class_names, {})
    device = Device(art, guard_margin=1.0, steps=2, guard=True, bn_mode="reestimate")
    sim = QCoreCalibrator(
        art.model, art.core, art.flipnet, steps=2, guard=True, bn_mode="reestimate", seed=0
    )
    batch = sc.stream[0]
    raw = batch.X * sc.normalizer.std[None, :, None] + sc.normalizer.mean[None, :, None]
    device.step(raw.astype(np.float32), batch.y)
    sim.observe(batch)
    for name, layer in sim.qm.layers.items():
        np.testing.assert_array_equal(device.art.model.layers[name].weight.q, layer.weight.q)
