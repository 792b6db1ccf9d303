"""``qcore``: the paper's recipe, run by a :class:`qcore.edge.device.Device`.

The cloud trains the flip network for the QCore and builds the deployable artifact
(model, core, flip network, normaliser, the device's settings); the stream then goes
through a :class:`Device` built from that artifact, batch by batch, exactly as
``qcore device`` would run it. What ``qcore run`` and ``qcore bench`` measure for this
method is therefore the device's own step (flip passes, rollback guard, core update,
8-bit core storage), not a re-implementation of it.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from qcore.cloud.pipeline import device_artifact, train_flip_network
from qcore.config import DEVICE_KEYS
from qcore.core.types import Batch, StepReport
from qcore.coreset.core import Core
from qcore.edge.artifact import Artifact
from qcore.edge.backbone import CoreUpdate
from qcore.edge.device import Device
from qcore.errors import QCoreError
from qcore.methods.registry import Deployment, register


class DeviceCalibrator:
    """The stream's view of a :class:`Device` fed normalised batches.

    ``deployed``: the artifact the device started from (the runner saves it).
    ``label_names``: the classes of the stream's labels and predictions, when they include
    classes the artifact does not know (the device then adds them as they come);
    default: the artifact's.
    """

    def __init__(
        self,
        art: Artifact,
        update: CoreUpdate | None = None,
        label_names: tuple[str, ...] | None = None,
    ) -> None:
        self.deployed = art
        self.label_names = art.class_names if label_names is None else label_names
        allow_new = self.label_names != art.class_names
        self.device = Device(art, update=update, allow_new_classes=allow_new)

    @property
    def art(self) -> Artifact:
        return self.device.art

    @property
    def core(self) -> Core | None:
        return self.device.art.core

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices of the stream's labels (:attr:`label_names`)."""
        pred = self.device.predict(X, normalized=True)
        names = self.device.art.class_names
        if names == self.label_names:
            return pred
        index = {n: k for k, n in enumerate(self.label_names)}
        return np.array([index[n] for n in names], dtype=np.int64)[pred]

    def observe(self, batch: Batch) -> StepReport:
        """One device step on ``batch`` (class indices, -1 for a window without a label),
        handed over by class name, as a user would, so that raw labels such as -1/1
        (class names "-1" and "1") are never mistaken for indices."""
        names = np.array([*self.label_names, ""])  # index -1 -> "": no label
        t0 = time.perf_counter()
        rep = self.device.step(batch.X, names[batch.y], normalized=True)
        seconds = time.perf_counter() - t0
        keys = ("flips", "passes_rejected", "rolled_back", "calibrated", "head_samples", "reset")
        extra = {k: getattr(rep, k) for k in keys}
        return StepReport(rep.accuracy, seconds, extra)

    def device_bytes(self) -> int:
        """Model, core (as float32 windows), flip network and head statistics."""
        art = self.device.art
        core = 0 if art.core is None else art.core.nbytes
        net = 0 if art.flipnet is None else art.flipnet.nbytes()
        head = 0 if art.head is None else art.head.nbytes
        return art.model.device_bytes()["total"] + core + net + head


class IdentityNormalizer:
    """Zero mean, unit scale: for a deployment whose data carries no normaliser."""

    def __init__(self, n_channels: int) -> None:
        self.mean = np.zeros(n_channels, dtype=np.float32)
        self.std = np.ones(n_channels, dtype=np.float32)


def device_calibrator(
    dep: Deployment, core: Core | None, update: CoreUpdate | None = None
) -> DeviceCalibrator:
    """Build in the cloud what the method's device settings (``dep.device``) need and
    start a :class:`Device` on it.

    A flip network is trained for ``core`` when the device flips (its held-out agreement
    report goes to ``dep.extras["flipnet"]``); the streaming head's statistics start from
    the source training set when ``device.head`` is ``"slda"``.
    """
    c, device = dep.cfg, dep.device
    if device is None:
        raise QCoreError("a deployment's device settings are set by qcore.methods.all.make")
    net = None
    if device.flip_steps > 0:
        if core is None:
            raise QCoreError("flip passes need a core to train the flip network on")
        # the same core gives the same network: train it once per bit-width
        key = ("flipnet", hashlib.sha256(core.X.tobytes() + core.y.tobytes()).hexdigest())
        if key not in dep.shared:
            dep.shared[key] = train_flip_network(
                dep.qmodel, core, dep.source_X, dep.source_y, dep.n_classes, dep.batch_len, c,
                progress=dep.progress,
            )  # fmt: skip
        net, report = dep.shared[key]
        if report is not None:
            dep.extras["flipnet"] = report
    n_channels = dep.source_X.shape[1]
    normalizer = dep.normalizer or IdentityNormalizer(n_channels)  # data already normalised
    names = dep.class_names or tuple(str(k) for k in range(dep.n_classes))
    head_data = (dep.source_X, dep.source_y) if device.head == "slda" else None
    art = device_artifact(
        dep.qmodel, core, net, normalizer, names, c, device, head_data, dep.source_X.shape[2]
    )
    record = dep.extras.get("device", {})
    if "novelty_threshold" in record:  # the row records the threshold the cloud fitted
        record["novelty_threshold"] = art.device.novelty_threshold
    return DeviceCalibrator(art, update, dep.label_names or None)


@register("qcore", uses_qcore=True, unlabelled=True, fixes={"head": "model"}, reads=DEVICE_KEYS)
def _qcore(dep: Deployment) -> DeviceCalibrator:
    """The paper's recipe: the core, guarded flip passes, BatchNorm, the deployed head."""
    return device_calibrator(dep, dep.core)
