"""C export: the exported C99 runtime, compiled with gcc on the host, computes what the
NumPy device computes (pooled features, logits, predictions) and its streaming head learns
what :func:`qcore.edge.head.update` learns: the tiny model at 2, 4 and 8 bits, and untrained
4-bit models of the default size (whose arena is bounded), of one channel and of depth 6.

Tolerances: the C sums a convolution and the head in another order than NumPy's BLAS, so
features and logits agree to float32 rounding; we ask for ``1e-4`` of the largest value
(seen: ~2e-7). Predictions must agree on every window whose NumPy top-two logits differ
by more than ``1e-3`` of the largest logit, and on at least 99.5% of all windows. Head
statistics: within ``1e-4`` of their largest value (seen: ~2e-7).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import edge_kit as B
import numpy as np
import pytest

from qcore.cli import main
from qcore.cloud.export import to_qmodel
from qcore.cloud.quantize import quantize_model
from qcore.config import DeviceConfig
from qcore.core.qmodel import QLayer
from qcore.core.quant import QuantizedTensor
from qcore.edge import head as H
from qcore.edge.artifact import Artifact, decode_artifact, save_artifact
from qcore.edge.backbone import solve_head
from qcore.edge.c_export import arena_bytes, export_c, state_bytes
from qcore.edge.device import Device
from qcore.edge.infer import forward, forward_features
from qcore.errors import QCoreError

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None, reason="gcc is not installed: the exported C cannot be compiled"
)
CFLAGS = "-std=c99 -O2 -Wall -Wextra -Werror"
N_FIT = 30  # windows the shipped head statistics are fitted on; the rest are learnt in C
NEW_FROM = 54  # learnt windows from here on are labelled as a new class


def _build(out: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(out), "CC=gcc", f"CFLAGS={CFLAGS}"], check=True)
    return out / "qcore_example"


def _run(program: Path, windows: np.ndarray, labels: list[int]) -> dict[str, list[np.ndarray]]:
    """The example's output for raw windows with labels (-1: none), by line tag."""
    pairs = zip(labels, windows, strict=True)
    data = b"".join(np.int32(label).tobytes() + w.astype("<f4").tobytes() for label, w in pairs)
    done = subprocess.run([str(program)], input=data, capture_output=True, check=True)
    out: dict[str, list[np.ndarray]] = {}
    for line in done.stdout.decode().splitlines():
        tag, *values = line.split()
        out.setdefault(tag, []).append(np.array([float(v) for v in values]))
    return out


@pytest.fixture(scope="module", params=[2, 4, 8])
def kit(request, tiny_model, tiny_xy, tmp_path_factory):
    """(artifact with a streaming head fitted on the first windows, its compiled example,
    raw windows, labels, NumPy features): one export and compile per bit-width."""
    X, y = tiny_xy
    art = B.small_artifact(tiny_model, X, y, bits=request.param)
    raw = B.raw(X)
    _, feats = forward_features(art.model, Device(art).normalize(raw))
    stats = H.batch_stats(feats[:N_FIT], y[:N_FIT], len(B.CLASSES))
    art = replace(art, head=stats, device=art.device.replace(head="slda", flip_steps=0))
    out = tmp_path_factory.mktemp(f"c{request.param}")
    export_c(art, out)
    return art, _build(out), raw, y, feats


def _agree(got: np.ndarray, want: np.ndarray, logits: np.ndarray) -> None:
    """Predictions agree where the NumPy margin is beyond rounding, and >= 99.5% overall."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3 * np.abs(logits).max()
    assert np.array_equal(got[clear], want[clear])
    assert np.mean(got == want) >= 0.995


def test_c_inference_matches_the_numpy_device(kit):
    art, program, raw, _, feats = kit
    out = _run(program, raw, [-1] * len(raw))
    model_art = replace(art, device=art.device.replace(head="model"))
    logits, _ = forward_features(art.model, Device(art).normalize(raw))
    features, model_logits = np.array(out["F"]), np.array(out["M"])
    np.testing.assert_allclose(features, feats, rtol=0, atol=1e-4 * np.abs(feats).max())
    np.testing.assert_allclose(model_logits, logits, rtol=0, atol=1e-4 * np.abs(logits).max())
    pred = np.array(out["P"]).astype(np.int64)
    _agree(pred[:, 1], Device(model_art).predict(raw), logits)
    solved = solve_head(art.head, art.device)
    head_logits = H.logits(solved.weight, solved.bias, feats)
    np.testing.assert_allclose(
        np.array(out["H"]), head_logits, rtol=0, atol=1e-4 * np.abs(head_logits).max()
    )
    _agree(pred[:, 0], Device(art).predict(raw), head_logits)
    assert np.array_equal(pred[:, 0], pred[:, 2])  # the device predicts with its head


def test_c_head_learns_what_the_numpy_head_learns(kit):
    """Windows learnt one at a time in C (the last ones as a new class) leave the statistics
    `head.update` (batches of one, `head.grow` for the class) leaves; the head solved from
    them predicts the same."""
    art, program, raw, y, feats = kit
    labels = [int(y[i]) if i < NEW_FROM else len(B.CLASSES) for i in range(N_FIT, len(y))]
    out = _run(program, np.concatenate([raw[N_FIT:], raw]), labels + [-1] * len(raw))
    stats = art.head
    for i, label in enumerate(labels, start=N_FIT):
        stats = H.grow(stats, max(stats.n_classes, label + 1))
        stats = H.update(stats, feats[i : i + 1], np.array([label]))
    for tag, want in (("N", stats.count), ("U", stats.mean), ("S", stats.scatter)):
        got = out[tag][0].reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    solved = solve_head(stats, art.device)
    want_logits = H.logits(solved.weight, solved.bias, feats)
    got_logits = np.array(out["H"][-len(raw) :])
    seen = want_logits > H.UNSEEN / 2
    assert np.array_equal(got_logits > H.UNSEEN / 2, seen)
    scale = np.abs(want_logits[seen]).max()
    np.testing.assert_allclose(got_logits[seen], want_logits[seen], rtol=0, atol=1e-4 * scale)
    _agree(got_logits.argmax(1), want_logits.argmax(1), np.where(seen, want_logits, -scale))


def test_the_runtime_needs_no_allocation_and_only_its_headers(kit, tmp_path):
    art = kit[0]
    export_c(art, tmp_path)
    for name in ("qcore_rt.c", "qcore_model.c", "qcore_rt.h"):
        text = (tmp_path / name).read_text()
        headers = set(re.findall(r"#include [<\"]([^>\"]+)[>\"]", text))
        assert headers <= {"stdint.h", "stddef.h", "string.h", "math.h", "qcore_rt.h"}, name
        assert not re.search(r"\b(malloc|calloc|realloc|free|printf)\s*\(", text), name


def test_what_c_cannot_run_is_refused(kit, tmp_path):
    art = kit[0]
    rounded = replace(art, device=art.device.replace(head_bits=4))
    with pytest.raises(QCoreError, match="head_bits"):
        export_c(rounded, tmp_path)


def test_exact_ties_round_half_to_even(kit, tmp_path):
    """Windows whose values are exact ties of the first activation quantization: with an
    identity normaliser and a bottleneck that copies its input (codes 0/1, scale 1), block
    0's convolutions read them unchanged. ``rint`` rounds them to even, as NumPy does
    (rounding away from zero moves codes, and the features, by a quantization step)."""
    art, _, raw, _, _ = kit
    qm = art.model.copy()
    f, n = qm.filters, qm.n_channels
    codes = np.zeros((f, n, 1), np.uint8)
    codes[np.arange(f), np.arange(f) % n, 0] = 1
    copy = QuantizedTensor(codes, np.ones(f, np.float32), np.zeros(f, np.int32), qm.bits)
    qm.layers["blocks.0.bottleneck"] = QLayer(copy, None, None, 1)
    act = qm.layers["blocks.0.convs.0"].act
    assert act is not None
    scale, zero, top = np.float32(act[0]), act[1], (1 << act[2]) - 1
    k = np.random.default_rng(3).integers(-zero, top - zero, size=(8, *raw.shape[1:]))
    windows = ((k + 0.5) * scale).astype(np.float32)
    tie = windows / scale == k + 0.5  # an exact tie in float32 (most are)
    assert tie.mean() > 0.5
    windows = np.where(tie, windows, np.float32(0))
    ident = np.zeros(n, np.float32), np.ones(n, np.float32)
    export_c(replace(art, model=qm, normalizer_mean=ident[0], normalizer_std=ident[1]), tmp_path)
    out = _run(_build(tmp_path), windows, [-1] * len(windows))
    _, feats = forward_features(qm, windows)
    np.testing.assert_allclose(np.array(out["F"]), feats, rtol=0, atol=1e-4 * np.abs(feats).max())


def test_qcore_export_format_c_writes_the_folder(kit, tmp_path, capsys):
    art = kit[0]
    save_artifact(tmp_path / "m.qcore", art)
    out = tmp_path / "c"
    assert main(["export", str(tmp_path / "m.qcore"), "--format", "c", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "c" and report["arena_bytes"] > 0
    for name in ("qcore_rt.h", "qcore_rt.c", "qcore_model.c", "README.md", "main.c", "Makefile"):
        assert report[name] == (out / name).stat().st_size
    header = (out / "qcore_rt.h").read_text()
    assert f"#define QC_WINDOW {art.window_length}\n" in header


SHAPES = {  # (channels, classes, filters, depth, window)
    "default HAPT": (6, 6, 16, 3, 128),
    "one channel (no bottleneck in block 0)": (1, 3, 4, 3, 32),
    "depth 6 (a residual kept between shortcuts)": (3, 3, 4, 6, 32),
}


def _untrained_artifact(shape: tuple[int, ...], bits: int, seed: int = 0) -> Artifact:
    """A quantized, untrained InceptionTime of ``shape`` with a streaming head fitted on
    the features of 12 seeded windows."""
    c, k, f, depth, t = shape
    X = np.random.default_rng(seed).normal(0, 1, (24, c, t)).astype(np.float32)
    qm = to_qmodel(quantize_model(B.random_bn_model(c, k, f, depth, seed=seed), bits, X, seed))
    names = tuple(f"c{i}" for i in range(k))
    device = DeviceConfig(head="slda", flip_steps=0)
    art = Artifact(qm, None, None, np.zeros(c), np.ones(c), names, {"window_length": t}, 0, device)
    _, feats = forward_features(qm, X[:12])
    return replace(art, head=H.batch_stats(feats, np.arange(12) % k, k))


@pytest.mark.parametrize("name", list(SHAPES))
def test_other_shapes_match_the_numpy_device(name, tmp_path):
    """The default model's size (whose arena must stay near 56 kB: the runtime's static
    data is the arena and a few words), one channel and six blocks."""
    art = _untrained_artifact(SHAPES[name], 4)
    report = export_c(art, tmp_path)
    program = _build(tmp_path)
    obj = tmp_path / "qcore_rt.o"
    subprocess.run(
        ["gcc", *CFLAGS.split(), "-ffp-contract=off", "-c", "-o", str(obj)]
        + [str(tmp_path / "qcore_rt.c")],
        check=True,
    )
    if shutil.which("size"):
        text, data, bss = map(
            int,
            subprocess.run(["size", str(obj)], capture_output=True, text=True, check=True)
            .stdout.splitlines()[1]
            .split()[:3],
        )
        assert data == 0 and 0 <= bss - int(report["arena_bytes"]) <= 64
    if name == "default HAPT":
        assert int(report["arena_bytes"]) <= 56 * 1024
    raw = np.random.default_rng(1).normal(0, 1.5, (16, *SHAPES[name][:1], SHAPES[name][4]))
    raw = raw.astype(np.float32)
    out = _run(program, raw, [-1] * len(raw))
    logits, feats = forward_features(art.model, raw)
    np.testing.assert_allclose(np.array(out["F"]), feats, rtol=0, atol=1e-4 * np.abs(feats).max())
    pred = np.array(out["P"]).astype(np.int64)
    solved = solve_head(art.head, art.device)
    _agree(pred[:, 0], Device(art).predict(raw), H.logits(solved.weight, solved.bias, feats))
    _agree(pred[:, 1], forward(art.model, raw).argmax(1), logits)


def test_a_layer_reading_a_block_output_without_act_is_refused(kit, tmp_path):
    art = kit[0]
    qm = art.model.copy()
    layer = qm.layers["blocks.1.pool_conv"]
    qm.layers["blocks.1.pool_conv"] = QLayer(layer.weight, None, None, layer.kernel_size)
    with pytest.raises(QCoreError, match="blocks.1.pool_conv has no input quantization"):
        export_c(replace(art, model=qm), tmp_path)


def test_export_writes_the_artifact_beside_the_sources(kit, tmp_path):
    art = kit[0]
    report = export_c(art, tmp_path)
    data = (tmp_path / "model.qcore").read_bytes()
    assert (
        report["model.qcore"] == len(data)
        and decode_artifact(data, "m").class_names == art.class_names
    )
    sha = ", ".join(str(b) for b in hashlib.sha256(data).digest()[:8])
    assert f"qc_fingerprint[32] = {{\n    {sha}" in (tmp_path / "qcore_model.c").read_text()


def test_the_python_arena_formula_is_the_headers(kit, tmp_path):
    """``arena_bytes`` and ``state_bytes`` equal what the C preprocessor makes of
    ``qcore_rt.h``'s ``QC_ARENA_BYTES`` and ``QC_STATE_BYTES`` for seeded dimensions over
    wide ranges, chosen so that each part of the scratch that can be the largest
    (activations, the solve, a state blob) is in some of them; the expanded scatter
    ``4 D^2`` never is (the solve's ``8 [D (D + 1) / 2 + D]`` exceeds it by ``12 D``)."""
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(40):
        f = int(rng.integers(1, 41))
        cases.append({
            "CHANNELS": int(rng.integers(1, 13)), "WINDOW": int(rng.choice([1, 4, 32, 128, 600])),
            "FILTERS": f, "FEATURES": 4 * f, "MAX_CLASSES": int(rng.integers(2, 400)),
            "MAX_KC": int(rng.integers(1, 2000)), "KEEP_RES": int(rng.integers(0, 2)),
            "BRANCH_SETS": int(rng.integers(1, 4)),
        })  # fmt: skip
    lines = ["#include <stdio.h>", '#include "qcore_rt.h"', "int main(void) {"]
    for dims in cases:
        for key, value in dims.items():
            lines += [f"#undef QC_{key}", f"#define QC_{key} {value}"]
        parts = ("QC_ARENA_BYTES", "QC_STATE_BYTES", "QC_ACT_BYTES", "QC_SOLVE_BYTES",
                 "4 * QC_FEATURES * QC_FEATURES")  # fmt: skip
        lines.append('    printf("' + " ".join(["%ld"] * 5) + '\\n", '
                     + ", ".join(f"(long)({p})" for p in parts) + ");")  # fmt: skip
    lines += ["    return 0;", "}"]
    (tmp_path / "qcore_rt.h").write_bytes((kit[1].parent / "qcore_rt.h").read_bytes())
    (tmp_path / "cases.c").write_text("\n".join(lines) + "\n")
    exe = tmp_path / "cases"
    subprocess.run(["gcc", *CFLAGS.split(), "-o", str(exe), str(tmp_path / "cases.c")], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    winners = set()
    for dims, line in zip(cases, out.splitlines(), strict=True):
        arena, state, act, solve, expanded = map(int, line.split())
        assert (arena_bytes(dims), state_bytes(dims)) == (arena, state), dims
        winners.add(int(np.argmax([act, solve, expanded, state])))
    assert winners == {0, 1, 3}


@pytest.mark.parametrize("sets", [2, 3])
def test_branch_convolutions_with_their_own_input_quantizers(sets, tmp_path):
    """Trained models give a block's three convolutions one input quantizer; the runtime
    keeps one code set per distinct one (``QC_BRANCH_SETS``). With two or three distinct
    quantizers in block 1 the header says so and the C still computes NumPy's features."""
    art = _untrained_artifact(SHAPES["depth 6 (a residual kept between shortcuts)"], 4)
    qm = art.model.copy()
    for i, factor in list(enumerate((1.0, 1.7, 0.6)))[1:sets]:
        name = f"blocks.1.convs.{i}"
        layer = qm.layers[name]
        assert layer.act is not None
        scale, zero, bits = layer.act
        act = (float(np.float32(scale * factor)), zero, bits)
        qm.layers[name] = QLayer(layer.weight, act, layer.bias, layer.kernel_size)
    art = replace(art, model=qm)
    export_c(art, tmp_path)
    assert f"#define QC_BRANCH_SETS {sets}\n" in (tmp_path / "qcore_rt.h").read_text()
    raw = np.random.default_rng(2).normal(0, 1.5, (12, 3, 32)).astype(np.float32)
    out = _run(_build(tmp_path), raw, [-1] * len(raw))
    logits, feats = forward_features(art.model, raw)
    np.testing.assert_allclose(np.array(out["F"]), feats, rtol=0, atol=1e-4 * np.abs(feats).max())
    _agree(np.array(out["P"]).astype(np.int64)[:, 1], forward(art.model, raw).argmax(1), logits)


def _refusal(art: Artifact, tmp_path: Path) -> str:
    with pytest.raises(QCoreError) as err:
        export_c(art, tmp_path)
    assert not (tmp_path / "qcore_rt.h").exists()  # refused before anything is written
    return str(err.value)


@pytest.mark.parametrize(
    "layer", ["blocks.0.convs.2", "blocks.1.bottleneck", "blocks.1.convs.0", "blocks.5.pool_conv"]
)
def test_every_layer_reading_codes_needs_an_input_quantizer(layer, tmp_path):
    art = _untrained_artifact(SHAPES["depth 6 (a residual kept between shortcuts)"], 4)
    qm = art.model.copy()
    old = qm.layers[layer]
    qm.layers[layer] = QLayer(old.weight, None, old.bias, old.kernel_size)
    assert _refusal(replace(art, model=qm), tmp_path) == (
        f"the C runtime keeps activations between layers as codes: layer {layer} has no "
        "input quantization (act)"
    )


def test_the_shapes_the_c_runtime_cannot_run_are_refused_by_name(tmp_path):
    art = _untrained_artifact(SHAPES["depth 6 (a residual kept between shortcuts)"], 4)
    # (a block after the first without a bottleneck is refused too, but no valid model has
    # one: a block's input then has 4 x filters > 1 channels, and the model checks its shapes)
    qm = art.model.copy()
    first = qm.layers["shortcuts.2.conv"]
    assert isinstance(first.weight, QuantizedTensor)
    w = QuantizedTensor(np.zeros((16, 16, 1), np.uint8), np.ones(16, np.float32),
                        np.zeros(16, np.uint8), 4)  # fmt: skip
    qm.layers["shortcuts.5.conv"] = QLayer(w, first.act, None, 1)
    assert _refusal(replace(art, model=qm), tmp_path) == (
        "the C runtime has no 1x1 convolution on a block output's shortcut (shortcuts.5.conv)"
    )
    qm = art.model.copy()
    head = qm.layers["head"]
    qm.layers["head"] = QLayer(head.weight, head.act, head.bias, 3)
    assert _refusal(replace(art, model=qm), tmp_path) == "the model's head must be a linear layer"
    rounded = replace(art, device=art.device.replace(head_bits=4))
    assert _refusal(rounded, tmp_path) == (
        "the C runtime solves the streaming head in float: head_bits must be unset"
    )
    # the first shortcut may have its 1x1 convolution (block 0 reads the normalised input)
    assert "shortcuts.2.conv" in art.model.layers and export_c(art, tmp_path)["arena_bytes"]
