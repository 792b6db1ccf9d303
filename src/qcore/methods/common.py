"""What the methods share: the one template of a method run in-process (a timed step),
QCore's core loop on top of it, and a fixed-capacity sample buffer.

NumPy only. Every method satisfies the :class:`qcore.core.types.Calibrator` protocol;
those the runner steps in-process derive from :class:`StepMethod`, the device's own step
is :class:`qcore.methods.qcore_method.DeviceCalibrator`. Every buffer holds at most
``capacity`` samples (the QCore's size, so that a buffer sample and a core sample cost
the same bytes) and is preallocated: its ``nbytes`` are the bytes a device reserves,
whether or not the buffer is full yet.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from qcore.core.metrics import accuracy
from qcore.core.types import Batch, StepReport
from qcore.coreset.core import Core, update_core
from qcore.coreset.scores import pass_misses
from qcore.edge.backbone import step_rng
from qcore.errors import QCoreError

if TYPE_CHECKING:
    from qcore.config import DeviceConfig


class StepMethod:
    """The template: ``observe`` = accuracy on the batch before calibrating, then the
    timed ``step`` (the device's calibration work, the only part timed).

    Subclasses implement ``predict(X) -> labels``, ``step(batch) -> extra`` and
    ``device_bytes()``.
    """

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError

    def device_bytes(self) -> int:
        raise NotImplementedError

    def observe(self, batch: Batch) -> StepReport:
        task_acc = accuracy(self.predict(batch.X), batch.y)
        t0 = time.perf_counter()
        extra = self.step(batch)
        return StepReport(task_acc, time.perf_counter() - t0, extra)


class CoreCalibrator(StepMethod):
    """A step on core + batch, then QCore's fixed-size core update.

    The loop of the methods that move weights by other means than the device's flip step
    (the back-prop reference, the zeroth-order rival). Subclasses implement
    ``predict(X) -> labels``, ``calibrate(X, y) -> (correct, extra)`` (``correct``: bool
    ``(passes, len(y))``, old core first, then the batch) and ``device_bytes()``. Step
    ``s`` draws from ``self.rng = step_rng(seed, s)``, the device's RNG rule. A subclass
    passes ``seed``, ``core_mode`` and ``old_quota`` through (:func:`core_loop` reads
    them from a method's device settings).
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
        self.seed = seed
        self.rng = step_rng(seed, 0)
        self.n_steps = 0

    def calibrate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def step(self, batch: Batch) -> dict[str, float]:
        self.n_steps += 1
        self.rng = step_rng(self.seed, self.n_steps)
        X = np.concatenate([self.core.X, batch.X])
        y = np.concatenate([self.core.y, batch.y])
        correct, extra = self.calibrate(X, y)
        self.core = update_core(
            self.core,
            batch.X,
            batch.y,
            pass_misses(correct),
            step=self.n_steps,
            seed=self.rng,
            mode=self.core_mode,
            old_quota=self.old_quota,
        )
        return extra


def core_loop(device: DeviceConfig) -> dict[str, Any]:
    """:class:`CoreCalibrator`'s settings among a method's device settings, as keyword
    arguments (the settings a method registers as ``reads=CORE_LOOP``)."""
    return {"seed": device.seed, "core_mode": device.core_mode, "old_quota": device.old_quota}


def reservoir_slots(n_seen: int, n_new: int, capacity: int, rng: np.random.Generator) -> np.ndarray:
    """Algorithm R for ``n_new`` items arriving after ``n_seen``: each one's slot, or -1.

    Item ``i`` (the ``n_seen + i``-th ever offered, 0-based ``k``) fills slot ``k`` while
    ``k < capacity``, else replaces a slot drawn uniformly from ``0..k`` if that draw is a
    real slot. Applied in order, this keeps a uniform sample of everything offered.
    Returns int64 ``(n_new,)``.
    """
    k = np.arange(n_seen, n_seen + n_new, dtype=np.int64)
    draw = rng.integers(0, k + 1)
    return np.where(k < capacity, k, np.where(draw < capacity, draw, -1)).astype(np.int64)


class Buffer:
    """Preallocated samples: ``X`` float32 ``(capacity, C, T)``, ``y`` int64, ``origin``
    int64 (-1 source, ``s`` stream step ``s``), optional ``logits`` float32
    ``(capacity, n_classes)`` (DER++). The first ``size`` entries are valid; ``n_seen``
    counts every sample ever offered (the reservoir's clock)."""

    def __init__(self, capacity: int, sample_shape: tuple[int, int], n_logits: int = 0) -> None:
        if capacity < 1:
            raise QCoreError(f"buffer capacity must be >= 1, got {capacity}")
        self.X = np.zeros((capacity, *sample_shape), dtype=np.float32)
        self.y = np.zeros(capacity, dtype=np.int64)
        self.origin = np.full(capacity, -1, dtype=np.int64)
        self.logits = np.zeros((capacity, n_logits), dtype=np.float32) if n_logits else None
        self.size = 0
        self.n_seen = 0

    @property
    def capacity(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        """Reserved device bytes: samples and labels (as a core), plus stored logits."""
        extra = 0 if self.logits is None else self.logits.nbytes
        return int(self.X.nbytes + self.y.nbytes + extra)

    def put(self, slot: int, x: np.ndarray, y: int, origin: int, logits=None) -> None:
        self.X[slot], self.y[slot], self.origin[slot] = x, y, origin
        if self.logits is not None:
            self.logits[slot] = logits
        self.size = max(self.size, slot + 1)

    def add_reservoir(
        self,
        X: np.ndarray,
        y: np.ndarray,
        origin: int,
        rng: np.random.Generator,
        logits: np.ndarray | None = None,
    ) -> None:
        """Offer every row of ``X``/``y`` (and ``logits``) to the reservoir, in order."""
        slots = reservoir_slots(self.n_seen, len(y), self.capacity, rng)
        for i in np.flatnonzero(slots >= 0):
            self.put(int(slots[i]), X[i], int(y[i]), origin, None if logits is None else logits[i])
        self.n_seen += len(y)

    def sample(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """``min(k, size)`` distinct valid slots, uniformly (int64)."""
        return rng.choice(self.size, min(k, self.size), replace=False).astype(np.int64)

    def as_core(self) -> Core:
        """The valid part as a :class:`Core` (zero scores), for the runner's core accuracy."""
        n = self.size
        return Core(self.X[:n], self.y[:n], np.zeros(n, dtype=np.int64), self.origin[:n])


def source_reservoir(
    X: np.ndarray, y: np.ndarray, capacity: int, rng: np.random.Generator, n_logits: int = 0
) -> Buffer:
    """A buffer filled by reservoir over a seeded shuffle of the source training set.

    The result is a uniform random subset; ``n_seen = len(y)``, so later stream samples
    enter with the probability a reservoir over source-then-stream gives them.
    """
    buf = Buffer(capacity, X.shape[1:], n_logits)
    order = rng.permutation(len(y))
    buf.add_reservoir(X[order], y[order], -1, rng)
    return buf
