"""The edge side (NumPy only, never PyTorch): inference and calibration of a QuantizedModel.

Public names, loaded on first use: :class:`Device` (the device loop), :class:`Artifact`,
:func:`load_artifact`, :func:`save_artifact` (the deployable file) and :func:`forward` /
:func:`predict` (inference of a quantized model).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qcore.edge.artifact import Artifact, load_artifact, save_artifact
    from qcore.edge.device import Device
    from qcore.edge.infer import forward, predict

_PUBLIC = {
    "Artifact": "qcore.edge.artifact",
    "load_artifact": "qcore.edge.artifact",
    "save_artifact": "qcore.edge.artifact",
    "Device": "qcore.edge.device",
    "forward": "qcore.edge.infer",
    "predict": "qcore.edge.infer",
}
__all__ = ["Artifact", "Device", "forward", "load_artifact", "predict", "save_artifact"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'qcore.edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
