"""Every method, registered: importing this module imports each method module once.

A plain list of imports (no directory scanning); :func:`available`, :func:`check_methods`
and :func:`make` are what the runner and the grid use.
"""

from typing import Any

from qcore.config import RunConfig
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
from qcore.methods.registry import METHODS, Deployment, Factory, device_record, method_device


def available() -> dict[str, Factory]:
    """All registered methods, by name."""
    return METHODS


def _known(name: str) -> None:
    if name not in METHODS:
        raise QCoreError(f"unknown method {name!r}: choose one of {', '.join(sorted(METHODS))}")


def check_methods(cfg: RunConfig) -> None:
    """Fail before anything runs when a method of ``cfg`` is unknown or fixes a device
    setting the run chose otherwise."""
    for name in cfg.methods:
        _known(name)
        method_device(name, cfg)


def make(name: str, dep: Deployment) -> Any:
    """The calibrator of method ``name`` for one deployment: ``dep.device`` becomes the
    method's device settings (:func:`method_device`), and ``dep.extras["device"]`` (a
    column of its results row) those it runs with."""
    _known(name)
    dep.device = method_device(name, dep.cfg)
    dep.extras["device"] = device_record(name, dep.device)
    return METHODS[name](dep)
