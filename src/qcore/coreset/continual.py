"""The continual-calibration loop around the QCore (METHOD.md part 3), whatever moves the weights.

For each labelled batch: calibrate on core plus batch, then update the core to the same
size from old core plus batch, scored by the misses seen over the calibration's passes.
:class:`CoreCalibrator` holds that loop once; QCore (flip network), the back-prop
reference and the zeroth-order rival differ only in :meth:`CoreCalibrator.calibrate`.
NumPy only.
"""

from __future__ import annotations

import time

import numpy as np

from qcore.core.types import Batch, StepReport
from qcore.coreset.core import Core, update_core_after_passes
from qcore.eval.metrics import accuracy


class CoreCalibrator:
    """Calibrate on core + batch, then QCore's fixed-size core update; ``observe`` is timed.

    Subclasses implement ``predict(X) -> labels``, ``calibrate(X, y) -> (correct, extra)``
    (``correct``: bool ``(passes, len(y))``, old core first, then the batch) and
    ``device_bytes()``. The core update draws from ``self.rng`` (seeded by ``seed``).
    """

    def __init__(
        self,
        core: Core,
        *,
        seed: int,
        core_mode: str = "proportional",
        old_quota: float | None = None,
    ) -> None:
        self.core, self.core_mode, self.old_quota = core, core_mode, old_quota
        self.rng = np.random.default_rng(seed)
        self.n_steps = 0

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def calibrate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def observe(self, batch: Batch) -> StepReport:
        task_acc = accuracy(self.predict(batch.X), batch.y)
        t0 = time.perf_counter()
        X = np.concatenate([self.core.X, batch.X])
        y = np.concatenate([self.core.y, batch.y])
        correct, extra = self.calibrate(X, y)
        self.n_steps += 1
        self.core = update_core_after_passes(
            self.core,
            batch.X,
            batch.y,
            correct,
            step=self.n_steps,
            seed=self.rng,
            mode=self.core_mode,
            old_quota=self.old_quota,
        )
        return StepReport(task_acc, time.perf_counter() - t0, extra)
