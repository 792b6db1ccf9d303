"""UCI Daily and Sports Activities (DSADS: 5 IMUs x 9 axes, 25 Hz, 8 persons, 19 activities).

Original layout: ``<root>/a01..a19/p1..p8/s01..s60.txt``; each file is one 5 s segment,
125 rows x 45 comma-separated floats. The segments already are the windows.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from qcore.data.dataset import Dataset
from qcore.errors import QCoreError

DSADS_CLASSES = (
    "sitting",
    "standing",
    "lying on back",
    "lying on right side",
    "ascending stairs",
    "descending stairs",
    "standing in elevator",
    "moving in elevator",
    "walking in parking lot",
    "walking on treadmill flat",
    "walking on treadmill inclined",
    "running on treadmill",
    "exercising on stepper",
    "exercising on cross trainer",
    "cycling horizontal",
    "cycling vertical",
    "rowing",
    "jumping",
    "playing basketball",
)
N_ROWS = 125
N_COLUMNS = 45
_ACTIVITY = re.compile(r"a(\d+)")
_PERSON = re.compile(r"p(\d+)")
_SEGMENT = re.compile(r"s(\d+)\.txt")


def _numbered(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """Entries of ``folder`` whose whole name matches ``pattern``, sorted by their number."""
    hits = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return sorted(hits)


def _segment(path: Path) -> np.ndarray:
    """One segment file as float32 ``(45, 125)`` (channels first)."""
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise QCoreError(f"DSADS file {path} is malformed: {exc}") from exc
    if rows.shape != (N_ROWS, N_COLUMNS):
        raise QCoreError(
            f"DSADS file {path} has shape {rows.shape}, expected ({N_ROWS}, {N_COLUMNS})"
        )
    return rows.T.astype(np.float32)


def load_dsads(root: str | Path) -> Dataset:
    """DSADS windows: X (n, 45, 125), y activity 0..18, domain person 1..8."""
    root = Path(root)
    if not root.is_dir():
        raise QCoreError(f"DSADS folder not found: {root}")
    xs, ys, ds = [], [], []
    for activity, a_dir in _numbered(root, _ACTIVITY):
        if not 1 <= activity <= len(DSADS_CLASSES):
            raise QCoreError(f"DSADS folder {a_dir}: activity {activity} is not in 1..19")
        for person, p_dir in _numbered(a_dir, _PERSON):
            for _, f in _numbered(p_dir, _SEGMENT):
                xs.append(_segment(f))
                ys.append(activity - 1)
                ds.append(person)
    if not xs:
        raise QCoreError(f"no DSADS segments (aNN/pN/sNN.txt) under {root}")
    return Dataset(
        name="dsads",
        X=np.stack(xs),
        y=np.asarray(ys, dtype=np.int64),
        domain=np.asarray(ds, dtype=np.int64),
        class_names=DSADS_CLASSES,
        domain_kind="subject",
    )
