"""The cloud side of a run, written once: train, quantize, calibrate on the source,
select the QCore, train the flip network, start the streaming head's statistics, build
the device artifact.

The runner (``qcore run``/``qcore bench``), the benchmarks and the tests' artifact kit
all call these functions, each configured by a :class:`RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.export import to_qmodel
from qcore.cloud.flipnet import agreement_report, collect_rounds, fit_flipnet
from qcore.cloud.model import InceptionTime
from qcore.cloud.quantize import quantize_model
from qcore.cloud.train import CALIB_WINDOWS, Dynamics, train_float
from qcore.config import DeviceConfig, RunConfig
from qcore.coreset.core import Core, build_core
from qcore.coreset.scores import qcore_scores
from qcore.coreset.select import core_size_from
from qcore.edge.artifact import Artifact, build_artifact
from qcore.edge.flip import FlipNet
from qcore.edge.head import HeadStats, batch_stats
from qcore.edge.infer import forward_features
from qcore.edge.signals import fit_novelty_threshold


def train_model(
    cfg: RunConfig,
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    dynamics: bool = True,
    progress: bool = False,
) -> tuple[InceptionTime, Dynamics | None]:
    """The float InceptionTime trained on ``(X, y)`` (seeded), with its training dynamics
    at ``cfg.dynamics_bits`` when ``dynamics``."""
    torch.manual_seed(cfg.seed)
    model = InceptionTime(X.shape[1], n_classes, cfg.filters, cfg.depth)
    dyn = train_float(
        model,
        X,
        y,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        dynamics_bits=cfg.dynamics_bits if dynamics else (),
        record_every=cfg.record_every,
        progress=progress,
    )
    return model, dyn


def core_scores(dyn: Dynamics | None, n: int) -> np.ndarray:
    """QCore's miss scores from the training dynamics (uniform ones without them)."""
    if dyn is None:
        return np.ones(n, dtype=np.int64)
    return qcore_scores(dyn.correct, dyn.bits)


def select_qcore(cfg: RunConfig, X: np.ndarray, y: np.ndarray, scores: np.ndarray) -> Core:
    """The initial core: ``cfg.core_size`` samples drawn by score (``cfg.device.core_mode``)."""
    size = min(core_size_from(cfg.core_size, len(y)), len(y))
    return build_core(X, y, scores, size, cfg.device.core_mode, cfg.seed)


def quantize(model: torch.nn.Module, bits: int, X: np.ndarray, cfg: RunConfig) -> torch.nn.Module:
    """Post-training quantization at ``bits`` (activation ranges from source windows)."""
    return quantize_model(model, bits, X[:CALIB_WINDOWS], cfg.seed)


def calibrate_on_source(
    qmodel: torch.nn.Module, X: np.ndarray, y: np.ndarray, cfg: RunConfig
) -> None:
    """Back-prop calibration on the source training set (in place): the deployed model."""
    steps = max(1, cfg.source_calib_epochs * -(-len(y) // cfg.batch_size))
    backprop_calibrate(
        qmodel, X, y, steps=steps, lr=cfg.calib_lr, batch_size=cfg.batch_size, seed=cfg.seed
    )


@dataclass(frozen=True)
class FlipTraining:
    """How much teacher data and fitting the flip network gets.

    ``rounds`` teacher rounds, the last ``held_out`` of them only for the agreement
    report; ``hidden`` units and ``iters`` fitting iterations of the MLP.
    """

    rounds: int = 8
    held_out: int = 2
    hidden: int = 16
    iters: int = 150


def train_flip_network(
    qmodel: torch.nn.Module,
    core: Core,
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    batch_len: int,
    cfg: RunConfig,
    plan: FlipTraining = FlipTraining(),
    progress: bool = False,
) -> tuple[FlipNet, dict[str, Any] | None]:
    """Teacher rounds on the core plus source batches, the fitted network, and its
    agreement with the teacher on the held-out rounds (None without held-out rounds)."""
    rounds = collect_rounds(
        qmodel,
        core.X,
        core.y,
        X,
        y,
        rounds=plan.rounds,
        steps=cfg.calib_steps,
        lr=cfg.calib_lr,
        batch_len=batch_len,
        seed=cfg.seed,
        step_relative_lr=cfg.flip_teacher_lr,
        progress=progress,
    )
    fit = rounds[: len(rounds) - plan.held_out]
    net = fit_flipnet(fit, n_classes, hidden=plan.hidden, iters=plan.iters, seed=cfg.seed)
    if not plan.held_out:
        return net, None
    return net, agreement_report(net, rounds[-plan.held_out :], seed=cfg.seed)


def device_artifact(
    qmodel: torch.nn.Module,
    core: Core | None,
    net: FlipNet | None,
    normalizer: Any,
    class_names: tuple[str, ...] | list[str],
    cfg: RunConfig,
    device: DeviceConfig | None = None,
    head_data: tuple[np.ndarray, np.ndarray] | None = None,
    window_length: int | None = None,
) -> Artifact:
    """What ships to a device, at step 0: the integer model, core, flip network,
    normaliser, class names, the run's settings and the device's (``device``, default
    ``cfg.device``). With ``head_data`` (source windows and labels) the streaming
    head's statistics start from the deployed model's pooled features of those windows,
    each weighted ``cfg.head_source_weight`` (counts and scatter scaled, means kept), and
    the device's novelty threshold, unless set, is fitted on them
    (:func:`qcore.edge.signals.fit_novelty_threshold`).
    ``window_length`` is needed when there is no core to take it from."""
    qm = to_qmodel(qmodel)
    head = None
    device = cfg.device if device is None else device
    if head_data is not None:
        X, y = head_data
        features = forward_features(qm, X)[1]
        head = batch_stats(features, y, qm.n_classes)
        w = cfg.head_source_weight  # the source's windows as so many target windows
        if w != 1.0:
            head = HeadStats(head.count * w, head.mean, head.scatter * w)
        if device.novelty_threshold is None:
            shrink = device.head_shrinkage
            limit = fit_novelty_threshold(features, y, qm.n_classes, shrink, cfg.seed)
            device = device.replace(novelty_threshold=limit)
    return build_artifact(
        qm, core, net, normalizer, class_names, cfg.to_dict(), window_length, device, head
    )
