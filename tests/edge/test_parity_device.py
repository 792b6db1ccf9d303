"""Edge against cloud: predictions on real test sets; the simulated stream against a
:class:`Device` built from the run's own deployed artifact, step by step."""

import json

import numpy as np
import pytest
import torch

from qcore.cloud.export import to_qmodel
from qcore.cloud.model import InceptionTime
from qcore.cloud.quantize import quantize_model
from qcore.cloud.train import predict_logits, train_float
from qcore.config import DeviceConfig, RunConfig
from qcore.data.registry import load_dataset
from qcore.data.scenario import make_scenario
from qcore.edge.artifact import encode_artifact, load_artifact
from qcore.edge.device import Device
from qcore.edge.infer import forward
from qcore.eval.runner import run
from qcore.methods.qcore_method import DeviceCalibrator


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
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_onnx_runtime_predicts_what_the_edge_predicts_on_hapt(hapt_model, bits, tmp_path):
    import onnxruntime as ort

    from qcore.config import DeviceConfig
    from qcore.edge.artifact import build_artifact
    from qcore.edge.onnx_export import to_onnx

    sc, model = hapt_model
    qm = to_qmodel(quantize_model(model, bits, sc.source_train.X[:256]))
    art = build_artifact(
        qm, None, None, sc.normalizer, sc.class_names, {}, 128, DeviceConfig(flip_steps=0)
    )
    to_onnx(art, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    mean, std = sc.normalizer.mean[None, :, None], sc.normalizer.std[None, :, None]
    for split in (sc.source_test, sc.target_test):
        raw = (split.X * std + mean).astype(np.float32)
        got = session.run(None, {"X": raw})[0]
        want = forward(qm, split.X)
        agree = float(np.mean(got.argmax(1) == want.argmax(1)))
        assert agree >= 0.995, f"{bits} bits: ONNX agrees on {agree:.4f} of the windows"


# Flips must really happen for the comparison to mean anything: every pass is applied
# (guard off, nothing rolled back) and may move up to 5% of the codes.
PARITY = RunConfig(
    dataset="synthetic",
    source=0,
    target=1,
    filters=4,
    depth=3,
    epochs=4,
    core_size=10,
    n_batches=6,
    bits=(4,),
    method="qcore",
    device=DeviceConfig(flip_guard="off", flip_budget=0.05, guard_margin=1.0),
    threads=1,
)


@pytest.fixture(scope="module")
def parity_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("parity")
    result = run(PARITY, out)
    c = PARITY
    sc = make_scenario(
        load_dataset(c.dataset, seed=c.seed),
        c.source,
        c.target,
        c.n_batches,
        c.test_fraction,
        c.seed,
    )
    return out, result, sc


def _same_state(a, b) -> None:
    """Equal codes, labels and origins; statistics and windows equal up to the float
    rounding of normalising raw windows on the device (a few ulp)."""
    for name, layer in a.model.layers.items():
        np.testing.assert_array_equal(layer.weight.q, b.model.layers[name].weight.q)
    for name, bn in a.model.norms.items():
        for key in ("running_mean", "running_var"):
            got, want = getattr(b.model.norms[name], key), getattr(bn, key)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.core.X, b.core.X, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.core.y, b.core.y)
    np.testing.assert_array_equal(a.core.origin, b.core.origin)


def test_run_streams_qcore_through_the_device_of_its_deployed_artifact(parity_run):
    out, result, sc = parity_run
    row = next(r for r in result["results"] if r["method"] == "qcore")
    assert sum(s["flips"] for s in row["steps"]) > 0, "no flips: the comparison proves nothing"
    device = Device(load_artifact(out / "deployed-4bit.qcore"))
    for batch, step in zip(sc.stream, row["steps"], strict=True):
        report = device.step(batch.X, batch.y, normalized=True)
        assert report.accuracy == step["task_acc"]
        assert report.flips == step["flips"]
        assert report.passes_rejected == step["passes_rejected"]
        for split, key in ((sc.source_test, "source_acc"), (sc.target_test, "target_acc")):
            pred = device.predict(split.X, normalized=True)
            assert float(np.mean(pred == split.y)) == step[key]
        core = device.art.core
        assert float(np.mean(device.predict(core.X, normalized=True) == core.y)) == step["core_acc"]
    # the run's final state is byte for byte what this device holds after the same batches
    calibrated = load_artifact(out / "calibrated-4bit.qcore")
    assert encode_artifact(calibrated) == encode_artifact(device.art)
    json.dumps(row["steps"])


def test_simulation_and_device_on_raw_windows_agree_after_every_step(parity_run):
    out, _, sc = parity_run
    deployed = load_artifact(out / "deployed-4bit.qcore")
    sim, device = DeviceCalibrator(deployed), Device(load_artifact(out / "deployed-4bit.qcore"))
    moved = 0
    for batch in sc.stream:
        before = sim.art.model.layers["head"].weight.q.copy()
        rep = sim.observe(batch)
        # raw sensor windows, as a device receives them, normalised by the artifact
        raw = batch.X * sc.normalizer.std[None, :, None] + sc.normalizer.mean[None, :, None]
        report = device.step(raw.astype(np.float32), batch.y)
        assert report.accuracy == rep.task_acc
        assert report.flips == rep.extra["flips"]
        _same_state(sim.art, device.art)
        moved += int(np.any(before != sim.art.model.layers["head"].weight.q))
    assert moved > 0, "the head never moved: the comparison proves nothing"
