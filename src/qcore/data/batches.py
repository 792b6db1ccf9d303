"""One subject of a dataset as the ``.npz`` stream batches ``qcore device`` reads.

:func:`subject_batches` shuffles the windows of one domain (a subject, or the arm side of
``watch``) with a seed and cuts them into batches; :func:`write_batches` writes them as
``batch-0000.npz``, ``batch-0001.npz``, ... so that sorted name order is stream order.
Each file holds ``X`` float32 ``(n, n_channels, n_timepoints)`` in the dataset's own units
(the device normalises with its artifact's statistics) and ``y`` the class names as text
``(n,)``, which a device maps to its own classes by name. NumPy only.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from qcore.core.fileio import write_atomic
from qcore.core.rng import as_generator
from qcore.data.dataset import Dataset
from qcore.errors import QCoreError


def subject_batches(
    ds: Dataset, subject: int, batch_size: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(X, y), ...]``: the windows of domain ``subject`` in an order shuffled with
    ``seed``, cut into batches of ``batch_size`` (the last one may be smaller).

    ``X`` float32 ``(n, n_channels, n_timepoints)`` as the dataset holds it (raw units);
    ``y`` str ``(n,)``, the class name of each window.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise QCoreError(f"batch size must be a positive integer, got {batch_size!r}")
    if subject not in ds.domains:
        raise QCoreError(
            f"{ds.domain_kind} {subject!r} is not in dataset {ds.name!r}; "
            f"available: {list(ds.domains)}"
        )
    order = as_generator(seed).permutation(np.flatnonzero(ds.domain == subject))
    names = np.array(ds.class_names, dtype=str)
    return [
        (ds.X[idx], names[ds.y[idx]])
        for idx in (order[i : i + batch_size] for i in range(0, len(order), batch_size))
    ]


def _npz(X: np.ndarray, y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=X, y=y)
    return buf.getvalue()


def write_batches(out: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Write ``batches`` to ``out/batch-NNNN.npz`` (created if missing; a folder that
    already holds ``.npz`` files is refused, as their names would mix with the new stream)
    and return a summary: ``out``, ``files``, ``windows`` and ``classes`` (windows per class
    name, sorted by name)."""
    if out.exists() and not out.is_dir():
        raise QCoreError(f"{out} is a file: give a folder for the batches")
    if out.is_dir() and any(out.glob("*.npz")):
        raise QCoreError(f"{out} already holds .npz files: give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(batches) - 1)))
    classes: dict[str, int] = {}
    for k, (X, y) in enumerate(batches):
        write_atomic(out / f"batch-{k:0{width}d}.npz", _npz(X, y), 0o644)
        for name in y.tolist():
            classes[name] = classes.get(name, 0) + 1
    return {
        "out": str(out),
        "files": len(batches),
        "windows": sum(len(y) for _, y in batches),
        "classes": dict(sorted(classes.items())),
    }
