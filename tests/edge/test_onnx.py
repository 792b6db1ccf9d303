"""ONNX export: ONNX Runtime runs the device's model and predicts what the device predicts."""

from __future__ import annotations

import json
from dataclasses import replace

import edge_kit as B
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcore.cli import main
from qcore.edge.artifact import save_artifact
from qcore.edge.device import Device
from qcore.edge.head import batch_stats
from qcore.edge.infer import forward_features
from qcore.edge.onnx_export import to_onnx


@pytest.fixture(scope="module")
def kit_art(tiny_model, tiny_xy):
    """The 4-bit :func:`edge_kit.small_artifact` (built once for the tests that only read it)."""
    return B.small_artifact(tiny_model, *tiny_xy)


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
    slda = _slda(art, X, y)
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


def test_a_run_folder_with_one_bit_width_needs_no_bits(kit_art, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_artifact(run / "deployed-4bit.qcore", kit_art)
    out = tmp_path / "model.qcore"
    assert main(["export", str(run), "--out", str(out)]) == 0  # the only bit-width
    assert out.read_bytes() == (run / "deployed-4bit.qcore").read_bytes()
    (run / "deployed-8bit.qcore").write_bytes(out.read_bytes())
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 2  # two: say which
    assert "4, 8" in capsys.readouterr().err
    assert main(["export", str(run), "--bits", "8", "--out", str(out)]) == 0
    assert main(["export", str(tmp_path / "empty"), "--out", str(out)]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no deployed-*bit.qcore" in capsys.readouterr().err


def _slda(art, X, y):
    """``art`` with a streaming head fitted on the normalised windows ``X``."""
    stats = batch_stats(forward_features(art.model, X)[1], y, 3)
    return replace(art, head=stats, device=art.device.replace(head="slda", flip_steps=0))


def test_the_model_names_its_classes_and_its_window(kit_art, tiny_xy, tmp_path):
    X, _ = tiny_xy
    to_onnx(kit_art, tmp_path / "m.onnx")
    meta = ort.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == list(B.CLASSES)
    assert int(meta["window_length"]) == X.shape[2]


def test_a_state_that_grew_a_class_exports_every_class(kit_art, tiny_xy, tmp_path, capfd):
    X, y = tiny_xy
    dev = Device(_slda(kit_art, X, y), allow_new_classes=True)
    raw = B.raw(X)
    labels = np.array([*B.CLASSES, "spin"])[np.where(np.arange(len(y)) < 8, 3, y)]
    dev.step(raw[:20], labels[:20])  # windows 0-7 labelled as a class the cloud never saw
    assert dev.art.class_names == (*B.CLASSES, "spin")
    to_onnx(dev.art, tmp_path / "grown.onnx")
    capfd.readouterr()
    session = ort.InferenceSession(str(tmp_path / "grown.onnx"))
    got = session.run(None, {"X": raw})[0]
    declared = onnx.load(tmp_path / "grown.onnx").graph.output[0].type.tensor_type.shape.dim
    assert declared[1].dim_value == got.shape[1] == 4
    assert "W:onnxruntime" not in capfd.readouterr().err  # no warning on merging the shapes
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == [*B.CLASSES, "spin"]
    assert np.mean(got.argmax(1) == dev.predict(raw)) >= 0.995
