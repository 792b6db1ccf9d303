"""The one template of the in-process methods (a timed step) and the core-calibration loop
shared by the back-prop reference and zeroth-order calibration."""

import numpy as np

from qcore.core.types import Batch
from qcore.coreset.core import Core
from qcore.methods.common import CoreCalibrator, StepMethod


class _Recorder(CoreCalibrator):
    """Calibrates nothing; the batch is always wrong, the old core always right."""

    def __init__(self, core: Core, seed: int) -> None:
        super().__init__(core, seed=seed)
        self.seen: list[np.ndarray] = []

    def predict(self, X):
        return np.zeros(len(X), dtype=np.int64)

    def calibrate(self, X, y):
        self.seen.append(X)
        n_old = len(self.core)
        correct = np.zeros((2, len(y)), dtype=bool)
        correct[:, :n_old] = True
        return correct, {"passes": 2.0}


def _core(n: int) -> Core:
    rng = np.random.default_rng(0)
    return Core(
        rng.normal(size=(n, 2, 8)).astype(np.float32),
        np.zeros(n, dtype=np.int64),
        np.ones(n, dtype=np.int64),
        np.full(n, -1, dtype=np.int64),
    )


def _batches(k: int, n: int = 5):
    rng = np.random.default_rng(1)
    return [
        Batch(rng.normal(size=(n, 2, 8)).astype(np.float32), np.ones(n, dtype=np.int64))
        for _ in range(k)
    ]


def test_calibrates_on_core_plus_batch_and_keeps_the_core_size():
    cal = _Recorder(_core(6), seed=0)
    for i, batch in enumerate(_batches(3)):
        old = cal.core
        rep = cal.observe(batch)
        np.testing.assert_array_equal(cal.seen[-1], np.concatenate([old.X, batch.X]))
        assert len(cal.core) == 6 and cal.n_steps == i + 1
        assert rep.task_acc == 0.0 and rep.seconds >= 0 and rep.extra == {"passes": 2.0}
        # scores are misses: the batch (always wrong) enters whole, one old sample stays
        assert (cal.core.origin == i + 1).sum() == 5


def test_core_update_is_seeded():
    runs = []
    for seed in (3, 3, 4):
        cal = _Recorder(_core(6), seed=seed)
        for batch in _batches(4, n=12):
            cal.observe(batch)
        runs.append(cal.core.X)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


class _Learner(StepMethod):
    """Predicts class 0 until its first step, class 1 after it."""

    def __init__(self) -> None:
        self.label = 0

    def predict(self, X):
        return np.full(len(X), self.label, dtype=np.int64)

    def step(self, batch):
        self.label = 1
        return {"learned": 1.0}

    def device_bytes(self) -> int:
        return 0


def test_the_template_reports_the_accuracy_before_the_step():
    (batch,) = _batches(1)  # every label is 1
    learner = _Learner()
    rep = learner.observe(batch)
    assert rep.task_acc == 0.0 and rep.extra == {"learned": 1.0} and rep.seconds >= 0
    assert learner.observe(batch).task_acc == 1.0
