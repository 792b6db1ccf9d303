"""One entry point that loads any supported dataset by name.

Each loader is imported when its dataset is asked for, so the names (:data:`DATASETS`)
cost nothing to read: the command line lists them in its help without loading SciPy.
"""

from __future__ import annotations

from pathlib import Path

from qcore.data.dataset import Dataset
from qcore.data.synthetic import make_synthetic
from qcore.errors import QCoreError

DATASETS = ("hapt", "watch", "usc-had", "dsads", "npz", "synthetic")


def load_dataset(name: str, path: str | Path | None = None, seed: int = 0) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    ``path``: required for ``dsads`` (its root folder) and ``npz`` (the file); optional for
    ``usc-had`` (default: :func:`qcore.data.uschad.find_uschad_root`),
    ``hapt`` and ``watch`` (default: the file bundled with their pip package); not accepted
    by ``synthetic``. ``seed`` only matters for ``synthetic``; real data are deterministic.
    """
    if name not in DATASETS:
        raise QCoreError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if name in ("dsads", "npz") and path is None:
        raise QCoreError(f"dataset {name!r} needs a path")
    if name == "hapt":
        from qcore.data.hapt import load_hapt

        return load_hapt(path)
    if name == "watch":
        from qcore.data.watch import load_watch

        return load_watch(path, by="side")
    if name == "usc-had":
        from qcore.data.uschad import load_uschad

        return load_uschad(path)
    if name == "dsads":
        from qcore.data.dsads import load_dsads

        return load_dsads(path)
    if name == "npz":
        from qcore.data.npz import load_npz

        return load_npz(path)
    if path is not None:
        raise QCoreError("dataset 'synthetic' is generated and takes no path")
    return make_synthetic(seed=seed)
