"""``qcore``: QCore's device step, run by a :class:`qcore.edge.device.Device`.

The cloud trains the flip network for the QCore and builds the deployable artifact
(model, core, flip network, normaliser, the device's settings); the stream then goes
through a :class:`Device` built from that artifact, batch by batch, exactly as
``qcore device`` would run it. What ``qcore run`` and ``qcore bench`` measure for this
method is therefore the device's own step (flip passes, rollback guard, core update,
8-bit core storage), not a re-implementation of it.
"""

from __future__ import annotations

import time

import numpy as np

from qcore.baselines.registry import Deployment, register
from qcore.cloud.pipeline import device_artifact, train_flip_network
from qcore.core.types import Batch, StepReport
from qcore.coreset.core import Core
from qcore.edge.artifact import Artifact
from qcore.edge.device import Device
from qcore.edge.step import CoreUpdate


class DeviceCalibrator:
    """The stream's view of a :class:`Device` fed normalised batches.

    ``deployed``: the artifact the device started from (the runner saves it).
    """

    def __init__(self, art: Artifact, update: CoreUpdate | None = None) -> None:
        self.deployed = art
        self.device = Device(art, update=update)

    @property
    def art(self) -> Artifact:
        return self.device.art

    @property
    def core(self) -> Core | None:
        return self.device.art.core

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.device.predict(X, normalized=True)

    def observe(self, batch: Batch) -> StepReport:
        t0 = time.perf_counter()
        rep = self.device.step(batch.X, batch.y, normalized=True)
        seconds = time.perf_counter() - t0
        extra = {k: rep[k] for k in ("flips", "passes_rejected", "rolled_back", "calibrated")}
        return StepReport(rep["accuracy"], seconds, extra)

    def device_bytes(self) -> int:
        art = self.device.art
        assert art.flipnet is not None  # a Device needs one
        core = 0 if art.core is None else art.core.nbytes
        return art.model.device_bytes()["total"] + core + art.flipnet.nbytes()


class IdentityNormalizer:
    """Zero mean, unit scale: for a deployment whose data carries no normaliser."""

    def __init__(self, n_channels: int) -> None:
        self.mean = np.zeros(n_channels, dtype=np.float32)
        self.std = np.ones(n_channels, dtype=np.float32)


def device_calibrator(
    dep: Deployment, core: Core, update: CoreUpdate | None = None
) -> DeviceCalibrator:
    """Train the flip network for ``core`` in the cloud, build the artifact, start a device.

    The flip network's held-out agreement report goes to ``dep.extras["flipnet"]``.
    """
    c = dep.cfg
    net, report = train_flip_network(
        dep.qmodel, core, dep.source_X, dep.source_y, dep.n_classes, dep.batch_len, c
    )
    if report is not None:
        dep.extras["flipnet"] = report
    n_channels = dep.source_X.shape[1]
    normalizer = dep.normalizer or IdentityNormalizer(n_channels)  # data already normalised
    names = dep.class_names or tuple(str(k) for k in range(dep.n_classes))
    art = device_artifact(dep.qmodel, core, net, normalizer, names, c)
    return DeviceCalibrator(art, update)


@register("qcore")
def _qcore(dep: Deployment) -> DeviceCalibrator:
    return device_calibrator(dep, dep.core)
