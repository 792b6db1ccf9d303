"""A user's own windows from an ``.npz`` file (X, y, optional domain and class_names)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from qcore.data.dataset import Dataset
from qcore.errors import QCoreError


def _labels(
    y: np.ndarray, names: np.ndarray | None, path: Path
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels to 0..K-1 and return (codes int64, class names).

    Without ``class_names`` the sorted unique values become the classes, named by their
    string form. With ``class_names`` of length K: if it matches the number of unique values
    they are mapped in sorted order; otherwise y must already be codes in 0..K-1 (so classes
    absent from the file survive).
    """
    if y.ndim != 1:
        raise QCoreError(f"{path}: y must be 1-D, got rank {y.ndim}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype.kind == "U"):
        raise QCoreError(f"{path}: y must hold integer (or string) labels, got {y.dtype}")
    values, codes = np.unique(y, return_inverse=True)
    if names is None:
        return codes.astype(np.int64), tuple(str(v) for v in values)
    if names.ndim != 1 or names.size == 0:
        raise QCoreError(f"{path}: class_names must be a non-empty 1-D array of names")
    class_names = tuple(str(n) for n in names)
    if len(class_names) == len(values):
        return codes.astype(np.int64), class_names
    if np.issubdtype(y.dtype, np.integer) and y.min() >= 0 and y.max() < len(class_names):
        return y.astype(np.int64), class_names
    raise QCoreError(
        f"{path}: {len(class_names)} class_names for {len(values)} distinct labels "
        f"that are not codes 0..{len(class_names) - 1}"
    )


def load_npz(path: str | Path) -> Dataset:
    """Dataset from ``path``: X (n, c, t) numeric, y (n,), optional domain (n,) ints.

    Loaded with ``allow_pickle=False``: an ``.npz`` never runs code. ``domain`` defaults
    to all zeros (one domain).
    """
    path = Path(path)
    if not path.is_file():
        raise QCoreError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise QCoreError(f"cannot read npz file {path}: {exc}") from exc
    for key in ("X", "y"):
        if key not in arrays:
            raise QCoreError(f"{path}: missing array {key!r} (has {sorted(arrays)})")
    X = arrays["X"]
    if X.ndim != 3:
        raise QCoreError(
            f"{path}: X must have shape (n_cases, n_channels, n_timepoints), got rank {X.ndim}"
        )
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise QCoreError(f"{path}: X must be numeric, got {X.dtype}")
    if X.shape[0] == 0:
        raise QCoreError(f"{path}: X is empty")
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise QCoreError(f"{path}: X contains NaN or infinite values")
    y, class_names = _labels(arrays["y"], arrays.get("class_names"), path)
    if len(y) != len(X):
        raise QCoreError(f"{path}: X has {len(X)} cases but y has {len(y)} labels")
    domain = arrays.get("domain")
    if domain is None:
        domain = np.zeros(len(X), dtype=np.int64)
    if domain.ndim != 1 or not np.issubdtype(domain.dtype, np.integer):
        raise QCoreError(f"{path}: domain must be a 1-D integer array")
    if len(domain) != len(X):
        raise QCoreError(f"{path}: X has {len(X)} cases but domain has {len(domain)} entries")
    return Dataset(
        name="npz",
        X=X,
        y=y,
        domain=domain,
        class_names=class_names,
        domain_kind="subject",
    )
