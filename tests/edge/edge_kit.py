"""Shared helpers for the edge tests: a small, real artifact from the tiny model, and an
untrained model with non-trivial BatchNorms (:func:`random_bn_model`).

Not a test module (no ``test_`` prefix): pyproject puts ``tests/edge`` on ``sys.path`` so
test files can ``import edge_kit``.
The artifact is built by the cloud pipeline (:mod:`qcore.cloud.pipeline`): quantize the
trained model, select a core, train a flip network on a few teacher rounds, build the
artifact.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from qcore.cloud import pipeline
from qcore.cloud.model import InceptionTime
from qcore.config import DeviceConfig, RunConfig
from qcore.edge.artifact import Artifact, load_artifact, save_artifact
from qcore.edge.device import Device
from qcore.edge.state import bind_state

CLASSES = ("low", "mid", "high")
MEAN = np.array([0.5, -1.0, 2.0], dtype=np.float32)
STD = np.array([2.0, 0.5, 1.5], dtype=np.float32)
CORE_SIZE = 12
BATCH = 6


def random_bn_model(n_channels: int, n_classes: int, filters: int, depth: int, seed: int):
    """An untrained InceptionTime whose BatchNorms have seeded, non-trivial parameters."""
    torch.manual_seed(seed)
    model = InceptionTime(n_channels, n_classes, filters, depth)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model.eval()


class Norm:
    """Stand-in for :class:`qcore.data.scenario.Normalizer` (anything with mean and std)."""

    mean = MEAN
    std = STD


def kit_config(bits: int = 4, core_size: int = CORE_SIZE, seed: int = 0) -> RunConfig:
    """The settings of :func:`small_artifact`: cheap teacher rounds (2 steps at half a
    quantization step), 2 flip passes of at most 5% of the codes."""
    return RunConfig(
        bits=(bits,),
        core_size=core_size,
        seed=seed,
        calib_steps=2,
        flip_teacher_lr=0.5,
        device=DeviceConfig(flip_steps=2, flip_budget=0.05),
    )


def small_artifact(
    model: torch.nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    bits: int = 4,
    core_size: int = CORE_SIZE,
    seed: int = 0,
) -> Artifact:
    """A complete artifact (quantized model, core, trained flip net) at step 0, built by
    the cloud pipeline with :func:`kit_config`.

    ``X``/``y``: normalised windows and labels of the source data the model was trained on.
    Cheap on purpose: 3 teacher rounds and 30 fitting iterations of an 8-unit network.
    """
    torch.set_num_threads(1)
    cfg = kit_config(bits, core_size, seed)
    qmodel = pipeline.quantize(model, bits, X, cfg)
    core = pipeline.select_qcore(cfg, X, y, (np.arange(len(y)) % 4).astype(np.int64))
    plan = pipeline.FlipTraining(rounds=3, held_out=0, hidden=8, iters=30)
    net, _ = pipeline.train_flip_network(qmodel, core, X, y, len(CLASSES), BATCH, cfg, plan)
    return pipeline.device_artifact(qmodel, core, net, Norm(), CLASSES, cfg)


def raw(X: np.ndarray) -> np.ndarray:
    """Un-normalised sensor windows (what a device receives) from normalised ones."""
    return (X * STD[None, :, None] + MEAN[None, :, None]).astype(np.float32)


def stream_batches(
    X: np.ndarray, y: np.ndarray, n: int, batch: int = BATCH, seed: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` labelled batches of raw windows drawn (seeded) from ``X``/``y``, noise added."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        idx = rng.choice(len(y), batch, replace=False)
        noisy = X[idx] + rng.normal(0.0, 0.2, X[idx].shape).astype(np.float32)
        out.append((raw(noisy), y[idx].astype(np.int64)))
    return out


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """The bytes ``np.savez`` writes for ``arrays``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class CliDevice(Device):
    """A :class:`Device` that steps like `qcore device`: each batch is recorded as
    consumed under the id the command gives it (the start of the SHA-256 of its .npz bytes,
    as :func:`npz_bytes` writes them)."""

    def step(self, X, y=None, **kwargs):  # type: ignore[override]
        arrays = {"X": X} if y is None else {"X": X, "y": y}
        batch_id = hashlib.sha256(npz_bytes(**arrays)).hexdigest()[:16]
        return super().step(X, y, batch_id=batch_id, **kwargs)


def cli_device(art: Artifact | Path, seed: int = 0, deployed: Artifact | None = None) -> Device:
    """The device `qcore device --set seed=SEED` runs on a :func:`small_artifact` (or its
    file, to which the state is then bound, or a state already bound, with ``deployed``
    the artifact it grew from, as the command passes it): the artifact's device settings
    with that seed, stepping like the command (:class:`CliDevice`)."""
    if isinstance(art, Path):
        sha = hashlib.sha256(art.read_bytes()).hexdigest()
        art = bind_state(load_artifact(art), sha, art, "<state>")
    return CliDevice(art, art.device.replace(seed=seed), deployed=deployed)


def artifact_and_stream(
    model: torch.nn.Module, X: np.ndarray, y: np.ndarray, folder: Path, n: int, seed: int
) -> tuple[Path, Path, list[tuple[np.ndarray, np.ndarray]]]:
    """``folder/model.qcore`` and ``folder/stream/NNN.npz`` with ``n`` seeded batches;
    returns (artifact path, stream folder, the batches in processing order)."""
    art_path = folder / "model.qcore"
    save_artifact(art_path, small_artifact(model, X, y))
    stream = folder / "stream"
    stream.mkdir()
    batches = stream_batches(X, y, n, seed=seed)
    for k, (Xb, yb) in enumerate(batches):
        (stream / f"{k:03d}.npz").write_bytes(npz_bytes(X=Xb, y=yb))
    return art_path, stream, batches
