"""Small shared types: a labelled stream batch, a step report, the calibrator protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from qcore.errors import QCoreError


@dataclass(frozen=True)
class Batch:
    """A labelled batch: ``X`` float32 ``(n_cases, n_channels, n_timepoints)``, ``y`` int64."""

    X: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        validate_xy(self.X, self.y)

    def __len__(self) -> int:
        return int(self.y.shape[0])


def validate_xy(X: np.ndarray, y: np.ndarray | None = None, what: str = "data") -> None:
    """Raise a clear :class:`QCoreError` for a wrong rank, dtype, NaN/inf or length mismatch."""
    if not isinstance(X, np.ndarray):
        raise QCoreError(f"{what}: X must be a NumPy array, got {type(X).__name__}")
    if X.ndim != 3:
        raise QCoreError(
            f"{what}: X must have shape (n_cases, n_channels, n_timepoints), got rank {X.ndim}"
        )
    if not np.issubdtype(X.dtype, np.floating):
        raise QCoreError(f"{what}: X must be floating point, got {X.dtype}")
    if X.shape[0] == 0:
        raise QCoreError(f"{what}: X is empty")
    if not np.isfinite(X).all():
        raise QCoreError(f"{what}: X contains NaN or infinite values")
    if y is None:
        return
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        raise QCoreError(f"{what}: y must be a 1-D array")
    if not np.issubdtype(y.dtype, np.integer):
        raise QCoreError(f"{what}: y must hold integer class labels, got {y.dtype}")
    if y.shape[0] != X.shape[0]:
        raise QCoreError(f"{what}: X has {X.shape[0]} cases but y has {y.shape[0]} labels")


@dataclass
class StepReport:
    """What one calibration step did: accuracy on the batch before calibrating, its cost."""

    task_acc: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Calibrator(Protocol):
    """Every method (QCore and each baseline) sees the stream one batch at a time."""

    def observe(self, batch: Batch) -> StepReport: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def device_bytes(self) -> int: ...
