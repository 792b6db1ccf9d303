"""``random-core-flip``: QCore's device step on a uniform random core.

The same seeded random core as ``random-core-bp`` (a reservoir over a shuffle of the
source) and a reservoir update instead of QCore's; everything else is the ``qcore``
method: a flip network trained in the cloud for this core, a :class:`Device` built
from the artifact, the one device step. Comparing it with ``qcore`` isolates the core
selection under back-prop-free calibration.
"""

from __future__ import annotations

import numpy as np

from qcore.config import DEVICE_KEYS
from qcore.coreset.core import Core
from qcore.edge.backbone import step_rng
from qcore.methods.common import reservoir_slots, source_reservoir
from qcore.methods.qcore_method import DeviceCalibrator, device_calibrator
from qcore.methods.registry import Deployment, register


class ReservoirUpdate:
    """Reservoir sampling over source then stream: each batch sample enters the core
    with probability ``len(core) / n_seen`` (Algorithm R), drawn by ``step_rng``.

    ``n_seen`` counts every sample offered so far (it grows with each update).
    """

    def __init__(self, n_seen: int, seed: int) -> None:
        self.n_seen, self.seed = n_seen, seed

    def __call__(
        self, core: Core, X: np.ndarray, y: np.ndarray, correct: np.ndarray, step: int
    ) -> Core:
        slots = reservoir_slots(self.n_seen, len(y), len(core), step_rng(self.seed, step))
        self.n_seen += len(y)
        Xc, yc, origin = core.X.copy(), core.y.copy(), core.origin.copy()
        for i in np.flatnonzero(slots >= 0):
            Xc[slots[i]], yc[slots[i]], origin[slots[i]] = X[i], y[i], step
        return Core(Xc, yc, np.zeros(len(yc), dtype=np.int64), origin)


@register("random-core-flip", unlabelled=True, fixes={"head": "model"}, reads=DEVICE_KEYS)
def _random_core_flip(dep: Deployment) -> DeviceCalibrator:
    c = dep.cfg
    rng = np.random.default_rng(c.seed)
    buffer = source_reservoir(dep.source_X, dep.source_y, len(dep.core), rng)  # QCore's size
    core = buffer.as_core()
    update = ReservoirUpdate(buffer.n_seen, c.seed)
    return device_calibrator(dep, core, update)
