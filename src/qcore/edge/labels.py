"""Labels as a device receives them: names or indices, some windows unlabelled, new classes.

A batch's ``y`` holds one label per window, in the form training saw them (the
artifact's class names, or raw values whose string form is a class name, such as -1/1)
or as class indices ``0..K-1``. A window without a label is ``-1`` in integer labels
(unless ``"-1"`` is itself a class name) and ``""`` in text labels. With
``allow_new=True`` labels are read as names only, and a name the device does not know
becomes a new class (in order of first appearance); an integer label that is no class
name but reads as the index of a known class (``0..K-1``) is then refused, so that the
flag never changes what the same batch means (indices without it, names with it). Without
the flag an unknown label is an error naming what was expected. NumPy only.
"""

from __future__ import annotations

import numpy as np

from qcore.errors import QCoreError

UNLABELLED = -1  # the index of a window without a label


def read_labels(
    y: np.ndarray, class_names: tuple[str, ...], allow_new: bool = False
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(indices int64 (n,), new class names)``: ``indices`` is :data:`UNLABELLED` where
    a window has no label, ``K, K+1, ...`` for the new names (only with ``allow_new``)."""
    if y.dtype.kind in "US":  # NumPy text, or bytes (read as UTF-8)
        text = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in y.tolist()
        ]
        missing = [t == "" for t in text]
    elif np.issubdtype(y.dtype, np.integer):
        text = [str(int(v)) for v in y.tolist()]
        marker = str(UNLABELLED) not in class_names
        missing = [marker and int(v) == UNLABELLED for v in y.tolist()]
    else:
        raise QCoreError(f"batch y must hold integer or text labels, got {y.dtype}")
    index = {name: k for k, name in enumerate(class_names)}
    given = [t for t, m in zip(text, missing, strict=True) if not m]
    new: list[str] = []
    if allow_new:
        _refuse_indices(y, given, class_names, index)
        for t in given:
            if t not in index:
                index[t] = len(index)
                new.append(t)
    elif not all(t in index for t in given):
        k = len(class_names)
        integer = np.issubdtype(y.dtype, np.integer)
        values = [int(v) for v, m in zip(y.tolist(), missing, strict=True) if not m and integer]
        if integer and all(0 <= v < k for v in values):
            out = np.full(len(y), UNLABELLED, dtype=np.int64)
            out[~np.array(missing, dtype=bool)] = values
            return out, ()
        unknown = sorted({t for t in given if t not in index})[:3]
        raise QCoreError(
            f"batch labels {', '.join(unknown)} are neither class names "
            f"({', '.join(class_names)}) nor class indices 0..{k - 1} (a new class needs "
            "allow_new_classes)"
        )
    out = np.array([UNLABELLED if m else index[t] for t, m in zip(text, missing, strict=True)])
    return out.astype(np.int64), tuple(new)


def _refuse_indices(
    y: np.ndarray, given: list[str], class_names: tuple[str, ...], index: dict[str, int]
) -> None:
    """With new classes allowed, an integer label that is no class name but lies in
    ``0..K-1`` is ambiguous (the same batch without the flag reads it as an index)."""
    if not np.issubdtype(y.dtype, np.integer):
        return
    k = len(class_names)
    like = sorted({int(t) for t in given if t not in index and 0 <= int(t) < k})
    if like:
        v = like[0]
        raise QCoreError(
            f"label {v} is no class name but reads as the index of class {class_names[v]!r}: "
            "with new classes allowed, labels are read as names; give class names as text "
            f"({', '.join(class_names)}) and a new class by its name"
        )
