"""Every method, registered: importing this module imports each method module once.

A plain list of imports (no directory scanning); :func:`available` and :func:`make` are
what the runner and the grid use.
"""

from typing import Any

from qcore.errors import QCoreError
from qcore.methods import (  # noqa: F401  (each import registers one method)
    backprop,
    bn_stats,
    camel,
    derpp,
    er,
    finetune,
    gdumb,
    joint,
    none,
    qcore_method,
    qcore_slda,
    random_core_bp,
    random_core_flip,
    slda,
    zo_spsa,
)
from qcore.methods.registry import METHODS, Deployment, Factory


def available() -> dict[str, Factory]:
    """All registered methods, by name."""
    return METHODS


def make(name: str, dep: Deployment) -> Any:
    """The calibrator of method ``name`` for one deployment."""
    if name not in METHODS:
        raise QCoreError(f"unknown method {name!r}: choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name](dep)
