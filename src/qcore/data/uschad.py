"""USC-HAD (MotionNode on the hip, 100 Hz, 14 subjects, 12 activities) from its original layout.

Layout: ``<root>/Subject<N>/a<m>t<n>.mat`` (m activity 1..12, n trial), each file holding
``sensor_readings`` ``(T, 6)``: acc xyz (g), gyro xyz (dps).

Quirks of the public copy (checked on all 840 files): ``Subject13/a11t4.mat`` spells the
field ``activity_numbr``; ``Subject14/a3t2.mat`` says activity 2 "walking-left" although its
name and signal are walking-right (3); ``Subject3/a8t5.mat`` and ``Subject5/a8t3.mat`` store
a trial number differing from their names; three files carry an extra ``comments`` field.
We therefore take subject, activity and trial from the *path* only, and read nothing but
``sensor_readings`` from each file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from qcore.data.dataset import Dataset
from qcore.data.windowing import sliding_windows
from qcore.errors import QCoreError

USCHAD_CLASSES = (
    "Walking Forward",
    "Walking Left",
    "Walking Right",
    "Walking Upstairs",
    "Walking Downstairs",
    "Running Forward",
    "Jumping Up",
    "Sitting",
    "Standing",
    "Sleeping",
    "Elevator Up",
    "Elevator Down",
)
WINDOW = 500
_SUBJECT = re.compile(r"Subject(\d+)")
_TRIAL = re.compile(r"a(\d+)t(\d+)\.mat")


def find_uschad_root() -> Path:
    """Where USC-HAD is when no path is given: a team data folder ``shared/data/USC-HAD``
    in the folder that holds the working directory, else the one that holds the repository.

    ``Path(__file__).parents[3]`` is the repository root (``src/qcore/data/uschad.py``).
    A fresh clone has neither: pass the dataset's root explicitly.
    """
    candidates = (
        Path.cwd().parent / "shared" / "data" / "USC-HAD",
        Path(__file__).resolve().parents[3].parent / "shared" / "data" / "USC-HAD",
    )
    for c in candidates:
        if c.is_dir():
            return c
    raise QCoreError(
        "USC-HAD not found at " + " or ".join(str(c) for c in candidates) + "; pass its path"
    )


def _trial_files(root: Path) -> list[tuple[int, int, int, Path]]:
    """(subject, activity, trial, path) of every trial file, sorted numerically."""
    found = []
    for sub_dir in root.iterdir():
        m = _SUBJECT.fullmatch(sub_dir.name)
        if m is None or not sub_dir.is_dir():
            continue
        for f in sub_dir.iterdir():
            t = _TRIAL.fullmatch(f.name)
            if t is not None:
                found.append((int(m.group(1)), int(t.group(1)), int(t.group(2)), f))
    return sorted(found)


def _readings(path: Path) -> np.ndarray:
    """``sensor_readings`` of one trial as float32 ``(T, 6)``."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["sensor_readings"])
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as exc:
        raise QCoreError(f"cannot read USC-HAD file {path}: {exc}") from exc
    readings = mat.get("sensor_readings")
    if readings is None:
        raise QCoreError(f"USC-HAD file {path} has no 'sensor_readings'")
    readings = np.asarray(readings)
    if readings.ndim != 2 or readings.shape[1] != 6:
        raise QCoreError(f"USC-HAD file {path}: sensor_readings shape {readings.shape} != (T, 6)")
    return readings.astype(np.float32)


def load_uschad(root: str | Path | None = None) -> Dataset:
    """USC-HAD windows: X (n, 6, 500), y activity 0..11, domain subject 1..14.

    Each trial is cut into non-overlapping 500-sample (5 s) windows; the remainder is dropped.
    ``root``: the folder holding ``Subject1..Subject14`` (default: :func:`find_uschad_root`).
    """
    root = Path(root) if root is not None else find_uschad_root()
    if not root.is_dir():
        raise QCoreError(f"USC-HAD folder not found: {root}")
    files = _trial_files(root)
    if not files:
        raise QCoreError(f"no USC-HAD trials (Subject<N>/a<m>t<n>.mat) under {root}")
    xs, ys, ds = [], [], []
    for subject, activity, _trial, path in files:
        if not 1 <= activity <= len(USCHAD_CLASSES):
            raise QCoreError(f"USC-HAD file {path}: activity {activity} is not in 1..12")
        windows = sliding_windows(_readings(path), WINDOW, WINDOW)
        xs.append(windows)
        ys.append(np.full(len(windows), activity - 1, dtype=np.int64))
        ds.append(np.full(len(windows), subject, dtype=np.int64))
    X = np.concatenate(xs)
    if len(X) == 0:
        raise QCoreError(f"USC-HAD under {root}: no trial is {WINDOW} samples long")
    return Dataset(
        name="usc-had",
        X=X,
        y=np.concatenate(ys),
        domain=np.concatenate(ds),
        class_names=USCHAD_CLASSES,
        domain_kind="subject",
    )
