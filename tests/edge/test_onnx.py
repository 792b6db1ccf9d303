"""ONNX export: ONNX Runtime runs the device's model and predicts what the device predicts."""

from __future__ import annotations

import json
from dataclasses import replace

import edge_kit as B
import numpy as np
import onnxruntime as ort
import pytest

from qcore.edge.artifact import save_artifact
from qcore.edge.cli import main
from qcore.edge.device import Device
from qcore.edge.head import batch_stats
from qcore.edge.infer import forward_features
from qcore.edge.onnx_export import to_onnx


def _run(path, X: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"X": X})[0]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_onnx_runtime_predicts_what_the_device_predicts(tiny_model, tiny_xy, tmp_path, bits):
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X, y, bits=bits)
    raw = B.raw(X)
    to_onnx(art, tmp_path / "m.onnx")
    got = _run(tmp_path / "m.onnx", raw)
    dev = Device(art)
    want = dev.predict(raw)
    assert np.mean(got.argmax(1) == want) >= 0.995
    # the streaming head as exported: its solved weights on the pooled features
    stats = batch_stats(forward_features(art.model, X)[1], y, 3)
    slda = replace(art, head=stats, device=art.device.replace(head="slda", flip_steps=0))
    to_onnx(slda, tmp_path / "slda.onnx")
    got = _run(tmp_path / "slda.onnx", raw)
    assert np.mean(got.argmax(1) == Device(slda).predict(raw)) >= 0.995


def test_a_calibrated_state_exports_its_own_codes(tiny_model, tiny_xy, tmp_path, capsys):
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X, y)
    dev = Device(art, art.device.replace(flip_guard="off", guard_margin=1.0, flip_budget=0.2))
    for Xb, yb in B.stream_batches(X, y, 2):
        dev.step(Xb, yb)
    moved = any(
        not np.array_equal(dev.art.model.layers[n].weight.q, art.model.layers[n].weight.q)
        for n in art.model.layers
    )
    assert moved, "no flips: the export would not show the state's own codes"
    save_artifact(tmp_path / "state.qcore", dev.art)
    out = tmp_path / "state.onnx"
    assert (
        main(["export", str(tmp_path / "state.qcore"), "--format", "onnx", "--out", str(out)]) == 0
    )
    assert json.loads(capsys.readouterr().out)["total"] == out.stat().st_size
    raw = B.raw(X)
    assert np.mean(_run(out, raw).argmax(1) == dev.predict(raw)) >= 0.995
    assert main(["export", str(tmp_path), "--out", str(out)]) == 2  # a folder needs --bits
    assert "--bits" in capsys.readouterr().err
