"""Smartwatch shoulder-exercise data (seglearn's ``load_watch``: 140 series, 6 channels, 50 Hz).

``seglearn.datasets.load_watch`` just ``np.load``s a bundled object ``.npy`` with pickling
allowed, and importing seglearn pulls in scikit-learn (~2 s). We locate that file without
importing seglearn and read it with the restricted unpickler (NumPy globals only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from qcore.data.dataset import Dataset
from qcore.data.hapt import NUMPY_GLOBALS, package_file, restricted_load
from qcore.data.windowing import sliding_windows
from qcore.errors import QCoreError

WINDOW = 128
STEP = 64
_KEYS = ("X", "y", "side", "subject", "y_labels")


def default_watch_path() -> Path:
    """``watch_dataset.npy`` inside the installed ``seglearn``."""
    return package_file("seglearn", "data", "watch_dataset.npy")


def _read_object_npy(path: Path) -> Any:
    """The Python object stored in a 0-d object ``.npy`` file, unpickled safely."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype != np.dtype(object) or shape != ():
                raise QCoreError(f"{path}: expected a 0-d object array, got {dtype} {shape}")
            # NumPy writes an object array's payload as one pickle of the array itself.
            arr = restricted_load(f, NUMPY_GLOBALS)
    except QCoreError:
        raise
    except (OSError, ValueError) as exc:
        raise QCoreError(f"cannot read watch data file {path}: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.shape != ():
        raise QCoreError(f"{path}: payload is not a 0-d array")
    return arr.item()


def load_watch(path: str | Path | None = None, by: Literal["side", "subject"] = "side") -> Dataset:
    """Watch windows: X (n, 6, 128), y exercise 0..6, domain = arm side (0 left, 1 right).

    Each series is cut into windows of 128 samples, step 64, labelled with the series label.
    ``by="subject"`` makes the domain the participant number (1..10) instead.
    """
    if by not in ("side", "subject"):
        raise QCoreError(f"watch domains are 'side' or 'subject', got {by!r}")
    path = Path(path) if path is not None else default_watch_path()
    if not path.is_file():
        raise QCoreError(f"watch data file not found: {path}")
    data = _read_object_npy(path)
    if not isinstance(data, dict) or any(k not in data for k in _KEYS):
        raise QCoreError(f"{path}: expected a dict with keys {_KEYS}")
    series = data["X"]
    labels = np.asarray(data["y"])
    domains = np.asarray(data[by])
    if not (len(series) == len(labels) == len(domains)):
        raise QCoreError(f"{path}: X, y and {by} differ in length")
    xs, ys, ds = [], [], []
    for s, label, dom in zip(series, labels, domains, strict=True):
        windows = sliding_windows(np.asarray(s, dtype=np.float32), WINDOW, STEP)
        xs.append(windows)
        ys.append(np.full(len(windows), int(label), dtype=np.int64))
        ds.append(np.full(len(windows), int(dom), dtype=np.int64))  # side is stored as float
    return Dataset(
        name="watch",
        X=np.concatenate(xs),
        y=np.concatenate(ys),
        domain=np.concatenate(ds),
        class_names=tuple(str(n) for n in data["y_labels"]),
        domain_kind=by,
    )
