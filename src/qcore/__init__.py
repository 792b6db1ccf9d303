"""qcore: continual, on-device calibration of low-bit quantized sensor classifiers.

The public names are importable from here (``from qcore import Device, RunConfig``) and
load their module on first use, so importing the package itself loads nothing: the
PyTorch side lives in ``qcore.cloud`` and is imported only where it is used, and
``qcore.edge``, ``qcore.core``, ``qcore.data`` and ``qcore.coreset`` run without PyTorch.

Edge (NumPy only): :class:`Device`, :class:`Artifact`, :func:`load_artifact`,
:func:`save_artifact`, :class:`DeviceConfig`. Both sides: :class:`RunConfig`,
:func:`load_dataset`, :func:`make_scenario`. Cloud (PyTorch): :mod:`qcore.cloud.pipeline`
and :func:`run` (a whole ``qcore run``). docs/api.md shows them in one script.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qcore.errors import QCoreError

if TYPE_CHECKING:
    from qcore.config import DeviceConfig, RunConfig
    from qcore.data.registry import load_dataset
    from qcore.data.scenario import make_scenario
    from qcore.edge.artifact import Artifact, load_artifact, save_artifact
    from qcore.edge.device import Device
    from qcore.eval.runner import run

# public name -> the module that defines it (imported on first access)
_PUBLIC = {
    "DeviceConfig": "qcore.device_config",
    "RunConfig": "qcore.config",
    "load_dataset": "qcore.data.registry",
    "make_scenario": "qcore.data.scenario",
    "Artifact": "qcore.edge.artifact",
    "load_artifact": "qcore.edge.artifact",
    "save_artifact": "qcore.edge.artifact",
    "Device": "qcore.edge.device",
    "run": "qcore.eval.runner",
}

__all__ = [
    "Artifact",
    "Device",
    "DeviceConfig",
    "QCoreError",
    "RunConfig",
    "__version__",
    "load_artifact",
    "load_dataset",
    "make_scenario",
    "run",
    "save_artifact",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'qcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
