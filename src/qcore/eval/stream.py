"""Stream calibrators: each sees one labelled batch at a time (STYLE.md habit 7).

``QCoreCalibrator`` runs the device step (NumPy, no autograd): flip calibration on core
plus batch, then the core update. ``BackpropCalibrator`` is the cost reference: the
same core and update rule, but back-prop steps instead of flips. ``NoCalibration``
is the deployed model as is. The runner alone holds the stream and the test sets.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from qcore.cloud.calibrate import backprop_calibrate
from qcore.cloud.export import to_qmodel
from qcore.cloud.train import predict_logits
from qcore.core.qmodel import QuantizedModel
from qcore.core.types import Batch, StepReport
from qcore.coreset.continual import CoreCalibrator
from qcore.coreset.core import Core
from qcore.edge.calibrate import flip_calibrate
from qcore.edge.flip import FlipNet
from qcore.edge.infer import predict as edge_predict
from qcore.eval.methods import Deployment, register
from qcore.eval.metrics import accuracy


class NoCalibration:
    """The deployed quantized model, never changed."""

    def __init__(self, qm: QuantizedModel) -> None:
        self.qm = qm

    def predict(self, X: np.ndarray) -> np.ndarray:
        return edge_predict(self.qm, X)

    def observe(self, batch: Batch) -> StepReport:
        t0 = time.perf_counter()
        acc = accuracy(self.predict(batch.X), batch.y)
        return StepReport(task_acc=acc, seconds=time.perf_counter() - t0)

    def device_bytes(self) -> int:
        return self.qm.device_bytes()["total"]


class QCoreCalibrator(CoreCalibrator):
    """Flip-network calibration on core plus batch, then the fixed-size core update."""

    def __init__(
        self,
        qm: QuantizedModel,
        core: Core,
        net: FlipNet,
        *,
        steps: int,
        guard: bool | str,
        bn_mode: str,
        seed: int,
        core_mode: str = "proportional",
        old_quota: float | None = None,
        budget: float | None = None,
    ) -> None:
        super().__init__(core, seed=seed, core_mode=core_mode, old_quota=old_quota)
        self.qm, self.net = qm, net
        self.steps, self.guard, self.bn_mode, self.budget = steps, guard, bn_mode, budget

    def predict(self, X: np.ndarray) -> np.ndarray:
        return edge_predict(self.qm, X)

    def calibrate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        res = flip_calibrate(
            self.qm,
            X,
            y,
            self.net,
            steps=self.steps,
            guard=self.guard,
            bn_mode=self.bn_mode,
            budget=self.budget,
        )
        self.qm = res.model
        return res.correct, {
            "flips": float(res.flips_applied),
            "rejected": float(res.passes_rejected),
        }

    def device_bytes(self) -> int:
        return self.qm.device_bytes()["total"] + self.core.nbytes + self.net.nbytes()


class BackpropCalibrator(CoreCalibrator):
    """Back-prop (straight-through) on core plus batch, same core update: the reference."""

    def __init__(
        self,
        model: torch.nn.Module,
        core: Core,
        *,
        steps: int,
        lr: float,
        seed: int,
        core_mode: str = "proportional",
        old_quota: float | None = None,
    ) -> None:
        super().__init__(core, seed=seed, core_mode=core_mode, old_quota=old_quota)
        self.model = copy.deepcopy(model)
        self.steps, self.lr, self.seed = steps, lr, seed

    def predict(self, X: np.ndarray) -> np.ndarray:
        return predict_logits(self.model, X).argmax(1)

    def calibrate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        before = self.predict(X) == y
        backprop_calibrate(
            self.model,
            X,
            y,
            steps=self.steps,
            lr=self.lr,
            batch_size=len(y),
            seed=self.seed + self.n_steps,
        )
        return np.stack([before, self.predict(X) == y]), {}

    def device_bytes(self) -> int:
        return to_qmodel(self.model).device_bytes()["total"] + self.core.nbytes


@register("none")
def _none(dep: Deployment) -> NoCalibration:
    return NoCalibration(to_qmodel(dep.qmodel))


@register("backprop")
def _backprop(dep: Deployment) -> BackpropCalibrator:
    c = dep.cfg
    return BackpropCalibrator(
        dep.qmodel,
        dep.core,
        steps=c.calib_steps,
        lr=c.calib_lr,
        seed=c.seed,
        core_mode=c.core_mode,
        old_quota=c.old_quota,
    )


FLIP_ROUNDS = 8
FLIP_HELD_OUT = 2


def train_flipnet(dep: Deployment) -> FlipNet:
    """Teacher rounds on the core plus source batches, fit, report held-out agreement."""
    from qcore.cloud.flipnet import agreement_report, collect_rounds, fit_flipnet

    c = dep.cfg
    rounds = collect_rounds(
        dep.qmodel,
        dep.core.X,
        dep.core.y,
        dep.source_X,
        dep.source_y,
        rounds=FLIP_ROUNDS,
        steps=c.calib_steps,
        lr=c.calib_lr,
        batch_len=dep.batch_len,
        seed=c.seed,
        step_relative_lr=c.flip_teacher_lr,
    )
    net = fit_flipnet(rounds[:-FLIP_HELD_OUT], dep.n_classes, seed=c.seed)
    dep.extras["flipnet"] = agreement_report(net, rounds[-FLIP_HELD_OUT:], seed=c.seed)
    return net


_GUARDS = {"pass": True, "layer": "layer", "off": False}


@register("qcore")
def _qcore(dep: Deployment) -> QCoreCalibrator:
    c = dep.cfg
    return QCoreCalibrator(
        to_qmodel(dep.qmodel),
        dep.core,
        train_flipnet(dep),
        steps=c.flip_steps,
        guard=c.flip_guard,
        bn_mode=c.bn_mode,
        seed=c.seed,
        core_mode=c.core_mode,
        old_quota=c.old_quota,
        budget=c.flip_budget,
    )
