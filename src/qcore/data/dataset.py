"""The in-memory dataset every loader returns: windows, labels and a domain id per window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qcore.core.types import validate_xy
from qcore.errors import QCoreError


@dataclass(frozen=True)
class Dataset:
    """Windows of one dataset.

    ``X`` float32 ``(n_cases, n_channels, n_timepoints)``; ``y`` int64 ``(n_cases,)`` in
    ``0..n_classes-1`` (``n_classes = len(class_names)``, so classes may be absent);
    ``domain`` int64 ``(n_cases,)``: the subject number, or the arm side for ``watch``
    (``domain_kind`` says which). Arrays are coerced to these dtypes on construction.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    domain: np.ndarray
    class_names: tuple[str, ...]
    domain_kind: str = "subject"

    def __post_init__(self) -> None:
        validate_xy(self.X, self.y, what=f"dataset {self.name!r}")
        domain = np.asarray(self.domain)
        if domain.ndim != 1 or not np.issubdtype(domain.dtype, np.integer):
            raise QCoreError(f"dataset {self.name!r}: domain must be a 1-D integer array")
        if domain.shape[0] != self.X.shape[0]:
            raise QCoreError(
                f"dataset {self.name!r}: X has {self.X.shape[0]} cases but domain has "
                f"{domain.shape[0]} entries"
            )
        names = tuple(str(c) for c in self.class_names)
        if not names:
            raise QCoreError(f"dataset {self.name!r}: class_names is empty")
        if self.y.min() < 0 or self.y.max() >= len(names):
            raise QCoreError(
                f"dataset {self.name!r}: labels must lie in 0..{len(names) - 1}, "
                f"got {int(self.y.min())}..{int(self.y.max())}"
            )
        if not self.domain_kind:
            raise QCoreError(f"dataset {self.name!r}: domain_kind is empty")
        # frozen: coerce once here so every consumer sees the documented dtypes.
        object.__setattr__(self, "X", np.ascontiguousarray(self.X, dtype=np.float32))
        object.__setattr__(self, "y", self.y.astype(np.int64, copy=False))
        object.__setattr__(self, "domain", domain.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", names)

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(class_names)``), present or not."""
        return len(self.class_names)

    @property
    def domains(self) -> tuple[int, ...]:
        """Sorted unique domain ids."""
        return tuple(int(d) for d in np.unique(self.domain))

    @property
    def n_domains(self) -> int:
        """Number of distinct domains."""
        return len(self.domains)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def info(self) -> dict[str, Any]:
        """Plain-Python summary (JSON-serialisable) for logs and reports."""
        counts = np.bincount(self.y, minlength=self.n_classes)
        dom, dom_counts = np.unique(self.domain, return_counts=True)
        return {
            "name": self.name,
            "n_cases": len(self),
            "n_channels": int(self.X.shape[1]),
            "n_timepoints": int(self.X.shape[2]),
            "n_classes": self.n_classes,
            "n_domains": self.n_domains,
            "domain_kind": self.domain_kind,
            "domains": list(self.domains),
            "class_names": list(self.class_names),
            "class_counts": {n: int(c) for n, c in zip(self.class_names, counts, strict=True)},
            "domain_counts": {int(d): int(c) for d, c in zip(dom, dom_counts, strict=True)},
        }
