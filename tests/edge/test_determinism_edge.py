"""Same seed and inputs give bit-identical weights and core on the edge runtime.

Two in-process devices, and two separate runs of the real command (``python -m
qcore.cli device``) with different hash seeds, must agree byte for byte after every
step. A different ``--set seed=N`` draws a different core (the core update samples at random).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import edge_kit as B  # tests/edge/edge_kit.py (tests/edge is on sys.path: see pyproject)
import numpy as np
import pytest
import torch

from qcore.core.quant import QuantizedTensor
from qcore.edge.artifact import Artifact, encode_artifact, load_artifact
from qcore.edge.state import load_state

torch.set_num_threads(1)


CLI = [sys.executable, "-m", "qcore.cli", "device"]
N_BATCHES = 6


@pytest.fixture(scope="module")
def setup(tiny_model, tiny_xy, tmp_path_factory):
    """(artifact path, stream folder, its batches in processing order)."""
    X, y = tiny_xy
    folder = tmp_path_factory.mktemp("determinism")
    return B.artifact_and_stream(tiny_model, X, y, folder, N_BATCHES, seed=21)


def _arrays(art: Artifact) -> dict[str, np.ndarray]:
    """Every weight, BatchNorm and core array of ``art``, by name."""
    out: dict[str, np.ndarray] = {}
    for name, layer in art.model.layers.items():
        w = layer.weight
        if isinstance(w, QuantizedTensor):
            out |= {f"{name}.q": w.q, f"{name}.scale": w.scale, f"{name}.zp": w.zero_point}
        else:
            out[f"{name}.w"] = w
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias
    for name, bn in art.model.norms.items():
        for key in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.{key}"] = getattr(bn, key)
    assert art.core is not None
    for key in ("X", "y", "score", "origin"):
        out[f"core.{key}"] = getattr(art.core, key)
    return out


def _assert_identical(a: Artifact, b: Artifact) -> None:
    arr_a, arr_b = _arrays(a), _arrays(b)
    assert arr_a.keys() == arr_b.keys()
    for key in arr_a:
        assert arr_a[key].dtype == arr_b[key].dtype, key
        assert arr_a[key].tobytes() == arr_b[key].tobytes(), key
    assert encode_artifact(a) == encode_artifact(b)


def _run(args: list[str], hashseed: str) -> list[dict]:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    proc = subprocess.run(args, capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_two_devices_agree_bit_for_bit_after_every_step(setup):
    art_path, _, batches = setup
    a = B.cli_device(art_path)
    b = B.cli_device(art_path)
    weights_changed = core_changed = 0
    for Xb, yb in batches:
        before = _arrays(a.art)
        ra, rb = a.step(Xb, yb), b.step(Xb, yb)
        for key in ("step", "accuracy", "calibrated", "rolled_back", "flips", "batch_acc_after"):
            assert getattr(ra, key) == getattr(rb, key), key
        _assert_identical(a.art, b.art)
        after = _arrays(a.art)
        diff = {k for k in after if after[k].tobytes() != before[k].tobytes()}
        weights_changed += any(not k.startswith("core.") for k in diff)
        core_changed += any(k.startswith("core.") for k in diff)
    # not vacuous: the steps really changed weights and core
    assert weights_changed >= 1 and core_changed >= 1, (weights_changed, core_changed)


def test_separate_runs_write_identical_state_files(setup, tmp_path):
    art_path, stream, batches = setup
    states = [tmp_path / "run1.qcore", tmp_path / "run2.qcore"]
    outputs = [
        _run([*CLI, str(art_path), "--stream", str(stream), "--state", str(s)], hashseed)
        for s, hashseed in zip(states, ("0", "4242"), strict=True)
    ]
    first, second = (s.read_bytes() for s in states)
    assert first == second
    _assert_identical(load_state(states[0]), load_state(states[1]))
    keys = ("batch", "step", "accuracy", "calibrated", "rolled_back", "flips")
    assert [[r[k] for k in keys] for r in outputs[0]] == [[r[k] for k in keys] for r in outputs[1]]
    # and both equal the in-process device with the command's defaults
    dev = B.cli_device(art_path)
    for Xb, yb in batches:
        dev.step(Xb, yb)
    assert first == encode_artifact(dev.art)
    assert load_state(states[0]).step == N_BATCHES


def test_different_seed_draws_a_different_core(setup, tmp_path):
    art_path, stream, batches = setup
    s0, s1 = tmp_path / "seed0.qcore", tmp_path / "seed1.qcore"
    for path, seed in ((s0, "0"), (s1, "1")):
        _run(
            [
                *CLI,
                str(art_path),
                "--stream",
                str(stream),
                "--state",
                str(path),
                "--set",
                f"seed={seed}",
            ],
            "0",
        )
    a, b = load_state(s0), load_state(s1)
    assert a.step == b.step == N_BATCHES
    assert not np.array_equal(a.core.X, b.core.X)
    assert not np.array_equal(a.core.origin, b.core.origin)
    assert s0.read_bytes() != s1.read_bytes()
    # seed 0 is the artifact's own seed: the default run draws the same core
    assert load_artifact(art_path).device.seed == 0
    default = tmp_path / "default.qcore"
    _run([*CLI, str(art_path), "--stream", str(stream), "--state", str(default)], "0")
    assert default.read_bytes() == s0.read_bytes()
    # each seed's file is what an in-process device with that seed computes
    for path, seed in ((s0, 0), (s1, 1)):
        dev = B.cli_device(art_path, seed)
        for Xb, yb in batches:
            dev.step(Xb, yb)
        assert path.read_bytes() == encode_artifact(dev.art)
