"""The method registry: a plain dict filled by an explicit decorator.

A method is a factory ``(Deployment) -> Calibrator``. The runner builds one
:class:`Deployment` per bit-width (the cloud's hand-over to the device) and asks the
registry for each method named in the config. Baselines register in
``qcore.baselines`` and are imported by :func:`available`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcore.config import RunConfig
from qcore.coreset.core import Core
from qcore.errors import QCoreError

Factory = Callable[["Deployment"], Any]
METHODS: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def deco(factory: Factory) -> Factory:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = factory
        return factory

    return deco


@dataclass
class Deployment:
    """What the cloud hands to the device for one bit-width.

    ``qmodel``: the deployed quantized torch model (calibrated on the source; copy it
    before changing it); ``core``: the QCore chosen from training dynamics;
    ``source_X``/``source_y``: the source training set, for methods that fill their own
    buffer in the cloud; ``extras``: cloud-side results a method adds (e.g. the flip
    network's agreement report), copied into the results row.
    """

    cfg: RunConfig
    bits: int
    qmodel: Any
    core: Core
    source_X: np.ndarray
    source_y: np.ndarray
    n_classes: int
    batch_len: int
    extras: dict[str, Any] = field(default_factory=dict)


def available() -> dict[str, Factory]:
    """All registered methods (imports the built-in ones and the baselines)."""
    import qcore.baselines  # noqa: F401  (registers baselines)
    import qcore.eval.stream  # noqa: F401  (registers none, backprop, qcore)

    return METHODS


def make(name: str, dep: Deployment):
    methods = available()
    if name not in methods:
        raise QCoreError(f"unknown method {name!r}: choose one of {', '.join(sorted(methods))}")
    return methods[name](dep)
